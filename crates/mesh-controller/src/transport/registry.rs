//! `omnimesh.controller.v1.Registry`: the registry over gRPC.

use std::collections::{BTreeMap, BTreeSet};

use futures::StreamExt as _;
use omnimesh_common::time::timestamp;
use omnimesh_proto::controller::v1 as pb;
use omnimesh_proto::controller::v1::registry_server::Registry as RegistryApi;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status};

use super::operator;
use crate::registry::model::{self, Health, Instance, Registration, Registry, RegistryError};
use crate::registry::{CallError, RegistryHandle};

/// Most services one Watch may name.
const MAX_WATCHED: usize = 256;

/// `omnimesh.controller.v1.Registry`.
#[derive(Debug, Clone)]
pub(crate) struct RegistryService {
    registry: RegistryHandle,
    streams: CancellationToken,
}

impl RegistryService {
    /// `streams` ends every watch when it is cancelled (at shutdown).
    pub(crate) fn new(registry: RegistryHandle, streams: CancellationToken) -> Self {
        Self { registry, streams }
    }
}

fn status(error: CallError) -> Status {
    match error {
        CallError::Refused(error @ RegistryError::Invalid { .. }) => {
            Status::invalid_argument(error.to_string())
        }
        CallError::Refused(error @ RegistryError::NotFound(_)) => {
            Status::not_found(error.to_string())
        }
        CallError::Refused(error @ RegistryError::Full(_)) => {
            Status::resource_exhausted(error.to_string())
        }
        CallError::Unavailable => Status::unavailable(error.to_string()),
    }
}

fn health(health: Health) -> pb::InstanceHealth {
    match health {
        Health::Unknown => pb::InstanceHealth::Unknown,
        Health::Serving => pb::InstanceHealth::Serving,
        Health::NotServing => pb::InstanceHealth::NotServing,
    }
}

pub(crate) fn instance(instance: &Instance) -> pb::Instance {
    pb::Instance {
        id: instance.id.clone(),
        service: instance.service.clone(),
        address: instance.address.clone(),
        version: instance.version.clone(),
        subset: instance.subset.clone(),
        weight: instance.weight,
        health: health(instance.health).into(),
        labels: instance.labels.clone().into_iter().collect(),
        registered_at: Some(timestamp(instance.registered_at_ms)),
        last_heartbeat: Some(timestamp(instance.last_heartbeat_ms)),
    }
}

fn service_response(name: &str, registry: &Registry) -> pb::WatchResponse {
    let entry = registry.services.get(name);
    pb::WatchResponse {
        service: name.to_owned(),
        instances: entry
            .map(|entry| entry.instances.values().map(instance).collect())
            .unwrap_or_default(),
        revision: entry.map_or(0, |entry| entry.revision),
    }
}

#[tonic::async_trait]
impl RegistryApi for RegistryService {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        let actor = operator(&request)?;
        let request = request.into_inner();
        let given = request
            .instance
            .ok_or_else(|| Status::invalid_argument("instance: required"))?;
        let health = match pb::InstanceHealth::try_from(given.health) {
            Ok(pb::InstanceHealth::Serving) => Health::Serving,
            Ok(pb::InstanceHealth::NotServing) => Health::NotServing,
            Ok(_) => Health::Unknown,
            Err(_) => return Err(Status::invalid_argument("instance.health: unknown value")),
        };
        if given.labels.len() > model::MAX_LABELS {
            return Err(Status::invalid_argument(format!(
                "labels: at most {}",
                model::MAX_LABELS
            )));
        }
        let registration = Registration {
            id: given.id,
            service: given.service,
            address: given.address,
            version: given.version,
            subset: given.subset,
            weight: given.weight,
            health,
            labels: given.labels.into_iter().collect::<BTreeMap<_, _>>(),
            ttl_ms: u64::from(request.ttl_seconds) * 1000,
        };
        let registered = self
            .registry
            .register(registration, &actor)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::RegisterResponse {
            instance_id: registered.id,
            ttl_seconds: u32::try_from(registered.ttl_ms / 1000).unwrap_or(u32::MAX),
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        operator(&request)?;
        let expires = self
            .registry
            .heartbeat(&request.into_inner().instance_id)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::HeartbeatResponse {
            expires_at: Some(timestamp(expires)),
        }))
    }

    async fn deregister(
        &self,
        request: Request<pb::DeregisterRequest>,
    ) -> Result<Response<pb::DeregisterResponse>, Status> {
        let actor = operator(&request)?;
        self.registry
            .deregister(&request.into_inner().instance_id, &actor)
            .await
            .map_err(status)?;
        Ok(Response::new(pb::DeregisterResponse {}))
    }

    async fn list_services(
        &self,
        _request: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesResponse>, Status> {
        let registry = self.registry.current();
        let services = registry
            .services
            .iter()
            .filter(|(_, entry)| !entry.instances.is_empty())
            .map(|(name, entry)| pb::Service {
                name: name.clone(),
                instances: entry.instances.values().map(instance).collect(),
            })
            .collect();
        Ok(Response::new(pb::ListServicesResponse { services }))
    }

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<BoxStream<pb::WatchResponse>>, Status> {
        let request = request.into_inner();
        if request.services.len() > MAX_WATCHED {
            return Err(Status::invalid_argument(format!(
                "services: at most {MAX_WATCHED}"
            )));
        }
        for name in &request.services {
            model::check_service(name).map_err(|error| status(error.into()))?;
        }
        let wanted: BTreeSet<String> = request.services.into_iter().collect();
        let mut changes = self.registry.changes();
        let (sender, receiver) = mpsc::channel(64);
        tokio::spawn(async move {
            // The revision each service was last sent at.
            let mut sent: BTreeMap<String, u64> = BTreeMap::new();
            let mut first = true;
            loop {
                let registry = changes.borrow_and_update().clone();
                let names: Vec<String> = if wanted.is_empty() {
                    registry.services.keys().cloned().collect()
                } else {
                    wanted.iter().cloned().collect()
                };
                for name in names {
                    let revision = registry
                        .services
                        .get(&name)
                        .map_or(0, |entry| entry.revision);
                    let last = sent.get(&name).copied();
                    let due = match last {
                        Some(last) => revision > last,
                        // Resuming: only what changed after the client's revision; a fresh
                        // watch gets every set, empty ones included.
                        None => {
                            revision > request.after_revision
                                || (first && request.after_revision == 0)
                        }
                    };
                    if due {
                        sent.insert(name.clone(), revision);
                        if sender
                            .send(Ok(service_response(&name, &registry)))
                            .await
                            .is_err()
                        {
                            return;
                        }
                    } else if last.is_none() {
                        sent.insert(name, revision.max(request.after_revision));
                    }
                }
                first = false;
                tokio::select! {
                    changed = changes.changed() => if changed.is_err() { return },
                    () = sender.closed() => return,
                }
            }
        });
        let stream =
            ReceiverStream::new(receiver).take_until(self.streams.clone().cancelled_owned());
        Ok(Response::new(Box::pin(stream)))
    }
}
