//! Spans reach a real OTLP/gRPC collector (a tonic server on 127.0.0.1:0) when an
//! endpoint is configured, tagged with the service name.
//!
//! One test per file: `init` installs the process-wide subscriber.

use std::time::Duration;

use omnimesh_telemetry::{TelemetryConfig, init};
use opentelemetry_proto::tonic::common::v1::any_value::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_to_the_configured_collector() {
    let (addr, mut received) = omnimesh_test_support::otlp::collector().await;

    let config = TelemetryConfig {
        otlp_endpoint: Some(format!("http://{addr}")),
        ..TelemetryConfig::default()
    };
    let guard = init("otlp-test", &config).unwrap();
    tracing::info_span!("probe_span", answer = 42).in_scope(|| tracing::info!("inside"));
    // Dropping the guard flushes the batch; it blocks, so not on a runtime worker.
    tokio::task::spawn_blocking(move || drop(guard))
        .await
        .unwrap();

    let export = tokio::time::timeout(Duration::from_secs(20), received.recv())
        .await
        .expect("the collector received nothing within 20 s")
        .unwrap();
    let resource_spans = &export.resource_spans[0];
    let service_name = resource_spans
        .resource
        .as_ref()
        .unwrap()
        .attributes
        .iter()
        .find(|attribute| attribute.key == "service.name")
        .and_then(|attribute| attribute.value.as_ref()?.value.clone());
    assert_eq!(service_name, Some(Value::StringValue("otlp-test".into())));
    let names: Vec<&str> = resource_spans
        .scope_spans
        .iter()
        .flat_map(|scope| &scope.spans)
        .map(|span| span.name.as_str())
        .collect();
    assert!(names.contains(&"probe_span"), "{names:?}");
}
