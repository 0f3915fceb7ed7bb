//! Where clusters' endpoints come from.
//!
//! Routing reads endpoint sets through the [`EndpointSource`] trait only, so a new
//! source plugs in without changes to routing: [`StaticSource`] (configuration) and
//! [`RegistrySource`] (mesh-controller's `Registry.Watch`, with reconnect and resume)
//! exist today, and [`FileSource`] (a watched TOML file).

mod file;
mod registry;

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::watch;

pub use file::{FileSource, parse as parse_endpoints_file};
pub use registry::{RegistrySource, RegistrySourceOptions};

/// One upstream endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Stable id (the registry's instance id).
    pub id: String,
    /// `host:port`.
    pub address: String,
    /// Share of traffic within its subset.
    pub weight: u32,
    /// `stable`, `canary`, … or empty.
    pub subset: String,
    /// The release it runs.
    pub version: String,
    /// Whether the source considers it healthy (routing may still eject it).
    pub healthy: bool,
}

/// A cluster's endpoints at a revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointSet {
    /// The endpoints, by id order.
    pub endpoints: Vec<Endpoint>,
    /// The source's revision of this set (the registry's log position).
    pub revision: u64,
    /// Where it came from: `static`, `file` or `registry`.
    pub source: &'static str,
}

/// Every cluster's endpoint set.
pub type Endpoints = BTreeMap<String, EndpointSet>;

/// A source of endpoint sets: the current sets now, and every change.
pub trait EndpointSource: Send + Sync + 'static {
    /// The sets now and at every change.
    fn endpoints(&self) -> watch::Receiver<Arc<Endpoints>>;
}

/// Endpoint sets that never change (from configuration).
#[derive(Debug, Clone)]
pub struct StaticSource {
    sets: watch::Sender<Arc<Endpoints>>,
}

impl StaticSource {
    /// Serves `sets` forever.
    pub fn new(sets: Endpoints) -> Self {
        Self {
            sets: watch::Sender::new(Arc::new(sets)),
        }
    }
}

impl EndpointSource for StaticSource {
    fn endpoints(&self) -> watch::Receiver<Arc<Endpoints>> {
        self.sets.subscribe()
    }
}
