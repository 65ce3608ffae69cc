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
use projector_backend::auth::{Auth, Role};
use projector_backend::relay::Relay;
use projector_backend::store::{Clock, StoreConfig};
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

/// The token key of the tests' backends.
const SECRET: &[u8] = b"the tests' token key, 32 bytes or more";
/// Logs in as admin.
const ADMIN_EMAIL: &str = "root@example.com";
const PASSWORD: &str = "correct horse battery";

/// A registered account and its token.
#[derive(Clone)]
struct Account {
    id: String,
    token: String,
}

fn auth() -> Arc<Auth> {
    Arc::new(Auth::new(
        SECRET,
        Duration::from_secs(3600),
        &[ADMIN_EMAIL.to_owned()],
    ))
}

impl Env {
    async fn new() -> Env {
        Env::with(StoreConfig {
            outbox_cap: 1000,
            ..StoreConfig::default()
        })
        .await
    }

    async fn with(config: StoreConfig) -> Env {
        let uri =
            std::env::var("MONGODB_URI").unwrap_or_else(|_| "mongodb://127.0.0.1:27017/".into());
        let client = mongodb::Client::with_uri_str(uri).await.unwrap();
        let db = client.database(&unique("backend_test_"));
        projector_backend::ensure_indexes(&db).await;
        let state = AppState::new(&db, auth(), config, Arc::new(Notify::new()));
        Env {
            db,
            state,
            prefix: format!("{}.", unique("bt")),
        }
    }

    /// Another backend instance on the same database, with its own clock.
    fn instance(&self, clock: Arc<dyn Clock>) -> Env {
        Env {
            db: self.db.clone(),
            state: AppState::new(
                &self.db,
                auth(),
                StoreConfig {
                    clock,
                    outbox_cap: 1000,
                },
                Arc::new(Notify::new()),
            ),
            prefix: self.prefix.clone(),
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
            owner: unique("relay-"),
            db: self.db.clone(),
            producer: config.create().unwrap(),
            topic_prefix: self.prefix.clone(),
            wake: self.state.wake.clone(),
            first_backoff: projector_backend::relay::FIRST_DOCUMENT_BACKOFF,
        }
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
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

    async fn ok(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Value {
        let (status, v) = self.call(method, path, token, body).await;
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

    /// A token for `email`'s account.
    async fn login(&self, email: &str) -> String {
        self.ok(
            "POST",
            "/auth/login",
            None,
            Some(json!({"email": email, "password": PASSWORD})),
        )
        .await["access_token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Registers a user named `name` and logs in.
    async fn user_named(&self, email: &str, name: &str) -> Account {
        let id = self
            .ok(
                "POST",
                "/users",
                None,
                Some(json!({"email": email, "password": PASSWORD, "display_name": name})),
            )
            .await["id"]
            .as_str()
            .unwrap()
            .to_owned();
        Account {
            id,
            token: self.login(email).await,
        }
    }

    /// Registers a user and logs in.
    async fn user(&self, email: &str) -> Account {
        self.user_named(email, "A").await
    }

    /// Registers a supplier (the body of [`supplier_body`] with `email`)
    /// and logs in.
    async fn supplier(&self, email: &str) -> Account {
        let mut body = supplier_body();
        body["contact_info"]["primary_email"] = json!(email);
        let id = self.ok("POST", "/suppliers", None, Some(body)).await["id"]
            .as_str()
            .unwrap()
            .to_owned();
        Account {
            id,
            token: self.login(email).await,
        }
    }

    /// A product of `supplier` ([`product_body`]), published if `publish`.
    async fn product(&self, supplier: &Account, publish: bool) -> String {
        let id = self
            .ok(
                "POST",
                "/products",
                Some(&supplier.token),
                Some(product_body()),
            )
            .await["id"]
            .as_str()
            .unwrap()
            .to_owned();
        if publish {
            self.ok(
                "POST",
                &format!("/products/{id}/publish"),
                Some(&supplier.token),
                None,
            )
            .await;
        }
        id
    }

    /// Sets the user's bio to "edit 0" … "edit n-1", one request each.
    async fn edit_bio(&self, user: &Account, n: usize) {
        for i in 0..n {
            self.ok(
                "PATCH",
                &format!("/users/{}", user.id),
                Some(&user.token),
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
        "password": PASSWORD,
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
    let zoe = env.user_named("zoe@example.com", "Zoë 🌻").await;
    let user = zoe.id.clone();
    let u = Some(zoe.token.as_str());
    env.ok(
        "PATCH",
        &format!("/users/{user}"),
        u,
        Some(json!({"bio": "Gärtnerin"})),
    )
    .await;
    let acme = env.supplier("sales@acme.example").await;
    let supplier = acme.id.clone();
    let s = Some(acme.token.as_str());
    env.ok(
        "PATCH",
        &format!("/suppliers/{supplier}"),
        s,
        Some(json!({"business_info": {"website": "https://acme.test"}})),
    )
    .await;
    let product = env.ok("POST", "/products", s, Some(product_body())).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    env.ok(
        "PATCH",
        &format!("/products/{product}"),
        s,
        Some(json!({"base_price_cents": 1550})),
    )
    .await;
    env.ok("POST", &format!("/products/{product}/publish"), s, None)
        .await;
    let order = env
        .ok("POST", "/orders", u, Some(order_body(&product)))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let other = env
        .ok("POST", "/orders", u, Some(order_body(&product)))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    env.ok(
        "POST",
        &format!("/orders/{order}/ship"),
        s,
        Some(json!({"carrier": "DHL", "tracking_number": "JD0146"})),
    )
    .await;
    env.ok("POST", &format!("/orders/{other}/cancel"), u, None)
        .await;
    env.ok(
        "POST",
        &format!("/products/{product}/out-of-stock"),
        s,
        None,
    )
    .await;
    env.ok("POST", &format!("/products/{product}/restore"), s, None)
        .await;
    env.ok("POST", &format!("/products/{product}/discontinue"), s, None)
        .await;
    let post = env.ok("POST", "/posts", u, Some(json!({"post_type": "link", "text_content": "Look!", "link_preview": {"url": "https://shop.example/mug"}}))).await["id"].as_str().unwrap().to_owned();
    env.ok(
        "PATCH",
        &format!("/posts/{post}"),
        u,
        Some(json!({"text_content": "edited"})),
    )
    .await;
    env.ok("POST", &format!("/posts/{post}/publish"), u, None)
        .await;
    env.ok("DELETE", &format!("/posts/{post}"), u, None).await;
    env.ok("DELETE", &format!("/products/{product}"), s, None)
        .await;
    env.ok("DELETE", &format!("/suppliers/{supplier}"), s, None)
        .await;
    env.ok("DELETE", &format!("/users/{user}"), u, None).await;
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
                for internal in [
                    "_id",
                    "_outbox",
                    "_pending",
                    "_version",
                    "_last_event_us",
                    "password",
                    "password_hash",
                ] {
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
    // A relay that cannot reach any broker runs the whole time. Its first
    // backoff is long enough that the immediate second sweep below falls
    // inside it on a loaded machine too.
    let mut down = env.relay("127.0.0.1:1");
    down.first_backoff = Duration::from_secs(5);
    let user = env.user("a@example.com").await;
    env.edit_bio(&user, 199).await;
    let sweep = down.sweep().await;
    assert!(sweep.failed && sweep.published == 0);
    assert_eq!(
        env.pending_events().await,
        200,
        "every acknowledged mutation kept its event"
    );
    // The failed document backs off on its own: an immediate second sweep
    // does not try it again.
    let again = down.sweep().await;
    assert!(!again.failed && again.published == 0, "{again:?}");
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
    let customer = env.user("a@example.com").await;
    let stranger = env.user("b@example.com").await;
    let acme = env.supplier("sales@acme.example").await;
    let rival = env.supplier("sales@rival.example").await;
    let draft = env.product(&acme, false).await;
    let active = env.product(&acme, true).await;
    let shipped = env
        .ok(
            "POST",
            "/orders",
            Some(&customer.token),
            Some(order_body(&active)),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    env.ok(
        "POST",
        &format!("/orders/{shipped}/ship"),
        Some(&acme.token),
        Some(json!({"carrier": "DHL", "tracking_number": "1"})),
    )
    .await;
    let pending = env
        .ok(
            "POST",
            "/orders",
            Some(&customer.token),
            Some(order_body(&active)),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let deleted = env.product(&acme, false).await;
    env.ok(
        "DELETE",
        &format!("/products/{deleted}"),
        Some(&acme.token),
        None,
    )
    .await;
    let post = env
        .ok(
            "POST",
            "/posts",
            Some(&customer.token),
            Some(json!({"post_type": "text", "text_content": "hi"})),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let nobody_id = mongodb::bson::oid::ObjectId::new();
    let nobody = nobody_id.to_hex();
    // Valid signatures for accounts that do not exist.
    let ghost_user = env.state.auth.issue(nobody_id, Role::User).0;
    let ghost_supplier = env.state.auth.issue(nobody_id, Role::Supplier).0;
    // Signed with another key, and expired.
    let forged = Auth::new(
        b"somebody else's key of 32 bytes or more",
        Duration::from_secs(3600),
        &[],
    )
    .issue(
        mongodb::bson::oid::ObjectId::parse_str(&customer.id).unwrap(),
        Role::Admin,
    )
    .0;
    let expired = {
        use jsonwebtoken::{EncodingKey, Header, encode};
        let now = jsonwebtoken::get_current_timestamp();
        encode(
            &Header::default(),
            &json!({"sub": customer.id, "role": "user", "iss": "projector-backend", "iat": now - 7200, "exp": now - 3600}),
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    };
    let before = env.snapshot().await;

    let raw = |body: &'static str| {
        Request::builder()
            .method("POST")
            .uri("/users")
            .header("content-type", "application/json")
            .body(Body::from(body))
            .unwrap()
    };
    let req = |method: &str, uri: &str, token: Option<&str>, body: Option<Value>| {
        let mut r = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            r = r.header("authorization", format!("Bearer {t}"));
        }
        match body {
            Some(b) => r
                .header("content-type", "application/json")
                .body(Body::from(b.to_string()))
                .unwrap(),
            None => r.body(Body::empty()).unwrap(),
        }
    };
    let (c, a, r, g) = (
        Some(customer.token.as_str()),
        Some(acme.token.as_str()),
        Some(rival.token.as_str()),
        Some(stranger.token.as_str()),
    );
    let ship = || Some(json!({"carrier": "UPS", "tracking_number": "2"}));
    let cases: Vec<(&str, Request<Body>, StatusCode)> = vec![
        (
            "malformed JSON",
            raw("{\"email\": "),
            StatusCode::BAD_REQUEST,
        ),
        ("not JSON at all", raw("hello"), StatusCode::BAD_REQUEST),
        (
            "missing field",
            raw(r#"{"email": "c@example.com"}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "no password",
            raw(r#"{"email": "c@example.com", "display_name": "C"}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "short password",
            raw(r#"{"email": "c@example.com", "password": "short", "display_name": "C"}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "wrong type",
            raw(r#"{"email": 5, "password": "long enough!", "display_name": "B"}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "unknown field",
            raw(
                r#"{"email": "c@example.com", "password": "long enough!", "display_name": "B", "admin": true}"#,
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "not an email",
            raw(r#"{"email": "nope", "password": "long enough!", "display_name": "B"}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "empty name",
            raw(r#"{"email": "c@example.com", "password": "long enough!", "display_name": "  "}"#),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "email taken (other case)",
            req(
                "POST",
                "/users",
                None,
                Some(json!({"email": "A@Example.com", "password": PASSWORD, "display_name": "A2"})),
            ),
            StatusCode::CONFLICT,
        ),
        (
            "email taken by a supplier",
            req(
                "POST",
                "/users",
                None,
                Some(
                    json!({"email": "sales@acme.example", "password": PASSWORD, "display_name": "A2"}),
                ),
            ),
            StatusCode::CONFLICT,
        ),
        (
            "too long for the projection",
            req(
                "POST",
                "/users",
                None,
                Some(
                    json!({"email": "c@example.com", "password": PASSWORD, "display_name": "x".repeat(300)}),
                ),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "oversized body",
            req(
                "POST",
                "/users",
                None,
                Some(
                    json!({"email": "c@example.com", "password": PASSWORD, "display_name": "B", "bio": "x".repeat(1_100_000)}),
                ),
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            "no content type",
            Request::builder()
                .method("POST")
                .uri("/users")
                .body(Body::from("{}"))
                .unwrap(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "wrong password",
            req(
                "POST",
                "/auth/login",
                None,
                Some(json!({"email": "a@example.com", "password": "not the password"})),
            ),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "unknown login",
            req(
                "POST",
                "/auth/login",
                None,
                Some(json!({"email": "zz@example.com", "password": PASSWORD})),
            ),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "unknown user",
            req("GET", &format!("/users/{nobody}"), None, None),
            StatusCode::NOT_FOUND,
        ),
        (
            "malformed id",
            req("PATCH", "/users/42", c, Some(json!({}))),
            StatusCode::NOT_FOUND,
        ),
        (
            "no such endpoint",
            req("GET", "/invoices", None, None),
            StatusCode::NOT_FOUND,
        ),
        (
            "no token",
            req("POST", "/orders", None, Some(order_body(&active))),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "not a bearer token",
            Request::builder()
                .method("POST")
                .uri("/orders")
                .header("authorization", "Basic YTpi")
                .header("content-type", "application/json")
                .body(Body::from(order_body(&active).to_string()))
                .unwrap(),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "garbage token",
            req("POST", "/orders", Some("me"), Some(order_body(&active))),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "forged token",
            req(
                "DELETE",
                &format!("/users/{}", stranger.id),
                Some(&forged),
                None,
            ),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "expired token",
            req(
                "PATCH",
                &format!("/users/{}", customer.id),
                Some(&expired),
                Some(json!({"bio": "x"})),
            ),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "edit somebody else",
            req(
                "PATCH",
                &format!("/users/{}", customer.id),
                g,
                Some(json!({"bio": "x"})),
            ),
            StatusCode::FORBIDDEN,
        ),
        (
            "delete somebody else",
            req("DELETE", &format!("/users/{}", customer.id), g, None),
            StatusCode::FORBIDDEN,
        ),
        (
            "edit another supplier",
            req(
                "PATCH",
                &format!("/suppliers/{}", acme.id),
                r,
                Some(json!({"business_info": {}})),
            ),
            StatusCode::FORBIDDEN,
        ),
        (
            "edit another's product",
            req(
                "PATCH",
                &format!("/products/{draft}"),
                r,
                Some(json!({"base_price_cents": 1})),
            ),
            StatusCode::FORBIDDEN,
        ),
        (
            "publish another's product",
            req("POST", &format!("/products/{draft}/publish"), r, None),
            StatusCode::FORBIDDEN,
        ),
        (
            "delete another's product",
            req("DELETE", &format!("/products/{draft}"), r, None),
            StatusCode::FORBIDDEN,
        ),
        (
            "a user creates a product",
            req("POST", "/products", c, Some(product_body())),
            StatusCode::FORBIDDEN,
        ),
        (
            "a supplier places an order",
            req("POST", "/orders", a, Some(order_body(&active))),
            StatusCode::FORBIDDEN,
        ),
        (
            "a supplier posts",
            req("POST", "/posts", a, Some(json!({"post_type": "text"}))),
            StatusCode::FORBIDDEN,
        ),
        (
            "cancel somebody else's order",
            req("POST", &format!("/orders/{pending}/cancel"), g, None),
            StatusCode::FORBIDDEN,
        ),
        (
            "the supplier cancels",
            req("POST", &format!("/orders/{pending}/cancel"), a, None),
            StatusCode::FORBIDDEN,
        ),
        (
            "the customer ships",
            req("POST", &format!("/orders/{pending}/ship"), c, ship()),
            StatusCode::FORBIDDEN,
        ),
        (
            "another supplier ships",
            req("POST", &format!("/orders/{pending}/ship"), r, ship()),
            StatusCode::FORBIDDEN,
        ),
        (
            "read somebody else's order",
            req("GET", &format!("/orders/{pending}"), g, None),
            StatusCode::FORBIDDEN,
        ),
        (
            "list somebody else's orders",
            req(
                "GET",
                &format!("/orders?customer_id={}", customer.id),
                g,
                None,
            ),
            StatusCode::FORBIDDEN,
        ),
        (
            "edit somebody else's post",
            req(
                "PATCH",
                &format!("/posts/{post}"),
                g,
                Some(json!({"text_content": "x"})),
            ),
            StatusCode::FORBIDDEN,
        ),
        (
            "publish somebody else's post",
            req("POST", &format!("/posts/{post}/publish"), g, None),
            StatusCode::FORBIDDEN,
        ),
        (
            "unknown customer",
            req(
                "POST",
                "/orders",
                Some(&ghost_user),
                Some(order_body(&active)),
            ),
            StatusCode::NOT_FOUND,
        ),
        (
            "unknown product",
            req("POST", "/orders", c, Some(order_body(&nobody))),
            StatusCode::NOT_FOUND,
        ),
        (
            "draft product",
            req("POST", "/orders", c, Some(order_body(&draft))),
            StatusCode::CONFLICT,
        ),
        (
            "zero quantity",
            req(
                "POST",
                "/orders",
                c,
                Some(
                    json!({"items": [{"product_id": active, "quantity": 0}], "shipping_address": order_body(&active)["shipping_address"]}),
                ),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "unknown supplier",
            req(
                "POST",
                "/products",
                Some(&ghost_supplier),
                Some(product_body()),
            ),
            StatusCode::NOT_FOUND,
        ),
        (
            "negative price",
            req(
                "PATCH",
                &format!("/products/{draft}"),
                a,
                Some(json!({"base_price_cents": -1})),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "publish a deleted product",
            req("POST", &format!("/products/{deleted}/publish"), a, None),
            StatusCode::CONFLICT,
        ),
        (
            "publish an active product",
            req("POST", &format!("/products/{active}/publish"), a, None),
            StatusCode::CONFLICT,
        ),
        (
            "restore a draft",
            req("POST", &format!("/products/{draft}/restore"), a, None),
            StatusCode::CONFLICT,
        ),
        (
            "cancel a shipped order",
            req("POST", &format!("/orders/{shipped}/cancel"), c, None),
            StatusCode::CONFLICT,
        ),
        (
            "ship a shipped order",
            req("POST", &format!("/orders/{shipped}/ship"), a, ship()),
            StatusCode::CONFLICT,
        ),
        (
            "bad post type",
            req("POST", "/posts", c, Some(json!({"post_type": "poll"}))),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "a page too large",
            req("GET", "/posts?limit=1000", None, None),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "a cursor never given",
            req("GET", "/posts?after=zz", None, None),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "a bad status filter",
            req("GET", "/products?status=sold", None, None),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "unknown variant",
            req(
                "POST",
                "/orders",
                c,
                Some(
                    json!({"items": [{"product_id": active, "variant": "Purple", "quantity": 1}], "shipping_address": order_body(&active)["shipping_address"]}),
                ),
            ),
            StatusCode::NOT_FOUND,
        ),
        (
            "blank city",
            req(
                "POST",
                "/orders",
                c,
                Some(
                    json!({"items": [{"product_id": active, "quantity": 1}], "shipping_address": {"recipient_name": "Z", "street": "S", "city": " \t", "zip_code": "1", "country": "DE"}}),
                ),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "a deleted product",
            req("GET", &format!("/products/{deleted}"), None, None),
            StatusCode::NOT_FOUND,
        ),
        (
            "a blank variant name",
            req(
                "POST",
                "/products",
                a,
                Some(
                    json!({"name": "N", "category": "c", "base_price_cents": 1, "variants": {" ": {"price_cents": 1, "quantity": 1}}}),
                ),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "a bad Idempotency-Key",
            Request::builder()
                .method("POST")
                .uri("/posts")
                .header("authorization", format!("Bearer {}", customer.token))
                .header("idempotency-key", "")
                .header("content-type", "application/json")
                .body(Body::from(r#"{"post_type": "text"}"#))
                .unwrap(),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
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
                let user_account = env.user("f@example.com").await;
                let supplier_account = env.supplier("s@example.com").await;
                let (u, s) = (user_account.id.clone(), supplier_account.id.clone());
                let p = env.product(&supplier_account, false).await;
                let routes = [
                    ("POST", "/users".to_owned()), ("PATCH", format!("/users/{u}")), ("POST", "/suppliers".to_owned()),
                    ("PATCH", format!("/suppliers/{s}")), ("POST", "/products".to_owned()), ("PATCH", format!("/products/{p}")),
                    ("POST", "/orders".to_owned()), ("POST", "/posts".to_owned()), ("POST", format!("/orders/{p}/ship")),
                ];
                let (method, path) = &routes[endpoint];
                let actor = user.map(|_| if endpoint == 4 || endpoint == 5 || endpoint == 8 { supplier_account.token.clone() } else { user_account.token.clone() });
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
        ("POST", "/auth/login"),
        ("GET", "/users"),
        ("GET", "/products"),
        ("GET", "/orders"),
        ("GET", "/posts"),
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

    let nobody_id = mongodb::bson::oid::ObjectId::new();
    let nobody = nobody_id.to_hex();
    let token = env.state.auth.issue(nobody_id, Role::User).0;
    for (method, path, op) in &documented {
        let concrete = path.replace("{id}", &nobody);
        let body = op.get("requestBody").map(|_| json!({}));
        let secured = op.get("security").is_some();
        // Without a token a secured route answers 401, a documented status.
        if secured {
            let (status, resp) = env.call(method, &concrete, None, body.clone()).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {path}: {resp}");
            assert!(
                op["responses"].get("401").is_some(),
                "{method} {path} documents its 401"
            );
        }
        let (status, resp) = env.call(method, &concrete, Some(&token), body).await;
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
    assert_eq!(required, ["display_name", "email", "password"]);
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer",
        "the token scheme is declared"
    );
    env.db.drop().await.unwrap();
}

/// A clock that a test sets.
struct ManualClock(std::sync::Mutex<chrono::DateTime<chrono::Utc>>);

impl ManualClock {
    fn at(t: chrono::DateTime<chrono::Utc>) -> Arc<ManualClock> {
        Arc::new(ManualClock(std::sync::Mutex::new(t)))
    }

    fn set(&self, t: chrono::DateTime<chrono::Utc>) {
        *self.0.lock().unwrap() = t;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> chrono::DateTime<chrono::Utc> {
        *self.0.lock().unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entitys_events_keep_their_order_when_the_instances_clocks_disagree() {
    // Two backend instances write one user in turn; B's clock is an hour
    // behind A's and both step backwards as the test goes.
    let env = Env::new().await;
    let t0 = chrono::Utc::now();
    let (clock_a, clock_b) = (
        ManualClock::at(t0),
        ManualClock::at(t0 - chrono::Duration::hours(1)),
    );
    let a = env.instance(clock_a.clone());
    let b = env.instance(clock_b.clone());
    let user = a.user("skew@example.com").await;
    let n = 12;
    for i in 0..n {
        let (instance, clock) = if i % 2 == 0 {
            (&b, &clock_b)
        } else {
            (&a, &clock_a)
        };
        clock.set(clock.now() - chrono::Duration::seconds(i as i64));
        instance
            .ok(
                "PATCH",
                &format!("/users/{}", user.id),
                Some(&user.token),
                Some(json!({"bio": format!("edit {i}")})),
            )
            .await;
    }
    env.publish_all(&env.relay(&kafka())).await;
    let got = env.consume(n + 1).await;
    // The projection keeps, per entity, the state of the event with the
    // greatest timestamp (the seed's "newer timestamp wins"): applying the
    // events in any order must end with the last edit.
    let mut events: Vec<&Value> = got.iter().map(|(_, _, e)| e).collect();
    let stamps: Vec<&str> = events
        .iter()
        .map(|e| e["timestamp"].as_str().unwrap())
        .collect();
    assert!(
        stamps.windows(2).all(|w| w[0] < w[1]),
        "timestamps grow in write order: {stamps:?}"
    );
    events.reverse();
    let newest = events
        .iter()
        .max_by_key(|e| {
            chrono::DateTime::parse_from_rfc3339(e["timestamp"].as_str().unwrap()).unwrap()
        })
        .unwrap();
    assert_eq!(newest["data"]["profile"]["bio"], format!("edit {}", n - 1));
    // updated_at is the event's time.
    assert_eq!(newest["data"]["updated_at"], newest["timestamp"]);
    env.db.drop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_own_what_they_made_and_admins_moderate() {
    let env = Env::new().await;
    let ana = env.user("ana@example.com").await;
    let root = env.user(ADMIN_EMAIL).await;
    let acme = env.supplier("ops@acme.example").await;
    let (status, login) = env
        .call(
            "POST",
            "/auth/login",
            None,
            Some(json!({"email": "ANA@example.com ", "password": PASSWORD})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{login}");
    assert_eq!(login["role"], "user");
    assert_eq!(login["token_type"], "Bearer");
    assert_eq!(login["account_id"], ana.id.as_str());
    let (_, admin) = env
        .call(
            "POST",
            "/auth/login",
            None,
            Some(json!({"email": ADMIN_EMAIL, "password": PASSWORD})),
        )
        .await;
    assert_eq!(admin["role"], "admin");
    let (_, supplier) = env
        .call(
            "POST",
            "/auth/login",
            None,
            Some(json!({"email": "ops@acme.example", "password": PASSWORD})),
        )
        .await;
    assert_eq!(supplier["role"], "supplier");

    // A 401 says how to authenticate.
    let resp = app(env.state.clone())
        .oneshot(
            Request::builder()
                .method("DELETE")
                .uri(format!("/users/{}", ana.id))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(resp.headers()["www-authenticate"], "Bearer");

    // The supplier ships, the admin may too; the customer cancels.
    let product = env.product(&acme, true).await;
    let order = |token: &str| {
        let token = token.to_owned();
        let env = &env;
        let product = product.clone();
        async move {
            env.ok("POST", "/orders", Some(&token), Some(order_body(&product)))
                .await["id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let first = order(&ana.token).await;
    env.ok(
        "POST",
        &format!("/orders/{first}/ship"),
        Some(&acme.token),
        Some(json!({"carrier": "DHL", "tracking_number": "1"})),
    )
    .await;
    let second = order(&ana.token).await;
    env.ok(
        "POST",
        &format!("/orders/{second}/ship"),
        Some(&root.token),
        Some(json!({"carrier": "DHL", "tracking_number": "2"})),
    )
    .await;
    let third = order(&ana.token).await;
    let (status, _) = env
        .call(
            "POST",
            &format!("/orders/{third}/cancel"),
            Some(&root.token),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "only the customer cancels");
    env.ok(
        "POST",
        &format!("/orders/{third}/cancel"),
        Some(&ana.token),
        None,
    )
    .await;
    // The supplier of its items reads the order; the admin edits anyone.
    env.ok("GET", &format!("/orders/{first}"), Some(&acme.token), None)
        .await;
    env.ok(
        "PATCH",
        &format!("/users/{}", ana.id),
        Some(&root.token),
        Some(json!({"bio": "moderated"})),
    )
    .await;
    env.ok(
        "PATCH",
        &format!("/products/{product}"),
        Some(&root.token),
        Some(json!({"name": "Renamed"})),
    )
    .await;

    // An email change moves the login; the old address is free again.
    env.ok(
        "PATCH",
        &format!("/users/{}", ana.id),
        Some(&ana.token),
        Some(json!({"email": "ana@new.example"})),
    )
    .await;
    let (status, _) = env
        .call(
            "POST",
            "/auth/login",
            None,
            Some(json!({"email": "ana@example.com", "password": PASSWORD})),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    env.login("ana@new.example").await;
    let reuse = env.user("ana@example.com").await;
    assert_ne!(reuse.id, ana.id);
    // A deleted account cannot log in; its email can be registered again.
    env.ok(
        "DELETE",
        &format!("/users/{}", reuse.id),
        Some(&reuse.token),
        None,
    )
    .await;
    let (status, _) = env
        .call(
            "POST",
            "/auth/login",
            None,
            Some(json!({"email": "ana@example.com", "password": PASSWORD})),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // No password and no hash in any document or event.
    let n = env.pending_events().await;
    env.publish_all(&env.relay(&kafka())).await;
    let documents = format!("{:?}", env.snapshot().await);
    assert!(!documents.contains("argon2") && !documents.contains(PASSWORD));
    for (_, _, e) in &env.consume(n).await {
        let text = e.to_string();
        assert!(
            !text.contains("argon2") && !text.contains(PASSWORD) && !text.contains("password"),
            "{text}"
        );
    }
    env.db.drop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_page_through_every_item_once_newest_first() {
    let env = Env::new().await;
    let ana = env.user("ana@example.com").await;
    let bob = env.user("bob@example.com").await;
    let acme = env.supplier("ops@acme.example").await;
    let rival = env.supplier("ops@rival.example").await;
    let product = env.product(&acme, true).await;
    let mut ana_orders = Vec::new();
    for _ in 0..5 {
        ana_orders.push(
            env.ok(
                "POST",
                "/orders",
                Some(&ana.token),
                Some(order_body(&product)),
            )
            .await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    env.ok(
        "POST",
        "/orders",
        Some(&bob.token),
        Some(order_body(&product)),
    )
    .await;
    // Pages of 2: 2 + 2 + 1, newest first, each order once.
    let pages = |path: String, token: Option<String>| {
        let env = &env;
        async move {
            let mut ids = Vec::new();
            let mut next: Option<String> = None;
            let mut count = 0;
            loop {
                let sep = if path.contains('?') { '&' } else { '?' };
                let url = match &next {
                    Some(c) => format!("{path}{sep}limit=2&after={c}"),
                    None => format!("{path}{sep}limit=2"),
                };
                let page = env.ok("GET", &url, token.as_deref(), None).await;
                count += 1;
                for item in page["items"].as_array().unwrap() {
                    ids.push(item["id"].as_str().unwrap().to_owned());
                }
                match page["next"].as_str() {
                    Some(c) => next = Some(c.to_owned()),
                    None => return (ids, count),
                }
                assert!(count < 20, "paging does not end");
            }
        }
    };
    let (ids, count) = pages("/orders".into(), Some(ana.token.clone())).await;
    let mut expected = ana_orders.clone();
    expected.reverse();
    assert_eq!(ids, expected, "ana's orders, newest first, once each");
    assert_eq!(count, 3);
    let root = env.user(ADMIN_EMAIL).await;
    let (by_admin, _) = pages(
        format!("/orders?customer_id={}", ana.id),
        Some(root.token.clone()),
    )
    .await;
    assert_eq!(by_admin, expected);
    // Orders placed between two pages neither repeat nor shift the pages:
    // the walk still yields exactly the orders there were when it began.
    let first = env
        .ok("GET", "/orders?limit=2", Some(&ana.token), None)
        .await;
    let mut walked: Vec<String> = first["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["id"].as_str().unwrap().to_owned())
        .collect();
    let mut next = first["next"].as_str().map(str::to_owned);
    while let Some(cursor) = next {
        env.ok(
            "POST",
            "/orders",
            Some(&ana.token),
            Some(order_body(&product)),
        )
        .await;
        let page = env
            .ok(
                "GET",
                &format!("/orders?limit=2&after={cursor}"),
                Some(&ana.token),
                None,
            )
            .await;
        walked.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|o| o["id"].as_str().unwrap().to_owned()),
        );
        next = page["next"].as_str().map(str::to_owned);
    }
    assert_eq!(walked, expected, "stable while orders are placed");

    // A supplier's products by status.
    let drafts: Vec<String> = [
        env.product(&acme, false).await,
        env.product(&acme, false).await,
    ]
    .into();
    env.product(&rival, false).await;
    let (got, _) = pages(
        format!("/products?supplier_id={}&status=draft", acme.id),
        None,
    )
    .await;
    assert_eq!(got, drafts.iter().rev().cloned().collect::<Vec<_>>());
    let (active, _) = pages(
        format!("/products?supplier_id={}&status=active", acme.id),
        None,
    )
    .await;
    assert_eq!(active, std::slice::from_ref(&product));

    // The feed: published posts, newest published first (not newest
    // created), deleted and unpublished ones left out.
    let mut posts = Vec::new();
    for i in 0..4 {
        posts.push(
            env.ok(
                "POST",
                "/posts",
                Some(&ana.token),
                Some(json!({"post_type": "text", "text_content": format!("p{i}")})),
            )
            .await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    for p in [&posts[2], &posts[0], &posts[3], &posts[1]] {
        env.ok(
            "POST",
            &format!("/posts/{p}/publish"),
            Some(&ana.token),
            None,
        )
        .await;
    }
    let draft_post = env
        .ok(
            "POST",
            "/posts",
            Some(&bob.token),
            Some(json!({"post_type": "text"})),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    env.ok(
        "DELETE",
        &format!("/posts/{}", posts[3]),
        Some(&ana.token),
        None,
    )
    .await;
    let (feed, _) = pages("/posts".into(), None).await;
    assert_eq!(feed, [posts[1].clone(), posts[0].clone(), posts[2].clone()]);
    assert!(!feed.contains(&draft_post));

    // A user by email.
    let found = env
        .ok(
            "GET",
            "/users?email=BOB@example.com",
            Some(&ana.token),
            None,
        )
        .await;
    assert_eq!(found["items"].as_array().unwrap().len(), 1);
    assert_eq!(found["items"][0]["id"], bob.id.as_str());
    let none = env
        .ok(
            "GET",
            "/users?email=nobody@example.com",
            Some(&ana.token),
            None,
        )
        .await;
    assert_eq!(none["items"], json!([]));
    env.db.drop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_create_answers_the_first_response_and_emits_nothing_new() {
    let env = Env::new().await;
    let keyed = |path: &str, key: &str, token: Option<&str>, body: &Value| {
        let mut r = Request::builder()
            .method("POST")
            .uri(path)
            .header("idempotency-key", key)
            .header("content-type", "application/json");
        if let Some(t) = token {
            r = r.header("authorization", format!("Bearer {t}"));
        }
        r.body(Body::from(body.to_string())).unwrap()
    };
    let register = json!({"email": "idem@example.com", "password": PASSWORD, "display_name": "I"});
    let (first_status, first) = env.raw(keyed("/users", "k-1", None, &register)).await;
    assert_eq!(first_status, StatusCode::CREATED, "{first}");
    let (again_status, again) = env.raw(keyed("/users", "k-1", None, &register)).await;
    assert_eq!(
        (again_status, &again),
        (StatusCode::CREATED, &first),
        "the first response again"
    );
    // Without the key the same body is a new request: the email is taken.
    let (status, _) = env
        .call("POST", "/users", None, Some(register.clone()))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    // The same key with another body is refused.
    let mut other = register.clone();
    other["display_name"] = json!("J");
    let (status, body) = env.raw(keyed("/users", "k-1", None, &other)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    let user = Account {
        id: first["id"].as_str().unwrap().to_owned(),
        token: env.login("idem@example.com").await,
    };
    let acme = env.supplier("ops@acme.example").await;
    let product = env.product(&acme, true).await;
    let order = order_body(&product);
    let (s1, o1) = env
        .raw(keyed("/orders", "order-1", Some(&user.token), &order))
        .await;
    let (s2, o2) = env
        .raw(keyed("/orders", "order-1", Some(&user.token), &order))
        .await;
    assert_eq!((s1, s2), (StatusCode::CREATED, StatusCode::CREATED));
    assert_eq!(o1, o2);
    // A failed request releases its key: the retry runs again.
    let bad = json!({"items": [], "shipping_address": order["shipping_address"]});
    let (s, _) = env
        .raw(keyed("/orders", "order-2", Some(&user.token), &bad))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let (s, _) = env
        .raw(keyed("/orders", "order-2", Some(&user.token), &bad))
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);

    // A backend that died after writing, before storing the answer: the
    // key stays "started"; once stale, a retry finds the entity written
    // under the key's reserved id and answers it, emitting nothing.
    let (s, o3) = env
        .raw(keyed("/orders", "order-3", Some(&user.token), &order))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let keys = env.db.collection::<Document>("idempotency");
    keys.update_many(
        doc! {"state": "done"},
        doc! {"$set": {"state": "started", "started_at": mongodb::bson::DateTime::from_millis(0)}, "$unset": {"body": "", "status": ""}},
    )
    .await
    .unwrap();
    let (s, o4) = env
        .raw(keyed("/orders", "order-3", Some(&user.token), &order))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(o4["id"], o3["id"]);

    // One user, one supplier, one product, two orders: five creates and one
    // publish were emitted, no more.
    env.publish_all(&env.relay(&kafka())).await;
    let got = env.consume(6).await;
    let created: Vec<&str> = got
        .iter()
        .map(|(_, _, e)| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        created.iter().filter(|t| **t == "order.created").count(),
        2,
        "{created:?}"
    );
    assert_eq!(
        created.iter().filter(|t| **t == "user.created").count(),
        1,
        "{created:?}"
    );
    env.db.drop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_outage_past_the_outbox_cap_answers_503_and_loses_no_acknowledged_write() {
    let env = Env::with(StoreConfig {
        outbox_cap: 5,
        ..StoreConfig::default()
    })
    .await;
    // Kafka is unreachable: the relay keeps failing while writes go on.
    let down = env.relay("127.0.0.1:1");
    let user = env.user("cap@example.com").await;
    let mut acknowledged = Vec::new();
    let mut refused = 0;
    for i in 0..8 {
        down.sweep().await;
        let before = env.snapshot().await;
        let resp = app(env.state.clone())
            .oneshot(
                Request::builder()
                    .method("PATCH")
                    .uri(format!("/users/{}", user.id))
                    .header("authorization", format!("Bearer {}", user.token))
                    .header("content-type", "application/json")
                    .body(Body::from(json!({"bio": format!("edit {i}")}).to_string()))
                    .unwrap(),
            )
            .await
            .unwrap();
        if resp.status().is_success() {
            acknowledged.push(json!(format!("edit {i}")));
            continue;
        }
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        let retry_after: u64 = resp.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(retry_after > 0);
        assert_eq!(
            env.snapshot().await,
            before,
            "a refused write writes nothing"
        );
        refused += 1;
    }
    // 1 created + 4 updates fill the cap; the other 4 are refused.
    assert_eq!((acknowledged.len(), refused), (4, 4));
    // Kafka is back: every acknowledged write is published, in order.
    env.publish_all(&env.relay(&kafka())).await;
    let got = env.consume(5).await;
    let bios: Vec<Value> = got
        .iter()
        .filter(|(_, _, e)| e["event_type"] == "user.updated")
        .map(|(_, _, e)| e["data"]["profile"]["bio"].clone())
        .collect();
    assert_eq!(bios, acknowledged);
    // And writes go through again.
    env.edit_bio(&user, 1).await;
    env.db.drop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_outbox_entry_is_quarantined_and_the_rest_is_published() {
    let env = Env::new().await;
    let user = env.user("q@example.com").await;
    // A corrupt entry between the created event and an update.
    env.db
        .collection::<Document>("users")
        .update_one(
            doc! {"_id": mongodb::bson::oid::ObjectId::parse_str(&user.id).unwrap()},
            doc! {"$push": {"_outbox": {"event_id": "broken", "topic": "users"}}, "$inc": {"_version": 1i64}},
        )
        .await
        .unwrap();
    env.edit_bio(&user, 1).await;
    env.publish_all(&env.relay(&kafka())).await;
    let got = env.consume(2).await;
    let types: Vec<&str> = got
        .iter()
        .map(|(_, _, e)| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["user.created", "user.updated"]);
    let quarantined: Vec<Document> = {
        use futures_util::TryStreamExt as _;
        env.db
            .collection::<Document>("relay_quarantine")
            .find(doc! {})
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap()
    };
    assert_eq!(quarantined.len(), 1);
    assert!(
        quarantined[0]
            .get_str("reason")
            .unwrap()
            .contains("no text field"),
        "{quarantined:?}"
    );
    let health = env.ok("GET", "/health", None, None).await;
    assert_eq!(health["relay_quarantined"], 1);
    env.db.drop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_publish_every_event_while_documents_change() {
    let env = Env::new().await;
    let users = [
        env.user("r1@example.com").await,
        env.user("r2@example.com").await,
        env.user("r3@example.com").await,
    ];
    let relays = [Arc::new(env.relay(&kafka())), Arc::new(env.relay(&kafka()))];
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sweepers: Vec<_> = relays
        .iter()
        .map(|relay| {
            let (relay, stop) = (relay.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    relay.sweep().await;
                }
            })
        })
        .collect();
    for u in &users {
        env.edit_bio(u, 30).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for s in sweepers {
        s.await.unwrap();
    }
    env.publish_all(&relays[0]).await;
    let (got, _) = env.read(93).await;
    for u in &users {
        let mut seen = std::collections::HashSet::new();
        let bios: Vec<Value> = got
            .iter()
            .filter(|(_, k, e)| *k == u.id && e["event_type"] == "user.updated")
            .filter(|(_, _, e)| seen.insert(e["event_id"].as_str().unwrap().to_owned()))
            .map(|(_, _, e)| e["data"]["profile"]["bio"].clone())
            .collect();
        assert_eq!(bios, bio_edits(30), "every edit of {} once, in order", u.id);
    }
    assert_eq!(env.pending_events().await, 0);
    env.db.drop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mutation_needs_a_token_and_its_owner_and_then_emits_exactly_one_event() {
    let env = Env::new().await;
    let ana = env.user("ana@example.com").await;
    let bob = env.user("bob@example.com").await;
    let acme = env.supplier("ops@acme.example").await;
    let rival = env.supplier("ops@rival.example").await;
    let sold = env.product(&acme, true).await;
    let order = |n: u32| {
        let (env, ana, sold) = (&env, &ana, &sold);
        async move {
            let _ = n;
            env.ok("POST", "/orders", Some(&ana.token), Some(order_body(sold)))
                .await["id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let (to_cancel, to_ship) = (order(1).await, order(2).await);
    let post = env
        .ok(
            "POST",
            "/posts",
            Some(&ana.token),
            Some(json!({"post_type": "text", "text_content": "hi"})),
        )
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let product = env.product(&acme, false).await;
    let ship = json!({"carrier": "DHL", "tracking_number": "1"});
    // (method, path, body, owner, somebody else), in an order that keeps
    // every step valid for its owner; creates check the role instead.
    let (a, b, s, r) = (&ana, &bob, &acme, &rival);
    let steps: Vec<(&str, String, Option<Value>, &Account, &Account)> = vec![
        (
            "PATCH",
            format!("/users/{}", a.id),
            Some(json!({"bio": "x"})),
            a,
            b,
        ),
        (
            "PATCH",
            format!("/suppliers/{}", s.id),
            Some(json!({"business_info": {}})),
            s,
            r,
        ),
        ("POST", "/products".into(), Some(product_body()), s, a),
        (
            "PATCH",
            format!("/products/{product}"),
            Some(json!({"name": "New"})),
            s,
            r,
        ),
        ("POST", format!("/products/{product}/publish"), None, s, r),
        (
            "POST",
            format!("/products/{product}/out-of-stock"),
            None,
            s,
            r,
        ),
        ("POST", format!("/products/{product}/restore"), None, s, r),
        (
            "POST",
            format!("/products/{product}/discontinue"),
            None,
            s,
            r,
        ),
        ("DELETE", format!("/products/{product}"), None, s, r),
        ("POST", "/orders".into(), Some(order_body(&sold)), a, s),
        ("POST", format!("/orders/{to_cancel}/cancel"), None, a, b),
        (
            "POST",
            format!("/orders/{to_ship}/ship"),
            Some(ship.clone()),
            s,
            r,
        ),
        (
            "POST",
            "/posts".into(),
            Some(json!({"post_type": "text"})),
            a,
            s,
        ),
        (
            "PATCH",
            format!("/posts/{post}"),
            Some(json!({"text_content": "y"})),
            a,
            b,
        ),
        ("POST", format!("/posts/{post}/publish"), None, a, b),
        ("DELETE", format!("/posts/{post}"), None, a, b),
        ("DELETE", format!("/suppliers/{}", s.id), None, s, r),
        ("DELETE", format!("/users/{}", a.id), None, a, b),
    ];
    for (method, path, body, owner, other) in steps {
        let before = env.snapshot().await;
        let (status, resp) = env.call(method, &path, None, body.clone()).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{method} {path} without a token: {resp}"
        );
        let (status, resp) = env
            .call(method, &path, Some(&other.token), body.clone())
            .await;
        assert_eq!(
            status,
            StatusCode::FORBIDDEN,
            "{method} {path} as somebody else: {resp}"
        );
        assert_eq!(
            env.snapshot().await,
            before,
            "{method} {path}: refused, nothing written"
        );
        let pending = env.pending_events().await;
        let (status, resp) = env.call(method, &path, Some(&owner.token), body).await;
        assert!(
            status.is_success(),
            "{method} {path} as its owner: {status} {resp}"
        );
        assert_eq!(
            env.pending_events().await,
            pending + 1,
            "{method} {path}: one event"
        );
    }
    env.db.drop().await.unwrap();
}
