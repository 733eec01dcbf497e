//! Secrets from Vault through the real `run-pipeline` binary, against a
//! throwaway OpenBao server (and PostgreSQL / tansu for the steps that use
//! them): `credentialPath` and `${vault:PATH#KEY}`, KV v2 and v1, token and
//! AppRole login, every failure (exit 2 at the JSON path, fast), and no
//! secret value in any output.

mod common;

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use dataflow_connectors::testing::{KafkaBroker, PgServer, VaultServer};

fn vault() -> &'static VaultServer {
    VaultServer::shared()
}

fn pg() -> &'static PgServer {
    PgServer::shared()
}

/// A name unique to this test process.
fn unique(name: &str) -> String {
    format!("{name}-{}", std::process::id())
}

/// `cli(out)` with only the given Vault settings (none inherited).
fn vault_cli(out: &Path, vars: &[(&str, String)]) -> Command {
    let mut cmd = cli(out);
    for var in [
        "VAULT_ADDR",
        "VAULT_TOKEN",
        "VAULT_ROLE_ID",
        "VAULT_SECRET_ID",
        "VAULT_SECRET_ID_FILE",
        "VAULT_NAMESPACE",
        "VAULT_CACERT",
        "VAULT_CLIENT_TIMEOUT",
    ] {
        cmd.env_remove(var);
    }
    // No ~/.vault-token of the machine's user.
    cmd.env("HOME", out);
    for (name, value) in vars {
        cmd.env(name, value);
    }
    cmd
}

/// Root-token settings for the test server.
fn root() -> Vec<(&'static str, String)> {
    vec![
        ("VAULT_ADDR", vault().addr()),
        (
            "VAULT_TOKEN",
            dataflow_connectors::testing::vault::ROOT_TOKEN.to_string(),
        ),
    ]
}

fn run_with(out: &Path, vars: &[(&str, String)], args: &[&str]) -> Run {
    vault_cli(out, vars)
        .args(args)
        .output()
        .expect("run-pipeline starts")
        .into()
}

fn assert_absent(secret: &str, texts: &[&str]) {
    for text in texts {
        assert!(!text.contains(secret), "the secret leaked:\n{text}");
    }
}

/// A database with the `users` table, its URL without a password.
async fn users_db(prefix: &str) -> String {
    let db = pg().create_database(prefix).await;
    pg().execute(
        &db,
        "CREATE TABLE users (id int, name text); INSERT INTO users VALUES (1, 'ana'), (2, 'ben'), (3, 'cyd');",
    )
    .await;
    pg().url(&db)
}

/// fromPostgres (with `source` keys) → toDeltaLake at `$DATAFLOW_OUT/users`.
fn pg_pipeline(dir: &Path, source: &str) -> String {
    let config = format!(
        r#"{{"name": "vault-pg", "steps": [
        {{"type": "extract", "method": "fromPostgres", "config": {{"table": "users", "registerAs": "users", "cache": true, {source}}}}},
        {{"type": "load", "method": "toDeltaLake", "config": {{"path": "${{DATAFLOW_OUT}}/users", "saveMode": "overwrite"}}}}
    ]}}"#
    );
    write_config(dir, "pg.json", &config)
}

async fn users(out: &Path) -> Vec<String> {
    delta_rows(
        &out.join("users"),
        "SELECT count(*) AS n, min(name) AS first FROM t",
    )
    .await
}

const USERS: [&str; 5] = [
    "+---+-------+",
    "| n | first |",
    "+---+-------+",
    "| 3 | ana   |",
    "+---+-------+",
];

#[tokio::test]
async fn credential_path_on_postgres_kv_v2_with_a_token() {
    let url = users_db("vault_v2").await;
    let name = unique("pg");
    // The password is only in Vault; the config sets nothing it holds.
    vault()
        .put(
            &format!("secret/{name}"),
            &[("url", &url), ("password", pg().password())],
        )
        .unwrap();
    let out = tempfile::tempdir().unwrap();
    let source = format!(r#""credentialPath": "secret/data/{name}""#);
    let file = pg_pipeline(out.path(), &source);
    let vars = root();
    let metrics = out.path().join("metrics.json");
    let metrics_arg = metrics.display().to_string();
    let args = [
        "-vv",
        "--log-format",
        "json",
        "--metrics-file",
        &metrics_arg,
    ];
    let ran = run_with(out.path(), &vars, &[&args[..], &["run", &file]].concat());
    ran.assert_ok();
    let metrics = std::fs::read_to_string(&metrics).unwrap();
    assert_eq!(users(out.path()).await, USERS);
    let explain = run_with(out.path(), &vars, &["explain", &file]);
    explain.assert_ok();
    let history = run_with(out.path(), &vars, &["history", "--json"]);
    history.assert_ok();
    let password = pg().password();
    assert_absent(
        password,
        &[
            &ran.stdout,
            &ran.stderr,
            &explain.stdout,
            &explain.stderr,
            &history.stdout,
            &metrics,
        ],
    );
}

#[tokio::test]
async fn vault_references_kv_v1_with_approle() {
    let url = users_db("vault_v1").await;
    let name = unique("pg");
    vault()
        .put(&format!("kv1/{name}"), &[("pw", pg().password())])
        .unwrap();
    let policy = unique("v1-reader");
    vault().policy(&policy, &[&format!("kv1/{name}")]).unwrap();
    let (role_id, secret_id) = vault().approle(&policy, &policy).unwrap();
    let out = tempfile::tempdir().unwrap();
    let source = format!(r#""url": "{url}", "password": "${{vault:kv1/{name}#pw}}""#);
    let file = pg_pipeline(out.path(), &source);
    let secret_file = out.path().join("secret-id");
    std::fs::write(&secret_file, format!("{secret_id}\n")).unwrap();
    let approle = |secret: (&'static str, String)| {
        vec![
            ("VAULT_ADDR", vault().addr()),
            ("VAULT_ROLE_ID", role_id.clone()),
            secret,
        ]
    };
    let from_file = approle(("VAULT_SECRET_ID_FILE", secret_file.display().to_string()));
    let ran = run_with(out.path(), &from_file, &["validate", &file]);
    ran.assert_ok();
    let ran = run_with(
        out.path(),
        &approle(("VAULT_SECRET_ID", secret_id.clone())),
        &["run", &file],
    );
    ran.assert_ok();
    assert_eq!(users(out.path()).await, USERS);
    assert_absent(pg().password(), &[&ran.stdout, &ran.stderr]);
    assert_absent(&secret_id, &[&ran.stdout, &ran.stderr]);

    // A wrong secret id: the login fails, exit 2 at the reference.
    let wrong = approle(("VAULT_SECRET_ID", "not-the-secret-id".into()));
    let ran = run_with(out.path(), &wrong, &["validate", &file]);
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(
        ran.stderr.contains("steps[0].config.password") && ran.stderr.contains("login"),
        "{}",
        ran.stderr
    );
}

/// `validate` of a config reading `${vault:PATH#KEY}` at
/// `steps[0].config.path`: (exit code, stderr, seconds taken).
fn validate_reference(vars: &[(&str, String)], reference: &str) -> (i32, String, f64) {
    let out = tempfile::tempdir().unwrap();
    let config = format!(
        r#"{{"name": "ref", "steps": [
        {{"type": "extract", "method": "fromFiles", "config": {{"path": "testdata/{reference}", "format": "csv"}}}},
        {{"type": "load", "method": "toConsole", "config": {{}}}}
    ]}}"#
    );
    let file = write_config(out.path(), "ref.json", &config);
    let started = Instant::now();
    let ran = run_with(out.path(), vars, &["validate", &file]);
    (ran.code, ran.stderr, started.elapsed().as_secs_f64())
}

#[test]
fn every_failure_is_exit_2_at_the_json_path_and_fast() {
    let name = unique("fail");
    let value = "top-secret-value-1234";
    vault()
        .put(&format!("secret/{name}"), &[("file", value)])
        .unwrap();
    let other = unique("other-policy");
    vault().policy(&other, &["secret/data/elsewhere"]).unwrap();
    let denied_token = vault().token(&other).unwrap();
    let refused = TcpListener::bind("127.0.0.1:0").unwrap();
    let refused_addr = format!("http://{}", refused.local_addr().unwrap());
    drop(refused);
    // Accepts connections, never answers: only the timeout ends the wait.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = format!("http://{}", silent.local_addr().unwrap());
    let with = |addr: String, token: String| {
        vec![
            ("VAULT_ADDR", addr),
            ("VAULT_TOKEN", token),
            ("VAULT_CLIENT_TIMEOUT", "1s".to_string()),
        ]
    };
    let root_token = dataflow_connectors::testing::vault::ROOT_TOKEN.to_string();
    let good = format!("${{vault:secret/data/{name}#file}}");
    let cases = [
        (
            with(refused_addr, root_token.clone()),
            good.clone(),
            "unreachable",
        ),
        (
            with(silent_addr, root_token.clone()),
            good.clone(),
            "no answer within 1s",
        ),
        (
            with(vault().addr(), denied_token),
            good.clone(),
            "permission denied",
        ),
        (
            with(vault().addr(), root_token.clone()),
            format!("${{vault:secret/data/{name}-missing#file}}"),
            "no Vault secret at",
        ),
        (
            with(vault().addr(), root_token.clone()),
            format!("${{vault:secret/data/{name}#nokey}}"),
            "has no key nokey",
        ),
        (
            vec![("VAULT_ADDR", vault().addr())],
            good.clone(),
            "no Vault credentials",
        ),
    ];
    for (vars, reference, expected) in cases {
        let (code, stderr, seconds) = validate_reference(&vars, &reference);
        assert_eq!(code, 2, "{reference}: {stderr}");
        assert!(
            stderr.contains("invalid config at steps[0].config.path") && stderr.contains(expected),
            "{expected}: {stderr}"
        );
        assert!(seconds < 5.0, "{expected}: took {seconds} s");
        assert_absent(value, &[&stderr]);
    }
    drop(silent);
}

#[test]
fn secret_keys_a_step_does_not_take_are_an_error_at_credential_path() {
    let name = unique("extra");
    let password = "extra-secret-pw-5678";
    vault()
        .put(
            &format!("secret/{name}"),
            &[
                ("url", "postgresql://u@127.0.0.1:1/db"),
                ("password", password),
                ("host", "h"),
            ],
        )
        .unwrap();
    let out = tempfile::tempdir().unwrap();
    let file = pg_pipeline(
        out.path(),
        &format!(r#""credentialPath": "secret/data/{name}""#),
    );
    let ran = run_with(out.path(), &root(), &["validate", &file]);
    assert_eq!(ran.code, 2, "{}", ran.stderr);
    assert!(
        ran.stderr
            .contains("invalid config at steps[0].config.credentialPath")
            && ran.stderr.contains("key host of Vault secret")
            && ran.stderr.contains("unknown field `host`"),
        "{}",
        ran.stderr
    );
    assert_absent(password, &[&ran.stdout, &ran.stderr]);
}

#[tokio::test]
async fn credential_path_on_to_kafka_supplies_the_bootstrap_servers() {
    let broker = KafkaBroker::shared();
    let topic = unique("vault-out");
    broker.create_topic(&topic, 1).unwrap();
    let name = unique("kafka");
    vault()
        .put(
            &format!("secret/{name}"),
            &[
                ("bootstrapServers", &broker.bootstrap()),
                ("kafka.client.id", "vault-client"),
            ],
        )
        .unwrap();
    let out = tempfile::tempdir().unwrap();
    let config = format!(
        r#"{{"name": "vault-kafka", "steps": [
        {{"type": "extract", "method": "fromFiles", "config": {{"path": "testdata/orders-changes.csv", "format": "csv", "registerAs": "orders"}}}},
        {{"type": "load", "method": "toKafka", "config": {{"topic": "{topic}", "credentialPath": "secret/data/{name}"}}}}
    ]}}"#
    );
    let file = write_config(out.path(), "kafka.json", &config);
    let ran = run_with(out.path(), &root(), &["run", &file]);
    ran.assert_ok();
    let expected = std::fs::read_to_string(repo_root().join("testdata/orders-changes.csv"))
        .unwrap()
        .lines()
        .count()
        - 1;
    let records = broker
        .read(&topic, expected, Duration::from_secs(30))
        .unwrap();
    assert_eq!(records.len(), expected);
}

/// `${vault:secret/data/NAME#file}` naming a test input resolves: `validate`
/// succeeds only if the value was read.
fn assert_resolves(vars: &[(&str, String)], name: &str) {
    let (code, stderr, _) =
        validate_reference(vars, &format!("${{vault:secret/data/{name}#file}}"));
    assert_eq!(code, 0, "{stderr}");
}

#[test]
fn namespaces_through_vault_namespace() {
    let namespace = unique("ns");
    vault().namespace(&namespace).unwrap();
    let name = unique("in-ns");
    vault()
        .put_in(
            Some(&namespace),
            &format!("secret/{name}"),
            &[("file", "orders-changes.csv")],
        )
        .unwrap();
    let mut vars = root();
    vars.push(("VAULT_NAMESPACE", namespace));
    assert_resolves(&vars, &name);
    // Outside the namespace the secret does not exist.
    let (code, stderr, _) =
        validate_reference(&root(), &format!("${{vault:secret/data/{name}#file}}"));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("no Vault secret at"), "{stderr}");
}

#[test]
fn https_with_vault_cacert() {
    let server = VaultServer::start_tls().unwrap();
    let name = unique("tls");
    server
        .put(&format!("secret/{name}"), &[("file", "orders-changes.csv")])
        .unwrap();
    let token = (
        "VAULT_TOKEN",
        dataflow_connectors::testing::vault::ROOT_TOKEN.to_string(),
    );
    let mut vars = vec![("VAULT_ADDR", server.addr()), token];
    // Without the CA the certificate is not trusted: unreachable, exit 2.
    let (code, stderr, _) =
        validate_reference(&vars, &format!("${{vault:secret/data/{name}#file}}"));
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("unreachable"), "{stderr}");
    vars.push(("VAULT_CACERT", server.ca_cert().display().to_string()));
    assert_resolves(&vars, &name);
}

/// The Spark app's batch step from issue 12, verbatim: `fromPostgres` with
/// `credentialPath`, `cache` and `cacheStorageLevel`; URL and password only
/// in Vault.
#[tokio::test]
async fn the_spark_apps_batch_step_runs_as_written() {
    let db = pg().create_database("spark_step").await;
    pg().execute(
        &db,
        "CREATE TABLE large_table (id int, name text); INSERT INTO large_table SELECT i, 'n' || i FROM generate_series(1, 1000) i;",
    )
    .await;
    vault()
        .put(
            "secret/postgres",
            &[("url", &pg().url(&db)), ("password", pg().password())],
        )
        .unwrap();
    let out = tempfile::tempdir().unwrap();
    let config = r#"{"name": "spark-batch", "steps": [
        {"type": "extract", "method": "fromPostgres", "config": {"table": "large_table", "registerAs": "users", "cache": true, "cacheStorageLevel": "MEMORY_AND_DISK", "credentialPath": "secret/data/postgres"}},
        {"type": "load", "method": "toDeltaLake", "config": {"path": "${DATAFLOW_OUT}/users", "saveMode": "overwrite"}}
    ]}"#;
    let file = write_config(out.path(), "spark.json", config);
    let ran = run_with(out.path(), &root(), &["run", &file]);
    ran.assert_ok();
    let rows = delta_rows(
        &out.path().join("users"),
        "SELECT count(*) AS n, sum(id) AS s FROM t",
    )
    .await;
    assert_eq!(rows[3], "| 1000 | 500500 |");
    assert_absent(pg().password(), &[&ran.stdout, &ran.stderr]);
}

/// `schedule` reads the secrets again before every run: a value rotated in
/// Vault reaches the next run without a restart.
#[tokio::test]
async fn scheduled_runs_read_rotated_secrets() {
    vault()
        .put("secret/rotating", &[("tag", "before")])
        .unwrap();
    let out = tempfile::tempdir().unwrap();
    let config = r#"{"name": "rotating", "schedule": "* * * * * *", "steps": [
        {"type": "extract", "method": "fromFiles", "config": {"path": "testdata/orders/orders-2026-11-01.csv", "header": true}},
        {"type": "transform", "method": "sql", "config": {"query": "SELECT '${vault:secret/data/rotating#tag}' AS tag"}},
        {"type": "load", "method": "toDeltaLake", "config": {"path": "${DATAFLOW_OUT}/tags", "saveMode": "append"}}
    ]}"#;
    let file = write_config(out.path(), "rotating.json", config);
    let state = out.path().join("state");
    let mut child = vault_cli(out.path(), &root())
        .args([
            "schedule",
            &file,
            "--state-dir",
            &state.display().to_string(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let tags = |out: std::path::PathBuf| async move {
        if !out.join("tags/_delta_log").exists() {
            return Vec::new();
        }
        delta_rows(&out.join("tags"), "SELECT DISTINCT tag FROM t ORDER BY tag").await
    };
    let wait_for = |tag: &'static str| {
        let out = out.path().to_path_buf();
        async move {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let rows = tags(out.clone()).await;
                if rows.iter().any(|r| r.contains(tag)) || Instant::now() > deadline {
                    return rows;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let first = wait_for("before").await;
    vault().put("secret/rotating", &[("tag", "after")]).unwrap();
    let second = wait_for("after").await;
    kill("-TERM", child.id());
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(
        first.iter().any(|r| r.contains("before")),
        "{first:?}\n{stderr}"
    );
    assert!(
        second.iter().any(|r| r.contains("after")),
        "{second:?}\n{stderr}"
    );
    assert!(status.success(), "{stderr}");
}
