//! What the gateway's integration tests share: a gateway started from a `Config` with
//! its admin address, and plain HTTP/1.1 upstreams on 127.0.0.1:0.

use std::future::Future;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use omnimesh_test_support::TestServer;
use proxy_gateway::{App, Config, Listeners};

/// A running gateway: the data plane and the admin port.
pub(crate) struct Gateway {
    pub(crate) server: TestServer,
    pub(crate) admin: SocketAddr,
}

/// Builds and serves `config` on 127.0.0.1:0 (both listeners).
pub(crate) async fn start(config: Config) -> Gateway {
    let app = App::build(config).await.unwrap();
    let admin = omnimesh_test_support::bind().await;
    let address = admin.local_addr().unwrap();
    let server =
        TestServer::start(|http, shutdown| app.serve(Listeners { http, admin }, shutdown)).await;
    Gateway {
        server,
        admin: address,
    }
}

/// An HTTP/1.1 server on 127.0.0.1:0 answering every request with `answer(request)`.
pub(crate) async fn http_upstream<F, Fut>(answer: F) -> SocketAddr
where
    F: Fn(http::Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = http::Response<Full<Bytes>>> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let answer = answer.clone();
            let service = hyper::service::service_fn(move |request| {
                let answered = answer(request);
                async move { Ok::<_, std::convert::Infallible>(answered.await) }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    address
}

/// An HTTP/1.1 client connection over `io` (a TCP or TLS stream), driven in the
/// background.
pub(crate) async fn http1<IO>(io: IO) -> hyper::client::conn::http1::SendRequest<Full<Bytes>>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .unwrap();
    tokio::spawn(connection);
    sender
}

/// A response of `status` with `body`.
pub(crate) fn respond(status: u16, body: impl Into<Bytes>) -> http::Response<Full<Bytes>> {
    let mut response = http::Response::new(Full::new(body.into()));
    *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
    response
}
