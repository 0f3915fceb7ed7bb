//! Names the configured limit when a request message is too large.
//!
//! tonic refuses an over-size request message before decoding it, answering
//! `OUT_OF_RANGE` "decoded message length too large". Our contract is
//! `RESOURCE_EXHAUSTED` naming the configuration key, so operators know what to raise.
//! This layer rewrites that answer, in the headers of a trailers-only response or in the
//! trailers; every other response passes untouched.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

const TONIC_TOO_LARGE: &str = "Error, decoded message length too large";

/// Rewrites tonic's over-size answer to `RESOURCE_EXHAUSTED` naming `key`.
#[derive(Debug, Clone, Copy, Default)]
pub struct MessageLimitLayer {
    key: Option<&'static str>,
}

impl MessageLimitLayer {
    /// Names `key` (a configuration key such as `limits.max_message_bytes`); `None`
    /// passes every response through.
    pub fn new(key: Option<&'static str>) -> Self {
        Self { key }
    }
}

impl<S> Layer<S> for MessageLimitLayer {
    type Service = MessageLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MessageLimit {
            inner,
            key: self.key,
        }
    }
}

/// The service of [`MessageLimitLayer`].
#[derive(Debug, Clone)]
pub struct MessageLimit<S> {
    inner: S,
    key: Option<&'static str>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for MessageLimit<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<LimitBody<ResBody>>;
    type Error = S::Error;
    type Future = LimitFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        LimitFuture {
            inner: self.inner.call(request),
            key: self.key,
        }
    }
}

pin_project! {
    /// The future of [`MessageLimit`].
    pub struct LimitFuture<F> {
        #[pin]
        inner: F,
        key: Option<&'static str>,
    }
}

impl<F, ResBody, E> Future for LimitFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<LimitBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let key = *this.key;
        let result = ready!(this.inner.poll(cx));
        Poll::Ready(result.map(|mut response| {
            if let Some(key) = key {
                rewrite(response.headers_mut(), key);
            }
            response.map(|inner| LimitBody { inner, key })
        }))
    }
}

pin_project! {
    /// A response body whose trailers are rewritten the same way.
    pub struct LimitBody<B> {
        #[pin]
        inner: B,
        key: Option<&'static str>,
    }
}

impl<B: Body> Body for LimitBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let mut frame = ready!(this.inner.poll_frame(cx));
        if let (Some(key), Some(Ok(frame))) = (*this.key, frame.as_mut())
            && let Some(trailers) = frame.trailers_mut()
        {
            rewrite(trailers, key);
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// `found N bytes, the limit is: M bytes` → (N, M).
fn sizes(message: &str) -> Option<(u64, u64)> {
    let numbers: Vec<u64> = message
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|part| part.parse().ok())
        .collect();
    match numbers[..] {
        [found, limit] => Some((found, limit)),
        _ => None,
    }
}

fn rewrite(headers: &mut HeaderMap, key: &str) {
    if headers.get("grpc-status").map(|value| value.as_bytes()) != Some(b"11") {
        return;
    }
    // The message is percent-encoded on the wire; tonic decodes it for us.
    let Some(status) = tonic::Status::from_header_map(headers)
        .filter(|status| status.message().starts_with(TONIC_TOO_LARGE))
    else {
        return;
    };
    let text = match sizes(status.message()) {
        Some((found, limit)) => {
            format!("`{key}` is {limit} bytes; the request message is {found} bytes")
        }
        None => format!("the request message is larger than `{key}`"),
    };
    headers.remove("grpc-message");
    // Cannot fail for an ASCII message; the original answer stays if it ever did.
    let _ = tonic::Status::resource_exhausted(text).add_header(headers);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(status: &str, message: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-status", status.parse().unwrap());
        headers.insert("grpc-message", message.parse().unwrap());
        headers
    }

    #[test]
    fn only_the_oversize_answer_is_rewritten() {
        let mut too_large = headers(
            "11",
            "Error,%20decoded%20message%20length%20too%20large:%20found%2017825805%20bytes,%20the%20limit%20is:%2016777216%20bytes",
        );
        rewrite(&mut too_large, "limits.max_message_bytes");
        let status = tonic::Status::from_header_map(&too_large).unwrap();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            status.message(),
            "`limits.max_message_bytes` is 16777216 bytes; the request message is 17825805 bytes"
        );
        for (status, message) in [
            ("11", "other%20out%20of%20range"),
            ("3", "Error,%20decoded"),
        ] {
            let mut other = headers(status, message);
            let before = other.clone();
            rewrite(&mut other, "k");
            assert_eq!(other, before);
        }
    }
}
