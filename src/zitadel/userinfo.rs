//! ZITADEL's OIDC userinfo endpoint: who the caller's token belongs to, and, with the scope
//! `urn:zitadel:iam:user:metadata`, their metadata as URL-safe unpadded base64.

use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};

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
    /// Project roles from the roles claims, when the token was requested with roles.
    pub roles: BTreeSet<String>,
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    #[serde(rename = "urn:zitadel:iam:user:resourceowner:id")]
    org_id: Option<String>,
    #[serde(rename = "urn:zitadel:iam:user:metadata", default)]
    metadata: BTreeMap<String, serde_json::Value>,
    /// Every other claim; the roles claims are picked from these.
    #[serde(flatten)]
    other: serde_json::Map<String, serde_json::Value>,
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
        let roles = crate::caller::roles_of(&claims.other);
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
        Ok(UserInfo {
            sub,
            org_id: claims.org_id,
            metadata,
            roles,
        })
    }
}
