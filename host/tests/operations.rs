//! Operating the host against the real stack: health and Prometheus metrics
//! (lag checked against Kafka's own consumer-groups tool), hot reload under
//! load, replay of a domain after a rule change, and the dead-letter CLI.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use projector_host::pipeline::Mode;
use serde_json::json;
use sha2::Digest as _;
use sqlx::Row as _;

async fn wait_ready(url: &str) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (code, body) = http_get(&format!("{url}/health/ready")).await;
        if code == 200 {
            return serde_json::from_str(&body).unwrap();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never ready: {code} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn metrics(url: &str) -> BTreeMap<String, f64> {
    let (code, text) = http_get(&format!("{url}/metrics")).await;
    assert_eq!(code, 200);
    parse_prometheus(&text)
}

/// `POST /projections/reload` with the admin token: the status and the report.
async fn reload(url: &str) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .post(format!("{url}/projections/reload"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

fn sum(m: &BTreeMap<String, f64>, prefix: &str, contains: &str) -> f64 {
    m.iter()
        .filter(|(k, _)| k.starts_with(prefix) && k.contains(contains))
        .map(|(_, v)| v)
        .sum()
}

/// `(topic, partition) -> (log end offset, lag)` from
/// `kafka-consumer-groups --describe`; partitions without a committed
/// offset are left out (the tool prints `-`).
fn tool_lag(group: &str, prefix: &str) -> BTreeMap<(String, i32), (i64, i64)> {
    let out = stack(&["consumer-groups", "--describe", "--group", group]);
    let mut rows = BTreeMap::new();
    for line in out.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 6
            && f[0] == group
            && f[1].starts_with(prefix)
            && let (Ok(p), Ok(end), Ok(lag)) = (f[2].parse(), f[4].parse(), f[5].parse())
        {
            rows.insert((f[1].to_owned(), p), (end, lag));
        }
    }
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_metrics_and_status_page_report_what_the_broker_sees() {
    let db = TestDb::new().await;
    let topics = Topics::new();
    let group = unique("g");
    let first = events(12);
    produce_all(&topics, &first).await;
    let host = RunningHost::start(settings(&db, &topics, &group), Mode::Wasm).await;
    wait_processed(&db.pool, first.len() as i64, Duration::from_secs(60)).await;
    let url = host.admin_url().await;

    let (code, body) = http_get(&format!("{url}/health/live")).await;
    assert_eq!((code, body.contains("live")), (200, true));
    let ready = wait_ready(&url).await;
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["checks"]["mysql"]["ok"], true);
    assert_eq!(ready["checks"]["kafka"]["ok"], true);
    assert_eq!(ready["checks"]["components"].as_array().unwrap().len(), 5);

    // Once the monitor sampled after the last commit, every partition is at
    // lag 0 and OK.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let m = loop {
        let m = metrics(&url).await;
        let lagging = sum(&m, "projector_partition_lag{", &topics.prefix);
        let seen = m
            .keys()
            .filter(|k| k.starts_with("projector_partition_lag{"))
            .count();
        if lagging == 0.0 && seen >= 8 {
            break m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "lag never reached 0"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let user_created = first
        .iter()
        .filter(|e| e["event_type"] == "user.created")
        .count() as f64;
    assert_eq!(
        m[r#"projector_events_total{event_type="user.created",outcome="applied"}"#],
        user_created
    );
    assert_eq!(
        sum(&m, "projector_events_total{", "outcome=\"applied\""),
        first.len() as f64
    );
    assert_eq!(
        m["projector_end_to_end_latency_seconds_count"],
        first.len() as f64
    );
    assert!(m[r#"projector_guest_call_duration_seconds_count{domain="order"}"#] >= 24.0);
    assert!(m["projector_batch_events_count"] >= 1.0);
    assert_eq!(m["projector_ready"], 1.0);
    assert_eq!(m["projector_lag_status"], 0.0);
    assert_eq!(
        sum(&m, "projector_component_info{", "version=\"1.1.0\""),
        5.0
    );
    assert_eq!(sum(&m, "projector_dead_letters_total", ""), 0.0);
    // Series a rate or increase() alert needs exist from the start, at 0.
    for key in [
        format!(
            r#"projector_dead_letters_total{{error_class="guest_trap",topic="{}"}}"#,
            topics.of("order.created")
        ),
        r#"projector_events_total{event_type="post.deleted",outcome="dead_lettered"}"#.to_owned(),
        r#"projector_component_reloads_total{domain="product",outcome="refused"}"#.to_owned(),
        format!(
            r#"projector_log_gap_offsets_total{{partition="0",topic="{}"}}"#,
            topics.of("user.created")
        ),
    ] {
        assert_eq!(m.get(&key), Some(&0.0), "{key} is not exported at 0");
    }

    // The charts need two monitor samples (a rate is a difference).
    let history = || async {
        let (_, status) = http_get(&format!("{url}/status.json")).await;
        let status: serde_json::Value = serde_json::from_str(&status).unwrap();
        status["observed"]["history"].as_array().unwrap().len()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let before = loop {
        let n = history().await;
        if n >= 2 {
            break n;
        }
        assert!(tokio::time::Instant::now() < deadline, "no second sample");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (code, page) = http_get(&format!("{url}/")).await;
    let after = history().await;
    assert_eq!(code, 200);
    for needle in [
        "READY",
        "Lag per partition",
        "http-equiv=refresh",
        &format!("{}[0]", topics.of("order.created")),
        "events/s",
        "Recent errors",
        "<td>orders, order_items</td><td>orders, order_items</td>",
    ] {
        assert!(page.contains(needle), "status page lacks {needle:?}");
    }
    // The charts: one line per domain, a point per monitor sample kept.
    assert!(!page.contains("<script"), "the page runs no scripts");
    for domain in ["user", "supplier", "product", "order", "post"] {
        let line = page
            .split(&format!("<polyline data-series=\"{domain}\""))
            .nth(1)
            .unwrap_or_else(|| panic!("no {domain} line in {page}"));
        let points = line
            .split("points=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        let n = points.split(' ').count();
        assert!(
            (before..=after).contains(&n),
            "{n} points, {before}..={after} samples"
        );
    }
    assert!(page.contains("Total lag"), "{page}");
    host.stop().await;

    // Events arrive while no host consumes: a monitor of the group reports
    // the lag, and it must be what Kafka's own tool says.
    let second = events(7);
    produce_all(&topics, &second).await;
    let s = settings(&db, &topics, &group);
    let pool = projector_host::sink::connect_mysql(&db.url, 1)
        .await
        .unwrap();
    let (_tx, rx) =
        tokio::sync::watch::channel(Arc::new(projector_host::sandbox::Registry::default()));
    let shared = Arc::new(projector_host::ops::Shared::new(&s, rx));
    let monitor = projector_host::ops::Monitor::new(&s, pool, shared.clone()).unwrap();
    monitor.sample().await;
    let (addr, _server) = projector_host::ops::admin::serve(
        "127.0.0.1:0".parse().unwrap(),
        projector_host::ops::Admin {
            shared: shared.clone(),
            reloader: None,
            token: None,
            settings: None,
        },
    )
    .await
    .unwrap();
    let m = metrics(&format!("http://{addr}")).await;
    let tool = tool_lag(&group, &topics.prefix);
    assert!(tool.len() >= 8, "the tool described {tool:?}");
    let mut total = 0;
    for ((topic, partition), (end, lag)) in &tool {
        let labels = format!("{{partition=\"{partition}\",topic=\"{topic}\"}}");
        assert_eq!(
            m[&format!("projector_partition_lag{labels}")],
            *lag as f64,
            "lag of {topic}[{partition}]"
        );
        assert_eq!(
            m[&format!("projector_partition_log_end_offset{labels}")],
            *end as f64
        );
        total += lag;
    }
    assert!(total > 0, "the tool saw lag");
    // `projector status --json` says the same, and counts what MySQL holds.
    let (ok, out) = projector(
        &db.url,
        &topics,
        &group,
        &components_dir(),
        &["status", "--json"],
    );
    assert!(ok, "{out}");
    let status: serde_json::Value = serde_json::from_str(&out).expect(&out);
    for ((topic, partition), (end, lag)) in &tool {
        let p = status["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["topic"] == topic.as_str() && p["partition"] == *partition)
            .unwrap_or_else(|| panic!("{topic}[{partition}] missing from {status}"));
        assert_eq!(
            (&p["log_end_offset"], &p["lag"]),
            (&json!(end), &json!(lag))
        );
    }
    for table in ["users", "orders", "order_items", "posts"] {
        let n: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!(status["tables"][table], n, "{table}");
    }
    assert_eq!(status["events_applied"], first.len());
    assert_eq!(status["group"], group.as_str());
    // Partitions the tool prints as `-` (never committed) are lag too.
    assert_eq!(
        sum(&m, "projector_partition_lag{", &topics.prefix),
        second.len() as f64,
        "the new events are the lag"
    );
    // Not ready: no component is loaded in this bare monitor.
    let (code, body) = http_get(&format!("http://{addr}/health/ready")).await;
    assert_eq!(code, 503);
    assert!(body.contains("components: none loaded"), "{body}");
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_reload_swaps_a_component_ten_times_under_load_and_refuses_a_broken_one() {
    let mut all = events(400);
    let db = TestDb::audited().await;
    let topics = Topics::new();
    let dir = components_copy();
    let mut s = settings(&db, &topics, &unique("g"));
    s.components.dir = dir.path().to_owned();
    s.components.watch = true;
    let host = RunningHost::start(s, Mode::Wasm).await;
    let url = host.admin_url().await;

    let producing = {
        let topics_prefix = topics.prefix.clone();
        let all = all.clone();
        tokio::spawn(async move {
            let topics = Topics {
                prefix: topics_prefix,
            };
            for chunk in all.chunks(50) {
                produce_all(&topics, chunk).await;
                tokio::time::sleep(Duration::from_millis(80)).await;
            }
        })
    };
    let user_wasm = dir.path().join("user.wasm");
    let probe_producer = producer();
    // A user event projected by the build of `digest`, seen in its
    // bookkeeping: each build is proven to have served.
    let probe = async |digest: &str| {
        let probe = fixture("user.created", &object_id(), "2026-02-01T00:00:00Z");
        let id = probe["entity_id"].as_str().unwrap().to_owned();
        produce(
            &probe_producer,
            &topics.of("user.created"),
            &id,
            probe.to_string().as_bytes(),
        )
        .await;
        let sql = format!(
            "SELECT COUNT(*) FROM processed_events WHERE event_id = '{}' AND component LIKE '%+{}'",
            probe["event_id"].as_str().unwrap(),
            &digest[..12]
        );
        wait_until(&db.pool, &sql, 1, Duration::from_secs(30)).await;
        probe
    };

    let original = std::fs::read(&user_wasm).unwrap();
    let user_digest = |shared: &projector_host::ops::Shared| {
        shared
            .components()
            .into_iter()
            .find(|c| c.domain == "user")
            .unwrap()
            .digest
    };
    let mut probes = vec![probe(&user_digest(&host.shared)).await];
    let refused = || {
        host.shared
            .metrics
            .reloads
            .with_label_values(&["user", "refused"])
            .get()
    };
    for i in 0..10 {
        let before = user_digest(&host.shared);
        if i == 4 {
            // A broken build: half a component.
            install_file(&user_wasm, &original[..original.len() / 2]);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while refused() == 0 {
                assert!(tokio::time::Instant::now() < deadline, "never refused");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            assert_eq!(
                user_digest(&host.shared),
                before,
                "the old one keeps serving"
            );
            continue;
        }
        let build = rebuilt(&original, &format!("build {i}"));
        let digest = hex::encode(sha2::Sha256::digest(&build));
        install_file(&user_wasm, &build);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while user_digest(&host.shared) != digest {
            assert!(
                tokio::time::Instant::now() < deadline,
                "swap {i} never happened"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        probes.push(probe(&digest).await);
    }
    producing.await.unwrap();
    // The endpoint reloads on demand; nothing changed since the last swap.
    let (status, report) = reload(&url).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["unchanged"], 5, "{report}");

    all.extend(probes);
    wait_processed(&db.pool, all.len() as i64, Duration::from_secs(120)).await;
    let m = metrics(&url).await;
    host.stop().await;
    let (expected, clean_writes) = clean_run_audited(&all).await;
    assert_each_event_once(&db, all.len(), clean_writes).await;
    assert_same(&dump(&db.pool).await, &expected);
    let builds: i64 = sqlx::query_scalar(
        "SELECT COUNT(DISTINCT component) FROM processed_events WHERE event_type LIKE 'user.%'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    // The original and each of the 9 builds projected user events.
    assert_eq!(builds, 10, "user events were projected by {builds} builds");
    assert_eq!(
        m[r#"projector_component_reloads_total{domain="user",outcome="loaded"}"#],
        9.0
    );
    assert_eq!(
        m[r#"projector_component_reloads_total{domain="user",outcome="refused"}"#],
        1.0
    );
    db.drop_db().await;
}

async fn display_names(db: &TestDb) -> BTreeMap<String, Option<String>> {
    sqlx::query("SELECT user_id, display_name FROM users")
        .fetch_all(&db.pool)
        .await
        .unwrap()
        .into_iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_after_a_rule_change_rebuilds_the_domain_while_the_others_flow() {
    let db = TestDb::new().await;
    let topics = Topics::new();
    let group = unique("g");
    let dir = components_copy();
    let mut s = settings(&db, &topics, &group);
    s.components.dir = dir.path().to_owned();
    let first = events(40);
    produce_all(&topics, &first).await;
    let host = RunningHost::start(s, Mode::Wasm).await;
    let url = host.admin_url().await;
    wait_processed(&db.pool, first.len() as i64, Duration::from_secs(60)).await;
    let before_names = display_names(&db).await;
    let before = dump(&db.pool).await;
    assert!(
        before_names
            .values()
            .flatten()
            .any(|n| *n != n.to_uppercase()),
        "the fixtures have mixed-case names"
    );

    // Ship the new rule and reload it.
    install_file(
        &dir.path().join("user.wasm"),
        &std::fs::read(test_component("user-next")).unwrap(),
    );
    let (status, report) = reload(&url).await;
    assert_eq!(status, 200, "{report}");
    assert!(
        report["loaded"][0]
            .as_str()
            .unwrap()
            .starts_with("user@1.1.0+"),
        "{report}"
    );

    // Replay the user domain while orders keep coming.
    let replay = {
        let (url, prefix, group, dir) = (
            db.url.clone(),
            topics.prefix.clone(),
            group.clone(),
            dir.path().to_owned(),
        );
        tokio::task::spawn_blocking(move || {
            projector(
                &url,
                &Topics { prefix },
                &group,
                &dir,
                &["replay", "--domain", "user", "--stall-timeout", "60"],
            )
        })
    };
    let orders: Vec<serde_json::Value> = (0..30)
        .map(|i| {
            fixture(
                "order.created",
                &object_id(),
                &format!("2026-03-01T00:00:{i:02}Z"),
            )
        })
        .collect();
    for chunk in orders.chunks(5) {
        produce_all(&topics, chunk).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (ok, out) = replay.await.unwrap();
    assert!(ok, "replay failed:\n{out}");
    assert!(out.contains("emptied users"), "{out}");
    assert!(out.contains("replayed"), "{out}");
    wait_processed(
        &db.pool,
        (first.len() + orders.len()) as i64,
        Duration::from_secs(60),
    )
    .await;
    host.stop().await;

    // Whole tables: the oracle's result of every event, with the new rule's
    // upper-cased display names.
    let mut expected = clean_run(&[first.clone(), orders.clone()].concat()).await;
    for row in expected.get_mut("users").unwrap() {
        if let Some(Some(name)) = row.get_mut("display_name") {
            *name = name.to_uppercase();
        }
    }
    let after = dump(&db.pool).await;
    assert_same(&after, &expected);
    let old_builds: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM processed_events WHERE event_type LIKE 'user.%' AND component NOT LIKE 'user@1.1.0+%'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(old_builds, 0, "every user event was re-projected by 1.1.0");
    for table in ["suppliers", "products", "product_variants", "posts"] {
        assert_eq!(
            after[table], before[table],
            "{table} untouched by the replay"
        );
    }
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_corpus_is_dead_lettered_and_redriven_once_its_cause_is_fixed() {
    let db = TestDb::audited().await;
    let topics = Topics::new();
    let group = unique("g");
    let dir = components_copy();
    // The user projection in force traps on a marker field.
    std::fs::copy(test_component("chaos"), dir.path().join("user.wasm")).unwrap();
    let mut s = settings(&db, &topics, &group);
    s.components.dir = dir.path().to_owned();
    let topic = topics.of("user.created");
    let (a, b, c) = (object_id(), object_id(), object_id());
    let good_a = fixture("user.created", &a, "2026-01-01T00:00:00Z");
    let mut trap_b = fixture("user.created", &b, "2026-01-01T00:00:00Z");
    trap_b["data"]["chaos"] = json!("panic");
    let mut trap_a = fixture("user.updated", &a, "2026-01-02T00:00:00Z");
    trap_a["data"]["chaos"] = json!("panic");
    trap_a["data"]["profile"]["display_name"] = json!("Renamed A");
    let mut too_long = fixture("user.created", &c, "2026-01-01T00:00:00Z");
    too_long["data"]["profile"]["display_name"] = json!("y".repeat(300));
    let mut huge = fixture("user.created", &object_id(), "2026-01-01T00:00:00Z");
    huge["data"]["profile"]["bio"] = json!("z".repeat(2 << 20));
    let mut wrong_type = fixture("user.created", &object_id(), "2026-01-01T00:00:00Z");
    wrong_type["data"]["contact_info"]["primary_email"] = json!(42);
    let mut unknown = fixture("user.created", &object_id(), "2026-01-01T00:00:00Z");
    unknown["event_type"] = json!("user.teleported");
    let mut no_entity = fixture("user.created", &object_id(), "2026-01-01T00:00:00Z");
    no_entity.as_object_mut().unwrap().remove("entity_id");
    let good_last = fixture("user.created", &object_id(), "2026-01-03T00:00:00Z");
    let corpus: Vec<Vec<u8>> = vec![
        good_a.to_string().into(),
        b"{\"event_type\": \"user.created\", \"event_id\": ".to_vec(),
        trap_b.to_string().into(),
        no_entity.to_string().into(),
        huge.to_string().into(),
        wrong_type.to_string().into(),
        trap_a.to_string().into(),
        unknown.to_string().into(),
        too_long.to_string().into(),
        good_last.to_string().into(),
    ];
    let big = big_producer();
    // One key: one partition, the bad ones between the good ones.
    for payload in &corpus {
        produce(&big, &topic, &a, payload).await;
    }
    let host = RunningHost::start(s, Mode::Wasm).await;
    let url = host.admin_url().await;
    let mut letters = read_topic(&format!("dlq.{topic}"), 8, Duration::from_secs(60)).await;
    wait_processed(&db.pool, 2, Duration::from_secs(30)).await;
    letters.sort_by_key(|(v, _)| v["offset"].as_i64());
    let classes: Vec<&str> = letters
        .iter()
        .map(|(v, _)| v["error_class"].as_str().unwrap())
        .collect();
    assert_eq!(
        classes,
        [
            "invalid_envelope",
            "guest_trap",
            "invalid_envelope",
            "too_large",
            "invalid_event",
            "guest_trap",
            "unknown_event_type",
            "invalid_op",
        ]
    );
    let (trap, headers) = &letters[1];
    assert_eq!(trap["component"]["name"], "user");
    assert_eq!(trap["component"]["version"], "1.0.0-chaos");
    assert_eq!(trap["offset"], 2);
    assert_eq!(trap["key"], a.as_str());
    assert_eq!(trap["retry_count"], 0);
    assert_eq!(headers["x-error-class"], "guest_trap");
    let (large, _) = &letters[3];
    assert_eq!(large["original_truncated"], true);
    assert_eq!(
        large["original_size"].as_u64().unwrap() as usize,
        corpus[4].len()
    );
    assert_eq!(large["original"].as_str().unwrap().len(), 512 * 1024);
    let m = metrics(&url).await;
    assert_eq!(sum(&m, "projector_dead_letters_total{", &topic), 8.0);
    assert_eq!(
        m[&format!(r#"projector_dead_letters_total{{error_class="guest_trap",topic="{topic}"}}"#)],
        2.0
    );
    let (_, page) = http_get(&format!("{url}/")).await;
    assert!(page.contains("guest_trap"), "recent errors list the trap");

    let cli = |args: &[&str]| projector(&db.url, &topics, &group, dir.path(), args);
    let (ok, listing) = cli(&["dlq", "list"]);
    assert!(ok, "{listing}");
    assert!(listing.contains("8 dead letters"), "{listing}");

    // For scripts: the same letters as JSON, in the topic's order, each
    // shown alone by its id, and linked from the status page.
    let (ok, listed) = cli(&["dlq", "list", "--json"]);
    assert!(ok, "{listed}");
    let listed: Vec<serde_json::Value> = serde_json::from_str(&listed).expect(&listed);
    let listed_classes: Vec<&str> = listed
        .iter()
        .map(|l| l["error_class"].as_str().unwrap())
        .collect();
    assert_eq!(listed_classes, classes);
    let (_, page) = http_get(&format!("{url}/")).await;
    for (l, (letter, _)) in listed.iter().zip(&letters) {
        let id = l["id"].as_str().unwrap();
        assert_eq!(l["offset"], letter["offset"], "{l}");
        assert_eq!(l["redriven"], false);
        let (ok, shown) = cli(&["dlq", "show", "--json", id]);
        assert!(ok, "{shown}");
        let shown: serde_json::Value = serde_json::from_str(&shown).expect(&shown);
        assert_eq!(shown["id"], id);
        assert_eq!(shown["error"], letter["error"]);
        assert!(
            page.contains(&format!("href=\"/dead-letters/{id}\"")),
            "the status page links {id}"
        );
        let (code, shown) = http_get(&format!("{url}/dead-letters/{id}")).await;
        assert_eq!(code, 200, "{shown}");
        assert!(
            shown.contains(&format!("class {}", l["error_class"].as_str().unwrap())),
            "{shown}"
        );
    }
    let missing = format!("dlq.{topic}:0:999999");
    assert_eq!(
        http_get(&format!("{url}/dead-letters/{missing}")).await.0,
        404
    );
    let (ok, out) = cli(&["dlq", "show", &missing]);
    assert!(!ok && out.contains("no dead letter"), "{out}");
    assert_eq!(
        http_get(&format!("{url}/dead-letters/other.topic:0:1"))
            .await
            .0,
        400
    );

    // Fix the causes: the real user component, a wider column.
    install_file(
        &dir.path().join("user.wasm"),
        &std::fs::read(components_dir().join("user.wasm")).unwrap(),
    );
    let (status, report) = reload(&url).await;
    assert_eq!(status, 200, "{report}");
    sqlx::query("ALTER TABLE users MODIFY display_name VARCHAR(512) NULL")
        .execute(&db.pool)
        .await
        .unwrap();

    let (ok, out) = cli(&["dlq", "redrive", "--class", "guest_trap"]);
    assert!(ok && out.contains("2 redriven"), "{out}");
    let (ok, out) = cli(&["dlq", "redrive", "--class", "invalid_op"]);
    assert!(ok && out.contains("1 redriven"), "{out}");
    wait_processed(&db.pool, 5, Duration::from_secs(30)).await;
    // Whole tables: what the oracle makes of the five good events once the
    // column is wide enough (the marker field means nothing to the real
    // projection).
    let expected = clean_run_after(
        &[good_a, trap_b, trap_a, too_long, good_last],
        &["ALTER TABLE users MODIFY display_name VARCHAR(512) NULL"],
    )
    .await;
    assert_same(&dump(&db.pool).await, &expected);

    // Again: nothing is sent, and forcing it changes nothing.
    let (ok, out) = cli(&["dlq", "redrive", "--class", "guest_trap"]);
    assert!(ok && out.contains("0 redriven, 2 skipped"), "{out}");
    let dups_before = host.shared.metrics.duplicates_total();
    let repeats_before = db.repeats().await;
    let (ok, out) = cli(&["dlq", "redrive", "--class", "guest_trap", "--again"]);
    assert!(ok && out.contains("2 redriven"), "{out}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while host.shared.metrics.duplicates_total() < dups_before + 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the resent events never arrived"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_each_event_once(&db, 5, repeats_before).await;

    // An unfixed letter goes back to the DLQ with its retry count; the
    // truncated original is taken from the source topic.
    let (ok, listing) = cli(&["dlq", "list", "--class", "too_large"]);
    assert!(ok && listing.contains("1 dead letters"), "{listing}");
    let large_id = listing
        .lines()
        .find(|l| l.contains("too_large"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_owned();
    let (ok, shown) = cli(&["dlq", "show", &large_id]);
    assert!(
        ok && shown.contains("\"error_class\": \"too_large\""),
        "{shown}"
    );
    let (ok, out) = cli(&["dlq", "redrive", &large_id]);
    assert!(ok && out.contains("1 redriven"), "{out}");
    let again = read_topic(&format!("dlq.{topic}"), 9, Duration::from_secs(30)).await;
    let resent = again
        .iter()
        .find(|(v, _)| v["error_class"] == "too_large" && v["retry_count"] == 1)
        .expect("the oversized event is dead-lettered again with retry_count 1");
    assert_eq!(resent.0["original_size"], large["original_size"]);
    host.stop().await;
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_needs_the_admin_token_and_the_status_page_escapes_payload_text() {
    let db = TestDb::new().await;
    let topics = Topics::new();
    // An event type no projection handles, echoed into the error text.
    let mut e = fixture("user.created", &object_id(), "2026-01-01T00:00:00Z");
    e["event_type"] = json!("<script>alert(1)</script>");
    produce(
        &producer(),
        &topics.of("user.created"),
        "k",
        e.to_string().as_bytes(),
    )
    .await;
    let host = RunningHost::start(settings(&db, &topics, &unique("g")), Mode::Wasm).await;
    let url = host.admin_url().await;
    let client = reqwest::Client::new();
    let reload = format!("{url}/projections/reload");

    // No token, another token, a cross-site form post: 401, nothing reloaded.
    let none = client.post(&reload).send().await.unwrap();
    assert_eq!(none.status().as_u16(), 401);
    assert_eq!(none.headers()["www-authenticate"], "Bearer");
    let body: serde_json::Value = none.json().await.unwrap();
    assert_eq!(body["error"], "unauthorized");
    let wrong = client
        .post(&reload)
        .bearer_auth("test-admin-tokeX")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    let form = client
        .post(&reload)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("origin", "http://evil.example")
        .body("token=test-admin-token")
        .send()
        .await
        .unwrap();
    assert_eq!(form.status().as_u16(), 401);
    let ok = client
        .post(&reload)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status().as_u16(), 200);

    // The dead letter's reason shows on the page, escaped.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let page = loop {
        let page = client
            .get(format!("{url}/"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if page.contains("alert(1)") || std::time::Instant::now() > deadline {
            break page;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // So does the letter's own page, its original included.
    let link = page
        .split("href=\"/dead-letters/")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no dead-letter link in {page}"))
        .to_owned();
    let (code, letter) = http_get(&format!("{url}/dead-letters/{link}")).await;
    host.stop().await;
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{page}"
    );
    assert!(!page.contains("<script>alert(1)"), "{page}");
    assert_eq!(code, 200, "{letter}");
    assert!(letter.contains("class invalid_envelope"), "{letter}");
    assert!(
        letter.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{letter}"
    );
    assert!(!letter.contains("<script>"), "{letter}");
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_configured_token_mutating_routes_are_off() {
    let db = TestDb::new().await;
    let topics = Topics::new();
    let mut s = settings(&db, &topics, &unique("g"));
    s.admin.token = None;
    let host = RunningHost::start(s, Mode::Wasm).await;
    let url = host.admin_url().await;
    let r = reqwest::Client::new()
        .post(format!("{url}/projections/reload"))
        .bearer_auth("anything")
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body: serde_json::Value = r.json().await.unwrap();
    host.stop().await;
    assert_eq!(status, 403);
    assert_eq!(body["error"], "no_admin_token");
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_listener_serves_monitoring_and_nothing_else() {
    let db = TestDb::new().await;
    let topics = Topics::new();
    let mut s = settings(&db, &topics, &unique("g"));
    s.admin.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let host = RunningHost::start(s, Mode::Wasm).await;
    let _ = host.admin_url().await;
    let addr = host.shared.metrics_addr.get().copied().expect("bound");
    let base = format!("http://{addr}");
    let client = reqwest::Client::new();
    let get = |path: &str| client.get(format!("{base}{path}")).send();
    let metrics = get("/metrics").await.unwrap();
    let metrics_ok = metrics.status().as_u16() == 200
        && metrics
            .text()
            .await
            .unwrap()
            .contains("projector_envelope_unknown_fields_total");
    let live = get("/health/live").await.unwrap().status().as_u16();
    let page = get("/").await.unwrap().status().as_u16();
    let status = get("/status.json").await.unwrap().status().as_u16();
    let reload = client
        .post(format!("{base}/projections/reload"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    host.stop().await;
    assert!(metrics_ok, "/metrics served");
    assert_eq!(live, 200);
    assert_eq!(
        (page, status, reload),
        (404, 404, 404),
        "no page, status or control route"
    );
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_outside_its_grant_is_refused_and_the_live_one_keeps_serving() {
    let db = TestDb::new().await;
    let topics = Topics::new();
    let dir = components_copy();
    let mut s = settings(&db, &topics, &unique("g"));
    s.components.dir = dir.path().to_owned();

    // At start: the user domain's grant revoked, the host refuses to run.
    let mut revoked = s.clone();
    revoked.grants.0.insert("user".into(), vec![]);
    let err = projector_host::pipeline::Host::build(revoked, Mode::Wasm)
        .await
        .err()
        .expect("a component outside its grant stops the start");
    assert!(
        format!("{err:#}").contains("outside its grant (grants.user = []"),
        "{err:#}"
    );

    // At reload: a user build that also declares `posts` is refused, the
    // serving one stays and goes on projecting.
    let host = RunningHost::start(s.clone(), Mode::Wasm).await;
    let url = host.admin_url().await;
    let serving = std::fs::read(dir.path().join("user.wasm")).unwrap();
    install_file(
        &dir.path().join("user.wasm"),
        &std::fs::read(test_component("user-greedy")).unwrap(),
    );
    let (status, report) = reload(&url).await;
    assert_eq!(status, 422, "{report}");
    assert!(
        report
            .to_string()
            .contains("declares table \\\"posts\\\", outside its grant"),
        "{report}"
    );
    let e = fixture("user.created", &object_id(), "2026-01-01T00:00:00Z");
    let key = e["entity_id"].as_str().unwrap().to_owned();
    produce(
        &producer(),
        &topics.of("user.created"),
        &key,
        e.to_string().as_bytes(),
    )
    .await;
    wait_processed(&db.pool, 1, Duration::from_secs(60)).await;
    let component: String = sqlx::query_scalar("SELECT component FROM processed_events")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    host.stop().await;
    let digest = hex::encode(sha2::Sha256::digest(&serving));
    assert!(
        component.ends_with(&digest[..12]),
        "{component} is not the serving build"
    );

    // A replay of the domain with that build in the folder refuses before
    // it clears anything.
    let schema = projector_host::sink::Schema::load(&db.pool).await.unwrap();
    let err = projector_host::ops::replay::tables_of(&s, &schema, "user").unwrap_err();
    assert!(format!("{err:#}").contains("outside its grant"), "{err:#}");
    assert_eq!(dump(&db.pool).await["users"].len(), 1);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_column_is_added_at_reload_and_a_destructive_change_is_refused_with_its_sql() {
    let db = TestDb::new().await;
    let topics = Topics::new();
    let dir = components_copy();
    let mut s = settings(&db, &topics, &unique("g"));
    s.components.dir = dir.path().to_owned();
    let host = RunningHost::start(s, Mode::Wasm).await;
    let url = host.admin_url().await;
    let user = object_id();
    let producer = producer();
    let send = async |e: serde_json::Value| {
        produce(
            &producer,
            &topics.of(e["event_type"].as_str().unwrap()),
            &user,
            e.to_string().as_bytes(),
        )
        .await
    };
    send(fixture("user.created", &user, "2026-01-01T00:00:00Z")).await;
    wait_processed(&db.pool, 1, Duration::from_secs(60)).await;
    let users_table = async || -> Vec<(String, String)> {
        sqlx::query_as(
            "SELECT COLUMN_NAME, COLUMN_TYPE FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'users' ORDER BY COLUMN_NAME",
        )
        .fetch_all(&db.pool)
        .await
        .unwrap()
    };
    let before = users_table().await;
    let check = |name: &str| {
        let wasm = test_component(name);
        projector(
            &db.url,
            &topics,
            "unused",
            dir.path(),
            &["check", "--against", &db.url, wasm.to_str().unwrap()],
        )
    };

    // A type change and a NOT NULL column: `check --against` and the reload
    // both refuse with the SQL an operator would run; nothing changes and
    // the serving component goes on.
    let refused_sql = [
        "ALTER TABLE `users` MODIFY COLUMN `phone` BIGINT NULL",
        "ALTER TABLE `users` ADD COLUMN `score` BIGINT NOT NULL",
    ];
    let (ok, out) = check("user-narrowing");
    assert!(!ok, "{out}");
    for sql in refused_sql {
        assert!(out.contains(sql), "{out}");
    }
    install_file(
        &dir.path().join("user.wasm"),
        &std::fs::read(test_component("user-narrowing")).unwrap(),
    );
    let (status, report) = reload(&url).await;
    assert_eq!(status, 422, "{report}");
    let reason = report["refused"][0]["reason"].as_str().unwrap_or_default();
    for sql in refused_sql {
        assert!(reason.contains(sql), "{report}");
    }
    assert_eq!(users_table().await, before);
    let mut updated = fixture("user.updated", &user, "2026-01-01T00:00:01Z");
    updated["data"]["profile"]["display_name"] = json!("still served");
    send(updated).await;
    wait_processed(&db.pool, 2, Duration::from_secs(60)).await;

    // A new nullable column: `check --against` shows the change, the reload
    // makes it (no migration, no restart) and swaps the component in.
    let (ok, out) = check("user-verified");
    assert!(ok, "{out}");
    assert!(
        out.contains("ALTER TABLE `users` ADD COLUMN `verified_at` DATETIME(6) NULL"),
        "{out}"
    );
    install_file(
        &dir.path().join("user.wasm"),
        &std::fs::read(test_component("user-verified")).unwrap(),
    );
    let (status, report) = reload(&url).await;
    assert_eq!(status, 200, "{report}");
    assert!(
        report["loaded"][0]
            .as_str()
            .unwrap()
            .starts_with("user@1.2.0+"),
        "{report}"
    );
    let mut verified = fixture("user.created", &user, "2026-01-02T03:04:05.678901Z");
    verified["event_type"] = json!("user.verified");
    verified["data"] = json!({"user_id": user});
    send(verified).await;
    wait_processed(&db.pool, 3, Duration::from_secs(60)).await;
    let (name, at): (Option<String>, Option<String>) = sqlx::query_as(
        "SELECT display_name, DATE_FORMAT(verified_at, '%Y-%m-%dT%H:%i:%s.%f') FROM users WHERE user_id = ?",
    )
    .bind(&user)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    host.stop().await;
    assert_eq!(name.as_deref(), Some("still served"));
    assert_eq!(at.as_deref(), Some("2026-01-02T03:04:05.678901"));
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_event_type_and_column_are_deployed_while_events_flow() {
    let db = TestDb::new().await;
    let topics = Topics::new();
    let group = unique("g");
    let dir = components_copy();
    let mut s = settings(&db, &topics, &group);
    s.components.dir = dir.path().to_owned();
    let host = RunningHost::start(s, Mode::Wasm).await;
    let url = host.admin_url().await;
    let all = events(30);
    let deleted: Vec<&serde_json::Value> = all
        .iter()
        .filter(|e| e["event_type"] == "user.deleted")
        .map(|e| &e["entity_id"])
        .collect();
    let users: Vec<String> = all
        .iter()
        .filter(|e| e["event_type"] == "user.created" && !deleted.contains(&&e["entity_id"]))
        .map(|e| e["entity_id"].as_str().unwrap().to_owned())
        .take(5)
        .collect();
    assert_eq!(users.len(), 5);
    let producing = {
        let (prefix, all) = (topics.prefix.clone(), all.clone());
        tokio::spawn(async move {
            let topics = Topics { prefix };
            for chunk in all.chunks(40) {
                produce_all(&topics, chunk).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let wasm = test_component("user-verified");
    let deploy = || {
        run_projector(
            &["deploy", wasm.to_str().unwrap(), "--url", &url],
            &[("PROJECTOR_ADMIN_TOKEN", ADMIN_TOKEN)],
        )
    };
    // Self-test fixtures beside the file it replaces run first: a golden
    // file it does not match refuses it.
    let selftest = dir.path().join("user.selftest");
    std::fs::create_dir(&selftest).unwrap();
    let fixtures = repo().join("guest-projections/fixtures");
    std::fs::copy(
        fixtures.join("user.created.json"),
        selftest.join("user.created.json"),
    )
    .unwrap();
    let golden = std::fs::read_to_string(fixtures.join("user.created.ops.json")).unwrap();
    std::fs::write(
        selftest.join("user.created.ops.json"),
        golden.replace("Zoë Müller", "Someone Else"),
    )
    .unwrap();
    // Refused: nothing in the folder or the database changes.
    let before = std::fs::read(dir.path().join("user.wasm")).unwrap();
    let (ok, out) = deploy();
    assert!(!ok, "{out}");
    assert!(out.contains("self-test"), "{out}");
    assert_eq!(std::fs::read(dir.path().join("user.wasm")).unwrap(), before);
    let has_column = async || -> bool {
        sqlx::query_scalar(
            "SELECT COUNT(*) > 0 FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() \
             AND TABLE_NAME = 'users' AND COLUMN_NAME = 'verified_at'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap()
    };
    assert!(!has_column().await);
    std::fs::write(selftest.join("user.created.ops.json"), &golden).unwrap();

    // Accepted while the stream goes on: the host adds the column it
    // declares, then swaps it in; no migration, no restart.
    let (ok, out) = deploy();
    assert!(ok, "{out}");
    assert!(out.contains("user@1.2.0+"), "{out}");
    assert!(has_column().await);
    assert_eq!(
        std::fs::read(dir.path().join("user.wasm")).unwrap(),
        std::fs::read(test_component("user-verified")).unwrap(),
        "a restart loads what is in force"
    );
    producing.await.unwrap();
    // The producer's new event, for users created before the deploy.
    let p = producer();
    for u in &users {
        let mut e = fixture("user.created", u, "2030-01-01T00:00:00.5Z");
        e["event_type"] = json!("user.verified");
        e["data"] = json!({"user_id": u});
        produce(&p, &topics.of("user.verified"), u, e.to_string().as_bytes()).await;
    }
    let total = (all.len() + users.len()) as i64;
    wait_processed(&db.pool, total, Duration::from_secs(90)).await;
    let verified: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT user_id, DATE_FORMAT(verified_at, '%Y-%m-%dT%H:%i:%s.%f') FROM users",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let by_new_rule: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM processed_events WHERE event_type = 'user.verified' AND component LIKE 'user@1.2.0+%'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let real = dump(&db.pool).await;
    host.stop().await;
    assert_eq!(by_new_rule, users.len() as i64);
    // 0 lost, 0 duplicated: every table equals the oracle's clean run of
    // the stream, but for what the new event type changes (the new column,
    // and the stamp and update time of the users it verified).
    let expected = clean_run(&all).await;
    let strip = |dump: &Dump| -> Dump {
        let mut dump = dump.clone();
        for row in dump.get_mut("users").unwrap() {
            row.remove("verified_at");
            if users
                .iter()
                .any(|u| row["user_id"].as_deref() == Some(u.as_str()))
            {
                for c in ["updated_at", "event_id", "event_timestamp"] {
                    row.remove(c);
                }
            }
        }
        dump
    };
    assert_same(&strip(&real), &strip(&expected));
    for (id, at) in &verified {
        let want = users
            .contains(id)
            .then(|| "2030-01-01T00:00:00.500000".to_owned());
        assert_eq!(at, &want, "{id}");
    }
    db.drop_db().await;
}
