//! `ZITADEL-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>…]`, where each hex is HMAC-SHA256 of
//! `"<t>.<body>"` under one of the target's signing keys (several `v1=` while ZITADEL rotates a key). Checked
//! as ZITADEL's own validator does: constant-time comparison, 300 s tolerance either way; a signature seen
//! before within that window is a replay.

use std::{
    collections::HashMap,
    fmt,
    sync::Mutex,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use aws_lc_rs::{constant_time, hmac};

/// How far a signature's `t` may be from this replica's clock, either way.
pub const TOLERANCE: Duration = Duration::from_secs(300);
/// Signatures remembered for replay detection; beyond this (only authentic events are remembered, so only a
/// flood of them) older ones are forgotten first.
const REMEMBERED: usize = 100_000;

/// The signing keys of ZITADEL's target: the current one and, during rotation, the next. Never printed.
#[derive(Clone)]
pub struct SigningKeys(Vec<hmac::Key>);

impl fmt::Debug for SigningKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKeys({} keys, redacted)", self.0.len())
    }
}

/// The key file holds nothing usable.
#[derive(Debug, thiserror::Error)]
#[error(
    "holds no signing key: put the signingKey ZITADEL returned when the target was created on a line of its own (one line per key while rotating; `#` starts a comment)"
)]
pub struct NoKeys;

impl SigningKeys {
    /// One key per non-empty line; surrounding whitespace and `#` comment lines are ignored.
    pub fn from_text(text: &str) -> Result<SigningKeys, NoKeys> {
        let keys: Vec<hmac::Key> = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'))
            .map(|key| hmac::Key::new(hmac::HMAC_SHA256, key.as_bytes()))
            .collect();
        if keys.is_empty() {
            return Err(NoKeys);
        }
        Ok(SigningKeys(keys))
    }

    /// How many keys are configured.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false: [`SigningKeys::from_text`] refuses an empty set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Why a request's signature is not accepted. The messages say what to fix and never echo a signature.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The request carries no signature header.
    #[error(
        "no ZITADEL-Signature header: this endpoint accepts only events ZITADEL signs (an Actions v2 target with payload type JSON)"
    )]
    Missing,
    /// The header does not read as `t=…,v1=…`; the text says what is wrong.
    #[error(
        "the ZITADEL-Signature header is malformed ({0}); expected t=<unix seconds>,v1=<hex HMAC-SHA256>"
    )]
    Malformed(&'static str),
    /// No signature of the header is of the body under any key.
    #[error(
        "no v1 signature matches the body under any configured signing key; check {setting} against the target's signingKey",
        setting = crate::settings::names::WEBHOOK_SIGNING_KEY_FILE
    )]
    Mismatch,
    /// The header's `t` is further from this replica's clock than the tolerance.
    #[error(
        "the signature's timestamp is {off_by_secs} s away from this replica's clock, more than the 300 s allowed; check both clocks (NTP)"
    )]
    Stale {
        /// How far, in seconds.
        off_by_secs: u64,
    },
    /// This signature was accepted before.
    #[error("this signature was already accepted: a replayed event is not applied twice")]
    Replayed,
}

impl SignatureError {
    /// The outcome label of the webhook metric.
    pub fn outcome(&self) -> &'static str {
        match self {
            SignatureError::Missing => "unsigned",
            SignatureError::Malformed(_) | SignatureError::Mismatch => "bad_signature",
            SignatureError::Stale { .. } => "stale",
            SignatureError::Replayed => "replayed",
        }
    }
}

/// The parts of a signature header.
#[derive(Debug)]
struct Header<'a> {
    timestamp: &'a str,
    seconds: u64,
    signatures: Vec<Vec<u8>>,
}

fn parse(header: &str) -> Result<Header<'_>, SignatureError> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        let Some((name, value)) = part.trim().split_once('=') else {
            return Err(SignatureError::Malformed("a part without `=`"));
        };
        match name.trim() {
            "t" => timestamp = Some(value.trim()),
            "v1" => signatures.push(
                data_encoding::HEXLOWER_PERMISSIVE
                    .decode(value.trim().as_bytes())
                    .map_err(|_| SignatureError::Malformed("a v1 value that is not hex"))?,
            ),
            // Other schemes (a future v2) are not ours to check.
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed("no t="))?;
    let seconds = timestamp
        .parse()
        .map_err(|_| SignatureError::Malformed("t is not whole seconds since 1970"))?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed("no v1="));
    }
    Ok(Header {
        timestamp,
        seconds,
        signatures,
    })
}

/// A signature header that is well-formed and fresh; whether it signs the body is yet to be seen.
#[derive(Debug)]
pub(super) struct FreshHeader<'a>(Header<'a>);

fn unix_secs(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// Checks signatures and remembers the accepted ones.
#[derive(Debug)]
pub(super) struct Verifier {
    keys: SigningKeys,
    /// Accepted signatures and their `t`, forgotten once `t` is past the tolerance (they would be stale).
    seen: Mutex<HashMap<Vec<u8>, u64>>,
}

impl Verifier {
    pub(super) fn new(keys: SigningKeys) -> Self {
        Verifier {
            keys,
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// What the header alone tells, before any body is read: it is there, well-formed, and its `t` is within
    /// the tolerance of `now`.
    pub(super) fn check_header<'a>(
        &self,
        header: Option<&'a str>,
        now: SystemTime,
    ) -> Result<FreshHeader<'a>, SignatureError> {
        let header = parse(header.ok_or(SignatureError::Missing)?)?;
        let off_by_secs = unix_secs(now).abs_diff(header.seconds);
        if off_by_secs > TOLERANCE.as_secs() {
            return Err(SignatureError::Stale { off_by_secs });
        }
        Ok(FreshHeader(header))
    }

    /// Accepts `body` when one of the header's signatures is of it under one of the keys, seen for the first
    /// time by this replica; returns the signature that matched (for a fleet-wide replay check).
    pub(super) fn accept_body(
        &self,
        header: &FreshHeader<'_>,
        body: &[u8],
        now: SystemTime,
    ) -> Result<Vec<u8>, SignatureError> {
        let matched = self.matching(&header.0, body)?;
        self.first_time(matched.clone(), header.0.seconds, unix_secs(now))?;
        Ok(matched)
    }

    /// [`Verifier::check_header`] and [`Verifier::accept_body`] in one.
    #[cfg(test)]
    pub(super) fn accept(
        &self,
        header: Option<&str>,
        body: &[u8],
        now: SystemTime,
    ) -> Result<Vec<u8>, SignatureError> {
        let header = self.check_header(header, now)?;
        self.accept_body(&header, body, now)
    }

    /// The first of the header's signatures that one of the keys made of `"<t>.<body>"`.
    fn matching(&self, header: &Header<'_>, body: &[u8]) -> Result<Vec<u8>, SignatureError> {
        for key in &self.keys.0 {
            let mut context = hmac::Context::with_key(key);
            context.update(header.timestamp.as_bytes());
            context.update(b".");
            context.update(body);
            let expected = context.sign();
            for signature in &header.signatures {
                if constant_time::verify_slices_are_equal(expected.as_ref(), signature).is_ok() {
                    return Ok(signature.clone());
                }
            }
        }
        Err(SignatureError::Mismatch)
    }

    fn first_time(
        &self,
        signature: Vec<u8>,
        seconds: u64,
        now_secs: u64,
    ) -> Result<(), SignatureError> {
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.contains_key(&signature) {
            return Err(SignatureError::Replayed);
        }
        if seen.len() >= REMEMBERED {
            let oldest_fresh = now_secs.saturating_sub(TOLERANCE.as_secs());
            seen.retain(|_, t| *t >= oldest_fresh);
            if seen.len() >= REMEMBERED {
                // Still full of fresh ones: forget the oldest half rather than refuse authentic events.
                let mut times: Vec<u64> = seen.values().copied().collect();
                times.sort_unstable();
                let median = times[times.len() / 2];
                seen.retain(|_, t| *t > median);
            }
        }
        seen.insert(signature, seconds);
        Ok(())
    }
}

/// The header value ZITADEL would send for `body` at `t` under `key` (for tests and tools).
pub fn sign(key: &str, t: u64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key.as_bytes());
    let mut context = hmac::Context::with_key(&key);
    context.update(t.to_string().as_bytes());
    context.update(b".");
    context.update(body);
    format!(
        "t={t},v1={}",
        data_encoding::HEXLOWER.encode(context.sign().as_ref())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> (SystemTime, u64) {
        let now = SystemTime::now();
        (
            now,
            now.duration_since(UNIX_EPOCH)
                .expect("after 1970")
                .as_secs(),
        )
    }

    fn verifier(keys: &str) -> Verifier {
        Verifier::new(SigningKeys::from_text(keys).expect("keys"))
    }

    #[test]
    fn a_fresh_signature_of_the_body_is_accepted_once() {
        let (now, t) = now();
        let verifier = verifier("key-one\n");
        let header = sign("key-one", t, b"{}");
        assert!(verifier.accept(Some(&header), b"{}", now).is_ok());
        assert_eq!(
            verifier.accept(Some(&header), b"{}", now),
            Err(SignatureError::Replayed)
        );
    }

    #[test]
    fn during_rotation_either_key_and_any_v1_matches() {
        let (now, t) = now();
        let verifier = verifier("# current\nold-key\n\nnew-key\n");
        let new = sign("new-key", t, b"body");
        let other = sign("unknown", t, b"body");
        let v1 = |header: &str| header.split_once(",v1=").expect("v1").1.to_owned();
        let header = format!("t={t},v1={},v1={}", v1(&other), v1(&new));
        assert!(verifier.accept(Some(&header), b"body", now).is_ok());
    }

    #[test]
    fn a_changed_body_a_wrong_key_or_an_old_timestamp_is_refused() {
        let (now, t) = now();
        let verifier = verifier("key");
        assert_eq!(
            verifier.accept(Some(&sign("key", t, b"a")), b"b", now),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verifier.accept(Some(&sign("other", t, b"a")), b"a", now),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verifier.accept(Some(&sign("key", t - 301, b"a")), b"a", now),
            Err(SignatureError::Stale { off_by_secs: 301 })
        );
        assert_eq!(
            verifier.accept(Some(&sign("key", t + 400, b"a")), b"a", now),
            Err(SignatureError::Stale { off_by_secs: 400 })
        );
        assert!(
            verifier
                .accept(Some(&sign("key", t - 299, b"a")), b"a", now)
                .is_ok()
        );
    }

    #[test]
    fn malformed_headers_say_what_is_wrong() {
        let (now, _) = now();
        let verifier = verifier("key");
        for (header, problem) in [
            ("v1=00", "no t="),
            ("t=1", "no v1="),
            ("t=abc,v1=00", "t is not whole seconds since 1970"),
            ("t=1,v1=zz", "a v1 value that is not hex"),
            ("garbage", "a part without `=`"),
        ] {
            assert_eq!(
                verifier.accept(Some(header), b"", now),
                Err(SignatureError::Malformed(problem)),
                "{header}"
            );
        }
        assert_eq!(
            verifier.accept(None, b"", now),
            Err(SignatureError::Missing)
        );
    }

    #[test]
    fn a_key_file_without_keys_is_refused() {
        assert!(SigningKeys::from_text("# only a comment\n\n").is_err());
    }
}
