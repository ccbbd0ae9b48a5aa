//! The two kinds of bearer usermeta sends to ZITADEL, kept apart by type: a [`CallerToken`] only ever goes to
//! userinfo and the auth API, the [`ServiceCredential`] (or the tokens it is exchanged for) only ever to the
//! management API. Neither prints.

use std::{
    fmt,
    sync::OnceLock,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use bytes::Bytes;
use http::{HeaderValue, header::InvalidHeaderValue};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::{ExposeSecret, SecretString};

/// The caller's access token, as an `Authorization` header value ready to forward.
#[derive(Clone)]
pub struct CallerToken {
    authorization: HeaderValue,
    /// [`CallerToken::digest`], made on first use: the rate limit and the cache both key by it.
    digest: OnceLock<[u8; 32]>,
}

/// Why an `authorization` value is not a usable bearer token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BearerError {
    /// The value is not `Bearer ` followed by a token.
    #[error("the authorization value must be `Bearer <access token>`")]
    NotBearer,
    /// The token holds a byte an RFC 6750 token cannot have (a space, a control character, non-ASCII).
    #[error("the bearer token has characters a token cannot have")]
    BadCharacters,
}

impl CallerToken {
    /// Parses `Bearer <token>` (scheme case-insensitive, as ZITADEL matches it).
    pub fn from_authorization(value: &[u8]) -> Result<Self, BearerError> {
        Self::parse(value, || HeaderValue::from_bytes(value))
    }

    /// [`CallerToken::from_authorization`] of a request's header: a value that already is `Bearer <token>`
    /// is shared, not copied.
    pub fn from_header(value: &HeaderValue) -> Result<Self, BearerError> {
        Self::parse(value.as_bytes(), || Ok(value.clone()))
    }

    /// [`CallerToken::from_authorization`] of bytes it may keep (a decoded message's field), without copying
    /// a value that already is `Bearer <token>`.
    pub fn from_shared(value: &Bytes) -> Result<Self, BearerError> {
        Self::parse(value, || HeaderValue::from_maybe_shared(value.clone()))
    }

    /// `as_is` is `value` as a header value, used when `value` already is `Bearer <token>`.
    fn parse(
        value: &[u8],
        as_is: impl FnOnce() -> Result<HeaderValue, InvalidHeaderValue>,
    ) -> Result<Self, BearerError> {
        let token = bearer_token_of(value)?;
        // Usually the value already is `Bearer <token>`: taken as it is, with nothing to rewrite.
        let canonical = token.len() + BEARER_PREFIX.len() == value.len()
            && value.starts_with(BEARER_PREFIX.as_bytes());
        let authorization = if canonical {
            as_is()
        } else {
            HeaderValue::from_maybe_shared(Bytes::from([BEARER_PREFIX.as_bytes(), token].concat()))
        };
        let mut authorization = authorization.map_err(|_| BearerError::BadCharacters)?;
        authorization.set_sensitive(true);
        Ok(CallerToken {
            authorization,
            digest: OnceLock::new(),
        })
    }

    pub(crate) fn authorization(&self) -> &HeaderValue {
        &self.authorization
    }

    /// The bare token, for introspection and local JWT validation (never logged).
    pub fn token(&self) -> &str {
        // b64token characters after the prefix (checked in `parse`), so always visible ASCII.
        self.authorization
            .to_str()
            .ok()
            .and_then(|value| value.get(BEARER_PREFIX.len()..))
            .unwrap_or_default()
    }

    /// Whether the token looks like a JWT (three dot-separated parts); says nothing about its validity.
    pub fn is_jwt_shaped(&self) -> bool {
        let token = self.token();
        token.split('.').count() == 3 && !token.split('.').any(str::is_empty)
    }

    /// A digest of the token (SHA-256), to key caches by without keeping the token itself. aws-lc's
    /// assembly: on every cached call, and several times faster than a portable SHA-256 where the CPU has no
    /// SHA extensions.
    pub fn digest(&self) -> [u8; 32] {
        *self.digest.get_or_init(|| {
            let digest = aws_lc_rs::digest::digest(
                &aws_lc_rs::digest::SHA256,
                self.authorization.as_bytes(),
            );
            let mut out = [0u8; 32];
            out.copy_from_slice(digest.as_ref());
            out
        })
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

/// The token of a `Bearer <token>` value: RFC 6750 b64token characters only, so plain ASCII. Checked
/// byte by byte, as every call's token is.
fn bearer_token_of(value: &[u8]) -> Result<&[u8], BearerError> {
    let value = value.trim_ascii();
    let space = value
        .iter()
        .position(|&b| b == b' ')
        .ok_or(BearerError::NotBearer)?;
    let (scheme, token) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return Err(BearerError::NotBearer);
    }
    let token = token.trim_ascii();
    if !token.iter().all(|&b| TOKEN_CHARACTERS[usize::from(b)]) {
        return Err(BearerError::BadCharacters);
    }
    Ok(token)
}

/// RFC 6750 b64token characters, by byte: anything else cannot be a token and must not reach a header. A
/// table, as every call's token is checked.
const TOKEN_CHARACTERS: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        table[b] = c.is_ascii_alphanumeric()
            || matches!(c, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=');
        b += 1;
    }
    table
};

impl fmt::Debug for CallerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CallerToken(<redacted>)")
    }
}

/// How usermeta authenticates itself toward the management API. Only the PAT is a bearer itself; the other
/// two are exchanged for short-lived access tokens by the token source (`token_source::TokenSource`).
pub enum ServiceCredential {
    /// A personal access token of a ZITADEL service user.
    Pat(SecretString),
    /// A service user's JSON key, exchanged through the JWT-profile grant.
    JwtProfile(ServiceKey),
    /// A service user's client id and secret, exchanged through the client-credentials grant.
    ClientCredentials {
        /// The service user's client id (its user name).
        client_id: String,
        /// The service user's client secret.
        secret: SecretString,
    },
}

impl ServiceCredential {
    /// The kind with the ids that tell an operator which credential it is; never key material or a secret.
    pub fn describe(&self) -> String {
        match self {
            ServiceCredential::Pat(_) => "personal access token".to_owned(),
            ServiceCredential::JwtProfile(key) => format!(
                "JWT profile key {} of service user {}",
                key.key_id, key.user_id
            ),
            ServiceCredential::ClientCredentials { client_id, .. } => {
                format!("client credentials of client {client_id}")
            }
        }
    }
}

impl ServiceCredential {
    /// A secret for `purpose` that every holder of this credential derives alike (replicas of one deployment)
    /// and that tells nothing of the credential: HMAC-SHA256 keyed with the credential's secret material.
    pub fn derive_secret(&self, purpose: &str) -> [u8; 32] {
        let material = match self {
            ServiceCredential::Pat(pat) => {
                keyed_hash(b"usermeta pat", pat.expose_secret().as_bytes())
            }
            ServiceCredential::JwtProfile(key) => key.material,
            ServiceCredential::ClientCredentials { client_id, secret } => {
                let joined = format!("{client_id}\0{}", secret.expose_secret());
                keyed_hash(b"usermeta client credentials", joined.as_bytes())
            }
        };
        keyed_hash(&material, purpose.as_bytes())
    }
}

fn keyed_hash(key: &[u8], message: &[u8]) -> [u8; 32] {
    let tag = aws_lc_rs::hmac::sign(
        &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, key),
        message,
    );
    let mut out = [0; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

/// `Authorization: Basic base64(form-url-encode(id) ":" form-url-encode(secret))`, as ZITADEL's docs specify
/// and its OIDC library unescapes it (`client_secret_basic`, for the token endpoint and introspection), marked
/// sensitive; `None` when the pair cannot be a header value.
pub fn client_secret_basic(client_id: &str, secret: &SecretString) -> Option<HeaderValue> {
    let encode = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let pair = format!("{}:{}", encode(client_id), encode(secret.expose_secret()));
    let encoded = base64::engine::general_purpose::STANDARD.encode(pair);
    let mut value = HeaderValue::try_from(format!("Basic {encoded}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// A PAT as an `Authorization` header value, marked sensitive.
pub(crate) fn pat_authorization(pat: &SecretString) -> Result<HeaderValue, BearerError> {
    let mut value = HeaderValue::try_from(format!("Bearer {}", pat.expose_secret()))
        .map_err(|_| BearerError::BadCharacters)?;
    value.set_sensitive(true);
    Ok(value)
}

impl fmt::Debug for ServiceCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServiceCredential({}, <redacted>)", self.describe())
    }
}

/// The `type` of a service user's key file. ZITADEL also hands out `application` keys (for an API app's
/// `private_key_jwt`), which look alike but cannot get tokens for a user.
const SERVICE_ACCOUNT_TYPE: &str = "serviceaccount";

/// A service user's JWT-profile key, as ZITADEL hands it out:
/// `{"type":"serviceaccount","keyId":"…","key":"-----BEGIN RSA PRIVATE KEY-----…","userId":"…"}`.
/// The private key is checked (by signing once) when loaded, and never prints.
pub struct ServiceKey {
    key_id: String,
    user_id: String,
    key: EncodingKey,
    /// The private key's PEM through a keyed hash, for [`ServiceCredential::derive_secret`]; never the key.
    material: [u8; 32],
}

/// What is wrong with a key file. Messages never contain key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFileError {
    /// The file does not parse as JSON; the parser's message (a position, never content).
    #[error("is not JSON ({0}); expected the key file ZITADEL downloads for a service user key")]
    NotJson(String),
    /// The file is JSON but not an object.
    #[error("is not a JSON object; expected the key file ZITADEL downloads for a service user key")]
    NotAnObject,
    /// A field the key needs is missing or not a string; its name.
    #[error(
        "has no string field `{0}`; expected the key file ZITADEL downloads for a service user key"
    )]
    MissingField(&'static str),
    /// The file is an API application's key, not a service user's.
    #[error(
        "is an application key (`\"type\":\"application\"`, made for an API app's private_key_jwt); usermeta needs a service user's key (`\"type\":\"serviceaccount\"`): create one under the service user's Keys"
    )]
    ApplicationKey,
    /// The file's `type` is neither a service user's nor an application's; the type it names.
    #[error("has `type` {0:?}; expected \"serviceaccount\" (a service user's key)")]
    WrongType(String),
    /// The `key` field does not hold an RSA private key that signs; the reason.
    #[error("has a `key` that is not a usable RSA private key in PEM form ({0})")]
    BadKey(String),
}

impl ServiceKey {
    /// Reads a key file's content. Parsing goes through `serde_json::Value` so that no error can echo a field.
    pub fn from_json(text: &[u8]) -> Result<ServiceKey, KeyFileError> {
        let value: serde_json::Value = serde_json::from_slice(text).map_err(|e| {
            // Only the category and position: serde's message for a bad value could quote the key.
            KeyFileError::NotJson(format!(
                "{:?} error at line {} column {}",
                e.classify(),
                e.line(),
                e.column()
            ))
        })?;
        let object = value.as_object().ok_or(KeyFileError::NotAnObject)?;
        let field = |name: &'static str| {
            object
                .get(name)
                .and_then(serde_json::Value::as_str)
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .ok_or(KeyFileError::MissingField(name))
        };
        match field("type")? {
            SERVICE_ACCOUNT_TYPE => {}
            "application" => return Err(KeyFileError::ApplicationKey),
            other => {
                return Err(KeyFileError::WrongType(other.chars().take(40).collect()));
            }
        }
        let key_id = field("keyId")?.to_owned();
        let user_id = field("userId")?.to_owned();
        let pem = field("key")?;
        let key = EncodingKey::from_rsa_pem(pem.as_bytes())
            .map_err(|e| KeyFileError::BadKey(e.to_string()))?;
        let key = ServiceKey {
            key_id,
            user_id,
            key,
            material: keyed_hash(b"usermeta service key material", pem.as_bytes()),
        };
        // PEM parsing checks the armour only; one signature proves the RSA key itself at start-up.
        key.assertion("https://usermeta.invalid", SystemTime::now())
            .map_err(|e| KeyFileError::BadKey(e.to_string()))?;
        Ok(key)
    }

    /// The key's id, sent as the assertion's `kid`.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The service user the key belongs to, the assertion's `iss` and `sub`.
    pub fn user_id(&self) -> &str {
        &self.user_id
    }

    /// The RS256 assertion of the JWT-profile grant: `kid` = key id, `iss` = `sub` = user id, `aud` = the
    /// issuer, valid for [`ASSERTION_LIFETIME`] from `now`.
    pub(crate) fn assertion(
        &self,
        audience: &str,
        now: SystemTime,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        rs256_assertion(
            &self.user_id,
            &self.key_id,
            &self.key,
            audience,
            now,
            ASSERTION_LIFETIME,
        )
    }
}

/// How long an assertion is valid: ZITADEL's maximum ("MUST NOT be longer than 1h"), as its SDKs use, which
/// leaves the most room for clock skew. It is sent at once and never reused.
/// An RS256 JWT of the kind ZITADEL takes for the JWT-profile grant and for `private_key_jwt` client
/// authentication: `iss` = `sub` = `subject`, header `kid`, `aud` = the issuer, valid for `lifetime` from `now`.
pub fn rs256_assertion(
    subject: &str,
    key_id: &str,
    key: &EncodingKey,
    audience: &str,
    now: SystemTime,
    lifetime: Duration,
) -> Result<String, jsonwebtoken::errors::Error> {
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        iss: &'a str,
        sub: &'a str,
        aud: &'a str,
        iat: u64,
        exp: u64,
    }
    let iat = now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(key_id.to_owned());
    let claims = Claims {
        iss: subject,
        sub: subject,
        aud: audience,
        iat,
        exp: iat + lifetime.as_secs(),
    };
    jsonwebtoken::encode(&header, &claims, key)
}

/// How long a JWT-profile assertion made by [`ServiceKey`] is valid, from its `iat`.
pub const ASSERTION_LIFETIME: Duration = Duration::from_secs(60 * 60);

impl fmt::Debug for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceKey")
            .field("key_id", &self.key_id)
            .field("user_id", &self.user_id)
            .finish_non_exhaustive()
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
            assert!(token.authorization().is_sensitive());
            assert_eq!(
                token.digest(),
                CallerToken::from_authorization(b"Bearer abc")
                    .unwrap()
                    .digest()
            );
        }
    }

    #[test]
    fn header_and_shared_values_parse_as_bytes_do() {
        for value in [
            "Bearer abc",
            "bearer abc",
            "  Bearer   abc  ",
            "Basic abc",
            "Bearer a,b",
        ] {
            let bytes = value.as_bytes();
            let expected = CallerToken::from_authorization(bytes).map(|t| t.digest());
            let header = HeaderValue::from_str(value).unwrap();
            assert_eq!(
                CallerToken::from_header(&header).map(|t| t.digest()),
                expected,
                "{value:?}"
            );
            let shared = Bytes::copy_from_slice(bytes);
            assert_eq!(
                CallerToken::from_shared(&shared).map(|t| t.digest()),
                expected,
                "{value:?}"
            );
        }
        // A canonical value is kept as it came: the same buffer, not a copy.
        let shared = Bytes::from_static(b"Bearer abc");
        let token = CallerToken::from_shared(&shared).unwrap();
        assert_eq!(token.authorization().as_bytes().as_ptr(), shared.as_ptr());
        assert!(token.authorization().is_sensitive());
        // One that is not is rewritten as `Bearer <token>`.
        let token = CallerToken::from_header(&HeaderValue::from_static("BEARER  abc ")).unwrap();
        assert_eq!(token.authorization(), "Bearer abc");
    }

    #[test]
    fn token_characters_are_rfc_6750s_b64token() {
        let all = "Bearer AZaz09-._~+/=";
        assert!(CallerToken::from_authorization(all.as_bytes()).is_ok());
        for bad in [",", "%", "!", "\\", "\u{e9}", "\t"] {
            assert_eq!(
                CallerToken::from_authorization(format!("Bearer a{bad}b").as_bytes()).unwrap_err(),
                BearerError::BadCharacters,
                "{bad:?}"
            );
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
