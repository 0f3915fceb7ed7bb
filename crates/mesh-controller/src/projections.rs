//! Read models folded from the event log: releases, configuration history and key
//! rotations (the current services are the registry's own fold).
//!
//! They are rebuilt from the log when the controller starts, then follow it live
//! through a subscription; a reader that needs its own last write (`ListReleases` after
//! `Build`) asks for [`Projections::caught_up`] first. Each event is applied once:
//! events at or below the last applied position are skipped.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::events::{AppendError, EventStore, RecordedEvent};

/// The event types the projections read.
pub const TYPES: [&str; 6] = [
    RELEASE_RECORDED,
    "runtime.scaled",
    "runtime.desired_state_changed",
    "runtime.desired_state_refused",
    KEY_ROTATED,
    "config.changed",
];
/// A build recorded a release.
pub const RELEASE_RECORDED: &str = "release.recorded";
/// core-engine rotated a key (reported through `Events.Append`).
pub const KEY_ROTATED: &str = "engine.key_rotated";

/// A built release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// `<scope>-<revision>-<time>`.
    pub id: String,
    /// The service built, or empty for the whole workspace.
    pub service: String,
    /// The workspace version.
    pub version: String,
    /// `git rev-parse HEAD`, with `-dirty` when the tree had changes; `unknown` outside git.
    pub git_revision: String,
    /// Hex SHA-256 by binary name.
    pub binary_sha256: std::collections::BTreeMap<String, String>,
    /// When the build finished (ms since the epoch).
    pub built_at_ms: i64,
    /// `release` or `dev`.
    pub profile: String,
}

/// One change of configuration or desired state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigChange {
    /// Its event type.
    pub kind: String,
    /// Its data.
    pub data: String,
    /// Who.
    pub actor: String,
    /// When (ms since the epoch).
    pub at_ms: i64,
    /// Its log position.
    pub position: u64,
}

/// The folded views.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Views {
    /// Releases, oldest first.
    pub releases: Vec<Release>,
    /// Scaling, desired-state and configuration changes, oldest first.
    pub config_history: Vec<ConfigChange>,
    /// Key rotations, oldest first.
    pub key_rotations: Vec<ConfigChange>,
    /// The last applied log position.
    pub position: u64,
}

impl Views {
    /// Applies one event (skipped when already applied or of another type).
    pub fn apply(&mut self, event: &RecordedEvent) {
        if event.global_position <= self.position {
            return;
        }
        self.position = event.global_position;
        let change = || ConfigChange {
            kind: event.event_type.clone(),
            data: event.data.clone(),
            actor: event.metadata.actor.clone(),
            at_ms: event.recorded_at_ms,
            position: event.global_position,
        };
        match event.event_type.as_str() {
            RELEASE_RECORDED => match serde_json::from_str::<Release>(&event.data) {
                Ok(release) => self.releases.push(release),
                Err(error) => {
                    tracing::warn!(%error, position = event.global_position, "unreadable release event")
                }
            },
            KEY_ROTATED => self.key_rotations.push(change()),
            kind if TYPES.contains(&kind) => self.config_history.push(change()),
            _ => {}
        }
    }
}

/// The projections, shared by the RPCs.
#[derive(Debug, Clone)]
pub struct Projections {
    store: EventStore,
    views: Arc<Mutex<Views>>,
}

impl Projections {
    /// Rebuilds the views from the log and starts following it.
    ///
    /// # Errors
    /// When the log cannot be read.
    pub async fn start(store: EventStore) -> Result<Self, AppendError> {
        let projections = Self {
            store,
            views: Arc::new(Mutex::new(Views::default())),
        };
        projections.caught_up().await?;
        let follower = projections.clone();
        let from = projections.views.lock().await.position + 1;
        let types = TYPES.iter().map(|t| (*t).to_owned()).collect();
        let mut live = projections.store.subscribe(from, types)?;
        tokio::spawn(async move {
            while let Some(Ok(event)) = live.recv().await {
                follower.views.lock().await.apply(&event);
            }
        });
        Ok(projections)
    }

    /// The views, including every event committed before this call.
    ///
    /// # Errors
    /// When the log cannot be read.
    pub async fn caught_up(&self) -> Result<Views, AppendError> {
        let mut views = self.views.lock().await;
        let types: Vec<String> = TYPES.iter().map(|t| (*t).to_owned()).collect();
        loop {
            let (events, next) = self
                .store
                .read_all(views.position + 1, 1000, &types)
                .await?;
            for event in &events {
                views.apply(event);
            }
            // A filtered read may skip ahead past events of other types.
            views.position = views.position.max(next.saturating_sub(1));
            if events.is_empty() {
                return Ok(views.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Metadata;

    fn event(position: u64, event_type: &str, data: &str) -> RecordedEvent {
        RecordedEvent {
            stream_id: "s".into(),
            stream_version: position,
            global_position: position,
            event_type: event_type.into(),
            data: data.into(),
            metadata: Metadata {
                actor: "olga".into(),
                ..Metadata::default()
            },
            idempotency_key: None,
            recorded_at_ms: 1,
        }
    }

    #[test]
    fn events_fold_once_each_into_their_view() {
        let release = Release {
            id: "core-engine-abc-1".into(),
            service: "core-engine".into(),
            version: "0.1.0".into(),
            git_revision: "abc".into(),
            binary_sha256: [("core-engine".to_owned(), "00".to_owned())].into(),
            built_at_ms: 1,
            profile: "dev".into(),
        };
        let mut views = Views::default();
        let events = [
            event(
                1,
                RELEASE_RECORDED,
                &serde_json::to_string(&release).unwrap(),
            ),
            event(
                2,
                "runtime.scaled",
                r#"{"service":"core-engine","from":2,"to":4}"#,
            ),
            event(3, "registry.instance_registered", "{}"),
            event(4, KEY_ROTATED, r#"{"key":"payments","version":2}"#),
            event(5, RELEASE_RECORDED, "not a release"),
        ];
        for event in &events {
            views.apply(event);
        }
        // Replayed events (a live subscription overlapping the catch-up) change nothing.
        for event in &events {
            views.apply(event);
        }
        assert_eq!(views.releases, [release]);
        assert_eq!(views.config_history.len(), 1);
        assert_eq!(views.config_history[0].actor, "olga");
        assert_eq!(views.key_rotations.len(), 1);
        assert_eq!(views.position, 5);
    }
}
