//! GetMyMetadata: the caller's own metadata, answered from memory (the cached userinfo answer) whenever it can
//! be, so a cached call neither waits, nor counts against the in-flight limits, nor sets up a deadline timer.

use std::{collections::HashSet, ops::ControlFlow, time::Instant};

use tonic::Request;

use super::{answer_items, exact_key_filter, read_all, reveal_value};
use crate::{
    api::{
        ApiError, MetadataService,
        convert::value_to_pb,
        pb,
        service::Call,
        validate::{self, Source},
    },
    caller::{self, Identity},
    policy::Subject,
};
use usermeta_zitadel::{
    CallerToken,
    budget::for_identified_caller,
    metadata::{MetadataItem, PackedMetadata},
};

impl MetadataService {
    /// GetMyMetadata as far as it goes without waiting: a caller whose userinfo answer is in memory is
    /// answered here (`Break`); any other goes on to [`MetadataService::read_mine`] with its token, request
    /// and deadline.
    pub(in crate::api) fn mine_from_memory(
        &self,
        request: Request<pb::GetMyMetadataRequest>,
    ) -> Result<
        ControlFlow<pb::GetMyMetadataResponse, (CallerToken, validate::GetMine, Instant)>,
        ApiError,
    > {
        let Call {
            token,
            request,
            metadata,
            ..
        } = self.admit(request, validate::get_mine)?;
        tracing::Span::current().record("source", tracing::field::debug(request.source));
        if request.source == Source::Userinfo
            && self.resolver.uses_userinfo()
            && let Some(known) = self.cache.cached_userinfo(&token)
        {
            let known = known?;
            return Ok(ControlFlow::Break(self.answer_mine(
                &known.identity,
                OwnRead::Userinfo(&known.metadata),
                &request,
            )?));
        }
        // Only a call that waits has a use for its deadline.
        let deadline = self.admission.deadline(&metadata);
        Ok(ControlFlow::Continue((token, request, deadline)))
    }

    /// GetMyMetadata for a caller not answered from memory. "Me" is whoever ZITADEL says owns the token; the
    /// metadata is read with that same token.
    pub(in crate::api) async fn read_mine(
        &self,
        token: CallerToken,
        request: validate::GetMine,
    ) -> Result<pb::GetMyMetadataResponse, ApiError> {
        match request.source {
            // Not in memory (`mine_from_memory` looked).
            Source::Userinfo if self.resolver.uses_userinfo() => {
                let known = self.cache.fetch_userinfo(&self.zitadel, &token).await?;
                self.answer_mine(
                    &known.identity,
                    OwnRead::Userinfo(&known.metadata),
                    &request,
                )
            }
            // The identity first (cached, and local for JWTs): a refused token reaches no other endpoint.
            Source::Userinfo => {
                let caller = self.identify(&token).await?;
                let known =
                    for_identified_caller(self.cache.userinfo(&self.zitadel, &token)).await?;
                self.answer_mine(&caller, OwnRead::Userinfo(&known.metadata), &request)
            }
            Source::Token => match self.resolver.token_metadata(&self.zitadel, &token).await? {
                None => Err(ApiError::TokenSourceOff),
                Some(caller::TokenRead::NotJwt) => Err(ApiError::TokenNotJwt),
                Some(caller::TokenRead::Claims { identity, metadata }) => {
                    self.answer_mine(&identity, OwnRead::AuthApi(metadata), &request)
                }
            },
            Source::AuthApi => {
                let filter = exact_key_filter(&request.keys);
                let read = async {
                    read_all(|page| self.zitadel.list_my_metadata(&token, filter.as_ref(), page))
                        .await
                        .map_err(ApiError::from)
                };
                let (caller, items) = if self.resolver.uses_userinfo() {
                    // Both ask ZITADEL with the caller's token anyway: side by side, as before. The read is
                    // an identified caller's when the identity comes from memory.
                    let read = self.as_known(&token, read);
                    tokio::try_join!(self.identify(&token), read)?
                } else {
                    let caller = self.identify(&token).await?;
                    (caller, for_identified_caller(read).await?)
                };
                self.answer_mine(&caller, OwnRead::AuthApi(items), &request)
            }
        }
    }

    /// The answer to GetMyMetadata: what the policy lets the caller read of what was read, sorted by key.
    fn answer_mine(
        &self,
        caller: &Identity,
        read: OwnRead<'_>,
        request: &validate::GetMine,
    ) -> Result<pb::GetMyMetadataResponse, ApiError> {
        tracing::Span::current().record("user_id", caller.sub.as_str());
        let me = Subject {
            user_id: &caller.sub,
            org_id: caller.org_id.as_deref(),
        };
        let scope = self.policy.read_scope(caller, me)?;
        for key in &request.keys {
            scope.require(key)?;
        }
        let wanted: Option<HashSet<&str>> =
            (!request.keys.is_empty()).then(|| request.keys.iter().map(String::as_str).collect());
        let answered = |key: &str| {
            wanted.as_ref().is_none_or(|wanted| wanted.contains(key)) && scope.allows(key)
        };
        let named = |key: &str| wanted.as_ref().is_some_and(|wanted| wanted.contains(key));
        let metadata = match read {
            // Already sorted by key: answered straight from the cached answer, no copy in between.
            // Etags too: computed when the answer was cached.
            OwnRead::Userinfo(packed) => packed
                .entries()
                .filter(|(key, _, _)| answered(key))
                .map(|(key, value, etag)| {
                    // The etag is of what ZITADEL stores (as from every read path); the value is opened.
                    let value = if self.policy.is_sealed(key) {
                        reveal_value(&self.policy, me.user_id, key, value, named(key))?
                    } else {
                        value.map(<[u8]>::to_vec)
                    };
                    Ok(pb::Metadata {
                        key: key.to_owned(),
                        value: value.map(value_to_pb),
                        create_time: None,
                        update_time: None,
                        etag: etag.unwrap_or_default().to_owned(),
                    })
                })
                .collect::<Result<_, ApiError>>()?,
            OwnRead::AuthApi(mut items) => {
                items.retain(|item| answered(&item.key));
                items.sort_by(|a, b| a.key.cmp(&b.key));
                answer_items(&self.policy, me.user_id, items, named)?
            }
        };
        Ok(pb::GetMyMetadataResponse {
            user_id: caller.sub.as_str().to_owned(),
            metadata,
        })
    }
}

/// The caller's metadata as read: the metadata claim of a userinfo answer, or the auth API's listing.
enum OwnRead<'a> {
    Userinfo(&'a PackedMetadata),
    AuthApi(Vec<MetadataItem>),
}
