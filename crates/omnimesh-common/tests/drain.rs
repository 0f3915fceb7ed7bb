//! Graceful shutdown: in-flight calls finish, new connections are refused, health and
//! readiness turn down first, and a call that never ends is cut at the drain timeout.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use omnimesh_common::server::{GrpcServer, ServerConfig};
use omnimesh_test_support::{TestServer, eventually, http};
use tokio::sync::{Notify, Semaphore};
use tonic::body::Body;
use tonic::server::NamedService;

/// Answers once a permit is released; tells the test when a call has arrived.
#[derive(Clone)]
struct Slow {
    arrived: Arc<Notify>,
    release: Arc<Semaphore>,
}

impl NamedService for Slow {
    const NAME: &'static str = "test.Slow";
}

impl tower_service::Service<http_types::Request<Body>> for Slow {
    type Response = http_types::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _request: http_types::Request<Body>) -> Self::Future {
        let (arrived, release) = (Arc::clone(&self.arrived), Arc::clone(&self.release));
        Box::pin(async move {
            arrived.notify_one();
            let _permit = release.acquire().await.expect("the semaphore stays open");
            Ok(http_types::Response::new(Body::new(String::from("done"))))
        })
    }
}

fn slow_server(drain_timeout: Duration) -> (GrpcServer, Slow) {
    let slow = Slow {
        arrived: Arc::new(Notify::new()),
        release: Arc::new(Semaphore::new(0)),
    };
    let config = ServerConfig {
        drain_timeout,
        ..ServerConfig::default()
    };
    let server = GrpcServer::builder("test", &config)
        .add_service(slow.clone())
        .admin_http(omnimesh_telemetry::Metrics::new("test", "0.0.0"))
        .build()
        .unwrap();
    (server, slow)
}

/// Waits (bounded) for the call to reach the service; fails if it was answered instead.
async fn arrival<T: std::fmt::Debug>(slow: &Slow, in_flight: &tokio::task::JoinHandle<T>) {
    let arrived = tokio::time::timeout(Duration::from_secs(10), slow.arrived.notified()).await;
    assert!(
        arrived.is_ok(),
        "the call never reached the service (finished: {})",
        in_flight.is_finished()
    );
}

#[tokio::test]
async fn shutdown_finishes_in_flight_calls_and_refuses_new_ones() {
    let (server, slow) = slow_server(Duration::from_secs(20));
    let readiness = server.readiness();
    let test_server =
        TestServer::start(|listener, shutdown| server.serve(listener, shutdown)).await;
    let addr = test_server.addr();

    let in_flight = tokio::spawn(http::get(addr, "/test.Slow/Call"));
    arrival(&slow, &in_flight).await;

    let stopping = tokio::spawn(test_server.stop());
    eventually(Duration::from_secs(5), "readiness to turn off", || async {
        (!readiness.is_ready()).then_some(())
    })
    .await
    .unwrap();
    eventually(Duration::from_secs(5), "the listener to close", || async {
        tokio::net::TcpStream::connect(addr)
            .await
            .is_err()
            .then_some(())
    })
    .await
    .unwrap();
    assert!(
        !stopping.is_finished(),
        "the server must wait for the in-flight call"
    );

    slow.release.add_permits(1);
    let response = in_flight.await.unwrap().unwrap();
    assert_eq!((response.status, response.body.as_str()), (200, "done"));
    stopping.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_call_that_never_ends_is_cut_at_the_drain_timeout() {
    let (server, slow) = slow_server(Duration::from_millis(200));
    let test_server =
        TestServer::start(|listener, shutdown| server.serve(listener, shutdown)).await;
    let in_flight = tokio::spawn(http::get(test_server.addr(), "/test.Slow/Call"));
    arrival(&slow, &in_flight).await;

    let started = tokio::time::Instant::now();
    test_server.stop().await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(200));
    assert!(
        in_flight.await.unwrap().is_err(),
        "the cut call sees its connection close"
    );
}

#[tokio::test]
async fn readyz_reports_ready_while_serving() {
    let (server, _slow) = slow_server(Duration::from_secs(1));
    let test_server =
        TestServer::start(|listener, shutdown| server.serve(listener, shutdown)).await;
    let readyz = http::get(test_server.addr(), "/readyz").await.unwrap();
    assert_eq!(readyz.status, 200);
    test_server.stop().await.unwrap();
}
