//! Remembers what ZITADEL said about callers' tokens, so repeated lookups are answered from memory and
//! concurrent identical lookups send ZITADEL one request.
//!
//! - Keyed by a SHA-256 digest of the token, never the token itself.
//! - A userinfo answer lives at most the configured TTL, and never past the `exp` a JWT token claims.
//! - A token ZITADEL rejected is remembered briefly (the negative TTL), so a retrying client with a dead token
//!   does not turn into a stream of upstream calls.
//! - Concurrent misses for one token share a single upstream call and its outcome, success or failure.
//! - A write through usermeta marks its target user as changed; answers fetched before that are refetched, so
//!   a client that writes and then reads through the same instance sees its write.
//!
//! The store is `quick_cache` (bounded, S3-FIFO eviction), chosen over moka for its footprint: about a
//! quarter of moka's per-entry overhead, which matters at 100k cached tokens.

use std::{
    collections::{HashMap, hash_map},
    sync::{
        Arc, Mutex, PoisonError, RwLock, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use futures::{
    FutureExt,
    future::{BoxFuture, Shared},
};

use super::{IdentifyError, Identity, KnownCaller, Resolution, TokenError};
use usermeta_zitadel::{CallerToken, Endpoint, Rejection, UpstreamError, Zitadel};

/// How the caller cache behaves.
#[derive(Debug, Clone, Copy)]
pub struct CacheConfig {
    /// Longest life of a remembered userinfo answer; zero turns the cache off.
    pub ttl: Duration,
    /// Life of a remembered rejection.
    pub negative_ttl: Duration,
    /// Most tokens remembered at once; the least useful go first.
    pub capacity: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            ttl: Duration::from_secs(30),
            negative_ttl: Duration::from_secs(5),
            capacity: 100_000,
        }
    }
}

/// What ZITADEL said about one token, and until when it may be reused. Small, and stored in the cache by
/// value: there is one per cached token, and the answer itself is shared by the tokens of one user.
#[derive(Debug, Clone)]
struct Entry {
    answer: Answer,
    /// The write epoch when the lookup started; older than the user's last write means stale.
    epoch: u64,
    expires_at: Instant,
}

#[derive(Debug, Clone)]
enum Answer {
    Known(Arc<KnownCaller>),
    /// The answer names no user: the token lacks the scope `openid`.
    Anonymous,
    /// Boxed: rejections are rare, and the variant would otherwise size every entry.
    Rejected(Box<(u16, Rejection)>),
}

impl Entry {
    fn into_result(self) -> Result<Arc<KnownCaller>, IdentifyError> {
        match self.answer {
            Answer::Known(caller) => Ok(caller),
            Answer::Anonymous => Err(TokenError::NoSubject.into()),
            Answer::Rejected(rejected) => {
                let (http_status, rejection) = *rejected;
                Err(UpstreamError::Rejected {
                    endpoint: Endpoint::Userinfo,
                    http_status,
                    rejection,
                }
                .into())
            }
        }
    }
}

/// Keeps one copy of identical answers per user: every login or refresh gives a user another token, and
/// each cached token pointing at its own copy of the same answer would multiply the memory per user.
#[derive(Debug, Default)]
struct Interner {
    /// By a hash of the user id (a collision only means an answer is not shared: equality decides).
    by_user: HashMap<u64, Weak<KnownCaller>>,
    hasher: std::hash::RandomState,
    /// Size at which entries whose answers are no longer cached are swept out.
    sweep_at: usize,
}

impl Interner {
    const MIN_SWEEP: usize = 1024;

    fn intern(&mut self, caller: KnownCaller) -> Arc<KnownCaller> {
        let user = std::hash::BuildHasher::hash_one(&self.hasher, &caller.identity.sub);
        if let Some(existing) = self.by_user.get(&user).and_then(Weak::upgrade)
            && *existing == caller
        {
            return existing;
        }
        let shared = Arc::new(caller);
        self.by_user.insert(user, Arc::downgrade(&shared));
        if self.by_user.len() >= self.sweep_at {
            self.by_user.retain(|_, answer| answer.strong_count() > 0);
            self.sweep_at = (self.by_user.len() * 2).max(Self::MIN_SWEEP);
        }
        shared
    }
}

type TokenKey = [u8; 32];
type Entries = quick_cache::sync::Cache<TokenKey, Entry>;

/// Lookups under way by token digest, shared by every request that misses on the same token meanwhile.
struct SingleFlight<T, E> {
    under_way: Mutex<HashMap<TokenKey, Lookup<T, E>>>,
}

type Lookup<T, E> = Shared<BoxFuture<'static, Result<T, E>>>;

impl<T: Clone, E: Clone> SingleFlight<T, E> {
    fn new() -> Self {
        SingleFlight {
            under_way: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TokenKey, Lookup<T, E>>> {
        self.under_way
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Joins the lookup under way for `key`, or starts one with `start`. Before starting, `remembered` is
    /// asked once more under the lock: a lookup that finished since the caller missed left its answer there.
    /// The first waiter back passes the answer to `remember` and only then retires the lookup, so a request
    /// arriving in between finds one or the other and never starts a second lookup.
    async fn run(
        &self,
        key: TokenKey,
        remembered: impl FnOnce() -> Option<T>,
        start: impl FnOnce() -> BoxFuture<'static, Result<T, E>>,
        remember: impl FnOnce(&T),
    ) -> Result<T, E> {
        let lookup = match self.lock().entry(key) {
            hash_map::Entry::Occupied(under_way) => under_way.get().clone(),
            hash_map::Entry::Vacant(none) => {
                if let Some(answer) = remembered() {
                    return Ok(answer);
                }
                none.insert(start().shared()).clone()
            }
        };
        // A waiter cut off here (its deadline) retires the lookup if it is still the one under way: left in
        // the map, unpolled, it would hold its upstream call (a circuit breaker's only probe among them) and
        // its memory for ever. Other waiters keep their own handle on it and finish it.
        let mut retire = Retire {
            flight: self,
            key,
            lookup: Some(lookup.clone()),
        };
        let result = lookup.clone().await;
        retire.lookup = None;
        let mut under_way = self.lock();
        if under_way
            .get(&key)
            .is_some_and(|current| current.ptr_eq(&lookup))
        {
            if let Ok(answer) = &result {
                remember(answer);
            }
            under_way.remove(&key);
        }
        result
    }
}

/// Retires a lookup from its [`SingleFlight`] when the waiter holding this is dropped before the answer came.
struct Retire<'a, T: Clone, E: Clone> {
    flight: &'a SingleFlight<T, E>,
    key: TokenKey,
    lookup: Option<Lookup<T, E>>,
}

impl<T: Clone, E: Clone> Drop for Retire<'_, T, E> {
    fn drop(&mut self) {
        if let Some(lookup) = self.lookup.take() {
            let mut under_way = self.flight.lock();
            if under_way
                .get(&self.key)
                .is_some_and(|current| current.ptr_eq(&lookup))
            {
                under_way.remove(&self.key);
            }
        }
    }
}

/// An identity from introspection or a verified JWT, or the refusal of the token, until `expires_at`.
/// Metadata writes do not change identities, so these are never stale by writes.
#[derive(Debug)]
struct IdentityEntry {
    answer: Result<Arc<Identity>, TokenError>,
    expires_at: Instant,
}

/// The caller cache. Cheap to share behind an `Arc`.
pub struct CallerCache {
    config: CacheConfig,
    entries: Option<Entries>,
    /// Userinfo lookups under way.
    in_flight: SingleFlight<Entry, UpstreamError>,
    interner: Arc<Mutex<Interner>>,
    /// Counts writes through usermeta; each write takes the next epoch.
    write_epoch: AtomicU64,
    /// Answers fetched at an epoch before this one are stale for every user ([`CallerCache::invalidate_all`]).
    all_stale_before: AtomicU64,
    /// Each user's last write epoch, and when it happened (older than the TTL is forgotten).
    last_write: RwLock<HashMap<String, (u64, Instant)>>,
    /// Identities from introspection or JWT validation, by token digest, with their own single flight.
    identities: Option<quick_cache::sync::Cache<TokenKey, Arc<IdentityEntry>>>,
    identity_in_flight: SingleFlight<Arc<IdentityEntry>, IdentifyError>,
}

impl std::fmt::Debug for CallerCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallerCache")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl CallerCache {
    /// How long an answer about a token is kept ([`CACHE_TTL`](crate::settings::names::CACHE_TTL)).
    pub fn ttl(&self) -> Duration {
        self.config.ttl
    }

    /// An empty cache of at most `config.capacity` answers.
    pub fn new(config: CacheConfig) -> Self {
        let capacity = usize::try_from(config.capacity)
            .unwrap_or(usize::MAX)
            .max(1);
        CallerCache {
            config,
            entries: (!config.ttl.is_zero()).then(|| quick_cache::sync::Cache::new(capacity)),
            in_flight: SingleFlight::new(),
            interner: Arc::default(),
            write_epoch: AtomicU64::new(0),
            all_stale_before: AtomicU64::new(0),
            last_write: RwLock::new(HashMap::new()),
            identities: (!config.ttl.is_zero()).then(|| quick_cache::sync::Cache::new(capacity)),
            identity_in_flight: SingleFlight::new(),
        }
    }

    /// The identity `resolve` finds for `token`, from memory when it can be. An identity lives at most the
    /// TTL and never past the token's `exp`; a refused token lives the negative TTL. Concurrent misses for one
    /// token share one `resolve`.
    pub async fn identity(
        &self,
        token: &CallerToken,
        resolve: impl FnOnce() -> BoxFuture<'static, Result<Resolution, IdentifyError>>,
    ) -> Result<Arc<Identity>, IdentifyError> {
        let Some(entries) = &self.identities else {
            return match resolve().await? {
                Resolution::Active(identity) if !expired(identity.expires_at) => Ok(identity),
                Resolution::Active(_) => Err(TokenError::Expired.into()),
                Resolution::Refused(refused) => Err(refused.into()),
            };
        };
        let key = token.digest();
        let fresh = |entry: &Arc<IdentityEntry>| Instant::now() < entry.expires_at;
        if let Some(entry) = entries.get(&key).filter(fresh) {
            return entry.answer.clone().map_err(Into::into);
        }
        let config = self.config;
        let result = self
            .identity_in_flight
            .run(
                key,
                || entries.get(&key).filter(fresh),
                || {
                    let resolving = resolve();
                    async move {
                        let now = Instant::now();
                        Ok(Arc::new(match resolving.await? {
                            Resolution::Active(identity) => IdentityEntry {
                                expires_at: now + lifetime_until(identity.expires_at, config.ttl),
                                answer: Ok(identity),
                            },
                            Resolution::Refused(refused) => IdentityEntry {
                                expires_at: now + config.negative_ttl,
                                answer: Err(refused),
                            },
                        }))
                    }
                    .boxed()
                },
                |entry| {
                    if fresh(entry) {
                        entries.insert(key, Arc::clone(entry));
                    }
                },
            )
            .await;
        let entry = result?;
        match &entry.answer {
            // A token that expired while resolving is not let through, even once.
            Ok(identity) if expired(identity.expires_at) => Err(TokenError::Expired.into()),
            answer => answer.clone().map_err(Into::into),
        }
    }

    /// What userinfo says about `token`, from memory when it can be.
    pub async fn userinfo(
        &self,
        zitadel: &Arc<Zitadel>,
        token: &CallerToken,
    ) -> Result<Arc<KnownCaller>, IdentifyError> {
        match self.cached_userinfo(token) {
            Some(answer) => answer,
            // Boxed: a lookup's future is large, and inline it would size (and be copied with) every
            // caller's future, answered from memory or not.
            None => Box::pin(self.fetch_userinfo(zitadel, token)).await,
        }
    }

    /// What userinfo said about `token`, when it is in memory and still good; `None` means asking ZITADEL
    /// ([`CallerCache::fetch_userinfo`]).
    pub fn cached_userinfo(
        &self,
        token: &CallerToken,
    ) -> Option<Result<Arc<KnownCaller>, IdentifyError>> {
        self.remembered(self.entries.as_ref()?, &token.digest())
    }

    /// Asks userinfo about `token` (joining a lookup under way for it) and remembers the answer: for a
    /// token [`CallerCache::cached_userinfo`] found nothing for.
    pub async fn fetch_userinfo(
        &self,
        zitadel: &Arc<Zitadel>,
        token: &CallerToken,
    ) -> Result<Arc<KnownCaller>, IdentifyError> {
        // ZITADEL's userinfo refuses an ID token; refused here first (before any await, so a read started
        // beside this one is never sent), saying why. Only misses pay for reading the token.
        if let Err(kind) = super::kind::unverified_kind(token) {
            return Err(TokenError::NotAccessToken(kind).into());
        }
        let Some(entries) = &self.entries else {
            return uncached(zitadel, token).await;
        };
        let key = token.digest();
        // A second round only when the answer predates a write that finished while it was fetched.
        for _ in 0..2 {
            let entry = self.look_up(entries, key, zitadel, token).await?;
            if !self.is_stale(&entry) {
                return entry.into_result();
            }
        }
        uncached(zitadel, token).await
    }

    /// The entry for `key` when there is one still good: not expired, not older than a write to its user.
    fn fresh_entry(&self, entries: &Entries, key: &TokenKey) -> Option<Entry> {
        entries
            .get(key)
            .filter(|entry| Instant::now() < entry.expires_at && !self.is_stale(entry))
    }

    fn remembered(
        &self,
        entries: &Entries,
        key: &TokenKey,
    ) -> Option<Result<Arc<KnownCaller>, IdentifyError>> {
        match self.fresh_entry(entries, key) {
            Some(entry) => {
                crate::metrics::cache_lookup(match entry.answer {
                    Answer::Known(_) | Answer::Anonymous => crate::metrics::CacheResult::Hit,
                    Answer::Rejected(_) => crate::metrics::CacheResult::NegativeHit,
                });
                Some(entry.into_result())
            }
            _ => {
                crate::metrics::cache_lookup(crate::metrics::CacheResult::Miss);
                // Only a miss adds an entry, so the size is current enough as of the last one.
                crate::metrics::cache_entries(entries.len());
                None
            }
        }
    }

    /// Whether ZITADEL vouched for `token` recently (a userinfo answer naming a user, or an identity, still in
    /// memory): its caller counts as identified for the request budget toward ZITADEL. Records no metrics.
    pub fn knows(&self, token: &CallerToken) -> bool {
        let key = token.digest();
        let now = Instant::now();
        let by_userinfo = self.entries.as_ref().is_some_and(|entries| {
            entries.get(&key).is_some_and(|entry| {
                now < entry.expires_at && matches!(entry.answer, Answer::Known(_))
            })
        });
        by_userinfo
            || self.identities.as_ref().is_some_and(|identities| {
                identities
                    .get(&key)
                    .is_some_and(|entry| now < entry.expires_at && entry.answer.is_ok())
            })
    }

    /// Marks `user_id` as changed: answers fetched before now are not served again.
    pub fn invalidate_user(&self, user_id: &str) {
        if self.entries.is_none() {
            return;
        }
        let mut last_write = self
            .last_write
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let epoch = self.write_epoch.fetch_add(1, Ordering::SeqCst) + 1;
        let now = Instant::now();
        // Entries older than the longest entry life can no longer matter; forget them as writes come in.
        let keep_for = self.config.ttl.max(self.config.negative_ttl);
        if last_write.len() > 1024 {
            last_write.retain(|_, (_, at)| now.duration_since(*at) <= keep_for);
        }
        last_write.insert(user_id.to_owned(), (epoch, now));
    }

    /// Marks every cached answer stale: for when this replica may have missed other replicas' changes.
    pub fn invalidate_all(&self) {
        if self.entries.is_none() {
            return;
        }
        let epoch = self.write_epoch.fetch_add(1, Ordering::SeqCst) + 1;
        self.all_stale_before.fetch_max(epoch, Ordering::SeqCst);
    }

    fn is_stale(&self, entry: &Entry) -> bool {
        // Fast path: no write at all since the lookup started.
        if entry.epoch == self.write_epoch.load(Ordering::SeqCst) {
            return false;
        }
        let Answer::Known(caller) = &entry.answer else {
            return false;
        };
        if entry.epoch < self.all_stale_before.load(Ordering::SeqCst) {
            return true;
        }
        let sub = caller.identity.sub.as_str();
        let last_write = self
            .last_write
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        last_write
            .get(sub)
            .is_some_and(|(written, _)| *written > entry.epoch)
    }

    /// Joins the lookup under way for `key`, or starts one; the answer is in `entries` before the lookup
    /// is retired, so concurrent requests for one token cause one upstream call.
    async fn look_up(
        &self,
        entries: &Entries,
        key: TokenKey,
        zitadel: &Arc<Zitadel>,
        token: &CallerToken,
    ) -> Result<Entry, UpstreamError> {
        self.in_flight
            .run(
                key,
                || self.fresh_entry(entries, &key),
                || {
                    let epoch = self.write_epoch.load(Ordering::SeqCst);
                    // Shared by requests with different deadlines: each bounds its own wait instead.
                    usermeta_zitadel::resilience::detached(fetch(
                        Arc::clone(zitadel),
                        token.clone(),
                        epoch,
                        self.config,
                        Arc::clone(&self.interner),
                    ))
                    .boxed()
                },
                |entry| {
                    if !self.is_stale(entry) {
                        entries.insert(key, entry.clone());
                    }
                },
            )
            .await
    }
}

async fn uncached(
    zitadel: &Zitadel,
    token: &CallerToken,
) -> Result<Arc<KnownCaller>, IdentifyError> {
    Ok(Arc::new(zitadel.userinfo(token).await?.try_into()?))
}

/// One upstream lookup, as a cache entry. A rejection of the token is an entry too; other failures (ZITADEL
/// down, rate-limited) are shared with the waiting requests but not remembered.
async fn fetch(
    zitadel: Arc<Zitadel>,
    token: CallerToken,
    epoch: u64,
    config: CacheConfig,
    interner: Arc<Mutex<Interner>>,
) -> Result<Entry, UpstreamError> {
    let now = Instant::now();
    let answer = match zitadel.userinfo(&token).await {
        Ok(info) => {
            let answer = match KnownCaller::try_from(info) {
                Ok(caller) => Answer::Known(
                    interner
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .intern(caller),
                ),
                Err(_) => Answer::Anonymous,
            };
            (answer, lifetime_for(&token, config.ttl))
        }
        Err(UpstreamError::Rejected {
            http_status: 401,
            rejection,
            ..
        }) => (
            Answer::Rejected(Box::new((401, rejection))),
            config.negative_ttl,
        ),
        Err(other) => return Err(other),
    };
    let (answer, lifetime) = answer;
    Ok(Entry {
        answer,
        epoch,
        expires_at: now + lifetime,
    })
}

/// The TTL, shortened to the token's own expiry when it claims one.
fn lifetime_for(token: &CallerToken, ttl: Duration) -> Duration {
    lifetime_until(token.claimed_expiry(), ttl)
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// The TTL, shortened to an expiry (seconds since the epoch) when there is one.
fn lifetime_until(exp: Option<u64>, ttl: Duration) -> Duration {
    match exp {
        Some(exp) => Duration::from_secs(exp.saturating_sub(unix_now())).min(ttl),
        None => ttl,
    }
}

fn expired(exp: Option<u64>) -> bool {
    exp.is_some_and(|exp| exp <= unix_now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use usermeta_zitadel::{metadata::MetadataItem, userinfo::UserInfo};

    fn answer(sub: &str, value: &[u8]) -> KnownCaller {
        KnownCaller::try_from(UserInfo {
            sub: Some(sub.to_owned()),
            org_id: Some("org".to_owned()),
            metadata: vec![MetadataItem {
                key: "ContractNumber".to_owned(),
                value: Some(value.to_vec()),
                create_time: None,
                update_time: None,
            }],
            roles: Default::default(),
        })
        .unwrap()
    }

    /// A lookup whose only waiter is cut off (its deadline) leaves the map and is dropped: an unpolled one
    /// would hold its upstream call for ever (a circuit breaker's probe stuck half-open, found by the soak).
    #[tokio::test]
    async fn a_lookup_whose_waiters_all_left_is_retired_and_dropped() {
        struct Dropped(Arc<std::sync::atomic::AtomicBool>);
        impl Drop for Dropped {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }
        let flight: SingleFlight<u32, String> = SingleFlight::new();
        let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let guard = Dropped(Arc::clone(&dropped));
        let waiting = flight.run(
            [7; 32],
            || None,
            move || {
                Box::pin(async move {
                    let _guard = guard;
                    std::future::pending::<Result<u32, String>>().await
                })
            },
            |_| {},
        );
        assert!(
            tokio::time::timeout(Duration::from_millis(20), waiting)
                .await
                .is_err()
        );
        assert!(
            flight.lock().is_empty(),
            "the abandoned lookup left the map"
        );
        assert!(dropped.load(Ordering::SeqCst), "and its call was dropped");
        // The next request for the token starts afresh.
        let answer = flight
            .run([7; 32], || None, || Box::pin(async { Ok(1) }), |_| {})
            .await;
        assert_eq!(answer, Ok(1));
    }

    /// A request that missed the cache just before a finished lookup's answer was remembered comes to
    /// `fetch_userinfo` after that lookup has left the in-flight map: it must find the answer, not ask again.
    #[tokio::test]
    async fn a_miss_that_raced_a_finished_lookup_finds_its_answer() {
        let standin = zitadel_standin::StandIn::start().await.unwrap();
        let org = standin.create_org("Acme");
        let alice = standin.create_user(&org, "alice");
        let token = standin.issue_token(&alice, &["openid"]);
        let zitadel = Arc::new(
            Zitadel::new(usermeta_zitadel::ZitadelConfig::new(
                standin.url().parse().unwrap(),
                usermeta_zitadel::ServiceCredential::Pat("pat".into()),
            ))
            .unwrap(),
        );
        let token = CallerToken::from_authorization(format!("Bearer {token}").as_bytes()).unwrap();
        let cache = CallerCache::new(CacheConfig::default());

        let first = cache.fetch_userinfo(&zitadel, &token).await.unwrap();
        assert!(cache.in_flight.lock().is_empty());
        let raced = cache.fetch_userinfo(&zitadel, &token).await.unwrap();
        assert!(Arc::ptr_eq(&first, &raced));
        assert_eq!(standin.userinfo_requests(), 1);
        assert_eq!(raced.identity.sub, alice);
    }

    #[test]
    fn identical_answers_for_one_user_are_shared_and_changed_ones_are_not() {
        let mut interner = Interner::default();
        let first = interner.intern(answer("u1", b"1234"));
        let same = interner.intern(answer("u1", b"1234"));
        assert!(Arc::ptr_eq(&first, &same));
        let changed = interner.intern(answer("u1", b"5678"));
        assert!(!Arc::ptr_eq(&first, &changed));
        assert_eq!(
            changed.metadata.get("ContractNumber"),
            Some(Some(&b"5678"[..]))
        );
        let other_user = interner.intern(answer("u2", b"1234"));
        assert!(!Arc::ptr_eq(&first, &other_user));
        assert_eq!(other_user.identity.sub, "u2");
    }

    #[test]
    fn an_answer_naming_no_user_identifies_no_one() {
        let anonymous = UserInfo {
            sub: None,
            org_id: Some("org".to_owned()),
            metadata: Vec::new(),
            roles: Default::default(),
        };
        assert_eq!(KnownCaller::try_from(anonymous), Err(TokenError::NoSubject));
    }

    #[test]
    fn users_whose_answers_left_the_cache_are_swept() {
        let mut interner = Interner::default();
        let kept = interner.intern(answer("kept", b"1"));
        for i in 0..Interner::MIN_SWEEP * 3 {
            drop(interner.intern(answer(&format!("gone-{i}"), b"1")));
        }
        assert!(
            interner.by_user.len() <= Interner::MIN_SWEEP,
            "{} users remembered",
            interner.by_user.len()
        );
        assert!(Arc::ptr_eq(&kept, &interner.intern(answer("kept", b"1"))));
    }
}
