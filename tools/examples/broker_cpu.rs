//! The Kafka broker's CPU under a paced stream, with and without consumers:
//! where the broker's share of a paced `scripts/bench` latency run goes.
//!
//! One producer (the project's producer config) sends `--rate` events/s of
//! 600 bytes, keyed, over five fresh 12-partition topics; consumers (the
//! host's consumer config, plus any `--set`) drain them: none, one per
//! topic (as the host's lanes), or one for all five. After a 5 s warm-up it
//! prints the broker's CPU (user + system, from `/proc`) in cores.
//!
//! ```text
//! eval "$(scripts/stack env)"
//! cargo run --release -p projector-tools --example broker_cpu -- --consumers per-topic
//! cargo run --release -p projector-tools --example broker_cpu -- --consumers one \
//!     --set fetch.wait.max.ms=10 --set fetch.min.bytes=1000000
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use projector_tools::process::cpu_secs;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};

#[derive(Parser)]
struct Args {
    /// Consumers reading the five topics.
    #[arg(long, value_enum, default_value_t = Consumers::PerTopic)]
    consumers: Consumers,
    /// Events per second.
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// Seconds measured, after a 5 s warm-up.
    #[arg(long, default_value_t = 15)]
    secs: u64,
    /// A consumer setting over the host's (KEY=VALUE; repeatable).
    #[arg(long = "set")]
    set: Vec<String>,
    /// The broker's process id (default: `.stack/kafka/pid`).
    #[arg(long)]
    broker_pid: Option<u32>,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Consumers {
    /// The producer alone.
    None,
    /// One consumer for all five topics.
    One,
    /// One consumer per topic, as the host's lanes.
    PerTopic,
}

fn config(entries: impl IntoIterator<Item = (String, String)>) -> ClientConfig {
    let mut config = ClientConfig::new();
    for (k, v) in entries {
        config.set(k, v);
    }
    config
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let pid = match args.broker_pid {
        Some(pid) => pid,
        None => std::fs::read_to_string(".stack/kafka/pid")
            .context("no --broker-pid and no .stack/kafka/pid here")?
            .trim()
            .parse()?,
    };
    let settings = events::KafkaSettings {
        bootstrap_servers: std::env::var("KAFKA_BOOTSTRAP")
            .unwrap_or_else(|_| "127.0.0.1:9092".to_owned()),
        group_id: format!("broker_cpu_{}", uuid::Uuid::new_v4().simple()),
        ..Default::default()
    };
    let run = uuid::Uuid::new_v4().simple().to_string();
    let topics: Vec<String> = (0..5).map(|i| format!("broker_cpu_{run}_{i}")).collect();
    let admin: AdminClient<DefaultClientContext> = config(settings.producer_config()).create()?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| NewTopic::new(t, 12, TopicReplication::Fixed(1)))
        .collect();
    admin.create_topics(&new, &AdminOptions::new()).await?;

    let mut consumer_config = settings.consumer_config();
    for kv in &args.set {
        let (k, v) = kv.split_once('=').context("--set takes KEY=VALUE")?;
        consumer_config.insert(k.to_owned(), v.to_owned());
    }
    let subscriptions: Vec<Vec<&str>> = match args.consumers {
        Consumers::None => vec![],
        Consumers::One => vec![topics.iter().map(String::as_str).collect()],
        Consumers::PerTopic => topics.iter().map(|t| vec![t.as_str()]).collect(),
    };
    let consumed = Arc::new(AtomicU64::new(0));
    for topics in subscriptions {
        let consumer: StreamConsumer = config(consumer_config.clone()).create()?;
        consumer.subscribe(&topics)?;
        let consumed = consumed.clone();
        tokio::spawn(async move {
            while consumer.recv().await.is_ok() {
                consumed.fetch_add(1, Ordering::Relaxed);
            }
        });
    }

    let producer: FutureProducer = config(settings.producer_config()).create()?;
    let payload = vec![b'x'; 600];
    let warm_up = args.rate * 5;
    let total = warm_up + args.rate * args.secs;
    let started = Instant::now();
    let mut measured = None;
    for i in 0..total {
        let due = started + Duration::from_secs_f64(i as f64 / args.rate as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            tokio::time::sleep(wait).await;
        }
        if i == warm_up {
            measured = Some((
                Instant::now(),
                cpu_secs(pid).context("reading the broker's CPU time")?,
                consumed.load(Ordering::Relaxed),
            ));
        }
        let key = format!("k{i}");
        let _ = producer.send_result(
            FutureRecord::to(&topics[(i % 5) as usize])
                .key(&key)
                .payload(&payload),
        );
    }
    let (from, cpu, before) = measured.context("no measured window")?;
    let secs = from.elapsed().as_secs_f64();
    println!(
        "consumers {:?}{}: broker {:.3} cores over {secs:.1} s at {} events/s; {} consumed in the window",
        args.consumers,
        if args.set.is_empty() {
            String::new()
        } else {
            format!(" ({})", args.set.join(", "))
        },
        (cpu_secs(pid).context("reading the broker's CPU time")? - cpu) / secs,
        args.rate,
        consumed.load(Ordering::Relaxed) - before,
    );
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    admin.delete_topics(&names, &AdminOptions::new()).await?;
    Ok(())
}
