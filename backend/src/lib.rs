//! The producer backend: an axum REST API over MongoDB for the five domains
//! of the social-commerce platform. Every mutation stores its domain event in
//! the same single-document write ([`store`]) and the [`relay`] publishes it
//! to Kafka (topic = the event type's domain, key = the entity id).
//!
//! The acting user of an action (the supplier creating a product, the
//! customer placing an order, the author of a post) comes from the
//! `X-User-ID` header, a 24-hex ObjectId, as in the reference design.

pub mod common;
pub mod error;
pub mod orders;
pub mod posts;
pub mod products;
pub mod relay;
pub mod settings;
pub mod store;
pub mod suppliers;
pub mod users;

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

use crate::error::ApiError;
use crate::settings::Settings;
use crate::store::Store;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub users: Store<users::User>,
    pub suppliers: Store<suppliers::Supplier>,
    pub products: Store<products::Product>,
    pub orders: Store<orders::Order>,
    pub posts: Store<posts::Post>,
    /// Wakes the relay after a write.
    pub wake: Arc<Notify>,
}

impl AppState {
    pub fn new(db: &Database, wake: Arc<Notify>) -> Self {
        AppState {
            users: Store::new(db, "users"),
            suppliers: Store::new(db, "suppliers"),
            products: Store::new(db, "products"),
            orders: Store::new(db, "orders"),
            posts: Store::new(db, "posts"),
            wake,
        }
    }
}

/// The OpenAPI document, generated from the handlers and their types.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "projector backend",
        description = "Social-commerce producer API: every mutation emits its domain event to Kafka."
    ),
    paths(
        users::register,
        users::read,
        users::update,
        users::delete,
        suppliers::create,
        suppliers::read,
        suppliers::update,
        suppliers::delete,
        products::create,
        products::read,
        products::update,
        products::publish,
        products::discontinue,
        products::out_of_stock,
        products::restore,
        products::delete,
        orders::place,
        orders::read,
        orders::cancel,
        orders::ship,
        posts::create,
        posts::read,
        posts::update,
        posts::publish,
        posts::delete,
    ),
    components(schemas(error::ErrorBody))
)]
pub struct ApiDoc;

/// The whole API: one router per domain.
pub fn app(state: AppState) -> Router {
    Router::new()
        .merge(users::router())
        .merge(suppliers::router())
        .merge(products::router())
        .merge(orders::router())
        .merge(posts::router())
        .route(
            "/health",
            get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
        .route(
            "/openapi.json",
            get(|| async { axum::Json(<ApiDoc as utoipa::OpenApi>::openapi()) }),
        )
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
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
        relay::ensure_indexes(&db).await;
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
            state: AppState::new(&db, wake.clone()),
            relay: relay::Relay {
                db,
                producer,
                topic_prefix: settings.topic_prefix.clone(),
                wake,
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
