//! The configuration the data plane serves now, swapped atomically on reload.
//!
//! A reload (the watched file, `SIGHUP`, or `GatewayAdmin.ApplyConfig`) builds a whole
//! new [`Serving`] — validated config, route table, static clusters — and swaps it in
//! with one pointer store (`arc-swap`): a request sees either the old or the new
//! configuration, never a mix, and one in flight keeps the one it started with. A
//! configuration that fails validation, or that changes what only a restart can change
//! (listeners, keys, telemetry, threads), is refused with the key and the reason, and
//! the previous one keeps serving.

use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use omnimesh_common::config::{ServiceConfig as _, Sources, load_from};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::watch;

use crate::Config;
use crate::ratelimit::Limiters;
use crate::route::{Route, RouteTable, WeightedCluster};
use crate::upstream::{Endpoint, EndpointSet, Endpoints};

/// One configuration, as served.
#[derive(Debug)]
pub struct Serving {
    /// The gateway section, validated.
    pub config: Config,
    /// Its route table (the platform's default when the config has none).
    pub routes: RouteTable,
    /// 1 for the configuration the gateway started with, +1 at every applied change.
    pub version: u64,
    /// When it was applied.
    pub applied_at: SystemTime,
    /// Where it came from: `start-up`, a file path, `admin API`.
    pub origin: String,
    /// Its rate limit policies' buckets.
    pub limiters: Limiters,
}

impl Serving {
    fn new(config: Config, version: u64, origin: &str, previous: Option<&Serving>) -> Self {
        let routes = config
            .routes
            .clone()
            .map_or_else(RouteTable::default, |routes| RouteTable { routes });
        let limiters = Limiters::new(&config.rate_limits, previous.map(|p| &p.limiters));
        Self {
            config,
            routes,
            version,
            applied_at: SystemTime::now(),
            origin: origin.to_owned(),
            limiters,
        }
    }

    /// The gateway section as TOML, under its `[proxy-gateway]` header: a file that
    /// `ApplyConfig` (or the watched file) takes back as it is.
    pub fn toml(&self) -> String {
        let mut section = toml::Table::new();
        section.insert(
            crate::SERVICE.to_owned(),
            toml::Value::try_from(&self.config).unwrap_or(toml::Value::Table(toml::Table::new())),
        );
        toml::to_string_pretty(&section).unwrap_or_default()
    }
}

/// Why a configuration was not applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{key}`: {reason}")]
pub struct Refused {
    /// The key at fault, relative to `[proxy-gateway]` (or `version`, `route`).
    pub key: String,
    /// Why.
    pub reason: String,
}

impl Refused {
    fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReloadLabels {
    result: &'static str,
}

/// The serving configuration and how it changes.
#[derive(Debug)]
pub struct Live {
    current: ArcSwap<Serving>,
    statics: watch::Sender<Arc<Endpoints>>,
    /// Applies one change at a time (readers never wait for it).
    applying: std::sync::Mutex<()>,
    reloads: Family<ReloadLabels, Counter>,
}

/// Static clusters as endpoint sets.
pub fn static_sets(config: &Config) -> Endpoints {
    config
        .upstreams
        .clusters
        .iter()
        .map(|(cluster, endpoints)| {
            let endpoints = endpoints
                .iter()
                .map(|address| Endpoint {
                    id: format!("{cluster}@{address}"),
                    address: address.clone(),
                    weight: 100,
                    subset: String::new(),
                    version: String::new(),
                    healthy: true,
                })
                .collect();
            (
                cluster.clone(),
                EndpointSet {
                    endpoints,
                    revision: 0,
                    source: "static",
                },
            )
        })
        .collect()
}

/// The keys only a restart can change, and how to read them.
fn restart_only(config: &Config) -> [(&'static str, String); 14] {
    [
        ("listen", format!("{:?}", config.listen)),
        ("server", format!("{:?}", config.server)),
        ("telemetry", format!("{:?}", config.telemetry)),
        ("worker_threads", config.worker_threads.to_string()),
        ("auth", format!("{:?}", config.auth)),
        ("redis", format!("{:?}", config.redis)),
        ("tls", format!("{:?}", config.tls)),
        ("jwks", format!("{:?}", config.jwks)),
        (
            "max_connections_per_endpoint",
            config.max_connections_per_endpoint.to_string(),
        ),
        (
            "max_pending_per_endpoint",
            config.max_pending_per_endpoint.to_string(),
        ),
        (
            "admin_requires_token",
            config.admin_requires_token.to_string(),
        ),
        ("upstreams.registry", config.upstreams.registry.clone()),
        (
            "upstreams.endpoints_file",
            config.upstreams.endpoints_file.clone(),
        ),
        (
            "header_read_timeout",
            format!("{:?}", config.header_read_timeout),
        ),
    ]
}

impl Live {
    /// Serves `config` (version 1), counting reloads in `registry`.
    pub fn new(config: Config, registry: &mut prometheus_client::registry::Registry) -> Self {
        let reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "gateway_config_reloads",
            "Configuration changes, by result (applied or refused)",
            reloads.clone(),
        );
        let statics = watch::Sender::new(Arc::new(static_sets(&config)));
        Self {
            current: ArcSwap::from_pointee(Serving::new(config, 1, "start-up", None)),
            statics,
            applying: std::sync::Mutex::new(()),
            reloads,
        }
    }

    /// The configuration serving now.
    pub fn load(&self) -> Arc<Serving> {
        self.current.load_full()
    }

    /// The static clusters now and at every change.
    pub fn statics(&self) -> watch::Receiver<Arc<Endpoints>> {
        self.statics.subscribe()
    }

    /// Validates `sources` (a file, or TOML text) and, unless `dry_run`, swaps it in.
    /// Returns the version serving afterwards.
    ///
    /// # Errors
    /// A configuration that does not load or validate, that changes a restart-only key,
    /// or (with `expected_version`) that was based on a version no longer serving.
    pub fn apply(
        &self,
        sources: &Sources,
        origin: &str,
        expected_version: Option<u64>,
        dry_run: bool,
    ) -> Result<u64, Refused> {
        let loaded = load_from::<Config>(sources).map_err(|error| {
            let key = error
                .key
                .strip_prefix(crate::SERVICE)
                .map_or(error.key.as_str(), |key| key.trim_start_matches('.'))
                .to_owned();
            Refused::new(key, format!("{} (from {})", error.reason, error.origin))
        });
        let result = loaded.and_then(|config| {
            self.swap(
                |current| {
                    if let Some(expected) = expected_version
                        && expected != current.version
                    {
                        return Err(Refused::new(
                            "version",
                            format!(
                                "version {} is serving, not {expected}: read it again and retry",
                                current.version
                            ),
                        ));
                    }
                    Ok(config)
                },
                origin,
                dry_run,
            )
        });
        self.count(&result, dry_run);
        result
    }

    /// Replaces the split of the route named `route` (the controller's canary steps).
    ///
    /// # Errors
    /// An unknown route, or a split that does not validate.
    pub fn set_route_weights(
        &self,
        route: &str,
        split: Vec<WeightedCluster>,
    ) -> Result<Route, Refused> {
        let mut changed = None;
        let result = self.swap(
            |current| {
                let mut table = current.routes.clone();
                let target = table
                    .by_name_mut(route)
                    .ok_or_else(|| Refused::new("route", format!("no route is named {route:?}")))?;
                target.split = split;
                target.cluster.clear();
                target
                    .validate()
                    .map_err(|(field, reason)| Refused::new(field, reason))?;
                changed = Some(target.clone());
                let mut config = current.config.clone();
                config.routes = Some(table.routes);
                Ok(config)
            },
            "admin API (SetRouteWeights)",
            false,
        );
        self.count(&result, false);
        result.map(|_| changed.expect("set when the swap succeeded"))
    }

    /// Builds the next configuration from the current one with `next`, checks it, and
    /// swaps it in (unless `dry_run`).
    fn swap(
        &self,
        next: impl FnOnce(&Serving) -> Result<Config, Refused>,
        origin: &str,
        dry_run: bool,
    ) -> Result<u64, Refused> {
        let _one_at_a_time = self
            .applying
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let current = self.current.load_full();
        let config = next(&current)?;
        config
            .validate()
            .map_err(|invalid| Refused::new(invalid.key, invalid.reason))?;
        for ((key, old), (_, new)) in restart_only(&current.config)
            .into_iter()
            .zip(restart_only(&config))
        {
            if old != new {
                return Err(Refused::new(
                    key,
                    "changes only with a restart; the serving value was kept and nothing applied",
                ));
            }
        }
        if dry_run {
            return Ok(current.version);
        }
        if config == current.config {
            return Ok(current.version);
        }
        let version = current.version + 1;
        let statics_changed = config.upstreams.clusters != current.config.upstreams.clusters;
        let serving = Serving::new(config, version, origin, Some(&current));
        if statics_changed {
            self.statics
                .send_replace(Arc::new(static_sets(&serving.config)));
        }
        self.current.store(Arc::new(serving));
        tracing::info!(version, origin, "configuration applied");
        Ok(version)
    }

    fn count(&self, result: &Result<impl Sized, Refused>, dry_run: bool) {
        let label = match (result, dry_run) {
            (Err(refused), _) => {
                tracing::warn!(%refused, "configuration refused; the previous one keeps serving");
                "refused"
            }
            (Ok(_), true) => "validated",
            (Ok(_), false) => "applied",
        };
        self.reloads
            .get_or_create(&ReloadLabels { result: label })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live() -> (Live, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let mut registry = prometheus_client::registry::Registry::default();
        (Live::new(Config::for_test(dir.path()), &mut registry), dir)
    }

    fn text(toml: &str) -> Sources {
        Sources::new().with_toml("admin API", toml)
    }

    #[test]
    fn a_good_change_is_swapped_in_and_versioned() {
        let (live, _dir) = live();
        let current = live.load();
        assert_eq!(current.version, 1);
        // What GetConfig returns applies as it is (nothing changes, same version) …
        assert_eq!(
            live.apply(&text(&current.toml()), "admin API", None, false),
            Ok(1)
        );
        // … and an edited copy is the next version.
        let edited = current.toml().replace(
            "max_request_body_bytes = 16777216",
            "max_request_body_bytes = 1024",
        );
        assert_ne!(edited, current.toml(), "{edited}");
        assert_eq!(
            live.apply(&text(&edited), "admin API", Some(1), false),
            Ok(2)
        );
        let next = live.load();
        assert_eq!(next.config.max_request_body_bytes, 1024);
        assert_eq!(next.origin, "admin API");
        // The old snapshot is untouched: a request that holds it keeps it.
        assert_eq!(current.config.max_request_body_bytes, 16 * 1024 * 1024);
        // A stale expected version is refused.
        let refused = live.apply(&text(&edited), "admin API", Some(1), false);
        assert_eq!(refused.unwrap_err().key, "version");
    }

    #[test]
    fn bad_and_restart_only_changes_are_refused_with_the_key() {
        let (live, _dir) = live();
        let base = live.load().toml();
        let cases = [
            (
                base.replace(
                    "max_request_body_bytes = 16777216",
                    "max_request_body_bytes = 0",
                ),
                "max_request_body_bytes",
                "must be at least 1",
            ),
            (
                format!(
                    "{base}\n[[proxy-gateway.routes]]\nmatch = {{ regex = \"(\" }}\ncluster = \"x\"\n"
                ),
                "routes",
                "bad regular expression",
            ),
            (
                base.replace("worker_threads = 0", "worker_threads = 3"),
                "worker_threads",
                "changes only with a restart",
            ),
            (
                base.replacen("[proxy-gateway]\n", "[proxy-gateway]\nsurprise = 1\n", 1),
                "surprise",
                "unknown key",
            ),
            ("[proxy-gateway\n".to_owned(), "", "expected"),
        ];
        for (toml, key, reason) in cases {
            let refused = live
                .apply(&text(&toml), "admin API", None, false)
                .unwrap_err();
            assert!(refused.key.starts_with(key), "{refused} for {toml}");
            assert!(refused.reason.contains(reason), "{refused}");
        }
        assert_eq!(live.load().version, 1, "nothing was applied");
        // A dry run validates without applying.
        let edited = base.replace(
            "max_request_body_bytes = 16777216",
            "max_request_body_bytes = 9",
        );
        assert_eq!(live.apply(&text(&edited), "admin API", None, true), Ok(1));
        assert_eq!(live.load().config.max_request_body_bytes, 16 * 1024 * 1024);
    }

    #[test]
    fn route_weights_change_one_route_and_are_validated() {
        let (live, _dir) = live();
        let shares = |stable, canary| {
            vec![
                WeightedCluster {
                    cluster: "core-engine".into(),
                    subset: "stable".into(),
                    weight: stable,
                },
                WeightedCluster {
                    cluster: "core-engine".into(),
                    subset: "canary".into(),
                    weight: canary,
                },
            ]
        };
        let route = live
            .set_route_weights("/omnimesh.engine.v1.", shares(90, 10))
            .unwrap();
        assert_eq!(route.split.len(), 2);
        assert_eq!(live.load().version, 2);
        assert_eq!(
            live.load().routes.routes[0].destination_for(95).subset,
            "canary"
        );
        let refused = live
            .set_route_weights("/omnimesh.engine.v1.", shares(90, 20))
            .unwrap_err();
        assert_eq!(refused.key, "split");
        let refused = live.set_route_weights("/nope", shares(50, 50)).unwrap_err();
        assert_eq!(refused.key, "route");
        assert_eq!(live.load().version, 2);
    }
}
