//! BatchGetMetadata: several users' metadata in one call, each user's read on its own (a failure is that
//! user's result), a bounded number at once.

use futures::StreamExt as _;
use tracing::instrument;

use super::{
    answer_items, exact_key_filter, read_all, subject_of, target_of, unknown_user_not_found,
};
use crate::{
    api::{ApiError, MetadataService, error as api_error, pb, service::Call, validate},
    caller::Identity,
    policy::Action,
};
use usermeta_zitadel::{CallerToken, management::Target, metadata::MetadataItem};

impl MetadataService {
    #[instrument(name = "BatchGetMetadata", skip_all, fields(caller, users))]
    pub(in crate::api) async fn batch(
        &self,
        Call { token, request, .. }: Call<validate::BatchGet>,
    ) -> Result<pb::BatchGetMetadataResponse, ApiError> {
        let caller = self.identify(&token).await?;
        let span = tracing::Span::current();
        span.record("caller", caller.sub.as_str());
        span.record("users", request.user_ids.len());
        // Users are read side by side, a bounded number at once, and answered in request order.
        // By index: a closure over `&String` would make the stream's future not provably `Send`.
        let reads = (0..request.user_ids.len())
            .map(|i| self.read_of_batch(&token, &caller, &request.user_ids[i], &request));
        let reads: Vec<Result<Vec<pb::Metadata>, ApiError>> = futures::stream::iter(reads)
            .buffered(self.batch_concurrency)
            .collect()
            .await;
        let mut results = Vec::with_capacity(reads.len());
        for (user_id, read) in request.user_ids.into_iter().zip(reads) {
            let (metadata, error) = match read {
                Ok(metadata) => (metadata, None),
                Err(error) => {
                    let status = api_error::status_message(&error);
                    // The deadline is the whole call's (whichever read met it): the other results go too.
                    if status.code == tonic::Code::DeadlineExceeded as i32 {
                        return Err(error);
                    }
                    tracing::info!(user_id, code = status.code, error = %error, "batch result failed");
                    (Vec::new(), Some(status))
                }
            };
            results.push(pb::UserMetadataResult {
                user_id,
                metadata,
                error,
            });
        }
        crate::metrics::batch_results(results.iter().map(|result| {
            result
                .error
                .as_ref()
                .map_or(tonic::Code::Ok, |status| tonic::Code::from_i32(status.code))
        }));
        Ok(pb::BatchGetMetadataResponse { results })
    }

    /// One user of a BatchGetMetadata call: what the policy lets the caller read of the keys asked for, sorted
    /// by key. The caller's own id reads with the caller's token (the auth API), as ListMetadata does; any
    /// other user with the service credential, scoped to the organisation ZITADEL acts in.
    async fn read_of_batch(
        &self,
        token: &CallerToken,
        caller: &Identity,
        user_id: &str,
        request: &validate::BatchGet,
    ) -> Result<Vec<pb::Metadata>, ApiError> {
        let org_id = request.org_id.as_deref();
        // The caller's own id reads with the caller's token; any other user is placed where ZITADEL acts.
        let own = user_id == caller.sub;
        let scoped;
        let target = if own {
            target_of(caller, None, org_id)?
        } else {
            let named = Target { user_id, org_id };
            self.policy
                .read_in_any_organization(caller, subject_of(named))?;
            let keys: Vec<&str> = request.keys.iter().map(String::as_str).collect();
            scoped = self.zitadel.scope(named).await.map_err(|e| {
                let missing = unknown_user_not_found(e, user_id);
                self.conceal_missing_user(caller, user_id, Action::Read, &keys, missing)
            })?;
            scoped.target()
        };
        let scope = self.policy.read_scope(caller, subject_of(target))?;
        for key in &request.keys {
            scope.require(key)?;
        }
        let wanted = |item: &MetadataItem| {
            scope.allows(&item.key) && (request.keys.is_empty() || request.keys.contains(&item.key))
        };
        let mut items: Vec<MetadataItem> = if own {
            let filter = exact_key_filter(&request.keys);
            let mut items =
                read_all(|page| self.zitadel.list_my_metadata(token, filter.as_ref(), page))
                    .await?;
            items.retain(wanted);
            items
        } else {
            // Another user's whole listing, from memory while fresh; the keys asked for are picked here.
            let listing = self.listings.listing(&self.zitadel, target).await?;
            listing
                .iter()
                .filter(|item| wanted(item))
                .cloned()
                .collect()
        };
        items.sort_by(|a, b| a.key.cmp(&b.key));
        answer_items(&self.policy, target.user_id, items, |key| {
            request.keys.iter().any(|named| named == key)
        })
    }
}
