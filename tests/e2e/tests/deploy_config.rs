//! The Helm chart's `omnimesh.toml` (as committed in `k8s/omnimesh.yaml`, which a test in
//! `tests/deploy` keeps equal to the chart) is read by the services' own configuration
//! code: every key the chart writes exists, every value passes validation, and the
//! environment variables the pods set for the database URLs land where they should.

use std::path::{Path, PathBuf};

use omnimesh_common::config::{Sources, load_from};

fn manifest() -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../k8s/omnimesh.yaml");
    std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// The `omnimesh.toml` block of the ConfigMap: the lines indented under the key.
fn rendered_config(manifest: &str) -> String {
    let start = manifest
        .find("\n  omnimesh.toml: |\n")
        .expect("k8s/omnimesh.yaml has a ConfigMap with omnimesh.toml");
    let body = &manifest[start..].splitn(3, '\n').nth(2).expect("a body");
    let mut toml = String::new();
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("    ") {
            toml.push_str(rest);
        } else if !line.trim().is_empty() {
            break;
        }
        toml.push('\n');
    }
    toml
}

fn config_file(dir: &tempfile::TempDir) -> PathBuf {
    let toml = rendered_config(&manifest());
    for section in [
        "[core-engine]",
        "[proxy-gateway]",
        "[mesh-controller]",
        "[omniterm-interface]",
    ] {
        assert!(toml.contains(section), "{section} missing from:\n{toml}");
    }
    let path = dir.path().join("omnimesh.toml");
    std::fs::write(&path, toml).expect("write the config");
    path
}

#[test]
fn every_service_accepts_the_charts_configuration() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sources = Sources::new().with_file(config_file(&dir));

    let engine: core_engine::Config = load_from(&sources).expect("core-engine");
    assert_eq!(engine.listen.grpc.to_string(), "0.0.0.0:50051");
    assert!(
        !engine.keys.generate_master_key,
        "a missing Secret must stop start-up"
    );
    assert_eq!(
        engine.keys.master_key_file,
        Path::new("/etc/omnimesh/secrets/master-key")
    );
    // The engine signs its key-change reports with its own key, the one the controller
    // checks them with, and never creates it.
    let report_key = Path::new("/etc/omnimesh/secrets/engine-report.key");
    assert_eq!(engine.audit.key_file, report_key);
    assert!(!engine.audit.generate_key);
    assert_eq!(
        engine.audit.controller,
        "http://omnimesh-mesh-controller.omnimesh.svc.cluster.local:50052"
    );

    let gateway: proxy_gateway::Config = load_from(&sources).expect("proxy-gateway");
    assert_eq!(gateway.listen.http.to_string(), "0.0.0.0:8080");
    assert_eq!(gateway.listen.admin.to_string(), "0.0.0.0:9901");
    assert_eq!(gateway.upstreams.registry, "");
    assert_eq!(
        gateway.upstreams.clusters["core-engine"],
        ["omnimesh-core-engine.omnimesh.svc.cluster.local:50051"]
    );
    assert!(!gateway.auth.generate_hs256_key);

    let controller: mesh_controller::Config = load_from(&sources).expect("mesh-controller");
    assert_eq!(controller.listen.grpc.to_string(), "0.0.0.0:50052");
    assert!(!controller.auth.generate_hs256_key);
    assert_eq!(controller.reporting.core_engine_key_file, report_key);
    assert!(!controller.reporting.generate_key);

    let terminal: omniterm_interface::Config = load_from(&sources).expect("omniterm-interface");
    assert_eq!(terminal.listen.grpc.to_string(), "0.0.0.0:50053");
}

#[test]
fn the_pods_database_variables_override_the_file() {
    let manifest = manifest();
    let dir = tempfile::tempdir().expect("tempdir");
    let file = config_file(&dir);
    let engine_var = "OMNIMESH_CORE_ENGINE__KEYS__DATABASE_URL";
    let controller_var = "OMNIMESH_MESH_CONTROLLER__EVENTS__DATABASE_URL";
    for var in [engine_var, controller_var] {
        assert!(
            manifest.contains(&format!("- name: {var}\n")),
            "the chart sets {var}"
        );
    }
    let url = "postgres://omnimesh:secret@db.example:5432/omnimesh";
    let sources = Sources::new()
        .with_file(file)
        .with_env(engine_var, url)
        .with_env(controller_var, url);
    let engine: core_engine::Config = load_from(&sources).expect("core-engine");
    assert_eq!(engine.keys.database_url, url);
    let controller: mesh_controller::Config = load_from(&sources).expect("mesh-controller");
    assert_eq!(controller.events.database_url, url);
}
