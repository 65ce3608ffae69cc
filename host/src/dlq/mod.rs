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

/// Longest reason text kept in a dead letter (reasons can quote payloads).
pub const MAX_ERROR: usize = 4096;

/// Longest key text kept in a dead letter.
pub const MAX_KEY: usize = 1024;

/// The size a dead letter is kept within when the dead-letter topic's limit
/// is unknown: below librdkafka's default `message.max.bytes` (1,000,000)
/// and the broker's default `max.message.bytes` (1,048,588).
pub const DEFAULT_BUDGET: usize = 900_000;

/// Every class a dead letter can have (the `error_class` field, the
/// `x-error-class` header, the `error_class` label of
/// `projector_dead_letters_total`). The host creates each class's series at
/// zero for every topic, and refuses (in debug builds) to count a class
/// missing here.
pub const CLASSES: [&str; 13] = [
    "too_large",
    "invalid_envelope",
    "unknown_event_type",
    "invalid_event",
    "unsupported",
    "guest_error",
    "guest_trap",
    "guest_output_too_large",
    "guest_instantiate",
    "disallowed_op",
    "invalid_op",
    "rejected_by_database",
    "unclassified",
];

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
    /// The letter of `message` failing with `failure`, at most
    /// [`DEFAULT_BUDGET`] bytes as JSON.
    pub fn new(message: &impl Message, failure: &Failure) -> DeadLetter {
        DeadLetter::within(message, failure, DEFAULT_BUDGET)
    }

    /// The letter of `message` failing with `failure`, at most `budget`
    /// bytes as JSON, so that it is always producible: the reason and key
    /// are capped, and the original keeps what fits (UTF-8 as text, cut on
    /// a character boundary, counting JSON escapes; anything else as hex),
    /// flagged as truncated otherwise (redrive then reads it from its
    /// source coordinates).
    pub fn within(message: &impl Message, failure: &Failure, budget: usize) -> DeadLetter {
        let payload = message.payload().unwrap_or_default();
        let mut letter = DeadLetter {
            original: String::new(),
            original_encoding: Encoding::Utf8,
            original_truncated: false,
            original_size: payload.len(),
            key: message
                .key()
                .map(|k| capped(&String::from_utf8_lossy(k), MAX_KEY)),
            topic: message.topic().to_owned(),
            partition: message.partition(),
            offset: message.offset(),
            error_class: failure.class.to_owned(),
            error: capped(&failure.message, MAX_ERROR),
            component: failure.component.clone(),
            failed_at: Utc::now(),
            retry_count: retry_count(message),
        };
        // Serialising plain strings and numbers cannot fail.
        let rest = serde_json::to_vec(&letter).map_or(0, |v| v.len()) + "hex".len();
        let (original, encoding, kept) = keep_original(payload, budget.saturating_sub(rest));
        letter.original = original;
        letter.original_encoding = encoding;
        letter.original_truncated = kept < payload.len();
        letter
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

/// `text` cut to at most `max` bytes on a character boundary, marked `…`.
fn capped(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// As much of `payload` (at most [`MAX_ORIGINAL`] bytes) as fits in `room`
/// bytes of a JSON string: the longest valid UTF-8 prefix as text when the
/// kept bytes are UTF-8 (a character cut at the end is dropped whole), else
/// hex. Returns the text, its encoding and how many bytes it keeps.
fn keep_original(payload: &[u8], room: usize) -> (String, Encoding, usize) {
    let head = &payload[..payload.len().min(MAX_ORIGINAL)];
    let text = match std::str::from_utf8(head) {
        Ok(text) => Some(text),
        // Only the last character is incomplete: the cut split it.
        Err(e) if e.error_len().is_none() && head.len() < payload.len() => {
            std::str::from_utf8(&head[..e.valid_up_to()]).ok()
        }
        Err(_) => None,
    };
    match text {
        Some(text) => {
            let (mut used, mut end) = (0, 0);
            for (i, c) in text.char_indices() {
                // What serde_json writes for the character.
                let cost = match c {
                    '"' | '\\' | '\n' | '\r' | '\t' | '\u{8}' | '\u{c}' => 2,
                    c if (c as u32) < 0x20 => 6,
                    c => c.len_utf8(),
                };
                if used + cost > room {
                    break;
                }
                used += cost;
                end = i + c.len_utf8();
            }
            (text[..end].to_owned(), Encoding::Utf8, end)
        }
        None => {
            let kept = (room / 2).min(head.len());
            (hex::encode(&head[..kept]), Encoding::Hex, kept)
        }
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

    #[test]
    fn a_letter_fits_its_budget_whatever_the_original() {
        let budget = 100_000;
        let big_reason = Failure {
            message: "é".repeat(10_000),
            ..failure()
        };
        let cases: [(&str, Vec<u8>); 5] = [
            ("binary", vec![0xff; 300_000]),
            ("control characters", vec![0x01; 300_000]),
            ("quotes", vec![b'"'; 300_000]),
            (
                "multi-byte text",
                "東京→Berlin ".repeat(30_000).into_bytes(),
            ),
            ("a character cut by MAX_ORIGINAL", {
                let mut v = vec![b'a'; MAX_ORIGINAL - 1];
                v.extend("€".as_bytes());
                v
            }),
        ];
        for (what, payload) in cases {
            let letter = DeadLetter::within(&message(&payload), &big_reason, budget);
            let wire = serde_json::to_vec(&letter).unwrap();
            assert!(wire.len() <= budget, "{what}: {} bytes", wire.len());
            assert!(letter.original_truncated, "{what}");
            // It keeps as much as fits: the letter fills its budget.
            assert!(
                wire.len() > budget * 9 / 10,
                "{what}: only {} bytes",
                wire.len()
            );
            assert!(
                letter.error.len() <= MAX_ERROR && letter.error.ends_with('…'),
                "{what}"
            );
            let back: DeadLetter = serde_json::from_slice(&wire).unwrap();
            assert_eq!(back, letter, "{what}");
        }
        // The cut character is dropped whole and the rest stays text.
        let cut = {
            let mut v = vec![b'a'; MAX_ORIGINAL - 1];
            v.extend("€".as_bytes());
            DeadLetter::within(&message(&v), &failure(), 10 * MAX_ORIGINAL)
        };
        assert_eq!(cut.original_encoding, Encoding::Utf8);
        assert_eq!(cut.original.len(), MAX_ORIGINAL - 1);
        // Small originals are kept whole.
        let small = DeadLetter::within(&message(b"{\"a\":\"\x01\"}"), &failure(), budget);
        assert!(!small.original_truncated);
    }
}
