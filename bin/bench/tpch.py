#!/usr/bin/env python3
"""Side-by-side benchmark: dataflow vs DuckDB, Polars and DataFusion-Python
on TPC-H lineitem (CSV in, Parquet / Delta out).

Usage: python3 bin/bench/tpch.py [--sf 1] [--runs 5] [--work /tmp/dataflow-bench]
       [--peers-venv /tmp/peers-venv] [--spark]

Needs: the peers venv (../shared/bench/setup-peers.sh) with tpchgen-cli, and a
release build (cargo build --release --bin run-pipeline). Prints per-job medians
of wall time and peak RSS, and the ratio of dataflow to the fastest peer.
"""
import argparse, os, shutil, statistics, sys

from common import generate, timed

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
JOBS_PY = os.path.join(ROOT, "..", "shared", "bench", "jobs.py")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--sf", default="1")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--work", default="/tmp/dataflow-bench")
    ap.add_argument("--peers-venv", default="/tmp/peers-venv")
    ap.add_argument("--spark", action="store_true", help="also run Spark local (slow)")
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    csv = generate(args.work, args.sf, args.peers_venv)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    binary = os.path.join(target, "release", "run-pipeline")
    py = os.path.join(args.peers_venv, "bin", "python")
    peers = ["duckdb", "polars", "datafusion"] + (["spark"] if args.spark else [])

    cases = []  # (job, engine, command, env)
    for job, configs in [("etl", ["etl-parquet", "etl-delta"]), ("agg", ["agg-parquet"])]:
        for config in configs:
            out = os.path.join(args.work, "out", config)
            env = dict(os.environ, BENCH_INPUT=csv, BENCH_OUT=out)
            cases.append((job, f"dataflow({config.split('-')[1]})",
                          [binary, "-q", "run", os.path.join(HERE, f"{config}.json")], env))
        for peer in peers:
            out = os.path.join(args.work, "out", f"{peer}-{job}")
            cases.append((job, peer, [py, JOBS_PY, peer, job, csv, out], None))

    results = {}
    for run in range(args.runs):
        for job, engine, cmd, env in cases:  # interleaved, so noise hits everyone
            results.setdefault((job, engine), []).append(timed(cmd, env)[:2])
        print(f"run {run + 1}/{args.runs} done", file=sys.stderr)

    print(f"\nTPC-H SF{args.sf} lineitem CSV, {args.runs} runs, medians")
    print(f"{'job':<5} {'engine':<18} {'time s':>8} {'peak MB':>8} {'vs fastest peer':>16}")
    for job in ["etl", "agg"]:
        rows = {e: (statistics.median(t for t, _ in r), statistics.median(m for _, m in r))
                for (j, e), r in results.items() if j == job}
        fastest = min(t for e, (t, _) in rows.items() if not e.startswith("dataflow"))
        for engine, (t, m) in sorted(rows.items(), key=lambda kv: kv[1][0]):
            print(f"{job:<5} {engine:<18} {t:>8.2f} {m:>8.0f} {t / fastest:>15.2f}x")
    shutil.rmtree(os.path.join(args.work, "out"), ignore_errors=True)


if __name__ == "__main__":
    main()
