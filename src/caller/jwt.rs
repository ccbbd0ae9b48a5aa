//! Local validation of ZITADEL's JWT access tokens: signature by a key from `{issuer}/oauth/v2/keys`, `iss` =
//! the ZITADEL URL, `exp`, and `aud` naming usermeta. Keys are fetched lazily and again when a token names an
//! unknown `kid` (ZITADEL rotates keys without notice), at most once per minimum interval so tokens with
//! made-up key ids cannot turn into a stream of JWKS requests.

use std::{
    collections::HashMap,
    sync::{Arc, LazyLock, PoisonError, RwLock},
    time::Instant,
};

use jsonwebtoken::{
    Algorithm, DecodingKey, Validation,
    errors::ErrorKind,
    jwk::{Jwk, JwkSet},
};
use serde_json::{Map, Value};

use super::{IdentifyError, Identity, JwtConfig, Resolution, TokenError};
use usermeta_zitadel::{CallerToken, Endpoint, UpstreamError, Zitadel};

/// Why a token whose audience is not usermeta's is refused, naming the setting that lists usermeta's.
static WRONG_AUDIENCE: LazyLock<String> = LazyLock::new(|| {
    format!(
        "its audience does not name usermeta ({})",
        crate::settings::names::JWT_AUDIENCE
    )
});

/// No leeway on `exp`: cached identities end at `exp` exactly too, so both agree on when a token is over.
const LEEWAY_SECS: u64 = 0;
/// Clock skew allowed on `nbf`: ZITADEL sets it to the issue time, and a usermeta whose clock runs a few
/// seconds behind ZITADEL's must still take a token used at once.
const NBF_LEEWAY_SECS: u64 = 5;

struct Key {
    decoding: DecodingKey,
    /// From the JWK's `alg` when it names one; else the token header's, if it suits the key.
    algorithm: Option<Algorithm>,
}

#[derive(Default)]
struct Keys {
    by_kid: HashMap<String, Arc<Key>>,
    fetched_at: Option<Instant>,
}

pub(super) struct JwtValidator {
    config: JwtConfig,
    /// The `iss` tokens must name: the ZITADEL URL.
    issuer: String,
    /// Whose roles count (usermeta's project).
    project_id: Option<String>,
    keys: RwLock<Keys>,
    /// One JWKS fetch at a time; waiters re-check the keys after it.
    refresh: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for JwtValidator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtValidator")
            .field("issuer", &self.issuer)
            .field("audience", &self.config.audience)
            .finish_non_exhaustive()
    }
}

const ASYMMETRIC: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

impl JwtValidator {
    pub(super) fn new(config: JwtConfig, issuer: String, project_id: Option<String>) -> Self {
        JwtValidator {
            config,
            issuer,
            project_id,
            keys: RwLock::new(Keys::default()),
            refresh: tokio::sync::Mutex::new(()),
        }
    }

    fn key(&self, kid: &str) -> Option<Arc<Key>> {
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .by_kid
            .get(kid)
            .cloned()
    }

    fn fetched_at(&self) -> Option<Instant> {
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .fetched_at
    }

    /// Fetches the JWKS unless one was fetched within the minimum interval (or while waiting for the lock).
    async fn refresh(&self, zitadel: &Zitadel, seen: Option<Instant>) -> Result<(), UpstreamError> {
        let _one_at_a_time = self.refresh.lock().await;
        let last = self.fetched_at();
        if last != seen || last.is_some_and(|at| at.elapsed() < self.config.min_refresh_interval) {
            return Ok(());
        }
        let endpoint = Endpoint::Jwks;
        // The attempt counts even when it fails, so a ZITADEL outage is not retried per request.
        let record = |by_kid: Option<HashMap<String, Arc<Key>>>| {
            let mut keys = self.keys.write().unwrap_or_else(PoisonError::into_inner);
            keys.fetched_at = Some(Instant::now());
            if let Some(by_kid) = by_kid {
                keys.by_kid = by_kid;
            }
        };
        let body = match zitadel.signing_keys().await {
            Ok(body) => body,
            Err(UpstreamError::Rejected { http_status, .. }) => {
                record(None);
                return Err(UpstreamError::BadResponse {
                    endpoint,
                    reason: format!("HTTP {http_status} instead of the key set"),
                });
            }
            Err(e) => {
                record(None);
                return Err(e);
            }
        };
        let set: JwkSet = match serde_json::from_slice(&body) {
            Ok(set) => set,
            Err(e) => {
                record(None);
                return Err(UpstreamError::BadResponse {
                    endpoint,
                    reason: format!("not a JWK set ({e})"),
                });
            }
        };
        let by_kid = set.keys.iter().filter_map(usable).collect();
        record(Some(by_kid));
        Ok(())
    }

    pub(super) async fn validate(
        &self,
        zitadel: &Zitadel,
        token: &CallerToken,
    ) -> Result<Resolution, IdentifyError> {
        let claims = match self.validated_claims(zitadel, token).await? {
            Ok(claims) => claims,
            Err(refused) => return Ok(Resolution::Refused(refused)),
        };
        // A caller acts with an access token; an ID token (same keys, issuer and audience) is refused here,
        // and read only by METADATA_SOURCE_TOKEN, which takes `validated_claims` without this.
        let typ = jsonwebtoken::decode_header(token.token())
            .ok()
            .and_then(|header| header.typ);
        if let Err(kind) = super::kind::access_token_kind(typ.as_deref(), &claims) {
            return Ok(Resolution::Refused(TokenError::NotAccessToken(kind)));
        }
        Ok(
            match Identity::from_claims(&claims, self.project_id.as_deref()) {
                Ok(identity) => Resolution::Active(Arc::new(identity)),
                Err(refused) => Resolution::Refused(refused),
            },
        )
    }

    /// The claims of a JWT whose signature, issuer, audience and times check out; `Ok(Err(_))` says why the
    /// token itself is refused.
    pub(super) async fn validated_claims(
        &self,
        zitadel: &Zitadel,
        token: &CallerToken,
    ) -> Result<Result<Map<String, Value>, TokenError>, IdentifyError> {
        let refused = |why: &'static str| Ok(Err(TokenError::InvalidJwt(why)));
        let token = token.token();
        let Ok(header) = jsonwebtoken::decode_header(token) else {
            return refused("its header cannot be read");
        };
        if !ASYMMETRIC.contains(&header.alg) {
            return refused("it is not signed with an asymmetric algorithm");
        }
        let Some(kid) = header.kid.as_deref() else {
            return refused("its header names no signing key (`kid`)");
        };
        let key = match self.key(kid) {
            Some(key) => key,
            None => {
                self.refresh(zitadel, self.fetched_at()).await?;
                match self.key(kid) {
                    Some(key) => key,
                    None => return refused("it is signed with a key ZITADEL does not publish"),
                }
            }
        };
        if key.algorithm.is_some_and(|alg| alg != header.alg) {
            return refused("its algorithm is not the one of its signing key");
        }
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[self.issuer.as_str()]);
        validation.set_audience(&self.config.audience);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = LEEWAY_SECS;
        let claims =
            match jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, &validation) {
                Ok(data) => data.claims,
                Err(e) => {
                    return refused(match e.kind() {
                        ErrorKind::InvalidSignature => "its signature does not verify",
                        ErrorKind::ExpiredSignature => "it has expired",
                        ErrorKind::ImmatureSignature => "it is not valid yet (`nbf`)",
                        ErrorKind::InvalidAudience => WRONG_AUDIENCE.as_str(),
                        ErrorKind::InvalidIssuer => {
                            "it was issued by another issuer than the ZITADEL URL"
                        }
                        ErrorKind::MissingRequiredClaim(_) => {
                            "it lacks one of `exp`, `iss`, `aud`, `sub`"
                        }
                        ErrorKind::InvalidAlgorithm => {
                            "its algorithm does not suit its signing key"
                        }
                        _ => "it cannot be decoded",
                    });
                }
            };
        // `nbf` with a leeway of its own (jsonwebtoken has one for both); a malformed one is refused.
        if let Some(nbf) = claims.get("nbf") {
            match nbf.as_u64().or_else(|| nbf.as_f64().map(|f| f as u64)) {
                Some(nbf) if nbf > jsonwebtoken::get_current_timestamp() + NBF_LEEWAY_SECS => {
                    return refused("it is not valid yet (`nbf`)");
                }
                Some(_) => {}
                None => return refused("its `nbf` is not a number"),
            }
        }
        Ok(Ok(claims))
    }
}

/// A published key usermeta can verify with, by `kid`; others (no `kid`, encryption keys, symmetric) are
/// skipped.
fn usable(jwk: &Jwk) -> Option<(String, Arc<Key>)> {
    let kid = jwk.common.key_id.clone()?;
    let decoding = DecodingKey::from_jwk(jwk).ok()?;
    let algorithm = match jwk.common.key_algorithm {
        Some(alg) => Some(
            Algorithm::try_from(alg)
                .ok()
                .filter(|a| ASYMMETRIC.contains(a))?,
        ),
        None => None,
    };
    Some((
        kid,
        Arc::new(Key {
            decoding,
            algorithm,
        }),
    ))
}
