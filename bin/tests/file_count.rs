//! `coalesce` / `repartition` right before `toFiles` set the number of
//! files written, as in Spark (`coalesce(1)` → one file).

mod common;

use std::path::Path;

use common::*;

/// Writes 40 000 rows (several record batches) to `dir/in.csv`.
fn input(dir: &Path) -> String {
    let mut csv = String::from("id,name\n");
    for i in 0..40_000 {
        csv.push_str(&format!("{i},name-{i}\n"));
    }
    let path = dir.join("in.csv");
    std::fs::write(&path, csv).unwrap();
    path.display().to_string()
}

fn files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "csv")
        })
        .count()
}

#[tokio::test]
async fn coalesce_and_repartition_set_the_number_of_files() {
    let out = tempfile::tempdir().unwrap();
    let source = input(out.path());
    let cases = [
        ("", None),
        (
            r#"{"type": "transform", "method": "coalesce", "config": {"numPartitions": 1}},"#,
            Some(1),
        ),
        (
            r#"{"type": "transform", "method": "repartition", "config": {"numPartitions": 3}},"#,
            Some(3),
        ),
        (
            r#"{"type": "transform", "method": "repartition", "config": {"numPartitions": 2, "columns": ["id"]}}, {"type": "transform", "method": "selectColumns", "config": {"columns": ["id"]}},"#,
            Some(2),
        ),
    ];
    for (i, (step, expected)) in cases.into_iter().enumerate() {
        let config = format!(
            r#"{{"name": "files", "steps": [
            {{"type": "extract", "method": "fromFiles", "config": {{"path": "{source}", "format": "csv", "header": true}}}},
            {step}
            {{"type": "load", "method": "toFiles", "config": {{"path": "${{DATAFLOW_OUT}}/out{i}", "format": "csv"}}}}
        ]}}"#
        );
        let file = write_config(out.path(), &format!("p{i}.json"), &config);
        run(out.path(), &["run", &file]).assert_ok();
        let dir = out.path().join(format!("out{i}"));
        let written = files(&dir);
        match expected {
            Some(n) => assert_eq!(written, n, "{step}"),
            None => assert!(
                written > 1,
                "without coalesce DataFusion writes in parallel: {written}"
            ),
        }
        let rows = file_rows(
            &dir,
            "csv",
            "SELECT count(*) AS n, count(DISTINCT id) AS ids FROM t",
        )
        .await;
        assert_eq!(rows[3], "| 40000 | 40000 |", "{step}");
    }
}
