//! SetMetadata and DeleteMetadata: one write path (admission, caller, target, policy, the audited call to
//! ZITADEL, the cache and the streams told), which differs only in what it sends.

use std::{borrow::Cow, collections::HashSet, future::Future};

use tracing::instrument;

use super::{read_all, subject_of, target_of};
use crate::{
    api::{
        ApiError, MetadataService, error::Violations, pb, service::Call, validate,
        validate::MAX_VALUE_BYTES,
    },
    caller::Identity,
    fleet::{ChangeKind, Changes, MAX_STREAMED_VALUE_BYTES, MetadataChange},
    policy::Action,
    sealing::Owner,
    tls,
};
use usermeta_zitadel::management::{Scoped, Target};

/// A key and the value to store under it.
type Entry = (String, Vec<u8>);

/// What a write changes: SetMetadata's entries, or DeleteMetadata's keys.
#[derive(Clone, Copy)]
enum Change<'a> {
    Set(&'a [(String, Vec<u8>)]),
    Delete {
        keys: &'a [String],
        allow_missing: bool,
    },
}

impl Change<'_> {
    fn action(self) -> Action {
        match self {
            Change::Set(_) => Action::Write,
            Change::Delete { .. } => Action::Delete,
        }
    }

    fn keys(&self) -> Vec<&str> {
        match self {
            Change::Set(entries) => entries.iter().map(|(key, _)| key.as_str()).collect(),
            Change::Delete { keys, .. } => keys.iter().map(String::as_str).collect(),
        }
    }
}

/// What a valid SetMetadata or DeleteMetadata request tells the write path.
trait WriteRequest {
    /// The user named (none: the caller) and the organisation named.
    fn named(&self) -> (Option<&str>, Option<&str>);
    fn change(&self) -> Change<'_>;
}

impl WriteRequest for validate::Set {
    fn named(&self) -> (Option<&str>, Option<&str>) {
        (self.user_id.as_deref(), self.org_id.as_deref())
    }

    fn change(&self) -> Change<'_> {
        Change::Set(&self.entries)
    }
}

impl WriteRequest for validate::Delete {
    fn named(&self) -> (Option<&str>, Option<&str>) {
        (self.user_id.as_deref(), self.org_id.as_deref())
    }

    fn change(&self) -> Change<'_> {
        Change::Delete {
            keys: &self.keys,
            allow_missing: self.allow_missing,
        }
    }
}

impl MetadataService {
    #[instrument(name = "SetMetadata", skip_all, fields(caller, user_id))]
    pub(in crate::api) async fn set(
        &self,
        call: Call<validate::Set>,
    ) -> Result<pb::SetMetadataResponse, ApiError> {
        let update_time = self.write(call).await?;
        Ok(pb::SetMetadataResponse { update_time })
    }

    #[instrument(name = "DeleteMetadata", skip_all, fields(caller, user_id))]
    pub(in crate::api) async fn delete(
        &self,
        call: Call<validate::Delete>,
    ) -> Result<pb::DeleteMetadataResponse, ApiError> {
        let update_time = self.write(call).await?;
        Ok(pb::DeleteMetadataResponse { update_time })
    }

    /// The one write path: the caller (with the client certificate mTLS verified), the user
    /// addressed ([`target_of`]) placed in the organisation ZITADEL acts in, the policy on every key (and, for
    /// a set, every value) before ZITADEL is asked; then the change, audited, with the cache and the streams
    /// told of it. Returns when ZITADEL says it landed.
    async fn write<R: WriteRequest>(
        &self,
        Call {
            token,
            request,
            extensions,
            ..
        }: Call<R>,
    ) -> Result<Option<prost_types::Timestamp>, ApiError> {
        let client_cert = tls::client_cert(&extensions);
        let caller = &self.identify(&token).await?.with_client_cert(client_cert);
        let (user_id, org_id) = request.named();
        let named = target_of(caller, user_id, org_id)?;
        let change = request.change();
        let action = change.action();
        let keys = change.keys();
        audited(caller, named, action, &keys, async {
            let scoped = self.scoped(caller, named, action, &keys).await?;
            let target = scoped.target();
            self.policy
                .authorize(caller, subject_of(target), action, keys.iter().copied())?;
            if let Change::Set(entries) = change {
                self.check_values(entries)?;
            }
            let conceal =
                |error| self.conceal_missing_user(caller, target.user_id, action, &keys, error);
            // Whatever the outcome, the write may have landed: cached answers about the user are stale.
            let stale = self.invalidate_on_drop(target.user_id, &keys);
            // From here on the values that matter are what ZITADEL stores; streams open sealed ones per
            // reader, as any read does.
            match change {
                Change::Set(plain) => {
                    // Sealed right before ZITADEL: the policy checked the plaintext, ZITADEL gets ciphertext.
                    let entries = &*self.seal_entries(target.user_id, plain)?;
                    let update_time = self
                        .zitadel
                        .set_user_metadata(target, entries)
                        .await
                        .map_err(|e| conceal(e.into()))?;
                    // Values go to streams only while they are small; a larger write is streamed by its keys.
                    let values: usize = entries.iter().map(|(_, value)| value.len()).sum();
                    let streamed = values <= MAX_STREAMED_VALUE_BYTES;
                    stale.landed(
                        ChangeKind::Set,
                        entries
                            .iter()
                            .map(|(key, value)| (key.as_str(), streamed.then(|| value.clone()))),
                        update_time.as_ref(),
                    );
                    Ok(update_time)
                }
                Change::Delete {
                    keys: asked,
                    allow_missing,
                } => {
                    let (removed, update_time) = self
                        .delete_keys(target, asked, allow_missing)
                        .await
                        .map_err(conceal)?;
                    // Only what went: a key skipped by allow_missing never existed, and no stream hears of it.
                    stale.landed(
                        ChangeKind::Delete,
                        removed.iter().map(|key| (key.as_str(), None)),
                        update_time.as_ref(),
                    );
                    Ok(update_time)
                }
            }
        })
        .await
    }

    /// The target in the organisation ZITADEL acts in ([`usermeta_zitadel::Zitadel::scope`]). What no
    /// organisation could allow is refused first, so a denial costs ZITADEL nothing.
    async fn scoped(
        &self,
        caller: &Identity,
        named: Target<'_>,
        action: Action,
        keys: &[&str],
    ) -> Result<Scoped, ApiError> {
        self.policy.authorize_in_any_organization(
            caller,
            subject_of(named),
            action,
            keys.iter().copied(),
        )?;
        self.zitadel
            .scope(named)
            .await
            .map_err(|e| self.conceal_missing_user(caller, named.user_id, action, keys, e.into()))
    }

    /// The policy's value rules, as field violations of the request.
    fn check_values(&self, entries: &[(String, Vec<u8>)]) -> Result<(), ApiError> {
        let mut violations = Violations::default();
        for (i, (key, value)) in entries.iter().enumerate() {
            for description in self.policy.value_problems(key, value) {
                violations.add(format!("entries[{i}].value"), description);
            }
        }
        violations.into_result(())
    }

    /// What ZITADEL stores for `entries` of `user_id`: sealed for sealed keys. A value that sealed would
    /// exceed ZITADEL's limit is refused here, before anything is sent, naming the limit after sealing.
    fn seal_entries<'e>(
        &self,
        user_id: &str,
        entries: &'e [Entry],
    ) -> Result<Cow<'e, [Entry]>, ApiError> {
        if !entries.iter().any(|(key, _)| self.policy.is_sealed(key)) {
            return Ok(Cow::Borrowed(entries));
        }
        let mut violations = Violations::default();
        let mut sealed = Vec::with_capacity(entries.len());
        let mut count = 0;
        for (i, (key, value)) in entries.iter().enumerate() {
            let stored = self
                .policy
                .conceal(Owner::User(user_id), key, value)
                .map_err(|problem| ApiError::ValueNotSealed {
                    user_id: user_id.to_owned(),
                    key: key.clone(),
                    problem,
                })?;
            if let Cow::Owned(_) = stored {
                count += 1;
            }
            if stored.len() > MAX_VALUE_BYTES {
                let most = self
                    .policy
                    .sealer()
                    .map_or(0, |sealer| sealer.max_plaintext(MAX_VALUE_BYTES));
                violations.add(
                    format!("entries[{i}].value"),
                    format!(
                        "key `{key}` is sealed, and sealed this value of {} bytes takes {} bytes, over ZITADEL's limit of {MAX_VALUE_BYTES} bytes per value; a sealed value may hold at most {most} bytes",
                        value.len(),
                        stored.len()
                    ),
                );
            }
            sealed.push((key.clone(), stored.into_owned()));
        }
        violations.into_result(())?;
        crate::metrics::sealed_values_written(count);
        Ok(Cow::Owned(sealed))
    }

    /// Removes `keys` all or nothing; with `allow_missing`, removes those that exist. Returns the keys removed.
    async fn delete_keys(
        &self,
        target: Target<'_>,
        keys: &[String],
        allow_missing: bool,
    ) -> Result<(Vec<String>, Option<prost_types::Timestamp>), ApiError> {
        let mut to_remove = keys.to_vec();
        // A key can vanish between listing and removing (a concurrent delete); a few rounds settle it.
        for _ in 0..3 {
            match self.zitadel.remove_user_metadata(target, &to_remove).await {
                Ok(update_time) => return Ok((to_remove, update_time)),
                Err(e) if !e.is_missing_metadata() => return Err(e.into()),
                Err(_) if !allow_missing => {
                    return Err(ApiError::KeysNotFound {
                        user_id: target.user_id.to_owned(),
                        keys: keys.to_vec(),
                    });
                }
                Err(_) if to_remove.len() == 1 => return Ok((Vec::new(), None)),
                Err(_) => {
                    let existing: HashSet<String> =
                        read_all(|page| self.zitadel.list_user_metadata(target, None, page))
                            .await?
                            .into_iter()
                            .map(|item| item.key)
                            .collect();
                    to_remove.retain(|key| existing.contains(key));
                    if to_remove.is_empty() {
                        return Ok((Vec::new(), None));
                    }
                }
            }
        }
        Err(ApiError::KeysNotFound {
            user_id: target.user_id.to_owned(),
            keys: keys.to_vec(),
        })
    }

    fn invalidate_on_drop<'a>(
        &'a self,
        user_id: &'a str,
        keys: &'a [&'a str],
    ) -> InvalidateOnDrop<'a> {
        InvalidateOnDrop {
            changes: Some(&self.changes),
            user_id,
            keys,
        }
    }
}

/// Marks a user's cached answers stale when a write ends, also when it ends by the deadline cutting it off
/// (it may have landed): here at once, and on the other replicas. A write known to have landed is announced
/// as the change it made instead ([`InvalidateOnDrop::landed`]).
struct InvalidateOnDrop<'a> {
    changes: Option<&'a Changes>,
    user_id: &'a str,
    keys: &'a [&'a str],
}

impl InvalidateOnDrop<'_> {
    /// The write landed: each key changed this way (with the value written, when there is one).
    fn landed<'k>(
        mut self,
        kind: ChangeKind,
        keys: impl Iterator<Item = (&'k str, Option<Vec<u8>>)>,
        update_time: Option<&prost_types::Timestamp>,
    ) {
        let time = update_time
            .and_then(|time| std::time::SystemTime::try_from(*time).ok())
            .unwrap_or_else(std::time::SystemTime::now);
        if let Some(changes) = self.changes.take() {
            changes.announce(
                keys.map(|(key, value)| MetadataChange {
                    user_id: self.user_id.to_owned(),
                    key: key.to_owned(),
                    kind,
                    value,
                    time,
                })
                .collect(),
            );
        }
    }
}

impl Drop for InvalidateOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(changes) = self.changes {
            changes.maybe_changed(self.user_id, self.keys);
        }
    }
}

/// Runs a write or delete and writes its audit line: who (user and client), on whom, which keys (never
/// values), and how it ended.
async fn audited<T>(
    caller: &Identity,
    target: Target<'_>,
    action: Action,
    keys: &[&str],
    operation: impl Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    let span = tracing::Span::current();
    span.record("caller", caller.sub.as_str());
    span.record("user_id", target.user_id);
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
        user_id = %target.user_id,
        org_id = target.org_id.unwrap_or_default(),
        action = action.name(),
        keys = ?keys,
        outcome,
        "metadata {}", action.name()
    );
    result
}
