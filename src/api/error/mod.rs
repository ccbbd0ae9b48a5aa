//! Every way a request can fail, and the one place each becomes a gRPC status. Statuses carry
//! `google.rpc.BadRequest` for invalid input, `google.rpc.ErrorInfo` (domain `usermeta`) with a stable reason
//! otherwise, and `google.rpc.RetryInfo` when ZITADEL said when to retry. Messages name no token or value.

mod status;
mod upstream;

use std::time::Duration;

use tonic::{Code, Status};

use crate::{
    admission::{Overload, Refused},
    caller::{IdentifyError, TokenError},
    fleet::{Lag, StreamLimit},
    policy::{Denial, Unsealed},
    settings::names,
};
use usermeta_zitadel::UpstreamError;

pub(in crate::api) use status::status_message;
use status::to_status;

/// The `ErrorInfo.domain` of every status usermeta produces.
pub const ERROR_DOMAIN: &str = "usermeta";

/// One thing wrong with a request field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The field path, e.g. `entries[1].value`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub description: String,
}

/// The most violations one answer lists; the rest are counted ("and N more"), so neither the
/// `grpc-status-details-bin` trailer nor the log line grows with what the request chooses to get wrong.
pub(super) const MAX_LISTED_VIOLATIONS: usize = 10;

/// What is wrong with a request: the first [`MAX_LISTED_VIOLATIONS`], and how many more there are.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Violations {
    listed: Vec<Violation>,
    unlisted: usize,
}

impl Violations {
    /// A request with one thing wrong.
    pub fn one(field: impl Into<String>, description: impl Into<String>) -> Self {
        let mut violations = Violations::default();
        violations.add(field, description);
        violations
    }

    /// Adds a violation; past [`MAX_LISTED_VIOLATIONS`] it is only counted.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        if self.listed.len() < MAX_LISTED_VIOLATIONS {
            self.listed.push(Violation {
                field: field.into(),
                description: description.into(),
            });
        } else {
            self.unlisted += 1;
        }
    }

    /// Whether any was added.
    pub fn is_empty(&self) -> bool {
        self.listed.is_empty()
    }

    /// The violations listed in the answer.
    pub fn listed(&self) -> &[Violation] {
        &self.listed
    }

    /// How many more there were.
    pub fn unlisted(&self) -> usize {
        self.unlisted
    }

    /// `Ok(valid)` when nothing was added, the request's error otherwise.
    pub fn into_result<T>(self, valid: T) -> Result<T, ApiError> {
        if self.is_empty() {
            Ok(valid)
        } else {
            Err(ApiError::InvalidRequest(self))
        }
    }
}

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The request breaks the contract; each violation reaches the client as a `google.rpc.BadRequest` field
    /// violation.
    #[error("the request is invalid")]
    InvalidRequest(Violations),
    /// The caller's bearer token is missing, unusable, or not vouched for by ZITADEL.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// The policy does not let the caller do this.
    #[error(transparent)]
    Denied(#[from] Denial),
    /// DeleteMetadata of keys the user does not have, without `allow_missing`.
    #[error("keys not found")]
    KeysNotFound {
        /// The user whose keys were to be removed.
        user_id: String,
        /// The keys of the request, as it named them.
        keys: Vec<String>,
    },
    /// A sealed key's value in ZITADEL does not open: plaintext written around usermeta (the Console, the
    /// API), a damaged or altered envelope, one copied from another user, key or instance, or one under a key
    /// the key file no longer holds. Never passed on as if it were sealed.
    #[error(
        "the value of sealed key `{key}` of user {user_id} in ZITADEL is withheld: {problem}; write it again through usermeta (SetMetadata seals it) or delete it"
    )]
    ValueNotSealed {
        /// Whose value it is.
        user_id: String,
        /// The sealed key.
        key: String,
        /// Why it does not open.
        problem: Unsealed,
    },
    /// FindUsersByMetadata by a sealed key's value.
    #[error(
        "key `{key}` is sealed (policy): ZITADEL holds only its ciphertext, and equal values seal to different ciphertexts, so users cannot be found by its value; keep a searchable copy under an unsealed key if you need to find by it"
    )]
    KeySealed {
        /// The key asked for.
        key: String,
    },
    /// DeleteOrganizationMetadata of keys the organisation does not have, without `allow_missing`.
    #[error("keys not found")]
    OrganizationKeysNotFound {
        /// The organisation whose keys were to be removed.
        org_id: String,
        /// The keys of the request, as it named them.
        keys: Vec<String>,
    },
    /// An organisation call without `organization_id` by a caller whose organisation ZITADEL did not tell.
    #[error(
        "ZITADEL did not say which organisation the caller belongs to, so organization_id cannot be left empty: request the token with the scope `urn:zitadel:iam:user:resourceowner` (or name organization_id)"
    )]
    CallerOrganizationUnknown,
    /// ZITADEL failed or refused the call; kept whole for the status mapping and the log.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The caller's deadline (or the configured request timeout) passed.
    #[error("the request's deadline passed before usermeta could answer")]
    DeadlineExceeded,
    /// The caller sent more requests than its per-caller rate limit allows.
    #[error("too many requests from this caller")]
    RateLimited {
        /// How long until the caller's next request is admitted.
        retry_after: Duration,
    },
    /// `limit` calls already wait on ZITADEL ([`MAX_IN_FLIGHT`](names::MAX_IN_FLIGHT)); this one was not started.
    #[error(
        "usermeta is at its limit of {limit} calls in flight ({setting}) and refused this one without starting it; retry with backoff",
        setting = names::MAX_IN_FLIGHT
    )]
    Overloaded {
        /// The limit reached.
        limit: usize,
    },
    /// This caller already has `limit` calls waiting on ZITADEL ([`MAX_IN_FLIGHT_PER_CALLER`](names::MAX_IN_FLIGHT_PER_CALLER)).
    #[error(
        "this caller already has {limit} calls in flight, its limit ({setting}), and usermeta refused this one without starting it; retry with backoff once earlier calls have finished",
        setting = names::MAX_IN_FLIGHT_PER_CALLER
    )]
    CallerOverloaded {
        /// The caller's limit reached.
        limit: usize,
    },
    /// usermeta's own introspection client was refused: an operator problem, not the caller's.
    #[error(transparent)]
    IntrospectionClient(IdentifyError),
    /// A read of a user ZITADEL does not know (BatchGetMetadata's per-user result).
    #[error("ZITADEL knows no user {user_id}; check the user id")]
    UserNotFound {
        /// The user id as the request named it.
        user_id: String,
    },
    /// METADATA_SOURCE_TOKEN with a token that is not a JWT.
    #[error(
        "the access token is opaque, not a JWT: it carries no metadata of its own; read with source METADATA_SOURCE_USERINFO or METADATA_SOURCE_AUTH_API, or send a JWT (an ID token with \"User Info inside ID Token\", or a JWT access token)"
    )]
    TokenNotJwt,
    /// METADATA_SOURCE_TOKEN while usermeta validates no JWTs.
    #[error(
        "METADATA_SOURCE_TOKEN needs usermeta to validate JWTs against ZITADEL's keys, which this deployment does not: an operator sets {setting}; until then read with METADATA_SOURCE_USERINFO",
        setting = names::JWT_AUDIENCE
    )]
    TokenSourceOff,
    /// A WatchMetadata stream's reader fell further behind than its buffer holds.
    #[error(
        "this WatchMetadata stream's reader fell behind ({}) and the stream has ended, {missed} changes of the watched user unsent: reopen it, read the current values again (ListMetadata), and read the stream faster or narrow it with key_prefix",
        lag_text(lag)
    )]
    WatchLagged {
        /// Changes of the watched user the stream never sent.
        missed: u64,
        /// Which queue overflowed.
        lag: Lag,
    },
    /// The replica holds as many WatchMetadata streams as it may, in all or for this caller.
    #[error("{}", stream_limit_text(limit))]
    TooManyStreams {
        /// The limit reached: the replica's or the caller's.
        limit: StreamLimit,
    },
    /// A WatchMetadata stream reached its longest life.
    #[error(
        "this WatchMetadata stream reached its longest life of {} ({setting}) and has ended: reopen it and read the current values again",
        humantime::format_duration(*max),
        setting = names::WATCH_MAX_DURATION
    )]
    WatchMaxDuration {
        /// The stream's longest life ([`WATCH_MAX_DURATION`](names::WATCH_MAX_DURATION)).
        max: Duration,
    },
    /// A conditional write's condition did not hold (`ETAG_MISMATCH`).
    #[error("{}", condition_text(key, current))]
    ConditionFailed {
        /// The key whose condition did not hold.
        key: String,
        /// What the key is now, as far as the caller may learn it.
        current: Current,
    },
    /// The user's write lock could not be taken (`WRITE_LOCK_UNAVAILABLE`): Redis unreachable or a deadline.
    #[error(
        "the user's write lock could not be taken ({0}): a conditional write or merge patch is never made without it; retry with backoff"
    )]
    WriteLockUnavailable(String),
    /// The write lock expired before the write was made (`WRITE_LOCK_LOST`); nothing was written.
    #[error(
        "the user's write lock expired before the write ({setting} is shorter than this write took) and nothing was written; retry",
        setting = names::WRITE_LOCK_TTL
    )]
    WriteLockLost,
    /// The replica is stopping; its streams end.
    #[error(
        "this usermeta replica is shutting down and ends its streams: reopen the stream (another replica serves it) and read the current values again"
    )]
    ShuttingDown,
}

/// What a key was when its condition did not hold, as far as the caller may learn it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Current {
    /// It holds a value with this etag.
    Etag(String),
    /// It exists; its etag is not for this caller to see (a key the policy does not let them read).
    Exists,
    /// It does not exist.
    Absent,
}

fn condition_text(key: &str, current: &Current) -> String {
    match current {
        Current::Etag(etag) => format!(
            "the condition on key `{key}` does not hold: its current etag is {etag}; nothing was written: read it again, then retry"
        ),
        Current::Exists => format!(
            "the condition on key `{key}` does not hold: the key exists (with another value than the one named); nothing was written"
        ),
        Current::Absent => format!(
            "the condition on key `{key}` does not hold: the key does not exist; nothing was written"
        ),
    }
}

fn lag_text(lag: &Lag) -> String {
    match lag {
        Lag::Stream { changes, bytes } => format!(
            "more than its own buffer of {changes} changes or {bytes} bytes ({}) waited to be read",
            names::WATCH_BUFFER_BYTES
        ),
        Lag::Replica { bytes } => format!(
            "the replica's stream buffers together reached {bytes} bytes ({}) while this stream had changes waiting",
            names::WATCH_BUFFER_MEMORY
        ),
    }
}

fn stream_limit_text(limit: &StreamLimit) -> String {
    match limit {
        StreamLimit::Caller(max) => format!(
            "this caller already has {max} WatchMetadata streams open on this replica, the most one caller may ({}): close one, or narrow what you watch",
            names::WATCH_MAX_STREAMS_PER_CALLER
        ),
        StreamLimit::Replica(max) => format!(
            "this usermeta replica already serves {max} WatchMetadata streams, the most it may ({}): retry later (another replica may serve it)",
            names::WATCH_MAX_STREAMS
        ),
    }
}

impl From<IdentifyError> for ApiError {
    fn from(error: IdentifyError) -> Self {
        match error {
            IdentifyError::Token(e) => ApiError::Token(e),
            IdentifyError::Upstream(e) => ApiError::Upstream(e),
            client @ IdentifyError::IntrospectionClient { .. } => {
                ApiError::IntrospectionClient(client)
            }
        }
    }
}

impl From<Refused<TokenError>> for ApiError {
    fn from(refused: Refused<TokenError>) -> Self {
        match refused {
            Refused::Token(e) => ApiError::Token(e),
            Refused::RateLimited { retry_after } => ApiError::RateLimited { retry_after },
        }
    }
}

impl From<Overload> for ApiError {
    fn from(overload: Overload) -> Self {
        match overload {
            Overload::Global { limit } => ApiError::Overloaded { limit },
            Overload::Caller { limit } => ApiError::CallerOverloaded { limit },
        }
    }
}

/// The status a call ends with (`status::to_status`), logged. Here rather than in `status`: the log lines keep
/// the target `usermeta::api::error`.
impl From<ApiError> for Status {
    fn from(error: ApiError) -> Status {
        let status = to_status(&error);
        if matches!(
            status.code(),
            Code::Unavailable | Code::Internal | Code::ResourceExhausted | Code::DeadlineExceeded
        ) {
            let request_id = crate::telemetry::current_request_id();
            // Named here too: with only warnings logged, the call's span (which carries it) is not.
            tracing::warn!(code = ?status.code(), error = %error, request_id, "request failed");
            // The request id lets an operator find this call's log lines from the client's error.
            if let Some(id) = request_id {
                return Status::with_details_and_metadata(
                    status.code(),
                    format!("{} (request id {id})", status.message()),
                    bytes::Bytes::copy_from_slice(status.details()),
                    status.metadata().clone(),
                );
            }
        } else {
            tracing::info!(code = ?status.code(), message = status.message(), "request refused");
        }
        status
    }
}
