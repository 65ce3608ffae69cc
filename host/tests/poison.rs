//! Bad input never stops a partition: poison messages and misbehaving
//! components are dead-lettered with their reason while the good events
//! around them land.

mod common;

use std::time::Duration;

use common::*;
use projector_host::pipeline::Mode;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_dead_lettered_and_the_good_ones_around_them_land() {
    let db = TestDb::new().await;
    let topics = Topics::new();
    let producer = producer();
    let user_topic = topics.of("user.created");
    let (a, b, c) = (object_id(), object_id(), object_id());
    let good_a = fixture("user.created", &a, "2026-01-01T00:00:00Z");
    let mut wrong_type = fixture("user.created", &b, "2026-01-01T00:00:00Z");
    wrong_type["data"]["contact_info"]["primary_email"] = json!(42);
    let mut too_long = fixture("user.updated", &a, "2026-01-02T00:00:00Z");
    too_long["data"]["profile"]["display_name"] = json!("x".repeat(300));
    let mut unknown = fixture("user.created", &c, "2026-01-01T00:00:00Z");
    unknown["event_type"] = json!("user.teleported");
    let mut no_entity = fixture("user.created", &c, "2026-01-01T00:00:00Z");
    no_entity.as_object_mut().unwrap().remove("entity_id");
    let good_c = fixture("user.created", &c, "2026-01-03T00:00:00Z");
    // A producer that added envelope fields: ignored, the event lands.
    let d = object_id();
    let mut extra_fields = fixture("user.created", &d, "2026-01-04T00:00:00Z");
    extra_fields["trace_id"] = json!("4bf92f3577b34da6a3ce929d0e0e4736");
    extra_fields["schema_version"] = json!({"major": 2});
    let poison: Vec<(&str, Vec<u8>)> = vec![
        (a.as_str(), good_a.to_string().into_bytes()),
        (a.as_str(), b"{not json".to_vec()),
        (b.as_str(), wrong_type.to_string().into_bytes()),
        (a.as_str(), too_long.to_string().into_bytes()),
        (c.as_str(), unknown.to_string().into_bytes()),
        (c.as_str(), no_entity.to_string().into_bytes()),
        (c.as_str(), good_c.to_string().into_bytes()),
        (d.as_str(), extra_fields.to_string().into_bytes()),
    ];
    // All on one partition (same key) so the bad ones sit between good ones.
    for (_, payload) in &poison {
        produce(&producer, &user_topic, &a, payload).await;
    }
    let host = RunningHost::start(settings(&db, &topics, &unique("g")), Mode::Wasm).await;
    wait_processed(&db.pool, 3, Duration::from_secs(60)).await;
    let mut letters = read_topic(&format!("dlq.{user_topic}"), 5, Duration::from_secs(60)).await;
    letters.sort_by_key(|(v, _)| v["offset"].as_i64());
    let shared = host.shared.clone();
    host.stop().await;

    // Whole tables: the three good events as the oracle applies them (the
    // refused update of `a` left its row alone).
    assert_same(
        &dump(&db.pool).await,
        &clean_run(&[good_a.clone(), good_c.clone(), extra_fields.clone()]).await,
    );
    let classes: Vec<&str> = letters
        .iter()
        .map(|(v, _)| v["error_class"].as_str().unwrap())
        .collect();
    assert_eq!(
        classes,
        [
            "invalid_envelope",
            "invalid_event",
            // Longer than the column: refused before any SQL, not by MySQL.
            "invalid_op",
            "unknown_event_type",
            "invalid_envelope"
        ]
    );
    let (wrong, headers) = &letters[1];
    assert_eq!(
        wrong["error"],
        "invalid event: data.contact_info.primary_email: expected a string, found number"
    );
    assert_eq!(wrong["topic"], user_topic.as_str());
    assert_eq!(wrong["offset"], 2);
    assert_eq!(wrong["key"], a.as_str());
    assert_eq!(wrong["component"]["name"], "user");
    assert_eq!(wrong["component"]["digest"].as_str().unwrap().len(), 64);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(wrong["original"].as_str().unwrap()).unwrap(),
        wrong_type
    );
    assert!(wrong["failed_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(headers["x-error-class"], "invalid_event");
    assert_eq!(headers["x-source-offset"], "2");
    assert_eq!(
        letters[2].0["error"],
        "column users.display_name: 300 characters, longer than varchar(255)"
    );
    assert!(
        letters[0].0["error"]
            .as_str()
            .unwrap()
            .contains("not a JSON envelope")
    );
    assert!(
        letters[4].0["error"]
            .as_str()
            .unwrap()
            .contains("entity_id")
    );
    assert_eq!(shared.metrics.dead_lettered_total(), 5);
    assert_eq!(shared.metrics.envelope_unknown_fields.get(), 1);
    // The partition kept flowing: its stored position is past every message.
    let next: i64 =
        sqlx::query_scalar("SELECT CAST(SUM(next_offset) AS SIGNED) FROM consumer_offsets")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(next, 8);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn looping_hoarding_and_trespassing_components_are_contained() {
    let db = TestDb::new().await;
    let topics = Topics::new();
    // The chaos component stands in for the user projection.
    let dir = tempdir();
    for d in ["supplier", "product", "order", "post"] {
        std::fs::copy(
            components_dir().join(format!("{d}.wasm")),
            dir.join(format!("{d}.wasm")),
        )
        .unwrap();
    }
    std::fs::copy(
        components_dir().join("../test-projections/chaos.wasm"),
        dir.join("user.wasm"),
    )
    .unwrap();
    let mut s = settings(&db, &topics, &unique("g"));
    s.components.dir = dir.clone();
    s.sandbox.call_deadline = Duration::from_millis(100);
    s.sandbox.memory_mb = 32;

    let producer = producer();
    let topic = topics.of("user.created");
    let key = object_id();
    let mut sent = Vec::new();
    for (i, chaos) in [
        "none",
        "loop",
        "alloc",
        "undeclared",
        "undeclared_column",
        "panic",
        "sleep",
        "clock",
        "recurse",
        "flood",
        "entropy",
        "wrong_type",
        "too_long",
        "remember",
        "remember",
        "none",
    ]
    .iter()
    .enumerate()
    {
        let mut e = fixture(
            "user.created",
            &object_id(),
            &format!("2026-01-01T00:00:{i:02}Z"),
        );
        e["data"]["chaos"] = json!(chaos);
        produce(&producer, &topic, &key, e.to_string().as_bytes()).await;
        sent.push(e);
    }
    // Another domain's events, beside the misbehaving one.
    let suppliers = topics.of("supplier.created");
    for i in 0..3 {
        let mut e = fixture(
            "supplier.created",
            &object_id(),
            &format!("2026-01-01T00:01:{i:02}Z"),
        );
        e["data"]["id"] = e["entity_id"].clone();
        let key = e["entity_id"].as_str().unwrap().to_owned();
        produce(&producer, &suppliers, &key, e.to_string().as_bytes()).await;
    }
    let host = RunningHost::start(s, Mode::Wasm).await;
    wait_processed(&db.pool, 7, Duration::from_secs(60)).await;
    let mut letters = read_topic(&format!("dlq.{topic}"), 12, Duration::from_secs(60)).await;
    letters.sort_by_key(|(v, _)| v["offset"].as_i64());
    host.stop().await;

    let classes: Vec<(&str, &str)> = letters
        .iter()
        .map(|(v, _)| {
            (
                v["error_class"].as_str().unwrap(),
                v["error"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        classes[0],
        (
            "guest_trap",
            "component trapped: deadline exceeded (epoch interruption)"
        )
    );
    assert_eq!(
        classes[1],
        ("guest_trap", "component trapped: memory limit exceeded")
    );
    assert_eq!(classes[2].0, "disallowed_op");
    assert!(classes[2].1.contains("orders"), "{}", classes[2].1);
    assert_eq!(classes[3].0, "disallowed_op");
    assert!(classes[3].1.contains("password_hash"), "{}", classes[3].1);
    // Panic, sleep, clock and recursion: traps, not hangs or answers.
    for (class, _) in &classes[4..8] {
        assert_eq!(*class, "guest_trap");
    }
    assert_eq!(classes[8].0, "guest_output_too_large");
    assert_eq!(classes[9].0, "guest_trap");
    assert!(classes[9].1.contains("exceeds limit"), "{}", classes[9].1);
    // Values that do not fit their column, refused before any SQL and named.
    assert_eq!(
        classes[10],
        (
            "invalid_op",
            "column users.display_name: an integer does not fit varchar(255)"
        )
    );
    assert_eq!(
        classes[11],
        (
            "invalid_op",
            "column users.display_name: 300 characters, longer than varchar(255)"
        )
    );
    assert!(
        letters
            .iter()
            .all(|(v, _)| v["component"]["version"] == "1.0.0-chaos")
    );
    let d = dump(&db.pool).await;
    assert_eq!(
        d["users"].len(),
        4,
        "the good events before and after landed"
    );
    // Two events in one batch, and neither saw the other's instance.
    let unremembering = d["users"]
        .iter()
        .filter(|u| u["display_name"].as_deref() == Some("nothing before"))
        .count();
    assert_eq!(unremembering, 2);
    assert_eq!(d["suppliers"].len(), 3, "the supplier domain kept flowing");
    assert!(
        d["orders"].is_empty(),
        "nothing reached a table the component did not declare"
    );
    db.drop_db().await;
    let _ = std::fs::remove_dir_all(dir);
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(unique("projector-components"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_of_originals_near_the_message_limit_are_produced_and_the_partition_flows() {
    let db = TestDb::new().await;
    let topics = Topics::new();
    let user_topic = topics.of("user.created");
    let a = object_id();
    let good = fixture("user.created", &a, "2026-01-01T00:00:00Z");
    // Near the broker's default limit (1,048,588): as hex, or with every
    // byte escaped as \u0001, each would be several times over it.
    let binary = vec![0xff_u8; 1_000_000];
    let controls = vec![0x01_u8; 1_000_000];
    let big = big_producer();
    for payload in [&binary, &controls, &good.to_string().into_bytes()] {
        produce(&big, &user_topic, &a, payload).await;
    }
    let mut s = settings(&db, &topics, &unique("g"));
    s.batch.max_event_bytes = 2 << 20; // read, not refused unread as too large
    let host = RunningHost::start(s, Mode::Wasm).await;
    let mut letters = read_topic(&format!("dlq.{user_topic}"), 2, Duration::from_secs(60)).await;
    wait_processed(&db.pool, 1, Duration::from_secs(60)).await;
    host.stop().await;
    letters.sort_by_key(|(v, _)| v["offset"].as_i64());
    let expected = [("hex", "ff"), ("utf8", "\u{1}")];
    for ((letter, headers), (encoding, unit)) in letters.iter().zip(expected) {
        assert_eq!(letter["error_class"], "invalid_envelope");
        assert_eq!(headers["x-error-class"], "invalid_envelope");
        assert_eq!(letter["original_encoding"], encoding);
        assert_eq!(letter["original_truncated"], true);
        assert_eq!(letter["original_size"], 1_000_000);
        let original = letter["original"].as_str().unwrap();
        assert!(
            original.len() > 100_000 && original == unit.repeat(original.len() / unit.len()),
            "{encoding}: {} bytes kept",
            original.len()
        );
        assert!(letter.to_string().len() < 1_000_000);
    }
    assert_same(&dump(&db.pool).await, &clean_run(&[good]).await);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unclassified_errors_are_retried_then_dead_lettered_and_missing_defaults_refused() {
    let db = TestDb::new().await;
    projector_host::sink::migrate_with_builtin_tables(&db.pool)
        .await
        .unwrap();
    // An error no list knows (a trigger's SIGNAL, 1644) for one user, and a
    // column the projection does not fill that has no default (1364).
    sqlx::raw_sql(
        "CREATE TRIGGER refuse_boom BEFORE INSERT ON users FOR EACH ROW \
         IF NEW.display_name = 'boom' THEN \
         SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'boom is refused by a trigger'; \
         END IF",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query("ALTER TABLE orders ADD COLUMN audit_ref VARCHAR(10) NOT NULL")
        .execute(&db.pool)
        .await
        .unwrap();
    let topics = Topics::new();
    let producer = producer();
    let (a, b, c) = (object_id(), object_id(), object_id());
    let good_a = fixture("user.created", &a, "2026-01-01T00:00:00Z");
    let mut boom = fixture("user.created", &b, "2026-01-01T00:00:00Z");
    boom["data"]["profile"]["display_name"] = json!("boom");
    let good_c = fixture("user.created", &c, "2026-01-02T00:00:00Z");
    let order = fixture("order.created", &object_id(), "2026-01-01T00:00:00Z");
    let user_topic = topics.of("user.created");
    for e in [&good_a, &boom, &good_c] {
        produce(&producer, &user_topic, &a, e.to_string().as_bytes()).await;
    }
    let order_topic = topics.of("order.created");
    produce(&producer, &order_topic, "o", order.to_string().as_bytes()).await;

    let host = RunningHost::start(settings(&db, &topics, &unique("g")), Mode::Wasm).await;
    let users = read_topic(&format!("dlq.{user_topic}"), 1, Duration::from_secs(60)).await;
    let orders = read_topic(&format!("dlq.{order_topic}"), 1, Duration::from_secs(60)).await;
    wait_processed(&db.pool, 2, Duration::from_secs(60)).await;
    let shared = host.shared.clone();
    host.stop().await;

    let (letter, _) = &users[0];
    assert_eq!(letter["error_class"], "unclassified");
    assert!(
        letter["error"]
            .as_str()
            .unwrap()
            .contains("boom is refused"),
        "{letter}"
    );
    assert_eq!(letter["offset"], 1);
    let (letter, _) = &orders[0];
    assert_eq!(letter["error_class"], "rejected_by_database");
    assert!(
        letter["error"].as_str().unwrap().contains("audit_ref"),
        "{letter}"
    );
    // Retried before giving up, then the partition flowed on.
    assert!(shared.metrics.transient_errors.get() >= 4);
    assert_same(&dump(&db.pool).await, &clean_run(&[good_a, good_c]).await);
    db.drop_db().await;
}

/// A write the database refuses is refused, and its event dead-lettered,
/// even when a newer write of the same row follows in the same batch: the
/// sink runs every write (it never folds one into the next), for upserts
/// (a user) and updates (an order) alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_write_is_dead_lettered_though_a_newer_write_of_its_row_follows_it() {
    let db = TestDb::new().await;
    projector_host::sink::migrate_with_builtin_tables(&db.pool)
        .await
        .unwrap();
    // A write of the value 'refused' inserts a row without its required
    // column: MySQL error 1364, which the database refuses for good.
    sqlx::query(
        "CREATE TABLE refusals (id INT AUTO_INCREMENT PRIMARY KEY, required_ref VARCHAR(10) NOT NULL)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    for (name, timing, table, column) in [
        ("refuse_user_insert", "INSERT", "users", "display_name"),
        ("refuse_user_update", "UPDATE", "users", "display_name"),
        ("refuse_order_update", "UPDATE", "orders", "carrier"),
    ] {
        sqlx::raw_sql(&format!(
            "CREATE TRIGGER {name} BEFORE {timing} ON {table} FOR EACH ROW \
             IF NEW.{column} = 'refused' THEN INSERT INTO refusals (id) VALUES (NULL); END IF"
        ))
        .execute(&db.pool)
        .await
        .unwrap();
    }
    let (u, o) = (object_id(), object_id());
    let user_created = fixture("user.created", &u, "2026-01-01T00:00:00Z");
    let mut user_refused = fixture("user.updated", &u, "2026-01-01T00:01:00Z");
    user_refused["data"]["profile"]["display_name"] = json!("refused");
    let user_newer = fixture("user.updated", &u, "2026-01-01T00:02:00Z");
    let order_created = fixture("order.created", &o, "2026-01-01T00:00:00Z");
    let mut order_refused = fixture("order.shipped", &o, "2026-01-01T00:01:00Z");
    order_refused["data"]["carrier"] = json!("refused");
    let mut order_newer = fixture("order.shipped", &o, "2026-01-01T00:02:00Z");
    order_newer["data"]["carrier"] = json!("UPS");

    // Produced before the host starts: each domain's three events are one
    // batch.
    let topics = Topics::new();
    let producer = producer();
    let user_topic = topics.of("user.created");
    for e in [&user_created, &user_refused, &user_newer] {
        produce(&producer, &user_topic, &u, e.to_string().as_bytes()).await;
    }
    let order_topic = topics.of("order.created");
    for e in [&order_created, &order_refused, &order_newer] {
        produce(&producer, &order_topic, &o, e.to_string().as_bytes()).await;
    }
    let host = RunningHost::start(settings(&db, &topics, &unique("g")), Mode::Wasm).await;
    let users = read_topic(&format!("dlq.{user_topic}"), 1, Duration::from_secs(60)).await;
    let orders = read_topic(&format!("dlq.{order_topic}"), 1, Duration::from_secs(60)).await;
    wait_processed(&db.pool, 4, Duration::from_secs(60)).await;
    host.stop().await;

    for ((letter, _), refused) in [(&users[0], &user_refused), (&orders[0], &order_refused)] {
        assert_eq!(letter["error_class"], "rejected_by_database", "{letter}");
        let original: serde_json::Value =
            serde_json::from_str(letter["original"].as_str().unwrap()).unwrap();
        assert_eq!(original["event_id"], refused["event_id"], "{letter}");
    }
    assert_same(
        &dump(&db.pool).await,
        &clean_run(&[user_created, user_newer, order_created, order_newer]).await,
    );
    db.drop_db().await;
}
