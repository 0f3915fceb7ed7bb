//! proxy-gateway integration tests: the real server in-process on 127.0.0.1:0.

mod admin;
mod hostile;
mod jwks;
mod protocols;
mod proxy;
mod ratelimit;
mod resilience;
mod serving;
mod support;
mod tls;
mod trace;
