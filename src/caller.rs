//! Who is calling: the bearer token from gRPC metadata, and the identity ZITADEL reports for it. The user id
//! always comes from ZITADEL's answer, never from the request.

use std::sync::Arc;

use tonic::metadata::MetadataMap;

use crate::cache::CallerCache;
use crate::zitadel::{BearerError, CallerToken, UpstreamError, Zitadel, userinfo::UserInfo};

/// The gRPC metadata key that carries the caller's token.
pub const AUTHORIZATION: &str = "authorization";

/// The caller's token is missing or unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the request has no `authorization` metadata")]
    Missing,
    #[error(transparent)]
    Malformed(#[from] BearerError),
    #[error(
        "ZITADEL's userinfo answer for this token names no user (`sub`); request the token with the scope `openid`"
    )]
    NoSubject,
}

/// Resolving the caller failed: a token problem or a ZITADEL problem.
#[derive(Debug, thiserror::Error)]
pub enum IdentifyError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
}

/// Reads the caller's bearer token from request metadata.
pub fn bearer_token(metadata: &MetadataMap) -> Result<CallerToken, TokenError> {
    let value = metadata.get(AUTHORIZATION).ok_or(TokenError::Missing)?;
    Ok(CallerToken::from_authorization(value.as_bytes())?)
}

/// A caller ZITADEL vouched for.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    /// The ZITADEL user id of the token's owner.
    pub sub: String,
    /// The caller's organisation, when the token's scopes make ZITADEL report it.
    pub org_id: Option<String>,
    /// The client certificate verified by mTLS, naming the calling service (none without mTLS).
    pub client_cert: Option<crate::tls::ClientCert>,
}

impl TryFrom<&UserInfo> for Identity {
    type Error = TokenError;

    fn try_from(info: &UserInfo) -> Result<Self, TokenError> {
        let sub = info.sub.clone().ok_or(TokenError::NoSubject)?;
        Ok(Identity {
            sub,
            org_id: info.org_id.clone(),
            client_cert: None,
        })
    }
}

/// Resolves the token's owner through ZITADEL's userinfo endpoint.
pub async fn identify(
    cache: &CallerCache,
    zitadel: &Arc<Zitadel>,
    token: &CallerToken,
) -> Result<Identity, IdentifyError> {
    let info = cache.userinfo(zitadel, token).await?;
    Ok(Identity::try_from(info.as_ref())?)
}
