//! Backend settings: defaults that match `scripts/stack`, overridden by the
//! environment (`MONGODB_URI`, `MONGODB_DATABASE`, `KAFKA_BOOTSTRAP`,
//! `BACKEND_ADDR`, `BACKEND_TOPIC_PREFIX`, `BACKEND_RELAY` on/off).

use std::collections::HashMap;
use std::net::SocketAddr;

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
        Ok(s)
    }
}
