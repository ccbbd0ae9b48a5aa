//! The tower layer that measures every gRPC call: count by method and code, latency, calls in flight.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    time::Instant,
};

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body::{Body, Frame, SizeHint};
use metrics::{counter, gauge, histogram};

use super::{GRPC_DURATION, GRPC_IN_FLIGHT, GRPC_REQUESTS, code_name, method_label};

/// The gRPC status code name of a `grpc-status` value, e.g. `OK`, `NOT_FOUND`.
fn code_label(headers: &HeaderMap) -> Option<&'static str> {
    let code = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .parse::<i32>()
        .ok()?;
    Some(code_name(tonic::Code::from_i32(code)))
}

/// Measures every gRPC call: count by method and code, latency, in-flight. Without a recorder (metrics off)
/// it passes calls through untouched: nothing would read what it measured.
#[derive(Debug, Clone, Copy)]
pub struct GrpcMetricsLayer {
    enabled: bool,
}

impl GrpcMetricsLayer {
    /// The layer; when `enabled` is false it passes calls through unmeasured.
    pub fn new(enabled: bool) -> Self {
        GrpcMetricsLayer { enabled }
    }
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetrics {
            inner,
            enabled: self.enabled,
        }
    }
}

/// A gRPC service measured by [`GrpcMetricsLayer`].
#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    enabled: bool,
}

impl<S, ReqBody, ResBody> tower::Service<Request<ReqBody>> for GrpcMetrics<S>
where
    S: tower::Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: Body<Data = Bytes> + Unpin,
{
    type Response = Response<MeteredBody<ResBody>>;
    type Error = S::Error;
    type Future = MeteredFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        let call = self
            .enabled
            .then(|| CallMeter::start(method_label(request.uri().path())));
        MeteredFuture {
            response: self.inner.call(request),
            call,
        }
    }
}

pin_project_lite::pin_project! {
    /// A call's response on its way, with the meter that is handed on to its body.
    pub struct MeteredFuture<F> {
        #[pin]
        response: F,
        call: Option<CallMeter>,
    }
}

impl<F, ResBody, E> Future for MeteredFuture<F>
where
    F: Future<Output = Result<Response<ResBody>, E>>,
{
    type Output = Result<Response<MeteredBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = std::task::ready!(this.response.poll(cx))?;
        let mut call = this.call.take();
        // A trailers-only response (most errors) carries its status in the headers; otherwise it comes in
        // the trailers at the end of the body.
        if let Some(call) = &mut call
            && let Some(code) = code_label(response.headers())
        {
            call.finish(code);
        }
        Poll::Ready(Ok(response.map(|body| MeteredBody { body, call })))
    }
}

/// One call being measured. Dropping it unfinished (the client went away, the body failed) counts the call
/// as `CANCELLED`, so in-flight always returns to zero.
#[derive(Debug)]
struct CallMeter {
    method: &'static str,
    started: Instant,
    finished: bool,
}

impl CallMeter {
    fn start(method: &'static str) -> Self {
        gauge!(GRPC_IN_FLIGHT).increment(1.0);
        CallMeter {
            method,
            started: Instant::now(),
            finished: false,
        }
    }

    fn finish(&mut self, code: &'static str) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        gauge!(GRPC_IN_FLIGHT).decrement(1.0);
        counter!(GRPC_REQUESTS, "method" => self.method, "code" => code).increment(1);
        histogram!(GRPC_DURATION, "method" => self.method)
            .record(self.started.elapsed().as_secs_f64());
    }
}

impl Drop for CallMeter {
    fn drop(&mut self) {
        self.finish("CANCELLED");
    }
}

/// A response body that reports the call's status when the trailers pass by.
#[derive(Debug)]
pub struct MeteredBody<B> {
    body: B,
    call: Option<CallMeter>,
}

impl<B: Body<Data = Bytes> + Unpin> Body for MeteredBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        let Some(call) = &mut this.call else {
            return frame;
        };
        match &frame {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    call.finish(code_label(trailers).unwrap_or("UNKNOWN"));
                }
            }
            // A body that ends without trailers sent no status: the client sees an error.
            Poll::Ready(Some(Err(_))) | Poll::Ready(None) => call.finish("UNKNOWN"),
            Poll::Pending => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_named_like_grpc() {
        let mut headers = HeaderMap::new();
        assert_eq!(code_label(&headers), None);
        headers.insert("grpc-status", http::HeaderValue::from_static("5"));
        assert_eq!(code_label(&headers), Some("NOT_FOUND"));
    }
}
