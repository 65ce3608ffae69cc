use chrono::{DateTime, SecondsFormat, Utc};
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::{EventType, UnknownEventType};

/// The event envelope, exactly the reference design's five fields:
///
/// ```json
/// {"event_type": "order.created", "event_id": "<uuid v4>",
///  "timestamp": "2026-11-26T01:02:03.456789Z", "entity_id": "<24 hex>", "data": {...}}
/// ```
///
/// `D` is the payload type: [`serde_json::Value`] for producers that build it,
/// `Box<RawValue>` for consumers that pass it on without parsing it.
///
/// `event_type` is kept as the wire string so a consumer can route event types
/// it learned at run time (from a projection component) without a rebuild;
/// [`Envelope::known_event_type`] checks it against the twenty built-in ones.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Envelope<D = serde_json::Value> {
    pub event_type: String,
    pub event_id: Uuid,
    #[serde(with = "rfc3339")]
    pub timestamp: DateTime<Utc>,
    pub entity_id: String,
    pub data: D,
    /// Names of the fields the envelope carried beyond the five, which are
    /// ignored (and not written back by [`Envelope::to_vec`]).
    #[serde(skip)]
    pub unknown_fields: Vec<String>,
}

/// Why bytes are not a valid envelope.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("not a JSON envelope: {0}")]
    Json(#[from] serde_json::Error),
    #[error("event_type {0:?} has no topic part (expected \"<topic>.<action>\")")]
    NoTopic(String),
    #[error("entity_id is empty")]
    EmptyEntityId,
}

impl Envelope<serde_json::Value> {
    /// A new envelope with a fresh UUID v4 and the current UTC time (to the
    /// microsecond, the precision the projection stores).
    pub fn new(
        event_type: EventType,
        entity_id: impl Into<String>,
        data: serde_json::Value,
    ) -> Self {
        Self::at(event_type, entity_id, data, Utc::now())
    }

    /// A new envelope with a fresh UUID v4 stamped `timestamp`, truncated to
    /// the microsecond.
    pub fn at(
        event_type: EventType,
        entity_id: impl Into<String>,
        data: serde_json::Value,
        timestamp: DateTime<Utc>,
    ) -> Self {
        let timestamp = DateTime::from_timestamp_micros(timestamp.timestamp_micros())
            // Truncating a representable time keeps it representable.
            .expect("a truncated time is representable");
        Envelope {
            event_type: event_type.as_str().to_owned(),
            event_id: Uuid::new_v4(),
            timestamp,
            entity_id: entity_id.into(),
            data,
            unknown_fields: Vec::new(),
        }
    }
}

impl<D> Envelope<D> {
    /// The topic name: the part of `event_type` before the first `.`.
    pub fn topic(&self) -> &str {
        self.event_type
            .split_once('.')
            .map_or(self.event_type.as_str(), |(topic, _)| topic)
    }

    /// The event type if it is one of the twenty built-in ones.
    pub fn known_event_type(&self) -> Result<EventType, UnknownEventType> {
        self.event_type.parse()
    }

    /// The Kafka message key: the entity id, so that every event of one entity
    /// lands in one partition and keeps its order.
    pub fn key(&self) -> &str {
        &self.entity_id
    }

    /// The timestamp as the wire carries it (RFC 3339, UTC, microseconds).
    pub fn timestamp_string(&self) -> String {
        format_timestamp(&self.timestamp)
    }
}

impl<'de, D: Deserialize<'de>> Envelope<D> {
    /// Parses and checks an envelope from message bytes.
    pub fn from_slice(bytes: &'de [u8]) -> Result<Self, EnvelopeError> {
        let envelope: Envelope<D> = serde_json::from_slice(bytes)?;
        if !envelope.event_type.contains('.') {
            return Err(EnvelopeError::NoTopic(envelope.event_type));
        }
        if envelope.entity_id.is_empty() {
            return Err(EnvelopeError::EmptyEntityId);
        }
        Ok(envelope)
    }
}

impl<D: Serialize> Envelope<D> {
    /// The JSON bytes put on the wire.
    pub fn to_vec(&self) -> Vec<u8> {
        // Serialising plain strings, a UUID and a JSON payload cannot fail.
        serde_json::to_vec(self).expect("envelope serialises")
    }
}

/// Formats a timestamp the way envelopes carry it: RFC 3339, UTC (`Z`), six
/// fractional digits.
pub fn format_timestamp(ts: &DateTime<Utc>) -> String {
    ts.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Reads the five fields by name and ignores any other, as the reference
/// design's consumers do: a producer that adds a field (a trace id, a schema
/// version) must not send every event to the dead-letter topic. The names
/// of the ignored fields are kept in [`Envelope::unknown_fields`] so a
/// consumer can count them. The five fields stay required, typed and
/// unique.
impl<'de, D: Deserialize<'de>> Deserialize<'de> for Envelope<D> {
    fn deserialize<De: Deserializer<'de>>(de: De) -> Result<Self, De::Error> {
        enum Field {
            EventType,
            EventId,
            Timestamp,
            EntityId,
            Data,
            Other(String),
        }

        impl<'de> Deserialize<'de> for Field {
            fn deserialize<De: Deserializer<'de>>(de: De) -> Result<Self, De::Error> {
                struct FieldVisitor;
                impl Visitor<'_> for FieldVisitor {
                    type Value = Field;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str("a field name")
                    }
                    fn visit_str<E: de::Error>(self, name: &str) -> Result<Field, E> {
                        Ok(match name {
                            "event_type" => Field::EventType,
                            "event_id" => Field::EventId,
                            "timestamp" => Field::Timestamp,
                            "entity_id" => Field::EntityId,
                            "data" => Field::Data,
                            other => Field::Other(other.to_owned()),
                        })
                    }
                }
                de.deserialize_identifier(FieldVisitor)
            }
        }

        struct Timestamp(DateTime<Utc>);
        impl<'de> Deserialize<'de> for Timestamp {
            fn deserialize<De: Deserializer<'de>>(de: De) -> Result<Self, De::Error> {
                rfc3339::deserialize(de).map(Timestamp)
            }
        }

        fn once<T, E: de::Error>(slot: &mut Option<T>, name: &'static str, v: T) -> Result<(), E> {
            if slot.replace(v).is_some() {
                return Err(E::duplicate_field(name));
            }
            Ok(())
        }

        struct EnvelopeVisitor<D>(PhantomData<D>);
        impl<'de, D: Deserialize<'de>> Visitor<'de> for EnvelopeVisitor<D> {
            type Value = Envelope<D>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an event envelope (a JSON object)")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Envelope<D>, A::Error> {
                let (mut event_type, mut event_id, mut timestamp, mut entity_id, mut data) =
                    (None, None, None, None, None);
                let mut unknown_fields = Vec::new();
                while let Some(field) = map.next_key::<Field>()? {
                    match field {
                        Field::EventType => once(&mut event_type, "event_type", map.next_value()?)?,
                        Field::EventId => once(&mut event_id, "event_id", map.next_value()?)?,
                        Field::Timestamp => {
                            once(
                                &mut timestamp,
                                "timestamp",
                                map.next_value::<Timestamp>()?.0,
                            )?;
                        }
                        Field::EntityId => once(&mut entity_id, "entity_id", map.next_value()?)?,
                        Field::Data => once(&mut data, "data", map.next_value()?)?,
                        Field::Other(name) => {
                            map.next_value::<de::IgnoredAny>()?;
                            if unknown_fields.contains(&name) {
                                return Err(de::Error::custom(format!("duplicate field `{name}`")));
                            }
                            unknown_fields.push(name);
                        }
                    }
                }
                Ok(Envelope {
                    event_type: event_type.ok_or_else(|| de::Error::missing_field("event_type"))?,
                    event_id: event_id.ok_or_else(|| de::Error::missing_field("event_id"))?,
                    timestamp: timestamp.ok_or_else(|| de::Error::missing_field("timestamp"))?,
                    entity_id: entity_id.ok_or_else(|| de::Error::missing_field("entity_id"))?,
                    data: data.ok_or_else(|| de::Error::missing_field("data"))?,
                    unknown_fields,
                })
            }
        }

        de.deserialize_map(EnvelopeVisitor(PhantomData))
    }
}

/// Owned raw payload, for consumers that hand `data` on without parsing it.
pub type RawEnvelope = Envelope<Box<RawValue>>;

mod rfc3339 {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(ts: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_timestamp(ts))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| serde::de::Error::custom(format!("timestamp {s:?} is not RFC 3339: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_new_envelope_has_a_v4_id_and_a_utc_microsecond_timestamp() {
        let e = Envelope::new(
            EventType::OrderCreated,
            "64f0c0ffee0000000000abcd",
            json!({"a": 1}),
        );
        assert_eq!(e.event_id.get_version_num(), 4);
        assert_eq!(e.timestamp.timestamp_subsec_nanos() % 1000, 0);
        let ts = e.timestamp_string();
        assert!(
            ts.ends_with('Z') && ts.len() == "2026-11-26T01:02:03.456789Z".len(),
            "{ts}"
        );
        assert_eq!(e.topic(), "order");
        assert_eq!(e.key(), "64f0c0ffee0000000000abcd");
    }

    #[test]
    fn the_wire_form_has_exactly_the_five_fields_and_round_trips() {
        let e = Envelope::new(
            EventType::ProductOutOfStock,
            "p1",
            json!({"name": "Cafe\u{301}", "n": null}),
        );
        let bytes = e.to_vec();
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort();
        assert_eq!(
            keys,
            ["data", "entity_id", "event_id", "event_type", "timestamp"]
        );
        assert_eq!(v["event_type"], "product.out_of_stock");
        let back: Envelope = Envelope::from_slice(&bytes).unwrap();
        assert_eq!(back, e);
        assert_eq!(back.known_event_type(), Ok(EventType::ProductOutOfStock));
    }

    #[test]
    fn a_raw_payload_is_passed_on_byte_for_byte() {
        let bytes = br#"{"event_type":"user.created","event_id":"6f1c1d8e-8c1a-4f7e-9a55-0b7c1e6b3c11","timestamp":"2026-01-02T03:04:05.000006+00:00","entity_id":"u1","data":{"b": [1, 2]}}"#;
        let e: RawEnvelope = Envelope::from_slice(bytes).unwrap();
        assert_eq!(e.data.get(), r#"{"b": [1, 2]}"#);
        assert_eq!(e.timestamp_string(), "2026-01-02T03:04:05.000006Z");
    }

    #[test]
    fn offsets_are_normalised_to_utc() {
        let bytes = br#"{"event_type":"user.created","event_id":"6f1c1d8e-8c1a-4f7e-9a55-0b7c1e6b3c11","timestamp":"2026-01-02T05:04:05+02:00","entity_id":"u1","data":{}}"#;
        let e: Envelope = Envelope::from_slice(bytes).unwrap();
        assert_eq!(e.timestamp_string(), "2026-01-02T03:04:05.000000Z");
    }

    #[test]
    fn malformed_envelopes_are_clear_errors() {
        let cases: [(&[u8], &str); 10] = [
            (b"not json", "not a JSON envelope"),
            (br#"{"event_type":"user.created"}"#, "missing field `event_id`"),
            (
                br#"{"event_type":"user.created","event_id":"nope","timestamp":"2026-01-02T03:04:05Z","entity_id":"u1","data":{}}"#,
                "UUID",
            ),
            (
                br#"{"event_type":"user.created","event_id":"6f1c1d8e-8c1a-4f7e-9a55-0b7c1e6b3c11","timestamp":"yesterday","entity_id":"u1","data":{}}"#,
                "not RFC 3339",
            ),
            (
                br#"{"event_type":"usercreated","event_id":"6f1c1d8e-8c1a-4f7e-9a55-0b7c1e6b3c11","timestamp":"2026-01-02T03:04:05Z","entity_id":"u1","data":{}}"#,
                "no topic part",
            ),
            (
                br#"{"event_type":"user.created","event_id":"6f1c1d8e-8c1a-4f7e-9a55-0b7c1e6b3c11","timestamp":"2026-01-02T03:04:05Z","entity_id":"","data":{}}"#,
                "entity_id is empty",
            ),
            (
                br#"{"event_type":"user.created","event_type":"user.updated","event_id":"6f1c1d8e-8c1a-4f7e-9a55-0b7c1e6b3c11","timestamp":"2026-01-02T03:04:05Z","entity_id":"u1","data":{}}"#,
                "duplicate field `event_type`",
            ),
            (
                br#"{"event_type":"user.created","event_id":"6f1c1d8e-8c1a-4f7e-9a55-0b7c1e6b3c11","timestamp":"2026-01-02T03:04:05Z","entity_id":"u1"}"#,
                "missing field `data`",
            ),
            (
                br#"{"event_type":7,"event_id":"6f1c1d8e-8c1a-4f7e-9a55-0b7c1e6b3c11","timestamp":"2026-01-02T03:04:05Z","entity_id":"u1","data":{}}"#,
                "invalid type: integer `7`, expected a string",
            ),
            (br#"[1, 2]"#, "expected an event envelope"),
        ];
        for (bytes, expected) in cases {
            let err = Envelope::<serde_json::Value>::from_slice(bytes)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(expected),
                "{err:?} should mention {expected:?}"
            );
        }
    }

    #[test]
    fn fields_beyond_the_five_are_ignored_and_named() {
        let bytes = br#"{"trace_id":"abc","event_type":"user.created","event_id":"6f1c1d8e-8c1a-4f7e-9a55-0b7c1e6b3c11","timestamp":"2026-01-02T03:04:05Z","entity_id":"u1","data":{"x":1},"schema_version":{"major":2}}"#;
        let e: RawEnvelope = Envelope::from_slice(bytes).unwrap();
        assert_eq!(e.unknown_fields, ["trace_id", "schema_version"]);
        assert_eq!(
            (e.event_type.as_str(), e.entity_id.as_str(), e.data.get()),
            ("user.created", "u1", r#"{"x":1}"#)
        );
        let written: serde_json::Value = serde_json::from_slice(&e.to_vec()).unwrap();
        assert!(written.get("trace_id").is_none(), "{written}");
    }

    #[test]
    fn an_unknown_event_type_parses_but_is_not_known() {
        let bytes = br#"{"event_type":"order.refunded","event_id":"6f1c1d8e-8c1a-4f7e-9a55-0b7c1e6b3c11","timestamp":"2026-01-02T03:04:05Z","entity_id":"o1","data":{}}"#;
        let e: Envelope = Envelope::from_slice(bytes).unwrap();
        assert_eq!(e.topic(), "order");
        assert!(e.known_event_type().is_err());
    }
}
