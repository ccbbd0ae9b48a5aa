//! Waiting for something to happen instead of sleeping for a guess: a condition polled until it holds, with a
//! deadline far beyond what a loaded machine needs, so a test fails only when the event never comes.

use std::{future::Future, time::Duration};

/// How long [`eventually`] waits before it gives up.
const PATIENCE: Duration = Duration::from_secs(10);
/// How often it looks again.
const POLL: Duration = Duration::from_millis(10);

/// Polls `condition` until it returns `Some`, and returns that; panics naming `what` after [`PATIENCE`].
#[track_caller]
pub(crate) fn eventually<T, F, Fut>(what: &str, mut condition: F) -> impl Future<Output = T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let caller = std::panic::Location::caller();
    async move {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(value) = condition().await {
                return value;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not within {PATIENCE:?} (waiting at {caller})"
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

/// Waits until `holds` (a look at recorded state, such as what the stand-in received) is true; panics naming
/// `what` after [`PATIENCE`].
#[track_caller]
pub(crate) fn until(what: &str, mut holds: impl FnMut() -> bool) -> impl Future<Output = ()> {
    eventually(what, move || std::future::ready(holds().then_some(())))
}

/// Longer than any test: a ZITADEL held this long (`FaultKind::Latency(HANG)`) never answers while one runs, so
/// an answer shows usermeta did not wait for it.
pub(crate) const HANG: Duration = Duration::from_secs(300);

/// Awaits `answer`, failing naming `what` if it takes [`PATIENCE`]: for calls that must not wait for a ZITADEL
/// held by [`HANG`].
pub(crate) async fn promptly<T>(what: &str, answer: impl Future<Output = T>) -> T {
    tokio::time::timeout(PATIENCE, answer)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within {PATIENCE:?}"))
}
