#!/usr/bin/env python3
"""Side-by-side benchmark on an object store: TPC-H lineitem as Parquet in a
local moto S3 server → the `etl` query of ../shared/bench/jobs.py → Parquet
in the same bucket, by dataflow (`storage` + s3:// paths) and by DuckDB with
httpfs reading the same objects and writing to the same server.

Usage: python3 bin/bench/s3_etl.py [--sf 1] [--runs 5] [--files 8]
       [--engines dataflow,duckdb] [--lineitem PATH] [--work /tmp/dataflow-bench]
       [--peers-venv /tmp/peers-venv] [--jobs PATH/TO/jobs.py]

Needs: moto_server ($MOTO_SERVER_BIN, default ~/.cache/dataflow-servers-venv/bin/moto_server),
the peers venv (../shared/bench/setup-peers.sh) plus `duckdb-extension-httpfs==1.5.5`,
tpchgen-cli unless --lineitem names an existing CSV, and for dataflow a release
build (run-pipeline in $CARGO_TARGET_DIR, else ./target, else ~/.cache/dataflow-target).
The CSV is converted once into --files Parquet files (split on l_orderkey
ranges, row groups of 122,880 rows) kept in WORK: moto's ranged GETs cost in
proportion to the whole object, so small objects keep the server from
dominating. A fresh moto on a free port gets them once per invocation; runs
are interleaved; each output is counted back with DuckDB (all must agree) and
deleted before the next run. DuckDB writes one file per thread
(PER_THREAD_OUTPUT), its fastest and leanest way here. Prints median wall
time and peak RSS per engine (moto's own memory is not counted, only shown)
and the ratio dataflow / DuckDB.
"""
import argparse, atexit, glob, json, os, re, runpy, shutil, statistics, subprocess, sys, time, urllib.request
import xml.etree.ElementTree as ET

from common import find_binary, generate, timed

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
JOBS_PY = os.path.join(ROOT, "..", "shared", "bench", "jobs.py")
BUCKET, KEY, SECRET, REGION = "bench", "test", "test", "us-east-1"
ROW_GROUP = 122_880
# moto accepts any signature but refuses unsigned object reads and listings.
AUTH = (f"AWS4-HMAC-SHA256 Credential={KEY}/20260101/{REGION}/s3/aws4_request, "
        "SignedHeaders=host, Signature=0")


def s3(port, method, path, body=None):
    """One request to moto; returns the response body."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}/{path}", data=body, method=method,
                                 headers={"Authorization": AUTH, "Content-Type": "application/octet-stream"})
    with urllib.request.urlopen(req) as resp:
        return resp.read()


def delete_prefix(port, prefix):
    """Deletes every object under prefix (the outputs, so the store does not grow)."""
    ns = "{http://s3.amazonaws.com/doc/2006-03-01/}"
    while True:
        listing = ET.fromstring(s3(port, "GET", f"{BUCKET}?list-type=2&prefix={prefix}"))
        keys = [k.text for k in listing.iter(f"{ns}Key")]
        for key in keys:
            s3(port, "DELETE", f"{BUCKET}/{key}")
        if not keys:
            return


def start_moto(work):
    """moto_server on a free port (it prints the port on stderr); killed at exit."""
    binary = os.environ.get("MOTO_SERVER_BIN",
                            os.path.expanduser("~/.cache/dataflow-servers-venv/bin/moto_server"))
    if not os.access(binary, os.X_OK):
        sys.exit(f"no moto_server at {binary}: set MOTO_SERVER_BIN, or\n  python3 -m venv "
                 "~/.cache/dataflow-servers-venv && ~/.cache/dataflow-servers-venv/bin/pip install "
                 "'moto[s3]==5.2.5' flask flask-cors")
    log = os.path.join(work, "moto.log")
    proc = subprocess.Popen([binary, "-H", "127.0.0.1", "-p", "0"], stdout=subprocess.DEVNULL,
                            stderr=open(log, "w"))
    atexit.register(proc.kill)
    deadline = time.time() + 30
    while time.time() < deadline:
        found = re.search(r"Running on http://127\.0\.0\.1:(\d+)", open(log).read())
        if found:
            port = int(found.group(1))
            urllib.request.urlopen(f"http://127.0.0.1:{port}/").read()
            return proc, port
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    sys.exit(f"moto_server did not start:\n{open(log).read()}")


def check_peers(py):
    code = "import duckdb, duckdb_extension_httpfs"
    if not os.path.exists(py) or subprocess.run([py, "-c", code], capture_output=True).returncode != 0:
        venv = os.path.dirname(os.path.dirname(py))
        sys.exit(f"DuckDB with httpfs missing in {venv}: run ../shared/bench/setup-peers.sh {venv}, then\n"
                 f"  {venv}/bin/pip install 'duckdb==1.5.*' duckdb-extension-httpfs==1.5.5")


def prepare(work, csv, files, py):
    """lineitem as `files` Parquet files, converted once by DuckDB (kept per CSV size)."""
    out = os.path.join(work, f"s3-etl-input-{os.path.getsize(csv)}-{files}")
    if not os.path.isdir(out):
        print(f"converting {csv} into {files} Parquet files ...", file=sys.stderr)
        subprocess.run([py, os.path.abspath(__file__), "--peer", "prepare", csv, out + ".tmp", str(files)],
                       check=True)
        os.rename(out + ".tmp", out)
    return [os.path.join(out, f"part-{i}.parquet") for i in range(files)]


def upload(port, paths):
    s3(port, "PUT", BUCKET)
    for path in paths:
        with open(path, "rb") as f:
            s3(port, "PUT", f"{BUCKET}/lineitem/{os.path.basename(path)}", f.read())


def dataflow_config(work, port, run, sql):
    """The pipeline for one run, written to WORK; returns its path."""
    config = {
        "name": "s3-etl",
        "storage": {f"s3://{BUCKET}": {
            "aws_endpoint": f"http://127.0.0.1:{port}", "aws_allow_http": "true", "aws_region": REGION,
            "aws_access_key_id": KEY, "aws_secret_access_key": SECRET}},
        "steps": [
            {"type": "extract", "method": "fromFiles", "config": {
                "path": f"s3://{BUCKET}/lineitem/", "format": "parquet", "registerAs": "lineitem"}},
            {"type": "transform", "method": "sql", "config": {"query": sql}},
            {"type": "load", "method": "toFiles", "config": {
                "path": f"s3://{BUCKET}/out-dataflow-{run}", "format": "parquet", "saveMode": "overwrite"}},
        ]}
    path = os.path.join(work, "s3-etl.json")
    with open(path, "w") as f:
        json.dump(config, f, indent=1)
    return path


def rss_mb(pid):
    """Peak RSS of a running process (VmHWM), in MB."""
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1)) / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sf", default="1")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--files", type=int, default=8, help="Parquet files lineitem is split into")
    ap.add_argument("--engines", default="dataflow,duckdb", help="comma-separated subset of dataflow,duckdb")
    ap.add_argument("--lineitem", help="existing lineitem CSV with a header line: skip generation")
    ap.add_argument("--work", default="/tmp/dataflow-bench")
    ap.add_argument("--peers-venv", default="/tmp/peers-venv")
    ap.add_argument("--jobs", default=JOBS_PY, help="../shared/bench/jobs.py (for ETL_SQL)")
    args = ap.parse_args()
    engines = args.engines.split(",")
    if not set(engines) <= {"dataflow", "duckdb"}:
        sys.exit(f"--engines: unknown engine in {args.engines}")
    os.makedirs(args.work, exist_ok=True)
    if not os.path.exists(args.jobs):
        sys.exit(f"no {args.jobs}: pass --jobs PATH/TO/shared/bench/jobs.py")
    sql = runpy.run_path(args.jobs)["ETL_SQL"]
    py = os.path.join(args.peers_venv, "bin", "python")
    check_peers(py)
    binary = find_binary()
    if "dataflow" in engines and not os.access(binary, os.X_OK):
        sys.exit(f"no {binary}: cargo build --release --bin run-pipeline (or --engines duckdb)")
    tpchgen = os.path.join(args.peers_venv, "bin", "tpchgen-cli")
    if not (args.lineitem or os.path.exists(os.path.join(args.work, f"lineitem-sf{args.sf}.csv"))
            or os.access(tpchgen, os.X_OK)):
        sys.exit(f"no {tpchgen}: {args.peers_venv}/bin/pip install tpchgen-cli (or --lineitem CSV)")
    csv = args.lineitem or generate(args.work, args.sf, args.peers_venv)
    paths = prepare(args.work, csv, args.files, py)

    moto, port = start_moto(args.work)
    start = time.perf_counter()
    upload(port, paths)
    size = sum(os.path.getsize(p) for p in paths) / 2**20
    print(f"uploaded {len(paths)} files, {size:.0f} MB, in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    # Safety net: no instance-metadata lookups, whatever the credential chain does.
    env = dict(os.environ, AWS_EC2_METADATA_DISABLED="true", AWS_METADATA_ENDPOINT="http://127.0.0.1:9")

    results, rows = {}, {}
    for run in range(args.runs):
        for engine in engines:  # interleaved, so noise hits everyone
            prefix = f"out-{engine}-{run}"
            if engine == "dataflow":
                cmd = [binary, "-q", "run", dataflow_config(args.work, port, run, sql)]
            else:
                cmd = [py, os.path.abspath(__file__), "--peer", "etl", str(port), prefix, sql]
            results.setdefault(engine, []).append(timed(cmd, env)[:2])
            count = [py, os.path.abspath(__file__), "--peer", "count", str(port), prefix]
            rows.setdefault(engine, set()).add(int(subprocess.run(count, check=True, capture_output=True,
                                                                  text=True).stdout))
            delete_prefix(port, prefix + "/")
        print(f"run {run + 1}/{args.runs} done", file=sys.stderr)

    med = {e: (statistics.median(t for t, _ in r), statistics.median(m for _, m in r)) for e, r in results.items()}
    print(f"\nTPC-H SF{args.sf} lineitem, {len(paths)} Parquet files ({size:.0f} MB) on moto S3 -> etl -> "
          f"Parquet on the same server, {args.runs} runs, medians")
    print(f"{'engine':<10} {'time s':>8} {'peak MB':>8} {'rows':>9}")
    for engine, (t, m) in sorted(med.items(), key=lambda kv: kv[1][0]):
        print(f"{engine:<10} {t:>8.2f} {m:>8.0f} {','.join(map(str, sorted(rows[engine]))):>9}")
    print(f"moto_server peak RSS (not counted above): {rss_mb(moto.pid):.0f} MB")
    if len(med) == 2:
        print(f"\ndataflow / duckdb: {med['dataflow'][0] / med['duckdb'][0]:.2f}x time (target <= 1.0x), "
              f"{med['dataflow'][1] / med['duckdb'][1]:.2f}x peak RSS")
    if "dataflow" in med:
        print(f"dataflow peak RSS: {med['dataflow'][1]:.0f} MB (target <= 500 MB)")
    if len(set().union(*rows.values())) != 1:
        raise SystemExit(f"row counts disagree: {rows}")


def duckdb_connect(port):
    """DuckDB with httpfs (from the PyPI package) and an S3 secret for moto."""
    import duckdb, duckdb_extension_httpfs
    ext = glob.glob(os.path.join(os.path.dirname(duckdb_extension_httpfs.__file__), "extensions", "*",
                                 "httpfs.duckdb_extension"))[0]
    c = duckdb.connect(config={"autoinstall_known_extensions": False})
    c.execute(f"LOAD '{ext}'")
    c.execute(f"CREATE SECRET moto (TYPE s3, KEY_ID '{KEY}', SECRET '{SECRET}', REGION '{REGION}', "
              f"ENDPOINT '127.0.0.1:{port}', URL_STYLE 'path', USE_SSL false)")
    return c


def peer():
    """Runs inside the peers venv: `prepare CSV OUT FILES`, `etl PORT PREFIX SQL`, `count PORT PREFIX`."""
    import duckdb
    what, rest = sys.argv[2], sys.argv[3:]
    if what == "prepare":
        csv, out, files = rest[0], rest[1], int(rest[2])
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
        c = duckdb.connect()
        c.execute(f"CREATE TABLE lineitem AS SELECT * FROM read_csv('{csv}', header=true)")
        top = c.execute("SELECT max(l_orderkey) FROM lineitem").fetchone()[0]
        for i in range(files):
            lo, hi = top * i // files, top * (i + 1) // files
            c.execute(f"COPY (SELECT * FROM lineitem WHERE l_orderkey > {lo} AND l_orderkey <= {hi} "
                      f"ORDER BY l_orderkey, l_linenumber) TO '{out}/part-{i}.parquet' "
                      f"(FORMAT parquet, ROW_GROUP_SIZE {ROW_GROUP})")
    elif what == "etl":
        port, prefix, sql = rest
        c = duckdb_connect(port)
        c.execute(f"CREATE VIEW lineitem AS SELECT * FROM read_parquet('s3://{BUCKET}/lineitem/*.parquet')")
        # One file per thread: faster and smaller than one file on this server (measured).
        c.execute(f"COPY ({sql}) TO 's3://{BUCKET}/{prefix}' (FORMAT parquet, PER_THREAD_OUTPUT true)")
    elif what == "count":
        port, prefix = rest
        c = duckdb_connect(port)
        print(c.execute(f"SELECT count(*) FROM read_parquet('s3://{BUCKET}/{prefix}/**/*.parquet')").fetchone()[0])


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--peer":
        peer()
    else:
        main()
