//! Load balancing: power of two choices over least outstanding requests, among the
//! healthy endpoints of a cluster that a request has not tried yet.
//!
//! [`Balancers`] is rebuilt from every [`EndpointSource`](crate::upstream::EndpointSource)
//! update, keeping the [`Backend`] of an endpoint that stays (and so its in-flight
//! count); a request holds an [`InFlight`] guard while its response is open.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher as _, Hasher as _};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::upstream::{Endpoint, Endpoints};

/// First ejection of an endpoint that refused a connection; doubled at each ejection
/// in a row, up to [`MAX_EJECTION`].
pub const BASE_EJECTION: Duration = Duration::from_secs(1);
/// Longest ejection.
pub const MAX_EJECTION: Duration = Duration::from_secs(30);

/// How a cluster's endpoint is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// The less loaded (open requests per unit of weight) of two random endpoints: the
    /// default, which steers away from slow endpoints without global coordination.
    #[default]
    P2cLeastRequest,
    /// Each endpoint in turn (weights ignored).
    RoundRobin,
    /// At random, in proportion to weight.
    WeightedRandom,
}

impl Policy {
    /// The name in the admin API.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::P2cLeastRequest => "p2c_least_request",
            Policy::RoundRobin => "round_robin",
            Policy::WeightedRandom => "weighted_random",
        }
    }
}

/// `[proxy-gateway.load_balancing]` (and per cluster in `cluster_load_balancing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct LoadBalancing {
    /// `p2c_least_request` (default), `round_robin` or `weighted_random`.
    #[serde(default)]
    pub policy: Policy,
    /// An endpoint that joins a serving cluster gets from 10 % to all of its share over
    /// this long, so a cold replica is not flooded (0: at once).
    #[serde(default, with = "humantime_serde")]
    pub slow_start: Duration,
}

/// Passive outlier detection: `[proxy-gateway.outlier_detection]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutlierDetection {
    /// Failed answers in a row (HTTP 5xx; gRPC UNAVAILABLE, INTERNAL,
    /// DEADLINE_EXCEEDED; a response that breaks off) that eject an endpoint.
    #[serde(default = "default_consecutive_failures")]
    pub consecutive_failures: u32,
    /// The first ejection; each ejection in a row without a success doubles it.
    #[serde(default = "default_base_ejection", with = "humantime_serde")]
    pub base_ejection: Duration,
    /// The longest ejection.
    #[serde(default = "default_max_ejection", with = "humantime_serde")]
    pub max_ejection: Duration,
    /// At most this share of a cluster's endpoints is ejected for failed answers at
    /// once (one always may be), so a cluster-wide fault does not empty the cluster.
    #[serde(default = "default_max_ejection_percent")]
    pub max_ejection_percent: u32,
}

fn default_consecutive_failures() -> u32 {
    5
}
fn default_base_ejection() -> Duration {
    BASE_EJECTION
}
fn default_max_ejection() -> Duration {
    MAX_EJECTION
}
fn default_max_ejection_percent() -> u32 {
    50
}

impl Default for OutlierDetection {
    fn default() -> Self {
        Self {
            consecutive_failures: default_consecutive_failures(),
            base_ejection: default_base_ejection(),
            max_ejection: default_max_ejection(),
            max_ejection_percent: default_max_ejection_percent(),
        }
    }
}

impl OutlierDetection {
    /// Why the settings cannot be used: (field, reason).
    ///
    /// # Errors
    /// A threshold of 0, an empty or inverted ejection range, a percentage over 100.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.consecutive_failures == 0 {
            return Err(("consecutive_failures", "must be at least 1".into()));
        }
        if self.base_ejection.is_zero() || self.max_ejection < self.base_ejection {
            return Err((
                "max_ejection",
                "base_ejection must be positive and at most max_ejection".into(),
            ));
        }
        if self.max_ejection_percent > 100 {
            return Err(("max_ejection_percent", "at most 100".into()));
        }
        Ok(())
    }
}

/// One endpoint as the balancer sees it.
#[derive(Debug)]
pub struct Backend {
    /// The endpoint.
    pub endpoint: Endpoint,
    in_flight: AtomicU64,
    /// Not picked before this instant (ms since `EPOCH`), unless every endpoint is.
    ejected_until: AtomicU64,
    /// Ejections in a row without a success in between.
    ejections: AtomicU32,
    /// Failed answers in a row.
    failures: AtomicU32,
    /// What the active health check says (true until a check says otherwise).
    probe_healthy: std::sync::atomic::AtomicBool,
    /// Probe results in a row agreeing with each other (for the thresholds).
    probe_streak: AtomicU32,
    /// When it joined a cluster that was already serving (slow start), if it did.
    joined: Option<Instant>,
    /// Its (success, failure) counters in `gateway_endpoint_requests_total`, looked up
    /// once.
    pub counters: std::sync::OnceLock<(
        prometheus_client::metrics::counter::Counter,
        prometheus_client::metrics::counter::Counter,
    )>,
}

/// The clock of ejections.
fn now_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    u64::try_from(EPOCH.get_or_init(Instant::now).elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl Backend {
    fn joining(endpoint: Endpoint, joined: Option<Instant>) -> Arc<Self> {
        Arc::new(Self {
            endpoint,
            in_flight: AtomicU64::new(0),
            ejected_until: AtomicU64::new(0),
            ejections: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            probe_healthy: std::sync::atomic::AtomicBool::new(true),
            probe_streak: AtomicU32::new(0),
            joined,
            counters: std::sync::OnceLock::new(),
        })
    }

    /// Its share of its weight now: rising linearly from 10 % to all of it over
    /// `slow_start` after it joined a serving cluster; all of it otherwise.
    pub fn ramp(&self, slow_start: Duration) -> f64 {
        match self.joined {
            Some(joined) if !slow_start.is_zero() => {
                (joined.elapsed().as_secs_f64() / slow_start.as_secs_f64()).clamp(0.1, 1.0)
            }
            _ => 1.0,
        }
    }

    /// Whether the active health check lets it take traffic.
    pub fn probe_healthy(&self) -> bool {
        self.probe_healthy.load(Ordering::Relaxed)
    }

    /// Records one active health check; returns `Some(new state)` when the endpoint
    /// crossed a threshold (`unhealthy` failures in a row, `healthy` successes in a row).
    pub fn probed(&self, passed: bool, healthy: u32, unhealthy: u32) -> Option<bool> {
        let now = self.probe_healthy();
        if passed == now {
            self.probe_streak.store(0, Ordering::Relaxed);
            return None;
        }
        let streak = self.probe_streak.fetch_add(1, Ordering::Relaxed) + 1;
        let needed = if passed { healthy } else { unhealthy };
        if streak >= needed.max(1) {
            self.probe_streak.store(0, Ordering::Relaxed);
            self.probe_healthy.store(passed, Ordering::Relaxed);
            if passed {
                // Back by probe: whatever ejected it before starts from nothing.
                self.ejected_until.store(0, Ordering::Relaxed);
                self.failures.store(0, Ordering::Relaxed);
            }
            return Some(passed);
        }
        None
    }

    /// Failed answers in a row now.
    pub fn consecutive_failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Ejects for `base` doubled at every ejection in a row, up to `max`.
    fn eject(&self, base: Duration, max: Duration) {
        let ejections = self.ejections.fetch_add(1, Ordering::Relaxed).min(16);
        let period = base.saturating_mul(1 << ejections).min(max);
        let until = now_ms() + u64::try_from(period.as_millis()).unwrap_or(u64::MAX);
        self.ejected_until.fetch_max(until, Ordering::Relaxed);
    }

    /// A failed answer; ejects the endpoint when it is the `consecutive_failures`th in
    /// a row and `cluster` (its endpoints) has room under `max_ejection_percent`.
    /// Returns whether it was ejected now.
    pub fn failed(&self, policy: &OutlierDetection, cluster: &[Arc<Backend>]) -> bool {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures < policy.consecutive_failures || self.ejected() {
            return false;
        }
        let ejected = cluster.iter().filter(|backend| backend.ejected()).count();
        let allowed = (cluster.len() * policy.max_ejection_percent as usize / 100).max(1);
        if ejected >= allowed {
            return false;
        }
        self.failures.store(0, Ordering::Relaxed);
        self.eject(policy.base_ejection, policy.max_ejection);
        true
    }

    /// Ejections in a row (0 once it answers again).
    pub fn consecutive_ejections(&self) -> u32 {
        self.ejections.load(Ordering::Relaxed)
    }

    /// Until when it is ejected, if it is now.
    pub fn ejected_until(&self) -> Option<std::time::SystemTime> {
        let until = self.ejected_until.load(Ordering::Relaxed);
        let now = now_ms();
        (until > now).then(|| std::time::SystemTime::now() + Duration::from_millis(until - now))
    }

    /// Whether the endpoint is ejected now.
    pub fn ejected(&self) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now_ms()
    }

    /// The endpoint could not be reached (connection refused or timed out): eject it
    /// at once, for twice as long as last time. No percentage applies: nothing can be
    /// sent to it anyway.
    pub fn unreachable(&self, policy: &OutlierDetection) {
        self.eject(policy.base_ejection, policy.max_ejection);
    }

    /// The endpoint answered well: it is back in full.
    pub fn answered(&self) {
        if self.ejections.load(Ordering::Relaxed) != 0 {
            self.ejections.store(0, Ordering::Relaxed);
        }
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// Requests open on this endpoint now.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request until the guard drops.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }
}

/// An open request on a backend.
#[derive(Debug)]
pub struct InFlight(Arc<Backend>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Every cluster's backends.
#[derive(Debug, Default)]
pub struct Balancers {
    /// Cluster → (where its endpoints come from, its backends, the round-robin cursor).
    clusters: HashMap<String, (&'static str, Vec<Arc<Backend>>, AtomicUsize)>,
}

/// A random number (fresh `RandomState` keys: cheap, good enough to spread load).
pub(crate) fn random() -> u64 {
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

impl Balancers {
    /// The balancers for `sets`, reusing `previous` backends of endpoints that stay
    /// unchanged.
    pub fn rebuild(previous: &Balancers, sets: &Endpoints) -> Self {
        let mut clusters = HashMap::new();
        for (cluster, set) in sets {
            let old: BTreeMap<&str, &Arc<Backend>> = previous
                .clusters
                .get(cluster)
                .map(|(_, backends, _)| {
                    backends
                        .iter()
                        .map(|backend| (backend.endpoint.id.as_str(), backend))
                        .collect()
                })
                .unwrap_or_default();
            // Endpoints joining a cluster that already served ramp up (slow start);
            // those a cluster starts with take their full share at once.
            let joining = previous.clusters.contains_key(cluster);
            let backends = set
                .endpoints
                .iter()
                .map(|endpoint| match old.get(endpoint.id.as_str()) {
                    Some(backend) if backend.endpoint == *endpoint => Arc::clone(backend),
                    _ => Backend::joining(endpoint.clone(), joining.then(Instant::now)),
                })
                .collect();
            clusters.insert(cluster.clone(), (set.source, backends, AtomicUsize::new(0)));
        }
        Self { clusters }
    }

    /// Picks a healthy backend of `cluster` not in `tried`, avoiding ejected ones: the
    /// less loaded of two random candidates (by in-flight requests per unit of weight).
    pub fn pick(&self, cluster: &str, tried: &[Arc<Backend>]) -> Option<Arc<Backend>> {
        self.pick_in(cluster, "", tried)
    }

    /// [`pick`](Self::pick) among the endpoints of `subset` only (any when empty).
    pub fn pick_in(
        &self,
        cluster: &str,
        subset: &str,
        tried: &[Arc<Backend>],
    ) -> Option<Arc<Backend>> {
        self.pick_with(cluster, subset, tried, &LoadBalancing::default())
    }

    /// Picks by `policy` among the usable endpoints of `cluster` (and `subset`, when
    /// not empty) that are not in `tried`; ejected ones only when nothing else is left.
    pub fn pick_with(
        &self,
        cluster: &str,
        subset: &str,
        tried: &[Arc<Backend>],
        policy: &LoadBalancing,
    ) -> Option<Arc<Backend>> {
        let (_, backends, cursor) = self.clusters.get(cluster)?;
        let usable: Vec<&Arc<Backend>> = backends
            .iter()
            .filter(|backend| subset.is_empty() || backend.endpoint.subset == subset)
            .filter(|backend| {
                backend.endpoint.healthy && backend.probe_healthy() && backend.endpoint.weight > 0
            })
            .filter(|backend| !tried.iter().any(|t| Arc::ptr_eq(t, backend)))
            .collect();
        // Ejected endpoints only when nothing else is left (rather than failing outright).
        let admitted: Vec<&Arc<Backend>> = usable
            .iter()
            .copied()
            .filter(|backend| !backend.ejected())
            .collect();
        let candidates = if admitted.is_empty() {
            usable
        } else {
            admitted
        };
        let n = candidates.len();
        if n <= 1 {
            return candidates.first().map(|backend| Arc::clone(backend));
        }
        let weight = |backend: &Backend| {
            f64::from(backend.endpoint.weight) * backend.ramp(policy.slow_start)
        };
        let chosen = match policy.policy {
            Policy::RoundRobin => candidates[cursor.fetch_add(1, Ordering::Relaxed) % n],
            Policy::WeightedRandom => {
                let total: f64 = candidates.iter().map(|backend| weight(backend)).sum();
                let mut point = (random() >> 11) as f64 / (1_u64 << 53) as f64 * total;
                let mut chosen = candidates[n - 1];
                for backend in &candidates {
                    point -= weight(backend);
                    if point < 0.0 {
                        chosen = backend;
                        break;
                    }
                }
                chosen
            }
            Policy::P2cLeastRequest => {
                let r = random();
                let first = (r % n as u64) as usize;
                let mut second = ((r >> 32) % (n as u64 - 1)) as usize;
                if second >= first {
                    second += 1;
                }
                let load = |backend: &Backend| (backend.in_flight() + 1) as f64 / weight(backend);
                let (a, b) = (candidates[first], candidates[second]);
                if load(b) < load(a) { b } else { a }
            }
        };
        Some(Arc::clone(chosen))
    }

    /// Every cluster's backends, by cluster name.
    pub fn clusters(&self) -> impl Iterator<Item = (&str, &'static str, &[Arc<Backend>])> {
        self.clusters
            .iter()
            .map(|(name, (source, backends, _))| (name.as_str(), *source, backends.as_slice()))
    }

    /// The backends of `cluster` (none when unknown).
    pub fn backends(&self, cluster: &str) -> &[Arc<Backend>] {
        self.clusters
            .get(cluster)
            .map_or(&[], |(_, backends, _)| backends.as_slice())
    }

    /// Requests open now on `cluster`, all endpoints.
    pub fn open_requests(&self, cluster: &str) -> u64 {
        self.backends(cluster)
            .iter()
            .map(|backend| backend.in_flight())
            .sum()
    }

    /// How many endpoints `cluster` has (healthy or not).
    pub fn size(&self, cluster: &str) -> usize {
        self.clusters
            .get(cluster)
            .map_or(0, |(_, backends, _)| backends.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::EndpointSet;

    fn endpoint(id: &str, weight: u32, healthy: bool) -> Endpoint {
        Endpoint {
            id: id.into(),
            address: format!("127.0.0.1:{}", 1000 + id.len()),
            weight,
            subset: String::new(),
            version: String::new(),
            healthy,
        }
    }

    fn sets(endpoints: Vec<Endpoint>) -> Endpoints {
        BTreeMap::from([(
            "svc".to_owned(),
            EndpointSet {
                endpoints,
                revision: 1,
                source: "static",
            },
        )])
    }

    #[test]
    fn picks_skip_unhealthy_tried_and_weightless_endpoints() {
        let balancers = Balancers::rebuild(
            &Balancers::default(),
            &sets(vec![
                endpoint("a", 100, true),
                endpoint("b", 100, false),
                endpoint("c", 0, true),
                endpoint("d", 100, true),
            ]),
        );
        let mut tried = Vec::new();
        for _ in 0..2 {
            let backend = balancers.pick("svc", &tried).unwrap();
            assert!(["a", "d"].contains(&backend.endpoint.id.as_str()));
            tried.push(backend);
        }
        assert!(balancers.pick("svc", &tried).is_none());
        assert!(balancers.pick("nope", &[]).is_none());
    }

    #[test]
    fn the_less_loaded_endpoint_wins() {
        let balancers = Balancers::rebuild(
            &Balancers::default(),
            &sets(vec![endpoint("a", 100, true), endpoint("b", 100, true)]),
        );
        let busy = balancers.pick("svc", &[]).unwrap();
        let _guards: Vec<InFlight> = (0..10).map(|_| busy.start()).collect();
        for _ in 0..50 {
            let picked = balancers.pick("svc", &[]).unwrap();
            assert_ne!(picked.endpoint.id, busy.endpoint.id);
        }
    }

    #[test]
    fn unreachable_endpoints_are_avoided_until_nothing_else_is_left() {
        let balancers = Balancers::rebuild(
            &Balancers::default(),
            &sets(vec![endpoint("a", 100, true), endpoint("bb", 100, true)]),
        );
        let first = balancers.pick("svc", &[]).unwrap();
        first.unreachable(&OutlierDetection::default());
        assert!(first.ejected());
        for _ in 0..20 {
            assert_ne!(
                balancers.pick("svc", &[]).unwrap().endpoint.id,
                first.endpoint.id
            );
        }
        let other = balancers.pick("svc", &[]).unwrap();
        other.unreachable(&OutlierDetection::default());
        // Both ejected: still answer rather than fail.
        assert!(balancers.pick("svc", &[]).is_some());
        other.answered();
        assert_eq!(other.ejections.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn failures_in_a_row_eject_within_the_percentage() {
        let policy = OutlierDetection {
            consecutive_failures: 3,
            max_ejection_percent: 50,
            ..OutlierDetection::default()
        };
        let balancers = Balancers::rebuild(
            &Balancers::default(),
            &sets(vec![
                endpoint("a", 100, true),
                endpoint("bb", 100, true),
                endpoint("ccc", 100, true),
                endpoint("dddd", 100, true),
            ]),
        );
        let cluster = balancers.backends("svc");
        let (a, b, c) = (&cluster[0], &cluster[1], &cluster[2]);
        assert!(!a.failed(&policy, cluster));
        a.answered(); // a success resets the run
        assert!(!a.failed(&policy, cluster) && !a.failed(&policy, cluster));
        assert!(
            a.failed(&policy, cluster),
            "the third failure in a row ejects"
        );
        assert!(a.ejected() && a.ejected_until().is_some());
        for _ in 0..3 {
            b.failed(&policy, cluster);
        }
        assert!(b.ejected(), "two of four is 50 %");
        for _ in 0..10 {
            assert!(!c.failed(&policy, cluster), "a third would exceed 50 %");
        }
        assert!(!c.ejected());
        // A failing endpoint past the limit is still counted, and ejected once there
        // is room.
        assert!(c.consecutive_failures() >= 3);
    }

    #[test]
    fn probes_take_endpoints_out_and_back_by_thresholds() {
        let balancers = Balancers::rebuild(
            &Balancers::default(),
            &sets(vec![endpoint("a", 100, true), endpoint("bb", 100, true)]),
        );
        let a = &balancers.backends("svc")[0];
        assert_eq!(a.probed(false, 2, 3), None);
        assert_eq!(a.probed(false, 2, 3), None);
        assert_eq!(a.probed(false, 2, 3), Some(false));
        for _ in 0..20 {
            assert_eq!(balancers.pick("svc", &[]).unwrap().endpoint.id, "bb");
        }
        assert_eq!(a.probed(true, 2, 3), None);
        assert_eq!(
            a.probed(false, 2, 3),
            None,
            "a failure breaks the run of successes"
        );
        assert_eq!(a.probed(true, 2, 3), None);
        assert_eq!(a.probed(true, 2, 3), Some(true));
        assert!(a.probe_healthy());
    }

    #[test]
    fn round_robin_takes_turns_and_weighted_random_follows_weights() {
        let balancers = Balancers::rebuild(
            &Balancers::default(),
            &sets(vec![endpoint("a", 100, true), endpoint("bb", 300, true)]),
        );
        let round_robin = LoadBalancing {
            policy: Policy::RoundRobin,
            slow_start: Duration::ZERO,
        };
        let turns: Vec<String> = (0..4)
            .map(|_| {
                balancers
                    .pick_with("svc", "", &[], &round_robin)
                    .unwrap()
                    .endpoint
                    .id
                    .clone()
            })
            .collect();
        assert_eq!(turns, ["a", "bb", "a", "bb"]);
        let weighted = LoadBalancing {
            policy: Policy::WeightedRandom,
            slow_start: Duration::ZERO,
        };
        let heavy = (0..4000)
            .filter(|_| {
                balancers
                    .pick_with("svc", "", &[], &weighted)
                    .unwrap()
                    .endpoint
                    .id
                    == "bb"
            })
            .count();
        // 3 000 expected; binomial(4000, 0.75) has a standard deviation of 27.
        assert!((2850..=3150).contains(&heavy), "{heavy}");
    }

    #[test]
    fn endpoints_joining_a_serving_cluster_ramp_up() {
        let first =
            Balancers::rebuild(&Balancers::default(), &sets(vec![endpoint("a", 100, true)]));
        assert_eq!(first.backends("svc")[0].ramp(Duration::from_secs(60)), 1.0);
        let second = Balancers::rebuild(
            &first,
            &sets(vec![endpoint("a", 100, true), endpoint("bb", 100, true)]),
        );
        let joined = second
            .backends("svc")
            .iter()
            .find(|backend| backend.endpoint.id == "bb")
            .unwrap();
        let ramp = joined.ramp(Duration::from_secs(60));
        assert!((0.1..0.2).contains(&ramp), "{ramp}");
        assert_eq!(joined.ramp(Duration::ZERO), 1.0, "slow start off");
        // Weighted by ramp, the newcomer gets about a tenth of the traffic.
        let weighted = LoadBalancing {
            policy: Policy::WeightedRandom,
            slow_start: Duration::from_secs(60),
        };
        let newcomer = (0..4000)
            .filter(|_| {
                second
                    .pick_with("svc", "", &[], &weighted)
                    .unwrap()
                    .endpoint
                    .id
                    == "bb"
            })
            .count();
        assert!((250..=500).contains(&newcomer), "{newcomer}");
    }

    #[test]
    fn rebuilding_keeps_the_counts_of_endpoints_that_stay() {
        let first =
            Balancers::rebuild(&Balancers::default(), &sets(vec![endpoint("a", 100, true)]));
        let a = first.pick("svc", &[]).unwrap();
        let _open = a.start();
        let second = Balancers::rebuild(
            &first,
            &sets(vec![endpoint("a", 100, true), endpoint("bb", 100, true)]),
        );
        let again = second
            .backends("svc")
            .iter()
            .find(|b| b.endpoint.id == "a")
            .unwrap();
        assert_eq!(again.in_flight(), 1);
        assert_eq!(second.size("svc"), 2);
    }
}
