//! Shadow rebuilds against the real stack: readers never see a half-built
//! domain, the swapped tables equal a clean run (the independent oracle),
//! and a rollback brings the previous tables back.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use projector_host::ops::rebuild::{self, Options};
use projector_host::pipeline::Mode;
use sqlx::mysql::MySqlDatabaseError;
use sqlx::{Connection as _, MySqlConnection};

const PRODUCT_TABLES: [&str; 2] = ["products", "product_variants"];

/// A rebuild's options in these tests (`component`: rebuild with it).
fn options(component: Option<std::path::PathBuf>, url: &str) -> Options {
    Options {
        component,
        url: Some(url.to_owned()),
        force: false,
        stall_timeout: Duration::from_secs(60),
        interrupt: Default::default(),
    }
}

async fn create_topic(name: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", kafka_bootstrap())
        .create()
        .unwrap();
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for r in admin
        .create_topics([&topic], &AdminOptions::new())
        .await
        .unwrap()
    {
        r.unwrap();
    }
}

/// What a reader saw in one consistent snapshot: the live position of the
/// product topic and the checksum of the product tables.
#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    position: i64,
    checksum: String,
}

async fn look(
    conn: &mut MySqlConnection,
    group: &str,
    topic: &str,
    columns: &[(&str, Vec<String>)],
) -> Result<Seen, sqlx::Error> {
    sqlx::query("START TRANSACTION WITH CONSISTENT SNAPSHOT")
        .execute(&mut *conn)
        .await?;
    let position: Option<i64> = sqlx::query_scalar(
        "SELECT next_offset FROM consumer_offsets WHERE group_id = ? AND topic = ? AND `partition` = 0",
    )
    .bind(group)
    .bind(topic)
    .fetch_optional(&mut *conn)
    .await?;
    let checksum = projector_tools::snapshot::checksum_with(conn, columns).await;
    sqlx::query("COMMIT").execute(&mut *conn).await?;
    Ok(Seen {
        at: Instant::now(),
        position: position.unwrap_or(0),
        checksum: checksum?,
    })
}

async fn comment(pool: &sqlx::MySqlPool) -> String {
    sqlx::query_scalar(
        "SELECT TABLE_COMMENT FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'products'",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn product_position(pool: &sqlx::MySqlPool, group: &str, topic: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(
        "SELECT next_offset FROM consumer_offsets WHERE group_id = ? AND topic = ? AND `partition` = 0",
    )
    .bind(group)
    .bind(topic)
    .fetch_optional(pool)
    .await
    .unwrap()
    .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shadow_rebuild_under_live_traffic_never_shows_a_half_built_domain_and_rolls_back() {
    let db = TestDb::new().await;
    let topics = Topics::new();
    let group = unique("g");
    let product_topic = topics.of("product");
    // One partition: a reader's position is one offset, and the reference
    // state at each offset is the oracle's after that many events.
    create_topic(&product_topic, 1).await;
    let all = events(600);
    let (before, during) = all.split_at(all.len() / 2);
    let after = events(40);
    produce_all(&topics, before).await;
    let mut settings = settings(&db, &topics, &group);
    settings.batch.max_events = 50;
    let host = RunningHost::start(settings.clone(), Mode::Wasm).await;
    let url = host.admin_url().await;
    wait_processed(&db.pool, before.len() as i64, Duration::from_secs(60)).await;
    // Marks the live tables: a swap replaces them, a rollback brings them back.
    sqlx::query("ALTER TABLE products COMMENT = 'previous'")
        .execute(&db.pool)
        .await
        .unwrap();

    // A reader polling every 50 ms through the rebuild and the swap.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (url, group, topic, stop) = (
            db.url.clone(),
            group.clone(),
            product_topic.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            let mut conn = MySqlConnection::connect(&url).await.unwrap();
            let mut columns = Vec::new();
            for t in PRODUCT_TABLES {
                columns.push((
                    t,
                    projector_tools::snapshot::columns_of(&mut conn, t)
                        .await
                        .unwrap(),
                ));
            }
            let mut seen = Vec::new();
            let (mut retried, mut failed) = (0, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match look(&mut conn, &group, &topic, &columns).await {
                    Ok(s) => seen.push(s),
                    Err(e) => {
                        // A reader retries what the server asks it to: a
                        // transaction that read one of the tables and asks
                        // for another while the swap's RENAME holds it is
                        // the metadata-lock deadlock's victim (1213).
                        let code = e
                            .as_database_error()
                            .and_then(|d| d.try_downcast_ref::<MySqlDatabaseError>())
                            .map(|d| d.number());
                        if code == Some(1213) {
                            retried += 1;
                        } else {
                            failed.push(e.to_string());
                        }
                        let _ = sqlx::query("ROLLBACK").execute(&mut conn).await;
                        eprintln!("reader retried: {e}");
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            (seen, retried, failed)
        })
    };
    // Live traffic while the rebuild runs.
    let traffic = {
        let (topics_prefix, during) = (topics.prefix.clone(), during.to_vec());
        tokio::spawn(async move {
            let topics = Topics {
                prefix: topics_prefix,
            };
            for chunk in during.chunks(during.len() / 30 + 1) {
                produce_all(&topics, chunk).await;
                tokio::time::sleep(Duration::from_millis(150)).await;
            }
        })
    };
    let started = Instant::now();
    let report = rebuild::rebuild(&settings, "product", options(None, &url))
        .await
        .expect("the rebuild swaps");
    let swapped_at = Instant::now();
    eprintln!(
        "rebuild report: {}",
        serde_json::to_string_pretty(&report).unwrap()
    );
    eprintln!("rebuild took {:?}", started.elapsed());
    traffic.await.unwrap();
    wait_processed(&db.pool, all.len() as i64, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let (seen, retried, failed) = reader.await.unwrap();

    // The reference: the oracle's product tables after each prefix of the
    // topic, in the topic's order.
    let product_events: Vec<serde_json::Value> = read_topic(
        &product_topic,
        all.iter()
            .filter(|e| e["event_type"].as_str().unwrap().starts_with("product."))
            .count(),
        Duration::from_secs(30),
    )
    .await
    .into_iter()
    .map(|(v, _)| v)
    .collect();
    let oracle = TestDb::new().await;
    projector_host::sink::migrate_with_builtin_tables(&oracle.pool)
        .await
        .unwrap();
    let mut conn = oracle.pool.acquire().await.unwrap();
    let mut reference = vec![
        projector_tools::snapshot::checksum_of(&mut conn, &PRODUCT_TABLES)
            .await
            .unwrap(),
    ];
    for e in &product_events {
        let payload = e.to_string().into_bytes();
        projector_tools::oracle::apply_envelopes(&oracle.pool, [payload.as_slice()])
            .await
            .unwrap();
        reference.push(
            projector_tools::snapshot::checksum_of(&mut conn, &PRODUCT_TABLES)
                .await
                .unwrap(),
        );
    }
    drop(conn);
    oracle.drop_db().await;

    let before_swap = seen.iter().filter(|s| s.at < swapped_at).count();
    let after_swap = seen.len() - before_swap;
    eprintln!(
        "reader: {} snapshots ({before_swap} before the swap, {after_swap} after), {retried} retried",
        seen.len()
    );
    assert!(
        before_swap >= 10 && after_swap >= 3,
        "the reader polled through the rebuild"
    );
    assert_eq!(failed, Vec::<String>::new(), "no reader query failed");
    // At most one deadlock per swap attempt (five in all).
    assert!(retried <= 5, "{retried} reader deadlocks");
    for s in &seen {
        let want = reference
            .get(s.position as usize)
            .unwrap_or_else(|| panic!("position {} past the topic", s.position));
        assert_eq!(
            &s.checksum, want,
            "a reader saw product tables that are not the state at their position {}",
            s.position
        );
    }
    // The swapped tables are the shadow's, and everything equals a clean run.
    assert_ne!(
        comment(&db.pool).await,
        "previous",
        "the live tables were swapped"
    );
    assert_same(&dump(&db.pool).await, &clean_run(&all).await);
    let processed: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM processed_events WHERE topic = ?")
            .bind(&product_topic)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        processed as usize,
        product_events.len(),
        "each product event recorded once"
    );
    assert_eq!(report.positions.len(), 1);
    assert!(report.positions[0].1 > 0);

    // The host shows the swapped rebuild.
    let swapped = "projector_job_state{domain=\"product\",kind=\"rebuild\",state=\"swapped\"}";
    let m = wait_metric(&url, swapped, 1.0).await;
    assert_eq!(
        m.get("projector_rebuild_progress_ratio{domain=\"product\"}"),
        Some(&1.0)
    );
    let (_, page) = http_get(&format!("{url}/")).await;
    assert!(
        page.contains("RENAME TABLE"),
        "the status page shows the swap"
    );

    // More traffic after the swap, then the rollback: the previous tables
    // come back and the live host projects onto them what came since.
    let swap_position = report.positions[0].1;
    produce_all(&topics, &after).await;
    let everything: Vec<serde_json::Value> = all.iter().chain(&after).cloned().collect();
    wait_processed(&db.pool, everything.len() as i64, Duration::from_secs(60)).await;
    let message = rebuild::rollback(&settings, "product", Some(&url))
        .await
        .unwrap();
    eprintln!("{message}");
    assert_eq!(
        comment(&db.pool).await,
        "previous",
        "the previous tables are back"
    );
    let end = product_events.len() as i64
        + after
            .iter()
            .filter(|e| e["event_type"].as_str().unwrap().starts_with("product."))
            .count() as i64;
    assert!(swap_position < end);
    let deadline = Instant::now() + Duration::from_secs(60);
    while product_position(&db.pool, &group, &product_topic).await < end
        || sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM processed_events")
            .fetch_one(&db.pool)
            .await
            .unwrap()
            < everything.len() as i64
    {
        assert!(
            Instant::now() < deadline,
            "the live host caught the previous tables up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_same(&dump(&db.pool).await, &clean_run(&everything).await);
    // A second rollback has nothing to roll back, and the command line
    // refuses what it cannot do.
    let (ok, out) = projector(
        &db.url,
        &topics,
        &group,
        &components_dir(),
        &["rebuild", "--domain", "product", "--rollback"],
    );
    assert!(!ok && out.contains("no swapped rebuild"), "{out}");
    let (ok, out) = projector(
        &db.url,
        &topics,
        &group,
        &components_dir(),
        &["rebuild", "--domain", "nosuch"],
    );
    assert!(
        !ok && out.contains("no configured topic for domain"),
        "{out}"
    );
    assert!(
        rebuild::rollback(&settings, "product", Some(&url))
            .await
            .is_err()
    );
    println!(
        "{}",
        rebuild::drop_previous(&settings, "product").await.unwrap()
    );
    let left: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE CONCAT(DATABASE(), '\\_rb%')",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(left, 0, "the shadow databases are dropped");
    host.stop().await;
    db.drop_db().await;
}

/// Users whose display name is not in upper case (compared as bytes: the
/// tables' collation ignores case).
async fn mixed_case_users(pool: &sqlx::MySqlPool) -> i64 {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM users WHERE CAST(display_name AS BINARY) <> CAST(UPPER(display_name) AS BINARY)",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rebuild_with_a_changed_component_applies_it_to_all_history_and_deploys_it_at_the_swap() {
    let db = TestDb::new().await;
    let topics = Topics::new();
    let group = unique("g");
    // The swap deploys into the components folder: a copy of it.
    let dir = components_copy();
    let mut settings = settings(&db, &topics, &group);
    settings.components.dir = dir.path().to_owned();
    settings.batch.max_events = 20;
    let all = events(240);
    let (before, during) = all.split_at(all.len() / 2);
    produce_all(&topics, before).await;
    let host = RunningHost::start(settings.clone(), Mode::Wasm).await;
    let url = host.admin_url().await;
    wait_processed(&db.pool, before.len() as i64, Duration::from_secs(60)).await;
    let previous = digest_in_force(&host.shared, "user");
    assert!(mixed_case_users(&db.pool).await > 0);
    let traffic = {
        let (prefix, during) = (topics.prefix.clone(), during.to_vec());
        tokio::spawn(async move {
            let topics = Topics { prefix };
            for chunk in during.chunks(during.len() / 20 + 1) {
                produce_all(&topics, chunk).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    // user-next stores display names upper-cased: a new rule for all history.
    let report = rebuild::rebuild(
        &settings,
        "user",
        options(Some(test_component("user-next")), &url),
    )
    .await
    .expect("the rebuild swaps");
    eprintln!("rebuild with user-next: {report:?}");
    assert!(
        report
            .deployed
            .as_deref()
            .is_some_and(|l| l.starts_with("user@"))
    );
    assert_ne!(
        digest_in_force(&host.shared, "user"),
        previous,
        "user-next is in force"
    );
    traffic.await.unwrap();
    wait_processed(&db.pool, all.len() as i64, Duration::from_secs(60)).await;
    // Every user, from before the swap or after it, has the new rule; every
    // other table is a clean run's.
    assert_eq!(
        mixed_case_users(&db.pool).await,
        0,
        "the new rule applies to all history and to what came after"
    );
    let mut expected = clean_run(&all).await;
    for row in expected.get_mut("users").unwrap() {
        if let Some(Some(name)) = row.get_mut("display_name") {
            *name = name.to_uppercase();
        }
    }
    assert_same(&dump(&db.pool).await, &expected);

    // Rolled back: the previous tables and the previous component, and what
    // came since projected by it.
    eprintln!(
        "{}",
        rebuild::rollback(&settings, "user", Some(&url))
            .await
            .unwrap()
    );
    assert_eq!(
        digest_in_force(&host.shared, "user"),
        previous,
        "the previous component is back"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let real = dump(&db.pool).await;
        if real == clean_run(&all).await {
            break;
        }
        assert!(Instant::now() < deadline, "the previous tables caught up");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(mixed_case_users(&db.pool).await > 0);
    rebuild::drop_previous(&settings, "user").await.unwrap();
    host.stop().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reader_holding_the_tables_makes_the_swap_give_up_and_nothing_changes() {
    let db = TestDb::new().await;
    let topics = Topics::new();
    let group = unique("g");
    let first = events(60);
    produce_all(&topics, &first).await;
    let settings = settings(&db, &topics, &group);
    let host = RunningHost::start(settings.clone(), Mode::Wasm).await;
    let url = host.admin_url().await;
    wait_processed(&db.pool, first.len() as i64, Duration::from_secs(60)).await;
    sqlx::query("ALTER TABLE products COMMENT = 'previous'")
        .execute(&db.pool)
        .await
        .unwrap();
    // An analyst's long transaction on the products: its metadata lock
    // keeps the RENAME waiting.
    let mut reader = MySqlConnection::connect(&db.url).await.unwrap();
    sqlx::query("START TRANSACTION")
        .execute(&mut reader)
        .await
        .unwrap();
    sqlx::query("SELECT COUNT(*) FROM products")
        .execute(&mut reader)
        .await
        .unwrap();
    let more = events(20);
    let (result, ()) = tokio::join!(
        rebuild::rebuild(&settings, "product", options(None, &url)),
        async {
            // The host keeps projecting meanwhile.
            produce_all(&topics, &more).await;
        }
    );
    let error = format!(
        "{:#}",
        result.expect_err("no swap while the reader holds the tables")
    );
    assert!(error.contains("no swap in 5 attempts"), "{error}");
    assert_eq!(
        comment(&db.pool).await,
        "previous",
        "the live tables are unchanged"
    );
    let everything: Vec<serde_json::Value> = first.iter().chain(&more).cloned().collect();
    wait_processed(&db.pool, everything.len() as i64, Duration::from_secs(60)).await;
    assert_same(&dump(&db.pool).await, &clean_run(&everything).await);
    let state: String = sqlx::query_scalar(
        "SELECT state FROM projector_jobs WHERE kind = 'rebuild' AND domain = 'product'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(state, "failed");

    // The reader done, the same rebuild swaps.
    sqlx::query("COMMIT").execute(&mut reader).await.unwrap();
    rebuild::rebuild(&settings, "product", options(None, &url))
        .await
        .expect("the rebuild swaps once the reader is done");
    assert_ne!(comment(&db.pool).await, "previous");
    assert_same(&dump(&db.pool).await, &clean_run(&everything).await);
    rebuild::drop_previous(&settings, "product").await.unwrap();

    // A component outside its domain's grant (user-greedy also declares
    // `posts`) is refused before anything is created, and the job says why.
    let error = rebuild::rebuild(
        &settings,
        "user",
        options(Some(test_component("user-greedy")), &url),
    )
    .await
    .expect_err("refused");
    assert!(format!("{error:#}").contains("posts"), "{error:#}");
    let (state, detail): (String, String) = sqlx::query_as(
        "SELECT state, detail FROM projector_jobs WHERE kind = 'rebuild' AND domain = 'user'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(state, "failed");
    assert!(detail.contains("posts"), "{detail}");
    assert_same(&dump(&db.pool).await, &clean_run(&everything).await);
    host.stop().await;
    db.drop_db().await;
}
