#!/usr/bin/env python3
"""Side-by-side benchmark: TPC-H lineitem from a local PostgreSQL 15 into
Parquet / Delta with `fromPostgres`, against the raw single-connection binary
COPY and the DuckDB / ConnectorX peers (../shared/bench/pg_extract.py).

Usage: python3 bin/bench/pg_extract.py [--sf 1] [--runs 5] [--parts 2]
       [--work /tmp/dataflow-bench] [--peers-venv /tmp/peers-venv] [--no-peers]

Needs: PostgreSQL 15 server binaries (/usr/lib/postgresql/15/bin), a release
build (cargo build --release --bin run-pipeline), and for the peers the venv
of ../shared/bench/setup-peers.sh. The server's cluster is kept in
WORK/pg-sfN (loaded once: typed columns, primary key) and stopped at exit.
Prints median wall time and peak RSS per case, and the ratio to the COPY
baseline measured in the same runs.
"""
import argparse, atexit, os, shutil, socket, statistics, subprocess, sys

from common import generate, timed

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
PEERS_PY = os.path.join(ROOT, "..", "shared", "bench", "pg_extract.py")
PG_BIN = "/usr/lib/postgresql/15/bin"
USER, PASSWORD, DB = "bench", "bench-password", "tpch"

LINEITEM = """CREATE TABLE lineitem (
  l_orderkey bigint NOT NULL, l_partkey bigint NOT NULL, l_suppkey bigint NOT NULL,
  l_linenumber integer NOT NULL, l_quantity numeric(15,2) NOT NULL,
  l_extendedprice numeric(15,2) NOT NULL, l_discount numeric(15,2) NOT NULL,
  l_tax numeric(15,2) NOT NULL, l_returnflag char(1) NOT NULL, l_linestatus char(1) NOT NULL,
  l_shipdate date NOT NULL, l_commitdate date NOT NULL, l_receiptdate date NOT NULL,
  l_shipinstruct char(25) NOT NULL, l_shipmode char(10) NOT NULL, l_comment varchar(44) NOT NULL)"""


def as_postgres(cmd):
    """Runs server binaries as `postgres` when root (initdb refuses root)."""
    return (["runuser", "-u", "postgres", "--"] + cmd) if os.geteuid() == 0 else cmd


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(data, port):
    """Starts (initializing if needed) a cluster in `data`; stops it at exit."""
    fresh = not os.path.exists(os.path.join(data, "PG_VERSION"))
    if fresh:
        os.makedirs(data, exist_ok=True)
        pwfile = os.path.join(os.path.dirname(data), "pwfile")
        with open(pwfile, "w") as f:
            f.write(PASSWORD)
        if os.geteuid() == 0:
            subprocess.run(["chown", "-R", "postgres", data, pwfile], check=True)
        subprocess.run(as_postgres([f"{PG_BIN}/initdb", "-D", data, "-U", USER, "-E", "UTF8", "--locale=C",
                                    "--auth-host=scram-sha-256", "--auth-local=trust", f"--pwfile={pwfile}"]),
                       check=True, stdout=subprocess.DEVNULL)
    opts = (f"-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='' -c shared_buffers=1GB "
            "-c max_wal_size=8GB -c fsync=off -c synchronous_commit=off -c full_page_writes=off")
    subprocess.run(as_postgres([f"{PG_BIN}/pg_ctl", "-D", data, "-l", os.path.join(data, "log"), "-o", opts,
                                "-w", "start"]), check=True, stdout=subprocess.DEVNULL)
    atexit.register(lambda: subprocess.run(as_postgres([f"{PG_BIN}/pg_ctl", "-D", data, "-m", "fast", "stop"]),
                                           stdout=subprocess.DEVNULL))
    return fresh


def psql(url, sql, **kw):
    return subprocess.run(["psql", url, "-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql], check=True,
                          env=dict(os.environ, PGPASSWORD=PASSWORD), **kw)


def load(url, csv):
    if psql(url, "SELECT to_regclass('lineitem') IS NOT NULL", capture_output=True).stdout.strip() == b"t":
        return
    print("loading lineitem into PostgreSQL ...", file=sys.stderr)
    psql(url, LINEITEM)
    psql(url, f"\\copy lineitem FROM '{csv}' WITH (FORMAT csv, HEADER true)")
    psql(url, "ALTER TABLE lineitem ADD PRIMARY KEY (l_orderkey, l_linenumber)")
    psql(url, "VACUUM ANALYZE lineitem")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sf", default="1")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--parts", type=int, default=2)
    ap.add_argument("--work", default="/tmp/dataflow-bench")
    ap.add_argument("--peers-venv", default="/tmp/peers-venv")
    ap.add_argument("--no-peers", action="store_true", help="only the COPY baseline and dataflow")
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    csv = generate(args.work, args.sf, args.peers_venv)
    port = free_port()
    start_server(os.path.join(args.work, f"pg-sf{args.sf}", "data"), port)
    url = f"postgresql://{USER}@127.0.0.1:{port}/postgres"
    if psql(url, f"SELECT 1 FROM pg_database WHERE datname = '{DB}'", capture_output=True).stdout.strip() != b"1":
        psql(url, f"CREATE DATABASE {DB}")
    url = f"postgresql://{USER}@127.0.0.1:{port}/{DB}"
    load(url, csv)

    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    binary = os.path.join(target, "release", "run-pipeline")
    py = os.path.join(args.peers_venv, "bin", "python")
    out_dir = os.path.join(args.work, "pg-out")
    env = dict(os.environ, PGPASSWORD=PASSWORD, BENCH_PG_URL=url)
    dsn = f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{port}/{DB}"

    cases = [("COPY binary, 1 connection", ["psql", url, "-c", "COPY lineitem TO STDOUT (FORMAT binary)"], env)]
    for sink in ["parquet", "delta"]:
        out = os.path.join(out_dir, f"dataflow-{sink}")
        cases.append((f"dataflow p={args.parts} -> {sink}",
                      [binary, "-q", "run", os.path.join(HERE, f"pg-{sink}.json"),
                       "--set", f"steps[0].config.numPartitions={args.parts}"],
                      dict(env, BENCH_OUT=out)))
    if not args.no_peers:
        peer_env = dict(os.environ, DUCKDB_PG_EXT=os.environ.get(
            "DUCKDB_PG_EXT", os.path.join(args.peers_venv, "duckdb-ext", "postgres_scanner.duckdb_extension")))
        for peer in ["duckdb", "connectorx"]:
            out = os.path.join(out_dir, f"{peer}.parquet")
            cases.append((f"{peer} p={args.parts} -> parquet",
                          [py, PEERS_PY, peer, dsn, "lineitem", out, str(args.parts)], peer_env))

    results = {}
    for run in range(args.runs):
        for name, cmd, case_env in cases:  # interleaved, so noise hits everyone
            results.setdefault(name, []).append(timed(cmd, case_env)[:2])
        print(f"run {run + 1}/{args.runs} done", file=sys.stderr)

    print(f"\nTPC-H SF{args.sf} lineitem from PostgreSQL 15, {args.runs} runs, medians")
    print(f"{'case':<28} {'time s':>8} {'peak MB':>8} {'vs COPY':>8}")
    baseline = statistics.median(t for t, _ in results[cases[0][0]])
    for name, _, _ in cases:
        t = statistics.median(t for t, _ in results[name])
        m = statistics.median(m for _, m in results[name])
        print(f"{name:<28} {t:>8.2f} {m:>8.0f} {t / baseline:>7.2f}x")
    shutil.rmtree(out_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
