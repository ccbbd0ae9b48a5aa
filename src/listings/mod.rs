//! Any user's metadata from memory: the whole listing ZITADEL's management API gave for a user, read with the
//! service credential, remembered per user and organisation scope for the cache TTL
//! ([`CACHE_TTL`](crate::settings::names::CACHE_TTL)), so an admin's repeated reads, a BatchGetMetadata of many
//! users and FindUsersByMetadata's checks of the users found cost ZITADEL nothing while warm.
//!
//! - What is cached is ZITADEL's listing, never a decision: every request is decided by the policy on it, and
//!   filtered and paged here as ZITADEL would.
//! - A listing fetched under one organisation scope never answers a request scoped to another: the scope is
//!   part of the key (`None`: the service user's own organisation, as v1 acts without `x-zitadel-orgid`).
//! - Invalidated as the caller cache is ([`crate::fleet::Changes`]): this replica's writes at once, the other
//!   replicas' through Redis, ZITADEL's events through the webhook; a change drops the user's listings under
//!   every scope. A read that started before a write returned may finish with what it found; a read that
//!   starts after never gets a listing fetched before it (each user's changes move a generation on, and a
//!   listing or a read under way of an older generation is not used).
//! - After a change, v2's search may lag behind: this replica lays its own writes over it (the client's
//!   read-your-writes), and a listing fetched within [`SETTLE`] of a change is kept only until then, so a lag
//!   seen once is not served for the whole TTL.
//! - Concurrent misses for one user and scope share one read (single flight).
//! - Bounded by bytes ([`METADATA_CACHE_BYTES`](crate::settings::names::METADATA_CACHE_BYTES)); metrics count
//!   hits, misses and the listings held.
//!
//! Calls that need ZITADEL's current word (a conditional write's read under the user's write lock) call the
//! client directly, never this cache.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::{
        Arc, Mutex, PoisonError, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::{
    FutureExt as _,
    future::{BoxFuture, Shared},
};
use usermeta_zitadel::{
    UpstreamError, Zitadel,
    management::Target,
    metadata::{MetadataItem, PageRequest},
};

/// How long after a change to a user a fresh listing may still lag behind it (v2's search is eventually
/// consistent): listings fetched meanwhile are kept only until then.
pub const SETTLE: Duration = Duration::from_secs(5);

/// The cache's default bound: 64 MiB.
pub const DEFAULT_MAX_BYTES: u64 = 64 * 1024 * 1024;

/// Page size for reading a whole listing: ZITADEL's default and usual maximum.
const PAGE: u32 = 1000;

/// A whole listing, shared by every request that reads it.
pub type Listing = Arc<[MetadataItem]>;

/// Where a listing was read: a user under an organisation scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ListingKey {
    user_id: String,
    org_id: Option<String>,
}

/// A [`ListingKey`] borrowed from a request, to look up without allocating (hashes as the owned key does).
#[derive(Hash)]
struct KeyRef<'a> {
    user_id: &'a str,
    org_id: Option<&'a str>,
}

impl quick_cache::Equivalent<ListingKey> for KeyRef<'_> {
    fn equivalent(&self, key: &ListingKey) -> bool {
        self.user_id == key.user_id && self.org_id == key.org_id.as_deref()
    }
}

#[derive(Debug, Clone)]
struct Entry {
    items: Listing,
    /// The user's generation when the read started.
    generation: u64,
    expires_at: Instant,
    /// Bytes the entry holds, roughly (its weight).
    bytes: u64,
}

#[derive(Debug, Clone, Copy)]
struct ByBytes;

impl quick_cache::Weighter<ListingKey, Entry> for ByBytes {
    fn weight(&self, key: &ListingKey, entry: &Entry) -> u64 {
        (key.user_id.len() + key.org_id.as_ref().map_or(0, String::len)) as u64 + entry.bytes
    }
}

type Entries = quick_cache::sync::Cache<ListingKey, Entry, ByBytes>;
type Read = Shared<BoxFuture<'static, Result<Entry, UpstreamError>>>;

/// Each changed user's generation and when it last moved; forgotten once older than the TTL and [`SETTLE`]
/// (every listing fetched before then has expired).
#[derive(Debug, Default)]
struct Changed {
    users: HashMap<String, (u64, Instant)>,
    /// Size at which old changes are swept out.
    sweep_at: usize,
}

/// The cache of users' listings. Cheap to share behind an `Arc`.
pub struct ListingCache {
    ttl: Duration,
    entries: Option<Entries>,
    /// Reads under way, by key and the user's generation when they started.
    under_way: Mutex<HashMap<(ListingKey, u64), Read>>,
    /// Moves on with every change; a user's generation is the value at their last change.
    clock: AtomicU64,
    /// Listings of an older generation than this are stale for every user ([`ListingCache::invalidate_all`]).
    all_stale_before: AtomicU64,
    changed: RwLock<Changed>,
}

impl std::fmt::Debug for ListingCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListingCache")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl ListingCache {
    /// Listings kept for `ttl` (zero: none), at most `max_bytes` of them (zero: none).
    pub fn new(ttl: Duration, max_bytes: u64) -> ListingCache {
        let on = !ttl.is_zero() && max_bytes > 0;
        ListingCache {
            ttl,
            // About 1 KiB a listing, for the table's first size; the weight bounds it.
            entries: on.then(|| {
                let estimated = usize::try_from(max_bytes / 1024)
                    .unwrap_or(usize::MAX)
                    .clamp(16, 1 << 20);
                quick_cache::sync::Cache::with_weighter(estimated, max_bytes, ByBytes)
            }),
            under_way: Mutex::new(HashMap::new()),
            clock: AtomicU64::new(1),
            all_stale_before: AtomicU64::new(0),
            changed: RwLock::new(Changed {
                users: HashMap::new(),
                sweep_at: 1024,
            }),
        }
    }

    /// No cache: every read asks ZITADEL.
    pub fn off() -> ListingCache {
        ListingCache::new(Duration::ZERO, 0)
    }

    /// The user's generation: the clock at their last change, 0 when none is remembered.
    fn generation(&self, user_id: &str) -> u64 {
        let changed = self.changed.read().unwrap_or_else(PoisonError::into_inner);
        changed
            .users
            .get(user_id)
            .map_or(0, |(generation, _)| *generation)
    }

    /// When the user last changed, if within [`SETTLE`].
    fn settling_until(&self, user_id: &str, now: Instant) -> Option<Instant> {
        let changed = self.changed.read().unwrap_or_else(PoisonError::into_inner);
        let (_, at) = changed.users.get(user_id)?;
        let until = *at + SETTLE;
        (now < until).then_some(until)
    }

    fn fresh(&self, entry: &Entry, user_id: &str, now: Instant) -> bool {
        now < entry.expires_at
            && entry.generation >= self.all_stale_before.load(Ordering::Acquire)
            && entry.generation >= self.generation(user_id)
    }

    /// The whole listing of `target` (a user under the organisation scope ZITADEL acts in), from memory while
    /// fresh, else from ZITADEL's management API (one read shared by concurrent misses).
    pub async fn listing(
        &self,
        zitadel: &Arc<Zitadel>,
        target: Target<'_>,
    ) -> Result<Listing, UpstreamError> {
        let Some(entries) = &self.entries else {
            return read_whole(zitadel, target).await.map(|(items, _)| items);
        };
        let now = Instant::now();
        let lookup = KeyRef {
            user_id: target.user_id,
            org_id: target.org_id,
        };
        if let Some(entry) = entries.get(&lookup)
            && self.fresh(&entry, target.user_id, now)
        {
            crate::metrics::metadata_cache_lookup(true);
            return Ok(entry.items);
        }
        crate::metrics::metadata_cache_lookup(false);
        crate::metrics::metadata_cache_entries(entries.len());
        let key = ListingKey {
            user_id: target.user_id.to_owned(),
            org_id: target.org_id.map(str::to_owned),
        };
        // Boxed: a read's future is large, and inline it would size every caller's future, hit or miss.
        Box::pin(self.read_shared(entries, zitadel, key)).await
    }

    /// Joins the read under way for `key` at the user's current generation, or starts one; the first waiter
    /// back keeps its answer when no change came meanwhile.
    async fn read_shared(
        &self,
        entries: &Entries,
        zitadel: &Arc<Zitadel>,
        key: ListingKey,
    ) -> Result<Listing, UpstreamError> {
        let generation = self.clock.load(Ordering::Acquire);
        let user_generation = self.generation(&key.user_id);
        let flight = (key, user_generation);
        let read = {
            let mut under_way = self.reads();
            match under_way.get(&flight) {
                Some(read) => read.clone(),
                None => {
                    let zitadel = Arc::clone(zitadel);
                    let (user_id, org_id) = (flight.0.user_id.clone(), flight.0.org_id.clone());
                    let ttl = self.ttl;
                    let read = async move {
                        let target = Target {
                            user_id: &user_id,
                            org_id: org_id.as_deref(),
                        };
                        let (items, bytes) = read_whole(&zitadel, target).await?;
                        Ok(Entry {
                            items,
                            generation,
                            expires_at: Instant::now() + ttl,
                            bytes,
                        })
                    }
                    .boxed()
                    .shared();
                    under_way.insert(flight.clone(), read.clone());
                    read
                }
            }
        };
        let mut retire = Retire {
            cache: self,
            flight: Some((flight, read.clone())),
        };
        let result = read.clone().await;
        let (flight, _) = retire.flight.take().expect("set above");
        let mut under_way = self.reads();
        if under_way
            .get(&flight)
            .is_some_and(|current| current.ptr_eq(&read))
        {
            under_way.remove(&flight);
            if let Ok(entry) = &result {
                self.remember(entries, flight.0, entry.clone());
            }
        }
        drop(under_way);
        result.map(|entry| entry.items)
    }

    /// Keeps `entry` unless a change to its user came since its read started; within [`SETTLE`] of a change,
    /// only until then.
    fn remember(&self, entries: &Entries, key: ListingKey, mut entry: Entry) {
        if entry.generation < self.generation(&key.user_id)
            || entry.generation < self.all_stale_before.load(Ordering::Acquire)
        {
            return;
        }
        if let Some(until) = self.settling_until(&key.user_id, Instant::now()) {
            entry.expires_at = entry.expires_at.min(until);
        }
        entries.insert(key, entry);
    }

    fn reads(&self) -> std::sync::MutexGuard<'_, HashMap<(ListingKey, u64), Read>> {
        self.under_way
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// `user_id`'s metadata changed (or may have): their listings under every scope, and reads under way,
    /// are not used again.
    pub fn invalidate_user(&self, user_id: &str) {
        if self.entries.is_none() {
            return;
        }
        let generation = self.clock.fetch_add(1, Ordering::AcqRel) + 1;
        let now = Instant::now();
        let mut changed = self.changed.write().unwrap_or_else(PoisonError::into_inner);
        changed.users.insert(user_id.to_owned(), (generation, now));
        if changed.users.len() >= changed.sweep_at {
            let forget_before = self.ttl.max(SETTLE);
            changed
                .users
                .retain(|_, (_, at)| now.saturating_duration_since(*at) < forget_before);
            changed.sweep_at = (changed.users.len() * 2).max(1024);
        }
    }

    /// Every listing is stale (news of changes may have been missed: Redis was away).
    pub fn invalidate_all(&self) {
        if let Some(entries) = &self.entries {
            let generation = self.clock.fetch_add(1, Ordering::AcqRel) + 1;
            self.all_stale_before.store(generation, Ordering::Release);
            entries.clear();
        }
    }
}

/// Retires a read from the map when its waiter is dropped before the answer came (its deadline): left there,
/// unpolled, it would hold its memory for ever. Other waiters keep their own handle and finish it.
struct Retire<'a> {
    cache: &'a ListingCache,
    flight: Option<((ListingKey, u64), Read)>,
}

impl Drop for Retire<'_> {
    fn drop(&mut self) {
        if let Some((flight, read)) = self.flight.take() {
            let mut under_way = self.cache.reads();
            if under_way
                .get(&flight)
                .is_some_and(|current| current.ptr_eq(&read))
            {
                under_way.remove(&flight);
            }
        }
    }
}

/// Reads every page of `target`'s listing; with its size in bytes, roughly.
async fn read_whole(
    zitadel: &Zitadel,
    target: Target<'_>,
) -> Result<(Listing, u64), UpstreamError> {
    let mut items: Vec<MetadataItem> = Vec::new();
    loop {
        let page = zitadel
            .list_user_metadata(
                target,
                None,
                PageRequest {
                    offset: items.len() as u64,
                    limit: PAGE,
                },
            )
            .await?;
        let done =
            page.items.is_empty() || items.len() as u64 + page.items.len() as u64 >= page.total;
        items.extend(page.items);
        if done {
            break;
        }
    }
    let bytes = items
        .iter()
        .map(|item| (item.key.len() + item.value.as_ref().map_or(0, Vec::len) + 96) as u64)
        .sum::<u64>()
        + 64;
    Ok((items.into(), bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(generation: u64) -> Entry {
        Entry {
            items: Vec::new().into(),
            generation,
            expires_at: Instant::now() + Duration::from_secs(30),
            bytes: 64,
        }
    }

    fn key(user_id: &str, org_id: Option<&str>) -> ListingKey {
        ListingKey {
            user_id: user_id.to_owned(),
            org_id: org_id.map(str::to_owned),
        }
    }

    #[test]
    fn a_change_drops_the_users_listings_under_every_scope_and_only_theirs() {
        let cache = ListingCache::new(Duration::from_secs(30), 1 << 20);
        let entries = cache.entries.as_ref().unwrap();
        let generation = cache.clock.load(Ordering::Acquire);
        for scope in [None, Some("o1"), Some("o2")] {
            cache.remember(entries, key("u1", scope), entry(generation));
        }
        cache.remember(entries, key("u2", Some("o1")), entry(generation));
        let fresh = |user_id: &str, org_id: Option<&str>| {
            entries
                .get(&KeyRef { user_id, org_id })
                .is_some_and(|entry| cache.fresh(&entry, user_id, Instant::now()))
        };
        assert!(fresh("u1", Some("o1")) && fresh("u1", None) && fresh("u2", Some("o1")));
        assert!(!fresh("u1", Some("o3")), "another scope is another listing");
        cache.invalidate_user("u1");
        assert!(!fresh("u1", None) && !fresh("u1", Some("o1")) && !fresh("u1", Some("o2")));
        assert!(fresh("u2", Some("o1")));
    }

    #[test]
    fn a_listing_read_before_a_change_is_not_kept_after_it() {
        let cache = ListingCache::new(Duration::from_secs(30), 1 << 20);
        let entries = cache.entries.as_ref().unwrap();
        let started = cache.clock.load(Ordering::Acquire);
        cache.invalidate_user("u1");
        cache.remember(entries, key("u1", None), entry(started));
        assert!(
            entries
                .get(&KeyRef {
                    user_id: "u1",
                    org_id: None
                })
                .is_none()
        );
        // Read after the change: kept, but only until the change has settled.
        let after = cache.clock.load(Ordering::Acquire);
        cache.remember(entries, key("u1", None), entry(after));
        let kept = entries
            .get(&KeyRef {
                user_id: "u1",
                org_id: None,
            })
            .unwrap();
        assert!(kept.expires_at <= Instant::now() + SETTLE);
    }

    #[test]
    fn invalidating_all_drops_everything() {
        let cache = ListingCache::new(Duration::from_secs(30), 1 << 20);
        let entries = cache.entries.as_ref().unwrap();
        let generation = cache.clock.load(Ordering::Acquire);
        cache.remember(entries, key("u1", None), entry(generation));
        cache.invalidate_all();
        cache.remember(entries, key("u2", None), entry(generation));
        assert_eq!(entries.len(), 0);
    }

    #[test]
    fn the_bytes_bound_the_cache() {
        let cache = ListingCache::new(Duration::from_secs(30), 10_000);
        let entries = cache.entries.as_ref().unwrap();
        let generation = cache.clock.load(Ordering::Acquire);
        for i in 0..1000 {
            cache.remember(entries, key(&format!("user{i}"), None), entry(generation));
        }
        assert!(entries.weight() <= 10_000, "{}", entries.weight());
    }
}
