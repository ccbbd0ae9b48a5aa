//! The tower layer that gives each gRPC call its context: the request id (named by every log line of the
//! call), the `grpc` span for OpenTelemetry (a child of the caller's `traceparent`), and `x-request-id` on the
//! response whenever the id names something.

use std::{
    future::Future,
    pin::Pin,
    task::{Context as TaskContext, Poll},
};

use http::{HeaderValue, Request, Response};
use opentelemetry::{propagation::TextMapPropagator as _, trace::TraceContextExt as _};
use opentelemetry_http::HeaderExtractor;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tokio::task::futures::TaskLocalFuture;
use tracing::{Instrument as _, instrument::Instrumented};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::{
    CURRENT_CALL, CallContext, REQUEST_ID_HEADER, RequestId, TRACEPARENT,
    call_log::CALL_SPAN_TARGET,
};

/// The methods whose responses stream: their lines come after the response's headers.
const STREAMING_METHODS: &[&str] = &["WatchMetadata"];

/// Sets up each gRPC call's context: request id, the `grpc` span (a child of the caller's `traceparent`),
/// and `x-request-id` on the response whenever the id names something.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestContextLayer;

impl<S> tower::Layer<S> for RequestContextLayer {
    type Service = RequestContext<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestContext { inner }
    }
}

/// A service wrapped by [`RequestContextLayer`].
#[derive(Debug, Clone)]
pub struct RequestContext<S> {
    inner: S,
}

impl<S, ReqBody, ResBody> tower::Service<Request<ReqBody>> for RequestContext<S>
where
    S: tower::Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = RequestContextFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let request_id = RequestId::of(request.headers());
        let method = crate::metrics::method_label(request.uri().path());
        // Enabled only when spans are exported: log lines take the call's context from `CallContext`, so
        // without an exporter no call pays for a span.
        let span = tracing::info_span!(
            target: CALL_SPAN_TARGET,
            "grpc",
            method,
            request_id = %request_id,
        );
        let call = CallContext::new(method, request_id);
        if request.headers().contains_key(TRACEPARENT) {
            let parent = TraceContextPropagator::new().extract(&HeaderExtractor(request.headers()));
            let remote = parent.span().span_context().clone();
            if remote.is_valid() {
                let _ = call.trace.set(remote);
            }
            // Fails only when no OpenTelemetry layer is installed (nothing is exported).
            let _ = span.set_parent(parent);
        }
        // The caller's own id always goes back. A generated one goes back when it names something the caller
        // can look up: an exported span, a stream's lines (written after its headers are sent), or else the
        // call's log lines and error messages, known once it is done. A cached read names nothing, and
        // the header would be about a quarter of its response's bytes.
        let header = (matches!(call.request_id, RequestId::Given(_))
            || !span.is_disabled()
            || STREAMING_METHODS.contains(&method))
        .then(|| call.request_id.header_value());
        let response = {
            let _entered = span.enter();
            self.inner.call(request)
        };
        RequestContextFuture {
            call: CURRENT_CALL.scope(call, response.instrument(span)),
            header,
        }
    }
}

pin_project_lite::pin_project! {
    /// A call inside its context; puts the request id on the response.
    pub struct RequestContextFuture<F> {
        #[pin]
        call: TaskLocalFuture<CallContext, Instrumented<F>>,
        header: Option<HeaderValue>,
    }
}

impl<F, ResBody, E> Future for RequestContextFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let mut result = std::task::ready!(this.call.as_mut().poll(cx));
        if let Ok(response) = &mut result {
            let header = this.header.take().or_else(|| {
                let call = this.call.take_value()?;
                call.request_id_handed_out
                    .get()
                    .then(|| call.request_id.header_value())
            });
            if let Some(header) = header {
                response.headers_mut().insert(REQUEST_ID_HEADER, header);
            }
        }
        Poll::Ready(result)
    }
}
