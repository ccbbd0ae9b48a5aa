//! Telling a JWT access token from an ID token (RFC 8725 §3.11: keep kinds of JWT apart by what only one
//! kind carries). ZITADEL signs both with the same keys and issuer, and an ID token's `aud` holds the
//! project usermeta validates for, so signature, issuer and audience cannot tell them apart; neither can the
//! header, since ZITADEL writes `typ: JWT` in both (zitadel/oidc `op.SignerFromKey`, zitadel
//! `signerFromWebKey`). Their claims can:
//!
//! - a JWT access token (`createJWT`: `oidc.NewAccessTokenClaims`) always carries `jti`, the token id
//!   ZITADEL's own userinfo and introspection look the token up by, and never `azp`;
//! - an ID token (`createIDToken`: `oidc.NewIDTokenClaims`) always carries `azp` (the client) and never
//!   `jti`; beside an access token it carries `at_hash`, and `nonce` when the authorization request had one.
//!
//! So a JWT counts as an access token when its header says so (`typ` `at+jwt`, RFC 9068), or when its `typ`
//! is absent or the generic `JWT` and it carries `jti` and none of the claims OpenID Connect defines for ID
//! tokens only (`azp`, `at_hash`, `c_hash`, `s_hash`, `nonce`). `auth_time`, `amr` and `acr` are no sign:
//! RFC 9068 allows them in access tokens.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::{Map, Value};

use usermeta_zitadel::CallerToken;

/// Why a JWT is not taken for an access token. One byte: the caller cache keeps it per refused token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotAccessToken {
    /// The header's `typ` names another kind of JWT than `JWT` or `at+jwt`.
    OtherType,
    /// It carries a claim only ID tokens carry.
    IdTokenClaim(IdTokenClaim),
    /// It carries no token id (`jti`): no access token ZITADEL issues lacks one.
    NoTokenId,
}

/// The claims OpenID Connect defines for ID tokens only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdTokenClaim {
    /// `azp`, the authorized party.
    Azp,
    /// `at_hash`, the access token's hash.
    AtHash,
    /// `c_hash`, the authorization code's hash.
    CHash,
    /// `s_hash`, the `state` parameter's hash.
    SHash,
    /// `nonce`, which ties the token to its authentication request.
    Nonce,
}

impl IdTokenClaim {
    const ALL: [IdTokenClaim; 5] = [
        IdTokenClaim::Azp,
        IdTokenClaim::AtHash,
        IdTokenClaim::CHash,
        IdTokenClaim::SHash,
        IdTokenClaim::Nonce,
    ];

    /// The claim's name in a JWT.
    pub fn name(self) -> &'static str {
        match self {
            IdTokenClaim::Azp => "azp",
            IdTokenClaim::AtHash => "at_hash",
            IdTokenClaim::CHash => "c_hash",
            IdTokenClaim::SHash => "s_hash",
            IdTokenClaim::Nonce => "nonce",
        }
    }
}

impl std::fmt::Display for NotAccessToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotAccessToken::OtherType => {
                f.write_str("its header's `typ` names another kind of JWT than an access token")
            }
            NotAccessToken::IdTokenClaim(claim) => write!(
                f,
                "it carries `{}`, a claim of ID tokens, not of access tokens",
                claim.name()
            ),
            NotAccessToken::NoTokenId => {
                f.write_str("it carries no `jti`, which every ZITADEL access token has")
            }
        }
    }
}

/// Whether a JWT with header `typ` and these claims is an access token ([module docs](self)).
pub(super) fn access_token_kind(
    typ: Option<&str>,
    claims: &Map<String, Value>,
) -> Result<(), NotAccessToken> {
    // RFC 7515 §4.1.9: a media type, compared case-insensitively, `application/` optional.
    let typ = typ.map(|typ| {
        let typ = typ.trim();
        let bare = typ
            .get(..12)
            .filter(|prefix| prefix.eq_ignore_ascii_case("application/"))
            .map_or(typ, |_| &typ[12..]);
        bare.to_ascii_lowercase()
    });
    match typ.as_deref() {
        // Explicitly typed as an access token: an ID token is never typed so.
        Some("at+jwt") => return Ok(()),
        None | Some("jwt") => {}
        Some(_) => return Err(NotAccessToken::OtherType),
    }
    if let Some(claim) = IdTokenClaim::ALL
        .into_iter()
        .find(|claim| claims.contains_key(claim.name()))
    {
        return Err(NotAccessToken::IdTokenClaim(claim));
    }
    match claims.get("jti") {
        Some(Value::String(jti)) if !jti.is_empty() => Ok(()),
        _ => Err(NotAccessToken::NoTokenId),
    }
}

/// [`access_token_kind`] of a JWT-shaped bearer token, read without verifying it: only ever to refuse a
/// token before sending it to userinfo or introspection (ZITADEL would refuse it too), never to trust one.
/// `Ok` for anything that is not a readable JWT (opaque tokens, PATs): ZITADEL decides those.
pub(super) fn unverified_kind(token: &CallerToken) -> Result<(), NotAccessToken> {
    if !token.is_jwt_shaped() {
        return Ok(());
    }
    let mut parts = token.token().split('.');
    let (Some(header), Some(payload)) = (parts.next(), parts.next()) else {
        return Ok(());
    };
    let json = |part: &str| -> Option<Map<String, Value>> {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).ok()?).ok()
    };
    let (Some(header), Some(claims)) = (json(header), json(payload)) else {
        return Ok(());
    };
    access_token_kind(header.get("typ").and_then(Value::as_str), &claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    /// The claim sets ZITADEL writes (zitadel `internal/api/oidc/token.go`): a JWT access token, and the
    /// ID token of a code flow and of an implicit `id_token` flow.
    #[test]
    fn zitadel_s_access_tokens_pass_and_its_id_tokens_do_not() {
        let access = claims(serde_json::json!({
            "iss": "https://zitadel.example", "sub": "u1", "aud": ["p1", "c1"], "exp": 2, "iat": 1,
            "nbf": 1, "client_id": "c1", "jti": "V2_123-at_456",
            "urn:zitadel:iam:user:metadata": {"k": "dg"}
        }));
        assert_eq!(access_token_kind(Some("JWT"), &access), Ok(()));
        assert_eq!(access_token_kind(None, &access), Ok(()));
        let code_flow = claims(serde_json::json!({
            "iss": "https://zitadel.example", "sub": "u1", "aud": ["p1", "c1"], "exp": 2, "iat": 1,
            "auth_time": 1, "amr": ["pwd"], "azp": "c1", "client_id": "c1", "at_hash": "x", "sid": "s",
            "nonce": "n"
        }));
        assert_eq!(
            access_token_kind(Some("JWT"), &code_flow),
            Err(NotAccessToken::IdTokenClaim(IdTokenClaim::Azp))
        );
        let implicit = claims(serde_json::json!({
            "iss": "https://zitadel.example", "sub": "u1", "aud": ["c1"], "exp": 2, "iat": 1,
            "azp": "c1", "client_id": "c1"
        }));
        assert!(access_token_kind(Some("JWT"), &implicit).is_err());
    }

    #[test]
    fn each_id_token_claim_refuses_and_a_missing_jti_refuses() {
        for claim in IdTokenClaim::ALL {
            let mut with = claims(serde_json::json!({"sub": "u1", "jti": "t"}));
            with.insert(claim.name().into(), Value::from("x"));
            assert_eq!(
                access_token_kind(None, &with),
                Err(NotAccessToken::IdTokenClaim(claim))
            );
        }
        for jti in [Value::Null, Value::from(""), Value::from(7)] {
            let mut without = claims(serde_json::json!({"sub": "u1"}));
            if !jti.is_null() {
                without.insert("jti".into(), jti);
            }
            assert_eq!(
                access_token_kind(None, &without),
                Err(NotAccessToken::NoTokenId)
            );
        }
        // RFC 9068 lets access tokens carry authentication information.
        let authn = claims(
            serde_json::json!({"sub": "u1", "jti": "t", "auth_time": 1, "amr": ["pwd"], "acr": "0"}),
        );
        assert_eq!(access_token_kind(None, &authn), Ok(()));
    }

    #[test]
    fn an_explicit_type_decides_either_way() {
        let id_like = claims(serde_json::json!({"sub": "u1", "azp": "c1"}));
        for typ in [
            "at+jwt",
            "AT+JWT",
            "application/at+jwt",
            "Application/AT+JWT",
        ] {
            assert_eq!(access_token_kind(Some(typ), &id_like), Ok(()), "{typ}");
        }
        let access = claims(serde_json::json!({"sub": "u1", "jti": "t"}));
        for typ in ["jwt", "application/jwt"] {
            assert_eq!(access_token_kind(Some(typ), &access), Ok(()), "{typ}");
        }
        for typ in [
            "id_token+jwt",
            "logout+jwt",
            "secevent+jwt",
            "dpop+jwt",
            "JOSE",
            "",
        ] {
            assert_eq!(
                access_token_kind(Some(typ), &access),
                Err(NotAccessToken::OtherType),
                "{typ}"
            );
        }
    }

    #[test]
    fn unverified_reading_refuses_only_readable_jwts() {
        let encode = |value: Value| URL_SAFE_NO_PAD.encode(value.to_string());
        let jwt = |header: Value, claims: Value| {
            let text = format!("Bearer {}.{}.c2ln", encode(header), encode(claims));
            CallerToken::from_authorization(text.as_bytes()).unwrap()
        };
        let id_token = jwt(
            serde_json::json!({"alg": "RS256", "typ": "JWT"}),
            serde_json::json!({"sub": "u1", "azp": "c1"}),
        );
        assert!(unverified_kind(&id_token).is_err());
        let access = jwt(
            serde_json::json!({"alg": "RS256", "typ": "JWT"}),
            serde_json::json!({"sub": "u1", "jti": "t"}),
        );
        assert_eq!(unverified_kind(&access), Ok(()));
        for opaque in ["Bearer abc", "Bearer a.b.c", "Bearer e30.bm90anNvbg.c2ln"] {
            let token = CallerToken::from_authorization(opaque.as_bytes()).unwrap();
            assert_eq!(unverified_kind(&token), Ok(()), "{opaque}");
        }
    }
}
