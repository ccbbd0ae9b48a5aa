//! ZITADEL's failures ([`UpstreamError`]) as statuses: what ZITADEL said, which endpoint, and what the
//! caller or an operator can do about it.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::StatusExt;

use super::status::{info, with_info};
use crate::{api::reason::Reason, settings::names};
use usermeta_zitadel::{
    Endpoint, ErrorKind, UpstreamError, auth_api::ZITADEL_AUDIENCE_SCOPE, budget::Class,
};

pub(super) fn upstream_status(error: &UpstreamError) -> Status {
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
                        "usermeta keeps within its request budget toward ZITADEL ({}, or the fleet's {}), and identifying a token it does not know yet waits while calls of callers already identified go first; nothing was sent to ZITADEL; retry after the RetryInfo delay, and reuse tokens rather than fetching a new one per call",
                        names::UPSTREAM_RATE_LIMIT,
                        names::UPSTREAM_FLEET_RATE_LIMIT
                    )
                }
                Class::Manage => {
                    format!(
                        "usermeta keeps within its request budget toward ZITADEL ({}, or the fleet's {}), which is spent for now; nothing was sent to ZITADEL; retry after the RetryInfo delay",
                        names::UPSTREAM_RATE_LIMIT,
                        names::UPSTREAM_FLEET_RATE_LIMIT
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
            facts.push(("setting", names::UPSTREAM_CALLER_SHARE.to_owned()));
            facts.push(("per_second", per_second.to_string()));
            facts.push(("burst", burst.to_string()));
            let mut details = info(Reason::CallerUpstreamShareExhausted, facts);
            details.set_retry_info(Some((*retry_after).max(Duration::from_millis(10))));
            Status::with_error_details(
                Code::ResourceExhausted,
                format!(
                    "this caller has spent its share of usermeta's request budget toward ZITADEL ({share} of {rate}: {per_second} requests per second, {burst} at once), so one caller cannot spend ZITADEL's rate limit for everyone; nothing was sent to ZITADEL; retry after the RetryInfo delay, and ask for fewer users (or a smaller page) per call",
                    share = names::UPSTREAM_CALLER_SHARE,
                    rate = names::UPSTREAM_RATE_LIMIT
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
        UpstreamError::NotSupported { .. } if endpoint.is_organization_metadata() => with_info(
            Code::FailedPrecondition,
            format!(
                "{error}; this ZITADEL does not serve the v2 organisation service: set {setting}=auto (v1 for organisations, v2 for users where served) or v1, or upgrade ZITADEL",
                setting = names::ZITADEL_API,
            ),
            Reason::ZitadelApiUnsupported,
            facts,
        ),
        UpstreamError::UnknownOrganization { org_id, .. } => {
            facts.push(("organization_id", org_id.clone()));
            with_info(
                Code::NotFound,
                format!("{error}; check organization_id (empty means your own organisation)"),
                Reason::OrganizationNotFound,
                facts,
            )
        }
        UpstreamError::NotSupported { .. } => with_info(
            Code::FailedPrecondition,
            format!(
                "{error}; usermeta manages metadata through {api}: run ZITADEL 4.1 or later and set {setting}=v2 (or auto)",
                setting = names::ZITADEL_API,
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
