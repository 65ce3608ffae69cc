//! `projector dlq list | show | redrive`: the dead-letter topics read back.
//!
//! A dead letter is addressed as `<dlq topic>:<partition>:<offset>`, e.g.
//! `dlq.user:0:12`. Redrive sends the original bytes back to the source topic
//! with the original key (header `x-retry-count` one above the letter's), so
//! the running host projects them through the components in force now. It is
//! safe to repeat: a redriven letter is recorded in `dlq_redrives` and
//! skipped by the next redrive unless `--again`; an event that lands twice is
//! a no-op through `processed_events`; and an event older than the rows it
//! touches changes nothing (the stale-event guard). A letter whose original
//! was truncated (over 512 KiB) is redriven from its source coordinates,
//! which fails clearly if retention has removed it.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use sqlx::{MySqlPool, Row as _};

use super::{DeadLetter, RETRY_COUNT_HEADER};
use crate::settings::Settings;

/// One dead letter as read back from its topic.
#[derive(Debug, Clone)]
pub struct Letter {
    pub dlq_topic: String,
    pub partition: i32,
    pub offset: i64,
    pub letter: DeadLetter,
}

impl Letter {
    /// The letter at `m` of a dead-letter topic (one the host did not
    /// write is kept as a foreign letter with the parse error).
    fn read(m: &rdkafka::message::BorrowedMessage<'_>) -> Letter {
        Letter {
            dlq_topic: m.topic().to_owned(),
            partition: m.partition(),
            offset: m.offset(),
            letter: serde_json::from_slice(m.payload().unwrap_or_default())
                .unwrap_or_else(|e| foreign_letter(m, e.to_string())),
        }
    }

    /// The letter as JSON, its original parsed when it is JSON (for
    /// people and scripts reading one letter).
    pub fn shown(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(&self.letter).unwrap_or_default();
        if let Some(original) = value.get("original").and_then(|o| o.as_str())
            && let Ok(parsed) = serde_json::from_str::<serde_json::Value>(original)
        {
            value["original"] = parsed;
        }
        value
    }

    pub fn id(&self) -> String {
        format!("{}:{}:{}", self.dlq_topic, self.partition, self.offset)
    }

    pub fn error_class(&self) -> &str {
        &self.letter.error_class
    }

    pub fn source(&self) -> (String, i32, i64) {
        (
            self.letter.topic.clone(),
            self.letter.partition,
            self.letter.offset,
        )
    }

    /// The original message bytes, from the letter or (if it was truncated)
    /// from the source topic.
    pub fn original(&self, settings: &Settings) -> anyhow::Result<Vec<u8>> {
        if let Some(inline) = self.letter.inline_original() {
            return inline;
        }
        let (topic, partition, offset) = self.source();
        let consumer = client(settings)?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, partition, Offset::Offset(offset))?;
        consumer.assign(&tpl)?;
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while std::time::Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) if m.offset() == offset => {
                    return Ok(m.payload().unwrap_or_default().to_vec());
                }
                Some(Ok(m)) if m.offset() > offset => break,
                _ => {}
            }
        }
        anyhow::bail!(
            "the original of {} ({topic}[{partition}]@{offset}) was truncated in the letter and is no longer in its source topic",
            self.id()
        )
    }
}

/// What a message on a dead-letter topic that does not parse as a
/// [`DeadLetter`] is listed as.
fn foreign_letter(m: &impl rdkafka::Message, error: String) -> DeadLetter {
    DeadLetter {
        original: String::new(),
        original_encoding: super::Encoding::Utf8,
        original_truncated: true,
        original_size: m.payload().map_or(0, <[u8]>::len),
        key: None,
        topic: String::new(),
        partition: -1,
        offset: -1,
        error_class: "not_a_dead_letter".to_owned(),
        error: format!("not a dead letter written by projector: {error}"),
        component: None,
        failed_at: chrono::DateTime::UNIX_EPOCH,
        retry_count: 0,
    }
}

fn client(settings: &Settings) -> anyhow::Result<BaseConsumer> {
    let mut config = ClientConfig::new();
    for (k, v) in settings.kafka.consumer_config() {
        config.set(k, v);
    }
    config.set("group.id", format!("{}.dlq-tool", settings.kafka.group_id));
    config.set("enable.partition.eof", "false");
    config.create().context("failed to create a Kafka client")
}

/// The dead-letter topics of the configured source topics.
pub fn dlq_topics(settings: &Settings) -> Vec<String> {
    settings.topics.iter().map(|t| format!("dlq.{t}")).collect()
}

/// Every letter now in the dead-letter topics, oldest first per partition.
pub fn read_letters(settings: &Settings) -> anyhow::Result<Vec<Letter>> {
    let consumer = client(settings)?;
    let timeout = Duration::from_secs(10);
    let mut ends: BTreeMap<(String, i32), i64> = BTreeMap::new();
    let mut tpl = TopicPartitionList::new();
    for topic in dlq_topics(settings) {
        let metadata = consumer
            .fetch_metadata(Some(&topic), timeout)
            .with_context(|| format!("metadata of {topic}"))?;
        for t in metadata.topics() {
            for p in t.partitions() {
                let (low, high) = consumer.fetch_watermarks(t.name(), p.id(), timeout)?;
                if high > low {
                    ends.insert((t.name().to_owned(), p.id()), high);
                    tpl.add_partition_offset(t.name(), p.id(), Offset::Offset(low))?;
                }
            }
        }
    }
    let mut letters = Vec::new();
    if ends.is_empty() {
        return Ok(letters);
    }
    consumer.assign(&tpl)?;
    let mut remaining: HashSet<(String, i32)> = ends.keys().cloned().collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !remaining.is_empty() {
        if std::time::Instant::now() > deadline {
            anyhow::bail!("timed out reading the dead-letter topics");
        }
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m.context("reading a dead-letter topic")?;
        let key = (m.topic().to_owned(), m.partition());
        if m.offset() + 1 >= ends[&key] {
            remaining.remove(&key);
        }
        letters.push(Letter::read(&m));
    }
    letters.sort_by(|a, b| {
        (&a.dlq_topic, a.partition, a.offset).cmp(&(&b.dlq_topic, b.partition, b.offset))
    });
    Ok(letters)
}

/// The letter `id` (`<dlq topic>:<partition>:<offset>`), or none when the
/// topic holds no message there (never written, or deleted by retention).
/// Only dead-letter topics of the configured topics are read.
pub fn read_letter(settings: &Settings, id: &str) -> anyhow::Result<Option<Letter>> {
    let mut parts = id.rsplitn(3, ':');
    let (Some(offset), Some(partition), Some(topic)) = (parts.next(), parts.next(), parts.next())
    else {
        anyhow::bail!("{id:?} is not a dead-letter id (<dlq topic>:<partition>:<offset>)");
    };
    let (Ok(partition), Ok(offset)) = (partition.parse::<i32>(), offset.parse::<i64>()) else {
        anyhow::bail!("{id:?} is not a dead-letter id (<dlq topic>:<partition>:<offset>)");
    };
    if !dlq_topics(settings).iter().any(|t| t == topic) {
        anyhow::bail!("{topic:?} is not a dead-letter topic of this host's topics");
    }
    let consumer = client(settings)?;
    let timeout = Duration::from_secs(10);
    let (low, high) = consumer
        .fetch_watermarks(topic, partition, timeout)
        .with_context(|| format!("watermarks of {topic}[{partition}]"))?;
    if offset < low || offset >= high {
        return Ok(None);
    }
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, Offset::Offset(offset))?;
    consumer.assign(&tpl)?;
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m.context("reading a dead-letter topic")?;
        // A compacted or transactional log may skip the offset asked for.
        if m.offset() != offset {
            return Ok(None);
        }
        return Ok(Some(Letter::read(&m)));
    }
    anyhow::bail!("timed out reading {id}")
}

/// Ids of letters already redriven.
pub async fn redriven(pool: &MySqlPool) -> anyhow::Result<HashSet<String>> {
    let rows = sqlx::query("SELECT dlq_topic, `partition`, `offset` FROM dlq_redrives")
        .fetch_all(pool)
        .await?;
    rows.into_iter()
        .map(|r| {
            Ok(format!(
                "{}:{}:{}",
                r.try_get::<String, _>(0)?,
                r.try_get::<i32, _>(1)?,
                r.try_get::<i64, _>(2)?
            ))
        })
        .collect()
}

/// Which letters a redrive takes.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub all: bool,
    pub class: Option<String>,
    pub ids: Vec<String>,
    /// Take letters already redriven too.
    pub again: bool,
}

impl Selection {
    fn matches(&self, letter: &Letter) -> bool {
        self.all
            || self.ids.contains(&letter.id())
            || self
                .class
                .as_deref()
                .is_some_and(|c| c == letter.error_class())
    }
}

/// What a redrive did.
#[derive(Debug, Default)]
pub struct RedriveReport {
    pub sent: Vec<String>,
    pub skipped_already_redriven: usize,
    pub failed: Vec<(String, String)>,
}

/// Sends the selected letters back to their source topics and records them.
pub async fn redrive(
    settings: &Settings,
    pool: &MySqlPool,
    selection: &Selection,
    dry_run: bool,
) -> anyhow::Result<RedriveReport> {
    crate::sink::migrate(pool).await?;
    let letters = {
        let settings = settings.clone();
        tokio::task::spawn_blocking(move || read_letters(&settings)).await??
    };
    let done = redriven(pool).await?;
    let mut report = RedriveReport::default();
    let mut config = ClientConfig::new();
    for (k, v) in settings.kafka.producer_config() {
        config.set(k, v);
    }
    // An original may be as large as the source topic allowed; the broker
    // has the last word.
    config.set("message.max.bytes", "16777216");
    let producer: FutureProducer = config.create().context("failed to create the producer")?;
    for letter in &letters {
        if !selection.matches(letter) {
            continue;
        }
        if done.contains(&letter.id()) && !selection.again {
            report.skipped_already_redriven += 1;
            continue;
        }
        let id = letter.id();
        let original = {
            let letter = letter.clone();
            let settings = settings.clone();
            tokio::task::spawn_blocking(move || letter.original(&settings)).await?
        };
        let original = match original {
            Ok(o) => o,
            Err(e) => {
                report.failed.push((id, format!("{e:#}")));
                continue;
            }
        };
        let (topic, _, _) = letter.source();
        if dry_run {
            report.sent.push(id);
            continue;
        }
        let retries = (letter.letter.retry_count + 1).to_string();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: RETRY_COUNT_HEADER,
                value: Some(&retries),
            })
            .insert(Header {
                key: "x-redriven-from",
                value: Some(&id),
            });
        let key = letter.letter.key.clone();
        let mut record = FutureRecord::to(&topic).payload(&original).headers(headers);
        if let Some(k) = &key {
            record = record.key(k);
        }
        let delivery = producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| anyhow::anyhow!("sending {id} back to {topic} failed: {e}"))?;
        sqlx::query(
            "INSERT INTO dlq_redrives (dlq_topic, `partition`, `offset`, source_topic, sent_to_partition, sent_to_offset) \
             VALUES (?, ?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE sent_to_partition = VALUES(sent_to_partition), \
             sent_to_offset = VALUES(sent_to_offset), redriven_at = CURRENT_TIMESTAMP(6)",
        )
        .bind(&letter.dlq_topic)
        .bind(letter.partition)
        .bind(letter.offset)
        .bind(&topic)
        .bind(delivery.partition)
        .bind(delivery.offset)
        .execute(pool)
        .await?;
        report.sent.push(id);
    }
    for id in &selection.ids {
        if !letters.iter().any(|l| &l.id() == id) {
            report
                .failed
                .push((id.clone(), "no such dead letter".to_owned()));
        }
    }
    Ok(report)
}
