//! What every test server harness needs: a free loopback port, and a
//! watchdog that kills the server once the test process is gone.

use std::io;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};

/// A loopback port that was free a moment ago (callers retry on a clash).
pub(crate) fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Once this process exits, however it exits, kills `-9` the process whose
/// id is in `dir/pid` (if any) and deletes `dir`.
pub(crate) fn watchdog(dir: &Path) -> io::Result<()> {
    let dir = dir.display();
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
         [ -f {dir}/pid ] && kill -9 $(cat {dir}/pid) 2>/dev/null; rm -rf {dir}",
        pid = std::process::id(),
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(drop)
}
