//! ZITADEL's management of any user's metadata, with usermeta's service credential: the seam between what
//! usermeta asks (list, set, remove a user's metadata) and the ZITADEL API that answers it. Handlers and the
//! policy call only [`Zitadel::scope`], [`Zitadel::list_user_metadata`], [`Zitadel::set_user_metadata`] and
//! [`Zitadel::remove_user_metadata`]; which API serves them ([`ManagementApi`]: the v1 management API or
//! v4's v2 user service) is chosen by [`ApiChoice`], for `auto` once per ZITADEL and again when a call
//! says the chosen one is not served.

mod choice;
mod org;
mod recent;
mod v1;
pub(crate) mod v2;

use std::{
    future::Future,
    time::{Duration, Instant},
};

use prost_types::Timestamp;

pub use choice::ApiChoice;
pub(crate) use choice::{Family, Selector};
pub(crate) use recent::RecentWrites;

use super::{Endpoint, UpstreamError, Zitadel};
use crate::metadata::{KeyFilter, Page, PageRequest};

/// Where a metadata call goes: a user, in an organisation or in the service user's own.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    /// The user's id.
    pub user_id: &'a str,
    /// The organisation the request names; `None`: the service user's own.
    pub org_id: Option<&'a str>,
}

/// The ZITADEL API that manages users' metadata.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ManagementApi {
    /// `/management/v1/users/{id}/metadata/...` (grpc-gateway REST), deprecated since ZITADEL v4.
    #[default]
    V1,
    /// `zitadel.user.v2.UserService` (ZITADEL 4.0+), over Connect JSON.
    V2,
}

impl ManagementApi {
    /// `v1` or `v2`, as logs and metrics label the API.
    pub fn name(self) -> &'static str {
        match self {
            ManagementApi::V1 => "v1",
            ManagementApi::V2 => "v2",
        }
    }
}

/// A user found by [`Zitadel::find_users_by_metadata`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRef {
    /// The user's id.
    pub user_id: String,
    /// The organisation the user is in.
    pub org_id: String,
    /// Where the user is in ZITADEL's answer to the search (its offset): a page resuming at this user
    /// starts here.
    pub position: u64,
}

/// One page of ZITADEL's answer to a search by metadata.
#[derive(Debug, Clone, Default)]
pub struct FoundUsers {
    /// The users of this page ZITADEL matched, in its order: candidates, since ZITADEL matches the key and
    /// the value each on its own (a user with the key holding another value, and the value under another
    /// key, matches both). Check each one's listing before answering with it.
    pub users: Vec<UserRef>,
    /// How many entries ZITADEL returned for this page (the next page starts after them).
    pub fetched: u64,
    /// How many users ZITADEL matched over all pages.
    pub total: u64,
}

/// How long ZITADEL's word on a user's organisation is reused: users do not change organisations, and a
/// deleted user's writes fail in ZITADEL anyway.
const USER_ORG_TTL: Duration = Duration::from_secs(60);

/// Users whose organisation is remembered at once.
pub(crate) const USER_ORG_CAPACITY: usize = 10_000;

pub(crate) type UserOrgs = quick_cache::sync::Cache<String, (String, Instant)>;

/// A target whose organisation is the one ZITADEL acts in, [`Zitadel::scope`]'s answer.
#[derive(Debug, Clone)]
pub struct Scoped {
    /// The user's id.
    pub user_id: String,
    /// `None` (v1 only): the service user's organisation, where ZITADEL looks without `x-zitadel-orgid`.
    pub org_id: Option<String>,
}

impl Scoped {
    /// The target to send the call to.
    pub fn target(&self) -> Target<'_> {
        Target {
            user_id: &self.user_id,
            org_id: self.org_id.as_deref(),
        }
    }
}

impl Zitadel {
    /// The management API in use (for `auto`, asks ZITADEL once which it serves).
    pub async fn management_api(&self) -> Result<ManagementApi, UpstreamError> {
        self.selector.current(self).await
    }

    /// The organisation a management call on `target` acts in, so the policy decides on exactly that: with v1,
    /// the one the request names (ZITADEL refuses users outside it) or none (the service user's own); with
    /// v2, which takes no organisation, the user's real one as ZITADEL says. A named organisation that is not
    /// the user's is [`UpstreamError::NotInOrganization`], before anything is written.
    pub async fn scope(&self, target: Target<'_>) -> Result<Scoped, UpstreamError> {
        let org_id = match self.management_api().await? {
            ManagementApi::V1 => target.org_id.map(str::to_owned),
            ManagementApi::V2 => return self.locate(target).await,
        };
        Ok(Scoped {
            user_id: target.user_id.to_owned(),
            org_id,
        })
    }

    /// The user in the organisation they really belong to, as ZITADEL says (v2 `GetUserByID`, whichever API
    /// manages metadata): for decisions nothing sent to ZITADEL later would scope by organisation, such as a
    /// stream of a user's changes. A named organisation that is not the user's is
    /// [`UpstreamError::NotInOrganization`].
    pub async fn locate(&self, target: Target<'_>) -> Result<Scoped, UpstreamError> {
        let actual = self.user_organization(target.user_id).await?;
        if let Some(named) = target.org_id
            && named != actual
        {
            return Err(UpstreamError::NotInOrganization {
                user_id: target.user_id.to_owned(),
                org_id: named.to_owned(),
            });
        }
        Ok(Scoped {
            user_id: target.user_id.to_owned(),
            org_id: Some(actual),
        })
    }

    /// Sends a management request with the service credential. An OAuth token ZITADEL rejects with 401
    /// (expired early, revoked) is refreshed once and the call retried once; a PAT has nothing to refresh.
    pub(crate) async fn send_management_raw(
        &self,
        endpoint: Endpoint,
        request: reqwest::RequestBuilder,
    ) -> crate::Sent {
        let authorization = match self.service_token.authorization().await {
            Ok(authorization) => authorization,
            Err(error) => {
                return crate::Sent {
                    result: Err(error),
                    may_have_landed: false,
                };
            }
        };
        let retry = request
            .try_clone()
            .filter(|_| self.service_token.can_refresh());
        let first = request.header(http::header::AUTHORIZATION, authorization.clone());
        let sent = self.send_retrying(endpoint, first).await;
        match (&sent.result, retry) {
            (
                Err(UpstreamError::Rejected {
                    http_status: 401, ..
                }),
                Some(retry),
            ) => {
                self.service_token.invalidate(&authorization);
                match self.service_token.authorization().await {
                    Ok(authorization) => {
                        let mut again = self
                            .send_retrying(
                                endpoint,
                                retry.header(http::header::AUTHORIZATION, authorization),
                            )
                            .await;
                        again.may_have_landed |= sent.may_have_landed;
                        again
                    }
                    Err(error) => crate::Sent {
                        result: Err(error),
                        may_have_landed: sent.may_have_landed,
                    },
                }
            }
            _ => sent,
        }
    }

    /// The user's organisation (v2 `GetUserByID`), remembered for [`USER_ORG_TTL`].
    async fn user_organization(&self, user_id: &str) -> Result<String, UpstreamError> {
        if let Some((org, at)) = self.user_orgs.get(user_id)
            && at.elapsed() < USER_ORG_TTL
        {
            return Ok(org);
        }
        let org = self.v2_user_organization(user_id).await?;
        self.user_orgs
            .insert(user_id.to_owned(), (org.clone(), Instant::now()));
        Ok(org)
    }

    /// Runs `call` on the management API in use; when its answer says that API is not served (under `auto`),
    /// once more on the one chosen then.
    async fn on_management_api<T, F, Fut>(&self, call: F) -> Result<T, UpstreamError>
    where
        F: Fn(ManagementApi) -> Fut,
        Fut: Future<Output = Result<T, UpstreamError>>,
    {
        let mut switched = false;
        loop {
            let api = self.management_api().await?;
            let result = call(api).await;
            if switched || !self.selector.switched_after(self, api, &result) {
                return result;
            }
            switched = true;
        }
    }

    /// Users who may hold exactly `value` under `key` ([`FoundUsers::users`] says what to check), optionally
    /// only in `org_id`: v2 `ListUsers` with its metadata filters (ZITADEL 4.1+). The v1 API has no such
    /// search, and usermeta never scans every user instead.
    pub async fn find_users_by_metadata(
        &self,
        key: &str,
        value: &[u8],
        org_id: Option<&str>,
        page: PageRequest,
    ) -> Result<FoundUsers, UpstreamError> {
        match self.management_api().await? {
            ManagementApi::V1 => Err(UpstreamError::NotSupported {
                endpoint: Endpoint::UserV2ListUsers,
                what: "finding users by metadata",
                needs: "the v2 user service of ZITADEL 4.1 or later",
            }),
            ManagementApi::V2 => self.v2_find_users(key, value, org_id, page).await,
        }
    }

    /// One page of the users holding a key `filter` matches (every user without one), with their
    /// organisations: what `usermeta reseal` walks. Needs the v2 user service (ZITADEL 4.1 or later).
    pub async fn users_with_key(
        &self,
        filter: Option<&KeyFilter>,
        page: PageRequest,
    ) -> Result<FoundUsers, UpstreamError> {
        match self.management_api().await? {
            ManagementApi::V1 => Err(UpstreamError::NotSupported {
                endpoint: Endpoint::UserV2ListUsers,
                what: "listing the users that hold a metadata key",
                needs: "the v2 user service of ZITADEL 4.1 or later",
            }),
            ManagementApi::V2 => self.v2_users_with_key(filter, page).await,
        }
    }

    /// One page of a user's metadata, ascending (v1 by key, v2 by creation date).
    pub async fn list_user_metadata(
        &self,
        target: Target<'_>,
        filter: Option<&KeyFilter>,
        page: PageRequest,
    ) -> Result<Page, UpstreamError> {
        self.on_management_api(|api| async move {
            match api {
                ManagementApi::V1 => self.v1_list_user_metadata(target, filter, page).await,
                ManagementApi::V2 => self.v2_list_user_metadata(target, filter, page).await,
            }
        })
        .await
    }

    /// Adds or overwrites entries; one call, all or nothing. Returns ZITADEL's change date.
    pub async fn set_user_metadata(
        &self,
        target: Target<'_>,
        entries: &[(String, Vec<u8>)],
    ) -> Result<Option<Timestamp>, UpstreamError> {
        self.on_management_api(|api| async move {
            match api {
                ManagementApi::V1 => self.v1_set_user_metadata(target, entries).await,
                ManagementApi::V2 => self.v2_set_user_metadata(target, entries).await,
            }
        })
        .await
    }

    /// Removes keys; one call, all or nothing: when any key is missing nothing is removed and the error says
    /// so ([`UpstreamError::is_missing_metadata`]).
    pub async fn remove_user_metadata(
        &self,
        target: Target<'_>,
        keys: &[String],
    ) -> Result<Option<Timestamp>, UpstreamError> {
        self.on_management_api(|api| async move {
            match api {
                ManagementApi::V1 => self.v1_remove_user_metadata(target, keys).await,
                ManagementApi::V2 => self.v2_remove_user_metadata(target, keys).await,
            }
        })
        .await
    }
}
