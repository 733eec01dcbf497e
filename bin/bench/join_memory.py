#!/usr/bin/env python3
"""Bounded-memory benchmark: a large join + aggregation (the inner query of
TPC-H Q18) over TPC-H lineitem and orders as CSV, written to Parquet, by
dataflow with and without `--memory-limit`, DuckDB with and without
`memory_limit`, and DataFusion-Python on the same SQL and the same CSVs.

Usage: python3 bin/bench/join_memory.py [--sf 10] [--runs 3] [--limit 1GB]
       [--work /tmp/dataflow-bench] [--peers-venv /tmp/peers-venv]
       [--lineitem PATH --orders PATH]

Needs: the peers venv (../shared/bench/setup-peers.sh) with tpchgen-cli,
duckdb and datafusion, and a release build (cargo build --release --bin
run-pipeline). Runs are interleaved; prints per-engine medians of wall time
and peak RSS, the row count each wrote (all must agree), and the ratios the
targets are stated in.
"""
import argparse, os, shutil, statistics, subprocess, sys

from common import timed

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SQL = ("SELECT o_custkey, o_orderkey, o_orderdate, o_totalprice, sum(l_quantity) AS qty "
       "FROM lineitem JOIN orders ON l_orderkey = o_orderkey "
       "GROUP BY o_custkey, o_orderkey, o_orderdate, o_totalprice HAVING sum(l_quantity) > 300")


def duckdb_job(lineitem, orders, out, limit):
    import duckdb
    c = duckdb.connect()
    if limit:
        c.execute(f"SET memory_limit = '{limit}'")
    c.execute(f"CREATE VIEW lineitem AS SELECT * FROM read_csv('{lineitem}', header=true)")
    c.execute(f"CREATE VIEW orders AS SELECT * FROM read_csv('{orders}', header=true)")
    c.execute(f"COPY ({SQL}) TO '{out}/part-0.parquet' (FORMAT parquet)")


def datafusion_job(lineitem, orders, out, _limit):
    import datafusion
    ctx = datafusion.SessionContext()
    ctx.register_csv("lineitem", lineitem, has_header=True)
    ctx.register_csv("orders", orders, has_header=True)
    ctx.sql(SQL).write_parquet(out)


def generate(work, sf, venv):
    """TPC-H lineitem and orders as CSV with a header line, generated once."""
    out = os.path.join(work, f"join-sf{sf}")
    paths = [os.path.join(out, f"{t}.csv") for t in ("lineitem", "orders")]
    if not all(os.path.exists(p) for p in paths):
        subprocess.run([os.path.join(venv, "bin", "tpchgen-cli"), "csv", "-s", str(sf),
                        "--tables", "lineitem,orders", "--output-dir", out], check=True)
    return paths


def parquet_rows(py, out):
    """Rows written under out, counted by DuckDB (independent of who wrote them)."""
    code = ("import duckdb,sys; print(duckdb.sql(f\"SELECT count(*) FROM "
            "read_parquet('{sys.argv[1]}/**/*.parquet')\").fetchone()[0])")
    return int(subprocess.run([py, "-c", code, out], check=True, capture_output=True,
                              text=True).stdout)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sf", default="10")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--limit", default="1GB", help="memory limit for the bounded runs")
    ap.add_argument("--work", default="/tmp/dataflow-bench")
    ap.add_argument("--peers-venv", default="/tmp/peers-venv")
    ap.add_argument("--lineitem", help="existing lineitem CSV (with --orders): skip generation")
    ap.add_argument("--orders")
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    if args.lineitem and args.orders:
        lineitem, orders = args.lineitem, args.orders
    else:
        lineitem, orders = generate(args.work, args.sf, args.peers_venv)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    binary = os.path.join(target, "release", "run-pipeline")
    py = os.path.join(args.peers_venv, "bin", "python")
    config = os.path.join(HERE, "join-parquet.json")

    cases = []  # (engine, command, env, output dir)
    for name, limit in [("dataflow", None), (f"dataflow {args.limit}", args.limit)]:
        out = os.path.join(args.work, "out", name.replace(" ", "-"))
        flags = ["--memory-limit", limit] if limit else []
        env = dict(os.environ, BENCH_LINEITEM=lineitem, BENCH_ORDERS=orders, BENCH_OUT=out)
        cases.append((name, [binary, "-q", *flags, "run", config], env, out))
    for name, peer, limit in [("duckdb", "duckdb", ""), (f"duckdb {args.limit}", "duckdb", args.limit),
                              ("datafusion-python", "datafusion", "")]:
        out = os.path.join(args.work, "out", name.replace(" ", "-"))
        cmd = [py, os.path.abspath(__file__), "--peer", peer, lineitem, orders, out, limit]
        cases.append((name, cmd, None, out))

    results, rows = {}, {}
    for run in range(args.runs):
        for name, cmd, env, out in cases:  # interleaved, so noise hits everyone
            shutil.rmtree(out, ignore_errors=True)
            results.setdefault(name, []).append(timed(cmd, env)[:2])
            rows[name] = parquet_rows(py, out)
        print(f"run {run + 1}/{args.runs} done", file=sys.stderr)

    med = {n: (statistics.median(t for t, _ in r), statistics.median(m for _, m in r))
           for n, r in results.items()}
    print(f"\nTPC-H SF{args.sf} lineitem JOIN orders -> Parquet, {args.runs} runs, medians")
    print(f"{'engine':<20} {'time s':>8} {'peak MB':>8} {'rows':>6}")
    for name, (t, m) in sorted(med.items(), key=lambda kv: kv[1][0]):
        print(f"{name:<20} {t:>8.2f} {m:>8.0f} {rows[name]:>6}")
    bounded, peer_bounded = f"dataflow {args.limit}", f"duckdb {args.limit}"
    print(f"\n{bounded} / {peer_bounded}: {med[bounded][0] / med[peer_bounded][0]:.2f}x time")
    print(f"dataflow / duckdb: {med['dataflow'][0] / med['duckdb'][0]:.2f}x time")
    print(f"dataflow / datafusion-python: {med['dataflow'][0] / med['datafusion-python'][0]:.2f}x time")
    if len(set(rows.values())) != 1:
        raise SystemExit(f"engines disagree on the row count: {rows}")
    shutil.rmtree(os.path.join(args.work, "out"), ignore_errors=True)


def peer():
    engine, lineitem, orders, out, limit = sys.argv[2:7]
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out, exist_ok=True)
    globals()[f"{engine}_job"](lineitem, orders, out, limit)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--peer":
        peer()
    else:
        main()
