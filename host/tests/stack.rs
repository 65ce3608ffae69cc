//! The stack's Kafka and MariaDB are real: an envelope goes through the broker
//! on the topic of its event type with its entity id as key, and rows go
//! through MariaDB with sqlx.

mod common;

use std::time::Duration;

use chrono::NaiveDateTime;
use events::{Envelope, EventType, KafkaSettings};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde_json::json;
use sqlx::Row as _;

fn client_config(map: std::collections::BTreeMap<String, String>) -> ClientConfig {
    let mut config = ClientConfig::new();
    for (k, v) in map {
        config.set(k, v);
    }
    config
}

#[tokio::test]
async fn an_envelope_round_trips_through_kafka_on_its_topic_with_its_entity_as_key() {
    let settings = KafkaSettings {
        bootstrap_servers: common::kafka_bootstrap(),
        group_id: common::unique("stack_test"),
        ..KafkaSettings::default()
    };
    let producer: FutureProducer = client_config(settings.producer_config()).create().unwrap();
    let entity = format!("{:024x}", rand::random::<u128>() & ((1u128 << 96) - 1));
    let envelope = Envelope::new(
        EventType::UserCreated,
        entity.clone(),
        json!({"profile": {"display_name": "Zoë"}}),
    );
    let payload = envelope.to_vec();
    let rdkafka::producer::future_producer::Delivery {
        partition, offset, ..
    } = producer
        .send(
            FutureRecord::to(envelope.topic())
                .key(envelope.key())
                .payload(&payload),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("the broker of scripts/stack acknowledges");

    let consumer: BaseConsumer = client_config(settings.consumer_config()).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("user", partition, Offset::Offset(offset))
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let message = consumer
        .poll(Duration::from_secs(10))
        .expect("a message within 10 s")
        .unwrap();
    assert_eq!(message.topic(), "user");
    assert_eq!(message.key(), Some(entity.as_bytes()));
    let back: Envelope = Envelope::from_slice(message.payload().unwrap()).unwrap();
    assert_eq!(back, envelope);
}

#[tokio::test]
async fn rows_round_trip_through_mariadb() {
    let db = common::TestDb::new().await;
    sqlx::query(
        "CREATE TABLE t (id VARCHAR(24) PRIMARY KEY, name VARCHAR(255), at DATETIME(6), n BIGINT)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let at = NaiveDateTime::parse_from_str("2025-01-02 03:04:05.123456", "%Y-%m-%d %H:%M:%S%.f")
        .unwrap();
    sqlx::query("INSERT INTO t VALUES (?, ?, ?, ?)")
        .bind("65a1f0c2e4b0a1b2c3d4e5f6")
        .bind("Zoë 🌻")
        .bind(at)
        .bind(i64::MIN)
        .execute(&db.pool)
        .await
        .unwrap();
    let row = sqlx::query("SELECT name, at, n FROM t WHERE id = ?")
        .bind("65a1f0c2e4b0a1b2c3d4e5f6")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(row.get::<String, _>("name"), "Zoë 🌻");
    assert_eq!(row.get::<NaiveDateTime, _>("at"), at);
    assert_eq!(row.get::<i64, _>("n"), i64::MIN);
    db.drop_db().await;
}
