//! Remembers what ZITADEL said about callers' tokens, so repeated lookups are answered from memory and
//! concurrent identical lookups send ZITADEL one request.
//!
//! - Keyed by a SHA-256 digest of the token, never the token itself.
//! - A userinfo answer lives at most the configured TTL, and never past the `exp` a JWT token claims.
//! - A token ZITADEL rejected is remembered briefly (the negative TTL), so a retrying client with a dead token
//!   does not turn into a stream of upstream calls.
//! - Concurrent misses for one token share a single upstream call (moka's `try_get_with`).
//! - A write through usermeta marks its target user as changed; answers fetched before that are refetched, so
//!   a client that writes and then reads through the same instance sees its write.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use moka::{Expiry, future::Cache};

use crate::zitadel::{
    CallerToken, Endpoint, Rejection, UpstreamError, Zitadel, userinfo::UserInfo,
};

/// How the caller cache behaves.
#[derive(Debug, Clone, Copy)]
pub struct CacheConfig {
    /// Longest life of a remembered userinfo answer; zero turns the cache off.
    pub ttl: Duration,
    /// Life of a remembered rejection.
    pub negative_ttl: Duration,
    /// Most tokens remembered at once; the least recently used go first.
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

/// What ZITADEL said about one token.
#[derive(Debug)]
enum Answer {
    Known(Arc<UserInfo>),
    Rejected {
        http_status: u16,
        rejection: Rejection,
    },
}

#[derive(Debug)]
struct Entry {
    answer: Answer,
    /// The write epoch when the lookup started; older than the user's last write means stale.
    epoch: u64,
    lifetime: Duration,
}

/// Per-entry lifetimes: each entry carries its own.
struct EntryLifetime;

impl Expiry<[u8; 32], Arc<Entry>> for EntryLifetime {
    fn expire_after_create(
        &self,
        _key: &[u8; 32],
        entry: &Arc<Entry>,
        _created_at: Instant,
    ) -> Option<Duration> {
        Some(entry.lifetime)
    }
}

/// The caller cache. Cheap to share behind an `Arc`.
pub struct CallerCache {
    config: CacheConfig,
    entries: Option<Cache<[u8; 32], Arc<Entry>>>,
    /// Counts writes through usermeta; each write takes the next epoch.
    write_epoch: AtomicU64,
    /// The epoch of each user's last write, kept as long as an entry fetched before it could live.
    last_write: moka::sync::Cache<String, u64>,
}

impl std::fmt::Debug for CallerCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallerCache")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl CallerCache {
    pub fn new(config: CacheConfig) -> Self {
        let entries = (!config.ttl.is_zero()).then(|| {
            Cache::builder()
                .max_capacity(config.capacity)
                .expire_after(EntryLifetime)
                .build()
        });
        let keep_writes_for = config.ttl.max(config.negative_ttl);
        CallerCache {
            config,
            entries,
            write_epoch: AtomicU64::new(0),
            last_write: moka::sync::Cache::builder()
                .max_capacity(config.capacity.max(1))
                .time_to_live(keep_writes_for.max(Duration::from_millis(1)))
                .build(),
        }
    }

    /// What userinfo says about `token`, from memory when it can be.
    pub async fn userinfo(
        &self,
        zitadel: &Zitadel,
        token: &CallerToken,
    ) -> Result<Arc<UserInfo>, UpstreamError> {
        let Some(entries) = &self.entries else {
            return zitadel.userinfo(token).await.map(Arc::new);
        };
        let key = token.digest();
        // A second round only when the first found an answer older than a write to its user.
        for _ in 0..2 {
            let entry = entries
                .try_get_with(key, self.lookup(zitadel, token))
                .await
                .map_err(|shared| (*shared).clone())?;
            match &entry.answer {
                Answer::Known(info) if self.is_stale(info, entry.epoch) => {
                    entries.invalidate(&key).await
                }
                Answer::Known(info) => return Ok(Arc::clone(info)),
                Answer::Rejected {
                    http_status,
                    rejection,
                } => {
                    return Err(UpstreamError::Rejected {
                        endpoint: Endpoint::Userinfo,
                        http_status: *http_status,
                        rejection: rejection.clone(),
                    });
                }
            }
        }
        zitadel.userinfo(token).await.map(Arc::new)
    }

    /// Marks `user_id` as changed: answers fetched before now are not served again.
    pub fn invalidate_user(&self, user_id: &str) {
        if self.entries.is_some() {
            let epoch = self.write_epoch.fetch_add(1, Ordering::SeqCst) + 1;
            self.last_write.insert(user_id.to_owned(), epoch);
        }
    }

    fn is_stale(&self, info: &UserInfo, fetched_at_epoch: u64) -> bool {
        let Some(sub) = &info.sub else { return false };
        self.last_write
            .get(sub)
            .is_some_and(|written| written > fetched_at_epoch)
    }

    /// One upstream lookup, turned into a cache entry. Rejections of the token are entries too; other
    /// failures (ZITADEL down, rate-limited) are not remembered.
    async fn lookup(
        &self,
        zitadel: &Zitadel,
        token: &CallerToken,
    ) -> Result<Arc<Entry>, UpstreamError> {
        let epoch = self.write_epoch.load(Ordering::SeqCst);
        match zitadel.userinfo(token).await {
            Ok(info) => Ok(Arc::new(Entry {
                lifetime: self.lifetime_for(token),
                answer: Answer::Known(Arc::new(info)),
                epoch,
            })),
            Err(UpstreamError::Rejected {
                http_status: 401,
                rejection,
                ..
            }) => Ok(Arc::new(Entry {
                lifetime: self.config.negative_ttl,
                answer: Answer::Rejected {
                    http_status: 401,
                    rejection,
                },
                epoch,
            })),
            Err(other) => Err(other),
        }
    }

    /// The TTL, shortened to the token's own expiry when it claims one.
    fn lifetime_for(&self, token: &CallerToken) -> Duration {
        let Some(exp) = token.claimed_expiry() else {
            return self.config.ttl;
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        Duration::from_secs(exp.saturating_sub(now)).min(self.config.ttl)
    }
}
