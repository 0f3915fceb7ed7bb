//! JWT authentication and roles, shared by every service that checks callers (the
//! controller now, the gateway next).
//!
//! - Keys: HS256 with a local key (generated at first start under `./.omnimesh/`,
//!   0600) for the embedded default, and RS256 / ES256 / EdDSA public keys from a JWKS
//!   file. A token's `alg` must match the kind of key it is checked with: an HS256 token
//!   is never checked against a public key (algorithm confusion) and `alg: none` is
//!   never accepted.
//! - Claims: `iss` and `aud` must match, `exp` is required (with a leeway), `nbf` is
//!   honoured; roles come from a claim (a string or a list; the highest known role wins,
//!   none means viewer).
//! - gRPC: [`Authenticator`] is a tonic interceptor that verifies a presented
//!   `authorization: Bearer …` and records the [`Identity`] in the request; handlers of
//!   mutating calls [`require`] a role. A bad token is refused even where none is needed.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Largest token accepted, in bytes.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// What a caller may do, in increasing order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read.
    Viewer,
    /// Read and operate (deploy, scale, register).
    Operator,
    /// Everything.
    Admin,
}

impl Role {
    /// `viewer`, `operator` or `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// The role a name stands for.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "viewer" => Some(Role::Viewer),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The token's `sub`.
    pub subject: String,
    /// The highest role the token grants.
    pub role: Role,
}

/// `[<service>.auth]`: how tokens are checked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Required `iss`.
    #[serde(default = "default_issuer")]
    pub issuer: String,
    /// Required `aud`.
    #[serde(default = "default_audience")]
    pub audience: String,
    /// The HS256 key (32 random bytes); shared by every local service.
    #[serde(default = "default_hs256_key_file")]
    pub hs256_key_file: PathBuf,
    /// Create the HS256 key file when it is missing (the local default).
    #[serde(default = "default_true")]
    pub generate_hs256_key: bool,
    /// Public keys (RS256, ES256, EdDSA) as a JWKS document.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// Clock skew allowed on `exp` and `nbf`.
    #[serde(default = "default_leeway", with = "humantime_serde")]
    pub leeway: Duration,
    /// The claim that lists roles.
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
}

fn default_issuer() -> String {
    "omnimesh".to_owned()
}
fn default_audience() -> String {
    "omnimesh".to_owned()
}
fn default_hs256_key_file() -> PathBuf {
    PathBuf::from(".omnimesh/jwt-hs256.key")
}
fn default_true() -> bool {
    true
}
fn default_leeway() -> Duration {
    Duration::from_secs(30)
}
fn default_roles_claim() -> String {
    "roles".to_owned()
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            issuer: default_issuer(),
            audience: default_audience(),
            hs256_key_file: default_hs256_key_file(),
            generate_hs256_key: true,
            jwks_file: None,
            leeway: default_leeway(),
            roles_claim: default_roles_claim(),
        }
    }
}

impl AuthConfig {
    /// Checks the values.
    ///
    /// # Errors
    /// The key (relative to the section) and the reason.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.issuer.is_empty() {
            return Err(("issuer", "must not be empty".into()));
        }
        if self.audience.is_empty() {
            return Err(("audience", "must not be empty".into()));
        }
        if self.leeway > Duration::from_secs(600) {
            return Err(("leeway", "at most 10m".into()));
        }
        Ok(())
    }

    /// A configuration whose key lives in `dir`, for tests.
    pub fn for_test(dir: &std::path::Path) -> Self {
        Self {
            hs256_key_file: dir.join("jwt-hs256.key"),
            ..Self::default()
        }
    }
}

/// Why the keys could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A key file could not be read or created.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A key file's content is not usable.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// Why a token was refused. The message is safe to return to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Rejected(pub String);

fn load_hs256(config: &AuthConfig) -> Result<Vec<u8>, KeyError> {
    let path = &config.hs256_key_file;
    let io = |source| KeyError::Io {
        path: path.clone(),
        source,
    };
    let bytes = if config.generate_hs256_key {
        crate::files::read_or_create_private(path, || {
            let mut key = vec![0; 32];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
                .map_err(|_| std::io::Error::other("no randomness"))?;
            Ok(key)
        })
        .map_err(io)?
        .0
    } else {
        std::fs::read(path).map_err(io)?
    };
    if bytes.len() < 32 {
        return Err(KeyError::Invalid {
            path: path.clone(),
            reason: format!(
                "an HS256 key needs at least 32 bytes, found {}",
                bytes.len()
            ),
        });
    }
    Ok(bytes)
}

/// The reason given when public keys are expected from a JWKS URL but none has been
/// loaded yet: the caller should answer "unavailable", not "unauthenticated".
pub const KEYS_NOT_LOADED: &str = "signing keys are not loaded yet";

/// A public key: (kid, algorithm, key).
type PublicKey = (Option<String>, Algorithm, DecodingKey);

/// Checks tokens.
pub struct Verifier {
    hs256: DecodingKey,
    /// From the JWKS file or URL; replaced whole when the set changes.
    public: arc_swap::ArcSwap<Vec<PublicKey>>,
    /// Keys are expected from a JWKS URL and none has arrived yet.
    awaiting_keys: std::sync::atomic::AtomicBool,
    /// Tokens verified already: token → (who, valid until (unix s), key generation). A
    /// token is checked in full once; later requests with it cost one lookup, until it
    /// expires or the public keys change.
    verified: quick_cache::sync::Cache<String, (Identity, u64, u64)>,
    /// Bumped whenever the public keys change, retiring cached verifications.
    key_generation: std::sync::atomic::AtomicU64,
    config: AuthConfig,
}

/// Verified tokens remembered (about 300 bytes each).
const VERIFIED_CACHE_ENTRIES: usize = 16_384;

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("public_keys", &self.public.load().len())
            .finish_non_exhaustive()
    }
}

/// Reads a JWKS document.
///
/// # Errors
/// Not JSON, not a key set, or a key of an algorithm that is not accepted.
pub fn parse_jwks(text: &str) -> Result<Vec<(Option<String>, Algorithm, DecodingKey)>, String> {
    let set: JwkSet = serde_json::from_str(text).map_err(|error| error.to_string())?;
    let mut keys = Vec::with_capacity(set.keys.len());
    for jwk in &set.keys {
        let Some(algorithm) = jwk_algorithm(jwk) else {
            return Err(format!(
                "key {:?}: only RS256, ES256 (P-256) and EdDSA keys are accepted",
                jwk.common.key_id
            ));
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|error| error.to_string())?;
        keys.push((jwk.common.key_id.clone(), algorithm, key));
    }
    Ok(keys)
}

fn jwk_algorithm(jwk: &jsonwebtoken::jwk::Jwk) -> Option<Algorithm> {
    use jsonwebtoken::jwk::{EllipticCurve, KeyAlgorithm};
    match (&jwk.common.key_algorithm, &jwk.algorithm) {
        (Some(KeyAlgorithm::RS256), _) => Some(Algorithm::RS256),
        (Some(KeyAlgorithm::ES256), _) => Some(Algorithm::ES256),
        (Some(KeyAlgorithm::EdDSA), _) => Some(Algorithm::EdDSA),
        (Some(_), _) => None,
        (None, AlgorithmParameters::RSA(_)) => Some(Algorithm::RS256),
        (None, AlgorithmParameters::EllipticCurve(ec)) if ec.curve == EllipticCurve::P256 => {
            Some(Algorithm::ES256)
        }
        (None, AlgorithmParameters::OctetKeyPair(_)) => Some(Algorithm::EdDSA),
        _ => None,
    }
}

impl Verifier {
    /// Loads (or creates) the HS256 key and reads the JWKS file.
    ///
    /// # Errors
    /// When a key file cannot be read, created or parsed.
    pub fn load(config: &AuthConfig) -> Result<Self, KeyError> {
        let hs256 = DecodingKey::from_secret(&load_hs256(config)?);
        let mut public = Vec::new();
        if let Some(path) = &config.jwks_file {
            let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
                path: path.clone(),
                source,
            })?;
            public = parse_jwks(&text).map_err(|reason| KeyError::Invalid {
                path: path.clone(),
                reason,
            })?;
        }
        Ok(Self {
            hs256,
            public: arc_swap::ArcSwap::from_pointee(public),
            awaiting_keys: std::sync::atomic::AtomicBool::new(false),
            verified: quick_cache::sync::Cache::new(VERIFIED_CACHE_ENTRIES),
            key_generation: std::sync::atomic::AtomicU64::new(0),
            config: config.clone(),
        })
    }

    /// Public keys are coming from a JWKS URL: until the first set arrives, tokens that
    /// need one are refused with [`KEYS_NOT_LOADED`] (an outage, not a bad token).
    pub fn await_remote_keys(&self) {
        if self.public.load().is_empty() {
            self.awaiting_keys
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Replaces the public keys with the set in `jwks` (a rotated file, a refreshed
    /// URL); returns how many keys it holds.
    ///
    /// # Errors
    /// The document does not parse; the keys in use stay.
    pub fn replace_public_keys(&self, jwks: &str) -> Result<usize, String> {
        let keys = parse_jwks(jwks)?;
        let count = keys.len();
        self.public.store(std::sync::Arc::new(keys));
        self.key_generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.awaiting_keys
            .store(false, std::sync::atomic::Ordering::Relaxed);
        Ok(count)
    }

    /// How many public keys are loaded.
    pub fn public_key_count(&self) -> usize {
        self.public.load().len()
    }

    /// Checks `token` and returns who it names.
    ///
    /// # Errors
    /// [`Rejected`] with a reason safe to show: malformed, wrong algorithm, bad
    /// signature, expired, wrong issuer or audience.
    pub fn verify(&self, token: &str) -> Result<Identity, Rejected> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(Rejected(format!(
                "token longer than {MAX_TOKEN_BYTES} bytes"
            )));
        }
        let generation = self
            .key_generation
            .load(std::sync::atomic::Ordering::Relaxed);
        if let Some((identity, valid_until, verified_with)) = self.verified.get(token) {
            if verified_with == generation && unix_now() <= valid_until {
                return Ok(identity);
            }
            self.verified.remove(token);
        }
        let (identity, expires) = self.verify_in_full(token)?;
        // `exp` plus the leeway the full check allows.
        let valid_until = expires.saturating_add(self.config.leeway.as_secs());
        self.verified.insert(
            token.to_owned(),
            (identity.clone(), valid_until, generation),
        );
        Ok(identity)
    }

    /// Checks `token`'s signature and claims; who it names and its `exp`.
    fn verify_in_full(&self, token: &str) -> Result<(Identity, u64), Rejected> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| Rejected("malformed token".to_owned()))?;
        let public;
        let key = match header.alg {
            Algorithm::HS256 => &self.hs256,
            Algorithm::RS256 | Algorithm::ES256 | Algorithm::EdDSA => {
                if self
                    .awaiting_keys
                    .load(std::sync::atomic::Ordering::Relaxed)
                {
                    return Err(Rejected(KEYS_NOT_LOADED.to_owned()));
                }
                public = self.public.load();
                let found = public.iter().find(|(kid, algorithm, _)| {
                    *algorithm == header.alg
                        && (header.kid.is_none() || header.kid.as_ref() == kid.as_ref())
                });
                &found
                    .ok_or_else(|| Rejected(format!("no {:?} key matches the token", header.alg)))?
                    .2
            }
            other => return Err(Rejected(format!("algorithm {other:?} is not accepted"))),
        };
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.config.issuer]);
        validation.set_audience(&[&self.config.audience]);
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        validation.validate_nbf = true;
        validation.leeway = self.config.leeway.as_secs();
        let data = jsonwebtoken::decode::<serde_json::Value>(token, key, &validation).map_err(
            |error| {
                use jsonwebtoken::errors::ErrorKind;
                Rejected(
                    match error.kind() {
                        ErrorKind::ExpiredSignature => "token expired",
                        ErrorKind::ImmatureSignature => "token not valid yet",
                        ErrorKind::InvalidIssuer => "wrong issuer",
                        ErrorKind::InvalidAudience => "wrong audience",
                        ErrorKind::InvalidSignature => "bad signature",
                        ErrorKind::MissingRequiredClaim(_) => "a required claim is missing",
                        _ => "invalid token",
                    }
                    .to_owned(),
                )
            },
        )?;
        let claims = data.claims;
        let subject = claims
            .get("sub")
            .and_then(serde_json::Value::as_str)
            .filter(|sub| !sub.is_empty() && sub.len() <= 256 && !sub.chars().any(char::is_control))
            .ok_or_else(|| Rejected("sub must be a short printable string".to_owned()))?
            .to_owned();
        let role = match claims.get(&self.config.roles_claim) {
            Some(serde_json::Value::String(role)) => Role::parse(role),
            Some(serde_json::Value::Array(roles)) => roles
                .iter()
                .filter_map(serde_json::Value::as_str)
                .filter_map(Role::parse)
                .max(),
            _ => None,
        }
        .unwrap_or(Role::Viewer);
        // `exp` is required and was checked above.
        let expires = claims
            .get("exp")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        Ok((Identity { subject, role }, expires))
    }
}

/// Issues HS256 tokens with the local key (`mesh-controller token`, tests).
pub struct Issuer {
    key: EncodingKey,
    config: AuthConfig,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Issuer")
    }
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    iss: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
    roles: [&'a str; 1],
}

impl Issuer {
    /// Loads (or creates) the HS256 key.
    ///
    /// # Errors
    /// When the key file cannot be read or created.
    pub fn load(config: &AuthConfig) -> Result<Self, KeyError> {
        Ok(Self {
            key: EncodingKey::from_secret(&load_hs256(config)?),
            config: config.clone(),
        })
    }

    /// A token for `subject` with `role`, valid for `ttl`.
    pub fn issue(&self, subject: &str, role: Role, ttl: Duration) -> String {
        let now = u64::try_from(crate::time::now_ms() / 1000).unwrap_or_default();
        let claims = Claims {
            sub: subject,
            iss: &self.config.issuer,
            aud: &self.config.audience,
            iat: now,
            exp: now + ttl.as_secs(),
            roles: [role.as_str()],
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.key).unwrap_or_default()
    }
}

/// A tonic interceptor: verifies a presented bearer token and records the [`Identity`]
/// in the request's extensions; a request without a token passes unauthenticated.
#[derive(Debug, Clone)]
pub struct Authenticator {
    verifier: Arc<Verifier>,
    /// Checks report tokens, where they are accepted (mesh-controller's Events).
    reporters: Option<Arc<Verifier>>,
}

impl Authenticator {
    /// Checks tokens with `verifier`.
    pub fn new(verifier: Arc<Verifier>) -> Self {
        Self {
            verifier,
            reporters: None,
        }
    }

    /// Also accepts report tokens checked by `reporters` (see [`crate::reporting`]): such
    /// a caller is recorded as a [`crate::reporting::Reporter`], with no [`Identity`] and
    /// so no role, whatever roles its token claims.
    #[must_use]
    pub fn with_reporters(mut self, reporters: Arc<Verifier>) -> Self {
        self.reporters = Some(reporters);
        self
    }
}

impl tonic::service::Interceptor for Authenticator {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        let Some(value) = request.metadata().get("authorization") else {
            return Ok(request);
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or_else(|| {
                tonic::Status::unauthenticated("authorization must be `Bearer <token>`")
            })?;
        let token = token.trim();
        match self.verifier.verify(token) {
            Ok(identity) => {
                request.extensions_mut().insert(identity);
            }
            // Report tokens have their own key, issuer and audience: one never passes as
            // the other.
            Err(rejected) => match &self.reporters {
                Some(reporters) if reporters.verify(token).is_ok() => {
                    request.extensions_mut().insert(crate::reporting::Reporter);
                }
                _ => {
                    tracing::info!(reason = %rejected, "token refused");
                    return Err(tonic::Status::unauthenticated(rejected.0));
                }
            },
        }
        Ok(request)
    }
}

/// The caller's identity if it has at least `role`.
///
/// # Errors
/// `UNAUTHENTICATED` without a token, `PERMISSION_DENIED` with too small a role.
pub fn require<T>(request: &tonic::Request<T>, role: Role) -> Result<Identity, tonic::Status> {
    let Some(identity) = request.extensions().get::<Identity>() else {
        return Err(tonic::Status::unauthenticated(format!(
            "this call needs an {} token (authorization: Bearer …)",
            if role == Role::Admin {
                "admin"
            } else {
                "operator or admin"
            }
        )));
    };
    if identity.role < role {
        return Err(tonic::Status::permission_denied(format!(
            "{} is a {}; this call needs {}",
            identity.subject,
            identity.role.as_str(),
            role.as_str()
        )));
    }
    Ok(identity.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, Verifier, Issuer) {
        let dir = tempfile::tempdir().unwrap();
        let config = AuthConfig::for_test(dir.path());
        let issuer = Issuer::load(&config).unwrap();
        let verifier = Verifier::load(&config).unwrap();
        (dir, verifier, issuer)
    }

    fn hs256(claims: &serde_json::Value, key: &[u8]) -> String {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(key),
        )
        .unwrap()
    }

    fn claims(exp_offset: i64) -> serde_json::Value {
        let now = crate::time::now_ms() / 1000;
        serde_json::json!({
            "sub": "alice", "iss": "omnimesh", "aud": "omnimesh",
            "exp": now + exp_offset, "roles": ["viewer", "operator"]
        })
    }

    #[test]
    fn issued_tokens_verify_with_their_role() {
        let (_dir, verifier, issuer) = setup();
        let token = issuer.issue("bob", Role::Admin, Duration::from_secs(60));
        assert_eq!(
            verifier.verify(&token).unwrap(),
            Identity {
                subject: "bob".into(),
                role: Role::Admin
            }
        );
    }

    #[test]
    fn the_key_is_generated_once_and_shared() {
        let dir = tempfile::tempdir().unwrap();
        let config = AuthConfig::for_test(dir.path());
        let token =
            Issuer::load(&config)
                .unwrap()
                .issue("x", Role::Viewer, Duration::from_secs(60));
        // Another process (here: another load) reads the same key.
        assert!(Verifier::load(&config).unwrap().verify(&token).is_ok());
        let config = AuthConfig {
            generate_hs256_key: false,
            hs256_key_file: dir.path().join("none"),
            ..config
        };
        assert!(Verifier::load(&config).is_err());
    }

    #[test]
    fn hostile_tokens_are_refused_with_a_reason() {
        let (dir, verifier, _issuer) = setup();
        let key = std::fs::read(dir.path().join("jwt-hs256.key")).unwrap();
        let good = hs256(&claims(60), &key);
        assert_eq!(verifier.verify(&good).unwrap().role, Role::Operator);

        let none = {
            use base64::Engine as _;
            let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            format!(
                "{}.{}.",
                b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
                b64.encode(claims(60).to_string())
            )
        };
        let mut wrong_issuer = claims(60);
        wrong_issuer["iss"] = "evil".into();
        let mut wrong_audience = claims(60);
        wrong_audience["aud"] = "other".into();
        let mut no_sub = claims(60);
        no_sub.as_object_mut().unwrap().remove("sub");
        let mut control_sub = claims(60);
        control_sub["sub"] = "a\nb".into();
        let mut no_exp = claims(60);
        no_exp.as_object_mut().unwrap().remove("exp");
        let mut future = claims(3600);
        future["nbf"] = (crate::time::now_ms() / 1000 + 600).into();
        let cases = [
            (none, "malformed token"),
            (hs256(&claims(-120), &key), "token expired"),
            (hs256(&claims(60), &[7u8; 32]), "bad signature"),
            (hs256(&wrong_issuer, &key), "wrong issuer"),
            (hs256(&wrong_audience, &key), "wrong audience"),
            (hs256(&no_sub, &key), "a required claim is missing"),
            (hs256(&no_exp, &key), "a required claim is missing"),
            (
                hs256(&control_sub, &key),
                "sub must be a short printable string",
            ),
            (hs256(&future, &key), "token not valid yet"),
            ("not.a.token".to_owned(), "malformed token"),
            ("".to_owned(), "malformed token"),
            (
                "x".repeat(MAX_TOKEN_BYTES + 1),
                "token longer than 8192 bytes",
            ),
        ];
        for (token, reason) in cases {
            assert_eq!(
                verifier.verify(&token),
                Err(Rejected(reason.to_owned())),
                "{token}"
            );
        }
        // Expired within the leeway still passes.
        assert!(verifier.verify(&hs256(&claims(-10), &key)).is_ok());
    }

    #[test]
    fn algorithm_confusion_is_refused() {
        // An RS256 token with no JWKS configured, and an HS384 token: both refused.
        let (dir, verifier, _issuer) = setup();
        let key = std::fs::read(dir.path().join("jwt-hs256.key")).unwrap();
        let hs384 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS384),
            &claims(60),
            &EncodingKey::from_secret(&key),
        )
        .unwrap();
        assert_eq!(
            verifier.verify(&hs384),
            Err(Rejected("algorithm HS384 is not accepted".into()))
        );
        let forged_header = {
            use base64::Engine as _;
            let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
            let parts: Vec<&str> = hs384.split('.').collect();
            format!(
                "{}.{}.{}",
                b64.encode(br#"{"alg":"RS256","typ":"JWT"}"#),
                parts[1],
                parts[2]
            )
        };
        assert_eq!(
            verifier.verify(&forged_header),
            Err(Rejected("no RS256 key matches the token".into()))
        );
    }

    #[test]
    fn remembered_tokens_still_expire_and_key_changes_forget_them() {
        let (_dir, verifier, issuer) = setup();
        let token = issuer.issue("ops", Role::Operator, Duration::from_secs(60));
        let first = verifier.verify(&token).unwrap();
        assert_eq!(verifier.verified.len(), 1);
        assert_eq!(verifier.verify(&token).unwrap(), first, "from the cache");
        // An entry past its validity is not trusted: the token is checked again (and
        // here, doctored to look expired, refused).
        let generation = verifier
            .key_generation
            .load(std::sync::atomic::Ordering::Relaxed);
        let forged = format!("{token}x");
        verifier
            .verified
            .insert(forged.clone(), (first.clone(), unix_now() - 1, generation));
        assert!(
            verifier.verify(&forged).is_err(),
            "an expired entry is re-checked"
        );
        assert!(verifier.verified.get(forged.as_str()).is_none());
        // New public keys retire every remembered verification.
        verifier
            .verified
            .insert(forged.clone(), (first, unix_now() + 3600, generation));
        verifier.replace_public_keys(r#"{"keys":[]}"#).unwrap();
        assert!(
            verifier.verify(&forged).is_err(),
            "re-checked after a key change"
        );
        assert!(verifier.verify(&token).is_ok());
    }

    #[test]
    fn jwks_files_must_hold_accepted_keys() {
        let dir = tempfile::tempdir().unwrap();
        let jwks = dir.path().join("jwks.json");
        std::fs::write(&jwks, r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#).unwrap();
        let config = AuthConfig {
            jwks_file: Some(jwks.clone()),
            ..AuthConfig::for_test(dir.path())
        };
        let error = Verifier::load(&config).unwrap_err().to_string();
        assert!(
            error.contains("only RS256, ES256 (P-256) and EdDSA"),
            "{error}"
        );
        std::fs::write(&jwks, "not json").unwrap();
        assert!(Verifier::load(&config).is_err());
    }

    #[test]
    fn report_tokens_are_reporters_without_a_role_and_only_where_accepted() {
        use tonic::service::Interceptor as _;

        let dir = tempfile::tempdir().unwrap();
        let platform = AuthConfig::for_test(dir.path());
        let reports = crate::reporting::auth_config(dir.path().join("report.key"), true);
        let verifier = Arc::new(Verifier::load(&platform).unwrap());
        let reporters = Arc::new(Verifier::load(&reports).unwrap());
        let call = |authenticator: &mut Authenticator, token: &str| {
            let mut request = tonic::Request::new(());
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
            authenticator.call(request)
        };
        // Signed with the report key, claiming admin.
        let report = Issuer::load(&reports).unwrap().issue(
            "core-engine",
            Role::Admin,
            Duration::from_secs(60),
        );
        let mut events = Authenticator::new(Arc::clone(&verifier)).with_reporters(reporters);
        let request = call(&mut events, &report).unwrap();
        assert_eq!(
            request.extensions().get::<crate::reporting::Reporter>(),
            Some(&crate::reporting::Reporter)
        );
        assert!(request.extensions().get::<Identity>().is_none());
        assert_eq!(
            require(&request, Role::Viewer).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        // Elsewhere it is just a token with an unknown key.
        let mut others = Authenticator::new(Arc::clone(&verifier));
        assert_eq!(
            call(&mut others, &report).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        // Platform tokens are identities as before, and are never reporters.
        let operator =
            Issuer::load(&platform)
                .unwrap()
                .issue("ops", Role::Operator, Duration::from_secs(60));
        let request = call(&mut events, &operator).unwrap();
        assert_eq!(
            request.extensions().get::<Identity>().unwrap().role,
            Role::Operator
        );
        assert!(
            request
                .extensions()
                .get::<crate::reporting::Reporter>()
                .is_none()
        );
        // The report key with the platform's issuer and audience is neither.
        let mimic = hs256(
            &claims(60),
            &std::fs::read(dir.path().join("report.key")).unwrap(),
        );
        let refused = call(&mut events, &mimic).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        assert_eq!(refused.message(), "bad signature");
    }

    #[test]
    fn roles_are_required_in_order() {
        let mut request = tonic::Request::new(());
        assert_eq!(
            require(&request, Role::Operator).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        request.extensions_mut().insert(Identity {
            subject: "v".into(),
            role: Role::Viewer,
        });
        assert_eq!(
            require(&request, Role::Operator).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        request.extensions_mut().insert(Identity {
            subject: "o".into(),
            role: Role::Operator,
        });
        assert_eq!(require(&request, Role::Operator).unwrap().subject, "o");
        assert_eq!(
            require(&request, Role::Admin).unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
    }
}
