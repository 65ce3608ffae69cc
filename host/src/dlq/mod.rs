//! Dead letters: what the host sends to `dlq.<topic>` when an event can never
//! be applied, and what the operator's tools read back.
//!
//! [`DeadLetter`] is the one wire type of the format: the host serialises it
//! ([`publish`]), `projector dlq list | show | redrive` deserialise it
//! ([`redrive`]). The Kafka headers `x-error-class` and `x-source-*` repeat
//! the main fields for tools that do not parse JSON.

use chrono::{DateTime, Utc};
use rdkafka::Message;
use serde::{Deserialize, Serialize};

pub mod publish;
pub mod redrive;

pub use publish::Publisher;

/// Largest original message kept inline in a dead letter; larger ones are
/// truncated (the dead letter keeps the source coordinates for redrive).
pub const MAX_ORIGINAL: usize = 512 * 1024;

/// A permanent failure of one event: why it is dead-lettered.
#[derive(Debug, Clone)]
pub struct Failure {
    /// Short class for metrics and selection (`invalid_event`, `guest_trap`, ...).
    pub class: &'static str,
    pub message: String,
    /// The component that refused it, when one was involved.
    pub component: Option<ComponentRef>,
}

/// The component in force when an event failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComponentRef {
    pub name: String,
    pub version: String,
    pub digest: String,
}

/// How [`DeadLetter::original`] holds the original bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// The bytes were valid UTF-8 and are kept as they are.
    Utf8,
    /// Anything else, as lower-case hex.
    Hex,
}

/// One dead letter, as JSON on `dlq.<topic>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    /// The original message value (at most [`MAX_ORIGINAL`] bytes of it).
    pub original: String,
    pub original_encoding: Encoding,
    /// The original was longer than [`MAX_ORIGINAL`]; redrive reads it from
    /// its source coordinates.
    pub original_truncated: bool,
    pub original_size: usize,
    /// The message key, as text.
    pub key: Option<String>,
    /// Source coordinates.
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub error_class: String,
    pub error: String,
    pub component: Option<ComponentRef>,
    pub failed_at: DateTime<Utc>,
    /// How many times the message was redriven before this failure.
    pub retry_count: u32,
}

impl DeadLetter {
    /// The letter of `message` failing with `failure`.
    pub fn new(message: &impl Message, failure: &Failure) -> DeadLetter {
        let payload = message.payload().unwrap_or_default();
        let kept = &payload[..payload.len().min(MAX_ORIGINAL)];
        let (original, original_encoding) = match std::str::from_utf8(kept) {
            Ok(s) => (s.to_owned(), Encoding::Utf8),
            Err(_) => (hex::encode(kept), Encoding::Hex),
        };
        DeadLetter {
            original,
            original_encoding,
            original_truncated: payload.len() > MAX_ORIGINAL,
            original_size: payload.len(),
            key: message
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            error_class: failure.class.to_owned(),
            error: failure.message.clone(),
            component: failure.component.clone(),
            failed_at: Utc::now(),
            retry_count: retry_count(message),
        }
    }

    /// The original bytes, unless they were truncated.
    pub fn inline_original(&self) -> Option<anyhow::Result<Vec<u8>>> {
        if self.original_truncated {
            return None;
        }
        Some(match self.original_encoding {
            Encoding::Hex => hex::decode(&self.original)
                .map_err(|e| anyhow::anyhow!("the letter's hex original is corrupt: {e}")),
            Encoding::Utf8 => Ok(self.original.as_bytes().to_vec()),
        })
    }
}

/// Header that counts redrives of a message (set by `projector dlq redrive`).
pub const RETRY_COUNT_HEADER: &str = "x-retry-count";

/// How many times the message was redriven from a dead-letter topic.
fn retry_count(m: &impl Message) -> u32 {
    use rdkafka::message::Headers as _;
    m.headers()
        .and_then(|h| {
            h.iter()
                .find(|h| h.key == RETRY_COUNT_HEADER)
                .and_then(|h| h.value)
                .and_then(|v| std::str::from_utf8(v).ok())
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use rdkafka::message::{OwnedMessage, Timestamp};

    use super::*;

    fn message(payload: &[u8]) -> OwnedMessage {
        OwnedMessage::new(
            Some(payload.to_vec()),
            Some(b"k1".to_vec()),
            "user".into(),
            Timestamp::NotAvailable,
            3,
            42,
            None,
        )
    }

    fn failure() -> Failure {
        Failure {
            class: "invalid_event",
            message: "data.email: expected a string".into(),
            component: None,
        }
    }

    #[test]
    fn a_letter_reads_back_as_it_was_written() {
        let letter = DeadLetter::new(&message(b"{\"a\":1}"), &failure());
        let wire = serde_json::to_vec(&letter).unwrap();
        let back: DeadLetter = serde_json::from_slice(&wire).unwrap();
        assert_eq!(back, letter);
        assert_eq!(back.inline_original().unwrap().unwrap(), b"{\"a\":1}");
        let json: serde_json::Value = serde_json::from_slice(&wire).unwrap();
        assert_eq!(json["original_encoding"], "utf8");
        assert_eq!(json["topic"], "user");
        assert_eq!(json["partition"], 3);
        assert_eq!(json["offset"], 42);
    }

    #[test]
    fn binary_originals_are_hex_and_long_ones_truncated() {
        let binary = DeadLetter::new(&message(&[0xff, 0x00]), &failure());
        assert_eq!(binary.original, "ff00");
        assert_eq!(binary.original_encoding, Encoding::Hex);
        assert_eq!(binary.inline_original().unwrap().unwrap(), [0xff, 0x00]);
        let long = DeadLetter::new(&message(&vec![b'x'; MAX_ORIGINAL + 1]), &failure());
        assert!(long.original_truncated);
        assert_eq!(long.original.len(), MAX_ORIGINAL);
        assert_eq!(long.original_size, MAX_ORIGINAL + 1);
        assert!(long.inline_original().is_none());
    }
}
