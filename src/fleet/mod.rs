//! A fleet that agrees: replicas tell each other which users they changed, so a write through one replica is
//! not served stale by another for the rest of the cache TTL.
//!
//! [`Changes`] is where a replica's news of changed metadata meets: its own writes, the other replicas' and
//! ZITADEL's events ([`webhook`]); it drops cached answers and feeds the WatchMetadata streams.
//!
//! Over Redis pub/sub (`redis_bus.rs`): every replica publishes `{origin, seq, sent_ms, user_id, keys, kind,
//! time_ms}` on one channel after a write and drops the cached answers of users other replicas changed. Only
//! user ids and keys travel: never a token, a token digest or a value. Every message is sealed with an
//! HMAC-SHA256 tag under the fleet's [`BusKey`] and bounded (`bus_message.rs`): another client of Redis can
//! read them, but cannot forge, replay or inflate one. Besides, the webhook claims each accepted event's
//! signature in Redis (`SET NX EX`, under a name only key holders can compute), so an event replayed to
//! another replica is refused there too. The writing replica still invalidates its own cache synchronously;
//! Redis only carries the news to the others. While Redis is unreachable replicas keep serving (local
//! invalidation and the TTL bound staleness, as without Redis) and reconnect by themselves.
//!
//! [`WriteLocks`] (`write_lock.rs`) serialise one user's writes that read before they write (conditions, merge
//! patches): per replica, and across the fleet through a lock in Redis with an expiry, a fencing check and the
//! record of each key's last locked write.

mod bus_message;
mod changes;
mod feed;
mod redis_bus;
mod upstream_budget;
pub mod webhook;
mod write_lock;

pub use bus_message::{
    BUS_KEY_PURPOSE, BusKey, BusKeyError, FRESHNESS, MAX_KEY_CHARS, MAX_KEYS, MAX_MESSAGE_BYTES,
    MAX_USER_ID_CHARS,
};
pub use changes::{Caches, ChangeKind, Changes, MetadataChange};
pub use feed::{
    ChangedKey, Lag, MAX_STREAMED_VALUE_BYTES, Queued, STREAM_BUFFER_CHANGES, StreamLimit,
    Subscription, WatchLimits, Write,
};
pub use redis_bus::{RedisConfig, RedisSetupError, SharedInvalidation};
pub use upstream_budget::{FleetBudgetConfig, RedisBudget};
pub use write_lock::{
    LockError, Need, Recorded, UserLock, WriteLockConfig, WriteLocks, shows_recorded,
};

/// The Redis channel replicas publish their changes on; v2 carries sealed messages (v1's were plain JSON, so
/// replicas of either version do not hear each other during an upgrade, and the TTL bounds what they serve).
pub const CHANNEL: &str = "usermeta.v2.changes";

/// The health service that reports the fleet's request budget toward ZITADEL: SERVING while this replica shares
/// it through Redis, NOT_SERVING while it keeps to its own fallback budget (a detail: the replica serves).
pub const BUDGET_HEALTH_SERVICE: &str = "usermeta.upstream_budget";

/// The health service that reports the link to Redis: SERVING while connected, NOT_SERVING while not (the
/// replica still serves; this is a detail, not its overall health).
pub const HEALTH_SERVICE: &str = "usermeta.redis";
