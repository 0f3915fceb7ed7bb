//! Endpoint health through the real data plane: outlier detection ejects an endpoint
//! that answers INTERNAL and re-admits it once its ejection ends and it answers well;
//! active gRPC and HTTP health checks take endpoints out and back by their thresholds;
//! a cluster's request limit fails fast when reached.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use omnimesh_proto::engine::v1 as pb;
use omnimesh_proto::engine::v1::engine_client::EngineClient;
use omnimesh_proto::engine::v1::engine_server::{Engine, EngineServer};
use omnimesh_proto::gateway::v1 as admin_pb;
use omnimesh_proto::gateway::v1::gateway_admin_client::GatewayAdminClient;
use omnimesh_test_support::{TestServer, eventually};
use proxy_gateway::Config;
use proxy_gateway::balance::OutlierDetection;
use proxy_gateway::health::{CheckKind, HealthCheck};
use tonic::{Code, Request, Response, Status};

use crate::proxy::metrics;

const WAIT: Duration = Duration::from_secs(10);

/// An engine whose Echo fails with INTERNAL while `failing`, and holds `b"hold"` calls
/// until `release` has a permit for them; it names itself in `x-upstream`.
#[derive(Clone)]
struct Switchable {
    name: &'static str,
    failing: Arc<AtomicBool>,
    release: Arc<tokio::sync::Semaphore>,
}

#[tonic::async_trait]
impl Engine for Switchable {
    async fn echo(
        &self,
        request: Request<pb::EchoRequest>,
    ) -> Result<Response<pb::EchoResponse>, Status> {
        let payload = request.into_inner().payload;
        if payload == b"hold"[..] {
            // Held until the test adds a permit (whenever it does: no lost wake-up).
            self.release.acquire().await.unwrap().forget();
        }
        if self.failing.load(Ordering::Relaxed) {
            return Err(Status::internal("broken on purpose"));
        }
        let mut response = Response::new(pb::EchoResponse { payload });
        response
            .metadata_mut()
            .insert("x-upstream", self.name.parse().unwrap());
        Ok(response)
    }
}

struct Upstream {
    engine: Switchable,
    health: tonic_health::server::HealthReporter,
    server: TestServer,
}

async fn start_upstream(name: &'static str) -> Upstream {
    let engine = Switchable {
        name,
        failing: Arc::new(AtomicBool::new(false)),
        release: Arc::new(tokio::sync::Semaphore::new(0)),
    };
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let service = EngineServer::new(engine.clone());
    let server = TestServer::start(|listener, shutdown| {
        tonic::transport::Server::builder()
            .add_service(service)
            .add_service(health_service)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                shutdown,
            )
    })
    .await;
    Upstream {
        engine,
        health,
        server,
    }
}

use crate::support::{Gateway, start as gateway};

fn config(dir: &std::path::Path, upstreams: &[&Upstream]) -> Config {
    let mut config = Config::for_test(dir);
    config.upstreams.clusters = BTreeMap::from([(
        "core-engine".to_owned(),
        upstreams
            .iter()
            .map(|u| u.server.addr().to_string())
            .collect(),
    )]);
    config
}

/// An Echo call; the replica that answered.
async fn call(client: &mut EngineClient<tonic::transport::Channel>) -> Result<String, Status> {
    crate::proxy::echo(client, b"x").await
}

async fn endpoint_health(admin: SocketAddr, address: SocketAddr) -> admin_pb::Endpoint {
    let mut client = GatewayAdminClient::connect(format!("http://{admin}"))
        .await
        .unwrap();
    let clusters = client
        .list_clusters(admin_pb::ListClustersRequest {})
        .await
        .unwrap()
        .into_inner();
    clusters.clusters[0]
        .endpoints
        .iter()
        .find(|e| e.address == address.to_string())
        .unwrap()
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_is_ejected_and_later_readmitted() {
    let good = start_upstream("good").await;
    let bad = start_upstream("bad").await;
    bad.engine.failing.store(true, Ordering::Relaxed);
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), &[&good, &bad]);
    config.outlier_detection = OutlierDetection {
        consecutive_failures: 3,
        base_ejection: Duration::from_millis(500),
        max_ejection: Duration::from_secs(5),
        max_ejection_percent: 50,
    };
    let gateway = gateway(config).await;
    let mut client = EngineClient::new(gateway.server.channel().await);
    let mut failed = 0;
    for _ in 0..200 {
        match call(&mut client).await {
            Ok(name) => assert_eq!(name, "good"),
            Err(status) => {
                assert_eq!(status.code(), Code::Internal);
                failed += 1;
            }
        }
    }
    // Three failures in a row eject it; with one endpoint left, nothing else fails
    // (a ejection that ended meanwhile re-ejects after one more failure).
    assert!((3..=6).contains(&failed), "{failed} calls failed");
    let endpoint = endpoint_health(gateway.admin, bad.server.addr()).await;
    assert!(
        matches!(
            endpoint.health(),
            admin_pb::EndpointHealth::Ejected | admin_pb::EndpointHealth::Healthy
        ),
        "{endpoint:?}"
    );
    let text = metrics(gateway.admin).await;
    assert!(text.contains("gateway_ejections_total{cluster=\"core-engine\"}"));
    let bad_failures = format!(
        "gateway_endpoint_requests_total{{cluster=\"core-engine\",endpoint=\"{}\",result=\"failure\"}} {failed}",
        bad.server.addr()
    );
    assert!(text.contains(&bad_failures), "{bad_failures} in {text}");

    // Mended: once its ejection ends it takes traffic again.
    bad.engine.failing.store(false, Ordering::Relaxed);
    eventually(WAIT, "the mended endpoint to be picked again", || {
        let mut client = client.clone();
        async move { (call(&mut client).await.ok()? == "bad").then_some(()) }
    })
    .await
    .unwrap();
    let endpoint = endpoint_health(gateway.admin, bad.server.addr()).await;
    assert_eq!(endpoint.health(), admin_pb::EndpointHealth::Healthy);
    assert_eq!(endpoint.consecutive_failures, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_grpc_health_checks_take_endpoints_out_and_back() {
    let one = start_upstream("one").await;
    let two = start_upstream("two").await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), &[&one, &two]);
    config.health_checks = BTreeMap::from([(
        "core-engine".to_owned(),
        HealthCheck {
            kind: CheckKind::Grpc,
            service: String::new(),
            path: "/healthz".into(),
            interval: Duration::from_millis(50),
            timeout: Duration::from_millis(50),
            unhealthy_threshold: 2,
            healthy_threshold: 2,
        },
    )]);
    let gateway = gateway(config).await;
    let mut client = EngineClient::new(gateway.server.channel().await);
    two.health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    let admin = gateway.admin;
    let address = two.server.addr();
    eventually(
        WAIT,
        "the not-serving endpoint to be taken out",
        || async move {
            (endpoint_health(admin, address).await.health() == admin_pb::EndpointHealth::Unhealthy)
                .then_some(())
        },
    )
    .await
    .unwrap();
    for _ in 0..50 {
        assert_eq!(call(&mut client).await.unwrap(), "one");
    }
    two.health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    eventually(WAIT, "the endpoint to come back", || async move {
        (endpoint_health(admin, address).await.health() == admin_pb::EndpointHealth::Healthy)
            .then_some(())
    })
    .await
    .unwrap();
    eventually(WAIT, "traffic on the endpoint again", || {
        let mut client = client.clone();
        async move { (call(&mut client).await.ok()? == "two").then_some(()) }
    })
    .await
    .unwrap();
    let text = metrics(gateway.admin).await;
    assert!(
        text.contains("gateway_health_checks_total{cluster=\"core-engine\",result=\"failed\"}"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn active_http_health_checks_follow_the_status_code() {
    let healthy = Arc::new(AtomicBool::new(true));
    let flag = Arc::clone(&healthy);
    let web = crate::support::http_upstream(move |request: http::Request<_>| {
        let ok = flag.load(Ordering::Relaxed) || request.uri().path() != "/ready";
        async move { crate::support::respond(if ok { 200 } else { 503 }, ".") }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_test(dir.path());
    config.upstreams.clusters = BTreeMap::from([("web".to_owned(), vec![web.to_string()])]);
    config.health_checks = BTreeMap::from([(
        "web".to_owned(),
        HealthCheck {
            kind: CheckKind::Http,
            service: String::new(),
            path: "/ready".into(),
            interval: Duration::from_millis(50),
            timeout: Duration::from_millis(50),
            unhealthy_threshold: 1,
            healthy_threshold: 1,
        },
    )]);
    let gateway = gateway(config).await;
    let admin = gateway.admin;
    healthy.store(false, Ordering::Relaxed);
    eventually(WAIT, "the endpoint to fail its check", || async move {
        (endpoint_health(admin, web).await.health() == admin_pb::EndpointHealth::Unhealthy)
            .then_some(())
    })
    .await
    .unwrap();
    healthy.store(true, Ordering::Relaxed);
    eventually(WAIT, "the endpoint to pass again", || async move {
        (endpoint_health(admin, web).await.health() == admin_pb::EndpointHealth::Healthy)
            .then_some(())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_at_its_request_limit_fails_fast() {
    let upstream = start_upstream("only").await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path(), &[&upstream]);
    config.circuit_breakers = BTreeMap::from([(
        "core-engine".to_owned(),
        proxy_gateway::CircuitBreaker { max_requests: 2 },
    )]);
    let gateway = gateway(config).await;
    let client = EngineClient::new(gateway.server.channel().await);
    let held: Vec<_> = (0..2)
        .map(|_| {
            let mut client = client.clone();
            tokio::spawn(async move {
                client
                    .echo(pb::EchoRequest {
                        payload: b"hold".to_vec().into(),
                    })
                    .await
            })
        })
        .collect();
    let admin = gateway.admin;
    let address = upstream.server.addr();
    eventually(WAIT, "two requests open upstream", || async move {
        (endpoint_health(admin, address).await.active_requests == 2).then_some(())
    })
    .await
    .unwrap();
    let status = call(&mut client.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status
            .message()
            .contains("core-engine has 2 requests open, its limit"),
        "{}",
        status.message()
    );
    upstream.engine.release.add_permits(2);
    for call in held {
        call.await.unwrap().unwrap();
    }
    assert_eq!(call(&mut client.clone()).await.unwrap(), "only");
    assert!(
        metrics(gateway.admin)
            .await
            .contains("gateway_overflow_total{cluster=\"core-engine\"} 1")
    );
}

/// Two replicas, `slow` holding every `hold` call, `fast` answering at once; the route
/// to them with `retry`.
async fn slow_and_fast(
    dir: &std::path::Path,
    retry: proxy_gateway::route::RetryPolicy,
) -> (Upstream, Upstream, Gateway) {
    let slow = start_upstream("slow").await;
    let fast = start_upstream("fast").await;
    fast.engine
        .release
        .add_permits(tokio::sync::Semaphore::MAX_PERMITS / 2);
    let mut config = config(dir, &[&slow, &fast]);
    config.routes = Some(vec![proxy_gateway::route::Route {
        retry,
        ..proxy_gateway::route::Route::prefix("/omnimesh.engine.v1.", "core-engine")
    }]);
    let gateway = gateway(config).await;
    (slow, fast, gateway)
}

/// An Echo call that a replica holds until released; the replica that answered.
async fn hold_call(client: &mut EngineClient<tonic::transport::Channel>) -> Result<String, Status> {
    crate::proxy::echo(client, b"hold").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_try_past_its_per_try_timeout_is_retried_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let retry = proxy_gateway::route::RetryPolicy {
        per_try_timeout: Some(Duration::from_millis(100)),
        ..proxy_gateway::route::RetryPolicy::default()
    };
    let (_slow, _fast, gateway) = slow_and_fast(dir.path(), retry).await;
    let mut client = EngineClient::new(gateway.server.channel().await);
    let started = std::time::Instant::now();
    for _ in 0..20 {
        assert_eq!(hold_call(&mut client).await.unwrap(), "fast");
    }
    // Each call waits at most one per-try timeout and one back-off.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    let text = metrics(gateway.admin).await;
    assert!(
        text.contains("gateway_retries_total{cluster=\"core-engine\"}"),
        "some calls went to the slow replica first and were retried: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_idempotent_call_is_hedged_and_the_fast_answer_wins() {
    let dir = tempfile::tempdir().unwrap();
    let retry = proxy_gateway::route::RetryPolicy {
        hedge_after: Some(Duration::from_millis(30)),
        ..proxy_gateway::route::RetryPolicy::default()
    };
    let (slow, _fast, gateway) = slow_and_fast(dir.path(), retry).await;
    let mut client = EngineClient::new(gateway.server.channel().await);
    for _ in 0..20 {
        let started = std::time::Instant::now();
        assert_eq!(hold_call(&mut client).await.unwrap(), "fast");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
    let text = metrics(gateway.admin).await;
    assert!(
        text.contains("gateway_hedges_total{cluster=\"core-engine\"}"),
        "{text}"
    );
    // The slow replica's held calls were cancelled with their hedges' wins: releasing
    // them now harms nothing.
    slow.engine.release.add_permits(64);
}

/// An engine whose Echo always answers UNAVAILABLE (the retryable failure).
#[derive(Clone, Copy)]
struct Overloaded;

#[tonic::async_trait]
impl Engine for Overloaded {
    async fn echo(
        &self,
        _request: Request<pb::EchoRequest>,
    ) -> Result<Response<pb::EchoResponse>, Status> {
        Err(Status::unavailable("overloaded on purpose"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stay_inside_the_retry_budget() {
    let mut replicas = Vec::new();
    for _ in 0..2 {
        replicas.push(
            TestServer::start(|listener, shutdown| {
                tonic::transport::Server::builder()
                    .add_service(EngineServer::new(Overloaded))
                    .serve_with_incoming_shutdown(
                        tokio_stream::wrappers::TcpListenerStream::new(listener),
                        shutdown,
                    )
            })
            .await,
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_test(dir.path());
    config.upstreams.clusters = BTreeMap::from([(
        "core-engine".to_owned(),
        replicas.iter().map(|r| r.addr().to_string()).collect(),
    )]);
    // Keep both replicas in rotation: this test is about the budget, not ejection.
    config.outlier_detection.consecutive_failures = 1_000_000;
    let retry = proxy_gateway::route::RetryPolicy {
        backoff: Duration::from_micros(1),
        max_backoff: Duration::from_micros(1),
        ..proxy_gateway::route::RetryPolicy::default()
    };
    config.routes = Some(vec![proxy_gateway::route::Route {
        retry,
        ..proxy_gateway::route::Route::prefix("/omnimesh.engine.v1.", "core-engine")
    }]);
    let gateway = gateway(config).await;
    let mut client = EngineClient::new(gateway.server.channel().await);
    let requests = 600_u64;
    for _ in 0..requests {
        let status = call(&mut client).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
    }
    let text = metrics(gateway.admin).await;
    let counter = |name: &str| -> u64 {
        text.lines()
            .find(|line| line.contains(name))
            .and_then(|line| line.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0)
    };
    let retries = counter("gateway_retries_total{cluster=\"core-engine\"}");
    let refused = counter("gateway_retry_budget_exhausted_total{cluster=\"core-engine\"}");
    // The budget allows 20 % of the requests plus a reserve of 10 per second over its
    // 10 s window.
    assert!(retries > 0, "{text}");
    assert!(
        retries <= requests / 5 + 100,
        "{retries} retries for {requests} requests"
    );
    assert!(refused > 0, "the budget refused the rest: {text}");
    // Each request wanted a retry (a second one only when the first was granted).
    assert!(
        (requests..=requests * 2).contains(&(retries + refused)),
        "{retries} granted + {refused} refused for {requests} requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_at_its_connection_limits_fails_fast_without_ejection() {
    // An HTTP/1.1 upstream that holds every request until released: each held request
    // keeps one connection busy.
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let gate = Arc::clone(&release);
    let web = crate::support::http_upstream(move |_request| {
        let gate = Arc::clone(&gate);
        async move {
            gate.acquire().await.unwrap().forget();
            crate::support::respond(200, "done")
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_test(dir.path());
    config.upstreams.clusters = BTreeMap::from([("web".to_owned(), vec![web.to_string()])]);
    config.routes = Some(vec![proxy_gateway::route::Route::prefix("/", "web")]);
    config.max_connections_per_endpoint = 2;
    config.max_pending_per_endpoint = 1;
    let gateway = gateway(config).await;
    let address = gateway.server.addr();
    // Two requests hold both connections, a third waits for one.
    let held: Vec<_> = (0..3)
        .map(|_| {
            tokio::spawn(async move {
                omnimesh_test_support::http::get(address, "/held")
                    .await
                    .unwrap()
            })
        })
        .collect();
    let admin = gateway.admin;
    eventually(WAIT, "three requests open", || async move {
        let mut client = GatewayAdminClient::connect(format!("http://{admin}"))
            .await
            .ok()?;
        let clusters = client
            .list_clusters(admin_pb::ListClustersRequest {})
            .await
            .ok()?
            .into_inner();
        (clusters.clusters[0].endpoints[0].active_requests == 3).then_some(())
    })
    .await
    .unwrap();
    // The fourth finds both connections taken and one request waiting: refused at once.
    let refused = omnimesh_test_support::http::get(address, "/more")
        .await
        .unwrap();
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(
        refused
            .body
            .contains("2 connections open and 1 requests waiting"),
        "{}",
        refused.body
    );
    release.add_permits(3);
    for request in held {
        let response = request.await.unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(response.body, "done");
    }
    // Not ejected: the endpoint serves the next request.
    release.add_permits(1);
    let again = omnimesh_test_support::http::get(address, "/after")
        .await
        .unwrap();
    assert_eq!(again.status, 200);
    assert!(
        metrics(gateway.admin)
            .await
            .contains("gateway_overflow_total{cluster=\"web\"} 1")
    );
}
