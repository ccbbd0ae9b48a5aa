//! The feed of WatchMetadata streams on this replica: each write's news goes to the streams of its user only,
//! each stream has a queue of its own, bounded in changes and bytes, and all queues together are bounded in
//! memory. A stream that does not read falls behind its own queue and ends; it never holds up another stream,
//! and a write to one user never ends the streams of others.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};

use compact_str::CompactString;

use super::{ChangeKind, MetadataChange};

/// How many WatchMetadata streams a replica holds and how much they may buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchLimits {
    /// Streams open on the replica at once.
    pub max_streams: usize,
    /// Streams one caller (one ZITADEL user) has open on the replica at once.
    pub max_streams_per_caller: usize,
    /// Bytes of changes (keys and values) one stream may have waiting; beyond, it ends as lagged.
    pub buffer_bytes: usize,
    /// Bytes of changes all streams of the replica together may have waiting; beyond, the streams that are
    /// behind end as lagged.
    pub buffer_memory: usize,
    /// The longest a stream lives; the caller reopens it.
    pub max_duration: Duration,
}

impl Default for WatchLimits {
    fn default() -> Self {
        WatchLimits {
            max_streams: 1000,
            max_streams_per_caller: 16,
            buffer_bytes: 1024 * 1024,
            buffer_memory: 64 * 1024 * 1024,
            max_duration: Duration::from_secs(3600),
        }
    }
}

/// Changes one stream may be behind by, whatever their size.
pub const STREAM_BUFFER_CHANGES: usize = 1024;

/// Values of one write are streamed while they take at most this many bytes together; a larger write is
/// streamed without its values (as a write through another replica is): read the key for its value.
pub const MAX_STREAMED_VALUE_BYTES: usize = 64 * 1024;

/// One key of a write as the streams get it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangedKey {
    /// Empty for [`ChangeKind::DeleteAll`].
    pub key: String,
    /// The value written, when known and small enough to stream.
    pub value: Option<Vec<u8>>,
}

/// One write's news: one user, one kind, every key it changed, in one item of each queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    /// The user written to.
    pub user_id: String,
    /// Whether keys were set, removed, or all removed.
    pub kind: ChangeKind,
    /// Every key the write changed.
    pub keys: Vec<ChangedKey>,
    /// When it happened, as the replica that learnt it first knows; streams send it on.
    pub time: SystemTime,
}

impl Write {
    /// The writes `changes` make, one per run of the same user and kind (one write announces its keys
    /// together). Values are left out of a write whose values exceed [`MAX_STREAMED_VALUE_BYTES`].
    pub fn group(changes: Vec<MetadataChange>) -> Vec<Write> {
        let mut writes: Vec<Write> = Vec::new();
        for change in changes {
            let key = ChangedKey {
                key: change.key,
                value: change.value,
            };
            match writes.last_mut() {
                Some(write) if write.user_id == change.user_id && write.kind == change.kind => {
                    write.keys.push(key);
                }
                _ => writes.push(Write {
                    user_id: change.user_id,
                    kind: change.kind,
                    keys: vec![key],
                    time: change.time,
                }),
            }
        }
        for write in &mut writes {
            let values: usize = write
                .keys
                .iter()
                .filter_map(|key| key.value.as_ref())
                .map(Vec::len)
                .sum();
            if values > MAX_STREAMED_VALUE_BYTES {
                for key in &mut write.keys {
                    key.value = None;
                }
            }
        }
        writes
    }

    /// What it holds in memory, roughly: keys, values and the user id.
    fn bytes(&self) -> usize {
        let keys: usize = self
            .keys
            .iter()
            .map(|key| key.key.len() + key.value.as_ref().map_or(0, Vec::len) + 32)
            .sum();
        self.user_id.len() + keys + 64
    }
}

/// Why a stream could not open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamLimit {
    /// The replica holds [`WatchLimits::max_streams`].
    Replica(usize),
    /// The caller holds [`WatchLimits::max_streams_per_caller`].
    Caller(usize),
}

/// Why a stream fell behind and ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lag {
    /// Its own queue was full: `changes` waiting or `bytes` of them.
    Stream {
        /// Writes waiting in the queue.
        changes: usize,
        /// Their bytes.
        bytes: usize,
    },
    /// The replica's queues together reached `bytes` while this stream was behind.
    Replica {
        /// The bytes the replica's queues held.
        bytes: usize,
    },
}

/// A write queued for streams: its bytes count toward the replica's total until the last queue lets go.
#[derive(Debug)]
pub struct Queued {
    /// The write itself.
    pub write: Write,
    bytes: usize,
    total: Arc<AtomicUsize>,
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.total.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

#[derive(Debug, Default)]
struct QueueState {
    items: VecDeque<Arc<Queued>>,
    bytes: usize,
    lagged: Option<Lag>,
    /// Writes this stream will not see: dropped from its queue when it fell behind, and any since.
    missed: u64,
}

#[derive(Debug, Default)]
struct Queue {
    state: Mutex<QueueState>,
    ready: tokio::sync::Notify,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push(&self, item: &Arc<Queued>, limits: &WatchLimits) {
        let mut state = self.lock();
        if state.lagged.is_some() {
            state.missed += 1;
            return;
        }
        // One write always fits an empty queue, however large: a reader that keeps up never lags.
        let full = state.items.len() >= STREAM_BUFFER_CHANGES
            || (!state.items.is_empty() && state.bytes + item.bytes > limits.buffer_bytes);
        if full {
            let lag = Lag::Stream {
                changes: STREAM_BUFFER_CHANGES,
                bytes: limits.buffer_bytes,
            };
            Self::fall_behind(&mut state, lag);
            state.missed += 1;
        } else {
            state.bytes += item.bytes;
            state.items.push_back(Arc::clone(item));
        }
        drop(state);
        self.ready.notify_one();
    }

    /// Ends a stream that has anything waiting; its queue is let go at once.
    fn lag_if_behind(&self, lag: Lag) {
        let mut state = self.lock();
        if state.lagged.is_none() && !state.items.is_empty() {
            Self::fall_behind(&mut state, lag);
            drop(state);
            self.ready.notify_one();
        }
    }

    fn fall_behind(state: &mut QueueState, lag: Lag) {
        state.missed += state.items.len() as u64;
        state.items.clear();
        state.bytes = 0;
        state.lagged = Some(lag);
    }
}

#[derive(Debug, Default)]
struct Registry {
    by_user: HashMap<String, Vec<Arc<Queue>>>,
    per_caller: HashMap<CompactString, usize>,
    open: usize,
}

#[derive(Debug)]
struct Shared {
    limits: WatchLimits,
    registry: Mutex<Registry>,
    /// Bytes of the writes some queue holds, each counted once.
    queued_bytes: Arc<AtomicUsize>,
}

/// The replica's streams, by user. Cloning shares it.
#[derive(Debug, Clone)]
pub(super) struct Feed {
    shared: Arc<Shared>,
}

impl Feed {
    pub(super) fn new(limits: WatchLimits) -> Feed {
        Feed {
            shared: Arc::new(Shared {
                limits,
                registry: Mutex::new(Registry::default()),
                queued_bytes: Arc::new(AtomicUsize::new(0)),
            }),
        }
    }

    pub(super) fn limits(&self) -> &WatchLimits {
        &self.shared.limits
    }

    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.shared
            .registry
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Opens a stream of `user_id`'s writes for `caller`, within the limits on streams.
    pub(super) fn subscribe(
        &self,
        user_id: &str,
        caller: &str,
    ) -> Result<Subscription, StreamLimit> {
        let limits = self.shared.limits;
        let mut registry = self.registry();
        if registry.open >= limits.max_streams {
            return Err(StreamLimit::Replica(limits.max_streams));
        }
        let held = registry.per_caller.get(caller).copied().unwrap_or(0);
        if held >= limits.max_streams_per_caller {
            return Err(StreamLimit::Caller(limits.max_streams_per_caller));
        }
        let queue = Arc::new(Queue::default());
        registry
            .by_user
            .entry(user_id.to_owned())
            .or_default()
            .push(Arc::clone(&queue));
        *registry.per_caller.entry(caller.into()).or_default() += 1;
        registry.open += 1;
        crate::metrics::watch_streams(1.0);
        Ok(Subscription {
            feed: self.clone(),
            queue,
            user_id: user_id.to_owned(),
            caller: caller.into(),
        })
    }

    /// Hands each write to the streams of its user. Nothing is kept for a user nobody watches.
    pub(super) fn publish(&self, writes: Vec<Write>) {
        for write in writes {
            self.publish_one(write);
        }
    }

    fn publish_one(&self, write: Write) {
        let limits = self.shared.limits;
        let registry = self.registry();
        let Some(streams) = registry.by_user.get(&write.user_id) else {
            return;
        };
        let bytes = write.bytes();
        let total = Arc::clone(&self.shared.queued_bytes);
        let before = total.fetch_add(bytes, Ordering::Relaxed);
        let item = Arc::new(Queued {
            write,
            bytes,
            total,
        });
        if before + bytes > limits.buffer_memory {
            // Memory is short: the streams that are behind let go of what they hold (rare; O(streams)).
            let lag = Lag::Replica {
                bytes: limits.buffer_memory,
            };
            for queue in registry.by_user.values().flatten() {
                queue.lag_if_behind(lag);
            }
        }
        for queue in streams {
            queue.push(&item, &limits);
        }
    }
}

/// One open stream's end of the feed; closing it (dropping) frees its place in the limits.
#[derive(Debug)]
pub struct Subscription {
    feed: Feed,
    queue: Arc<Queue>,
    user_id: String,
    caller: CompactString,
}

impl Subscription {
    /// The next write of the user, or why the stream fell behind (then it is over).
    pub async fn next(&self) -> Result<Arc<Queued>, (Lag, u64)> {
        loop {
            {
                let mut state = self.queue.lock();
                if let Some(lag) = state.lagged {
                    return Err((lag, state.missed));
                }
                if let Some(item) = state.items.pop_front() {
                    state.bytes -= item.bytes;
                    return Ok(item);
                }
            }
            // `notify_one` stores a permit when no one waits: a push between the check and here is not lost.
            self.queue.ready.notified().await;
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut registry = self.feed.registry();
        if let Some(streams) = registry.by_user.get_mut(&self.user_id) {
            streams.retain(|queue| !Arc::ptr_eq(queue, &self.queue));
            if streams.is_empty() {
                registry.by_user.remove(&self.user_id);
            }
        }
        if let Some(held) = registry.per_caller.get_mut(&self.caller) {
            *held -= 1;
            if *held == 0 {
                registry.per_caller.remove(&self.caller);
            }
        }
        registry.open -= 1;
        crate::metrics::watch_streams(-1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(user_id: &str, keys: &[&str], value: &[u8]) -> Vec<MetadataChange> {
        keys.iter()
            .map(|key| MetadataChange {
                user_id: user_id.to_owned(),
                key: (*key).to_owned(),
                kind: ChangeKind::Set,
                value: Some(value.to_vec()),
                time: SystemTime::now(),
            })
            .collect()
    }

    fn limits() -> WatchLimits {
        WatchLimits {
            max_streams: 3,
            max_streams_per_caller: 2,
            buffer_bytes: 10_000,
            buffer_memory: 100_000,
            ..WatchLimits::default()
        }
    }

    #[tokio::test]
    async fn a_write_is_one_item_for_the_streams_of_its_user_only() {
        let feed = Feed::new(limits());
        let watcher = feed.subscribe("u1", "c1").expect("opens");
        let other = feed.subscribe("u2", "c2").expect("opens");
        let keys: Vec<String> = (0..2000).map(|i| format!("k{i}")).collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        feed.publish(Write::group(set("u2", &keys, b"")));
        feed.publish(Write::group(set("u1", &["a", "b"], b"v")));
        let write = watcher.next().await.expect("u1's write");
        assert_eq!(write.write.keys.len(), 2);
        let big = other.next().await.expect("one item, not 2000");
        assert_eq!(big.write.keys.len(), 2000);
    }

    #[test]
    fn streams_are_limited_per_caller_and_per_replica_and_freed_when_closed() {
        let feed = Feed::new(limits());
        let first = feed.subscribe("u1", "c1").expect("opens");
        let _second = feed.subscribe("u2", "c1").expect("opens");
        assert_eq!(
            feed.subscribe("u3", "c1").unwrap_err(),
            StreamLimit::Caller(2)
        );
        let _third = feed.subscribe("u3", "c2").expect("another caller");
        assert_eq!(
            feed.subscribe("u4", "c3").unwrap_err(),
            StreamLimit::Replica(3)
        );
        drop(first);
        feed.subscribe("u1", "c1").expect("a place was freed");
    }

    #[tokio::test]
    async fn a_stream_that_does_not_read_lags_alone_and_lets_go_of_its_queue() {
        let feed = Feed::new(limits());
        let idle = feed.subscribe("u1", "c1").expect("opens");
        let reader = feed.subscribe("u1", "c2").expect("opens");
        for i in 0..20 {
            feed.publish(Write::group(set("u1", &[&format!("k{i}")], &[0; 1000])));
            reader.next().await.expect("the reader keeps up");
        }
        let (lag, missed) = idle.next().await.expect_err("behind");
        assert!(matches!(lag, Lag::Stream { .. }), "{lag:?}");
        assert!(missed > 0);
        assert_eq!(
            feed.shared.queued_bytes.load(Ordering::Relaxed),
            0,
            "nothing is held for the stream that fell behind"
        );
    }

    #[tokio::test]
    async fn one_large_write_reaches_a_reader_that_keeps_up() {
        let feed = Feed::new(limits());
        let reader = feed.subscribe("u1", "c1").expect("opens");
        feed.publish(Write::group(set("u1", &["a", "b", "c"], &[1; 30_000])));
        let write = reader.next().await.expect("delivered");
        assert!(
            write.write.keys.iter().all(|key| key.value.is_none()),
            "values over the streamed limit are left out"
        );
    }

    #[tokio::test]
    async fn short_memory_ends_the_streams_that_are_behind() {
        let feed = Feed::new(WatchLimits {
            buffer_bytes: 60_000,
            buffer_memory: 50_000,
            ..limits()
        });
        let behind = feed.subscribe("u1", "c1").expect("opens");
        let fresh = feed.subscribe("u2", "c2").expect("opens");
        for i in 0..2 {
            feed.publish(Write::group(set("u1", &[&format!("k{i}")], &[0; 30_000])));
        }
        feed.publish(Write::group(set("u2", &["x"], b"1")));
        let (lag, _) = behind.next().await.expect_err("ended");
        assert_eq!(lag, Lag::Replica { bytes: 50_000 });
        fresh.next().await.expect("a stream that keeps up goes on");
    }
}
