//! Typed settings: defaults that match `scripts/stack`, then an optional TOML
//! file, then environment variables (which win).
//!
//! | variable                     | setting                    |
//! |------------------------------|----------------------------|
//! | `KAFKA_BOOTSTRAP`            | `kafka.bootstrap_servers`  |
//! | `PROJECTOR_GROUP_ID`         | `kafka.group_id`           |
//! | `PROJECTOR_TOPICS`           | `topics` (comma-separated) |
//! | `MYSQL_URL`                  | `mysql.url`                |
//! | `PROJECTOR_COMPONENTS_DIR`   | `components.dir`           |
//! | `PROJECTOR_BATCH_SIZE`       | `batch.max_events`         |
//! | `PROJECTOR_BATCH_WAIT_MS`    | `batch.max_wait`           |
//! | `PROJECTOR_ADMIN_ADDR`       | `admin.listen`             |
//! | `PROJECTOR_LAG_INTERVAL_MS`  | `admin.lag_interval`       |
//! | `PROJECTOR_LAG_ERROR_THRESHOLD` | `admin.lag_error_threshold` |
//! | `PROJECTOR_WATCH_COMPONENTS` | `components.watch` (true/false) |
//! | `PROJECTOR_MAX_EVENT_BYTES`  | `batch.max_event_bytes`    |
//! | `PROJECTOR_CALL_DEADLINE_MS` | `sandbox.call_deadline`    |
//! | `PROJECTOR_GUEST_MEMORY_MB`  | `sandbox.memory_bytes`     |

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use events::{KafkaSettings, Topic};
use serde::{Deserialize, Serialize};

use crate::runtime::SandboxLimits;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub kafka: KafkaSettings,
    /// The topics to consume (the five domain topics by default).
    pub topics: Vec<String>,
    pub mysql: MysqlSettings,
    pub components: ComponentSettings,
    pub sandbox: SandboxLimits,
    pub batch: BatchSettings,
    pub admin: AdminSettings,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MysqlSettings {
    /// `mysql://user:password@host:port/database`; never logged with the password.
    pub url: String,
    pub max_connections: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ComponentSettings {
    /// Folder of `<domain>.wasm` files.
    pub dir: PathBuf,
    /// Watch the folder and hot-reload new or changed components.
    pub watch: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchSettings {
    /// Most events in one transaction; 1 is the reference design's per-event mode.
    pub max_events: usize,
    /// Longest a batch waits to fill up once it has its first event.
    #[serde(with = "millis")]
    pub max_wait: Duration,
    /// Events larger than this are dead-lettered unread (class `too_large`).
    pub max_event_bytes: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSettings {
    /// Address of the admin HTTP server (health, metrics, status page,
    /// reload). Port 0 picks a free port.
    pub listen: SocketAddr,
    /// How often lag and dependencies are sampled.
    #[serde(with = "millis")]
    pub lag_interval: Duration,
    /// Samples a partition's lag status looks back over.
    pub lag_window: usize,
    /// Lag above which a partition is ERR (and the host not ready).
    pub lag_error_threshold: i64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            kafka: KafkaSettings::default(),
            topics: Topic::ALL.iter().map(|t| t.as_str().to_owned()).collect(),
            mysql: MysqlSettings::default(),
            components: ComponentSettings::default(),
            sandbox: SandboxLimits::default(),
            batch: BatchSettings::default(),
            admin: AdminSettings::default(),
        }
    }
}

impl Default for MysqlSettings {
    fn default() -> Self {
        MysqlSettings {
            url: "mysql://projector:projector@127.0.0.1:3306/projector".to_owned(),
            max_connections: 4,
        }
    }
}

impl Default for ComponentSettings {
    fn default() -> Self {
        ComponentSettings {
            dir: PathBuf::from("build/projections"),
            watch: true,
        }
    }
}

impl Default for BatchSettings {
    fn default() -> Self {
        BatchSettings {
            max_events: 500,
            max_wait: Duration::from_millis(20),
            max_event_bytes: 1 << 20,
        }
    }
}

impl Default for AdminSettings {
    fn default() -> Self {
        AdminSettings {
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            lag_interval: Duration::from_secs(5),
            lag_window: 10,
            lag_error_threshold: 100_000,
        }
    }
}

impl Settings {
    /// Defaults, then `file` if given, then the process environment.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Settings> {
        let mut settings = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("failed to read settings file {}", path.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("invalid settings file {}", path.display()))?
            }
            None => Settings::default(),
        };
        settings.apply_env(&std::env::vars().collect())?;
        Ok(settings)
    }

    /// Applies environment overrides from `vars`.
    pub fn apply_env(&mut self, vars: &HashMap<String, String>) -> anyhow::Result<()> {
        let get = |k: &str| vars.get(k).filter(|v| !v.is_empty());
        fn num<T: std::str::FromStr>(k: &str, v: &str) -> anyhow::Result<T>
        where
            T::Err: std::fmt::Display,
        {
            v.parse().map_err(|e| anyhow::anyhow!("{k}={v:?}: {e}"))
        }
        if let Some(v) = get("KAFKA_BOOTSTRAP") {
            self.kafka.bootstrap_servers = v.clone();
        }
        if let Some(v) = get("PROJECTOR_GROUP_ID") {
            self.kafka.group_id = v.clone();
        }
        if let Some(v) = get("PROJECTOR_TOPICS") {
            self.topics = v
                .split(',')
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty())
                .collect();
        }
        if let Some(v) = get("MYSQL_URL") {
            self.mysql.url = v.clone();
        }
        if let Some(v) = get("PROJECTOR_COMPONENTS_DIR") {
            self.components.dir = PathBuf::from(v);
        }
        if let Some(v) = get("PROJECTOR_BATCH_SIZE") {
            self.batch.max_events = num("PROJECTOR_BATCH_SIZE", v)?;
        }
        if let Some(v) = get("PROJECTOR_BATCH_WAIT_MS") {
            self.batch.max_wait = Duration::from_millis(num("PROJECTOR_BATCH_WAIT_MS", v)?);
        }
        if let Some(v) = get("PROJECTOR_ADMIN_ADDR") {
            self.admin.listen = num("PROJECTOR_ADMIN_ADDR", v)?;
        }
        if let Some(v) = get("PROJECTOR_LAG_INTERVAL_MS") {
            self.admin.lag_interval = Duration::from_millis(num("PROJECTOR_LAG_INTERVAL_MS", v)?);
        }
        if let Some(v) = get("PROJECTOR_LAG_ERROR_THRESHOLD") {
            self.admin.lag_error_threshold = num("PROJECTOR_LAG_ERROR_THRESHOLD", v)?;
        }
        if let Some(v) = get("PROJECTOR_WATCH_COMPONENTS") {
            self.components.watch = num("PROJECTOR_WATCH_COMPONENTS", v)?;
        }
        if let Some(v) = get("PROJECTOR_MAX_EVENT_BYTES") {
            self.batch.max_event_bytes = num("PROJECTOR_MAX_EVENT_BYTES", v)?;
        }
        if let Some(v) = get("PROJECTOR_CALL_DEADLINE_MS") {
            self.sandbox.call_deadline =
                Duration::from_millis(num("PROJECTOR_CALL_DEADLINE_MS", v)?);
        }
        if let Some(v) = get("PROJECTOR_GUEST_MEMORY_MB") {
            self.sandbox.memory_bytes = num::<usize>("PROJECTOR_GUEST_MEMORY_MB", v)? << 20;
        }
        if self.admin.lag_interval.is_zero() {
            anyhow::bail!("admin.lag_interval must be above zero");
        }
        if self.batch.max_events == 0 {
            anyhow::bail!("batch.max_events must be at least 1");
        }
        Ok(())
    }
}

/// `Duration` as whole milliseconds in settings files.
pub mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// The MySQL URL with its password replaced, for logs.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_local_stack() {
        let s = Settings::default();
        assert_eq!(s.kafka.bootstrap_servers, "127.0.0.1:9092");
        assert_eq!(s.kafka.group_id, "mysql-analytics-service");
        assert_eq!(s.topics, ["user", "supplier", "product", "order", "post"]);
        assert_eq!(
            s.mysql.url,
            "mysql://projector:projector@127.0.0.1:3306/projector"
        );
    }

    #[test]
    fn a_file_then_the_environment_override_the_defaults() {
        let file: Settings = toml::from_str(
            "[batch]\nmax_events = 7\nmax_wait = 5\n[mysql]\nurl = \"mysql://a:b@h/db\"\n",
        )
        .unwrap();
        let mut s = file;
        assert_eq!(s.batch.max_events, 7);
        assert_eq!(s.batch.max_wait, Duration::from_millis(5));
        let vars = HashMap::from([
            ("MYSQL_URL".to_owned(), "mysql://x:y@z/w".to_owned()),
            ("PROJECTOR_BATCH_SIZE".to_owned(), "1".to_owned()),
            ("PROJECTOR_TOPICS".to_owned(), "t1, t2".to_owned()),
        ]);
        s.apply_env(&vars).unwrap();
        assert_eq!(s.mysql.url, "mysql://x:y@z/w");
        assert_eq!(s.batch.max_events, 1);
        assert_eq!(s.topics, ["t1", "t2"]);
    }

    #[test]
    fn bad_values_are_clear_errors() {
        let mut s = Settings::default();
        let err = s
            .apply_env(&HashMap::from([(
                "PROJECTOR_BATCH_SIZE".to_owned(),
                "many".to_owned(),
            )]))
            .unwrap_err();
        assert!(err.to_string().contains("PROJECTOR_BATCH_SIZE"));
        assert!(toml::from_str::<Settings>("[batch]\nmax_evnts = 1\n").is_err());
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("mysql://u:secret@h:3306/db"),
            "mysql://u:***@h:3306/db"
        );
        assert_eq!(redact_url("mysql://h/db"), "mysql://h/db");
    }
}
