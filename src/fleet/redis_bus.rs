//! The Redis link of [`SharedInvalidation`]: one task publishes this replica's changes, one subscribes to the
//! others'. Both reconnect with backoff; an outage is logged once when it starts and once when it ends. Every
//! message is sealed and opened with the fleet's [`BusKey`] (`bus_message.rs`): what another client of Redis
//! publishes is counted and dropped.

use std::{
    fmt,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use futures::StreamExt as _;
use redis::{AsyncCommands as _, IntoConnectionInfo as _};
use tokio::sync::{mpsc, watch};

use super::{
    CHANNEL, ChangeKind, MetadataChange,
    bus_message::{BusKey, Change, MAX_KEYS, Rejected, ReplayGuard, unix_ms},
    changes::Caches,
    feed::{Feed, Write},
    write_lock::{WriteLockConfig, WriteLocks},
};
use crate::org_cache::OrgCache;

/// Changes waiting to be published; beyond this a change is dropped (and counted): the TTL still bounds it.
const PUBLISH_QUEUE: usize = 4096;
/// How often an idle subscription checks that Redis still answers.
const PING_EVERY: Duration = Duration::from_secs(5);
/// How long a ping or a publish may take before the connection counts as lost.
const REDIS_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a claim may wait for Redis: the webhook answers ZITADEL, which gives up on slow targets.
const CLAIM_TIMEOUT: Duration = Duration::from_millis(500);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// The least time between two log lines about refused messages (each one is counted).
const REJECTION_LOG_EVERY: Duration = Duration::from_secs(60);

/// Where Redis is and how replicas know each other's messages. The password comes from a file, never from
/// the URL in logs.
#[derive(Clone)]
pub struct RedisConfig {
    /// `redis://host:port[/db]` or `rediss://…` (TLS).
    pub url: String,
    /// [`REDIS_PASSWORD_FILE`](crate::settings::names::REDIS_PASSWORD_FILE)'s content, trimmed.
    pub password: Option<String>,
    /// [`REDIS_BUS_KEY_FILE`](crate::settings::names::REDIS_BUS_KEY_FILE)'s keys; `None` derives the key from the service credential, which every
    /// replica of a deployment holds alike.
    pub bus_key: Option<BusKey>,
}

impl RedisConfig {
    /// Redis at `url`, without a password, the bus key derived from the service credential.
    pub fn new(url: impl Into<String>) -> RedisConfig {
        RedisConfig {
            url: url.into(),
            password: None,
            bus_key: None,
        }
    }
}

impl RedisConfig {
    /// A client of this Redis (it connects when first used).
    pub(super) fn client(&self) -> Result<redis::Client, RedisSetupError> {
        let failed = |reason: String| RedisSetupError {
            url: redacted(&self.url),
            reason,
        };
        let mut info = self
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| failed(e.to_string()))?;
        if let Some(password) = &self.password {
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
        redis::Client::open(info).map_err(|e| failed(e.to_string()))
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redacted(&self.url))
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("bus_key", &self.bus_key)
            .finish()
    }
}

/// The URL with any user information left out, for messages.
fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            let _ = parsed.set_password(None);
            let _ = parsed.set_username("");
            parsed.to_string()
        }
        Err(_) => "<not a URL>".to_owned(),
    }
}

/// The Redis settings cannot work.
#[derive(Debug, thiserror::Error)]
#[error(
    "{setting} {url} is not a Redis URL ({reason}); use redis://host:6379 or rediss://host:6380 for TLS, with the password in {password}",
    setting = crate::settings::names::REDIS_URL_SETTING,
    password = crate::settings::names::REDIS_PASSWORD_FILE
)]
pub struct RedisSetupError {
    url: String,
    reason: String,
}

/// One piece of news for the other replicas, before the publishing task numbers, stamps and seals it.
#[derive(Debug)]
struct News {
    user_id: String,
    /// An organisation whose metadata changed (then `user_id` is the marker).
    org_id: Option<String>,
    /// At most [`MAX_KEYS`]; empty means "any key".
    keys: Vec<String>,
    kind: Option<ChangeKind>,
    time_ms: Option<u64>,
}

/// The stream's view of a change another replica made: no values travel between replicas.
fn metadata_changes(change: Change) -> Vec<MetadataChange> {
    let Some(kind) = change.kind else {
        return Vec::new();
    };
    let time = std::time::UNIX_EPOCH
        .checked_add(Duration::from_millis(change.time_ms.unwrap_or_default()))
        .unwrap_or(std::time::UNIX_EPOCH);
    let keys = match kind {
        ChangeKind::DeleteAll => vec![String::new()],
        ChangeKind::Set | ChangeKind::Delete => change.keys,
    };
    keys.into_iter()
        .map(|key| MetadataChange {
            user_id: change.user_id.clone(),
            key,
            kind,
            value: None,
            time,
        })
        .collect()
}

/// The replica's end of the shared invalidation. Cloning shares it.
#[derive(Debug, Clone)]
pub struct SharedInvalidation {
    outgoing: mpsc::Sender<News>,
    connected: watch::Receiver<bool>,
    /// For [`SharedInvalidation::claim`]: a connection of its own, made when first needed and again after
    /// a failure.
    client: redis::Client,
    claims: Arc<tokio::sync::Mutex<Option<redis::aio::MultiplexedConnection>>>,
    /// Names claims, so only replicas holding it can claim anything.
    key: BusKey,
}

impl SharedInvalidation {
    /// Starts publishing and subscribing in the background. Redis need not be up yet: the replica serves
    /// either way and connects when it can.
    pub(super) fn start(
        config: RedisConfig,
        key: BusKey,
        cache: Caches,
        org_cache: Arc<OrgCache>,
        feed: Feed,
    ) -> Result<SharedInvalidation, RedisSetupError> {
        let client = config.client()?;
        let origin: Arc<str> = format!("{:016x}", rand::random::<u64>()).into();
        let (outgoing, queue) = mpsc::channel(PUBLISH_QUEUE);
        let (state, connected) = watch::channel(false);
        crate::metrics::redis_connected(false);
        tokio::spawn(publish(
            client.clone(),
            key.clone(),
            Arc::clone(&origin),
            queue,
        ));
        tokio::spawn(subscribe(
            client.clone(),
            key.clone(),
            origin,
            cache,
            org_cache,
            feed,
            state,
        ));
        Ok(SharedInvalidation {
            outgoing,
            connected,
            client,
            claims: Arc::default(),
            key,
        })
    }

    /// Per-user write locks across the fleet, over a connection of their own to the same Redis.
    pub fn write_locks(&self, config: WriteLockConfig) -> WriteLocks {
        WriteLocks::fleet(self.client.clone(), self.key.clone(), config)
    }

    /// Claims a webhook event's signature for the whole fleet for `ttl`: `Ok(true)` for the first replica to
    /// ask, `Ok(false)` for every later one until it expires. The name in Redis is made with the fleet's key:
    /// someone else who can write to Redis and learnt the signature cannot claim it ahead of the replicas
    /// (and the name tells nothing of the event).
    pub async fn claim_signature(
        &self,
        signature: &[u8],
        ttl: Duration,
    ) -> Result<bool, redis::RedisError> {
        self.claim(&self.key.claim_name("webhook.seen", signature), ttl)
            .await
    }

    /// Claims `name` for the whole fleet for `ttl`: `Ok(true)` for the first replica to ask, `Ok(false)` for
    /// every later one until it expires (Redis `SET NX EX`). An error when Redis cannot say; the caller decides
    /// what that means.
    async fn claim(&self, name: &str, ttl: Duration) -> Result<bool, redis::RedisError> {
        let claimed = async {
            let mut conn = own_connection(&self.client, &self.claims, CLAIM_TIMEOUT).await?;
            let options = redis::SetOptions::default()
                .conditional_set(redis::ExistenceCheck::NX)
                .with_expiration(redis::SetExpiry::EX(ttl.as_secs().max(1)));
            let set: Option<String> =
                tokio::time::timeout(CLAIM_TIMEOUT, conn.set_options(name, "1", options))
                    .await
                    .map_err(|_| timed_out())??;
            Ok::<_, redis::RedisError>(set.is_some())
        }
        .await;
        if claimed.is_err() {
            *self.claims.lock().await = None;
        }
        claimed
    }

    /// Tells the other replicas that `user_id` may have changed (its `keys`), without saying how. Never
    /// waits: a full queue drops the news (counted), and the TTL bounds what the others serve.
    pub fn publish(&self, user_id: &str, keys: &[&str]) {
        let keys: Vec<String> = keys.iter().map(|key| (*key).to_owned()).collect();
        self.send_in_parts(user_id, keys, None, None);
    }

    /// Tells the other replicas of changes that landed: one message per run of one user's changes of one
    /// kind (of at most [`MAX_KEYS`] keys), with keys and time but never values.
    pub fn publish_changes(&self, changes: &[MetadataChange]) {
        for run in changes.chunk_by(|a, b| a.user_id == b.user_id && a.kind == b.kind) {
            let first = &run[0];
            let keys = match first.kind {
                ChangeKind::DeleteAll => Vec::new(),
                ChangeKind::Set | ChangeKind::Delete => {
                    run.iter().map(|change| change.key.clone()).collect()
                }
            };
            self.send_in_parts(
                &first.user_id,
                keys,
                Some(first.kind),
                Some(unix_ms(first.time)),
            );
        }
    }

    /// Queues the news, in messages of at most [`MAX_KEYS`] keys (receivers refuse more).
    fn send_in_parts(
        &self,
        user_id: &str,
        keys: Vec<String>,
        kind: Option<ChangeKind>,
        time_ms: Option<u64>,
    ) {
        let mut parts: Vec<Vec<String>> = keys.chunks(MAX_KEYS).map(<[String]>::to_vec).collect();
        if parts.is_empty() {
            parts.push(Vec::new());
        }
        for keys in parts {
            let news = News {
                user_id: user_id.to_owned(),
                org_id: None,
                keys,
                kind,
                time_ms,
            };
            if self.outgoing.try_send(news).is_err() {
                crate::metrics::invalidation("dropped");
            }
        }
    }

    /// Tells the other replicas that an organisation's metadata changed (or may have). Never waits.
    pub fn publish_organization(&self, org_id: &str) {
        let news = News {
            user_id: super::bus_message::ORGANIZATION_NEWS_USER.to_owned(),
            org_id: Some(org_id.to_owned()),
            keys: Vec::new(),
            kind: None,
            time_ms: None,
        };
        if self.outgoing.try_send(news).is_err() {
            crate::metrics::invalidation("dropped");
        }
    }

    /// Whether the subscription to the other replicas' changes is up now; changes as it comes and goes.
    pub fn connected(&self) -> watch::Receiver<bool> {
        self.connected.clone()
    }
}

/// Logs an outage once when it starts and once when it ends.
#[derive(Default)]
struct Outage {
    since: Option<std::time::Instant>,
}

impl Outage {
    fn failed(&mut self, what: &str, error: &dyn fmt::Display) {
        if self.since.is_none() {
            self.since = Some(std::time::Instant::now());
            tracing::warn!(
                error = %error,
                "Redis unreachable ({what}): replicas no longer hear of each other's writes; serving on with local invalidation and the cache TTL, reconnecting"
            );
        }
    }

    fn recovered(&mut self, what: &str) {
        if let Some(since) = self.since.take() {
            tracing::info!(
                down_for = ?since.elapsed(),
                "Redis reachable again ({what})"
            );
        }
    }
}

async fn publish(
    client: redis::Client,
    key: BusKey,
    origin: Arc<str>,
    mut queue: mpsc::Receiver<News>,
) {
    let mut outage = Outage::default();
    let mut backoff = BACKOFF_MIN;
    let mut connection: Option<redis::aio::MultiplexedConnection> = None;
    let mut seq = 0u64;
    while let Some(news) = queue.recv().await {
        seq += 1;
        let mut change = Change {
            origin: origin.to_string(),
            seq,
            sent_ms: 0,
            user_id: news.user_id,
            keys: news.keys,
            kind: news.kind,
            time_ms: news.time_ms,
            org_id: news.org_id,
        };
        if !change.within_bounds() {
            // The API and the webhook bound what they accept alike; receivers would refuse it.
            tracing::debug!("a change out of the bus's bounds was not published");
            crate::metrics::invalidation("dropped");
            continue;
        }
        // One change is tried until Redis takes it or the queue is closed; later ones wait behind it. Each try
        // is stamped anew, so a change held up by an outage is not stale when it goes.
        loop {
            change.sent_ms = unix_ms(SystemTime::now());
            let payload = change.seal(&key);
            let sent = async {
                let conn = match &mut connection {
                    Some(conn) => conn,
                    None => connection.insert(
                        tokio::time::timeout(
                            REDIS_TIMEOUT,
                            client.get_multiplexed_async_connection(),
                        )
                        .await
                        .map_err(|_| timed_out())??,
                    ),
                };
                tokio::time::timeout(REDIS_TIMEOUT, conn.publish::<_, _, ()>(CHANNEL, &payload))
                    .await
                    .map_err(|_| timed_out())?
            }
            .await;
            match sent {
                Ok(()) => {
                    crate::metrics::invalidation("published");
                    outage.recovered("publishing");
                    backoff = BACKOFF_MIN;
                    break;
                }
                Err(error) => {
                    connection = None;
                    crate::metrics::invalidation("publish_failed");
                    outage.failed("publishing", &error);
                    // Meanwhile new changes queue up, and beyond the queue's size are dropped (counted).
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }
}

/// A connection of its own, kept in `slot`: made (within `timeout`) when there is none yet, or none since a
/// failure emptied the slot. Cloning a multiplexed connection shares it, so commands never wait on the slot.
pub(super) async fn own_connection(
    client: &redis::Client,
    slot: &tokio::sync::Mutex<Option<redis::aio::MultiplexedConnection>>,
    timeout: Duration,
) -> Result<redis::aio::MultiplexedConnection, redis::RedisError> {
    let mut slot = slot.lock().await;
    if let Some(conn) = &*slot {
        return Ok(conn.clone());
    }
    let conn = tokio::time::timeout(timeout, client.get_multiplexed_async_connection())
        .await
        .map_err(|_| timed_out())??;
    Ok(slot.insert(conn).clone())
}

fn timed_out() -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "Redis did not answer in time",
    ))
}

async fn subscribe(
    client: redis::Client,
    key: BusKey,
    origin: Arc<str>,
    cache: Caches,
    org_cache: Arc<OrgCache>,
    feed: Feed,
    state: watch::Sender<bool>,
) {
    let mut outage = Outage::default();
    let mut backoff = BACKOFF_MIN;
    let mut ever_connected = false;
    // Kept over reconnections: a message captured before one is no less a replay after it.
    let mut heard = Heard::new(key);
    loop {
        let subscribed = async {
            let mut pubsub = tokio::time::timeout(REDIS_TIMEOUT, client.get_async_pubsub())
                .await
                .map_err(|_| timed_out())??;
            pubsub.subscribe(CHANNEL).await?;
            Ok::<_, redis::RedisError>(pubsub)
        }
        .await;
        let pubsub = match subscribed {
            Ok(pubsub) => pubsub,
            Err(error) => {
                outage.failed("subscribing", &error);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        // Changes published while this replica was not listening are lost: everything cached before now
        // may be stale, so it is all fetched again.
        if ever_connected {
            cache.invalidate_all();
            org_cache.invalidate_all();
        }
        ever_connected = true;
        backoff = BACKOFF_MIN;
        outage.recovered("subscribing");
        state.send_replace(true);
        crate::metrics::redis_connected(true);
        let error = listen(pubsub, &origin, &mut heard, &cache, &org_cache, &feed).await;
        state.send_replace(false);
        crate::metrics::redis_connected(false);
        outage.failed("subscribed", &error);
    }
}

/// What the subscription believes: messages sealed with the fleet's key, fresh, first heard.
struct Heard {
    key: BusKey,
    replays: ReplayGuard,
    last_logged: Option<Instant>,
}

impl Heard {
    fn new(key: BusKey) -> Heard {
        Heard {
            key,
            replays: ReplayGuard::default(),
            last_logged: None,
        }
    }

    /// The change a message carries when it is to be believed; anything else is counted (and now and then
    /// logged, never quoted).
    fn believe(&mut self, raw: &[u8]) -> Option<Change> {
        let opened = Change::open(&self.key, raw, SystemTime::now()).and_then(|change| {
            if self.replays.admit(&change, Instant::now()) {
                Ok(change)
            } else {
                Err(Rejected::Replayed)
            }
        });
        match opened {
            Ok(change) => Some(change),
            Err(rejected) => {
                crate::metrics::invalidation_rejected(rejected.reason());
                if self
                    .last_logged
                    .is_none_or(|last| last.elapsed() >= REJECTION_LOG_EVERY)
                {
                    self.last_logged = Some(Instant::now());
                    tracing::warn!(
                        reason = rejected.reason(),
                        "ignored a message on the fleet's Redis channel (counted in usermeta_shared_invalidations_rejected_total; logged once a minute at most): not sealed with this replica's bus key, replayed, stale or out of bounds. Replicas derive the key from the service credential unless {} is set: every replica needs the same one",
                        crate::settings::names::REDIS_BUS_KEY_FILE
                    );
                }
                None
            }
        }
    }
}

/// Applies the other replicas' changes until the subscription breaks; returns why it broke.
async fn listen(
    pubsub: redis::aio::PubSub,
    origin: &str,
    heard: &mut Heard,
    cache: &Caches,
    org_cache: &OrgCache,
    feed: &Feed,
) -> String {
    let (mut sink, mut messages) = pubsub.split();
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.reset();
    loop {
        tokio::select! {
            message = messages.next() => {
                let Some(message) = message else {
                    return "the connection closed".to_owned();
                };
                let Some(change) = heard.believe(message.get_payload_bytes()) else {
                    continue;
                };
                // Its own messages come back too; they were applied when they were made.
                if change.origin == origin {
                    continue;
                }
                if let Some(org_id) = &change.org_id {
                    org_cache.invalidate(org_id);
                    crate::metrics::invalidation("received");
                    continue;
                }
                cache.invalidate_user(&change.user_id);
                crate::metrics::invalidation("received");
                // One write, one item, for the streams of its user only.
                feed.publish(Write::group(metadata_changes(change)));
            }
            _ = ping.tick() => {
                // A subscribed connection answers PING with `["pong", ""]` (RESP2), not `PONG`: any answer will do.
                match tokio::time::timeout(REDIS_TIMEOUT, sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(error)) => return error.to_string(),
                    Err(_) => return "a ping went unanswered".to_owned(),
                }
            }
        }
    }
}
