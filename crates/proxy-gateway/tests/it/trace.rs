//! W3C trace context through the gateway: an HTTP upstream reports the `traceparent`
//! it received; a client's trace continues under a new span id, a missing or invalid
//! one starts a new trace, and `tracestate` passes through.

use std::collections::BTreeMap;

use http_body_util::{BodyExt as _, Full};
use omnimesh_test_support::TestServer;
use proxy_gateway::route::Route;
use proxy_gateway::trace::TraceParent;
use proxy_gateway::{App, Config, Listeners};

/// An upstream answering with the `traceparent` and `tracestate` it got, one per line.
async fn reporting_upstream() -> std::net::SocketAddr {
    crate::support::http_upstream(|request: http::Request<_>| async move {
        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        crate::support::respond(
            200,
            format!("{}\n{}", header("traceparent"), header("tracestate")),
        )
    })
    .await
}

async fn send(gateway: std::net::SocketAddr, headers: &[(&str, &str)]) -> (String, String) {
    let stream = tokio::net::TcpStream::connect(gateway).await.unwrap();
    let mut sender = crate::support::http1(stream).await;
    let mut request = http::Request::get("/traced").header("host", "gateway");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = sender
        .send_request(request.body(Full::new(bytes::Bytes::new())).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8(body.to_vec()).unwrap();
    let (parent, state) = text.split_once('\n').unwrap();
    (parent.to_owned(), state.to_owned())
}

#[tokio::test]
async fn traces_continue_or_start_at_the_gateway() {
    let upstream = reporting_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_test(dir.path());
    config.upstreams.clusters = BTreeMap::from([("web".to_owned(), vec![upstream.to_string()])]);
    config.routes = Some(vec![Route::prefix("/", "web")]);
    let app = App::build(config).await.unwrap();
    let admin = omnimesh_test_support::bind().await;
    let server =
        TestServer::start(|http, shutdown| app.serve(Listeners { http, admin }, shutdown)).await;

    let client = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let (received, state) = send(
        server.addr(),
        &[("traceparent", client), ("tracestate", "vendor=abc")],
    )
    .await;
    let received = TraceParent::parse(received.as_bytes()).expect("a valid traceparent");
    let sent = TraceParent::parse(client.as_bytes()).unwrap();
    assert_eq!(
        received.trace_id, sent.trace_id,
        "the client's trace continues"
    );
    assert_ne!(
        received.span_id, sent.span_id,
        "under the gateway's own span"
    );
    assert_eq!(received.flags, 1);
    assert_eq!(state, "vendor=abc");

    for headers in [
        &[][..],
        &[(
            "traceparent",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        )][..],
        &[("traceparent", "garbage")][..],
    ] {
        let (received, _) = send(server.addr(), headers).await;
        let fresh = TraceParent::parse(received.as_bytes()).expect("a new valid traceparent");
        assert_ne!(fresh.trace_id, sent.trace_id);
    }
}
