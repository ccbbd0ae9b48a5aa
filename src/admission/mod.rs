//! The door every call passes, the metadata API's RPCs and Envoy's Check alike: the caller's bearer token,
//! counted against its per-caller rate limit ([`rate_limit`]); then, only for a call that will wait on
//! ZITADEL, the in-flight limits ([`shed`]) and the deadline ([`deadline`]). A call memory answers passes the
//! first step alone: no count, no timer.
//!
//! One [`Admission`] serves both surfaces, so a caller has one rate-limit budget and one share of the calls
//! in flight whichever listener it calls.

pub mod deadline;
pub mod rate_limit;
pub mod shed;

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use tokio::{task::futures::TaskLocalFuture, time::Sleep};
use tonic::metadata::MetadataMap;
use usermeta_zitadel::{CallerToken, resilience};

pub use rate_limit::RateLimiter;
pub use shed::{Admitted, Overload, Shed};

/// Why a call is turned away at the door, before any work.
#[derive(Debug)]
pub enum Refused<E> {
    /// No usable bearer token; `E` says how the surface read it.
    Token(E),
    /// The caller's rate limit is spent; a request is available again after `retry_after`.
    RateLimited {
        /// How long until the caller's next request is admitted.
        retry_after: Duration,
    },
}

/// The per-caller rate limit, the in-flight limits and the deadlines every call is held to.
#[derive(Debug)]
pub struct Admission {
    /// The deadline of a call whose caller sets no `grpc-timeout`.
    request_timeout: Duration,
    /// The longest deadline a caller's `grpc-timeout` may set.
    max_request_timeout: Duration,
    /// `None`: no per-caller rate limit.
    rate_limiter: Option<RateLimiter>,
    shed: Arc<Shed>,
}

impl Admission {
    /// Deadlines of `request_timeout` by default and `max_request_timeout` at most, `rate_limiter` per caller
    /// (none: no limit), and `shed`'s in-flight limits.
    pub fn new(
        request_timeout: Duration,
        max_request_timeout: Duration,
        rate_limiter: Option<RateLimiter>,
        shed: Shed,
    ) -> Self {
        Admission {
            request_timeout,
            max_request_timeout,
            rate_limiter,
            shed: Arc::new(shed),
        }
    }

    /// The first step of every call: its bearer token (as the surface read it), counted against its
    /// caller's rate limit. Nothing here waits or sets up a timer.
    pub fn caller<E>(&self, token: Result<CallerToken, E>) -> Result<CallerToken, Refused<E>> {
        let token = token.map_err(Refused::Token)?;
        if let Some(limiter) = &self.rate_limiter {
            limiter
                .check(token.digest(), Instant::now())
                .map_err(|retry_after| Refused::RateLimited { retry_after })?;
        }
        Ok(token)
    }

    /// Counts a call of `token`'s caller that is about to wait on ZITADEL against the in-flight limits, or
    /// refuses it ([`Shed::admit`]).
    pub fn admit_waiting(&self, token: &CallerToken) -> Result<Admitted, Overload> {
        self.shed.admit(token.digest())
    }

    /// When a call received now must be answered: the caller's `grpc-timeout`, cut to the maximum, or the
    /// request timeout.
    pub fn deadline(&self, metadata: &MetadataMap) -> Instant {
        deadline::deadline(
            metadata,
            self.request_timeout,
            self.max_request_timeout,
            Instant::now(),
        )
    }

    /// The deadline of a call whose caller sets none.
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }
}

/// Runs `work` within `deadline`: every ZITADEL call it makes gets at most the time left, and `None` means
/// the deadline came first, whatever was still pending. Work that is ready at the first poll (an answer from
/// memory) sets up no timer.
pub fn within<F: Future>(deadline: Instant, work: F) -> Within<F> {
    Within {
        work: resilience::with_deadline(deadline, work),
        timer: None,
        deadline,
    }
}

pin_project_lite::pin_project! {
    /// [`within`]'s future. Written out rather than an `async fn`, which would hold `work` twice (its argument
    /// and its body's copy): request futures are large, and every byte of them is copied when one is boxed.
    pub struct Within<F> {
        #[pin]
        work: TaskLocalFuture<Option<Instant>, F>,
        // Set up on the first poll that finds `work` pending.
        #[pin]
        timer: Option<Sleep>,
        deadline: Instant,
    }
}

impl<F: Future> Future for Within<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Poll::Ready(output) = this.work.poll(cx) {
            return Poll::Ready(Some(output));
        }
        if this.timer.is_none() {
            this.timer
                .set(Some(tokio::time::sleep_until((*this.deadline).into())));
        }
        match this.timer.as_pin_mut() {
            Some(timer) => timer.poll(cx).map(|()| None),
            None => Poll::Pending,
        }
    }
}
