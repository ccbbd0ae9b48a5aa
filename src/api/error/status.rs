//! The one place an [`ApiError`] becomes a gRPC status: its code, its message, and details with a stable
//! reason (`google.rpc.ErrorInfo`), the request's field violations (`google.rpc.BadRequest`) or when to retry
//! (`google.rpc.RetryInfo`).

use std::{collections::HashMap, time::Duration};

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::{ApiError, Current, ERROR_DOMAIN, MAX_LISTED_VIOLATIONS, upstream::upstream_status};
use crate::{
    api::reason::Reason,
    caller::{IdentifyError, TokenError},
    fleet::{Lag, StreamLimit},
    policy::Denial,
    settings::names,
};
use usermeta_zitadel::Endpoint;

/// One failed result of a batch as the `google.rpc.Status` the same failure of a single call would be: its
/// code, message and details (ErrorInfo, RetryInfo, BadRequest).
pub(in crate::api) fn status_message(error: &ApiError) -> tonic_types::Status {
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

pub(super) fn to_status(error: &ApiError) -> Status {
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
                StreamLimit::Caller(max) => ("caller", max, names::WATCH_MAX_STREAMS_PER_CALLER),
                StreamLimit::Replica(max) => ("replica", max, names::WATCH_MAX_STREAMS),
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
        ApiError::ConditionFailed { key, current } => {
            let (fact, value) = match current {
                Current::Etag(etag) => ("current_etag", etag.clone()),
                Current::Exists => ("current", "exists".to_owned()),
                Current::Absent => ("current", "absent".to_owned()),
            };
            with_info(
                Code::Aborted,
                error.to_string(),
                Reason::EtagMismatch,
                [("key", key.clone()), (fact, value)],
            )
        }
        ApiError::WriteLockUnavailable(_) => with_info(
            Code::Unavailable,
            error.to_string(),
            Reason::WriteLockUnavailable,
            [],
        ),
        ApiError::WriteLockLost => with_info(
            Code::Unavailable,
            error.to_string(),
            Reason::WriteLockLost,
            [("setting", names::WRITE_LOCK_TTL.to_owned())],
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
                Denial::NoRule { .. } | Denial::NoOrganizationRule { .. } => Reason::PolicyDenied,
                Denial::Hidden { .. } | Denial::HiddenFromMembers { .. } => Reason::KeyHidden,
            };
            let mut metadata = vec![("action", denial.action().name().to_owned())];
            metadata.extend(denial.key().map(|k| ("key", k.to_owned())));
            match denial {
                Denial::NoRule { target, .. } => metadata.push((
                    "target",
                    target.clone().unwrap_or_else(|| "self".to_owned()),
                )),
                Denial::NoOrganizationRule { org_id, .. }
                | Denial::HiddenFromMembers { org_id, .. } => {
                    metadata.push(("target", "organization".to_owned()));
                    metadata.push(("organization_id", org_id.clone()));
                }
                Denial::Hidden { .. } => {}
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
        ApiError::ValueNotSealed {
            user_id,
            key,
            problem,
        } => with_info(
            Code::FailedPrecondition,
            error.to_string(),
            Reason::ValueNotSealed,
            [
                ("user_id", user_id.clone()),
                ("key", key.clone()),
                ("problem", unsealed_label(problem).to_owned()),
            ],
        ),
        ApiError::KeySealed { key } => with_info(
            Code::FailedPrecondition,
            error.to_string(),
            Reason::KeySealed,
            [("key", key.clone())],
        ),
        ApiError::OrganizationKeysNotFound { org_id, keys } => {
            let named = named_keys(keys);
            let message = match keys.as_slice() {
                [key] => format!(
                    "organisation {org_id} has no metadata key `{key}`; set allow_missing to ignore missing keys"
                ),
                _ => format!(
                    "one or more of the keys [{}] do not exist on organisation {org_id}; nothing was deleted; set allow_missing to ignore missing keys",
                    named.join(", ")
                ),
            };
            with_info(
                Code::NotFound,
                message,
                Reason::MetadataNotFound,
                [("keys", named.join(",")), ("organization_id", org_id.clone())],
            )
        }
        ApiError::CallerOrganizationUnknown => with_info(
            Code::FailedPrecondition,
            error.to_string(),
            Reason::CallerOrganizationUnknown,
            [],
        ),
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
                ("setting", names::MAX_IN_FLIGHT.to_owned()),
            ],
        ),
        ApiError::CallerOverloaded { limit } => overloaded(
            error,
            Reason::CallerOverloaded,
            [
                ("max_in_flight_per_caller", limit.to_string()),
                ("setting", names::MAX_IN_FLIGHT_PER_CALLER.to_owned()),
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

pub(super) fn info<'a>(
    reason: Reason,
    facts: impl IntoIterator<Item = (&'a str, String)>,
) -> ErrorDetails {
    let metadata: HashMap<String, String> =
        facts.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    ErrorDetails::with_error_info(reason.as_str(), ERROR_DOMAIN, metadata)
}

fn unsealed_label(problem: &crate::policy::Unsealed) -> &'static str {
    match problem {
        crate::policy::Unsealed::Unopenable(problem) => problem.label(),
        crate::policy::Unsealed::NoKeys => "no_sealing_keys",
    }
}

pub(super) fn with_info<'a>(
    code: Code,
    message: String,
    reason: Reason,
    facts: impl IntoIterator<Item = (&'a str, String)>,
) -> Status {
    Status::with_error_details(code, message, info(reason, facts))
}
