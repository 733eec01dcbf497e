#!/usr/bin/env python3
"""Benchmark of issue 14 (stateful streaming): Nexmark-shaped auction bids as
JSON-lines files, windowed aggregations with a watermark, side by side.

Data (generated once per --events/--files/--seed, reused from --work):
N bids (auction, bidder, price, channel, url, date_time, extra) in --files
JSON-lines files (each written under a hidden temporary name, then renamed,
as a file source requires). Event time advances --rate events per second
of event time from 2026-01-01 00:00:00 (10 M events span ~1000 s) and each
event's time has a jitter uniform in [0, 5 s) subtracted, so events arrive
out of order by up to 5 s and none is behind a 5 s watermark. Auctions and
bidders follow Nexmark's generator: 3 new auctions per 46 bids, half the
bids go to the current hot auction (one per 100 auctions), the rest to one
of the ~100 auctions in flight; 3/4 of the bids come from a hot bidder;
price = round(10^U(0,6) * 100).

Queries (the same semantics in every engine; windows aligned to the epoch):
  a       per auction per 10 s tumbling window: count(*) AS bids,
          max(price) AS max_price, window_start, window_end
  b       Nexmark q5's aggregation: per auction per sliding 10 s window
          every 2 s: count(*) AS num (each bid is in 5 windows)
  b-full  Nexmark q5 (hot items): the rows of b whose num is the max num of
          their window (ties all kept)

Engines (--only, interleaved over --runs):
  spark     Spark 4 Structured Streaming via spark-submit, local[2],
            spark.sql.shuffle.partitions=2, UI off, session time zone UTC:
            readStream JSON file source with an explicit schema →
            withWatermark("date_time", "5 seconds") → the SQL → Parquet,
            outputMode append, trigger availableNow, fresh checkpoint.
            Driver memory 4g (--spark-driver-memory): with Spark's default
            1g, b dies of OutOfMemoryError at 10 M events, as availableNow
            with the default maxFilesPerTrigger (unlimited) reads every file
            in one batch and the HDFS-backed state store holds all ~4.5 M
            (window, auction) groups on the heap. Everything else at Spark's
            defaults. b-full runs as two chained aggregations (see
            SPARK_B_FULL): Spark rejects Nexmark's join form in append mode
            (the per-window max groups by window.start, a plain column
            without the watermark) and rank() OVER is not streamable.
  duckdb    DuckDB, threads=2, the same query as one batch over the same
            files (read_json with the explicit columns) → Parquet: the floor.
  dataflow  run-pipeline run on a generated streaming pipeline (fromFiles
            streaming → withWatermark → sql → toDeltaLake append, trigger
            availableNow, fresh checkpointLocation). Skipped, with the
            engine's message, while run-pipeline rejects the config (exit 2).

Check: in append mode a streaming engine writes a window once the watermark
(max event time - 5 s) passes its end, so the windows still open at the end
(end > max event time - 5 s) never appear. Every output, restricted to the
closed windows, is compared with DuckDB's answer restricted the same way:
rows, sum of the counts (and of max_price for a) and a per-row fingerprint
(sum of hash(window_start, auction, count, max)); streaming outputs must
hold no open window.

Usage: python3 bin/bench/nexmark.py [--events 10000000] [--files 40] [--runs 3]
       [--only spark,duckdb,dataflow] [--queries a,b,b-full] [--seed 14]
       [--work /tmp/nexmark-work] [--max-files-per-trigger N]
       [--spark-driver-memory 4g] [--peers-venv /tmp/peers-venv] [--json OUT.json]
       python3 bin/bench/nexmark.py --write-configs DIR [--events N ...]   (the pipelines alone, to run by hand)

Needs: the peers venv of ../shared/bench/setup-peers.sh (pyspark, duckdb,
deltalake, pyarrow), Java 17 for Spark, and for dataflow a release build
(run-pipeline in $CARGO_TARGET_DIR, else ./target, else ~/.cache/dataflow-target).
Prints per query the median wall time, events/s and peak RSS (the sum over
the process tree: for Spark the JVM and its Python driver) per engine, and
the ratios events/s vs Spark and wall time vs DuckDB; exits 1 if an engine
failed or gave a wrong answer.
"""
import argparse, datetime, json, multiprocessing, os, random, shutil, signal, statistics, subprocess, sys, tempfile

from common import RunFailed, find_binary, timed_tree

BASE_US = 1767225600 * 1_000_000  # 2026-01-01 00:00:00 UTC
JITTER_US = 5_000_000  # events arrive up to 5 s late (uniform in [0, 5 s))
DELAY = "5 seconds"  # the watermark delay: no event is behind it
SCHEMA = ("auction BIGINT, bidder BIGINT, price BIGINT, channel VARCHAR, url VARCHAR, date_time TIMESTAMP, "
          "extra VARCHAR")
SPARK_SCHEMA = SCHEMA.replace("VARCHAR", "STRING")  # Spark's DDL wants VARCHAR(n)
TS_FORMAT = "%Y-%m-%d %H:%M:%S.%f"  # date_time as written, e.g. 2026-01-01 00:00:00.000100
SPARK_TS_FORMAT = "yyyy-MM-dd HH:mm:ss.SSSSSS"
ENGINES = {
    "spark": "Spark 4.0.1 streaming local[2]",
    "duckdb": "DuckDB 1.5 batch, 2 threads",
    "dataflow": "run-pipeline streaming",
}

# The streaming SQL, Spark's and run-pipeline's, over the watermarked stream `bids_wm`.
SQL_A = ("SELECT window.start AS window_start, window.end AS window_end, auction, count(*) AS bids, "
         "max(price) AS max_price FROM bids_wm GROUP BY window(date_time, '10 seconds'), auction")
SQL_B = ("SELECT window.start AS window_start, window.end AS window_end, auction, count(*) AS num "
         "FROM bids_wm GROUP BY window(date_time, '10 seconds', '2 seconds'), auction")
# q5 as Nexmark writes it: the counts joined with their window's maximum.
SQL_B_FULL = (f"WITH counts AS ({SQL_B}), "
              "maxes AS (SELECT window_start, max(num) AS max_num FROM counts GROUP BY window_start) "
              "SELECT c.window_start, c.window_end, c.auction, c.num FROM counts c "
              "JOIN maxes m ON c.window_start = m.window_start AND c.num = m.max_num")
# q5 as Spark 4 streaming can run it (see spark_peer): two chained aggregations, the second per
# window collecting its (auction, num) pairs, then a stateless explode + filter.
SPARK_B_FULL = [
    ("counts", "SELECT window, auction, count(*) AS num FROM bids_wm "
               "GROUP BY window(date_time, '10 seconds', '2 seconds'), auction"),
    ("per_window", "SELECT window, max(num) AS max_num, collect_list(named_struct('auction', auction, 'num', num)) "
                   "AS items FROM counts GROUP BY window"),
    (None, "SELECT window.start AS window_start, window.end AS window_end, item.auction AS auction, item.num AS num "
           "FROM per_window LATERAL VIEW explode(items) t AS item WHERE item.num = max_num"),
]

# DuckDB, one batch over the view `bids`: the same windows (epoch-aligned: time_bucket's default origin,
# 2000-01-03, is a multiple of 10 s).
DUCK_A = ("SELECT window_start, window_start + INTERVAL 10 SECOND AS window_end, auction, count(*) AS bids, "
          "max(price) AS max_price FROM (SELECT time_bucket(INTERVAL 10 SECOND, date_time) AS window_start, "
          "auction, price FROM bids) GROUP BY window_start, auction")
DUCK_B = ("SELECT window_start, window_start + INTERVAL 10 SECOND AS window_end, auction, count(*) AS num FROM ("
          "SELECT unnest([s, s - INTERVAL 2 SECOND, s - INTERVAL 4 SECOND, s - INTERVAL 6 SECOND, "
          "s - INTERVAL 8 SECOND]) AS window_start, auction "
          "FROM (SELECT time_bucket(INTERVAL 2 SECOND, date_time) AS s, auction FROM bids)) "
          "GROUP BY window_start, auction")
DUCK_B_FULL = (f"WITH counts AS ({DUCK_B}), "
               "maxes AS (SELECT window_start, max(num) AS max_num FROM counts GROUP BY window_start) "
               "SELECT c.window_start, c.window_end, c.auction, c.num FROM counts c "
               "JOIN maxes m ON c.window_start = m.window_start AND c.num = m.max_num")

QUERIES = {  # name: (title, count column, max column or None, streaming SQL, Spark's steps, DuckDB SQL)
    "a": ("(a) count, max(price) per auction, 10 s tumbling", "bids", "max_price", SQL_A, [(None, SQL_A)], DUCK_A),
    "b": ("(b) q5 aggregation: count per auction, 10 s windows every 2 s", "num", None, SQL_B, [(None, SQL_B)],
          DUCK_B),
    "b-full": ("(b-full) q5 hot items: max count per sliding window", "num", None, SQL_B_FULL, SPARK_B_FULL,
               DUCK_B_FULL),
}


# ---------------------------------------------------------------- generator

def _extras():
    """64 short `extra` strings (4-12 letters), the same for every seed."""
    rng = random.Random(0)
    return ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(4 + i % 9)) for i in range(64)]


def generate_file(job):
    """Writes bids LO..HI (global event numbers) as JSON lines to DIR/part-NNNNN.json via a hidden temporary
    name; returns (min, max) event time in µs. Deterministic: the file's own RNG is seeded with (seed, index)."""
    out_dir, index, lo, hi, seed, rate = job
    rng = random.Random(f"nexmark-{seed}-{index}")
    rnd = rng.random
    step = 1_000_000 / rate
    channels = ["Google", "Facebook", "Baidu", "Apple"] + [f"channel-{i}" for i in range(1000)]
    urls = ["https://www.nexmark.com/item.htm?query=1"] * 4 + [
        f"https://www.nexmark.com/{i % 97:x}/item.htm?query=1&channel_id={i}" for i in range(1000)]
    extras = _extras()
    seconds = {}  # epoch second -> "YYYY-MM-DD HH:MM:SS"
    lo_t, hi_t = None, None
    tmp = os.path.join(out_dir, f".part-{index:05d}.json.tmp")
    with open(tmp, "w") as f:
        lines = []
        for i in range(lo, hi):
            t = BASE_US + int(i * step) - int(rnd() * JITTER_US)
            if hi_t is None or t > hi_t:
                hi_t = t
            if lo_t is None or t < lo_t:
                lo_t = t
            sec = t // 1_000_000
            prefix = seconds.get(sec)
            if prefix is None:
                prefix = seconds[sec] = datetime.datetime.fromtimestamp(
                    sec, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
            # Nexmark: auctions and persons are created as the stream goes (3 auctions and 1 person per 46
            # bids); a bid goes to the hot auction (one per 100) half the time, else to one of those in
            # flight (the last 100, or up to 10 ahead); likewise bidders, hot 3/4 of the time.
            last_auction = 1000 + i * 3 // 46
            if rnd() < 0.5:
                auction = 1000 + (last_auction - 1000) // 100 * 100
            else:
                first = max(last_auction - 100, 1000)
                auction = first + int(rnd() * (last_auction - first + 11))
            last_person = 1000 + i // 46
            if rnd() < 0.75:
                bidder = 1001 + (last_person - 1000) // 100 * 100
            else:
                first = max(last_person - 1000, 1000)
                bidder = first + int(rnd() * (last_person - first + 11))
            price = round(10 ** (rnd() * 6) * 100)
            c = int(rnd() * 4) if rnd() < 0.5 else 4 + int(rnd() * 1000)
            lines.append(f'{{"auction":{auction},"bidder":{bidder},"price":{price},"channel":"{channels[c]}",'
                         f'"url":"{urls[c]}","date_time":"{prefix}.{t - sec * 1_000_000:06d}",'
                         f'"extra":"{extras[i & 63]}"}}\n')
            if len(lines) == 50_000:
                f.writelines(lines)
                lines = []
        f.writelines(lines)
    os.rename(tmp, os.path.join(out_dir, f"part-{index:05d}.json"))
    return lo_t, hi_t


def ensure_data(work, events, files, seed, rate):
    """The bids' directory and manifest (events, max event time, ...), generated unless already there."""
    name = f"bids-{events}-{files}-s{seed}-r{rate}"
    data, manifest_path = os.path.join(work, name), os.path.join(work, name + ".json")
    if os.path.exists(manifest_path):
        with open(manifest_path) as f:
            manifest = json.load(f)
        print(f"reusing {events:,} bids in {data}", file=sys.stderr)
        return data, manifest
    shutil.rmtree(data, ignore_errors=True)
    os.makedirs(data)
    start = datetime.datetime.now()
    jobs = [(data, i, events * i // files, events * (i + 1) // files, seed, rate) for i in range(files)]
    with multiprocessing.Pool(min(files, os.cpu_count() or 1)) as pool:
        spans = pool.map(generate_file, jobs, chunksize=1)
    manifest = {"events": events, "files": files, "seed": seed, "rate": rate,
                "min_us": min(s[0] for s in spans), "max_us": max(s[1] for s in spans),
                "bytes": sum(os.path.getsize(os.path.join(data, f)) for f in os.listdir(data))}
    with open(manifest_path, "w") as f:
        json.dump(manifest, f)
    took = (datetime.datetime.now() - start).total_seconds()
    print(f"generated {events:,} bids in {files} files ({manifest['bytes'] / 2**20:,.0f} MB) in {data} "
          f"in {took:.1f} s", file=sys.stderr)
    return data, manifest


def cutoff_us(manifest):
    """The last watermark of a streaming engine (max event time, in whole ms as Spark keeps it, minus 5 s):
    windows ending at or before it are closed, the others are never written in append mode."""
    return manifest["max_us"] // 1000 * 1000 - JITTER_US


def remove(*paths):
    """Deletes files and directory trees, those that exist."""
    for path in paths:
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.exists(path):
            os.remove(path)


def fmt_us(us):
    return datetime.datetime.fromtimestamp(us / 1e6, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")


# ---------------------------------------------------------------- engines

def dataflow_config(work, query, data, out, ckpt, args):
    """run-pipeline's streaming pipeline for QUERY, written to WORK; returns its path."""
    source = {"path": data, "format": "json", "streaming": True, "schema": SCHEMA, "registerAs": "bids"}
    if args.max_files_per_trigger:
        source["maxFilesPerTrigger"] = args.max_files_per_trigger
    config = {
        "name": f"nexmark-{query}", "mode": "streaming", "trigger": "availableNow", "checkpointLocation": ckpt,
        "steps": [
            {"type": "extract", "method": "fromFiles", "config": source},
            {"type": "transform", "method": "withWatermark",
             "config": {"column": "date_time", "delay": DELAY, "registerAs": "bids_wm"}},
            {"type": "transform", "method": "sql", "config": {"query": QUERIES[query][3]}},
            {"type": "load", "method": "toDeltaLake", "config": {"path": out, "outputMode": "append"}},
        ]}
    path = os.path.join(work, f"nexmark-{query}.json")
    with open(path, "w") as f:
        json.dump(config, f, indent=1)
    return path


def command(engine, query, data, out, ckpt, work, args):
    """(argv, env) running ENGINE on QUERY from DATA into OUT."""
    py = os.path.join(args.peers_venv, "bin", "python")
    me = os.path.abspath(__file__)
    if engine == "duckdb":
        return [py, me, "--peer", "duckdb", query, data, os.path.join(out, "result.parquet")], None
    if engine == "spark":
        env = dict(os.environ, PYSPARK_PYTHON=py, PYSPARK_DRIVER_PYTHON=py)
        submit = [os.path.join(args.peers_venv, "bin", "spark-submit"), "--master", "local[2]",
                  "--conf", "spark.sql.shuffle.partitions=2", "--conf", "spark.sql.session.timeZone=UTC",
                  "--conf", "spark.ui.enabled=false"]
        if args.spark_driver_memory:
            submit += ["--driver-memory", args.spark_driver_memory]
        return submit + [me, "--peer", "spark", query, data, out, ckpt, str(args.max_files_per_trigger or 0)], env
    binary = find_binary()
    return [binary, "--state-dir", os.path.join(work, "history"), "run",
            dataflow_config(work, query, data, out, ckpt, args)], None


def summarize(py, engine, query, out, cutoff):
    """Counts an output back (in the peers venv): dict of rows / open_rows / sum_count / sum_max / fingerprint."""
    kind = "delta" if engine == "dataflow" else "parquet"
    res = subprocess.run([py, os.path.abspath(__file__), "--peer", "count", kind, query, out, str(cutoff)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        print(f"*** counting {out} failed: {res.stderr.strip()[-2000:]}", file=sys.stderr, flush=True)
        return None
    return json.loads(res.stdout)


def engine_notes(engine, err, ckpt):
    """A short description of how the engine went through the stream: Spark's progress file, or
    run-pipeline's batch lines on stderr."""
    if engine == "spark" and os.path.exists(ckpt + "-progress.json"):
        with open(ckpt + "-progress.json") as f:
            p = json.load(f)
        return (f"{p['batches']} batches ({p['data_batches']} with data; "
                f"{', '.join(f'{ms / 1000:.1f}' for ms in p['batch_ms'])} s), state rows max "
                f"{p['state_rows_max']:,}, state memory max {p['state_bytes_max'] / 2**20:,.0f} MB, "
                f"dropped by watermark {p['dropped']:,}")
    if engine == "dataflow":
        batches = [line for line in err.splitlines() if line.startswith("batch ")]
        return f"{len(batches)} batches" if batches else ""
    return ""


# ---------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--files", type=int, default=40)
    ap.add_argument("--rate", type=int, default=10_000, help="events per second of event time")
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--only", default=",".join(ENGINES), help=f"comma-separated subset of {','.join(ENGINES)}")
    ap.add_argument("--queries", default="a,b,b-full", help=f"comma-separated subset of {','.join(QUERIES)}")
    ap.add_argument("--work", default="/tmp/nexmark-work", help="the bids are generated here once and reused")
    ap.add_argument("--max-files-per-trigger", type=int, default=0,
                    help="Spark's and run-pipeline's maxFilesPerTrigger (default: unset, i.e. unlimited)")
    ap.add_argument("--spark-driver-memory", default="4g",
                    help="spark-submit --driver-memory ('' for Spark's default, 1g, too small for b at 10 M events)")
    ap.add_argument("--peers-venv", default="/tmp/peers-venv")
    ap.add_argument("--json", help="also write the medians and checks to this file")
    ap.add_argument("--write-configs", metavar="DIR",
                    help="only write run-pipeline's pipelines (output and checkpoint under DIR) and exit")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` and timed_tree clean up
    engines, queries = args.only.split(","), args.queries.split(",")
    if not set(engines) <= set(ENGINES) or not set(queries) <= set(QUERIES):
        sys.exit(f"--only takes {','.join(ENGINES)}; --queries takes {','.join(QUERIES)}")
    py = os.path.join(args.peers_venv, "bin", "python")
    check = "import duckdb, deltalake, pyarrow" + (", pyspark" if "spark" in engines else "")
    if not os.path.exists(py) or subprocess.run([py, "-c", check], capture_output=True).returncode != 0:
        sys.exit(f"{args.peers_venv} lacks duckdb, deltalake, pyarrow or pyspark: "
                 f"run ../shared/bench/setup-peers.sh {args.peers_venv}")
    skipped = {}  # (query, engine) -> why
    if "dataflow" in engines and not os.access(find_binary(), os.X_OK):
        print(f"*** no {find_binary()} (cargo build --release --bin run-pipeline): skipping run-pipeline",
              file=sys.stderr)
        skipped.update({(q, "dataflow"): "no binary" for q in queries})

    os.makedirs(args.work, exist_ok=True)
    data, manifest = ensure_data(args.work, args.events, args.files, args.seed, args.rate)
    if args.write_configs:
        os.makedirs(args.write_configs, exist_ok=True)
        for query in queries:
            print(dataflow_config(args.write_configs, query, data, os.path.join(args.write_configs, f"out-{query}"),
                                  os.path.join(args.write_configs, f"ckpt-{query}"), args))
        return
    n = manifest["events"]
    cutoff = cutoff_us(manifest)
    print(f"event time {fmt_us(manifest['min_us'])} .. {fmt_us(manifest['max_us'])}; windows ending after "
          f"{fmt_us(cutoff)} stay open in append mode", file=sys.stderr)
    scratch = tempfile.mkdtemp(prefix="nexmark-run-", dir=args.work)
    # DuckDB's answer, the reference: from its first timed run, or computed once untimed if it is not timed.
    reference = {}
    results, checks, failed, wrong, notes = {}, {}, {}, {}, {}
    try:
        for run in range(args.runs):
            for query in queries:
                order = ["duckdb"] + [e for e in engines if e != "duckdb"]  # the reference first
                for engine in order:
                    key = (query, engine)
                    if key in skipped or key in failed or (engine not in engines and query in reference):
                        continue
                    out, ckpt = os.path.join(scratch, f"out-{engine}"), os.path.join(scratch, f"ckpt-{engine}")
                    remove(out, ckpt, ckpt + "-progress.json")
                    argv, env = command(engine, query, data, out, ckpt, scratch, args)
                    try:
                        t, rss, err = timed_tree(argv, env=env)
                    except RunFailed as e:
                        lines = [line for line in e.stderr.strip().splitlines() if line.strip()]
                        last = lines[-1] if lines else f"exit {e.returncode}"
                        if engine == "dataflow" and e.returncode == 2:  # invalid config: a feature missing
                            skipped[key] = last
                            print(f"\n*** run-pipeline rejects query {query}'s pipeline (exit 2), skipped: {last}\n",
                                  file=sys.stderr)
                        else:
                            failed[key] = str(e).strip()
                            print(f"\n*** {ENGINES[engine]} query {query} FAILED (run {run + 1}; not run again):\n"
                                  f"{failed[key]}\n", file=sys.stderr)
                        continue
                    got = summarize(py, engine, query, out, cutoff)
                    if engine == "duckdb" and query not in reference:
                        reference[query] = got
                    if engine not in engines:  # the untimed reference run
                        continue
                    results.setdefault(key, []).append((t, rss))
                    notes[key] = engine_notes(engine, err, ckpt)
                    checks[key] = verdict(engine, got, reference.get(query))
                    if checks[key] != "ok":
                        wrong.setdefault(key, []).append(checks[key])
                    print(f"run {run + 1} {query:<6} {engine:<8} {t:8.2f} s {rss:7.0f} MB  "
                          f"{(got or {}).get('rows', -1):>10,} rows  {checks[key]}  {notes[key]}",
                          file=sys.stderr, flush=True)
                    remove(out, ckpt, ckpt + "-progress.json")
        report(args, n, queries, engines, manifest, reference, results, checks, wrong, failed, skipped, notes)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if failed or wrong:
        raise SystemExit(f"failed: {', '.join(map(str, failed)) or '-'}; wrong output: "
                         f"{', '.join(map(str, wrong)) or '-'}")


def verdict(engine, got, ref):
    """'ok', or what differs from DuckDB's answer over the closed windows."""
    if got is None or ref is None:
        return "NOT CHECKED (counting failed)"
    problems = [f"{k} {got[k]} != {ref[k]}" for k in ("rows", "sum_count", "sum_max", "fingerprint")
                if got[k] != ref[k]]
    if engine != "duckdb" and got["open_rows"]:
        problems.append(f"{got['open_rows']} rows of windows still open (append mode must not write them)")
    return "ok" if not problems else "WRONG: " + "; ".join(problems)


def report(args, n, queries, engines, manifest, reference, results, checks, wrong, failed, skipped, notes):
    """The tables: per query, median time, events/s, peak RSS and the ratios per engine."""
    print(f"\n{n:,} bids in {manifest['files']} JSON files ({manifest['bytes'] / 2**20:,.0f} MB), out of order "
          f"within 5 s, {args.runs} interleaved runs, medians; watermark delay 5 s, output mode append; "
          f"maxFilesPerTrigger {args.max_files_per_trigger or 'unset (unlimited)'}")
    summary = {}
    for query in queries:
        ref = reference.get(query) or {}
        print(f"\n{QUERIES[query][0]}: {ref.get('rows', 0):,} rows in closed windows "
              f"(+{ref.get('open_rows', 0):,} in open ones), sum of counts {ref.get('sum_count', 0):,}")
        print(f"{'engine':<32} {'time s':>8} {'events/s':>11} {'peak MB':>8} {'vs Spark':>9} {'vs DuckDB':>10}  check")
        med = {e: (statistics.median(r[0] for r in results[(query, e)]),
                   statistics.median(r[1] for r in results[(query, e)]))
               for e in engines if (query, e) in results}
        for engine in engines:
            key = (query, engine)
            if key in skipped:
                print(f"{ENGINES[engine]:<32} {'skipped':>8}  {skipped[key][:120]}")
                continue
            if key in failed:
                print(f"{ENGINES[engine]:<32} {'FAILED':>8}  {failed[key].splitlines()[-1][:120]}")
                continue
            if engine not in med:
                continue
            t, rss = med[engine]
            vs_spark = f"{med['spark'][0] / t:8.1f}x" if "spark" in med else f"{'-':>9}"
            vs_duck = f"{t / med['duckdb'][0]:9.2f}x" if "duckdb" in med else f"{'-':>10}"
            check = "; ".join(wrong[key]) if key in wrong else checks.get(key, "")
            print(f"{ENGINES[engine]:<32} {t:>8.2f} {n / t:>11,.0f} {rss:>8.0f} {vs_spark} {vs_duck}  {check}")
            summary.setdefault(query, {})[engine] = {"time_s": round(t, 3), "events_per_s": round(n / t),
                                                     "peak_rss_mb": round(rss), "check": check,
                                                     "notes": notes.get(key, "")}
        for engine in engines:
            if notes.get((query, engine)):
                print(f"  {engine}: {notes[(query, engine)]}")
        if "dataflow" in med:
            t, rss = med["dataflow"]
            parts = []
            if "spark" in med:
                parts.append(f"events/s {med['spark'][0] / t:.1f}x Spark's (target >= 10x)")
            if "duckdb" in med:
                parts.append(f"time {t / med['duckdb'][0]:.2f}x DuckDB's (target <= 1.5x)")
            parts.append(f"peak RSS {rss:.0f} MB (target <= 1024 MB)")
            print("  run-pipeline: " + "; ".join(parts))
    print("\nvs Spark: events/s relative to Spark's (higher is better); vs DuckDB: wall time relative to "
          "DuckDB's batch time (lower is better). Peak RSS: the process tree's (Spark: JVM + Python driver).")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"events": n, "runs": args.runs, "queries": summary}, f, indent=1)


# ---------------------------------------------------------------- peers (run inside the peers venv)

def spark_peer(query, data, out, ckpt, max_files):
    """Spark Structured Streaming: the file source → watermark → QUERY → Parquet, availableNow.
    Writes CKPT-progress.json: batches, their durations, state rows and memory."""
    from pyspark.sql import SparkSession
    spark = SparkSession.builder.appName(f"nexmark-{query}").getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    reader = spark.readStream.schema(SPARK_SCHEMA).option("timestampFormat", SPARK_TS_FORMAT)
    if max_files:
        reader = reader.option("maxFilesPerTrigger", max_files)
    reader.json(data).withWatermark("date_time", DELAY).createOrReplaceTempView("bids_wm")
    for name, sql in QUERIES[query][4]:
        if name:
            spark.sql(sql).createOrReplaceTempView(name)
        else:
            result = spark.sql(sql)
    stream = (result.writeStream.format("parquet").option("path", out).option("checkpointLocation", ckpt)
              .outputMode("append").trigger(availableNow=True).start())
    stream.awaitTermination()
    progress = stream.recentProgress
    ops = [op for p in progress for op in p.get("stateOperators", [])]
    # The Python driver's stdout and stderr go through the JVM's stdout: a side file is simpler.
    with open(ckpt.rstrip("/") + "-progress.json", "w") as f:
        json.dump({
        "batches": len(progress), "data_batches": sum(1 for p in progress if p.get("numInputRows")),
        "input_rows": sum(p.get("numInputRows", 0) for p in progress),
        "state_rows_max": max((op.get("numRowsTotal", 0) for op in ops), default=0),
        "state_bytes_max": max((op.get("memoryUsedBytes", 0) for op in ops), default=0),
        "dropped": sum(op.get("numRowsDroppedByWatermark", 0) for op in ops),
        "batch_ms": [p.get("durationMs", {}).get("triggerExecution", 0) for p in progress]}, f)
    spark.stop()


def duckdb_peer(query, data, out):
    """DuckDB, 2 threads: QUERY over all the files as one batch → one Parquet file."""
    import duckdb
    os.makedirs(os.path.dirname(out), exist_ok=True)
    con = duckdb.connect()
    con.execute("SET threads = 2")
    columns = "{" + ", ".join(f"'{c.split()[0]}': '{c.split()[1]}'" for c in SCHEMA.split(", ")) + "}"
    con.execute(f"CREATE VIEW bids AS SELECT * FROM read_json('{data}/*.json', format = 'newline_delimited', "
                f"columns = {columns}, timestampformat = '{TS_FORMAT}')")
    con.execute(f"COPY ({QUERIES[query][5]}) TO '{out}' (FORMAT parquet)")


def count_peer(kind, query, path, cutoff):
    """Prints a JSON summary of an output (Delta table or directory of Parquet files), the closed windows
    (end <= CUTOFF µs) apart from the open ones."""
    import duckdb
    con = duckdb.connect()
    _, count_col, max_col = QUERIES[query][:3]
    if kind == "delta":
        from deltalake import DeltaTable
        con.register("delta_output", DeltaTable(path).to_pyarrow_table())
        source = "delta_output"
    else:
        files = [f for f in os.listdir(path) if f.endswith(".parquet")] if os.path.isdir(path) else []
        source = f"read_parquet('{path}/*.parquet')" if files else None
    if source is None:  # no output file at all
        print(json.dumps({"rows": 0, "open_rows": 0, "sum_count": 0, "sum_max": 0, "fingerprint": 0}))
        return
    row = con.execute(f"""
        SELECT count(*) FILTER (WHERE we <= {cutoff}), count(*) FILTER (WHERE we > {cutoff}),
               coalesce(sum(c) FILTER (WHERE we <= {cutoff}), 0), coalesce(sum(m) FILTER (WHERE we <= {cutoff}), 0),
               coalesce(sum(hash(ws, auction, c, m)) FILTER (WHERE we <= {cutoff}), 0)
        FROM (SELECT epoch_us(window_start) AS ws, epoch_us(window_end) AS we, auction::BIGINT AS auction,
                     {count_col}::BIGINT AS c, {max_col or 0}::BIGINT AS m FROM {source})""").fetchone()
    rows, open_rows, sum_count, sum_max, fp = row
    print(json.dumps({"rows": rows, "open_rows": open_rows, "sum_count": int(sum_count), "sum_max": int(sum_max),
                      "fingerprint": int(fp) % 2**64}), flush=True)


def peer():
    """`--peer spark QUERY DATA OUT CKPT MAXFILES` (under spark-submit), `--peer duckdb QUERY DATA OUT.parquet`,
    `--peer count delta|parquet QUERY PATH CUTOFF_US`."""
    what, rest = sys.argv[2], sys.argv[3:]
    if what == "spark":
        spark_peer(rest[0], rest[1], rest[2], rest[3], int(rest[4]))
    elif what == "duckdb":
        duckdb_peer(*rest)
    elif what == "count":
        count_peer(rest[0], rest[1], rest[2], int(rest[3]))
        # deltalake's runtime threads sometimes abort at interpreter exit: skip teardown.
        os._exit(0)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--peer":
        peer()
    else:
        main()
