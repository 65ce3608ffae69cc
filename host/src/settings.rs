//! Typed settings: defaults that match `scripts/stack`, then an optional TOML
//! file, then environment variables (which win), layered with figment. The
//! settings depend on nothing else in the host.
//!
//! | variable                     | setting                    |
//! |------------------------------|----------------------------|
//! | `KAFKA_BOOTSTRAP`            | `kafka.bootstrap_servers`  |
//! | `PROJECTOR_GROUP_ID`         | `kafka.group_id`           |
//! | `PROJECTOR_INSTANCE_ID`      | `kafka.instance_id` (static membership) |
//! | `PROJECTOR_COMPILED_CACHE`   | `components.compiled_cache` ("" turns it off) |
//! | `PROJECTOR_TOPICS`           | `topics` (comma-separated) |
//! | `MYSQL_URL`                  | `mysql.url`                |
//! | `PROJECTOR_COMPONENTS_DIR`   | `components.dir`           |
//! | `PROJECTOR_BATCH_SIZE`       | `batch.max_events`         |
//! | `PROJECTOR_BATCH_WAIT_MS`    | `batch.max_wait`           |
//! | `PROJECTOR_ADMIN_ADDR`       | `admin.listen`             |
//! | `PROJECTOR_LAG_INTERVAL_MS`  | `admin.lag_interval`       |
//! | `PROJECTOR_LAG_ERROR_THRESHOLD` | `admin.lag_error_threshold` |
//! | `PROJECTOR_ADMIN_TOKEN`      | `admin.token`              |
//! | `PROJECTOR_ADMIN_TOKEN_FILE` | `admin.token_file`         |
//! | `PROJECTOR_METRICS_ADDR`     | `admin.metrics_listen`     |
//! | `PROJECTOR_WATCH_COMPONENTS` | `components.watch` (true/false) |
//! | `PROJECTOR_MAX_EVENT_BYTES`  | `batch.max_event_bytes`    |
//! | `PROJECTOR_CALL_DEADLINE_MS` | `sandbox.call_deadline`    |
//! | `PROJECTOR_GUEST_MEMORY_MB`  | `sandbox.memory_mb`        |
//! | `PROJECTOR_GUEST_MAX_ROWS`   | `sandbox.max_rows`         |
//! | `PROJECTOR_GUEST_MAX_OUTPUT_BYTES` | `sandbox.max_output_bytes` |
//! | `PROJECTOR_STATEMENT_TIMEOUT_MS` | `mysql.statement_timeout` |
//! | `PROJECTOR_START_WITHOUT_POSITION` | `start_without_position` (earliest/latest) |
//! | `PROJECTOR_PRUNE_EVERY_MS`   | `prune.every` (0: never)   |
//! | `PROJECTOR_TOMBSTONE_DAYS`   | `prune.tombstone_days`     |

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use events::{KafkaSettings, Topic};
use figment::Figment;
use figment::providers::{Env, Format as _, Serialized, Toml};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    pub kafka: KafkaSettings,
    /// The topics to consume (the five domain topics by default); from the
    /// environment, comma-separated.
    #[serde(deserialize_with = "list::deserialize")]
    pub topics: Vec<String>,
    /// Where a partition with no position stored in MySQL starts: its
    /// earliest retained offset (the whole history), or its end. Never
    /// Kafka's committed offset, which may belong to another database.
    pub start_without_position: StartPolicy,
    pub mysql: MysqlSettings,
    pub components: ComponentSettings,
    pub sandbox: SandboxLimits,
    pub batch: BatchSettings,
    pub admin: AdminSettings,
    pub prune: PruneSettings,
    /// Which tables each domain's projection may write, and so which tables
    /// a replay of the domain may clear: the operator's decision, not the
    /// component's. A settings file's `[grants]` entries replace the
    /// default's one domain at a time (`post = []` revokes, `review =
    /// ["reviews"]` adds a domain).
    pub grants: Grants,
}

/// Tables granted per domain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Grants(pub BTreeMap<String, Vec<String>>);

impl Default for Grants {
    /// The seven projection tables, each to the domain that ships with it.
    fn default() -> Self {
        let grant = |domain: &str, tables: &[&str]| {
            (
                domain.to_owned(),
                tables.iter().map(|t| (*t).to_owned()).collect(),
            )
        };
        Grants(BTreeMap::from([
            grant("user", &["users"]),
            grant("supplier", &["suppliers"]),
            grant("product", &["products", "product_variants"]),
            grant("order", &["orders", "order_items"]),
            grant("post", &["posts"]),
        ]))
    }
}

impl Grants {
    /// Refuses a declaration that names a table outside the domain's grant.
    pub fn check(&self, info: &flatten::Info) -> Result<(), String> {
        let granted = self.0.get(&info.domain).map_or(&[][..], Vec::as_slice);
        let declared = info
            .writes
            .iter()
            .map(|t| &t.table)
            .chain(info.tables.iter().map(|t| &t.name));
        for table in declared {
            if !granted.contains(table) {
                return Err(format!(
                    "declares table {table:?}, outside its grant (grants.{} = {:?} in the settings)",
                    info.domain, granted
                ));
            }
        }
        Ok(())
    }

    /// Whether `domain` may write `table`.
    pub fn allows(&self, domain: &str, table: &str) -> bool {
        self.0
            .get(domain)
            .is_some_and(|tables| tables.iter().any(|t| t == table))
    }
}

/// The host's own schedule of `projector prune`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PruneSettings {
    /// How often a running host prunes (the first time one interval after
    /// it starts); zero never.
    #[serde(with = "millis")]
    pub every: Duration,
    /// Tombstones older than this many days are removed.
    pub tombstone_days: u32,
}

impl Default for PruneSettings {
    fn default() -> Self {
        PruneSettings {
            every: Duration::from_secs(24 * 3600),
            tombstone_days: 30,
        }
    }
}

/// Where a partition without a stored position starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartPolicy {
    Earliest,
    Latest,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MysqlSettings {
    /// `mysql://user:password@host:port/database`; never logged with the password.
    pub url: String,
    pub max_connections: u32,
    /// Longest a batch's transaction may take (client side, so the same on
    /// MySQL and MariaDB): past it the connection is closed, which rolls the
    /// transaction back, and the batch is retried. Keeps a hung database
    /// from holding the pipeline indefinitely.
    #[serde(with = "millis")]
    pub statement_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ComponentSettings {
    /// Folder of `<domain>.wasm` files.
    pub dir: PathBuf,
    /// Watch the folder and hot-reload new or changed components.
    pub watch: bool,
    /// Where compiled components are kept between starts, keyed by the
    /// component's digest, the engine's configuration and the sandbox
    /// limits (default `~/.cache/projector/compiled`; none or an empty path:
    /// compile on every start). Only this user should be able to write it:
    /// the host loads its files as machine code.
    pub compiled_cache: Option<PathBuf>,
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
    /// Bearer token the mutating routes (`POST /projections/reload`)
    /// require; without it (or `token_file`) they answer 403.
    pub token: Option<String>,
    /// A file holding the token (trailing whitespace ignored); wins over
    /// `token`.
    pub token_file: Option<PathBuf>,
    /// A second listener serving only `/metrics` and `/health/*`, for a
    /// Prometheus or a load balancer on another address while the admin
    /// routes stay on `listen`.
    pub metrics_listen: Option<SocketAddr>,
}

impl AdminSettings {
    /// The configured token, read from `token_file` if set.
    pub fn token(&self) -> anyhow::Result<Option<String>> {
        if let Some(path) = &self.token_file {
            let t = std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("admin.token_file {}: {e}", path.display()))?;
            let t = t.trim_end().to_owned();
            anyhow::ensure!(
                !t.is_empty(),
                "admin.token_file {} is empty",
                path.display()
            );
            return Ok(Some(t));
        }
        Ok(self.token.clone().filter(|t| !t.is_empty()))
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            kafka: KafkaSettings::default(),
            topics: Topic::ALL.iter().map(|t| t.as_str().to_owned()).collect(),
            start_without_position: StartPolicy::Earliest,
            mysql: MysqlSettings::default(),
            components: ComponentSettings::default(),
            sandbox: SandboxLimits::default(),
            batch: BatchSettings::default(),
            admin: AdminSettings::default(),
            prune: PruneSettings::default(),
            grants: Grants::default(),
        }
    }
}

impl Default for MysqlSettings {
    fn default() -> Self {
        MysqlSettings {
            url: "mysql://projector:projector@127.0.0.1:3306/projector".to_owned(),
            max_connections: 8,
            statement_timeout: Duration::from_secs(30),
        }
    }
}

impl Default for ComponentSettings {
    fn default() -> Self {
        ComponentSettings {
            dir: PathBuf::from("build/projections"),
            watch: true,
            compiled_cache: std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .map(|h| PathBuf::from(h).join(".cache/projector/compiled")),
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
            token: None,
            token_file: None,
            metrics_listen: None,
        }
    }
}

/// Environment variables and the setting each one sets.
const ENV: [(&str, &str); 25] = [
    ("KAFKA_BOOTSTRAP", "kafka.bootstrap_servers"),
    ("PROJECTOR_GROUP_ID", "kafka.group_id"),
    ("PROJECTOR_INSTANCE_ID", "kafka.instance_id"),
    ("PROJECTOR_COMPILED_CACHE", "components.compiled_cache"),
    ("PROJECTOR_TOPICS", "topics"),
    ("MYSQL_URL", "mysql.url"),
    ("PROJECTOR_COMPONENTS_DIR", "components.dir"),
    ("PROJECTOR_BATCH_SIZE", "batch.max_events"),
    ("PROJECTOR_BATCH_WAIT_MS", "batch.max_wait"),
    ("PROJECTOR_ADMIN_ADDR", "admin.listen"),
    ("PROJECTOR_LAG_INTERVAL_MS", "admin.lag_interval"),
    ("PROJECTOR_LAG_ERROR_THRESHOLD", "admin.lag_error_threshold"),
    ("PROJECTOR_ADMIN_TOKEN", "admin.token"),
    ("PROJECTOR_ADMIN_TOKEN_FILE", "admin.token_file"),
    ("PROJECTOR_METRICS_ADDR", "admin.metrics_listen"),
    ("PROJECTOR_WATCH_COMPONENTS", "components.watch"),
    ("PROJECTOR_MAX_EVENT_BYTES", "batch.max_event_bytes"),
    ("PROJECTOR_CALL_DEADLINE_MS", "sandbox.call_deadline"),
    ("PROJECTOR_GUEST_MEMORY_MB", "sandbox.memory_mb"),
    ("PROJECTOR_GUEST_MAX_ROWS", "sandbox.max_rows"),
    (
        "PROJECTOR_GUEST_MAX_OUTPUT_BYTES",
        "sandbox.max_output_bytes",
    ),
    ("PROJECTOR_STATEMENT_TIMEOUT_MS", "mysql.statement_timeout"),
    ("PROJECTOR_START_WITHOUT_POSITION", "start_without_position"),
    ("PROJECTOR_PRUNE_EVERY_MS", "prune.every"),
    ("PROJECTOR_TOMBSTONE_DAYS", "prune.tombstone_days"),
];

impl Settings {
    /// Defaults, then `file` if given, then the process environment.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Settings> {
        Settings::figment(file).extract_checked()
    }

    /// The layers: defaults < settings file < environment.
    pub fn figment(file: Option<&Path>) -> Figment {
        let mut figment = Figment::from(Serialized::defaults(Settings::default()));
        if let Some(path) = file {
            figment = figment.merge(Toml::file_exact(path));
        }
        let env = Env::raw()
            .filter_map(|key| {
                ENV.iter()
                    .find(|(var, _)| key == *var)
                    .map(|(_, setting)| (*setting).into())
            })
            .split(".")
            .lowercase(false);
        figment.merge(env)
    }
}

/// Extraction with errors that name the environment variable or file, and
/// the checks serde cannot express.
trait ExtractChecked {
    fn extract_checked(&self) -> anyhow::Result<Settings>;
}

impl ExtractChecked for Figment {
    fn extract_checked(&self) -> anyhow::Result<Settings> {
        let settings: Settings = self.extract().map_err(|e| {
            let key = e.path.join(".");
            match ENV.iter().find(|(_, setting)| *setting == key) {
                Some((var, _)) if std::env::var_os(var).is_some() => {
                    anyhow::anyhow!("{var}: {e}")
                }
                _ => anyhow::anyhow!("invalid settings: {e}"),
            }
        })?;
        if settings.admin.lag_interval.is_zero() {
            anyhow::bail!("admin.lag_interval must be above zero");
        }
        if settings.batch.max_events == 0 {
            anyhow::bail!("batch.max_events must be at least 1");
        }
        Ok(settings)
    }
}

/// Resource limits for every guest call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxLimits {
    /// Wall time one `project` or `describe` call may take.
    #[serde(with = "crate::settings::millis")]
    pub call_deadline: Duration,
    /// Linear memory one instance may grow to, in MiB.
    pub memory_mb: usize,
    /// Most rows one `project` call may return (an upsert, update or delete
    /// is one; a replace counts its rows).
    pub max_rows: usize,
    /// Most bytes one `project` call may return (names, text and JSON
    /// values, 8 per other value).
    pub max_output_bytes: usize,
    /// Most instances, tables and memories a component may create, and
    /// elements one table may grow to.
    pub max_instances: usize,
    pub max_tables: usize,
    pub max_memories: usize,
    pub max_table_elements: usize,
    /// Most bytes one host call may produce for a guest (today the only
    /// host calls are `wasi:random`): what a guest can make the host do
    /// between two deadline checks.
    pub max_host_call_bytes: u64,
    /// Instances that may exist at once across all components (every guest
    /// call gets its own; one lane calls one at a time). Slots are reserved
    /// up front by the pooling allocator; a call that finds none free waits
    /// for one.
    pub instance_pool: u32,
    /// Bytes at the start of a pooled instance's memory kept resident and
    /// reset in place between calls instead of being returned to the
    /// kernel (a guest's stack and the first of its heap): fewer page
    /// faults per call, at most this much RSS per slot.
    pub keep_resident_bytes: usize,
}

impl SandboxLimits {
    /// [`SandboxLimits::memory_mb`] in bytes.
    pub fn memory_bytes(&self) -> usize {
        self.memory_mb << 20
    }
}

impl Default for SandboxLimits {
    fn default() -> Self {
        SandboxLimits {
            call_deadline: Duration::from_millis(200),
            memory_mb: 64,
            max_rows: 1000,
            max_output_bytes: 8 << 20,
            max_instances: 16,
            max_tables: 16,
            max_memories: 4,
            max_table_elements: 100_000,
            max_host_call_bytes: 4096,
            instance_pool: 64,
            keep_resident_bytes: 1 << 20,
        }
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

/// A list of strings from a sequence or from comma-separated text.
mod list {
    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum List {
        Seq(Vec<String>),
        Text(String),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
        Ok(match List::deserialize(d)? {
            List::Seq(v) => v,
            List::Text(t) => t
                .split(',')
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect(),
        })
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
// figment's `Jail` closures return its (large) error type by design.
#[allow(clippy::result_large_err)]
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
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "projector.toml",
                "topics = [\"a\"]\n[batch]\nmax_events = 7\nmax_wait = 5\n[mysql]\nurl = \"mysql://a:b@h/db\"\n[sandbox]\nmemory_mb = 32\n",
            )?;
            let file = Path::new("projector.toml");
            let s = Settings::load(Some(file)).unwrap();
            assert_eq!(s.batch.max_events, 7);
            assert_eq!(s.batch.max_wait, Duration::from_millis(5));
            assert_eq!(s.topics, ["a"]);
            assert_eq!(s.sandbox.memory_bytes(), 32 << 20);
            jail.set_env("MYSQL_URL", "mysql://x:y@z/w");
            jail.set_env("PROJECTOR_BATCH_SIZE", "1");
            jail.set_env("PROJECTOR_TOPICS", "t1, t2");
            jail.set_env("PROJECTOR_GUEST_MEMORY_MB", "16");
            jail.set_env("PROJECTOR_WATCH_COMPONENTS", "false");
            jail.set_env("PROJECTOR_ADMIN_ADDR", "127.0.0.1:0");
            let s = Settings::load(Some(file)).unwrap();
            assert_eq!(s.mysql.url, "mysql://x:y@z/w");
            assert_eq!(s.batch.max_events, 1);
            assert_eq!(s.batch.max_wait, Duration::from_millis(5));
            assert_eq!(s.topics, ["t1", "t2"]);
            assert_eq!(s.sandbox.memory_bytes(), 16 << 20);
            assert!(!s.components.watch);
            assert_eq!(s.admin.listen.port(), 0);
            Ok(())
        });
    }

    #[test]
    fn the_default_grants_cover_the_shipped_projections_and_a_file_changes_one_domain() {
        let grants = Grants::default();
        for domain in flatten::DOMAINS {
            assert_eq!(grants.check(&(domain.info)()), Ok(()), "{}", domain.name);
        }
        let mut post = (flatten::POST.info)();
        post.writes.extend((flatten::USER.info)().writes);
        let err = grants.check(&post).unwrap_err();
        assert!(err.contains("\"users\", outside its grant"), "{err}");

        let s = Settings::figment(None)
            .merge(Toml::string(
                "[grants]\npost = []\nreview = [\"reviews\"]\n",
            ))
            .extract_checked()
            .unwrap();
        assert!(!s.grants.allows("post", "posts"), "revoked");
        assert!(s.grants.allows("review", "reviews"), "added");
        assert!(s.grants.allows("order", "order_items"), "the others kept");
    }

    #[test]
    fn bad_values_are_clear_errors() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("PROJECTOR_BATCH_SIZE", "many");
            let err = Settings::load(None).unwrap_err();
            assert!(err.to_string().contains("PROJECTOR_BATCH_SIZE"), "{err}");
            jail.set_env("PROJECTOR_BATCH_SIZE", "0");
            let err = Settings::load(None).unwrap_err();
            assert!(err.to_string().contains("at least 1"), "{err}");
            Ok(())
        });
        let typo = Settings::figment(None).merge(Toml::string("[batch]\nmax_evnts = 1\n"));
        assert!(typo.extract_checked().is_err());
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
