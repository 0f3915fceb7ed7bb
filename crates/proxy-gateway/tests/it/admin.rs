//! The admin API and configuration reload against a real gateway and real upstreams:
//! GetConfig / ApplyConfig (a refused change leaves the old one serving), the watched
//! configuration file, the watched endpoints file, SetRouteWeights moving traffic
//! between subsets, ListClusters, GetStats, Explain, and the same over HTTP.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use omnimesh_common::auth::{AuthConfig, Issuer, Role};
use omnimesh_common::config::{Sources, load_from};
use omnimesh_proto::engine::v1::engine_client::EngineClient;
use omnimesh_proto::gateway::v1 as pb;
use omnimesh_proto::gateway::v1::gateway_admin_client::GatewayAdminClient;
use omnimesh_test_support::grpc::{Authed, authed};
use omnimesh_test_support::{TestServer, eventually};
use proxy_gateway::{App, Config, Listeners};
use tonic::Code;

use crate::proxy::{echo, metrics, upstream};

const WAIT: Duration = Duration::from_secs(10);

struct Gateway {
    server: TestServer,
    admin: SocketAddr,
    token: String,
}

/// A token of `role` signed with the test key in `dir`.
fn token(dir: &Path, role: Role) -> String {
    Issuer::load(&AuthConfig::for_test(dir)).unwrap().issue(
        "ops@example.com",
        role,
        Duration::from_secs(300),
    )
}

impl Gateway {
    async fn start(app: App, dir: &Path) -> Self {
        let admin = omnimesh_test_support::bind().await;
        let address = admin.local_addr().unwrap();
        let server =
            TestServer::start(|http, shutdown| app.serve(Listeners { http, admin }, shutdown))
                .await;
        Self {
            server,
            admin: address,
            token: token(dir, Role::Admin),
        }
    }

    /// A client that sends an admin token.
    async fn admin_client(&self) -> GatewayAdminClient<Authed> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.admin))
            .unwrap()
            .connect()
            .await
            .unwrap();
        GatewayAdminClient::new(authed(channel, &self.token))
    }

    async fn engine(&self) -> EngineClient<tonic::transport::Channel> {
        EngineClient::new(self.server.channel().await)
    }
}

/// A config file for the gateway: both listeners on port 0, no registry, keys in `dir`,
/// then `extra` (routes, clusters).
fn config_file(dir: &Path, extra: &str) -> String {
    format!(
        "[proxy-gateway]\n\
         [proxy-gateway.listen]\nhttp = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\n\
         [proxy-gateway.upstreams]\nregistry = \"\"\n\
         [proxy-gateway.auth]\nhs256_key_file = \"{}\"\n{extra}",
        dir.join("jwt-hs256.key").display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_config_swaps_routes_and_a_refused_change_keeps_the_old_one() {
    let (a, _a) = upstream("a");
    let (b, _b) = upstream("b");
    let dir = tempfile::tempdir().unwrap();
    let mut config = Config::for_test(dir.path());
    config.upstreams.clusters = [
        ("core-engine".to_owned(), vec![a.to_string()]),
        ("other".to_owned(), vec![b.to_string()]),
    ]
    .into();
    let gateway = Gateway::start(App::build(config).await.unwrap(), dir.path()).await;
    let mut admin = gateway.admin_client().await;
    let mut engine = gateway.engine().await;
    assert_eq!(echo(&mut engine, b"x").await.unwrap(), "a");

    let current = admin
        .get_config(pb::GetConfigRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(current.version, 1);
    assert!(
        current.toml.starts_with("[proxy-gateway]"),
        "{}",
        current.toml
    );

    // Send the engine's calls to `other` instead.
    let moved = format!(
        "{}\n[[proxy-gateway.routes]]\nmatch = {{ prefix = \"/omnimesh.engine.v1.\" }}\ncluster = \"other\"\n",
        current.toml
    );
    let dry = admin
        .apply_config(pb::ApplyConfigRequest {
            toml: moved.clone(),
            dry_run: true,
            expected_version: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((dry.version, dry.applied), (1, false));
    assert_eq!(
        echo(&mut engine, b"x").await.unwrap(),
        "a",
        "a dry run changes nothing"
    );
    let applied = admin
        .apply_config(pb::ApplyConfigRequest {
            toml: moved.clone(),
            dry_run: false,
            expected_version: 1,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((applied.version, applied.applied), (2, true));
    for _ in 0..20 {
        assert_eq!(echo(&mut engine, b"x").await.unwrap(), "b");
    }

    // Refused: a bad regex, a restart-only key, a stale version, oversized text.
    let refusals = [
        (
            format!(
                "{moved}\n[[proxy-gateway.routes]]\nmatch = {{ regex = \"[\" }}\ncluster = \"x\"\n"
            ),
            0,
            "bad regular expression",
        ),
        (
            moved.replace("worker_threads = 0", "worker_threads = 7"),
            0,
            "`worker_threads`: changes only with a restart",
        ),
        (moved.clone(), 1, "version 2 is serving, not 1"),
        ("# x\n".repeat(600_000), 0, "larger than"),
    ];
    for (toml, expected_version, reason) in refusals {
        let status = admin
            .apply_config(pb::ApplyConfigRequest {
                toml,
                dry_run: false,
                expected_version,
            })
            .await
            .unwrap_err();
        assert!(
            matches!(
                status.code(),
                Code::InvalidArgument | Code::ResourceExhausted
            ),
            "{status:?}"
        );
        assert!(status.message().contains(reason), "{}", status.message());
    }
    // Still version 2, still routing to b.
    let after = admin
        .get_config(pb::GetConfigRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after.version, 2);
    assert_eq!(echo(&mut engine, b"x").await.unwrap(), "b");
    let text = metrics(gateway.admin).await;
    assert!(
        text.contains("gateway_config_reloads_total{result=\"refused\"} 3"),
        "{text}"
    );
    assert!(
        text.contains("gateway_config_reloads_total{result=\"applied\"} 1"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_config_file_is_watched_and_a_broken_edit_is_refused() {
    let (a, _a) = upstream("a");
    let (b, _b) = upstream("b");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("omnimesh.toml");
    let clusters =
        format!("[proxy-gateway.upstreams.clusters]\ncore-engine = [\"{a}\"]\nother = [\"{b}\"]\n");
    std::fs::write(&path, config_file(dir.path(), &clusters)).unwrap();
    let sources = Sources::new().with_file(&path);
    let config: Config = load_from(&sources).unwrap();
    let app = App::build(config)
        .await
        .unwrap()
        .reload_from(sources)
        .unwrap();
    let gateway = Gateway::start(app, dir.path()).await;
    let mut admin = gateway.admin_client().await;
    let mut engine = gateway.engine().await;
    assert_eq!(echo(&mut engine, b"x").await.unwrap(), "a");

    // An edit, written by rename as editors and ConfigMaps do.
    let route = "[[proxy-gateway.routes]]\nmatch = { prefix = \"/omnimesh.engine.v1.\" }\ncluster = \"other\"\n";
    let staged = dir.path().join("omnimesh.toml.new");
    std::fs::write(
        &staged,
        config_file(dir.path(), &format!("{clusters}{route}")),
    )
    .unwrap();
    std::fs::rename(&staged, &path).unwrap();
    eventually(WAIT, "the edited file to be applied", || {
        let mut admin = admin.clone();
        async move {
            let config = admin.get_config(pb::GetConfigRequest {}).await.ok()?;
            (config.into_inner().version == 2).then_some(())
        }
    })
    .await
    .unwrap();
    assert_eq!(echo(&mut engine, b"x").await.unwrap(), "b");

    // A broken edit in place: refused, version 2 keeps serving.
    std::fs::write(
        &path,
        "[proxy-gateway]\nmax_request_body_bytes = \"lots\"\n",
    )
    .unwrap();
    eventually(WAIT, "the broken edit to be refused", || async {
        metrics(gateway.admin)
            .await
            .contains("gateway_config_reloads_total{result=\"refused\"} 1")
            .then_some(())
    })
    .await
    .unwrap();
    let config = admin
        .get_config(pb::GetConfigRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(config.version, 2);
    assert_eq!(echo(&mut engine, b"x").await.unwrap(), "b");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_file_subsets_and_route_weights_move_traffic() {
    let (stable, _stable) = upstream("stable");
    let (canary, _canary) = upstream("canary");
    let dir = tempfile::tempdir().unwrap();
    let endpoints = dir.path().join("endpoints.toml");
    std::fs::write(
        &endpoints,
        format!("[[clusters.core-engine]]\naddress = \"{stable}\"\nsubset = \"stable\"\n"),
    )
    .unwrap();
    let mut config = Config::for_test(dir.path());
    config.upstreams.endpoints_file = endpoints.display().to_string();
    let gateway = Gateway::start(App::build(config).await.unwrap(), dir.path()).await;
    let mut admin = gateway.admin_client().await;
    let mut engine = gateway.engine().await;
    assert_eq!(echo(&mut engine, b"x").await.unwrap(), "stable");

    // The canary joins through the file.
    std::fs::write(
        &endpoints,
        format!(
            "[[clusters.core-engine]]\naddress = \"{stable}\"\nsubset = \"stable\"\n\
             [[clusters.core-engine]]\naddress = \"{canary}\"\nsubset = \"canary\"\n"
        ),
    )
    .unwrap();
    let clusters = eventually(WAIT, "the canary endpoint", || {
        let mut admin = admin.clone();
        async move {
            let clusters = admin
                .list_clusters(pb::ListClustersRequest {})
                .await
                .ok()?
                .into_inner();
            let engine = clusters.clusters.iter().find(|c| c.name == "core-engine")?;
            (engine.endpoints.len() == 2).then_some(clusters)
        }
    })
    .await
    .unwrap();
    let engine_cluster = &clusters.clusters[0];
    assert_eq!(engine_cluster.endpoint_source, "file");
    assert_eq!(engine_cluster.load_balancer, "p2c_least_request");
    assert!(
        engine_cluster
            .endpoints
            .iter()
            .all(|e| e.health() == pb::EndpointHealth::Healthy)
    );

    // All of the engine's traffic to the canary subset, then a 50/50 split.
    let weights = |stable_weight, canary_weight| pb::SetRouteWeightsRequest {
        route: "/omnimesh.engine.v1.".to_owned(),
        destinations: vec![
            pb::WeightedCluster {
                cluster: "core-engine".into(),
                subset: "stable".into(),
                weight: stable_weight,
            },
            pb::WeightedCluster {
                cluster: "core-engine".into(),
                subset: "canary".into(),
                weight: canary_weight,
            },
        ],
    };
    let route = admin
        .set_route_weights(weights(0, 100))
        .await
        .unwrap()
        .into_inner()
        .route
        .unwrap();
    assert_eq!(route.destinations.len(), 2);
    for _ in 0..50 {
        assert_eq!(echo(&mut engine, b"x").await.unwrap(), "canary");
    }
    admin.set_route_weights(weights(50, 50)).await.unwrap();
    let mut canaries = 0;
    for _ in 0..1000 {
        if echo(&mut engine, b"x").await.unwrap() == "canary" {
            canaries += 1;
        }
    }
    // Binomial(1000, 0.5): ±5 standard deviations is ±79.
    assert!((421..=579).contains(&canaries), "{canaries} of 1000");
    let status = admin.set_route_weights(weights(50, 60)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("add up to 110"),
        "{}",
        status.message()
    );
    let status = admin
        .set_route_weights(pb::SetRouteWeightsRequest {
            route: "/nowhere".into(),
            ..weights(50, 50)
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);

    // A broken endpoints file leaves the endpoints as they were.
    std::fs::write(&endpoints, "[[clusters.core-engine]]\naddress = 7\n").unwrap();
    let stats = eventually(WAIT, "stats of the engine route", || {
        let mut admin = admin.clone();
        async move {
            let stats = admin
                .get_stats(pb::GetStatsRequest {
                    filter: "/omnimesh.engine".into(),
                })
                .await
                .ok()?
                .into_inner();
            (!stats.routes.is_empty()).then_some(stats)
        }
    })
    .await
    .unwrap();
    let engine_stats = &stats.routes[0];
    assert_eq!(engine_stats.cluster, "core-engine");
    assert_eq!(engine_stats.requests, 1051);
    assert_eq!(engine_stats.errors, 0);
    assert!(
        engine_stats.p50_seconds > 0.0 && engine_stats.p50_seconds <= engine_stats.p99_seconds,
        "{engine_stats:?}"
    );
    assert!(stats.active_connections >= 1);
    let clusters = admin
        .list_clusters(pb::ListClustersRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(clusters.clusters[0].endpoints.len(), 2);

    // The canary leaves: its per-endpoint series leave `/metrics` with it.
    let series = |address: std::net::SocketAddr| {
        format!(
            "gateway_endpoint_requests_total{{cluster=\"core-engine\",endpoint=\"{address}\",result=\"success\"}}"
        )
    };
    assert!(metrics(gateway.admin).await.contains(&series(canary)));
    std::fs::write(
        &endpoints,
        format!("[[clusters.core-engine]]\naddress = \"{stable}\"\nsubset = \"stable\"\n"),
    )
    .unwrap();
    let text = eventually(WAIT, "the canary's series to go", || async {
        let text = metrics(gateway.admin).await;
        (!text.contains(&series(canary))).then_some(text)
    })
    .await
    .unwrap();
    assert!(
        text.contains(&series(stable)),
        "the stable endpoint's series stays"
    );
}

#[tokio::test]
async fn explain_says_which_route_cluster_and_endpoint_and_why() {
    let (a, _a) = upstream("a");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("omnimesh.toml");
    std::fs::write(
        &path,
        config_file(
            dir.path(),
            &format!(
                "[proxy-gateway.upstreams.clusters]\nweb = [\"{a}\"]\n\
                 [[proxy-gateway.routes]]\nname = \"beta\"\nhosts = [\"*.example.com\"]\n\
                 match = {{ prefix = \"/\" }}\nheaders = [[\"x-variant\", \"b\"]]\ncluster = \"web\"\nauth = \"operator\"\n\
                 [[proxy-gateway.routes]]\nmatch = {{ regex = \"/items/[0-9]+\" }}\nmethod = \"GET\"\ncluster = \"web\"\n"
            ),
        ),
    )
    .unwrap();
    let config: Config = load_from(&Sources::new().with_file(&path)).unwrap();
    let gateway = Gateway::start(App::build(config).await.unwrap(), dir.path()).await;
    let mut admin = gateway.admin_client().await;
    let explain =
        |method: &str, authority: &str, path: &str, headers: &[(&str, &str)]| pb::ExplainRequest {
            method: method.into(),
            authority: authority.into(),
            path: path.into(),
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        };
    let answer = admin
        .explain(explain(
            "GET",
            "shop.example.com:8080",
            "/x",
            &[("x-variant", "b")],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.route, "beta");
    assert_eq!(answer.cluster, "web");
    assert_eq!(answer.endpoint, a.to_string());
    assert_eq!(answer.steps[0], "route 0 (beta): matches");
    assert!(answer.steps[1].contains("operator"), "{:?}", answer.steps);

    let answer = admin
        .explain(explain("GET", "other.org", "/items/42", &[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.route, "/items/[0-9]+");
    assert!(
        answer.steps[0].contains("host \"other.org\" is not one of [\"*.example.com\"]"),
        "{:?}",
        answer.steps
    );
    let answer = admin
        .explain(explain("POST", "", "/items/42x", &[]))
        .await
        .unwrap()
        .into_inner();
    assert!(answer.route.is_empty());
    assert_eq!(answer.steps.last().unwrap(), "answer: 404 (no route)");
    assert!(
        answer.steps[1].contains("does not match"),
        "{:?}",
        answer.steps
    );

    // The same over HTTP.
    let http = omnimesh_test_support::http::get(
        gateway.admin,
        "/explain?method=GET&authority=a.example.com&path=/&header=x-variant:b",
    )
    .await
    .unwrap();
    assert_eq!(http.status, 200);
    let body: serde_json::Value = serde_json::from_str(&http.body).unwrap();
    assert_eq!(body["route"], "beta");
    assert_eq!(body["endpoint"], a.to_string());
    let config = omnimesh_test_support::http::get(gateway.admin, "/config")
        .await
        .unwrap();
    assert_eq!(config.status, 200);
    assert!(config.body.contains("name = \"beta\""), "{}", config.body);
    let routes = omnimesh_test_support::http::get(gateway.admin, "/routes")
        .await
        .unwrap();
    let routes: serde_json::Value = serde_json::from_str(&routes.body).unwrap();
    assert_eq!(
        routes["routes"][0]["required_roles"],
        serde_json::json!(["operator", "admin"])
    );
    assert_eq!(routes["routes"][1]["path"]["regex"], "/items/[0-9]+");
    let bad = omnimesh_test_support::http::get(gateway.admin, "/explain?header=nocolon")
        .await
        .unwrap();
    assert_eq!(bad.status, 400);
}

#[tokio::test]
async fn changes_need_an_admin_token_and_reads_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = Gateway::start(
        App::build(Config::for_test(dir.path())).await.unwrap(),
        dir.path(),
    )
    .await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", gateway.admin))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut anonymous = GatewayAdminClient::new(channel.clone());
    let current = anonymous
        .get_config(pb::GetConfigRequest {})
        .await
        .unwrap()
        .into_inner();
    let apply = pb::ApplyConfigRequest {
        toml: current.toml.clone(),
        dry_run: false,
        expected_version: 0,
    };
    let status = anonymous.apply_config(apply.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let mut operator =
        GatewayAdminClient::new(authed(channel.clone(), &token(dir.path(), Role::Operator)));
    let status = operator.apply_config(apply.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(
        status.message().contains("needs admin"),
        "{}",
        status.message()
    );
    let status = operator
        .set_route_weights(pb::SetRouteWeightsRequest {
            route: "/".into(),
            destinations: Vec::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    let mut forged = GatewayAdminClient::new(authed(channel, "e30.e30.c2ln"));
    assert_eq!(
        forged.apply_config(apply.clone()).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    let applied = gateway
        .admin_client()
        .await
        .apply_config(apply)
        .await
        .unwrap();
    assert_eq!(applied.into_inner().version, 1);
}
