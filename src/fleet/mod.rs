//! A fleet that agrees: replicas tell each other which users they changed, so a write through one replica is
//! not served stale by another for the rest of the cache TTL.
//!
//! [`Changes`] is where a replica's news of changed metadata meets: its own writes, the other replicas' and
//! ZITADEL's events ([`webhook`]); it drops cached answers and feeds the WatchMetadata streams.
//!
//! Over Redis pub/sub (`redis_bus.rs`): every replica publishes `{origin, user_id, keys, kind, time}` on one channel after
//! a write and drops the cached answers of users other replicas changed. Only user ids and keys travel: never
//! a token, a token digest or a value. Besides, the webhook claims each accepted event's signature in Redis
//! (`SET NX EX`), so an event replayed to another replica is refused there too. The writing replica still invalidates its own cache synchronously;
//! Redis only carries the news to the others. While Redis is unreachable replicas keep serving (local
//! invalidation and the TTL bound staleness, as without Redis) and reconnect by themselves.

mod changes;
mod feed;
mod redis_bus;
pub mod webhook;

pub use changes::{ChangeKind, Changes, MetadataChange};
pub use feed::{
    ChangedKey, Lag, MAX_STREAMED_VALUE_BYTES, Queued, STREAM_BUFFER_CHANGES, StreamLimit,
    Subscription, WatchLimits, Write,
};
pub use redis_bus::{RedisConfig, RedisSetupError, SharedInvalidation};

/// The Redis channel replicas publish their changes on.
pub const CHANNEL: &str = "usermeta.v1.changes";

/// The health service that reports the link to Redis: SERVING while connected, NOT_SERVING while not (the
/// replica still serves; this is a detail, not its overall health).
pub const HEALTH_SERVICE: &str = "usermeta.redis";
