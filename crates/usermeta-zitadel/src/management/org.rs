//! Organisations' metadata, with usermeta's service credential: [`Zitadel::list_org_metadata`],
//! [`Zitadel::set_org_metadata`] and [`Zitadel::remove_org_metadata`], answered by whichever API serves them
//! ([`Family::Organizations`]'s selector):
//!
//! - v1 management (`/management/v1/metadata/...`, grpc-gateway REST, deprecated), scoped to the organisation
//!   by `x-zitadel-orgid`, which is always sent: the organisation is never left to ZITADEL's default (the
//!   service user's own), so the policy and ZITADEL see the same one. A header naming an organisation ZITADEL
//!   does not know is refused with `AUTH-Bs7Ds`.
//! - v2 `zitadel.org.v2.OrganizationService` (ZITADEL 4.7+), over Connect JSON as the official SDKs call it
//!   (`POST /zitadel.org.v2.OrganizationService/<Method>`), the organisation in the body. Its listing reads an
//!   eventually consistent projection ([`super::RecentWrites`] lays this replica's writes over it, as for
//!   users) and filters an organisation ZITADEL does not know down to nothing; an empty listing is therefore
//!   checked with `ListOrganizations` by id, so "unknown" is told apart from "no metadata".
//!
//! Every call goes through [`Zitadel::send_management_raw`]: the same deadline, retries, breaker, request
//! budget and span as users' metadata.

use prost_types::Timestamp;
use serde::{Deserialize, Serialize};

use super::{ManagementApi, choice::is_not_served, v2};
use crate::metadata::{KeyFilter, Page, PageRequest};
use crate::{Endpoint, UpstreamError, Zitadel, path, value, wire};

/// The Connect path prefix of the v2 organisation service.
const SERVICE: &str = "zitadel.org.v2.OrganizationService";

/// The header that scopes a v1 management call to an organisation.
const ORG_HEADER: &str = "x-zitadel-orgid";

/// ZITADEL's error ids for "no such organisation": v1's `x-zitadel-orgid` check (PERMISSION_DENIED), and the
/// commands' organisation lookup (`Errors.Org.NotFound`).
const UNKNOWN_ORG_IDS: &[&str] = &["AUTH-Bs7Ds", "COMMAND-QXPGs", "ORG-MEUzd"];

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ListRequest<'a> {
    organization_id: &'a str,
    pagination: v2::Pagination,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    filters: Vec<v2::MetadataFilter<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SetRequest<'a> {
    organization_id: &'a str,
    metadata: Vec<v2::SetEntry<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DeleteRequest<'a> {
    organization_id: &'a str,
    keys: &'a [String],
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ListOrganizationsResponse {
    result: Vec<serde_json::Value>,
}

impl Zitadel {
    /// The API managing organisations' metadata (for `auto`, asks ZITADEL once which it serves).
    pub async fn organization_api(&self) -> Result<ManagementApi, UpstreamError> {
        self.org_selector.current(self).await
    }

    /// Runs `call` on the organisation API in use; when its answer says that API is not served (under `auto`),
    /// once more on the one chosen then. With `v2` fixed, a ZITADEL without the v2 organisation service (before
    /// 4.7) is [`UpstreamError::NotSupported`].
    async fn on_org_api<T, F, Fut>(&self, call: F) -> Result<T, UpstreamError>
    where
        F: Fn(ManagementApi) -> Fut,
        Fut: Future<Output = Result<T, UpstreamError>>,
    {
        let mut switched = false;
        loop {
            let api = self.organization_api().await?;
            let result = call(api).await;
            if !switched && self.org_selector.switched_after(self, api, &result) {
                switched = true;
                continue;
            }
            return match result {
                Err(error) if api == ManagementApi::V2 && is_not_served(&error) => {
                    Err(UpstreamError::NotSupported {
                        endpoint: error.endpoint(),
                        what: "organisation metadata through ZITADEL's v2 organisation service",
                        needs: "ZITADEL 4.7 or later",
                    })
                }
                other => other,
            };
        }
    }

    /// One page of an organisation's metadata, ascending (v1 by key, v2 by creation date). An organisation
    /// ZITADEL does not know is [`UpstreamError::UnknownOrganization`].
    pub async fn list_org_metadata(
        &self,
        org_id: &str,
        filter: Option<&KeyFilter>,
        page: PageRequest,
    ) -> Result<Page, UpstreamError> {
        self.on_org_api(|api| async move {
            match api {
                ManagementApi::V1 => self.v1_list_org_metadata(org_id, filter, page).await,
                ManagementApi::V2 => self.v2_list_org_metadata(org_id, filter, page).await,
            }
        })
        .await
        .map_err(|e| unknown_org(e, org_id))
    }

    /// Every entry of an organisation's metadata (every page), ascending.
    pub async fn list_all_org_metadata(
        &self,
        org_id: &str,
    ) -> Result<Vec<crate::metadata::MetadataItem>, UpstreamError> {
        let mut items = Vec::new();
        loop {
            let page = self
                .list_org_metadata(
                    org_id,
                    None,
                    PageRequest {
                        offset: items.len() as u64,
                        limit: v2::MAX_LIMIT,
                    },
                )
                .await?;
            let done =
                page.items.is_empty() || items.len() as u64 + page.items.len() as u64 >= page.total;
            items.extend(page.items);
            if done {
                return Ok(items);
            }
        }
    }

    /// Adds or overwrites entries of an organisation; one call, all or nothing. Returns ZITADEL's change date.
    pub async fn set_org_metadata(
        &self,
        org_id: &str,
        entries: &[(String, Vec<u8>)],
    ) -> Result<Option<Timestamp>, UpstreamError> {
        self.on_org_api(|api| async move {
            match api {
                ManagementApi::V1 => self.v1_set_org_metadata(org_id, entries).await,
                ManagementApi::V2 => self.v2_set_org_metadata(org_id, entries).await,
            }
        })
        .await
        .map_err(|e| unknown_org(e, org_id))
    }

    /// Removes keys of an organisation; one call, all or nothing: when any key is missing nothing is removed and
    /// the error says so ([`UpstreamError::is_missing_metadata`]).
    pub async fn remove_org_metadata(
        &self,
        org_id: &str,
        keys: &[String],
    ) -> Result<Option<Timestamp>, UpstreamError> {
        self.on_org_api(|api| async move {
            match api {
                ManagementApi::V1 => self.v1_remove_org_metadata(org_id, keys).await,
                ManagementApi::V2 => self.v2_remove_org_metadata(org_id, keys).await,
            }
        })
        .await
        .map_err(|e| unknown_org(e, org_id))
    }

    // -----------------------------------------------------------------------------------------------------
    // v1 management

    async fn v1_list_org_metadata(
        &self,
        org_id: &str,
        filter: Option<&KeyFilter>,
        page: PageRequest,
    ) -> Result<Page, UpstreamError> {
        let endpoint = Endpoint::ManagementListOrgMetadata;
        let request = self
            .org_management(endpoint, http::Method::POST, org_id, "_search")?
            .json(&wire::list_body(filter, page));
        let body = self.send_management_raw(endpoint, request).await.result?;
        let answer: wire::ListMetadataResponse = crate::parse_json(endpoint, &body)?;
        Ok(wire::into_page(endpoint, answer))
    }

    async fn v1_set_org_metadata(
        &self,
        org_id: &str,
        entries: &[(String, Vec<u8>)],
    ) -> Result<Option<Timestamp>, UpstreamError> {
        let (endpoint, request) = match entries {
            [(key, bytes)] if super::v1::is_path_safe(key) => (
                Endpoint::ManagementSetOrgMetadata,
                self.org_management(
                    Endpoint::ManagementSetOrgMetadata,
                    http::Method::POST,
                    org_id,
                    key,
                )?
                .json(&wire::SetValueBody {
                    value: value::encode(bytes),
                }),
            ),
            _ => (
                Endpoint::ManagementBulkSetOrgMetadata,
                self.org_management(
                    Endpoint::ManagementBulkSetOrgMetadata,
                    http::Method::POST,
                    org_id,
                    "_bulk",
                )?
                .json(&wire::BulkSetBody {
                    metadata: entries
                        .iter()
                        .map(|(key, bytes)| wire::BulkSetEntry {
                            key,
                            value: value::encode(bytes),
                        })
                        .collect(),
                }),
            ),
        };
        let body = self.send_management_raw(endpoint, request).await.result?;
        let answer: wire::WriteResponse = crate::parse_json(endpoint, &body)?;
        Ok(answer.details.and_then(|d| d.change_date?.parse().ok()))
    }

    /// As the users' remove: a retried remove meeting NOT_FOUND after an attempt that may have landed counts as
    /// done when none of the keys is listed any more.
    async fn v1_remove_org_metadata(
        &self,
        org_id: &str,
        keys: &[String],
    ) -> Result<Option<Timestamp>, UpstreamError> {
        let (endpoint, request) = match keys {
            [key] if super::v1::is_path_safe(key) => (
                Endpoint::ManagementRemoveOrgMetadata,
                self.org_management(
                    Endpoint::ManagementRemoveOrgMetadata,
                    http::Method::DELETE,
                    org_id,
                    key,
                )?,
            ),
            _ => (
                Endpoint::ManagementBulkRemoveOrgMetadata,
                self.org_management(
                    Endpoint::ManagementBulkRemoveOrgMetadata,
                    http::Method::DELETE,
                    org_id,
                    "_bulk",
                )?
                .json(&wire::BulkRemoveBody { keys }),
            ),
        };
        let sent = self.send_management_raw(endpoint, request).await;
        match sent.result {
            Ok(body) => {
                let answer: wire::WriteResponse = crate::parse_json(endpoint, &body)?;
                Ok(answer.details.and_then(|d| d.change_date?.parse().ok()))
            }
            Err(error) if sent.may_have_landed && error.is_missing_metadata() => {
                let listed = self.v1_list_org_metadata(org_id, None, FULL_PAGE).await?;
                if listed.items.iter().any(|item| keys.contains(&item.key)) {
                    Err(error)
                } else {
                    tracing::info!(%endpoint, org_id, "a retried remove found the keys gone after an attempt that may have landed; counting it as done");
                    Ok(None)
                }
            }
            Err(error) => Err(error),
        }
    }

    /// A request to `/management/v1/metadata/{tail}`, scoped to `org_id`.
    fn org_management(
        &self,
        endpoint: Endpoint,
        method: http::Method,
        org_id: &str,
        tail: &str,
    ) -> Result<reqwest::RequestBuilder, UpstreamError> {
        let url = path::under(&self.base_url, ["management", "v1", "metadata", tail])
            .map_err(|segment| UpstreamError::UnsafePath { endpoint, segment })?;
        Ok(self.http.request(method, url).header(ORG_HEADER, org_id))
    }

    // -----------------------------------------------------------------------------------------------------
    // v2 organisation service

    async fn v2_list_org_metadata(
        &self,
        org_id: &str,
        filter: Option<&KeyFilter>,
        page: PageRequest,
    ) -> Result<Page, UpstreamError> {
        let Some(pending) = self.org_recent_writes.pending(org_id) else {
            let listed = self.v2_org_list_page(org_id, filter, page).await?;
            if listed.total == 0 {
                self.v2_require_org(org_id).await?;
            }
            return Ok(listed);
        };
        // Writes made here moments ago may not show yet: read the whole listing, correct it, page the result.
        let mut items = Vec::new();
        loop {
            let fetched = self
                .v2_org_list_page(
                    org_id,
                    filter,
                    PageRequest {
                        offset: items.len() as u64,
                        limit: v2::MAX_LIMIT,
                    },
                )
                .await?;
            let count = fetched.items.len();
            items.extend(fetched.items);
            if count == 0 || items.len() as u64 >= fetched.total {
                break;
            }
        }
        let items = self
            .org_recent_writes
            .apply(org_id, &pending, items, filter);
        let total = items.len() as u64;
        let start = usize::try_from(page.offset.min(total)).unwrap_or(usize::MAX);
        let end = start.saturating_add(page.limit as usize).min(items.len());
        Ok(Page {
            items: items[start..end].to_vec(),
            total,
        })
    }

    async fn v2_org_list_page(
        &self,
        org_id: &str,
        filter: Option<&KeyFilter>,
        page: PageRequest,
    ) -> Result<Page, UpstreamError> {
        let body = ListRequest {
            organization_id: org_id,
            pagination: v2::Pagination {
                offset: page.offset.to_string(),
                limit: page.limit.min(v2::MAX_LIMIT),
                asc: true,
            },
            filters: filter
                .map(|f| v2::MetadataFilter {
                    key_filter: v2::KeyFilterBody {
                        key: &f.key,
                        method: f.matching.v2_method(),
                    },
                })
                .into_iter()
                .collect(),
        };
        let answer: v2::ListResponse = self
            .org_connect(
                Endpoint::OrgV2ListMetadata,
                "ListOrganizationMetadata",
                &body,
            )
            .await?;
        Ok(v2::page_of(answer))
    }

    /// Whether ZITADEL lists an organisation with this id (`ListOrganizations` by id); unknown is
    /// [`UpstreamError::UnknownOrganization`].
    async fn v2_require_org(&self, org_id: &str) -> Result<(), UpstreamError> {
        let endpoint = Endpoint::OrgV2ListOrganizations;
        let body = serde_json::json!({
            "query": {"limit": 1},
            "queries": [{"idQuery": {"id": org_id}}],
        });
        let answer: ListOrganizationsResponse = self
            .org_connect(endpoint, "ListOrganizations", &body)
            .await?;
        if answer.result.is_empty() {
            return Err(UpstreamError::UnknownOrganization {
                endpoint,
                org_id: org_id.to_owned(),
            });
        }
        Ok(())
    }

    /// Never sends an empty value (usermeta refuses them before): ZITADEL's handling of one differs by version.
    async fn v2_set_org_metadata(
        &self,
        org_id: &str,
        entries: &[(String, Vec<u8>)],
    ) -> Result<Option<Timestamp>, UpstreamError> {
        let body = SetRequest {
            organization_id: org_id,
            metadata: entries
                .iter()
                .map(|(key, bytes)| v2::SetEntry {
                    key,
                    value: value::encode(bytes),
                })
                .collect(),
        };
        let answer: v2::SetResponse = self
            .org_connect(Endpoint::OrgV2SetMetadata, "SetOrganizationMetadata", &body)
            .await?;
        let date = v2::timestamp(answer.set_date);
        self.org_recent_writes.record(
            org_id,
            entries
                .iter()
                .map(|(key, bytes)| (key.clone(), Some(bytes.clone()))),
            date,
        );
        Ok(date)
    }

    async fn v2_remove_org_metadata(
        &self,
        org_id: &str,
        keys: &[String],
    ) -> Result<Option<Timestamp>, UpstreamError> {
        let endpoint = Endpoint::OrgV2DeleteMetadata;
        let body = DeleteRequest {
            organization_id: org_id,
            keys,
        };
        let request = self.org_connect_request(endpoint, "DeleteOrganizationMetadata", &body)?;
        let sent = self.send_management_raw(endpoint, request).await;
        let date = match sent.result.map_err(v2::membership_is_permission) {
            Ok(body) => v2::timestamp(
                crate::parse_json::<v2::DeleteResponse>(endpoint, &body)?.deletion_date,
            ),
            Err(error) if sent.may_have_landed && error.is_missing_metadata() => {
                let listed = self.v2_org_list_page(org_id, None, FULL_PAGE).await?;
                if listed.items.iter().any(|item| keys.contains(&item.key)) {
                    return Err(error);
                }
                tracing::info!(%endpoint, org_id, "a retried remove found the keys gone after an attempt that may have landed; counting it as done");
                None
            }
            Err(error) => return Err(error),
        };
        self.org_recent_writes
            .record(org_id, keys.iter().map(|key| (key.clone(), None)), date);
        Ok(date)
    }

    /// One Connect unary call to the organisation service with the service credential, and its JSON answer.
    async fn org_connect<T: serde::de::DeserializeOwned>(
        &self,
        endpoint: Endpoint,
        method: &str,
        body: &impl Serialize,
    ) -> Result<T, UpstreamError> {
        let request = self.org_connect_request(endpoint, method, body)?;
        let body = self
            .send_management_raw(endpoint, request)
            .await
            .result
            .map_err(v2::membership_is_permission)?;
        crate::parse_json(endpoint, &body)
    }

    /// `POST {base}/zitadel.org.v2.OrganizationService/{method}` with a JSON body.
    pub(super) fn org_connect_request(
        &self,
        endpoint: Endpoint,
        method: &str,
        body: &impl Serialize,
    ) -> Result<reqwest::RequestBuilder, UpstreamError> {
        let url = self
            .base_url
            .join(&format!("{SERVICE}/{method}"))
            .map_err(|e| UpstreamError::BadResponse {
                endpoint,
                reason: format!("no URL for {method} ({e})"),
            })?;
        Ok(self
            .http
            .post(url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("connect-protocol-version", "1")
            .json(body))
    }
}

/// A whole listing's first (and usually only) page.
const FULL_PAGE: PageRequest = PageRequest {
    offset: 0,
    limit: v2::MAX_LIMIT,
};

/// ZITADEL's "no such organisation", whichever way it said it, as [`UpstreamError::UnknownOrganization`].
fn unknown_org(error: UpstreamError, org_id: &str) -> UpstreamError {
    match &error {
        UpstreamError::Rejected { rejection, .. }
            if rejection
                .error_id
                .as_deref()
                .is_some_and(|id| UNKNOWN_ORG_IDS.contains(&id)) =>
        {
            UpstreamError::UnknownOrganization {
                endpoint: error.endpoint(),
                org_id: org_id.to_owned(),
            }
        }
        _ => error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_requests_are_proto3_json() {
        let body = SetRequest {
            organization_id: "o1",
            metadata: vec![v2::SetEntry {
                key: "plan",
                value: value::encode(b"gold"),
            }],
        };
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"organizationId":"o1","metadata":[{"key":"plan","value":"Z29sZA=="}]}"#
        );
        let keys = ["a".to_owned(), "b".to_owned()];
        let body = DeleteRequest {
            organization_id: "o1",
            keys: &keys,
        };
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"organizationId":"o1","keys":["a","b"]}"#
        );
    }

    #[test]
    fn every_way_of_saying_no_such_organisation_is_one_error() {
        let rejected = |status: u16, body: &str| UpstreamError::Rejected {
            endpoint: Endpoint::ManagementListOrgMetadata,
            http_status: status,
            rejection: crate::Rejection::parse(status, None, body.as_bytes()),
        };
        let v1 = rejected(
            403,
            r#"{"code":7,"message":"Organisation doesn't exist (AUTH-Bs7Ds)","details":[{"id":"AUTH-Bs7Ds"}]}"#,
        );
        assert!(matches!(
            unknown_org(v1, "o9"),
            UpstreamError::UnknownOrganization { ref org_id, .. } if org_id == "o9"
        ));
        let other = rejected(
            403,
            r#"{"code":7,"message":"No matching permissions found (AUTH-5mWD2)","details":[{"id":"AUTH-5mWD2"}]}"#,
        );
        assert!(matches!(
            unknown_org(other, "o9"),
            UpstreamError::Rejected { .. }
        ));
    }
}
