//! Who is calling: the bearer token from gRPC metadata, and the identity ZITADEL vouches for. The user id
//! always comes from ZITADEL (introspection, a JWT signed by ZITADEL's key, or userinfo), never from the
//! request.
//!
//! Which way is configured: token introspection as an API application (client secret or application key),
//! local validation of JWT access tokens against ZITADEL's JWKS, or both (JWTs locally, opaque tokens by
//! introspection). With neither, userinfo's `sub` (and its roles claims) is the identity.

pub mod cache;
mod introspection;
mod jwt;
mod kind;

use std::{collections::BTreeSet, sync::Arc, time::Duration};

use compact_str::CompactString;
use futures::FutureExt as _;
use serde_json::{Map, Value};
use tonic::metadata::MetadataMap;

pub use introspection::{ApplicationKey, IntrospectionAuth};
pub use kind::{IdTokenClaim, NotAccessToken};

use cache::CallerCache;
use usermeta_zitadel::metadata::PackedMetadata;
use usermeta_zitadel::{
    BearerError, CallerToken, UpstreamError, Zitadel,
    userinfo::{ORG_ID_CLAIM, UserInfo, project_roles},
};

/// The gRPC metadata key that carries the caller's token.
pub const AUTHORIZATION: &str = "authorization";

/// The caller's token is missing, unusable, or not vouched for by ZITADEL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// No `authorization` metadata.
    #[error("the request has no `authorization` metadata")]
    Missing,
    /// The `authorization` value is not a usable bearer token.
    #[error(transparent)]
    Malformed(#[from] BearerError),
    /// ZITADEL's answer names no user (the token lacks the scope `openid`).
    #[error(
        "ZITADEL's answer for this token names no user (`sub`); request the token with the scope `openid`"
    )]
    NoSubject,
    /// Introspection says the token is not active.
    #[error(
        "ZITADEL's introspection says the token is not active: it is invalid, expired or revoked, or its audience lacks usermeta's project (request it with the scope `urn:zitadel:iam:org:project:id:{{projectid}}:aud`); obtain a new one"
    )]
    Inactive,
    /// The JWT access token failed validation; the text says which check.
    #[error("the JWT access token is not valid: {0}; obtain a new one")]
    InvalidJwt(&'static str),
    /// The token's expiry has passed.
    #[error("the access token has expired; obtain a new one")]
    Expired,
    /// An ID token (or another JWT that is no access token) sent as a bearer: only METADATA_SOURCE_TOKEN reads
    /// a token's own claims; everything else acts with an access token.
    #[error(
        "the bearer token is not an access token ({0}); it looks like an ID token: send the access token ZITADEL issued with it (`access_token` of the token response), never the `id_token`"
    )]
    NotAccessToken(NotAccessToken),
}

/// Resolving the caller failed: a token problem or a ZITADEL problem.
#[derive(Debug, Clone, thiserror::Error)]
pub enum IdentifyError {
    /// The caller's token is refused.
    #[error(transparent)]
    Token(#[from] TokenError),
    /// ZITADEL could not say who the caller is (unreachable, an error answer, or too slow).
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// ZITADEL refused usermeta's own introspection client (any non-200 answer).
    #[error(
        "ZITADEL refused usermeta's introspection client {client_id} (HTTP {http_status}: {said}); an operator must fix {settings} (client id, secret or application key, and the app's project)",
        settings = crate::settings::names::INTROSPECTION_ALL
    )]
    IntrospectionClient {
        /// The client id usermeta introspects as.
        client_id: String,
        /// ZITADEL's HTTP status.
        http_status: u16,
        /// What ZITADEL's answer said.
        said: String,
    },
}

/// What a bearer token says of itself ([`Resolver::token_metadata`]).
#[derive(Debug)]
pub enum TokenRead {
    /// Not a JWT: it carries nothing to read.
    NotJwt,
    /// A valid JWT: its caller and its metadata claim (empty without the claim).
    Claims {
        /// Who the token names.
        identity: Identity,
        /// The token's metadata claim.
        metadata: Vec<usermeta_zitadel::metadata::MetadataItem>,
    },
}

/// Refuses a bearer that reads as an ID token before it is sent anywhere, for calls that hand the caller's
/// token to ZITADEL without identifying it first (ZITADEL would refuse it too, less clearly).
pub fn refuse_id_token(token: &CallerToken) -> Result<(), TokenError> {
    kind::unverified_kind(token).map_err(TokenError::NotAccessToken)
}

/// Reads the caller's bearer token from request metadata.
pub fn bearer_token(metadata: &MetadataMap) -> Result<CallerToken, TokenError> {
    let value = metadata
        .as_ref()
        .get(AUTHORIZATION)
        .ok_or(TokenError::Missing)?;
    Ok(CallerToken::from_header(value)?)
}

/// A caller ZITADEL vouched for. Ids are inline strings: ZITADEL's ids (18 digits) fit in the string
/// itself, so caching an identity allocates nothing for them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Identity {
    /// The ZITADEL user id of the token's owner.
    pub sub: CompactString,
    /// The OAuth client the token was issued to, when ZITADEL says (introspection, JWT access tokens).
    pub client_id: Option<CompactString>,
    /// The caller's organisation, when the token's scopes make ZITADEL report it.
    pub org_id: Option<CompactString>,
    /// Roles ZITADEL asserts for usermeta's project ([`PROJECT_ID`](crate::settings::names::PROJECT_ID)), when the token carries them.
    pub roles: BTreeSet<String>,
    /// The scopes the token was issued with, when ZITADEL says.
    pub scopes: BTreeSet<String>,
    /// The token's own expiry (seconds since the epoch), when known; caches never outlive it.
    pub expires_at: Option<u64>,
    /// The client certificate verified by mTLS, naming the calling service (none without mTLS). Boxed: it
    /// is set per request, never on the identities caches hold.
    pub client_cert: Option<Box<crate::tls::ClientCert>>,
}

impl Identity {
    /// An identity from ZITADEL's claims (introspection answer or verified JWT payload); roles are those of
    /// `project_id` only.
    pub fn from_claims(
        claims: &Map<String, Value>,
        project_id: Option<&str>,
    ) -> Result<Identity, TokenError> {
        // Exactly as ZITADEL wrote them: the user id the policy and ZITADEL see must be the same bytes.
        let text = |name: &str| {
            claims
                .get(name)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(CompactString::from)
        };
        let sub = text("sub").ok_or(TokenError::NoSubject)?;
        let scopes = match claims.get("scope") {
            Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            _ => BTreeSet::new(),
        };
        Ok(Identity {
            sub,
            client_id: text("client_id").or_else(|| text("azp")),
            org_id: text(ORG_ID_CLAIM),
            roles: project_roles(claims, project_id),
            scopes,
            expires_at: claims.get("exp").and_then(Value::as_u64),
            client_cert: None,
        })
    }
}

/// A userinfo answer for a token that names a user: who it is, and the metadata claim beside it. Cached
/// once per user (one allocation, and one for the packed metadata), shared by that user's cached tokens.
#[derive(Debug, PartialEq)]
pub struct KnownCaller {
    /// Who the token names.
    pub identity: Identity,
    /// The metadata claim, sorted by key; empty when the user has none or the token lacks the scope.
    pub metadata: PackedMetadata,
}

impl TryFrom<UserInfo> for KnownCaller {
    type Error = TokenError;

    /// Takes the answer apart rather than copying it; an answer that names no user (a token without `openid`)
    /// identifies no one.
    fn try_from(info: UserInfo) -> Result<Self, TokenError> {
        let UserInfo {
            sub,
            org_id,
            metadata,
            roles,
        } = info;
        Ok(KnownCaller {
            identity: Identity {
                sub: sub.ok_or(TokenError::NoSubject)?.into(),
                org_id: org_id.map(Into::into),
                roles,
                ..Identity::default()
            },
            metadata: PackedMetadata::new(metadata),
        })
    }
}

/// The caller of a request, shared with the cache that remembers it: an identity from introspection or a JWT,
/// or a userinfo answer (whose identity sits beside the metadata, in the same allocation).
#[derive(Debug, Clone)]
pub enum Caller {
    /// From introspection or a verified JWT.
    Identified(Arc<Identity>),
    /// From userinfo, with the metadata claim beside the identity.
    Userinfo(Arc<KnownCaller>),
}

impl Caller {
    /// The caller, with the client certificate mTLS verified (when there is one) for the policy and the audit
    /// line.
    pub fn with_client_cert(self, cert: Option<crate::tls::ClientCert>) -> Caller {
        match cert {
            None => self,
            Some(cert) => Caller::Identified(Arc::new(Identity {
                client_cert: Some(Box::new(cert)),
                ..Identity::clone(&self)
            })),
        }
    }
}

impl std::ops::Deref for Caller {
    type Target = Identity;

    fn deref(&self) -> &Identity {
        match self {
            Caller::Identified(identity) => identity,
            Caller::Userinfo(known) => &known.identity,
        }
    }
}

/// What ZITADEL said about a token: who it belongs to, or that it does not count.
#[derive(Debug, Clone)]
pub enum Resolution {
    /// The token is good; this is its caller.
    Active(Arc<Identity>),
    /// The token does not count, and why.
    Refused(TokenError),
}

/// How callers are identified.
#[derive(Debug, Default)]
pub struct IdentityConfig {
    /// Introspect tokens as this API application; `None` introspects nothing.
    pub introspection: Option<IntrospectionAuth>,
    /// Validate JWT access tokens locally against ZITADEL's keys; `None` treats a JWT like any other token.
    pub jwt: Option<JwtConfig>,
}

/// Local validation of JWT access tokens.
#[derive(Debug, Clone)]
pub struct JwtConfig {
    /// Accepted audiences: usermeta's project id or client id; a token must name at least one.
    pub audience: Vec<String>,
    /// Shortest time between two JWKS fetches caused by unknown key ids, so garbage `kid`s cannot hammer
    /// ZITADEL.
    pub min_refresh_interval: Duration,
}

/// Could not set up caller identification.
#[derive(Debug, thiserror::Error)]
pub enum IdentitySetupError {
    /// The client id or secret holds bytes an HTTP header cannot carry.
    #[error("the introspection client id and secret cannot be sent in an HTTP header")]
    BadClientCredentials,
}

/// Resolves callers the configured way. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Resolver {
    introspection: Option<Arc<introspection::Introspector>>,
    jwt: Option<Arc<jwt::JwtValidator>>,
}

impl Resolver {
    /// Userinfo only (today's behaviour, and the fallback).
    pub fn userinfo() -> Self {
        Resolver {
            introspection: None,
            jwt: None,
        }
    }

    /// The resolver `config` asks for, calling ZITADEL through `zitadel`'s pooled client.
    pub fn new(config: IdentityConfig, zitadel: &Zitadel) -> Result<Self, IdentitySetupError> {
        if config.introspection.is_none() && config.jwt.is_none() {
            return Ok(Self::userinfo());
        }
        let project_id = zitadel.project_id().map(str::to_owned);
        let introspection = match config.introspection {
            Some(auth) => Some(Arc::new(introspection::Introspector::new(
                auth,
                project_id.clone(),
            )?)),
            None => None,
        };
        let jwt = config.jwt.map(|jwt| {
            Arc::new(jwt::JwtValidator::new(
                jwt,
                zitadel.issuer().to_owned(),
                project_id,
            ))
        });
        Ok(Resolver { introspection, jwt })
    }

    /// Whether identities come from userinfo (then GetMyMetadata reuses its userinfo answer).
    /// For METADATA_SOURCE_TOKEN: the caller and the metadata claim of a JWT validated locally. `Ok(None)`:
    /// no JWT validation is configured; a token that is not JWT-shaped is `Err(TokenError::…)` of its own
    /// via `not_jwt`.
    pub async fn token_metadata(
        &self,
        zitadel: &Zitadel,
        token: &CallerToken,
    ) -> Result<Option<TokenRead>, IdentifyError> {
        let Some(validator) = &self.jwt else {
            return Ok(None);
        };
        if !token.is_jwt_shaped() {
            return Ok(Some(TokenRead::NotJwt));
        }
        let claims = validator.validated_claims(zitadel, token).await??;
        let identity = Identity::from_claims(&claims, zitadel.project_id())?;
        let metadata = claims
            .get(usermeta_zitadel::userinfo::METADATA_CLAIM)
            .and_then(|claim| serde_json::from_value(claim.clone()).ok())
            .map(|claim| {
                usermeta_zitadel::userinfo::metadata_claim(usermeta_zitadel::Endpoint::Jwks, claim)
            })
            .unwrap_or_default();
        Ok(Some(TokenRead::Claims { identity, metadata }))
    }

    /// Whether callers are identified by userinfo (neither introspection nor JWT validation is configured).
    pub fn uses_userinfo(&self) -> bool {
        self.introspection.is_none() && self.jwt.is_none()
    }

    /// The caller of `token`, from the cache when it can be.
    pub async fn identify(
        &self,
        cache: &CallerCache,
        zitadel: &Arc<Zitadel>,
        token: &CallerToken,
    ) -> Result<Caller, IdentifyError> {
        // JWT-shaped tokens are checked locally when configured; opaque ones go to introspection.
        let jwt = self.jwt.as_ref().filter(|_| token.is_jwt_shaped());
        if let Some(validator) = jwt {
            let validator = Arc::clone(validator);
            let zitadel = Arc::clone(zitadel);
            let token = token.clone();
            return cache
                .identity(&token.clone(), move || {
                    async move { validator.validate(&zitadel, &token).await }.boxed()
                })
                .await
                .map(Caller::Identified);
        }
        if let Some(introspector) = &self.introspection {
            let introspector = Arc::clone(introspector);
            let zitadel = Arc::clone(zitadel);
            let token = token.clone();
            return cache
                .identity(&token.clone(), move || {
                    async move {
                        // ZITADEL's introspection answers `active: false` for an ID token; refused here
                        // first, saying why, and the ID token goes nowhere.
                        if let Err(kind) = kind::unverified_kind(&token) {
                            return Ok(Resolution::Refused(TokenError::NotAccessToken(kind)));
                        }
                        introspector.introspect(&zitadel, &token).await
                    }
                    .boxed()
                })
                .await
                .map(Caller::Identified);
        }
        if self.jwt.is_some() {
            // Only JWT validation is configured and this token is opaque: nothing can vouch for it.
            return Err(TokenError::InvalidJwt(
                "it is not a JWT (usermeta validates JWT access tokens only; configure introspection for opaque tokens)",
            )
            .into());
        }
        Ok(Caller::Userinfo(cache.userinfo(zitadel, token).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_from_claims_reads_roles_org_client_scopes_and_expiry() {
        let claims = serde_json::json!({
            "sub": "u1",
            "client_id": "billing",
            "scope": "openid profile",
            "exp": 1_900_000_000u64,
            "urn:zitadel:iam:user:resourceowner:id": "org1",
            "urn:zitadel:iam:org:project:roles": {"support": {"org1": "acme.localhost"}},
            "urn:zitadel:iam:org:project:123:roles": {"editor": {"org1": "acme.localhost"}},
            "urn:zitadel:iam:org:project:id:123:aud": {"not": "roles"},
            "urn:zitadel:iam:org:project:roles:extra": {"nope": {}},
        });
        let identity = Identity::from_claims(claims.as_object().unwrap(), Some("123")).unwrap();
        assert_eq!(identity.sub, "u1");
        assert_eq!(identity.client_id.as_deref(), Some("billing"));
        assert_eq!(identity.org_id.as_deref(), Some("org1"));
        assert_eq!(
            identity
                .roles
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
            ["editor"],
            "only roles of usermeta's project count, never the generic claim's"
        );
        let other_project =
            Identity::from_claims(claims.as_object().unwrap(), Some("999")).unwrap();
        assert!(other_project.roles.is_empty());
        let no_project = Identity::from_claims(claims.as_object().unwrap(), None).unwrap();
        assert!(no_project.roles.is_empty());
        assert_eq!(identity.scopes.len(), 2);
        assert_eq!(identity.expires_at, Some(1_900_000_000));
        let no_sub = serde_json::json!({"active": true});
        assert_eq!(
            Identity::from_claims(no_sub.as_object().unwrap(), Some("123")),
            Err(TokenError::NoSubject)
        );
    }
}
