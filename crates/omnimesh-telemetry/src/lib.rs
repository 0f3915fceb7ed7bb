//! Logs, traces and metrics for every OmniMesh service.
//!
//! [`init`] runs first in each service's `main`: it installs a `tracing` subscriber
//! (human or JSON lines, filtered by [`TelemetryConfig::log_level`]) and, when
//! [`TelemetryConfig::otlp_endpoint`] is set, an OTLP span exporter. [`Metrics`] is the
//! service's Prometheus registry; [`GrpcMetricsLayer`] counts and times every gRPC call.

#![warn(missing_docs)]

mod grpc_metrics;
mod metrics;

use std::io::IsTerminal as _;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde::{Deserialize, Serialize};
use tracing_subscriber::{EnvFilter, layer::SubscriberExt as _, util::SubscriberInitExt as _};

pub use grpc_metrics::{GrpcMetrics, GrpcMetricsLayer, GrpcMetricsService, grpc_code_name};
pub use metrics::Metrics;

/// How a service logs and traces; the `telemetry` section of each service's config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    /// A `tracing` filter directive, such as `info` or `info,proxy_gateway=debug`.
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// `human` for people at a terminal, `json` for log collectors.
    #[serde(default)]
    pub log_format: LogFormat,
    /// An OTLP/gRPC collector (`http://127.0.0.1:4317`); spans are exported only when set.
    #[serde(default)]
    pub otlp_endpoint: Option<String>,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            log_level: default_log_level(),
            log_format: LogFormat::default(),
            otlp_endpoint: None,
        }
    }
}

impl TelemetryConfig {
    /// Checks what serde cannot: the filter parses and the endpoint is a URL.
    ///
    /// # Errors
    /// Returns the key (relative to the section) and the reason.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        EnvFilter::try_new(&self.log_level)
            .map_err(|error| ("log_level", format!("not a tracing filter: {error}")))?;
        if let Some(endpoint) = &self.otlp_endpoint {
            let uri: http::Uri = endpoint
                .parse()
                .map_err(|error| ("otlp_endpoint", format!("not a URL: {error}")))?;
            if !matches!(uri.scheme_str(), Some("http" | "https")) {
                return Err((
                    "otlp_endpoint",
                    "must start with http:// or https://".into(),
                ));
            }
        }
        Ok(())
    }
}

fn default_log_level() -> String {
    "info".to_owned()
}

/// The shape of log lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Coloured, one event per line, for terminals.
    #[default]
    Human,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Errors while installing telemetry.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The log filter does not parse.
    #[error("invalid log filter {filter:?}")]
    Filter {
        /// The directive as configured.
        filter: String,
        /// Why it does not parse.
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    /// The OTLP exporter could not be built.
    #[error("building the OTLP exporter for {endpoint}")]
    Otlp {
        /// The configured endpoint.
        endpoint: String,
        /// What went wrong.
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
    /// A global subscriber was already installed.
    #[error("a tracing subscriber is already installed")]
    AlreadyInstalled(#[source] tracing_subscriber::util::TryInitError),
}

/// Flushes and stops the OTLP exporter when dropped; keep it alive in `main`.
#[must_use = "dropping the guard stops span export"]
#[derive(Debug)]
pub struct TelemetryGuard {
    tracer_provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.tracer_provider.take()
            && let Err(error) = provider.shutdown_with_timeout(Duration::from_secs(5))
        {
            tracing::warn!(%error, "flushing spans at shutdown");
        }
    }
}

/// Installs the global `tracing` subscriber for `service`.
///
/// # Errors
/// Fails when the filter does not parse, the OTLP exporter cannot be built, or a
/// subscriber is already installed.
pub fn init(service: &'static str, config: &TelemetryConfig) -> Result<TelemetryGuard, Error> {
    let filter = EnvFilter::try_new(&config.log_level).map_err(|source| Error::Filter {
        filter: config.log_level.clone(),
        source,
    })?;

    let tracer_provider = match &config.otlp_endpoint {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .build()
                .map_err(|source| Error::Otlp {
                    endpoint: endpoint.clone(),
                    source,
                })?;
            let resource = opentelemetry_sdk::Resource::builder()
                .with_service_name(service)
                .build();
            Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource)
                    .build(),
            )
        }
        None => None,
    };
    let otel_layer = tracer_provider
        .as_ref()
        .map(|provider| tracing_opentelemetry::layer().with_tracer(provider.tracer(service)));

    let (human, json) = match config.log_format {
        LogFormat::Human => (
            Some(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_target(true),
            ),
            None,
        ),
        LogFormat::Json => (
            None,
            Some(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .json()
                    .flatten_event(true)
                    .with_current_span(true),
            ),
        ),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(human)
        .with(json)
        .with(otel_layer)
        .try_init()
        .map_err(Error::AlreadyInstalled)?;
    if let Some(provider) = &tracer_provider {
        opentelemetry::global::set_tracer_provider(provider.clone());
    }
    Ok(TelemetryGuard { tracer_provider })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        assert_eq!(TelemetryConfig::default().validate(), Ok(()));
    }

    #[test]
    fn bad_filter_names_log_level() {
        let config = TelemetryConfig {
            log_level: "info,[=".into(),
            ..TelemetryConfig::default()
        };
        let (key, reason) = config.validate().unwrap_err();
        assert_eq!(key, "log_level");
        assert!(reason.contains("not a tracing filter"), "{reason}");
    }

    #[test]
    fn otlp_endpoint_needs_http_scheme() {
        let config = TelemetryConfig {
            otlp_endpoint: Some("collector:4317".into()),
            ..TelemetryConfig::default()
        };
        assert_eq!(config.validate().unwrap_err().0, "otlp_endpoint");
        let config = TelemetryConfig {
            otlp_endpoint: Some("http://127.0.0.1:4317".into()),
            ..TelemetryConfig::default()
        };
        assert_eq!(config.validate(), Ok(()));
    }
}
