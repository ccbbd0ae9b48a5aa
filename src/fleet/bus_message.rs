//! What replicas say to each other over Redis, and why a replica believes it: every message carries an
//! HMAC-SHA256 tag under a key the replicas share ([`BusKey`]), a send time and a sequence number of its
//! sender, and every field is bounded. Anyone else who can publish on the channel can no longer make a replica
//! drop cached answers, feed its streams or hold their data; a captured message cannot be sent again.
//!
//! On the wire: `<64 hex digits of the tag>.<the JSON of [`Change`]>`, the tag over the channel's name, a
//! newline and the JSON, so a tag is good for this channel only.

use std::{
    collections::HashMap,
    fmt,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use aws_lc_rs::hmac;
use serde::{Deserialize, Serialize};

use super::{CHANNEL, ChangeKind};

/// The largest message read: a message of [`MAX_KEYS`] keys of [`MAX_KEY_CHARS`] characters of 4 UTF-8 bytes
/// each (escaped quotes take 2) fits with room to spare; anything longer is refused before it is parsed.
pub const MAX_MESSAGE_BYTES: usize = 96 * 1024;
/// Longest user id, as the API and ZITADEL allow.
pub const MAX_USER_ID_CHARS: usize = 200;
/// Longest key, as the API and ZITADEL allow.
pub const MAX_KEY_CHARS: usize = 200;
/// Most keys in one message: a write of more keys travels as several messages. The API accepts at most this
/// many entries or keys per request.
pub const MAX_KEYS: usize = 100;
/// Longest sender id (replicas use 16 hex digits).
pub(super) const MAX_ORIGIN_CHARS: usize = 64;
/// How far a message's send time may be from this replica's clock, either way. Messages take milliseconds;
/// this leaves room for clocks that NTP keeps apart by less. Older ones are refused, so a captured message
/// cannot be sent again once its sender's sequence number has been forgotten.
pub const FRESHNESS: Duration = Duration::from_secs(60);
/// Senders whose last sequence number is remembered; beyond this, the one heard from longest ago is forgotten.
const REMEMBERED_ORIGINS: usize = 1024;

const _: () = assert!(
    MAX_KEYS * (MAX_KEY_CHARS * 4 + 3) + MAX_USER_ID_CHARS * 4 + MAX_ORIGIN_CHARS + 512
        <= MAX_MESSAGE_BYTES
);

/// The purpose a default [`BusKey`] is derived for from the service credential.
pub const BUS_KEY_PURPOSE: &str = "usermeta fleet bus v2";
const MESSAGE_LABEL: &[u8] = b"usermeta bus messages v2";
const CLAIM_LABEL: &[u8] = b"usermeta webhook claims v2";

/// The key replicas authenticate their messages (and name their claims) with: derived from one shared secret,
/// or from each line of [`REDIS_BUS_KEY_FILE`](crate::settings::names::REDIS_BUS_KEY_FILE) (the first signs, every one is accepted, for rotation).
/// Never printed.
#[derive(Clone)]
pub struct BusKey {
    signing: Vec<hmac::Key>,
    claims: hmac::Key,
}

impl fmt::Debug for BusKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BusKey({} keys, redacted)", self.signing.len())
    }
}

/// A key file that holds nothing usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusKeyError {
    /// The file holds no key: every line is blank or a `#` comment.
    #[error(
        "holds no key: put a random secret of at least 32 characters on a line of its own (e.g. the output of `openssl rand -hex 32`), the same on every replica"
    )]
    Empty,
    /// A line is too short to be a random secret.
    #[error(
        "line {line} holds a key of fewer than 32 characters: use a random secret of at least 32 (e.g. `openssl rand -hex 32`)"
    )]
    TooShort {
        /// The short line, from 1.
        line: usize,
    },
}

/// The shortest secret accepted from a key file.
const MIN_SECRET_CHARS: usize = 32;

impl BusKey {
    /// From one secret every replica holds alike (the secret derived from the service credential).
    pub fn from_secret(secret: &[u8]) -> BusKey {
        BusKey::from_secrets(&[secret])
    }

    /// One secret per non-empty line (surrounding whitespace and `#` comment lines ignored); the first line
    /// signs, every line is accepted.
    pub fn from_text(text: &str) -> Result<BusKey, BusKeyError> {
        let mut secrets = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if line.chars().count() < MIN_SECRET_CHARS {
                return Err(BusKeyError::TooShort { line: index + 1 });
            }
            secrets.push(line.as_bytes());
        }
        if secrets.is_empty() {
            return Err(BusKeyError::Empty);
        }
        Ok(BusKey::from_secrets(&secrets))
    }

    fn from_secrets(secrets: &[&[u8]]) -> BusKey {
        let derive = |secret: &[u8], label: &[u8]| {
            let derived = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), label);
            hmac::Key::new(hmac::HMAC_SHA256, derived.as_ref())
        };
        BusKey {
            signing: secrets
                .iter()
                .map(|secret| derive(secret, MESSAGE_LABEL))
                .collect(),
            claims: derive(secrets[0], CLAIM_LABEL),
        }
    }

    /// How many keys are accepted.
    pub fn len(&self) -> usize {
        self.signing.len()
    }

    /// Always false: a key has at least one secret.
    pub fn is_empty(&self) -> bool {
        self.signing.is_empty()
    }

    /// The name under which `what` is claimed in Redis: only holders of the key can compute it, so whoever
    /// else writes to Redis cannot claim something ahead of the replicas.
    pub fn claim_name(&self, kind: &str, what: &[u8]) -> String {
        let tag = hmac::sign(&self.claims, what);
        format!(
            "usermeta.v2.{kind}.{}",
            data_encoding::HEXLOWER.encode(tag.as_ref())
        )
    }

    fn tag(&self, json: &[u8]) -> hmac::Tag {
        let mut context = hmac::Context::with_key(&self.signing[0]);
        context.update(CHANNEL.as_bytes());
        context.update(b"\n");
        context.update(json);
        context.sign()
    }

    fn verifies(&self, json: &[u8], tag: &[u8]) -> bool {
        let mut signed = Vec::with_capacity(CHANNEL.len() + 1 + json.len());
        signed.extend_from_slice(CHANNEL.as_bytes());
        signed.push(b'\n');
        signed.extend_from_slice(json);
        // `hmac::verify` compares in constant time.
        self.signing
            .iter()
            .any(|key| hmac::verify(key, &signed, tag).is_ok())
    }
}

/// What replicas tell each other: who changed, never what the values are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Change {
    /// The replica that sent it (it ignores its own messages).
    pub origin: String,
    /// The sender's count of its messages, from 1: a number at or below the last one heard is a replay.
    pub seq: u64,
    /// When it was sent, in milliseconds since the Unix epoch.
    pub sent_ms: u64,
    pub user_id: String,
    /// The keys written or removed; empty means "any key".
    #[serde(default)]
    pub keys: Vec<String>,
    /// What happened to them, when the write is known to have landed; absent for a write whose outcome is
    /// unknown (the others only drop cached answers, their streams are not told).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<ChangeKind>,
    /// When the change happened, in milliseconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_ms: Option<u64>,
    /// Set when an organisation's own metadata changed (or may have): receivers forget that organisation.
    /// `user_id` is then [`ORGANIZATION_NEWS_USER`], so a replica from before organisation metadata (which
    /// ignores this field) reads a message it believes and drops the cached answers of a user that does not
    /// exist: nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_id: Option<String>,
}

/// The `user_id` of a message about an organisation (see [`Change::org_id`]): no ZITADEL user id (those are
/// digits, or custom ids without `:`).
pub(super) const ORGANIZATION_NEWS_USER: &str = "usermeta:organization";

/// Why a message was not believed. Each is counted by its [`Rejected::reason`]; none says what the message
/// held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Rejected {
    /// Longer than [`MAX_MESSAGE_BYTES`]: not even parsed.
    Oversized,
    /// Not `<tag>.<JSON>`, or JSON that is not a [`Change`].
    Unparsable,
    /// No key of this replica made the tag: not from a replica of this fleet (or of another key).
    BadTag,
    /// Authentic, but a field is out of bounds (a replica never sends such).
    OutOfBounds,
    /// Sent longer than [`FRESHNESS`] ago, or that far in the future.
    Stale,
    /// Its sender's sequence number was heard before.
    Replayed,
}

impl Rejected {
    /// The metric's `reason` label.
    pub(super) fn reason(self) -> &'static str {
        match self {
            Rejected::Oversized => "oversized",
            Rejected::Unparsable => "unparsable",
            Rejected::BadTag => "bad_tag",
            Rejected::OutOfBounds => "out_of_bounds",
            Rejected::Stale => "stale",
            Rejected::Replayed => "replayed",
        }
    }
}

/// Milliseconds since the Unix epoch.
pub(super) fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| {
        u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
    })
}

impl Change {
    /// Whether every field is within the bounds receivers hold messages to.
    pub(super) fn within_bounds(&self) -> bool {
        let id_like = |text: &str, max: usize| {
            !text.is_empty()
                && text.chars().count() <= max
                && !text.chars().any(|c| c.is_control() || c.is_whitespace())
        };
        let key = |key: &String| {
            !key.is_empty()
                && key.chars().count() <= MAX_KEY_CHARS
                && !key.chars().any(char::is_control)
        };
        id_like(&self.origin, MAX_ORIGIN_CHARS)
            && id_like(&self.user_id, MAX_USER_ID_CHARS)
            && self.seq > 0
            && self.keys.len() <= MAX_KEYS
            && self.keys.iter().all(key)
            && self
                .org_id
                .as_deref()
                .is_none_or(|org| id_like(org, MAX_USER_ID_CHARS))
    }

    /// The message as published: the tag, a dot, the JSON.
    pub(super) fn seal(&self, key: &BusKey) -> String {
        // A Change always serializes (strings, numbers, an enum).
        let json = serde_json::to_string(self).unwrap_or_default();
        let tag = key.tag(json.as_bytes());
        format!("{}.{json}", data_encoding::HEXLOWER.encode(tag.as_ref()))
    }

    /// Reads a message as it came from Redis: size first, then the tag, then the JSON, then every bound and
    /// the send time. Nothing of an unauthenticated message is parsed.
    pub(super) fn open(key: &BusKey, raw: &[u8], now: SystemTime) -> Result<Change, Rejected> {
        if raw.len() > MAX_MESSAGE_BYTES {
            return Err(Rejected::Oversized);
        }
        const TAG_HEX: usize = 64;
        if raw.len() <= TAG_HEX || raw[TAG_HEX] != b'.' {
            return Err(Rejected::Unparsable);
        }
        let (tag, json) = (&raw[..TAG_HEX], &raw[TAG_HEX + 1..]);
        let tag = data_encoding::HEXLOWER_PERMISSIVE
            .decode(tag)
            .map_err(|_| Rejected::Unparsable)?;
        if !key.verifies(json, &tag) {
            return Err(Rejected::BadTag);
        }
        let change: Change = serde_json::from_slice(json).map_err(|_| Rejected::Unparsable)?;
        if !change.within_bounds() {
            return Err(Rejected::OutOfBounds);
        }
        if unix_ms(now).abs_diff(change.sent_ms) > FRESHNESS.as_millis() as u64 {
            return Err(Rejected::Stale);
        }
        Ok(change)
    }
}

/// The last sequence number heard from each sender, so a captured message sent again within
/// [`FRESHNESS`] is refused (later it is stale anyway). Only authentic senders are remembered, each until
/// its messages could no longer be fresh.
#[derive(Debug, Default)]
pub(super) struct ReplayGuard {
    last: HashMap<String, (u64, Instant)>,
}

impl ReplayGuard {
    /// Whether `change` is the first of its sender's messages with its number (and records it).
    pub(super) fn admit(&mut self, change: &Change, now: Instant) -> bool {
        if let Some((last, heard)) = self.last.get_mut(&change.origin) {
            if change.seq <= *last {
                return false;
            }
            *last = change.seq;
            *heard = now;
            return true;
        }
        // A sender silent for twice the freshness window has no message left that could pass as fresh.
        self.last
            .retain(|_, (_, heard)| now.duration_since(*heard) < 2 * FRESHNESS);
        if self.last.len() >= REMEMBERED_ORIGINS
            && let Some(oldest) = self
                .last
                .iter()
                .min_by_key(|(_, (_, heard))| *heard)
                .map(|(origin, _)| origin.clone())
        {
            self.last.remove(&oldest);
        }
        self.last.insert(change.origin.clone(), (change.seq, now));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> BusKey {
        BusKey::from_secret(b"a secret of the fleet")
    }

    fn change(now: SystemTime) -> Change {
        Change {
            origin: "0123456789abcdef".to_owned(),
            seq: 1,
            sent_ms: unix_ms(now),
            user_id: "312909075211944344".to_owned(),
            keys: vec!["profile.language".to_owned()],
            kind: Some(ChangeKind::Set),
            time_ms: Some(unix_ms(now)),
            org_id: None,
        }
    }

    /// A replica from before organisation metadata reads the message of a newer one about an organisation
    /// (an unknown field is ignored, its user a marker), and a newer one reads an older one's about a user.
    #[test]
    fn organisation_news_is_compatible_both_ways() {
        let now = SystemTime::now();
        let mut about_org = change(now);
        about_org.user_id = ORGANIZATION_NEWS_USER.to_owned();
        about_org.keys.clear();
        about_org.kind = None;
        about_org.org_id = Some("170848145649959170".to_owned());
        let sealed = about_org.seal(&key());
        let opened = Change::open(&key(), sealed.as_bytes(), now).unwrap();
        assert_eq!(opened.org_id.as_deref(), Some("170848145649959170"));
        #[derive(serde::Deserialize)]
        struct Old {
            user_id: String,
        }
        let json = sealed.split_once('.').unwrap().1;
        let old: Old = serde_json::from_str(json).unwrap();
        assert_eq!(old.user_id, ORGANIZATION_NEWS_USER);
        let older = r#"{"origin":"0123456789abcdef","seq":2,"sent_ms":1,"user_id":"u1","keys":[]}"#;
        let parsed: Change = serde_json::from_str(older).unwrap();
        assert_eq!(parsed.org_id, None);
    }

    #[test]
    fn a_sealed_message_opens_under_the_same_key_only() {
        let now = SystemTime::now();
        let sealed = change(now).seal(&key());
        assert_eq!(
            Change::open(&key(), sealed.as_bytes(), now),
            Ok(change(now))
        );
        let other = BusKey::from_secret(b"another fleet");
        assert_eq!(
            Change::open(&other, sealed.as_bytes(), now),
            Err(Rejected::BadTag)
        );
    }

    #[test]
    fn any_change_to_a_sealed_message_breaks_its_tag() {
        let now = SystemTime::now();
        let sealed = change(now).seal(&key());
        let tampered = sealed.replace("profile.language", "profile.languagf");
        assert_eq!(
            Change::open(&key(), tampered.as_bytes(), now),
            Err(Rejected::BadTag)
        );
        let mut flipped = sealed.into_bytes();
        flipped[3] = if flipped[3] == b'0' { b'1' } else { b'0' };
        assert_eq!(Change::open(&key(), &flipped, now), Err(Rejected::BadTag));
    }

    #[test]
    fn unauthenticated_or_oversized_messages_are_refused_before_parsing() {
        let now = SystemTime::now();
        let json = serde_json::to_string(&change(now)).unwrap();
        for (raw, want) in [
            (json.clone(), Rejected::Unparsable),
            (format!("{}.{json}", "0".repeat(64)), Rejected::BadTag),
            (format!("{}.{json}", "z".repeat(64)), Rejected::Unparsable),
            (format!("{}{json}", "0".repeat(64)), Rejected::Unparsable),
            (String::new(), Rejected::Unparsable),
            (
                format!("{}.{}", "0".repeat(64), " ".repeat(MAX_MESSAGE_BYTES)),
                Rejected::Oversized,
            ),
        ] {
            assert_eq!(Change::open(&key(), raw.as_bytes(), now), Err(want));
        }
    }

    #[test]
    fn an_authentic_message_out_of_bounds_is_refused() {
        let now = SystemTime::now();
        let long = |n: usize| "x".repeat(n);
        let edits: [fn(&mut Change); 9] = [
            |c| c.user_id = "x".repeat(MAX_USER_ID_CHARS + 1),
            |c| c.user_id = String::new(),
            |c| c.user_id = "a b".to_owned(),
            |c| c.origin = "x".repeat(MAX_ORIGIN_CHARS + 1),
            |c| c.keys = vec!["k".to_owned(); MAX_KEYS + 1],
            |c| c.keys = vec!["x".repeat(MAX_KEY_CHARS + 1)],
            |c| c.keys = vec!["line\nbreak".to_owned()],
            |c| c.keys = vec![String::new()],
            |c| c.seq = 0,
        ];
        for edit in edits {
            let mut out_of_bounds = change(now);
            edit(&mut out_of_bounds);
            let sealed = out_of_bounds.seal(&key());
            assert_eq!(
                Change::open(&key(), sealed.as_bytes(), now),
                Err(Rejected::OutOfBounds),
                "{out_of_bounds:?}"
            );
        }
        let mut at_the_bounds = change(now);
        at_the_bounds.user_id = long(MAX_USER_ID_CHARS);
        at_the_bounds.keys = vec!["\u{10348}\"".repeat(MAX_KEY_CHARS / 2); MAX_KEYS];
        let sealed = at_the_bounds.seal(&key());
        assert!(sealed.len() <= MAX_MESSAGE_BYTES, "{}", sealed.len());
        assert_eq!(
            Change::open(&key(), sealed.as_bytes(), now),
            Ok(at_the_bounds)
        );
    }

    #[test]
    fn a_message_sent_outside_the_freshness_window_is_stale() {
        let now = SystemTime::now();
        for off in [FRESHNESS + Duration::from_secs(1)] {
            for sent in [now - off, now + off] {
                let mut old = change(now);
                old.sent_ms = unix_ms(sent);
                let sealed = old.seal(&key());
                assert_eq!(
                    Change::open(&key(), sealed.as_bytes(), now),
                    Err(Rejected::Stale)
                );
            }
        }
        let mut recent = change(now);
        recent.sent_ms = unix_ms(now - FRESHNESS + Duration::from_secs(1));
        assert!(Change::open(&key(), recent.seal(&key()).as_bytes(), now).is_ok());
    }

    #[test]
    fn a_sequence_number_heard_before_is_a_replay() {
        let start = Instant::now();
        let mut guard = ReplayGuard::default();
        let mut first = change(SystemTime::now());
        assert!(guard.admit(&first, start));
        assert!(!guard.admit(&first, start), "the same message again");
        first.seq = 2;
        assert!(guard.admit(&first, start));
        first.seq = 1;
        assert!(!guard.admit(&first, start), "an older one");
        let mut other = change(SystemTime::now());
        other.origin = "fedcba9876543210".to_owned();
        assert!(
            guard.admit(&other, start),
            "another sender counts on its own"
        );
        // A sender silent for long is forgotten when a new one speaks: its messages are stale by then.
        let later = start + 2 * FRESHNESS + Duration::from_secs(1);
        let mut third = change(SystemTime::now());
        third.origin = "00000000000000ff".to_owned();
        assert!(guard.admit(&third, later));
        assert_eq!(guard.last.len(), 1);
    }

    #[test]
    fn the_senders_remembered_are_bounded() {
        let start = Instant::now();
        let mut guard = ReplayGuard::default();
        for n in 0..REMEMBERED_ORIGINS + 10 {
            let mut sender = change(SystemTime::now());
            sender.origin = format!("{n:016x}");
            assert!(guard.admit(&sender, start + Duration::from_millis(n as u64)));
        }
        assert_eq!(guard.last.len(), REMEMBERED_ORIGINS);
    }

    #[test]
    fn key_files_need_long_secrets_and_say_so_without_quoting_them() {
        assert_eq!(
            BusKey::from_text("# none yet\n\n").unwrap_err(),
            BusKeyError::Empty
        );
        let error = BusKey::from_text("# current\nshort-secret\n").unwrap_err();
        assert_eq!(error, BusKeyError::TooShort { line: 2 });
        assert!(!error.to_string().contains("short-secret"));
        let rotating =
            BusKey::from_text(&format!("{}\n{}\n", "n".repeat(32), "o".repeat(40))).unwrap();
        assert_eq!(rotating.len(), 2);
        // The first line signs, every line is accepted: a replica that has the signing secret on any line
        // accepts the message, one without it does not.
        let now = SystemTime::now();
        let sealed = change(now).seal(&rotating);
        let old_only = BusKey::from_text(&format!("{}\n", "o".repeat(40))).unwrap();
        let new_first =
            BusKey::from_text(&format!("{}\n{}\n", "o".repeat(40), "n".repeat(32))).unwrap();
        assert_eq!(
            Change::open(&old_only, sealed.as_bytes(), now),
            Err(Rejected::BadTag)
        );
        assert!(Change::open(&new_first, sealed.as_bytes(), now).is_ok());
        assert!(!format!("{rotating:?}").contains("nnnn"));
    }

    proptest::proptest! {
        #[test]
        fn fuzz_no_message_is_believed_without_the_key(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
            tag in "[0-9a-fA-F]{64}",
            user_id in "\\PC{0,40}",
            keys in proptest::collection::vec("\\PC{0,20}", 0..5),
            seq in proptest::prelude::any::<u64>(),
        ) {
            let now = SystemTime::now();
            let shaped = serde_json::json!({
                "origin": "0123456789abcdef", "seq": seq, "sent_ms": unix_ms(now),
                "user_id": user_id, "keys": keys, "kind": "set",
            });
            let forged = format!("{tag}.{shaped}");
            for raw in [bytes.as_slice(), forged.as_bytes()] {
                proptest::prop_assert!(Change::open(&key(), raw, now).is_err());
            }
            // The same JSON sealed with the key opens exactly when it is within bounds.
            if let Ok(change) = serde_json::from_value::<Change>(shaped) {
                let opened = Change::open(&key(), change.seal(&key()).as_bytes(), now);
                proptest::prop_assert_eq!(opened.is_ok(), change.within_bounds());
            }
        }
    }

    #[test]
    fn claim_names_depend_on_the_key() {
        let name = key().claim_name("webhook.seen", b"signature");
        assert!(name.starts_with("usermeta.v2.webhook.seen."), "{name}");
        assert_eq!(name, key().claim_name("webhook.seen", b"signature"));
        assert_ne!(
            name,
            BusKey::from_secret(b"another").claim_name("webhook.seen", b"signature")
        );
        assert!(!name.contains(&data_encoding::HEXLOWER.encode(b"signature")));
    }
}
