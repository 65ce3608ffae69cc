//! The host end to end against the real stack: Kafka topics in, MySQL rows
//! out, with the compiled WASM components.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use projector_host::pipeline::Mode;
use serde_json::json;

fn lifecycle(entities: usize) -> Vec<serde_json::Value> {
    let mut events = Vec::new();
    for n in 0..entities {
        let (u, s, p, o, post) = (
            object_id(),
            object_id(),
            object_id(),
            object_id(),
            object_id(),
        );
        let t = |minute: u32| format!("2026-01-01T00:{minute:02}:{:02}.{:06}Z", n % 60, n);
        let mut plan = vec![
            ("user.created", &u, 0),
            ("user.updated", &u, 1),
            ("supplier.created", &s, 0),
            ("supplier.updated", &s, 1),
            ("product.created", &p, 0),
            ("product.updated", &p, 1),
            ("product.published", &p, 2),
            ("product.out_of_stock", &p, 3),
            ("product.restored", &p, 4),
            ("product.discontinued", &p, 5),
            ("order.created", &o, 0),
            ("order.shipped", &o, 1),
            ("post.created", &post, 0),
            ("post.updated", &post, 1),
            ("post.published", &post, 2),
        ];
        // Every other entity also ends: deleted or cancelled.
        if n % 2 == 1 {
            plan.extend([
                ("user.deleted", &u, 9),
                ("supplier.deleted", &s, 9),
                ("product.deleted", &p, 9),
                ("order.cancelled", &o, 9),
                ("post.deleted", &post, 9),
            ]);
        }
        for (event_type, id, minute) in plan {
            events.push(fixture(event_type, id, &t(minute)));
        }
    }
    events
}

async fn produce_all(topics: &Topics, events: &[serde_json::Value]) {
    let producer = producer();
    for e in events {
        let event_type = e["event_type"].as_str().unwrap();
        produce(
            &producer,
            &topics.of(event_type),
            e["entity_id"].as_str().unwrap(),
            e.to_string().as_bytes(),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_type_ends_as_the_expected_rows() {
    let db = TestDb::new().await;
    let topics = Topics::new();
    let events = lifecycle(6);
    assert_eq!(
        events
            .iter()
            .map(|e| e["event_type"].as_str().unwrap())
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        20
    );
    produce_all(&topics, &events).await;
    let host = RunningHost::start(settings(&db, &topics, &unique("g")), Mode::Wasm).await;
    wait_processed(&db.pool, events.len() as i64, Duration::from_secs(60)).await;
    host.stop().await;

    let real = dump(&db.pool).await;
    // Whole rows against the independent oracle (no host or flatten code).
    assert_same(&real, &clean_run(&events).await);

    // A few facts checked by hand.
    assert_eq!(real["users"].len(), 6);
    let deleted_users = real["users"]
        .iter()
        .filter(|r| r["deleted_at"].is_some())
        .count();
    assert_eq!(deleted_users, 3);
    assert_eq!(real["suppliers"].len(), 3, "deleted suppliers are gone");
    assert_eq!(real["products"].len(), 3, "deleted products are gone");
    assert!(
        real["products"]
            .iter()
            .all(|r| r["status"].as_deref() == Some("discontinued"))
    );
    // The last full product document of a live product had two variants.
    assert_eq!(
        real["product_variants"].len(),
        3 * 2,
        "variants of deleted products cascade"
    );
    let statuses: Vec<_> = real["orders"]
        .iter()
        .map(|r| r["status"].clone().unwrap())
        .collect();
    assert_eq!(statuses.iter().filter(|s| *s == "cancelled").count(), 3);
    assert_eq!(statuses.iter().filter(|s| *s == "shipped").count(), 3);
    assert_eq!(real["order_items"].len(), 12);
    let shipped = real["orders"]
        .iter()
        .find(|r| r["status"].as_deref() == Some("shipped"))
        .unwrap();
    assert_eq!(shipped["carrier"].as_deref(), Some("DHL"));
    assert_eq!(
        real["posts"]
            .iter()
            .filter(|r| r["deleted_at"].is_some())
            .count(),
        3
    );
    assert!(
        real["posts"]
            .iter()
            .all(|r| r["published_at"].as_deref() == Some("2025-01-11 09:00:00.000000"))
    );
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_and_a_full_replay_leave_every_table_identical() {
    let events = lifecycle(4);
    let (_, clean_writes) = clean_run_audited(&events).await;
    let db = TestDb::audited().await;
    let topics = Topics::new();
    produce_all(&topics, &events).await;
    // The same events delivered a second time.
    produce_all(&topics, &events[..20]).await;
    let host = RunningHost::start(settings(&db, &topics, &unique("g")), Mode::Wasm).await;
    wait_until(
        &db.pool,
        "SELECT CAST(COALESCE(SUM(next_offset), 0) AS SIGNED) FROM consumer_offsets",
        (events.len() + 20) as i64,
        Duration::from_secs(60),
    )
    .await;
    host.stop().await;
    let before = checksum(&db.pool).await;
    let processed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM processed_events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(processed, events.len() as i64, "each event recorded once");
    assert_eq!(
        db.repeats().await,
        clean_writes,
        "the redelivered events wrote no row again"
    );
    let writes = db.writes().await;

    // A new consumer group reads every topic again from offset 0.
    let group = unique("replay");
    let host = RunningHost::start(settings(&db, &topics, &group), Mode::Wasm).await;
    let sql = format!(
        "SELECT CAST(COALESCE(SUM(next_offset), 0) AS SIGNED) FROM consumer_offsets WHERE group_id = '{group}'"
    );
    wait_until(
        &db.pool,
        &sql,
        (events.len() + 20) as i64,
        Duration::from_secs(60),
    )
    .await;
    let metrics = host.shared.clone();
    host.stop().await;
    assert_eq!(metrics.metrics.applied_total(), 0);
    assert_eq!(
        metrics.metrics.duplicates_total(),
        (events.len() + 20) as u64
    );
    assert_eq!(checksum(&db.pool).await, before);
    let processed_after: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM processed_events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(processed_after, processed);
    assert_eq!(db.writes().await, writes, "the replay wrote no row");
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_event_arriving_late_changes_nothing() {
    let db = TestDb::new().await;
    let topics = Topics::new();
    let (u, p) = (object_id(), object_id());
    let newer_user = fixture("user.updated", &u, "2026-02-01T00:00:00Z");
    let older_user = fixture("user.created", &u, "2026-01-01T00:00:00Z");
    let newer_product = fixture("product.updated", &p, "2026-02-01T00:00:00Z");
    let older_product = fixture("product.created", &p, "2026-01-01T00:00:00Z");
    let deleted = fixture("product.deleted", &p, "2026-03-01T00:00:00Z");
    let stale_after_delete_guard = fixture("user.deleted", &u, "2025-12-01T00:00:00Z");
    produce_all(&topics, &[newer_user.clone(), newer_product.clone()]).await;
    let host = RunningHost::start(settings(&db, &topics, &unique("g")), Mode::Wasm).await;
    wait_processed(&db.pool, 2, Duration::from_secs(60)).await;
    let before = dump(&db.pool).await;
    produce_all(
        &topics,
        &[older_user, older_product, stale_after_delete_guard],
    )
    .await;
    wait_processed(&db.pool, 5, Duration::from_secs(60)).await;
    assert_eq!(
        dump(&db.pool).await,
        before,
        "older events do not overwrite newer rows"
    );
    assert_eq!(
        before["users"][0]["bio"].as_deref(),
        Some("Gärtnerin, 東京 → Berlin")
    );
    assert_eq!(before["users"][0]["deleted_at"], None);
    // The variants are those of the newer document: Default and Green.
    let keys: Vec<_> = before["product_variants"]
        .iter()
        .map(|r| r["variant_key"].clone().unwrap())
        .collect();
    assert_eq!(keys.len(), 2);
    assert!(keys.contains(&"Green".to_owned()) && keys.contains(&"Default".to_owned()));
    produce_all(&topics, &[deleted]).await;
    wait_processed(&db.pool, 6, Duration::from_secs(60)).await;
    host.stop().await;
    let after = dump(&db.pool).await;
    assert!(after["products"].is_empty());
    assert!(
        after["product_variants"].is_empty(),
        "a product delete removes its variants"
    );
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_product_update_that_drops_a_variant_leaves_no_orphan() {
    let db = TestDb::new().await;
    let topics = Topics::new();
    let p = object_id();
    let created = fixture("product.created", &p, "2026-01-01T00:00:00Z"); // Default + Blue
    let updated = fixture("product.updated", &p, "2026-01-02T00:00:00Z"); // Default + Green
    let restored = fixture("product.restored", &p, "2026-01-03T00:00:00Z"); // no variants
    produce_all(&topics, &[created]).await;
    let host = RunningHost::start(settings(&db, &topics, &unique("g")), Mode::Wasm).await;
    wait_processed(&db.pool, 1, Duration::from_secs(60)).await;
    let variants = |d: &Dump| {
        d["product_variants"]
            .iter()
            .map(|r| r["variant_key"].clone().unwrap())
            .collect::<Vec<_>>()
    };
    let d = dump(&db.pool).await;
    assert_eq!(variants(&d), vec!["Blue".to_owned(), "Default".to_owned()]);
    produce_all(&topics, &[updated]).await;
    wait_processed(&db.pool, 2, Duration::from_secs(60)).await;
    let mut v = variants(&dump(&db.pool).await);
    v.sort();
    assert_eq!(v, vec!["Default".to_owned(), "Green".to_owned()]);
    produce_all(&topics, &[restored]).await;
    wait_processed(&db.pool, 3, Duration::from_secs(60)).await;
    host.stop().await;
    let d = dump(&db.pool).await;
    assert!(variants(&d).is_empty());
    assert_eq!(d["products"].len(), 1);
    db.drop_db().await;
}

/// A migrated database, a one-connection pool on it with the sink's
/// session settings, and its schema.
async fn sink_db() -> (TestDb, sqlx::MySqlPool, projector_host::sink::Schema) {
    let db = TestDb::new().await;
    projector_host::sink::migrate_with_builtin_tables(&db.pool)
        .await
        .unwrap();
    let pool = projector_host::sink::connect_mysql(&db.url, 1)
        .await
        .unwrap();
    let schema = projector_host::sink::Schema::load(&pool).await.unwrap();
    (db, pool, schema)
}

/// The events of `envelopes`, projected natively and validated, as the sink
/// takes them.
fn applied(
    schema: &projector_host::sink::Schema,
    envelopes: &[serde_json::Value],
) -> Vec<projector_host::sink::Applied> {
    envelopes
        .iter()
        .enumerate()
        .map(|(offset, e)| {
            let raw: events::RawEnvelope =
                events::Envelope::from_slice(e.to_string().as_bytes()).unwrap();
            let domain = flatten::domain(raw.topic()).unwrap();
            let info = (domain.info)();
            let ops = projector_host::sandbox::envelope_view(&raw, |env| (domain.project)(env))
                .unwrap()
                .iter()
                .map(|op| projector_host::sink::validate(op, &info, schema).unwrap())
                .collect();
            projector_host::sink::Applied {
                event_id: raw.event_id.to_string(),
                event_type: raw.event_type.clone(),
                timestamp: raw.timestamp.naive_utc(),
                entity_id: raw.entity_id.clone(),
                topic: raw.topic().to_owned(),
                partition: 0,
                offset: offset as i64,
                component: "test".into(),
                ops,
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_write_audit_counts_a_batch_applied_twice() {
    use sqlx::Connection as _;
    let db = TestDb::audited().await;
    let pool = projector_host::sink::connect_mysql(&db.url, 1)
        .await
        .unwrap();
    let schema = projector_host::sink::Schema::load(&pool).await.unwrap();
    let events = applied(&schema, &lifecycle(3));
    let batch: Vec<&projector_host::sink::Applied> = events.iter().collect();
    let offsets = BTreeMap::from([(("t".to_owned(), 0), events.len() as i64)]);
    let mut conn = pool.acquire().await.unwrap();
    let mut commit = async |bypass: bool| {
        let mut tx = conn.begin().await.unwrap();
        if bypass {
            projector_host::sink::write_ops(&mut tx, &schema, &batch)
                .await
                .unwrap();
        } else {
            projector_host::sink::apply_batch(&mut tx, &schema, "g", &batch, &offsets)
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
    };
    commit(false).await;
    let once = db.writes().await;
    assert!(once > 0, "the audit saw no write");
    assert_eq!(db.repeats().await, 0, "one application repeats no write");
    let rows = dump(&db.pool).await;
    // Through the bookkeeping, the second application is a no-op.
    commit(false).await;
    assert_eq!(db.writes().await, once);
    // Bypassing it, the rows stay the same (every write is guarded), but the
    // audit sees the batch applied again.
    commit(true).await;
    assert_same(&dump(&db.pool).await, &rows);
    assert!(
        db.repeats().await > 0,
        "a batch applied twice went unseen: {} repeated writes",
        db.repeats().await
    );
    drop(conn);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_partly_applied_before_applies_exactly_the_rest() {
    // Exactly once across batches that overlap: the events of the later
    // entities are applied first, then the whole stream in one batch (its
    // bookkeeping statements are several: 256 rows, then fewer). The second
    // applies exactly the others, counts and names the skipped ones, and
    // the tables end as applying every event once.
    use sqlx::Connection as _;
    let (db, pool, schema) = sink_db().await;
    let (expected_db, expected_pool, _) = sink_db().await;
    let events = applied(&schema, &lifecycle(18));
    assert!(events.len() > 300, "{} events", events.len());
    // The entities whose every event lies past the first 260.
    let mut first_index: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, e) in events.iter().enumerate() {
        first_index.entry(e.entity_id.as_str()).or_insert(i);
    }
    let late: Vec<&projector_host::sink::Applied> = events
        .iter()
        .filter(|e| first_index[e.entity_id.as_str()] >= 260)
        .collect();
    assert!(!late.is_empty());
    let all: Vec<&projector_host::sink::Applied> = events.iter().collect();
    let offsets = BTreeMap::from([(("t".to_owned(), 0), events.len() as i64)]);
    let apply = async |pool: &sqlx::MySqlPool, batch: &[&projector_host::sink::Applied]| {
        let mut conn = pool.acquire().await.unwrap();
        let mut tx = conn.begin().await.unwrap();
        let outcome = projector_host::sink::apply_batch(&mut tx, &schema, "g", batch, &offsets)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        outcome
    };
    let first = apply(&pool, &late).await;
    assert_eq!((first.applied, first.duplicates), (late.len(), 0));
    let second = apply(&pool, &all).await;
    assert_eq!(
        (second.applied, second.duplicates),
        (events.len() - late.len(), late.len()),
        "the second batch applies exactly the events the first did not"
    );
    let late_ids: Vec<String> = late.iter().map(|e| e.event_id.clone()).collect();
    assert_eq!(second.skipped, late_ids);
    // And it leaves what applying every event once does.
    let once = apply(&expected_pool, &all).await;
    assert_eq!((once.applied, once.duplicates), (events.len(), 0));
    assert_same(&dump(&db.pool).await, &dump(&expected_db.pool).await);
    let recorded: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM processed_events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(recorded, events.len() as i64);
    drop((pool, expected_pool));
    db.drop_db().await;
    expected_db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_database_times_the_batch_out_and_the_batch_lands_once_it_answers() {
    let db = TestDb::new().await;
    let topics = Topics::new();
    let mut s = settings(&db, &topics, &unique("g"));
    s.mysql.statement_timeout = Duration::from_millis(500);
    let first = fixture("user.created", &object_id(), "2026-01-01T00:00:00Z");
    produce_all(&topics, std::slice::from_ref(&first)).await;
    let host = RunningHost::start(s, Mode::Wasm).await;
    wait_processed(&db.pool, 1, Duration::from_secs(60)).await;

    // Another session holds the positions table: every statement of a
    // batch waits on it (MariaDB's lock_wait_timeout is a day).
    let mut blocker = sqlx::pool::PoolConnection::detach(db.pool.acquire().await.unwrap());
    sqlx::query("LOCK TABLES consumer_offsets WRITE")
        .execute(&mut blocker)
        .await
        .unwrap();
    let rest: Vec<serde_json::Value> = (0..5)
        .map(|i| {
            fixture(
                "order.created",
                &object_id(),
                &format!("2026-01-02T00:00:0{i}Z"),
            )
        })
        .collect();
    produce_all(&topics, &rest).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while host.shared.metrics.transient_errors.get() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the blocked batch never timed out"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let recorded: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM processed_events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(recorded, 1, "nothing of the blocked batch is committed");

    sqlx::query("UNLOCK TABLES")
        .execute(&mut blocker)
        .await
        .unwrap();
    wait_processed(&db.pool, 6, Duration::from_secs(60)).await;
    host.stop().await;
    let all: Vec<serde_json::Value> = std::iter::once(first).chain(rest).collect();
    assert_same(&dump(&db.pool).await, &clean_run(&all).await);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ties_resolve_in_partition_order_batched_and_event_by_event() {
    let t = "2026-05-01T00:00:00Z";
    let (u, v) = (object_id(), object_id());
    // One timestamp: the delete comes first in the partition, then a full
    // document, so the user is alive (phase order would delete it).
    let deleted = fixture("user.deleted", &u, t);
    let mut revived = fixture("user.updated", &u, t);
    revived["data"]["profile"]["bio"] = json!("after the delete");
    // Two updates with one timestamp: the second wins.
    let mut first = fixture("user.updated", &v, t);
    first["data"]["profile"]["bio"] = json!("first");
    let mut second = fixture("user.updated", &v, t);
    second["data"]["profile"]["bio"] = json!("second");
    let good = [deleted, revived, first, second];
    let expected = clean_run(&good).await;
    let alive: Vec<_> = expected["users"]
        .iter()
        .map(|r| (r["bio"].clone(), r["deleted_at"].is_none()))
        .collect();
    assert!(
        alive.contains(&(Some("after the delete".into()), true))
            && alive.contains(&(Some("second".into()), true)),
        "the oracle applies ties in partition order: {alive:?}"
    );
    // A neighbour the database refuses sends the batch event by event.
    let mut refused = fixture("user.created", &object_id(), t);
    refused["data"]["profile"]["display_name"] = json!("x".repeat(300));
    for with_refused in [false, true] {
        let db = TestDb::new().await;
        let topics = Topics::new();
        let mut events = good.to_vec();
        if with_refused {
            events.insert(2, refused.clone());
        }
        produce_all(&topics, &events).await;
        let host = RunningHost::start(settings(&db, &topics, &unique("g")), Mode::Wasm).await;
        wait_processed(&db.pool, good.len() as i64, Duration::from_secs(60)).await;
        let shared = host.shared.clone();
        host.stop().await;
        assert_eq!(
            shared.metrics.dead_lettered_total(),
            u64::from(with_refused)
        );
        assert_same(&dump(&db.pool).await, &expected);
        db.drop_db().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_older_event_does_not_bring_a_deleted_row_back() {
    let db = TestDb::new().await;
    let topics = Topics::new();
    let (p, u) = (object_id(), object_id());
    let first = [
        fixture("product.created", &p, "2026-01-01T00:00:00Z"),
        fixture("product.deleted", &p, "2026-01-03T00:00:00Z"),
        fixture("user.created", &u, "2026-01-01T00:00:00Z"),
        fixture("user.deleted", &u, "2026-01-03T00:00:00Z"),
    ];
    // Older than the deletes, arriving after them (late, or redriven).
    let late = [
        fixture("product.updated", &p, "2026-01-02T00:00:00Z"),
        fixture("user.updated", &u, "2026-01-02T00:00:00Z"),
    ];
    produce_all(&topics, &first).await;
    let host = RunningHost::start(settings(&db, &topics, &unique("g")), Mode::Wasm).await;
    wait_processed(&db.pool, 4, Duration::from_secs(60)).await;
    produce_all(&topics, &late).await;
    wait_processed(&db.pool, 6, Duration::from_secs(60)).await;
    host.stop().await;
    let after = dump(&db.pool).await;
    assert!(
        after["products"].is_empty() && after["product_variants"].is_empty(),
        "the hard-deleted product stays deleted: {:?}",
        after["products"]
    );
    assert!(
        after["users"][0]["deleted_at"].is_some(),
        "the soft delete holds"
    );
    let all: Vec<serde_json::Value> = first.iter().chain(&late).cloned().collect();
    assert_same(&after, &clean_run(&all).await);
    db.drop_db().await;
}

/// Large batches of a shuffled stream (events of one entity out of time
/// order, several writes of one row in a batch) end as the independent
/// oracle's tables, which apply the same events one by one in the same
/// order. This is what the sink's shortcuts must preserve: multi-row
/// upserts, and updates and soft deletes as multi-row `UPDATE … JOIN`s in
/// rounds (a row written more than once in a batch, by every kind of op).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shuffled_large_batches_end_as_the_oracle_applying_one_by_one() {
    use rand::seq::SliceRandom as _;
    use rand::{SeedableRng as _, rngs::StdRng};
    use sqlx::Connection as _;

    let mut rng = StdRng::seed_from_u64(71);
    // The generator closes each order and deletes each user or post once:
    // each such event gets two rivals a few milliseconds apart (some older,
    // some tied), an order's rival sometimes closing it the other way
    // (another column list).
    let mut envelopes: Vec<serde_json::Value> = Vec::new();
    for g in projector_tools::generate::Generator::stream(71, 6_000) {
        let e: serde_json::Value = serde_json::from_slice(&g.payload).unwrap();
        let kind = e["event_type"].as_str().unwrap().to_owned();
        envelopes.push(e.clone());
        if ![
            "order.cancelled",
            "order.shipped",
            "user.deleted",
            "post.deleted",
        ]
        .contains(&kind.as_str())
        {
            continue;
        }
        for _ in 0..2 {
            let mut rival = e.clone();
            let at = chrono::DateTime::parse_from_rfc3339(e["timestamp"].as_str().unwrap())
                .unwrap()
                + chrono::Duration::milliseconds(rand::Rng::random_range(&mut rng, -3..=3));
            let at = at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string();
            rival["event_id"] = uuid::Uuid::new_v4().to_string().into();
            rival["timestamp"] = at.clone().into();
            if kind.starts_with("order.") && rand::Rng::random_bool(&mut rng, 0.5) {
                let number = e["data"]["order_number"].clone();
                if kind == "order.shipped" {
                    rival["event_type"] = "order.cancelled".into();
                    rival["data"] = json!({"order_number": number});
                } else {
                    rival["event_type"] = "order.shipped".into();
                    rival["data"] = json!({"order_number": number, "carrier": "UPS",
                        "tracking_number": format!("1Z{}", rand::Rng::random_range(&mut rng, 0..u32::MAX)),
                        "shipped_at": at});
                }
            } else if kind == "order.shipped" {
                rival["data"]["carrier"] = "GLS".into();
            }
            envelopes.push(rival);
        }
    }
    for window in envelopes.chunks_mut(400) {
        window.shuffle(&mut rng);
    }
    let payloads: Vec<Vec<u8>> = envelopes
        .iter()
        .map(|e| e.to_string().into_bytes())
        .collect();

    let oracle = TestDb::new().await;
    projector_host::sink::migrate_with_builtin_tables(&oracle.pool)
        .await
        .unwrap();
    projector_tools::oracle::apply_envelopes(&oracle.pool, payloads.iter().map(Vec::as_slice))
        .await
        .unwrap();

    let (db, pool, schema) = sink_db().await;
    let events = applied(&schema, &envelopes);
    let mut conn = pool.acquire().await.unwrap();
    let mut rewritten = BTreeMap::new();
    for (i, batch) in events.chunks(2_000).enumerate() {
        // (The offsets are only recorded; the batches are what matters.)
        let batch: Vec<&projector_host::sink::Applied> = batch.iter().collect();
        // Rows that one kind of op writes more than once in this batch.
        let mut writes = std::collections::HashMap::new();
        for e in &batch {
            for op in &e.ops {
                use projector_host::sink::ValidOp::*;
                let row = match op {
                    Upsert { table, key, .. } => ("upsert", table, format!("{key:?}")),
                    Update { table, key, .. } => ("update", table, format!("{key:?}")),
                    SoftDelete { table, key } => ("soft delete", table, format!("{key:?}")),
                    Delete { table, key } => ("delete", table, format!("{key:?}")),
                    Replace { table, parent, .. } => ("replace", table, format!("{parent:?}")),
                };
                *writes.entry(row).or_insert(0) += 1;
            }
        }
        for ((kind, _, _), n) in writes {
            if n > 1 {
                *rewritten.entry(kind).or_insert(0) += 1;
            }
        }
        let offsets = BTreeMap::from([(("t".to_owned(), 0), ((i + 1) * 2_000) as i64)]);
        let mut tx = conn.begin().await.unwrap();
        projector_host::sink::apply_batch(&mut tx, &schema, "g", &batch, &offsets)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    }
    drop(conn);
    assert_same(&dump(&db.pool).await, &dump(&oracle.pool).await);
    eprintln!("rows written more than once in a batch, by kind: {rewritten:?}");
    for kind in ["upsert", "update", "soft delete"] {
        assert!(
            rewritten.get(kind).is_some_and(|n| *n > 0),
            "the stream has no row with two {kind}s in one batch"
        );
    }
    db.drop_db().await;
    oracle.drop_db().await;
}

/// Multi-row statements come in few texts, so the connection's statement
/// cache serves them: batches of every size from 1 to 45 events (each size
/// once) prepare a statement text only the first time its table, kind and
/// row count (a power of two) come up. Counted by MariaDB itself
/// (`Com_stmt_prepare` of the session). With row counts that follow the
/// batches, nearly every multi-row statement of a batch was a new text and
/// was prepared again: a round trip, and a definition of every placeholder
/// sent back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_of_every_size_reuse_prepared_statements() {
    use sqlx::Connection as _;
    let (db, pool, schema) = sink_db().await;
    let events = applied(&schema, &lifecycle(60));
    let mut conn = pool.acquire().await.unwrap();
    async fn status(conn: &mut sqlx::MySqlConnection, name: &str) -> u64 {
        // A text-protocol query, so reading the counters prepares nothing.
        use sqlx::Row as _;
        let row = sqlx::raw_sql(&format!("SHOW SESSION STATUS LIKE '{name}'"))
            .fetch_one(conn)
            .await
            .unwrap();
        row.get::<String, _>(1).parse().unwrap()
    }
    let (prepared, executed) = (
        status(&mut conn, "Com_stmt_prepare").await,
        status(&mut conn, "Com_stmt_execute").await,
    );
    let (mut start, mut batches) = (0, 0);
    for size in 1.. {
        if start >= events.len() {
            break;
        }
        let end = (start + size).min(events.len());
        let batch: Vec<&projector_host::sink::Applied> = events[start..end].iter().collect();
        let offsets = BTreeMap::from([(("t".to_owned(), 0), end as i64)]);
        let mut tx = conn.begin().await.unwrap();
        projector_host::sink::apply_batch(&mut tx, &schema, "g", &batch, &offsets)
            .await
            .unwrap();
        tx.commit().await.unwrap();
        (start, batches) = (end, batches + 1);
    }
    let prepared = status(&mut conn, "Com_stmt_prepare").await - prepared;
    let executed = status(&mut conn, "Com_stmt_execute").await - executed;
    eprintln!("{batches} batches: {executed} statements executed, {prepared} prepared");
    assert!(
        prepared * 10 < executed,
        "{prepared} of {executed} statements were prepared anew over {batches} batches"
    );
    drop(conn);
    db.drop_db().await;
}
