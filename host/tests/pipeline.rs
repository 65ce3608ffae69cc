//! The host end to end against the real stack: Kafka topics in, MySQL rows
//! out, with the compiled WASM components.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use flatten::{RowOp, Value};
use projector_host::pipeline::Mode;

/// A plain reference model of the projection semantics: events applied one
/// by one, every write guarded by the row's event timestamp. The host's
/// batched SQL must end in the same state.
#[derive(Default)]
struct Model {
    rows: BTreeMap<String, Vec<BTreeMap<String, Option<String>>>>,
}

const PARENTS: [(&str, &str, &str); 2] = [
    ("product_variants", "products", "product_id"),
    ("order_items", "orders", "order_id"),
];

fn render(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::Text(s) | Value::Json(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        Value::Float(f) => Some(f.to_string()),
        Value::Boolean(b) => Some(if *b { "1" } else { "0" }.to_owned()),
        Value::Timestamp(t) => Some(db_time(t)),
    }
}

fn db_time(rfc3339: &str) -> String {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .naive_utc()
        .format("%Y-%m-%d %H:%M:%S%.6f")
        .to_string()
}

impl Model {
    fn find(&mut self, table: &str, key: &[flatten::Column]) -> Option<usize> {
        let rows = self.rows.entry(table.to_owned()).or_default();
        rows.iter().position(|r| {
            key.iter()
                .all(|c| r.get(&c.name).cloned().flatten() == render(&c.value))
        })
    }

    fn newer(row: &BTreeMap<String, Option<String>>, ts: &str) -> bool {
        row["event_timestamp"].as_deref().unwrap() <= ts
    }

    fn apply(&mut self, envelope: &serde_json::Value) {
        let data = envelope["data"].to_string();
        let env = flatten::Envelope {
            event_type: envelope["event_type"].as_str().unwrap(),
            event_id: envelope["event_id"].as_str().unwrap(),
            timestamp: envelope["timestamp"].as_str().unwrap(),
            entity_id: envelope["entity_id"].as_str().unwrap(),
            data: &data,
        };
        let ts = db_time(env.timestamp);
        let stamp = |row: &mut BTreeMap<String, Option<String>>| {
            row.insert("event_id".into(), Some(env.event_id.to_owned()));
            row.insert("event_timestamp".into(), Some(ts.clone()));
        };
        let domain = flatten::domain(env.event_type.split('.').next().unwrap()).unwrap();
        for op in (domain.project)(&env).unwrap() {
            match op {
                RowOp::Upsert(u) => match self.find(&u.table, &u.key) {
                    Some(i) => {
                        let row = &mut self.rows.get_mut(&u.table).unwrap()[i];
                        if Self::newer(row, &ts) {
                            for c in &u.values {
                                row.insert(c.name.clone(), render(&c.value));
                            }
                            stamp(row);
                        }
                    }
                    None => {
                        let mut row: BTreeMap<_, _> = u
                            .key
                            .iter()
                            .chain(&u.values)
                            .map(|c| (c.name.clone(), render(&c.value)))
                            .collect();
                        stamp(&mut row);
                        self.rows.get_mut(&u.table).unwrap().push(row);
                    }
                },
                RowOp::Update(u) => {
                    if let Some(i) = self.find(&u.table, &u.key) {
                        let row = &mut self.rows.get_mut(&u.table).unwrap()[i];
                        if Self::newer(row, &ts) {
                            for c in &u.values {
                                row.insert(c.name.clone(), render(&c.value));
                            }
                            stamp(row);
                        }
                    }
                }
                RowOp::Replace(r) => {
                    let (_, parent_table, _) = PARENTS.iter().find(|p| p.0 == r.table).unwrap();
                    let Some(pi) = self.find(parent_table, &r.parent) else {
                        continue;
                    };
                    if !Self::newer(&self.rows[*parent_table][pi], &ts) {
                        continue;
                    }
                    let parent_key: Vec<_> = r
                        .parent
                        .iter()
                        .map(|c| (c.name.clone(), render(&c.value)))
                        .collect();
                    let children = self.rows.entry(r.table.clone()).or_default();
                    children.retain(|row| !parent_key.iter().all(|(k, v)| row.get(k) == Some(v)));
                    for cols in &r.rows {
                        let mut row: BTreeMap<_, _> = parent_key.iter().cloned().collect();
                        row.extend(cols.iter().map(|c| (c.name.clone(), render(&c.value))));
                        stamp(&mut row);
                        children.push(row);
                    }
                }
                RowOp::SoftDelete(k) => {
                    if let Some(i) = self.find(&k.table, &k.key) {
                        let row = &mut self.rows.get_mut(&k.table).unwrap()[i];
                        if Self::newer(row, &ts) {
                            row.insert("deleted_at".into(), Some(ts.clone()));
                            stamp(row);
                        }
                    }
                }
                RowOp::Delete(k) => {
                    let Some(i) = self.find(&k.table, &k.key) else {
                        continue;
                    };
                    if !Self::newer(&self.rows[&k.table][i], &ts) {
                        continue;
                    }
                    let removed = self.rows.get_mut(&k.table).unwrap().remove(i);
                    for (child, parent, col) in PARENTS {
                        if parent == k.table {
                            let id = removed[col].clone();
                            self.rows
                                .entry(child.into())
                                .or_default()
                                .retain(|r| r[col] != id);
                        }
                    }
                }
            }
        }
    }

    /// The model in the shape of [`common::dump`], given the real columns.
    fn as_dump(&self, like: &Dump) -> Dump {
        let mut out = Dump::new();
        for (table, real_rows) in like {
            let columns: Vec<String> = match real_rows.first() {
                Some(r) => r.keys().cloned().collect(),
                None => self
                    .rows
                    .get(table)
                    .and_then(|r| r.first())
                    .map(|r| r.keys().cloned().collect())
                    .unwrap_or_default(),
            };
            let mut rows: Vec<BTreeMap<String, Option<String>>> = self
                .rows
                .get(table)
                .map(|rows| {
                    rows.iter()
                        .map(|r| {
                            columns
                                .iter()
                                .map(|c| (c.clone(), r.get(c).cloned().flatten()))
                                .collect()
                        })
                        .collect()
                })
                .unwrap_or_default();
            rows.sort_by_key(|r| format!("{r:?}"));
            out.insert(table.clone(), rows);
        }
        out
    }
}

/// A lifecycle touching all 20 event types, for several entities, in
/// timestamp order per entity.
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
    let mut model = Model::default();
    for e in &events {
        model.apply(e);
    }
    assert_same(&real, &model.as_dump(&real));

    // A few facts checked by hand, independent of the model.
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
        db.writes().await,
        clean_writes,
        "the redelivered events wrote no row again"
    );

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
    assert_eq!(db.writes().await, clean_writes, "the replay wrote no row");
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
    let rows = dump(&db.pool).await;
    // Through the bookkeeping, the second application is a no-op.
    commit(false).await;
    assert_eq!(db.writes().await, once);
    // Bypassing it, the rows stay the same (every write is guarded), but the
    // audit sees the batch applied again.
    commit(true).await;
    assert_same(&dump(&db.pool).await, &rows);
    assert!(
        db.writes().await > once,
        "a batch applied twice went unseen: {} writes after, {once} before",
        db.writes().await
    );
    drop(conn);
    db.drop_db().await;
}
