//! Build runs the real cargo on a small real workspace (two packages named like our
//! services, one of which does not compile), streams its output, records a release
//! with the git revision and the binary's SHA-256, and ListReleases serves it again
//! after a restart (the projection is rebuilt from the log).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use mesh_controller::{App, Config};
use omnimesh_common::auth::{Issuer, Role};
use omnimesh_proto::controller::v1 as pb;
use omnimesh_proto::controller::v1::build_progress::Event;
use omnimesh_proto::controller::v1::events_client::EventsClient;
use omnimesh_proto::controller::v1::runtime_client::RuntimeClient;
use omnimesh_test_support::TestServer;
use omnimesh_test_support::grpc::authed;
use tonic::Code;

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// A git-committed workspace: `core-engine` builds, `proxy-gateway` does not.
fn workspace(dir: &Path) -> String {
    write(
        &dir.join("Cargo.toml"),
        "[workspace]\nmembers = [\"core-engine\", \"proxy-gateway\"]\nresolver = \"2\"\n",
    );
    for (name, main) in [
        ("core-engine", "fn main() { println!(\"engine\"); }\n"),
        ("proxy-gateway", "fn main() { this does not compile }\n"),
    ] {
        write(
            &dir.join(name).join("Cargo.toml"),
            &format!("[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\n"),
        );
        write(&dir.join(name).join("src/main.rs"), main);
    }
    let git = |args: &[&str]| {
        let output = Command::new("git")
            .args(["-c", "user.email=t@example.com", "-c", "user.name=t"])
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    git(&["init", "-q"]);
    git(&["add", "."]);
    git(&["commit", "-qm", "test workspace"]);
    git(&["rev-parse", "HEAD"]).trim().to_owned()
}

async fn start(data: &Path, project: &Path) -> (TestServer, String) {
    let mut config = Config::for_test(data);
    config.build.workspace_dir = project.to_path_buf();
    let token = Issuer::load(&config.auth).unwrap().issue(
        "builder",
        Role::Operator,
        Duration::from_secs(600),
    );
    let app = App::build(config).await.unwrap();
    let server = TestServer::start(|listener, shutdown| app.serve(listener, shutdown)).await;
    (server, token)
}

async fn build(
    client: &mut RuntimeClient<omnimesh_test_support::grpc::Authed>,
    service: &str,
) -> (Vec<String>, Event) {
    let mut stream = client
        .build(pb::BuildRequest {
            service: service.into(),
            release: false,
        })
        .await
        .unwrap()
        .into_inner();
    let mut lines = Vec::new();
    loop {
        let message = tokio::time::timeout(Duration::from_secs(120), stream.message())
            .await
            .expect("cargo finishes within 2 minutes")
            .unwrap()
            .expect("the stream ends with finished or failed");
        match message.event.unwrap() {
            Event::LogLine(line) => lines.push(line),
            last => return (lines, last),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_record_releases_that_survive_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let project = tempfile::tempdir().unwrap();
    let revision = workspace(project.path());
    let (server, token) = start(data.path(), project.path()).await;
    let mut client = RuntimeClient::new(authed(server.channel().await, &token));

    // Hostile or unauthorised requests start nothing.
    let status = RuntimeClient::new(server.channel().await)
        .build(pb::BuildRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    let status = client
        .build(pb::BuildRequest {
            service: "../../etc".into(),
            release: false,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains("unknown service"), "{status:?}");

    let (lines, last) = build(&mut client, "core-engine").await;
    assert!(
        lines
            .iter()
            .any(|line| line.contains("Compiling core-engine")),
        "{lines:?}"
    );
    let Event::Finished(release) = last else {
        panic!("{last:?}\n{lines:?}")
    };
    assert_eq!(release.git_revision, revision);
    assert_eq!(release.service, "core-engine");
    let binary = std::fs::read(project.path().join("target/debug/core-engine")).unwrap();
    let expected = hex::encode(ring::digest::digest(&ring::digest::SHA256, &binary));
    assert_eq!(release.binary_sha256["core-engine"], expected);

    // A build that fails says why and records no release.
    let (lines, last) = build(&mut client, "proxy-gateway").await;
    let Event::Failed(reason) = last else {
        panic!("{last:?}")
    };
    assert!(reason.contains("cargo build failed"), "{reason}");
    assert!(lines.iter().any(|line| line.contains("error")), "{lines:?}");

    let listed = client
        .list_releases(pb::ListReleasesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .releases;
    assert_eq!(listed, std::slice::from_ref(&release));
    let failures = EventsClient::new(server.channel().await)
        .read_all(pb::ReadAllRequest {
            from_position: 0,
            max_count: 100,
            types: vec!["release.build_failed".into()],
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(failures.len(), 1);
    assert_eq!(failures[0].metadata.as_ref().unwrap().actor, "builder");
    server.stop().await.unwrap();

    // After a restart the projection is rebuilt from the log.
    let (server, token) = start(data.path(), project.path()).await;
    let mut client = RuntimeClient::new(authed(server.channel().await, &token));
    let listed = client
        .list_releases(pb::ListReleasesRequest {
            service: "core-engine".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .releases;
    assert_eq!(listed, [release]);
    let other = client
        .list_releases(pb::ListReleasesRequest {
            service: "omniterm-interface".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .releases;
    assert!(other.is_empty());
    server.stop().await.unwrap();
}
