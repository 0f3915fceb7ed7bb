//! The data plane against real tonic upstreams on 127.0.0.1:0: gRPC through the gateway,
//! balancing over replicas, a replica killed during a load loop without a failed
//! request, deadlines, and the errors for what cannot be routed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use omnimesh_common::auth::{AuthConfig, Issuer, Role};
use omnimesh_proto::engine::v1 as pb;
use omnimesh_proto::engine::v1::engine_client::EngineClient;
use omnimesh_proto::engine::v1::engine_server::{Engine, EngineServer};
use omnimesh_test_support::TestServer;
use proxy_gateway::route::{Route, RouteTable};
use proxy_gateway::{App, Config, Listeners};
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Code, Request, Response, Status};

/// An upstream that answers Echo with its own name in the `x-upstream` header, and
/// sleeps first when asked to be slow.
#[derive(Debug, Clone)]
pub(crate) struct Upstream(pub(crate) &'static str);

#[tonic::async_trait]
impl Engine for Upstream {
    async fn echo(
        &self,
        request: Request<pb::EchoRequest>,
    ) -> Result<Response<pb::EchoResponse>, Status> {
        let payload = request.into_inner().payload;
        if payload == b"slow"[..] {
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
        let mut response = Response::new(pb::EchoResponse { payload });
        response
            .metadata_mut()
            .insert("x-upstream", self.0.parse().unwrap());
        Ok(response)
    }
}

/// A running upstream on a runtime of its own; dropping (or `kill`ing) it drops that
/// runtime with every connection task, like a crashed process.
pub(crate) struct Running {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    fn kill(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop_now();
    }
}

pub(crate) fn upstream(name: &'static str) -> (SocketAddr, Running) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let serve = tonic::transport::Server::builder()
                .add_service(EngineServer::new(Upstream(name)))
                .serve_with_incoming(TcpListenerStream::new(listener));
            tokio::select! {
                _ = serve => {}
                _ = stopped => {}
            }
        });
        // Dropping the runtime here drops every connection task: sockets close at once.
    });
    (
        address,
        Running {
            stop: Some(stop),
            thread: Some(thread),
        },
    )
}

async fn gateway(
    dir: &std::path::Path,
    clusters: BTreeMap<String, Vec<String>>,
    routes: Option<Vec<Route>>,
) -> (TestServer, SocketAddr) {
    let mut config = Config::for_test(dir);
    config.upstreams.clusters = clusters;
    config.routes = routes;
    let app = App::build(config).await.unwrap();
    let admin = omnimesh_test_support::bind().await;
    let admin_address = admin.local_addr().unwrap();
    let server =
        TestServer::start(|http, shutdown| app.serve(Listeners { http, admin }, shutdown)).await;
    (server, admin_address)
}

/// The gateway's `/metrics` text.
pub(crate) async fn metrics(admin: SocketAddr) -> String {
    omnimesh_test_support::http::get(admin, "/metrics")
        .await
        .unwrap()
        .body
}

pub(crate) async fn echo(
    client: &mut EngineClient<tonic::transport::Channel>,
    payload: &[u8],
) -> Result<String, Status> {
    let response = client
        .echo(pb::EchoRequest {
            payload: payload.to_vec().into(),
        })
        .await?;
    assert_eq!(response.get_ref().payload, payload);
    Ok(response
        .metadata()
        .get("x-upstream")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grpc_goes_through_to_every_replica_and_survives_a_killed_one() {
    let mut upstreams = Vec::new();
    for name in ["a", "b", "c"] {
        upstreams.push(upstream(name));
    }
    let addresses = upstreams
        .iter()
        .map(|(address, _)| address.to_string())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let (server, admin) = gateway(
        dir.path(),
        BTreeMap::from([("core-engine".to_owned(), addresses)]),
        None,
    )
    .await;
    let mut client = EngineClient::new(server.channel().await);

    // A unary call larger than the retry buffer streams through (without retries).
    let big = vec![7u8; 300 * 1024];
    echo(&mut client, &big).await.unwrap();

    let mut seen = BTreeMap::new();
    for _ in 0..60 {
        *seen
            .entry(echo(&mut client, b"hi").await.unwrap())
            .or_insert(0) += 1;
    }
    assert_eq!(seen.len(), 3, "every replica answers: {seen:?}");

    // 10,000 calls from 8 workers; one replica is killed a third of the way in.
    let (done, failed) = (
        Arc::new(watch::Sender::new(0u64)),
        Arc::new(AtomicU64::new(0)),
    );
    let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let (mut client, done, failed, errors) = (
            client.clone(),
            Arc::clone(&done),
            Arc::clone(&failed),
            Arc::clone(&errors),
        );
        workers.spawn(async move {
            for _ in 0..1250 {
                match echo(&mut client, b"load").await {
                    Ok(_) => done.send_modify(|done| *done += 1),
                    Err(status) => {
                        errors.lock().unwrap().push(status.to_string());
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    }
    done.subscribe()
        .wait_for(|done| *done >= 3300)
        .await
        .unwrap();
    let (_, killed) = upstreams.remove(1);
    tokio::task::spawn_blocking(move || killed.kill())
        .await
        .unwrap();
    workers.join_all().await;
    let errors = errors.lock().unwrap().clone();
    assert_eq!(failed.load(Ordering::Relaxed), 0, "{errors:?}");
    assert_eq!(*done.borrow(), 10_000);
    // Afterwards only the survivors answer.
    for _ in 0..20 {
        assert_ne!(echo(&mut client, b"after").await.unwrap(), "b");
    }
    let text = metrics(admin).await;
    let ok = "omnimesh_proxy_gateway_gateway_requests_total{route=\"/omnimesh.engine.v1.\",cluster=\"core-engine\",status=\"200\",grpc_status=\"OK\"} 10081";
    assert!(text.contains(ok), "{text}");
    assert!(
        text.contains("omnimesh_proxy_gateway_gateway_retries_total{cluster=\"core-engine\"}"),
        "the kill caused retries: {text}"
    );
    // Ejected at least once (again each time its ejection ran out during the run).
    let ejections: u64 = text
        .lines()
        .find_map(|line| {
            line.strip_prefix(
                "omnimesh_proxy_gateway_gateway_ejections_total{cluster=\"core-engine\"} ",
            )
        })
        .and_then(|count| count.parse().ok())
        .unwrap_or(0);
    assert!(ejections >= 1, "{text}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn deadlines_routes_and_empty_clusters_have_clear_answers() {
    let (address, _upstream) = upstream("a");
    let mut routes = RouteTable::default().routes;
    routes[0].timeout = Duration::from_millis(200);
    let dir = tempfile::tempdir().unwrap();
    let (server, admin) = gateway(
        dir.path(),
        BTreeMap::from([
            ("core-engine".to_owned(), vec![address.to_string()]),
            // Nothing listens there.
            ("mesh-controller".to_owned(), vec!["127.0.0.1:1".to_owned()]),
        ]),
        Some(routes),
    )
    .await;
    let channel = server.channel().await;

    // The route's timeout is the gateway's own deadline.
    let request = Request::new(pb::EchoRequest {
        payload: b"slow".to_vec().into(),
    });
    let started = std::time::Instant::now();
    let status = EngineClient::new(channel.clone())
        .echo(request)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(started.elapsed() < Duration::from_secs(3));

    // A cluster whose only endpoint refuses connections: UNAVAILABLE, naming it.
    let status =
        omnimesh_proto::controller::v1::registry_client::RegistryClient::new(channel.clone())
            .list_services(omnimesh_proto::controller::v1::ListServicesRequest {})
            .await
            .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    // A gRPC service no route names: UNIMPLEMENTED; the gateway's own health: SERVING.
    let status =
        omnimesh_proto::gateway::v1::gateway_admin_client::GatewayAdminClient::new(channel.clone())
            .get_config(omnimesh_proto::gateway::v1::GetConfigRequest::default())
            .await
            .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    let health = omnimesh_test_support::grpc::health_status(channel, "")
        .await
        .unwrap();
    assert_eq!(
        health,
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    let text = metrics(admin).await;
    for expected in [
        "{route=\"/omnimesh.engine.v1.\",cluster=\"core-engine\",status=\"200\",grpc_status=\"DEADLINE_EXCEEDED\"} 1",
        "{route=\"/omnimesh.controller.v1.\",cluster=\"mesh-controller\",status=\"200\",grpc_status=\"UNAVAILABLE\"} 1",
        "{route=\"none\",cluster=\"none\",status=\"200\",grpc_status=\"UNIMPLEMENTED\"} 1",
    ] {
        assert!(text.contains(expected), "{expected} in\n{text}");
    }
    server.stop().await.unwrap();
}

#[tokio::test]
async fn routes_that_need_a_role_check_the_token() {
    let (address, _upstream) = upstream("a");
    let dir = tempfile::tempdir().unwrap();
    let mut routes = RouteTable::default().routes;
    routes[0].auth = Some(Role::Operator);
    let (server, admin) = gateway(
        dir.path(),
        BTreeMap::from([("core-engine".to_owned(), vec![address.to_string()])]),
        Some(routes),
    )
    .await;
    let issuer = Issuer::load(&AuthConfig::for_test(dir.path())).unwrap();
    let hour = Duration::from_secs(3600);
    let channel = server.channel().await;
    let call = |token: Option<String>| {
        let channel = channel.clone();
        async move {
            let mut request = Request::new(pb::EchoRequest {
                payload: b"x".to_vec().into(),
            });
            if let Some(token) = token {
                request
                    .metadata_mut()
                    .insert("authorization", format!("Bearer {token}").parse().unwrap());
            }
            EngineClient::new(channel).echo(request).await.map(|_| ())
        }
    };
    assert_eq!(call(None).await.unwrap_err().code(), Code::Unauthenticated);
    assert_eq!(
        call(Some("garbage".into())).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let viewer = call(Some(issuer.issue("vera", Role::Viewer, hour)))
        .await
        .unwrap_err();
    assert_eq!(viewer.code(), Code::PermissionDenied);
    assert!(viewer.message().contains("vera is a viewer"), "{viewer:?}");
    let forged = format!("{}x", issuer.issue("mallory", Role::Admin, hour));
    assert_eq!(
        call(Some(forged)).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    call(Some(issuer.issue("olga", Role::Operator, hour)))
        .await
        .unwrap();
    call(Some(issuer.issue("ada", Role::Admin, hour)))
        .await
        .unwrap();
    let text = metrics(admin).await;
    assert!(
        text.contains(
            "omnimesh_proxy_gateway_gateway_auth_denied_total{route=\"/omnimesh.engine.v1.\"} 4"
        ),
        "{text}"
    );
    assert!(
        text.contains("grpc_status=\"UNAUTHENTICATED\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("grpc_status=\"PERMISSION_DENIED\"} 1"),
        "{text}"
    );
    assert!(text.contains("grpc_status=\"OK\"} 2"), "{text}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn request_bodies_over_the_limit_are_refused_by_name() {
    let (address, _upstream) = upstream("a");
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_test(dir.path());
    config.upstreams.clusters =
        BTreeMap::from([("core-engine".to_owned(), vec![address.to_string()])]);
    config.max_request_body_bytes = 100 * 1024;
    let app = App::build(config).await.unwrap();
    let admin = omnimesh_test_support::bind().await;
    let server =
        TestServer::start(|http, shutdown| app.serve(Listeners { http, admin }, shutdown)).await;
    let mut client = EngineClient::new(server.channel().await);
    echo(&mut client, &vec![1u8; 90 * 1024]).await.unwrap();
    let status = echo(&mut client, &vec![1u8; 300 * 1024]).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(
        status.message().contains("larger than 102400 bytes"),
        "{status:?}"
    );
    // The gateway goes on serving.
    echo(&mut client, b"after").await.unwrap();
    server.stop().await.unwrap();
}

/// An HTTP/1.1 upstream that answers every request with the headers it received that
/// say where the request was meant for, one `name: value` per line.
async fn header_echo_upstream() -> SocketAddr {
    use hyper::service::service_fn;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let service = service_fn(
                    |request: hyper::Request<hyper::body::Incoming>| async move {
                        let mut seen = format!("path: {}\n", request.uri());
                        for name in [
                            "host",
                            "x-forwarded-host",
                            "x-forwarded-for",
                            "x-forwarded-proto",
                        ] {
                            for value in request.headers().get_all(name) {
                                seen.push_str(&format!("{name}: {}\n", value.to_str().unwrap()));
                            }
                        }
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(bytes::Bytes::from(seen)),
                        ))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    address
}

#[tokio::test]
async fn http_requests_reach_the_upstream_by_its_own_name() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let upstream = header_echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let clusters = BTreeMap::from([("omniterm-interface".to_owned(), vec![upstream.to_string()])]);
    let (gateway, _admin) = gateway(dir.path(), clusters, None).await;

    let mut stream = tokio::net::TcpStream::connect(gateway.addr())
        .await
        .unwrap();
    stream
        .write_all(
            b"GET /terminal?tab=1 HTTP/1.1\r\nHost: omnimesh.example.com\r\n\
              Connection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();

    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let body = response.split("\r\n\r\n").nth(1).unwrap();
    let lines: Vec<&str> = body.lines().collect();
    // A sidecar in front of the upstream routes on Host: it names the upstream, and the
    // client's host goes along as x-forwarded-host.
    assert_eq!(
        lines,
        [
            "path: /terminal?tab=1",
            &format!("host: {upstream}"),
            "x-forwarded-host: omnimesh.example.com",
            "x-forwarded-for: 127.0.0.1",
            "x-forwarded-proto: http",
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weighted_split_sends_each_cluster_its_share() {
    let (stable, _stable) = upstream("stable");
    let (canary, _canary) = upstream("canary");
    let dir = tempfile::tempdir().unwrap();
    let route = Route {
        split: vec![
            proxy_gateway::route::WeightedCluster {
                cluster: "engine-stable".into(),
                subset: String::new(),
                weight: 80,
            },
            proxy_gateway::route::WeightedCluster {
                cluster: "engine-canary".into(),
                subset: String::new(),
                weight: 20,
            },
        ],
        ..Route::prefix("/omnimesh.engine.v1.", "")
    };
    let (server, admin) = gateway(
        dir.path(),
        BTreeMap::from([
            ("engine-stable".to_owned(), vec![stable.to_string()]),
            ("engine-canary".to_owned(), vec![canary.to_string()]),
        ]),
        Some(vec![route]),
    )
    .await;
    let mut client = EngineClient::new(server.channel().await);

    const CALLS: u32 = 2000;
    let mut seen = BTreeMap::<String, u32>::new();
    for _ in 0..CALLS {
        *seen
            .entry(echo(&mut client, b"split").await.unwrap())
            .or_default() += 1;
    }
    // 20 % of 2,000 is 400 with a standard deviation of 18; ±90 is 5 of them, as in the
    // other split tests (±60, 3.35 of them, failed about once in 1,700 runs by chance:
    // clean-clone CI saw 330 once; 5,000 simulated runs of the gateway's random numbers
    // fell outside ±60 three times). A wrong split (50/50, or the weights swapped) is
    // still far outside.
    let canary_calls = seen.get("canary").copied().unwrap_or_default();
    assert_eq!(seen.values().sum::<u32>(), CALLS, "{seen:?}");
    assert!(
        (310..=490).contains(&canary_calls),
        "canary took {canary_calls} of {CALLS}: {seen:?}"
    );
    // The metrics say which cluster served.
    let text = metrics(admin).await;
    assert!(text.contains("cluster=\"engine-canary\""), "{text}");
    assert!(text.contains("cluster=\"engine-stable\""), "{text}");
}
