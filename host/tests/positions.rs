//! Positions belong to MySQL: a database without them starts by the
//! explicit policy, never where Kafka's committed offset (perhaps another
//! database's) points; offsets the log lost before the database applied
//! them are reported, not passed over in silence.

mod common;

use std::time::Duration;

use common::*;
use projector_host::pipeline::Mode;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_database_under_an_old_group_gets_the_whole_history() {
    let topics = Topics::new();
    let group = unique("g");
    let all = events(6);
    produce_all(&topics, &all).await;
    let first = TestDb::new().await;
    let host = RunningHost::start(settings(&first, &topics, &group), Mode::Wasm).await;
    wait_processed(&first.pool, all.len() as i64, Duration::from_secs(60)).await;
    // Stopping commits the group's offsets to Kafka: at the end of the log.
    host.stop().await;
    first.drop_db().await;

    let second = TestDb::new().await;
    let host = RunningHost::start(settings(&second, &topics, &group), Mode::Wasm).await;
    wait_processed(&second.pool, all.len() as i64, Duration::from_secs(60)).await;
    host.stop().await;
    assert_same(&dump(&second.pool).await, &clean_run(&all).await);
    second.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_deleted_before_they_were_applied_are_reported_as_a_gap() {
    let db = TestDb::new().await;
    let topics = Topics::new();
    let group = unique("g");
    let u = object_id();
    let event = |i: u32| {
        let mut e = fixture(
            if i == 0 {
                "user.created"
            } else {
                "user.updated"
            },
            &u,
            &format!("2026-01-01T00:00:0{i}Z"),
        );
        e["data"]["profile"]["bio"] = json!(format!("version {i}"));
        e
    };
    let all: Vec<serde_json::Value> = (0..6).map(event).collect();
    produce_all(&topics, &all[..3]).await;
    let host = RunningHost::start(settings(&db, &topics, &group), Mode::Wasm).await;
    wait_processed(&db.pool, 3, Duration::from_secs(60)).await;
    host.stop().await;

    // While no host runs, three more arrive and retention deletes the
    // first two of them (offsets 3 and 4) unread.
    produce_all(&topics, &all[3..]).await;
    let topic = topics.of("user.created");
    let partition = delete_records_below(&db.pool, &topic, 5).await;

    let host = RunningHost::start(settings(&db, &topics, &group), Mode::Wasm).await;
    wait_processed(&db.pool, 4, Duration::from_secs(60)).await;
    let url = host.admin_url().await;
    let observed = host.shared.observed();
    assert_eq!((observed.log_gaps, observed.log_gap_offsets), (1, 2));
    let (_, ready) = http_get(&format!("{url}/health/ready")).await;
    let ready: serde_json::Value = serde_json::from_str(&ready).unwrap();
    assert_eq!(
        ready["checks"]["positions"],
        json!({"log_gaps": 1, "log_gap_offsets": 2})
    );
    let (_, page) = http_get(&format!("{url}/")).await;
    assert!(
        page.contains("LOG GAPS") && page.contains("offsets 3..5 (2)"),
        "{page}"
    );
    let (_, metrics) = http_get(&format!("{url}/metrics")).await;
    let m = parse_prometheus(&metrics);
    assert_eq!(
        m[&format!(
            "projector_log_gap_offsets_total{{partition=\"{partition}\",topic=\"{topic}\"}}"
        )],
        2.0
    );
    host.stop().await;
    let kept = [&all[..3], &all[5..]].concat();
    assert_same(&dump(&db.pool).await, &clean_run(&kept).await);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_refuses_a_topic_whose_start_was_deleted_and_prune_forgets_what_cannot_return() {
    let db = TestDb::new().await;
    let topics = Topics::new();
    let group = unique("g");
    let u = object_id();
    let all: Vec<serde_json::Value> = (0..4)
        .map(|i| {
            fixture(
                if i == 0 {
                    "user.created"
                } else {
                    "user.updated"
                },
                &u,
                &format!("2026-01-01T00:00:0{i}Z"),
            )
        })
        .collect();
    produce_all(&topics, &all).await;
    let host = RunningHost::start(settings(&db, &topics, &group), Mode::Wasm).await;
    wait_processed(&db.pool, 4, Duration::from_secs(60)).await;
    host.stop().await;
    let before = dump(&db.pool).await;

    // Retention deletes the first two messages of the partition.
    let topic = topics.of("user.created");
    let partition = delete_records_below(&db.pool, &topic, 2).await;

    let run = |args: &[&str]| projector(&db.url, &topics, &group, &components_dir(), args);
    let (ok, out) = run(&["replay", "--domain", "user", "--no-wait"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("refusing to replay user")
            && out.contains(&format!("{topic}[{partition}] starts at offset 2")),
        "{out}"
    );
    assert_eq!(dump(&db.pool).await, before, "nothing was emptied");

    // The two deleted messages can never come back: their rows go.
    let (ok, out) = run(&["prune"]);
    assert!(ok && out.contains("pruned 2 processed events"), "{out}");
    let offsets: Vec<i64> =
        sqlx::query_scalar("SELECT `offset` FROM processed_events ORDER BY `offset`")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(offsets, [2, 3]);

    let (ok, out) = run(&["replay", "--domain", "user", "--no-wait", "--force"]);
    assert!(ok && out.contains("emptied users"), "{out}");
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_host_prunes_on_its_schedule() {
    let db = TestDb::new().await;
    let topics = Topics::new();
    let u = object_id();
    // One key for all: the user and supplier events share a partition
    // number, which `delete_records_below` reads back.
    let mut all: Vec<serde_json::Value> = (0..4)
        .map(|i| {
            let t = if i == 0 {
                "user.created"
            } else {
                "user.updated"
            };
            fixture(t, &u, &format!("2026-01-01T00:00:0{i}Z"))
        })
        .collect();
    all.push(fixture("supplier.created", &u, "2026-01-01T00:00:00Z"));
    all.push(fixture("supplier.deleted", &u, "2026-01-01T00:00:01Z"));
    produce_all(&topics, &all).await;
    let mut s = settings(&db, &topics, &unique("g"));
    s.prune.every = Duration::from_millis(300);
    s.prune.tombstone_days = 0;
    let host = RunningHost::start(s, Mode::Wasm).await;
    wait_processed(&db.pool, all.len() as i64, Duration::from_secs(60)).await;
    let topic = topics.of("user.created");
    delete_records_below(&db.pool, &topic, 2).await;

    // Without anyone running `projector prune`: the rows of the two deleted
    // messages go, and the tombstone of the supplier (older than 0 days).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let (offsets, tombstones) = loop {
        let offsets: Vec<i64> = sqlx::query_scalar(
            "SELECT `offset` FROM processed_events WHERE topic = ? ORDER BY `offset`",
        )
        .bind(&topic)
        .fetch_all(&db.pool)
        .await
        .unwrap();
        let tombstones: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tombstones")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        if (offsets == [2, 3] && tombstones == 0) || std::time::Instant::now() > deadline {
            break (offsets, tombstones);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    host.stop().await;
    assert_eq!(
        offsets,
        [2, 3],
        "processed events below the low watermark pruned"
    );
    assert_eq!(tombstones, 0, "tombstones past their retention pruned");
    let suppliers: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM suppliers")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(suppliers, 0, "the delete itself stands");
    db.drop_db().await;
}

/// The fence of a batch locks its own partitions' positions only: a batch
/// of another partition of the same topic (another host of the group owns
/// it) goes ahead, one of the same partition waits. The lock of the whole
/// topic's positions made the hosts of one group take turns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fence_locks_its_own_partitions_only() {
    use sqlx::Connection as _;
    use std::collections::BTreeMap;

    let db = TestDb::new().await;
    projector_host::sink::migrate(&db.pool).await.unwrap();
    for partition in 0..3 {
        sqlx::query(
            "INSERT INTO consumer_offsets (group_id, topic, `partition`, next_offset) VALUES ('g', 't', ?, 10)",
        )
        .bind(partition)
        .execute(&db.pool)
        .await
        .unwrap();
    }
    let pool = projector_host::sink::connect_mysql(&db.url, 3)
        .await
        .unwrap();
    let expect = |partition: i32| BTreeMap::from([(("t".to_owned(), partition), Some(10))]);
    let mut holder = pool.acquire().await.unwrap();
    let mut held = holder.begin().await.unwrap();
    projector_host::sink::fence(&mut held, "g", &expect(0))
        .await
        .unwrap();

    // Another batch, waiting at most a second for a lock.
    let other = |partition: i32| {
        let pool = pool.clone();
        async move {
            let mut conn = pool.acquire().await.unwrap();
            sqlx::query("SET SESSION innodb_lock_wait_timeout = 1")
                .execute(&mut *conn)
                .await
                .unwrap();
            let mut tx = conn.begin().await.unwrap();
            let fenced = projector_host::sink::fence(&mut tx, "g", &expect(partition)).await;
            tx.rollback().await.unwrap();
            fenced
        }
    };
    other(1)
        .await
        .expect("another partition of the topic is not locked");
    let waited = other(0).await;
    assert!(
        matches!(waited, Err(projector_host::sink::ExecError::Transient(_))),
        "the same partition waits for the lock: {:?}",
        waited.map(|()| "fenced")
    );
    held.rollback().await.unwrap();
    other(0).await.expect("the lock is released with the batch");
    drop(holder);
    db.drop_db().await;
}
