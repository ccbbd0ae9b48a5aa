//! Fault injection: latency, error statuses, rate limiting, dropped connections and malformed JSON.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use axum::response::Response;
use http::{HeaderValue, StatusCode, header};

use super::errors;

/// A fault to inject into the answers to matching requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// Requests whose raw path starts with this prefix are affected; `""` matches every path.
    pub path_prefix: String,
    /// How many requests it affects; `None` means until [`super::StandIn::clear_faults`].
    pub times: Option<u32>,
    /// What happens to an affected request.
    pub kind: FaultKind,
}

/// What a [`Fault`] does to a request. The request is recorded either way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FaultKind {
    /// Waits this long, then answers normally.
    Latency(Duration),
    /// Answers this HTTP status with a grpc-gateway body `{"code":<gRPC code for the status>,"message":"..."}`.
    Status(u16),
    /// Answers `429 Too Many Requests` (gRPC code 8), with `Retry-After` when given.
    TooManyRequests {
        /// The `Retry-After` header value in seconds; `None` omits the header.
        retry_after_secs: Option<u64>,
    },
    /// Closes the connection without any HTTP answer.
    DropConnection,
    /// Answers `200` with a truncated JSON body.
    MalformedJson,
    /// Answers this HTTP status with exactly this JSON body: for answers a proxy or a broken ZITADEL might
    /// give (an error body claiming code 0, an oversized error id).
    Body {
        /// The HTTP status.
        status: u16,
        /// The body, sent as `application/json`.
        json: String,
    },
}

impl FaultKind {
    /// The answer for the kinds that answer at once (everything but latency and dropped connections). On a
    /// Connect path (`connect`), error statuses come with a Connect error body (`{"code":"unavailable",...}`)
    /// instead of a grpc-gateway one, as ZITADEL's Connect handlers write them.
    pub(super) fn response(&self, connect: bool) -> Response {
        let error = |status: StatusCode, grpc: i32, message: &str| {
            if connect {
                let code = errors::Code::for_status(status);
                let mut response = errors::Failure::plain(code, message).to_connect();
                *response.status_mut() = status;
                response
            } else {
                errors::gateway_error(status, grpc, message, None)
            }
        };
        match self {
            FaultKind::Status(status) => {
                let status =
                    StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                let message = format!("stand-in fault: {status}");
                error(status, errors::grpc_code_for_status(status), &message)
            }
            FaultKind::TooManyRequests { retry_after_secs } => {
                let mut response = error(
                    StatusCode::TOO_MANY_REQUESTS,
                    8,
                    "stand-in fault: rate limit exceeded",
                );
                if let Some(secs) = retry_after_secs {
                    response
                        .headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from(*secs));
                }
                response
            }
            FaultKind::MalformedJson => errors::json_response(
                StatusCode::OK,
                bytes::Bytes::from_static(br#"{"details":{"totalResult":"1","processedSequence":"#),
            ),
            FaultKind::Body { status, json } => errors::json_response(
                StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                bytes::Bytes::from(json.clone()),
            ),
            // Not reached: these are handled by the connection code; answer like a broken upstream.
            FaultKind::Latency(_) | FaultKind::DropConnection => errors::gateway_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                13,
                "stand-in fault",
                None,
            ),
        }
    }
}

/// The pushed faults, tried in order.
#[derive(Debug, Default)]
pub(super) struct Faults {
    // Lets the (usual) fault-free request skip the lock.
    count: AtomicUsize,
    list: Mutex<Vec<Fault>>,
}

impl Faults {
    pub(super) fn push(&self, fault: Fault) {
        let mut list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
        list.push(fault);
        self.count.store(list.len(), Ordering::Release);
    }

    pub(super) fn clear(&self) {
        let mut list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
        list.clear();
        self.count.store(0, Ordering::Release);
    }

    /// The kind of the first fault matching `path` with uses left, using one of them up.
    pub(super) fn take(&self, path: &str) -> Option<FaultKind> {
        if self.count.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut list = self.list.lock().unwrap_or_else(PoisonError::into_inner);
        let index = list
            .iter()
            .position(|fault| path.starts_with(&fault.path_prefix) && fault.times != Some(0))?;
        let kind = list[index].kind.clone();
        if let Some(times) = &mut list[index].times {
            *times -= 1;
            if *times == 0 {
                list.remove(index);
                self.count.store(list.len(), Ordering::Release);
            }
        }
        Some(kind)
    }
}
