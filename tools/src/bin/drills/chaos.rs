//! The `chaos` drill: the chaos test component stands in for the user
//! projection of a real `projector` binary under its default limits, while
//! a generated stream of all five domains flows through it. Each kind of
//! misbehaviour is sent on its own, a few times, and timed from its send to
//! its dead letter (the two records' Kafka timestamps, both taken on this
//! machine); the host's RSS is sampled after each. The stream is then judged
//! like every drill (lost 0, duplicated 0): the other domains, and the
//! user events the chaos component projects normally, kept flowing.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, bail};
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::producer::FutureRecord;
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use serde_json::json;

use super::{Ctx, Verdict, judge, say, sigterm, wait_ready};

/// Each misbehaviour the chaos component knows, the dead-letter class the
/// host must give it, and how often it is sent.
const MATRIX: &[(&str, &str, usize)] = &[
    ("loop", "guest_trap", 3),
    ("sleep", "guest_trap", 3),
    ("clock", "guest_trap", 3),
    ("recurse", "guest_trap", 3),
    ("panic", "guest_trap", 3),
    ("alloc", "guest_trap", 20),
    ("entropy", "guest_trap", 3),
    ("flood", "guest_output_too_large", 3),
    ("wrong_type", "invalid_op", 3),
    ("too_long", "invalid_op", 3),
    ("undeclared", "disallowed_op", 3),
    ("undeclared_column", "disallowed_op", 3),
];

/// The host's resident set, from `/proc` (0 where there is none).
fn rss_mb(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// A `user.created` event that asks the chaos component for `chaos`, under
/// a key of its own.
fn chaos_event(chaos: &str, n: usize) -> (String, Vec<u8>) {
    let id = format!("{:024x}", 0xc4a0_5000_0000_u64 + n as u64);
    let payload = json!({
        "event_type": "user.created",
        "event_id": uuid::Uuid::new_v4().to_string(),
        "timestamp": "2026-01-01T00:00:00.000000Z",
        "entity_id": id,
        "data": {
            "id": id,
            "chaos": chaos,
            "contact_info": {"primary_email": format!("{id}@chaos.example"), "phone": null},
            "profile": {"display_name": "chaos", "avatar": null, "bio": null},
            "deleted_at": null,
            "created_at": "2026-01-01T00:00:00",
            "updated_at": "2026-01-01T00:00:00",
        }
    });
    (id, serde_json::to_vec(&payload).expect("JSON serialises"))
}

async fn create_topic(ctx: &Ctx, name: &str) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &ctx.kafka)
        .create()?;
    for r in admin
        .create_topics(
            &[NewTopic::new(name, 1, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await?
    {
        r.map_err(|(t, e)| anyhow::anyhow!("creating topic {t}: {e}"))?;
    }
    Ok(())
}

/// What one misbehaviour cost: times from send to dead letter, in ms.
#[derive(Default)]
struct Seen {
    containment_ms: Vec<f64>,
}

pub(super) async fn drill_chaos(ctx: &mut Ctx) -> anyhow::Result<Verdict> {
    let dir = ctx.components_copy()?;
    std::fs::copy(ctx.test_component("chaos"), dir.join("user.wasm"))?;
    let run = ctx.begin(dir).await?;
    // The stream first: its sends create the topics the host subscribes to.
    let stream = ctx.start_producing(&run, Duration::from_secs(if ctx.short { 20 } else { 40 }))?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let host = ctx.spawn_host(&run.spec(false), "chaos.log")?;
    let url = run.url();
    wait_ready(&url, Duration::from_secs(60)).await?;
    // Every lane consuming (the group settled after its joins) before
    // anything is timed.
    super::wait_count(
        &run.db.pool,
        "SELECT COUNT(DISTINCT SUBSTRING_INDEX(event_type, '.', 1)) FROM processed_events",
        5,
        Duration::from_secs(60),
    )
    .await?;
    let deadline_ms = 200.0; // sandbox.call_deadline's default, which the host runs with

    // The dead letters of the user topic, read from the start: one
    // partition, made before the host's first letter would make it.
    let dlq = format!("dlq.{}.user", run.prefix);
    create_topic(ctx, &dlq).await?;
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &ctx.kafka)
        .set("group.id", ctx.unique("chaos_reader"))
        .set("enable.auto.commit", "false");
    let letters: StreamConsumer = config.create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&dlq, 0, Offset::Beginning)?;
    letters.assign(&tpl)?;

    let producer = ctx.producer()?;
    let topic = format!("{}.user", run.prefix);
    let rss_start = rss_mb(host.id());
    let mut rss_peak = rss_start;
    let mut seen: BTreeMap<&str, Seen> = BTreeMap::new();
    let mut n = 0;
    // One untimed letter first: the host looks the dead-letter topic's
    // size limit up once, on its first letter.
    let rounds = std::iter::once(("panic", "guest_trap", 1, false)).chain(
        MATRIX
            .iter()
            .map(|&(c, class, times)| (c, class, times, true)),
    );
    for (chaos, class, times, timed) in rounds {
        for _ in 0..times {
            n += 1;
            let (key, payload) = chaos_event(chaos, n);
            let sent_ms = chrono::Utc::now().timestamp_millis();
            producer
                .send(
                    FutureRecord::to(&topic)
                        .key(&key)
                        .payload(&payload)
                        .timestamp(sent_ms),
                    Duration::from_secs(60),
                )
                .await
                .map_err(|(e, _)| e)?;
            // Its letter: the next one on the topic with its key.
            let letter = loop {
                let m = tokio::time::timeout(Duration::from_secs(30), letters.recv())
                    .await
                    .with_context(|| format!("no dead letter for {chaos:?} within 30 s"))?;
                let m = match m {
                    Err(rdkafka::error::KafkaError::MessageConsumption(
                        rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition,
                    )) => continue,
                    m => m?,
                };
                if m.key() == Some(key.as_bytes()) {
                    break m.detach();
                }
            };
            let v: serde_json::Value =
                serde_json::from_slice(letter.payload().unwrap_or_default())?;
            if v["error_class"] != class {
                bail!(
                    "{chaos}: dead-lettered {} ({}), expected {class}",
                    v["error_class"],
                    v["error"]
                );
            }
            if timed {
                // Both timestamps are taken from this machine's clock: the
                // event's send, and the host's producing of its letter.
                let letter_ms = letter
                    .timestamp()
                    .to_millis()
                    .context("the dead letter has a timestamp")?;
                let took = letter_ms - sent_ms;
                seen.entry(chaos)
                    .or_default()
                    .containment_ms
                    .push(took as f64);
            }
            rss_peak = rss_peak.max(rss_mb(host.id()));
        }
    }
    let rss_end = rss_mb(host.id());
    let drained = run.all_applied(stream).await;
    let mut host = host;
    sigterm(&mut host);
    drained?;

    let mut table = String::new();
    let mut worst: f64 = 0.0;
    for (&chaos, s) in &seen {
        let mut xs = s.containment_ms.clone();
        xs.sort_by(f64::total_cmp);
        let max = xs.last().copied().unwrap_or(0.0);
        worst = worst.max(max);
        table.push_str(&format!("{chaos} {:.0}/{:.0} ms, ", xs[xs.len() / 2], max));
    }
    say(format!(
        "chaos: send to dead letter (median/max): {table}deadline {deadline_ms:.0} ms"
    ));
    let note = format!(
        "({} misbehaving events, each dead-lettered with its class; send to dead letter at most {worst:.0} ms (deadline {deadline_ms:.0} ms{}); host RSS {rss_start:.0} MB before, {rss_peak:.0} MB peak, {rss_end:.0} MB after)",
        n - 1,
        if worst > deadline_ms + 100.0 {
            ", MORE than deadline + 100 ms"
        } else {
            ""
        },
    );
    judge(ctx, "chaos", run, note).await
}
