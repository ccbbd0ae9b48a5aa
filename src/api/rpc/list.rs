//! ListMetadata: a user's metadata, a page at a time, as far as the policy lets the caller read it.

use tracing::instrument;

use super::{
    answer_items, next_token, offsets_for, subject_of, unknown_user_not_found, visible_page,
};
use crate::{
    api::{ApiError, MetadataService, error::Violations, pb, service::Call, validate},
    caller,
    policy::{Action, Subject},
};
use usermeta_zitadel::{
    budget::for_identified_caller,
    management::{Scoped, Target},
    metadata::{KeyFilter, KeyMatch, MetadataItem, PageRequest},
};

/// The page `page` asks for of `items` (all the caller may see): the items, their total and where the next
/// page starts.
fn page_of(
    mut items: Vec<MetadataItem>,
    page: PageRequest,
) -> (Vec<MetadataItem>, u64, Option<u64>) {
    let total = items.len() as u64;
    let start = usize::try_from(page.offset.min(total)).unwrap_or(usize::MAX);
    let end = start.saturating_add(page.limit as usize).min(items.len());
    items.truncate(end);
    items.drain(..start);
    (items, total, (end > start).then_some(end as u64))
}

impl MetadataService {
    #[instrument(name = "ListMetadata", skip_all, fields(user_id, org_id))]
    pub(in crate::api) async fn list(
        &self,
        Call { token, request, .. }: Call<validate::List>,
    ) -> Result<pb::ListMetadataResponse, ApiError> {
        let filter = request.filter.as_ref();
        // An own listing reads with the caller's token, so ZITADEL decides whose it is; while every caller may
        // read their own keys, it needs no identity lookup.
        // Whose values these are (the owner sealed values are bound to): for an own listing without identity
        // lookup, known only from the first answer that names nobody; then the caller is identified if sealed
        // values turn up (below).
        let (scope, other, identified, owner) =
            match (request.user_id.as_deref(), self.policy.own_scope()) {
                (None, Some(own)) => {
                    caller::refuse_id_token(&token)?;
                    (own, None, self.cache.knows(&token), None)
                }
                (user_id, _) => {
                    let caller = self.identify(&token).await?;
                    // Self is the caller ZITADEL names; a `user_id` equal to it changes nothing. Another user is
                    // scoped to the organisation ZITADEL will act in, which is what the policy decides on.
                    let other = match user_id.filter(|user_id| *user_id != caller.sub) {
                        Some(user_id) => {
                            let named = Target {
                                user_id,
                                org_id: request.org_id.as_deref(),
                            };
                            // Refused without asking ZITADEL anything when no organisation could change that.
                            self.policy
                                .read_in_any_organization(&caller, subject_of(named))?;
                            let exact: Vec<&str> = match filter {
                                Some(KeyFilter {
                                    key,
                                    matching: KeyMatch::Equals,
                                }) => vec![key.as_str()],
                                _ => Vec::new(),
                            };
                            Some(self.zitadel.scope(named).await.map_err(|e| {
                                let missing = unknown_user_not_found(e, user_id);
                                self.conceal_missing_user(
                                    &caller,
                                    user_id,
                                    Action::Read,
                                    &exact,
                                    missing,
                                )
                            })?)
                        }
                        None => None,
                    };
                    let subject = match &other {
                        None => Subject {
                            user_id: &caller.sub,
                            org_id: caller.org_id.as_deref(),
                        },
                        Some(scoped) => subject_of(scoped.target()),
                    };
                    tracing::Span::current().record("user_id", subject.user_id);
                    let owner = subject.user_id.to_owned();
                    (
                        self.policy.read_scope(&caller, subject)?,
                        other,
                        true,
                        Some(owner),
                    )
                }
            };
        if let Some(KeyFilter {
            key,
            matching: KeyMatch::Equals,
        }) = filter
        {
            scope.require(key)?;
        }
        // Counts and page tokens account only for what the caller may see.
        let offsets = offsets_for(&scope);
        if request.resumed.is_some_and(|resumed| resumed != offsets) {
            return Err(ApiError::InvalidRequest(Violations::one(
                "page_token",
                "was issued while the policy let the caller see other keys of this user; drop page_token to start the listing over",
            )));
        }
        let target = other.as_ref().map(Scoped::target);
        let token = &token;
        let fetch = |page: PageRequest| {
            let fetch = self.zitadel.list_my_metadata(token, filter, page);
            // Ranked for the request budget: an identified caller's read, or a token not known yet.
            async move {
                if identified {
                    for_identified_caller(fetch).await
                } else {
                    fetch.await
                }
            }
        };
        let (items, total, next_offset) = match target {
            // Another user: ZITADEL's whole listing, from memory while fresh, filtered and paged here as
            // ZITADEL would (the same order, the same offsets).
            Some(target) => {
                let listing =
                    for_identified_caller(self.listings.listing(&self.zitadel, target)).await?;
                let items = listing
                    .iter()
                    .filter(|item| filter.is_none_or(|filter| filter.matches(&item.key)))
                    .filter(|item| scope.allows(&item.key))
                    .cloned()
                    .collect();
                page_of(items, request.page)
            }
            None => visible_page(&scope, offsets, request.page, fetch).await?,
        };
        let next_page_token = next_token(
            &self.page_tokens,
            next_offset,
            total,
            offsets,
            request.token_query(),
        );
        let metadata = if items.iter().any(|item| self.policy.is_sealed(&item.key)) {
            // The owner of an own listing is whoever ZITADEL says owns the token (cached, usually).
            let owner = match owner {
                Some(owner) => owner,
                None => self.identify(token).await?.sub.as_str().to_owned(),
            };
            let named = |key: &str| matches!(filter, Some(KeyFilter { key: named, matching: KeyMatch::Equals }) if named == key);
            answer_items(&self.policy, &owner, items, named)?
        } else {
            items.into_iter().map(Into::into).collect()
        };
        Ok(pb::ListMetadataResponse {
            total_size: i64::try_from(total).unwrap_or(i64::MAX),
            metadata,
            next_page_token,
        })
    }
}
