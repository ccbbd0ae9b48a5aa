//! ZITADEL v4's v2 user service (`zitadel.user.v2.UserService`), called the way ZITADEL's own SDKs call it:
//! Connect unary JSON (`POST /zitadel.user.v2.UserService/<Method>`, `Content-Type: application/json`) over
//! the pooled HTTP client. Connect rather than the REST twins (`/v2/users/...`): one path shape for every
//! method, keys and user ids only ever in a JSON body (no path encoding to get wrong), and the transport the
//! official SDKs use, so it is the one ZITADEL tests hardest.
//!
//! Differences from v1 the callers must not notice:
//! - No `x-zitadel-orgid`: ZITADEL checks the service user's permission in the target user's real
//!   organisation. [`Zitadel::scope`] finds that organisation first (cached briefly), so the policy decides on
//!   the organisation ZITADEL acts in.
//! - List reads an eventually consistent projection; [`super::recent::RecentWrites`] lays this replica's own
//!   recent writes over it, so a caller reads its writes.
//! - A service user without a role in the user's organisation is told "membership not found" (NOT_FOUND,
//!   `AUTHZ-cdgFk`); that is v1's PERMISSION_DENIED and is reported as such.

use prost_types::Timestamp;
use serde::{Deserialize, Serialize};

use super::Target;
use crate::metadata::{KeyFilter, Page, PageRequest};
use crate::{Endpoint, Rejection, UpstreamError, Zitadel, value};

/// The Connect path prefix of the v2 user service.
const SERVICE: &str = "zitadel.user.v2.UserService";

/// ZITADEL's error id for "the service user has no membership that grants this here".
const MEMBERSHIP_NOT_FOUND: &str = "AUTHZ-cdgFk";

/// Largest page the v2 List accepts; larger limits are refused (`QUERY-4M0fs`).
pub(super) const MAX_LIMIT: u32 = 1000;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ListRequest<'a> {
    user_id: &'a str,
    pagination: Pagination,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    filters: Vec<MetadataFilter<'a>>,
}

#[derive(Serialize)]
pub(super) struct Pagination {
    /// uint64: a string in proto3 JSON.
    pub(super) offset: String,
    pub(super) limit: u32,
    pub(super) asc: bool,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct MetadataFilter<'a> {
    pub(super) key_filter: KeyFilterBody<'a>,
}

#[derive(Serialize)]
pub(super) struct KeyFilterBody<'a> {
    pub(super) key: &'a str,
    pub(super) method: &'static str,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(crate) struct ListResponse {
    pagination: Option<PaginationResponse>,
    metadata: Vec<Entry>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct PaginationResponse {
    #[serde(deserialize_with = "crate::wire::lenient_u64")]
    total_result: u64,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct Entry {
    key: String,
    value: Option<String>,
    creation_date: Option<String>,
    change_date: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SetRequest<'a> {
    user_id: &'a str,
    metadata: Vec<SetEntry<'a>>,
}

#[derive(Serialize)]
pub(super) struct SetEntry<'a> {
    pub(super) key: &'a str,
    /// `bytes`: standard base64 in proto3 JSON.
    pub(super) value: String,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
pub(super) struct SetResponse {
    pub(super) set_date: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DeleteRequest<'a> {
    user_id: &'a str,
    keys: &'a [String],
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
pub(super) struct DeleteResponse {
    pub(super) deletion_date: Option<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct GetUserRequest<'a> {
    user_id: &'a str,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct GetUserResponse {
    user: Option<User>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct User {
    details: Option<crate::wire::ObjectDetails>,
}

impl Zitadel {
    /// One page of a user's metadata, oldest first (v2 sorts by creation date), with this replica's recent
    /// writes laid over ZITADEL's lagging projection.
    pub(super) async fn v2_list_user_metadata(
        &self,
        target: Target<'_>,
        filter: Option<&KeyFilter>,
        page: PageRequest,
    ) -> Result<Page, UpstreamError> {
        let Some(pending) = self.recent_writes.pending(target.user_id) else {
            return self.v2_list_page(target.user_id, filter, page).await;
        };
        // The projection may not show writes made here moments ago: read the whole listing, correct it, and
        // page the result (rare: only within the consistency window after a write through this replica).
        let mut items = Vec::new();
        let mut offset = 0;
        loop {
            let fetched = self
                .v2_list_page(
                    target.user_id,
                    filter,
                    PageRequest {
                        offset,
                        limit: MAX_LIMIT,
                    },
                )
                .await?;
            let count = fetched.items.len() as u64;
            items.extend(fetched.items);
            offset += count;
            if count == 0 || offset >= fetched.total {
                break;
            }
        }
        let items = self
            .recent_writes
            .apply(target.user_id, &pending, items, filter);
        let total = items.len() as u64;
        let start = usize::try_from(page.offset.min(total)).unwrap_or(usize::MAX);
        let end = start.saturating_add(page.limit as usize).min(items.len());
        Ok(Page {
            items: items[start..end].to_vec(),
            total,
        })
    }

    async fn v2_list_page(
        &self,
        user_id: &str,
        filter: Option<&KeyFilter>,
        page: PageRequest,
    ) -> Result<Page, UpstreamError> {
        let endpoint = Endpoint::UserV2ListMetadata;
        let body = ListRequest {
            user_id,
            pagination: Pagination {
                offset: page.offset.to_string(),
                limit: page.limit.min(MAX_LIMIT),
                asc: true,
            },
            filters: filter
                .map(|f| MetadataFilter {
                    key_filter: KeyFilterBody {
                        key: &f.key,
                        method: f.matching.v2_method(),
                    },
                })
                .into_iter()
                .collect(),
        };
        let answer: ListResponse = self.connect(endpoint, "ListUserMetadata", &body).await?;
        Ok(page_of(answer))
    }
    /// Adds or overwrites entries in one call. Values are never empty here (usermeta refuses them before):
    /// newer ZITADEL deletes a key set to an empty value, older ones refuse it.
    pub(super) async fn v2_set_user_metadata(
        &self,
        target: Target<'_>,
        entries: &[(String, Vec<u8>)],
    ) -> Result<Option<Timestamp>, UpstreamError> {
        let body = SetRequest {
            user_id: target.user_id,
            metadata: entries
                .iter()
                .map(|(key, bytes)| SetEntry {
                    key,
                    value: value::encode(bytes),
                })
                .collect(),
        };
        let answer: SetResponse = self
            .connect(Endpoint::UserV2SetMetadata, "SetUserMetadata", &body)
            .await?;
        let date = timestamp(answer.set_date);
        self.recent_writes.record(
            target.user_id,
            entries
                .iter()
                .map(|(key, bytes)| (key.clone(), Some(bytes.clone()))),
            date,
        );
        Ok(date)
    }

    /// Removes keys in one call, all or nothing: ZITADEL fails the call when a key is not set.
    ///
    /// A retried remove that meets NOT_FOUND after an attempt that may have landed counts as done when none of
    /// the keys is listed any more (as v1's does). v2's listing may still show a key removed a moment ago; then
    /// the NOT_FOUND stands, which errs on the side of saying less than happened.
    pub(super) async fn v2_remove_user_metadata(
        &self,
        target: Target<'_>,
        keys: &[String],
    ) -> Result<Option<Timestamp>, UpstreamError> {
        let endpoint = Endpoint::UserV2DeleteMetadata;
        let body = DeleteRequest {
            user_id: target.user_id,
            keys,
        };
        let request = self.connect_request("DeleteUserMetadata", &body)?;
        let sent = self.send_management_raw(endpoint, request).await;
        let date = match sent.result.map_err(membership_is_permission) {
            Ok(body) => {
                timestamp(crate::parse_json::<DeleteResponse>(endpoint, &body)?.deletion_date)
            }
            Err(error) if sent.may_have_landed && error.is_missing_metadata() => {
                let listed = self
                    .v2_list_page(
                        target.user_id,
                        None,
                        PageRequest {
                            offset: 0,
                            limit: MAX_LIMIT,
                        },
                    )
                    .await?;
                if listed.items.iter().any(|item| keys.contains(&item.key)) {
                    return Err(error);
                }
                tracing::info!(%endpoint, user_id = target.user_id, "a retried remove found the keys gone after an attempt that may have landed; counting it as done");
                None
            }
            Err(error) => return Err(error),
        };
        self.recent_writes.record(
            target.user_id,
            keys.iter().map(|key| (key.clone(), None)),
            date,
        );
        Ok(date)
    }

    /// The organisation a user belongs to, as ZITADEL says (`GetUserByID`).
    pub(super) async fn v2_user_organization(
        &self,
        user_id: &str,
    ) -> Result<String, UpstreamError> {
        let endpoint = Endpoint::UserV2GetUser;
        let answer: GetUserResponse = self
            .connect(endpoint, "GetUserByID", &GetUserRequest { user_id })
            .await?;
        answer
            .user
            .and_then(|user| user.details)
            .and_then(|details| details.resource_owner)
            .filter(|org| !org.is_empty())
            .ok_or_else(|| UpstreamError::BadResponse {
                endpoint,
                reason: "the user has no `details.resourceOwner`".to_owned(),
            })
    }

    /// One Connect unary call with the service credential, and its JSON answer.
    async fn connect<T: serde::de::DeserializeOwned>(
        &self,
        endpoint: Endpoint,
        method: &str,
        body: &impl Serialize,
    ) -> Result<T, UpstreamError> {
        let body = self
            .send_management_raw(endpoint, self.connect_request(method, body)?)
            .await
            .result
            .map_err(membership_is_permission)?;
        crate::parse_json(endpoint, &body)
    }

    /// A Connect unary request: `POST {base}/zitadel.user.v2.UserService/{method}` with a JSON body.
    pub(super) fn connect_request(
        &self,
        method: &str,
        body: &impl Serialize,
    ) -> Result<reqwest::RequestBuilder, UpstreamError> {
        let url = self
            .base_url
            .join(&format!("{SERVICE}/{method}"))
            .map_err(|e| UpstreamError::BadResponse {
                endpoint: Endpoint::UserV2ListMetadata,
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

#[derive(Serialize)]
struct ListUsersRequest {
    query: Pagination,
    queries: Vec<serde_json::Value>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ListUsersResponse {
    details: Option<ListDetails>,
    result: Vec<ListedUser>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct ListDetails {
    #[serde(deserialize_with = "crate::wire::lenient_u64")]
    total_result: u64,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "camelCase")]
struct ListedUser {
    user_id: String,
    details: Option<crate::wire::ObjectDetails>,
}

impl Zitadel {
    /// `ListUsers` with a metadata key and a value filter. ZITADEL matches each filter on its own (a user with
    /// the key holding another value and the value under another key matches both), so the users found are
    /// candidates: the caller checks that each one's `key` holds exactly `value` (from its listing, which the
    /// service caches).
    pub(super) async fn v2_find_users(
        &self,
        key: &str,
        value: &[u8],
        org_id: Option<&str>,
        page: PageRequest,
    ) -> Result<super::FoundUsers, UpstreamError> {
        let endpoint = Endpoint::UserV2ListUsers;
        let mut queries = vec![
            serde_json::json!({"metadataKeyFilter": {"key": key, "method": "TEXT_FILTER_METHOD_EQUALS"}}),
            serde_json::json!({"metadataValueFilter": {"value": value::encode(value), "method": "BYTE_FILTER_METHOD_EQUALS"}}),
        ];
        if let Some(org_id) = org_id {
            queries.push(serde_json::json!({"organizationIdQuery": {"organizationId": org_id}}));
        }
        let body = ListUsersRequest {
            query: Pagination {
                offset: page.offset.to_string(),
                limit: page.limit.min(MAX_LIMIT),
                asc: true,
            },
            queries,
        };
        let answer: ListUsersResponse = match self.connect(endpoint, "ListUsers", &body).await {
            Ok(answer) => answer,
            // Our query is valid; a ZITADEL that refuses it predates the metadata filters (4.0).
            Err(error) if error.zitadel_code() == Some(tonic::Code::InvalidArgument) => {
                tracing::warn!(%error, "ZITADEL refused ListUsers with metadata filters");
                return Err(UpstreamError::NotSupported {
                    endpoint,
                    what: "finding users by metadata",
                    needs: "ZITADEL 4.1 or later (ListUsers with metadata filters)",
                });
            }
            Err(error) => return Err(error),
        };
        let fetched = answer.result.len() as u64;
        let candidates: Vec<super::UserRef> = answer
            .result
            .into_iter()
            .zip(page.offset..)
            .filter_map(|(user, position)| {
                let org_id = user.details?.resource_owner?;
                Some(super::UserRef {
                    user_id: user.user_id,
                    org_id,
                    position,
                })
            })
            .collect();
        Ok(super::FoundUsers {
            users: candidates,
            fetched,
            total: answer.details.map(|d| d.total_result).unwrap_or_default(),
        })
    }
}

impl Zitadel {
    /// One page of the users holding a key that `filter` matches (every user without a filter), in creation
    /// order: v2 `ListUsers` with a metadata key filter alone.
    pub(super) async fn v2_users_with_key(
        &self,
        filter: Option<&KeyFilter>,
        page: PageRequest,
    ) -> Result<super::FoundUsers, UpstreamError> {
        let endpoint = Endpoint::UserV2ListUsers;
        let queries = filter
            .map(|filter| {
                serde_json::json!({"metadataKeyFilter": {"key": filter.key, "method": filter.matching.v2_method()}})
            })
            .into_iter()
            .collect();
        let body = ListUsersRequest {
            query: Pagination {
                offset: page.offset.to_string(),
                limit: page.limit.min(MAX_LIMIT),
                asc: true,
            },
            queries,
        };
        let answer: ListUsersResponse = match self.connect(endpoint, "ListUsers", &body).await {
            Ok(answer) => answer,
            Err(error) if error.zitadel_code() == Some(tonic::Code::InvalidArgument) => {
                tracing::warn!(%error, "ZITADEL refused ListUsers with a metadata key filter");
                return Err(UpstreamError::NotSupported {
                    endpoint,
                    what: "listing the users that hold a metadata key",
                    needs: "ZITADEL 4.1 or later (ListUsers with metadata filters)",
                });
            }
            Err(error) => return Err(error),
        };
        let fetched = answer.result.len() as u64;
        let users = answer
            .result
            .into_iter()
            .zip(page.offset..)
            .filter_map(|(user, position)| {
                let org_id = user.details?.resource_owner?;
                Some(super::UserRef {
                    user_id: user.user_id,
                    org_id,
                    position,
                })
            })
            .collect();
        Ok(super::FoundUsers {
            users,
            fetched,
            total: answer.details.map(|d| d.total_result).unwrap_or_default(),
        })
    }
}

/// v2 tells a service user without a membership in the user's organisation "membership not found"
/// (NOT_FOUND); v1 says PERMISSION_DENIED for the same fact, and so does usermeta.
/// A `ListUserMetadata` answer as a domain page.
pub(crate) fn page_of(answer: ListResponse) -> Page {
    let endpoint = Endpoint::UserV2ListMetadata;
    Page {
        total: answer
            .pagination
            .map(|p| p.total_result)
            .unwrap_or_default(),
        items: answer
            .metadata
            .into_iter()
            .map(|entry| {
                crate::decode_item(
                    endpoint,
                    entry.key,
                    entry.value.as_deref(),
                    Some(crate::wire::ObjectDetails {
                        creation_date: entry.creation_date,
                        change_date: entry.change_date,
                        resource_owner: None,
                    }),
                )
            })
            .collect(),
    }
}

pub(super) fn membership_is_permission(error: UpstreamError) -> UpstreamError {
    match error {
        UpstreamError::Rejected {
            endpoint,
            http_status,
            rejection,
        } if rejection.error_id.as_deref() == Some(MEMBERSHIP_NOT_FOUND) => {
            UpstreamError::Rejected {
                endpoint,
                http_status,
                rejection: Rejection {
                    code: tonic::Code::PermissionDenied,
                    ..rejection
                },
            }
        }
        error => error,
    }
}

pub(super) fn timestamp(text: Option<String>) -> Option<Timestamp> {
    text?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_requests_are_proto3_json() {
        let body = ListRequest {
            user_id: "u1",
            pagination: Pagination {
                offset: "20".into(),
                limit: 10,
                asc: true,
            },
            filters: vec![MetadataFilter {
                key_filter: KeyFilterBody {
                    key: "a",
                    method: "TEXT_FILTER_METHOD_STARTS_WITH",
                },
            }],
        };
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"userId":"u1","pagination":{"offset":"20","limit":10,"asc":true},"filters":[{"keyFilter":{"key":"a","method":"TEXT_FILTER_METHOD_STARTS_WITH"}}]}"#
        );
    }

    #[test]
    fn reads_a_list_answer_with_omitted_defaults() {
        let empty: ListResponse = serde_json::from_str(r#"{"pagination":{}}"#).unwrap();
        assert!(empty.metadata.is_empty());
        let full: ListResponse = serde_json::from_str(
            r#"{"pagination":{"totalResult":"1","appliedLimit":"100"},"metadata":[{"creationDate":"2025-01-01T00:00:00Z","changeDate":"2025-01-02T00:00:00Z","key":"k","value":"MTIzNA=="}]}"#,
        )
        .unwrap();
        assert_eq!(full.pagination.unwrap().total_result, 1);
        assert_eq!(full.metadata[0].value.as_deref(), Some("MTIzNA=="));
    }
}
