//! mesh-controller integration tests: the real server in-process on 127.0.0.1:0.

mod auth;
mod registry;
mod serving;
