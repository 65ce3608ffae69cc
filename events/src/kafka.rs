use std::collections::BTreeMap;

/// Kafka client settings shared by the producer backend and the projection
/// host (the reference design's `KafkaConfig`).
///
/// The configs are plain `librdkafka` key/value maps so this crate stays free
/// of a Kafka client dependency; callers feed them into their client builder.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct KafkaSettings {
    /// `host:port[,host:port]` of the brokers.
    pub bootstrap_servers: String,
    /// Client id reported to the brokers (shows up in their logs and metrics).
    pub client_id: String,
    /// Consumer group of the projection host.
    pub group_id: String,
    /// Static group membership: a name for this host process that stays the
    /// same across its restarts (a host name, a pod name). Each of its
    /// consumers joins as `<instance_id>-<topic>` (`group.instance.id`), so
    /// a restarted host takes its partitions back at once instead of after
    /// a session timeout and a rebalance. Two live processes must never
    /// share one. None: dynamic membership.
    pub instance_id: Option<String>,
    /// Extra librdkafka properties, applied last (they win).
    pub extra: BTreeMap<String, String>,
}

/// The consumer group of the reference design's analytics service.
pub const DEFAULT_GROUP_ID: &str = "mysql-analytics-service";

impl Default for KafkaSettings {
    fn default() -> Self {
        KafkaSettings {
            bootstrap_servers: "127.0.0.1:9092".to_owned(),
            client_id: "projector".to_owned(),
            group_id: DEFAULT_GROUP_ID.to_owned(),
            instance_id: None,
            extra: BTreeMap::new(),
        }
    }
}

impl KafkaSettings {
    /// Producer config: every write acknowledged by all in-sync replicas and
    /// idempotent, so a retried send never duplicates or reorders a message
    /// within a partition.
    pub fn producer_config(&self) -> BTreeMap<String, String> {
        self.with_common([
            ("acks", "all"),
            ("enable.idempotence", "true"),
            ("max.in.flight.requests.per.connection", "5"),
            ("linger.ms", "5"),
            ("compression.type", "lz4"),
            ("message.timeout.ms", "30000"),
        ])
    }

    /// Consumer config: the group, `earliest` for a new group, and no
    /// automatic offset handling at all. The host stores the next offset of
    /// each partition in MySQL in the same transaction as the rows, and only
    /// then commits it to Kafka (advisory, for lag tools).
    pub fn consumer_config(&self) -> BTreeMap<String, String> {
        let mut config = self.with_common([
            ("auto.offset.reset", "earliest"),
            ("enable.auto.commit", "false"),
            ("enable.auto.offset.store", "false"),
            ("enable.partition.eof", "false"),
            ("session.timeout.ms", "10000"),
            ("heartbeat.interval.ms", "1000"),
            ("max.poll.interval.ms", "300000"),
            ("partition.assignment.strategy", "cooperative-sticky"),
            // Bounds the prefetch buffer (librdkafka's defaults let it hold
            // up to 100k messages per partition, hundreds of MB on a deep
            // backlog). Both bounds apply to each assigned partition's queue
            // (librdkafka's fetcher checks them per partition, whatever its
            // docs say of the high-level consumer), and the kilobytes count
            // compressed batches: a host of five 12-partition topics on a
            // deep backlog held 250 MB with 6.4 MB, 110 MB with 1 MB, at
            // the same speed. A batch of 500 never waits for more than this.
            ("queued.min.messages", "20000"),
            ("queued.max.messages.kbytes", "1024"),
            // With queues this small a backlog keeps them full, and a
            // partition whose queue was over a bound waits this long before
            // its next fetch (1 s by default): a lane drained its queue and
            // then stalled, about once a second. Measured on the 100k bench
            // (one run, `--compare`): 7,207-7,453 events/s with 1000 ms,
            // 11,543-11,880 with 10 or 50 ms, at the same CPU per event.
            ("fetch.queue.backoff.ms", "10"),
        ]);
        config.insert("group.id".to_owned(), self.group_id.clone());
        // `extra` wins over the defaults above, group id included.
        config.extend(self.extra.clone());
        config
    }

    fn with_common<const N: usize>(&self, specific: [(&str, &str); N]) -> BTreeMap<String, String> {
        let mut config: BTreeMap<String, String> = [
            ("bootstrap.servers", self.bootstrap_servers.as_str()),
            ("client.id", self.client_id.as_str()),
        ]
        .into_iter()
        .chain(specific)
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        config.extend(self.extra.clone());
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_producer_waits_for_all_replicas_and_is_idempotent() {
        let config = KafkaSettings::default().producer_config();
        assert_eq!(config["acks"], "all");
        assert_eq!(config["enable.idempotence"], "true");
        assert_eq!(config["bootstrap.servers"], "127.0.0.1:9092");
        assert!(!config.contains_key("group.id"));
    }

    #[test]
    fn the_consumer_starts_at_earliest_and_never_commits_by_itself() {
        let config = KafkaSettings::default().consumer_config();
        assert_eq!(config["group.id"], "mysql-analytics-service");
        assert_eq!(config["auto.offset.reset"], "earliest");
        assert_eq!(config["enable.auto.commit"], "false");
        assert_eq!(config["enable.auto.offset.store"], "false");
    }

    #[test]
    fn extra_properties_override_the_defaults() {
        let settings = KafkaSettings {
            extra: [("linger.ms".to_owned(), "0".to_owned())].into(),
            ..KafkaSettings::default()
        };
        assert_eq!(settings.producer_config()["linger.ms"], "0");
    }
}
