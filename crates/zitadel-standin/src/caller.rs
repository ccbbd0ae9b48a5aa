//! Who calls the Auth and Management APIs: bearer token checks, the audience rule, the context org and
//! manager permissions, in ZITADEL's order.

use http::HeaderMap;

use super::errors;
use super::state::{Data, Shared, User, ZITADEL_AUDIENCE_SCOPE};
use super::{AudienceErrorStyle, ManagerRole};

/// An authenticated API caller.
pub(super) struct Caller {
    pub(super) user_id: String,
    /// The caller's own organisation.
    pub(super) org_id: String,
    /// The org the call acts in: `x-zitadel-orgid` if given, else the caller's own.
    pub(super) context_org: String,
    pub(super) role: ManagerRole,
}

impl Caller {
    /// Whether the caller has a manager role for the context org (`user.read`/`user.write`).
    pub(super) fn require_manager(&self) -> Result<(), errors::Reject> {
        let allowed = match self.role {
            ManagerRole::IamOwner => true,
            ManagerRole::OrgOwner => self.org_id == self.context_org,
            ManagerRole::None => false,
        };
        if allowed {
            Ok(())
        } else {
            Err(errors::no_permission())
        }
    }
}

/// Why a bearer token was not accepted, before either transport renders it.
pub(super) enum Refusal {
    HeaderMissing,
    InvalidHeader,
    TokenInvalid,
    InvalidAudience,
}

impl Refusal {
    /// As the v1 APIs (grpc-gateway) answer it.
    fn reject(self) -> errors::Reject {
        Box::new(self.failure().to_gateway())
    }

    /// As a transport-independent failure (the v2 services).
    pub(super) fn failure(self) -> errors::Failure {
        use errors::{Code, Failure};
        match self {
            Refusal::HeaderMissing => Failure::plain(Code::Unauthenticated, "auth header missing"),
            Refusal::InvalidHeader => {
                Failure::zitadel(Code::Unauthenticated, "AUTH-7fs1e", "invalid auth header")
            }
            Refusal::TokenInvalid => {
                Failure::zitadel(Code::Unauthenticated, "AUTH-7fs1e", "Token is invalid")
            }
            Refusal::InvalidAudience => {
                Failure::zitadel(Code::Unauthenticated, "APP-Zxfako", "invalid audience")
            }
        }
    }
}

/// The user behind a bearer token that passed ZITADEL's token checks (header, validity, audience).
pub(super) fn identify<'a>(
    shared: &Shared,
    data: &'a Data,
    headers: &HeaderMap,
) -> Result<&'a User, Refusal> {
    let header = match headers.get(http::header::AUTHORIZATION) {
        None => "",
        Some(value) => value.to_str().map_err(|_| Refusal::InvalidHeader)?,
    };
    if header.is_empty() {
        return Err(Refusal::HeaderMissing);
    }
    // ZITADEL does `strings.Split(header, "Bearer ")` and wants exactly two parts: the prefix is case-sensitive.
    let mut parts = header.split("Bearer ");
    let (Some(_), Some(token), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err(Refusal::InvalidHeader);
    };
    let token = data.valid_token(token).ok_or(Refusal::TokenInvalid)?;
    if !token.pat && !token.has_scope(ZITADEL_AUDIENCE_SCOPE) {
        return Err(match shared.audience_style() {
            AudienceErrorStyle::TokenInvalid => Refusal::TokenInvalid,
            AudienceErrorStyle::InvalidAudience => Refusal::InvalidAudience,
        });
    }
    data.users.get(&token.user_id).ok_or(Refusal::TokenInvalid)
}

/// Authenticates an API call from its headers.
pub(super) fn authenticate(
    shared: &Shared,
    data: &Data,
    headers: &HeaderMap,
) -> Result<Caller, errors::Reject> {
    let user = identify(shared, data, headers).map_err(Refusal::reject)?;
    let requested_org = headers
        .get("x-zitadel-orgid")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|org| !org.is_empty());
    let context_org = match requested_org {
        Some(org) if data.orgs.contains_key(org) => org.to_owned(),
        Some(_) => return Err(errors::org_not_found()),
        None => user.org_id.clone(),
    };
    Ok(Caller {
        user_id: user.id.clone(),
        org_id: user.org_id.clone(),
        context_org,
        role: user.role(),
    })
}
