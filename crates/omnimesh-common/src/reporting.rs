//! Report tokens: how core-engine records its key changes in mesh-controller's event
//! store without holding the platform's token key.
//!
//! core-engine signs its `Events.Append` calls with a key of its own (HS256, 32 random
//! bytes, `[core-engine.audit] key_file`; the controller reads the same file,
//! `[mesh-controller.reporting] core_engine_key_file`). A token signed with it proves
//! only that the caller is the engine: the controller's Events service takes it as a
//! [`Reporter`] (never an [`Identity`](crate::auth::Identity), whatever roles it claims),
//! which may append events whose types start with [`EVENT_TYPE_PREFIX`] to streams whose
//! names start with [`STREAM_PREFIX`], recorded with [`ISSUER`] as the actor, and nothing
//! else; the controller's other services do not accept it at all. So a leaked engine key
//! lets its holder write key-change events, not deploy, scale, register or mint tokens.

use std::path::PathBuf;

use crate::auth::AuthConfig;

/// The `iss` of report tokens, and the actor their events are recorded with.
pub const ISSUER: &str = "core-engine";
/// The `aud` of report tokens: the controller's event store.
pub const AUDIENCE: &str = "mesh-controller.events";
/// The streams a reporter may append to (`engine-key-<key name>`).
pub const STREAM_PREFIX: &str = "engine-key-";
/// The event types a reporter may append (`engine.key_created`, …).
pub const EVENT_TYPE_PREFIX: &str = "engine.key_";

/// How report tokens are signed and checked: the HS256 key in `key_file` (created when
/// missing if `generate`), with [`ISSUER`] and [`AUDIENCE`].
pub fn auth_config(key_file: PathBuf, generate: bool) -> AuthConfig {
    AuthConfig {
        issuer: ISSUER.to_owned(),
        audience: AUDIENCE.to_owned(),
        hs256_key_file: key_file,
        generate_hs256_key: generate,
        jwks_file: None,
        ..AuthConfig::default()
    }
}

/// A caller holding a valid report token (recorded in the request's extensions by
/// [`Authenticator`](crate::auth::Authenticator) when it checks report tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reporter;

/// Whether a reporter may append events of `event_types` to `stream`.
///
/// # Errors
/// What is outside the reporter's reach, safe to show to the caller.
pub fn may_append<'a>(
    stream: &str,
    mut event_types: impl Iterator<Item = &'a str>,
) -> Result<(), String> {
    if !stream.starts_with(STREAM_PREFIX) || stream.len() == STREAM_PREFIX.len() {
        return Err(format!(
            "a report token may only append to streams named {STREAM_PREFIX}<key>, not `{stream}`"
        ));
    }
    if let Some(other) = event_types.find(|kind| !kind.starts_with(EVENT_TYPE_PREFIX)) {
        return Err(format!(
            "a report token may only append {EVENT_TYPE_PREFIX}* events, not `{other}`"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reporters_reach_only_key_change_events() {
        let ok = |stream, types: &[&str]| may_append(stream, types.iter().copied());
        assert!(
            ok(
                "engine-key-payments",
                &["engine.key_created", "engine.key_rotated"]
            )
            .is_ok()
        );
        assert!(ok("engine-key-payments", &[]).is_ok());
        for (stream, types) in [
            ("engine-key-", &["engine.key_created"][..]),
            ("release-core-engine", &["engine.key_created"]),
            ("Engine-key-x", &["engine.key_created"]),
            ("engine-key-x", &["release.recorded"]),
            (
                "engine-key-x",
                &["engine.key_created", "registry.registered"],
            ),
            ("engine-key-x", &["engine.key"]),
        ] {
            let refused = ok(stream, types).unwrap_err();
            assert!(refused.contains("report token may only"), "{refused}");
        }
    }
}
