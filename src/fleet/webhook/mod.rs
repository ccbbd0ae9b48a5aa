//! `POST /zitadel/events`: ZITADEL's Actions v2 event target for `user.metadata.*` and `org.metadata.*`. A
//! signed event drops the user's (or organisation's) cached answers on every replica (through Redis, when configured) and reaches the WatchMetadata
//! streams, so a change made in ZITADEL's Console is not served stale for the rest of the TTL.
//!
//! ZITADEL delivers an event at most once and never retries, so the answer is quick and the cache TTL stays
//! the bound on staleness; events only shorten it.

mod event;
#[cfg(test)]
mod fuzz_tests;
mod signature;

use std::{net::SocketAddr, sync::Arc, time::Duration, time::SystemTime};

use tokio::sync::Semaphore;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt as _;

pub use signature::{NoKeys, SignatureError, SigningKeys, TOLERANCE, sign};

use super::Changes;
use crate::http1::{self, Answer};

/// Where ZITADEL POSTs events.
pub const PATH: &str = "/zitadel/events";
/// The largest body accepted: an event carrying a value of 500 000 bytes (ZITADEL's most) is about 670 kB
/// of base64 and JSON.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// The header the signature arrives in (header names are compared case-insensitively); some of ZITADEL's
/// documentation names it with an `X-` prefix.
const SIGNATURE_HEADERS: [&str; 2] = ["zitadel-signature", "x-zitadel-signature"];

/// The webhook's listener, the target's signing keys and what the listener takes on at once.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// Where ZITADEL's events are received (plain HTTP/1.1).
    pub listen: SocketAddr,
    /// The target's signing keys; an event signed by none of them is refused.
    pub keys: SigningKeys,
    /// What the listener takes on at once.
    pub limits: WebhookLimits,
}

/// How much the webhook takes on at once. ZITADEL sends one small event per call over a few connections, so
/// anything beyond these is someone else's traffic, refused before it costs memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WebhookLimits {
    /// Connections open at once; more are answered 503 and closed at once.
    pub max_connections: usize,
    /// Body bytes buffered at once over every request of this replica; a request whose declared length does
    /// not fit in what is left is answered 503 before its body is read.
    pub max_buffered_bytes: usize,
    /// How long a client may take to send a body once its headers are in; a slower one is answered 408.
    pub body_timeout: Duration,
}

impl WebhookLimits {
    /// The production defaults (the settings' defaults).
    pub const DEFAULT: WebhookLimits = WebhookLimits {
        max_connections: 64,
        // Eight events carrying ZITADEL's largest value at once.
        max_buffered_bytes: 8 * MAX_BODY_BYTES,
        // Inside a cluster a body follows its headers at once; a 1 MiB body takes 2 s below 4 Mbit/s only.
        body_timeout: Duration::from_secs(2),
    };
}

impl Default for WebhookLimits {
    fn default() -> Self {
        WebhookLimits::DEFAULT
    }
}

/// Answers ZITADEL's event calls.
#[derive(Debug)]
pub struct Webhook {
    verifier: signature::Verifier,
    changes: Changes,
    limits: WebhookLimits,
    /// One permit per body byte this replica may buffer at once ([`WebhookLimits::max_buffered_bytes`]).
    buffer: Arc<Semaphore>,
}

/// How a request ended: the metric's outcome label, the status and a message that never echoes a body or
/// a signature.
type Outcome = (&'static str, StatusCode, String);

impl Webhook {
    /// The webhook: events signed by one of `keys`, within `limits`, applied through `changes`.
    pub fn new(keys: SigningKeys, limits: WebhookLimits, changes: Changes) -> Arc<Webhook> {
        Arc::new(Webhook {
            verifier: signature::Verifier::new(keys),
            changes,
            limits,
            buffer: Arc::new(Semaphore::new(
                limits.max_buffered_bytes.min(Semaphore::MAX_PERMITS),
            )),
        })
    }

    /// One request: only a signed, fresh, first-seen `POST /zitadel/events` of a metadata event changes
    /// anything.
    pub async fn answer<B>(&self, request: http::Request<B>) -> Answer
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (outcome, status, message) = self.apply(request).await;
        crate::metrics::webhook_event(outcome);
        if status.is_success() {
            tracing::debug!(outcome, "ZITADEL event: {message}");
        } else {
            tracing::info!(
                outcome,
                status = status.as_u16(),
                "ZITADEL event refused: {message}"
            );
        }
        let mut answer = http1::text(status, "text/plain; charset=utf-8", format!("{message}\n"));
        let headers = answer.headers_mut();
        if status == StatusCode::METHOD_NOT_ALLOWED {
            headers.insert(http::header::ALLOW, http::HeaderValue::from_static("POST"));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(
                http::header::RETRY_AFTER,
                http::HeaderValue::from_static("1"),
            );
        }
        answer
    }

    /// Everything that can be decided on the request line and the headers is, before a byte of the body is
    /// read or buffered: who sends a body must have signed it recently, say it is JSON, and declare a length
    /// that fits.
    async fn apply<B>(&self, request: http::Request<B>) -> Outcome
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (parts, body) = request.into_parts();
        if parts.uri.path() != PATH {
            return (
                "not_found",
                StatusCode::NOT_FOUND,
                format!("not found: ZITADEL's events are POSTed to {PATH}"),
            );
        }
        if parts.method != http::Method::POST {
            return (
                "not_found",
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{PATH} takes POST only"),
            );
        }
        if !is_json(&parts.headers) {
            return (
                "unsupported_media_type",
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "events are JSON: Content-Type must be application/json (a target with payload type JSON)"
                    .to_owned(),
            );
        }
        let now = SystemTime::now();
        let header = SIGNATURE_HEADERS
            .iter()
            .find_map(|name| parts.headers.get(*name))
            .map(|value| value.to_str().unwrap_or("\u{fffd}"));
        let header = match self.verifier.check_header(header, now) {
            Ok(header) => header,
            Err(error) => return refused(error),
        };
        // hyper knows the length exactly when Content-Length declared it (ZITADEL always does); a chunked
        // body would have to be read to learn its size.
        let Some(length) = body.size_hint().exact() else {
            return (
                "length_required",
                StatusCode::LENGTH_REQUIRED,
                "the body's length must be declared (Content-Length)".to_owned(),
            );
        };
        let too_large = || {
            (
                "too_large",
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is larger than the {MAX_BODY_BYTES} bytes an event may be"),
            )
        };
        let Some(length) = u32::try_from(length)
            .ok()
            .filter(|length| *length as usize <= MAX_BODY_BYTES)
        else {
            return too_large();
        };
        // Held until the answer is made: the bytes of bodies being read count against one budget.
        let Ok(_buffered) = Arc::clone(&self.buffer).try_acquire_many_owned(length) else {
            return (
                "buffer_full",
                StatusCode::SERVICE_UNAVAILABLE,
                "too many event bodies are being received at once; try again".to_owned(),
            );
        };
        let body_timeout = self.limits.body_timeout;
        let body = http_body_util::Limited::new(body, MAX_BODY_BYTES).collect();
        let body = match tokio::time::timeout(body_timeout, body).await {
            Err(_) => {
                return (
                    "body_timeout",
                    StatusCode::REQUEST_TIMEOUT,
                    format!("the body did not arrive within {body_timeout:?}"),
                );
            }
            Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => return too_large(),
            Ok(Err(error)) => {
                return (
                    "malformed",
                    StatusCode::BAD_REQUEST,
                    format!("the body could not be read: {error}"),
                );
            }
            Ok(Ok(collected)) => collected.to_bytes(),
        };
        let signature = match self.verifier.accept_body(&header, &body, now) {
            Ok(signature) => signature,
            Err(error) => return refused(error),
        };
        if !self.first_in_fleet(&signature).await {
            return refused(SignatureError::Replayed);
        }
        match event::parse(&body) {
            Err(malformed) => ("malformed", StatusCode::BAD_REQUEST, malformed.to_string()),
            Ok(event::Event::Ignored(event_type)) => (
                "ignored",
                StatusCode::OK,
                format!("ignored: {event_type} is not a metadata event"),
            ),
            Ok(event::Event::Organization(org_id)) => {
                tracing::info!(org_id = %org_id, "ZITADEL reported an organisation metadata change");
                let message = format!("applied: change of organisation {org_id}");
                self.changes.organization_changed(&org_id);
                ("applied", StatusCode::OK, message)
            }
            Ok(event::Event::Metadata(change)) => {
                tracing::info!(
                    user_id = %change.user_id,
                    key = %change.key,
                    kind = ?change.kind,
                    "ZITADEL reported a metadata change"
                );
                let message = format!("applied: {:?} of user {}", change.kind, change.user_id);
                self.changes.announce(vec![change]);
                ("applied", StatusCode::OK, message)
            }
        }
    }
}

/// Whether the request says its body is JSON (`application/json`, parameters such as a charset allowed).
fn is_json(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|media_type| media_type.trim().eq_ignore_ascii_case("application/json"))
}

/// A signature that is not accepted: 400 when the header is not one, 401 otherwise.
fn refused(error: SignatureError) -> Outcome {
    let status = match error {
        SignatureError::Malformed(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::UNAUTHORIZED,
    };
    (error.outcome(), status, error.to_string())
}

impl Webhook {
    /// Whether no other replica accepted this signature (ZITADEL posts to one address, and a replay may reach
    /// another replica than the original did). Without Redis, or while it cannot answer, this replica's own
    /// memory is all there is.
    async fn first_in_fleet(&self, signature: &[u8]) -> bool {
        let Some(shared) = self.changes.shared() else {
            return true;
        };
        match shared.claim_signature(signature, 2 * TOLERANCE).await {
            Ok(first) => first,
            Err(error) => {
                tracing::warn!(%error, "Redis could not say whether another replica saw this ZITADEL event; checking replays on this replica only");
                true
            }
        }
    }
}

/// Serves the webhook on `listener` until the task is aborted.
pub fn serve(
    listener: tokio::net::TcpListener,
    webhook: Arc<Webhook>,
) -> tokio::task::JoinHandle<()> {
    let limit = http1::ConnectionLimit {
        max_connections: webhook.limits.max_connections,
        on_refused: || crate::metrics::webhook_event("too_many_connections"),
    };
    tokio::spawn(http1::serve(listener, "webhook", limit, move |request| {
        let webhook = Arc::clone(&webhook);
        async move { webhook.answer(request).await }
    }))
}
