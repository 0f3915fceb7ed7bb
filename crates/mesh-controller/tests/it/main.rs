//! mesh-controller integration tests: the real server in-process on 127.0.0.1:0.

mod auth;
mod build;
mod events;
mod registry;
mod serving;
