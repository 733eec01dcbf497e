"""Helpers shared by the benchmark scripts: timing child processes,
generating TPC-H lineitem, finding run-pipeline and tansu."""
import os, shutil, subprocess, sys, time

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
