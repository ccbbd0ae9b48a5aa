//! What this replica learns about changed metadata, in one place: its own writes, the other replicas' (over
//! Redis) and ZITADEL's events (the webhook). Each news drops the user's cached answers here, goes on to the
//! other replicas when it started here, and reaches the WatchMetadata streams of this replica.

use std::{sync::Arc, time::SystemTime};

use tokio::sync::broadcast;

use super::{BusKey, RedisConfig, RedisSetupError, SharedInvalidation};
use crate::caller::cache::CallerCache;

/// Changes a WatchMetadata stream may fall behind by before it is ended (the feed keeps no more than this for
/// its slowest reader).
pub const FEED_CAPACITY: usize = 1024;

/// What happened to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeKind {
    /// The key was written.
    Set,
    /// The key was removed.
    Delete,
    /// Every key of the user was removed (ZITADEL's `user.metadata.removed.all`).
    DeleteAll,
}

/// One change to one user's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataChange {
    /// The user whose metadata changed.
    pub user_id: String,
    /// The key; empty for [`ChangeKind::DeleteAll`].
    pub key: String,
    /// What happened.
    pub kind: ChangeKind,
    /// The new value of a [`ChangeKind::Set`], when this replica knows it without asking ZITADEL (its own
    /// writes, ZITADEL's event payloads); never carried between replicas.
    pub value: Option<Vec<u8>>,
    /// When it happened, as well as the replica that learnt it first knows.
    pub time: SystemTime,
}

/// This replica's news about changed metadata. Cloning shares it.
#[derive(Debug, Clone)]
pub struct Changes {
    cache: Arc<CallerCache>,
    feed: broadcast::Sender<Arc<MetadataChange>>,
    shared: Option<SharedInvalidation>,
}

impl Changes {
    /// News for this replica alone: nothing goes to or comes from other replicas.
    pub fn local(cache: Arc<CallerCache>) -> Changes {
        Changes {
            cache,
            feed: broadcast::channel(FEED_CAPACITY).0,
            shared: None,
        }
    }

    /// Also tells the other replicas, and hears from them, through Redis, in messages sealed with `key` (every
    /// replica needs the same). Redis need not be up yet: the replica serves either way and connects when it
    /// can.
    pub fn with_redis(
        mut self,
        config: RedisConfig,
        key: BusKey,
    ) -> Result<Changes, RedisSetupError> {
        self.shared = Some(SharedInvalidation::start(
            config,
            key,
            Arc::clone(&self.cache),
            self.feed.clone(),
        )?);
        Ok(self)
    }

    /// The Redis link, when there is one.
    pub fn shared(&self) -> Option<&SharedInvalidation> {
        self.shared.as_ref()
    }

    /// A change that happened here (a write that landed, an event ZITADEL sent): the user's cached answers go
    /// at once, the other replicas hear of it (without values), and this replica's streams see it.
    pub fn announce(&self, changes: Vec<MetadataChange>) {
        let mut announced_users: Vec<&str> = Vec::new();
        for change in &changes {
            if !announced_users.contains(&change.user_id.as_str()) {
                announced_users.push(&change.user_id);
                self.cache.invalidate_user(&change.user_id);
            }
        }
        if let Some(shared) = &self.shared {
            shared.publish_changes(&changes);
        }
        for change in changes {
            // No stream listening is no error.
            let _ = self.feed.send(Arc::new(change));
        }
    }

    /// A write whose outcome is not known (it failed, or the deadline cut it off, and may have landed): the
    /// user's cached answers go here and on the other replicas, but no stream is told of a change.
    pub fn maybe_changed(&self, user_id: &str, keys: &[&str]) {
        self.cache.invalidate_user(user_id);
        if let Some(shared) = &self.shared {
            shared.publish(user_id, keys);
        }
    }

    /// The changes from now on, for one stream; it lags (and is ended) when it falls [`FEED_CAPACITY`]
    /// changes behind.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<MetadataChange>> {
        self.feed.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caller::cache::CacheConfig;

    fn changes() -> Changes {
        Changes::local(Arc::new(CallerCache::new(CacheConfig::default())))
    }

    fn set(user_id: &str, key: &str, value: &[u8]) -> MetadataChange {
        MetadataChange {
            user_id: user_id.to_owned(),
            key: key.to_owned(),
            kind: ChangeKind::Set,
            value: Some(value.to_vec()),
            time: SystemTime::now(),
        }
    }

    #[test]
    fn a_landed_change_reaches_every_stream_with_its_value() {
        let changes = changes();
        let mut first = changes.subscribe();
        let mut second = changes.subscribe();
        let change = set("u1", "tier", b"gold");
        changes.announce(vec![change.clone()]);
        assert_eq!(*first.try_recv().unwrap(), change);
        assert_eq!(*second.try_recv().unwrap(), change);
        assert!(first.try_recv().is_err(), "one change, one message");
    }

    #[test]
    fn a_write_of_unknown_outcome_is_not_streamed() {
        let changes = changes();
        let mut stream = changes.subscribe();
        changes.maybe_changed("u1", &["tier"]);
        assert!(matches!(
            stream.try_recv(),
            Err(broadcast::error::TryRecvError::Empty)
        ));
    }

    #[test]
    fn a_stream_that_falls_behind_is_told_so() {
        let changes = changes();
        let mut stream = changes.subscribe();
        for i in 0..=FEED_CAPACITY {
            changes.announce(vec![set("u1", &format!("k{i}"), b"v")]);
        }
        assert!(matches!(
            stream.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(1))
        ));
    }
}
