//! Every way a request can fail, and the one place each becomes a gRPC status. Statuses carry
//! `google.rpc.BadRequest` for invalid input, `google.rpc.ErrorInfo` (domain `usermeta`) with a stable reason
//! otherwise, and `google.rpc.RetryInfo` when ZITADEL said when to retry. Messages name no token or value.

use std::{collections::HashMap, time::Duration};

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::reason::Reason;
use crate::{
    caller::{IdentifyError, TokenError},
    fleet::{Lag, StreamLimit},
    policy::Denial,
};
use usermeta_zitadel::{
    Endpoint, ErrorKind, UpstreamError, auth_api::ZITADEL_AUDIENCE_SCOPE, budget::Class,
};

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
pub const MAX_LISTED_VIOLATIONS: usize = 10;

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
    #[error("the request is invalid")]
    InvalidRequest(Violations),
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Denied(#[from] Denial),
    #[error("keys not found")]
    KeysNotFound { user_id: String, keys: Vec<String> },
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The caller's deadline (or the configured request timeout) passed.
    #[error("the request's deadline passed before usermeta could answer")]
    DeadlineExceeded,
    /// The caller sent more requests than its per-caller rate limit allows.
    #[error("too many requests from this caller")]
    RateLimited { retry_after: Duration },
    /// `limit` calls already wait on ZITADEL ([`MAX_IN_FLIGHT`](crate::settings::names::MAX_IN_FLIGHT)); this one was not started.
    #[error(
        "usermeta is at its limit of {limit} calls in flight ({setting}) and refused this one without starting it; retry with backoff",
        setting = crate::settings::names::MAX_IN_FLIGHT
    )]
    Overloaded { limit: usize },
    /// This caller already has `limit` calls waiting on ZITADEL ([`MAX_IN_FLIGHT_PER_CALLER`](crate::settings::names::MAX_IN_FLIGHT_PER_CALLER)).
    #[error(
        "this caller already has {limit} calls in flight, its limit ({setting}), and usermeta refused this one without starting it; retry with backoff once earlier calls have finished",
        setting = crate::settings::names::MAX_IN_FLIGHT_PER_CALLER
    )]
    CallerOverloaded { limit: usize },
    /// usermeta's own introspection client was refused: an operator problem, not the caller's.
    #[error(transparent)]
    IntrospectionClient(IdentifyError),
    /// A read of a user ZITADEL does not know (BatchGetMetadata's per-user result).
    #[error("ZITADEL knows no user {user_id}; check the user id")]
    UserNotFound { user_id: String },
    /// METADATA_SOURCE_TOKEN with a token that is not a JWT.
    #[error(
        "the access token is opaque, not a JWT: it carries no metadata of its own; read with source METADATA_SOURCE_USERINFO or METADATA_SOURCE_AUTH_API, or send a JWT (an ID token with \"User Info inside ID Token\", or a JWT access token)"
    )]
    TokenNotJwt,
    /// METADATA_SOURCE_TOKEN while usermeta validates no JWTs.
    #[error(
        "METADATA_SOURCE_TOKEN needs usermeta to validate JWTs against ZITADEL's keys, which this deployment does not: an operator sets {setting}; until then read with METADATA_SOURCE_USERINFO",
        setting = crate::settings::names::JWT_AUDIENCE
    )]
    TokenSourceOff,
    /// A WatchMetadata stream's reader fell further behind than its buffer holds.
    #[error(
        "this WatchMetadata stream's reader fell behind ({}) and the stream has ended, {missed} changes of the watched user unsent: reopen it, read the current values again (ListMetadata), and read the stream faster or narrow it with key_prefix",
        lag_text(lag)
    )]
    WatchLagged { missed: u64, lag: Lag },
    /// The replica holds as many WatchMetadata streams as it may, in all or for this caller.
    #[error("{}", stream_limit_text(limit))]
    TooManyStreams { limit: StreamLimit },
    /// A WatchMetadata stream reached its longest life.
    #[error(
        "this WatchMetadata stream reached its longest life of {} ({setting}) and has ended: reopen it and read the current values again",
        humantime::format_duration(*max),
        setting = crate::settings::names::WATCH_MAX_DURATION
    )]
    WatchMaxDuration { max: Duration },
    /// The replica is stopping; its streams end.
    #[error(
        "this usermeta replica is shutting down and ends its streams: reopen the stream (another replica serves it) and read the current values again"
    )]
    ShuttingDown,
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

/// One failed result of a batch as the `google.rpc.Status` the same failure of a single call would be: its
/// code, message and details (ErrorInfo, RetryInfo, BadRequest).
pub(super) fn status_message(error: &ApiError) -> tonic_types::Status {
    let status = to_status(error);
    let code = status.code() as i32;
    // Statuses with details carry them as an encoded google.rpc.Status of the same code and message.
    <tonic_types::Status as prost::Message>::decode(status.details())
        .ok()
        .filter(|decoded| decoded.code == code)
        .unwrap_or_else(|| tonic_types::Status {
            code,
            message: status.message().to_owned(),
            details: Vec::new(),
        })
}

fn to_status(error: &ApiError) -> Status {
    match error {
        ApiError::InvalidRequest(violations) => {
            let mut details = ErrorDetails::new();
            for v in violations.listed() {
                details.add_bad_request_violation(v.field.clone(), v.description.clone());
            }
            let mut summary = violations
                .listed()
                .iter()
                .map(|v| format!("{}: {}", v.field, v.description))
                .collect::<Vec<_>>()
                .join("; ");
            if violations.unlisted() > 0 {
                summary.push_str(&format!(
                    "; and {} more not listed (fix these and send again)",
                    violations.unlisted()
                ));
            }
            Status::with_error_details(
                Code::InvalidArgument,
                format!("invalid request: {summary}"),
                details,
            )
        }
        ApiError::UserNotFound { user_id } => with_info(
            Code::NotFound,
            error.to_string(),
            Reason::UserNotFound,
            [("user_id", user_id.clone())],
        ),
        ApiError::TokenNotJwt => with_info(
            Code::FailedPrecondition,
            error.to_string(),
            Reason::TokenNotJwt,
            [],
        ),
        ApiError::WatchLagged { missed, lag } => {
            let (buffer, limit) = match lag {
                Lag::Stream { changes, bytes } => ("stream", format!("{changes} changes or {bytes} bytes")),
                Lag::Replica { bytes } => ("replica", format!("{bytes} bytes")),
            };
            with_info(
                Code::ResourceExhausted,
                error.to_string(),
                Reason::WatchLagged,
                [
                    ("missed", missed.to_string()),
                    ("buffer", buffer.to_owned()),
                    ("limit", limit),
                ],
            )
        }
        ApiError::TooManyStreams { limit } => {
            let (scope, max, setting) = match limit {
                StreamLimit::Caller(max) => ("caller", max, crate::settings::names::WATCH_MAX_STREAMS_PER_CALLER),
                StreamLimit::Replica(max) => ("replica", max, crate::settings::names::WATCH_MAX_STREAMS),
            };
            with_info(
                Code::ResourceExhausted,
                error.to_string(),
                Reason::WatchStreamsExhausted,
                [
                    ("scope", scope.to_owned()),
                    ("limit", max.to_string()),
                    ("setting", setting.to_owned()),
                ],
            )
        }
        ApiError::WatchMaxDuration { max } => with_info(
            Code::Unavailable,
            error.to_string(),
            Reason::WatchMaxDuration,
            [("max_duration", humantime::format_duration(*max).to_string())],
        ),
        ApiError::ShuttingDown => with_info(
            Code::Unavailable,
            error.to_string(),
            Reason::ShuttingDown,
            [],
        ),
        ApiError::TokenSourceOff => with_info(
            Code::FailedPrecondition,
            error.to_string(),
            Reason::TokenSourceUnavailable,
            [],
        ),
        ApiError::Token(token) => {
            let reason = match token {
                TokenError::Missing => Reason::TokenMissing,
                TokenError::Malformed(_) => Reason::TokenMalformed,
                TokenError::NoSubject => Reason::TokenWithoutSubject,
                TokenError::Inactive => Reason::TokenInactive,
                TokenError::InvalidJwt(_) => Reason::TokenInvalid,
                TokenError::Expired => Reason::TokenExpired,
                TokenError::NotAccessToken(_) => Reason::TokenNotAccessToken,
            };
            let hint = match token {
                TokenError::NoSubject
                | TokenError::Inactive
                | TokenError::InvalidJwt(_)
                | TokenError::Expired
                | TokenError::NotAccessToken(_) => "",
                _ => "; send gRPC metadata `authorization: Bearer <ZITADEL access token>`",
            };
            with_info(Code::Unauthenticated, format!("{token}{hint}"), reason, [])
        }
        ApiError::Denied(denial) => {
            let reason = match denial {
                Denial::NoRule { .. } => Reason::PolicyDenied,
                Denial::Hidden { .. } => Reason::KeyHidden,
            };
            let mut metadata = vec![("action", denial.action().name().to_owned())];
            metadata.extend(denial.key().map(|k| ("key", k.to_owned())));
            if let Denial::NoRule { target, .. } = denial {
                metadata.push((
                    "target",
                    target.clone().unwrap_or_else(|| "self".to_owned()),
                ));
            }
            with_info(
                Code::PermissionDenied,
                format!("permission denied: {denial}"),
                reason,
                metadata,
            )
        }
        ApiError::KeysNotFound { user_id, keys } => {
            let named = named_keys(keys);
            let message = match keys.as_slice() {
                [key] => format!(
                    "user {user_id} has no metadata key `{key}`; set allow_missing to ignore missing keys"
                ),
                _ => format!(
                    "one or more of the keys [{}] do not exist on user {user_id}; nothing was deleted; set allow_missing to ignore missing keys",
                    named.join(", ")
                ),
            };
            with_info(
                Code::NotFound,
                message,
                Reason::MetadataNotFound,
                [("keys", named.join(","))],
            )
        }
        ApiError::Upstream(upstream) => upstream_status(upstream),
        ApiError::DeadlineExceeded => with_info(
            Code::DeadlineExceeded,
            "the request's deadline passed before usermeta could answer; nothing more is sent to ZITADEL for it (a write may or may not have been applied: read it back, or repeat it, writes are idempotent)".to_owned(),
            Reason::DeadlineExceeded,
            [],
        ),
        ApiError::RateLimited { retry_after } => {
            let mut details = info(Reason::CallerRateLimited, []);
            details.set_retry_info(Some(*retry_after));
            Status::with_error_details(
                Code::ResourceExhausted,
                "this caller sends more requests than usermeta's per-caller rate limit allows; retry later with backoff",
                details,
            )
        }
        ApiError::Overloaded { limit } => overloaded(
            error,
            Reason::Overloaded,
            [
                ("max_in_flight", limit.to_string()),
                ("setting", crate::settings::names::MAX_IN_FLIGHT.to_owned()),
            ],
        ),
        ApiError::CallerOverloaded { limit } => overloaded(
            error,
            Reason::CallerOverloaded,
            [
                ("max_in_flight_per_caller", limit.to_string()),
                ("setting", crate::settings::names::MAX_IN_FLIGHT_PER_CALLER.to_owned()),
            ],
        ),
        ApiError::IntrospectionClient(error) => {
            let mut facts = vec![("endpoint", Endpoint::Introspection.name().to_owned())];
            if let IdentifyError::IntrospectionClient {
                client_id,
                http_status,
                ..
            } = error
            {
                facts.push(("client_id", client_id.clone()));
                facts.push(("http_status", http_status.to_string()));
            }
            with_info(
                Code::Unavailable,
                error.to_string(),
                Reason::IntrospectionClientRejected,
                facts,
            )
        }
    }
}

fn lag_text(lag: &Lag) -> String {
    match lag {
        Lag::Stream { changes, bytes } => format!(
            "more than its own buffer of {changes} changes or {bytes} bytes ({}) waited to be read",
            crate::settings::names::WATCH_BUFFER_BYTES
        ),
        Lag::Replica { bytes } => format!(
            "the replica's stream buffers together reached {bytes} bytes ({}) while this stream had changes waiting",
            crate::settings::names::WATCH_BUFFER_MEMORY
        ),
    }
}

fn stream_limit_text(limit: &StreamLimit) -> String {
    match limit {
        StreamLimit::Caller(max) => format!(
            "this caller already has {max} WatchMetadata streams open on this replica, the most one caller may ({}): close one, or narrow what you watch",
            crate::settings::names::WATCH_MAX_STREAMS_PER_CALLER
        ),
        StreamLimit::Replica(max) => format!(
            "this usermeta replica already serves {max} WatchMetadata streams, the most it may ({}): retry later (another replica may serve it)",
            crate::settings::names::WATCH_MAX_STREAMS
        ),
    }
}

/// The keys an answer names: the first [`MAX_LISTED_VIOLATIONS`], then how many more.
fn named_keys(keys: &[String]) -> Vec<String> {
    let mut named: Vec<String> = keys.iter().take(MAX_LISTED_VIOLATIONS).cloned().collect();
    if keys.len() > MAX_LISTED_VIOLATIONS {
        named.push(format!("and {} more", keys.len() - MAX_LISTED_VIOLATIONS));
    }
    named
}

/// A call an in-flight limit refused: RESOURCE_EXHAUSTED naming the limit and its setting, with a short retry
/// hint (slots free as calls finish).
fn overloaded<'a>(
    error: &ApiError,
    reason: Reason,
    facts: impl IntoIterator<Item = (&'a str, String)>,
) -> Status {
    let mut details = info(reason, facts);
    details.set_retry_info(Some(Duration::from_millis(100)));
    Status::with_error_details(Code::ResourceExhausted, error.to_string(), details)
}

fn upstream_status(error: &UpstreamError) -> Status {
    let endpoint = error.endpoint();
    let mut facts = vec![("endpoint", endpoint.name().to_owned())];
    match error {
        UpstreamError::CredentialRefresh { credential, cause } => {
            facts.push(("credential", credential.clone()));
            // ZITADEL's OAuth error (`invalid_grant`, `invalid_client`, …) and description, or why it was not reached.
            let said = match cause.as_ref() {
                UpstreamError::Rejected {
                    http_status,
                    rejection,
                    ..
                } => {
                    facts.push(("http_status", http_status.to_string()));
                    match &rejection.error_id {
                        Some(id) => {
                            facts.push(("zitadel_error", id.clone()));
                            format!(
                                "ZITADEL answered HTTP {http_status} {id}: {}",
                                rejection.message
                            )
                        }
                        None => {
                            format!("ZITADEL answered HTTP {http_status}: {}", rejection.message)
                        }
                    }
                }
                other => other.to_string(),
            };
            with_info(
                Code::Unavailable,
                format!(
                    "usermeta could not get a management API token with its {credential}: {said}; calls that need the service credential fail until it works again (an operator may need to renew it)"
                ),
                Reason::ServiceCredentialRefreshFailed,
                facts,
            )
        }
        UpstreamError::DeadlineExceeded { .. } => with_info(
            Code::DeadlineExceeded,
            format!(
                "{error}; nothing more is sent to ZITADEL for this request (a write may or may not have been applied: read it back, or repeat it, writes are idempotent)"
            ),
            Reason::DeadlineExceeded,
            facts,
        ),
        UpstreamError::CircuitOpen { retry_after, .. } => {
            let mut details = info(Reason::ZitadelCircuitOpen, facts);
            // A probe is in flight when no cool-down is left: suggest a short wait.
            details.set_retry_info(Some((*retry_after).max(Duration::from_millis(100))));
            Status::with_error_details(Code::Unavailable, format!("{error}; retry later"), details)
        }
        UpstreamError::BudgetExhausted {
            class, retry_after, ..
        } => {
            facts.push(("class", class.name().to_owned()));
            let mut details = info(Reason::UpstreamBudgetExhausted, facts);
            details.set_retry_info(Some((*retry_after).max(Duration::from_millis(10))));
            let why = match class {
                Class::Identify => {
                    format!(
                        "usermeta keeps within its request budget toward ZITADEL ({}), and identifying a token it does not know yet waits while calls of callers already identified go first; nothing was sent to ZITADEL; retry after the RetryInfo delay, and reuse tokens rather than fetching a new one per call",
                        crate::settings::names::UPSTREAM_RATE_LIMIT
                    )
                }
                Class::Manage => {
                    format!(
                        "usermeta keeps within its request budget toward ZITADEL ({}), which is spent for now; nothing was sent to ZITADEL; retry after the RetryInfo delay",
                        crate::settings::names::UPSTREAM_RATE_LIMIT
                    )
                }
            };
            Status::with_error_details(Code::ResourceExhausted, why, details)
        }
        UpstreamError::CallerShareExhausted {
            retry_after,
            per_second,
            burst,
            ..
        } => {
            facts.push(("limit", "upstream_caller_share".to_owned()));
            facts.push((
                "setting",
                crate::settings::names::UPSTREAM_CALLER_SHARE.to_owned(),
            ));
            facts.push(("per_second", per_second.to_string()));
            facts.push(("burst", burst.to_string()));
            let mut details = info(Reason::CallerUpstreamShareExhausted, facts);
            details.set_retry_info(Some((*retry_after).max(Duration::from_millis(10))));
            Status::with_error_details(
                Code::ResourceExhausted,
                format!(
                    "this caller has spent its share of usermeta's request budget toward ZITADEL ({share} of {rate}: {per_second} requests per second, {burst} at once), so one caller cannot spend ZITADEL's rate limit for everyone; nothing was sent to ZITADEL; retry after the RetryInfo delay, and ask for fewer users (or a smaller page) per call",
                    share = crate::settings::names::UPSTREAM_CALLER_SHARE,
                    rate = crate::settings::names::UPSTREAM_RATE_LIMIT
                ),
                details,
            )
        }
        UpstreamError::Unreachable { .. } | UpstreamError::Timeout { .. } => with_info(
            Code::Unavailable,
            format!("{error}; retry later"),
            Reason::ZitadelUnreachable,
            facts,
        ),
        UpstreamError::NotInOrganization { .. } => with_info(
            Code::FailedPrecondition,
            format!(
                "{error}; check user_id, and set organization_id to the user's organisation (or leave it empty)"
            ),
            Reason::UserNotFoundInOrganization,
            facts,
        ),
        UpstreamError::NotSupported { .. } => with_info(
            Code::FailedPrecondition,
            format!(
                "{error}; usermeta manages metadata through {api}: run ZITADEL 4.1 or later and set {setting}=v2 (or auto)",
                setting = crate::settings::names::ZITADEL_API,
                api = match endpoint {
                    Endpoint::UserV2ListUsers => "an API without it",
                    _ => "another API",
                }
            ),
            Reason::ZitadelApiUnsupported,
            facts,
        ),
        UpstreamError::UnsafePath { .. } => with_info(
            Code::InvalidArgument,
            format!("{error}; use the id or key exactly as ZITADEL has it"),
            Reason::UnsafePathSegment,
            facts,
        ),
        UpstreamError::BadResponse { .. } => with_info(
            Code::Unavailable,
            format!("{error}; retry later"),
            Reason::ZitadelBadResponse,
            facts,
        ),
        UpstreamError::Rejected {
            http_status,
            rejection,
            ..
        } => {
            let id = rejection.error_id.as_deref().unwrap_or_default();
            facts.push(("http_status", http_status.to_string()));
            if !id.is_empty() {
                facts.push(("zitadel_error_id", id.to_owned()));
            }
            let said = &rejection.message;
            let code = rejection.code;
            if error.kind() == ErrorKind::RateLimited {
                let message =
                    format!("ZITADEL is rate-limiting usermeta ({said}); retry later with backoff");
                let mut details = info(Reason::ZitadelRateLimited, facts);
                if let Some(after) = rejection.retry_after {
                    details.set_retry_info(Some(after));
                }
                return Status::with_error_details(Code::ResourceExhausted, message, details);
            }
            if error.kind() == ErrorKind::Unavailable {
                return with_info(
                    Code::Unavailable,
                    format!("ZITADEL failed on {endpoint} ({said}); retry later"),
                    Reason::ZitadelUnavailable,
                    facts,
                );
            }
            match (code, endpoint) {
                (Code::Unauthenticated, Endpoint::Userinfo) => with_info(
                    Code::Unauthenticated,
                    format!(
                        "ZITADEL rejected the access token ({said}); it is invalid, expired or revoked: obtain a new one"
                    ),
                    Reason::TokenRejected,
                    facts,
                ),
                (Code::Unauthenticated, Endpoint::AuthListMyMetadata) if id == "APP-Zxfako" => {
                    with_info(
                        Code::Unauthenticated,
                        format!(
                            "ZITADEL's auth API rejected the access token ({said}): request the token with the scope `{ZITADEL_AUDIENCE_SCOPE}`"
                        ),
                        Reason::TokenLacksZitadelAudience,
                        facts,
                    )
                }
                (Code::Unauthenticated, Endpoint::AuthListMyMetadata) => with_info(
                    Code::Unauthenticated,
                    format!(
                        "ZITADEL's auth API rejected the access token ({said}): the token is invalid or expired, or it lacks the scope `{ZITADEL_AUDIENCE_SCOPE}`; request a token with that scope, or read with source METADATA_SOURCE_USERINFO"
                    ),
                    Reason::TokenRejectedByAuthApi,
                    facts,
                ),
                (Code::Unauthenticated, _) => with_info(
                    Code::Unavailable,
                    format!(
                        "ZITADEL rejected usermeta's service credential on {endpoint} ({said}); an operator must renew it"
                    ),
                    Reason::ServiceCredentialRejected,
                    facts,
                ),
                (Code::PermissionDenied, _) if id == "AUTH-Bs7Ds" => with_info(
                    Code::PermissionDenied,
                    format!(
                        "ZITADEL knows no organisation with the given organization_id ({said}); check organization_id"
                    ),
                    Reason::OrganizationNotFound,
                    facts,
                ),
                (Code::PermissionDenied, _) if !endpoint.uses_caller_token() => with_info(
                    Code::PermissionDenied,
                    format!(
                        "ZITADEL denied usermeta's service user {endpoint} ({said}); it needs a manager role (e.g. ORG_USER_MANAGER) in the user's organisation, or IAM_OWNER"
                    ),
                    Reason::ServiceUserLacksPermission,
                    facts,
                ),
                (Code::FailedPrecondition, _)
                    if matches!(id, "COMMAND-uXHNj" | "COMMAND-4M0fs") =>
                {
                    with_info(
                        Code::FailedPrecondition,
                        format!(
                            "ZITADEL found no such user in the organisation it searched ({said}); check user_id, and set organization_id to the user's organisation"
                        ),
                        Reason::UserNotFoundInOrganization,
                        facts,
                    )
                }
                // v2 looks the user up first (for the organisation the policy decides on): the same fact.
                (Code::NotFound, Endpoint::UserV2GetUser) => with_info(
                    Code::FailedPrecondition,
                    format!(
                        "ZITADEL found no such user in the organisation it searched ({said}); check user_id, and set organization_id to the user's organisation"
                    ),
                    Reason::UserNotFoundInOrganization,
                    facts,
                ),
                (code, _) => with_info(
                    code,
                    format!("ZITADEL refused {endpoint}: {said}"),
                    Reason::ZitadelRejected,
                    facts,
                ),
            }
        }
    }
}

fn info<'a>(reason: Reason, facts: impl IntoIterator<Item = (&'a str, String)>) -> ErrorDetails {
    let metadata: HashMap<String, String> =
        facts.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    ErrorDetails::with_error_info(reason.as_str(), ERROR_DOMAIN, metadata)
}

fn with_info<'a>(
    code: Code,
    message: String,
    reason: Reason,
    facts: impl IntoIterator<Item = (&'a str, String)>,
) -> Status {
    Status::with_error_details(code, message, info(reason, facts))
}
