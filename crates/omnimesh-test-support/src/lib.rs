//! Test-only helpers (a dev-dependency of every service crate).
//!
//! [`TestServer::start`] binds `127.0.0.1:0` *before* the server task runs, so a client
//! can connect at once — the kernel queues the connection until the server accepts —
//! and no test ever sleeps to wait for a server. [`TestServer::stop`] signals shutdown
//! and awaits the task, so a server error fails the test. [`grpc`] holds stock-client
//! checks (health, reflection) that every service's tests share.
#![warn(missing_docs)]

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;

pub mod grpc;
pub mod http;
pub mod otlp;
pub mod postgres;

/// How long a test waits for a server to stop before failing.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// The shutdown future handed to a server under test.
pub type Shutdown = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A server running in-process on a loopback port.
pub struct TestServer {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl TestServer {
    /// Binds `127.0.0.1:0` and spawns `serve(listener, shutdown)`.
    ///
    /// # Panics
    /// When no loopback port can be bound.
    pub async fn start<F, Fut, E>(serve: F) -> Self
    where
        F: FnOnce(TcpListener, Shutdown) -> Fut,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<anyhow::Error>,
    {
        let listener = bind().await;
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let (shutdown, signal) = oneshot::channel::<()>();
        let signal: Shutdown = Box::pin(async move {
            // A dropped sender also means "stop".
            let _ = signal.await;
        });
        let server = serve(listener, signal);
        let task = tokio::spawn(async move { server.await.map_err(Into::into) });
        Self {
            addr,
            shutdown: Some(shutdown),
            task,
        }
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A gRPC channel to the server.
    ///
    /// # Panics
    /// When the server does not accept the connection.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.url())
            .expect("a loopback URL is valid")
            .connect()
            .await
            .expect("connecting to the test server")
    }

    /// Signals shutdown and waits for the server to return.
    ///
    /// # Errors
    /// The server's own error, a panic in it, or a stop that takes longer than 20 s.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        tokio::time::timeout(STOP_TIMEOUT, &mut self.task)
            .await
            .context("the server did not stop within 20 s")?
            .context("the server task panicked")?
    }
}

/// A listener on a free loopback port.
///
/// # Panics
/// When no loopback port can be bound.
pub async fn bind() -> TcpListener {
    TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding a loopback port")
}

/// Polls `check` every 20 ms until it returns `Some`, for at most `timeout`.
///
/// For conditions no event announces (a process exiting, a file appearing); never a
/// substitute for awaiting something that can be awaited.
///
/// # Errors
/// When `timeout` passes first; the message says what was awaited.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
