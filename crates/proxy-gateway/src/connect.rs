//! Upstream connections with limits: at most `max_connections` open to one endpoint,
//! and at most `max_pending` requests waiting for one of them; beyond that a request
//! fails at once (`UNAVAILABLE` / 503) instead of queueing without bound — the circuit
//! breaker Envoy calls max_connections and max_pending_requests. A permit is held for
//! as long as the connection lives, idle in the pool included.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request could not get a connection: the endpoint's connections are all busy and
/// too many requests wait already. Not the endpoint's fault (no ejection).
#[derive(Debug, thiserror::Error)]
#[error("{endpoint} has {connections} connections open and {pending} requests waiting, its limits")]
pub struct Overflow {
    /// The endpoint.
    pub endpoint: String,
    /// Its connection limit.
    pub connections: usize,
    /// Its waiting limit.
    pub pending: usize,
}

/// Whether `error` (or what caused it) is an [`Overflow`].
pub fn overflow_in<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Overflow> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(overflow) = error.downcast_ref::<Overflow>() {
            return Some(overflow);
        }
        current = error.source();
    }
    None
}

#[derive(Debug)]
struct Endpoint {
    connections: Arc<Semaphore>,
    waiting: AtomicUsize,
}

#[derive(Debug)]
struct Limits {
    max_connections: usize,
    max_pending: usize,
    endpoints: Mutex<HashMap<String, Arc<Endpoint>>>,
}

/// An `HttpConnector` with per-endpoint connection and waiting limits.
#[derive(Debug, Clone)]
pub struct LimitedConnector {
    inner: HttpConnector,
    limits: Arc<Limits>,
}

impl LimitedConnector {
    /// `inner`, limited to `max_connections` per endpoint with `max_pending` waiting.
    pub fn new(inner: HttpConnector, max_connections: usize, max_pending: usize) -> Self {
        Self {
            inner,
            limits: Arc::new(Limits {
                max_connections: max_connections.clamp(1, Semaphore::MAX_PERMITS),
                max_pending,
                endpoints: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn endpoint(&self, authority: &str) -> Arc<Endpoint> {
        let mut endpoints = self
            .limits
            .endpoints
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        Arc::clone(endpoints.entry(authority.to_owned()).or_insert_with(|| {
            Arc::new(Endpoint {
                connections: Arc::new(Semaphore::new(self.limits.max_connections)),
                waiting: AtomicUsize::new(0),
            })
        }))
    }
}

impl tower::Service<Uri> for LimitedConnector {
    type Response = Limited;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Limited, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        tower::Service::<Uri>::poll_ready(&mut self.inner, cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let authority = uri.authority().map_or_else(String::new, |a| a.to_string());
        let endpoint = self.endpoint(&authority);
        let limits = Arc::clone(&self.limits);
        let mut inner = self.inner.clone();
        Box::pin(async move {
            let permit = match Arc::clone(&endpoint.connections).try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    // Every connection is taken: wait for one, if few enough wait.
                    if endpoint.waiting.fetch_add(1, Ordering::Relaxed) >= limits.max_pending {
                        endpoint.waiting.fetch_sub(1, Ordering::Relaxed);
                        return Err(Box::new(Overflow {
                            endpoint: authority,
                            connections: limits.max_connections,
                            pending: limits.max_pending,
                        }) as BoxError);
                    }
                    let acquired = Arc::clone(&endpoint.connections).acquire_owned().await;
                    endpoint.waiting.fetch_sub(1, Ordering::Relaxed);
                    acquired.map_err(|error| Box::new(error) as BoxError)?
                }
            };
            let io = tower::Service::call(&mut inner, uri).await?;
            Ok(Limited {
                io,
                _permit: permit,
            })
        })
    }
}

pin_project_lite::pin_project! {
    /// An upstream connection holding its endpoint's permit until it closes.
    pub struct Limited {
        #[pin]
        io: TokioIo<TcpStream>,
        _permit: OwnedSemaphorePermit,
    }
}

impl Connection for Limited {
    fn connected(&self) -> Connected {
        self.io.connected()
    }
}

impl hyper::rt::Read for Limited {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.project().io.poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Limited {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }
}
