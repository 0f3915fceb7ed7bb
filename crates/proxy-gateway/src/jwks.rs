//! Public keys for token checks from a JWKS URL (an identity provider's
//! `/.well-known/jwks.json`), fetched in the background every `refresh`, and from the
//! JWKS file when it changes.
//!
//! A failed fetch keeps the last good keys (and is retried after `retry`); until the
//! first set arrives, tokens that need a public key get `UNAVAILABLE` / 503 — an outage
//! of the identity provider is never a silent 401.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt as _, Empty, Limited};
use omnimesh_common::auth::Verifier;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use serde::{Deserialize, Serialize};

/// Largest JWKS document read.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// `[proxy-gateway.jwks]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwksConfig {
    /// `https://…/jwks.json` (or `http://` inside a mesh); empty: none.
    #[serde(default)]
    pub url: String,
    /// Time between fetches after a good one.
    #[serde(default = "default_refresh", with = "humantime_serde")]
    pub refresh: Duration,
    /// Time before trying again after a failed one.
    #[serde(default = "default_retry", with = "humantime_serde")]
    pub retry: Duration,
    /// How long one fetch may take.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_refresh() -> Duration {
    Duration::from_secs(300)
}
fn default_retry() -> Duration {
    Duration::from_secs(10)
}
fn default_timeout() -> Duration {
    Duration::from_secs(5)
}

impl Default for JwksConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            refresh: default_refresh(),
            retry: default_retry(),
            timeout: default_timeout(),
        }
    }
}

impl JwksConfig {
    /// Why the settings cannot be used: (field, reason).
    ///
    /// # Errors
    /// A URL that is not http(s), or zero durations.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !self.url.is_empty() {
            let uri: http::Uri = self
                .url
                .parse()
                .map_err(|error| ("url", format!("not a URL: {error}")))?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) || uri.host().is_none() {
                return Err(("url", "must be http(s)://host/path".into()));
            }
        }
        if self.refresh.is_zero() || self.retry.is_zero() || self.timeout.is_zero() {
            return Err((
                "refresh",
                "refresh, retry and timeout must be positive".into(),
            ));
        }
        Ok(())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FetchLabels {
    result: &'static str,
}

/// The fetches' metrics.
#[derive(Debug, Clone, Default)]
pub struct JwksMetrics {
    fetches: Family<FetchLabels, Counter>,
    keys: Gauge,
}

impl JwksMetrics {
    /// Registers `gateway_jwks_fetches_total{result}` and `gateway_jwks_keys`.
    pub fn register(registry: &mut prometheus_client::registry::Registry) -> Self {
        let this = Self::default();
        registry.register(
            "gateway_jwks_fetches",
            "JWKS fetches, by result (ok, failed)",
            this.fetches.clone(),
        );
        registry.register(
            "gateway_jwks_keys",
            "Public keys loaded for token checks",
            this.keys.clone(),
        );
        this
    }
}

async fn fetch(
    client: &hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        Empty<bytes::Bytes>,
    >,
    config: &JwksConfig,
) -> Result<String, String> {
    let uri: http::Uri = config.url.parse().map_err(|error| format!("{error}"))?;
    let request = http::Request::get(uri)
        .header(http::header::ACCEPT, "application/json")
        .body(Empty::new())
        .map_err(|error| error.to_string())?;
    let answer = tokio::time::timeout(config.timeout, async {
        let response = client
            .request(request)
            .await
            .map_err(|error| error.to_string())?;
        if !response.status().is_success() {
            return Err(format!("answered {}", response.status()));
        }
        let body = Limited::new(response.into_body(), MAX_JWKS_BYTES)
            .collect()
            .await
            .map_err(|error| format!("reading the body: {error}"))?
            .to_bytes();
        String::from_utf8(body.to_vec()).map_err(|_| "the body is not UTF-8".to_owned())
    })
    .await
    .map_err(|_| format!("no answer within {:?}", config.timeout))??;
    Ok(answer)
}

/// Fetches `config.url` into `verifier` until `stop`.
pub async fn follow_url(
    config: JwksConfig,
    verifier: Arc<Verifier>,
    metrics: JwksMetrics,
    stop: tokio_util::sync::CancellationToken,
) {
    let connector = match hyper_rustls::HttpsConnectorBuilder::new().with_native_roots() {
        Ok(builder) => builder.https_or_http().enable_http1().build(),
        Err(error) => {
            tracing::warn!(%error, "no system CA certificates; JWKS over https will fail");
            hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(
                    rustls::ClientConfig::builder_with_provider(Arc::new(
                        rustls::crypto::ring::default_provider(),
                    ))
                    .with_safe_default_protocol_versions()
                    .expect("ring supports the default versions")
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
                )
                .https_or_http()
                .enable_http1()
                .build()
        }
    };
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build(connector);
    loop {
        let wait = match fetch(&client, &config).await.and_then(|text| {
            verifier
                .replace_public_keys(&text)
                .map_err(|error| format!("not a usable JWKS: {error}"))
        }) {
            Ok(count) => {
                metrics
                    .fetches
                    .get_or_create(&FetchLabels { result: "ok" })
                    .inc();
                metrics.keys.set(i64::try_from(count).unwrap_or(i64::MAX));
                tracing::debug!(url = %config.url, keys = count, "JWKS refreshed");
                config.refresh
            }
            Err(reason) => {
                metrics
                    .fetches
                    .get_or_create(&FetchLabels { result: "failed" })
                    .inc();
                tracing::warn!(
                    url = %config.url,
                    %reason,
                    keys = verifier.public_key_count(),
                    "JWKS fetch failed; the last good keys stay"
                );
                config.retry
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// Re-reads the JWKS file into `verifier` whenever it changes, until `stop`.
pub(crate) async fn follow_file(
    mut watch: crate::filewatch::FileWatch,
    verifier: Arc<Verifier>,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            changed = watch.changed() => if changed.is_none() { return },
            () = stop.cancelled() => return,
        }
        let path = watch.path().to_owned();
        let read = std::fs::read_to_string(&path).map_err(|error| error.to_string());
        match read.and_then(|text| verifier.replace_public_keys(&text)) {
            Ok(keys) => tracing::info!(path = %path.display(), keys, "JWKS file reloaded"),
            Err(reason) => tracing::warn!(
                path = %path.display(),
                %reason,
                "JWKS file refused; the previous keys stay"
            ),
        }
    }
}
