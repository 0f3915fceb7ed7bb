//! Hostile clients on the data plane: slow headers, oversized and too many headers,
//! garbage after the HTTP/2 preface. Each gets a clear refusal or a closed connection,
//! and the gateway keeps serving everyone else.

use std::time::{Duration, Instant};

use omnimesh_test_support::TestServer;
use proxy_gateway::{App, Config, Listeners};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tonic_health::pb::health_check_response::ServingStatus;

async fn gateway(dir: &std::path::Path) -> TestServer {
    let mut config = Config::for_test(dir);
    config.header_read_timeout = Duration::from_millis(300);
    let app = App::build(config).await.unwrap();
    let admin = omnimesh_test_support::bind().await;
    TestServer::start(|http, shutdown| app.serve(Listeners { http, admin }, shutdown)).await
}

/// Everything the gateway sends until it closes the connection; fails the test if it
/// keeps it open for 5 s.
async fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut received))
        .await
        .expect("the gateway closes the connection")
        .ok();
    received
}

async fn still_serving(server: &TestServer) {
    let status = omnimesh_test_support::grpc::health_status(server.channel().await, "")
        .await
        .unwrap();
    assert_eq!(status, ServingStatus::Serving);
}

#[tokio::test]
async fn slow_headers_are_cut_off() {
    let dir = tempfile::tempdir().unwrap();
    let server = gateway(dir.path()).await;
    let mut slow = TcpStream::connect(server.addr()).await.unwrap();
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let started = Instant::now();
    // Meanwhile others are served.
    still_serving(&server).await;
    let answer = read_until_closed(&mut slow).await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(200) && waited < Duration::from_secs(3),
        "closed after {waited:?}"
    );
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
        "{answer}"
    );
}

#[tokio::test]
async fn oversized_and_too_many_headers_get_431() {
    let dir = tempfile::tempdir().unwrap();
    let server = gateway(dir.path()).await;

    let huge = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let many = format!(
        "GET / HTTP/1.1\r\nHost: x\r\n{}\r\n",
        (0..500)
            .map(|i| format!("X-H{i}: v\r\n"))
            .collect::<String>()
    );
    for request in [huge, many] {
        let mut stream = TcpStream::connect(server.addr()).await.unwrap();
        // The gateway may stop reading (and close) before all of it is written.
        let _ = stream.write_all(request.as_bytes()).await;
        let answer = read_until_closed(&mut stream).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer:.200}");
    }
    still_serving(&server).await;
}

#[tokio::test]
async fn garbage_after_the_http2_preface_ends_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let server = gateway(dir.path()).await;
    let mut stream = TcpStream::connect(server.addr()).await.unwrap();
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    // An empty SETTINGS, then a HEADERS frame of 16 MiB on stream 0: both a size and a
    // protocol error.
    stream
        .write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
        .await
        .unwrap();
    let _ = stream
        .write_all(&[0xff, 0xff, 0xff, 1, 4, 0, 0, 0, 0])
        .await;
    let received = read_until_closed(&mut stream).await;
    // The server's frames: its SETTINGS first, and a GOAWAY (type 7) before it closes.
    let mut frame_types = Vec::new();
    let mut rest = received.as_slice();
    while rest.len() >= 9 {
        let length = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        frame_types.push(rest[3]);
        rest = &rest[(9 + length).min(rest.len())..];
    }
    assert!(frame_types.contains(&7), "no GOAWAY in {frame_types:?}");
    still_serving(&server).await;
}

/// A gateway routing the engine's calls to a real tonic Echo upstream.
async fn gateway_to_engine(dir: &std::path::Path) -> (TestServer, crate::proxy::Running) {
    let (engine, running) = crate::proxy::upstream("a");
    let mut config = Config::for_test(dir);
    config.upstreams.clusters =
        std::collections::BTreeMap::from([("core-engine".to_owned(), vec![engine.to_string()])]);
    let app = App::build(config).await.unwrap();
    let admin = omnimesh_test_support::bind().await;
    let server =
        TestServer::start(|http, shutdown| app.serve(Listeners { http, admin }, shutdown)).await;
    (server, running)
}

/// Sends `body` as a gRPC Echo call over HTTP/2; the gRPC status and message, from the
/// headers (trailers-only) or the trailers.
async fn raw_grpc(server: &TestServer, body: Vec<u8>) -> (String, String) {
    use http_body_util::BodyExt as _;
    let stream = TcpStream::connect(server.addr()).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let request = http::Request::post("http://gateway/omnimesh.engine.v1.Engine/Echo")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .expect("an answer within 10 s")
        .unwrap();
    let header = |map: &http::HeaderMap, name: &str| {
        map.get(name).map(|v| v.to_str().unwrap_or("").to_owned())
    };
    if let Some(status) = header(response.headers(), "grpc-status") {
        let message = header(response.headers(), "grpc-message").unwrap_or_default();
        return (status, message);
    }
    let collected = tokio::time::timeout(Duration::from_secs(10), response.into_body().collect())
        .await
        .expect("the body ends within 10 s")
        .unwrap();
    let trailers = collected.trailers().cloned().unwrap_or_default();
    (
        header(&trailers, "grpc-status").unwrap_or_else(|| "missing".into()),
        header(&trailers, "grpc-message").unwrap_or_default(),
    )
}

#[tokio::test]
async fn invalid_grpc_framing_gets_a_grpc_error_and_the_gateway_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _engine) = gateway_to_engine(dir.path()).await;
    let cases: [(&str, Vec<u8>); 4] = [
        // A frame announcing 100 bytes that carries 3.
        ("truncated frame", vec![0, 0, 0, 0, 100, 1, 2, 3]),
        // Half a frame header.
        ("short header", vec![0, 0]),
        // The compressed flag without a grpc-encoding.
        ("compressed without encoding", vec![1, 0, 0, 0, 0]),
        // A frame announcing 4 GiB − 1.
        ("huge length", vec![0, 0xff, 0xff, 0xff, 0xff, 0]),
    ];
    for (what, body) in cases {
        let (status, message) = raw_grpc(&server, body).await;
        assert!(
            status != "0" && status != "missing" && status.parse::<u8>().is_ok(),
            "{what}: grpc-status {status:?} ({message})"
        );
    }
    // A well-formed call still works.
    let mut good = Vec::from([0_u8, 0, 0, 0, 4]);
    good.extend_from_slice(&[10, 2, b'o', b'k']); // EchoRequest { payload: "ok" }
    let (status, _) = raw_grpc(&server, good).await;
    assert_eq!(status, "0");
    still_serving(&server).await;
}

#[tokio::test]
async fn invalid_grpc_web_text_is_refused_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _engine) = gateway_to_engine(dir.path()).await;
    let mut stream = TcpStream::connect(server.addr()).await.unwrap();
    let body = "!!!! not base64 ####";
    let request = format!(
        "POST /omnimesh.engine.v1.Engine/Echo HTTP/1.1\r\nHost: x\r\n\
         Content-Type: application/grpc-web-text\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let answer = read_until_closed(&mut stream).await;
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 200"), "{answer}");
    assert!(
        answer.contains("grpc-status: 13")
            || answer.contains("grpc-status:13")
            || answer.contains("grpc-status: 3"),
        "{answer}"
    );
    still_serving(&server).await;
}
