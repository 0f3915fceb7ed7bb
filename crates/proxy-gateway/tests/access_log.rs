//! The real `proxy-gateway` binary with `access_log = true` and JSON logs: one line per
//! request on stderr with method, path (never the query), status, route, cluster,
//! duration and trace id; SIGTERM then stops it cleanly. On an AMD CPU it has re-executed
//! itself once with glibc's copy routine tuned (`omnimesh_common::platform`).

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use http_body_util::Full;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn every_request_is_one_json_access_line() {
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_address = upstream.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = upstream.accept().await {
            let service = hyper::service::service_fn(|_request| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                    bytes::Bytes::from_static(b"hello"),
                )))
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let (http_port, admin_port) = (free_port(), free_port());
    let config = dir.path().join("omnimesh.toml");
    std::fs::write(
        &config,
        format!(
            "[proxy-gateway]\naccess_log = true\n\
             [proxy-gateway.listen]\nhttp = \"127.0.0.1:{http_port}\"\nadmin = \"127.0.0.1:{admin_port}\"\n\
             [proxy-gateway.telemetry]\nlog_format = \"json\"\n\
             [proxy-gateway.auth]\nhs256_key_file = \"{}\"\n\
             [proxy-gateway.upstreams]\nregistry = \"\"\n\
             [proxy-gateway.upstreams.clusters]\nweb = [\"{upstream_address}\"]\n\
             [[proxy-gateway.routes]]\nmatch = {{ prefix = \"/\" }}\ncluster = \"web\"\n",
            dir.path().join("jwt.key").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_proxy-gateway"))
        .env("OMNIMESH_CONFIG", &config)
        .env_remove("RUST_LOG")
        .env_remove("GLIBC_TUNABLES")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if lines_tx.send(line).is_err() {
                return;
            }
        }
    });

    let gateway = std::net::SocketAddr::from(([127, 0, 0, 1], http_port));
    let stream = omnimesh_test_support::eventually(
        Duration::from_secs(30),
        "the gateway to listen",
        || async { tokio::net::TcpStream::connect(gateway).await.ok() },
    )
    .await
    .unwrap();
    // On an AMD CPU the binary has re-executed itself (same process, same arguments: it
    // serves on the configured ports) with glibc's `rep movsb` threshold raised.
    let environ = std::fs::read(format!("/proc/{}/environ", child.id())).unwrap();
    let tuned = String::from_utf8_lossy(&environ)
        .split('\0')
        .any(|entry| entry.starts_with("GLIBC_TUNABLES=glibc.cpu.x86_rep_movsb_threshold="));
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
    let amd = omnimesh_common::platform::cpu_vendor(&cpuinfo) == Some("AuthenticAMD");
    assert_eq!(tuned, amd, "re-executed with the tunable on AMD only");
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let response = sender
        .send_request(
            http::Request::get("/hello?token=secret")
                .header("host", "gateway")
                .body(Full::new(bytes::Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let line = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.recv().await {
            if line.contains("\"target\":\"access\"") {
                return line;
            }
        }
        panic!("stderr ended without an access line");
    })
    .await
    .expect("an access line within 20 s");
    assert!(
        !line.contains("secret"),
        "the query is never logged: {line}"
    );
    let entry: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(entry["method"], "GET");
    assert_eq!(entry["path"], "/hello");
    assert_eq!(entry["status"], 200);
    assert_eq!(entry["route"], "/");
    assert_eq!(entry["cluster"], "web");
    assert!(entry["duration_ms"].as_f64().unwrap() >= 0.0);
    let trace_id = entry["trace_id"].as_str().unwrap();
    assert_eq!(trace_id.len(), 32);
    assert!(trace_id.bytes().all(|b| b.is_ascii_hexdigit()));

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
}
