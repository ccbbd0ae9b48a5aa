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
/// The claim with one project's roles, `urn:zitadel:iam:org:project:{id}:roles` (an object keyed by role
/// name), present with the scope `urn:zitadel:iam:org:projects:roles` or when the project asserts roles on
/// authentication. ZITADEL writes one for every project whose roles it asserts; the generic
/// `urn:zitadel:iam:org:project:roles` only repeats the roles of whichever project the token was requested
/// for, so it is never read: a role counts only as a role of the project that defines it.
fn project_roles_claim(project_id: &str) -> String {
    format!("urn:zitadel:iam:org:project:{project_id}:roles")
}

/// The role names ZITADEL asserts for `project_id` (none without a project, or when the claim is absent or
/// of another shape).
pub fn project_roles(
    claims: &serde_json::Map<String, serde_json::Value>,
    project_id: Option<&str>,
) -> BTreeSet<String> {
    let Some(project_id) = project_id else {
        return BTreeSet::new();
    };
    match claims.get(&project_roles_claim(project_id)) {
        Some(serde_json::Value::Object(granted)) => granted.keys().cloned().collect(),
        _ => BTreeSet::new(),
    }
}

/// What userinfo says about the token's user.
#[derive(Debug, Clone, PartialEq)]
pub struct UserInfo {
    /// The user id (`sub`); ZITADEL sends it only for tokens with the scope `openid`.
    pub sub: Option<String>,
    /// The user's organisation, when the token has the resourceowner scope.
    pub org_id: Option<String>,
    /// The metadata claim, sorted by key; empty when the user has none or the token lacks the scope.
    pub metadata: Vec<MetadataItem>,
    /// Roles of usermeta's project (see [`project_roles`]), when the token was requested with roles.
    pub roles: BTreeSet<String>,
}

#[derive(Deserialize)]
pub(crate) struct Claims {
    sub: Option<String>,
    #[serde(rename = "urn:zitadel:iam:user:resourceowner:id")]
    org_id: Option<String>,
    #[serde(rename = "urn:zitadel:iam:user:metadata", default)]
    metadata: BTreeMap<String, serde_json::Value>,
    /// Every other claim; the roles claim of usermeta's project is picked from these.
    #[serde(flatten)]
    other: serde_json::Map<String, serde_json::Value>,
}

/// The entries of a `urn:zitadel:iam:user:metadata` claim (key → base64 of the value; ZITADEL uses unpadded
/// URL-safe base64 there), sorted by key. `endpoint` names where the claim came from in warnings.
pub fn metadata_claim(
    endpoint: Endpoint,
    claim: BTreeMap<String, serde_json::Value>,
) -> Vec<MetadataItem> {
    claim
        .into_iter()
        .map(|(key, value)| match value {
            serde_json::Value::String(encoded) => decode_item(endpoint, key, Some(&encoded), None),
            _ => {
                tracing::warn!(%endpoint, key = %key, "metadata claim value is not a string; returning the key without a value");
                MetadataItem { key, value: None, create_time: None, update_time: None }
            }
        })
        .collect()
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
        Ok(user_info(claims, self.project_id.as_deref()))
    }
}

/// What a userinfo answer says, with the roles of `project_id`.
pub(crate) fn user_info(claims: Claims, project_id: Option<&str>) -> UserInfo {
    UserInfo {
        sub: claims.sub.filter(|s| !s.is_empty()),
        roles: project_roles(&claims.other, project_id),
        metadata: metadata_claim(Endpoint::Userinfo, claims.metadata),
        org_id: claims.org_id,
    }
}
