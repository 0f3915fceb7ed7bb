//! TLS on the data plane with a real handshake: ALPN picks HTTP/2 or HTTP/1.1, the
//! upstream learns `x-forwarded-proto: https`, a renewed certificate is served to new
//! connections without a restart, and a plain-text client is turned away while others
//! are served.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use omnimesh_test_support::{TestServer, eventually};
use proxy_gateway::route::Route;
use proxy_gateway::tls::TlsConfig;
use proxy_gateway::{App, Config, Listeners};
use rustls::pki_types::{CertificateDer, ServerName};

/// A fresh self-signed certificate for `localhost`, written over `config`'s files (by
/// rename, as cert-manager and certbot do); returns its DER.
fn issue(dir: &Path, config: &TlsConfig) -> CertificateDer<'static> {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let staged_cert = dir.join("staged.crt");
    let staged_key = dir.join("staged.key");
    std::fs::write(&staged_cert, certified.cert.pem()).unwrap();
    std::fs::write(&staged_key, certified.signing_key.serialize_pem()).unwrap();
    std::fs::rename(&staged_key, &config.key_file).unwrap();
    std::fs::rename(&staged_cert, &config.cert_file).unwrap();
    certified.cert.der().clone()
}

async fn upstream() -> std::net::SocketAddr {
    crate::support::http_upstream(|request: http::Request<_>| async move {
        let proto = request
            .headers()
            .get("x-forwarded-proto")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        crate::support::respond(200, proto)
    })
    .await
}

/// Connects with TLS trusting `root`, offering `alpn`; the negotiated protocol, the
/// certificate the gateway showed, and the stream.
async fn connect(
    gateway: std::net::SocketAddr,
    root: &CertificateDer<'static>,
    alpn: &[u8],
) -> (
    Option<Vec<u8>>,
    CertificateDer<'static>,
    tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(gateway).await.unwrap();
    let stream = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (_, session) = stream.get_ref();
    let negotiated = session.alpn_protocol().map(<[u8]>::to_vec);
    let shown = session.peer_certificates().unwrap()[0].clone().into_owned();
    (negotiated, shown, stream)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alpn_picks_the_protocol_and_certificates_renew_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let tls = TlsConfig {
        cert_file: dir.path().join("gateway.crt"),
        key_file: dir.path().join("gateway.key"),
    };
    let first = issue(dir.path(), &tls);
    let web = upstream().await;
    let mut config = Config::for_test(dir.path());
    config.tls = Some(tls.clone());
    config.upstreams.clusters = BTreeMap::from([("web".to_owned(), vec![web.to_string()])]);
    config.routes = Some(vec![Route::prefix("/", "web")]);
    let app = App::build(config).await.unwrap();
    let admin = omnimesh_test_support::bind().await;
    let server =
        TestServer::start(|http, shutdown| app.serve(Listeners { http, admin }, shutdown)).await;

    // HTTP/2 by ALPN.
    let (negotiated, shown, stream) = connect(server.addr(), &first, b"h2").await;
    assert_eq!(negotiated.as_deref(), Some(&b"h2"[..]));
    assert_eq!(shown, first);
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(connection);
    let response = sender
        .send_request(
            http::Request::get("https://localhost/")
                .body(Full::new(bytes::Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"https");

    // HTTP/1.1 by ALPN.
    let (negotiated, _, stream) = connect(server.addr(), &first, b"http/1.1").await;
    assert_eq!(negotiated.as_deref(), Some(&b"http/1.1"[..]));
    let mut sender = crate::support::http1(stream).await;
    let response = sender
        .send_request(
            http::Request::get("/")
                .header("host", "localhost")
                .body(Full::new(bytes::Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // A plain-text client is turned away; the gateway keeps serving TLS.
    let mut plain = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut plain, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::io::AsyncReadExt::read_to_end(&mut plain, &mut answer),
    )
    .await
    .expect("the gateway closes a plain-text connection");
    assert!(!answer.starts_with(b"HTTP/1.1 200"), "no plain-text answer");

    // Renewal: new connections see the new certificate.
    let second = issue(dir.path(), &tls);
    let address = server.addr();
    eventually(Duration::from_secs(10), "the renewed certificate", || {
        let second = second.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(address).await.ok()?;
            let mut roots = rustls::RootCertStore::empty();
            roots.add(second.clone()).ok()?;
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .ok()?
            .with_root_certificates(roots)
            .with_no_client_auth();
            let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(ServerName::try_from("localhost").ok()?, tcp)
                .await
                .ok()?;
            (stream.get_ref().1.peer_certificates()?[0] == second).then_some(())
        }
    })
    .await
    .unwrap();

    // A broken renewal is refused: the second certificate keeps serving.
    std::fs::write(&tls.cert_file, "-----BEGIN CERTIFICATE-----\nbroken\n").unwrap();
    let (_, shown, _) = connect(server.addr(), &second, b"h2").await;
    assert_eq!(shown, second);
}
