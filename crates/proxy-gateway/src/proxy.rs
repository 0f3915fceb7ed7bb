//! The data plane: accepts HTTP/1.1 and h2c, routes each request to a cluster, picks an
//! endpoint, forwards, and retries where that is safe.
//!
//! - Upstream connections are pooled by hyper-util's client: gRPC goes over HTTP/2
//!   (multiplexed, one connection per endpoint), everything else over HTTP/1.1
//!   keep-alive.
//! - Retries happen on another endpoint, within a retry budget (20 % of requests plus
//!   10 per second, over 10 s): a request that never reached an upstream (connect
//!   error) is always retried; one that may have reached it only when its method is
//!   idempotent (the proto's `idempotency_level`, or GET/HEAD/OPTIONS/PUT/DELETE). Only
//!   requests whose body is known and small are buffered for that; client-streaming
//!   calls stream through untouched.
//! - An endpoint that refuses connections is ejected (1 s, doubling while it keeps
//!   refusing, up to 30 s) and picked again only if nothing else is left.
//! - Deadlines: the route's timeout, shortened by a `grpc-timeout` header.
//! - Request bodies are limited (`max_request_body_bytes`): a declared length above it
//!   gets `RESOURCE_EXHAUSTED` / 413 at once, an undeclared one is cut at the limit.
//! - Hop-by-hop headers are dropped; `x-forwarded-for`, `-proto` and `-host` are set.
//! - `grpc.health.v1.Health` is answered by the gateway itself.
//! - gRPC-Web is translated to gRPC (tonic-web) before routing; WebSocket upgrades are
//!   forwarded and, after the upstream's `101`, tunnelled byte for byte.

use std::collections::HashSet;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::retry::budget::{Budget as _, TpsBudget};

use omnimesh_common::auth::{Role, Verifier};

use crate::balance::{Backend, Balancers};
use crate::live::Live;
use crate::metrics::{
    ClusterLabels, GatewayMetrics, Recorder, RequestLabels, RouteLabels, grpc_code_name,
};
use crate::route::RequestFacts;

/// A response or request body of the proxy.
pub type Body = UnsyncBoxBody<Bytes, BoxError>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Largest request body buffered so that it can be retried.
pub const RETRY_BUFFER_BYTES: usize = 64 * 1024;

/// What the proxy knows about gRPC methods, from the descriptor set.
#[derive(Debug, Default, Clone)]
pub struct MethodCatalog {
    /// `/package.Service/Method` paths whose requests are a single message.
    unary: HashSet<String>,
    /// Paths marked `NO_SIDE_EFFECTS` or `IDEMPOTENT`.
    idempotent: HashSet<String>,
    /// Every method's path.
    known: HashSet<String>,
}

impl MethodCatalog {
    /// Reads every service of an encoded `FileDescriptorSet`.
    pub fn from_descriptor_set(bytes: &[u8]) -> Self {
        use prost::Message as _;
        use prost_types::method_options::IdempotencyLevel;
        let mut catalog = Self::default();
        let Ok(set) = prost_types::FileDescriptorSet::decode(bytes) else {
            return catalog;
        };
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    let path = format!("/{}.{}/{}", file.package(), service.name(), method.name());
                    catalog.known.insert(path.clone());
                    if !method.client_streaming() {
                        catalog.unary.insert(path.clone());
                    }
                    let level = method
                        .options
                        .as_ref()
                        .map(prost_types::MethodOptions::idempotency_level);
                    if matches!(
                        level,
                        Some(IdempotencyLevel::NoSideEffects | IdempotencyLevel::Idempotent)
                    ) {
                        catalog.idempotent.insert(path);
                    }
                }
            }
        }
        catalog
    }
}

/// The data plane's shared state.
pub struct Proxy {
    live: Arc<Live>,
    balancers: watch::Receiver<Arc<Balancers>>,
    h2: Client<crate::connect::LimitedConnector, Body>,
    h1: Client<crate::connect::LimitedConnector, Body>,
    catalog: MethodCatalog,
    budget: TpsBudget,
    health: tonic_health::pb::health_server::HealthServer<tonic_health::server::HealthService>,
    verifier: Arc<Verifier>,
    metrics: Arc<GatewayMetrics>,
    shared_limits: crate::ratelimit::Shared,
    /// Whether spans are exported (an OTLP endpoint is configured).
    export_spans: bool,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("version", &self.live.load().version)
            .finish_non_exhaustive()
    }
}

/// A trailers-only gRPC error.
fn grpc_error(code: tonic::Code, message: &str) -> Response<Body> {
    let mut response = Response::new(empty());
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from(code as i32));
    if let Ok(message) = HeaderValue::from_str(message) {
        headers.insert("grpc-message", message);
    }
    response
}

fn http_error(status: StatusCode, message: &str) -> Response<Body> {
    let mut response = Response::new(
        Full::new(Bytes::from(format!("{message}\n")))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

/// Any body as the proxy's [`Body`].
fn boxed<B>(body: B) -> Body
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(|error| -> BoxError { error.into() })
        .boxed_unsync()
}

fn empty() -> Body {
    Full::new(Bytes::new())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/grpc"))
}

/// `grpc-timeout` (`<digits><unit>`, RFC: at most 8 digits).
fn grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "transfer-encoding",
    "upgrade",
    "trailer",
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Headers named by `Connection` are hop-by-hop too.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
    // `te: trailers` is what gRPC needs end to end; any other `te` is hop-by-hop.
    if headers
        .get(header::TE)
        .is_some_and(|te| te.as_bytes() != b"trailers")
    {
        headers.remove(header::TE);
    }
}

/// Sets `x-forwarded-for` (appending the client to a chain), `-proto` and `-host`.
fn set_forwarded(headers: &mut HeaderMap, remote: SocketAddr, secure: bool) {
    let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(previous) => format!("{previous}, {}", remote.ip()),
        None => remote.ip().to_string(),
    };
    if let Ok(value) = HeaderValue::from_str(&forwarded_for) {
        headers.insert("x-forwarded-for", value);
    }
    headers.insert(
        "x-forwarded-proto",
        HeaderValue::from_static(if secure { "https" } else { "http" }),
    );
    if let Some(host) = headers.get(header::HOST).cloned() {
        headers.insert("x-forwarded-host", host);
    }
}

/// Whether the request asks to switch protocols (a WebSocket handshake): HTTP/1.1 with
/// `Connection: upgrade` and an `Upgrade` header. `Upgrade: h2c` is not one: RFC 9113
/// deprecates it, and the request is served over HTTP/1.1 as the RFC allows (clients
/// that want HTTP/2 use prior knowledge, which the data plane speaks).
fn is_upgrade(request: &Request<Body>) -> bool {
    request.version() == Version::HTTP_11
        && request
            .headers()
            .get(header::UPGRADE)
            .is_some_and(|protocol| !protocol.as_bytes().eq_ignore_ascii_case(b"h2c"))
        && request
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .any(|token| token.trim().eq_ignore_ascii_case("upgrade"))
}

/// Whether the request is gRPC-Web (`application/grpc-web`, `-web+proto`, `-web-text`).
pub fn is_grpc_web(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("application/grpc-web"))
}

/// The URI of `path_and_query` on `address`.
fn upstream_uri(address: &str, parts: &http::request::Parts) -> Option<Uri> {
    format!(
        "http://{address}{}",
        parts.uri.path_and_query().map_or("/", |p| p.as_str())
    )
    .parse()
    .ok()
}

/// The request body: buffered (retryable), streamed (once), or already sent.
enum Prepared {
    Buffered(Bytes, Option<HeaderMap>),
    Streamed(Body),
    Sent,
}

impl Prepared {
    fn body(&mut self) -> Option<Body> {
        match self {
            Prepared::Buffered(data, trailers) => {
                let data = data.clone();
                let trailers = trailers.clone();
                let frames = [Ok::<_, BoxError>(hyper::body::Frame::data(data))]
                    .into_iter()
                    .chain(trailers.map(|t| Ok(hyper::body::Frame::trailers(t))));
                Some(http_body_util::StreamBody::new(futures::stream::iter(frames)).boxed_unsync())
            }
            Prepared::Streamed(_) => match std::mem::replace(self, Prepared::Sent) {
                Prepared::Streamed(body) => Some(body),
                Prepared::Buffered(..) | Prepared::Sent => None,
            },
            Prepared::Sent => None,
        }
    }

    fn replayable(&self) -> bool {
        matches!(self, Prepared::Buffered(..))
    }
}

pin_project_lite::pin_project! {
    /// A request body cut at the size limit, which remembers that it was cut, so that
    /// the failure it causes upstream can be answered as `RESOURCE_EXHAUSTED`.
    struct Capped {
        #[pin]
        inner: http_body_util::Limited<Body>,
        cut: Arc<std::sync::atomic::AtomicBool>,
    }
}

impl hyper::body::Body for Capped {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let polled = std::task::ready!(this.inner.poll_frame(cx));
        if let Some(Err(error)) = &polled
            && error.is::<http_body_util::LengthLimitError>()
        {
            this.cut.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        std::task::Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Reads a request body into memory for retries, up to [`RETRY_BUFFER_BYTES`]; a larger
/// body is streamed on without retries: what was read so far, then the rest.
async fn buffer(mut body: Capped) -> Result<Prepared, BoxError> {
    let mut data = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        match frame.into_data() {
            Ok(chunk) => {
                data.extend_from_slice(&chunk);
                if data.len() > RETRY_BUFFER_BYTES {
                    use futures::StreamExt as _;
                    let head = futures::stream::once(std::future::ready(Ok::<_, BoxError>(
                        hyper::body::Frame::data(data.freeze()),
                    )));
                    let rest = http_body_util::BodyStream::new(body);
                    return Ok(Prepared::Streamed(
                        http_body_util::StreamBody::new(head.chain(rest)).boxed_unsync(),
                    ));
                }
            }
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    return Ok(Prepared::Buffered(data.freeze(), Some(trailers)));
                }
            }
        }
    }
    Ok(Prepared::Buffered(data.freeze(), None))
}

/// What a [`Proxy`] is made of.
pub struct Parts {
    /// The serving configuration.
    pub live: Arc<Live>,
    /// Every cluster's endpoints.
    pub balancers: watch::Receiver<Arc<Balancers>>,
    /// What the protos say about methods.
    pub catalog: MethodCatalog,
    /// The gateway's own health service.
    pub health: tonic_health::pb::health_server::HealthServer<tonic_health::server::HealthService>,
    /// Checks tokens.
    pub verifier: Arc<Verifier>,
    /// The data plane's metrics.
    pub metrics: Arc<GatewayMetrics>,
    /// Shared rate limits' Redis.
    pub shared_limits: crate::ratelimit::Shared,
    /// Whether spans are exported over OTLP.
    pub export_spans: bool,
    /// Connections open at once to one endpoint.
    pub max_connections_per_endpoint: usize,
    /// Requests waiting for one of them.
    pub max_pending_per_endpoint: usize,
}

impl Proxy {
    /// A proxy routing with the serving configuration over the endpoints in
    /// `balancers`.
    pub fn new(parts: Parts) -> Self {
        let Parts {
            live,
            balancers,
            catalog,
            health,
            verifier,
            metrics,
            shared_limits,
            export_spans,
            max_connections_per_endpoint,
            max_pending_per_endpoint,
        } = parts;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let connector = crate::connect::LimitedConnector::new(
            connector,
            max_connections_per_endpoint,
            max_pending_per_endpoint,
        );
        let h2 = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .http2_adaptive_window(true)
            .build(connector.clone());
        let h1 = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(connector);
        Self {
            live,
            balancers,
            h2,
            h1,
            catalog,
            budget: TpsBudget::new(Duration::from_secs(10), 10, 0.2),
            health,
            verifier,
            metrics,
            shared_limits,
            export_spans,
        }
    }

    /// Handles one downstream request, and records it in the metrics.
    pub async fn handle(
        self: Arc<Self>,
        mut request: Request<Body>,
        remote: SocketAddr,
    ) -> Response<Body> {
        let started = std::time::Instant::now();
        let grpc = is_grpc(request.headers());
        // The gateway's span: the client's trace continues, or a new one starts; the
        // upstream gets it as its parent.
        let parent = request
            .headers()
            .get("traceparent")
            .and_then(|value| crate::trace::TraceParent::parse(value.as_bytes()));
        let (span, exported) = if self.export_spans {
            let (span, ids) = crate::trace::ExportedSpan::start(
                request.method(),
                grpc.then(|| request.uri().path()),
                parent.as_ref(),
                vec![
                    opentelemetry::KeyValue::new(
                        "http.request.method",
                        request.method().to_string(),
                    ),
                    opentelemetry::KeyValue::new("url.path", request.uri().path().to_owned()),
                    opentelemetry::KeyValue::new("client.address", remote.ip().to_string()),
                ],
            );
            (Some(span), ids)
        } else {
            (None, None)
        };
        let ours = exported.unwrap_or_else(|| crate::trace::TraceParent::child_of(parent.as_ref()));
        request.headers_mut().insert("traceparent", ours.header());
        // This request keeps the configuration it started with, whatever reloads meanwhile.
        let serving = self.live.load();
        let access = serving.config.access_log.then(|| {
            Box::new(crate::metrics::AccessEntry {
                method: request.method().clone(),
                path: request.uri().path().to_owned(),
                remote,
                trace_id: ours.trace_id_hex(),
            })
        });
        let mut labels = RequestLabels {
            route: "none".to_owned(),
            cluster: "none".to_owned(),
            status: 0,
            grpc_status: "",
        };
        let response = Arc::clone(&self)
            .route_request(request, remote, serving, &mut labels)
            .await;
        labels.status = response.status().as_u16();
        let trailers_only = response
            .headers()
            .get("grpc-status")
            .map(|value| grpc_code_name(value.as_bytes()));
        if grpc {
            labels.grpc_status = trailers_only.unwrap_or("UNKNOWN");
        }
        let mut recorder = Recorder::new(Arc::clone(&self.metrics), labels, started)
            .with_access_log(access)
            .with_span(span);
        if trailers_only.is_some() || hyper::body::Body::is_end_stream(response.body()) {
            recorder.finish(None);
            return response;
        }
        response.map(|body| {
            Metered {
                inner: body,
                recorder,
                grpc,
            }
            .boxed_unsync()
        })
    }

    async fn route_request(
        self: Arc<Self>,
        request: Request<Body>,
        remote: SocketAddr,
        serving: Arc<crate::live::Serving>,
        labels: &mut RequestLabels,
    ) -> Response<Body> {
        let grpc = is_grpc(request.headers());
        let path = request.uri().path().to_owned();
        if grpc && path.starts_with("/grpc.health.v1.Health/") {
            use tower::ServiceExt as _;
            return match self
                .health
                .clone()
                .oneshot(request.map(tonic::body::Body::new))
                .await
            {
                Ok(response) => response.map(|body| body.map_err(Into::into).boxed_unsync()),
                Err(never) => match never {},
            };
        }
        let fail = |code: tonic::Code, status: StatusCode, message: &str| {
            if grpc {
                grpc_error(code, message)
            } else {
                http_error(status, message)
            }
        };
        let max_body_bytes = serving.config.max_request_body_bytes;
        let route = {
            let headers = request.headers();
            let lookup = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
            serving.routes.select(RequestFacts {
                method: request.method().as_str(),
                host: request
                    .uri()
                    .authority()
                    .map(http::uri::Authority::as_str)
                    .or_else(|| lookup("host")),
                grpc,
                path: &path,
                header: &lookup,
            })
        };
        let Some(route) = route else {
            return fail(
                tonic::Code::Unimplemented,
                StatusCode::NOT_FOUND,
                "no route",
            );
        };
        labels.route = route.name().to_owned();
        let destination = route.destination_for(crate::balance::random());
        let cluster = destination.cluster;
        labels.cluster = cluster.to_owned();
        let mut subject = None;
        if let Some(role) = route.auth {
            match self.authorize(request.headers(), role) {
                Ok(who) => subject = Some(who),
                Err((code, status, message)) => {
                    self.metrics
                        .auth_denied
                        .get_or_create(&RouteLabels {
                            route: route.name().to_owned(),
                        })
                        .inc();
                    tracing::info!(
                        target: "audit",
                        decision = "denied",
                        path = %path,
                        client = %remote.ip(),
                        reason = %message,
                        "request refused"
                    );
                    return fail(code, status, &message);
                }
            }
        }
        if let Some(policy) = &route.rate_limit {
            // The token's subject where the route checked one, else the peer's address.
            let client = subject.clone().unwrap_or_else(|| remote.ip().to_string());
            match serving
                .limiters
                .check(policy, &client, &self.shared_limits)
                .await
            {
                crate::ratelimit::Decision::Allowed => {}
                crate::ratelimit::Decision::Limited(wait) => {
                    self.metrics
                        .rate_limited
                        .get_or_create(&RouteLabels {
                            route: route.name().to_owned(),
                        })
                        .inc();
                    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                    let message = format!("rate limit {policy:?} reached; retry in {seconds} s");
                    let mut response = fail(
                        tonic::Code::ResourceExhausted,
                        StatusCode::TOO_MANY_REQUESTS,
                        &message,
                    );
                    response
                        .headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
                    return response;
                }
                crate::ratelimit::Decision::Unavailable => {
                    return fail(
                        tonic::Code::Unavailable,
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the rate limiter is unavailable",
                    );
                }
            }
        }
        // Mutating calls are audited: the platform's own mutating RPCs (the protos'
        // idempotency level), and any non-read method on a route that checks tokens.
        let mutating = if grpc {
            self.catalog.known.contains(&path) && !self.catalog.idempotent.contains(&path)
        } else {
            route.auth.is_some()
                && !matches!(
                    *request.method(),
                    Method::GET | Method::HEAD | Method::OPTIONS
                )
        };
        if mutating && (route.auth.is_some() || grpc) {
            tracing::info!(
                target: "audit",
                decision = "allowed",
                method = %request.method(),
                path = %path,
                subject = subject.as_deref().unwrap_or("anonymous"),
                client = %remote.ip(),
                route = route.name(),
                "mutating call"
            );
        }
        if !grpc && is_upgrade(&request) {
            return self
                .tunnel(request, destination, remote, route.timeout)
                .await;
        }
        let deadline = grpc_timeout(request.headers())
            .map_or(route.timeout, |timeout| timeout.min(route.timeout));
        let idempotent = route.retry.idempotent
            && if grpc {
                self.catalog.idempotent.contains(&path)
            } else {
                matches!(
                    *request.method(),
                    Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
                )
            };
        let small = if grpc {
            self.catalog.unary.contains(&path)
        } else {
            request
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<usize>().ok())
                .is_some_and(|length| length <= RETRY_BUFFER_BYTES)
                || *request.method() == Method::GET
                || *request.method() == Method::HEAD
        };
        let declared = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|length| length > max_body_bytes as u64) {
            return fail(
                tonic::Code::ResourceExhausted,
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("request body larger than {max_body_bytes} bytes"),
            );
        }
        let (mut parts, body) = request.into_parts();
        // A body without a declared length is cut at the limit; the upstream sees an
        // error and the client a reset, and no more than the limit is ever read.
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let body = Capped {
            inner: http_body_util::Limited::new(body, max_body_bytes),
            cut: Arc::clone(&cut),
        };
        let mut prepared = if small {
            match buffer(body).await {
                Ok(prepared) => prepared,
                Err(error) if error.is::<http_body_util::LengthLimitError>() => {
                    return fail(
                        tonic::Code::ResourceExhausted,
                        StatusCode::PAYLOAD_TOO_LARGE,
                        &format!("request body larger than {max_body_bytes} bytes"),
                    );
                }
                Err(error) => {
                    return fail(
                        tonic::Code::InvalidArgument,
                        StatusCode::BAD_REQUEST,
                        &format!("reading the request: {error}"),
                    );
                }
            }
        } else {
            Prepared::Streamed(body.boxed_unsync())
        };
        strip_hop_by_hop(&mut parts.headers);
        set_forwarded(
            &mut parts.headers,
            remote,
            parts.extensions.get::<Secure>().is_some(),
        );
        self.budget.deposit();

        let attempt = async {
            let mut tried: Vec<Arc<Backend>> = Vec::new();
            let mut retries = 0_u32;
            // Why the last endpoint could not take the request, when it was full.
            let mut overflowed: Option<String> = None;
            loop {
                if retries > 0 {
                    let wait = route.retry.backoff_for(retries, crate::balance::random());
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                    }
                }
                let balancers = Arc::clone(&self.balancers.borrow());
                let limit = serving.config.max_requests(cluster);
                if limit != 0 && balancers.open_requests(cluster) >= limit {
                    self.metrics
                        .overflow
                        .get_or_create(&ClusterLabels {
                            cluster: cluster.to_owned(),
                        })
                        .inc();
                    return fail(
                        tonic::Code::Unavailable,
                        StatusCode::SERVICE_UNAVAILABLE,
                        &format!("{cluster} has {limit} requests open, its limit"),
                    );
                }
                let policy = serving.config.load_balancing_for(cluster);
                let Some(backend) =
                    balancers.pick_with(cluster, destination.subset, &tried, policy)
                else {
                    let message = match (&overflowed, tried.is_empty()) {
                        (_, true) => format!("no healthy endpoint for {cluster}"),
                        (Some(overflow), false) => overflow.clone(),
                        (None, false) => format!("every endpoint of {cluster} failed"),
                    };
                    return fail(
                        tonic::Code::Unavailable,
                        StatusCode::SERVICE_UNAVAILABLE,
                        &message,
                    );
                };
                tried.push(Arc::clone(&backend));
                let replayable = prepared.replayable();
                let Some(upstream) =
                    upstream_request(&mut prepared, &parts, &backend.endpoint.address, grpc)
                else {
                    return fail(
                        tonic::Code::Unavailable,
                        StatusCode::BAD_GATEWAY,
                        "the request body was already sent",
                    );
                };
                let cluster_labels = ClusterLabels {
                    cluster: cluster.to_owned(),
                };
                let per_try = route.retry.per_try_timeout;
                let first = self.try_once(backend, upstream, grpc, per_try);
                let hedge = route
                    .retry
                    .hedge_after
                    .filter(|_| idempotent && replayable && retries < route.retry.max_retries);
                let (backend, guard, answered) = match hedge {
                    None => first.await,
                    Some(delay) => {
                        tokio::pin!(first);
                        tokio::select! {
                            done = &mut first => done,
                            () = tokio::time::sleep(delay) => {
                                // Slow: a second try elsewhere, if the budget allows.
                                let second = balancers
                                    .pick_with(cluster, destination.subset, &tried, policy)
                                    .filter(|_| self.budget.withdraw())
                                    .and_then(|other| {
                                        let request = upstream_request(
                                            &mut prepared,
                                            &parts,
                                            &other.endpoint.address,
                                            grpc,
                                        )?;
                                        Some((other, request))
                                    });
                                match second {
                                    None => first.await,
                                    Some((other, request)) => {
                                        tried.push(Arc::clone(&other));
                                        retries += 1;
                                        self.metrics.hedges.get_or_create(&cluster_labels).inc();
                                        let second = self.try_once(other, request, grpc, per_try);
                                        tokio::pin!(second);
                                        // The first good answer wins; the other try is
                                        // cancelled when its future is dropped.
                                        tokio::select! {
                                            a = &mut first => if good(&a.2, grpc) { a } else { second.await },
                                            b = &mut second => if good(&b.2, grpc) { b } else { first.await },
                                        }
                                    }
                                }
                            }
                        }
                    }
                };
                let retries_left = retries < route.retry.max_retries;
                let can_retry = |reached: bool| {
                    if !(retries_left && replayable && (!reached || idempotent)) {
                        return false;
                    }
                    if self.budget.withdraw() {
                        self.metrics.retries.get_or_create(&cluster_labels).inc();
                        true
                    } else {
                        self.metrics
                            .budget_exhausted
                            .get_or_create(&cluster_labels)
                            .inc();
                        false
                    }
                };
                let outcome = Outcome {
                    backend: Arc::clone(&backend),
                    balancers: Arc::clone(&balancers),
                    cluster: cluster_labels.clone(),
                    policy: serving.config.outlier_detection,
                    metrics: Arc::clone(&self.metrics),
                };
                match answered {
                    Ok(mut response) => {
                        let trailers_only = response.headers().get("grpc-status");
                        if grpc {
                            if let Some(code) = trailers_only {
                                outcome.report(grpc_failure(code.as_bytes()));
                            }
                        } else {
                            outcome.report(response.status().is_server_error());
                        }
                        let unavailable = grpc
                            && response
                                .headers()
                                .get("grpc-status")
                                .is_some_and(|status| status.as_bytes() == b"14");
                        let overloaded = !grpc
                            && matches!(
                                response.status(),
                                StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE
                            );
                        if (unavailable || overloaded) && can_retry(true) {
                            retries += 1;
                            continue;
                        }
                        strip_hop_by_hop(response.headers_mut());
                        // A gRPC answer's status comes in its trailers: judged there.
                        let pending = (grpc && response.headers().get("grpc-status").is_none())
                            .then_some(outcome);
                        return response.map(|body| {
                            Tracked {
                                inner: body,
                                _guard: guard,
                                outcome: pending,
                            }
                            .map_err(Into::into)
                            .boxed_unsync()
                        });
                    }
                    Err(TryError::Timeout(after)) => {
                        outcome.report(true);
                        tracing::debug!(endpoint = %backend.endpoint.id, ?after, "upstream try timed out");
                        if can_retry(true) {
                            retries += 1;
                            continue;
                        }
                        return fail(
                            tonic::Code::DeadlineExceeded,
                            StatusCode::GATEWAY_TIMEOUT,
                            &format!(
                                "upstream {} did not answer within {}",
                                backend.endpoint.id,
                                humantime::format_duration(after)
                            ),
                        );
                    }
                    Err(TryError::Upstream(error))
                        if crate::connect::overflow_in(&error).is_some() =>
                    {
                        // The endpoint is at its connection limits: not its fault (no
                        // ejection); another endpoint may have room.
                        self.metrics.overflow.get_or_create(&cluster_labels).inc();
                        let message = crate::connect::overflow_in(&error)
                            .map_or_else(String::new, ToString::to_string);
                        if can_retry(false) {
                            overflowed = Some(message);
                            retries += 1;
                            continue;
                        }
                        return fail(
                            tonic::Code::Unavailable,
                            StatusCode::SERVICE_UNAVAILABLE,
                            &message,
                        );
                    }
                    Err(TryError::Upstream(error)) => {
                        let reached = !error.is_connect();
                        if reached {
                            outcome.report(true);
                        } else {
                            // Unreachable: ejected at once below.
                            outcome.count(true);
                        }
                        if !reached {
                            if !backend.ejected() {
                                self.metrics.ejections.get_or_create(&cluster_labels).inc();
                            }
                            backend.unreachable(&serving.config.outlier_detection);
                        }
                        tracing::debug!(%error, endpoint = %backend.endpoint.id, reached, "upstream try failed");
                        if cut.load(std::sync::atomic::Ordering::Relaxed) {
                            return fail(
                                tonic::Code::ResourceExhausted,
                                StatusCode::PAYLOAD_TOO_LARGE,
                                &format!("request body larger than {max_body_bytes} bytes"),
                            );
                        }
                        if can_retry(reached) {
                            retries += 1;
                            continue;
                        }
                        return fail(
                            tonic::Code::Unavailable,
                            StatusCode::BAD_GATEWAY,
                            &format!("upstream {} failed", backend.endpoint.id),
                        );
                    }
                }
            }
        };
        match tokio::time::timeout(deadline, attempt).await {
            Ok(response) => response,
            Err(_) => fail(
                tonic::Code::DeadlineExceeded,
                StatusCode::GATEWAY_TIMEOUT,
                "deadline exceeded before the upstream answered",
            ),
        }
    }
}

impl Proxy {
    /// Forwards a protocol switch (a WebSocket handshake) to one endpoint of `cluster`
    /// and, once the upstream answers `101 Switching Protocols`, joins the two upgraded
    /// connections byte for byte until either side closes. The handshake gets
    /// `timeout`; the tunnel none. An upstream that declines the switch is answered as
    /// it answered.
    async fn tunnel(
        &self,
        mut request: Request<Body>,
        destination: crate::route::Destination<'_>,
        remote: SocketAddr,
        timeout: Duration,
    ) -> Response<Body> {
        let balancers = Arc::clone(&self.balancers.borrow());
        let Some(backend) = balancers.pick_in(destination.cluster, destination.subset, &[]) else {
            return http_error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("no healthy endpoint for {}", destination.cluster),
            );
        };
        let downstream = hyper::upgrade::on(&mut request);
        let (mut parts, body) = request.into_parts();
        let protocol = parts.headers.get(header::UPGRADE).cloned();
        strip_hop_by_hop(&mut parts.headers);
        set_forwarded(
            &mut parts.headers,
            remote,
            parts.extensions.get::<Secure>().is_some(),
        );
        if let Some(protocol) = protocol {
            parts.headers.insert(header::UPGRADE, protocol);
            parts
                .headers
                .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        }
        let Some(uri) = upstream_uri(&backend.endpoint.address, &parts) else {
            return http_error(StatusCode::BAD_GATEWAY, "bad upstream address");
        };
        if let Some(authority) = uri
            .authority()
            .and_then(|authority| HeaderValue::from_str(authority.as_str()).ok())
        {
            parts.headers.insert(header::HOST, authority);
        }
        parts.uri = uri;
        let guard = backend.start();
        let sent = tokio::time::timeout(timeout, self.h1.request(Request::from_parts(parts, body)));
        let mut response = match sent.await {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => {
                if error.is_connect() {
                    backend.unreachable(&self.live.load().config.outlier_detection);
                }
                tracing::debug!(%error, endpoint = %backend.endpoint.id, "upgrade failed");
                return http_error(
                    StatusCode::BAD_GATEWAY,
                    &format!("upstream {} failed", backend.endpoint.id),
                );
            }
            Err(_) => {
                return http_error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "the upstream did not answer the upgrade in time",
                );
            }
        };
        backend.answered();
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            strip_hop_by_hop(response.headers_mut());
            return response.map(boxed);
        }
        let upstream = hyper::upgrade::on(&mut response);
        let endpoint = backend.endpoint.id.clone();
        tokio::spawn(async move {
            let _guard = guard;
            match tokio::try_join!(downstream, upstream) {
                Ok((downstream, upstream)) => {
                    let mut downstream = TokioIo::new(downstream);
                    let mut upstream = TokioIo::new(upstream);
                    if let Err(error) =
                        tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await
                    {
                        tracing::debug!(%error, %endpoint, "tunnel ended with an error");
                    }
                }
                Err(error) => tracing::debug!(%error, %endpoint, "upgrade did not complete"),
            }
        });
        // The 101 keeps its `Connection` and `Upgrade` headers: they are the answer.
        response.map(|_| empty())
    }
}

impl Proxy {
    /// Checks the bearer token against the route's least role.
    fn authorize(
        &self,
        headers: &HeaderMap,
        role: Role,
    ) -> Result<String, (tonic::Code, StatusCode, String)> {
        let unauthenticated = |message: String| {
            (
                tonic::Code::Unauthenticated,
                StatusCode::UNAUTHORIZED,
                message,
            )
        };
        let token = headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| unauthenticated(format!("this route needs a {} token", role.as_str())))?
            .to_str()
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or_else(|| unauthenticated("authorization must be `Bearer <token>`".to_owned()))?;
        let identity = self.verifier.verify(token.trim()).map_err(|rejected| {
            if rejected.0 == omnimesh_common::auth::KEYS_NOT_LOADED {
                // The identity provider has not answered yet: an outage, not a bad token.
                (
                    tonic::Code::Unavailable,
                    StatusCode::SERVICE_UNAVAILABLE,
                    rejected.0,
                )
            } else {
                unauthenticated(rejected.0)
            }
        })?;
        if identity.role < role {
            return Err((
                tonic::Code::PermissionDenied,
                StatusCode::FORBIDDEN,
                format!(
                    "{} is a {}; this route needs {}",
                    identity.subject,
                    identity.role.as_str(),
                    role.as_str()
                ),
            ));
        }
        Ok(identity.subject)
    }
}

pin_project_lite::pin_project! {
    /// A response body that records its request in the metrics when it ends: the gRPC
    /// status from its trailers, or `UNKNOWN` when a gRPC response ends without them.
    struct Metered<B> {
        #[pin]
        inner: B,
        recorder: Recorder,
        grpc: bool,
    }
}

impl<B: hyper::body::Body<Data = Bytes>> hyper::body::Body for Metered<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = std::task::ready!(this.inner.poll_frame(cx));
        match &polled {
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let code = trailers
                        .get("grpc-status")
                        .map_or("UNKNOWN", |value| grpc_code_name(value.as_bytes()));
                    this.recorder.finish(Some(code));
                }
            }
            Some(Err(_)) => this
                .recorder
                .finish(Some(if *this.grpc { "UNKNOWN" } else { "" })),
            None => this.recorder.finish(None),
        }
        std::task::Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// Why a try produced no response.
enum TryError {
    /// The client failed: connecting, sending, or reading the head.
    Upstream(hyper_util::client::legacy::Error),
    /// No answer within the per-try timeout.
    Timeout(Duration),
}

/// What one try produced: its endpoint, the endpoint's in-flight guard, the answer.
type Tried = (
    Arc<Backend>,
    crate::balance::InFlight,
    Result<Response<Incoming>, TryError>,
);

/// Whether an answer is good enough to win a hedge race.
fn good(answer: &Result<Response<Incoming>, TryError>, grpc: bool) -> bool {
    match answer {
        Ok(response) if grpc => response
            .headers()
            .get("grpc-status")
            .is_none_or(|code| !grpc_failure(code.as_bytes())),
        Ok(response) => !response.status().is_server_error(),
        Err(_) => false,
    }
}

/// The request for one try at `address`: the prepared body (a copy when buffered), the
/// URI on the endpoint, HTTP/2 for gRPC, else HTTP/1.1 with the upstream's `Host`.
/// `None` when the body was streamed to an earlier try already.
fn upstream_request(
    prepared: &mut Prepared,
    parts: &http::request::Parts,
    address: &str,
    grpc: bool,
) -> Option<Request<Body>> {
    let body = prepared.body()?;
    let mut upstream = Request::from_parts(parts.clone(), body);
    *upstream.uri_mut() = upstream_uri(address, parts)?;
    // The upstream is addressed by its own name (a mesh sidecar in front of it routes on
    // it); the client's host travels in `x-forwarded-host`. HTTP/2 carries it in
    // `:authority`, from the URI, so no `host` header goes along.
    if grpc {
        *upstream.version_mut() = Version::HTTP_2;
        upstream.headers_mut().remove(header::HOST);
    } else {
        *upstream.version_mut() = Version::HTTP_11;
        let host = upstream
            .uri()
            .authority()
            .and_then(|authority| HeaderValue::from_str(authority.as_str()).ok());
        if let Some(host) = host {
            upstream.headers_mut().insert(header::HOST, host);
        }
    }
    Some(upstream)
}

impl Proxy {
    /// Sends one try to `backend`, holding its in-flight count, within `per_try`.
    async fn try_once(
        &self,
        backend: Arc<Backend>,
        request: Request<Body>,
        grpc: bool,
        per_try: Option<Duration>,
    ) -> Tried {
        let guard = backend.start();
        let sent = if grpc {
            self.h2.request(request)
        } else {
            self.h1.request(request)
        };
        let answered = match per_try {
            None => sent.await.map_err(TryError::Upstream),
            Some(limit) => match tokio::time::timeout(limit, sent).await {
                Ok(answered) => answered.map_err(TryError::Upstream),
                Err(_) => Err(TryError::Timeout(limit)),
            },
        };
        (backend, guard, answered)
    }
}

/// gRPC codes that count against an endpoint: DEADLINE_EXCEEDED, INTERNAL, UNAVAILABLE.
fn grpc_failure(code: &[u8]) -> bool {
    matches!(code, b"4" | b"13" | b"14")
}

/// How one try went, reported once to its endpoint's outlier detection.
struct Outcome {
    backend: Arc<Backend>,
    balancers: Arc<Balancers>,
    cluster: ClusterLabels,
    policy: crate::balance::OutlierDetection,
    metrics: Arc<GatewayMetrics>,
}

impl Outcome {
    /// Counts the try in the endpoint's metrics.
    fn count(&self, failed: bool) {
        let (succeeded, failures) = self.backend.counters.get_or_init(|| {
            let counter = |result| {
                self.metrics.endpoint_requests.get_or_create_owned(
                    &crate::metrics::EndpointLabels {
                        cluster: self.cluster.cluster.clone(),
                        endpoint: self.backend.endpoint.address.clone(),
                        result,
                    },
                )
            };
            (counter("success"), counter("failure"))
        });
        if failed {
            failures.inc();
        } else {
            succeeded.inc();
        }
    }

    /// Counts the try and tells outlier detection how it went.
    fn report(&self, failed: bool) {
        self.count(failed);
        if !failed {
            self.backend.answered();
            return;
        }
        let cluster = self.balancers.backends(&self.cluster.cluster);
        if self.backend.failed(&self.policy, cluster) {
            self.metrics.ejections.get_or_create(&self.cluster).inc();
            tracing::info!(
                endpoint = %self.backend.endpoint.id,
                failures = self.policy.consecutive_failures,
                "endpoint ejected after failed answers in a row"
            );
        }
    }
}

pin_project_lite::pin_project! {
    /// A response body that keeps its backend's in-flight count until it is done, and
    /// judges a gRPC answer by its trailers (or by breaking off without them).
    struct Tracked<B> {
        #[pin]
        inner: B,
        _guard: crate::balance::InFlight,
        outcome: Option<Outcome>,
    }
}

impl<B: hyper::body::Body<Data = Bytes>> hyper::body::Body for Tracked<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let polled = std::task::ready!(this.inner.poll_frame(cx));
        if this.outcome.is_some() {
            let verdict = match &polled {
                Some(Ok(frame)) => frame.trailers_ref().map(|trailers| {
                    trailers
                        .get("grpc-status")
                        .is_none_or(|code| grpc_failure(code.as_bytes()))
                }),
                Some(Err(_)) | None => Some(true),
            };
            if let Some(failed) = verdict
                && let Some(outcome) = this.outcome.take()
            {
                outcome.report(failed);
            }
        }
        std::task::Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

/// A gRPC-Web call: translated to gRPC by tonic-web (base64 text or binary, trailers
/// carried in the body on the way back), then routed like any gRPC call, so the same
/// routes, auth, metrics and retries apply.
async fn grpc_web(proxy: Arc<Proxy>, request: Request<Body>, remote: SocketAddr) -> Response<Body> {
    use tower::{Layer as _, ServiceExt as _};
    // tonic's own body type on both sides of the translation keeps the trait bounds
    // free of higher-ranked lifetimes.
    let inner = tower::service_fn(move |request: Request<tonic::body::Body>| {
        let proxy = Arc::clone(&proxy);
        async move {
            let response = proxy.handle(request.map(boxed), remote).await;
            Ok::<_, Infallible>(response.map(tonic::body::Body::new))
        }
    });
    let request = request.map(tonic::body::Body::new);
    match tonic_web::GrpcWebLayer::new()
        .layer(inner)
        .oneshot(request)
        .await
    {
        Ok(response) => response.map(boxed),
        Err(never) => match never {},
    }
}

/// How the data plane's connections are served.
#[derive(Clone)]
pub struct ConnectionLimits {
    /// How long open connections may finish after shutdown starts.
    pub drain: Duration,
    /// How long an HTTP/1.1 client may take to send a request's headers (and a TLS
    /// client to finish its handshake).
    pub header_read_timeout: Duration,
    /// TLS, when configured.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

impl std::fmt::Debug for ConnectionLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionLimits")
            .field("drain", &self.drain)
            .field("header_read_timeout", &self.header_read_timeout)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// Marks requests that arrived over TLS (for `x-forwarded-proto`).
#[derive(Debug, Clone, Copy)]
struct Secure;

/// The per-connection service: gRPC-Web through its translation, the rest straight to
/// [`Proxy::handle`].
fn service(
    proxy: Arc<Proxy>,
    remote: SocketAddr,
    secure: bool,
) -> impl hyper::service::Service<
    Request<Incoming>,
    Response = Response<Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Body>, Infallible>> + Send,
> + Clone {
    hyper::service::service_fn(move |request: Request<Incoming>| {
        let proxy = Arc::clone(&proxy);
        async move {
            let mut request = request.map(boxed);
            if secure {
                request.extensions_mut().insert(Secure);
            }
            Ok::<_, Infallible>(if is_grpc_web(request.headers()) {
                grpc_web(proxy, request, remote).await
            } else {
                proxy.handle(request, remote).await
            })
        }
    })
}

/// Accepts on `listener` until `shutdown` resolves, then lets open connections finish
/// for at most `limits.drain`.
///
/// # Errors
/// Never for a failed connection (it is logged); only when accepting fails for good.
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    shutdown: impl Future<Output = ()>,
    limits: ConnectionLimits,
) -> std::io::Result<()> {
    let ConnectionLimits {
        drain,
        header_read_timeout,
        tls,
    } = limits;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http2()
        .adaptive_window(true)
        .max_concurrent_streams(1024);
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, remote) = match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let connections = proxy.metrics.connections.clone();
                connections.inc();
                let service = service(Arc::clone(&proxy), remote, tls.is_some());
                let watcher = graceful.watcher();
                let builder = builder.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let served = match tls {
                        None => {
                            let connection = builder
                                .serve_connection_with_upgrades(TokioIo::new(stream), service);
                            watcher.watch(connection.into_owned()).await
                        }
                        Some(acceptor) => {
                            // The handshake gets the time a client has to send headers.
                            match tokio::time::timeout(header_read_timeout, acceptor.accept(stream)).await {
                                Ok(Ok(stream)) => {
                                    let connection = builder
                                        .serve_connection_with_upgrades(TokioIo::new(stream), service);
                                    watcher.watch(connection.into_owned()).await
                                }
                                Ok(Err(error)) => Err(error.into()),
                                Err(_) => Err("TLS handshake timed out".into()),
                            }
                        }
                    };
                    if let Err(error) = served {
                        tracing::debug!(%error, %remote, "connection ended with an error");
                    }
                    connections.dec();
                });
            }
        }
    }
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(?drain, "connections still open after the drain timeout");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streamed_body_is_sent_once_and_never_replayed() {
        let mut streamed = Prepared::Streamed(empty());
        assert!(!streamed.replayable());
        assert!(streamed.body().is_some());
        assert!(
            !streamed.replayable(),
            "a sent stream must not look replayable"
        );
        assert!(streamed.body().is_none());
        let mut buffered = Prepared::Buffered(Bytes::from_static(b"x"), None);
        assert!(buffered.body().is_some() && buffered.body().is_some());
        assert!(buffered.replayable());
    }

    #[test]
    fn grpc_timeouts_parse_and_refuse_nonsense() {
        let mut headers = HeaderMap::new();
        for (value, expected) in [
            ("100m", Some(Duration::from_millis(100))),
            ("2S", Some(Duration::from_secs(2))),
            ("1H", Some(Duration::from_secs(3600))),
            ("5u", Some(Duration::from_micros(5))),
            ("123456789m", None),
            ("m", None),
            ("10x", None),
            ("-1m", None),
        ] {
            headers.insert("grpc-timeout", HeaderValue::from_static(value));
            assert_eq!(grpc_timeout(&headers), expected, "{value}");
        }
    }

    #[test]
    fn hop_by_hop_headers_are_dropped_and_te_trailers_kept() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-private"),
        );
        headers.insert("x-private", HeaderValue::from_static("1"));
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        headers.insert("te", HeaderValue::from_static("trailers"));
        headers.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut headers);
        let mut names: Vec<&str> = headers.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["te", "x-kept"]);
        headers.insert("te", HeaderValue::from_static("gzip"));
        strip_hop_by_hop(&mut headers);
        assert!(headers.get("te").is_none());
    }

    #[test]
    fn the_catalog_reads_idempotency_from_our_protos() {
        let catalog = MethodCatalog::from_descriptor_set(omnimesh_proto::FILE_DESCRIPTOR_SET);
        assert!(
            catalog
                .idempotent
                .contains("/omnimesh.engine.v1.Engine/Echo")
        );
        assert!(
            catalog
                .idempotent
                .contains("/omnimesh.engine.v1.Engine/Decrypt")
        );
        assert!(
            !catalog
                .idempotent
                .contains("/omnimesh.engine.v1.Engine/CreateKey")
        );
        assert!(catalog.unary.contains("/omnimesh.engine.v1.Engine/Encrypt"));
        assert!(
            !catalog
                .unary
                .contains("/omnimesh.engine.v1.Engine/EncryptStream")
        );
        assert!(
            catalog
                .unary
                .contains("/omnimesh.controller.v1.Registry/Watch")
        );
    }
}
