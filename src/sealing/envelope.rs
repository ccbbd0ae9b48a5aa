//! The envelope a sealed value is stored in, as ZITADEL (and its Console) shows it:
//!
//! ```text
//! usermeta:sealed:v1:<key-id>:<base64url, no padding, of nonce (12 bytes) ‖ ciphertext ‖ tag (16 bytes)>
//! ```
//!
//! The prefix says what it is to an operator reading the Console; the version lets a later format live next to
//! this one; the key id names the sealing key (from [`SEALING_KEYS_FILE`](crate::settings::names::SEALING_KEYS_FILE))
//! that opens it, so keys can rotate while old values still open.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};

/// What every envelope starts with.
pub const PREFIX: &str = "usermeta:sealed:";
/// This format's version, as written after [`PREFIX`].
pub const VERSION: &str = "v1";
/// Bytes of the random nonce.
pub(super) const NONCE_BYTES: usize = 12;
/// Bytes of the AEAD tag.
pub(super) const TAG_BYTES: usize = 16;

/// An envelope taken apart (nothing opened yet).
#[derive(Debug)]
pub(super) struct Parsed<'a> {
    pub(super) key_id: &'a str,
    /// Nonce, ciphertext and tag.
    pub(super) sealed: Vec<u8>,
}

/// Why a stored value is not an envelope this version can open; no variant carries any part of the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Malformed {
    /// Not an envelope at all: plaintext (written around usermeta, or before the key was sealed).
    NotSealed,
    /// An envelope of a version this usermeta does not know.
    UnknownVersion,
    /// The envelope is cut short or its payload is not base64url.
    Damaged,
}

/// The stored bytes of an envelope.
pub(super) fn write(key_id: &str, sealed: &[u8]) -> Vec<u8> {
    let mut out = String::with_capacity(sealed_len(key_id.len(), sealed.len()));
    out.push_str(PREFIX);
    out.push_str(VERSION);
    out.push(':');
    out.push_str(key_id);
    out.push(':');
    URL_SAFE_NO_PAD.encode_string(sealed, &mut out);
    out.into_bytes()
}

/// The length of an envelope holding `sealed` bytes (nonce, ciphertext and tag) under a key id this long.
pub(super) fn sealed_len(key_id_len: usize, sealed: usize) -> usize {
    PREFIX.len() + VERSION.len() + 1 + key_id_len + 1 + sealed.div_ceil(3) * 4
        - match sealed % 3 {
            1 => 2,
            2 => 1,
            _ => 0,
        }
}

/// Takes a stored value apart.
pub(super) fn parse(stored: &[u8]) -> Result<Parsed<'_>, Malformed> {
    let Some(rest) = stored.strip_prefix(PREFIX.as_bytes()) else {
        return Err(Malformed::NotSealed);
    };
    let Some(rest) = rest
        .strip_prefix(VERSION.as_bytes())
        .and_then(|rest| rest.strip_prefix(b":"))
    else {
        return Err(Malformed::UnknownVersion);
    };
    let colon = rest
        .iter()
        .position(|b| *b == b':')
        .ok_or(Malformed::Damaged)?;
    let (key_id, payload) = (&rest[..colon], &rest[colon + 1..]);
    let key_id = std::str::from_utf8(key_id).map_err(|_| Malformed::Damaged)?;
    let sealed = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| Malformed::Damaged)?;
    if sealed.len() < NONCE_BYTES + TAG_BYTES {
        return Err(Malformed::Damaged);
    }
    Ok(Parsed { key_id, sealed })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_envelope_reads_back_and_its_length_is_known_in_advance() {
        for len in 28..40 {
            let sealed = vec![7u8; len];
            let stored = write("k1", &sealed);
            assert_eq!(stored.len(), sealed_len(2, len));
            let parsed = parse(&stored).unwrap();
            assert_eq!(parsed.key_id, "k1");
            assert_eq!(parsed.sealed, sealed);
        }
    }

    #[test]
    fn what_is_not_an_envelope_is_told_apart() {
        assert_eq!(parse(b"gold").unwrap_err(), Malformed::NotSealed);
        assert_eq!(
            parse(b"usermeta:sealed:v9:k1:AAAA").unwrap_err(),
            Malformed::UnknownVersion
        );
        assert_eq!(
            parse(b"usermeta:sealed:v1:k1").unwrap_err(),
            Malformed::Damaged
        );
        assert_eq!(
            parse(b"usermeta:sealed:v1:k1:AAAA").unwrap_err(),
            Malformed::Damaged
        );
        assert_eq!(
            parse(b"usermeta:sealed:v1:k1:!!!!").unwrap_err(),
            Malformed::Damaged
        );
    }
}
