//! Read your writes over an eventually consistent listing. ZITADEL's v2 `ListUserMetadata` reads a projection
//! that trails the event store (ZITADEL's own tests poll for up to a minute), so a caller that writes through
//! usermeta and lists right after could miss its write or still see a deleted key. This replica remembers its
//! own successful writes per user for a window and lays them over what the projection returns; a remembered
//! write is forgotten as soon as the projection shows it (or something newer), or when the window ends.
//!
//! It covers writes made through this replica. Replicas learn of each other's writes only through ZITADEL.

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
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
}

#[derive(Debug)]
pub(crate) struct RecentWrites {
    window: Duration,
    /// By user id, in the order written.
    users: Mutex<HashMap<String, Vec<Change>>>,
}

impl RecentWrites {
    pub(crate) fn new(window: Duration) -> Self {
        RecentWrites {
            window,
            users: Mutex::new(HashMap::new()),
        }
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
        let mut users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        // Forget users whose writes all left the window, so the map stays as small as recent activity.
        users.retain(|_, writes| {
            writes.retain(|change| at.duration_since(change.at) < self.window);
            !writes.is_empty()
        });
        let writes = users.entry(user_id.to_owned()).or_default();
        for (key, value) in changes {
            writes.retain(|change| change.key != key);
            writes.push(Change {
                key,
                value,
                date,
                at,
            });
        }
    }

    /// The user's remembered writes still inside the window, if any.
    pub(crate) fn pending(&self, user_id: &str) -> Option<Vec<Change>> {
        let now = Instant::now();
        let users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        let pending: Vec<Change> = users
            .get(user_id)?
            .iter()
            .filter(|change| now.duration_since(change.at) < self.window)
            .cloned()
            .collect();
        (!pending.is_empty()).then_some(pending)
    }

    /// `listed` (the projection's whole answer, oldest first) corrected by `pending`; keys set here and not
    /// yet listed come last (they are the newest). Writes the projection already shows are forgotten.
    pub(crate) fn apply(
        &self,
        user_id: &str,
        pending: &[Change],
        mut listed: Vec<MetadataItem>,
        filter: Option<&KeyFilter>,
    ) -> Vec<MetadataItem> {
        let mut caught_up = Vec::new();
        for change in pending {
            let position = listed.iter().position(|item| item.key == change.key);
            let shown = position.map(|at| &listed[at]);
            if projection_shows(change, shown) {
                caught_up.push(change.key.clone());
                continue;
            }
            match (&change.value, position) {
                (None, Some(at)) => {
                    listed.remove(at);
                }
                (None, None) => {}
                (Some(value), Some(at)) => {
                    listed[at].value = Some(value.clone());
                    listed[at].update_time = change.date;
                }
                (Some(value), None) => {
                    if filter.is_none_or(|filter| filter.matches(&change.key)) {
                        listed.push(MetadataItem {
                            key: change.key.clone(),
                            value: Some(value.clone()),
                            create_time: change.date,
                            update_time: change.date,
                        });
                    }
                }
            }
        }
        if !caught_up.is_empty() {
            let mut users = self.users.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(writes) = users.get_mut(user_id) {
                writes.retain(|change| {
                    !(caught_up.contains(&change.key)
                        && pending
                            .iter()
                            .any(|seen| seen.key == change.key && seen.at == change.at))
                });
                if writes.is_empty() {
                    users.remove(user_id);
                }
            }
        }
        listed
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
    fn a_zero_window_remembers_nothing() {
        let recent = RecentWrites::new(Duration::ZERO);
        recent.record("u", [("k".to_owned(), None)], None);
        assert!(recent.pending("u").is_none());
    }
}
