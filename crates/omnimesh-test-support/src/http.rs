//! A minimal HTTP/1.1 client for probing `/healthz`, `/readyz` and `/metrics`.

use std::net::SocketAddr;

use anyhow::Context as _;
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// The status and body of an HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The body, as UTF-8 (lossy).
    pub body: String,
}

/// `GET path` over a fresh HTTP/1.1 connection to `addr`.
///
/// # Errors
/// When the connection or the exchange fails.
pub async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<Response> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .context("HTTP/1.1 handshake")?;
    let driver = tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        .body(Empty::<Bytes>::new())
        .context("building the request")?;
    let response = sender
        .send_request(request)
        .await
        .with_context(|| format!("GET {path}"))?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .context("reading the body")?
        .to_bytes();
    driver.abort();
    Ok(Response {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// Asserts that `/healthz` and `/readyz` answer 200 and `/metrics` carries the service's
/// `build_info` (prefix `omnimesh_<service>_`); returns the metrics text.
///
/// # Panics
/// When a probe fails; the message says which.
pub async fn assert_probes(addr: SocketAddr, metric_prefix: &str) -> String {
    let healthz = get(addr, "/healthz").await.unwrap();
    assert_eq!(
        (healthz.status, healthz.body.as_str()),
        (200, "ok\n"),
        "/healthz"
    );
    let readyz = get(addr, "/readyz").await.unwrap();
    assert_eq!(
        (readyz.status, readyz.body.as_str()),
        (200, "ready\n"),
        "/readyz"
    );
    let metrics = get(addr, "/metrics").await.unwrap();
    assert_eq!(metrics.status, 200, "/metrics");
    assert!(
        metrics
            .body
            .contains(&format!("{metric_prefix}_build_info{{version=")),
        "/metrics lacks {metric_prefix}_build_info:\n{}",
        metrics.body
    );
    metrics.body
}
