//! ZITADEL's OAuth endpoints that identify callers: token introspection (`POST /oauth/v2/introspect`, as
//! usermeta's API application) and the signing keys (`GET /oauth/v2/keys`). They go through the same door as
//! every other call: the caller's trace, upstream metrics, the deadline, retries and the circuit breaker.

use bytes::Bytes;
use http::HeaderValue;

use super::{Endpoint, UpstreamError, Zitadel};

impl Zitadel {
    /// Introspects with a form body (`token=…`, plus a client assertion when authenticating by key) and, for
    /// `client_secret_basic`, an `Authorization` header. The body of a 2xx answer; any other answer is
    /// [`UpstreamError::Rejected`] (a 4xx there means ZITADEL refused usermeta's own client).
    pub async fn introspect(
        &self,
        form: String,
        authorization: Option<&HeaderValue>,
    ) -> Result<Bytes, UpstreamError> {
        let mut request = self
            .http
            .post(self.introspect_url.clone())
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(form);
        if let Some(authorization) = authorization {
            request = request.header(http::header::AUTHORIZATION, authorization.clone());
        }
        self.send(Endpoint::Introspection, request).await
    }

    /// The JSON Web Key Set ZITADEL signs access tokens with.
    pub async fn signing_keys(&self) -> Result<Bytes, UpstreamError> {
        let request = self.http.get(self.keys_url.clone());
        self.send(Endpoint::Jwks, request).await
    }

    /// The issuer ZITADEL names itself by (the instance URL without a trailing slash): the `iss` of its
    /// tokens and the audience of client assertions.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }
}
