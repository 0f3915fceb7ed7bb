//! `omnimesh.controller.v1.Runtime`: the local runtime over gRPC — Scale, Logs and the
//! platform health (these need a local runtime), Build and ListReleases.

use omnimesh_common::time::timestamp;
use omnimesh_proto::controller::v1 as pb;
use omnimesh_proto::controller::v1::runtime_server::Runtime;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

use super::operator;
use crate::projections::{Projections, Release};
use crate::runtime::build::{BuildError, Builder, Progress};
use crate::runtime::logs::{self, LogHub};
use crate::runtime::supervisor::{RuntimeHandle, ScaleError, State};

/// `omnimesh.controller.v1.Runtime`.
#[derive(Debug, Clone)]
pub(crate) struct RuntimeService {
    runtime: Option<RuntimeHandle>,
    builder: Builder,
    projections: Projections,
    streams: CancellationToken,
}

impl RuntimeService {
    /// `runtime` is `None` when the controller runs without a local runtime.
    pub(crate) fn new(
        runtime: Option<RuntimeHandle>,
        builder: Builder,
        projections: Projections,
        streams: CancellationToken,
    ) -> Self {
        Self {
            runtime,
            builder,
            projections,
            streams,
        }
    }

    fn runtime(&self) -> Result<&RuntimeHandle, Status> {
        self.runtime.as_ref().ok_or_else(|| {
            Status::failed_precondition(
                "this controller runs no local runtime (start the platform with `mesh-controller launch`)",
            )
        })
    }
}

fn state(state: State) -> pb::InstanceState {
    match state {
        State::Starting => pb::InstanceState::Starting,
        State::Serving => pb::InstanceState::Serving,
        State::BackingOff => pb::InstanceState::BackingOff,
        State::CrashLoop => pb::InstanceState::CrashLoop,
        State::Stopping | State::Stopped => pb::InstanceState::Stopped,
    }
}

fn release(release: Release) -> pb::Release {
    pb::Release {
        id: release.id,
        service: release.service,
        version: release.version,
        git_revision: release.git_revision,
        binary_sha256: release.binary_sha256.into_iter().collect(),
        built_at: Some(timestamp(release.built_at_ms)),
    }
}

#[tonic::async_trait]
impl Runtime for RuntimeService {
    async fn build(
        &self,
        request: Request<pb::BuildRequest>,
    ) -> Result<Response<BoxStream<pb::BuildProgress>>, Status> {
        let actor = operator(&request)?;
        let request = request.into_inner();
        let mut progress = self
            .builder
            .start(&request.service, request.release, &actor)
            .map_err(|error| match error {
                BuildError::UnknownService(_) => Status::not_found(error.to_string()),
                BuildError::Busy => Status::aborted(error.to_string()),
            })?;
        let (sender, receiver) = mpsc::channel(256);
        tokio::spawn(async move {
            use pb::build_progress::Event;
            while let Some(step) = progress.recv().await {
                let event = match step {
                    Progress::Line(line) => Event::LogLine(line),
                    Progress::Finished(done) => Event::Finished(release(done)),
                    Progress::Failed(reason) => Event::Failed(reason),
                };
                // The build goes on when the client leaves; only the stream ends.
                let _ = sender
                    .send(Ok(pb::BuildProgress { event: Some(event) }))
                    .await;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    async fn list_releases(
        &self,
        request: Request<pb::ListReleasesRequest>,
    ) -> Result<Response<pb::ListReleasesResponse>, Status> {
        let service = request.into_inner().service;
        let views = self
            .projections
            .caught_up()
            .await
            .map_err(|error| Status::unavailable(error.to_string()))?;
        let releases = views
            .releases
            .into_iter()
            .filter(|r| service.is_empty() || r.service == service || r.service.is_empty())
            .map(release)
            .collect();
        Ok(Response::new(pb::ListReleasesResponse { releases }))
    }

    async fn scale(
        &self,
        request: Request<pb::ScaleRequest>,
    ) -> Result<Response<pb::ScaleResponse>, Status> {
        let actor = operator(&request)?;
        let request = request.into_inner();
        let (previous, replicas) = self
            .runtime()?
            .scale(
                &request.service,
                i64::from(request.replicas),
                request.relative,
                request.dry_run,
                &actor,
            )
            .await
            .map_err(|error| match error {
                ScaleError::UnknownService(..) => Status::not_found(error.to_string()),
                ScaleError::Invalid(_) => Status::invalid_argument(error.to_string()),
                ScaleError::Unavailable(_) => Status::unavailable(error.to_string()),
            })?;
        Ok(Response::new(pb::ScaleResponse {
            previous_replicas: previous,
            replicas,
        }))
    }

    async fn get_platform_health(
        &self,
        _request: Request<pb::GetPlatformHealthRequest>,
    ) -> Result<Response<pb::GetPlatformHealthResponse>, Status> {
        let status = self.runtime()?.status().borrow().clone();
        let now = omnimesh_common::time::now_ms();
        let services = status
            .iter()
            .map(|(name, service)| pb::ServiceStatus {
                service: name.clone(),
                desired_replicas: service.desired,
                instances: service
                    .instances
                    .values()
                    .map(|instance| pb::InstanceStatus {
                        id: instance.id.clone(),
                        address: instance.address.to_string(),
                        state: state(instance.state).into(),
                        version: instance.version.clone(),
                        pid: instance.pid.unwrap_or_default(),
                        uptime_seconds: instance.serving_since_ms.map_or(0, |since| {
                            u64::try_from(now.saturating_sub(since) / 1000).unwrap_or_default()
                        }),
                        restarts: instance.restarts,
                        last_error: instance.last_error.clone(),
                    })
                    .collect(),
            })
            .collect();
        Ok(Response::new(pb::GetPlatformHealthResponse { services }))
    }

    async fn logs(
        &self,
        request: Request<pb::LogsRequest>,
    ) -> Result<Response<BoxStream<pb::LogLine>>, Status> {
        let request = request.into_inner();
        let runtime = self.runtime()?;
        let status = runtime.status().borrow().clone();
        let Some(service) = status.get(&request.service) else {
            let known: Vec<&str> = status.keys().map(String::as_str).collect();
            return Err(Status::not_found(format!(
                "unknown service {:?}; the local runtime runs {}",
                request.service,
                known.join(", ")
            )));
        };
        let mut instances: Vec<String> = service.instances.values().map(|i| i.id.clone()).collect();
        if !request.instance_id.is_empty() {
            if !instances.contains(&request.instance_id) {
                return Err(Status::not_found(format!(
                    "{} has no instance {:?}",
                    request.service, request.instance_id
                )));
            }
            instances = vec![request.instance_id.clone()];
        }
        let min_level = logs::min_level(&request.min_level).ok_or_else(|| {
            Status::invalid_argument("min_level: one of error, warn, info, debug")
        })?;
        if request.contains.len() > 1024 {
            return Err(Status::invalid_argument("contains: at most 1024 bytes"));
        }
        let keep = move |text: &str| {
            logs::level_of(text) >= min_level
                && (request.contains.is_empty() || text.contains(&request.contains))
        };
        let tail = if request.tail_lines == 0 {
            100
        } else {
            request.tail_lines as usize
        };
        let hub: &LogHub = runtime.logs();
        let (sender, receiver) = mpsc::channel(256);
        let follower = request.follow.then(|| hub.follow(&request.service));
        let only = (!request.instance_id.is_empty()).then(|| request.instance_id.clone());
        let mut history = Vec::new();
        for id in &instances {
            for text in hub.tail(id, tail) {
                if keep(&text) {
                    history.push(pb::LogLine {
                        instance_id: id.clone(),
                        line: text,
                        time: None,
                    });
                }
            }
        }
        let streams = self.streams.clone();
        tokio::spawn(async move {
            for line in history {
                if sender.send(Ok(line)).await.is_err() {
                    return;
                }
            }
            let Some(mut follower) = follower else {
                return;
            };
            loop {
                tokio::select! {
                    line = follower.recv() => {
                        let line = match line {
                            Ok(line) => line,
                            Err(broadcast::error::RecvError::Lagged(skipped)) => logs::Line {
                                instance: String::new(),
                                text: format!("[{skipped} lines skipped: the reader was too slow]"),
                                time_ms: omnimesh_common::time::now_ms(),
                            },
                            Err(broadcast::error::RecvError::Closed) => return,
                        };
                        if only.as_ref().is_some_and(|only| *only != line.instance && !line.instance.is_empty()) {
                            continue;
                        }
                        if !keep(&line.text) && !line.instance.is_empty() {
                            continue;
                        }
                        let message = pb::LogLine {
                            instance_id: line.instance,
                            line: line.text,
                            time: Some(timestamp(line.time_ms)),
                        };
                        if sender.send(Ok(message)).await.is_err() {
                            return;
                        }
                    }
                    () = streams.cancelled() => return,
                    () = sender.closed() => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}
