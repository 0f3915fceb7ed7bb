//! The gRPC server every service runs around its own tonic services.
//!
//! One listener serves gRPC (HTTP/2, h2c prior knowledge) and plain HTTP/1.1 for
//! `/healthz`, `/readyz` and `/metrics`, so `curl` and Prometheus need no extra port.
//! Every served service is also registered with `grpc.health.v1.Health` and, when
//! enabled, with server reflection (v1 and v1alpha) so stock clients work without our
//! protos. On shutdown the server reports `NOT_SERVING`, fails `/readyz`, stops
//! accepting, and drains in-flight calls for at most [`ServerConfig::drain_timeout`].

use std::collections::HashSet;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::{self as http, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use omnimesh_telemetry::{GrpcMetrics, GrpcMetricsLayer, Metrics};
use prost::Message as _;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio_stream::StreamExt as _;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::service::{Routes, RoutesBuilder};
use tonic::transport::server::{Connected, TcpIncoming};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

/// How long cut connections get to unwind before `serve` returns anyway.
const CUT_GRACE: Duration = Duration::from_secs(1);
const HEALTH_SERVICE: &str = "grpc.health.v1.Health";
const REFLECTION_V1: &str = "grpc.reflection.v1.ServerReflection";
const REFLECTION_V1ALPHA: &str = "grpc.reflection.v1alpha.ServerReflection";

/// Settings of a service's gRPC server; the `server` section of its config.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// How long in-flight calls may take to finish after shutdown starts; then the
    /// remaining connections are closed.
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Interval of HTTP/2 keep-alive pings to idle clients (none when absent).
    #[serde(default, with = "humantime_serde")]
    pub http2_keepalive_interval: Option<Duration>,
    /// HTTP/2 flow-control window per stream, in bytes. The protocol default (64 KiB)
    /// makes every larger message wait a round trip for a window update.
    #[serde(default = "default_stream_window")]
    pub http2_stream_window: u32,
    /// HTTP/2 flow-control window per connection, in bytes.
    #[serde(default = "default_connection_window")]
    pub http2_connection_window: u32,
    /// The largest HTTP/2 frame this server accepts (16 KiB to 16 MiB - 1). Larger frames
    /// mean fewer frames, wake-ups and system calls per large message.
    #[serde(default = "default_max_frame_size")]
    pub http2_max_frame_size: u32,
}

fn default_max_frame_size() -> u32 {
    MAX_FRAME_SIZE_DEFAULT
}

/// The default of `http2_max_frame_size`.
pub const MAX_FRAME_SIZE_DEFAULT: u32 = 256 * 1024;

/// HTTP/2's bounds (RFC 9113 §6.5.2): a frame of 16 KiB to 16 MiB - 1, a window of at
/// most 2^31 - 1 bytes.
const MIN_FRAME_SIZE: u32 = 1 << 14;
const MAX_FRAME_SIZE: u32 = (1 << 24) - 1;
const MAX_WINDOW: u32 = (1 << 31) - 1;

impl ServerConfig {
    /// Checks the HTTP/2 settings against the protocol's bounds (out of them, the HTTP/2
    /// library would refuse to start the server).
    ///
    /// # Errors
    /// The key (relative to the section) and the reason.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if !(MIN_FRAME_SIZE..=MAX_FRAME_SIZE).contains(&self.http2_max_frame_size) {
            return Err((
                "http2_max_frame_size",
                format!("must be from {MIN_FRAME_SIZE} to {MAX_FRAME_SIZE} bytes"),
            ));
        }
        for (key, window) in [
            ("http2_stream_window", self.http2_stream_window),
            ("http2_connection_window", self.http2_connection_window),
        ] {
            if window == 0 || window > MAX_WINDOW {
                return Err((key, format!("must be from 1 to {MAX_WINDOW} bytes")));
            }
        }
        Ok(())
    }
}

fn default_stream_window() -> u32 {
    1 << 20
}

fn default_connection_window() -> u32 {
    4 << 20
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            drain_timeout: default_drain_timeout(),
            http2_keepalive_interval: None,
            http2_stream_window: default_stream_window(),
            http2_connection_window: default_connection_window(),
            http2_max_frame_size: default_max_frame_size(),
        }
    }
}

fn default_drain_timeout() -> Duration {
    Duration::from_secs(10)
}

/// `[<service>.listen]` of a service with one port: gRPC, plus HTTP `/healthz`,
/// `/readyz` and `/metrics` on the same port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcListen {
    /// The address to listen on.
    pub grpc: SocketAddr,
}

impl GrpcListen {
    /// Listens on `grpc`.
    pub const fn new(grpc: SocketAddr) -> Self {
        Self { grpc }
    }

    /// `127.0.0.1:0`: any free loopback port, for tests.
    pub fn any_loopback() -> Self {
        Self::new(SocketAddr::from(([127, 0, 0, 1], 0)))
    }
}

/// Errors of [`GrpcServer`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A descriptor set handed to reflection does not decode.
    #[error("building the reflection service")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The listener's address cannot be read.
    #[error("reading the listener address")]
    LocalAddr(#[source] std::io::Error),
    /// The server failed while serving.
    #[error("serving gRPC")]
    Transport(#[from] tonic::transport::Error),
}

/// Whether a service is ready for traffic; `/readyz` answers 200 only while it is.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// Marks the service ready or not.
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Release);
    }

    /// Whether the service is ready.
    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Assembles a [`GrpcServer`].
#[must_use]
pub struct GrpcServerBuilder {
    service: &'static str,
    config: ServerConfig,
    routes: RoutesBuilder,
    service_names: Vec<&'static str>,
    descriptor_sets: Vec<&'static [u8]>,
    reflection: bool,
    metrics: Option<Metrics>,
    message_limit_key: Option<&'static str>,
    http_routes: Option<axum::Router>,
}

impl GrpcServerBuilder {
    /// Answers a request message over the services' decoding limit with
    /// `RESOURCE_EXHAUSTED` naming `key` (instead of tonic's `OUT_OF_RANGE`).
    pub fn message_limit_key(mut self, key: &'static str) -> Self {
        self.message_limit_key = Some(key);
        self
    }

    /// Serves `svc` on this server and reports it in health (and reflection).
    pub fn add_service<S>(mut self, svc: S) -> Self
    where
        S: tonic::codegen::Service<http::Request<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: IntoResponse,
        S::Future: Send + 'static,
    {
        self.service_names.push(S::NAME);
        self.routes.add_service(svc);
        self
    }

    /// Registers an encoded `FileDescriptorSet` describing the added services, for
    /// reflection and for bounded metric labels.
    pub fn descriptor_set(mut self, encoded: &'static [u8]) -> Self {
        self.descriptor_sets.push(encoded);
        self
    }

    /// Serves gRPC server reflection (v1 and v1alpha) for the added services.
    pub fn reflection(mut self, enabled: bool) -> Self {
        self.reflection = enabled;
        self
    }

    /// Serves `/healthz`, `/readyz` and `/metrics` over HTTP on the same port, and counts
    /// every gRPC call in `metrics`.
    pub fn admin_http(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Serves these HTTP routes on the same port too (beside `/healthz`, `/readyz` and
    /// `/metrics`, which need [`admin_http`](Self::admin_http)).
    pub fn http_routes(mut self, routes: axum::Router) -> Self {
        self.http_routes = Some(routes);
        self
    }

    /// Builds the server.
    ///
    /// # Errors
    /// When a registered descriptor set does not decode.
    pub fn build(mut self) -> Result<GrpcServer, Error> {
        let (health, health_service) = tonic_health::server::health_reporter();
        let mut names = self.service_names.clone();
        names.push(HEALTH_SERVICE);
        self.routes.add_service(health_service);
        if self.reflection {
            names.extend([REFLECTION_V1, REFLECTION_V1ALPHA]);
            let reflection = || {
                let mut builder = tonic_reflection::server::Builder::configure()
                    .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET);
                for set in &self.descriptor_sets {
                    builder = builder.register_encoded_file_descriptor_set(set);
                }
                for name in &names {
                    builder = builder.with_service_name(*name);
                }
                builder
            };
            let (v1, v1alpha) = (reflection().build_v1()?, reflection().build_v1alpha()?);
            self.routes.add_service(v1);
            self.routes.add_service(v1alpha);
        }
        let readiness = Readiness::default();
        let (routes, metrics_layer) = match self.metrics {
            Some(mut metrics) => {
                let mut sets = self.descriptor_sets.clone();
                sets.extend([
                    tonic_health::pb::FILE_DESCRIPTOR_SET,
                    tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
                    tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
                ]);
                let grpc_metrics = GrpcMetrics::register(&mut metrics, method_paths(&sets, &names));
                let mut router = admin_router(
                    self.routes.routes().into_axum_router(),
                    Arc::new(metrics),
                    readiness.clone(),
                );
                if let Some(extra) = self.http_routes.take() {
                    router = router.merge(extra);
                }
                (Routes::from(router), GrpcMetricsLayer::new(grpc_metrics))
            }
            None => (self.routes.routes(), GrpcMetricsLayer::disabled()),
        };
        Ok(GrpcServer {
            service: self.service,
            config: self.config,
            routes,
            metrics_layer,
            message_limit: crate::message_limit::MessageLimitLayer::new(self.message_limit_key),
            names,
            health,
            readiness,
        })
    }
}

/// A service's gRPC (and admin HTTP) server, ready to serve on a listener.
pub struct GrpcServer {
    service: &'static str,
    config: ServerConfig,
    routes: Routes,
    metrics_layer: GrpcMetricsLayer,
    message_limit: crate::message_limit::MessageLimitLayer,
    names: Vec<&'static str>,
    health: HealthReporter,
    readiness: Readiness,
}

impl GrpcServer {
    /// Starts assembling the server of `service` (for logs) with `config`.
    pub fn builder(service: &'static str, config: &ServerConfig) -> GrpcServerBuilder {
        GrpcServerBuilder {
            service,
            config: config.clone(),
            routes: RoutesBuilder::default(),
            service_names: Vec::new(),
            descriptor_sets: Vec::new(),
            reflection: false,
            metrics: None,
            message_limit_key: None,
            http_routes: None,
        }
    }

    /// The health reporter, for services that change their status while running.
    pub fn health(&self) -> HealthReporter {
        self.health.clone()
    }

    /// The readiness flag behind `/readyz`.
    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    /// Serves on `listener` until `shutdown` resolves, then drains: health turns
    /// `NOT_SERVING`, `/readyz` fails, the listener closes, and in-flight calls get
    /// [`ServerConfig::drain_timeout`] to finish.
    ///
    /// # Errors
    /// When the server fails while serving.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), Error> {
        let address = listener.local_addr().map_err(Error::LocalAddr)?;
        for name in &self.names {
            self.health
                .set_service_status(*name, ServingStatus::Serving)
                .await;
        }
        self.health
            .set_service_status("", ServingStatus::Serving)
            .await;
        self.readiness.set(true);
        tracing::info!(service = self.service, %address, "serving");

        let draining = Arc::new(tokio::sync::Notify::new());
        let signal = {
            let draining = Arc::clone(&draining);
            let health = self.health.clone();
            let readiness = self.readiness.clone();
            let names = self.names.clone();
            async move {
                shutdown.await;
                readiness.set(false);
                health
                    .set_service_status("", ServingStatus::NotServing)
                    .await;
                for name in names {
                    health
                        .set_service_status(name, ServingStatus::NotServing)
                        .await;
                }
                // `notify_one` keeps a permit, so the waiter below cannot miss it.
                draining.notify_one();
            }
        };
        let cut = CancellationToken::new();
        let incoming = {
            let cut = cut.clone();
            TcpIncoming::from(listener)
                .with_nodelay(Some(true))
                // A child token per connection: each connection waits on its own
                // Notify, so reads of different connections never share a lock.
                .map(move |accepted| accepted.map(|io| Cuttable::new(io, cut.child_token())))
        };
        let server = tonic::transport::Server::builder()
            .accept_http1(true)
            .http2_keepalive_interval(self.config.http2_keepalive_interval)
            .initial_stream_window_size(self.config.http2_stream_window)
            .initial_connection_window_size(self.config.http2_connection_window)
            .max_frame_size(self.config.http2_max_frame_size)
            .layer(self.metrics_layer)
            .layer(self.message_limit)
            .add_routes(self.routes)
            .serve_with_incoming_shutdown(incoming, signal);
        tokio::pin!(server);
        tokio::select! {
            result = &mut server => return result.map_err(Error::from),
            () = draining.notified() => {}
        }
        tracing::info!(service = self.service, timeout = ?self.config.drain_timeout, "draining");
        if let Ok(result) = tokio::time::timeout(self.config.drain_timeout, &mut server).await {
            result?;
        } else {
            tracing::warn!(
                service = self.service,
                "drain timeout reached; closing the remaining connections"
            );
            // The connections run in their own tasks: dropping the server would not end
            // them. Cutting their sockets does, and then the server returns by itself.
            cut.cancel();
            if tokio::time::timeout(CUT_GRACE, &mut server).await.is_err() {
                tracing::warn!(
                    service = self.service,
                    "connections still open after the cut"
                );
            }
        }
        tracing::info!(service = self.service, "stopped");
        Ok(())
    }
}

pin_project_lite::pin_project! {
    /// A connection that fails its I/O once `cut` is cancelled, so that the task serving
    /// it ends. Only reads wait on the token (an idle connection always has a read
    /// pending, so its task is woken); writes merely check it.
    struct Cuttable<IO> {
        #[pin]
        io: IO,
        token: CancellationToken,
        // Boxed so that the connection stays `Unpin`, as the server requires.
        cut: Pin<Box<WaitForCancellationFutureOwned>>,
    }
}

impl<IO> Cuttable<IO> {
    fn new(io: IO, token: CancellationToken) -> Self {
        Self {
            io,
            cut: Box::pin(token.clone().cancelled_owned()),
            token,
        }
    }
}

fn cut_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "drain timeout: connection cut",
    )
}

impl<IO: AsyncRead> AsyncRead for Cuttable<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        if this.token.is_cancelled() || this.cut.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(cut_error()));
        }
        this.io.poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite> AsyncWrite for Cuttable<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        if this.token.is_cancelled() {
            return Poll::Ready(Err(cut_error()));
        }
        this.io.poll_write(cx, buf)
    }

    // Forwarded, or HTTP/2 would write every frame header and its payload in separate
    // system calls.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        if this.token.is_cancelled() {
            return Poll::Ready(Err(cut_error()));
        }
        this.io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

impl<IO: Connected> Connected for Cuttable<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// Adds the HTTP endpoints to the gRPC routes.
fn admin_router(grpc: axum::Router, metrics: Arc<Metrics>, readiness: Readiness) -> axum::Router {
    grpc.route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = readiness.is_ready();
                async move {
                    if ready {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move || {
                let body = metrics.encode();
                async move {
                    (
                        [(
                            header::CONTENT_TYPE,
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        body,
                    )
                        .into_response()
                }
            }),
        )
}

/// `/package.Service/Method` for every method of the named services in `sets`.
fn method_paths(sets: &[&[u8]], names: &[&str]) -> HashSet<String> {
    let mut paths = HashSet::new();
    for set in sets {
        let Ok(set) = prost_types::FileDescriptorSet::decode(*set) else {
            continue;
        };
        for file in set.file {
            let package = file.package();
            for service in &file.service {
                let full = format!("{package}.{}", service.name());
                if names.contains(&full.as_str()) {
                    paths.extend(
                        service
                            .method
                            .iter()
                            .map(|method| format!("/{full}/{}", method.name())),
                    );
                }
            }
        }
    }
    paths
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http2_settings_out_of_the_protocol_bounds_are_refused() {
        assert_eq!(ServerConfig::default().validate(), Ok(()));
        for (config, key) in [
            (
                ServerConfig {
                    http2_max_frame_size: 16_383,
                    ..ServerConfig::default()
                },
                "http2_max_frame_size",
            ),
            (
                ServerConfig {
                    http2_max_frame_size: 1 << 24,
                    ..ServerConfig::default()
                },
                "http2_max_frame_size",
            ),
            (
                ServerConfig {
                    http2_stream_window: 0,
                    ..ServerConfig::default()
                },
                "http2_stream_window",
            ),
            (
                ServerConfig {
                    http2_connection_window: u32::MAX,
                    ..ServerConfig::default()
                },
                "http2_connection_window",
            ),
        ] {
            assert_eq!(config.validate().map_err(|(key, _)| key), Err(key));
        }
        let edges = ServerConfig {
            http2_max_frame_size: (1 << 24) - 1,
            http2_stream_window: (1 << 31) - 1,
            http2_connection_window: 1,
            ..ServerConfig::default()
        };
        assert_eq!(edges.validate(), Ok(()));
    }

    /// Without vectored writes, HTTP/2 writes each frame's header and payload in two
    /// system calls: the wrapper must keep them.
    #[tokio::test]
    async fn a_cuttable_connection_keeps_vectored_writes_until_cut() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let token = CancellationToken::new();
        let mut server = Cuttable::new(accepted, token.clone());
        assert!(server.is_write_vectored());

        let parts = [io::IoSlice::new(b"header:"), io::IoSlice::new(b"payload")];
        let written = server.write_vectored(&parts).await.unwrap();
        assert_eq!(written, 14, "both slices in one call");
        let mut received = [0; 14];
        client.read_exact(&mut received).await.unwrap();
        assert_eq!(&received, b"header:payload");

        token.cancel();
        let error = server.write_vectored(&parts).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::ConnectionAborted);
    }

    #[test]
    fn method_paths_cover_only_named_services() {
        let paths = method_paths(&[tonic_health::pb::FILE_DESCRIPTOR_SET], &[HEALTH_SERVICE]);
        assert!(paths.contains("/grpc.health.v1.Health/Check"), "{paths:?}");
        assert!(paths.contains("/grpc.health.v1.Health/Watch"), "{paths:?}");
        assert!(method_paths(&[tonic_health::pb::FILE_DESCRIPTOR_SET], &[]).is_empty());
    }
}
