//! Runtimes: where the platform's services actually run.
//!
//! `local` runs them as processes on this machine: `desired` is the desired-state
//! file, `policy` the pure decisions (restart back-off, crash loops, replica plans),
//! `supervisor` the adapters (one task per process, the reconciling manager), `logs`
//! the captured output. The Kubernetes runtime (Argo
//! Rollouts through kube-rs) joins it in a later change.

pub mod build;
pub mod desired;
pub mod local;
pub mod logs;
pub mod policy;
pub mod supervisor;
