//! W3C Trace Context (`traceparent`) at the edge.
//!
//! Every request forwarded upstream carries a `traceparent` naming the gateway's own
//! span: the client's trace continues (its trace id and flags, a new span id whose
//! parent is the client's), or a new trace starts. `tracestate` passes through
//! untouched. When an OTLP endpoint is configured, that span is also exported (its ids
//! come from the tracer then), so the upstream's spans hang under the gateway's.

use std::fmt::Write as _;

use http::HeaderValue;

/// A `traceparent` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace.
    pub trace_id: [u8; 16],
    /// The span that sent it (the parent of the receiver's span).
    pub span_id: [u8; 8],
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
}

impl TraceParent {
    /// Parses a `traceparent` header: `00-<32 hex>-<16 hex>-<2 hex>`, lower-case, ids
    /// not all zero. A later version is read by its first four fields, as the
    /// specification asks; version `ff` is invalid.
    pub fn parse(value: &[u8]) -> Option<Self> {
        if value.len() < 55 || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return None;
        }
        let mut version = [0_u8; 1];
        hex_lower(&value[0..2], &mut version)?;
        if version[0] == 0xff || (version[0] == 0 && value.len() != 55) {
            return None;
        }
        if version[0] != 0 && value.len() > 55 && value[55] != b'-' {
            return None;
        }
        let mut parsed = Self {
            trace_id: [0; 16],
            span_id: [0; 8],
            flags: 0,
        };
        hex_lower(&value[3..35], &mut parsed.trace_id)?;
        hex_lower(&value[36..52], &mut parsed.span_id)?;
        let mut flags = [0_u8; 1];
        hex_lower(&value[53..55], &mut flags)?;
        parsed.flags = flags[0];
        if parsed.trace_id == [0; 16] || parsed.span_id == [0; 8] {
            return None;
        }
        Some(parsed)
    }

    /// The gateway's span for a request that came with `parent` (or none): the same
    /// trace and flags with a new span id, or a new sampled trace.
    pub fn child_of(parent: Option<&TraceParent>) -> Self {
        let span_id = nonzero_random().to_be_bytes();
        match parent {
            Some(parent) => Self {
                trace_id: parent.trace_id,
                span_id,
                flags: parent.flags,
            },
            None => {
                let mut trace_id = [0_u8; 16];
                trace_id[..8].copy_from_slice(&nonzero_random().to_be_bytes());
                trace_id[8..].copy_from_slice(&crate::balance::random().to_be_bytes());
                Self {
                    trace_id,
                    span_id,
                    flags: 1,
                }
            }
        }
    }

    /// The trace id in hex (for logs).
    pub fn trace_id_hex(&self) -> String {
        hex::encode(self.trace_id)
    }

    /// The header value.
    pub fn header(&self) -> HeaderValue {
        let mut text = String::with_capacity(55);
        let _ = write!(
            text,
            "00-{}-{}-{:02x}",
            hex::encode(self.trace_id),
            hex::encode(self.span_id),
            self.flags
        );
        HeaderValue::from_str(&text).expect("hex and dashes are a valid header value")
    }
}

fn nonzero_random() -> u64 {
    loop {
        let value = crate::balance::random();
        if value != 0 {
            return value;
        }
    }
}

/// Decodes lower-case hex only (the specification forbids upper case).
fn hex_lower(text: &[u8], out: &mut [u8]) -> Option<()> {
    if text.iter().any(u8::is_ascii_uppercase) {
        return None;
    }
    hex::decode_to_slice(text, out).ok()
}

/// The span exported for one request, when an OTLP endpoint is configured.
pub(crate) struct ExportedSpan {
    span: opentelemetry::global::BoxedSpan,
    /// `GET`, … (the name is set at the end, once the route is known).
    method: http::Method,
    /// The gRPC method's path, for gRPC calls.
    grpc_path: Option<String>,
}

impl std::fmt::Debug for ExportedSpan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExportedSpan")
    }
}

impl ExportedSpan {
    /// Starts the server span for a request (child of `parent`), and returns it with
    /// its ids as the `traceparent` to send upstream (`None` when the tracer made no
    /// valid span).
    pub(crate) fn start(
        method: &http::Method,
        grpc_path: Option<&str>,
        parent: Option<&TraceParent>,
        attributes: Vec<opentelemetry::KeyValue>,
    ) -> (Self, Option<TraceParent>) {
        use opentelemetry::trace::{
            SpanContext, SpanId, SpanKind, TraceContextExt as _, TraceFlags, TraceId, TraceState,
            Tracer as _,
        };
        let tracer = opentelemetry::global::tracer(crate::SERVICE);
        let context = match parent {
            Some(parent) => {
                opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
                    TraceId::from_bytes(parent.trace_id),
                    SpanId::from_bytes(parent.span_id),
                    TraceFlags::new(parent.flags),
                    true,
                    TraceState::default(),
                ))
            }
            None => opentelemetry::Context::new(),
        };
        let span = tracer
            .span_builder(format!("{method}"))
            .with_kind(SpanKind::Server)
            .with_attributes(attributes)
            .start_with_context(&tracer, &context);
        // Its ids go upstream, so that upstreams' spans hang under the exported one.
        let ids = {
            use opentelemetry::trace::Span as _;
            let context = span.span_context();
            context.is_valid().then(|| TraceParent {
                trace_id: context.trace_id().to_bytes(),
                span_id: context.span_id().to_bytes(),
                flags: context.trace_flags().to_u8(),
            })
        };
        (
            Self {
                span,
                method: method.clone(),
                grpc_path: grpc_path.map(str::to_owned),
            },
            ids,
        )
    }

    /// Ends the span with the request's outcome.
    pub(crate) fn end(self, status: u16, grpc_status: &str, route: &str, cluster: &str) {
        use opentelemetry::KeyValue;
        use opentelemetry::trace::Span as _;
        let Self {
            mut span,
            method,
            grpc_path,
        } = self;
        // Bounded names: the gRPC method of a routed call (`/pkg.Service/Method`), else
        // the HTTP method and the route.
        span.update_name(match grpc_path {
            Some(path) if route != "none" => path,
            _ => format!("{method} {route}"),
        });
        span.set_attribute(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
        if !grpc_status.is_empty() {
            span.set_attribute(KeyValue::new(
                "rpc.grpc.status_code",
                grpc_status.to_owned(),
            ));
        }
        span.set_attribute(KeyValue::new("http.route", route.to_owned()));
        span.set_attribute(KeyValue::new("omnimesh.cluster", cluster.to_owned()));
        if status >= 500
            || matches!(
                grpc_status,
                "UNKNOWN" | "DEADLINE_EXCEEDED" | "INTERNAL" | "UNAVAILABLE" | "DATA_LOSS"
            )
        {
            span.set_status(opentelemetry::trace::Status::error(format!(
                "{status} {grpc_status}"
            )));
        }
        span.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_specification_example_parses_and_round_trips() {
        let parsed = TraceParent::parse(EXAMPLE.as_bytes()).unwrap();
        assert_eq!(parsed.flags, 1);
        assert_eq!(parsed.header(), EXAMPLE);
        let child = TraceParent::child_of(Some(&parsed));
        assert_eq!(child.trace_id, parsed.trace_id);
        assert_eq!(child.flags, parsed.flags);
        assert_ne!(child.span_id, parsed.span_id);
        assert_eq!(TraceParent::parse(child.header().as_bytes()), Some(child));
    }

    #[test]
    fn invalid_values_are_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad.as_bytes()), None, "{bad}");
        }
        // A later version with more fields is read by its first four.
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes";
        assert!(TraceParent::parse(later.as_bytes()).is_some());
    }

    #[test]
    fn a_new_trace_is_sampled_and_not_zero() {
        let fresh = TraceParent::child_of(None);
        assert_ne!(fresh.trace_id, [0; 16]);
        assert_eq!(fresh.flags, 1);
        assert_ne!(TraceParent::child_of(None).trace_id, fresh.trace_id);
    }
}
