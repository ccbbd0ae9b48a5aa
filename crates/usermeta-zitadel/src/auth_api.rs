//! ZITADEL's auth API (`/auth/v1`): the caller's own metadata, with the caller's token. The token needs the
//! audience scope `urn:zitadel:iam:org:project:id:zitadel:aud` (PATs are exempt).

use super::{CallerToken, Endpoint, UpstreamError, Zitadel, wire};
use crate::metadata::{KeyFilter, Page, PageRequest};

/// The scope a caller's token needs for the auth API.
pub const ZITADEL_AUDIENCE_SCOPE: &str = "urn:zitadel:iam:org:project:id:zitadel:aud";

impl Zitadel {
    /// One page of the caller's metadata, ascending by key (ListMyMetadata).
    pub async fn list_my_metadata(
        &self,
        token: &CallerToken,
        filter: Option<&KeyFilter>,
        page: PageRequest,
    ) -> Result<Page, UpstreamError> {
        let endpoint = Endpoint::AuthListMyMetadata;
        let request = self
            .http
            .post(self.auth_list_url.clone())
            .header(http::header::AUTHORIZATION, token.authorization().clone())
            .json(&wire::list_body(filter, page));
        let answer: wire::ListMetadataResponse = self.send_json(endpoint, request).await?;
        Ok(wire::into_page(endpoint, answer))
    }
}
