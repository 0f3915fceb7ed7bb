//! Reports key changes to mesh-controller's event store (`[core-engine.audit]`).
//!
//! Every change to a key is stored together with its event in the key store's outbox
//! (`engine_key_events`, see [`crate::keys::events`]). One task here appends the waiting
//! events to the controller (`Events.Append`, stream `engine-key-<name>`, with a report
//! token: signed with the engine's own key, good for nothing but these events; see
//! `omnimesh_common::reporting`), oldest first, and
//! deletes each once the controller has stored it. It is woken by each change and looks
//! again every `recheck_interval` (for rows another replica left); when the controller is
//! away it retries with jittered exponential back-off and the events wait in the store,
//! across restarts. Each event carries an idempotency key, so a report retried after a
//! lost answer, or sent by two replicas sharing the store, is stored once.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder as _, ExponentialBuilder};
use omnimesh_common::auth::{Issuer, Role};
use omnimesh_common::reporting;
use omnimesh_proto::controller::v1 as pb;
use omnimesh_proto::controller::v1::events_client::EventsClient;
use tokio::sync::Notify;
use tonic::transport::{Channel, Endpoint};

use crate::keys::events::stream_id;
use crate::keys::store::{KeyStore, PendingEvent};
use crate::metrics::EngineMetrics;

/// Events read from the outbox at a time.
const BATCH: u32 = 64;
/// How long the report token minted for one round of reports is valid.
const TOKEN_TTL: Duration = Duration::from_secs(300);

/// How the reporter reaches the controller.
#[derive(Debug)]
pub(crate) struct ReportOptions {
    /// The controller's gRPC address, e.g. `http://127.0.0.1:50052`.
    pub(crate) controller: String,
    /// Signs the engine's report tokens.
    pub(crate) issuer: Issuer,
    /// The deadline of one Append.
    pub(crate) timeout: Duration,
    /// First retry delay after a failure.
    pub(crate) retry_initial: Duration,
    /// Longest retry delay.
    pub(crate) retry_max: Duration,
    /// How often the outbox is read without being woken.
    pub(crate) recheck_interval: Duration,
}

/// The running reporter; stops when dropped.
#[derive(Debug)]
pub(crate) struct Reporter {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Why a round of reports stopped.
#[derive(Debug, thiserror::Error)]
enum ReportError {
    #[error("reading the outbox: {0}")]
    Store(crate::error::EngineError),
    #[error("the controller refused or did not answer: {0}")]
    Controller(#[from] tonic::Status),
}

impl ReportError {
    /// The setting or service an operator should look at.
    fn what_to_check(&self) -> &'static str {
        match self {
            Self::Store(_) => "the key store ([core-engine.keys] database_url)",
            Self::Controller(status) => match status.code() {
                tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => {
                    "[core-engine.audit] key_file: it must hold the key of the controller's \
                     [mesh-controller.reporting] core_engine_key_file"
                }
                _ => {
                    "that mesh-controller is running at [core-engine.audit] controller \
                     (\"\" turns reporting off)"
                }
            },
        }
    }
}

impl Reporter {
    /// Starts reporting what `store` holds; `wake` is notified after each change.
    ///
    /// # Errors
    /// When `options.controller` is not a valid URI.
    pub(crate) fn start(
        store: KeyStore,
        options: ReportOptions,
        wake: Arc<Notify>,
        metrics: EngineMetrics,
    ) -> Result<Self, tonic::transport::Error> {
        let channel = Endpoint::from_shared(options.controller.clone())?
            .connect_timeout(options.timeout)
            .timeout(options.timeout)
            .connect_lazy();
        let task = tokio::spawn(run(
            store,
            EventsClient::new(channel),
            options,
            wake,
            metrics,
        ));
        Ok(Self { task })
    }
}

async fn run(
    store: KeyStore,
    mut client: EventsClient<Channel>,
    options: ReportOptions,
    wake: Arc<Notify>,
    metrics: EngineMetrics,
) {
    let new_backoff = || {
        ExponentialBuilder::default()
            .with_min_delay(options.retry_initial)
            .with_max_delay(options.retry_max)
            .with_jitter()
            .without_max_times()
            .build()
    };
    let mut backoff = new_backoff();
    let mut failures = 0_u32;
    loop {
        let outcome = report_pending(&store, &mut client, &options.issuer, &metrics).await;
        if let Ok(pending) = store.pending_event_count().await {
            metrics.key_events_pending(pending);
        }
        match outcome {
            Ok(()) => {
                if failures > 0 {
                    tracing::info!(failures, "key changes reported to mesh-controller again");
                }
                failures = 0;
                backoff = new_backoff();
                // A change wakes us (a wake-up during the round is kept by `Notify`).
                let _ = tokio::time::timeout(options.recheck_interval, wake.notified()).await;
            }
            Err(error) => {
                failures += 1;
                metrics.key_event_report_failed();
                let delay = backoff.next().unwrap_or(options.retry_max);
                tracing::warn!(
                    %error,
                    failures,
                    retry_in = ?delay,
                    controller = %options.controller,
                    check = error.what_to_check(),
                    "key changes not reported to mesh-controller; they wait in the key store"
                );
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Reports every waiting event, oldest first; stops at the first failure.
async fn report_pending(
    store: &KeyStore,
    client: &mut EventsClient<Channel>,
    issuer: &Issuer,
    metrics: &EngineMetrics,
) -> Result<(), ReportError> {
    loop {
        let batch = store
            .pending_events(BATCH)
            .await
            .map_err(ReportError::Store)?;
        if batch.is_empty() {
            return Ok(());
        }
        let bearer = format!(
            "Bearer {}",
            // The controller gives a report token no role: the one named is the least.
            issuer.issue(reporting::ISSUER, Role::Viewer, TOKEN_TTL)
        );
        let bearer: tonic::metadata::MetadataValue<_> = bearer
            .parse()
            .map_err(|_| tonic::Status::internal("the token is not a valid header value"))?;
        for event in batch {
            let mut request = tonic::Request::new(append_request(&event));
            request
                .metadata_mut()
                .insert("authorization", bearer.clone());
            client.append(request).await?;
            store
                .forget_event(event.id)
                .await
                .map_err(ReportError::Store)?;
            metrics.key_event_reported();
        }
    }
}

fn append_request(event: &PendingEvent) -> pb::AppendRequest {
    pb::AppendRequest {
        stream_id: stream_id(&event.key),
        expected: Some(pb::ExpectedVersion {
            kind: Some(pb::expected_version::Kind::Any(true)),
        }),
        events: vec![pb::NewEvent {
            r#type: event.event_type.clone(),
            data: event.data.clone(),
            metadata: Some(pb::EventMetadata {
                actor: crate::SERVICE.to_owned(),
                correlation_id: String::new(),
                causation_id: String::new(),
                reason: String::new(),
            }),
            idempotency_key: event.idempotency_key.clone(),
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_names_what_to_check() {
        let refused = ReportError::Controller(tonic::Status::unauthenticated("bad token"));
        assert!(refused.what_to_check().contains("core_engine_key_file"));
        let away = ReportError::Controller(tonic::Status::unavailable("connection refused"));
        assert!(
            away.what_to_check()
                .contains("[core-engine.audit] controller")
        );
        let store = ReportError::Store(crate::error::EngineError::Internal);
        assert!(store.what_to_check().contains("database_url"));
    }
}
