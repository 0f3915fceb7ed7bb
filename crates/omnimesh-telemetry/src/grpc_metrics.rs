//! A tower layer that counts and times gRPC calls by method and status code.
//!
//! The status of a gRPC call is known only at its end: in the response headers for
//! a trailers-only answer (errors, `UNIMPLEMENTED`), otherwise in the trailers. The
//! layer therefore wraps the response body and records when the trailers pass by,
//! when the body ends without them, or when the client goes away first.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use tower::{Layer, Service};

use crate::Metrics;

/// The label set of one gRPC call; every value comes from a small fixed set.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    /// `/package.Service/Method` for methods this server knows, else `unknown`.
    method: String,
    /// The gRPC status code name, such as `OK` or `UNAVAILABLE`.
    code: &'static str,
}

/// Counters and histograms of the gRPC calls a server answers.
#[derive(Debug)]
pub struct GrpcMetrics {
    /// Index of each known method in `methods`.
    known_methods: HashMap<String, usize>,
    methods: Vec<KnownMethod>,
    requests: Family<CallLabels, Counter>,
    durations: Family<CallLabels, Histogram>,
}

/// A method this server knows, and its `OK` series once it has one: most calls end
/// `OK`, and these handles record them without building or hashing a label set.
#[derive(Debug)]
struct KnownMethod {
    path: String,
    ok: OnceLock<(Counter, Histogram)>,
}

/// Which method a call is for, as a label.
#[derive(Debug, Clone, Copy)]
enum MethodLabel {
    Known(usize),
    Unknown,
}

impl GrpcMetrics {
    /// Registers `grpc_requests_total` and `grpc_request_duration_seconds` in `metrics`.
    /// Only the paths in `known_methods` (`/pkg.Service/Method`) become label values,
    /// so a client cannot grow the label set.
    pub fn register(metrics: &mut Metrics, known_methods: HashSet<String>) -> Arc<Self> {
        let methods: Vec<KnownMethod> = known_methods
            .into_iter()
            .map(|path| KnownMethod {
                path,
                ok: OnceLock::new(),
            })
            .collect();
        let this = Self {
            known_methods: methods
                .iter()
                .enumerate()
                .map(|(index, method)| (method.path.clone(), index))
                .collect(),
            methods,
            requests: Family::default(),
            durations: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.000_05, 2.5, 14))
            }),
        };
        let registry = metrics.registry_mut();
        registry.register(
            "grpc_requests",
            "gRPC calls answered, by method and status code",
            this.requests.clone(),
        );
        registry.register(
            "grpc_request_duration_seconds",
            "Time from request to the end of the response, by method and status code",
            this.durations.clone(),
        );
        Arc::new(this)
    }

    fn method_label(&self, path: &str) -> MethodLabel {
        self.known_methods
            .get(path)
            .map_or(MethodLabel::Unknown, |&index| MethodLabel::Known(index))
    }

    fn record(&self, method: MethodLabel, code: &'static str, started: Instant) {
        let elapsed = started.elapsed().as_secs_f64();
        let known = match method {
            MethodLabel::Known(index) => self.methods.get(index),
            MethodLabel::Unknown => None,
        };
        let series = |method: &str| {
            let labels = CallLabels {
                method: method.to_owned(),
                code,
            };
            (
                self.requests.get_or_create(&labels).clone(),
                self.durations.get_or_create(&labels).clone(),
            )
        };
        let record = |(requests, durations): &(Counter, Histogram)| {
            requests.inc();
            durations.observe(elapsed);
        };
        match known {
            // Through the kept handles: no clone, no lock.
            Some(known) if code == "OK" => record(known.ok.get_or_init(|| series(&known.path))),
            Some(known) => record(&series(&known.path)),
            None => record(&series("unknown")),
        }
    }
}

/// Wraps a gRPC server so that [`GrpcMetrics`] sees every call.
#[derive(Debug, Clone)]
pub struct GrpcMetricsLayer {
    metrics: Option<Arc<GrpcMetrics>>,
}

impl GrpcMetricsLayer {
    /// A layer recording into `metrics`.
    pub fn new(metrics: Arc<GrpcMetrics>) -> Self {
        Self {
            metrics: Some(metrics),
        }
    }

    /// A layer that records nothing, for listeners whose metrics are kept elsewhere.
    pub fn disabled() -> Self {
        Self { metrics: None }
    }
}

impl<S> Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service produced by [`GrpcMetricsLayer`].
#[derive(Debug, Clone)]
pub struct GrpcMetricsService<S> {
    inner: S,
    metrics: Option<Arc<GrpcMetrics>>,
}

/// What a call needs to be recorded once its status is known.
#[derive(Debug)]
struct Pending {
    metrics: Arc<GrpcMetrics>,
    method: MethodLabel,
    started: Instant,
}

impl Pending {
    fn finish(self, code: &'static str) {
        self.metrics.record(self.method, code, self.started);
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for GrpcMetricsService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<MeteredBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let is_grpc = request
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|value| value.as_bytes().starts_with(b"application/grpc"));
        let pending = match &self.metrics {
            Some(metrics) if is_grpc => Some(Pending {
                metrics: Arc::clone(metrics),
                method: metrics.method_label(request.uri().path()),
                started: Instant::now(),
            }),
            _ => None,
        };
        ResponseFuture {
            inner: self.inner.call(request),
            pending,
        }
    }
}

pin_project! {
    /// The future of [`GrpcMetricsService`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        pending: Option<Pending>,
    }
}

impl<F, ResBody, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<MeteredBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let pending = this.pending.take();
        Poll::Ready(match result {
            Ok(response) => {
                let pending = match (pending, grpc_code(response.headers())) {
                    // A trailers-only response carries its status in the headers.
                    (Some(pending), Some(code)) => {
                        pending.finish(code);
                        None
                    }
                    (pending, _) => pending,
                };
                Ok(response.map(|inner| MeteredBody { inner, pending }))
            }
            Err(error) => {
                if let Some(pending) = pending {
                    pending.finish("INTERNAL");
                }
                Err(error)
            }
        })
    }
}

pin_project! {
    /// A response body that records the call when its trailers pass by.
    pub struct MeteredBody<B> {
        #[pin]
        inner: B,
        pending: Option<Pending>,
    }

    impl<B> PinnedDrop for MeteredBody<B> {
        fn drop(this: Pin<&mut Self>) {
            // The client went away (or the server dropped the body) before the end.
            if let Some(pending) = this.project().pending.take() {
                pending.finish("CANCELLED");
            }
        }
    }
}

impl<B: Body> Body for MeteredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        if let Some(pending) = this.pending.take() {
            match &frame {
                Some(Ok(frame)) => match frame.trailers_ref() {
                    Some(trailers) => pending.finish(grpc_code(trailers).unwrap_or("UNKNOWN")),
                    None => *this.pending = Some(pending),
                },
                Some(Err(_)) => pending.finish("INTERNAL"),
                None => pending.finish("UNKNOWN"),
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The name of the `grpc-status` in `headers`, if there is one.
fn grpc_code(headers: &HeaderMap) -> Option<&'static str> {
    headers
        .get("grpc-status")
        .map(|value| grpc_code_name(value.as_bytes()))
}

/// The name of a `grpc-status` value, such as `OK` or `UNAVAILABLE` (`UNKNOWN` for
/// anything that is not a status code).
pub fn grpc_code_name(value: &[u8]) -> &'static str {
    match value {
        b"0" => "OK",
        b"1" => "CANCELLED",
        b"2" => "UNKNOWN",
        b"3" => "INVALID_ARGUMENT",
        b"4" => "DEADLINE_EXCEEDED",
        b"5" => "NOT_FOUND",
        b"6" => "ALREADY_EXISTS",
        b"7" => "PERMISSION_DENIED",
        b"8" => "RESOURCE_EXHAUSTED",
        b"9" => "FAILED_PRECONDITION",
        b"10" => "ABORTED",
        b"11" => "OUT_OF_RANGE",
        b"12" => "UNIMPLEMENTED",
        b"13" => "INTERNAL",
        b"14" => "UNAVAILABLE",
        b"15" => "DATA_LOSS",
        b"16" => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use bytes::Bytes;
    use http_body_util::{BodyExt as _, Full, StreamBody};
    use tower::{ServiceExt as _, service_fn};

    use super::*;

    const METHOD: &str = "/omnimesh.engine.v1.Engine/Hash";

    fn setup() -> (Metrics, GrpcMetricsLayer) {
        let mut metrics = Metrics::new("core-engine", "0.0.0");
        let grpc = GrpcMetrics::register(&mut metrics, HashSet::from([METHOD.to_owned()]));
        (metrics, GrpcMetricsLayer::new(grpc))
    }

    fn grpc_request(path: &str) -> Request<Full<Bytes>> {
        Request::builder()
            .uri(path)
            .header("content-type", "application/grpc")
            .body(Full::new(Bytes::new()))
            .unwrap()
    }

    #[tokio::test]
    async fn trailers_only_status_is_counted_from_headers() {
        let (metrics, layer) = setup();
        let service = layer.layer(service_fn(|_request: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(
                Response::builder()
                    .header("grpc-status", "12")
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
        }));
        let response = service.oneshot(grpc_request(METHOD)).await.unwrap();
        response.into_body().collect().await.unwrap();
        let text = metrics.encode();
        assert!(
            text.contains(&format!(
                "omnimesh_core_engine_grpc_requests_total{{method=\"{METHOD}\",code=\"UNIMPLEMENTED\"}} 1"
            )),
            "{text}"
        );
    }

    #[tokio::test]
    async fn status_in_trailers_is_counted_and_unknown_paths_are_folded() {
        let (metrics, layer) = setup();
        let service = layer.layer(service_fn(|_request: Request<Full<Bytes>>| async {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", "14".parse().unwrap());
            let frames = futures_frames(vec![
                Frame::data(Bytes::from_static(b"x")),
                Frame::trailers(trailers),
            ]);
            Ok::<_, Infallible>(Response::new(StreamBody::new(frames)))
        }));
        let response = service
            .oneshot(grpc_request("/evil/attacker-chosen-1"))
            .await
            .unwrap();
        response.into_body().collect().await.unwrap();
        let text = metrics.encode();
        assert!(
            text.contains(
                "omnimesh_core_engine_grpc_requests_total{method=\"unknown\",code=\"UNAVAILABLE\"} 1"
            ),
            "{text}"
        );
        assert!(!text.contains("attacker"), "{text}");
    }

    #[tokio::test]
    async fn body_dropped_before_the_end_counts_as_cancelled() {
        let (metrics, layer) = setup();
        let service = layer.layer(service_fn(|_request: Request<Full<Bytes>>| async {
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"x"))))
        }));
        let response = service.oneshot(grpc_request(METHOD)).await.unwrap();
        drop(response);
        assert!(metrics.encode().contains("code=\"CANCELLED\"} 1"));
    }

    #[tokio::test]
    async fn ok_calls_share_one_series_per_method_with_the_other_codes_beside_it() {
        let (metrics, layer) = setup();
        for status in ["0", "0", "5", "0"] {
            let service = layer.clone().layer(service_fn(
                move |_request: Request<Full<Bytes>>| async move {
                    let mut trailers = HeaderMap::new();
                    trailers.insert("grpc-status", status.parse().unwrap());
                    let frames = futures_frames(vec![
                        Frame::data(Bytes::from_static(b"x")),
                        Frame::trailers(trailers),
                    ]);
                    Ok::<_, Infallible>(Response::new(StreamBody::new(frames)))
                },
            ));
            let response = service.oneshot(grpc_request(METHOD)).await.unwrap();
            response.into_body().collect().await.unwrap();
        }
        let text = metrics.encode();
        for expected in [
            format!(
                "omnimesh_core_engine_grpc_requests_total{{method=\"{METHOD}\",code=\"OK\"}} 3"
            ),
            format!(
                "omnimesh_core_engine_grpc_requests_total{{method=\"{METHOD}\",code=\"NOT_FOUND\"}} 1"
            ),
            format!(
                "omnimesh_core_engine_grpc_request_duration_seconds_count{{method=\"{METHOD}\",code=\"OK\"}} 3"
            ),
        ] {
            assert!(text.contains(&expected), "{expected} in {text}");
        }
        // One series, not one per handle.
        assert_eq!(
            text.matches("grpc_requests_total{method=").count(),
            2,
            "{text}"
        );
    }

    fn futures_frames(
        frames: Vec<Frame<Bytes>>,
    ) -> impl futures::Stream<Item = Result<Frame<Bytes>, Infallible>> {
        futures::stream::iter(frames.into_iter().map(Ok))
    }
}
