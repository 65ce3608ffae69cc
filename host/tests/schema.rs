//! The tables come from the components' typed declarations (WIT 1.1.0):
//! a database made by the SQL the tables were created with before (migration
//! 0001, kept as a fixture) takes the declarations with additive changes
//! only and then has exactly the tables a fresh database gets, as the server
//! itself renders both; a 1.0 component, which declares no types, still
//! loads and runs against tables that exist.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use projector_host::pipeline::{Mode, declare_tables};
use projector_host::sandbox::Runtime;
use projector_host::settings::{Grants, SandboxLimits};
use sqlx::MySqlPool;

use projector_host::sink::schema::PROJECTION_TABLES as TABLES;

/// `SHOW CREATE TABLE` as the server renders it, with what may differ
/// between two equivalent tables taken out: key and constraint names, the
/// order of the lines, the AUTO_INCREMENT counter.
async fn rendered(pool: &MySqlPool) -> BTreeMap<String, Vec<String>> {
    let mut out = BTreeMap::new();
    for table in TABLES {
        let (_, sql): (String, String) = sqlx::query_as(&format!("SHOW CREATE TABLE `{table}`"))
            .fetch_one(pool)
            .await
            .unwrap();
        let mut lines: Vec<String> = sql
            .lines()
            .skip(1)
            .map(|l| {
                let l = l.trim().trim_end_matches(',');
                let unnamed = |l: &str, word: &str| -> Option<String> {
                    let rest = l.strip_prefix(word)?.strip_prefix('`')?;
                    let (_, after) = rest.split_once('`')?;
                    Some(format!("{word}{after}"))
                };
                unnamed(l, "UNIQUE KEY ")
                    .or_else(|| unnamed(l, "KEY "))
                    .or_else(|| unnamed(l, "CONSTRAINT "))
                    .unwrap_or_else(|| {
                        if l.starts_with(") ENGINE") {
                            l.split_whitespace()
                                .filter(|w| !w.starts_with("AUTO_INCREMENT="))
                                .collect::<Vec<_>>()
                                .join(" ")
                        } else {
                            l.to_owned()
                        }
                    })
            })
            .collect();
        lines.sort();
        out.insert(table.to_owned(), lines);
    }
    out
}

fn shipped_components() -> Vec<flatten::Info> {
    let runtime = Runtime::new(SandboxLimits::default()).unwrap();
    ["user", "supplier", "product", "order", "post"]
        .iter()
        .map(|d| {
            runtime
                .load_file(&components_dir().join(format!("{d}.wasm")))
                .unwrap()
                .info
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_made_by_migration_0001_reconciles_to_the_declared_tables() {
    let infos = shipped_components();
    let grants = Grants::default();

    // As a database that has run the host before the declarations: 0001.
    let old = TestDb::new().await;
    projector_host::sink::migrate(&old.pool).await.unwrap();
    sqlx::raw_sql(include_str!("fixtures/0001_projection_tables.sql"))
        .execute(&old.pool)
        .await
        .unwrap();
    // Additive changes only (anything else is refused): the shipped
    // declarations need none; a column an author adds is added here.
    for info in &infos {
        projector_host::sink::reconcile(&old.pool, &info.tables)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", info.domain));
    }

    // A fresh database: the host creates the tables from the declarations.
    let new = TestDb::new().await;
    projector_host::sink::migrate(&new.pool).await.unwrap();
    for info in &infos {
        declare_tables(&new.pool, &grants, info).await.unwrap();
    }
    let (want, got) = (rendered(&old.pool).await, rendered(&new.pool).await);
    for table in TABLES {
        assert_eq!(got[table], want[table], "{table}");
    }
    // Loading them again changes nothing.
    for info in &infos {
        declare_tables(&new.pool, &grants, info).await.unwrap();
    }
    assert_eq!(rendered(&new.pool).await, got);
    old.drop_db().await;
    new.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1_0_component_still_loads_and_runs() {
    let db = TestDb::new().await;
    let topics = Topics::new();
    let dir = components_copy();
    install_file(
        &dir.path().join("user.wasm"),
        &std::fs::read(test_component("user-wit-1-0")).unwrap(),
    );
    let mut s = settings(&db, &topics, &unique("g"));
    s.components.dir = dir.path().to_owned();

    // It declares no types, so the host cannot create its table: without
    // one it is refused at start, naming what is missing.
    projector_host::sink::migrate(&db.pool).await.unwrap();
    let err = projector_host::pipeline::Host::build(s.clone(), Mode::Wasm)
        .await
        .err()
        .expect("a 1.0 component without its table is refused");
    assert!(
        format!("{err:#}").contains("declares table \"users\", which the schema does not have"),
        "{err:#}"
    );

    // With the table (the user domain's 1.1 declaration made it), it runs.
    projector_host::sink::migrate_with_builtin_tables(&db.pool)
        .await
        .unwrap();
    let host = RunningHost::start(s, Mode::Wasm).await;
    let user = object_id();
    let e = fixture("user.created", &user, "2026-01-01T00:00:00Z");
    produce(
        &producer(),
        &topics.of("user.created"),
        &user,
        e.to_string().as_bytes(),
    )
    .await;
    wait_processed(&db.pool, 1, Duration::from_secs(60)).await;
    let (name, component): (Option<String>, String) = sqlx::query_as(
        "SELECT u.display_name, p.component FROM users u JOIN processed_events p \
         ON p.event_id = u.event_id WHERE u.user_id = ?",
    )
    .bind(&user)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    host.stop().await;
    assert!(component.starts_with("user@1.0.0-wit1.0+"), "{component}");
    assert_eq!(
        name.as_deref(),
        e["data"]["profile"]["display_name"].as_str()
    );
    db.drop_db().await;
}

#[test]
fn docs_schema_md_is_generated_from_the_shipped_declarations() {
    let doc = std::fs::read_to_string(repo().join("docs/schema.md")).unwrap();
    let want = projector_host::schema_doc::render(&shipped_components());
    let start = doc
        .find(projector_host::schema_doc::BEGIN)
        .expect("the generated section's first marker")
        + projector_host::schema_doc::BEGIN.len();
    let end = doc[start..]
        .find(projector_host::schema_doc::END)
        .expect("its last marker")
        + start;
    assert!(
        doc[start..end].trim() == want.trim(),
        "docs/schema.md is stale: run `projector schema-doc --write docs/schema.md build/projections/*.wasm`"
    );
    // Every column a component writes is in the reference.
    for info in shipped_components() {
        for t in &info.writes {
            for c in &t.columns {
                assert!(
                    doc[start..end].contains(&format!("| `{c}` |")),
                    "{}.{c}",
                    t.table
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_migrating_one_database_at_once_create_each_table_once() {
    // Three `projector migrate` processes on one fresh database: the
    // migration lock serialises them; one creates the seven tables, the
    // others find them up to date, and all three succeed.
    let db = TestDb::new().await;
    let topics = Topics::new();
    let runs: Vec<(bool, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|_| {
                s.spawn(|| projector(&db.url, &topics, "unused", &components_dir(), &["migrate"]))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let created: usize = runs
        .iter()
        .map(|(ok, out)| {
            assert!(ok, "{out}");
            out.matches(": create the table").count()
        })
        .sum();
    assert_eq!(created, TABLES.len(), "{runs:?}");
    let fresh = TestDb::new().await;
    projector_host::sink::migrate_with_builtin_tables(&fresh.pool)
        .await
        .unwrap();
    assert_eq!(rendered(&db.pool).await, rendered(&fresh.pool).await);
    db.drop_db().await;
    fresh.drop_db().await;
}
