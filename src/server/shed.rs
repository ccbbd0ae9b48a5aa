//! Back-pressure as a tower layer: UserMetadataService and Check calls beyond a global in-flight limit are
//! refused at once with RESOURCE_EXHAUSTED `OVERLOADED` (and a retry hint) instead of queueing.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use tonic_types::{ErrorDetails, StatusExt as _};

/// The path prefixes of the calls the in-flight limit counts; health and reflection stay answerable.
const LIMITED_PATHS: [&str; 2] = [
    "/usermeta.v1.UserMetadataService/",
    "/envoy.service.auth.v3.Authorization/",
];

/// Refuses UserMetadataService calls beyond a global in-flight limit with RESOURCE_EXHAUSTED at once,
/// rather than queueing them (a queue only turns overload into timeouts).
#[derive(Debug, Clone)]
pub(super) struct ShedLayer {
    in_flight: Option<Arc<AtomicUsize>>,
    limit: usize,
}

impl ShedLayer {
    pub(super) fn new(limit: usize) -> Self {
        ShedLayer {
            // A counter rather than a semaphore: nothing waits for a permit, and releasing one of tokio's
            // takes its waiter lock on every call.
            in_flight: (limit > 0).then(|| Arc::new(AtomicUsize::new(0))),
            limit,
        }
    }
}

/// One counted call; leaving (answer sent or call dropped) counts it out.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn enter(counter: &Arc<AtomicUsize>, limit: usize) -> Option<Self> {
        if counter.fetch_add(1, Ordering::AcqRel) >= limit {
            counter.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(InFlight(Arc::clone(counter)))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl<S> tower::Layer<S> for ShedLayer {
    type Service = Shed<S>;

    fn layer(&self, inner: S) -> Shed<S> {
        Shed {
            inner,
            in_flight: self.in_flight.clone(),
            limit: self.limit,
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct Shed<S> {
    inner: S,
    in_flight: Option<Arc<AtomicUsize>>,
    limit: usize,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<S, B> tower::Service<http::Request<B>> for Shed<S>
where
    S: tower::Service<http::Request<B>>,
    S::Error: Into<BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = futures::future::Either<
        futures::future::Ready<Result<S::Response, BoxError>>,
        CountedFuture<S::Future>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let permit = match &self.in_flight {
            Some(in_flight)
                if LIMITED_PATHS
                    .iter()
                    .any(|prefix| request.uri().path().starts_with(prefix)) =>
            {
                match InFlight::enter(in_flight, self.limit) {
                    Some(permit) => Some(permit),
                    None => {
                        let limit = self.limit;
                        tracing::warn!(limit, "overloaded: refusing a call");
                        // tonic answers a `Status` error as that status.
                        return futures::future::Either::Left(futures::future::err(
                            overloaded(limit).into(),
                        ));
                    }
                }
            }
            _ => None,
        };
        futures::future::Either::Right(CountedFuture {
            call: self.inner.call(request),
            permit,
        })
    }
}

pin_project_lite::pin_project! {
    /// A call counted in flight until it is answered or dropped.
    pub(super) struct CountedFuture<F> {
        #[pin]
        call: F,
        permit: Option<InFlight>,
    }
}

impl<F, T, E> Future for CountedFuture<F>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = std::task::ready!(this.call.poll(cx)).map_err(Into::into);
        this.permit.take();
        Poll::Ready(response)
    }
}

fn overloaded(limit: usize) -> tonic::Status {
    let mut details = ErrorDetails::with_error_info(
        "OVERLOADED",
        crate::api::ERROR_DOMAIN,
        [("max_in_flight".to_owned(), limit.to_string())],
    );
    details.set_retry_info(Some(Duration::from_millis(100)));
    tonic::Status::with_error_details(
        tonic::Code::ResourceExhausted,
        format!(
            "usermeta is at its limit of {limit} calls in flight and refused this one without starting it; retry with backoff"
        ),
        details,
    )
}
