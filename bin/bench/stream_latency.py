#!/usr/bin/env python3
"""Latency benchmark of issue 14: Kafka → Delta with trigger
"processingTime=1 second" under a steady load; how long from produce until
a reader of the Delta table sees the row.

A tansu broker (in-memory) with a --parts partition topic `bids`; then, at
once:
  pipeline  run-pipeline run: fromKafka (json, explicit schema,
            startingOffsets earliest) → toDeltaLake append, trigger
            --trigger (default "processingTime=1 second")
  poller    (peers venv) polls the Delta table every --poll-ms with the
            deltalake package: on each new version, reads the files the
            version added (seq, produced_ms) and stamps their rows with the
            time it saw the version: visible_ms
  producer  (peers venv, confluent-kafka, linger 5 ms) produces --rate
            events/s for --duration s, paced in 10 ms ticks; each event is a
            Nexmark-shaped bid carrying its sequence number and its produce
            time (epoch ms, taken when it is handed to the producer)
When the producer is done, the poller waits until every event is visible
(at most --drain s), then run-pipeline is stopped with SIGTERM.

Latency of a row = visible_ms - produced_ms (both clocks of this machine;
the poll interval adds up to --poll-ms). Prints p50/p99/max over all rows
and over the rows produced after --warmup s (the first batches also open the
broker connections and create the table), the rate produced and delivered,
missing and duplicated rows, run-pipeline's batches and its peak RSS.
Target (issue 14): p99 <= 2.5 s at 20 000 events/s.

Usage: python3 bin/bench/stream_latency.py [--rate 20000] [--duration 60]
       [--parts 4] [--trigger "processingTime=1 second"] [--poll-ms 50]
       [--warmup 5] [--drain 30] [--peers-venv /tmp/peers-venv] [--keep]

Needs: a tansu binary ($TANSU_BIN, or see README), a release build of
run-pipeline with stateful streaming (issue 14) and the peers venv of
../shared/bench/setup-peers.sh (confluent-kafka, deltalake, pyarrow).
Exits 1 if run-pipeline fails, or rows are missing or duplicated.
"""
import argparse, json, math, os, re, shutil, signal, statistics, subprocess, sys, tempfile, threading, time

from common import find_binary, start_tansu, tree_rss_bytes

TOPIC = "bids"
SCHEMA = ("seq BIGINT, produced_ms BIGINT, auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, "
          "url VARCHAR, date_time TIMESTAMP, extra VARCHAR")


def pipeline_config(work, bootstrap, out, args):
    """The streaming pipeline: the topic's JSON values → Delta append, every second."""
    config = {
        "name": "nexmark-latency", "mode": "streaming", "trigger": args.trigger,
        "steps": [
            {"type": "extract", "method": "fromKafka", "config": {
                "bootstrapServers": bootstrap, "topic": TOPIC, "startingOffsets": "earliest",
                "format": "json", "schema": SCHEMA, "registerAs": "bids"}},
            {"type": "load", "method": "toDeltaLake", "config": {"path": out, "saveMode": "append"}},
        ]}
    path = os.path.join(work, "nexmark-latency.json")
    with open(path, "w") as f:
        json.dump(config, f, indent=1)
    return path


class Sampled:
    """A process started now whose tree's peak RSS is sampled every 0.1 s until it exits."""

    def __init__(self, cmd, stderr_path):
        self.err_path = stderr_path
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(stderr_path, "w"))
        self.peak = 0
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self):
        while self.proc.poll() is None:
            self.peak = max(self.peak, tree_rss_bytes(self.proc.pid))
            time.sleep(0.1)

    def stop(self, timeout=60):
        """SIGTERM (run-pipeline's clean stop), then SIGKILL after TIMEOUT s; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._thread.join()
        return self.proc.returncode

    def stderr(self):
        with open(self.err_path) as f:
            return f.read()


def percentile(sorted_values, q):
    """The q-quantile (0..1) of sorted values, nearest rank."""
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values), max(1, math.ceil(q * len(sorted_values)))) - 1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=int, default=20_000, help="events per second produced")
    ap.add_argument("--duration", type=float, default=60, help="seconds of producing")
    ap.add_argument("--parts", type=int, default=4)
    ap.add_argument("--trigger", default="processingTime=1 second")
    ap.add_argument("--poll-ms", type=int, default=50, help="how often the Delta table is polled")
    ap.add_argument("--warmup", type=float, default=5, help="seconds of the start left out of the second figures")
    ap.add_argument("--drain", type=float, default=30, help="seconds to wait for the last rows after producing")
    ap.add_argument("--peers-venv", default="/tmp/peers-venv")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (table, logs, latencies)")
    args = ap.parse_args()
    py = os.path.join(args.peers_venv, "bin", "python")
    check = "import confluent_kafka, deltalake, pyarrow"
    if not os.path.exists(py) or subprocess.run([py, "-c", check], capture_output=True).returncode != 0:
        sys.exit(f"{args.peers_venv} lacks confluent-kafka, deltalake or pyarrow: "
                 f"run ../shared/bench/setup-peers.sh {args.peers_venv}")
    binary = find_binary()
    if not os.access(binary, os.X_OK):
        sys.exit(f"no {binary}: cargo build --release --bin run-pipeline")
    work = tempfile.mkdtemp(prefix="dataflow-latency-bench-")
    out = os.path.join(work, "table")
    total = int(args.rate * args.duration)
    me = os.path.abspath(__file__)
    broker, bootstrap = start_tansu(work, TOPIC, args.parts)
    pipeline = poller = None
    try:
        config = pipeline_config(work, bootstrap, out, args)
        pipeline = Sampled([binary, "--state-dir", os.path.join(work, "history"), "run", config],
                           os.path.join(work, "run-pipeline.log"))
        time.sleep(2)  # let it start and subscribe to the (empty) topic
        if pipeline.proc.poll() is not None:
            why = [line for line in pipeline.stderr().splitlines() if line.strip()]
            kind = "rejects the pipeline (exit 2)" if pipeline.proc.returncode == 2 else \
                f"exited {pipeline.proc.returncode}"
            raise SystemExit(f"run-pipeline {kind} before any event: {why[-1] if why else ''}")
        latencies = os.path.join(work, "latencies.jsonl")
        poller = subprocess.Popen([py, me, "--peer", "poll", out, str(total), str(args.poll_ms), latencies],
                                  stdout=subprocess.PIPE, text=True)
        produced = subprocess.run([py, me, "--peer", "produce", bootstrap, str(args.rate), str(args.duration),
                                   str(args.parts)], check=True, stdout=subprocess.PIPE, text=True)
        prod = json.loads(produced.stdout)
        print(f"produced {prod['events']:,} events in {prod['seconds']:.1f} s ({prod['events'] / prod['seconds']:,.0f}"
              f"/s; target {args.rate:,}/s), at most {prod['max_behind_ms']} ms behind schedule",
              file=sys.stderr, flush=True)
        try:
            seen_out, _ = poller.communicate(timeout=args.drain)
        except subprocess.TimeoutExpired:
            poller.send_signal(signal.SIGTERM)  # it prints what it has seen
            seen_out, _ = poller.communicate(timeout=30)
        seen = json.loads(seen_out)
        code = pipeline.stop()
        log = pipeline.stderr()
        report(args, prod, seen, latencies, code, log, pipeline.peak)
    finally:
        if pipeline:
            pipeline.stop()
        if poller and poller.poll() is None:
            poller.kill()
        broker.kill()
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def report(args, prod, seen, latencies_path, code, log, peak):
    """Prints the latency percentiles, rates, batches and peak RSS; exits 1 on a failure or lost rows."""
    rows = []
    with open(latencies_path) as f:
        for line in f:
            rows.append(json.loads(line))  # [seq, produced_ms, visible_ms]
    lat_all = sorted(v - p for _, p, v in rows)
    cut = prod["start_ms"] + args.warmup * 1000
    lat_steady = sorted(v - p for _, p, v in rows if p >= cut)
    batches = re.findall(r"^batch \d+: (\d+) rows in.*?, ([\d.]+)s \(commit (\d+)ms\)", log, re.M)
    print(f"\nKafka ({args.parts} partitions) -> run-pipeline trigger {args.trigger!r} -> Delta append; "
          f"{prod['events']:,} events produced at {prod['events'] / prod['seconds']:,.0f}/s for {prod['seconds']:.0f} s; "
          f"Delta polled every {args.poll_ms} ms")
    print(f"{'rows':<28} {'count':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for name, lat in (("all", lat_all), (f"produced after {args.warmup:g} s", lat_steady)):
        print(f"{name:<28} {len(lat):>9,} {percentile(lat, 0.5):>8.0f} {percentile(lat, 0.99):>8.0f} "
              f"{(lat[-1] if lat else float('nan')):>8.0f}")
    if rows:
        span = (max(v for _, _, v in rows) - prod["start_ms"]) / 1000
        print(f"delivered {len(rows):,} rows, {len(rows) / span:,.0f} events/s from the first produce to the last "
              f"row visible ({span:.1f} s)")
    if batches:
        sizes = [int(b[0]) for b in batches]
        took = [float(b[1]) for b in batches]
        commit = [int(b[2]) for b in batches]
        print(f"run-pipeline: {len(batches)} batches, rows per batch p50 {statistics.median(sizes):,.0f}, batch time "
              f"p50 {statistics.median(took):.2f} s max {max(took):.2f} s, commit p50 {statistics.median(commit):.0f} ms "
              f"max {max(commit)} ms")
    print(f"run-pipeline peak RSS {peak / 2**20:.0f} MB; exit code after SIGTERM {code}")
    print(f"Delta versions seen {seen['versions']}, missing rows {seen['missing']:,}, duplicated rows "
          f"{seen['duplicates']:,}")
    p99 = percentile(lat_steady, 0.99)
    print(f"\np99 produce -> visible (after warm-up): {p99 / 1000:.2f} s (target <= 2.5 s at 20,000 events/s)")
    problems = []
    if code not in (0, None):
        problems.append(f"run-pipeline exited {code}: {log.strip().splitlines()[-1] if log.strip() else ''}")
    if seen["missing"] or seen["duplicates"]:
        problems.append(f"{seen['missing']} rows missing, {seen['duplicates']} duplicated")
    if problems:
        raise SystemExit("; ".join(problems))


# ---------------------------------------------------------------- peers (run inside the peers venv)

def produce(bootstrap, rate, duration, parts):
    """Produces RATE bids/s for DURATION s in 10 ms ticks (catching up when behind); prints a JSON summary."""
    import random
    from confluent_kafka import Producer
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True,
                  "batch.size": 1000000, "queue.buffering.max.messages": 1000000})
    rng = random.Random(14)
    channels = ["Google", "Facebook", "Baidu", "Apple"]
    total = int(rate * duration)
    tick = 0.01
    start = time.time()
    seq, behind = 0, 0.0
    while seq < total:
        now = time.time()
        due = min(total, int((now - start) * rate) + 1)  # events that should have been produced by now
        now_ms = int(now * 1000)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(now)) + f".{now_ms % 1000:03d}000"
        while seq < due:
            auction = 1000 + seq * 3 // 46 - int(rng.random() * 100)
            value = (f'{{"seq":{seq},"produced_ms":{now_ms},"auction":{auction},"bidder":{1000 + seq // 46},'
                     f'"price":{round(10 ** (rng.random() * 6) * 100)},"channel":"{channels[seq & 3]}",'
                     f'"url":"https://www.nexmark.com/item.htm?query=1","date_time":"{stamp}","extra":"x"}}')
            while True:
                try:
                    p.produce(TOPIC, value=value, partition=seq % parts)
                    break
                except BufferError:
                    p.poll(0.01)
            seq += 1
        p.poll(0)
        behind = max(behind, time.time() - (start + seq / rate))  # > 0: the producer cannot keep the rate
        delay = now + tick - time.time()
        if delay > 0 and seq < total:
            time.sleep(delay)
    if p.flush(60) != 0:
        raise SystemExit("produce: messages left undelivered after 60 s")
    print(json.dumps({"events": total, "seconds": time.time() - start, "start_ms": int(start * 1000),
                      "max_behind_ms": int(behind * 1000)}))


def poll(path, total, poll_ms, out_path):
    """Polls the Delta table at PATH until TOTAL distinct seqs are visible (or SIGTERM): for each new
    version, the rows of the files it added, stamped with the time the version was first seen. Writes
    [seq, produced_ms, visible_ms] lines to OUT_PATH; prints {versions, missing, duplicates}."""
    import pyarrow as pa, pyarrow.parquet as pq
    from deltalake import DeltaTable
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    seen_files, seen_seq, duplicates, versions = set(), set(), 0, 0
    table = None
    with open(out_path, "w") as out:
        while not stop.is_set() and len(seen_seq) < total:
            time.sleep(poll_ms / 1000)
            try:
                if table is None:
                    if not os.path.isdir(os.path.join(path, "_delta_log")):
                        continue
                    table = DeltaTable(path)
                else:
                    before = table.version()
                    table.update_incremental()
                    if table.version() == before:
                        continue
            except Exception:  # the table's first commit not complete yet
                continue
            visible_ms = int(time.time() * 1000)
            versions += 1
            files = pa.table(table.get_add_actions(flatten=True)).column("path").to_pylist()
            new = [f for f in files if f not in seen_files]
            for f in new:
                seen_files.add(f)
                cols = pq.read_table(os.path.join(path, f), columns=["seq", "produced_ms"]).to_pydict()
                for seq, produced in zip(cols["seq"], cols["produced_ms"]):
                    if seq in seen_seq:
                        duplicates += 1  # also a compaction's rewrite, were one running
                        continue
                    seen_seq.add(seq)
                    out.write(f"[{seq},{produced},{visible_ms}]\n")
    print(json.dumps({"versions": versions, "missing": total - len(seen_seq), "duplicates": duplicates}), flush=True)
    os._exit(0)  # deltalake's runtime threads sometimes abort at interpreter exit


def peer():
    """`--peer produce BOOTSTRAP RATE DURATION PARTS`, `--peer poll PATH TOTAL POLL_MS OUT`."""
    what, rest = sys.argv[2], sys.argv[3:]
    if what == "produce":
        produce(rest[0], int(rest[1]), float(rest[2]), int(rest[3]))
    elif what == "poll":
        poll(rest[0], int(rest[1]), int(rest[2]), rest[3])


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--peer":
        peer()
    else:
        main()
