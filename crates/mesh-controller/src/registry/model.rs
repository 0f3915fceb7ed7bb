//! The registry's sans-IO core: state, the decisions on each input, and the fold of
//! the changes those decisions produce. No clocks, sockets or databases here: time is
//! a parameter, and every change is returned so that the caller can store it as an
//! event before applying it (or apply it while replaying the log).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The subsets an instance may belong to (Argo Rollouts' roles).
pub const SUBSETS: [&str; 5] = ["", "stable", "canary", "preview", "active"];
/// Most labels on one instance.
pub const MAX_LABELS: usize = 32;
/// Largest weight.
pub const MAX_WEIGHT: u32 = 10_000;

/// An instance's health as the registry knows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Not checked yet.
    #[default]
    Unknown,
    /// Answering `SERVING`.
    Serving,
    /// Failing its checks.
    NotServing,
}

/// A registered instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    /// Unique; by default `<service>@<address>`.
    pub id: String,
    /// The service it belongs to.
    pub service: String,
    /// `host:port` of its gRPC listener.
    pub address: String,
    /// The release it runs.
    pub version: String,
    /// `stable`, `canary`, `preview`, `active` or empty.
    pub subset: String,
    /// Its share of traffic within its subset.
    pub weight: u32,
    /// Current health.
    pub health: Health,
    /// Free-form labels.
    pub labels: BTreeMap<String, String>,
    /// When it registered (ms since the epoch).
    pub registered_at_ms: i64,
    /// It is removed when no heartbeat arrives for this long.
    pub ttl_ms: u64,
    /// The last heartbeat (ms since the epoch). Not part of the log: a restored
    /// instance gets a full TTL to heartbeat again.
    #[serde(skip)]
    pub last_heartbeat_ms: i64,
    /// Consecutive passed checks, for the thresholds.
    #[serde(skip)]
    pub passes: u32,
    /// Consecutive failed checks, for the thresholds.
    #[serde(skip)]
    pub failures: u32,
}

/// What a registrant sends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registration {
    /// Empty: `<service>@<address>`.
    pub id: String,
    /// A DNS label: lower-case letters, digits and `-`, at most 63.
    pub service: String,
    /// `host:port`.
    pub address: String,
    /// Free text, at most 64 bytes.
    pub version: String,
    /// One of [`SUBSETS`].
    pub subset: String,
    /// 0 means 100.
    pub weight: u32,
    /// The registrant's own view of its health (the local runtime registers after
    /// `SERVING`); active checks take over from there.
    pub health: Health,
    /// At most [`MAX_LABELS`].
    pub labels: BTreeMap<String, String>,
    /// 0: the default TTL.
    pub ttl_ms: u64,
}

/// A change of the registry: the data of one `registry.*` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    /// An instance registered (or re-registered with new details).
    Registered {
        /// The instance as registered.
        instance: Instance,
    },
    /// An instance left: deregistered, or expired without heartbeats.
    Removed {
        /// The instance.
        id: String,
        /// Its service.
        service: String,
        /// `deregistered` or `expired`.
        reason: String,
    },
    /// Active checks crossed a threshold.
    HealthChanged {
        /// The instance.
        id: String,
        /// Its service.
        service: String,
        /// The new health.
        health: Health,
    },
}

impl Change {
    /// The event type this change is stored under.
    pub fn event_type(&self) -> &'static str {
        match self {
            Change::Registered { .. } => "registry.instance_registered",
            Change::Removed { reason, .. } if reason == "expired" => "registry.instance_expired",
            Change::Removed { .. } => "registry.instance_deregistered",
            Change::HealthChanged { .. } => "registry.health_changed",
        }
    }

    /// The service the change is about.
    pub fn service(&self) -> &str {
        match self {
            Change::Registered { instance } => &instance.service,
            Change::Removed { service, .. } | Change::HealthChanged { service, .. } => service,
        }
    }
}

/// Why the registry refused an input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// A field is malformed.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// No such instance.
    #[error("no instance {0:?} is registered")]
    NotFound(String),
    /// A bound on services or instances would be exceeded.
    #[error("{0}")]
    Full(String),
}

/// Bounds and thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// TTL when the registrant names none.
    pub default_ttl_ms: u64,
    /// Longest TTL a registrant may ask for.
    pub max_ttl_ms: u64,
    /// Consecutive passed checks before an instance is `Serving`.
    pub healthy_threshold: u32,
    /// Consecutive failed checks before an instance is `NotServing`.
    pub unhealthy_threshold: u32,
    /// Most services.
    pub max_services: usize,
    /// Most instances per service.
    pub max_instances_per_service: usize,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            default_ttl_ms: 15_000,
            max_ttl_ms: 3_600_000,
            healthy_threshold: 2,
            unhealthy_threshold: 3,
            max_services: 256,
            max_instances_per_service: 256,
        }
    }
}

/// One service's endpoint set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceEntry {
    /// By instance id.
    pub instances: BTreeMap<String, Instance>,
    /// The log position of the last change to this service (0: none since start).
    pub revision: u64,
}

/// The registry's state: every service's endpoint set. A service whose last instance
/// left stays, empty, so that watchers learn that it is empty.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registry {
    /// By service name.
    pub services: BTreeMap<String, ServiceEntry>,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> RegistryError {
    RegistryError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// A service name: a DNS label.
pub fn check_service(name: &str) -> Result<(), RegistryError> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if valid {
        Ok(())
    } else {
        Err(invalid(
            "service",
            format!("{name:?} is not a DNS label (a-z, 0-9 and -, at most 63)"),
        ))
    }
}

/// `host:port` with a DNS name or an IP address and a port in 1..=65535.
fn check_address(address: &str) -> Result<(), RegistryError> {
    if let Ok(socket) = address.parse::<std::net::SocketAddr>() {
        if socket.port() == 0 || socket.ip().is_unspecified() {
            return Err(invalid(
                "address",
                format!("{address:?} is not a reachable address (port 0 or 0.0.0.0)"),
            ));
        }
        return Ok(());
    }
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err(invalid("address", format!("{address:?} is not host:port")));
    };
    let port_ok = port.parse::<u16>().is_ok_and(|port| port > 0);
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if port_ok && host_ok {
        Ok(())
    } else {
        Err(invalid("address", format!("{address:?} is not host:port")))
    }
}

fn check_text(field: &'static str, value: &str, max: usize) -> Result<(), RegistryError> {
    if value.len() > max || value.chars().any(char::is_control) {
        return Err(invalid(
            field,
            format!("at most {max} bytes without control characters"),
        ));
    }
    Ok(())
}

impl Registry {
    /// The instance `id`, wherever it is.
    pub fn instance(&self, id: &str) -> Option<&Instance> {
        self.services
            .values()
            .find_map(|entry| entry.instances.get(id))
    }

    fn instance_mut(&mut self, id: &str) -> Option<&mut Instance> {
        self.services
            .values_mut()
            .find_map(|entry| entry.instances.get_mut(id))
    }

    /// Decides a registration: the change to store, or why not.
    ///
    /// # Errors
    /// A malformed registration, or a full registry.
    pub fn register(
        &self,
        registration: Registration,
        rules: &Rules,
        now_ms: i64,
    ) -> Result<Change, RegistryError> {
        check_service(&registration.service)?;
        check_address(&registration.address)?;
        check_text("version", &registration.version, 64)?;
        check_text("id", &registration.id, 128)?;
        if !SUBSETS.contains(&registration.subset.as_str()) {
            return Err(invalid(
                "subset",
                "must be one of stable, canary, preview, active or empty",
            ));
        }
        if registration.weight > MAX_WEIGHT {
            return Err(invalid("weight", format!("at most {MAX_WEIGHT}")));
        }
        if registration.ttl_ms > rules.max_ttl_ms {
            return Err(invalid(
                "ttl_seconds",
                format!("at most {} s", rules.max_ttl_ms / 1000),
            ));
        }
        if registration.labels.len() > MAX_LABELS {
            return Err(invalid("labels", format!("at most {MAX_LABELS}")));
        }
        for (key, value) in &registration.labels {
            check_text("labels", key, 63)?;
            check_text("labels", value, 256)?;
            if key.is_empty() {
                return Err(invalid("labels", "empty key"));
            }
        }
        let id = if registration.id.is_empty() {
            format!("{}@{}", registration.service, registration.address)
        } else {
            registration.id
        };
        let existing = self.instance(&id);
        if let Some(existing) = existing
            && existing.service != registration.service
        {
            return Err(invalid(
                "id",
                format!("{id:?} is registered for {}", existing.service),
            ));
        }
        let entry = self.services.get(&registration.service);
        if entry.is_none() && self.services.len() >= rules.max_services {
            return Err(RegistryError::Full(format!(
                "at most {} services",
                rules.max_services
            )));
        }
        if existing.is_none()
            && entry.is_some_and(|entry| entry.instances.len() >= rules.max_instances_per_service)
        {
            return Err(RegistryError::Full(format!(
                "at most {} instances per service",
                rules.max_instances_per_service
            )));
        }
        Ok(Change::Registered {
            instance: Instance {
                id,
                service: registration.service,
                address: registration.address,
                version: registration.version,
                subset: registration.subset,
                weight: if registration.weight == 0 {
                    100
                } else {
                    registration.weight
                },
                health: registration.health,
                labels: registration.labels,
                registered_at_ms: now_ms,
                ttl_ms: if registration.ttl_ms == 0 {
                    rules.default_ttl_ms
                } else {
                    registration.ttl_ms
                },
                last_heartbeat_ms: now_ms,
                passes: 0,
                failures: 0,
            },
        })
    }

    /// Records a heartbeat (not an event): the instance's new expiry time.
    ///
    /// # Errors
    /// When the instance is not registered (it expired, or never was).
    pub fn heartbeat(&mut self, id: &str, now_ms: i64) -> Result<i64, RegistryError> {
        let instance = self
            .instance_mut(id)
            .ok_or_else(|| RegistryError::NotFound(id.to_owned()))?;
        instance.last_heartbeat_ms = now_ms;
        Ok(now_ms.saturating_add(i64::try_from(instance.ttl_ms).unwrap_or(i64::MAX)))
    }

    /// Decides a deregistration.
    ///
    /// # Errors
    /// When the instance is not registered.
    pub fn deregister(&self, id: &str) -> Result<Change, RegistryError> {
        let instance = self
            .instance(id)
            .ok_or_else(|| RegistryError::NotFound(id.to_owned()))?;
        Ok(Change::Removed {
            id: instance.id.clone(),
            service: instance.service.clone(),
            reason: "deregistered".to_owned(),
        })
    }

    /// Instances whose TTL passed without a heartbeat.
    pub fn expired(&self, now_ms: i64) -> Vec<Change> {
        self.services
            .values()
            .flat_map(|entry| entry.instances.values())
            .filter(|instance| {
                let ttl = i64::try_from(instance.ttl_ms).unwrap_or(i64::MAX);
                now_ms.saturating_sub(instance.last_heartbeat_ms) > ttl
            })
            .map(|instance| Change::Removed {
                id: instance.id.clone(),
                service: instance.service.clone(),
                reason: "expired".to_owned(),
            })
            .collect()
    }

    /// Counts one active check; returns a change when a threshold is crossed.
    pub fn observe(&mut self, id: &str, passed: bool, rules: &Rules) -> Option<Change> {
        let instance = self.instance_mut(id)?;
        let next = if passed {
            instance.passes = instance.passes.saturating_add(1);
            instance.failures = 0;
            (instance.passes >= rules.healthy_threshold).then_some(Health::Serving)
        } else {
            instance.failures = instance.failures.saturating_add(1);
            instance.passes = 0;
            (instance.failures >= rules.unhealthy_threshold).then_some(Health::NotServing)
        }?;
        (next != instance.health).then(|| Change::HealthChanged {
            id: instance.id.clone(),
            service: instance.service.clone(),
            health: next,
        })
    }

    /// Applies a stored change at log position `revision` (replay and live alike).
    pub fn apply(&mut self, change: &Change, revision: u64, now_ms: i64) {
        let entry = self
            .services
            .entry(change.service().to_owned())
            .or_default();
        entry.revision = entry.revision.max(revision);
        match change {
            Change::Registered { instance } => {
                let mut instance = instance.clone();
                instance.last_heartbeat_ms = now_ms.max(instance.last_heartbeat_ms);
                entry.instances.insert(instance.id.clone(), instance);
            }
            Change::Removed { id, .. } => {
                entry.instances.remove(id);
            }
            Change::HealthChanged { id, health, .. } => {
                if let Some(instance) = entry.instances.get_mut(id) {
                    instance.health = *health;
                }
            }
        }
    }

    /// Restored state gets a full TTL: heartbeats are not in the log.
    pub fn restore_heartbeats(&mut self, now_ms: i64) {
        for instance in self
            .services
            .values_mut()
            .flat_map(|entry| entry.instances.values_mut())
        {
            instance.last_heartbeat_ms = now_ms;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registration(service: &str, address: &str) -> Registration {
        Registration {
            service: service.into(),
            address: address.into(),
            version: "1.0.0".into(),
            health: Health::Serving,
            ..Registration::default()
        }
    }

    fn registered(registry: &mut Registry, service: &str, address: &str, now: i64) -> String {
        let change = registry
            .register(registration(service, address), &Rules::default(), now)
            .unwrap();
        let Change::Registered { instance } = &change else {
            panic!("{change:?}")
        };
        let id = instance.id.clone();
        registry.apply(&change, 1, now);
        id
    }

    #[test]
    fn registration_defaults_and_validation() {
        let registry = Registry::default();
        let rules = Rules::default();
        let Change::Registered { instance } = registry
            .register(registration("core-engine", "127.0.0.1:4000"), &rules, 5)
            .unwrap()
        else {
            panic!()
        };
        assert_eq!(instance.id, "core-engine@127.0.0.1:4000");
        assert_eq!((instance.weight, instance.ttl_ms), (100, 15_000));
        for (mut bad, field) in [
            (registration("Core", "127.0.0.1:1"), "service"),
            (registration("", "127.0.0.1:1"), "service"),
            (registration(&"a".repeat(64), "127.0.0.1:1"), "service"),
            (registration("-x", "127.0.0.1:1"), "service"),
            (registration("x", "127.0.0.1"), "address"),
            (registration("x", "127.0.0.1:0"), "address"),
            (registration("x", "host:99999"), "address"),
            (registration("x", "bad host:80"), "address"),
            (registration("x", ":80"), "address"),
            (registration("x", "h:80"), "weight"),
            (registration("x", "h:80"), "subset"),
            (registration("x", "h:80"), "ttl_seconds"),
            (registration("x", "h:80"), "labels"),
            (registration("x", "h:80"), "version"),
        ] {
            match field {
                "weight" => bad.weight = MAX_WEIGHT + 1,
                "subset" => bad.subset = "blue".into(),
                "ttl_seconds" => bad.ttl_ms = rules.max_ttl_ms + 1,
                "labels" => {
                    bad.labels = (0..=MAX_LABELS)
                        .map(|n| (n.to_string(), String::new()))
                        .collect();
                }
                "version" => bad.version = "1\n2".into(),
                _ => {}
            }
            match registry.register(bad, &rules, 0) {
                Err(RegistryError::Invalid { field: named, .. }) => assert_eq!(named, field),
                other => panic!("{field}: {other:?}"),
            }
        }
    }

    #[test]
    fn heartbeats_keep_instances_and_silence_expires_them() {
        let mut registry = Registry::default();
        let id = registered(&mut registry, "svc", "127.0.0.1:1", 0);
        assert!(registry.expired(15_000).is_empty());
        assert_eq!(registry.heartbeat(&id, 10_000).unwrap(), 25_000);
        assert!(registry.expired(24_000).is_empty());
        let expired = registry.expired(25_001);
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].event_type(), "registry.instance_expired");
        registry.apply(&expired[0], 2, 25_001);
        assert_eq!(
            registry.heartbeat(&id, 25_002),
            Err(RegistryError::NotFound(id))
        );
        // The service stays, empty, with the removal's revision.
        assert_eq!(registry.services["svc"].revision, 2);
        assert!(registry.services["svc"].instances.is_empty());
    }

    #[test]
    fn health_changes_only_at_thresholds() {
        let mut registry = Registry::default();
        let rules = Rules::default();
        let id = registered(&mut registry, "svc", "127.0.0.1:1", 0);
        assert_eq!(registry.observe(&id, false, &rules), None);
        assert_eq!(registry.observe(&id, false, &rules), None);
        // A pass in between resets the count.
        assert_eq!(registry.observe(&id, true, &rules), None);
        assert_eq!(registry.observe(&id, false, &rules), None);
        assert_eq!(registry.observe(&id, false, &rules), None);
        let down = registry.observe(&id, false, &rules).unwrap();
        assert_eq!(down.event_type(), "registry.health_changed");
        registry.apply(&down, 2, 0);
        assert_eq!(registry.instance(&id).unwrap().health, Health::NotServing);
        // Still failing: no new change.
        assert_eq!(registry.observe(&id, false, &rules), None);
        assert_eq!(registry.observe(&id, true, &rules), None);
        let up = registry.observe(&id, true, &rules).unwrap();
        registry.apply(&up, 3, 0);
        assert_eq!(registry.instance(&id).unwrap().health, Health::Serving);
        assert_eq!(registry.observe("nobody", true, &rules), None);
    }

    #[test]
    fn bounds_on_services_and_instances() {
        let rules = Rules {
            max_services: 1,
            max_instances_per_service: 2,
            ..Rules::default()
        };
        let mut registry = Registry::default();
        for port in 1..=2 {
            let change = registry
                .register(registration("a", &format!("h:{port}")), &rules, 0)
                .unwrap();
            registry.apply(&change, port, 0);
        }
        assert!(matches!(
            registry.register(registration("a", "h:3"), &rules, 0),
            Err(RegistryError::Full(_))
        ));
        assert!(matches!(
            registry.register(registration("b", "h:1"), &rules, 0),
            Err(RegistryError::Full(_))
        ));
        // Re-registering an existing instance is not growth.
        assert!(
            registry
                .register(registration("a", "h:1"), &rules, 0)
                .is_ok()
        );
    }

    #[test]
    fn changes_round_trip_through_json() {
        let mut registry = Registry::default();
        registered(&mut registry, "svc", "127.0.0.1:1", 7);
        let change = registry.deregister("svc@127.0.0.1:1").unwrap();
        let json = serde_json::to_string(&change).unwrap();
        assert_eq!(serde_json::from_str::<Change>(&json).unwrap(), change);
        let state = serde_json::to_string(&registry).unwrap();
        let mut restored: Registry = serde_json::from_str(&state).unwrap();
        restored.restore_heartbeats(7);
        assert_eq!(restored, registry);
    }
}
