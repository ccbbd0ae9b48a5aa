//! One writer at a time per user: within a replica through a per-user mutex, across the fleet through a lock
//! in Redis. The writes that read before they write (a condition, a merge patch) need it; plain writes take it
//! so that they never land between another writer's read and write, and go on without it when Redis is away.
//!
//! The Redis lock is a key per user with an expiry (`SET`-like, in a script) whose value names its holder and a
//! fencing number (`INCR` of a per-user counter, in the same script). A holder checks it still holds the lock
//! (the same value) and extends it in one script right before it writes to ZITADEL ([`UserLock::fence`]): a
//! holder that stalled past the expiry, whose lock another replica took since, finds another value there and
//! writes nothing. ZITADEL cannot check a fencing number itself, so the extension covers the write: the lock
//! cannot expire while the write is on its way unless the process stalls longer than the lock's lifetime
//! between the check and the request. A holder that dies leaves the lock to expire; it never half-applies a
//! write (a write is one ZITADEL request). The names in Redis are made with the fleet's key, like claims, so
//! no other client of Redis can take or release a user's lock by name.
//!
//! Without Redis the guarantee is the replica's. With Redis configured but unreachable, the lock cannot be
//! taken and the write is refused (unless the deployment said it runs a single replica): a conditional write
//! never goes ahead on a guarantee it does not have.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use tokio::sync::OwnedMutexGuard;

use super::{bus_message::BusKey, redis_bus::own_connection};

/// How long one Redis command of the lock may take before Redis counts as unreachable.
const REDIS_TIMEOUT: Duration = Duration::from_secs(1);
/// The first and the longest pause between two tries of a taken lock.
const RETRY_MIN: Duration = Duration::from_millis(2);
const RETRY_MAX: Duration = Duration::from_millis(50);
/// How long a user's fencing counter outlives its last lock: far beyond any holder's life.
const FENCE_TTL: Duration = Duration::from_secs(24 * 3600);

/// Takes the lock when it is free: returns the fencing number (as text) and what the fleet's last writes left
/// in the keys named after the first three arguments, or `{"0"}` when another holds it.
const ACQUIRE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then return {'0'} end
local fence = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. fence, 'PX', ARGV[2])
local answer = {tostring(fence)}
for i = 4, #ARGV do answer[#answer + 1] = redis.call('HGET', KEYS[3], ARGV[i]) end
return answer
";

/// Extends the lock if this holder still holds it: 1, else 0.
const FENCE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
";

/// Records what this holder's write left in its keys (field, value pairs after the first two arguments), then
/// releases the lock if this holder still holds it: one step, so the next holder reads the record.
const RELEASE: &str = r"
if #ARGV > 2 then
  redis.call('HSET', KEYS[2], unpack(ARGV, 3))
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// How long the fleet remembers the last write of a key through a lock: longer than ZITADEL's v2 search lags
/// behind (its own tests wait up to a minute).
const RECORD_TTL: Duration = Duration::from_secs(120);

/// What the fleet's last locked write left in a key: its etag (`None`: removed) and ZITADEL's date of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// The etag the write left; `None` when it removed the key.
    pub etag: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub at_ms: i64,
}

impl Recorded {
    fn parse(text: &str) -> Option<Recorded> {
        let (at, etag) = text.split_once('|')?;
        Some(Recorded {
            at_ms: at.parse().ok()?,
            etag: (!etag.is_empty()).then(|| etag.to_owned()),
        })
    }

    fn text(&self) -> String {
        format!(
            "{}|{}",
            self.at_ms,
            self.etag.as_deref().unwrap_or_default()
        )
    }
}

/// How writes that read first are serialised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteLockConfig {
    /// The deployment runs one replica: without Redis nothing is lost, and a Redis outage refuses nothing.
    pub single_replica: bool,
    /// How long the fleet's lock lives without its holder extending it: how long a dead holder keeps the
    /// others waiting, and more than one read and write to ZITADEL take.
    pub ttl: Duration,
}

impl Default for WriteLockConfig {
    fn default() -> Self {
        WriteLockConfig {
            single_replica: false,
            ttl: Duration::from_secs(10),
        }
    }
}

/// What a write needs of its lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// It reads before it writes (a condition, a merge patch): without the fleet's lock it is not made.
    Guarantee,
    /// A plain write: it takes the lock so that it never comes between another writer's read and write,
    /// but it is made as before when Redis does not answer (plain writes behave as they always have).
    Courtesy,
}

/// Why a user's write lock could not be taken or kept.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Redis is configured and did not answer: the fleet-wide guarantee cannot be given.
    #[error("redis did not answer: {0}")]
    Unreachable(String),
    /// The lock expired while held (the holder stalled longer than its lifetime) and may be another's now.
    #[error("the write lock expired before the write")]
    Lost,
}

/// The per-user write locks of this replica, and of the fleet when Redis is configured.
#[derive(Debug)]
pub struct WriteLocks {
    local: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    fleet: Option<FleetLock>,
    /// The deployment runs one replica: an unreachable Redis does not refuse a write.
    single_replica: bool,
    ttl: Duration,
}

/// The Redis side: a connection of its own, made when first needed and again after a failure.
#[derive(Debug)]
struct FleetLock {
    client: redis::Client,
    key: BusKey,
    holder: String,
    connection: tokio::sync::Mutex<Option<redis::aio::MultiplexedConnection>>,
}

/// A user's write lock, held until dropped (the Redis lock is released in the background then).
#[derive(Debug)]
pub struct UserLock {
    local: Option<OwnedMutexGuard<()>>,
    locks: Arc<WriteLocks>,
    user_id: String,
    /// The Redis key and this holder's value there, while the fleet lock is held.
    held: Option<(String, String)>,
    /// The Redis key of the fleet's record of the user's last locked writes.
    record: String,
    /// What the fleet's last locked writes left in the keys asked for, by key.
    pub recorded: HashMap<String, Recorded>,
    /// What this holder's write left, recorded when the lock is released.
    landed: Vec<(String, Recorded)>,
}

impl WriteLocks {
    /// Locks within this replica alone (no Redis configured).
    pub fn local(config: WriteLockConfig) -> WriteLocks {
        WriteLocks {
            local: Mutex::default(),
            fleet: None,
            single_replica: config.single_replica,
            ttl: config.ttl,
        }
    }

    /// Locks across the fleet through `client`, with names made with `key`. A single-replica deployment
    /// falls back to the replica's own lock while Redis does not answer.
    pub(super) fn fleet(client: redis::Client, key: BusKey, config: WriteLockConfig) -> WriteLocks {
        let WriteLockConfig {
            single_replica,
            ttl,
        } = config;
        WriteLocks {
            local: Mutex::default(),
            fleet: Some(FleetLock {
                client,
                key,
                holder: format!("{:032x}", rand::random::<u128>()),
                connection: tokio::sync::Mutex::default(),
            }),
            single_replica,
            ttl,
        }
    }

    /// Whether writes of one user are serialised across replicas (Redis is configured).
    pub fn across_fleet(&self) -> bool {
        self.fleet.is_some()
    }

    /// Waits for `user_id`'s lock: this replica's first, then the fleet's. Waits as long as the caller does
    /// (the request's deadline ends the wait); fails when Redis cannot be asked and the write `need`s the
    /// guarantee. `keys`: those whose last locked write (through any replica) the holder learns
    /// ([`UserLock::recorded`]).
    pub async fn lock(
        self: &Arc<Self>,
        user_id: &str,
        keys: &[&str],
        need: Need,
    ) -> Result<UserLock, LockError> {
        let mutex = Arc::clone(
            self.local
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(user_id.to_owned())
                .or_default(),
        );
        let mut lock = UserLock {
            local: None,
            locks: Arc::clone(self),
            user_id: user_id.to_owned(),
            held: None,
            record: String::new(),
            recorded: HashMap::new(),
            landed: Vec::new(),
        };
        lock.local = Some(mutex.lock_owned().await);
        let Some(fleet) = &self.fleet else {
            return Ok(lock);
        };
        let name = fleet.key.claim_name("write.lock", user_id.as_bytes());
        let fence_name = fleet.key.claim_name("write.fence", user_id.as_bytes());
        lock.record = fleet.key.claim_name("write.record", user_id.as_bytes());
        let ttl = self.ttl.as_millis().to_string();
        let fence_ttl = FENCE_TTL.as_millis().to_string();
        let mut args = vec![fleet.holder.as_str(), &ttl, &fence_ttl];
        args.extend_from_slice(keys);
        let mut pause = RETRY_MIN;
        loop {
            let answer: Vec<Option<String>> = match fleet
                .eval(ACQUIRE, &[&name, &fence_name, &lock.record], &args)
                .await
            {
                Ok(answer) => answer,
                Err(error) if self.single_replica => {
                    tracing::warn!(user_id, error = %error, "redis did not answer; the write is serialised by this replica alone, as this single-replica deployment allows");
                    return Ok(lock);
                }
                // Redis being down is already reported (health, the bus's log); a plain write goes on as ever.
                Err(error) if need == Need::Courtesy => {
                    tracing::debug!(user_id, error = %error, "redis did not answer; a plain write goes ahead without the fleet's lock");
                    return Ok(lock);
                }
                Err(error) => return Err(error),
            };
            let fence = answer.first().cloned().flatten().unwrap_or_default();
            if fence != "0" && !fence.is_empty() {
                lock.held = Some((name, format!("{}:{fence}", fleet.holder)));
                lock.recorded = keys
                    .iter()
                    .zip(answer.iter().skip(1))
                    .filter_map(|(key, text)| {
                        Some(((*key).to_owned(), Recorded::parse(text.as_deref()?)?))
                    })
                    .collect();
                return Ok(lock);
            }
            // Jittered, so waiting replicas do not ask in step.
            let jitter = rand::random_range(0..=pause.as_micros() as u64);
            tokio::time::sleep(pause + Duration::from_micros(jitter)).await;
            pause = (pause * 2).min(RETRY_MAX);
        }
    }
}

impl FleetLock {
    async fn eval<T: redis::FromRedisValue>(
        &self,
        script: &str,
        keys: &[&str],
        args: &[&str],
    ) -> Result<T, LockError> {
        let answer = async {
            let mut conn = own_connection(&self.client, &self.connection, REDIS_TIMEOUT)
                .await
                .map_err(|e| LockError::Unreachable(e.to_string()))?;
            let mut command = redis::cmd("EVAL");
            command.arg(script).arg(keys.len()).arg(keys).arg(args);
            tokio::time::timeout(REDIS_TIMEOUT, command.query_async::<T>(&mut conn))
                .await
                .map_err(|_| LockError::Unreachable("a command timed out".into()))?
                .map_err(|e| LockError::Unreachable(e.to_string()))
        }
        .await;
        if answer.is_err() {
            *self.connection.lock().await = None;
        }
        answer
    }
}

impl UserLock {
    /// Checks, right before the write, that this holder still holds the fleet's lock, and extends it by its
    /// lifetime so it outlasts the write. Fails when it expired (and may be another's): nothing may be written.
    pub async fn fence(&self) -> Result<(), LockError> {
        let (Some(fleet), Some((name, value))) = (&self.locks.fleet, &self.held) else {
            return Ok(());
        };
        let ttl = self.locks.ttl.as_millis().to_string();
        match fleet.eval::<i64>(FENCE, &[name], &[value, &ttl]).await? {
            1 => Ok(()),
            _ => Err(LockError::Lost),
        }
    }

    /// The write landed: each key now holds the value with this etag (`None`: removed), as of `at_ms`
    /// (ZITADEL's date of the write). Recorded for the fleet's next holders when the lock is released.
    pub fn landed<'k>(
        &mut self,
        keys: impl Iterator<Item = (&'k str, Option<String>)>,
        at_ms: i64,
    ) {
        if self.held.is_some() {
            self.landed
                .extend(keys.map(|(key, etag)| (key.to_owned(), Recorded { etag, at_ms })));
        }
    }
}

impl Drop for UserLock {
    fn drop(&mut self) {
        if let (Some((name, value)), Ok(runtime)) =
            (self.held.take(), tokio::runtime::Handle::try_current())
        {
            let locks = Arc::clone(&self.locks);
            let record = std::mem::take(&mut self.record);
            let record_ttl = RECORD_TTL.as_millis().to_string();
            let landed: Vec<(String, String)> = self
                .landed
                .drain(..)
                .map(|(key, recorded)| (key, recorded.text()))
                .collect();
            runtime.spawn(async move {
                let mut args = vec![value.as_str(), record_ttl.as_str()];
                for (key, text) in &landed {
                    args.push(key);
                    args.push(text);
                }
                if let Some(fleet) = &locks.fleet
                    && let Err(error) = fleet.eval::<i64>(RELEASE, &[&name, &record], &args).await
                {
                    // The lock expires by itself.
                    tracing::debug!(error = %error, "a write lock was not released");
                }
            });
        }
        // This replica's lock goes last, so a writer here waits for the fleet's release to be on its way.
        drop(self.local.take());
        let mut local = self
            .locks
            .local
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if local
            .get(&self.user_id)
            .is_some_and(|mutex| Arc::strong_count(mutex) == 1)
        {
            local.remove(&self.user_id);
        }
    }
}

/// Whether a listing shows what the fleet's last locked writes left in each recorded key: that value (or its
/// absence), or a later change. A holder reads until it does (v2's search lags behind ZITADEL's writes).
pub fn shows_recorded(
    items: &[usermeta_zitadel::metadata::MetadataItem],
    recorded: &HashMap<String, Recorded>,
) -> bool {
    recorded.iter().all(|(key, last)| {
        let item = items.iter().find(|item| &item.key == key);
        let later = item
            .and_then(|item| item.update_time.as_ref())
            .is_some_and(|time| {
                time.seconds
                    .saturating_mul(1000)
                    .saturating_add(i64::from(time.nanos / 1_000_000))
                    > last.at_ms
            });
        let shown = match (&last.etag, item) {
            (None, None) => true,
            (Some(recorded), Some(item)) => item
                .value
                .as_deref()
                .is_some_and(|value| usermeta_zitadel::etag::etag(key, value) == *recorded),
            _ => false,
        };
        shown || later
    })
}
