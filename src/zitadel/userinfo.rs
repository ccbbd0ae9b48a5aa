//! ZITADEL's OIDC userinfo endpoint: who the caller's token belongs to, and, with the scope
//! `urn:zitadel:iam:user:metadata`, their metadata as URL-safe unpadded base64.

use serde::Deserialize;
use std::collections::BTreeMap;

use super::{CallerToken, Endpoint, UpstreamError, Zitadel, decode_item};
use crate::metadata::MetadataItem;

/// The userinfo claim that carries metadata (also the scope that requests it).
pub const METADATA_CLAIM: &str = "urn:zitadel:iam:user:metadata";
/// The claim with the user's organisation, present with the scope `urn:zitadel:iam:user:resourceowner`.
pub const ORG_ID_CLAIM: &str = "urn:zitadel:iam:user:resourceowner:id";
/// The claim with the user's project roles (an object keyed by role name), present with the scope
/// `urn:zitadel:iam:org:projects:roles` or when the project asserts roles on authentication.
pub const ROLES_CLAIM: &str = "urn:zitadel:iam:org:project:roles";

/// What userinfo says about the token's user.
#[derive(Debug, Clone, PartialEq)]
pub struct UserInfo {
    /// The user id (`sub`); ZITADEL sends it only for tokens with the scope `openid`.
    pub sub: Option<String>,
    /// The user's organisation, when the token has the resourceowner scope.
    pub org_id: Option<String>,
    /// The metadata claim, sorted by key; empty when the user has none or the token lacks the scope.
    pub metadata: Vec<MetadataItem>,
    /// Project role names from the roles claim; empty when the token carries none.
    pub roles: Vec<String>,
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    #[serde(rename = "urn:zitadel:iam:user:resourceowner:id")]
    org_id: Option<String>,
    #[serde(rename = "urn:zitadel:iam:user:metadata", default)]
    metadata: BTreeMap<String, serde_json::Value>,
    /// Read loosely: a roles claim of an unexpected shape must not make the whole answer unreadable.
    #[serde(rename = "urn:zitadel:iam:org:project:roles", default)]
    roles: Option<serde_json::Value>,
}

impl Zitadel {
    /// Asks userinfo about the caller's token.
    pub async fn userinfo(&self, token: &CallerToken) -> Result<UserInfo, UpstreamError> {
        let endpoint = Endpoint::Userinfo;
        let request = self
            .http
            .get(self.userinfo_url.clone())
            .header(http::header::AUTHORIZATION, token.authorization().clone());
        let claims: Claims = self.send_json(endpoint, request).await?;
        let sub = claims.sub.filter(|s| !s.is_empty());
        let metadata = claims
            .metadata
            .into_iter()
            .map(|(key, value)| match value {
                serde_json::Value::String(encoded) => decode_item(endpoint, key, Some(&encoded), None),
                _ => {
                    tracing::warn!(%endpoint, key = %key, "metadata claim value is not a string; returning the key without a value");
                    MetadataItem { key, value: None, create_time: None, update_time: None }
                }
            })
            .collect();
        let roles = match claims.roles {
            Some(serde_json::Value::Object(roles)) => {
                roles.into_iter().map(|(role, _)| role).collect()
            }
            _ => Vec::new(),
        };
        Ok(UserInfo {
            sub,
            org_id: claims.org_id,
            metadata,
            roles,
        })
    }
}
