//! SetMetadata and DeleteMetadata: one write path (admission, caller, target, policy, the audited call to
//! ZITADEL, the cache and the streams told), which differs only in what it sends.

use std::{
    borrow::Cow,
    collections::{HashMap, HashSet},
    future::Future,
};

use tracing::instrument;

use super::{exact_key_filter, read_all, subject_of, target_of};
use crate::{
    api::{
        ApiError, MetadataService,
        error::{self, Violations},
        pb,
        service::Call,
        validate::{self, Condition, Guard, MAX_VALUE_BYTES},
    },
    caller::Identity,
    fleet::{
        ChangeKind, Changes, LockError, MAX_STREAMED_VALUE_BYTES, MetadataChange, Need, UserLock,
        shows_recorded,
    },
    policy::{Action, Unsealed},
    sealing::Owner,
    tls,
};
use usermeta_zitadel::{
    etag::etag,
    management::{Scoped, Target},
};

/// A key and the value to store under it.
type Entry = (String, Vec<u8>);

/// What a write changes: SetMetadata's entries, or DeleteMetadata's keys; with what must hold of them first.
#[derive(Clone, Copy)]
enum Change<'a> {
    Set {
        entries: &'a [(String, Vec<u8>)],
        guarded: &'a [Guard],
    },
    Delete {
        keys: &'a [String],
        allow_missing: bool,
        if_match: &'a [(String, String)],
    },
}

impl Change<'_> {
    fn action(self) -> Action {
        match self {
            Change::Set { .. } => Action::Write,
            Change::Delete { .. } => Action::Delete,
        }
    }

    fn keys(&self) -> Vec<&str> {
        match self {
            Change::Set { entries, .. } => entries.iter().map(|(key, _)| key.as_str()).collect(),
            Change::Delete { keys, .. } => keys.iter().map(String::as_str).collect(),
        }
    }

    /// The keys read before writing (under the user's write lock); none for a plain write.
    fn guarded_keys(&self) -> Vec<&'_ str> {
        match self {
            Change::Set { entries, guarded } => guarded
                .iter()
                .map(|guard| entries[guard.index].0.as_str())
                .collect(),
            Change::Delete { if_match, .. } => {
                if_match.iter().map(|(key, _)| key.as_str()).collect()
            }
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
        Change::Set {
            entries: &self.entries,
            guarded: &self.guarded,
        }
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
            if_match: &self.if_match,
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
            let guarded = change.guarded_keys();
            // A write that reads first holds the user's lock from its read to its write: no other writer
            // through usermeta, on this replica or another, comes between them. A plain write takes the lock
            // too, so that it cannot land between another's read and write, but does not need it.
            let need = if guarded.is_empty() {
                Need::Courtesy
            } else {
                Need::Guarantee
            };
            let mut lock = self
                .write_locks
                .lock(target.user_id, &guarded, need)
                .await
                .map_err(lock_error)?;
            let resolved;
            let change = match change {
                Change::Set {
                    entries,
                    guarded: guards,
                } if !guards.is_empty() => {
                    let current = self.current(caller, target, &guarded, &lock).await?;
                    resolved = resolve(entries, guards, &current)?;
                    Change::Set {
                        entries: &resolved,
                        guarded: guards,
                    }
                }
                Change::Delete { if_match, .. } if !if_match.is_empty() => {
                    let current = self.current(caller, target, &guarded, &lock).await?;
                    for (key, expected) in if_match {
                        let etag = current.etags.get(key.as_str());
                        if etag.and_then(Option::as_deref) != Some(expected.as_str()) {
                            return Err(current.mismatch(key, etag));
                        }
                    }
                    change
                }
                change => change,
            };
            if let Change::Set { entries, .. } = change {
                self.check_values(entries)?;
            }
            let conceal =
                |error| self.conceal_missing_user(caller, target.user_id, action, &keys, error);
            // Whatever the outcome, the write may have landed: cached answers about the user are stale.
            let stale = self.invalidate_on_drop(target.user_id, &keys);
            // The last moment before the write: a holder whose lock expired writes nothing.
            lock.fence().await.map_err(lock_error)?;
            // What a write under the lock left, for the fleet's next holder to wait for in a lagging listing.
            let record = |lock: &mut UserLock,
                          landed: &mut dyn Iterator<Item = (&str, Option<String>)>,
                          update_time: Option<&prost_types::Timestamp>| {
                lock.landed(landed, update_time.map_or_else(unix_ms_now, unix_ms));
            };
            // From here on the values that matter are what ZITADEL stores (etags, streams, the lock's record);
            // streams open sealed ones per reader, as any read does.
            match change {
                Change::Set { entries: plain, .. } => {
                    // Sealed right before ZITADEL: the policy checked the plaintext (a merge patch was applied
                    // to it), ZITADEL gets ciphertext.
                    let entries = &*self.seal_entries(target.user_id, plain)?;
                    let update_time = self
                        .zitadel
                        .set_user_metadata(target, entries)
                        .await
                        .map_err(|e| conceal(e.into()))?;
                    // Values go to streams only while they are small; a larger write is streamed by its keys.
                    record(
                        &mut lock,
                        &mut entries
                            .iter()
                            .map(|(key, value)| (key.as_str(), Some(etag(key, value)))),
                        update_time.as_ref(),
                    );
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
                    ..
                } => {
                    let (removed, update_time) = self
                        .delete_keys(target, asked, allow_missing)
                        .await
                        .map_err(conceal)?;
                    record(
                        &mut lock,
                        &mut removed.iter().map(|key| (key.as_str(), None)),
                        update_time.as_ref(),
                    );
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

    /// The current values of `keys` as ZITADEL has them (never a cache; this replica's own recent writes laid
    /// over a lagging v2 listing), with what the caller may learn of them.
    ///
    /// A listing that does not show yet what the fleet's last locked write left in a key (v2's search lags
    /// behind ZITADEL's writes; another replica's write is not in this replica's recent writes) is read again
    /// until it does, or until it shows a later change (a write around usermeta), within the deadline.
    async fn current(
        &self,
        caller: &Identity,
        target: Target<'_>,
        keys: &[&str],
        lock: &UserLock,
    ) -> Result<Current, ApiError> {
        let wanted: Vec<String> = keys.iter().map(|key| (*key).to_owned()).collect();
        let filter = exact_key_filter(&wanted);
        let mut pause = LAG_RETRY_MIN;
        let items = loop {
            let items = read_all(|page| {
                self.zitadel
                    .list_user_metadata(target, filter.as_ref(), page)
            })
            .await?;
            if shows_recorded(&items, &lock.recorded) {
                break items;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(LAG_RETRY_MAX);
        };
        // What the caller may not read (a hidden key of their own, a key of a user they only write), they
        // learn no etag of.
        let scope = self.policy.read_scope(caller, subject_of(target)).ok();
        let mut current = Current {
            user_id: target.user_id.to_owned(),
            values: HashMap::new(),
            unopenable: HashMap::new(),
            etags: HashMap::new(),
            readable: keys
                .iter()
                .filter(|key| scope.as_ref().is_some_and(|scope| scope.allows(key)))
                .map(|key| (*key).to_owned())
                .collect(),
        };
        for item in items {
            if !wanted.contains(&item.key) {
                continue;
            }
            // The etag of what ZITADEL stores; the value opened (a merge patch applies to the plaintext).
            let etag = item.value.as_deref().map(|value| etag(&item.key, value));
            current.etags.insert(item.key.clone(), etag);
            let value = match item.value {
                Some(stored) if self.policy.is_sealed(&item.key) => {
                    match self
                        .policy
                        .reveal(Owner::User(target.user_id), &item.key, &stored)
                    {
                        Ok(opened) => Some(opened.into_owned()),
                        Err(problem) => {
                            current.unopenable.insert(item.key.clone(), problem);
                            None
                        }
                    }
                }
                value => value,
            };
            current.values.insert(item.key, value);
        }
        Ok(current)
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

/// The first and the longest pause before a listing that lags behind the fleet's last write is read again.
const LAG_RETRY_MIN: std::time::Duration = std::time::Duration::from_millis(10);
const LAG_RETRY_MAX: std::time::Duration = std::time::Duration::from_millis(200);

fn unix_ms(time: &prost_types::Timestamp) -> i64 {
    time.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(time.nanos / 1_000_000))
}

fn unix_ms_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
        })
}

/// The keys a write reads before it writes, as ZITADEL has them now.
struct Current {
    /// Whose keys these are.
    user_id: String,
    /// Key → value, opened for a sealed key (`None`: ZITADEL's value could not be decoded or opened); a key
    /// not here does not exist.
    values: HashMap<String, Option<Vec<u8>>>,
    /// Sealed keys whose value in ZITADEL does not open, and why: a merge patch cannot apply to them.
    unopenable: HashMap<String, Unsealed>,
    /// Key → etag of its value.
    etags: HashMap<String, Option<String>>,
    /// The keys whose etags the caller may learn.
    readable: HashSet<String>,
}

impl Current {
    /// The refusal of a condition on `key` that does not hold, naming what the key is only as far as the
    /// caller may read it.
    fn mismatch(&self, key: &str, etag: Option<&Option<String>>) -> ApiError {
        let current = match etag {
            None => error::Current::Absent,
            Some(Some(etag)) if self.readable.contains(key) => error::Current::Etag(etag.clone()),
            Some(_) => error::Current::Exists,
        };
        ApiError::ConditionFailed {
            key: key.to_owned(),
            current,
        }
    }
}

/// The entries a guarded SetMetadata writes: every condition checked against `current`, every merge patch
/// applied to the current value (an absent key starting from `{}`). All or nothing: the first condition that
/// does not hold refuses the whole request.
fn resolve(
    entries: &[(String, Vec<u8>)],
    guards: &[Guard],
    current: &Current,
) -> Result<Vec<(String, Vec<u8>)>, ApiError> {
    let mut resolved = entries.to_vec();
    let mut violations = Violations::default();
    for guard in guards {
        let key = resolved[guard.index].0.as_str();
        let etag = current.etags.get(key);
        let holds = match &guard.condition {
            None => true,
            Some(Condition::Absent) => etag.is_none(),
            Some(Condition::Match(expected)) => {
                etag.and_then(Option::as_deref) == Some(expected.as_str())
            }
        };
        if !holds {
            return Err(current.mismatch(key, etag));
        }
        let Some(patch) = &guard.patch else {
            continue;
        };
        if let Some(problem) = current.unopenable.get(key) {
            return Err(ApiError::ValueNotSealed {
                user_id: current.user_id.clone(),
                key: key.to_owned(),
                problem: problem.clone(),
            });
        }
        let field = format!("entries[{}].json_merge_patch", guard.index);
        let mut value = match current.values.get(key) {
            None => serde_json::Value::Object(serde_json::Map::new()),
            Some(bytes) => match bytes
                .as_deref()
                .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(bytes).ok())
            {
                Some(value @ serde_json::Value::Object(_)) => value,
                _ => {
                    violations.add(
                        field,
                        format!("cannot apply: the current value of `{key}` is not a JSON object; set the whole value instead"),
                    );
                    continue;
                }
            },
        };
        json_patch::merge(&mut value, &serde_json::Value::Object(patch.clone()));
        let bytes = serde_json::to_vec(&value).unwrap_or_default();
        if bytes.len() > MAX_VALUE_BYTES {
            violations.add(
                field,
                format!(
                    "would make the value of `{key}` {} bytes, more than ZITADEL's {MAX_VALUE_BYTES}",
                    bytes.len()
                ),
            );
            continue;
        }
        resolved[guard.index].1 = bytes;
    }
    violations.into_result(resolved)
}

/// A write lock that could not be had as the refusal of the write.
fn lock_error(error: LockError) -> ApiError {
    match error {
        LockError::Unreachable(why) => ApiError::WriteLockUnavailable(why),
        LockError::Lost => ApiError::WriteLockLost,
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
