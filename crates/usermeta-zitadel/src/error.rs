//! What can go wrong when calling ZITADEL, and how ZITADEL's three error body shapes are read.
//!
//! The REST APIs answer `google.rpc.Status` JSON with a numeric gRPC `code` and a translated `message`
//! (`"Metadata not found (QUERY-Rgh32)"`) plus `details[].id`; Connect paths answer a string `code`; the
//! OAuth/OIDC endpoints answer `{"error", "error_description"}`. Decisions are made on the numeric code and
//! the error id, never on the translated text.

use std::{fmt, time::Duration};

use serde::Deserialize;
use tonic::Code;

/// The ZITADEL endpoints usermeta calls; names appear in logs and error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// `/oidc/v1/userinfo`, who a caller's token belongs to (and its metadata and roles).
    Userinfo,
    /// The auth API's `ListMyMetadata`, the caller's own metadata with the caller's token.
    AuthListMyMetadata,
    /// The v1 management API's `ListUserMetadata`.
    ManagementListMetadata,
    /// The v1 management API's `SetUserMetadata` (one key).
    ManagementSetMetadata,
    /// The v1 management API's `BulkSetUserMetadata` (several keys in one call).
    ManagementBulkSetMetadata,
    /// The v1 management API's `RemoveUserMetadata` (one key).
    ManagementRemoveMetadata,
    /// The v1 management API's `BulkRemoveUserMetadata` (several keys in one call).
    ManagementBulkRemoveMetadata,
    /// `/oauth/v2/token`, where the service credential is exchanged for an access token.
    Token,
    /// `/oauth/v2/introspect`, where usermeta's API application asks about a caller's token.
    Introspection,
    /// `/oauth/v2/keys`, ZITADEL's token signing keys.
    Jwks,
    /// The v2 user service's (`zitadel.user.v2.UserService`, Connect JSON) `ListUserMetadata`.
    UserV2ListMetadata,
    /// The v2 user service's `SetUserMetadata` (one or several keys).
    UserV2SetMetadata,
    /// The v2 user service's `DeleteUserMetadata` (one or several keys).
    UserV2DeleteMetadata,
    /// The v2 user service's `GetUserByID`, which tells a user's organisation.
    UserV2GetUser,
    /// The v2 user service's `ListUsers`, the search by metadata value.
    UserV2ListUsers,
    /// The v1 management API's `ListOrgMetadata` (the organisation in `x-zitadel-orgid`).
    ManagementListOrgMetadata,
    /// The v1 management API's `SetOrgMetadata` (one key).
    ManagementSetOrgMetadata,
    /// The v1 management API's `BulkSetOrgMetadata` (several keys in one call).
    ManagementBulkSetOrgMetadata,
    /// The v1 management API's `RemoveOrgMetadata` (one key).
    ManagementRemoveOrgMetadata,
    /// The v1 management API's `BulkRemoveOrgMetadata` (several keys in one call).
    ManagementBulkRemoveOrgMetadata,
    /// The v2 organisation service's (`zitadel.org.v2.OrganizationService`, ZITADEL 4.7+)
    /// `ListOrganizationMetadata`.
    OrgV2ListMetadata,
    /// The v2 organisation service's `SetOrganizationMetadata` (one or several keys).
    OrgV2SetMetadata,
    /// The v2 organisation service's `DeleteOrganizationMetadata` (one or several keys).
    OrgV2DeleteMetadata,
    /// The v2 organisation service's `ListOrganizations` by id: whether an organisation exists, when its
    /// metadata listing came back empty.
    OrgV2ListOrganizations,
}

impl Endpoint {
    /// ZITADEL's name of the call (`management.ListUserMetadata`), as logs, metrics and errors show it.
    pub fn name(self) -> &'static str {
        match self {
            Endpoint::Userinfo => "userinfo",
            Endpoint::AuthListMyMetadata => "auth.ListMyMetadata",
            Endpoint::ManagementListMetadata => "management.ListUserMetadata",
            Endpoint::ManagementSetMetadata => "management.SetUserMetadata",
            Endpoint::ManagementBulkSetMetadata => "management.BulkSetUserMetadata",
            Endpoint::ManagementRemoveMetadata => "management.RemoveUserMetadata",
            Endpoint::ManagementBulkRemoveMetadata => "management.BulkRemoveUserMetadata",
            Endpoint::Token => "oauth.Token",
            Endpoint::Introspection => "oauth.Introspect",
            Endpoint::Jwks => "oauth.Keys",
            Endpoint::UserV2ListMetadata => "user.v2.ListUserMetadata",
            Endpoint::UserV2SetMetadata => "user.v2.SetUserMetadata",
            Endpoint::UserV2DeleteMetadata => "user.v2.DeleteUserMetadata",
            Endpoint::UserV2GetUser => "user.v2.GetUserByID",
            Endpoint::UserV2ListUsers => "user.v2.ListUsers",
            Endpoint::ManagementListOrgMetadata => "management.ListOrgMetadata",
            Endpoint::ManagementSetOrgMetadata => "management.SetOrgMetadata",
            Endpoint::ManagementBulkSetOrgMetadata => "management.BulkSetOrgMetadata",
            Endpoint::ManagementRemoveOrgMetadata => "management.RemoveOrgMetadata",
            Endpoint::ManagementBulkRemoveOrgMetadata => "management.BulkRemoveOrgMetadata",
            Endpoint::OrgV2ListMetadata => "org.v2.ListOrganizationMetadata",
            Endpoint::OrgV2SetMetadata => "org.v2.SetOrganizationMetadata",
            Endpoint::OrgV2DeleteMetadata => "org.v2.DeleteOrganizationMetadata",
            Endpoint::OrgV2ListOrganizations => "org.v2.ListOrganizations",
        }
    }

    /// The group whose retry budget and circuit breaker the call uses: identifying callers (userinfo,
    /// introspection, keys) and their own reads, or the management API with the service credential.
    pub fn group(self) -> super::resilience::Group {
        match self {
            Endpoint::Userinfo
            | Endpoint::AuthListMyMetadata
            | Endpoint::Introspection
            | Endpoint::Jwks => super::resilience::Group::CallerToken,
            _ => super::resilience::Group::Management,
        }
    }

    /// Whether the call reads or writes an organisation's metadata (or checks that the organisation exists).
    pub fn is_organization_metadata(self) -> bool {
        matches!(
            self,
            Endpoint::ManagementListOrgMetadata
                | Endpoint::ManagementSetOrgMetadata
                | Endpoint::ManagementBulkSetOrgMetadata
                | Endpoint::ManagementRemoveOrgMetadata
                | Endpoint::ManagementBulkRemoveOrgMetadata
                | Endpoint::OrgV2ListMetadata
                | Endpoint::OrgV2SetMetadata
                | Endpoint::OrgV2DeleteMetadata
                | Endpoint::OrgV2ListOrganizations
        )
    }

    /// Whether the call carries the caller's token (userinfo, auth API) rather than the service credential.
    pub fn uses_caller_token(self) -> bool {
        matches!(self, Endpoint::Userinfo | Endpoint::AuthListMyMetadata)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A failed call to ZITADEL. Messages carry no token, credential or metadata value.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// No answer came: the connection failed or broke (a retry may succeed).
    #[error("could not reach ZITADEL for {endpoint}: {reason}")]
    Unreachable {
        /// The call.
        endpoint: Endpoint,
        /// The innermost cause the HTTP client gave.
        reason: String,
    },
    /// ZITADEL did not answer within the configured per-call timeout.
    #[error("ZITADEL did not answer {endpoint} within {timeout:?}")]
    Timeout {
        /// The call.
        endpoint: Endpoint,
        /// The timeout that ran out.
        timeout: Duration,
    },
    /// ZITADEL answered with an error status.
    #[error("ZITADEL answered {endpoint} with HTTP {http_status}: {rejection}")]
    Rejected {
        /// The call.
        endpoint: Endpoint,
        /// The HTTP status of the answer.
        http_status: u16,
        /// ZITADEL's error body, read.
        rejection: Rejection,
    },
    /// ZITADEL answered with success, but the body was not what the API promises.
    #[error("ZITADEL's answer from {endpoint} could not be read: {reason}")]
    BadResponse {
        /// The call.
        endpoint: Endpoint,
        /// What did not parse.
        reason: String,
    },
    /// The caller's deadline passed (or left too little time) before ZITADEL answered; nothing more is sent.
    #[error("the request's deadline passed before ZITADEL answered {endpoint}")]
    DeadlineExceeded {
        /// The call.
        endpoint: Endpoint,
    },
    /// ZITADEL failed repeatedly; calls of this group are not sent until the cool-down ends.
    #[error(
        "calls to ZITADEL for {endpoint} are paused after repeated failures (circuit open) for {retry_after:?}"
    )]
    CircuitOpen {
        /// The call.
        endpoint: Endpoint,
        /// Until the breaker lets a trial call through.
        retry_after: Duration,
    },
    /// usermeta's own request budget toward ZITADEL is spent for requests of this class; nothing was sent.
    #[error(
        "usermeta did not send {endpoint}: its request budget toward ZITADEL is spent for {what} for {retry_after:?}",
        what = match class {
            crate::budget::Class::Identify => "identifying tokens it does not know yet",
            crate::budget::Class::Manage => "every request",
        }
    )]
    BudgetExhausted {
        /// The call.
        endpoint: Endpoint,
        /// The class of requests whose budget is spent.
        class: crate::budget::Class,
        /// Until the budget has room again.
        retry_after: Duration,
    },
    /// This caller's share of usermeta's request budget toward ZITADEL is spent; nothing was sent.
    #[error(
        "usermeta did not send {endpoint}: this caller's share of its request budget toward ZITADEL ({per_second} requests per second, {burst} at once) is spent for {retry_after:?}"
    )]
    CallerShareExhausted {
        /// The call.
        endpoint: Endpoint,
        /// Until this caller's share has room again.
        retry_after: Duration,
        /// The share's sustained rate.
        per_second: f64,
        /// The share's burst.
        burst: u32,
    },
    /// A path segment from the request would not reach ZITADEL as given (`.`, `..`, empty); nothing was sent.
    #[error(
        "usermeta did not send {endpoint}: the path segment {segment:?} would not reach ZITADEL as given"
    )]
    UnsafePath {
        /// The call.
        endpoint: Endpoint,
        /// The refused segment, as the request gave it.
        segment: String,
    },
    /// The request names an organisation, but ZITADEL says the user is in another (v2, where ZITADEL takes no
    /// organisation and usermeta checks it); nothing was sent.
    #[error("ZITADEL found no user {user_id} in organisation {org_id}")]
    NotInOrganization {
        /// The user asked for.
        user_id: String,
        /// The organisation the request named.
        org_id: String,
    },
    /// The ZITADEL in use does not serve what the call needs (the v1 backend, or a ZITADEL too old); nothing
    /// was sent, or ZITADEL did not understand the query.
    #[error("{what} needs {needs}")]
    NotSupported {
        /// The call.
        endpoint: Endpoint,
        /// What was asked (`finding users by metadata`).
        what: &'static str,
        /// What it needs (`ZITADEL 4.1 or later`).
        needs: &'static str,
    },
    /// ZITADEL knows no organisation with this id (v1: `x-zitadel-orgid` naming none, `AUTH-Bs7Ds`; v2: the
    /// command's "organisation not found", or an empty listing of an organisation ZITADEL does not list).
    #[error("ZITADEL knows no organisation {org_id} ({endpoint})")]
    UnknownOrganization {
        /// The call.
        endpoint: Endpoint,
        /// The organisation id as sent.
        org_id: String,
    },
    /// The service credential could not be exchanged for a management API token; `cause` is the failed token
    /// request. `credential` names the credential by its ids, never its secret.
    #[error("usermeta could not get a management API token with its {credential}: {cause}")]
    CredentialRefresh {
        /// The credential, by its ids.
        credential: String,
        /// The failed token request.
        cause: Box<UpstreamError>,
    },
}

impl UpstreamError {
    /// The call that failed (for a failed credential refresh, the token request).
    pub fn endpoint(&self) -> Endpoint {
        match self {
            UpstreamError::Unreachable { endpoint, .. }
            | UpstreamError::Timeout { endpoint, .. }
            | UpstreamError::Rejected { endpoint, .. }
            | UpstreamError::BadResponse { endpoint, .. }
            | UpstreamError::DeadlineExceeded { endpoint }
            | UpstreamError::CircuitOpen { endpoint, .. }
            | UpstreamError::BudgetExhausted { endpoint, .. }
            | UpstreamError::CallerShareExhausted { endpoint, .. }
            | UpstreamError::UnsafePath { endpoint, .. } => *endpoint,
            UpstreamError::CredentialRefresh { cause, .. } => cause.endpoint(),
            UpstreamError::NotInOrganization { .. } => Endpoint::UserV2GetUser,
            UpstreamError::NotSupported { endpoint, .. }
            | UpstreamError::UnknownOrganization { endpoint, .. } => *endpoint,
        }
    }

    /// Whether ZITADEL refused a removal because a key to remove does not exist (so nothing was removed).
    pub fn is_missing_metadata(&self) -> bool {
        matches!(
            self.endpoint(),
            Endpoint::ManagementRemoveMetadata
                | Endpoint::ManagementBulkRemoveMetadata
                | Endpoint::UserV2DeleteMetadata
                | Endpoint::ManagementRemoveOrgMetadata
                | Endpoint::ManagementBulkRemoveOrgMetadata
                | Endpoint::OrgV2DeleteMetadata
        ) && self.zitadel_code() == Some(Code::NotFound)
    }

    /// Whether ZITADEL said the user does not exist at all (v2's user lookup, which no organisation scopes).
    pub fn is_unknown_user(&self) -> bool {
        self.endpoint() == Endpoint::UserV2GetUser && self.zitadel_code() == Some(Code::NotFound)
    }

    /// Whether ZITADEL said the user is not where the call looked: unknown ([`UpstreamError::is_unknown_user`]),
    /// in another organisation than the named one, or not found in the organisation a v1 write was scoped to
    /// (`COMMAND-uXHNj`, `COMMAND-4M0fs`, FAILED_PRECONDITION).
    pub fn is_missing_user(&self) -> bool {
        match self {
            UpstreamError::NotInOrganization { .. } => true,
            UpstreamError::Rejected { rejection, .. }
                if rejection.code == Code::FailedPrecondition =>
            {
                matches!(
                    rejection.error_id.as_deref(),
                    Some("COMMAND-uXHNj" | "COMMAND-4M0fs")
                )
            }
            _ => self.is_unknown_user(),
        }
    }

    /// What kind of failure this is: the one classification the status mapping, ext_authz and the caller
    /// cache share, so "was it the request's fault" is decided in one place.
    pub fn kind(&self) -> ErrorKind {
        match self {
            UpstreamError::Rejected {
                http_status,
                rejection,
                ..
            } => {
                if *http_status == 429 || rejection.code == Code::ResourceExhausted {
                    ErrorKind::RateLimited
                } else if *http_status >= 500 || *http_status == 408 {
                    ErrorKind::Unavailable
                } else {
                    ErrorKind::Refused
                }
            }
            UpstreamError::NotInOrganization { .. } | UpstreamError::UnknownOrganization { .. } => {
                ErrorKind::Refused
            }
            // usermeta keeping to ZITADEL's rate limit on its behalf: later, as for a 429.
            UpstreamError::BudgetExhausted { .. } | UpstreamError::CallerShareExhausted { .. } => {
                ErrorKind::RateLimited
            }
            UpstreamError::UnsafePath { .. } | UpstreamError::NotSupported { .. } => {
                ErrorKind::NotSent
            }
            UpstreamError::DeadlineExceeded { .. } => ErrorKind::DeadlineExceeded,
            UpstreamError::Unreachable { .. }
            | UpstreamError::Timeout { .. }
            | UpstreamError::BadResponse { .. }
            | UpstreamError::CircuitOpen { .. }
            | UpstreamError::CredentialRefresh { .. } => ErrorKind::Unavailable,
        }
    }

    /// The gRPC code ZITADEL gave, when it rejected the call.
    pub(crate) fn zitadel_code(&self) -> Option<Code> {
        match self {
            UpstreamError::Rejected { rejection, .. } => Some(rejection.code),
            _ => None,
        }
    }

    pub(crate) fn from_transport(
        endpoint: Endpoint,
        timeout: Duration,
        error: reqwest::Error,
    ) -> Self {
        if error.is_timeout() {
            return UpstreamError::Timeout { endpoint, timeout };
        }
        // reqwest's Display names the URL (user ids and keys, never tokens); the innermost cause says why.
        let mut reason = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            reason = cause.to_string();
            source = cause.source();
        }
        UpstreamError::Unreachable { endpoint, reason }
    }
}

/// The kinds of [`UpstreamError`], by what the caller can do about them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// ZITADEL answered and decided against the request (4xx but 408 and 429): a token it rejects, a permission,
    /// a user or key that does not exist. Repeating it changes nothing.
    Refused,
    /// ZITADEL is rate-limiting (429 or RESOURCE_EXHAUSTED), or usermeta's request budget toward it is
    /// spent (nothing sent): later.
    RateLimited,
    /// ZITADEL could not answer (unreachable, too slow, 5xx, an unreadable answer, an open breaker, no service
    /// token): later, or an operator's fix.
    Unavailable,
    /// The caller's deadline ran out first.
    DeadlineExceeded,
    /// Nothing was sent: the request would not reach ZITADEL as given.
    NotSent,
}

/// ZITADEL's own account of why it refused a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The gRPC code, from the body when it has one, else derived from the HTTP status.
    pub code: Code,
    /// ZITADEL's (translated) message, or the OAuth error description; for people, not for decisions.
    pub message: String,
    /// ZITADEL's error id (`QUERY-Rgh32`) or OAuth error code (`access_denied`), when given.
    pub error_id: Option<String>,
    /// From a `Retry-After` header (seconds form).
    pub retry_after: Option<Duration>,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

/// Longest ZITADEL message carried into our own messages; bodies from proxies can be large.
const MAX_MESSAGE_CHARS: usize = 300;
/// Longest error id carried into `ErrorInfo` metadata; ZITADEL's (`QUERY-Rgh32`) and OAuth's error codes are
/// far shorter, and anything else in that place is not one.
const MAX_ERROR_ID_CHARS: usize = 64;

impl Rejection {
    /// Reads an error answer of any of ZITADEL's shapes.
    pub fn parse(http_status: u16, retry_after: Option<Duration>, body: &[u8]) -> Rejection {
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct Body {
            code: Option<serde_json::Value>,
            message: Option<String>,
            details: Vec<Detail>,
            error: Option<String>,
            error_description: Option<String>,
        }
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct Detail {
            /// grpc-gateway: `{"@type": "…ErrorDetail", "id": …}`.
            id: Option<String>,
            /// Connect: `{"type": "zitadel.v1.ErrorDetail", "value": <the message's bytes, base64>}`.
            #[serde(rename = "type")]
            type_name: Option<String>,
            value: Option<String>,
        }

        let body: Body = serde_json::from_slice(body).unwrap_or_default();
        let code = match &body.code {
            Some(serde_json::Value::Number(n)) => n
                .as_i64()
                .and_then(|n| i32::try_from(n).ok())
                .map(Code::from_i32),
            Some(serde_json::Value::String(s)) => connect_code(s),
            _ => None,
        }
        .unwrap_or_else(|| code_from_http_status(http_status));
        let error_id = body
            .details
            .into_iter()
            .find_map(|d| d.id.or_else(|| connect_error_id(d.type_name?, &d.value?)))
            .or_else(|| body.error.clone())
            .filter(|id| is_error_id(id));
        let message = body
            .message
            .or(body.error_description)
            .or(body.error)
            .unwrap_or_else(|| format!("HTTP status {http_status}"));
        Rejection {
            code,
            message: truncate(message),
            error_id,
            retry_after,
        }
    }
}

/// The id inside a Connect error detail of type `zitadel.v1.ErrorDetail` (`string id = 1`).
fn connect_error_id(type_name: String, value: &str) -> Option<String> {
    use base64::Engine as _;
    #[derive(Clone, PartialEq, prost::Message)]
    struct ErrorDetail {
        #[prost(string, tag = "1")]
        id: String,
    }
    if type_name.trim_start_matches("type.googleapis.com/") != "zitadel.v1.ErrorDetail" {
        return None;
    }
    // Connect sends unpadded standard base64; accept padding too.
    let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(value.trim_end_matches('='))
        .ok()?;
    let detail = <ErrorDetail as prost::Message>::decode(bytes.as_slice()).ok()?;
    (!detail.id.is_empty()).then_some(detail.id)
}

/// Whether `id` looks like an error id (short printable ASCII) rather than text that would bloat or garble the
/// `ErrorInfo` it is copied into.
fn is_error_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ERROR_ID_CHARS && id.bytes().all(|b| b.is_ascii_graphic())
}

fn truncate(mut message: String) -> String {
    if let Some((cut, _)) = message.char_indices().nth(MAX_MESSAGE_CHARS) {
        message.truncate(cut);
        message.push('…');
    }
    message
}

/// Connect's string codes (`"not_found"`).
fn connect_code(name: &str) -> Option<Code> {
    Some(match name {
        "canceled" => Code::Cancelled,
        "unknown" => Code::Unknown,
        "invalid_argument" => Code::InvalidArgument,
        "deadline_exceeded" => Code::DeadlineExceeded,
        "not_found" => Code::NotFound,
        "already_exists" => Code::AlreadyExists,
        "permission_denied" => Code::PermissionDenied,
        "resource_exhausted" => Code::ResourceExhausted,
        "failed_precondition" => Code::FailedPrecondition,
        "aborted" => Code::Aborted,
        "out_of_range" => Code::OutOfRange,
        "unimplemented" => Code::Unimplemented,
        "internal" => Code::Internal,
        "unavailable" => Code::Unavailable,
        "data_loss" => Code::DataLoss,
        "unauthenticated" => Code::Unauthenticated,
        _ => return None,
    })
}

/// The gRPC code grpc-gateway would have turned into this HTTP status, for bodies without a code.
fn code_from_http_status(status: u16) -> Code {
    match status {
        400 => Code::InvalidArgument,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::NotFound,
        409 => Code::AlreadyExists,
        429 => Code::ResourceExhausted,
        501 => Code::Unimplemented,
        503 => Code::Unavailable,
        504 => Code::DeadlineExceeded,
        500..=599 => Code::Internal,
        _ => Code::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_grpc_gateway_bodies_by_numeric_code_and_id() {
        let r = Rejection::parse(
            404,
            None,
            br#"{"code":5,"message":"Metadaten nicht gefunden (QUERY-Rgh32)","details":[{"@type":"type.googleapis.com/zitadel.v1.ErrorDetail","id":"QUERY-Rgh32","message":"Metadaten nicht gefunden"}]}"#,
        );
        assert_eq!(r.code, Code::NotFound);
        assert_eq!(r.error_id.as_deref(), Some("QUERY-Rgh32"));
    }

    #[test]
    fn body_code_wins_over_http_status() {
        // PreconditionFailed travels as HTTP 400 but is code 9.
        let r = Rejection::parse(
            400,
            None,
            br#"{"code":9,"message":"User could not be found (COMMAND-uXHNj)"}"#,
        );
        assert_eq!(r.code, Code::FailedPrecondition);
    }

    #[test]
    fn reads_connect_and_oauth_bodies() {
        let connect = Rejection::parse(404, None, br#"{"code":"not_found","message":"x"}"#);
        assert_eq!(connect.code, Code::NotFound);
        let oauth = Rejection::parse(
            401,
            None,
            br#"{"error":"access_denied","error_description":"access token invalid"}"#,
        );
        assert_eq!(oauth.code, Code::Unauthenticated);
        assert_eq!(oauth.error_id.as_deref(), Some("access_denied"));
        assert_eq!(oauth.message, "access token invalid");
    }

    #[test]
    fn falls_back_to_http_status_for_other_bodies() {
        let html = Rejection::parse(502, None, b"<html>bad gateway</html>");
        assert_eq!(html.code, Code::Internal);
        assert_eq!(html.message, "HTTP status 502");
        assert_eq!(
            Rejection::parse(429, None, b"").code,
            Code::ResourceExhausted
        );
    }

    #[test]
    fn connect_errors_give_their_code_and_the_id_inside_the_detail() {
        use base64::Engine as _;
        // `zitadel.v1.ErrorDetail { id: "AUTHZ-cdgFk", message: "membership not found" }` as protobuf.
        let mut detail = vec![0x0a, 11];
        detail.extend_from_slice(b"AUTHZ-cdgFk");
        detail.extend_from_slice(&[0x12, 20]);
        detail.extend_from_slice(b"membership not found");
        let value = base64::engine::general_purpose::STANDARD_NO_PAD.encode(&detail);
        let body = format!(
            r#"{{"code":"not_found","message":"membership not found (AUTHZ-cdgFk)","details":[{{"type":"zitadel.v1.ErrorDetail","value":"{value}"}}]}}"#
        );
        let r = Rejection::parse(404, None, body.as_bytes());
        assert_eq!(r.code, Code::NotFound);
        assert_eq!(r.error_id.as_deref(), Some("AUTHZ-cdgFk"));
        // The gateway's shape of the same error (the REST twins) reads the same.
        let gateway = br#"{"code":5,"message":"membership not found (AUTHZ-cdgFk)","details":[{"@type":"type.googleapis.com/zitadel.v1.ErrorDetail","id":"AUTHZ-cdgFk","message":"membership not found"}]}"#;
        assert_eq!(Rejection::parse(404, None, gateway), r);
        // A detail of another type, or one that does not decode, gives no id; the code still stands.
        let other = br#"{"code":"unavailable","details":[{"type":"google.rpc.RetryInfo","value":"CgIIBQ"}]}"#;
        let r = Rejection::parse(503, None, other);
        assert_eq!((r.code, r.error_id), (Code::Unavailable, None));
        let garbled =
            br#"{"code":"internal","details":[{"type":"zitadel.v1.ErrorDetail","value":"!!"}]}"#;
        assert_eq!(Rejection::parse(500, None, garbled).error_id, None);
    }

    #[test]
    fn error_ids_that_are_not_ids_are_dropped() {
        let long = format!(
            r#"{{"code":5,"message":"m","details":[{{"id":"{}"}}]}}"#,
            "X".repeat(5000)
        );
        assert_eq!(Rejection::parse(404, None, long.as_bytes()).error_id, None);
        let garbled = br#"{"code":5,"message":"m","details":[{"id":"A B\n"}]}"#;
        assert_eq!(Rejection::parse(404, None, garbled).error_id, None);
        let fine = br#"{"code":5,"message":"m","details":[{"id":"QUERY-Rgh32"}]}"#;
        assert_eq!(
            Rejection::parse(404, None, fine).error_id.as_deref(),
            Some("QUERY-Rgh32")
        );
    }

    #[test]
    fn long_messages_are_cut() {
        let long = format!(r#"{{"code":3,"message":"{}"}}"#, "x".repeat(5000));
        assert!(
            Rejection::parse(400, None, long.as_bytes())
                .message
                .chars()
                .count()
                <= MAX_MESSAGE_CHARS + 1
        );
    }
}
