//! [`RegistrySource`]: endpoint sets that follow mesh-controller's `Registry.Watch`.
//!
//! One task keeps a Watch open. Each message replaces one service's set. When the
//! stream breaks (the controller restarts, the network drops) the task reconnects with
//! jittered exponential back-off and resumes after the highest revision it has seen, so
//! it receives exactly the sets that changed meanwhile; the last known sets keep serving
//! in between — routing never loses its endpoints because the controller is away.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder as _, ExponentialBuilder};
use omnimesh_proto::controller::v1 as pb;
use omnimesh_proto::controller::v1::registry_client::RegistryClient;
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::transport::Endpoint as Target;

use super::{Endpoint, EndpointSet, EndpointSource, Endpoints};

/// How a [`RegistrySource`] connects.
#[derive(Debug, Clone)]
pub struct RegistrySourceOptions {
    /// The controller, e.g. `http://127.0.0.1:50052`.
    pub controller: String,
    /// Services to follow (empty: every service).
    pub services: Vec<String>,
    /// First reconnect delay.
    pub backoff_initial: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
}

/// Endpoint sets following the registry; stops when dropped.
#[derive(Debug)]
pub struct RegistrySource {
    sets: watch::Sender<Arc<Endpoints>>,
    connected: watch::Receiver<bool>,
    _stop: DropGuard,
}

impl RegistrySource {
    /// Starts following the registry.
    ///
    /// # Errors
    /// When `options.controller` is not a valid URI.
    pub fn start(options: RegistrySourceOptions) -> Result<Self, tonic::transport::Error> {
        let target = Target::from_shared(options.controller.clone())?
            .connect_timeout(Duration::from_secs(2))
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5));
        let sets = watch::Sender::new(Arc::new(Endpoints::new()));
        let (connected_tx, connected) = watch::channel(false);
        let stop = CancellationToken::new();
        tokio::spawn(follow(
            target,
            options,
            sets.clone(),
            connected_tx,
            stop.clone(),
        ));
        Ok(Self {
            sets,
            connected,
            _stop: stop.drop_guard(),
        })
    }

    /// Whether a Watch is open now (for health and admin views).
    pub fn connected(&self) -> watch::Receiver<bool> {
        self.connected.clone()
    }
}

impl EndpointSource for RegistrySource {
    fn endpoints(&self) -> watch::Receiver<Arc<Endpoints>> {
        self.sets.subscribe()
    }
}

fn endpoint(instance: pb::Instance) -> Endpoint {
    let healthy = instance.health() != pb::InstanceHealth::NotServing;
    Endpoint {
        id: instance.id,
        address: instance.address,
        weight: instance.weight,
        subset: instance.subset,
        version: instance.version,
        healthy,
    }
}

async fn follow(
    target: Target,
    options: RegistrySourceOptions,
    sets: watch::Sender<Arc<Endpoints>>,
    connected: watch::Sender<bool>,
    stop: CancellationToken,
) {
    let new_backoff = || {
        ExponentialBuilder::default()
            .with_min_delay(options.backoff_initial)
            .with_max_delay(options.backoff_max)
            .with_jitter()
            .without_max_times()
            .build()
    };
    let mut backoff = new_backoff();
    let mut after_revision = 0;
    loop {
        let session = async {
            let channel = target.connect().await.map_err(|e| e.to_string())?;
            let mut stream = RegistryClient::new(channel)
                .watch(pb::WatchRequest {
                    services: options.services.clone(),
                    after_revision,
                })
                .await
                .map_err(|status| status.to_string())?
                .into_inner();
            connected.send_replace(true);
            backoff = new_backoff();
            while let Some(update) = stream.message().await.map_err(|s| s.to_string())? {
                after_revision = after_revision.max(update.revision);
                let set = EndpointSet {
                    endpoints: update.instances.into_iter().map(endpoint).collect(),
                    revision: update.revision,
                    source: "registry",
                };
                sets.send_modify(|sets| {
                    Arc::make_mut(sets).insert(update.service, set);
                });
            }
            Err::<(), String>("the controller ended the watch".to_owned())
        };
        let outcome = tokio::select! {
            () = stop.cancelled() => return,
            outcome = session => outcome,
        };
        connected.send_replace(false);
        let delay = backoff.next().unwrap_or(options.backoff_max);
        if let Err(reason) = outcome {
            tracing::info!(%reason, retry_in = ?delay, "registry watch interrupted; keeping the last endpoints");
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}
