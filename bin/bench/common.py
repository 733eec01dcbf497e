"""Helpers shared by the benchmark scripts: timing child processes (and
process trees), generating TPC-H lineitem, finding run-pipeline and tansu."""
import os, shutil, socket, subprocess, sys, tempfile, threading, time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def timed(cmd, env=None, stdout=subprocess.DEVNULL):
    """Runs cmd; returns (seconds, peak RSS in MB, stderr). Raises on failure."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=stdout, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - start
    err = proc.stderr.read().decode()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{err}")
    return elapsed, usage.ru_maxrss / 1024, err


class RunFailed(Exception):
    """A command of timed_tree exited non-zero: .returncode, .stderr (all of it)."""

    def __init__(self, cmd, returncode, stderr):
        super().__init__(f"failed (exit {returncode}): {' '.join(cmd)}\n{stderr[-4000:]}")
        self.returncode, self.stderr = returncode, stderr


def tree_rss_bytes(root):
    """Resident memory of ROOT and all its descendants, summed (one scan of /proc). A child whose
    memory counters equal its parent's is taken for a vfork()ed child not yet exec'd (the JVM
    spawns processes so), which shares its parent's memory: it is not counted twice."""
    children, statm = {}, {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
            with open(f"/proc/{name}/statm") as f:
                statm[int(name)] = f.read().split()
        except OSError:
            continue  # gone meanwhile
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(name))
    page = os.sysconf("SC_PAGE_SIZE")
    total, todo = 0, [(root, None)]
    while todo:
        pid, parent = todo.pop()
        mine = statm.get(pid)
        if mine and len(mine) > 1 and mine != statm.get(parent):
            total += int(mine[1]) * page
        todo.extend((child, pid) for child in children.get(pid, ()))
    return total


def timed_tree(cmd, env=None, stdout=subprocess.DEVNULL, interval=0.1):
    """Runs cmd; returns (seconds, peak RSS in MB, stderr). The peak is the larger of
    the child's own ru_maxrss and the sum of the RSS of the child and all its
    descendants, sampled every INTERVAL s: a JVM started by a launcher, or a
    Python driver started by the JVM (spark-submit), counts too. stderr goes
    through a temporary file, so a chatty child cannot fill a pipe and block.
    The child runs in its own process group, killed whole if the wait is
    interrupted (install a SIGTERM handler raising SystemExit to have that on
    kill too). Raises RunFailed on a non-zero exit."""
    with tempfile.TemporaryFile() as err_file:
        start = time.perf_counter()
        # Its own process group: if this process is interrupted, the whole tree is ended with it.
        proc = subprocess.Popen(cmd, env=env, stdout=stdout, stderr=err_file, start_new_session=True)
        peak, done = [0], threading.Event()

        def sample():
            while not done.is_set():
                peak[0] = max(peak[0], tree_rss_bytes(proc.pid))
                done.wait(interval)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:  # KeyboardInterrupt, or SystemExit from a SIGTERM handler
            done.set()
            os.killpg(proc.pid, 9)
            proc.wait()
            raise
        elapsed = time.perf_counter() - start
        done.set()
        sampler.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        err_file.seek(0)
        err = err_file.read().decode(errors="replace")
    if proc.returncode != 0:
        raise RunFailed(cmd, proc.returncode, err)
    return elapsed, max(usage.ru_maxrss * 1024, peak[0]) / 2**20, err


def generate(work, sf, venv):
    csv = os.path.join(work, f"lineitem-sf{sf}.csv")
    if os.path.exists(csv):
        return csv
    out = os.path.join(work, "gen")
    subprocess.run([os.path.join(venv, "bin", "tpchgen-cli"), "csv", "-s", str(sf), "--tables", "lineitem",
                    "--output-dir", out], check=True)
    os.rename(os.path.join(out, "lineitem.csv"), csv)
    return csv


def tansu_bin():
    """$TANSU_BIN, tansu on PATH, or the one under ~/.calfkit/bin."""
    if os.environ.get("TANSU_BIN"):
        return os.environ["TANSU_BIN"]
    found = shutil.which("tansu")
    if found:
        return found
    calf = os.path.expanduser("~/.calfkit/bin")
    for name in sorted(os.listdir(calf)) if os.path.isdir(calf) else []:
        if name.startswith("tansu"):
            return os.path.join(calf, name)
    sys.exit("no tansu binary: set TANSU_BIN (see README)")


def find_binary():
    """$CARGO_TARGET_DIR's run-pipeline, else ./target's, else .ci/run's default target dir's."""
    if os.environ.get("CARGO_TARGET_DIR"):
        return os.path.join(os.environ["CARGO_TARGET_DIR"], "release", "run-pipeline")
    candidates = [os.path.join(d, "release", "run-pipeline")
                  for d in (os.path.join(ROOT, "target"), os.path.expanduser("~/.cache/dataflow-target"))]
    return next((c for c in candidates if os.access(c, os.X_OK)), candidates[0])


def start_tansu(work, topic, parts):
    """A tansu broker with in-memory storage on a free loopback port (log in WORK/broker.log) and TOPIC
    created with PARTS partitions; returns (process, bootstrap address)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bootstrap = f"127.0.0.1:{port}"
    broker = subprocess.Popen(
        [tansu_bin(), "broker", "--listener-url", f"tcp://{bootstrap}", "--advertised-listener-url",
         f"tcp://{bootstrap}", "--storage-engine", "memory://tansu/"],
        stdout=open(os.path.join(work, "broker.log"), "w"), stderr=subprocess.STDOUT)
    time.sleep(2)
    subprocess.run([tansu_bin(), "topic", "create", "--broker", f"tcp://{bootstrap}", "--partitions",
                    str(parts), topic], check=True, stdout=subprocess.DEVNULL)
    return broker, bootstrap
