//! What this replica remembers of organisations' metadata: each organisation's whole listing, read once and
//! reused for [`OrgCacheConfig::ttl`], so ListOrganizationMetadata and Envoy's Check (routing on the caller's
//! organisation) are answered from memory when warm.
//!
//! - Bounded ([`OrgCacheConfig::capacity`] organisations; `quick_cache`'s S3-FIFO evicts the least useful).
//! - Concurrent misses for one organisation share one read of ZITADEL and its outcome (single flight);
//!   failures are not remembered.
//! - [`OrgCache::invalidate`] drops an organisation at once: a write through this replica, one through another
//!   (the Redis bus carries organisation ids), or ZITADEL's `org.metadata.*` events. A read that was under way
//!   when its organisation changed answers its own caller but is not kept, so nothing read before a change
//!   outlives it.
//!
//! Its own module beside the caller cache (tokens) and any cache of users' listings: one interface, `get`,
//! `load` and `invalidate`, keyed by organisation id.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::{
    FutureExt,
    future::{BoxFuture, Shared},
};

use usermeta_zitadel::{UpstreamError, metadata::MetadataItem};

/// How the organisation cache behaves.
#[derive(Debug, Clone, Copy)]
pub struct OrgCacheConfig {
    /// Longest life of a remembered listing; zero turns the cache off (every read asks ZITADEL).
    pub ttl: Duration,
    /// Most organisations remembered at once.
    pub capacity: u64,
}

impl Default for OrgCacheConfig {
    fn default() -> Self {
        OrgCacheConfig {
            ttl: Duration::from_secs(30),
            capacity: 10_000,
        }
    }
}

/// An organisation's metadata as ZITADEL listed it, every key, in ZITADEL's order.
pub type OrgMetadata = Arc<Vec<MetadataItem>>;

type Load = Shared<BoxFuture<'static, Result<OrgMetadata, UpstreamError>>>;

#[derive(Clone)]
struct Entry {
    metadata: OrgMetadata,
    at: Instant,
}

/// See the module documentation. Cheap to share behind an `Arc`.
pub struct OrgCache {
    config: OrgCacheConfig,
    entries: Option<quick_cache::sync::Cache<String, Entry>>,
    in_flight: Mutex<HashMap<String, Load>>,
    /// Bumped by every invalidation: a read that began before one is not kept.
    generation: AtomicU64,
}

impl std::fmt::Debug for OrgCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OrgCache")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl OrgCache {
    /// An empty cache.
    pub fn new(config: OrgCacheConfig) -> Self {
        let capacity = usize::try_from(config.capacity.max(1)).unwrap_or(usize::MAX);
        OrgCache {
            config,
            entries: (!config.ttl.is_zero()).then(|| quick_cache::sync::Cache::new(capacity)),
            in_flight: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
        }
    }

    /// A cache that remembers nothing (tests, tools).
    pub fn disabled() -> Self {
        Self::new(OrgCacheConfig {
            ttl: Duration::ZERO,
            capacity: 1,
        })
    }

    /// Whether listings are remembered at all.
    pub fn enabled(&self) -> bool {
        self.entries.is_some()
    }

    /// The organisation's metadata while it is fresh in memory; never asks ZITADEL.
    pub fn get(&self, org_id: &str) -> Option<OrgMetadata> {
        let entry = self.entries.as_ref()?.get(org_id)?;
        (entry.at.elapsed() < self.config.ttl).then_some(entry.metadata)
    }

    /// The organisation's metadata: from memory while fresh, else read with `read` (one read for all who ask
    /// at once) and remembered unless the organisation changed meanwhile.
    pub async fn load<F>(&self, org_id: &str, read: F) -> Result<OrgMetadata, UpstreamError>
    where
        F: std::future::Future<Output = Result<Vec<MetadataItem>, UpstreamError>> + Send + 'static,
    {
        if let Some(metadata) = self.get(org_id) {
            return Ok(metadata);
        }
        let Some(entries) = &self.entries else {
            return read.await.map(Arc::new);
        };
        let generation = self.generation.load(Ordering::Acquire);
        let load = {
            let mut in_flight = self
                .in_flight
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            in_flight
                .entry(org_id.to_owned())
                .or_insert_with(|| read.map(|result| result.map(Arc::new)).boxed().shared())
                .clone()
        };
        let result = load.await;
        {
            let mut in_flight = self
                .in_flight
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            in_flight.remove(org_id);
        }
        if let Ok(metadata) = &result
            && self.generation.load(Ordering::Acquire) == generation
        {
            entries.insert(
                org_id.to_owned(),
                Entry {
                    metadata: Arc::clone(metadata),
                    at: Instant::now(),
                },
            );
        }
        result
    }

    /// Forgets every organisation (news may have been missed, e.g. while the bus was down).
    pub fn invalidate_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        if let Some(entries) = &self.entries {
            entries.clear();
        }
    }

    /// Forgets the organisation (and keeps any read under way from being remembered).
    pub fn invalidate(&self, org_id: &str) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(org_id);
        if let Some(entries) = &self.entries {
            entries.remove(org_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn item(key: &str) -> MetadataItem {
        MetadataItem {
            key: key.to_owned(),
            value: Some(b"v".to_vec()),
            create_time: None,
            update_time: None,
        }
    }

    #[tokio::test]
    async fn remembers_until_invalidated_and_reads_once_for_concurrent_misses() {
        let cache = Arc::new(OrgCache::new(OrgCacheConfig::default()));
        let reads = Arc::new(AtomicUsize::new(0));
        let read = |reads: Arc<AtomicUsize>| async move {
            reads.fetch_add(1, Ordering::SeqCst);
            tokio::task::yield_now().await;
            Ok(vec![item("plan")])
        };
        let (a, b) = tokio::join!(
            cache.load("o1", read(Arc::clone(&reads))),
            cache.load("o1", read(Arc::clone(&reads)))
        );
        assert_eq!(a.unwrap()[0].key, "plan");
        assert_eq!(b.unwrap()[0].key, "plan");
        assert_eq!(reads.load(Ordering::SeqCst), 1, "one read for both");
        assert!(cache.get("o1").is_some());
        cache.load("o1", read(Arc::clone(&reads))).await.unwrap();
        assert_eq!(reads.load(Ordering::SeqCst), 1, "answered from memory");
        cache.invalidate("o1");
        assert!(cache.get("o1").is_none());
        cache.load("o1", read(Arc::clone(&reads))).await.unwrap();
        assert_eq!(reads.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_read_overtaken_by_a_change_is_not_kept() {
        let cache = Arc::new(OrgCache::new(OrgCacheConfig::default()));
        let (started, wait_started) = tokio::sync::oneshot::channel();
        let (release, released) = tokio::sync::oneshot::channel::<()>();
        let loading = {
            let cache = Arc::clone(&cache);
            tokio::spawn(async move {
                cache
                    .load("o1", async move {
                        let _ = started.send(());
                        let _ = released.await;
                        Ok(vec![item("old")])
                    })
                    .await
            })
        };
        wait_started.await.unwrap();
        cache.invalidate("o1");
        release.send(()).unwrap();
        assert_eq!(loading.await.unwrap().unwrap()[0].key, "old");
        assert!(
            cache.get("o1").is_none(),
            "read before the change, not kept"
        );
    }

    #[tokio::test]
    async fn failures_are_not_remembered_and_zero_ttl_remembers_nothing() {
        let cache = OrgCache::new(OrgCacheConfig::default());
        let failed = cache
            .load("o1", async {
                Err(UpstreamError::BadResponse {
                    endpoint: usermeta_zitadel::Endpoint::OrgV2ListMetadata,
                    reason: "x".into(),
                })
            })
            .await;
        assert!(failed.is_err());
        assert!(cache.get("o1").is_none());
        let off = OrgCache::disabled();
        off.load("o1", async { Ok(vec![item("k")]) }).await.unwrap();
        assert!(off.get("o1").is_none());
    }
}
