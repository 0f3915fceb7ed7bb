//! Rate limits per client: a route names a policy (`rate_limit = "api"`), and each
//! client — the token's subject on routes that check tokens, else the peer's IP
//! address — gets its own bucket of `burst` requests refilled at
//! `requests_per_second`.
//!
//! - In memory (the default): GCRA through `governor`, per gateway process. Idle
//!   clients' state is dropped every few seconds, so memory follows the active
//!   clients, not every address ever seen.
//! - Shared (`shared = true`): one token bucket per client in Redis, updated by one Lua
//!   script (atomic; Redis's clock), so every gateway replica draws from the same
//!   bucket. When Redis does not answer within `redis.timeout`, the request is let
//!   through (`on_error = "open"`, the default: an outage of the limiter must not
//!   become an outage of the API) or refused with `UNAVAILABLE` / 503 (`"closed"`);
//!   either way the error is counted.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota};
use serde::{Deserialize, Serialize};

/// `[proxy-gateway.rate_limits.<name>]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Sustained requests per second per client.
    pub requests_per_second: u32,
    /// Requests a client may send at once after being idle (default: one second's).
    #[serde(default)]
    pub burst: u32,
    /// Count in Redis, across every gateway replica, instead of in this process.
    #[serde(default)]
    pub shared: bool,
}

impl Policy {
    fn burst(&self) -> u32 {
        if self.burst == 0 {
            self.requests_per_second
        } else {
            self.burst
        }
    }

    /// Why the policy cannot be used.
    ///
    /// # Errors
    /// A rate of 0, or a burst smaller than 1.
    pub fn validate(&self) -> Result<(), String> {
        if self.requests_per_second == 0 {
            return Err("requests_per_second must be at least 1".to_owned());
        }
        if self.requests_per_second > 1_000_000 || self.burst > 1_000_000 {
            return Err("at most 1000000 requests per second and burst".to_owned());
        }
        Ok(())
    }
}

/// What happens when Redis cannot be asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Let the request through.
    #[default]
    Open,
    /// Refuse it with `UNAVAILABLE` / 503.
    Closed,
}

/// `[proxy-gateway.redis]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// The Redis server of shared limits.
    #[serde(default = "default_redis_url")]
    pub url: String,
    /// How long a limit check may wait for Redis.
    #[serde(default = "default_redis_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// `open` (let requests through) or `closed` (refuse them) when Redis fails.
    #[serde(default)]
    pub on_error: OnError,
    /// Prefix of the buckets' keys.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            url: default_redis_url(),
            timeout: default_redis_timeout(),
            on_error: OnError::Open,
            key_prefix: default_key_prefix(),
        }
    }
}

fn default_redis_url() -> String {
    "redis://127.0.0.1:6379".to_owned()
}

fn default_redis_timeout() -> Duration {
    Duration::from_millis(50)
}

fn default_key_prefix() -> String {
    "omnimesh:ratelimit".to_owned()
}

/// The answer of a limit check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead.
    Allowed,
    /// Over the limit: try again after this long.
    Limited(Duration),
    /// The shared limiter could not be asked and the policy fails closed.
    Unavailable,
}

/// One policy's in-memory buckets.
#[derive(Debug)]
struct Local {
    policy: Policy,
    limiter: DefaultKeyedRateLimiter<String>,
}

/// The token bucket, in Redis: refill by elapsed time (Redis's clock), take one token
/// when there is one, and keep the key only as long as a full refill takes.
const BUCKET_SCRIPT: &str = r"
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil or at == nil then
  tokens = burst
  at = now
end
tokens = math.min(burst, tokens + math.max(0, now - at) * rate / 1000000)
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = math.ceil((1 - tokens) * 1000000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return {allowed, wait}
";

/// Every policy's limiter, for one configuration; the in-memory state of a policy that
/// stays the same carries over to the next configuration.
#[derive(Debug, Default)]
pub struct Limiters {
    local: BTreeMap<String, Arc<Local>>,
    shared: BTreeMap<String, Policy>,
}

impl Limiters {
    /// The limiters of `policies`, keeping `previous` in-memory state where a policy is
    /// unchanged.
    pub fn new(policies: &BTreeMap<String, Policy>, previous: Option<&Limiters>) -> Self {
        let mut limiters = Self::default();
        for (name, policy) in policies {
            if policy.shared {
                limiters.shared.insert(name.clone(), policy.clone());
                continue;
            }
            let kept = previous
                .and_then(|previous| previous.local.get(name))
                .filter(|local| local.policy == *policy)
                .cloned();
            let local = kept.unwrap_or_else(|| {
                let rate = NonZeroU32::new(policy.requests_per_second).unwrap_or(NonZeroU32::MIN);
                let burst = NonZeroU32::new(policy.burst()).unwrap_or(rate);
                Arc::new(Local {
                    policy: policy.clone(),
                    limiter: DefaultKeyedRateLimiter::keyed(
                        Quota::per_second(rate).allow_burst(burst),
                    ),
                })
            });
            limiters.local.insert(name.clone(), local);
        }
        limiters
    }

    /// Drops the state of clients whose buckets are full again (idle ones).
    pub fn forget_idle(&self) {
        for local in self.local.values() {
            local.limiter.retain_recent();
            local.limiter.shrink_to_fit();
        }
    }

    /// Clients with in-memory state now, all policies.
    pub fn tracked_clients(&self) -> usize {
        self.local.values().map(|local| local.limiter.len()).sum()
    }

    /// Checks one request of `client` against `policy`.
    pub async fn check(&self, policy: &str, client: &str, shared: &Shared) -> Decision {
        if let Some(local) = self.local.get(policy) {
            return match local.limiter.check_key(&client.to_owned()) {
                Ok(()) => Decision::Allowed,
                Err(not_until) => Decision::Limited(not_until.wait_time_from(
                    governor::clock::Clock::now(&governor::clock::DefaultClock::default()),
                )),
            };
        }
        match self.shared.get(policy) {
            Some(rule) => shared.check(policy, rule, client).await,
            // Validation ties routes to policies; a missing one limits nothing.
            None => Decision::Allowed,
        }
    }
}

/// The Redis side of shared limits.
#[derive(Clone)]
pub struct Shared {
    config: RedisConfig,
    connection: Option<redis::aio::ConnectionManager>,
    script: Arc<redis::Script>,
    errors: prometheus_client::metrics::counter::Counter,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("url", &self.config.url)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// A client of `config.url` that connects when first used and reconnects by
    /// itself; `None` for the connection when the URL does not parse (every check
    /// then fails as `on_error` says).
    pub fn new(config: &RedisConfig, errors: prometheus_client::metrics::counter::Counter) -> Self {
        let connection = redis::Client::open(config.url.as_str()).ok().map(|client| {
            let options = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(config.timeout.max(Duration::from_millis(200))))
                .set_response_timeout(Some(config.timeout))
                .set_number_of_retries(1)
                .set_max_delay(Duration::from_secs(1));
            redis::aio::ConnectionManager::new_lazy_with_config(client, options)
        });
        Self {
            config: config.clone(),
            connection: connection.and_then(Result::ok),
            script: Arc::new(redis::Script::new(BUCKET_SCRIPT)),
            errors,
        }
    }

    async fn check(&self, policy_name: &str, policy: &Policy, client: &str) -> Decision {
        let failed = || {
            self.errors.inc();
            match self.config.on_error {
                OnError::Open => Decision::Allowed,
                OnError::Closed => Decision::Unavailable,
            }
        };
        let Some(connection) = &self.connection else {
            return failed();
        };
        let mut connection = connection.clone();
        let key = format!("{}:{policy_name}:{client}", self.config.key_prefix);
        let mut invocation = self.script.key(key);
        invocation
            .arg(policy.requests_per_second)
            .arg(policy.burst());
        let answer = tokio::time::timeout(
            self.config.timeout,
            invocation.invoke_async::<(i64, i64)>(&mut connection),
        )
        .await;
        match answer {
            Ok(Ok((1, _))) => Decision::Allowed,
            Ok(Ok((_, wait_us))) => {
                Decision::Limited(Duration::from_micros(u64::try_from(wait_us).unwrap_or(0)))
            }
            Ok(Err(error)) => {
                tracing::debug!(%error, "rate limit: Redis failed");
                failed()
            }
            Err(_) => {
                tracing::debug!(timeout = ?self.config.timeout, "rate limit: Redis did not answer in time");
                failed()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policies(rate: u32, burst: u32) -> BTreeMap<String, Policy> {
        BTreeMap::from([(
            "api".to_owned(),
            Policy {
                requests_per_second: rate,
                burst,
                shared: false,
            },
        )])
    }

    fn offline() -> Shared {
        Shared::new(
            &RedisConfig {
                url: "not a url".into(),
                ..RedisConfig::default()
            },
            prometheus_client::metrics::counter::Counter::default(),
        )
    }

    #[tokio::test]
    async fn each_client_has_its_own_bucket() {
        let limiters = Limiters::new(&policies(1, 3), None);
        let shared = offline();
        for _ in 0..3 {
            assert_eq!(
                limiters.check("api", "alice", &shared).await,
                Decision::Allowed
            );
        }
        let Decision::Limited(wait) = limiters.check("api", "alice", &shared).await else {
            panic!("the fourth request must be limited");
        };
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        assert_eq!(
            limiters.check("api", "bob", &shared).await,
            Decision::Allowed
        );
        assert_eq!(limiters.tracked_clients(), 2);
        // A reload with the same policy keeps the state; a changed one starts afresh.
        let same = Limiters::new(&policies(1, 3), Some(&limiters));
        assert!(matches!(
            same.check("api", "alice", &shared).await,
            Decision::Limited(_)
        ));
        let changed = Limiters::new(&policies(1, 5), Some(&limiters));
        assert_eq!(
            changed.check("api", "alice", &shared).await,
            Decision::Allowed
        );
    }

    #[tokio::test]
    async fn a_broken_redis_fails_open_or_closed_as_configured() {
        let mut rules = policies(10, 0);
        rules.get_mut("api").unwrap().shared = true;
        let limiters = Limiters::new(&rules, None);
        let open = offline();
        assert_eq!(limiters.check("api", "x", &open).await, Decision::Allowed);
        assert_eq!(open.errors.get(), 1);
        let closed = Shared::new(
            &RedisConfig {
                url: "not a url".into(),
                on_error: OnError::Closed,
                ..RedisConfig::default()
            },
            prometheus_client::metrics::counter::Counter::default(),
        );
        assert_eq!(
            limiters.check("api", "x", &closed).await,
            Decision::Unavailable
        );
    }

    #[test]
    fn bad_policies_are_refused() {
        assert!(
            Policy {
                requests_per_second: 0,
                burst: 0,
                shared: false
            }
            .validate()
            .is_err()
        );
        assert!(
            Policy {
                requests_per_second: 2_000_000,
                burst: 0,
                shared: false
            }
            .validate()
            .is_err()
        );
        assert!(
            Policy {
                requests_per_second: 5,
                burst: 0,
                shared: true
            }
            .validate()
            .is_ok()
        );
    }
}
