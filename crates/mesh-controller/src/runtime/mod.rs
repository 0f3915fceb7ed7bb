//! Runtimes: where the platform's services actually run.
//!
//! `local` runs them as processes on this machine. The Kubernetes runtime (Argo
//! Rollouts through kube-rs) joins it in a later change.

pub mod desired;
pub mod local;
pub mod logs;
pub mod policy;
