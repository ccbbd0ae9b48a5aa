//! One file per RPC or family of RPCs, each a part of [`MetadataService`]'s `impl`; what several of them
//! share (placing a user, concealing a missing one, reading a whole listing) is here.

mod batch_get;
mod find;
mod get_my;
mod list;
mod organization;
pub(super) mod watch;
mod write;

use std::future::Future;

use super::{
    ApiError, MetadataService,
    convert::value_to_pb,
    error::Violations,
    page_token::{Offsets, Position},
    pb,
};
use crate::{
    caller::Identity,
    policy::{Action, Policy, ReadScope, Subject},
    sealing::Owner,
};
use usermeta_zitadel::{
    UpstreamError,
    etag::etag,
    management::Target,
    metadata::{KeyFilter, KeyMatch, MetadataItem, Page, PageRequest},
};

/// Page size for reading a whole listing: ZITADEL's default and usual maximum.
const FULL_LISTING_PAGE: u32 = 1000;

impl MetadataService {
    /// ZITADEL's "no such user here" (unknown, or outside the named organisation) as the refusal a user of an
    /// organisation none of the caller's rules name would get, when the caller's rules would refuse `action`
    /// on `keys` there: then the answer tells neither whether the user exists nor where (issue 31, class 11).
    /// A caller some rule lets act on users of any organisation gets ZITADEL's answer: it may act on whichever
    /// user exists, so "unknown" tells it nothing acting would not.
    pub(super) fn conceal_missing_user(
        &self,
        caller: &Identity,
        user_id: &str,
        action: Action,
        keys: &[&str],
        error: ApiError,
    ) -> ApiError {
        let missing = match &error {
            ApiError::UserNotFound { .. } => true,
            ApiError::Upstream(upstream) => upstream.is_missing_user(),
            _ => false,
        };
        if !missing {
            return error;
        }
        // No organisation: no `whose = [orgs]` rule matches it, exactly as for another tenant's user.
        let elsewhere = Subject {
            user_id,
            org_id: None,
        };
        let refusal = match action {
            Action::Read => match self.policy.read_scope(caller, elsewhere) {
                Err(denial) => Some(denial),
                Ok(scope) => keys.iter().find_map(|key| scope.require(key).err()),
            },
            _ => self
                .policy
                .authorize(caller, elsewhere, action, keys.iter().copied())
                .err(),
        };
        refusal.map_or(error, ApiError::Denied)
    }
}

/// ZITADEL's "no such user" as NOT_FOUND naming the user; any other failure as it is.
fn unknown_user_not_found(error: UpstreamError, user_id: &str) -> ApiError {
    if error.is_unknown_user() {
        ApiError::UserNotFound {
            user_id: user_id.to_owned(),
        }
    } else {
        error.into()
    }
}

/// The user a write addresses: the named one, or the caller. For the caller, ZITADEL's word on their
/// organisation (when the token carries it) scopes the call unless the request names one; a request that names
/// another organisation than the caller's for the caller's own metadata is refused, since the policy and
/// ZITADEL would otherwise see different organisations.
fn target_of<'a>(
    caller: &'a Identity,
    user_id: Option<&'a str>,
    org_id: Option<&'a str>,
) -> Result<Target<'a>, ApiError> {
    match user_id {
        Some(user_id) if user_id != caller.sub => Ok(Target { user_id, org_id }),
        _ => match (org_id, caller.org_id.as_deref()) {
            (Some(named), Some(own)) if named != own => {
                Err(ApiError::InvalidRequest(Violations::one(
                    "organization_id",
                    format!(
                        "names organisation {named}, but the caller's own metadata is in organisation {own} (as ZITADEL says); leave organization_id empty for your own metadata"
                    ),
                )))
            }
            (named, own) => Ok(Target {
                user_id: &caller.sub,
                org_id: named.or(own),
            }),
        },
    }
}

/// The policy's view of a target: exactly what ZITADEL receives, the user and the organisation the management
/// call is scoped to (for the caller themself, ZITADEL's word on their organisation unless the request named
/// it; a named organisation ZITADEL enforces by refusing users outside it).
fn subject_of(target: Target<'_>) -> Subject<'_> {
    Subject {
        user_id: target.user_id,
        org_id: target.org_id,
    }
}

/// The filter ZITADEL applies for `keys`: one exact key it can filter by; several are filtered here (its
/// queries are ANDed).
fn exact_key_filter(keys: &[String]) -> Option<KeyFilter> {
    match keys {
        [key] => Some(KeyFilter {
            key: key.clone(),
            matching: KeyMatch::Equals,
        }),
        _ => None,
    }
}

/// Reads every page of a listing.
async fn read_all<F, Fut>(mut fetch: F) -> Result<Vec<MetadataItem>, UpstreamError>
where
    F: FnMut(PageRequest) -> Fut,
    Fut: Future<Output = Result<Page, UpstreamError>>,
{
    let mut items = Vec::new();
    loop {
        let page = fetch(PageRequest {
            offset: items.len() as u64,
            limit: FULL_LISTING_PAGE,
        })
        .await?;
        let done =
            page.items.is_empty() || items.len() as u64 + page.items.len() as u64 >= page.total;
        items.extend(page.items);
        if done {
            return Ok(items);
        }
    }
}

/// A value of `user_id`'s `key` as the caller gets it from what ZITADEL stores: opened when the key is sealed.
/// A sealed value that does not open is never passed on: when the request named the key (`named`) the call
/// fails with it ([`ApiError::ValueNotSealed`]); in a listing the key is answered without a value (as a value
/// ZITADEL sent undecodable is), so one bad key does not hide the others. Either way it is counted and
/// logged once per key.
fn reveal_value(
    policy: &Policy,
    user_id: &str,
    key: &str,
    stored: Option<&[u8]>,
    named: bool,
) -> Result<Option<Vec<u8>>, ApiError> {
    let Some(stored) = stored else {
        return Ok(None);
    };
    match policy.reveal(Owner::User(user_id), key, stored) {
        Ok(value) => Ok(Some(value.into_owned())),
        Err(problem) if named => Err(ApiError::ValueNotSealed {
            user_id: user_id.to_owned(),
            key: key.to_owned(),
            problem,
        }),
        Err(_) => Ok(None),
    }
}

/// `user_id`'s listing as answered: each value of a sealed key opened ([`reveal_value`]; `named` says which keys
/// the request named), each etag of what ZITADEL stores, as from every read path.
fn answer_items(
    policy: &Policy,
    user_id: &str,
    items: Vec<MetadataItem>,
    named: impl Fn(&str) -> bool,
) -> Result<Vec<pb::Metadata>, ApiError> {
    items
        .into_iter()
        .map(|item| {
            if !policy.is_sealed(&item.key) {
                return Ok(item.into());
            }
            let etag = item
                .value
                .as_deref()
                .map(|stored| etag(&item.key, stored))
                .unwrap_or_default();
            let value = reveal_value(
                policy,
                user_id,
                &item.key,
                item.value.as_deref(),
                named(&item.key),
            )?;
            Ok(pb::Metadata {
                key: item.key,
                value: value.map(value_to_pb),
                create_time: item.create_time,
                update_time: item.update_time,
                etag,
            })
        })
        .collect()
}

/// One page of what `scope` lets the caller see, with the listing's total and the next page's offset (`None`
/// at the end). When the policy hides some keys, the whole listing is read and what is left is paged, so counts
/// and page tokens never account for keys the caller may not see; otherwise ZITADEL pages.
async fn visible_page<F, Fut>(
    scope: &ReadScope<'_>,
    offsets: Offsets,
    page: PageRequest,
    fetch: F,
) -> Result<(Vec<MetadataItem>, u64, Option<u64>), UpstreamError>
where
    F: FnMut(PageRequest) -> Fut,
    Fut: Future<Output = Result<Page, UpstreamError>>,
{
    let mut fetch = fetch;
    Ok(match offsets {
        Offsets::Zitadel => {
            let answer = fetch(page).await?;
            let fetched = answer.items.len() as u64;
            let next = page.offset + fetched;
            let mut items = answer.items;
            // Nothing to leave out when every key may be read; kept as the last line of defence.
            items.retain(|item| scope.allows(&item.key));
            (items, answer.total, (fetched > 0).then_some(next))
        }
        Offsets::Visible => {
            let mut items = read_all(fetch).await?;
            items.retain(|item| scope.allows(&item.key));
            let total = items.len() as u64;
            let start = usize::try_from(page.offset.min(total)).unwrap_or(usize::MAX);
            let end = start.saturating_add(page.limit as usize).min(items.len());
            items.truncate(end);
            items.drain(..start);
            (items, total, (end > start).then_some(end as u64))
        }
    })
}

/// What a listing's offsets count under `scope`.
fn offsets_for(scope: &ReadScope<'_>) -> Offsets {
    if scope.sees_every_key() {
        Offsets::Zitadel
    } else {
        Offsets::Visible
    }
}

/// The next page's token, or empty on the last page.
fn next_token(
    key: &super::PageTokenKey,
    next_offset: Option<u64>,
    total: u64,
    offsets: Offsets,
    query: super::page_token::Query<'_>,
) -> String {
    match next_offset {
        Some(offset) if offset < total => {
            super::page_token::encode(key, Position { offset, offsets }, query)
        }
        _ => String::new(),
    }
}
