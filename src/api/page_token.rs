//! Opaque page tokens for ListMetadata, ListOrganizationMetadata and FindUsersByMetadata. A token carries the offset of the next page,
//! whether that offset counts ZITADEL's entries or only those the caller may see, and a MAC (HMAC-SHA256) over
//! both and the query it belongs to (user, organisation, filter, search). Only usermeta can make one, so an
//! altered or made-up token is refused before any call, and it cannot be replayed against another user,
//! organisation or filter. The offset is sealed (SIV-style: XOR with a pad derived from the MAC): a search's
//! offset counts ZITADEL's matches, the caller may not see them all, and a readable offset would count the
//! ones it may not see. No server state: every replica holding the same key (see [`PageTokenKey`]) continues
//! a listing another replica started.

use aws_lc_rs::{constant_time, hmac};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};

use usermeta_zitadel::metadata::KeyFilter;

/// 3: the offset is sealed (2 carried it in the clear).
const VERSION: u8 = 3;
const MAC_LEN: usize = 16;
const TOKEN_LEN: usize = 1 + 8 + 1 + MAC_LEN;

/// The largest offset a token may carry: far beyond any user's metadata, so a token pointing past it was
/// not made by usermeta's listings.
pub(super) const MAX_OFFSET: u64 = 1_000_000;

/// The secret page tokens are signed with. Replicas of one deployment must share it.
#[derive(Clone)]
pub struct PageTokenKey(hmac::Key);

impl std::fmt::Debug for PageTokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PageTokenKey(..)")
    }
}

impl PageTokenKey {
    /// A key from secret bytes (32 or more from a good source; they are never shown).
    pub fn new(secret: &[u8]) -> Self {
        PageTokenKey(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    /// A fresh random key: tokens then work on this process only (tests, `usermeta dev`).
    pub fn random() -> Self {
        Self::new(&rand::random::<[u8; 32]>())
    }
}

/// What the offset of a token counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Offsets {
    /// ZITADEL's entries: the caller may see every key, so ZITADEL pages.
    Zitadel,
    /// The entries the caller may see: usermeta pages what is left after the policy.
    Visible,
}

/// The query a page token is bound to.
#[derive(Debug, Clone, Copy)]
pub(super) struct Query<'a> {
    pub user_id: &'a str,
    pub org_id: &'a str,
    pub filter: Option<&'a KeyFilter>,
    /// For FindUsersByMetadata: the key and value looked for (a listing's tokens never fit a search's).
    pub find: Option<(&'a str, &'a [u8])>,
    /// ListOrganizationMetadata: `org_id`'s own metadata (a user listing's tokens never fit it, nor the reverse).
    pub organization: bool,
}

/// A token's content, once its MAC checked out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Position {
    pub offset: u64,
    pub offsets: Offsets,
}

/// Why a page token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum PageTokenError {
    #[error(
        "is not a page token usermeta issued for this listing (another user_id, organization_id or key_filter, or altered); pass next_page_token from the previous response unchanged with the same fields, or drop page_token to start over"
    )]
    NotIssued,
}

fn mac(key: &PageTokenKey, head: &[u8], query: Query<'_>) -> [u8; MAC_LEN] {
    let mut context = hmac::Context::with_key(&key.0);
    context.update(head);
    // Length prefixes keep ("ab","c") and ("a","bc") apart.
    for part in [
        query.user_id,
        query.org_id,
        query.filter.map_or("", |f| f.key.as_str()),
    ] {
        context.update(&(part.len() as u64).to_be_bytes());
        context.update(part.as_bytes());
    }
    context.update(&[query.filter.map_or(0, |f| f.matching as u8 + 1)]);
    if query.organization {
        context.update(b"organization");
    }
    if let Some((key, value)) = query.find {
        context.update(b"find");
        for part in [key.as_bytes(), value] {
            context.update(&(part.len() as u64).to_be_bytes());
            context.update(part);
        }
    }
    let tag = context.sign();
    let mut mac = [0; MAC_LEN];
    mac.copy_from_slice(&tag.as_ref()[..MAC_LEN]);
    mac
}

fn head(position: Position) -> [u8; 10] {
    let mut head = [0u8; 10];
    head[0] = VERSION;
    head[1..9].copy_from_slice(&position.offset.to_be_bytes());
    head[9] = match position.offsets {
        Offsets::Zitadel => 0,
        Offsets::Visible => 1,
    };
    head
}

/// What seals a token's offset: derived from its MAC (which covers the offset in the clear), so equal
/// positions of one query give equal tokens and any other difference looks random. The domain text keeps
/// these inputs apart from the MAC's, which start with the version byte.
fn pad(key: &PageTokenKey, mac: &[u8]) -> [u8; 8] {
    let mut context = hmac::Context::with_key(&key.0);
    context.update(b"usermeta page token offset pad");
    context.update(mac);
    let tag = context.sign();
    let mut pad = [0; 8];
    pad.copy_from_slice(&tag.as_ref()[..8]);
    pad
}

fn xor(offset: &mut [u8], pad: [u8; 8]) {
    for (byte, pad) in offset.iter_mut().zip(pad) {
        *byte ^= pad;
    }
}

/// The token for the page at `position` of `query`.
pub(super) fn encode(key: &PageTokenKey, position: Position, query: Query<'_>) -> String {
    let head = head(position);
    let mac = mac(key, &head, query);
    let mut bytes = [0u8; TOKEN_LEN];
    bytes[..10].copy_from_slice(&head);
    xor(&mut bytes[1..9], pad(key, &mac));
    bytes[10..].copy_from_slice(&mac);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Where a token issued for `query` points; anything else is refused.
pub(super) fn decode(
    key: &PageTokenKey,
    token: &str,
    query: Query<'_>,
) -> Result<Position, PageTokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| PageTokenError::NotIssued)?;
    let mut bytes: [u8; TOKEN_LEN] = bytes.try_into().map_err(|_| PageTokenError::NotIssued)?;
    let pad = pad(key, &bytes[10..]);
    xor(&mut bytes[1..9], pad);
    if constant_time::verify_slices_are_equal(&bytes[10..], &mac(key, &bytes[..10], query)).is_err()
    {
        return Err(PageTokenError::NotIssued);
    }
    let mut offset = [0u8; 8];
    offset.copy_from_slice(&bytes[1..9]);
    let offset = u64::from_be_bytes(offset);
    let offsets = match (bytes[0], bytes[9]) {
        (VERSION, 0) => Offsets::Zitadel,
        (VERSION, 1) => Offsets::Visible,
        _ => return Err(PageTokenError::NotIssued),
    };
    if offset == 0 || offset > MAX_OFFSET {
        return Err(PageTokenError::NotIssued);
    }
    Ok(Position { offset, offsets })
}

#[cfg(test)]
mod tests {
    use super::*;
    use usermeta_zitadel::metadata::KeyMatch;

    fn at(offset: u64) -> Position {
        Position {
            offset,
            offsets: Offsets::Zitadel,
        }
    }

    #[test]
    fn round_trips_for_the_same_query_and_key() {
        let key = PageTokenKey::new(b"0123456789abcdef0123456789abcdef");
        let filter = KeyFilter {
            key: "billing.".into(),
            matching: KeyMatch::StartsWith,
        };
        let query = Query {
            user_id: "u1",
            org_id: "o1",
            filter: Some(&filter),
            find: None,
            organization: false,
        };
        let visible = Position {
            offset: 200,
            offsets: Offsets::Visible,
        };
        assert_eq!(
            decode(&key, &encode(&key, visible, query), query),
            Ok(visible)
        );
        // Another replica with the same key continues the listing.
        let same = PageTokenKey::new(b"0123456789abcdef0123456789abcdef");
        assert_eq!(decode(&same, &encode(&key, at(7), query), query), Ok(at(7)));
        // A replica with another key does not accept it.
        let other = PageTokenKey::random();
        assert!(decode(&other, &encode(&key, at(7), query), query).is_err());
    }

    #[test]
    fn refuses_another_query() {
        let key = PageTokenKey::random();
        let a = Query {
            user_id: "u1",
            org_id: "",
            filter: None,
            find: None,
            organization: false,
        };
        let filter = KeyFilter {
            key: "x".into(),
            matching: KeyMatch::Contains,
        };
        let others = [
            Query { user_id: "u2", ..a },
            Query {
                filter: Some(&filter),
                ..a
            },
            Query { org_id: "o", ..a },
            Query {
                organization: true,
                ..a
            },
        ];
        let token = encode(&key, at(10), a);
        for other in others {
            assert_eq!(decode(&key, &token, other), Err(PageTokenError::NotIssued));
        }
    }

    /// A token's offset cannot be read: neither in the clear, nor as the difference of two tokens.
    #[test]
    fn offsets_are_sealed() {
        let key = PageTokenKey::random();
        let q = Query {
            user_id: "",
            org_id: "",
            filter: None,
            find: Some(("k", b"v")),
            organization: false,
        };
        let offset_bytes = |position: u64| {
            let bytes = URL_SAFE_NO_PAD
                .decode(encode(&key, at(position), q))
                .unwrap();
            u64::from_be_bytes(bytes[1..9].try_into().unwrap())
        };
        for position in [1, 2, 3, 100, 101] {
            assert_ne!(offset_bytes(position), position);
        }
        assert_ne!(offset_bytes(1) ^ offset_bytes(3), 1 ^ 3);
        assert_ne!(offset_bytes(100) ^ offset_bytes(101), 100 ^ 101);
        assert_eq!(decode(&key, &encode(&key, at(101), q), q), Ok(at(101)));
    }

    #[test]
    fn refuses_altered_made_up_and_out_of_range_tokens() {
        let key = PageTokenKey::random();
        let q = Query {
            user_id: "u1",
            org_id: "",
            filter: None,
            find: None,
            organization: false,
        };
        let genuine = encode(&key, at(100), q);
        let mut bytes = URL_SAFE_NO_PAD.decode(&genuine).unwrap();
        bytes[8] ^= 1;
        let altered = URL_SAFE_NO_PAD.encode(&bytes);
        for token in [
            "",
            "10",
            "!!!",
            "AAAA",
            &URL_SAFE_NO_PAD.encode([9u8; TOKEN_LEN]),
            &altered,
            &encode(&key, at(MAX_OFFSET + 1), q),
            &encode(&key, at(0), q),
        ] {
            assert_eq!(
                decode(&key, token, q),
                Err(PageTokenError::NotIssued),
                "{token}"
            );
        }
    }
}
