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
  producer  (peers venv, confluent-kafka, linger --linger-ms, default 5 ms) produces --rate
            events/s for --duration s, paced in 10 ms ticks; each event is a
            Nexmark-shaped bid carrying its sequence number and its produce
            time (epoch ms, taken when it is handed to the producer)
When the producer is done, the poller waits until every event is visible
(at most --drain s), then run-pipeline is stopped with SIGTERM.

--poll-mode log replaces the deltalake poller by one that only watches
_delta_log for the next NNN.json commit file and reads the files its add
actions name: what any reader must do at least, without deltalake's reload
cost. Either way every version's commit file mtime is recorded too, so the
report also gives produce -> committed (the pipeline's share, independent
of the poller) and committed -> seen (the poller's share).

Diagnostics (on unless --no-diag): run-pipeline's stderr lines are stamped
with the wall clock as they arrive; each `batch N:` line is joined with its
Delta version (N-1) and that commit file's mtime and actions, and the
report prints per-batch time (total, commit, before commit, after the
commit until the line, gap to the next batch) by version ranges, the
slowest batches and the checkpoints written; with --run-args=-vv also the
split of each batch into Kafka open / Delta table open / write / commit
(from delta-rs's log lines). WORK/batches.tsv has every batch (--keep).
CPU seconds of run-pipeline, tansu, producer and poller, and the load
average, are printed: the machine has 2 cores for all four.

Mind the broker: tansu 0.6's in-memory storage keeps one object per record
batch and lists all of a partition's objects on every Fetch (and
ListOffsets), so its cost grows with the record batches produced so far
(linger 5 ms: ~90/s per partition). --probe-broker times, every 0.5 s, the
calls the Kafka source makes to find the partitions' ends; with
--no-pipeline it shows the broker alone. A larger --linger-ms (fewer,
bigger batches) keeps the broker flat.

Latency of a row = visible_ms - produced_ms (both clocks of this machine;
the poll interval adds up to --poll-ms). Prints p50/p99/max over all rows
and over the rows produced after --warmup s (the first batches also open the
broker connections and create the table), the rate produced and delivered,
missing and duplicated rows, run-pipeline's batches and its peak RSS.
Target (issue 14): p99 <= 2.5 s at 20 000 events/s.

Usage: python3 bin/bench/stream_latency.py [--rate 20000] [--duration 60]
       [--parts 4] [--trigger "processingTime=1 second"] [--linger-ms 5]
       [--poll-ms 50] [--poll-mode deltalake|log] [--source-config JSON]
       [--sink-config JSON] [--run-args=-vv] [--rust-log FILTER]
       [--binary PATH] [--warmup 5] [--drain 30] [--peers-venv /tmp/peers-venv]
       [--keep] [--no-diag] [--json-out FILE] [--probe-broker] [--no-pipeline]
e.g. --sink-config '{"checkpointInterval": 10}'
     --source-config '{"maxOffsetsPerTrigger": 25000}'
     --trigger=processingTime=500ms

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
                "format": "json", "schema": SCHEMA, "registerAs": "bids", **json.loads(args.source_config)}},
            {"type": "load", "method": "toDeltaLake", "config": {"path": out, "saveMode": "append",
                                                                 **json.loads(args.sink_config)}},
        ]}
    path = os.path.join(work, "nexmark-latency.json")
    with open(path, "w") as f:
        json.dump(config, f, indent=1)
    return path


class Sampled:
    """A process started now whose tree's peak RSS is sampled every 0.1 s until it exits; its stderr
    lines are written to STDERR_PATH, each prefixed with the wall clock (epoch ms) it arrived at."""

    def __init__(self, cmd, stderr_path, env=None):
        self.err_path = stderr_path
        self.lines = []  # (epoch ms, line)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
        self.peak, self.cpu = 0, 0.0
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _sample(self):
        while self.proc.poll() is None:
            self.peak = max(self.peak, tree_rss_bytes(self.proc.pid))
            self.cpu = self.cpu_seconds() or self.cpu
            time.sleep(0.1)

    def _read(self):
        with open(self.err_path, "w") as log:
            for raw in self.proc.stderr:
                now = time.time() * 1000
                line = raw.decode(errors="replace").rstrip("\n")
                self.lines.append((now, line))
                log.write(f"{now:.1f}\t{line}\n")

    def cpu_seconds(self):
        return cpu_seconds(self.proc.pid)

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
        self._reader.join(10)
        return self.proc.returncode

    def stderr(self):
        return "\n".join(line for _, line in self.lines)


def cpu_seconds(pid):
    """User + system CPU seconds of process PID so far (None once reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return None


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
    ap.add_argument("--linger-ms", type=int, default=5,
                    help="the producer's linger.ms: how long it gathers a partition's events into one record batch")
    ap.add_argument("--poll-ms", type=int, default=50, help="how often the Delta table is polled")
    ap.add_argument("--poll-mode", choices=("deltalake", "log"), default="deltalake",
                    help="deltalake: DeltaTable.update_incremental(); log: watch _delta_log for the next commit file")
    ap.add_argument("--source-config", default="{}", help="JSON merged into the fromKafka config")
    ap.add_argument("--sink-config", default="{}", help="JSON merged into the toDeltaLake config")
    ap.add_argument("--run-args", default="", help="extra run-pipeline flags, e.g. '-vv --log-format json'")
    ap.add_argument("--rust-log", help="RUST_LOG for run-pipeline (overrides -v's filter)")
    ap.add_argument("--binary", help="run-pipeline binary (default: find_binary())")
    ap.add_argument("--warmup", type=float, default=5, help="seconds of the start left out of the second figures")
    ap.add_argument("--drain", type=float, default=30, help="seconds to wait for the last rows after producing")
    ap.add_argument("--peers-venv", default="/tmp/peers-venv")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (table, logs, latencies)")
    ap.add_argument("--no-diag", dest="diag", action="store_false", help="leave out the per-batch diagnostics")
    ap.add_argument("--json-out", help="append the run's figures as one JSON line to this file")
    ap.add_argument("--probe-broker", action="store_true",
                    help="also time, every 0.5 s, the broker calls run-pipeline makes to find the partitions' ends")
    ap.add_argument("--no-pipeline", dest="pipeline", action="store_false",
                    help="only produce (with --probe-broker: the broker's own latency as the topic grows)")
    args = ap.parse_args()
    py = os.path.join(args.peers_venv, "bin", "python")
    check = "import confluent_kafka, deltalake, pyarrow"
    if not os.path.exists(py) or subprocess.run([py, "-c", check], capture_output=True).returncode != 0:
        sys.exit(f"{args.peers_venv} lacks confluent-kafka, deltalake or pyarrow: "
                 f"run ../shared/bench/setup-peers.sh {args.peers_venv}")
    binary = args.binary or find_binary()
    if not os.access(binary, os.X_OK):
        sys.exit(f"no {binary}: cargo build --release --bin run-pipeline")
    work = tempfile.mkdtemp(prefix="dataflow-latency-bench-")
    out = os.path.join(work, "table")
    total = int(args.rate * args.duration)
    me = os.path.abspath(__file__)
    load_before = os.getloadavg()
    broker, bootstrap = start_tansu(work, TOPIC, args.parts)
    pipeline = poller = prober = None
    probes = os.path.join(work, "broker-probe.jsonl")
    try:
        if args.probe_broker:
            prober = subprocess.Popen([py, me, "--peer", "probe", bootstrap, str(args.parts), probes])
        if not args.pipeline:
            prod = json.loads(subprocess.run([py, me, "--peer", "produce", bootstrap, str(args.rate),
                                              str(args.duration), str(args.parts), str(args.linger_ms)],
                                             check=True, stdout=subprocess.PIPE, text=True).stdout)
            print(f"produced {prod['events']:,} events in {prod['seconds']:.1f} s in {prod['record_batches']:,} "
                  f"record batches; tansu CPU "
                  f"{cpu_seconds(broker.pid):.1f} s, producer {prod['cpu_s']:.1f} s")
            return
        config = pipeline_config(work, bootstrap, out, args)
        env = dict(os.environ, RUST_LOG=args.rust_log) if args.rust_log else None
        pipeline = Sampled([binary, *args.run_args.split(), "--state-dir", os.path.join(work, "history"),
                            "run", config], os.path.join(work, "run-pipeline.log"), env)
        time.sleep(2)  # let it start and subscribe to the (empty) topic
        if pipeline.proc.poll() is not None:
            time.sleep(0.2)
            why = [line for line in pipeline.stderr().splitlines() if line.strip()]
            kind = "rejects the pipeline (exit 2)" if pipeline.proc.returncode == 2 else \
                f"exited {pipeline.proc.returncode}"
            raise SystemExit(f"run-pipeline {kind} before any event: {why[-1] if why else ''}")
        latencies = os.path.join(work, "latencies.jsonl")
        poller = subprocess.Popen([py, me, "--peer", "poll", out, str(total), str(args.poll_ms), latencies,
                                   args.poll_mode], stdout=subprocess.PIPE, text=True)
        produced = subprocess.run([py, me, "--peer", "produce", bootstrap, str(args.rate), str(args.duration),
                                   str(args.parts), str(args.linger_ms)], check=True, stdout=subprocess.PIPE, text=True)
        prod = json.loads(produced.stdout)
        print(f"produced {prod['events']:,} events in {prod['seconds']:.1f} s ({prod['events'] / prod['seconds']:,.0f}"
              f"/s; target {args.rate:,}/s), at most {prod['max_behind_ms']} ms behind schedule, "
              f"in {prod['record_batches']:,} record batches",
              file=sys.stderr, flush=True)
        try:
            seen_out, _ = poller.communicate(timeout=args.drain)
        except subprocess.TimeoutExpired:
            poller.send_signal(signal.SIGTERM)  # it prints what it has seen
            seen_out, _ = poller.communicate(timeout=30)
        seen = json.loads(seen_out)
        cpu = {"run-pipeline": pipeline.cpu, "producer": prod.get("cpu_s"), "poller": seen.get("cpu_s"),
               "tansu": cpu_seconds(broker.pid)}
        code = pipeline.stop()
        load_after = os.getloadavg()
        commits = delta_log_stats(out)
        report(args, prod, seen, latencies, code, pipeline, commits, cpu, (load_before, load_after), work)
    finally:
        if prober:
            prober.send_signal(signal.SIGTERM)
            prober.wait(30)
            print_probes(probes)
        if pipeline:
            pipeline.stop()
        if poller and poller.poll() is None:
            poller.kill()
        broker.kill()
        if args.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def print_probes(path):
    """The broker probe's timings by 10 s of the run."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        rounds = [json.loads(line) for line in f]
    if not rounds:
        return
    print("\nbroker probe (what KafkaSource::partitions() asks; ms, mean/max per 10 s): "
          "metadata, 4 watermarks, probe high-1..EOF; messages in the topic")
    t0 = rounds[0][0]
    for lo in range(0, int((rounds[-1][0] - t0) / 1000) + 1, 10):
        group = [r for r in rounds if lo <= (r[0] - t0) / 1000 < lo + 10]
        if group:
            cells = [f"{statistics.mean(r[i] for r in group):6.0f}/{max(r[i] for r in group):5.0f}" for i in (1, 2, 3)]
            print(f"  {lo:>3}-{lo + 10:<3}s  " + "  ".join(cells) + f"  {group[-1][4]:>10,}")


def delta_log_stats(table):
    """Per commit file of TABLE's _delta_log: {version: {mtime_ms, bytes, actions: {kind: n}}}, and the
    checkpoints: {"checkpoints": {version: (mtime_ms, bytes)}}."""
    log = os.path.join(table, "_delta_log")
    commits, checkpoints = {}, {}
    for name in sorted(os.listdir(log)) if os.path.isdir(log) else []:
        path = os.path.join(log, name)
        st = os.stat(path)
        if re.fullmatch(r"\d{20}\.json", name):
            actions = {}
            with open(path) as f:
                for line in f:
                    if line.strip():
                        kind = next(iter(json.loads(line)))
                        actions[kind] = actions.get(kind, 0) + 1
            commits[int(name[:20])] = {"mtime_ms": st.st_mtime_ns / 1e6, "bytes": st.st_size, "actions": actions}
        elif ".checkpoint" in name:
            checkpoints[int(name[:20])] = (st.st_mtime_ns / 1e6, st.st_size)
    return {"commits": commits, "checkpoints": checkpoints}


BATCH_LINE = re.compile(r"^batch (\d+): (\d+) rows in.*?, ([\d.]+)s(?: \(commit (\d+)ms\))?.*?lag (\d+)")


def batches_of(lines, commits):
    """The `batch N:` lines (with their arrival time), each joined with version N-1's commit file:
    dicts of id, rows, total/commit seconds, lag, printed_ms, version, commit_mtime_ms, start_ms, ..."""
    batches = []
    for printed, line in lines:
        m = BATCH_LINE.match(line)
        if not m:
            continue
        b = {"id": int(m[1]), "rows": int(m[2]), "total": float(m[3]),
             "commit": int(m[4]) / 1000 if m[4] else float("nan"), "lag": int(m[5]), "printed_ms": printed}
        b["version"] = b["id"] - 1
        c = commits["commits"].get(b["version"])
        b["commit_mtime_ms"] = c["mtime_ms"] if c else float("nan")
        b["log_bytes"] = c["bytes"] if c else 0
        b["actions"] = sum(c["actions"].values()) if c else 0
        # The line is printed after the commit and a look at the broker's latest offsets (the lag).
        b["after_commit"] = (printed - b["commit_mtime_ms"]) / 1000
        b["start_ms"] = b["commit_mtime_ms"] - b["total"] * 1000
        b["checkpoint"] = b["version"] in commits["checkpoints"]
        batches.append(b)
    for prev, b in zip(batches, batches[1:]):
        prev["gap"] = (b["start_ms"] - prev["commit_mtime_ms"]) / 1000  # commit .. next batch's start
    return batches


def add_phases(lines, batches):
    """With -vv (delta-rs's info lines), splits each batch at the Delta table's open (`snap.build`
    outside a write) and the write's start and commit (`write_operation`, `commit_with_retries`):
    kafka_open = batch start .. table open (compile, Kafka metadata, watermarks, end probe);
    delta_open = opening the table, the txn check; write = reading the Kafka ranges, decoding, writing
    parquet; commit = .. the commit file. Leaves batches without those lines alone."""
    marks, current = {}, {}
    for t, line in lines:
        if m := BATCH_LINE.match(line):
            marks[int(m[1])], current = current, {}
        elif "snap.build" in line and "building snapshot" in line and "write_operation" not in line:
            current.setdefault("open", t)
        elif "write_operation{" in line:
            current.setdefault("write", t)
            if "commit_with_retries{" in line:
                current.setdefault("commit", t)
    for b in batches:
        m = marks.get(b["id"], {})
        if not all(k in m for k in ("open", "write", "commit")):
            continue
        b["kafka_open"] = (m["open"] - b["start_ms"]) / 1000
        b["delta_open"] = (m["write"] - m["open"]) / 1000
        b["write"] = (m["commit"] - m["write"]) / 1000
    return any("kafka_open" in b for b in batches)


def print_diagnostics(batches, commits, seen, work, lines):
    """Per-batch time by version ranges, the slowest batches, checkpoints, the poller's own costs."""
    if not batches:
        return
    with open(os.path.join(work, "batches.tsv"), "w") as f:
        phases = add_phases(lines, batches)
        keys = ["id", "version", "rows", "total", "commit", "after_commit", "gap", "lag", "log_bytes", "actions",
                "checkpoint", "start_ms", "commit_mtime_ms", "printed_ms", "kafka_open", "delta_open", "write"]
        f.write("\t".join(keys) + "\n")
        for b in batches:
            f.write("\t".join(str(b.get(k, "")) for k in keys) + "\n")

    def mean(xs):
        xs = [x for x in xs if x == x]
        return statistics.mean(xs) if xs else float("nan")

    print("\nper batch (s): total = from the batch's start to its commit; commit = its sink commits; "
          "pre = total - commit (Kafka metadata + fetch + decode + parquet write + table open); after = commit "
          "file mtime .. batch line (the lag lookup: Kafka watermarks + end probe again); gap = commit .. next "
          "batch start (after + the trigger's wait); cycle = start .. next start")
    print(f"{'batches':<14} {'n':>3} {'rows':>7} {'total':>6} {'commit':>6} {'pre':>6} {'after':>6} {'gap':>6} "
          f"{'cycle':>6} {'max':>6}")
    step = 10
    for lo in range(0, max(b["version"] for b in batches) + 1, step):
        group = [b for b in batches if lo <= b["version"] < lo + step]
        if not group:
            continue
        cycles = [(b2["start_ms"] - b1["start_ms"]) / 1000 for b1, b2 in zip(group, group[1:])]
        print(f"v{lo}-{lo + step - 1:<10} {len(group):>3} {mean([b['rows'] for b in group]):>7.0f} "
              f"{mean([b['total'] for b in group]):>6.2f} {mean([b['commit'] for b in group]):>6.2f} "
              f"{mean([b['total'] - b['commit'] for b in group]):>6.2f} {mean([b['after_commit'] for b in group]):>6.2f} "
              f"{mean([b.get('gap', float('nan')) for b in group]):>6.2f} {mean(cycles):>6.2f} "
              f"{max(b['total'] for b in group):>6.2f}")
    if phases:
        print("with -vv, total = kafka_open (Kafka metadata, watermarks, end probe) + delta_open (table load, "
              "txn check) + write (Kafka fetch, decode, parquet) + commit; means (s):")
        for lo in range(0, max(b["version"] for b in batches) + 1, step):
            group = [b for b in batches if lo <= b["version"] < lo + step and "kafka_open" in b]
            if group:
                print(f"  v{lo}-{lo + step - 1:<10} " + "  ".join(
                    f"{k} {mean([b[k] for b in group]):.3f}" for k in ("kafka_open", "delta_open", "write")))
    print("slowest batches: " + "; ".join(
        f"#{b['id']} v{b['version']} {b['total']:.2f}s (commit {b['commit']:.2f}, after {b['after_commit']:.2f}, "
        f"rows {b['rows']:,}{', checkpoint' if b['checkpoint'] else ''}"
        + (f", kafka_open {b['kafka_open']:.2f}, delta_open {b['delta_open']:.2f}, write {b['write']:.2f}"
           if "kafka_open" in b else "") + ")"
        for b in sorted(batches, key=lambda b: -b["total"])[:4]))
    gaps = sorted(batches[:-1], key=lambda b: -b.get("gap", 0))[:3]
    print("longest gaps after: " + "; ".join(f"#{b['id']} {b['gap']:.2f}s" for b in gaps))
    cps = commits["checkpoints"]
    print(f"checkpoints: {', '.join(f'v{v} ({size / 1024:.0f} KiB)' for v, (_, size) in sorted(cps.items())) or 'none'}"
          f"; commit files {len(commits['commits'])}, "
          f"{statistics.mean(c['bytes'] for c in commits['commits'].values()):,.0f} B and "
          f"{statistics.mean(sum(c['actions'].values()) for c in commits['commits'].values()):.1f} actions each")
    if seen.get("reload_ms"):
        r = sorted(seen["reload_ms"])
        print(f"poller: reload (update_incremental/listing) p50 {percentile(r, 0.5):.0f} ms p99 "
              f"{percentile(r, 0.99):.0f} ms max {r[-1]:.0f} ms; reading a version's new files p50 "
              f"{percentile(sorted(seen['read_ms']), 0.5):.0f} ms max {max(seen['read_ms']):.0f} ms")


def report(args, prod, seen, latencies_path, code, pipeline, commits, cpu, load, work):
    """Prints the latency percentiles, rates, batches and peak RSS; exits 1 on a failure or lost rows."""
    log = pipeline.stderr()
    rows = []
    with open(latencies_path) as f:
        for line in f:
            rows.append(json.loads(line))  # [seq, produced_ms, visible_ms, version]
    lat_all = sorted(r[2] - r[1] for r in rows)
    cut = prod["start_ms"] + args.warmup * 1000
    steady = [r for r in rows if r[1] >= cut]
    lat_steady = sorted(r[2] - r[1] for r in steady)
    mtimes = {v: c["mtime_ms"] for v, c in commits["commits"].items()}
    lat_commit = sorted(mtimes[r[3]] - r[1] for r in steady if r[3] in mtimes)  # produce -> commit file
    lat_poll = sorted(r[2] - mtimes[r[3]] for r in steady if r[3] in mtimes)  # commit file -> seen
    batches = batches_of(pipeline.lines, commits)
    print(f"\nKafka ({args.parts} partitions) -> run-pipeline trigger {args.trigger!r} -> Delta append; "
          f"{prod['events']:,} events produced at {prod['events'] / prod['seconds']:,.0f}/s for {prod['seconds']:.0f} s; "
          f"Delta polled every {args.poll_ms} ms ({args.poll_mode})")
    extra = {k: v for k, v in (("source", args.source_config), ("sink", args.sink_config)) if v != "{}"}
    if extra:
        print("extra config: " + ", ".join(f"{k} {v}" for k, v in extra.items()))
    print(f"{'rows':<34} {'count':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for name, lat in (("all", lat_all), (f"produced after {args.warmup:g} s", lat_steady),
                      ("  of which produce -> commit file", lat_commit),
                      ("  of which commit file -> seen", lat_poll)):
        print(f"{name:<34} {len(lat):>9,} {percentile(lat, 0.5):>8.0f} {percentile(lat, 0.99):>8.0f} "
              f"{(lat[-1] if lat else float('nan')):>8.0f}")
    if rows:
        span = (max(r[2] for r in rows) - prod["start_ms"]) / 1000
        print(f"delivered {len(rows):,} rows, {len(rows) / span:,.0f} events/s from the first produce to the last "
              f"row visible ({span:.1f} s)")
    if batches:
        sizes = [b["rows"] for b in batches]
        took = [b["total"] for b in batches]
        commit = [b["commit"] * 1000 for b in batches]
        print(f"run-pipeline: {len(batches)} batches, rows per batch p50 {statistics.median(sizes):,.0f}, batch time "
              f"p50 {statistics.median(took):.2f} s mean {statistics.mean(took):.2f} s max {max(took):.2f} s, "
              f"commit p50 {statistics.median(commit):.0f} ms max {max(commit):.0f} ms")
    print(f"run-pipeline peak RSS {pipeline.peak / 2**20:.0f} MB; exit code after SIGTERM {code}")
    print("CPU s: " + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items() if v is not None)
          + f"; load average before {load[0][0]:.2f}, after {load[1][0]:.2f} (1 min), {os.cpu_count()} CPUs")
    print(f"Delta versions seen {seen['versions']}, missing rows {seen['missing']:,}, duplicated rows "
          f"{seen['duplicates']:,}")
    if args.diag:
        print_diagnostics(batches, commits, seen, work, pipeline.lines)
    p99 = percentile(lat_steady, 0.99)
    print(f"\np99 produce -> visible (after warm-up): {p99 / 1000:.2f} s (target <= 2.5 s at 20,000 events/s)")
    if args.json_out:
        with open(args.json_out, "a") as f:
            f.write(json.dumps({
                "trigger": args.trigger, "poll_mode": args.poll_mode, "source": args.source_config,
                "sink": args.sink_config, "run_args": args.run_args,
                "p50": percentile(lat_steady, 0.5), "p99": p99, "max": lat_steady[-1] if lat_steady else None,
                "commit_p50": percentile(lat_commit, 0.5), "commit_p99": percentile(lat_commit, 0.99),
                "commit_max": lat_commit[-1] if lat_commit else None,
                "poll_p50": percentile(lat_poll, 0.5), "poll_p99": percentile(lat_poll, 0.99),
                "batches": len(batches), "batch_mean": statistics.mean(b["total"] for b in batches) if batches else None,
                "batch_max": max((b["total"] for b in batches), default=None),
                "commit_mean": statistics.mean(b["commit"] for b in batches) if batches else None,
                "checkpoints": sorted(commits["checkpoints"]), "load": load, "cpu": cpu,
                "record_batches": prod.get("record_batches"), "linger_ms": args.linger_ms,
                "missing": seen["missing"], "duplicates": seen["duplicates"], "work": work if args.keep else None,
            }) + "\n")
    problems = []
    if code not in (0, None):
        problems.append(f"run-pipeline exited {code}: {log.strip().splitlines()[-1] if log.strip() else ''}")
    if seen["missing"] or seen["duplicates"]:
        problems.append(f"{seen['missing']} rows missing, {seen['duplicates']} duplicated")
    if problems:
        raise SystemExit("; ".join(problems))


# ---------------------------------------------------------------- peers (run inside the peers venv)

def produce(bootstrap, rate, duration, parts, linger_ms):
    """Produces RATE bids/s for DURATION s in 10 ms ticks (catching up when behind); prints a JSON summary."""
    import random
    from confluent_kafka import Producer
    batches = [0]  # record batches sent (each one an object in tansu's memory storage)

    def stats(text):
        batches[0] += json.loads(text).get("topics", {}).get(TOPIC, {}).get("batchcnt", {}).get("cnt", 0)

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": linger_ms, "enable.idempotence": True,
                  "batch.size": 1000000, "queue.buffering.max.messages": 1000000,
                  "statistics.interval.ms": 1000, "stats_cb": stats})
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
    seconds = time.time() - start
    time.sleep(1.1)
    p.poll(0)  # the last statistics
    import resource
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"events": total, "seconds": seconds, "start_ms": int(start * 1000),
                      "max_behind_ms": int(behind * 1000), "cpu_s": usage.ru_utime + usage.ru_stime,
                      "record_batches": batches[0]}))


def commit_adds(path, version):
    """The data files version VERSION of the table at PATH added (None if that commit is not there yet)."""
    from urllib.parse import unquote
    try:
        with open(os.path.join(path, "_delta_log", f"{version:020d}.json")) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return None
    return [unquote(a["add"]["path"]) for a in map(json.loads, filter(None, lines)) if "add" in a]


def poll(path, total, poll_ms, out_path, mode):
    """Polls the Delta table at PATH until TOTAL distinct seqs are visible (or SIGTERM): for each new
    version, the rows of the files it added, stamped with the time the version was first seen. MODE
    deltalake: a version is seen when DeltaTable.update_incremental() reaches it; log: when its commit
    file is in _delta_log. Writes [seq, produced_ms, visible_ms, version] lines to OUT_PATH; prints
    {versions, missing, duplicates, reload_ms (per poll), read_ms (per version), cpu_s}."""
    import resource
    import pyarrow.parquet as pq
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    seen_seq, duplicates, versions = set(), 0, 0
    reload_ms, read_ms = [], []
    table, next_version = None, 0
    with open(out_path, "w") as out:
        while not stop.is_set() and len(seen_seq) < total:
            time.sleep(poll_ms / 1000)
            t0 = time.perf_counter()
            if mode == "log":
                new_versions = []
                while (adds := commit_adds(path, next_version + len(new_versions))) is not None:
                    new_versions.append(adds)
            else:
                from deltalake import DeltaTable
                try:
                    if table is None:
                        if not os.path.isdir(os.path.join(path, "_delta_log")):
                            continue
                        table = DeltaTable(path)
                    else:
                        table.update_incremental()
                except Exception:  # the table's first commit not complete yet
                    continue
                new_versions = [commit_adds(path, v) or [] for v in range(next_version, table.version() + 1)]
            visible_ms = int(time.time() * 1000)
            reload_ms.append((time.perf_counter() - t0) * 1000)
            for adds in new_versions:
                t1 = time.perf_counter()
                versions += 1
                for f in adds:
                    cols = pq.read_table(os.path.join(path, f), columns=["seq", "produced_ms"]).to_pydict()
                    for seq, produced in zip(cols["seq"], cols["produced_ms"]):
                        if seq in seen_seq:
                            duplicates += 1  # also a compaction's rewrite, were one running
                            continue
                        seen_seq.add(seq)
                        out.write(f"[{seq},{produced},{visible_ms},{next_version}]\n")
                next_version += 1
                read_ms.append((time.perf_counter() - t1) * 1000)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"versions": versions, "missing": total - len(seen_seq), "duplicates": duplicates,
                      "reload_ms": reload_ms, "read_ms": read_ms, "cpu_s": usage.ru_utime + usage.ru_stime}),
          flush=True)
    os._exit(0)  # deltalake's runtime threads sometimes abort at interpreter exit


def probe(bootstrap, parts, out_path):
    """Every 0.5 s (until SIGTERM) does what run-pipeline's Kafka source does twice per batch to learn
    the partitions' ends (KafkaSource::partitions): metadata, the watermarks of each partition, then
    reads from each partition's high - 1 to its end (probe_ends); writes one JSON line per round:
    [epoch_ms, metadata_ms, watermarks_ms, probe_ms, total high watermark]."""
    from confluent_kafka import Consumer, TopicPartition
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "probe", "enable.auto.commit": False,
                  "enable.partition.eof": True, "fetch.wait.max.ms": 10})
    with open(out_path, "w") as out:
        while not stop.is_set():
            t0 = time.perf_counter()
            c.list_topics(TOPIC, timeout=10)
            t1 = time.perf_counter()
            marks = [c.get_watermark_offsets(TopicPartition(TOPIC, p), timeout=10) for p in range(parts)]
            t2 = time.perf_counter()
            assign = [TopicPartition(TOPIC, p, high - 1) for p, (low, high) in enumerate(marks) if high > low]
            if assign:
                c.assign(assign)
                open_, deadline = len(assign), time.time() + 5
                while open_ and time.time() < deadline:
                    m = c.poll(0.05)
                    if m is not None and m.error() and m.error().code() == -191:  # _PARTITION_EOF
                        open_ -= 1
                c.unassign()
            t3 = time.perf_counter()
            out.write(json.dumps([int(time.time() * 1000), round((t1 - t0) * 1000, 1), round((t2 - t1) * 1000, 1),
                                  round((t3 - t2) * 1000, 1), sum(h for _, h in marks)]) + "\n")
            out.flush()
            stop.wait(0.5)
    c.close()


def peer():
    """`--peer produce BOOTSTRAP RATE DURATION PARTS LINGER_MS`, `--peer poll PATH TOTAL POLL_MS OUT MODE`,
    `--peer probe BOOTSTRAP PARTS OUT`."""
    what, rest = sys.argv[2], sys.argv[3:]
    if what == "produce":
        produce(rest[0], int(rest[1]), float(rest[2]), int(rest[3]), int(rest[4]))
    elif what == "poll":
        poll(rest[0], int(rest[1]), int(rest[2]), rest[3], rest[4])
    elif what == "probe":
        probe(rest[0], int(rest[1]), rest[2])


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--peer":
        peer()
    else:
        main()
