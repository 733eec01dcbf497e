//! What every test server harness needs: a free loopback port, a
//! watchdog that kills the server once the test process is gone, finding
//! the binary, waiting for readiness, and a minimal HTTP request.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

/// The first executable found: `$env_var` (which must then exist), else
/// `name` in a directory of `PATH`, else the first of `defaults` that
/// exists; `hint` ends the error (how to install it).
pub(crate) fn find_bin(
    env_var: &str,
    name: &str,
    defaults: &[PathBuf],
    hint: &str,
) -> io::Result<PathBuf> {
    if let Some(bin) = std::env::var_os(env_var).filter(|b| !b.is_empty()) {
        let bin = PathBuf::from(bin);
        return if bin.is_file() {
            Ok(bin)
        } else {
            Err(io::Error::other(format!(
                "{env_var}={} is not a file",
                bin.display()
            )))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .chain(defaults.iter().cloned())
        .find(|bin| bin.is_file())
        .ok_or_else(|| {
            io::Error::other(format!(
                "no `{name}` binary: set {env_var} or put `{name}` on PATH ({hint})"
            ))
        })
}

/// `$HOME/REL`, if `HOME` is set.
pub(crate) fn home_path(rel: &str) -> Option<PathBuf> {
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(rel))
}

/// Spawns `cmd` with stdin closed and stdout and stderr appended to `log`,
/// and writes its process id to `dir/pid` for the [`watchdog`].
pub(crate) fn spawn_logged(cmd: &mut Command, dir: &Path, log: &Path) -> io::Result<Child> {
    let log = File::options().create(true).append(true).open(log)?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    std::fs::write(dir.join("pid"), child.id().to_string())?;
    Ok(child)
}

/// Kills and reaps the child, if any.
pub(crate) fn kill(child: &mut Option<Child>) {
    if let Some(mut child) = child.take() {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// Waits until the server's `log` holds `marker` followed by a port
/// number (a server started on port 0 reporting the port it bound) and
/// returns that port. An error, with the log, if `child` exits first or
/// after `timeout`.
pub(crate) fn wait_for_port(
    child: &mut Child,
    log: &Path,
    marker: &str,
    timeout: Duration,
) -> io::Result<u16> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(port) = port_after(&text, marker) {
            return Ok(port);
        }
        if let Some(status) = child.try_wait()? {
            return Err(io::Error::other(format!(
                "the server exited ({status}) before reporting its port:\n{text}"
            )));
        }
        if Instant::now() > deadline {
            return Err(io::Error::other(format!(
                "the server did not report its port (`{marker}PORT`) within {timeout:?}:\n{text}"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The number right after the first `marker` in `text`.
fn port_after(text: &str, marker: &str) -> Option<u16> {
    let rest = &text[text.find(marker)? + marker.len()..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok().filter(|&port| port != 0)
}

/// Polls `GET path` on `127.0.0.1:port` until it answers `expected`. An
/// error, with the log, if `child` exits first or after `timeout`.
pub(crate) fn wait_http(
    child: &mut Child,
    port: u16,
    path: &str,
    expected: u16,
    log: &Path,
    timeout: Duration,
) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let error = match http(port, "GET", path, &[], b"") {
            Ok(response) if response.status == expected => return Ok(()),
            Ok(response) => format!("status {}", response.status),
            Err(e) => e.to_string(),
        };
        if let Some(status) = child.try_wait()? {
            return Err(io::Error::other(format!(
                "the server on port {port} exited ({status}):\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            )));
        }
        if Instant::now() > deadline {
            return Err(io::Error::other(format!(
                "the server on port {port} not ready after {timeout:?} (GET {path}: {error}):\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An HTTP response read by [`http`].
#[derive(Debug)]
pub(crate) struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The body as sent (not de-chunked), for error messages.
    pub body: String,
}

/// One HTTP/1.1 request to `127.0.0.1:port` on a connection of its own
/// (`Connection: close`): enough for the few calls test servers need
/// (creating buckets, uploading fixtures) without an HTTP client.
pub(crate) fn http(
    port: u16,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<HttpResponse> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(HTTP_TIMEOUT))?;
    stream.set_write_timeout(Some(HTTP_TIMEOUT))?;
    let mut request = format!(
        "{method} {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\
         Content-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    stream.write_all(body)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{method} {target}: not an HTTP response: {head:?}"),
            )
        })?;
    Ok(HttpResponse {
        status,
        body: body.to_string(),
    })
}

/// How long [`http`] waits for a test server to read or answer.
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
