//! Stateful streaming through the real `run-pipeline` binary: windowed
//! aggregations kept across micro-batches (files as a stream, and a real
//! Kafka-compatible broker, tansu, under SIGKILLs) checked against DuckDB's
//! batch answer over the same events; late rows; files added while the
//! stream runs; Delta compaction beside a stream; config errors.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use dataflow_connectors::testing::{duckdb_lines, KafkaBroker};

/// A small deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// One event: event time (ms after 2026-01-01), user, amount.
#[derive(Debug, Clone)]
struct Event {
    id: usize,
    ts_ms: i64,
    user: String,
    amount: i64,
}

const BASE_US: i64 = 1_767_225_600_000_000; // 2026-01-01T00:00:00Z

/// `n` events 25 ms apart, each up to 3 s late (out of order within and
/// across micro-batches).
fn events(seed: u64, n: usize) -> Vec<Event> {
    let mut rng = Rng(seed);
    (0..n)
        .map(|i| Event {
            id: i,
            ts_ms: i as i64 * 25 - rng.below(3000) as i64,
            user: format!("u{}", rng.below(5)),
            amount: rng.below(100) as i64,
        })
        .collect()
}

fn json(e: &Event) -> String {
    let base = chrono::DateTime::from_timestamp_micros(BASE_US).unwrap();
    let ts = (base + chrono::Duration::milliseconds(e.ts_ms)).naive_utc();
    format!(
        r#"{{"id": {}, "user": "{}", "amount": {}, "ts": "{}"}}"#,
        e.id,
        e.user,
        e.amount,
        ts.format("%Y-%m-%d %H:%M:%S%.3f")
    )
}

/// Writes `events` as JSON-lines files of `per_file` events into `dir`
/// (write, then rename: the convention file streams need); their paths.
fn write_files(dir: &Path, events: &[Event], per_file: usize, first: usize) -> Vec<String> {
    std::fs::create_dir_all(dir).unwrap();
    events
        .chunks(per_file)
        .enumerate()
        .map(|(i, chunk)| {
            let lines: Vec<String> = chunk.iter().map(json).collect();
            let path = dir.join(format!("events-{:04}.json", first + i));
            let hidden = dir.join(format!(".events-{:04}.json.tmp", first + i));
            std::fs::write(&hidden, lines.join("\n") + "\n").unwrap();
            std::fs::rename(&hidden, &path).unwrap();
            path.display().to_string()
        })
        .collect()
}

const SCHEMA: &str = "id BIGINT, user VARCHAR, amount BIGINT, ts TIMESTAMP";

/// A stream of the files in `input` through `query` (over `events`, with a
/// 5 s watermark) into the Delta table `out/table`.
fn file_pipeline(dir: &Path, input: &Path, query: &str, mode: &str, extra: &str) -> String {
    let config = format!(
        r#"{{"name": "windows", "mode": "streaming", "trigger": "availableNow",
        "checkpointLocation": "{dir}/checkpoint", "outputMode": "{mode}", "steps": [
        {{"type": "extract", "method": "fromFiles", "config": {{"path": "{input}", "format": "json",
          "streaming": true, "maxFilesPerTrigger": 1, "schema": "{SCHEMA}", "registerAs": "raw"}}}},
        {{"type": "transform", "method": "withWatermark", "config": {{"column": "ts", "delay": "5 seconds"{extra},
          "registerAs": "events"}}}},
        {{"type": "transform", "method": "sql", "config": {{"query": "{query}"}}}},
        {{"type": "load", "method": "toDeltaLake", "config": {{"path": "{dir}/table"}}}}
    ]}}"#,
        dir = dir.display(),
        input = input.display()
    );
    write_config(dir, "pipeline.json", &config)
}

const TUMBLING: &str =
    "SELECT window.start AS window_start, user, count(*) AS n, sum(amount) AS total \
    FROM events GROUP BY window(ts, '10 seconds'), user";
const SLIDING: &str =
    "SELECT window.start AS window_start, user, count(*) AS n, sum(amount) AS total \
    FROM events GROUP BY window(ts, '10 seconds', '4 seconds'), user";
const SESSIONS: &str =
    "SELECT session_window.start AS window_start, user, count(*) AS n, sum(amount) AS total \
    FROM events GROUP BY user, session_window(ts, '200 milliseconds')";
/// The table's rows as DuckDB's lines print them.
const LINES: &str =
    "SELECT concat_ws('|', CAST(window_start AS BIGINT), user, n, total) FROM t ORDER BY 1";

/// DuckDB's windows over `files`: (start µs, user, count, sum), those
/// ending at or before `closed_by` µs when given.
fn duckdb_windows(files: &[String], slide_s: i64, closed_by: Option<i64>) -> Vec<String> {
    let list = files
        .iter()
        .map(|f| format!("'{f}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let having = closed_by.map_or(String::new(), |w| format!("HAVING start + 10000000 <= {w}"));
    let sql = format!(
        "WITH e AS (SELECT * FROM read_json([{list}], columns={{id: 'BIGINT', user: 'VARCHAR', amount: 'BIGINT', ts: 'TIMESTAMP'}})),
         w AS (SELECT e.*, epoch_us(time_bucket(INTERVAL {slide_s} second, ts)) - k * {slide_s} * 1000000 AS start
               FROM e, range(0, CAST(ceil(10 / {slide_s}) AS BIGINT)) r(k))
         SELECT concat_ws('|', start, \"user\", count(*), sum(amount)) FROM w
         WHERE epoch_us(ts) < start + 10000000
         GROUP BY start, \"user\" {having} ORDER BY 1"
    );
    let mut lines = duckdb_lines(&sql).unwrap();
    lines.sort();
    lines
}

/// Starts the streaming pipeline `file` in the background, calls
/// `meanwhile`, and SIGKILLs it `ms` milliseconds later.
fn run_and_kill(out: &Path, file: &str, ms: u64, meanwhile: impl FnOnce()) {
    let mut child = cli(out)
        .args(["run", "-q", file])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    meanwhile();
    std::thread::sleep(Duration::from_millis(ms));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

/// Runs `file` once more with its `trigger` made availableNow: the stream
/// reads what is left and stops.
fn drain(out: &Path, file: &str, trigger: &str) {
    let drained = std::fs::read_to_string(file)
        .unwrap()
        .replace(trigger, "availableNow");
    std::fs::write(file, drained).unwrap();
    run(out, &["run", file]).assert_ok();
}

/// The watermark after `events`: the greatest event time less 5 s (µs).
fn final_watermark(events: &[Event]) -> i64 {
    BASE_US + (events.iter().map(|e| e.ts_ms).max().unwrap() - 5000) * 1000
}

async fn table_lines(path: &Path, version: Option<u64>) -> Vec<String> {
    let mut lines = delta_lines(path, version, LINES).await;
    lines.sort();
    lines
}

/// DuckDB's windows of `slide` seconds (0: sessions) over `files`.
fn duckdb_answer(files: &[String], slide: i64, closed_by: Option<i64>) -> Vec<String> {
    match slide {
        0 => duckdb_sessions(files, closed_by),
        _ => duckdb_windows(files, slide, closed_by),
    }
}

/// Tumbling, sliding and session windows in append mode, over events out
/// of order across 12 micro-batches, equal DuckDB's batch answer for every
/// window the watermark closed; a rerun with more files continues from the
/// kept state.
#[tokio::test]
async fn append_windows_over_a_file_stream_equal_duckdb() {
    for (query, slide) in [(TUMBLING, 10), (SLIDING, 4), (SESSIONS, 0)] {
        let out = tempfile::tempdir().unwrap();
        let input = out.path().join("in");
        let all = events(7, 2400);
        let mut files = write_files(&input, &all[..1200], 200, 0);
        let config = file_pipeline(out.path(), &input, query, "append", "");
        run(out.path(), &["run", &config]).assert_ok();
        let table = out.path().join("table");
        let first = final_watermark(&all[..1200]);
        assert_eq!(
            table_lines(&table, None).await,
            duckdb_answer(&files, slide, Some(first)),
            "slide {slide}"
        );

        files.extend(write_files(&input, &all[1200..], 200, 6));
        run(out.path(), &["run", &config]).assert_ok();
        let want = duckdb_answer(&files, slide, Some(final_watermark(&all)));
        assert!(want.len() > 20, "{want:?}");
        assert_eq!(table_lines(&table, None).await, want, "slide {slide}");
    }
}

/// outputMode update (a merge on the group keys) and complete (an
/// overwrite): the table equals DuckDB's answer over the files read so far
/// after every micro-batch.
#[tokio::test]
async fn update_and_complete_tables_equal_duckdb_after_every_batch() {
    for mode in ["update", "complete"] {
        let out = tempfile::tempdir().unwrap();
        let input = out.path().join("in");
        let all = events(11, 1000);
        let files = write_files(&input, &all, 200, 0);
        let config = file_pipeline(out.path(), &input, TUMBLING, mode, "");
        run(out.path(), &["run", &config]).assert_ok();
        let table = out.path().join("table");
        for (version, read) in (1..=files.len()).enumerate() {
            let got = table_lines(&table, Some(version as u64)).await;
            assert_eq!(
                got,
                duckdb_windows(&files[..read], 10, None),
                "{mode} after batch {read}"
            );
        }
    }
}

/// Rows behind the watermark go to lateDataPath with their reason, are
/// counted in the history, and never reach a window.
#[tokio::test]
async fn late_rows_reach_the_late_data_table_with_their_reason() {
    let out = tempfile::tempdir().unwrap();
    let input = out.path().join("in");
    let mut all = events(3, 600);
    let late: Vec<Event> = (0..7)
        .map(|i| Event {
            id: 10_000 + i,
            ts_ms: 1000 + i as i64,
            user: "late".into(),
            amount: 1,
        })
        .collect();
    write_files(&input, &all, 300, 0);
    write_files(&input, &late, 10, 2);
    all.extend(late);
    let extra = format!(r#", "lateDataPath": "{}/late""#, out.path().display());
    let config = file_pipeline(out.path(), &input, TUMBLING, "append", &extra);
    let state = out.path().join("state");
    let result = run(
        out.path(),
        &["run", &config, "--state-dir", &state.display().to_string()],
    );
    result.assert_ok();
    assert!(result.stderr.contains("7 late rows"), "{}", result.stderr);
    let late_lines = delta_lines(
        &out.path().join("late"),
        None,
        "SELECT concat_ws('|', id, _late_reason) FROM t ORDER BY id",
    )
    .await;
    assert_eq!(late_lines.len(), 7, "{late_lines:?}");
    assert!(
        late_lines[0].starts_with("10000|ts behind the watermark 2026-01-01T00:00:"),
        "{late_lines:?}"
    );
    let windows = table_lines(&out.path().join("table"), None).await;
    assert!(!windows.iter().any(|l| l.contains("|late|")), "{windows:?}");
    let records = history(&state);
    let last = records.last().unwrap();
    assert_eq!(last["lateRows"], 7, "{last}");
}

/// Micro-batches that change no group (only late rows) in update mode
/// still record their positions in the table (delta-rs makes no commit for
/// a merge that changes nothing): a restart after them resumes with the
/// right state.
#[tokio::test]
async fn batches_that_change_no_group_still_record_their_positions() {
    let out = tempfile::tempdir().unwrap();
    let input = out.path().join("in");
    let all = events(29, 800);
    let mut files = write_files(&input, &all[..400], 400, 0);
    let late: Vec<Event> = (0..12)
        .map(|i| Event {
            id: 10_000 + i,
            ts_ms: 1000 + i as i64,
            user: "late".into(),
            amount: 1,
        })
        .collect();
    write_files(&input, &late, 3, 1);
    let config = file_pipeline(out.path(), &input, TUMBLING, "update", "");
    run(out.path(), &["run", &config]).assert_ok();
    let table = out.path().join("table");
    assert_eq!(
        delta_table(&table).await.version(),
        Some(4),
        "a version per batch"
    );
    files.extend(write_files(&input, &all[400..], 400, 5));
    run(out.path(), &["run", &config]).assert_ok();
    assert_eq!(
        table_lines(&table, None).await,
        duckdb_windows(&files, 10, None)
    );
}

/// Tumbling, sliding and session windows in a batch pipeline equal DuckDB's.
#[tokio::test]
async fn windows_in_a_batch_pipeline_equal_duckdb() {
    let out = tempfile::tempdir().unwrap();
    let input = out.path().join("in");
    let all = events(5, 900);
    let files = write_files(&input, &all, 900, 0);
    let sessions =
        "SELECT session_window.start AS window_start, user, count(*) AS n, sum(amount) AS total \
        FROM events GROUP BY user, session_window(ts, '200 milliseconds')";
    for (name, query) in [
        ("tumbling", TUMBLING),
        ("sliding", SLIDING),
        ("session", sessions),
    ] {
        let config = format!(
            r#"{{"name": "batch-{name}", "steps": [
            {{"type": "extract", "method": "fromFiles", "config": {{"path": "{input}", "format": "json", "schema": "{SCHEMA}", "registerAs": "events"}}}},
            {{"type": "transform", "method": "sql", "config": {{"query": "{query}"}}}},
            {{"type": "load", "method": "toDeltaLake", "config": {{"path": "{out}/{name}"}}}}]}}"#,
            input = input.display(),
            out = out.path().display()
        );
        let file = write_config(out.path(), &format!("{name}.json"), &config);
        run(out.path(), &["run", &file]).assert_ok();
        let got = table_lines(&out.path().join(name), None).await;
        let want = match name {
            "tumbling" => duckdb_windows(&files, 10, None),
            "sliding" => duckdb_windows(&files, 4, None),
            _ => duckdb_sessions(&files, None),
        };
        assert!(want.len() > 10, "{name}: {want:?}");
        assert_eq!(got, want, "{name}");
    }
}

/// DuckDB's session windows (gap 200 ms) per user: (start µs, user,
/// count, sum), those ending at or before `closed_by` µs when given.
fn duckdb_sessions(files: &[String], closed_by: Option<i64>) -> Vec<String> {
    let list = files
        .iter()
        .map(|f| format!("'{f}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let having = closed_by.map_or(String::new(), |w| {
        format!("HAVING epoch_us(max(ts)) + 200000 <= {w}")
    });
    let sql = format!(
        "WITH e AS (SELECT * FROM read_json([{list}], columns={{id: 'BIGINT', user: 'VARCHAR', amount: 'BIGINT', ts: 'TIMESTAMP'}})),
         g AS (SELECT *, CASE WHEN lag(ts) OVER (PARTITION BY \"user\" ORDER BY ts) IS NULL
                  OR ts >= lag(ts) OVER (PARTITION BY \"user\" ORDER BY ts) + INTERVAL 200 millisecond THEN 1 ELSE 0 END AS new FROM e),
         s AS (SELECT *, sum(new) OVER (PARTITION BY \"user\" ORDER BY ts ROWS UNBOUNDED PRECEDING) AS sid FROM g)
         SELECT concat_ws('|', epoch_us(min(ts)), \"user\", count(*), sum(amount)) FROM s GROUP BY \"user\", sid {having} ORDER BY 1"
    );
    let mut lines = duckdb_lines(&sql).unwrap();
    lines.sort();
    lines
}

/// A stateful Kafka → Delta stream SIGKILLed at random points over 12
/// restarts while events flow: after a last drain, every closed window
/// equals DuckDB's answer over the events not behind the watermark, and
/// those are in the late table (none lost, none counted twice).
#[tokio::test]
async fn a_stateful_kafka_stream_killed_over_and_over_ends_exact() {
    let broker = KafkaBroker::shared();
    let topic = format!("windows-killed-{}", std::process::id());
    broker.create_topic(&topic, 3).unwrap();
    let out = tempfile::tempdir().unwrap();
    let all = events(13, 6000);
    let config = format!(
        r#"{{"name": "kafka-windows", "mode": "streaming", "trigger": "processingTime=200ms",
        "checkpointLocation": "{dir}/checkpoint", "outputMode": "append", "steps": [
        {{"type": "extract", "method": "fromKafka", "config": {{"bootstrapServers": "{bootstrap}", "topic": "{topic}",
          "startingOffsets": "earliest", "format": "json", "schema": "{SCHEMA}", "maxOffsetsPerTrigger": 300, "registerAs": "raw"}}}},
        {{"type": "transform", "method": "withWatermark", "config": {{"column": "ts", "delay": "5 seconds",
          "lateDataPath": "{dir}/late", "registerAs": "events"}}}},
        {{"type": "transform", "method": "sql", "config": {{"query": "{TUMBLING}"}}}},
        {{"type": "load", "method": "toDeltaLake", "config": {{"path": "{dir}/table"}}}}
    ]}}"#,
        dir = out.path().display(),
        bootstrap = broker.bootstrap()
    );
    let file = write_config(out.path(), "kafka.json", &config);
    let producer = {
        let (topic, all) = (topic.clone(), all.clone());
        std::thread::spawn(move || {
            for chunk in all.chunks(500) {
                let values: Vec<String> = chunk.iter().map(json).collect();
                let records: Vec<_> = values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| ((i % 3) as i32, None, v.as_bytes()))
                    .collect();
                KafkaBroker::shared().produce(&topic, &records).unwrap();
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    };
    let mut rng = Rng(99);
    for _ in 0..12 {
        run_and_kill(out.path(), &file, 500 + rng.below(1500), || {});
    }
    producer.join().unwrap();
    drain(out.path(), &file, "processingTime=200ms");

    // Partitions read unevenly put some events behind the watermark: they
    // are in the late table, once; every other event is in its window, once.
    let late = delta_lines(
        &out.path().join("late"),
        None,
        "SELECT CAST(id AS VARCHAR) FROM t",
    )
    .await;
    let late_ids: std::collections::HashSet<usize> =
        late.iter().map(|id| id.parse().unwrap()).collect();
    assert_eq!(late_ids.len(), late.len(), "a late event written twice");
    assert!(late.len() < all.len() / 20, "{} late events", late.len());
    let on_time: Vec<Event> = all
        .iter()
        .filter(|e| !late_ids.contains(&e.id))
        .cloned()
        .collect();
    let events_file = write_files(&out.path().join("all"), &on_time, on_time.len(), 0);
    let want = duckdb_windows(&events_file, 10, Some(final_watermark(&all)));
    assert_eq!(table_lines(&out.path().join("table"), None).await, want);
}

/// Files added while a file stream runs, and across SIGKILLs, are read
/// exactly once; a half-written file (hidden name) is not read until
/// renamed.
#[tokio::test]
async fn files_added_while_streaming_are_read_exactly_once() {
    let out = tempfile::tempdir().unwrap();
    let input = out.path().join("in");
    std::fs::create_dir_all(&input).unwrap();
    let all = events(17, 3000);
    let config = format!(
        r#"{{"name": "file-stream", "mode": "streaming", "trigger": "processingTime=100ms", "steps": [
        {{"type": "extract", "method": "fromFiles", "config": {{"path": "{input}", "format": "json",
          "streaming": true, "maxFilesPerTrigger": 2, "schema": "{SCHEMA}"}}}},
        {{"type": "load", "method": "toDeltaLake", "config": {{"path": "{dir}/table"}}}}
    ]}}"#,
        input = input.display(),
        dir = out.path().display()
    );
    let file = write_config(out.path(), "files.json", &config);
    std::fs::write(input.join(".partial.json"), json(&all[0]) + "\n").unwrap();
    let mut rng = Rng(5);
    for (round, chunk) in all.chunks(300).enumerate() {
        run_and_kill(out.path(), &file, 300 + rng.below(900), || {
            write_files(&input, chunk, 100, round * 3);
        });
    }
    drain(out.path(), &file, "processingTime=100ms");
    let counts = delta_lines(
        &out.path().join("table"),
        None,
        "SELECT concat_ws('|', count(*), count(DISTINCT id), sum(id)) FROM t",
    )
    .await;
    let n = all.len();
    assert_eq!(counts, vec![format!("{n}|{n}|{}", n * (n - 1) / 2)]);
}

/// `deduplicate` in a stream keeps the keys it saw across micro-batches
/// and SIGKILLs: duplicates re-sent a few files later are dropped; with
/// `withinWatermark` a key is forgotten once the watermark passes its first
/// row's event time plus the delay, so a re-send long after passes again.
#[tokio::test]
async fn deduplicate_in_a_stream_drops_repeats_across_batches_and_kills() {
    for within in [true, false] {
        let out = tempfile::tempdir().unwrap();
        let input = out.path().join("in");
        std::fs::create_dir_all(&input).unwrap();
        let original = events(23, 2000);
        let mut rng = Rng(31);
        // Every third event again, up to 40 events (1 s) after it.
        let mut keyed: Vec<(usize, Event)> =
            original.iter().map(|e| (2 * e.id, e.clone())).collect();
        for e in original.iter().filter(|e| e.id % 3 == 0) {
            let mut copy = e.clone();
            copy.ts_ms += rng.below(2000) as i64;
            keyed.push((2 * (e.id + 1 + rng.below(40) as usize) + 1, copy));
        }
        keyed.sort_by_key(|(at, _)| *at);
        let mut sent: Vec<Event> = keyed.into_iter().map(|(_, e)| e).collect();
        // Ids 0..5 again, with the last event time: long after the first.
        let last = original.iter().map(|e| e.ts_ms).max().unwrap();
        sent.extend(original[..5].iter().cloned().map(|mut e| {
            e.ts_ms = last;
            e
        }));
        let config = format!(
            r#"{{"name": "dedup", "mode": "streaming", "trigger": "processingTime=100ms",
            "checkpointLocation": "{dir}/checkpoint", "steps": [
            {{"type": "extract", "method": "fromFiles", "config": {{"path": "{input}", "format": "json",
              "streaming": true, "maxFilesPerTrigger": 1, "schema": "{SCHEMA}"}}}},
            {{"type": "transform", "method": "withWatermark", "config": {{"column": "ts", "delay": "5 seconds"}}}},
            {{"type": "transform", "method": "deduplicate", "config": {{"columns": ["id"], "withinWatermark": {within}}}}},
            {{"type": "load", "method": "toDeltaLake", "config": {{"path": "{dir}/table"}}}}
        ]}}"#,
            dir = out.path().display(),
            input = input.display()
        );
        let file = write_config(out.path(), "dedup.json", &config);
        let mut rng = Rng(37);
        for (round, chunk) in sent.chunks(500).enumerate() {
            run_and_kill(out.path(), &file, 300 + rng.below(900), || {
                write_files(&input, chunk, 100, round * 5);
            });
        }
        drain(out.path(), &file, "processingTime=100ms");
        let n = original.len();
        let again = if within { 5 } else { 0 };
        let counts = delta_lines(
            &out.path().join("table"),
            None,
            "SELECT concat_ws('|', count(*), count(DISTINCT id), count(*) FILTER (WHERE id < 5)) FROM t",
        )
        .await;
        assert_eq!(
            counts,
            vec![format!("{}|{n}|{}", n + again, 5 + again)],
            "withinWatermark {within}"
        );
    }
}

/// optimize every 3 commits beside a stream: fewer files, the same rows,
/// no failed batch; then the optimize and vacuum commands.
#[tokio::test]
async fn compaction_beside_a_stream_keeps_every_row() {
    let out = tempfile::tempdir().unwrap();
    let input = out.path().join("in");
    let all = events(19, 1200);
    write_files(&input, &all, 100, 0);
    let config = format!(
        r#"{{"name": "compacted", "mode": "streaming", "trigger": "availableNow", "steps": [
        {{"type": "extract", "method": "fromFiles", "config": {{"path": "{input}", "format": "json",
          "streaming": true, "maxFilesPerTrigger": 1, "schema": "{SCHEMA}"}}}},
        {{"type": "load", "method": "toDeltaLake", "config": {{"path": "{dir}/table",
          "optimize": {{"everyCommits": 3}}, "checkpointInterval": 5}}}}
    ]}}"#,
        input = input.display(),
        dir = out.path().display()
    );
    let file = write_config(out.path(), "compacted.json", &config);
    let result = run(out.path(), &["run", &file]);
    result.assert_ok();
    assert!(result.stderr.contains("12 batches"), "{}", result.stderr);
    let table_path = out.path().join("table");
    let table = delta_table(&table_path).await;
    let files = table.get_file_uris().unwrap().count();
    assert!(files < 6, "{files} files after compaction every 3 commits");
    let rows = "SELECT concat_ws('|', count(*), count(DISTINCT id), sum(id)) FROM t";
    let n = all.len();
    let want = vec![format!("{n}|{n}|{}", n * (n - 1) / 2)];
    assert_eq!(delta_lines(&table_path, None, rows).await, want);
    // delta.checkpointInterval 5: a checkpoint after every 5th commit.
    assert!(table_path
        .join("_delta_log/00000000000000000009.checkpoint.parquet")
        .exists());

    let path = table_path.display().to_string();
    let optimized = run(out.path(), &["optimize", &path]);
    optimized.assert_ok();
    assert!(
        optimized.stdout.contains("small files compacted into"),
        "{}",
        optimized.stdout
    );
    let missing = run(out.path(), &["optimize", &format!("{path}-nowhere")]);
    assert_eq!(missing.code, 1, "{}", missing.stderr);
    assert!(
        missing.stderr.contains("there is no Delta table at"),
        "{}",
        missing.stderr
    );
    let dry = run(
        out.path(),
        &["vacuum", &path, "--retention", "0", "--dry-run"],
    );
    assert_ne!(
        dry.code, 0,
        "a retention below the table's 7 days is refused"
    );
    assert!(dry.stderr.contains("retention"), "{}", dry.stderr);
    let kept = run(out.path(), &["vacuum", &path, "--dry-run"]);
    kept.assert_ok();
    assert!(
        kept.stdout.contains("would delete 0 files"),
        "{}",
        kept.stdout
    );
    assert_eq!(delta_lines(&table_path, None, rows).await, want);
}

/// The example: clicks per page in 5-minute windows, one file per
/// micro-batch; a click behind the watermark goes to the late table.
#[tokio::test]
async fn click_windows_example() {
    let out = tempfile::tempdir().unwrap();
    run(out.path(), &["run", "pipelines/click-windows.json"]).assert_ok();
    let dir = out.path().join("click-windows");
    let sql = "SELECT CAST(window_start AS VARCHAR) AS window_start, page, clicks FROM t ORDER BY window_start, page";
    let expected = table(&[
        "+---------------------+------+--------+",
        "| window_start        | page | clicks |",
        "+---------------------+------+--------+",
        "| 2026-03-01T10:00:00 | cart | 3      |",
        "| 2026-03-01T10:00:00 | home | 3      |",
        "| 2026-03-01T10:05:00 | home | 3      |",
        "| 2026-03-01T10:05:00 | pay  | 1      |",
        "| 2026-03-01T10:10:00 | cart | 1      |",
        "| 2026-03-01T10:10:00 | home | 1      |",
        "| 2026-03-01T10:10:00 | pay  | 1      |",
        "+---------------------+------+--------+",
    ]);
    assert_eq!(delta_rows(&dir.join("table"), sql).await, expected);
    let late = delta_rows(
        &dir.join("late"),
        "SELECT user, CAST(ts AS VARCHAR) AS ts, _late_reason FROM t",
    )
    .await;
    assert_eq!(late.len(), 5, "{late:?}");
    assert!(
        late[3].contains(
            "| ana  | 2026-03-01T10:01:00 | ts behind the watermark 2026-03-01T10:08:59+00:00"
        ),
        "{late:?}"
    );
}

/// What validate knows about stateful streams, it reports, with the path.
#[test]
fn stateful_config_errors_are_reported_at_validate() {
    let out = tempfile::tempdir().unwrap();
    let input = out.path().join("in");
    write_files(&input, &events(1, 10), 10, 0);
    let cases = [
        (TUMBLING, "append", "", "\"table\"", "needs withWatermark", "outputMode"),
        ("SELECT * FROM events", "complete", "wm", "\"table\"", "needs an aggregation", "outputMode"),
        (TUMBLING, "update", "wm", "\"table\", \"saveMode\": \"overwrite\"", "remove saveMode", "saveMode"),
        ("SELECT user, count(DISTINCT amount) AS n FROM events GROUP BY user", "update", "wm", "\"table\"", "cannot be kept across micro-batches", "steps[3]"),
        ("SELECT session_window.start AS s, count(*) AS n FROM events GROUP BY session_window(ts, '1 minute')", "update", "wm", "\"table\"", "session window's start moves", "outputMode"),
        ("SELECT window.start AS s, count(*) AS n FROM events GROUP BY window(ts, '1 minute'), user", "update", "wm", "\"table\"", "select every GROUP BY column", "outputMode"),
    ];
    for (query, mode, watermark, load, says, path) in cases {
        let step = if watermark.is_empty() {
            r#"{"type": "transform", "method": "filterRows", "config": {"condition": "true", "registerAs": "events"}}"#.to_string()
        } else {
            r#"{"type": "transform", "method": "withWatermark", "config": {"column": "ts", "delay": "5 seconds", "registerAs": "events"}}"#.to_string()
        };
        let config = format!(
            r#"{{"name": "bad", "mode": "streaming", "checkpointLocation": "{dir}/ckpt", "outputMode": "{mode}", "steps": [
            {{"type": "extract", "method": "fromFiles", "config": {{"path": "{input}", "format": "json", "streaming": true, "schema": "{SCHEMA}"}}}},
            {step},
            {{"type": "transform", "method": "sql", "config": {{"query": "{query}"}}}},
            {{"type": "load", "method": "toDeltaLake", "config": {{"path": {load}}}}}]}}"#,
            dir = out.path().display(),
            input = input.display()
        )
        .replace("\"path\": \"table\"", &format!("\"path\": \"{}/table\"", out.path().display()));
        let file = write_config(out.path(), "bad.json", &config);
        let result = run(out.path(), &["validate", &file]);
        assert_eq!(result.code, 2, "{says}: {}", result.stderr);
        assert!(result.stderr.contains(says), "{says}: {}", result.stderr);
        assert!(result.stderr.contains(path), "{path}: {}", result.stderr);
        assert!(!result.stderr.contains("panicked"), "{}", result.stderr);
    }
    let dedup = |watermark: &str, checkpoint: &str| {
        format!(
            r#"{{"name": "bad", "mode": "streaming", {checkpoint} "steps": [
            {{"type": "extract", "method": "fromFiles", "config": {{"path": "{input}", "format": "json", "streaming": true, "schema": "{SCHEMA}"}}}},
            {watermark}
            {{"type": "transform", "method": "deduplicate", "config": {{"columns": ["id"], "withinWatermark": true}}}},
            {{"type": "load", "method": "toConsole"}}]}}"#,
            input = input.display()
        )
    };
    let with_watermark = r#"{"type": "transform", "method": "withWatermark", "config": {"column": "ts", "delay": "5 seconds"}},"#;
    let checkpoint = format!(r#""checkpointLocation": "{}/ckpt","#, out.path().display());
    for (config, says, path) in [
        (
            dedup("", &checkpoint),
            "add a withWatermark step before",
            "steps[1].config.withinWatermark",
        ),
        (
            dedup(with_watermark, ""),
            "keeps the keys it saw under checkpointLocation",
            "checkpointLocation",
        ),
    ] {
        let file = write_config(out.path(), "bad-dedup.json", &config);
        let result = run(out.path(), &["validate", &file]);
        assert_eq!(result.code, 2, "{says}: {}", result.stderr);
        assert!(result.stderr.contains(says), "{says}: {}", result.stderr);
        assert!(result.stderr.contains(path), "{path}: {}", result.stderr);
    }
    let no_schema = format!(
        r#"{{"name": "bad", "mode": "streaming", "steps": [
        {{"type": "extract", "method": "fromFiles", "config": {{"path": "{}", "format": "json", "streaming": true}}}},
        {{"type": "load", "method": "toConsole"}}]}}"#,
        input.display()
    );
    let file = write_config(out.path(), "no-schema.json", &no_schema);
    let result = run(out.path(), &["validate", &file]);
    assert_eq!(result.code, 2, "{}", result.stderr);
    assert!(
        result.stderr.contains("steps[0].config.schema"),
        "{}",
        result.stderr
    );
}
