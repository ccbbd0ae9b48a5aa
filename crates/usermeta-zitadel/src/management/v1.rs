//! The v1 management API (`/management/v1/users/{id}/metadata/...`, grpc-gateway REST): any user's metadata,
//! with usermeta's service credential. Calls name the user's organisation in `x-zitadel-orgid` when the
//! caller gave one; without it ZITADEL looks in the service user's own organisation.

use prost_types::Timestamp;
use serde::de::DeserializeOwned;

use super::Target;
use crate::metadata::{KeyFilter, Page, PageRequest};
use crate::{Endpoint, UpstreamError, Zitadel, path, value, wire};

/// The header that scopes a management call to an organisation.
const ORG_HEADER: &str = "x-zitadel-orgid";

impl Zitadel {
    /// One page of a user's metadata, ascending (ListUserMetadata).
    pub(super) async fn v1_list_user_metadata(
        &self,
        target: Target<'_>,
        filter: Option<&KeyFilter>,
        page: PageRequest,
    ) -> Result<Page, UpstreamError> {
        let endpoint = Endpoint::ManagementListMetadata;
        let request = self
            .management(endpoint, http::Method::POST, target, &["_search"])?
            .json(&wire::list_body(filter, page));
        let answer: wire::ListMetadataResponse = self.send_management(endpoint, request).await?;
        Ok(wire::into_page(endpoint, answer))
    }

    /// Adds or overwrites entries; one call, all or nothing. Returns ZITADEL's change date.
    pub(super) async fn v1_set_user_metadata(
        &self,
        target: Target<'_>,
        entries: &[(String, Vec<u8>)],
    ) -> Result<Option<Timestamp>, UpstreamError> {
        let answer: wire::WriteResponse = match entries {
            [(key, bytes)] if is_path_safe(key) => {
                let request = self
                    .management(
                        Endpoint::ManagementSetMetadata,
                        http::Method::POST,
                        target,
                        &[key],
                    )?
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
                    .management(
                        Endpoint::ManagementBulkSetMetadata,
                        http::Method::POST,
                        target,
                        &["_bulk"],
                    )?
                    .json(&body);
                self.send_management(Endpoint::ManagementBulkSetMetadata, request)
                    .await?
            }
        };
        Ok(change_date(answer))
    }

    /// Removes keys; one call, all or nothing (ZITADEL fails the whole call when any key is missing).
    ///
    /// A retried remove that meets NOT_FOUND after an attempt that may have landed (a dropped connection, a
    /// timeout, a 5xx) counts as done when none of the keys exists any more: since a remove is all or nothing,
    /// a key still present proves the earlier attempt did not land, and then the NOT_FOUND stands.
    pub(super) async fn v1_remove_user_metadata(
        &self,
        target: Target<'_>,
        keys: &[String],
    ) -> Result<Option<Timestamp>, UpstreamError> {
        let (endpoint, request) = match keys {
            [key] if is_path_safe(key) => (
                Endpoint::ManagementRemoveMetadata,
                self.management(
                    Endpoint::ManagementRemoveMetadata,
                    http::Method::DELETE,
                    target,
                    &[key],
                )?,
            ),
            _ => (
                Endpoint::ManagementBulkRemoveMetadata,
                self.management(
                    Endpoint::ManagementBulkRemoveMetadata,
                    http::Method::DELETE,
                    target,
                    &["_bulk"],
                )?
                .json(&wire::BulkRemoveBody { keys }),
            ),
        };
        let sent = self.send_management_raw(endpoint, request).await;
        match sent.result {
            Ok(body) => Ok(change_date(crate::parse_json(endpoint, &body)?)),
            Err(error)
                if sent.may_have_landed && error.zitadel_code() == Some(tonic::Code::NotFound) =>
            {
                if self.any_key_exists(target, keys).await? {
                    Err(error)
                } else {
                    tracing::info!(%endpoint, user_id = target.user_id, "a retried remove found the keys gone after an attempt that may have landed; counting it as done");
                    Ok(None)
                }
            }
            Err(error) => Err(error),
        }
    }

    /// Whether any of `keys` is set on the user (reads every page).
    async fn any_key_exists(
        &self,
        target: Target<'_>,
        keys: &[String],
    ) -> Result<bool, UpstreamError> {
        let mut offset = 0;
        loop {
            let page = self
                .v1_list_user_metadata(
                    target,
                    None,
                    PageRequest {
                        offset,
                        limit: 1000,
                    },
                )
                .await?;
            if page.items.iter().any(|item| keys.contains(&item.key)) {
                return Ok(true);
            }
            offset += page.items.len() as u64;
            if page.items.is_empty() || offset >= page.total {
                return Ok(false);
            }
        }
    }

    /// Sends a management request with the service credential and reads a 2xx JSON answer.
    async fn send_management<T: DeserializeOwned>(
        &self,
        endpoint: Endpoint,
        request: reqwest::RequestBuilder,
    ) -> Result<T, UpstreamError> {
        let body = self.send_management_raw(endpoint, request).await.result?;
        crate::parse_json(endpoint, &body)
    }

    /// A request to `/management/v1/users/{id}/metadata/{tail...}`; [`Self::send_management`] authorises it.
    fn management(
        &self,
        endpoint: Endpoint,
        method: http::Method,
        target: Target<'_>,
        tail: &[&str],
    ) -> Result<reqwest::RequestBuilder, UpstreamError> {
        let url = path::under(
            &self.base_url,
            ["management", "v1", "users", target.user_id, "metadata"]
                .into_iter()
                .chain(tail.iter().copied()),
        )
        .map_err(|segment| UpstreamError::UnsafePath { endpoint, segment })?;
        let mut request = self.http.request(method, url);
        if let Some(org_id) = target.org_id {
            request = request.header(ORG_HEADER, org_id);
        }
        Ok(request)
    }
}

/// Whether a key can travel as a path segment and reach the single-key RPC unchanged. Others go in a body:
/// percent-encoded reserved characters are not reliably unescaped by the gateway, and `_search`/`_bulk` would
/// route to another RPC.
pub(super) fn is_path_safe(key: &str) -> bool {
    !matches!(key, "_search" | "_bulk" | "." | "..")
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
        assert!(!is_path_safe("."));
        assert!(!is_path_safe(".."));
    }
}
