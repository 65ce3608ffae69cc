//! The value checks the host makes before any SQL, compared with the
//! database itself: for a table of many column types, every value the
//! server refuses (under the host's session, strict mode) must be refused
//! by the check first, so a wrong value is an `invalid_op` dead letter
//! naming its column and never a database error; and within one type family
//! the check accepts what the server accepts.

mod common;

use common::*;
use flatten::Value;
use projector_host::sink::{Bind, Schema, parse_timestamp};

const TABLE: &str = "CREATE TABLE typed (
    id        INT PRIMARY KEY,
    v_varchar VARCHAR(5) NULL,
    v_char    CHAR(3) NULL,
    v_text    TEXT NULL,
    v_tiny    TINYINT NULL,
    v_utiny   TINYINT UNSIGNED NULL,
    v_small   SMALLINT NULL,
    v_int     INT NULL,
    v_uint    INT UNSIGNED NULL,
    v_big     BIGINT NULL,
    v_dec     DECIMAL(5,2) NULL,
    v_double  DOUBLE NULL,
    v_dt      DATETIME(6) NULL,
    v_ts      TIMESTAMP(6) NULL,
    v_json    JSON NULL,
    v_bool    BOOLEAN NULL,
    v_nn      VARCHAR(10) NOT NULL DEFAULT 'x'
)";

fn bind(v: &Value) -> Bind {
    match v {
        Value::Null => Bind::Null,
        Value::Text(s) => Bind::Text(s.clone()),
        Value::Int(i) => Bind::Int(*i),
        Value::Float(f) => Bind::Float(*f),
        Value::Boolean(b) => Bind::Bool(*b),
        Value::Timestamp(t) => Bind::Timestamp(parse_timestamp(t).unwrap()),
        Value::Json(j) => Bind::Json(j.clone()),
    }
}

/// (column, value, same family: the check must accept exactly what the
/// server accepts; otherwise it may be stricter, never looser).
fn cases() -> Vec<(&'static str, Value, bool)> {
    let text = |s: &str| Value::Text(s.to_owned());
    let ts = |s: &str| Value::Timestamp(s.to_owned());
    vec![
        ("v_varchar", text("abcde"), true),
        ("v_varchar", text("abcdef"), true),
        ("v_varchar", text("ÿøüéè"), true),
        ("v_varchar", text("ÿøüéèa"), true),
        ("v_varchar", text("🌻🌻🌻🌻🌻"), true),
        ("v_varchar", Value::Int(12345), false),
        ("v_varchar", Value::Int(123456), false),
        ("v_char", text("abc"), true),
        ("v_char", text("abcd"), true),
        ("v_text", text(&"t".repeat(65535)), true),
        ("v_text", text(&"t".repeat(65536)), true),
        ("v_tiny", Value::Int(127), true),
        ("v_tiny", Value::Int(128), true),
        ("v_tiny", Value::Int(-128), true),
        ("v_tiny", Value::Int(-129), true),
        ("v_utiny", Value::Int(255), true),
        ("v_utiny", Value::Int(256), true),
        ("v_utiny", Value::Int(-1), true),
        ("v_small", Value::Int(32767), true),
        ("v_small", Value::Int(32768), true),
        ("v_int", Value::Int(2147483647), true),
        ("v_int", Value::Int(2147483648), true),
        ("v_int", Value::Int(-2147483649), true),
        ("v_int", Value::Float(1.5), false),
        ("v_int", text("12"), false),
        ("v_int", text("twelve"), false),
        ("v_uint", Value::Int(4294967295), true),
        ("v_uint", Value::Int(4294967296), true),
        ("v_uint", Value::Int(-1), true),
        ("v_big", Value::Int(i64::MAX), true),
        ("v_big", Value::Int(i64::MIN), true),
        ("v_dec", Value::Float(999.99), true),
        ("v_dec", Value::Float(999.994), true),
        ("v_dec", Value::Float(999.996), true),
        ("v_dec", Value::Float(-999.99), true),
        ("v_dec", Value::Float(1000.0), true),
        ("v_dec", Value::Int(999), true),
        ("v_dec", Value::Int(1000), true),
        ("v_dec", text("12.5"), false),
        ("v_double", Value::Float(1e300), true),
        ("v_double", Value::Int(7), true),
        ("v_dt", ts("2025-01-02T03:04:05.123456Z"), true),
        ("v_dt", ts("1000-01-01T00:00:00Z"), true),
        ("v_dt", ts("9999-12-31T23:59:59.999999Z"), true),
        ("v_dt", text("2025-01-02 03:04:05"), false),
        ("v_dt", text("yesterday"), false),
        ("v_dt", Value::Int(20250102), false),
        ("v_ts", ts("2025-01-02T03:04:05Z"), true),
        ("v_ts", ts("1970-01-01T00:00:01Z"), true),
        ("v_ts", ts("2038-01-19T03:14:07Z"), true),
        ("v_ts", ts("2038-01-19T03:14:08Z"), true),
        ("v_ts", ts("1969-12-31T23:59:59Z"), true),
        ("v_ts", ts("2050-06-01T00:00:00Z"), true),
        ("v_json", Value::Json("{\"a\":[1,2]}".into()), true),
        ("v_json", text("not json"), false),
        ("v_json", text("{\"a\":1}"), false),
        ("v_bool", Value::Boolean(true), true),
        ("v_bool", Value::Int(1), true),
        ("v_bool", Value::Int(300), true),
        ("v_nn", Value::Null, true),
        ("v_nn", text("ok"), true),
        ("v_varchar", Value::Null, true),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_value_the_server_refuses_is_refused_before_any_sql() {
    let db = TestDb::new().await;
    // The host's own session settings (strict mode, time zone).
    let pool = projector_host::sink::connect_mysql(&db.url, 2)
        .await
        .unwrap();
    sqlx::query(TABLE).execute(&pool).await.unwrap();
    sqlx::query("SET SESSION time_zone = '+00:00'")
        .execute(&pool)
        .await
        .unwrap();
    let schema = Schema::load(&pool).await.unwrap();
    let types = &schema.tables["typed"].types;

    let mut looser = Vec::new();
    let mut stricter_in_family = Vec::new();
    let mut refused_by_both = 0;
    for (i, (column, value, same_family)) in cases().into_iter().enumerate() {
        let checked = types[column].check(&value);
        let mut conn = pool.acquire().await.unwrap();
        let mut tx = sqlx::Connection::begin(&mut *conn).await.unwrap();
        let server = sqlx::query(&format!("INSERT INTO typed (id, {column}) VALUES (?, ?)"))
            .bind(i as i64)
            .bind(bind(&value))
            .execute(&mut *tx)
            .await;
        tx.rollback().await.unwrap();
        match (&checked, &server) {
            (Ok(()), Err(e)) => looser.push(format!("{column} {value:?}: server: {e}")),
            (Err(e), Ok(_)) if same_family => {
                stricter_in_family.push(format!("{column} {value:?}: check: {e}"))
            }
            (Err(e), Err(_)) => {
                assert!(
                    e.contains(&types[column].sql) || e.contains("RFC 3339"),
                    "{e}"
                );
                refused_by_both += 1;
            }
            _ => {}
        }
    }
    db.drop_db().await;
    assert!(
        looser.is_empty(),
        "the server refused values the check let through:\n{}",
        looser.join("\n")
    );
    assert!(
        stricter_in_family.is_empty(),
        "the check refused values of the column's own family the server takes:\n{}",
        stricter_in_family.join("\n")
    );
    // The corpus does exercise refusals.
    assert!(refused_by_both >= 20, "{refused_by_both}");
}

/// The identifier checks of an operation: a column named twice (in one
/// list, across key and values, across a parent and a child row), a column
/// the schema lacks, a host column, an undeclared one: each refused as
/// `disallowed_op` with its name; a well-formed op passes with its values
/// bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_naming_a_column_twice_or_outside_the_schema_are_refused() {
    use flatten::{Column, Info, Replace, RowOp, TableUse, Upsert};
    let db = TestDb::new().await;
    projector_host::sink::migrate_with_builtin_tables(&db.pool)
        .await
        .unwrap();
    let schema = Schema::load(&db.pool).await.unwrap();
    let declared = |table: &str, columns: &[&str]| TableUse {
        table: table.into(),
        columns: columns.iter().map(|c| (*c).to_owned()).collect(),
    };
    let info = Info {
        domain: "product".into(),
        version: "1.0.0".into(),
        handles: vec![],
        writes: vec![
            declared("products", &["product_id", "name", "event_id", "nope"]),
            declared("product_variants", &["product_id", "variant_key", "sku"]),
        ],
        tables: vec![],
    };
    let c = |name: &str, v: &str| Column {
        name: name.into(),
        value: Value::Text(v.into()),
    };
    let upsert = |key: Vec<Column>, values: Vec<Column>| {
        RowOp::Upsert(Upsert {
            table: "products".into(),
            key,
            values,
        })
    };
    let replace = |rows: Vec<Vec<Column>>| {
        RowOp::Replace(Replace {
            table: "product_variants".into(),
            parent: vec![c("product_id", "p1")],
            rows,
        })
    };
    let refusals = [
        (
            upsert(
                vec![c("product_id", "p1")],
                vec![c("name", "a"), c("name", "b")],
            ),
            "products.name appears twice",
        ),
        (
            upsert(vec![c("product_id", "p1")], vec![c("product_id", "p2")]),
            "products.product_id appears twice",
        ),
        (
            replace(vec![vec![c("variant_key", "k"), c("product_id", "p2")]]),
            "product_variants.product_id appears twice",
        ),
        (
            replace(vec![vec![
                c("variant_key", "k"),
                c("sku", "a"),
                c("sku", "b"),
            ]]),
            "product_variants.sku appears twice",
        ),
        (
            upsert(vec![c("product_id", "p1")], vec![c("nope", "a")]),
            "products.nope does not exist in the schema",
        ),
        (
            upsert(vec![c("product_id", "p1")], vec![c("event_id", "a")]),
            "products.event_id is written by the host only",
        ),
        (
            upsert(vec![c("product_id", "p1")], vec![c("category", "a")]),
            "did not declare",
        ),
    ];
    for (op, reason) in refusals {
        let refused = projector_host::sink::validate(&op, &info, &schema).unwrap_err();
        assert_eq!(refused.class(), "disallowed_op", "{op:?}");
        assert!(refused.to_string().contains(reason), "{refused} / {reason}");
        // The owned form decides the same.
        assert_eq!(
            projector_host::sink::validate_owned(op, &info, &schema).unwrap_err(),
            refused
        );
    }
    // Each child row is checked on its own: a column in two rows is fine.
    let fine = replace(vec![
        vec![c("variant_key", "k1"), c("sku", "a")],
        vec![c("variant_key", "k2"), c("sku", "b")],
    ]);
    let valid = projector_host::sink::validate(&fine, &info, &schema).unwrap();
    let projector_host::sink::ValidOp::Replace { parent, rows, .. } = valid else {
        panic!("{valid:?}");
    };
    assert_eq!(parent, [("product_id".to_owned(), Bind::Text("p1".into()))]);
    assert_eq!(rows[1][1], ("sku".to_owned(), Bind::Text("b".into())));
    db.drop_db().await;
}
