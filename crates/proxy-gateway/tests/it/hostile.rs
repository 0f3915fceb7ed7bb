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
