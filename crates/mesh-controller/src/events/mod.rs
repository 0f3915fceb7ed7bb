//! The event store: an append-only log of every operation, the controller's memory.
//!
//! - Events live in streams (`service-core-engine`, `rollout-…`); each has a stream
//!   version (1, 2, … within its stream) and a global position (1, 2, … over the log).
//! - [`EventStore::append`] writes a batch to one stream atomically, checked against an
//!   [`ExpectedVersion`]; the loser of a race gets [`AppendError::WrongExpectedVersion`].
//!   An event may carry an idempotency key: a retried append whose keys are all stored
//!   returns the original result instead of writing again.
//! - Global positions are assigned by one appender task inside the append transaction
//!   (on PostgreSQL also under a transaction-scoped advisory lock, so several controller
//!   processes stay correct). Position `n + 1` therefore never commits before `n`: a
//!   reader following positions cannot skip an event that commits late, which a plain
//!   sequence column would allow.
//! - [`EventStore::subscribe`] delivers history from a position, then live events, with
//!   no gap or duplicate at the handover; resuming is subscribing again from the last
//!   delivered position + 1. Live delivery is woken by the appender (and on PostgreSQL
//!   by `LISTEN/NOTIFY` from other processes), and a slow poll covers lost wake-ups.
//! - Snapshots keep the latest state of a long stream next to it
//!   ([`EventStore::save_snapshot`], [`EventStore::load_snapshot`]).

mod store;
mod subscription;
#[cfg(test)]
mod tests;

pub use store::{EventStore, StoreOptions};

/// Longest stream id, event type, idempotency key or metadata field, in bytes.
pub const MAX_NAME_BYTES: usize = 256;

/// What the writer believes the stream's version to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// No check.
    Any,
    /// The stream must have no events.
    NoStream,
    /// The stream must have at least one event.
    StreamExists,
    /// The stream's last event must have this version (0 means no stream).
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether a stream whose last version is `actual` (0: none) satisfies this.
    pub fn admits(self, actual: u64) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual == 0,
            ExpectedVersion::StreamExists => actual > 0,
            ExpectedVersion::Exact(version) => actual == version,
        }
    }
}

impl std::fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::StreamExists => f.write_str("stream exists"),
            ExpectedVersion::Exact(version) => write!(f, "version {version}"),
        }
    }
}

/// Who did it, why, and what it belongs to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    /// The authenticated subject (or `system`, `local-runtime`, …).
    pub actor: String,
    /// Groups every event of one operation.
    pub correlation_id: String,
    /// The event or request that caused this one.
    pub causation_id: String,
    /// Free text: why.
    pub reason: String,
}

/// An event to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    /// `registry.instance_registered`, `release.recorded`, …
    pub event_type: String,
    /// A JSON document.
    pub data: String,
    /// Who, why, what it belongs to.
    pub metadata: Metadata,
    /// A retried append with the same key is not stored twice.
    pub idempotency_key: Option<String>,
}

impl NewEvent {
    /// An event of `event_type` with `data` serialised as JSON, by `actor`.
    pub fn json(event_type: &str, data: &impl serde::Serialize, actor: &str) -> Self {
        Self {
            event_type: event_type.to_owned(),
            data: serde_json::to_string(data).unwrap_or_else(|_| "null".to_owned()),
            metadata: Metadata {
                actor: actor.to_owned(),
                ..Metadata::default()
            },
            idempotency_key: None,
        }
    }
}

/// An event as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    /// The stream it belongs to.
    pub stream_id: String,
    /// 1, 2, … within the stream.
    pub stream_version: u64,
    /// 1, 2, … over the whole log, in commit order, without gaps.
    pub global_position: u64,
    /// The event's type.
    pub event_type: String,
    /// A JSON document.
    pub data: String,
    /// Who, why, what it belongs to.
    pub metadata: Metadata,
    /// The idempotency key it was appended with.
    pub idempotency_key: Option<String>,
    /// When it was appended, in milliseconds since the Unix epoch.
    pub recorded_at_ms: i64,
}

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendResult {
    /// The stream's version after the append (pass as `Exact` for the next one).
    pub next_expected_version: u64,
    /// Global position of the first event of the batch.
    pub first_position: u64,
    /// Global position of the last event of the batch.
    pub last_position: u64,
}

/// Why an append was refused. Nothing of a refused batch is stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    /// Another writer got there first.
    #[error("stream {stream} is at version {actual}, expected {expected}")]
    WrongExpectedVersion {
        /// The stream.
        stream: String,
        /// What the writer expected.
        expected: ExpectedVersion,
        /// The stream's version now.
        actual: u64,
    },
    /// Some of the batch's idempotency keys are stored, but not as this batch.
    #[error("idempotency key {key:?} was used by a different append")]
    IdempotencyMismatch {
        /// The first key that does not match.
        key: String,
    },
    /// The batch is malformed; `field` names what.
    #[error("{field}: {reason}")]
    Invalid {
        /// The offending field.
        field: String,
        /// Why.
        reason: String,
    },
    /// The database failed; nothing of the batch was stored.
    #[error("event store unavailable")]
    Unavailable,
}

/// Limits on what an append may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most events in one append.
    pub max_batch: usize,
    /// Largest `data` of one event, in bytes.
    pub max_data_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_batch: 1000,
            max_data_bytes: 256 * 1024,
        }
    }
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> AppendError {
    AppendError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// A stream id or event type: 1..=256 bytes of ASCII letters, digits and `-_.:/@`.
fn check_name(field: &str, value: &str) -> Result<(), AppendError> {
    if value.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if value.len() > MAX_NAME_BYTES {
        return Err(invalid(
            field,
            format!("longer than {MAX_NAME_BYTES} bytes"),
        ));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-_.:/@".contains(*c)))
    {
        return Err(invalid(
            field,
            format!("{bad:?} is not allowed (letters, digits and -_.:/@ only)"),
        ));
    }
    Ok(())
}

/// Checks a batch before it reaches the appender.
pub(crate) fn validate(
    stream: &str,
    events: &[NewEvent],
    limits: Limits,
) -> Result<(), AppendError> {
    check_name("stream_id", stream)?;
    if events.is_empty() {
        return Err(invalid("events", "at least one event is required"));
    }
    if events.len() > limits.max_batch {
        return Err(invalid(
            "events",
            format!(
                "{} events exceed the limit of {}",
                events.len(),
                limits.max_batch
            ),
        ));
    }
    let mut keys = std::collections::HashSet::new();
    for (index, event) in events.iter().enumerate() {
        check_name(&format!("events[{index}].type"), &event.event_type)?;
        if event.data.len() > limits.max_data_bytes {
            return Err(invalid(
                format!("events[{index}].data"),
                format!(
                    "{} bytes exceed the limit of {}",
                    event.data.len(),
                    limits.max_data_bytes
                ),
            ));
        }
        if let Err(error) = serde_json::from_str::<serde::de::IgnoredAny>(&event.data) {
            return Err(invalid(
                format!("events[{index}].data"),
                format!("not JSON: {error}"),
            ));
        }
        let metadata = &event.metadata;
        for (name, value) in [
            ("actor", &metadata.actor),
            ("correlation_id", &metadata.correlation_id),
            ("causation_id", &metadata.causation_id),
        ] {
            if value.len() > MAX_NAME_BYTES || value.chars().any(char::is_control) {
                return Err(invalid(
                    format!("events[{index}].metadata.{name}"),
                    format!("at most {MAX_NAME_BYTES} bytes without control characters"),
                ));
            }
        }
        if metadata.reason.len() > 4 * MAX_NAME_BYTES {
            return Err(invalid(
                format!("events[{index}].metadata.reason"),
                format!("longer than {} bytes", 4 * MAX_NAME_BYTES),
            ));
        }
        if let Some(key) = &event.idempotency_key {
            check_name(&format!("events[{index}].idempotency_key"), key)?;
            if !keys.insert(key.as_str()) {
                return Err(invalid(
                    format!("events[{index}].idempotency_key"),
                    "repeated within the batch",
                ));
            }
        }
    }
    Ok(())
}

pub(crate) use omnimesh_common::time::now_ms;
