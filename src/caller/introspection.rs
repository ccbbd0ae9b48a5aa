//! Token introspection (`POST /oauth/v2/introspect`) as an API application: `client_secret_basic` (each part
//! form-url-encoded, then base64) or `private_key_jwt` with the application's key file. `{"active":false}`
//! means the caller's token does not count; any non-200 answer means usermeta's own client was refused.

use std::{
    fmt,
    time::{Duration, SystemTime},
};

use http::HeaderValue;
use jsonwebtoken::EncodingKey;
use secrecy::SecretString;
use serde_json::{Map, Value};

use super::{IdentifyError, Identity, IdentitySetupError, Resolution, TokenError};
use usermeta_zitadel::{CallerToken, Endpoint, UpstreamError, Zitadel};

const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";
/// Client assertions are sent at once and never reused; a short life is plenty.
const ASSERTION_LIFETIME: Duration = Duration::from_secs(5 * 60);

/// How usermeta authenticates toward the introspection endpoint.
pub enum IntrospectionAuth {
    /// The API application's client id and secret, sent as HTTP Basic credentials.
    ClientSecret {
        /// The API application's client id.
        client_id: String,
        /// Its client secret.
        secret: SecretString,
    },
    /// The API application's key (`private_key_jwt`): a short-lived signed assertion with each request.
    PrivateKeyJwt(ApplicationKey),
}

impl IntrospectionAuth {
    /// The client id usermeta introspects as, for logs and errors.
    pub fn client_id(&self) -> &str {
        match self {
            IntrospectionAuth::ClientSecret { client_id, .. } => client_id,
            IntrospectionAuth::PrivateKeyJwt(key) => &key.client_id,
        }
    }
}

impl fmt::Debug for IntrospectionAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IntrospectionAuth::ClientSecret { client_id, .. } => f
                .debug_struct("ClientSecret")
                .field("client_id", client_id)
                .finish_non_exhaustive(),
            IntrospectionAuth::PrivateKeyJwt(key) => {
                f.debug_tuple("PrivateKeyJwt").field(key).finish()
            }
        }
    }
}

/// An API application's key file: `{"type":"application","keyId","key","clientId","appId"}`. The private key
/// is checked (by signing once) when loaded and never prints.
pub struct ApplicationKey {
    key_id: String,
    client_id: String,
    app_id: String,
    key: EncodingKey,
}

impl fmt::Debug for ApplicationKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApplicationKey")
            .field("key_id", &self.key_id)
            .field("client_id", &self.client_id)
            .field("app_id", &self.app_id)
            .finish_non_exhaustive()
    }
}

impl ApplicationKey {
    /// Reads a key file's content. Errors name fields and positions, never content.
    pub fn from_json(text: &[u8]) -> Result<ApplicationKey, String> {
        let value: Value = serde_json::from_slice(text).map_err(|e| {
            format!(
                "is not JSON ({:?} error at line {} column {}); expected the key file ZITADEL downloads for an API application",
                e.classify(),
                e.line(),
                e.column()
            )
        })?;
        let object = value
            .as_object()
            .ok_or("is not a JSON object; expected an API application's key file")?;
        let field = |name: &str| {
            object
                .get(name)
                .and_then(Value::as_str)
                .map(str::trim)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| {
                    format!("has no string field `{name}`; expected an API application's key file")
                })
        };
        match field("type")? {
            "application" => {}
            "serviceaccount" => {
                return Err("is a service user's key (`\"type\":\"serviceaccount\"`); introspection needs an API application's key (`\"type\":\"application\"`): create one under the API app's keys".into());
            }
            other => {
                return Err(format!(
                    "has `type` {:?}; expected \"application\"",
                    other.chars().take(40).collect::<String>()
                ));
            }
        }
        let key = ApplicationKey {
            key_id: field("keyId")?.to_owned(),
            client_id: field("clientId")?.to_owned(),
            app_id: field("appId")?.to_owned(),
            key: EncodingKey::from_rsa_pem(field("key")?.as_bytes()).map_err(|e| {
                format!("has a `key` that is not a usable RSA private key in PEM form ({e})")
            })?,
        };
        key.assertion("https://usermeta.invalid", SystemTime::now())
            .map_err(|e| format!("has a `key` that cannot sign ({e})"))?;
        Ok(key)
    }

    /// The API application's client id the key belongs to.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The client assertion: `iss` = `sub` = client id, `aud` = the issuer, `kid` = key id.
    fn assertion(
        &self,
        audience: &str,
        now: SystemTime,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        usermeta_zitadel::credential::rs256_assertion(
            &self.client_id,
            &self.key_id,
            &self.key,
            audience,
            now,
            ASSERTION_LIFETIME,
        )
    }
}

#[derive(Debug)]
pub(super) struct Introspector {
    auth: IntrospectionAuth,
    basic: Option<HeaderValue>,
    /// Whose roles count (usermeta's project).
    project_id: Option<String>,
}

impl Introspector {
    pub(super) fn new(
        auth: IntrospectionAuth,
        project_id: Option<String>,
    ) -> Result<Self, IdentitySetupError> {
        let basic = match &auth {
            IntrospectionAuth::ClientSecret { client_id, secret } => Some(
                usermeta_zitadel::credential::client_secret_basic(client_id, secret)
                    .ok_or(IdentitySetupError::BadClientCredentials)?,
            ),
            IntrospectionAuth::PrivateKeyJwt(_) => None,
        };
        Ok(Introspector {
            auth,
            basic,
            project_id,
        })
    }

    pub(super) async fn introspect(
        &self,
        zitadel: &Zitadel,
        token: &CallerToken,
    ) -> Result<Resolution, IdentifyError> {
        let endpoint = Endpoint::Introspection;
        let assertion = match &self.auth {
            IntrospectionAuth::PrivateKeyJwt(key) => Some(
                key.assertion(zitadel.issuer(), SystemTime::now())
                    .map_err(|e| UpstreamError::BadResponse {
                        endpoint,
                        reason: format!("could not sign the client assertion ({e})"),
                    })?,
            ),
            IntrospectionAuth::ClientSecret { .. } => None,
        };
        let form = {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.append_pair("token", token.token());
            if let Some(assertion) = &assertion {
                form.append_pair("client_assertion_type", CLIENT_ASSERTION_TYPE);
                form.append_pair("client_assertion", assertion);
            }
            form.finish()
        };
        let body = match zitadel.introspect(form, self.basic.as_ref()).await {
            Ok(body) => body,
            // Any refusal of the request itself is a refusal of usermeta's client: a caller's token that does
            // not count is a 200 with `{"active":false}`.
            Err(UpstreamError::Rejected {
                http_status,
                rejection,
                ..
            }) if (400..500).contains(&http_status) && !matches!(http_status, 408 | 429) => {
                return Err(IdentifyError::IntrospectionClient {
                    client_id: self.auth.client_id().to_owned(),
                    http_status,
                    said: match rejection.error_id {
                        Some(id) if id != rejection.message => {
                            format!("{id}: {}", rejection.message)
                        }
                        _ => rejection.message,
                    },
                });
            }
            Err(error) => return Err(error.into()),
        };
        let claims: Map<String, Value> =
            serde_json::from_slice(&body).map_err(|e| UpstreamError::BadResponse {
                endpoint,
                reason: format!("not a JSON object ({e})"),
            })?;
        if claims.get("active") != Some(&Value::Bool(true)) {
            return Ok(Resolution::Refused(TokenError::Inactive));
        }
        Ok(
            match Identity::from_claims(&claims, self.project_id.as_deref()) {
                Ok(identity) => Resolution::Active(std::sync::Arc::new(identity)),
                Err(refused) => Resolution::Refused(refused),
            },
        )
    }
}
