//! Backend settings: defaults that match `scripts/stack`, overridden by the
//! environment (`MONGODB_URI`, `MONGODB_DATABASE`, `KAFKA_BOOTSTRAP`,
//! `BACKEND_ADDR`, `BACKEND_TOPIC_PREFIX`, `BACKEND_RELAY` on/off,
//! `BACKEND_JWT_SECRET` or `BACKEND_JWT_SECRET_FILE`,
//! `BACKEND_TOKEN_TTL_SECS`, `BACKEND_ADMIN_EMAILS` (comma-separated),
//! `BACKEND_OUTBOX_CAP`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use events::KafkaSettings;

#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub mongodb_uri: String,
    pub database: String,
    pub kafka: KafkaSettings,
    /// Prepended to every topic (empty: the five domain topics).
    pub topic_prefix: String,
    /// Run the outbox relay (`BACKEND_RELAY=off` only writes: for drills
    /// that kill the backend between a write and its publication).
    pub relay: bool,
    pub auth: AuthSettings,
    /// Unpublished events one document may hold before its mutations
    /// answer 503 (`BACKEND_OUTBOX_CAP`, default 100).
    pub outbox_cap: usize,
}

/// How tokens are signed and who is an admin.
#[derive(Clone)]
pub struct AuthSettings {
    /// The HS256 key; every instance behind one load balancer needs the
    /// same. Without one a random key is made at start (tokens then die
    /// with the process), with a warning.
    pub secret: Vec<u8>,
    pub secret_generated: bool,
    pub token_ttl: Duration,
    /// Users whose email is listed log in as `admin`.
    pub admin_emails: Vec<String>,
}

impl std::fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthSettings")
            .field("secret", &"<hidden>")
            .field("secret_generated", &self.secret_generated)
            .field("token_ttl", &self.token_ttl)
            .field("admin_emails", &self.admin_emails)
            .finish()
    }
}

impl Default for AuthSettings {
    fn default() -> Self {
        let random: Vec<u8> = (0..2)
            .flat_map(|_| uuid::Uuid::new_v4().into_bytes())
            .collect();
        AuthSettings {
            secret: random,
            secret_generated: true,
            token_ttl: Duration::from_secs(3600),
            admin_emails: Vec::new(),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            mongodb_uri: "mongodb://127.0.0.1:27017/".into(),
            database: "social_commerce".into(),
            kafka: KafkaSettings {
                client_id: "projector-backend".into(),
                ..KafkaSettings::default()
            },
            topic_prefix: String::new(),
            relay: true,
            auth: AuthSettings::default(),
            outbox_cap: 100,
        }
    }
}

impl Settings {
    pub fn from_env() -> anyhow::Result<Settings> {
        Settings::from_vars(&std::env::vars().collect())
    }

    pub fn from_vars(vars: &HashMap<String, String>) -> anyhow::Result<Settings> {
        let mut s = Settings::default();
        let get = |k: &str| vars.get(k).filter(|v| !v.is_empty()).cloned();
        if let Some(v) = get("MONGODB_URI") {
            s.mongodb_uri = v;
        }
        if let Some(v) = get("MONGODB_DATABASE") {
            s.database = v;
        }
        if let Some(v) = get("KAFKA_BOOTSTRAP") {
            s.kafka.bootstrap_servers = v;
        }
        if let Some(v) = get("BACKEND_ADDR") {
            s.listen = v
                .parse()
                .map_err(|e| anyhow::anyhow!("BACKEND_ADDR={v:?}: {e}"))?;
        }
        if let Some(v) = get("BACKEND_TOPIC_PREFIX") {
            s.topic_prefix = v;
        }
        if let Some(v) = get("BACKEND_RELAY") {
            s.relay = match v.as_str() {
                "on" | "true" | "1" => true,
                "off" | "false" | "0" => false,
                _ => anyhow::bail!("BACKEND_RELAY={v:?}: expected on or off"),
            };
        }
        if let Some(v) = get("BACKEND_JWT_SECRET") {
            s.auth.secret = v.into_bytes();
            s.auth.secret_generated = false;
        } else if let Some(path) = get("BACKEND_JWT_SECRET_FILE") {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| anyhow::anyhow!("BACKEND_JWT_SECRET_FILE={path:?}: {e}"))?;
            s.auth.secret = text.trim().as_bytes().to_vec();
            s.auth.secret_generated = false;
        }
        if !s.auth.secret_generated && s.auth.secret.len() < 32 {
            anyhow::bail!("the token secret must have at least 32 bytes");
        }
        if let Some(v) = get("BACKEND_TOKEN_TTL_SECS") {
            let secs: u64 = v.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                anyhow::anyhow!("BACKEND_TOKEN_TTL_SECS={v:?}: expected seconds > 0")
            })?;
            s.auth.token_ttl = Duration::from_secs(secs);
        }
        if let Some(v) = get("BACKEND_ADMIN_EMAILS") {
            s.auth.admin_emails = v
                .split(',')
                .map(str::trim)
                .filter(|e| !e.is_empty())
                .map(str::to_owned)
                .collect();
        }
        if let Some(v) = get("BACKEND_OUTBOX_CAP") {
            s.outbox_cap =
                v.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                    anyhow::anyhow!("BACKEND_OUTBOX_CAP={v:?}: expected a count > 0")
                })?;
        }
        Ok(s)
    }
}
