//! Rate limits through the real data plane: per client in memory (by token subject or
//! by address), shared by two gateways through the real Redis on 127.0.0.1:6379, and
//! a private Redis stopped mid-test (fail open and fail closed) and started again.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use omnimesh_common::auth::{AuthConfig, Issuer, Role};
use omnimesh_proto::engine::v1::engine_client::EngineClient;
use omnimesh_test_support::eventually;
use omnimesh_test_support::grpc::authed;
use proxy_gateway::Config;
use proxy_gateway::ratelimit::{OnError, Policy, RedisConfig};
use proxy_gateway::route::Route;
use tonic::Code;

use crate::proxy::{echo, metrics, upstream};

use crate::support::start as gateway;

fn config(dir: &Path, engine: SocketAddr, policy: Policy, route: Route) -> Config {
    let mut config = Config::for_test(dir);
    config.upstreams.clusters =
        BTreeMap::from([("core-engine".to_owned(), vec![engine.to_string()])]);
    config.rate_limits = BTreeMap::from([("api".to_owned(), policy)]);
    config.routes = Some(vec![Route {
        rate_limit: Some("api".to_owned()),
        ..route
    }]);
    config
}

fn engine_route() -> Route {
    Route::prefix("/omnimesh.engine.v1.", "core-engine")
}

/// Calls Echo `count` times; how many passed, and the codes of the others.
async fn burst<T>(client: &mut EngineClient<T>, count: usize) -> (usize, Vec<Code>)
where
    T: tonic::client::GrpcService<tonic::body::Body>,
    T::Error: Into<tonic::codegen::StdError>,
    T::ResponseBody: tonic::codegen::Body<Data = bytes::Bytes> + Send + 'static,
    <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let mut passed = 0;
    let mut refused = Vec::new();
    for _ in 0..count {
        match client
            .echo(omnimesh_proto::engine::v1::EchoRequest {
                payload: b"x".to_vec().into(),
            })
            .await
        {
            Ok(_) => passed += 1,
            Err(status) => refused.push(status.code()),
        }
    }
    (passed, refused)
}

#[tokio::test]
async fn each_token_subject_gets_its_own_bucket_in_memory() {
    let (engine, _engine) = upstream("a");
    let dir = tempfile::tempdir().unwrap();
    let route = Route {
        auth: Some(Role::Viewer),
        ..engine_route()
    };
    let policy = Policy {
        requests_per_second: 1,
        burst: 3,
        shared: false,
    };
    let gateway = gateway(config(dir.path(), engine, policy, route)).await;
    let issuer = Issuer::load(&AuthConfig::for_test(dir.path())).unwrap();
    let channel = gateway.server.channel().await;
    let mut alice = EngineClient::new(authed(
        channel.clone(),
        &issuer.issue("alice", Role::Viewer, Duration::from_secs(60)),
    ));
    let mut bob = EngineClient::new(authed(
        channel,
        &issuer.issue("bob", Role::Viewer, Duration::from_secs(60)),
    ));
    let (passed, refused) = burst(&mut alice, 5).await;
    assert_eq!(passed, 3);
    assert_eq!(refused, [Code::ResourceExhausted, Code::ResourceExhausted]);
    let (passed, _) = burst(&mut bob, 3).await;
    assert_eq!(passed, 3, "bob has a bucket of his own");
    let status = alice
        .echo(omnimesh_proto::engine::v1::EchoRequest::default())
        .await
        .unwrap_err();
    assert!(
        status
            .message()
            .contains("rate limit \"api\" reached; retry in 1 s"),
        "{}",
        status.message()
    );
    let text = metrics(gateway.admin).await;
    assert!(
        text.contains("gateway_rate_limited_total{route=\"/omnimesh.engine.v1.\"} 3"),
        "{text}"
    );
}

#[tokio::test]
async fn plain_http_clients_are_limited_by_address_with_retry_after() {
    // An HTTP upstream that answers 200.
    let web =
        crate::support::http_upstream(|_request| async { crate::support::respond(200, "ok") })
            .await;
    let dir = tempfile::tempdir().unwrap();
    let route = Route {
        grpc: Some(false),
        ..Route::prefix("/", "web")
    };
    let mut config = config(
        dir.path(),
        web,
        Policy {
            requests_per_second: 1,
            burst: 2,
            shared: false,
        },
        route,
    );
    config.upstreams.clusters = BTreeMap::from([("web".to_owned(), vec![web.to_string()])]);
    let gateway = gateway(config).await;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let response = omnimesh_test_support::http::get(gateway.server.addr(), "/page")
            .await
            .unwrap();
        statuses.push(response.status);
        if response.status == 429 {
            assert!(response.body.contains("retry in 1 s"), "{}", response.body);
        }
    }
    assert_eq!(statuses, [200, 200, 429]);
}

#[tokio::test]
async fn two_gateways_share_one_limit_through_redis() {
    let (engine, _engine) = upstream("a");
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("omnimesh-test:{}:{}", std::process::id(), rand_suffix());
    let shared = |dir: &Path| {
        let mut config = config(
            dir,
            engine,
            Policy {
                requests_per_second: 1,
                burst: 6,
                shared: true,
            },
            engine_route(),
        );
        config.redis = RedisConfig {
            key_prefix: prefix.clone(),
            timeout: Duration::from_millis(500),
            ..RedisConfig::default()
        };
        config
    };
    let first = gateway(shared(dir.path())).await;
    let second = gateway(shared(dir.path())).await;
    let mut one = EngineClient::new(first.server.channel().await);
    let mut two = EngineClient::new(second.server.channel().await);
    let mut passed = 0;
    let mut refused = 0;
    for _ in 0..6 {
        for client in [&mut one, &mut two] {
            match echo(client, b"x").await {
                Ok(_) => passed += 1,
                Err(status) => {
                    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                    refused += 1;
                }
            }
        }
    }
    // Six from one bucket of six, whichever gateway they went through (one more if a
    // token was refilled at 1/s while the twelve calls ran).
    assert!((6..=7).contains(&passed), "{passed} passed");
    assert_eq!(passed + refused, 12);
    for gateway in [&first, &second] {
        assert!(
            metrics(gateway.admin)
                .await
                .contains("gateway_rate_limit_backend_errors_total 0"),
            "Redis answered every check"
        );
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// A Redis server of this test's own, on a free port, keeping nothing on disk.
struct PrivateRedis {
    child: Child,
    port: u16,
}

impl PrivateRedis {
    fn start(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server) is installed");
        Self { child, port }
    }

    async fn wait_ready(&self) {
        let port = self.port;
        eventually(
            Duration::from_secs(10),
            "redis-server to accept connections",
            || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .ok()
                    .map(|_| ())
            },
        )
        .await
        .unwrap();
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test]
async fn redis_stopping_fails_open_or_closed_and_recovers() {
    let (engine, _engine) = upstream("a");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut redis = PrivateRedis::start(port);
    redis.wait_ready().await;
    let dir = tempfile::tempdir().unwrap();
    let with = |on_error| {
        let mut config = config(
            dir.path(),
            engine,
            Policy {
                requests_per_second: 1,
                burst: 1000,
                shared: true,
            },
            engine_route(),
        );
        config.redis = RedisConfig {
            url: format!("redis://127.0.0.1:{port}"),
            timeout: Duration::from_millis(200),
            on_error,
            key_prefix: "omnimesh-test".into(),
        };
        config
    };
    let open = gateway(with(OnError::Open)).await;
    let closed = gateway(with(OnError::Closed)).await;
    let mut open_client = EngineClient::new(open.server.channel().await);
    let mut closed_client = EngineClient::new(closed.server.channel().await);
    assert_eq!(burst(&mut open_client, 3).await, (3, vec![]));
    assert_eq!(burst(&mut closed_client, 3).await, (3, vec![]));

    redis.stop();
    // Open: served anyway. Closed: refused as UNAVAILABLE. Both counted.
    assert_eq!(burst(&mut open_client, 3).await, (3, vec![]));
    assert_eq!(
        burst(&mut closed_client, 2).await,
        (0, vec![Code::Unavailable, Code::Unavailable])
    );
    for (gateway, at_least) in [(&open, 3), (&closed, 2)] {
        let text = metrics(gateway.admin).await;
        let errors: u64 = text
            .lines()
            .find(|line| line.contains("gateway_rate_limit_backend_errors_total "))
            .and_then(|line| line.rsplit(' ').next())
            .unwrap()
            .parse()
            .unwrap();
        assert!(errors >= at_least, "{errors}");
    }

    // Redis back on the same port: the closed gateway serves again.
    let restarted = PrivateRedis::start(port);
    restarted.wait_ready().await;
    eventually(Duration::from_secs(15), "the limiter to reconnect", || {
        let mut client = closed_client.clone();
        async move { echo(&mut client, b"x").await.ok().map(|_| ()) }
    })
    .await
    .unwrap();
}
