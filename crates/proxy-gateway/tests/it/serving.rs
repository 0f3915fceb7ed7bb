//! Both listeners answer like the SPEC says: health on the data plane; GatewayAdmin,
//! health, reflection and the HTTP probes on the admin port.

use omnimesh_proto::gateway::v1::GetConfigRequest;
use omnimesh_proto::gateway::v1::gateway_admin_client::GatewayAdminClient;
use omnimesh_test_support::TestServer;
use omnimesh_test_support::grpc::{assert_serves, health_status, reflection_services};
use omnimesh_test_support::http::assert_probes;
use proxy_gateway::{App, Config, Listeners};
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;

/// The running gateway: `server` is the data plane; `admin` its admin address.
struct Gateway {
    server: TestServer,
    admin: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Gateway {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let app = App::build(Config::for_test(dir.path())).await.unwrap();
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
        Self {
            server,
            admin,
            _dir: dir,
        }
    }

    async fn admin_channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.admin))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn data_plane_answers_health_for_the_gateway_itself() {
    let gateway = Gateway::start().await;
    let status = health_status(gateway.server.channel().await, "")
        .await
        .unwrap();
    assert_eq!(status, ServingStatus::Serving);
    gateway.server.stop().await.unwrap();
}

#[tokio::test]
async fn admin_port_serves_gateway_admin_health_reflection_and_probes() {
    let gateway = Gateway::start().await;
    let channel = gateway.admin_channel().await;
    assert_serves(channel.clone(), &["omnimesh.gateway.v1.GatewayAdmin"]).await;
    let config = GatewayAdminClient::new(channel)
        .get_config(GetConfigRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(config.version, 1);
    let metrics = assert_probes(gateway.admin, "omnimesh_proxy_gateway").await;
    assert!(
        metrics.contains("method=\"/omnimesh.gateway.v1.GatewayAdmin/GetConfig\",code=\"OK\"} 1"),
        "{metrics}"
    );
    gateway.server.stop().await.unwrap();
}

#[tokio::test]
async fn data_plane_does_not_expose_admin_services() {
    let gateway = Gateway::start().await;
    let status = GatewayAdminClient::new(gateway.server.channel().await)
        .get_config(GetConfigRequest::default())
        .await
        .unwrap_err();
    // Not served here at all: the data plane's fallback answers, not GatewayAdmin.
    assert_eq!(status.code(), tonic::Code::Unimplemented);
    let reflection = reflection_services(gateway.server.channel().await).await;
    assert!(
        reflection.is_err(),
        "reflection must not be on the data plane"
    );
    gateway.server.stop().await.unwrap();
}
