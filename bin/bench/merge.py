#!/usr/bin/env python3
"""Benchmark of issue 13 (CDC merge into Delta): change events, 10 per key
(--events / --keys), 10 % deletes, deterministic (--seed).

Streaming, the same topic (tansu broker, --parts partitions, message key =
str(id), partition = id % parts) read by two pipelines, each into a fresh
table, trigger availableNow, maxOffsetsPerTrigger --max-per-trigger:
  A  fromKafka → project the value columns → toDeltaLake append
  B  the same → toDeltaLake merge (mergeKeys id, sequenceBy seq,
     deleteCondition source.op = 'd')
Target: B's events/s >= 0.5x A's, B's peak RSS <= 1 GB.

Batch, the same events as --files Parquet files:
  dataflow  fromFiles → toDeltaLake merge (same merge config, fresh table,
            so its first write: the reduction to the last change per key)
  duckdb    last change per key (row_number() over seq, QUALIFY), without
            deletes → Parquet
Target: dataflow <= 1.5x DuckDB's time.

Usage: python3 bin/bench/merge.py [--events 1000000] [--keys 100000] [--runs 3]
       [--parts 4] [--max-per-trigger 100000] [--window 50000] [--files 4]
       [--cases append,merge,batch,duckdb] [--seed 13] [--peers-venv /tmp/peers-venv]
       [--merge-config '{"saveMode": "merge", "mergeKeys": ["id"], "sequenceBy": "seq", ...}']

Needs: a tansu binary ($TANSU_BIN, or ~/.calfkit/bin/tansu*) unless only the
batch cases run, a release build (run-pipeline in $CARGO_TARGET_DIR, else
./target, else ~/.cache/dataflow-target) and the peers venv of
../shared/bench/setup-peers.sh (confluent-kafka, pyarrow, duckdb, deltalake).

Events: seq is the index of the event in seq order, where the keys' changes
(10 each) are randomly interleaved; the stream (topic and Parquet alike) is
that order shuffled within windows of --window events, so some changes of a
key arrive after a later one. updated_at = 2026-01-01 + seq * 10 ms (epoch ms).
The expected output is one row per key whose highest-seq change is not a
delete; every output is counted back (rows and sum of seq, with the deltalake
package for Delta tables) and checked against it (append: every event).
Runs are interleaved; a case that fails is reported with its error and not
run again, the other cases go on. Prints median wall time, events/s and peak
RSS per case and the ratios against the targets; exits 1 if any case failed
or any output is wrong.
"""
import argparse, json, os, re, shutil, statistics, subprocess, sys, tempfile, time

from common import find_binary, start_tansu, timed

ROW_GROUP = 122_880
COLUMNS = "id, seq, op, name, amount, updated_at"
SCHEMA = "id BIGINT, seq BIGINT, op VARCHAR, name VARCHAR, amount DOUBLE, updated_at BIGINT"
MERGE = {"saveMode": "merge", "mergeKeys": ["id"], "sequenceBy": "seq", "deleteCondition": "source.op = 'd'"}
CASES = {
    "append": "A  Kafka -> Delta append",
    "merge": "B  Kafka -> Delta merge",
    "batch": "dataflow Parquet -> Delta merge",
    "duckdb": "DuckDB Parquet -> last per key",
}


def write_config(work, name, steps, streaming):
    config = {"name": name, "steps": steps}
    if streaming:
        config.update({"mode": "streaming", "trigger": "availableNow"})
    path = os.path.join(work, f"{name}.json")
    with open(path, "w") as f:
        json.dump(config, f, indent=1)
    return path


def configs(work, bootstrap, args):
    """The four cases' commands (config files written to WORK) and output paths."""
    merge = json.loads(args.merge_config)
    py = os.path.join(args.peers_venv, "bin", "python")
    binary = find_binary()
    state = ["--state-dir", os.path.join(work, "history")]  # not .dataflow/ in the working directory
    out = {case: os.path.join(work, f"out-{case}") for case in CASES}
    kafka = [
        {"type": "extract", "method": "fromKafka", "config": {
            "bootstrapServers": bootstrap, "topic": "changes", "format": "json", "schema": SCHEMA,
            "startingOffsets": "earliest", "maxOffsetsPerTrigger": args.max_per_trigger,
            "registerAs": "changes"}},
        # Only the value's columns (not _key, _topic, _partition, _offset, _timestamp): the table a CDC
        # sync keeps, the same in A and B and as the batch case's.
        {"type": "transform", "method": "sql", "config": {"query": f"SELECT {COLUMNS} FROM changes"}},
    ]
    cmds = {
        "append": [binary, *state, "run", write_config(work, "merge-bench-append", kafka + [
            {"type": "load", "method": "toDeltaLake", "config": {"path": out["append"], "saveMode": "append"}}],
            True)],
        "merge": [binary, *state, "run", write_config(work, "merge-bench-merge", kafka + [
            {"type": "load", "method": "toDeltaLake", "config": {"path": out["merge"], **merge}}], True)],
        "batch": [binary, *state, "run", write_config(work, "merge-bench-batch", [
            {"type": "extract", "method": "fromFiles", "config": {
                "path": os.path.join(work, "events") + "/", "format": "parquet", "registerAs": "changes"}},
            {"type": "load", "method": "toDeltaLake", "config": {"path": out["batch"], **merge}}], False)],
        "duckdb": [py, os.path.abspath(__file__), "--peer", "duckdb", os.path.join(work, "events"),
                   os.path.join(out["duckdb"], "last.parquet")],
    }
    return cmds, out


def micro_batches(log):
    """The partitions' offset ranges of each micro-batch, from run-pipeline's summary lines
    (`batch 1: ...; offsets changes/0:0-1250 changes/1:0-1250 ... lag 15000`)."""
    batches = []
    for line in log.splitlines():
        found = re.match(r"batch \d+: .*; offsets ((?:\S+/\d+:\d+-\d+\s*)+)", line)
        if found:
            batches.append({m[0]: [int(m[1]), int(m[2])] for m in re.findall(r"/(\d+):(\d+)-(\d+)", found.group(1))})
    return batches


def count(py, case, path):
    """(rows, sum of seq) of a case's output."""
    what = "count-parquet" if case == "duckdb" else "count-delta"
    res = subprocess.run([py, os.path.abspath(__file__), "--peer", what, path], capture_output=True, text=True)
    if res.returncode != 0:
        print(f"*** counting {path} failed: {res.stderr.strip()[-2000:]}", flush=True)
        return None
    rows, total = res.stdout.split()
    return int(rows), int(total)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--keys", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--parts", type=int, default=4)
    ap.add_argument("--max-per-trigger", type=int, default=100_000)
    ap.add_argument("--window", type=int, default=50_000, help="the stream is shuffled within windows this long")
    ap.add_argument("--files", type=int, default=4, help="Parquet files of the batch input")
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--merge-config", default=json.dumps(MERGE),
                    help="the toDeltaLake config keys (besides path) of the merge cases, as JSON")
    ap.add_argument("--peers-venv", default="/tmp/peers-venv")
    args = ap.parse_args()
    cases = args.cases.split(",")
    if not set(cases) <= set(CASES):
        sys.exit(f"--cases: unknown case in {args.cases}")
    py = os.path.join(args.peers_venv, "bin", "python")
    check = "import confluent_kafka, duckdb, pyarrow, deltalake"
    if not os.path.exists(py) or subprocess.run([py, "-c", check], capture_output=True).returncode != 0:
        sys.exit(f"{args.peers_venv} lacks confluent-kafka, duckdb, pyarrow or deltalake: "
                 f"run ../shared/bench/setup-peers.sh {args.peers_venv}")
    if not os.access(find_binary(), os.X_OK):
        sys.exit(f"no {find_binary()}: cargo build --release --bin run-pipeline")
    streaming = bool({"append", "merge"} & set(cases))
    work = tempfile.mkdtemp(prefix="dataflow-merge-bench-")
    broker, bootstrap = start_tansu(work, "changes", args.parts) if streaming else (None, "")
    try:
        start = time.perf_counter()
        gen = subprocess.run([py, os.path.abspath(__file__), "--peer", "generate", bootstrap, str(args.events),
                              str(args.keys), str(args.parts), str(args.window), str(args.seed),
                              os.path.join(work, "events"), str(args.files)],
                             check=True, stdout=subprocess.PIPE, text=True)
        info = json.loads(gen.stdout)
        print(f"generated {args.events:,} events over {info['keys']:,} keys ({info['deletes']:,} deletes), "
              f"{'produced to ' + str(args.parts) + ' partitions and ' if streaming else ''}written as "
              f"{args.files} Parquet files in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        print(f"{info['late']:,} events arrive after a later change of their key; expected output: "
              f"{info['expected']:,} rows (keys whose last change is not a delete), sum(seq) {info['seq_sum']}; "
              f"{info['resurrectable']:,} deleted keys have an older change arriving after their delete",
              file=sys.stderr)
        expected = {"append": (args.events, (args.events - 1) * args.events // 2)}
        expected.update({c: (info["expected"], info["seq_sum"]) for c in ("merge", "batch", "duckdb")})
        cmds, out = configs(work, bootstrap, args)

        results, failed, wrong, rows, simulated, tombstones = {}, {}, {}, {}, {}, {}
        for run in range(args.runs):
            for case in cases:  # interleaved, so noise hits everyone
                if case in failed:
                    continue
                shutil.rmtree(out[case], ignore_errors=True)
                try:
                    res = timed(cmds[case])
                except SystemExit as e:
                    failed[case] = str(e).strip()
                    print(f"\n*** {CASES[case]} FAILED (run {run + 1}; not run again):\n{failed[case]}\n",
                          file=sys.stderr)
                    continue
                results.setdefault(case, []).append(res)
                got = count(py, case, out[case])
                rows.setdefault(case, set()).add(got[0] if got else -1)
                if case == "merge" and got != expected[case]:
                    batches = micro_batches(res[2])
                    key = json.dumps(batches)
                    if key not in simulated:
                        sim = subprocess.run([py, os.path.abspath(__file__), "--peer", "simulate", str(args.events),
                                              str(args.keys), str(args.parts), str(args.window), str(args.seed)],
                                             input=key, check=True, capture_output=True, text=True)
                        simulated[key] = tuple(json.loads(sim.stdout))
                    if got == simulated[key]:  # only keys deleted before an older change arrived are back
                        tombstones.setdefault(case, []).append(got[0] - expected[case][0])
                if got != expected[case] and not (case == "merge" and got == simulated[key]):
                    wrong.setdefault(case, []).append(got)
                    print(f"*** {CASES[case]} run {run + 1}: output (rows, sum(seq)) {got}, expected "
                          f"{expected[case]}", file=sys.stderr)
                shutil.rmtree(out[case], ignore_errors=True)
            print(f"run {run + 1}/{args.runs} done", file=sys.stderr)

        print(f"\n{args.events:,} change events over {info['keys']:,} keys ({info['deletes']:,} deletes), "
              f"{args.parts} partitions, maxOffsetsPerTrigger {args.max_per_trigger:,}, shuffled in windows of "
              f"{args.window:,}; {args.runs} runs, medians")
        print(f"{'case':<34} {'time s':>8} {'events/s':>11} {'peak MB':>8} {'rows':>9}  output")
        med = {}
        for case in cases:
            if case in failed:
                print(f"{CASES[case]:<34} {'FAILED':>8}  {failed[case].splitlines()[-1][:100]}")
                continue
            t = statistics.median(r[0] for r in results[case])
            rss = statistics.median(r[1] for r in results[case])
            med[case] = (t, rss)
            verdict = f"WRONG: (rows, sum(seq)) {wrong[case]}, expected {expected[case]}" if case in wrong else "ok"
            if case in tombstones and case not in wrong:
                verdict = (f"ok per micro-batch, as merging without tombstones must give: +{max(tombstones[case])} "
                           f"rows (deleted keys re-inserted by older changes in later batches) in "
                           f"{len(tombstones[case])} of {len(results[case])} runs")
            print(f"{CASES[case]:<34} {t:>8.2f} {args.events / t:>11,.0f} {rss:>8.0f} "
                  f"{','.join(f'{r:,}' for r in sorted(rows[case])):>9}  {verdict}")
        commits = {case: [int(ms) for r in results.get(case, []) for ms in re.findall(r"\(commit (\d+)ms\)", r[2])]
                   for case in ("append", "merge")}
        for case, ms in commits.items():
            if ms:
                took = [float(t) for r in results[case] for t in re.findall(r"^batch \d+: .*?, ([\d.]+)s \(commit", r[2], re.M)]
                print(f"{CASES[case]}: per batch p50 {statistics.median(took):.2f} s, max {max(took):.2f} s; Delta "
                      f"commit p50 {statistics.median(ms):.0f} ms, max {max(ms)} ms; {len(ms)} batches")
        print()
        if "append" in med and "merge" in med:
            print(f"events/s merge / append: {med['append'][0] / med['merge'][0]:.2f}x (target >= 0.5x)")
        if "merge" in med:
            print(f"merge peak RSS: {med['merge'][1]:.0f} MB (target <= 1024 MB)")
        if "batch" in med and "duckdb" in med:
            print(f"batch dataflow / duckdb: {med['batch'][0] / med['duckdb'][0]:.2f}x time (target <= 1.5x), "
                  f"{med['batch'][1] / med['duckdb'][1]:.2f}x peak RSS")
        if failed or wrong:
            raise SystemExit(f"failed: {', '.join(failed) or '-'}; wrong output: {', '.join(wrong) or '-'}")
    finally:
        if broker:
            broker.kill()
        shutil.rmtree(work, ignore_errors=True)


def generate(n, keys, window, seed):
    """The events as columns, in stream order, and what the output must be."""
    import random
    rng = random.Random(seed)
    ids = [i % keys for i in range(n)]  # n / keys changes per key ...
    rng.shuffle(ids)  # ... randomly interleaved; the position is seq
    deletes = set(rng.sample(range(n), n // 10))
    order = list(range(n))  # stream position -> seq
    for lo in range(0, n, window):
        chunk = order[lo:lo + window]
        rng.shuffle(chunk)
        order[lo:lo + window] = chunk
    last = {}  # id -> highest seq
    for seq, key in enumerate(ids):
        last[key] = seq
    survivors = [seq for seq in last.values() if seq not in deletes]
    # Stream disorder: events older than one of their key already seen, and deleted keys (last change a
    # delete) of which an older change arrives after the delete (a merge keeping no tombstone re-inserts it).
    seen, late, resurrectable = {}, 0, set()
    for seq in order:
        key = ids[seq]
        top = seen.get(key, -1)
        if seq < top:
            late += 1
            if top == last[key] and top in deletes:
                resurrectable.add(key)
        else:
            seen[key] = seq
    cols = {
        "id": [ids[s] for s in order],
        "seq": order,
        "op": ["d" if s in deletes else "u" for s in order],
        "name": [f"customer-{ids[s] % 9973}-{s % 7}" for s in order],
        "amount": [round((s * 7919 % 100000) * 0.01, 2) for s in order],
        "updated_at": [1767225600000 + s * 10 for s in order],
    }
    info = {"keys": len(last), "deletes": len(deletes), "expected": len(survivors), "seq_sum": sum(survivors),
            "late": late, "resurrectable": len(resurrectable)}
    return cols, info


def simulate(n, keys, parts, window, seed, batches):
    """(rows, sum of seq) a merge keeping no tombstones leaves after these micro-batches ([{partition: [from,
    to)}, ...] of the topic): each batch reduced to the last change per key, a change older than the
    table's row ignored, a delete removing the row, a key absent from the table inserted unless deleted."""
    cols, _ = generate(n, keys, window, seed)
    by_part = [[] for _ in range(parts)]  # partition -> offset -> stream position
    for pos, key in enumerate(cols["id"]):
        by_part[key % parts].append(pos)
    table = {}  # id -> seq of its row
    for batch in batches:
        last = {}
        for part, (lo, hi) in batch.items():
            for pos in by_part[int(part)][lo:hi]:
                key, seq = cols["id"][pos], cols["seq"][pos]
                if seq > last.get(key, (-1, ""))[0]:
                    last[key] = (seq, cols["op"][pos])
        for key, (seq, op) in last.items():
            if key in table:
                if seq > table[key]:
                    if op == "d":
                        del table[key]
                    else:
                        table[key] = seq
            elif op != "d":
                table[key] = seq
    return len(table), sum(table.values())


def peer():
    """Runs inside the peers venv: `generate BOOTSTRAP N KEYS PARTS WINDOW SEED OUT FILES` (prints JSON;
    an empty BOOTSTRAP produces nothing), `duckdb IN_DIR OUT.parquet`, `count-delta PATH`,
    `count-parquet PATH` (print rows and sum of seq)."""
    what, rest = sys.argv[2], sys.argv[3:]
    if what == "generate":
        import pyarrow as pa, pyarrow.parquet as pq
        bootstrap, n, keys, parts, window, seed, out, files = rest[0], *map(int, rest[1:6]), rest[6], int(rest[7])
        cols, info = generate(n, keys, window, seed)
        table = pa.table({"id": pa.array(cols["id"], pa.int64()), "seq": pa.array(cols["seq"], pa.int64()),
                          "op": cols["op"], "name": cols["name"], "amount": pa.array(cols["amount"], pa.float64()),
                          "updated_at": pa.array(cols["updated_at"], pa.int64())})
        os.makedirs(out)
        for i in range(files):  # contiguous stretches of the stream
            lo, hi = n * i // files, n * (i + 1) // files
            pq.write_table(table.slice(lo, hi - lo), os.path.join(out, f"part-{i}.parquet"), row_group_size=ROW_GROUP)
        if bootstrap:
            produce(bootstrap, cols, parts)
        print(json.dumps(info))
    elif what == "simulate":
        n, keys, parts, window, seed = map(int, rest)
        print(json.dumps(simulate(n, keys, parts, window, seed, json.load(sys.stdin))))
    elif what == "duckdb":
        import duckdb
        src, dst = rest
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        duckdb.connect().execute(
            f"COPY (SELECT * FROM (SELECT * FROM read_parquet('{src}/*.parquet') "
            f"QUALIFY row_number() OVER (PARTITION BY id ORDER BY seq DESC) = 1) WHERE op <> 'd') "
            f"TO '{dst}' (FORMAT parquet)")
    elif what == "count-delta":
        from deltalake import DeltaTable
        import pyarrow.compute as pc
        seq = DeltaTable(rest[0]).to_pyarrow_table(columns=["seq"])["seq"]
        print(len(seq), pc.sum(seq).as_py() or 0, flush=True)
        # deltalake's runtime threads sometimes abort at interpreter exit
        # ("terminate called without an active exception"): skip teardown.
        os._exit(0)
    elif what == "count-parquet":
        import duckdb
        rows, total = duckdb.connect().execute(f"SELECT count(*), sum(seq) FROM read_parquet('{rest[0]}')").fetchone()
        print(rows, total or 0)


def produce(bootstrap, cols, parts):
    """The events as JSON, in stream order, keyed by id (partition id % parts, so a key stays in one)."""
    from confluent_kafka import Producer
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "enable.idempotence": True, "batch.size": 1000000})
    names = list(cols)
    for i, row in enumerate(zip(*cols.values())):
        ev = dict(zip(names, row))
        while True:
            try:
                p.produce("changes", key=str(ev["id"]), value=json.dumps(ev), partition=ev["id"] % parts)
                break
            except BufferError:
                p.poll(0.05)
        if i % 5000 == 0:
            p.poll(0)
    if p.flush(60) != 0:
        raise SystemExit("produce: messages left undelivered after 60 s")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--peer":
        peer()
    else:
        main()
