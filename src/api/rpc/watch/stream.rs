//! WatchMetadata's stream: this replica's writes of one user ([`crate::fleet::Subscription`]), narrowed to the
//! keys the policy lets the caller read, for as long as the caller's credential holds: the stream asks ZITADEL
//! about its token again (through the cache) at least once a cache TTL, ends at the token's expiry, and lives
//! at most [`WatchLimits::max_duration`]. It also ends when the reader falls behind its buffer or the replica
//! stops.

use std::{
    borrow::Cow,
    collections::VecDeque,
    pin::Pin,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use compact_str::CompactString;
use futures::Stream;
use tokio::{sync::watch, time::Instant};
use tonic::Status;

use crate::{
    api::{ApiError, convert::value_to_pb, error, pb},
    caller::{Caller, Resolver, TokenError, cache::CallerCache},
    fleet::{ChangeKind, Subscription, WatchLimits, Write},
    policy::{Policy, Subject},
    sealing::Owner,
};
use usermeta_zitadel::{CallerToken, Zitadel, budget::for_identified_caller, etag::etag};

/// What one stream sends.
pub type ChangeStream = Pin<Box<dyn Stream<Item = Result<pb::MetadataChange, Status>> + Send>>;

/// Whose changes a stream carries and which of them the caller may see.
pub(super) struct Watched {
    pub(super) policy: Arc<Policy>,
    pub(super) caller: Caller,
    pub(super) user_id: CompactString,
    /// The organisation ZITADEL placed the user in (for another user; the caller's own from their token).
    pub(super) org_id: Option<CompactString>,
    pub(super) key_prefix: String,
}

impl Watched {
    fn subject(&self) -> Subject<'_> {
        Subject {
            user_id: &self.user_id,
            org_id: self.org_id.as_deref(),
        }
    }

    /// The messages `write` makes for this stream: each of its keys the caller may read (as a read of that
    /// key would be decided) under the prefix. The policy is asked once per write.
    fn messages(&self, write: &Write, into: &mut VecDeque<pb::MetadataChange>) {
        if write.user_id != self.user_id.as_str() {
            return;
        }
        let Ok(scope) = self.policy.read_scope(&self.caller, self.subject()) else {
            return;
        };
        for changed in &write.keys {
            let streamed = match write.kind {
                // Every key went, including those the caller may read.
                ChangeKind::DeleteAll => true,
                ChangeKind::Set | ChangeKind::Delete => {
                    changed.key.starts_with(&self.key_prefix) && scope.allows(&changed.key)
                }
            };
            if streamed {
                // A sealed value is carried as ZITADEL stores it and opened here, for this reader; one that
                // does not open is streamed without its value (read the key to see why).
                // Its etag is of what ZITADEL stores, as from every read.
                let stored = changed.value.as_deref();
                let value = match stored {
                    Some(stored) if self.policy.is_sealed(&changed.key) => self
                        .policy
                        .reveal(Owner::User(&write.user_id), &changed.key, stored)
                        .ok(),
                    stored => stored.map(Cow::Borrowed),
                };
                into.push_back(to_pb(write, &changed.key, stored, value.as_deref()));
            }
        }
    }
}

/// The credential a stream was opened with, asked about again while it lasts.
pub(super) struct Credential {
    pub(super) token: CallerToken,
    pub(super) resolver: Arc<Resolver>,
    pub(super) cache: Arc<CallerCache>,
    pub(super) zitadel: Arc<Zitadel>,
    /// How long one re-identification may take.
    pub(super) timeout: Duration,
}

impl Credential {
    /// How often the stream asks again: the cache TTL, so ZITADEL is asked about as often as for a caller
    /// that calls once a TTL.
    fn every(&self) -> Duration {
        self.cache.ttl().max(Duration::from_secs(1))
    }

    /// Who the token belongs to now, and that they may still read what the stream carries.
    async fn still_holds(&self, watched: &Watched) -> Result<Caller, ApiError> {
        // The stream's caller was identified when it opened: its checks rank as an identified caller's in the
        // request budget toward ZITADEL, ahead of tokens usermeta does not know yet.
        let identify = for_identified_caller(self.resolver.identify(
            &self.cache,
            &self.zitadel,
            &self.token,
        ));
        let caller = tokio::time::timeout(self.timeout, identify)
            .await
            .map_err(|_| ApiError::DeadlineExceeded)??;
        if caller.sub != watched.caller.sub {
            // A token does not change hands: treat it as the refusal it would be.
            return Err(ApiError::Token(TokenError::Inactive));
        }
        watched.policy.read_scope(&caller, watched.subject())?;
        Ok(caller)
    }

    /// When the credential stops counting, whichever comes first: the identity's expiry as ZITADEL said it,
    /// or the `exp` the token claims (which can only make the stream shorter).
    fn expiry(&self, caller: &Caller) -> Option<Instant> {
        let exp = match (caller.expires_at, self.token.claimed_expiry()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        Some(Instant::now() + Duration::from_secs(exp.saturating_sub(now)))
    }
}

/// The stream of `watched`'s changes from `subscription`. It ends with UNAVAILABLE `SHUTTING_DOWN` once
/// `stopping` turns true, RESOURCE_EXHAUSTED `WATCH_LAGGED` when the reader falls behind, UNAUTHENTICATED when
/// the token expires or ZITADEL no longer accepts it, PERMISSION_DENIED when the policy no longer lets the
/// caller read the user, and UNAVAILABLE `WATCH_MAX_DURATION` after `limits.max_duration`.
pub(super) fn change_stream(
    watched: Watched,
    subscription: Subscription,
    credential: Credential,
    limits: &WatchLimits,
    stopping: watch::Receiver<bool>,
) -> ChangeStream {
    let now = Instant::now();
    let max_life = now + limits.max_duration;
    let expiry = credential.expiry(&watched.caller);
    let state = Open {
        recheck_at: now + credential.every(),
        max_duration: limits.max_duration,
        max_life,
        expiry,
        watched,
        subscription,
        credential,
        stopping,
        ready: VecDeque::new(),
        unconfirmed_since: None,
    };
    Box::pin(futures::stream::unfold(Some(state), |state| async move {
        let mut state = state?;
        match state.next().await {
            Ok(message) => Some((Ok(message), Some(state))),
            Err(ended) => Some((Err(ended.into()), None)),
        }
    }))
}

struct Open {
    watched: Watched,
    subscription: Subscription,
    credential: Credential,
    stopping: watch::Receiver<bool>,
    /// When the credential is asked about next.
    recheck_at: Instant,
    max_duration: Duration,
    max_life: Instant,
    expiry: Option<Instant>,
    /// Messages of a write not sent yet (a write of several keys makes several).
    ready: VecDeque<pb::MetadataChange>,
    /// Since when ZITADEL could not be asked about the credential, if it could not at the last check.
    unconfirmed_since: Option<Instant>,
}

/// How soon a check that could not reach ZITADEL is tried again.
const RECHECK_RETRY: Duration = Duration::from_secs(2);

/// Whether the credential could not be checked, rather than was refused: ZITADEL down or slow, or the budget
/// toward it spent.
fn is_transient(error: &ApiError) -> bool {
    let code = tonic::Code::from_i32(error::status_message(error).code);
    matches!(
        code,
        tonic::Code::Unavailable | tonic::Code::ResourceExhausted | tonic::Code::DeadlineExceeded
    )
}

impl Open {
    async fn next(&mut self) -> Result<pb::MetadataChange, ApiError> {
        loop {
            if let Some(message) = self.ready.pop_front() {
                return Ok(message);
            }
            let ends_at = self
                .expiry
                .map_or(self.max_life, |expiry| expiry.min(self.max_life));
            tokio::select! {
                biased;
                () = stopped(&mut self.stopping) => return Err(ended("shutting_down", ApiError::ShuttingDown)),
                () = tokio::time::sleep_until(ends_at) => {
                    return Err(if self.expiry.is_some_and(|expiry| expiry <= self.max_life) {
                        ended("expired", ApiError::Token(TokenError::Expired))
                    } else {
                        ended("max_duration", ApiError::WatchMaxDuration { max: self.max_duration })
                    });
                }
                () = tokio::time::sleep_until(self.recheck_at) => {
                    let now = Instant::now();
                    match self.credential.still_holds(&self.watched).await {
                        Ok(caller) => {
                            self.expiry = self.credential.expiry(&caller);
                            self.watched.caller = caller;
                            self.recheck_at = now + self.credential.every();
                            self.unconfirmed_since = None;
                        }
                        // ZITADEL could not be asked (down, slow, or the budget toward it spent): asked again
                        // shortly, for at most one more interval; a refusal ends the stream at once.
                        Err(error) if is_transient(&error)
                            && self.unconfirmed_since.is_none_or(|since| now - since < self.credential.every()) =>
                        {
                            self.unconfirmed_since.get_or_insert(now);
                            self.recheck_at = now + RECHECK_RETRY.min(self.credential.every());
                        }
                        Err(error) => return Err(ended("credential", error)),
                    }
                }
                next = self.subscription.next() => match next {
                    Ok(queued) => self.watched.messages(&queued.write, &mut self.ready),
                    Err((lag, missed)) => return Err(ended("lagged", ApiError::WatchLagged { missed, lag })),
                },
            }
        }
    }
}

/// Resolves once the replica stops; never, when nothing can stop it (its sender is gone).
async fn stopped(stopping: &mut watch::Receiver<bool>) {
    if stopping.wait_for(|stopping| *stopping).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Counts how a stream ended.
fn ended(reason: &'static str, error: ApiError) -> ApiError {
    crate::metrics::watch_ended(reason);
    error
}

/// The message of one changed key: `value` as the reader gets it, the etag of what ZITADEL stores (`stored`).
fn to_pb(
    write: &Write,
    key: &str,
    stored: Option<&[u8]>,
    value: Option<&[u8]>,
) -> pb::MetadataChange {
    let kind = match write.kind {
        ChangeKind::Set => pb::ChangeKind::Set,
        ChangeKind::Delete => pb::ChangeKind::Delete,
        ChangeKind::DeleteAll => pb::ChangeKind::DeleteAll,
    };
    pb::MetadataChange {
        user_id: write.user_id.clone(),
        key: key.to_owned(),
        kind: kind.into(),
        value: value.map(|value| value_to_pb(value.to_vec())),
        time: Some(prost_types::Timestamp::from(write.time)),
        etag: stored.map(|stored| etag(key, stored)).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caller::Identity;

    fn write(user_id: &str, keys: &[&str], kind: ChangeKind) -> Write {
        Write {
            user_id: user_id.to_owned(),
            kind,
            keys: keys
                .iter()
                .map(|key| crate::fleet::ChangedKey {
                    key: (*key).to_owned(),
                    value: None,
                })
                .collect(),
            time: SystemTime::now(),
        }
    }

    fn watched_self(policy: Policy, key_prefix: &str) -> Watched {
        Watched {
            policy: Arc::new(policy),
            caller: Caller::Identified(Arc::new(Identity {
                sub: "u1".into(),
                ..Identity::default()
            })),
            user_id: "u1".into(),
            org_id: None,
            key_prefix: key_prefix.to_owned(),
        }
    }

    #[test]
    fn only_the_users_readable_keys_under_the_prefix_are_streamed() {
        let policy = Policy::from_toml("[[key]]\nname = \"secret\"\nhidden = true\n", "test")
            .expect("policy");
        let watched = watched_self(policy, "t");
        let mut out = VecDeque::new();
        for sent in [
            write("u2", &["tier"], ChangeKind::Set),
            write("u1", &["secret", "other", "tier"], ChangeKind::Set),
            write("u1", &["tier"], ChangeKind::Delete),
            write("u1", &[""], ChangeKind::DeleteAll),
        ] {
            watched.messages(&sent, &mut out);
        }
        let got: Vec<(&str, pb::ChangeKind)> =
            out.iter().map(|m| (m.key.as_str(), m.kind())).collect();
        assert_eq!(
            got,
            [
                ("tier", pb::ChangeKind::Set),
                ("tier", pb::ChangeKind::Delete),
                ("", pb::ChangeKind::DeleteAll)
            ]
        );
    }

    /// Nothing can stop a replica whose stop signal is gone: its streams stay open.
    #[test]
    fn without_a_stop_signal_a_stream_never_stops() {
        use futures::FutureExt as _;
        let mut stopping = watch::Sender::new(false).subscribe();
        assert!(stopped(&mut stopping).now_or_never().is_none());
    }
}
