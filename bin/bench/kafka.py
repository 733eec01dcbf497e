#!/usr/bin/env python3
"""Side-by-side benchmark: 1 M JSON events (~140 B, 4 partitions) already in
a tansu broker → `SELECT ... WHERE kind = 'purchase'` → Delta with trigger
availableNow, against the raw librdkafka read of the same topic
(../shared/bench/kafka_load.py consume, the ceiling of any pipeline).

Usage: python3 bin/bench/kafka.py [--events 1000000] [--runs 5]
       [--max-per-trigger 100000] [--peers-venv /tmp/peers-venv]

Needs: a tansu binary ($TANSU_BIN, or see README), a release build, and the
peers venv of ../shared/bench/setup-peers.sh (confluent-kafka). Prints median
wall time, events/s and peak RSS per case, the ratio to the raw read, and
the Delta commit time per batch (p50).
"""
import argparse, json, os, re, shutil, socket, statistics, subprocess, sys, tempfile, time

from common import tansu_bin, timed

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
LOAD = os.path.join(ROOT, "..", "shared", "bench", "kafka_load.py")
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
BIN = os.path.join(TARGET, "release", "run-pipeline")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--parts", type=int, default=4)
    ap.add_argument("--max-per-trigger", type=int, default=100_000)
    ap.add_argument("--peers-venv", default="/tmp/peers-venv")
    args = ap.parse_args()
    py = os.path.join(args.peers_venv, "bin", "python")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bootstrap = f"127.0.0.1:{port}"
    work = tempfile.mkdtemp(prefix="dataflow-kafka-bench-")
    broker = subprocess.Popen(
        [tansu_bin(), "broker", "--listener-url", f"tcp://{bootstrap}", "--advertised-listener-url",
         f"tcp://{bootstrap}", "--storage-engine", "memory://tansu/"],
        stdout=open(os.path.join(work, "broker.log"), "w"), stderr=subprocess.STDOUT)
    try:
        time.sleep(2)
        topic = "events"
        subprocess.run([tansu_bin(), "topic", "create", "--broker", f"tcp://{bootstrap}", "--partitions",
                        str(args.parts), topic], check=True, stdout=subprocess.DEVNULL)
        subprocess.run([py, LOAD, "produce", bootstrap, topic, str(args.events), str(args.parts)], check=True)
        config = {
            "name": "kafka-bench", "mode": "streaming", "trigger": "availableNow",
            "steps": [
                {"type": "extract", "method": "fromKafka", "config": {
                    "bootstrapServers": bootstrap, "topic": topic, "format": "json",
                    "schema": "event_id BIGINT, user_id BIGINT, kind VARCHAR, amount DOUBLE, ts BIGINT, country VARCHAR",
                    "maxOffsetsPerTrigger": args.max_per_trigger, "registerAs": "events"}},
                {"type": "transform", "method": "sql", "config": {
                    "query": "SELECT event_id, user_id, amount, ts, country FROM events WHERE kind = 'purchase'"}},
                {"type": "load", "method": "toDeltaLake", "config": {"path": os.path.join(work, "out"), "saveMode": "append"}},
            ]}
        path = os.path.join(work, "kafka-bench.json")
        with open(path, "w") as f:
            json.dump(config, f)
        raw, ours = [], []
        for _ in range(args.runs):
            raw.append(timed([py, LOAD, "consume", bootstrap, topic, str(args.events), str(args.parts)]))
            shutil.rmtree(os.path.join(work, "out"), ignore_errors=True)
            ours.append(timed([BIN, "run", path]))
        for name, results in (("raw librdkafka read (kafka_load.py consume)", raw), ("dataflow Kafka → SQL → Delta", ours)):
            t = statistics.median(r[0] for r in results)
            rss = statistics.median(r[1] for r in results)
            print(f"{name:48s} median {t:6.2f}s  {args.events / t:10,.0f} events/s  peak RSS {rss:5.0f} MB")
        ratio = statistics.median(r[0] for r in raw) / statistics.median(r[0] for r in ours)
        print(f"events/s ratio dataflow / raw read: {ratio:.2f}x (target >= 0.8x)")
        commits = [int(ms) for r in ours for ms in re.findall(r"\(commit (\d+)ms\)", r[2])]
        if commits:
            print(f"Delta commit per batch: p50 {statistics.median(commits):.0f} ms, max {max(commits)} ms "
                  f"over {len(commits)} batches (target p50 <= 50 ms)")
    finally:
        broker.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
