//! Read your writes over an eventually consistent listing. ZITADEL's v2 `ListUserMetadata` reads a projection
//! that trails the event store (ZITADEL's own tests poll for up to a minute), so a caller that writes through
//! usermeta and lists right after could miss its write or still see a deleted key. This replica remembers its
//! own successful writes per user for a window and lays them over what the projection returns; a remembered
//! write is forgotten as soon as the projection shows it (or something newer), or when the window ends.
//!
//! It covers writes made through this replica. Replicas learn of each other's writes only through ZITADEL.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use prost_types::Timestamp;

use crate::metadata::{KeyFilter, MetadataItem};

/// One key as a write through this replica left it.
#[derive(Debug, Clone)]
pub(crate) struct Change {
    key: String,
    /// `None`: removed.
    value: Option<Vec<u8>>,
    /// ZITADEL's date of the write (`setDate` / `deletionDate`), when it gave one.
    date: Option<Timestamp>,
    at: Instant,
    /// Order of writing within the user: remembered keys not yet listed are appended in this order.
    seq: u64,
}

/// One user's remembered writes, by key: a key written again replaces its earlier write in O(1).
#[derive(Debug, Default)]
struct UserWrites {
    by_key: HashMap<String, Change>,
    next_seq: u64,
}

impl UserWrites {
    fn forget_expired(&mut self, now: Instant, window: Duration) {
        self.by_key
            .retain(|_, change| now.duration_since(change.at) < window);
    }
}

/// The process-wide map only finds a user's entry; everything a request sizes (its keys, the user's
/// remembered writes, the listing) is done under that user's own lock or none, so one large write or listing
/// never holds up the writes and listings of other users.
#[derive(Debug)]
struct Users {
    by_id: HashMap<String, Arc<Mutex<UserWrites>>>,
    /// When users whose writes all left the window were last dropped: once a window, not on every write.
    swept: Instant,
}

#[derive(Debug)]
pub(crate) struct RecentWrites {
    window: Duration,
    users: Mutex<Users>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl RecentWrites {
    pub(crate) fn new(window: Duration) -> Self {
        RecentWrites {
            window,
            users: Mutex::new(Users {
                by_id: HashMap::new(),
                swept: Instant::now(),
            }),
        }
    }

    fn user(&self, user_id: &str) -> Option<Arc<Mutex<UserWrites>>> {
        lock(&self.users).by_id.get(user_id).cloned()
    }

    /// Remembers a successful write of `changes` (key → value, `None` for a removal) on `user_id`.
    pub(crate) fn record(
        &self,
        user_id: &str,
        changes: impl IntoIterator<Item = (String, Option<Vec<u8>>)>,
        date: Option<Timestamp>,
    ) {
        if self.window.is_zero() {
            return;
        }
        let at = Instant::now();
        let user = {
            let mut users = lock(&self.users);
            if at.duration_since(users.swept) >= self.window {
                // Once a window: O(users with recent writes), never per request.
                users.swept = at;
                let window = self.window;
                users.by_id.retain(|_, writes| {
                    let mut writes = lock(writes);
                    writes.forget_expired(at, window);
                    !writes.by_key.is_empty()
                });
            }
            Arc::clone(users.by_id.entry(user_id.to_owned()).or_default())
        };
        let mut writes = lock(&user);
        for (key, value) in changes {
            let seq = writes.next_seq;
            writes.next_seq += 1;
            writes.by_key.insert(
                key.clone(),
                Change {
                    key,
                    value,
                    date,
                    at,
                    seq,
                },
            );
        }
    }

    /// The user's remembered writes still inside the window, in the order written, if any.
    pub(crate) fn pending(&self, user_id: &str) -> Option<Vec<Change>> {
        let now = Instant::now();
        let user = self.user(user_id)?;
        let mut pending: Vec<Change> = lock(&user)
            .by_key
            .values()
            .filter(|change| now.duration_since(change.at) < self.window)
            .cloned()
            .collect();
        pending.sort_unstable_by_key(|change| change.seq);
        (!pending.is_empty()).then_some(pending)
    }

    /// `listed` (the projection's whole answer, oldest first) corrected by `pending`; keys set here and not
    /// yet listed come last (they are the newest). Writes the projection already shows are forgotten. Linear
    /// in the listing and the pending writes.
    pub(crate) fn apply(
        &self,
        user_id: &str,
        pending: &[Change],
        listed: Vec<MetadataItem>,
        filter: Option<&KeyFilter>,
    ) -> Vec<MetadataItem> {
        let position: HashMap<&str, usize> = listed
            .iter()
            .enumerate()
            .map(|(at, item)| (item.key.as_str(), at))
            .collect();
        let mut corrected = Vec::with_capacity(listed.len());
        let mut appended = Vec::new();
        let mut caught_up: HashMap<&str, u64> = HashMap::new();
        let mut edits: HashMap<usize, &Change> = HashMap::new();
        for change in pending {
            let at = position.get(change.key.as_str()).copied();
            if projection_shows(change, at.map(|at| &listed[at])) {
                caught_up.insert(&change.key, change.seq);
                continue;
            }
            match at {
                Some(at) => {
                    edits.insert(at, change);
                }
                None => {
                    if let Some(value) = &change.value
                        && filter.is_none_or(|filter| filter.matches(&change.key))
                    {
                        appended.push(MetadataItem {
                            key: change.key.clone(),
                            value: Some(value.clone()),
                            create_time: change.date,
                            update_time: change.date,
                        });
                    }
                }
            }
        }
        for (at, mut item) in listed.into_iter().enumerate() {
            match edits.get(&at) {
                None => corrected.push(item),
                Some(Change { value: None, .. }) => {}
                Some(change) => {
                    item.value.clone_from(&change.value);
                    item.update_time = change.date;
                    corrected.push(item);
                }
            }
        }
        if !caught_up.is_empty()
            && let Some(user) = self.user(user_id)
        {
            let mut writes = lock(&user);
            // Only the very write seen here: a newer write of the key since then stays remembered.
            writes
                .by_key
                .retain(|key, change| caught_up.get(key.as_str()) != Some(&change.seq));
            let emptied = writes.by_key.is_empty();
            drop(writes);
            if emptied {
                let mut users = lock(&self.users);
                if users.by_id.get(user_id).is_some_and(|current| {
                    Arc::ptr_eq(current, &user) && lock(current).by_key.is_empty()
                }) {
                    users.by_id.remove(user_id);
                }
            }
        }
        corrected.extend(appended);
        corrected
    }
}

/// Whether the projection already reflects `change` (or a later write of the key).
fn projection_shows(change: &Change, shown: Option<&MetadataItem>) -> bool {
    let newer = |item: &MetadataItem| match (&item.update_time, &change.date) {
        (Some(listed), Some(written)) => {
            (listed.seconds, listed.nanos) >= (written.seconds, written.nanos)
        }
        _ => false,
    };
    match (&change.value, shown) {
        // A removal shows as absence; a key listed with a later change date was set again since.
        (None, None) => true,
        (None, Some(item)) => newer(item),
        (Some(value), Some(item)) => {
            newer(item) || item.value.as_ref() == Some(value) && change.date.is_none()
        }
        (Some(_), None) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(key: &str, value: &[u8], changed: i64) -> MetadataItem {
        let at = Some(Timestamp {
            seconds: changed,
            nanos: 0,
        });
        MetadataItem {
            key: key.to_owned(),
            value: Some(value.to_vec()),
            create_time: at,
            update_time: at,
        }
    }

    fn date(seconds: i64) -> Option<Timestamp> {
        Some(Timestamp { seconds, nanos: 0 })
    }

    #[test]
    fn own_writes_show_until_the_projection_does() {
        let recent = RecentWrites::new(Duration::from_secs(60));
        recent.record("u", [("new".to_owned(), Some(b"1".to_vec()))], date(10));
        recent.record("u", [("gone".to_owned(), None)], date(11));
        recent.record("u", [("changed".to_owned(), Some(b"2".to_vec()))], date(12));
        let lagging = vec![item("gone", b"x", 1), item("changed", b"old", 2)];
        let pending = recent.pending("u").unwrap();
        let seen = recent.apply("u", &pending, lagging, None);
        let keys: Vec<(&str, &[u8])> = seen
            .iter()
            .map(|i| (i.key.as_str(), i.value.as_deref().unwrap()))
            .collect();
        assert_eq!(keys, [("changed", &b"2"[..]), ("new", &b"1"[..])]);

        // The projection caught up: its answer stands and the remembered writes are forgotten.
        let current = vec![item("changed", b"2", 12), item("new", b"1", 10)];
        let pending = recent.pending("u").unwrap();
        assert_eq!(recent.apply("u", &pending, current.clone(), None), current);
        assert!(recent.pending("u").is_none());
    }

    #[test]
    fn a_filter_keeps_out_remembered_keys_it_would_not_list() {
        let recent = RecentWrites::new(Duration::from_secs(60));
        recent.record(
            "u",
            [("profile.x".to_owned(), Some(b"1".to_vec()))],
            date(5),
        );
        let filter = KeyFilter {
            key: "billing.".to_owned(),
            matching: crate::metadata::KeyMatch::StartsWith,
        };
        let pending = recent.pending("u").unwrap();
        assert!(
            recent
                .apply("u", &pending, vec![], Some(&filter))
                .is_empty()
        );
    }

    #[test]
    fn many_keys_keep_their_order_and_the_last_write_of_each() {
        let recent = RecentWrites::new(Duration::from_secs(60));
        let keys: Vec<String> = (0..5_000).map(|i| format!("k{i:05}")).collect();
        recent.record(
            "u",
            keys.iter().map(|key| (key.clone(), Some(b"1".to_vec()))),
            date(5),
        );
        recent.record("u", [("k00001".to_owned(), None)], date(6));
        recent.record("u", [("k00000".to_owned(), Some(b"2".to_vec()))], date(7));
        let pending = recent.pending("u").unwrap();
        assert_eq!(pending.len(), keys.len(), "one remembered write per key");
        let listed = vec![item("k00001", b"old", 1)];
        let seen = recent.apply("u", &pending, listed, None);
        assert_eq!(seen.len(), keys.len() - 1, "the removed key is gone");
        assert_eq!(seen.first().map(|i| i.key.as_str()), Some("k00002"));
        let last = seen.last().unwrap();
        assert_eq!(
            (last.key.as_str(), last.value.as_deref()),
            ("k00000", Some(&b"2"[..]))
        );
    }

    #[test]
    fn a_newer_write_of_a_caught_up_key_stays_remembered() {
        let recent = RecentWrites::new(Duration::from_secs(60));
        recent.record("u", [("k".to_owned(), Some(b"1".to_vec()))], date(5));
        let pending = recent.pending("u").unwrap();
        recent.record("u", [("k".to_owned(), Some(b"2".to_vec()))], date(6));
        // The projection shows the first write: only that write is forgotten, the second is still pending.
        let shown = recent.apply("u", &pending, vec![item("k", b"1", 5)], None);
        assert_eq!(shown[0].value.as_deref(), Some(&b"1"[..]));
        let left = recent.pending("u").expect("the newer write");
        assert_eq!(left[0].value.as_deref(), Some(&b"2"[..]));
    }

    #[test]
    fn a_zero_window_remembers_nothing() {
        let recent = RecentWrites::new(Duration::ZERO);
        recent.record("u", [("k".to_owned(), None)], None);
        assert!(recent.pending("u").is_none());
    }
}
