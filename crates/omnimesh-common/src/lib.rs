//! Process plumbing shared by the four OmniMesh services, and nothing domain-specific.
//!
//! - [`auth`]: JWT verification (HS256 local key, JWKS public keys) and roles.
//! - [`config`]: one `omnimesh.toml` with a section per service, merged with defaults
//!   and `OMNIMESH_<SERVICE>__…` environment variables; errors name key, origin and reason.
//! - [`server`]: the gRPC server every service runs — health, reflection, `/healthz`,
//!   `/readyz`, `/metrics` and a graceful drain — around the service's own tonic services.
//! - [`db`]: a migrated `sqlx::Any` pool on SQLite (WAL) or PostgreSQL, chosen by URL.
//! - [`shutdown_signal`]: resolves on SIGINT or SIGTERM.
//! - [`ports`]: the local default addresses that SPEC fixes.
//! - [`platform`]: process tuning applied first in every `main` (glibc's copy routine on
//!   AMD CPUs).
#![warn(missing_docs)]

pub mod auth;
pub mod config;
pub mod db;
pub mod files;
pub mod message_limit;
pub mod platform;
pub mod ports;
pub mod reporting;
pub mod server;
mod shutdown;
pub mod time;

pub use shutdown::shutdown_signal;

/// The four services, by the names used in config sections, metrics and logs.
pub const SERVICES: [&str; 4] = [
    "core-engine",
    "proxy-gateway",
    "mesh-controller",
    "omniterm-interface",
];
