//! FindUsersByMetadata: the users holding a value, as far as the policy lets the caller find them, a page at
//! a time.

use futures::StreamExt as _;
use tracing::instrument;

use crate::{
    api::{
        ApiError, MetadataService,
        error::Violations,
        page_token::{self, Offsets, Position},
        pb,
        service::Call,
        validate,
    },
    policy::{Action, FindScope, Subject},
};
use usermeta_zitadel::{
    UpstreamError,
    management::{Target, UserRef},
    metadata::PageRequest,
};

impl MetadataService {
    /// Whether `user`'s `key` holds exactly `value`, by the user's listing in their organisation.
    async fn holds(&self, user: &UserRef, key: &str, value: &[u8]) -> Result<bool, UpstreamError> {
        let listing = self
            .listings
            .listing(
                &self.zitadel,
                Target {
                    user_id: &user.user_id,
                    org_id: Some(&user.org_id),
                },
            )
            .await?;
        Ok(listing
            .iter()
            .any(|item| item.key == key && item.value.as_deref() == Some(value)))
    }

    #[instrument(name = "FindUsersByMetadata", skip_all, fields(caller))]
    pub(in crate::api) async fn find(
        &self,
        Call { token, request, .. }: Call<validate::Find>,
    ) -> Result<pb::FindUsersByMetadataResponse, ApiError> {
        let caller = self.identify(&token).await?;
        tracing::Span::current().record("caller", caller.sub.as_str());
        // Who holds a value is asked only of callers some rule lets find on this key (anyone but themself).
        self.policy.authorize_in_any_organization(
            &caller,
            Subject {
                user_id: "",
                org_id: request.org_id.as_deref(),
            },
            Action::Find,
            [request.key.as_str()],
        )?;
        // Equal values seal to different ciphertexts: ZITADEL cannot match a sealed key's value.
        if self.policy.is_sealed(&request.key) {
            return Err(ApiError::KeySealed { key: request.key });
        }
        // ZITADEL is asked only within the organisations the caller's rules cover, so nothing it answers
        // (matches, counts) concerns users the caller may not find (issue 31, class 7).
        let scope = self.policy.find_scope(&caller, &request.key)?;
        let org_id = match (request.org_id.as_deref(), scope) {
            (Some(named), _) => Some(named.to_owned()),
            (None, FindScope::AnyOrganization) => None,
            (None, FindScope::Organizations(orgs)) => match <[String; 1]>::try_from(orgs) {
                Ok([only]) => Some(only),
                Err(orgs) => {
                    return Err(ApiError::InvalidRequest(Violations::one(
                        "organization_id",
                        format!(
                            "must name the organisation to search: the policy lets this caller find by `{}` only in organisations {}; send one of them",
                            request.key,
                            orgs.join(", ")
                        ),
                    )));
                }
            },
        };
        // A page holds the next `limit` users the caller may see; one more seen means a next page, which
        // starts at that user's place in ZITADEL's answer. Pages neither run short nor come out empty for
        // users the caller may not see, and the place is sealed in the token.
        let limit = request.page.limit as usize;
        let mut users = Vec::with_capacity(limit);
        let mut next = None;
        let mut offset = request.page.offset;
        'search: loop {
            let wanted = u32::try_from(limit + 1 - users.len()).unwrap_or(u32::MAX);
            let found = self
                .zitadel
                .find_users_by_metadata(
                    &request.key,
                    &request.value,
                    org_id.as_deref(),
                    PageRequest {
                        offset,
                        limit: wanted,
                    },
                )
                .await?;
            // Each user found passes the policy for that user and organisation, or is left out; then ZITADEL's
            // candidate must hold exactly the value under the key (it matches key and value each on its own),
            // as its listing says (from memory while fresh).
            let visible: Vec<UserRef> = found
                .users
                .into_iter()
                .filter(|user| {
                    self.policy
                        .authorize(
                            &caller,
                            Subject {
                                user_id: &user.user_id,
                                org_id: Some(&user.org_id),
                            },
                            Action::Find,
                            [request.key.as_str()],
                        )
                        .is_ok()
                })
                .collect();
            // By index: a closure over `&UserRef` would make the stream's future not provably `Send`.
            let checks =
                (0..visible.len()).map(|i| self.holds(&visible[i], &request.key, &request.value));
            let held: Vec<Result<bool, UpstreamError>> = futures::stream::iter(checks)
                .buffered(self.batch_concurrency)
                .collect()
                .await;
            for (user, held) in visible.into_iter().zip(held) {
                if !held? {
                    continue;
                }
                if users.len() == limit {
                    next = Some(user.position);
                    break 'search;
                }
                users.push(pb::UserRef {
                    user_id: user.user_id,
                    organization_id: user.org_id,
                });
            }
            offset += found.fetched;
            if found.fetched == 0 || offset >= found.total {
                break;
            }
        }
        let next_page_token = next.map_or_else(String::new, |offset| {
            page_token::encode(
                &self.page_tokens,
                Position {
                    offset,
                    offsets: Offsets::Zitadel,
                },
                request.token_query(),
            )
        });
        Ok(pb::FindUsersByMetadataResponse {
            users,
            next_page_token,
        })
    }
}
