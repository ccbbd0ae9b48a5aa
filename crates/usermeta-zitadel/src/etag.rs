//! Etags: an opaque version of one metadata entry, computed from what identifies it (its key and value), so
//! every source (userinfo, the auth API, the token, the management APIs), every replica and every version of
//! ZITADEL gives the same etag for the same value, with nothing stored anywhere.
//!
//! `1.` then 22 characters: URL-safe base64 of the first 128 bits of SHA-256 over the key's length, the key and
//! the value. The key is part of it, so the etag of one key never matches another key's, whatever their
//! values. The prefix names the scheme: a later scheme can be told apart, and an etag of a scheme this
//! replica does not compute simply never matches.
//!
//! A value set back to an earlier value gets the earlier etag again (a condition compares values, not
//! histories), and the same key holding the same value on two users has one etag: a condition on it holds
//! exactly when the value is the one the writer read.

use aws_lc_rs::digest;
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};

/// The scheme's prefix.
const SCHEME: &str = "1.";

/// Bytes of the digest kept: 128 bits, so no two values of a key share an etag by chance.
const KEPT_BYTES: usize = 16;

/// The length of every etag of this scheme, in bytes (ASCII).
pub const ETAG_LEN: usize = SCHEME.len() + 22;

/// The etag of `value` under `key`: one SHA-256 over the value, no allocation besides the answer.
pub fn etag(key: &str, value: &[u8]) -> String {
    let mut etag = String::with_capacity(ETAG_LEN);
    push_etag(key, value, &mut etag);
    etag
}

/// Appends the etag of `value` under `key` to `out` ([`ETAG_LEN`] bytes).
pub fn push_etag(key: &str, value: &[u8], out: &mut String) {
    let mut context = digest::Context::new(&digest::SHA256);
    context.update(&(key.len() as u64).to_be_bytes());
    context.update(key.as_bytes());
    context.update(value);
    let digest = context.finish();
    out.push_str(SCHEME);
    URL_SAFE_NO_PAD.encode_string(&digest.as_ref()[..KEPT_BYTES], out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_value_of_the_same_key_has_one_etag() {
        assert_eq!(etag("tier", b"gold"), etag("tier", b"gold"));
        assert_eq!(etag("tier", b"gold").len(), ETAG_LEN);
        assert_eq!(ETAG_LEN, 24);
        assert!(etag("tier", b"gold").starts_with("1."));
    }

    #[test]
    fn another_value_or_key_has_another_etag() {
        assert_ne!(etag("tier", b"gold"), etag("tier", b"silver"));
        assert_ne!(etag("tier", b"gold"), etag("tie", b"rgold"));
        assert_ne!(etag("plan", b"gold"), etag("tier", b"gold"));
    }
}
