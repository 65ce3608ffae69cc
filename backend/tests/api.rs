//! The backend against the real stack (MongoDB wire server and Kafka): every
//! mutation emits its event, bad requests change nothing, and no event is
//! lost while Kafka is unreachable or the relay is not running.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use mongodb::bson::{Document, doc};
use projector_backend::relay::Relay;
use projector_backend::{AppState, app};
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::{ClientConfig, Message as _};
use serde_json::{Value, json};
use tokio::sync::Notify;
use tower::ServiceExt as _;

fn kafka() -> String {
    std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

fn unique(p: &str) -> String {
    format!("{p}{}", uuid::Uuid::new_v4().simple())
}

struct Env {
    db: mongodb::Database,
    state: AppState,
    prefix: String,
}

impl Env {
    async fn new() -> Env {
        let uri =
            std::env::var("MONGODB_URI").unwrap_or_else(|_| "mongodb://127.0.0.1:27017/".into());
        let client = mongodb::Client::with_uri_str(uri).await.unwrap();
        let db = client.database(&unique("backend_test_"));
        let state = AppState::new(&db, Arc::new(Notify::new()));
        Env {
            db,
            state,
            prefix: format!("{}.", unique("bt")),
        }
    }

    fn relay(&self, bootstrap: &str) -> Relay {
        let mut config = ClientConfig::new();
        let settings = events::KafkaSettings {
            bootstrap_servers: bootstrap.into(),
            ..Default::default()
        };
        for (k, v) in settings.producer_config() {
            config.set(k, v);
        }
        config.set("message.timeout.ms", "3000");
        Relay {
            db: self.db.clone(),
            producer: config.create().unwrap(),
            topic_prefix: self.prefix.clone(),
            wake: self.state.wake.clone(),
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        user: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(u) = user {
            req = req.header("x-user-id", u);
        }
        let req = match body {
            Some(b) => req
                .header("content-type", "application/json")
                .body(Body::from(b.to_string()))
                .unwrap(),
            None => req.body(Body::empty()).unwrap(),
        };
        self.raw(req).await
    }

    async fn raw(&self, req: Request<Body>) -> (StatusCode, Value) {
        let resp = app(self.state.clone()).oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        (status, v)
    }

    async fn ok(&self, method: &str, path: &str, user: Option<&str>, body: Option<Value>) -> Value {
        let (status, v) = self.call(method, path, user, body).await;
        assert!(status.is_success(), "{method} {path}: {status} {v}");
        v
    }

    /// Every document with its internal fields, for before/after comparisons.
    async fn snapshot(&self) -> BTreeMap<String, Vec<Document>> {
        use futures_util::TryStreamExt as _;
        let mut out = BTreeMap::new();
        for name in projector_backend::relay::COLLECTIONS {
            let docs: Vec<Document> = self
                .db
                .collection(name)
                .find(doc! {})
                .await
                .unwrap()
                .try_collect()
                .await
                .unwrap();
            out.insert(name.to_owned(), docs);
        }
        out
    }

    async fn pending_events(&self) -> usize {
        self.snapshot()
            .await
            .values()
            .flatten()
            .map(|d| d.get_array("_outbox").map(|a| a.len()).unwrap_or(0))
            .sum()
    }

    /// Reads `n` envelopes from the five topics (in per-partition order).
    async fn consume(&self, n: usize) -> Vec<(String, String, Value)> {
        let (out, more) = self.read(n).await;
        assert!(!more && out.len() == n, "more than {n} events");
        out
    }

    /// Events until `n` distinct ones arrived (duplicates kept), and
    /// whether more arrived within 2 s after.
    async fn read(&self, n: usize) -> (Vec<(String, String, Value)>, bool) {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", kafka())
            .set("group.id", unique("reader"))
            .set("auto.offset.reset", "earliest")
            .set("topic.metadata.refresh.interval.ms", "500")
            .create()
            .unwrap();
        let topics: Vec<String> = events::Topic::ALL
            .iter()
            .map(|t| format!("{}{}", self.prefix, t))
            .collect();
        consumer
            .subscribe(&topics.iter().map(String::as_str).collect::<Vec<_>>())
            .unwrap();
        let mut out = Vec::new();
        let mut distinct = std::collections::HashSet::new();
        while distinct.len() < n {
            let m = match tokio::time::timeout(Duration::from_secs(30), consumer.recv()).await {
                Ok(Ok(m)) => m,
                // Topics of domains this test never wrote do not exist;
                // any other error fails the test.
                Ok(Err(KafkaError::MessageConsumption(
                    RDKafkaErrorCode::UnknownTopicOrPartition,
                ))) => {
                    continue;
                }
                Ok(Err(e)) => panic!("consuming failed: {e}"),
                Err(_) => panic!("only {} of {n} events arrived", distinct.len()),
            };
            let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
            let e: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
            distinct.insert(e["event_id"].as_str().unwrap_or_default().to_owned());
            out.push((m.topic().to_owned(), key, e));
        }
        // Nothing more than expected.
        let quiet_until = tokio::time::Instant::now() + Duration::from_secs(2);
        while let Ok(next) = tokio::time::timeout_at(quiet_until, consumer.recv()).await {
            if next.is_ok() {
                return (out, true);
            }
        }
        (out, false)
    }

    /// Registers a user; its id.
    async fn user(&self, email: &str) -> String {
        self.ok(
            "POST",
            "/users",
            None,
            Some(json!({"email": email, "display_name": "A"})),
        )
        .await["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Sets the user's bio to "edit 0" … "edit n-1", one request each.
    async fn edit_bio(&self, user: &str, n: usize) {
        for i in 0..n {
            self.ok(
                "PATCH",
                &format!("/users/{user}"),
                None,
                Some(json!({"bio": format!("edit {i}")})),
            )
            .await;
        }
    }

    async fn publish_all(&self, relay: &Relay) {
        for _ in 0..100 {
            relay.sweep().await;
            if self.pending_events().await == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("events still pending after 100 sweeps");
    }
}

fn supplier_body() -> Value {
    json!({
        "contact_info": {"primary_email": "sales@acme.example", "primary_phone": "+1-555-0100", "contact_person_name": "Ana Lima"},
        "company_info": {"legal_name": "ACME Trading LLC", "dba_name": "ACME",
            "business_address": {"street": "1 Main St", "city": "Springfield", "state": "IL", "zip_code": "62701", "country": "US"}},
        "business_info": {"support_email": "help@acme.example", "website": "https://acme.example", "social_urls": {"instagram": "https://instagram.com/acme"}}
    })
}

fn product_body() -> Value {
    json!({
        "name": "Café Crème Mug", "category": "home_kitchen", "base_price_cents": 1500, "description": "Stoneware",
        "metadata": {"base_sku": "MUG-350", "tags": ["mug"]},
        "variants": {"Default": {"sku": "MUG-W", "price_cents": 1500, "quantity": 10, "attributes": [{"name": "color", "value": "white"}]},
                     "Blue": {"sku": "MUG-B", "price_cents": 1650, "quantity": 3}}
    })
}

fn order_body(product: &str) -> Value {
    json!({
        "items": [{"product_id": product, "quantity": 2}, {"product_id": product, "variant": "Blue", "quantity": 1}],
        "shipping_address": {"recipient_name": "Zoë Müller", "street": "Torstraße 1", "city": "Berlin", "zip_code": "10119", "country": "DE"}
    })
}

/// Drives every one of the 20 mutations; returns the ids (user, supplier, product, order, cancelled order, post).
async fn every_mutation(env: &Env) -> [String; 6] {
    let user = env
        .ok(
            "POST",
            "/users",
            None,
            Some(json!({"email": "zoe@example.com", "display_name": "Zoë 🌻"})),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    env.ok(
        "PATCH",
        &format!("/users/{user}"),
        None,
        Some(json!({"bio": "Gärtnerin"})),
    )
    .await;
    let supplier = env
        .ok("POST", "/suppliers", None, Some(supplier_body()))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    env.ok(
        "PATCH",
        &format!("/suppliers/{supplier}"),
        None,
        Some(json!({"business_info": {"website": "https://acme.test"}})),
    )
    .await;
    let product = env
        .ok("POST", "/products", Some(&supplier), Some(product_body()))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    env.ok(
        "PATCH",
        &format!("/products/{product}"),
        None,
        Some(json!({"base_price_cents": 1550})),
    )
    .await;
    env.ok("POST", &format!("/products/{product}/publish"), None, None)
        .await;
    let order = env
        .ok("POST", "/orders", Some(&user), Some(order_body(&product)))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let other = env
        .ok("POST", "/orders", Some(&user), Some(order_body(&product)))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    env.ok(
        "POST",
        &format!("/orders/{order}/ship"),
        None,
        Some(json!({"carrier": "DHL", "tracking_number": "JD0146"})),
    )
    .await;
    env.ok("POST", &format!("/orders/{other}/cancel"), None, None)
        .await;
    env.ok(
        "POST",
        &format!("/products/{product}/out-of-stock"),
        None,
        None,
    )
    .await;
    env.ok("POST", &format!("/products/{product}/restore"), None, None)
        .await;
    env.ok(
        "POST",
        &format!("/products/{product}/discontinue"),
        None,
        None,
    )
    .await;
    let post = env.ok("POST", "/posts", Some(&user), Some(json!({"post_type": "link", "text_content": "Look!", "link_preview": {"url": "https://shop.example/mug"}}))).await["id"].as_str().unwrap().to_owned();
    env.ok(
        "PATCH",
        &format!("/posts/{post}"),
        None,
        Some(json!({"text_content": "edited"})),
    )
    .await;
    env.ok("POST", &format!("/posts/{post}/publish"), None, None)
        .await;
    env.ok("DELETE", &format!("/posts/{post}"), None, None)
        .await;
    env.ok("DELETE", &format!("/products/{product}"), None, None)
        .await;
    env.ok("DELETE", &format!("/suppliers/{supplier}"), None, None)
        .await;
    env.ok("DELETE", &format!("/users/{user}"), None, None)
        .await;
    [user, supplier, product, order, other, post]
}

/// The bios [`Env::edit_bio`] sets, in order.
fn bio_edits(n: usize) -> Vec<Value> {
    (0..n).map(|i| json!(format!("edit {i}"))).collect()
}

/// How many events [`every_mutation`] makes the API emit.
const EVERY_MUTATION_EVENTS: usize = 21;

/// Stands for a server-set RFC 3339 time in an expected document.
const TIME: &str = "<time>";
/// Stands for a server-set order number (`ORD-<yyyymmdd>-<8 hex>`).
const ORDER_NUMBER: &str = "<order number>";

/// `got` with its server-set values checked for their form and masked.
fn masked(got: &Value) -> Value {
    match got {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| {
                let v = match (k.as_str(), v) {
                    (
                        "created_at" | "updated_at" | "published_at" | "deleted_at"
                        | "cancelled_at" | "shipped_at",
                        Value::String(s),
                    ) => {
                        assert!(
                            chrono::DateTime::parse_from_rfc3339(s).is_ok(),
                            "{k}: {s:?} is not an RFC 3339 time"
                        );
                        json!(TIME)
                    }
                    ("order_number", Value::String(s)) => {
                        let parts: Vec<&str> = s.split('-').collect();
                        assert!(
                            parts.len() == 3
                                && parts[0] == "ORD"
                                && chrono::NaiveDate::parse_from_str(parts[1], "%Y%m%d").is_ok()
                                && parts[2].len() == 8,
                            "order number {s:?}"
                        );
                        json!(ORDER_NUMBER)
                    }
                    _ => masked(v),
                };
                (k.clone(), v)
            })
            .collect(),
        Value::Array(items) => items.iter().map(masked).collect(),
        other => other.clone(),
    }
}

/// The whole document, every field and no other.
fn assert_doc(got: &Value, expected: Value) {
    assert_eq!(masked(got), expected, "whole document");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mutation_emits_its_event_with_the_seed_payload() {
    let env = Env::new().await;
    let [user, supplier, product, order, other, post] = every_mutation(&env).await;
    env.publish_all(&env.relay(&kafka())).await;
    let got = env.consume(EVERY_MUTATION_EVENTS).await;

    let mut by_type: BTreeMap<String, Vec<(String, String, Value)>> = BTreeMap::new();
    for (topic, key, e) in &got {
        by_type
            .entry(e["event_type"].as_str().unwrap().to_owned())
            .or_default()
            .push((topic.clone(), key.clone(), e.clone()));
    }
    assert_eq!(
        by_type.len(),
        events::EventType::ALL.len(),
        "every event type: {:?}",
        by_type.keys().collect::<Vec<_>>()
    );
    for (event_type, events) in &by_type {
        for (topic, key, e) in events {
            let domain = event_type.split('.').next().unwrap();
            assert_eq!(topic, &format!("{}{domain}", env.prefix), "{event_type}");
            assert_eq!(
                e["entity_id"].as_str().unwrap(),
                key,
                "{event_type}: key = entity id"
            );
            let id = uuid::Uuid::parse_str(e["event_id"].as_str().unwrap()).unwrap();
            assert_eq!(id.get_version_num(), 4);
            assert!(chrono::DateTime::parse_from_rfc3339(e["timestamp"].as_str().unwrap()).is_ok());
            assert_eq!(
                e.as_object().unwrap().len(),
                5,
                "exactly the five envelope fields"
            );
            let t: events::EventType = event_type.parse().unwrap();
            if t.carries_full_document() {
                assert_eq!(
                    e["data"]["id"], e["entity_id"],
                    "{event_type}: full document with its id"
                );
                assert!(e["data"]["created_at"].is_string() && e["data"]["updated_at"].is_string());
                for internal in ["_id", "_outbox", "_pending", "_version"] {
                    assert!(
                        e["data"].get(internal).is_none(),
                        "{event_type} leaks {internal}"
                    );
                }
            }
            // The backend's documents are what the projections expect.
            let data = e["data"].to_string();
            let env_ = flatten::Envelope {
                event_type,
                event_id: e["event_id"].as_str().unwrap(),
                timestamp: e["timestamp"].as_str().unwrap(),
                entity_id: key,
                data: &data,
            };
            let ops = (flatten::domain(domain).unwrap().project)(&env_)
                .unwrap_or_else(|err| panic!("{event_type}: {err}"));
            assert!(!ops.is_empty());
        }
    }
    let data = |t: &str| by_type[t][0].2["data"].clone();
    // Whole documents, written here from the requests `every_mutation` made
    // (not from the backend's code); server-set times and numbers are
    // checked for their form, then masked.
    let user_doc = |bio: Value| {
        json!({"id": user, "contact_info": {"primary_email": "zoe@example.com", "phone": null},
               "profile": {"display_name": "Zoë 🌻", "avatar": null, "bio": bio},
               "deleted_at": null, "created_at": TIME, "updated_at": TIME})
    };
    assert_doc(&data("user.created"), user_doc(Value::Null));
    assert_doc(&data("user.updated"), user_doc(json!("Gärtnerin")));
    let supplier_doc = |business_info: Value| {
        json!({"id": supplier,
               "contact_info": {"primary_email": "sales@acme.example", "primary_phone": "+1-555-0100",
                   "contact_person_name": "Ana Lima", "contact_person_title": null,
                   "contact_person_email": null, "contact_person_phone": null},
               "company_info": {"legal_name": "ACME Trading LLC", "dba_name": "ACME",
                   "business_address": {"street": "1 Main St", "city": "Springfield", "state": "IL",
                       "zip_code": "62701", "country": "US"}},
               "business_info": business_info,
               "deleted_at": null, "created_at": TIME, "updated_at": TIME})
    };
    assert_doc(
        &data("supplier.created"),
        supplier_doc(
            json!({"support_email": "help@acme.example", "support_phone": null,
            "website": "https://acme.example", "social_urls": {"instagram": "https://instagram.com/acme"}}),
        ),
    );
    // A PATCH replaces the sub-documents it names, whole.
    assert_doc(
        &data("supplier.updated"),
        supplier_doc(json!({"support_email": null, "support_phone": null,
            "website": "https://acme.test", "social_urls": {}})),
    );
    let product_doc = |price: i64, status: &str, published: Value| {
        json!({"id": product, "supplier_id": supplier, "name": "Café Crème Mug", "description": "Stoneware",
               "category": "home_kitchen", "base_price_cents": price, "status": status,
               "metadata": {"base_sku": "MUG-350", "tags": ["mug"]},
               "stats": {"view_count": 0, "favorite_count": 0, "purchase_count": 0, "review_count": 0,
                   "average_rating": 0.0},
               "variants": {
                   "Blue": {"sku": "MUG-B", "price_cents": 1650, "quantity": 3, "attributes": []},
                   "Default": {"sku": "MUG-W", "price_cents": 1500, "quantity": 10,
                       "attributes": [{"name": "color", "value": "white"}]}},
               "published_at": published, "deleted_at": null, "created_at": TIME, "updated_at": TIME})
    };
    assert_doc(
        &data("product.created"),
        product_doc(1500, "draft", Value::Null),
    );
    assert_doc(
        &data("product.updated"),
        product_doc(1550, "draft", Value::Null),
    );
    for (t, status) in [
        ("product.published", "active"),
        ("product.out_of_stock", "out_of_stock"),
        ("product.restored", "active"),
        ("product.discontinued", "discontinued"),
    ] {
        assert_doc(&data(t), product_doc(1550, status, json!(TIME)));
    }
    let order_doc = |id: &str| {
        let line = |n: &str, variant: &str, quantity: i64, unit: i64| {
            json!({"item_id": n, "product_snapshot": {"product_id": product, "product_name": "Café Crème Mug",
                       "supplier_id": supplier, "variant_name": variant},
                   "quantity": quantity, "unit_price_cents": unit, "total_cents": quantity * unit})
        };
        json!({"id": id, "order_number": ORDER_NUMBER,
               "customer": {"user_id": user, "display_name": "Zoë 🌻", "email": "zoe@example.com"},
               "shipping_address": {"recipient_name": "Zoë Müller", "phone": null, "street": "Torstraße 1",
                   "city": "Berlin", "state": null, "zip_code": "10119", "country": "DE"},
               "items": [line("1", "Default", 2, 1500), line("2", "Blue", 1, 1650)],
               "status": "pending", "total_cents": 4650, "shipment": null, "cancelled_at": null,
               "created_at": TIME, "updated_at": TIME})
    };
    let placed: Vec<&Value> = by_type["order.created"].iter().map(|(_, _, e)| e).collect();
    assert_eq!(placed.len(), 2);
    for e in placed {
        assert_doc(&e["data"], order_doc(e["entity_id"].as_str().unwrap()));
    }
    assert_doc(
        &data("order.shipped"),
        json!({"order_number": ORDER_NUMBER, "carrier": "DHL", "tracking_number": "JD0146", "shipped_at": TIME}),
    );
    assert_eq!(by_type["order.shipped"][0].1, order);
    assert_doc(
        &data("order.cancelled"),
        json!({"order_number": ORDER_NUMBER}),
    );
    assert_eq!(by_type["order.cancelled"][0].1, other);
    let post_doc = |text: &str, published: Value| {
        json!({"id": post, "post_type": "link",
               "author": {"user_id": user, "display_name": "Zoë 🌻", "avatar": null, "author_type": "user"},
               "text_content": text, "media": [],
               "link_preview": {"url": "https://shop.example/mug", "title": null, "description": null, "image": null},
               "stats": {"view_count": 0, "like_count": 0, "comment_count": 0, "share_count": 0},
               "published_at": published, "deleted_at": null, "created_at": TIME, "updated_at": TIME})
    };
    assert_doc(&data("post.created"), post_doc("Look!", Value::Null));
    assert_doc(&data("post.updated"), post_doc("edited", Value::Null));
    assert_doc(&data("post.published"), post_doc("edited", json!(TIME)));
    assert_eq!(data("user.deleted"), json!({"user_id": user}));
    assert_eq!(data("supplier.deleted"), json!({"supplier_id": supplier}));
    assert_eq!(data("product.deleted"), json!({"product_id": product}));
    assert_eq!(data("post.deleted"), json!({"post_id": post}));
    // Per-entity order: the product's events in mutation order.
    let product_events: Vec<&str> = got
        .iter()
        .filter(|(_, k, _)| *k == product)
        .map(|(_, _, e)| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        product_events,
        [
            "product.created",
            "product.updated",
            "product.published",
            "product.out_of_stock",
            "product.restored",
            "product.discontinued",
            "product.deleted"
        ]
    );
    env.db.drop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutations_made_while_kafka_is_unreachable_are_published_once_it_is_back() {
    let env = Env::new().await;
    // A relay that cannot reach any broker runs the whole time.
    let down = env.relay("127.0.0.1:1");
    let user = env.user("a@example.com").await;
    env.edit_bio(&user, 199).await;
    let sweep = down.sweep().await;
    assert!(sweep.failed && sweep.published == 0);
    assert_eq!(
        env.pending_events().await,
        200,
        "every acknowledged mutation kept its event"
    );
    // The broker is reachable again.
    env.publish_all(&env.relay(&kafka())).await;
    let got = env.consume(200).await;
    let ids: std::collections::HashSet<&str> = got
        .iter()
        .map(|(_, _, e)| e["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 200, "each event exactly once");
    let bios: Vec<Value> = got
        .iter()
        .skip(1)
        .map(|(_, _, e)| e["data"]["profile"]["bio"].clone())
        .collect();
    assert_eq!(bios, bio_edits(199), "in mutation order");
    env.db.drop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_clearing_an_outbox_while_mutations_push_to_it_loses_no_event() {
    // The relay sweeps without pause while one document is edited 150
    // times: each clear races a mutation's push on the same outbox.
    let env = Env::new().await;
    let user = env.user("race@example.com").await;
    let relay = Arc::new(env.relay(&kafka()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sweeping = {
        let (relay, stop) = (relay.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                relay.sweep().await;
            }
        })
    };
    env.edit_bio(&user, 150).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    sweeping.await.unwrap();
    env.publish_all(&relay).await;
    // At least once: a clear that lost its race is redone, so an event may
    // be published twice (the host applies it once); none may be missing.
    let (got, _) = env.read(151).await;
    let mut seen = std::collections::HashSet::new();
    let bios: Vec<Value> = got
        .iter()
        .filter(|(_, _, e)| e["event_type"] == "user.updated")
        .filter(|(_, _, e)| seen.insert(e["event_id"].as_str().unwrap().to_owned()))
        .map(|(_, _, e)| e["data"]["profile"]["bio"].clone())
        .collect();
    assert_eq!(bios, bio_edits(150), "every edit's event, once, in order");
    env.db.drop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_written_before_a_crash_are_published_after_the_restart() {
    let env = Env::new().await;
    // The backend writes, then dies before its relay publishes anything.
    let [user, ..] = every_mutation(&env).await;
    assert_eq!(env.pending_events().await, EVERY_MUTATION_EVENTS);
    // After the restart, a new relay finds the pending events.
    let restarted = env.relay(&kafka());
    env.publish_all(&restarted).await;
    let got = env.consume(EVERY_MUTATION_EVENTS).await;
    let user_events: Vec<&str> = got
        .iter()
        .filter(|(_, k, _)| *k == user)
        .map(|(_, _, e)| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        user_events,
        ["user.created", "user.updated", "user.deleted"]
    );
    assert_eq!(env.pending_events().await, 0);
    env.db.drop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_a_4xx_json_error_and_change_nothing() {
    let env = Env::new().await;
    let user = env
        .ok(
            "POST",
            "/users",
            None,
            Some(json!({"email": "a@example.com", "display_name": "A"})),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let supplier = env
        .ok("POST", "/suppliers", None, Some(supplier_body()))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let draft = env
        .ok("POST", "/products", Some(&supplier), Some(product_body()))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let active = env
        .ok("POST", "/products", Some(&supplier), Some(product_body()))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    env.ok("POST", &format!("/products/{active}/publish"), None, None)
        .await;
    let shipped = env
        .ok("POST", "/orders", Some(&user), Some(order_body(&active)))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    env.ok(
        "POST",
        &format!("/orders/{shipped}/ship"),
        None,
        Some(json!({"carrier": "DHL", "tracking_number": "1"})),
    )
    .await;
    let deleted = env
        .ok("POST", "/products", Some(&supplier), Some(product_body()))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    env.ok("DELETE", &format!("/products/{deleted}"), None, None)
        .await;
    let nobody = mongodb::bson::oid::ObjectId::new().to_hex();
    let before = env.snapshot().await;

    let raw = |body: &'static str| {
        Request::builder()
            .method("POST")
            .uri("/users")
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap()
    };
    let cases: Vec<(&str, Request<Body>, StatusCode)> = vec![
        ("malformed JSON", raw("{\"email\": "), StatusCode::BAD_REQUEST),
        ("not JSON at all", raw("hello"), StatusCode::BAD_REQUEST),
        ("missing field", raw(r#"{"email": "b@example.com"}"#), StatusCode::UNPROCESSABLE_ENTITY),
        ("wrong type", raw(r#"{"email": 5, "display_name": "B"}"#), StatusCode::UNPROCESSABLE_ENTITY),
        ("unknown field", raw(r#"{"email": "b@example.com", "display_name": "B", "admin": true}"#), StatusCode::UNPROCESSABLE_ENTITY),
        ("not an email", raw(r#"{"email": "nope", "display_name": "B"}"#), StatusCode::UNPROCESSABLE_ENTITY),
        ("empty name", raw(r#"{"email": "b@example.com", "display_name": "  "}"#), StatusCode::UNPROCESSABLE_ENTITY),
        ("too long for the projection", Request::builder().method("POST").uri("/users").header("content-type", "application/json")
            .body(Body::from(json!({"email": "b@example.com", "display_name": "x".repeat(300)}).to_string())).unwrap(), StatusCode::UNPROCESSABLE_ENTITY),
        ("oversized body", Request::builder().method("POST").uri("/users").header("content-type", "application/json")
            .body(Body::from(json!({"email": "b@example.com", "display_name": "B", "bio": "x".repeat(300_000)}).to_string())).unwrap(), StatusCode::PAYLOAD_TOO_LARGE),
        ("no content type", Request::builder().method("POST").uri("/users").body(Body::from("{}")).unwrap(), StatusCode::BAD_REQUEST),
        ("unknown user", Request::builder().method("GET").uri(format!("/users/{nobody}")).body(Body::empty()).unwrap(), StatusCode::NOT_FOUND),
        ("malformed id", Request::builder().method("PATCH").uri("/users/42").header("content-type", "application/json").body(Body::from("{}")).unwrap(), StatusCode::NOT_FOUND),
        ("no such endpoint", Request::builder().method("GET").uri("/invoices").body(Body::empty()).unwrap(), StatusCode::NOT_FOUND),
        ("missing X-User-ID", Request::builder().method("POST").uri("/orders").header("content-type", "application/json").body(Body::from(order_body(&active).to_string())).unwrap(), StatusCode::UNAUTHORIZED),
        ("bad X-User-ID", Request::builder().method("POST").uri("/orders").header("x-user-id", "me").header("content-type", "application/json").body(Body::from(order_body(&active).to_string())).unwrap(), StatusCode::BAD_REQUEST),
        ("unknown customer", Request::builder().method("POST").uri("/orders").header("x-user-id", &nobody).header("content-type", "application/json").body(Body::from(order_body(&active).to_string())).unwrap(), StatusCode::UNPROCESSABLE_ENTITY),
        ("unknown product", Request::builder().method("POST").uri("/orders").header("x-user-id", &user).header("content-type", "application/json").body(Body::from(order_body(&nobody).to_string())).unwrap(), StatusCode::UNPROCESSABLE_ENTITY),
        ("draft product", Request::builder().method("POST").uri("/orders").header("x-user-id", &user).header("content-type", "application/json").body(Body::from(order_body(&draft).to_string())).unwrap(), StatusCode::CONFLICT),
        ("zero quantity", Request::builder().method("POST").uri("/orders").header("x-user-id", &user).header("content-type", "application/json")
            .body(Body::from(json!({"items": [{"product_id": active, "quantity": 0}], "shipping_address": order_body(&active)["shipping_address"]}).to_string())).unwrap(), StatusCode::UNPROCESSABLE_ENTITY),
        ("unknown supplier", Request::builder().method("POST").uri("/products").header("x-user-id", &nobody).header("content-type", "application/json").body(Body::from(product_body().to_string())).unwrap(), StatusCode::UNPROCESSABLE_ENTITY),
        ("negative price", Request::builder().method("PATCH").uri(format!("/products/{draft}")).header("content-type", "application/json").body(Body::from(r#"{"base_price_cents": -1}"#)).unwrap(), StatusCode::UNPROCESSABLE_ENTITY),
        ("publish a deleted product", Request::builder().method("POST").uri(format!("/products/{deleted}/publish")).body(Body::empty()).unwrap(), StatusCode::CONFLICT),
        ("publish an active product", Request::builder().method("POST").uri(format!("/products/{active}/publish")).body(Body::empty()).unwrap(), StatusCode::CONFLICT),
        ("restore a draft", Request::builder().method("POST").uri(format!("/products/{draft}/restore")).body(Body::empty()).unwrap(), StatusCode::CONFLICT),
        ("cancel a shipped order", Request::builder().method("POST").uri(format!("/orders/{shipped}/cancel")).body(Body::empty()).unwrap(), StatusCode::CONFLICT),
        ("ship a shipped order", Request::builder().method("POST").uri(format!("/orders/{shipped}/ship")).header("content-type", "application/json").body(Body::from(r#"{"carrier": "UPS", "tracking_number": "2"}"#)).unwrap(), StatusCode::CONFLICT),
        ("bad post type", Request::builder().method("POST").uri("/posts").header("x-user-id", &user).header("content-type", "application/json").body(Body::from(r#"{"post_type": "poll"}"#)).unwrap(), StatusCode::UNPROCESSABLE_ENTITY),
    ];
    for (what, req, expected) in cases {
        let (status, body) = env.raw(req).await;
        assert_eq!(status, expected, "{what}: {body}");
        assert!(
            body["error"].is_string() && body["message"].is_string(),
            "{what}: JSON error body, got {body}"
        );
        assert!(!body["message"].as_str().unwrap().is_empty());
    }
    assert_eq!(
        env.snapshot().await,
        before,
        "no bad request wrote anything or queued an event"
    );
    env.db.drop().await.unwrap();
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|i| json!(i)),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| json!(f)),
            ".{0,40}".prop_map(Value::String),
        ];
        let keys = prop_oneof![
            Just("email"),
            Just("display_name"),
            Just("bio"),
            Just("contact_info"),
            Just("company_info"),
            Just("legal_name"),
            Just("primary_email"),
            Just("name"),
            Just("category"),
            Just("base_price_cents"),
            Just("variants"),
            Just("price_cents"),
            Just("quantity"),
            Just("items"),
            Just("product_id"),
            Just("shipping_address"),
            Just("post_type"),
            Just("media"),
            Just("carrier"),
            Just("tracking_number"),
        ];
        leaf.prop_recursive(4, 32, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(keys.clone().prop_map(String::from), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

        #[test]
        fn no_request_body_makes_the_api_fail_with_a_5xx(body in arb_json(), endpoint in 0usize..9, user in prop::option::of(Just(()))) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let env = Env::new().await;
                let u = env.ok("POST", "/users", None, Some(json!({"email": "f@example.com", "display_name": "F"}))).await["id"].as_str().unwrap().to_owned();
                let s = env.ok("POST", "/suppliers", None, Some(supplier_body())).await["id"].as_str().unwrap().to_owned();
                let p = env.ok("POST", "/products", Some(&s), Some(product_body())).await["id"].as_str().unwrap().to_owned();
                let routes = [
                    ("POST", "/users".to_owned()), ("PATCH", format!("/users/{u}")), ("POST", "/suppliers".to_owned()),
                    ("PATCH", format!("/suppliers/{s}")), ("POST", "/products".to_owned()), ("PATCH", format!("/products/{p}")),
                    ("POST", "/orders".to_owned()), ("POST", "/posts".to_owned()), ("POST", format!("/orders/{p}/ship")),
                ];
                let (method, path) = &routes[endpoint];
                let actor = user.map(|_| if endpoint == 4 { s.clone() } else { u.clone() });
                let (status, resp) = env.call(method, path, actor.as_deref(), Some(body.clone())).await;
                env.db.drop().await.unwrap();
                prop_assert!(!status.is_server_error(), "{method} {path} {body} -> {status} {resp}");
                prop_assert!(resp["error"].is_string() || status.is_success(), "{status} {resp}");
                Ok(())
            })?;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_describes_exactly_the_routes_the_api_serves() {
    let env = Env::new().await;
    let (status, doc) = env.call("GET", "/openapi.json", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut documented = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            documented.push((method.to_uppercase(), path.clone(), op.clone()));
        }
    }
    let mut listed: Vec<(String, String)> = documented
        .iter()
        .map(|(m, p, _)| (m.clone(), p.clone()))
        .collect();
    listed.sort();
    let mut served = vec![
        ("POST", "/users"),
        ("GET", "/users/{id}"),
        ("PATCH", "/users/{id}"),
        ("DELETE", "/users/{id}"),
        ("POST", "/suppliers"),
        ("GET", "/suppliers/{id}"),
        ("PATCH", "/suppliers/{id}"),
        ("DELETE", "/suppliers/{id}"),
        ("POST", "/products"),
        ("GET", "/products/{id}"),
        ("PATCH", "/products/{id}"),
        ("DELETE", "/products/{id}"),
        ("POST", "/products/{id}/publish"),
        ("POST", "/products/{id}/discontinue"),
        ("POST", "/products/{id}/out-of-stock"),
        ("POST", "/products/{id}/restore"),
        ("POST", "/orders"),
        ("GET", "/orders/{id}"),
        ("POST", "/orders/{id}/cancel"),
        ("POST", "/orders/{id}/ship"),
        ("POST", "/posts"),
        ("GET", "/posts/{id}"),
        ("PATCH", "/posts/{id}"),
        ("DELETE", "/posts/{id}"),
        ("POST", "/posts/{id}/publish"),
    ]
    .into_iter()
    .map(|(m, p)| (m.to_owned(), p.to_owned()))
    .collect::<Vec<_>>();
    served.sort();
    assert_eq!(listed, served);

    let nobody = mongodb::bson::oid::ObjectId::new().to_hex();
    for (method, path, op) in &documented {
        let concrete = path.replace("{id}", &nobody);
        let body = op.get("requestBody").map(|_| json!({}));
        let (status, resp) = env.call(method, &concrete, Some(&nobody), body).await;
        // Every documented route exists (no fallback 404, no 405) ...
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert_ne!(resp["message"], "no such endpoint", "{method} {path}");
        // ... and answers with a status the document lists.
        let code = status.as_u16().to_string();
        assert!(
            op["responses"].get(&code).is_some(),
            "{method} {path} answered {code}, not documented: {resp}"
        );
    }
    // A documented required property is required: the schema matches validation.
    let register = &doc["components"]["schemas"]["RegisterUser"];
    let mut required: Vec<&str> = register["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    required.sort();
    assert_eq!(required, ["display_name", "email"]);
    env.db.drop().await.unwrap();
}
