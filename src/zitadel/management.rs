//! ZITADEL's management API (`/management/v1`): any user's metadata, with usermeta's service credential.
//! Calls name the user's organisation in `x-zitadel-orgid` when the caller gave one; without it ZITADEL
//! looks in the service user's own organisation.

use prost_types::Timestamp;
use serde::de::DeserializeOwned;

use super::{Endpoint, UpstreamError, Zitadel, value, wire};
use crate::metadata::{KeyFilter, Page, PageRequest};

/// The header that scopes a management call to an organisation.
pub const ORG_HEADER: &str = "x-zitadel-orgid";

/// Where a metadata write goes: a user, in an organisation or in the service user's own.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub user_id: &'a str,
    pub org_id: Option<&'a str>,
}

impl Zitadel {
    /// One page of a user's metadata, ascending (ListUserMetadata).
    pub async fn list_user_metadata(
        &self,
        target: Target<'_>,
        filter: Option<&KeyFilter>,
        page: PageRequest,
    ) -> Result<Page, UpstreamError> {
        let endpoint = Endpoint::ManagementListMetadata;
        let request = self
            .management(http::Method::POST, target, &["_search"])
            .json(&wire::list_body(filter, page));
        let answer: wire::ListMetadataResponse = self.send_management(endpoint, request).await?;
        Ok(wire::into_page(endpoint, answer))
    }

    /// Adds or overwrites entries; one call, all or nothing. Returns ZITADEL's change date.
    pub async fn set_user_metadata(
        &self,
        target: Target<'_>,
        entries: &[(String, Vec<u8>)],
    ) -> Result<Option<Timestamp>, UpstreamError> {
        let answer: wire::WriteResponse = match entries {
            [(key, bytes)] if is_path_safe(key) => {
                let request =
                    self.management(http::Method::POST, target, &[key])
                        .json(&wire::SetValueBody {
                            value: value::encode(bytes),
                        });
                self.send_management(Endpoint::ManagementSetMetadata, request)
                    .await?
            }
            _ => {
                let body = wire::BulkSetBody {
                    metadata: entries
                        .iter()
                        .map(|(key, bytes)| wire::BulkSetEntry {
                            key,
                            value: value::encode(bytes),
                        })
                        .collect(),
                };
                let request = self
                    .management(http::Method::POST, target, &["_bulk"])
                    .json(&body);
                self.send_management(Endpoint::ManagementBulkSetMetadata, request)
                    .await?
            }
        };
        Ok(change_date(answer))
    }

    /// Removes keys; one call, all or nothing (ZITADEL fails the whole call when any key is missing).
    pub async fn remove_user_metadata(
        &self,
        target: Target<'_>,
        keys: &[String],
    ) -> Result<Option<Timestamp>, UpstreamError> {
        let answer: wire::WriteResponse = match keys {
            [key] if is_path_safe(key) => {
                let request = self.management(http::Method::DELETE, target, &[key]);
                self.send_management(Endpoint::ManagementRemoveMetadata, request)
                    .await?
            }
            _ => {
                let request = self
                    .management(http::Method::DELETE, target, &["_bulk"])
                    .json(&wire::BulkRemoveBody { keys });
                self.send_management(Endpoint::ManagementBulkRemoveMetadata, request)
                    .await?
            }
        };
        Ok(change_date(answer))
    }

    /// Sends a management request with the service credential and reads a 2xx JSON answer. An OAuth token
    /// ZITADEL rejects with 401 (expired early, revoked) is refreshed once and the call retried once; a PAT
    /// has nothing to refresh.
    async fn send_management<T: DeserializeOwned>(
        &self,
        endpoint: Endpoint,
        request: reqwest::RequestBuilder,
    ) -> Result<T, UpstreamError> {
        let authorization = self.service_token.authorization().await?;
        let retry = request
            .try_clone()
            .filter(|_| self.service_token.can_refresh());
        let first = request.header(http::header::AUTHORIZATION, authorization.clone());
        let body = match (self.send(endpoint, first).await, retry) {
            (
                Err(UpstreamError::Rejected {
                    http_status: 401, ..
                }),
                Some(retry),
            ) => {
                self.service_token.invalidate(&authorization);
                let authorization = self.service_token.authorization().await?;
                self.send(
                    endpoint,
                    retry.header(http::header::AUTHORIZATION, authorization),
                )
                .await?
            }
            (other, _) => other?,
        };
        super::parse_json(endpoint, &body)
    }

    /// A request to `/management/v1/users/{id}/metadata/{tail...}`; [`Self::send_management`] authorises it.
    fn management(
        &self,
        method: http::Method,
        target: Target<'_>,
        tail: &[&str],
    ) -> reqwest::RequestBuilder {
        let mut url = self.base_url.clone();
        url.path_segments_mut()
            .expect("checked at construction: the base URL can be a base")
            .pop_if_empty()
            .extend(["management", "v1", "users", target.user_id, "metadata"])
            .extend(tail);
        let mut request = self.http.request(method, url);
        if let Some(org_id) = target.org_id {
            request = request.header(ORG_HEADER, org_id);
        }
        request
    }
}

/// Whether a key can travel as a path segment and reach the single-key RPC unchanged. Others go in a body:
/// percent-encoded reserved characters are not reliably unescaped by the gateway, and `_search`/`_bulk` would
/// route to another RPC.
fn is_path_safe(key: &str) -> bool {
    key != "_search"
        && key != "_bulk"
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
}

fn change_date(answer: wire::WriteResponse) -> Option<Timestamp> {
    answer.details?.change_date?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_keys_travel_in_the_path() {
        assert!(is_path_safe("ContractNumber"));
        assert!(is_path_safe("billing.plan-v2_x~"));
        assert!(!is_path_safe("_search"));
        assert!(!is_path_safe("_bulk"));
        assert!(!is_path_safe("a/b"));
        assert!(!is_path_safe("with space"));
        assert!(!is_path_safe("ümlaut"));
    }
}
