//! A rough throughput comparison of the batched default mode and the
//! reference design's per-event mode (one transaction per event) on the same
//! input, in one run. The full benchmark is `scripts/bench` (issue 7).
//!
//! cargo run --release -p projector-host --example rough_rate -- [EVENTS]

use std::time::{Duration, Instant};

use projector_host::pipeline::{Host, Mode};
use projector_host::settings::Settings;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::ConnectOptions as _;
use sqlx::mysql::MySqlConnectOptions;

fn fixture(root: &std::path::Path, event_type: &str) -> serde_json::Value {
    let text =
        std::fs::read_to_string(root.join(format!("guest-projections/fixtures/{event_type}.json")))
            .unwrap();
    serde_json::from_str(&text).unwrap()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(20_000);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let bootstrap = std::env::var("KAFKA_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let mysql = std::env::var("MYSQL_URL")
        .unwrap_or_else(|_| "mysql://projector:projector@127.0.0.1:3306/projector".into());
    let prefix = format!("rate{}", uuid::Uuid::new_v4().simple());
    let kinds = [
        "user.created",
        "supplier.created",
        "product.created",
        "order.created",
        "post.created",
    ];
    let templates: Vec<serde_json::Value> = kinds.iter().map(|k| fixture(&root, k)).collect();

    let mut config = ClientConfig::new();
    let kafka = events::KafkaSettings {
        bootstrap_servers: bootstrap.clone(),
        ..Default::default()
    };
    for (k, v) in kafka.producer_config() {
        config.set(k, v);
    }
    let producer: FutureProducer = config.create()?;
    let started = Instant::now();
    let mut pending = Vec::new();
    for i in 0..n {
        let mut e = templates[i % kinds.len()].clone();
        let id = format!("{:024x}", i as u128 + 1);
        e["entity_id"] = id.clone().into();
        e["event_id"] = uuid::Uuid::new_v4().to_string().into();
        if e["data"].get("order_number").is_some() {
            e["data"]["order_number"] = format!("ORD-{id}").into();
        }
        let topic = format!(
            "{prefix}.{}",
            kinds[i % kinds.len()].split('.').next().unwrap()
        );
        let payload = e.to_string();
        pending.push(
            producer
                .send_result(FutureRecord::to(&topic).key(&id).payload(&payload))
                .map_err(|(e, _)| e)?,
        );
        if pending.len() >= 10_000 {
            for p in pending.drain(..) {
                p.await?.map_err(|(e, _)| e)?;
            }
        }
    }
    for p in pending {
        p.await?.map_err(|(e, _)| e)?;
    }
    println!(
        "produced {n} events in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let mut results = Vec::new();
    for (label, batch) in [("batched (500)", 500usize), ("per-event (1)", 1)] {
        let admin: MySqlConnectOptions = mysql.parse()?;
        let db = format!("rate_{}", uuid::Uuid::new_v4().simple());
        let mut conn = admin.clone().connect().await?;
        sqlx::query(&format!("CREATE DATABASE `{db}`"))
            .execute(&mut conn)
            .await?;
        let mut s = Settings::default();
        s.kafka.bootstrap_servers = bootstrap.clone();
        s.kafka.group_id = format!("rate-{}", uuid::Uuid::new_v4().simple());
        s.topics = kinds
            .iter()
            .map(|k| format!("{prefix}.{}", k.split('.').next().unwrap()))
            .collect();
        s.mysql.url = admin.database(&db).to_url_lossy().to_string();
        s.components.dir = root.join("build/projections");
        s.batch.max_events = batch;
        s.admin.listen = "127.0.0.1:0".parse()?;
        let host = Host::build(s, Mode::Wasm).await?;
        let pool = host.pool.clone();
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(host.run(stop.clone()));
        let t0 = Instant::now();
        let mut first: Option<Instant> = None;
        loop {
            let done: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM processed_events")
                .fetch_one(&pool)
                .await?;
            if done > 0 && first.is_none() {
                first = Some(Instant::now());
            }
            if done as usize >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let elapsed = first.map_or(t0.elapsed(), |f| f.elapsed());
        stop.cancel();
        task.await??;
        let rate = n as f64 / elapsed.as_secs_f64();
        println!(
            "{label:<15} {n} events in {:>6.2} s = {:>8.0} events/s",
            elapsed.as_secs_f64(),
            rate
        );
        results.push(rate);
        sqlx::query(&format!("DROP DATABASE `{db}`"))
            .execute(&mut conn)
            .await?;
    }
    println!("batched / per-event = {:.1}x", results[0] / results[1]);
    Ok(())
}
