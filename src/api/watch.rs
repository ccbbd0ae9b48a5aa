//! WatchMetadata's stream: this replica's feed of changes ([`crate::fleet::Changes`]), narrowed to one
//! user and to the keys the policy lets the caller read, until the caller goes, falls too far behind, or the
//! replica stops.

use std::{pin::Pin, sync::Arc};

use compact_str::CompactString;
use futures::Stream;
use tokio::sync::{broadcast, watch};
use tonic::Status;

use super::{ApiError, convert::value_to_pb, pb};
use crate::{
    caller::Caller,
    fleet::{ChangeKind, FEED_CAPACITY, MetadataChange},
    policy::{Policy, Subject},
};

/// What one stream sends.
pub type ChangeStream = Pin<Box<dyn Stream<Item = Result<pb::MetadataChange, Status>> + Send>>;

/// Whose changes a stream carries and which of them the caller may see.
pub(super) struct Watched {
    pub policy: Arc<Policy>,
    pub caller: Caller,
    pub user_id: CompactString,
    /// The organisation ZITADEL placed the user in (for another user; the caller's own from their token).
    pub org_id: Option<CompactString>,
    pub key_prefix: String,
}

impl Watched {
    /// Whether `change` goes to this stream. The policy is asked per change, as a read of that key would be.
    fn streams(&self, change: &MetadataChange) -> bool {
        if change.user_id != self.user_id.as_str() {
            return false;
        }
        let subject = Subject {
            user_id: &self.user_id,
            org_id: self.org_id.as_deref(),
        };
        let Ok(scope) = self.policy.read_scope(&self.caller, subject) else {
            return false;
        };
        match change.kind {
            // Every key went, including those the caller may read.
            ChangeKind::DeleteAll => true,
            ChangeKind::Set | ChangeKind::Delete => {
                change.key.starts_with(&self.key_prefix) && scope.allows(&change.key)
            }
        }
    }
}

/// The stream of `watched`'s changes from `feed`, ended with UNAVAILABLE `SHUTTING_DOWN` once `stopping` turns
/// true and with RESOURCE_EXHAUSTED `WATCH_LAGGED` when the reader falls behind the feed's buffer.
pub(super) fn change_stream(
    watched: Watched,
    feed: broadcast::Receiver<Arc<MetadataChange>>,
    stopping: watch::Receiver<bool>,
) -> ChangeStream {
    let state = Open {
        watched,
        feed,
        stopping,
        _counted: Counted::new(),
    };
    Box::pin(futures::stream::unfold(Some(state), |state| async move {
        let mut state = state?;
        loop {
            let next = tokio::select! {
                biased;
                _ = state.stopping.wait_for(|stopping| *stopping) => Err(Ended::ShuttingDown),
                received = state.feed.recv() => match received {
                    Ok(change) => Ok(change),
                    Err(broadcast::error::RecvError::Lagged(missed)) => Err(Ended::Lagged(missed)),
                    // Every sender gone: the service itself is being dropped.
                    Err(broadcast::error::RecvError::Closed) => Err(Ended::ShuttingDown),
                },
            };
            match next {
                Ok(change) if state.watched.streams(&change) => {
                    return Some((Ok(to_pb(&change)), Some(state)));
                }
                Ok(_) => {}
                Err(ended) => return Some((Err(ended.into_status()), None)),
            }
        }
    }))
}

struct Open {
    watched: Watched,
    feed: broadcast::Receiver<Arc<MetadataChange>>,
    stopping: watch::Receiver<bool>,
    _counted: Counted,
}

enum Ended {
    Lagged(u64),
    ShuttingDown,
}

impl Ended {
    fn into_status(self) -> Status {
        let error = match self {
            Ended::Lagged(missed) => {
                crate::metrics::watch_ended("lagged");
                ApiError::WatchLagged {
                    missed,
                    buffer: FEED_CAPACITY,
                }
            }
            Ended::ShuttingDown => {
                crate::metrics::watch_ended("shutting_down");
                ApiError::ShuttingDown
            }
        };
        error.into()
    }
}

/// Counts a stream in the open-streams gauge for as long as it lives.
struct Counted;

impl Counted {
    fn new() -> Self {
        crate::metrics::watch_streams(1.0);
        Counted
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        crate::metrics::watch_streams(-1.0);
    }
}

fn to_pb(change: &MetadataChange) -> pb::MetadataChange {
    let kind = match change.kind {
        ChangeKind::Set => pb::ChangeKind::Set,
        ChangeKind::Delete => pb::ChangeKind::Delete,
        ChangeKind::DeleteAll => pb::ChangeKind::DeleteAll,
    };
    pb::MetadataChange {
        user_id: change.user_id.clone(),
        key: change.key.clone(),
        kind: kind.into(),
        value: change.value.clone().map(value_to_pb),
        time: Some(prost_types::Timestamp::from(change.time)),
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use futures::StreamExt as _;

    use super::*;
    use crate::caller::Identity;

    fn change(user_id: &str, key: &str, kind: ChangeKind) -> Arc<MetadataChange> {
        Arc::new(MetadataChange {
            user_id: user_id.to_owned(),
            key: key.to_owned(),
            kind,
            value: None,
            time: SystemTime::now(),
        })
    }

    fn watched_self(policy: Policy, key_prefix: &str) -> Watched {
        Watched {
            policy: Arc::new(policy),
            caller: Caller::Identified(Arc::new(Identity {
                sub: "u1".into(),
                ..Identity::default()
            })),
            user_id: "u1".into(),
            org_id: None,
            key_prefix: key_prefix.to_owned(),
        }
    }

    #[tokio::test]
    async fn only_the_users_readable_keys_under_the_prefix_are_streamed() {
        let policy = Policy::from_toml("[[key]]\nname = \"secret\"\nhidden = true\n", "test")
            .expect("policy");
        let (feed, receiver) = broadcast::channel(16);
        let (_stop, stopping) = watch::channel(false);
        let mut stream = change_stream(watched_self(policy, "t"), receiver, stopping);
        for sent in [
            change("u2", "tier", ChangeKind::Set),
            change("u1", "secret", ChangeKind::Set),
            change("u1", "other", ChangeKind::Set),
            change("u1", "tier", ChangeKind::Delete),
            change("u1", "", ChangeKind::DeleteAll),
        ] {
            feed.send(sent).expect("a stream listens");
        }
        let first = stream
            .next()
            .await
            .expect("a change")
            .expect("not an error");
        assert_eq!(
            (first.key.as_str(), first.kind()),
            ("tier", pb::ChangeKind::Delete)
        );
        let second = stream
            .next()
            .await
            .expect("a change")
            .expect("not an error");
        assert_eq!(second.kind(), pb::ChangeKind::DeleteAll);
    }

    #[tokio::test]
    async fn shutdown_ends_the_stream_with_unavailable() {
        let (_feed, receiver) = broadcast::channel(16);
        let (stop, stopping) = watch::channel(false);
        let mut stream = change_stream(watched_self(Policy::default(), ""), receiver, stopping);
        stop.send(true).expect("the stream listens");
        let ended = stream.next().await.expect("an end").expect_err("an error");
        assert_eq!(ended.code(), tonic::Code::Unavailable);
        assert!(stream.next().await.is_none(), "nothing after the end");
    }

    #[tokio::test]
    async fn a_reader_behind_the_buffer_gets_resource_exhausted() {
        let (feed, receiver) = broadcast::channel(2);
        let (_stop, stopping) = watch::channel(false);
        let mut stream = change_stream(watched_self(Policy::default(), ""), receiver, stopping);
        for i in 0..5 {
            feed.send(change("u1", &format!("k{i}"), ChangeKind::Set))
                .expect("a stream listens");
        }
        let ended = stream.next().await.expect("an end").expect_err("an error");
        assert_eq!(ended.code(), tonic::Code::ResourceExhausted);
        assert!(
            ended.message().contains("3 changes behind"),
            "{}",
            ended.message()
        );
        assert!(stream.next().await.is_none(), "nothing after the end");
    }
}
