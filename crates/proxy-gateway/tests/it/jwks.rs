//! Tokens signed by an identity provider's rotating ES256 keys, published at a JWKS URL
//! (a real HTTP server on 127.0.0.1:0): before any key arrives the answer is
//! `UNAVAILABLE`, never a 401; then tokens verify; a rotation retires the old key; an
//! outage of the provider keeps the last good keys.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use http_body_util::Full;
use omnimesh_common::auth::Role;
use omnimesh_proto::engine::v1::engine_client::EngineClient;
use omnimesh_test_support::grpc::authed;
use omnimesh_test_support::{TestServer, eventually};
use proxy_gateway::jwks::JwksConfig;
use proxy_gateway::route::Route;
use proxy_gateway::{App, Config, Listeners};
use tonic::Code;

use crate::proxy::upstream;

/// An ES256 signing key with its `kid`.
struct SigningKey {
    kid: String,
    pair: rcgen::KeyPair,
}

impl SigningKey {
    fn new(kid: &str) -> Self {
        Self {
            kid: kid.to_owned(),
            pair: rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap(),
        }
    }

    /// Its public JWK (P-256: the uncompressed point 04 ‖ x ‖ y).
    fn jwk(&self) -> serde_json::Value {
        let point = self.pair.public_key_raw();
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        serde_json::json!({
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": self.kid,
            "x": b64(&point[1..33]), "y": b64(&point[33..65]),
        })
    }

    fn token(&self, subject: &str, role: Role) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        let claims = serde_json::json!({
            "sub": subject, "iss": "omnimesh", "aud": "omnimesh",
            "iat": now, "exp": now + 300, "roles": [role.as_str()],
        });
        let key =
            jsonwebtoken::EncodingKey::from_ec_pem(self.pair.serialize_pem().as_bytes()).unwrap();
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    }
}

/// What the identity provider answers now: a status and a body.
type Published = Arc<Mutex<(u16, String)>>;

async fn identity_provider(published: Published) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let published = Arc::clone(&published);
            let service = hyper::service::service_fn(move |_request| {
                let (status, body) = published.lock().unwrap().clone();
                async move {
                    let mut response = http::Response::new(Full::new(bytes::Bytes::from(body)));
                    *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
                    Ok::<_, std::convert::Infallible>(response)
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    address
}

fn publish(published: &Published, keys: &[&SigningKey]) {
    let set = serde_json::json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() });
    *published.lock().unwrap() = (200, set.to_string());
}

async fn call(channel: tonic::transport::Channel, token: &str) -> Result<String, tonic::Status> {
    let mut client = EngineClient::new(authed(channel, token));
    let response = client
        .echo(omnimesh_proto::engine::v1::EchoRequest {
            payload: b"x".to_vec().into(),
        })
        .await?;
    Ok(String::from_utf8(response.into_inner().payload.to_vec()).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_from_a_url_rotate_and_survive_an_outage() {
    let (engine, _engine) = upstream("a");
    let published: Published = Arc::new(Mutex::new((503, "down".to_owned())));
    let provider = identity_provider(Arc::clone(&published)).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_test(dir.path());
    config.upstreams.clusters =
        BTreeMap::from([("core-engine".to_owned(), vec![engine.to_string()])]);
    config.routes = Some(vec![Route {
        auth: Some(Role::Operator),
        ..Route::prefix("/omnimesh.engine.v1.", "core-engine")
    }]);
    config.jwks = JwksConfig {
        url: format!("http://{provider}/.well-known/jwks.json"),
        refresh: Duration::from_millis(100),
        retry: Duration::from_millis(50),
        timeout: Duration::from_secs(1),
    };
    let app = App::build(config).await.unwrap();
    let admin_listener = omnimesh_test_support::bind().await;
    let admin = admin_listener.local_addr().unwrap();
    let server = TestServer::start(|http, shutdown| {
        app.serve(
            Listeners {
                http,
                admin: admin_listener,
            },
            shutdown,
        )
    })
    .await;
    let channel = server.channel().await;
    let first = SigningKey::new("2026-11-a");
    let second = SigningKey::new("2026-11-b");

    // The provider is down and no key was ever loaded: UNAVAILABLE, not UNAUTHENTICATED.
    let status = call(channel.clone(), &first.token("ops", Role::Operator))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("not loaded yet"),
        "{}",
        status.message()
    );

    publish(&published, &[&first]);
    let token = first.token("ops", Role::Operator);
    eventually(Duration::from_secs(10), "the first key", || {
        let (channel, token) = (channel.clone(), token.clone());
        async move { call(channel, &token).await.ok() }
    })
    .await
    .unwrap();
    // Too small a role, and a token signed by a key nobody published.
    let status = call(channel.clone(), &first.token("viewer", Role::Viewer))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let stranger = SigningKey::new("2026-11-a"); // same kid, other key
    let status = call(channel.clone(), &stranger.token("ops", Role::Operator))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(status.message(), "bad signature");

    // Rotation: the provider publishes only the second key.
    publish(&published, &[&second]);
    let token = second.token("ops", Role::Operator);
    eventually(Duration::from_secs(10), "the rotated key", || {
        let (channel, token) = (channel.clone(), token.clone());
        async move { call(channel, &token).await.ok() }
    })
    .await
    .unwrap();
    let status = call(channel.clone(), &first.token("ops", Role::Operator))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "the retired key");

    // An outage keeps the last good keys: still verified after several failed fetches.
    *published.lock().unwrap() = (500, "oops".to_owned());
    eventually(
        Duration::from_secs(10),
        "failed fetches to be counted",
        || async {
            let text = crate::proxy::metrics(admin).await;
            text.lines()
                .find(|line| line.contains("gateway_jwks_fetches_total{result=\"failed\"}"))
                .and_then(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
                .filter(|failed| *failed >= 3)
        },
    )
    .await
    .unwrap();
    assert_eq!(call(channel.clone(), &token).await.unwrap(), "x");
}
