//! ListOrganizationMetadata, SetOrganizationMetadata and DeleteOrganizationMetadata: an organisation's own
//! metadata, under the policy's organisation rules. The organisation is the one the request names, or the
//! caller's own as ZITADEL reports it for the token (never taken from anything else the caller sends); the
//! policy decides on exactly that id, and exactly that id is what ZITADEL receives.

use std::{collections::HashSet, future::Future, sync::Arc};

use tracing::instrument;

use super::{next_token, offsets_for, read_all, visible_page};
use crate::{
    api::{
        ApiError, MetadataService, error::Violations, page_token::Offsets, pb, service::Call,
        validate,
    },
    caller::Identity,
    policy::{Action, Resource},
    tls,
};
use usermeta_zitadel::{
    budget::for_identified_caller,
    metadata::{KeyFilter, KeyMatch, MetadataItem, Page, PageRequest},
};

/// The organisation a request addresses: the one it names, or the caller's own as ZITADEL says.
fn organization_of(caller: &Identity, named: Option<&str>) -> Result<String, ApiError> {
    match (named, caller.org_id.as_deref()) {
        (Some(named), _) => Ok(named.to_owned()),
        (None, Some(own)) => Ok(own.to_owned()),
        (None, None) => Err(ApiError::CallerOrganizationUnknown),
    }
}

impl MetadataService {
    #[instrument(name = "ListOrganizationMetadata", skip_all, fields(caller, org_id))]
    pub(in crate::api) async fn list_organization(
        &self,
        Call { token, request, .. }: Call<validate::OrgList>,
    ) -> Result<pb::ListOrganizationMetadataResponse, ApiError> {
        let caller = self.identify(&token).await?;
        let org_id = organization_of(&caller, request.org_id.as_deref())?;
        let span = tracing::Span::current();
        span.record("caller", caller.sub.as_str());
        span.record("org_id", org_id.as_str());
        let scope = self.policy.org_read_scope(&caller, &org_id)?;
        let filter = request.filter.as_ref();
        if let Some(KeyFilter {
            key,
            matching: KeyMatch::Equals,
        }) = filter
        {
            scope.require(key)?;
        }
        // From memory, the whole listing is at hand and usermeta pages what the caller may see; without the
        // cache ZITADEL pages when the caller may see every key.
        let org_cache = self.changes.org_cache();
        let offsets = if org_cache.enabled() {
            Offsets::Visible
        } else {
            offsets_for(&scope)
        };
        if request.resumed.is_some_and(|resumed| resumed != offsets) {
            return Err(ApiError::InvalidRequest(Violations::one(
                "page_token",
                "was issued while the policy let the caller see other keys of this organisation; drop page_token to start the listing over",
            )));
        }
        let (items, total, next_offset) = if org_cache.enabled() {
            let zitadel = Arc::clone(&self.zitadel);
            let owned = org_id.clone();
            let read =
                async move { for_identified_caller(zitadel.list_all_org_metadata(&owned)).await };
            let all = org_cache.load(&org_id, read).await?;
            let matching: Vec<MetadataItem> = all
                .iter()
                .filter(|item| filter.is_none_or(|filter| filter.matches(&item.key)))
                .cloned()
                .collect();
            let fetch = |_| {
                std::future::ready(Ok(Page {
                    total: matching.len() as u64,
                    items: matching.clone(),
                }))
            };
            visible_page(&scope, offsets, request.page, fetch).await?
        } else {
            let org = org_id.as_str();
            let fetch = |page: PageRequest| {
                for_identified_caller(self.zitadel.list_org_metadata(org, filter, page))
            };
            visible_page(&scope, offsets, request.page, fetch).await?
        };
        Ok(pb::ListOrganizationMetadataResponse {
            next_page_token: next_token(
                &self.page_tokens,
                next_offset,
                total,
                offsets,
                request.token_query(),
            ),
            organization_id: org_id,
            total_size: i64::try_from(total).unwrap_or(i64::MAX),
            metadata: items.into_iter().map(Into::into).collect(),
        })
    }

    #[instrument(name = "SetOrganizationMetadata", skip_all, fields(caller, org_id))]
    pub(in crate::api) async fn set_organization(
        &self,
        Call {
            token,
            request,
            extensions,
            ..
        }: Call<validate::OrgSet>,
    ) -> Result<pb::SetOrganizationMetadataResponse, ApiError> {
        let caller = &self
            .identify(&token)
            .await?
            .with_client_cert(tls::client_cert(&extensions));
        let org_id = &organization_of(caller, request.org_id.as_deref())?;
        let keys: Vec<&str> = request
            .entries
            .iter()
            .map(|(key, _)| key.as_str())
            .collect();
        let update_time = audited(caller, org_id, Action::Write, &keys, async {
            self.policy.authorize_organization(
                caller,
                org_id,
                Action::Write,
                keys.iter().copied(),
            )?;
            let mut violations = Violations::default();
            for (i, (key, value)) in request.entries.iter().enumerate() {
                for problem in self
                    .policy
                    .value_problems_in(Resource::Organization, key, value)
                {
                    violations.add(format!("entries[{i}].value"), problem);
                }
            }
            violations.into_result(())?;
            let _stale = self.org_changed_on_drop(org_id);
            Ok(self
                .zitadel
                .set_org_metadata(org_id, &request.entries)
                .await?)
        })
        .await?;
        Ok(pb::SetOrganizationMetadataResponse { update_time })
    }

    #[instrument(name = "DeleteOrganizationMetadata", skip_all, fields(caller, org_id))]
    pub(in crate::api) async fn delete_organization(
        &self,
        Call {
            token,
            request,
            extensions,
            ..
        }: Call<validate::OrgDelete>,
    ) -> Result<pb::DeleteOrganizationMetadataResponse, ApiError> {
        let caller = &self
            .identify(&token)
            .await?
            .with_client_cert(tls::client_cert(&extensions));
        let org_id = &organization_of(caller, request.org_id.as_deref())?;
        let keys: Vec<&str> = request.keys.iter().map(String::as_str).collect();
        let update_time = audited(caller, org_id, Action::Delete, &keys, async {
            self.policy.authorize_organization(
                caller,
                org_id,
                Action::Delete,
                keys.iter().copied(),
            )?;
            let _stale = self.org_changed_on_drop(org_id);
            self.delete_org_keys(org_id, &request.keys, request.allow_missing)
                .await
        })
        .await?;
        Ok(pb::DeleteOrganizationMetadataResponse { update_time })
    }

    /// Removes `keys` all or nothing; with `allow_missing`, removes those that exist.
    async fn delete_org_keys(
        &self,
        org_id: &str,
        keys: &[String],
        allow_missing: bool,
    ) -> Result<Option<prost_types::Timestamp>, ApiError> {
        let missing = || ApiError::OrganizationKeysNotFound {
            org_id: org_id.to_owned(),
            keys: keys.to_vec(),
        };
        let mut to_remove = keys.to_vec();
        // A key can vanish between listing and removing (a concurrent delete); a few rounds settle it.
        for _ in 0..3 {
            match self.zitadel.remove_org_metadata(org_id, &to_remove).await {
                Ok(update_time) => return Ok(update_time),
                Err(e) if !e.is_missing_metadata() => return Err(e.into()),
                Err(_) if !allow_missing => return Err(missing()),
                Err(_) if to_remove.len() == 1 => return Ok(None),
                Err(_) => {
                    let existing: HashSet<String> =
                        read_all(|page| self.zitadel.list_org_metadata(org_id, None, page))
                            .await?
                            .into_iter()
                            .map(|item| item.key)
                            .collect();
                    to_remove.retain(|key| existing.contains(key));
                    if to_remove.is_empty() {
                        return Ok(None);
                    }
                }
            }
        }
        Err(missing())
    }

    /// Marks what this replica (and, through the bus, the others) remembers of an organisation's metadata stale
    /// when a write ends, however it ends: it may have landed even when cut off.
    fn org_changed_on_drop<'a>(&'a self, org_id: &'a str) -> OrgChangedOnDrop<'a> {
        OrgChangedOnDrop {
            service: self,
            org_id,
        }
    }
}

/// See [`MetadataService::org_changed_on_drop`].
struct OrgChangedOnDrop<'a> {
    service: &'a MetadataService,
    org_id: &'a str,
}

impl Drop for OrgChangedOnDrop<'_> {
    fn drop(&mut self) {
        self.service.changes.organization_changed(self.org_id);
    }
}

/// Runs an organisation write or delete and writes its audit line: who (user and client), which organisation,
/// which keys (never values), and how it ended.
async fn audited<T>(
    caller: &Identity,
    org_id: &str,
    action: Action,
    keys: &[&str],
    operation: impl Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    let span = tracing::Span::current();
    span.record("caller", caller.sub.as_str());
    span.record("org_id", org_id);
    let result = operation.await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(ApiError::Denied(_)) => "denied",
        Err(ApiError::InvalidRequest(_)) => "invalid",
        Err(_) => "failed",
    };
    tracing::info!(
        target: "usermeta::audit",
        caller = %caller.sub,
        client_id = caller.client_id.as_deref().unwrap_or_default(),
        client_cert = caller.client_cert.as_ref().map(ToString::to_string),
        resource = "organization",
        org_id,
        action = action.name(),
        keys = ?keys,
        outcome,
        "organisation metadata {}", action.name()
    );
    result
}
