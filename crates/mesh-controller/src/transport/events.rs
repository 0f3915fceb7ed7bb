//! `omnimesh.controller.v1.Events`: the event store over gRPC.

use futures::StreamExt as _;
use omnimesh_common::reporting::{self, Reporter};
use omnimesh_proto::controller::v1 as pb;
use omnimesh_proto::controller::v1::events_server::Events;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

use super::timestamp;
use crate::events::{AppendError, EventStore, ExpectedVersion, Metadata, NewEvent, RecordedEvent};

/// Metadata key of a conflict's actual stream version, for clients that retry.
pub(crate) const ACTUAL_VERSION_KEY: &str = "omnimesh-actual-version";

/// `omnimesh.controller.v1.Events`.
#[derive(Debug, Clone)]
pub(crate) struct EventsService {
    store: EventStore,
    streams: CancellationToken,
}

impl EventsService {
    /// `streams` ends every subscription when it is cancelled (at shutdown).
    pub(crate) fn new(store: EventStore, streams: CancellationToken) -> Self {
        Self { store, streams }
    }
}

pub(crate) fn status(error: AppendError) -> Status {
    match &error {
        AppendError::WrongExpectedVersion { actual, .. } => {
            let mut status = Status::aborted(error.to_string());
            status
                .metadata_mut()
                .insert(ACTUAL_VERSION_KEY, (*actual).into());
            status
        }
        AppendError::IdempotencyMismatch { .. } => Status::already_exists(error.to_string()),
        AppendError::Invalid { .. } => Status::invalid_argument(error.to_string()),
        AppendError::Unavailable => Status::unavailable(error.to_string()),
    }
}

fn expected(expected: Option<pb::ExpectedVersion>) -> ExpectedVersion {
    use pb::expected_version::Kind;
    match expected.and_then(|expected| expected.kind) {
        None | Some(Kind::Any(_)) => ExpectedVersion::Any,
        Some(Kind::NoStream(_)) => ExpectedVersion::NoStream,
        Some(Kind::StreamExists(_)) => ExpectedVersion::StreamExists,
        Some(Kind::Exact(version)) => ExpectedVersion::Exact(version),
    }
}

fn metadata(metadata: Option<pb::EventMetadata>) -> Metadata {
    let metadata = metadata.unwrap_or_default();
    Metadata {
        actor: metadata.actor,
        correlation_id: metadata.correlation_id,
        causation_id: metadata.causation_id,
        reason: metadata.reason,
    }
}

pub(crate) fn event(event: RecordedEvent) -> pb::Event {
    pb::Event {
        stream_id: event.stream_id,
        stream_version: event.stream_version,
        global_position: event.global_position,
        r#type: event.event_type,
        data: event.data,
        metadata: Some(pb::EventMetadata {
            actor: event.metadata.actor,
            correlation_id: event.metadata.correlation_id,
            causation_id: event.metadata.causation_id,
            reason: event.metadata.reason,
        }),
        recorded_at: Some(timestamp(event.recorded_at_ms)),
        idempotency_key: event.idempotency_key.unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl Events for EventsService {
    async fn append(
        &self,
        request: Request<pb::AppendRequest>,
    ) -> Result<Response<pb::AppendResponse>, Status> {
        // The actor is who the token names, whatever the events claim: an operator, or
        // core-engine with a report token, for its own key-change events only.
        let actor = match super::operator(&request) {
            Ok(actor) => actor,
            Err(_) if request.extensions().get::<Reporter>().is_some() => {
                let append = request.get_ref();
                reporting::may_append(
                    &append.stream_id,
                    append.events.iter().map(|event| event.r#type.as_str()),
                )
                .map_err(Status::permission_denied)?;
                reporting::ISSUER.to_owned()
            }
            Err(refused) => return Err(refused),
        };
        let request = request.into_inner();
        let events = request
            .events
            .into_iter()
            .map(|event| NewEvent {
                event_type: event.r#type,
                data: event.data,
                metadata: Metadata {
                    actor: actor.clone(),
                    ..metadata(event.metadata)
                },
                idempotency_key: (!event.idempotency_key.is_empty())
                    .then_some(event.idempotency_key),
            })
            .collect();
        let done = self
            .store
            .append(&request.stream_id, expected(request.expected), events)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::AppendResponse {
            next_expected_version: done.next_expected_version,
            first_global_position: done.first_position,
            last_global_position: done.last_position,
        }))
    }

    async fn read_stream(
        &self,
        request: Request<pb::ReadStreamRequest>,
    ) -> Result<Response<pb::ReadStreamResponse>, Status> {
        let request = request.into_inner();
        let max = page_size(request.max_count);
        let events = self
            .store
            .read_stream(&request.stream_id, request.from_version, max)
            .await
            .map_err(status)?;
        let end_of_stream = events.len() < max as usize;
        Ok(Response::new(pb::ReadStreamResponse {
            events: events.into_iter().map(event).collect(),
            end_of_stream,
        }))
    }

    async fn read_all(
        &self,
        request: Request<pb::ReadAllRequest>,
    ) -> Result<Response<pb::ReadAllResponse>, Status> {
        let request = request.into_inner();
        let (events, next_position) = self
            .store
            .read_all(
                request.from_position,
                page_size(request.max_count),
                &request.types,
            )
            .await
            .map_err(status)?;
        Ok(Response::new(pb::ReadAllResponse {
            events: events.into_iter().map(event).collect(),
            next_position,
        }))
    }

    async fn subscribe(
        &self,
        request: Request<pb::SubscribeRequest>,
    ) -> Result<Response<BoxStream<pb::Event>>, Status> {
        let request = request.into_inner();
        // Malformed filters fail the call itself, not the first message.
        let events = self
            .store
            .subscribe(request.from_position, request.types)
            .map_err(status)?;
        let stream = ReceiverStream::new(events)
            .map(|item| item.map(event).map_err(status))
            .take_until(self.streams.clone().cancelled_owned());
        Ok(Response::new(Box::pin(stream)))
    }
}

/// 0 means the default page (1,000); larger requests are clamped by the store.
fn page_size(requested: u32) -> u32 {
    if requested == 0 { 1000 } else { requested }
}
