//! Which management API answers: fixed by the operator, or (`auto`) the v2 service where ZITADEL serves it and
//! v1 otherwise, decided once per ZITADEL and decided again when a call says otherwise (an upgrade, a
//! rollback, v1 switched off). Users' and organisations' metadata are decided apart ([`Family`]): ZITADEL 4.0
//! to 4.6 serves v2 user metadata but no v2 organisation metadata (that came with 4.7), so under `auto` such
//! a ZITADEL manages users through v2 and organisations through v1.

use std::sync::atomic::{AtomicU8, Ordering};

use super::ManagementApi;
use crate::{Endpoint, UpstreamError, Zitadel};

/// The operator's choice of management API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ApiChoice {
    /// Always the v1 management API.
    V1,
    /// Always the v2 user service.
    V2,
    /// v2 where ZITADEL serves it, else v1.
    #[default]
    Auto,
}

/// Whose metadata a [`Selector`] chooses the API for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    /// Users' metadata: v1 management `/users/{id}/metadata` or `zitadel.user.v2.UserService` (4.0+).
    Users,
    /// Organisations' metadata: v1 management `/metadata` with `x-zitadel-orgid`, or
    /// `zitadel.org.v2.OrganizationService` (4.7+).
    Organizations,
}

impl Family {
    /// The v2 service, as logs name it.
    fn v2_service(self) -> &'static str {
        match self {
            Family::Users => "v2 user service",
            Family::Organizations => "v2 organisation service",
        }
    }

    /// Whose metadata, as logs name it.
    fn whose(self) -> &'static str {
        match self {
            Family::Users => "users'",
            Family::Organizations => "organisations'",
        }
    }
}

const UNKNOWN: u8 = 0;
const V1: u8 = 1;
const V2: u8 = 2;

#[derive(Debug)]
pub(crate) struct Selector {
    choice: ApiChoice,
    family: Family,
    /// For `auto`: what ZITADEL was found to serve.
    found: AtomicU8,
    /// One probe at a time; the others wait for its answer.
    probing: tokio::sync::Mutex<()>,
}

impl Selector {
    pub(crate) fn new(choice: ApiChoice, family: Family) -> Self {
        Selector {
            choice,
            family,
            found: AtomicU8::new(UNKNOWN),
            probing: tokio::sync::Mutex::new(()),
        }
    }

    pub(crate) fn choice(&self) -> ApiChoice {
        self.choice
    }

    pub(crate) async fn current(&self, zitadel: &Zitadel) -> Result<ManagementApi, UpstreamError> {
        match self.choice {
            ApiChoice::V1 => return Ok(ManagementApi::V1),
            ApiChoice::V2 => return Ok(ManagementApi::V2),
            ApiChoice::Auto => {}
        }
        if let Some(api) = self.found() {
            return Ok(api);
        }
        let _probing = self.probing.lock().await;
        if let Some(api) = self.found() {
            return Ok(api);
        }
        let api = probe(zitadel, self.family).await?;
        self.settle(zitadel, api, "ZITADEL's answer to a probe");
        Ok(api)
    }

    fn found(&self) -> Option<ManagementApi> {
        match self.found.load(Ordering::Acquire) {
            V1 => Some(ManagementApi::V1),
            V2 => Some(ManagementApi::V2),
            _ => None,
        }
    }

    fn settle(&self, zitadel: &Zitadel, api: ManagementApi, why: &str) {
        let code = match api {
            ManagementApi::V1 => V1,
            ManagementApi::V2 => V2,
        };
        if self.found.swap(code, Ordering::AcqRel) != code {
            tracing::info!(
                api = api.name(),
                "managing {} metadata through ZITADEL's {} API (auto, from {why})",
                self.family.whose(),
                api.name()
            );
            // The gauge tells which API manages users' metadata, as it always has.
            if self.family == Family::Users {
                zitadel
                    .instrumentation
                    .hooks()
                    .management_api_in_use(api.name());
            }
        }
    }

    /// Whether `result` of a call on `api` says ZITADEL does not serve that API (any more), in which case the
    /// choice is made again and the caller repeats the call once. Only under `auto`.
    pub(crate) fn switched_after<T>(
        &self,
        zitadel: &Zitadel,
        api: ManagementApi,
        result: &Result<T, UpstreamError>,
    ) -> bool {
        if self.choice != ApiChoice::Auto {
            return false;
        }
        let Err(error) = result else {
            return false;
        };
        if !is_not_served(error) {
            return false;
        }
        match api {
            ManagementApi::V2 => {
                tracing::warn!(endpoint = %error.endpoint(), "ZITADEL does not serve the {}'s metadata calls; switching {} metadata to the v1 management API", self.family.v2_service(), self.family.whose());
                self.settle(
                    zitadel,
                    ManagementApi::V1,
                    "a v2 call ZITADEL did not serve",
                );
            }
            ManagementApi::V1 => {
                tracing::warn!(endpoint = %error.endpoint(), "ZITADEL no longer serves the v1 management API; switching {} metadata to the {}", self.family.whose(), self.family.v2_service());
                self.settle(
                    zitadel,
                    ManagementApi::V2,
                    "a v1 call ZITADEL did not serve",
                );
            }
        }
        true
    }
}

/// An answer that means "no such API here", not an answer of the API: Connect's `unimplemented`, or a 404, 405
/// or 501 without ZITADEL's error id (a route that does not exist; every error ZITADEL itself raises carries one).
pub(crate) fn is_not_served(error: &UpstreamError) -> bool {
    match error {
        UpstreamError::Rejected {
            http_status,
            rejection,
            ..
        } => {
            rejection.code == tonic::Code::Unimplemented
                || (matches!(http_status, 404 | 405 | 501) && rejection.error_id.is_none())
        }
        _ => false,
    }
}

/// Asks the family's v2 service for the metadata of a user (or organisation) that does not exist: any answer of
/// the service (an error with ZITADEL's id included) means it is served; "not served" means v1. A failure to
/// reach ZITADEL decides nothing.
async fn probe(zitadel: &Zitadel, family: Family) -> Result<ManagementApi, UpstreamError> {
    let (endpoint, request) = match family {
        Family::Users => (
            Endpoint::UserV2ListMetadata,
            zitadel.connect_request(
                "ListUserMetadata",
                &serde_json::json!({"userId": "usermeta-api-probe", "pagination": {"limit": 1}}),
            )?,
        ),
        Family::Organizations => (
            Endpoint::OrgV2ListMetadata,
            zitadel.org_connect_request(
                Endpoint::OrgV2ListMetadata,
                "ListOrganizationMetadata",
                &serde_json::json!({"organizationId": "usermeta-api-probe", "pagination": {"limit": 1}}),
            )?,
        ),
    };
    match zitadel.send_management_raw(endpoint, request).await.result {
        // A JSON answer is the service's; anything else at that path (a web page a proxy or an old ZITADEL
        // serves for unknown paths) is not.
        Ok(body) => Ok(
            if serde_json::from_slice::<serde_json::Value>(&body).is_ok_and(|v| v.is_object()) {
                ManagementApi::V2
            } else {
                ManagementApi::V1
            },
        ),
        Err(error) if is_not_served(&error) => Ok(ManagementApi::V1),
        Err(error @ UpstreamError::Rejected { .. }) => {
            if error.zitadel_code() == Some(tonic::Code::Unauthenticated) {
                // The credential failed, not the API: no decision, and the caller learns why.
                Err(error)
            } else {
                Ok(ManagementApi::V2)
            }
        }
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rejection;

    fn rejected(http_status: u16, body: &str) -> UpstreamError {
        UpstreamError::Rejected {
            endpoint: Endpoint::UserV2ListMetadata,
            http_status,
            rejection: Rejection::parse(http_status, None, body.as_bytes()),
        }
    }

    #[test]
    fn only_answers_of_no_such_api_count_as_not_served() {
        assert!(is_not_served(&rejected(404, "404 page not found")));
        assert!(is_not_served(&rejected(
            404,
            r#"{"code":5,"message":"Not Found"}"#
        )));
        assert!(is_not_served(&rejected(
            404,
            r#"{"code":"unimplemented","message":"x"}"#
        )));
        assert!(is_not_served(&rejected(405, "")));
        // The service's own errors carry ZITADEL's id: the API is there.
        assert!(!is_not_served(&rejected(
            404,
            r#"{"code":5,"message":"User not found (QUERY-Dfbg2)","details":[{"id":"QUERY-Dfbg2"}]}"#
        )));
        assert!(!is_not_served(&rejected(
            400,
            r#"{"code":3,"message":"invalid"}"#
        )));
        assert!(!is_not_served(&rejected(503, "")));
    }
}
