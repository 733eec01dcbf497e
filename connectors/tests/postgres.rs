//! `fromPostgres` against a real PostgreSQL server (started by the test
//! harness): every supported type, pushdown, partitioned reads, failures.
//!
//! Run with `cargo test --release -p dataflow-connectors --features testing --test postgres`.

use std::time::Duration;

use dataflow_connectors::registry;
use dataflow_connectors::testing::PgServer;
use dataflow_engine::pipeline::Pipeline;
use dataflow_engine::spec::PipelineSpec;
use datafusion::arrow::array::{Array, AsArray, ListArray, RecordBatch, StringArray};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{
    DataType, Date32Type, Decimal128Type, Float32Type, Float64Type, Int16Type, Int32Type,
    Int64Type, IntervalMonthDayNano, IntervalMonthDayNanoType, Time64MicrosecondType, TimeUnit,
    TimestampMicrosecondType,
};
use datafusion::arrow::util::pretty::pretty_format_batches;
use datafusion::physical_plan::displayable;
use serde_json::{json, Value};

fn server() -> &'static PgServer {
    PgServer::shared()
}

/// A fresh database with `setup` run in it.
async fn database(prefix: &str, setup: &str) -> String {
    let db = server().create_database(prefix).await;
    server().execute(&db, setup).await;
    db
}

/// `fromPostgres` config for `db` with the test password, plus `extra` keys.
fn config(db: &str, extra: Value) -> Value {
    let mut config = json!({"url": server().url(db), "password": server().password()});
    if let (Some(c), Value::Object(extra)) = (config.as_object_mut(), extra) {
        c.extend(extra);
    }
    config
}

/// Compiles `fromPostgres(config) as t → toConsole`.
async fn compile(mut config: Value) -> dataflow_engine::Result<Pipeline> {
    config["registerAs"] = json!("t");
    let spec = json!({"name": "pg", "steps": [
        {"type": "extract", "method": "fromPostgres", "config": config},
        {"type": "load", "method": "toConsole", "config": {}}]});
    let spec = PipelineSpec::load(&spec.to_string(), &[], &|_| None)?;
    Pipeline::compile(&spec, &registry()).await
}

/// Runs `sql` over the pipeline's session; one batch with every row.
async fn query(pipeline: &Pipeline, sql: &str) -> datafusion::error::Result<RecordBatch> {
    let df = pipeline.session().sql(sql).await?;
    let schema = df.schema().as_arrow().clone();
    let batches = df.collect().await?;
    Ok(concat_batches(&schema.into(), &batches)?)
}

async fn rows(pipeline: &Pipeline, sql: &str) -> String {
    let batch = query(pipeline, sql).await.unwrap();
    pretty_format_batches(&[batch]).unwrap().to_string()
}

/// The physical plan of `sql`.
async fn physical_plan(pipeline: &Pipeline, sql: &str) -> String {
    let df = pipeline.session().sql(sql).await.unwrap();
    let plan = df.create_physical_plan().await.unwrap();
    let text = displayable(plan.as_ref()).indent(true).to_string();
    text
}

/// The error compiling `config` gives.
async fn compile_error(config: Value) -> dataflow_engine::Error {
    match compile(config).await {
        Ok(_) => panic!("expected an error"),
        Err(err) => err,
    }
}

const ALL_TYPES: &str = r#"
    CREATE TYPE mood AS ENUM ('sad', 'happy');
    CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
    CREATE TABLE all_types (
        id int PRIMARY KEY, i2 smallint, i4 integer, i8 bigint, f4 real, f8 double precision,
        n numeric(38, 4), nu numeric, t text, vc varchar(10), c char(3), nm name, b boolean,
        d date, tm time, ts timestamp, tstz timestamptz, iv interval, by bytea, u uuid,
        j json, jb jsonb, e mood, dom posint, ai int[], at text[], an numeric(10, 2)[]);
    INSERT INTO all_types VALUES
      (1, -32768, -2147483648, -9223372036854775808, 'NaN', 'Infinity',
       '9999999999999999999999999999999999.9999', 0.1234567890123, '', '', 'a', 'nm', true,
       'infinity', '00:00:00', '-infinity', '2024-02-29 12:34:56.789+05',
       '1 year 2 mons 3 days 04:05:06.789', '\x00ff', 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11',
       '{"a": [1, null]}', '{"b": "ü"}', 'happy', 5, '{1,NULL,3}', '{"x",NULL,"ünï"}', '{1.5,NULL}'),
      (2, 32767, 2147483647, 9223372036854775807, '-Infinity', -1.5e300,
       '-9999999999999999999999999999999999.9999', -123456789012345678901234567.12345678905,
       'ünïcødé 🎉 "quoted"', 'x', 'abc', 'n2', false,
       '-infinity', '23:59:59.999999', 'infinity', '1970-01-01 00:00:00+00',
       '-1 days', '\x', '00000000-0000-0000-0000-000000000000',
       '[]', '[]', 'sad', 1, '{}', '{}', NULL),
      (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
       NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
      (4, 0, 0, 0, 0, 0, 0.0001, 0, ' ', 'y', ' ', 'z', true,
       '2024-02-29', '12:00:00', '1999-12-31 23:59:59.999999', '2024-02-29 12:34:56.789+05',
       '0', '\x41', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
       'null', 'null', 'sad', 2147483647, '{NULL}', '{""}', '{-0.01}');
"#;

#[tokio::test]
async fn every_type_round_trips_with_nulls_and_edge_values() {
    let db = database("types", ALL_TYPES).await;
    let pipeline = compile(config(&db, json!({"table": "public.all_types"})))
        .await
        .unwrap();
    let b = query(&pipeline, "SELECT * FROM t ORDER BY id")
        .await
        .unwrap();
    let col = |name: &str| b.column(b.schema().index_of(name).unwrap()).clone();
    assert_eq!(b.num_rows(), 4);
    // Every column has a NULL in row 3 (index 2) and only there (but `ai`,
    // `at`, `an` elements, and `an` in row 2).
    for field in b.schema().fields().iter().skip(1) {
        assert!(col(field.name()).is_null(2), "{}", field.name());
    }

    let i2 = col("i2");
    assert_eq!(
        i2.as_primitive::<Int16Type>().values()[..2],
        [i16::MIN, i16::MAX]
    );
    let i4 = col("i4");
    assert_eq!(
        i4.as_primitive::<Int32Type>().values()[..2],
        [i32::MIN, i32::MAX]
    );
    let i8 = col("i8");
    assert_eq!(
        i8.as_primitive::<Int64Type>().values()[..2],
        [i64::MIN, i64::MAX]
    );

    let f4 = col("f4");
    let f4 = f4.as_primitive::<Float32Type>();
    assert!(f4.value(0).is_nan());
    assert_eq!((f4.value(1), f4.value(3)), (f32::NEG_INFINITY, 0.0));
    let f8 = col("f8");
    let f8 = f8.as_primitive::<Float64Type>();
    assert_eq!((f8.value(0), f8.value(1)), (f64::INFINITY, -1.5e300));

    let n = col("n");
    assert_eq!(n.data_type(), &DataType::Decimal128(38, 4));
    let max = 10i128.pow(38) - 1;
    let n = n.as_primitive::<Decimal128Type>();
    assert_eq!((n.value(0), n.value(1), n.value(3)), (max, -max, 1));
    let nu = col("nu");
    assert_eq!(
        nu.data_type(),
        &DataType::Decimal128(38, 10),
        "unconstrained numeric"
    );
    let nu = nu.as_primitive::<Decimal128Type>();
    assert_eq!(nu.value(0), 1_234_567_890, "rounded down");
    assert_eq!(
        nu.value(1),
        -1_234_567_890_123_456_789_012_345_671_234_567_891,
        "rounded half away from zero"
    );

    let strings = |name: &str| {
        let array = col(name);
        let array = array.as_string::<i32>();
        (0..array.len())
            .map(|i| array.is_valid(i).then(|| array.value(i).to_string()))
            .collect::<Vec<_>>()
    };
    let s = |v: &str| Some(v.to_string());
    assert_eq!(
        strings("t"),
        [s(""), s("ünïcødé 🎉 \"quoted\""), None, s(" ")]
    );
    assert_eq!(strings("vc"), [s(""), s("x"), None, s("y")]);
    assert_eq!(
        strings("c"),
        [s("a  "), s("abc"), None, s("   ")],
        "char(n) keeps its padding"
    );
    assert_eq!(strings("nm"), [s("nm"), s("n2"), None, s("z")]);
    assert_eq!(
        strings("u"),
        [
            s("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            s("00000000-0000-0000-0000-000000000000"),
            None,
            s("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11")
        ]
    );
    assert_eq!(
        strings("j"),
        [s("{\"a\": [1, null]}"), s("[]"), None, s("null")]
    );
    assert_eq!(
        strings("jb"),
        [s("{\"b\": \"ü\"}"), s("[]"), None, s("null")]
    );
    assert_eq!(strings("e"), [s("happy"), s("sad"), None, s("sad")]);

    let bools = col("b");
    let bools = bools.as_boolean();
    assert_eq!(
        (bools.value(0), bools.value(1), bools.value(3)),
        (true, false, true)
    );

    let d = col("d");
    let d = d.as_primitive::<Date32Type>();
    assert_eq!(
        (d.value(0), d.value(1), d.value(3)),
        (i32::MAX, i32::MIN, 19_782)
    );
    let tm = col("tm");
    let tm = tm.as_primitive::<Time64MicrosecondType>();
    assert_eq!(
        (tm.value(0), tm.value(1), tm.value(3)),
        (0, 86_399_999_999, 43_200_000_000)
    );
    let ts = col("ts");
    assert_eq!(
        ts.data_type(),
        &DataType::Timestamp(TimeUnit::Microsecond, None)
    );
    let ts = ts.as_primitive::<TimestampMicrosecondType>();
    assert_eq!(
        (ts.value(0), ts.value(1), ts.value(3)),
        (i64::MIN, i64::MAX, 946_684_799_999_999)
    );
    let tstz = col("tstz");
    assert_eq!(
        tstz.data_type(),
        &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
    );
    let tstz = tstz.as_primitive::<TimestampMicrosecondType>();
    assert_eq!((tstz.value(0), tstz.value(1)), (1_709_192_096_789_000, 0));

    let iv = col("iv");
    let iv = iv.as_primitive::<IntervalMonthDayNanoType>();
    assert_eq!(
        iv.value(0),
        IntervalMonthDayNano::new(14, 3, 14_706_789_000_000)
    );
    assert_eq!(iv.value(1), IntervalMonthDayNano::new(0, -1, 0));

    let by = col("by");
    let by = by.as_binary::<i32>();
    assert_eq!(
        (by.value(0), by.value(1), by.value(3)),
        (&[0u8, 255][..], &[][..], &b"A"[..])
    );

    let dom = col("dom");
    assert_eq!(
        dom.as_primitive::<Int32Type>().value(3),
        i32::MAX,
        "domain over integer"
    );

    let list = |name: &str| {
        col(name)
            .as_any()
            .downcast_ref::<ListArray>()
            .unwrap()
            .clone()
    };
    let ai = list("ai");
    let first = ai.value(0);
    let first = first.as_primitive::<Int32Type>();
    assert_eq!(first.iter().collect::<Vec<_>>(), [Some(1), None, Some(3)]);
    assert_eq!(
        (
            ai.value(1).len(),
            ai.value(3).len(),
            ai.value(3).null_count()
        ),
        (0, 1, 1)
    );
    let at = list("at");
    let first = at.value(0);
    let first = first.as_any().downcast_ref::<StringArray>().unwrap();
    assert_eq!(
        first.iter().collect::<Vec<_>>(),
        [Some("x"), None, Some("ünï")]
    );
    assert_eq!(at.value(3).as_string::<i32>().value(0), "");
    let an = list("an");
    assert!(an.is_null(1));
    let first = an.value(0);
    let first = first.as_primitive::<Decimal128Type>();
    assert_eq!(first.iter().collect::<Vec<_>>(), [Some(150), None]);
    assert_eq!(an.value(3).as_primitive::<Decimal128Type>().value(0), -1);
}

#[tokio::test]
async fn an_unsupported_type_names_the_column_and_the_way_out() {
    let db = database(
        "unsupported",
        "CREATE TABLE shapes (id int, p point); INSERT INTO shapes VALUES (1, '(1,2)');",
    )
    .await;
    let err = compile_error(config(&db, json!({"table": "shapes"}))).await;
    let message = err.to_string();
    assert!(
        message.contains("column \"p\" has type point")
            && message.contains("cast it in `query`, e.g. SELECT \"p\"::text"),
        "{message}"
    );
    assert_eq!(err.exit_code(), 1);

    let pipeline = compile(config(
        &db,
        json!({"query": "SELECT id, p::text AS p FROM shapes;"}),
    ))
    .await
    .unwrap();
    assert_eq!(
        rows(&pipeline, "SELECT * FROM t").await,
        "+----+-------+\n| id | p     |\n+----+-------+\n| 1  | (1,2) |\n+----+-------+"
    );
}

const ITEMS: &str = r#"
    CREATE TABLE items (id bigint, name text, score double precision, tag char(2), day date);
    INSERT INTO items
    SELECT i, 'item' || i, i / 10.0, 'x', DATE '2024-01-01' + i FROM generate_series(1, 100) i;
    INSERT INTO items VALUES (NULL, 'no id', NULL, NULL, NULL), (101, 'it''s', 1, 'y', NULL);
"#;

#[tokio::test]
async fn projection_filters_and_limits_are_pushed_into_the_copy() {
    let db = database("pushdown", ITEMS).await;
    let pipeline = compile(config(&db, json!({"table": "items"})))
        .await
        .unwrap();
    let sql = "SELECT name FROM t WHERE id > 95 AND name <> 'item97' AND score < 100 \
               AND (tag IS NULL OR id IN (96, 98, 101, 200)) AND day <= DATE '2024-04-09' \
               ORDER BY name";
    let plan = physical_plan(&pipeline, sql).await;
    assert!(
        plan.contains(
            "sql[0]=SELECT \"name\", \"score\" FROM \"items\" WHERE \"id\" > 95 \
             AND \"name\" COLLATE \"C\" <> E'item97' \
             AND (\"tag\" IS NULL OR \"id\" IN (96, 98, 101, 200)) \
             AND \"day\" <= '2024-04-09'::date"
        ),
        "only the needed columns, and the exact filters, reach PostgreSQL; \
         the float filter stays in DataFusion:\n{plan}"
    );
    assert!(plan.contains("FilterExec: score@1 < 100"), "{plan}");
    assert!(!plan.contains(server().password()), "{plan}");
    assert_eq!(
        rows(&pipeline, sql).await,
        "+--------+\n| name   |\n+--------+\n| item96 |\n| item98 |\n+--------+"
    );

    // Strings compare byte-wise, as in DataFusion; quotes are escaped.
    assert_eq!(
        rows(
            &pipeline,
            "SELECT name FROM t WHERE name >= 'it''' AND name < 'item1' ORDER BY name"
        )
        .await,
        "+------+\n| name |\n+------+\n| it's |\n+------+"
    );
    let plan = physical_plan(&pipeline, "SELECT id FROM t LIMIT 3").await;
    assert!(
        plan.contains("sql[0]=SELECT \"id\" FROM \"items\" LIMIT 3"),
        "{plan}"
    );
    let counted = query(&pipeline, "SELECT count(*) AS n FROM t")
        .await
        .unwrap();
    assert_eq!(counted.column(0).as_primitive::<Int64Type>().value(0), 102);
}

#[tokio::test]
async fn a_partitioned_read_returns_exactly_the_rows_of_a_single_read() {
    let db = database("partitions", ITEMS).await;
    let all = "SELECT * FROM t ORDER BY name";
    let single = compile(config(&db, json!({"table": "items"})))
        .await
        .unwrap();
    let expected = rows(&single, all).await;
    assert!(
        expected.contains("| no id "),
        "NULL ids are read:\n{expected}"
    );

    let cases = [
        json!({"partitionColumn": "id", "numPartitions": 4}),
        json!({"partitionColumn": "id", "numPartitions": 3, "lowerBound": 40, "upperBound": 60}),
        json!({"partitionColumn": "day", "numPartitions": 5, "lowerBound": "2024-02-01"}),
        json!({"partitionColumn": "id", "numPartitions": 1000, "batchSize": 7}),
    ];
    for case in cases {
        let mut extra = case.clone();
        extra["table"] = json!("items");
        let pipeline = compile(config(&db, extra)).await.unwrap();
        assert_eq!(rows(&pipeline, all).await, expected, "{case}");
        let plan = physical_plan(&pipeline, "SELECT * FROM t").await;
        assert!(!plan.contains("partitions=1,"), "{case}: {plan}");
    }

    let pipeline = compile(config(
        &db,
        json!({"table": "items", "partitionColumn": "id", "numPartitions": 4}),
    ))
    .await
    .unwrap();
    let plan = physical_plan(&pipeline, "SELECT name FROM t").await;
    for range in [
        "sql[0]=SELECT \"name\" FROM \"items\" WHERE (\"id\" < 26 OR \"id\" IS NULL)",
        "sql[1]=SELECT \"name\" FROM \"items\" WHERE \"id\" >= 26 AND \"id\" < 51",
        "sql[3]=SELECT \"name\" FROM \"items\" WHERE \"id\" >= 76",
    ] {
        assert!(plan.contains(range), "{range}\n{plan}");
    }

    let err = compile_error(config(
        &db,
        json!({"table": "items", "partitionColumn": "name", "numPartitions": 2}),
    ))
    .await;
    assert!(
        err.to_string()
            .contains("must be an integer, date or timestamp column"),
        "{err}"
    );
}

#[tokio::test]
async fn failures_are_clear_and_never_show_the_password() {
    let db = database("failures", "CREATE TABLE t (id int);").await;
    let password = server().password();
    let cases = [
        (
            json!({"url": server().url(&db), "password": "wrong-password-123", "table": "t"}),
            "password authentication failed",
            "wrong-password-123",
        ),
        (
            json!({"url": format!("postgresql://dataflow_test:{password}@127.0.0.1:{}/{db}", server().port()), "table": "missing"}),
            "relation \"missing\" does not exist",
            password,
        ),
        (
            json!({"url": format!("postgresql://dataflow_test@127.0.0.1:1/{db}?connect_timeout=5"), "password": password, "table": "t"}),
            "connecting to dataflow_test@127.0.0.1:1/",
            password,
        ),
    ];
    for (config, expected, secret) in cases {
        let err = compile_error(config).await;
        let message = format!("{err} {err:?}");
        assert!(message.contains(expected), "{expected}: {message}");
        assert!(!message.contains(secret), "{message}");
        assert_eq!(err.exit_code(), 1, "{message}");
    }
}

const BIG: &str = "CREATE TABLE big AS SELECT i AS id, md5(i::text) AS payload \
                   FROM generate_series(1, 2000000) i;";

#[tokio::test]
async fn a_killed_connection_fails_the_read_or_is_retried() {
    let db = database("killed", BIG).await;
    let pipeline = compile(config(&db, json!({"table": "big"}))).await.unwrap();
    let killer = tokio::spawn({
        let db = db.clone();
        async move { server().terminate_copy(&db, Duration::from_secs(30)).await }
    });
    let err = query(&pipeline, "SELECT sum(id) FROM t").await.unwrap_err();
    assert!(killer.await.unwrap(), "the COPY was found and terminated");
    assert!(
        err.to_string()
            .contains("terminating connection due to administrator command"),
        "{err}"
    );

    // The first attempt is killed while the server sleeps, before any row
    // was read: with retries, the read starts over and succeeds.
    let sleepy = "SELECT * FROM big WHERE (SELECT count(*) FROM pg_sleep(1)) = 1";
    let pipeline = compile(config(&db, json!({"query": sleepy, "retries": 2})))
        .await
        .unwrap();
    let killer = tokio::spawn({
        let db = db.clone();
        async move { server().terminate_copy(&db, Duration::from_secs(30)).await }
    });
    let sum = query(&pipeline, "SELECT sum(id) AS s FROM t")
        .await
        .unwrap();
    assert!(killer.await.unwrap());
    assert_eq!(
        sum.column(0).as_primitive::<Int64Type>().value(0),
        2_000_000 * 2_000_001 / 2
    );
}

#[tokio::test]
async fn tls_follows_sslmode_and_checks_certificates() {
    use dataflow_connectors::testing::{CERT_USER, USER};
    let db = database("tls", "CREATE ROLE dataflow_cert LOGIN SUPERUSER;").await;
    let file = |name: &str| server().tls_file(name).display().to_string();
    let url = |user: &str, host: &str, params: String| {
        format!(
            "postgresql://{user}@{host}:{}/{db}?{params}",
            server().port()
        )
    };
    let ca = file("ca.pem");
    let connects = [
        (url(USER, "127.0.0.1", "sslmode=disable".into()), "false"),
        (url(USER, "127.0.0.1", "connect_timeout=5".into()), "true"),
        (url(USER, "127.0.0.1", "sslmode=require".into()), "true"),
        (
            url(
                USER,
                "127.0.0.1",
                format!("sslmode=verify-ca&sslrootcert={ca}"),
            ),
            "true",
        ),
        (
            url(
                USER,
                "localhost",
                format!("sslmode=verify-full&sslrootcert={ca}"),
            ),
            "true",
        ),
    ];
    for (url, expected) in connects {
        let config = config(
            &db,
            json!({"url": url,
            "query": "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"}),
        );
        let pipeline = compile(config)
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        let rows = rows(&pipeline, "SELECT ssl FROM t").await;
        assert!(rows.contains(&format!("| {expected} ")), "{url}:\n{rows}");
    }

    // The server's certificate names localhost, not 127.0.0.1; other-ca
    // issued nothing the server shows.
    let other = file("other-ca.pem");
    let refused = [
        (
            url(
                USER,
                "127.0.0.1",
                format!("sslmode=verify-full&sslrootcert={ca}"),
            ),
            "not valid for name",
        ),
        (
            url(
                USER,
                "localhost",
                format!("sslmode=verify-ca&sslrootcert={other}"),
            ),
            "UnknownIssuer",
        ),
        (
            url(
                USER,
                "localhost",
                format!("sslmode=require&sslrootcert={other}"),
            ),
            "UnknownIssuer",
        ),
        (
            url(
                CERT_USER,
                "localhost",
                format!("sslmode=verify-full&sslrootcert={ca}"),
            ),
            "certificate",
        ),
    ];
    for (url, expected) in refused {
        let err = compile_error(config(
            &db,
            json!({"url": url, "table": "pg_catalog.pg_class"}),
        ))
        .await;
        let message = err.to_string();
        assert!(message.contains(expected), "{url}: {expected}: {message}");
        assert_eq!(err.exit_code(), 1, "{message}");
    }

    // A role that may log in with its client certificate only.
    let (cert, key) = (file("client.crt"), file("client.key"));
    let with_cert = url(
        CERT_USER,
        "localhost",
        format!("sslmode=verify-full&sslrootcert={ca}&sslcert={cert}&sslkey={key}"),
    );
    let spec = json!({"name": "pg", "steps": [
        {"type": "extract", "method": "fromPostgres", "config": {"url": with_cert, "registerAs": "t",
            "query": "SELECT current_user::text AS who, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"}},
        {"type": "load", "method": "toConsole", "config": {}}]});
    let spec = PipelineSpec::load(&spec.to_string(), &[], &|_| None).unwrap();
    let pipeline = Pipeline::compile(&spec, &registry()).await.unwrap();
    let rows = rows(&pipeline, "SELECT who, ssl FROM t").await;
    assert!(rows.contains("| dataflow_cert | true |"), "{rows}");
}

#[tokio::test]
async fn numerics_with_negative_or_large_scale_widen_exactly() {
    let db = database(
        "scales",
        "CREATE TABLE t (id int, hundreds numeric(5, -2), tiny numeric(2, 5));
         INSERT INTO t VALUES (1, 9999949, 0.00099), (2, -1250, -0.00001), (3, NULL, NULL);",
    )
    .await;
    let pipeline = compile(config(&db, json!({"table": "t"}))).await.unwrap();
    let batch = query(&pipeline, "SELECT hundreds, tiny FROM t ORDER BY id")
        .await
        .unwrap();
    assert_eq!(batch.column(0).data_type(), &DataType::Decimal128(7, 0));
    assert_eq!(batch.column(1).data_type(), &DataType::Decimal128(5, 5));
    assert_eq!(
        rows(
            &pipeline,
            "SELECT CAST(hundreds AS VARCHAR) AS h, CAST(tiny AS VARCHAR) AS t FROM t ORDER BY id"
        )
        .await,
        [
            "+---------+----------+",
            "| h       | t        |",
            "+---------+----------+",
            "| 9999900 | 0.00099  |",
            "| -1300   | -0.00001 |",
            "|         |          |",
            "+---------+----------+",
        ]
        .join("\n")
    );
}

#[tokio::test]
async fn a_bound_beyond_the_data_still_reads_every_row() {
    let db = database(
        "bounds",
        "CREATE TABLE t AS SELECT i AS id FROM generate_series(1, 10) i;",
    )
    .await;
    for bounds in [json!({"lowerBound": 1000}), json!({"upperBound": -5})] {
        let mut extra = json!({"table": "t", "partitionColumn": "id", "numPartitions": 4});
        extra
            .as_object_mut()
            .unwrap()
            .extend(bounds.as_object().unwrap().clone());
        let pipeline = compile(config(&db, extra)).await.unwrap();
        let rows = rows(&pipeline, "SELECT count(*) AS n, sum(id) AS s FROM t").await;
        assert!(rows.contains("| 10 | 55 |"), "{bounds}: {rows}");
    }
}
