//! The two kinds of bearer usermeta sends to ZITADEL, kept apart by type: a [`CallerToken`] only ever goes to
//! userinfo and the auth API, the [`ServiceCredential`] only ever to the management API. Neither prints.

use std::fmt;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use http::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

/// The caller's access token, as an `Authorization` header value ready to forward.
#[derive(Clone)]
pub struct CallerToken {
    authorization: HeaderValue,
}

/// Why an `authorization` value is not a usable bearer token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BearerError {
    #[error("the authorization value must be `Bearer <access token>`")]
    NotBearer,
    #[error("the bearer token has characters a token cannot have")]
    BadCharacters,
}

impl CallerToken {
    /// Parses `Bearer <token>` (scheme case-insensitive, as ZITADEL matches it).
    pub fn from_authorization(value: &[u8]) -> Result<Self, BearerError> {
        let value = std::str::from_utf8(value).map_err(|_| BearerError::BadCharacters)?;
        let (scheme, token) = value.trim().split_once(' ').ok_or(BearerError::NotBearer)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(BearerError::NotBearer);
        }
        let token = token.trim();
        // RFC 6750 b64token characters; anything else cannot be a token and must not reach a header.
        if !token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b))
        {
            return Err(BearerError::BadCharacters);
        }
        let mut authorization = HeaderValue::try_from(format!("{BEARER_PREFIX}{token}"))
            .map_err(|_| BearerError::BadCharacters)?;
        authorization.set_sensitive(true);
        Ok(CallerToken { authorization })
    }

    pub(crate) fn authorization(&self) -> &HeaderValue {
        &self.authorization
    }

    /// A digest of the token, to key caches by without keeping the token itself.
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.authorization.as_bytes()).into()
    }

    /// The `exp` a JWT access token claims, as seconds since the epoch; `None` for opaque tokens. Not
    /// verified: use it only to make a cache entry live shorter, never to trust the token.
    pub fn claimed_expiry(&self) -> Option<u64> {
        #[derive(serde::Deserialize)]
        struct Claims {
            exp: Option<u64>,
        }
        let token = self.authorization.as_bytes().get(BEARER_PREFIX.len()..)?;
        let mut parts = token.split(|&b| b == b'.');
        let (_header, payload, _signature) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let payload = URL_SAFE_NO_PAD.decode(payload).ok()?;
        serde_json::from_slice::<Claims>(&payload).ok()?.exp
    }
}

const BEARER_PREFIX: &str = "Bearer ";

impl fmt::Debug for CallerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CallerToken(<redacted>)")
    }
}

/// How usermeta authenticates itself toward the management API.
pub enum ServiceCredential {
    /// A personal access token of a ZITADEL service user.
    Pat(SecretString),
}

impl ServiceCredential {
    /// The credential's kind, for messages; never its value.
    pub fn kind(&self) -> &'static str {
        match self {
            ServiceCredential::Pat(_) => "personal access token",
        }
    }

    /// The `Authorization` header value, built once at start-up and marked sensitive.
    pub(crate) fn authorization(&self) -> Result<HeaderValue, BearerError> {
        match self {
            ServiceCredential::Pat(pat) => {
                let mut value = HeaderValue::try_from(format!("Bearer {}", pat.expose_secret()))
                    .map_err(|_| BearerError::BadCharacters)?;
                value.set_sensitive(true);
                Ok(value)
            }
        }
    }
}

impl fmt::Debug for ServiceCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServiceCredential({}, <redacted>)", self.kind())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_bearer_in_any_case() {
        for value in ["Bearer abc", "bearer abc", "BEARER abc", "  Bearer   abc  "] {
            let token = CallerToken::from_authorization(value.as_bytes()).unwrap();
            assert_eq!(token.authorization(), "Bearer abc");
        }
    }

    #[test]
    fn rejects_what_is_not_a_bearer_token() {
        assert_eq!(
            CallerToken::from_authorization(b"Basic abc").unwrap_err(),
            BearerError::NotBearer
        );
        assert_eq!(
            CallerToken::from_authorization(b"abc").unwrap_err(),
            BearerError::NotBearer
        );
        assert_eq!(
            CallerToken::from_authorization(b"Bearer ").unwrap_err(),
            BearerError::NotBearer
        );
        assert_eq!(
            CallerToken::from_authorization(b"Bearer a b").unwrap_err(),
            BearerError::BadCharacters
        );
        assert_eq!(
            CallerToken::from_authorization(b"Bearer a\"b").unwrap_err(),
            BearerError::BadCharacters
        );
    }

    #[test]
    fn reads_the_claimed_expiry_of_jwts_only() {
        let payload = URL_SAFE_NO_PAD.encode(br#"{"sub":"u","exp":1700000000}"#);
        let jwt = format!("Bearer eyJhbGciOiJSUzI1NiJ9.{payload}.c2ln");
        assert_eq!(
            CallerToken::from_authorization(jwt.as_bytes())
                .unwrap()
                .claimed_expiry(),
            Some(1_700_000_000)
        );
        let opaque = CallerToken::from_authorization(b"Bearer abcdef").unwrap();
        assert_eq!(opaque.claimed_expiry(), None);
        let not_json = CallerToken::from_authorization(b"Bearer a.b.c").unwrap();
        assert_eq!(not_json.claimed_expiry(), None);
    }

    #[test]
    fn digests_differ_per_token() {
        let a = CallerToken::from_authorization(b"Bearer a").unwrap();
        let b = CallerToken::from_authorization(b"Bearer b").unwrap();
        assert_ne!(a.digest(), b.digest());
        assert_eq!(
            a.digest(),
            CallerToken::from_authorization(b"bearer a")
                .unwrap()
                .digest()
        );
    }

    #[test]
    fn never_prints_the_token() {
        let token = CallerToken::from_authorization(b"Bearer s3cr3t").unwrap();
        assert!(!format!("{token:?}").contains("s3cr3t"));
        let pat = ServiceCredential::Pat(SecretString::from("p4t"));
        assert!(!format!("{pat:?}").contains("p4t"));
    }
}
