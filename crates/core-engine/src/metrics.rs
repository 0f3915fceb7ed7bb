//! core-engine's own metrics, beside the per-RPC counts and latencies every service has:
//! key operations and items by operation and key type (never by key name: names are
//! unbounded), the highest share of the AEAD nonce budget any key version has used, and
//! the reporting of key changes to mesh-controller.

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::keys::model::KeyType;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OperationLabels {
    operation: &'static str,
    key_type: &'static str,
}

/// The engine's metrics; cheap to clone (shared counters).
#[derive(Debug, Clone, Default)]
pub(crate) struct EngineMetrics {
    operations: Family<OperationLabels, Counter>,
    items: Family<OperationLabels, Counter>,
    budget_used: Gauge<f64, AtomicU64>,
    most_seals: std::sync::Arc<AtomicU64>,
    events_pending: Gauge,
    events_reported: Counter,
    report_failures: Counter,
    master_key_rewraps: Counter,
}

impl EngineMetrics {
    /// Registers the metrics in `registry`.
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            "key_operations",
            "Key operations by operation and key type",
            metrics.operations.clone(),
        );
        registry.register(
            "key_operation_items",
            "Items processed by key operations, by operation and key type",
            metrics.items.clone(),
        );
        registry.register(
            "seal_budget_used_ratio",
            "The highest share of its seal (nonce) budget any AEAD key version has used",
            metrics.budget_used.clone(),
        );
        registry.register(
            "key_events_pending",
            "Key changes stored but not yet reported to mesh-controller",
            metrics.events_pending.clone(),
        );
        registry.register(
            "key_events_reported",
            "Key changes reported to mesh-controller",
            metrics.events_reported.clone(),
        );
        registry.register(
            "key_event_report_failures",
            "Rounds of reporting key changes to mesh-controller that failed (retried)",
            metrics.report_failures.clone(),
        );
        registry.register(
            "master_key_rewraps",
            "Key versions rewrapped under the master key from a retired one",
            metrics.master_key_rewraps.clone(),
        );
        metrics
    }

    /// A key version's material rewrapped under the master key (a master key rotation).
    pub(crate) fn master_key_rewrap(&self) {
        self.master_key_rewraps.inc();
    }

    /// Sets how many key changes wait to be reported.
    pub(crate) fn key_events_pending(&self, pending: u64) {
        self.events_pending
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
    }

    /// Counts one key change reported.
    pub(crate) fn key_event_reported(&self) {
        self.events_reported.inc();
    }

    /// Counts one failed round of reports.
    pub(crate) fn key_event_report_failed(&self) {
        self.report_failures.inc();
    }

    /// Counts one call of `operation` on a `key_type` key with `items` items.
    pub(crate) fn operation(&self, operation: &'static str, key_type: KeyType, items: usize) {
        let labels = OperationLabels {
            operation,
            key_type: key_type.as_str(),
        };
        self.operations.get_or_create(&labels).inc();
        self.items.get_or_create(&labels).inc_by(items as u64);
    }

    /// Notes that a version has made `seals` seals of its `budget`.
    pub(crate) fn seals(&self, seals: u64, budget: u64) {
        let before = self.most_seals.fetch_max(seals, Ordering::Relaxed);
        if seals > before {
            self.budget_used.set(seals as f64 / budget.max(1) as f64);
        }
    }
}
