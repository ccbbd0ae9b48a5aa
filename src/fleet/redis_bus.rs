//! The Redis link of [`SharedInvalidation`]: one task publishes this replica's changes, one subscribes to the
//! others'. Both reconnect with backoff; an outage is logged once when it starts and once when it ends.

use std::{fmt, sync::Arc, time::Duration};

use futures::StreamExt as _;
use redis::{AsyncCommands as _, IntoConnectionInfo as _};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use super::{
    CHANNEL, ChangeKind, MetadataChange,
    feed::{Feed, Write},
};
use crate::caller::cache::CallerCache;

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

/// Where Redis is. The password comes from a file, never from the URL in logs.
#[derive(Clone)]
pub struct RedisConfig {
    /// `redis://host:port[/db]` or `rediss://…` (TLS).
    pub url: String,
    /// `USERMETA_REDIS_PASSWORD_FILE`'s content, trimmed.
    pub password: Option<String>,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redacted(&self.url))
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
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
    "USERMETA_REDIS_URL (--redis-url) {url} is not a Redis URL ({reason}); use redis://host:6379 or rediss://host:6380 for TLS, with the password in USERMETA_REDIS_PASSWORD_FILE"
)]
pub struct RedisSetupError {
    url: String,
    reason: String,
}

/// What replicas tell each other: who changed, never what the values are.
#[derive(Debug, Serialize, Deserialize)]
struct Change {
    /// The replica that made the change (it ignores its own messages).
    origin: String,
    user_id: String,
    /// The keys written or removed; empty means "any key".
    #[serde(default)]
    keys: Vec<String>,
    /// What happened to them, when the write is known to have landed; absent for a write whose outcome is
    /// unknown (the others only drop cached answers, their streams are not told).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kind: Option<ChangeKind>,
    /// When, in milliseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    time_ms: Option<u64>,
}

impl Change {
    /// The stream's view of a change another replica made: no values travel between replicas.
    fn into_metadata_changes(self) -> Vec<MetadataChange> {
        let Some(kind) = self.kind else {
            return Vec::new();
        };
        let time = std::time::UNIX_EPOCH + Duration::from_millis(self.time_ms.unwrap_or_default());
        let keys = match kind {
            ChangeKind::DeleteAll => vec![String::new()],
            ChangeKind::Set | ChangeKind::Delete => self.keys,
        };
        keys.into_iter()
            .map(|key| MetadataChange {
                user_id: self.user_id.clone(),
                key,
                kind,
                value: None,
                time,
            })
            .collect()
    }
}

/// The replica's end of the shared invalidation. Cloning shares it.
#[derive(Debug, Clone)]
pub struct SharedInvalidation {
    origin: Arc<str>,
    outgoing: mpsc::Sender<Change>,
    connected: watch::Receiver<bool>,
    /// For [`SharedInvalidation::claim`]: a connection of its own, made when first needed and again after
    /// a failure.
    client: redis::Client,
    claims: Arc<tokio::sync::Mutex<Option<redis::aio::MultiplexedConnection>>>,
}

impl SharedInvalidation {
    /// Starts publishing and subscribing in the background. Redis need not be up yet: the replica serves
    /// either way and connects when it can.
    pub(super) fn start(
        config: RedisConfig,
        cache: Arc<CallerCache>,
        feed: Feed,
    ) -> Result<SharedInvalidation, RedisSetupError> {
        let failed = |reason: String| RedisSetupError {
            url: redacted(&config.url),
            reason,
        };
        let mut info = config
            .url
            .as_str()
            .into_connection_info()
            .map_err(|e| failed(e.to_string()))?;
        if let Some(password) = &config.password {
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
        let client = redis::Client::open(info).map_err(|e| failed(e.to_string()))?;
        let origin: Arc<str> = format!("{:016x}", rand::random::<u64>()).into();
        let (outgoing, queue) = mpsc::channel(PUBLISH_QUEUE);
        let (state, connected) = watch::channel(false);
        crate::metrics::redis_connected(false);
        tokio::spawn(publish(client.clone(), queue));
        tokio::spawn(subscribe(
            client.clone(),
            Arc::clone(&origin),
            cache,
            feed,
            state,
        ));
        Ok(SharedInvalidation {
            origin,
            outgoing,
            connected,
            client,
            claims: Arc::default(),
        })
    }

    /// Claims `name` for the whole fleet for `ttl`: `Ok(true)` for the first replica to ask, `Ok(false)` for
    /// every later one until it expires (Redis `SET NX EX`). An error when Redis cannot say; the caller decides
    /// what that means.
    pub async fn claim(&self, name: &str, ttl: Duration) -> Result<bool, redis::RedisError> {
        let mut connection = self.claims.lock().await;
        let claimed = async {
            let conn = match &mut *connection {
                Some(conn) => conn,
                None => connection.insert(
                    tokio::time::timeout(
                        CLAIM_TIMEOUT,
                        self.client.get_multiplexed_async_connection(),
                    )
                    .await
                    .map_err(|_| timed_out())??,
                ),
            };
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
            *connection = None;
        }
        claimed
    }

    /// Tells the other replicas that `user_id` may have changed (its `keys`), without saying how. Never
    /// waits: a full queue drops the news (counted), and the TTL bounds what the others serve.
    pub fn publish(&self, user_id: &str, keys: &[&str]) {
        self.send(Change {
            origin: self.origin.to_string(),
            user_id: user_id.to_owned(),
            keys: keys.iter().map(|key| (*key).to_owned()).collect(),
            kind: None,
            time_ms: None,
        });
    }

    /// Tells the other replicas of changes that landed: one message per run of one user's changes of one
    /// kind, with keys and time but never values.
    pub fn publish_changes(&self, changes: &[MetadataChange]) {
        for run in changes.chunk_by(|a, b| a.user_id == b.user_id && a.kind == b.kind) {
            let first = &run[0];
            let time_ms = first
                .time
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| {
                    u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
                });
            self.send(Change {
                origin: self.origin.to_string(),
                user_id: first.user_id.clone(),
                keys: match first.kind {
                    ChangeKind::DeleteAll => Vec::new(),
                    ChangeKind::Set | ChangeKind::Delete => {
                        run.iter().map(|change| change.key.clone()).collect()
                    }
                },
                kind: Some(first.kind),
                time_ms: Some(time_ms),
            });
        }
    }

    fn send(&self, change: Change) {
        if self.outgoing.try_send(change).is_err() {
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

async fn publish(client: redis::Client, mut queue: mpsc::Receiver<Change>) {
    let mut outage = Outage::default();
    let mut backoff = BACKOFF_MIN;
    let mut connection: Option<redis::aio::MultiplexedConnection> = None;
    while let Some(change) = queue.recv().await {
        let payload = match serde_json::to_string(&change) {
            Ok(payload) => payload,
            Err(_) => continue,
        };
        // One change is tried until Redis takes it or the queue is closed; later ones wait behind it.
        loop {
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

fn timed_out() -> redis::RedisError {
    redis::RedisError::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        "Redis did not answer in time",
    ))
}

async fn subscribe(
    client: redis::Client,
    origin: Arc<str>,
    cache: Arc<CallerCache>,
    feed: Feed,
    state: watch::Sender<bool>,
) {
    let mut outage = Outage::default();
    let mut backoff = BACKOFF_MIN;
    let mut ever_connected = false;
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
        }
        ever_connected = true;
        backoff = BACKOFF_MIN;
        outage.recovered("subscribing");
        state.send_replace(true);
        crate::metrics::redis_connected(true);
        let error = listen(pubsub, &origin, &cache, &feed).await;
        state.send_replace(false);
        crate::metrics::redis_connected(false);
        outage.failed("subscribed", &error);
    }
}

/// Applies the other replicas' changes until the subscription breaks; returns why it broke.
async fn listen(
    pubsub: redis::aio::PubSub,
    origin: &str,
    cache: &CallerCache,
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
                let Ok(payload) = message.get_payload::<String>() else {
                    crate::metrics::invalidation("malformed");
                    continue;
                };
                match serde_json::from_str::<Change>(&payload) {
                    Ok(change) if change.origin == origin => {}
                    Ok(change) => {
                        cache.invalidate_user(&change.user_id);
                        crate::metrics::invalidation("received");
                        // One write, one item, for the streams of its user only.
                        feed.publish(Write::group(change.into_metadata_changes()));
                    }
                    Err(_) => crate::metrics::invalidation("malformed"),
                }
            }
            _ = ping.tick() => {
                match tokio::time::timeout(REDIS_TIMEOUT, sink.ping::<String>()).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(error)) => return error.to_string(),
                    Err(_) => return "a ping went unanswered".to_owned(),
                }
            }
        }
    }
}
