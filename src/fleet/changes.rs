//! What this replica learns about changed metadata, in one place: its own writes, the other replicas' (over
//! Redis) and ZITADEL's events (the webhook). Each news drops the user's cached answers here, goes on to the
//! other replicas when it started here, and reaches the WatchMetadata streams of this replica.

use std::{sync::Arc, time::SystemTime};

use super::{
    BusKey, RedisConfig, RedisSetupError, SharedInvalidation,
    feed::{Feed, StreamLimit, Subscription, WatchLimits, Write},
};
use crate::{caller::cache::CallerCache, listings::ListingCache, org_cache::OrgCache};

/// The caches a change drops answers from: callers' (userinfo answers carry metadata) and users' listings.
#[derive(Debug, Clone)]
pub struct Caches {
    /// What ZITADEL said about callers' tokens.
    pub callers: Arc<CallerCache>,
    /// Users' listings read with the service credential.
    pub listings: Arc<ListingCache>,
}

impl Caches {
    /// The caller cache without a listing cache (every listing read asks ZITADEL).
    pub fn callers_only(callers: Arc<CallerCache>) -> Caches {
        Caches {
            callers,
            listings: Arc::new(ListingCache::off()),
        }
    }

    /// Drops `user_id`'s answers from both.
    pub(super) fn invalidate_user(&self, user_id: &str) {
        self.callers.invalidate_user(user_id);
        self.listings.invalidate_user(user_id);
    }

    /// Drops every answer from both.
    pub(super) fn invalidate_all(&self) {
        self.callers.invalidate_all();
        self.listings.invalidate_all();
    }
}

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
    cache: Caches,
    /// Organisations' metadata this replica remembers.
    org_cache: Arc<OrgCache>,
    feed: Feed,
    shared: Option<SharedInvalidation>,
}

impl Changes {
    /// News for this replica alone: nothing goes to or comes from other replicas. Its WatchMetadata streams
    /// are held within `limits`.
    pub fn local(cache: Caches, limits: WatchLimits) -> Changes {
        Changes {
            cache,
            org_cache: Arc::new(OrgCache::disabled()),
            feed: Feed::new(limits),
            shared: None,
        }
    }

    /// Remembers organisations' metadata in `org_cache`, which changes heard here, from the other replicas and
    /// from ZITADEL drop entries of. Before [`Changes::with_redis`], so the other replicas' news reaches it.
    pub fn with_org_cache(mut self, org_cache: Arc<OrgCache>) -> Changes {
        self.org_cache = org_cache;
        self
    }

    /// Organisations' metadata this replica remembers.
    pub fn org_cache(&self) -> &Arc<OrgCache> {
        &self.org_cache
    }

    /// An organisation's metadata changed, or may have (a write through this replica, however it ended, or
    /// ZITADEL's `org.metadata.*` event): forgotten here at once and on the other replicas.
    pub fn organization_changed(&self, org_id: &str) {
        self.org_cache.invalidate(org_id);
        if let Some(shared) = &self.shared {
            shared.publish_organization(org_id);
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
            self.cache.clone(),
            Arc::clone(&self.org_cache),
            self.feed.clone(),
        )?);
        Ok(self)
    }

    /// The Redis link, when there is one.
    pub fn shared(&self) -> Option<&SharedInvalidation> {
        self.shared.as_ref()
    }

    /// A change that happened here (a write that landed, an event ZITADEL sent): the user's cached answers go
    /// at once, the other replicas hear of it (without values), and this replica's streams of the user see it,
    /// one item per write.
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
        self.feed.publish(Write::group(changes));
    }

    /// A write whose outcome is not known (it failed, or the deadline cut it off, and may have landed): the
    /// user's cached answers go here and on the other replicas, but no stream is told of a change.
    pub fn maybe_changed(&self, user_id: &str, keys: &[&str]) {
        self.cache.invalidate_user(user_id);
        if let Some(shared) = &self.shared {
            shared.publish(user_id, keys);
        }
    }

    /// `user_id`'s changes from now on, for one stream of `caller` (a ZITADEL user id), within the limits on
    /// streams; the stream lags (and is ended) when it falls behind its own buffer.
    pub fn subscribe(&self, user_id: &str, caller: &str) -> Result<Subscription, StreamLimit> {
        self.feed.subscribe(user_id, caller)
    }

    /// The limits on this replica's streams.
    pub fn watch_limits(&self) -> &WatchLimits {
        self.feed.limits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::caller::cache::CacheConfig;

    fn changes() -> Changes {
        Changes::local(
            Caches::callers_only(Arc::new(CallerCache::new(CacheConfig::default()))),
            WatchLimits::default(),
        )
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

    #[tokio::test]
    async fn a_landed_write_reaches_every_stream_of_its_user_with_its_values() {
        let changes = changes();
        let first = changes.subscribe("u1", "c1").expect("opens");
        let second = changes.subscribe("u1", "c2").expect("opens");
        changes.announce(vec![set("u1", "tier", b"gold"), set("u1", "plan", b"pro")]);
        for stream in [&first, &second] {
            let write = stream.next().await.expect("the write");
            let keys: Vec<(&str, Option<&[u8]>)> = write
                .write
                .keys
                .iter()
                .map(|key| (key.key.as_str(), key.value.as_deref()))
                .collect();
            assert_eq!(
                keys,
                [("tier", Some(&b"gold"[..])), ("plan", Some(&b"pro"[..]))]
            );
        }
    }

    #[tokio::test]
    async fn a_write_of_unknown_outcome_is_not_streamed() {
        let changes = changes();
        let stream = changes.subscribe("u1", "c1").expect("opens");
        changes.maybe_changed("u1", &["tier"]);
        changes.announce(vec![set("u1", "after", b"1")]);
        let write = stream.next().await.expect("only the landed write");
        assert_eq!(write.write.keys[0].key, "after");
    }
}
