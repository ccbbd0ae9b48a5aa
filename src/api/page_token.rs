//! Opaque page tokens for ListMetadata. A token carries the offset of the next page and a digest of the
//! query it belongs to, so it cannot be replayed against another user, organisation or filter. It needs no
//! server state or secret, so any replica can continue a listing another one started.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use sha2::{Digest, Sha256};

use crate::metadata::KeyFilter;

const VERSION: u8 = 1;
const DIGEST_LEN: usize = 16;
const TOKEN_LEN: usize = 1 + 8 + DIGEST_LEN;

/// The query a page token is bound to.
#[derive(Debug, Clone, Copy)]
pub struct Query<'a> {
    pub user_id: &'a str,
    pub org_id: &'a str,
    pub filter: Option<&'a KeyFilter>,
}

impl Query<'_> {
    fn digest(&self) -> [u8; DIGEST_LEN] {
        let mut hasher = Sha256::new();
        // Length prefixes keep ("ab","c") and ("a","bc") apart.
        for part in [
            self.user_id,
            self.org_id,
            self.filter.map_or("", |f| f.key.as_str()),
        ] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part.as_bytes());
        }
        hasher.update([self.filter.map_or(0, |f| f.matching as u8 + 1)]);
        let full = hasher.finalize();
        let mut digest = [0; DIGEST_LEN];
        digest.copy_from_slice(&full[..DIGEST_LEN]);
        digest
    }
}

/// Why a page token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PageTokenError {
    #[error(
        "is not a page token usermeta issued; pass next_page_token from the previous response unchanged"
    )]
    Malformed,
    #[error(
        "belongs to a listing with another user_id, organization_id or key_filter; repeat the request of the first page with the same fields, or drop page_token to start over"
    )]
    OtherQuery,
}

/// The token for the page that starts at `offset`.
pub fn encode(offset: u64, query: Query<'_>) -> String {
    let mut bytes = [0u8; TOKEN_LEN];
    bytes[0] = VERSION;
    bytes[1..9].copy_from_slice(&offset.to_be_bytes());
    bytes[9..].copy_from_slice(&query.digest());
    URL_SAFE_NO_PAD.encode(bytes)
}

/// The offset a token stands for, if it was issued for this query.
pub fn decode(token: &str, query: Query<'_>) -> Result<u64, PageTokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| PageTokenError::Malformed)?;
    let bytes: [u8; TOKEN_LEN] = bytes.try_into().map_err(|_| PageTokenError::Malformed)?;
    if bytes[0] != VERSION {
        return Err(PageTokenError::Malformed);
    }
    if bytes[9..] != query.digest() {
        return Err(PageTokenError::OtherQuery);
    }
    let mut offset = [0u8; 8];
    offset.copy_from_slice(&bytes[1..9]);
    Ok(u64::from_be_bytes(offset))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::KeyMatch;

    #[test]
    fn round_trips_for_the_same_query() {
        let filter = KeyFilter {
            key: "billing.".into(),
            matching: KeyMatch::StartsWith,
        };
        let query = Query {
            user_id: "u1",
            org_id: "o1",
            filter: Some(&filter),
        };
        assert_eq!(decode(&encode(200, query), query), Ok(200));
    }

    #[test]
    fn refuses_another_query() {
        let a = Query {
            user_id: "u1",
            org_id: "",
            filter: None,
        };
        let b = Query {
            user_id: "u2",
            org_id: "",
            filter: None,
        };
        let filter = KeyFilter {
            key: "x".into(),
            matching: KeyMatch::Contains,
        };
        let c = Query {
            user_id: "u1",
            org_id: "",
            filter: Some(&filter),
        };
        let d = Query {
            user_id: "u1",
            org_id: "o",
            filter: None,
        };
        let token = encode(10, a);
        for other in [b, c, d] {
            assert_eq!(decode(&token, other), Err(PageTokenError::OtherQuery));
        }
    }

    #[test]
    fn refuses_garbage() {
        let q = Query {
            user_id: "u1",
            org_id: "",
            filter: None,
        };
        for token in [
            "",
            "10",
            "!!!",
            "AAAA",
            &URL_SAFE_NO_PAD.encode([9u8; TOKEN_LEN]),
        ] {
            assert_eq!(decode(token, q), Err(PageTokenError::Malformed), "{token}");
        }
    }
}
