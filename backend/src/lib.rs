//! The producer backend: an axum REST API over MongoDB for the five domains
//! of the social-commerce platform. Every mutation stores its domain event in
//! the same single-document write ([`store`]) and the [`relay`] publishes it
//! to Kafka (topic = the event type's domain, key = the entity id).
//!
//! Every mutation needs a signed token from `POST /auth/login`
//! ([`auth`]); its account is the acting user (the supplier creating a
//! product, the customer placing an order, the author of a post) and
//! ownership rules decide what it may change. POSTs take an
//! `Idempotency-Key` ([`idempotency`]); lists page by key ([`reads`]).

pub mod auth;
pub mod error;
pub mod idempotency;
pub mod openapi;
pub mod orders;
pub mod posts;
pub mod products;
pub mod reads;
pub mod relay;
pub mod settings;
pub mod store;
pub mod suppliers;
pub mod users;
pub mod validate;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use mongodb::Database;
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::auth::{Accounts, Auth};
use crate::error::ApiError;
use crate::settings::Settings;
use crate::store::{Store, StoreConfig};

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub db: Database,
    pub auth: Arc<Auth>,
    pub accounts: Accounts,
    pub users: Store<users::User>,
    pub suppliers: Store<suppliers::Supplier>,
    pub products: Store<products::Product>,
    pub orders: Store<orders::Order>,
    pub posts: Store<posts::Post>,
    /// Wakes the relay after a write.
    pub wake: Arc<Notify>,
}

impl AppState {
    pub fn new(db: &Database, auth: Arc<Auth>, config: StoreConfig, wake: Arc<Notify>) -> Self {
        AppState {
            db: db.clone(),
            auth,
            accounts: Accounts::new(db),
            users: Store::new(db, "users", config.clone()),
            suppliers: Store::new(db, "suppliers", config.clone()),
            products: Store::new(db, "products", config.clone()),
            orders: Store::new(db, "orders", config.clone()),
            posts: Store::new(db, "posts", config),
            wake,
        }
    }
}

/// Indexes of the relay, the lists and the idempotency keys; failures are
/// logged (everything works without them, only slower).
pub async fn ensure_indexes(db: &Database) {
    relay::ensure_indexes(db).await;
    reads::ensure_indexes(db).await;
    idempotency::ensure_indexes(db).await;
}

/// How long a request may take before it is answered 503.
pub const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The whole API: one router per domain, behind the idempotency layer,
/// request ids (`x-request-id`, made if absent and echoed), a trace span
/// per request and a timeout.
pub fn app(state: AppState) -> Router {
    use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
    let request_id = axum::http::HeaderName::from_static("x-request-id");
    Router::new()
        .merge(auth::router())
        .merge(users::router())
        .merge(suppliers::router())
        .merge(products::router())
        .merge(orders::router())
        .merge(posts::router())
        .route("/health", get(health))
        .route(
            "/openapi.json",
            get(|| async { axum::Json(openapi::document().clone()) }),
        )
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            idempotency::layer,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(
            tower::ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(request_id.clone(), MakeRequestUuid))
                .layer(
                    tower_http::trace::TraceLayer::new_for_http().make_span_with(
                        |req: &axum::http::Request<axum::body::Body>| {
                            let id = req
                                .headers()
                                .get("x-request-id")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("-");
                            tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
                        },
                    ),
                )
                .layer(tower_http::timeout::TimeoutLayer::with_status_code(
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    REQUEST_TIMEOUT,
                ))
                .layer(PropagateRequestIdLayer::new(request_id)),
        )
        .with_state(state)
}

/// Liveness, with the count of quarantined outbox entries (a number an
/// operator should see stay at zero).
async fn health(
    axum::extract::State(app): axum::extract::State<AppState>,
) -> axum::Json<serde_json::Value> {
    let quarantined = relay::quarantined(&app.db).await.ok();
    axum::Json(serde_json::json!({"status": "ok", "relay_quarantined": quarantined}))
}

/// The backend: API and relay, built from settings.
pub struct Application {
    listener: TcpListener,
    state: AppState,
    relay: relay::Relay,
    relay_enabled: bool,
}

impl Application {
    pub async fn build(settings: &Settings) -> anyhow::Result<Application> {
        let client = mongodb::Client::with_uri_str(&settings.mongodb_uri)
            .await
            .context("invalid MongoDB URI")?;
        let db = client.database(&settings.database);
        ensure_indexes(&db).await;
        let wake = Arc::new(Notify::new());
        let mut config = rdkafka::ClientConfig::new();
        for (k, v) in settings.kafka.producer_config() {
            config.set(k, v);
        }
        let producer = config
            .create()
            .context("failed to create the Kafka producer")?;
        let listener = TcpListener::bind(settings.listen)
            .await
            .with_context(|| format!("cannot listen on {}", settings.listen))?;
        Ok(Application {
            listener,
            state: AppState::new(
                &db,
                Arc::new(Auth::new(
                    &settings.auth.secret,
                    settings.auth.token_ttl,
                    &settings.auth.admin_emails,
                )),
                StoreConfig {
                    outbox_cap: settings.outbox_cap,
                    ..StoreConfig::default()
                },
                wake.clone(),
            ),
            relay: relay::Relay {
                owner: format!("{}:{}", std::process::id(), uuid::Uuid::new_v4().simple()),
                db,
                producer,
                topic_prefix: settings.topic_prefix.clone(),
                wake,
                first_backoff: relay::FIRST_DOCUMENT_BACKOFF,
            },
            relay_enabled: settings.relay,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` resolves; the relay stops with it.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let relay_stop = {
            let mut rx = rx.clone();
            async move {
                let _ = rx.wait_for(|stop| *stop).await;
            }
        };
        let relay = if self.relay_enabled {
            tokio::spawn(self.relay.run(relay_stop))
        } else {
            tracing::warn!(
                "the outbox relay is off: events stay pending until a backend with the relay on runs"
            );
            tokio::spawn(relay_stop)
        };
        let mut server_rx = rx;
        let serve =
            axum::serve(self.listener, app(self.state)).with_graceful_shutdown(async move {
                let _ = server_rx.wait_for(|stop| *stop).await;
            });
        let stopper = tokio::spawn(async move {
            shutdown.await;
            let _ = tx.send(true);
        });
        serve.await.context("server failed")?;
        stopper.abort();
        relay.await.context("relay failed")?;
        Ok(())
    }
}
