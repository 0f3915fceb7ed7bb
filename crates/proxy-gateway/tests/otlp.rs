//! With an OTLP endpoint configured, the gateway exports one server span per request
//! to a real OTLP/gRPC collector (a tonic server on 127.0.0.1:0): a child of the
//! client's span, and the parent named in the `traceparent` the upstream receives.
//!
//! Its own test binary: telemetry installs the process-wide tracer.

use std::collections::BTreeMap;
use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use omnimesh_test_support::TestServer;
use proxy_gateway::route::Route;
use proxy_gateway::trace::TraceParent;
use proxy_gateway::{App, Config, Listeners};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_is_a_server_span_under_the_clients() {
    let (collector_address, mut received) = omnimesh_test_support::otlp::collector().await;

    // An upstream that answers with the traceparent it got.
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_address = upstream.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = upstream.accept().await {
            let service = hyper::service::service_fn(|request: http::Request<_>| async move {
                let parent = request.headers()["traceparent"].as_bytes().to_vec();
                Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                    bytes::Bytes::from(parent),
                )))
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });

    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_test(dir.path());
    config.telemetry.otlp_endpoint = Some(format!("http://{collector_address}"));
    config.upstreams.clusters =
        BTreeMap::from([("web".to_owned(), vec![upstream_address.to_string()])]);
    config.routes = Some(vec![Route::prefix("/", "web")]);
    let guard = omnimesh_telemetry::init("proxy-gateway", &config.telemetry).unwrap();
    let app = App::build(config).await.unwrap();
    let admin = omnimesh_test_support::bind().await;
    let server =
        TestServer::start(|http, shutdown| app.serve(Listeners { http, admin }, shutdown)).await;

    let client = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let stream = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let response = sender
        .send_request(
            http::Request::get("/traced")
                .header("host", "gateway")
                .header("traceparent", client)
                .body(Full::new(bytes::Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    let upstream_saw = response.into_body().collect().await.unwrap().to_bytes();
    let upstream_saw = TraceParent::parse(&upstream_saw).expect("a traceparent upstream");
    server.stop().await.unwrap();
    // Dropping the guard flushes the batch; it blocks, so not on a runtime worker.
    tokio::task::spawn_blocking(move || drop(guard))
        .await
        .unwrap();

    let sent = TraceParent::parse(client.as_bytes()).unwrap();
    let mut spans = Vec::new();
    while let Ok(Some(export)) =
        tokio::time::timeout(Duration::from_secs(20), received.recv()).await
    {
        spans.extend(
            export
                .resource_spans
                .into_iter()
                .flat_map(|resource| resource.scope_spans)
                .flat_map(|scope| scope.spans),
        );
        if spans.iter().any(|span| span.name == "GET /") {
            break;
        }
    }
    let span = spans
        .iter()
        .find(|span| span.name == "GET /")
        .unwrap_or_else(|| {
            panic!(
                "no gateway span among {:?}",
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            )
        });
    assert_eq!(span.trace_id, sent.trace_id);
    assert_eq!(
        span.parent_span_id, sent.span_id,
        "a child of the client's span"
    );
    assert_eq!(span.span_id, upstream_saw.span_id, "the upstream's parent");
    assert_eq!(upstream_saw.trace_id, sent.trace_id);
    let attribute = |key: &str| {
        span.attributes
            .iter()
            .find(|a| a.key == key)
            .and_then(|a| a.value.as_ref())
            .and_then(|v| v.value.clone())
    };
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    assert_eq!(
        attribute("http.response.status_code"),
        Some(Value::IntValue(200))
    );
    assert_eq!(
        attribute("http.route"),
        Some(Value::StringValue("/".into()))
    );
    assert_eq!(
        attribute("omnimesh.cluster"),
        Some(Value::StringValue("web".into()))
    );
}
