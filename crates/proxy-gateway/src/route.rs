//! The route table: which cluster a request goes to, with what timeout and retries.
//! Pure: a request's method, host, path and headers in, a route out.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How a route matches the path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum PathMatch {
    /// The path starts with this.
    Prefix(String),
    /// The path is exactly this.
    Exact(String),
    /// The whole path matches this regular expression (RE2 syntax: linear time).
    Regex(Pattern),
}

impl PathMatch {
    /// Whether `path` matches.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Prefix(prefix) => path.starts_with(prefix.as_str()),
            PathMatch::Exact(exact) => path == exact,
            PathMatch::Regex(pattern) => pattern.is_full_match(path),
        }
    }

    /// The match as written.
    pub fn as_str(&self) -> &str {
        match self {
            PathMatch::Prefix(text) | PathMatch::Exact(text) => text,
            PathMatch::Regex(pattern) => pattern.as_str(),
        }
    }
}

/// Longest regular expression accepted in a route, and the compiled size it may reach:
/// a route table is configuration, but it may arrive over the admin API.
const MAX_PATTERN_LEN: usize = 1024;
const MAX_COMPILED_PATTERN: usize = 1 << 20;

/// A regular expression that must match a whole value; compiled once, when the
/// configuration is read (a bad one is refused there, with the reason).
#[derive(Debug, Clone)]
pub struct Pattern {
    source: String,
    compiled: regex::Regex,
}

impl Pattern {
    /// Compiles `source`, anchored at both ends.
    ///
    /// # Errors
    /// When it is too long or not a valid expression.
    pub fn new(source: &str) -> Result<Self, String> {
        if source.len() > MAX_PATTERN_LEN {
            return Err(format!(
                "regular expression longer than {MAX_PATTERN_LEN} bytes"
            ));
        }
        let compiled = regex::RegexBuilder::new(&format!("^(?:{source})$"))
            .size_limit(MAX_COMPILED_PATTERN)
            .build()
            .map_err(|error| format!("bad regular expression {source:?}: {error}"))?;
        Ok(Self {
            source: source.to_owned(),
            compiled,
        })
    }

    /// Whether the whole of `value` matches.
    pub fn is_full_match(&self, value: &str) -> bool {
        self.compiled.is_match(value)
    }

    /// The expression as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl PartialEq for Pattern {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

impl Eq for Pattern {}

impl Serialize for Pattern {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.source)
    }
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let source = String::deserialize(deserializer)?;
        Pattern::new(&source).map_err(serde::de::Error::custom)
    }
}

/// When a failed try is tried again on another endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Tries after the first.
    #[serde(default = "default_retries")]
    pub max_retries: u32,
    /// Retry idempotent methods on any connection failure or `UNAVAILABLE`; other
    /// methods only when the request never reached the upstream.
    #[serde(default = "default_true")]
    pub idempotent: bool,
    /// How long one try may take before it counts as failed (and, when idempotent, is
    /// tried again elsewhere); only the route's `timeout` when absent.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub per_try_timeout: Option<Duration>,
    /// The first retry waits a random time up to this; each further one up to twice as
    /// long ("full jitter"), at most `max_backoff`.
    #[serde(default = "default_backoff", with = "humantime_serde")]
    pub backoff: Duration,
    /// The longest wait before a retry.
    #[serde(default = "default_max_backoff", with = "humantime_serde")]
    pub max_backoff: Duration,
    /// For idempotent methods: when the first try has not answered after this long, a
    /// second one goes to another endpoint, and the first good answer wins (within the
    /// retry budget). Off when absent.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub hedge_after: Option<Duration>,
}

fn default_retries() -> u32 {
    2
}
fn default_backoff() -> Duration {
    Duration::from_millis(25)
}
fn default_max_backoff() -> Duration {
    Duration::from_millis(250)
}

impl RetryPolicy {
    /// The wait before retry number `retry` (1 for the first): random, up to
    /// `backoff × 2^(retry − 1)`, at most `max_backoff`.
    pub fn backoff_for(&self, retry: u32, roll: u64) -> Duration {
        let ceiling = self
            .backoff
            .saturating_mul(1 << retry.saturating_sub(1).min(16))
            .min(self.max_backoff);
        let ceiling_us = u64::try_from(ceiling.as_micros()).unwrap_or(u64::MAX);
        if ceiling_us == 0 {
            return Duration::ZERO;
        }
        Duration::from_micros(roll % (ceiling_us + 1))
    }
}
fn default_true() -> bool {
    true
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: default_retries(),
            idempotent: true,
            per_try_timeout: None,
            backoff: default_backoff(),
            max_backoff: default_max_backoff(),
            hedge_after: None,
        }
    }
}

/// A share of a route's traffic: Istio's VirtualService `route[].weight`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedCluster {
    /// The cluster.
    pub cluster: String,
    /// Only the cluster's endpoints of this subset (`stable`, `canary`: the registry's
    /// instance label, Istio's DestinationRule subset); any endpoint when empty.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub subset: String,
    /// Its percentage; the weights of a route add up to 100.
    pub weight: u32,
}

/// Where one request goes: a cluster, narrowed to a subset when not empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Destination<'a> {
    /// The cluster.
    pub cluster: &'a str,
    /// The subset, or empty for any endpoint.
    pub subset: &'a str,
}

/// One route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Its name in metrics, logs and the admin API; the path match when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Only requests for these hosts (`api.example.com`, or `*.example.com` for any
    /// subdomain; the port is ignored, case is not significant); any host when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// The path match.
    #[serde(rename = "match")]
    pub path: PathMatch,
    /// Only this method (any when absent).
    #[serde(default)]
    pub method: Option<String>,
    /// Only requests whose headers have these values (A/B routing).
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// Only gRPC requests (`true`) or only other requests (`false`); both when absent.
    #[serde(default)]
    pub grpc: Option<bool>,
    /// The cluster (a registry service name or a static cluster); empty when `split`
    /// names the clusters.
    #[serde(default)]
    pub cluster: String,
    /// Weighted clusters (stable / canary), instead of `cluster`: each request goes to
    /// one of them with the probability of its weight, and its retries stay there.
    #[serde(default)]
    pub split: Vec<WeightedCluster>,
    /// The whole request, all tries included.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Retries.
    #[serde(default)]
    pub retry: RetryPolicy,
    /// The least role a caller's token must grant (`viewer`, `operator`, `admin`); no
    /// token needed when absent.
    #[serde(default)]
    pub auth: Option<omnimesh_common::auth::Role>,
    /// The rate limit policy (a key of `rate_limits`) applied per client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<String>,
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

impl Route {
    /// The route's name in metrics and logs: `name`, else its path match.
    pub fn name(&self) -> &str {
        self.name.as_deref().unwrap_or_else(|| self.path.as_str())
    }

    /// The cluster of one request: `cluster`, or the split's cluster that `roll` (any
    /// number; its remainder by 100 is the percentile) falls in.
    pub fn cluster_for(&self, roll: u64) -> &str {
        self.destination_for(roll).cluster
    }

    /// The destination of one request: `cluster`, or the split's share that `roll`
    /// falls in.
    pub fn destination_for(&self, roll: u64) -> Destination<'_> {
        let mut percentile = roll % 100;
        for share in &self.split {
            if percentile < u64::from(share.weight) {
                return Destination {
                    cluster: &share.cluster,
                    subset: &share.subset,
                };
            }
            percentile -= u64::from(share.weight);
        }
        Destination {
            cluster: &self.cluster,
            subset: "",
        }
    }

    /// Whether `host` (a `Host` or `:authority`, port allowed) is one of `hosts`.
    fn host_matches(&self, host: Option<&str>) -> bool {
        if self.hosts.is_empty() {
            return true;
        }
        let Some(host) = host else {
            return false;
        };
        let host = strip_port(host);
        self.hosts
            .iter()
            .any(|pattern| match pattern.strip_prefix("*.") {
                Some(domain) => {
                    host.len() > domain.len() + 1
                        && host.as_bytes()[host.len() - domain.len() - 1] == b'.'
                        && host[host.len() - domain.len()..].eq_ignore_ascii_case(domain)
                }
                None => host.eq_ignore_ascii_case(pattern),
            })
    }

    /// Why this route does not take `request`, or `None` when it does.
    pub fn mismatch(&self, request: &RequestFacts<'_>) -> Option<String> {
        if !self.host_matches(request.host) {
            return Some(format!(
                "host {:?} is not one of {:?}",
                request.host.unwrap_or(""),
                self.hosts
            ));
        }
        if !self.path.matches(request.path) {
            return Some(format!(
                "path {:?} does not match {:?}",
                request.path, self.path
            ));
        }
        if let Some(grpc) = self.grpc
            && grpc != request.grpc
        {
            return Some(if grpc {
                "only gRPC calls".to_owned()
            } else {
                "no gRPC calls".to_owned()
            });
        }
        if let Some(method) = &self.method
            && !method.eq_ignore_ascii_case(request.method)
        {
            return Some(format!("method {} is not {method}", request.method));
        }
        for (name, value) in &self.headers {
            let found = (request.header)(name);
            if found != Some(value.as_str()) {
                return Some(format!("header {name} is {found:?}, not {value:?}"));
            }
        }
        None
    }

    /// Why the route cannot be used: (field, reason).
    ///
    /// # Errors
    /// Neither or both of `cluster` and `split`; a split whose weights do not add up to
    /// 100, or that names a cluster twice or an empty one.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.timeout.is_zero() {
            return Err(("timeout", "must be longer than 0 s".into()));
        }
        if self
            .retry
            .per_try_timeout
            .is_some_and(|t| t.is_zero() || t > self.timeout)
        {
            return Err((
                "retry",
                "per_try_timeout must be positive and at most the route's timeout".into(),
            ));
        }
        if self
            .retry
            .hedge_after
            .is_some_and(|t| t.is_zero() || t >= self.timeout)
        {
            return Err((
                "retry",
                "hedge_after must be positive and shorter than the route's timeout".into(),
            ));
        }
        if self.retry.max_backoff < self.retry.backoff {
            return Err(("retry", "max_backoff must be at least backoff".into()));
        }
        if self.name.as_deref().is_some_and(str::is_empty) {
            return Err(("name", "must not be empty".into()));
        }
        for host in &self.hosts {
            let bare = host.strip_prefix("*.").unwrap_or(host);
            if bare.is_empty() || bare.contains(['*', '/', ':', ' ']) {
                return Err((
                    "hosts",
                    format!("{host:?} is not a host name or `*.domain`"),
                ));
            }
        }
        match (self.cluster.is_empty(), self.split.is_empty()) {
            (true, true) => return Err(("cluster", "a cluster or a split is needed".into())),
            (false, false) => {
                return Err(("split", "give either cluster or split, not both".into()));
            }
            (false, true) => return Ok(()),
            (true, false) => {}
        }
        let total: u64 = self.split.iter().map(|share| u64::from(share.weight)).sum();
        if total != 100 {
            return Err(("split", format!("the weights add up to {total}, not 100")));
        }
        for (index, share) in self.split.iter().enumerate() {
            if share.cluster.is_empty() {
                return Err(("split", format!("entry {index} names no cluster")));
            }
            if self.split[..index]
                .iter()
                .any(|other| other.cluster == share.cluster && other.subset == share.subset)
            {
                let name = if share.subset.is_empty() {
                    share.cluster.clone()
                } else {
                    format!("{}/{}", share.cluster, share.subset)
                };
                return Err(("split", format!("{name:?} appears twice")));
            }
        }
        Ok(())
    }

    /// A prefix route to `cluster` with the defaults.
    pub fn prefix(prefix: &str, cluster: &str) -> Self {
        Self {
            name: None,
            hosts: Vec::new(),
            path: PathMatch::Prefix(prefix.to_owned()),
            method: None,
            headers: Vec::new(),
            grpc: None,
            cluster: cluster.to_owned(),
            split: Vec::new(),
            timeout: default_timeout(),
            retry: RetryPolicy::default(),
            auth: None,
            rate_limit: None,
        }
    }
}

/// What a route is matched on.
#[derive(Clone, Copy)]
pub struct RequestFacts<'a> {
    /// `GET`, `POST`, …
    pub method: &'a str,
    /// The `:authority` or `Host`, when the request has one.
    pub host: Option<&'a str>,
    /// Whether it is a gRPC call (`content-type: application/grpc…`).
    pub grpc: bool,
    /// The path, without the query.
    pub path: &'a str,
    /// Looks a header up by (lower-case) name.
    pub header: &'a dyn Fn(&str) -> Option<&'a str>,
}

impl std::fmt::Debug for RequestFacts<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestFacts")
            .field("method", &self.method)
            .field("host", &self.host)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The routes, first match wins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteTable {
    /// In order.
    pub routes: Vec<Route>,
}

impl Default for RouteTable {
    /// The platform: engine and controller APIs to their services, the rest (the
    /// terminal page, `/ws`) to omniterm-interface.
    fn default() -> Self {
        Self {
            routes: vec![
                Route::prefix("/omnimesh.engine.v1.", "core-engine"),
                Route::prefix("/omnimesh.controller.v1.", "mesh-controller"),
                Route::prefix("/omnimesh.terminal.v1.", "omniterm-interface"),
                // The terminal page and `/ws`; a gRPC call no route names is UNIMPLEMENTED.
                Route {
                    grpc: Some(false),
                    ..Route::prefix("/", "omniterm-interface")
                },
            ],
        }
    }
}

impl RouteTable {
    /// The first route that matches.
    pub fn select(&self, request: RequestFacts<'_>) -> Option<&Route> {
        self.routes
            .iter()
            .find(|route| route.mismatch(&request).is_none())
    }

    /// The route [`select`](Self::select) picks, with one line per route considered:
    /// why it did not match, or that it did.
    pub fn explain(&self, request: RequestFacts<'_>) -> (Option<&Route>, Vec<String>) {
        let mut steps = Vec::new();
        for (index, route) in self.routes.iter().enumerate() {
            match route.mismatch(&request) {
                Some(reason) => {
                    steps.push(format!("route {index} ({}): no, {reason}", route.name()))
                }
                None => {
                    steps.push(format!("route {index} ({}): matches", route.name()));
                    return (Some(route), steps);
                }
            }
        }
        steps.push("no route matches".to_owned());
        (None, steps)
    }

    /// The route named `name` (see [`Route::name`]).
    pub fn by_name_mut(&mut self, name: &str) -> Option<&mut Route> {
        self.routes.iter_mut().find(|route| route.name() == name)
    }
}

/// `host` without a `:port` (IPv6 literals keep their brackets).
fn strip_port(host: &str) -> &str {
    match host.rfind(':') {
        Some(colon) if !host[colon..].contains(']') => &host[..colon],
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn select<'t>(
        table: &'t RouteTable,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> Option<&'t str> {
        let grpc = method == "POST" && path.contains('/') && path[1..].contains('/');
        let owned: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let lookup = |name: &str| {
            owned
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        table
            .select(RequestFacts {
                method,
                host: lookup("host"),
                grpc,
                path,
                header: &lookup,
            })
            .map(|route| route.cluster.as_str())
    }

    #[test]
    fn the_default_table_serves_the_platform() {
        let table = RouteTable::default();
        assert_eq!(
            select(&table, "POST", "/omnimesh.engine.v1.Engine/Encrypt", &[]),
            Some("core-engine")
        );
        assert_eq!(
            select(
                &table,
                "POST",
                "/omnimesh.controller.v1.Registry/Watch",
                &[]
            ),
            Some("mesh-controller")
        );
        assert_eq!(select(&table, "GET", "/", &[]), Some("omniterm-interface"));
        assert_eq!(
            select(&table, "GET", "/ws", &[]),
            Some("omniterm-interface")
        );
        // A look-alike prefix does not match the engine; unknown gRPC goes nowhere.
        assert_eq!(
            select(&table, "POST", "/omnimesh.engine.v10.X/Y", &[]),
            None
        );
        assert_eq!(
            select(
                &table,
                "POST",
                "/grpc.reflection.v1.ServerReflection/Info",
                &[]
            ),
            None
        );
    }

    fn split(shares: &[(&str, u32)]) -> Route {
        Route {
            split: shares
                .iter()
                .map(|(cluster, weight)| WeightedCluster {
                    cluster: (*cluster).to_owned(),
                    subset: String::new(),
                    weight: *weight,
                })
                .collect(),
            ..Route::prefix("/api", "")
        }
    }

    #[test]
    fn a_split_sends_each_percentile_to_its_cluster() {
        let route = split(&[("stable", 90), ("canary", 10), ("dark", 0)]);
        route.validate().unwrap();
        let mut counts = std::collections::BTreeMap::new();
        for roll in 0..1000_u64 {
            *counts.entry(route.cluster_for(roll)).or_insert(0) += 1;
        }
        assert_eq!(
            counts.into_iter().collect::<Vec<_>>(),
            [("canary", 100), ("stable", 900)]
        );
        assert_eq!(route.cluster_for(u64::MAX), "stable"); // 15 % 100
        assert_eq!(Route::prefix("/", "one").cluster_for(7), "one");
    }

    #[test]
    fn backoff_is_full_jitter_doubling_up_to_the_cap() {
        let policy = RetryPolicy::default();
        assert_eq!(policy.backoff_for(1, 0), Duration::ZERO);
        assert_eq!(policy.backoff_for(1, 25_000), Duration::from_millis(25));
        assert_eq!(policy.backoff_for(1, 25_001), Duration::ZERO);
        assert_eq!(policy.backoff_for(2, 50_000), Duration::from_millis(50));
        for roll in [0, 7, 123_456_789, u64::MAX] {
            assert!(policy.backoff_for(30, roll) <= Duration::from_millis(250));
        }
        let bad = Route {
            retry: RetryPolicy {
                per_try_timeout: Some(Duration::from_secs(60)),
                ..RetryPolicy::default()
            },
            ..Route::prefix("/", "x")
        };
        assert_eq!(bad.validate().unwrap_err().0, "retry");
    }

    #[test]
    fn bad_splits_are_refused_by_name() {
        let refused = |route: Route| route.validate().unwrap_err();
        assert_eq!(
            refused(split(&[("stable", 90), ("canary", 20)])),
            ("split", "the weights add up to 110, not 100".to_owned())
        );
        assert_eq!(
            refused(split(&[("stable", 50), ("stable", 50)])).1,
            "\"stable\" appears twice"
        );
        assert_eq!(refused(split(&[("", 100)])).1, "entry 0 names no cluster");
        assert_eq!(refused(Route::prefix("/", "")).0, "cluster");
        let both = Route {
            cluster: "x".into(),
            ..split(&[("stable", 100)])
        };
        assert_eq!(refused(both).0, "split");
        // Weights near u32::MAX do not wrap around to 100.
        assert_eq!(refused(split(&[("a", u32::MAX), ("b", 101)])).0, "split");
    }

    #[test]
    fn methods_headers_and_exact_paths_narrow_a_route() {
        let table = RouteTable {
            routes: vec![
                Route {
                    headers: vec![("x-variant".into(), "b".into())],
                    ..Route::prefix("/api", "api-b")
                },
                Route {
                    method: Some("GET".into()),
                    ..Route::prefix("/api", "api-read")
                },
                Route {
                    path: PathMatch::Exact("/api".into()),
                    ..Route::prefix("", "api-root")
                },
            ],
        };
        assert_eq!(
            select(&table, "POST", "/api/x", &[("x-variant", "b")]),
            Some("api-b")
        );
        assert_eq!(
            select(&table, "get", "/api/x", &[("x-variant", "a")]),
            Some("api-read")
        );
        assert_eq!(select(&table, "POST", "/api", &[]), Some("api-root"));
        assert_eq!(select(&table, "POST", "/api/x", &[]), None);
    }
}
