//! OIDC/OAuth endpoints: userinfo and the token endpoint (client credentials and the JWT-profile grant).

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde::Serialize;
use serde_json::{Map, Value};

use super::state::Shared;
use super::{errors, wire};

const SCOPE_OPENID: &str = "openid";
const SCOPE_EMAIL: &str = "email";
const SCOPE_PROFILE: &str = "profile";
const SCOPE_METADATA: &str = "urn:zitadel:iam:user:metadata";
const SCOPE_RESOURCE_OWNER: &str = "urn:zitadel:iam:user:resourceowner";

/// The token of `Authorization: <scheme> <token>` when the scheme is `Bearer` in any case.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// A form field (the first occurrence).
fn form_field(body: &[u8], name: &str) -> Option<String> {
    url::form_urlencoded::parse(body)
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

/// `GET`/`POST /oidc/v1/userinfo`: claims by the token's scopes.
pub(super) async fn userinfo(
    State(shared): State<Arc<Shared>>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // zitadel/oidc falls back to an `access_token` form field when there is no bearer header.
    let form_token;
    let token = match bearer(&headers) {
        Some(token) => token,
        None if method == Method::POST => {
            form_token = form_field(&body, "access_token");
            match form_token.as_deref() {
                Some(token) if !token.is_empty() => token,
                _ => {
                    return errors::oauth(
                        StatusCode::UNAUTHORIZED,
                        "invalid_request",
                        "access token missing",
                    );
                }
            }
        }
        None => {
            return errors::oauth(
                StatusCode::UNAUTHORIZED,
                "invalid_request",
                "access token missing",
            );
        }
    };
    let data = shared.read();
    let invalid = || {
        errors::oauth(
            StatusCode::UNAUTHORIZED,
            "access_denied",
            "access token invalid",
        )
    };
    let Some(token) = data.valid_token(token) else {
        return invalid();
    };
    let Some(user) = data.users.get(&token.user_id) else {
        return invalid();
    };
    let Some(org) = data.orgs.get(&user.org_id) else {
        return invalid();
    };
    // A PAT answers as if it had the scope `openid`.
    let pat_scopes = [SCOPE_OPENID.to_owned()];
    let scopes: &[String] = if token.pat {
        &pat_scopes
    } else {
        &token.scopes
    };
    let has = |scope: &str| scopes.iter().any(|s| s == scope);

    let mut claims = Map::new();
    if has(SCOPE_OPENID) {
        claims.insert("sub".into(), Value::from(user.id.as_str()));
    }
    let login_name = format!("{}@{}", user.username, org.primary_domain);
    let human = user.machine_role.is_none();
    if has(SCOPE_EMAIL) && human {
        claims.insert("email".into(), Value::from(login_name.as_str()));
        claims.insert("email_verified".into(), Value::from(true));
    }
    if has(SCOPE_PROFILE) {
        if human {
            claims.insert(
                "name".into(),
                Value::from(format!("{} {}", user.given_name, user.family_name)),
            );
            claims.insert("given_name".into(), Value::from(user.given_name.as_str()));
            claims.insert("family_name".into(), Value::from(user.family_name.as_str()));
            claims.insert("locale".into(), Value::from("en"));
        } else {
            claims.insert("name".into(), Value::from(user.username.as_str()));
        }
        claims.insert(
            "preferred_username".into(),
            Value::from(login_name.as_str()),
        );
        claims.insert(
            "updated_at".into(),
            Value::from(wire::unix_secs(user.created)),
        );
    }
    if has(SCOPE_METADATA) && !user.metadata.is_empty() {
        let metadata: Map<String, Value> = user
            .metadata
            .iter()
            .map(|(key, entry)| (key.clone(), Value::from(wire::encode_claim(&entry.value))))
            .collect();
        claims.insert(SCOPE_METADATA.into(), Value::Object(metadata));
    }
    if has(SCOPE_RESOURCE_OWNER) {
        claims.insert(
            format!("{SCOPE_RESOURCE_OWNER}:id"),
            Value::from(org.id.as_str()),
        );
        claims.insert(
            format!("{SCOPE_RESOURCE_OWNER}:name"),
            Value::from(org.name.as_str()),
        );
        claims.insert(
            format!("{SCOPE_RESOURCE_OWNER}:primary_domain"),
            Value::from(org.primary_domain.as_str()),
        );
    }
    errors::json(StatusCode::OK, &Value::Object(claims))
}

#[derive(Serialize)]
struct TokenResponse<'a> {
    access_token: &'a str,
    token_type: &'static str,
    expires_in: u64,
}

/// `POST /oauth/v2/token`.
pub(super) async fn token(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let grant_type = form_field(&body, "grant_type").unwrap_or_default();
    match grant_type.as_str() {
        "" => errors::oauth(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "grant_type missing",
        ),
        "client_credentials" => client_credentials(&shared, &headers, &body),
        JWT_BEARER_GRANT => jwt_profile(&shared, &body),
        other => errors::oauth(
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            &format!("{other} not supported"),
        ),
    }
}

/// `client_id`/`client_secret` from HTTP Basic (each part form-url-encoded, then base64) or from the body.
fn client_credentials_of(
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Option<(String, String)>, errors::Reject> {
    let bad = || -> errors::Reject {
        let description = "invalid basic auth header";
        Box::new(errors::oauth(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            description,
        ))
    };
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.to_str().map_err(|_| bad())?;
        if let Some((scheme, encoded)) = value.split_once(' ')
            && scheme.eq_ignore_ascii_case("basic")
        {
            let decoded = wire::decode_bytes(encoded.trim()).ok_or_else(bad)?;
            let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
            let (id, secret) = decoded.split_once(':').ok_or_else(bad)?;
            // Go's url.QueryUnescape: '+' is a space, %XX an escaped byte ('&' has no meaning here).
            let unescape = |part: &str| -> String {
                let as_form = format!("x={}", part.replace('&', "%26"));
                url::form_urlencoded::parse(as_form.as_bytes())
                    .next()
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default()
            };
            return Ok(Some((unescape(id), unescape(secret))));
        }
    }
    match (
        form_field(body, "client_id"),
        form_field(body, "client_secret"),
    ) {
        (Some(id), Some(secret)) => Ok(Some((id, secret))),
        _ => Ok(None),
    }
}

fn client_credentials(shared: &Shared, headers: &HeaderMap, body: &[u8]) -> Response {
    let (client_id, secret) = match client_credentials_of(headers, body) {
        Ok(Some(credentials)) => credentials,
        Ok(None) => {
            return errors::oauth(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client must be authenticated",
            );
        }
        Err(response) => return *response,
    };
    let scopes = scopes_of(body);
    let user_id = match shared.read().clients.get(&client_id) {
        Some(client) if client.secret == secret => client.user_id.clone(),
        _ => {
            return errors::oauth(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client authentication failed",
            );
        }
    };
    if !scopes.iter().any(|s| s == SCOPE_OPENID) {
        return errors::oauth(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "scope openid is missing",
        );
    }
    token_response(shared, &user_id, scopes)
}

/// The requested scopes, deduplicated, in order.
fn scopes_of(body: &[u8]) -> Vec<String> {
    let scope = form_field(body, "scope").unwrap_or_default();
    let mut scopes: Vec<String> = Vec::new();
    for scope in scope.split_whitespace() {
        if !scopes.iter().any(|s| s == scope) {
            scopes.push(scope.to_owned());
        }
    }
    scopes
}

const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// ZITADEL: the assertion's `exp` "MUST NOT be longer than 1h" and its `iat` "must not be older than 1 hour".
const MAX_ASSERTION_AGE_SECS: u64 = 3600;

/// `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`: a service user's signed assertion for a token.
fn jwt_profile(shared: &Shared, body: &[u8]) -> Response {
    let Some(assertion) = form_field(body, "assertion").filter(|a| !a.is_empty()) else {
        return errors::oauth(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "assertion missing",
        );
    };
    let scopes = scopes_of(body);
    if !scopes.iter().any(|s| s == SCOPE_OPENID) {
        return errors::oauth(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "scope openid is missing",
        );
    }
    match verify_assertion(shared, &assertion) {
        Ok(user_id) => token_response(shared, &user_id, scopes),
        Err(description) => errors::oauth(StatusCode::BAD_REQUEST, "invalid_grant", &description),
    }
}

/// Checks an assertion as ZITADEL does and returns its user: RS256 signed by a registered key (`kid`), `iss` =
/// `sub` = the key's user, `aud` containing the issuer, not expired, `exp - iat` at most 1 h, `iat` neither
/// older than 1 h nor in the future.
fn verify_assertion(shared: &Shared, assertion: &str) -> Result<String, String> {
    use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};

    #[derive(serde::Deserialize)]
    struct Claims {
        iss: String,
        sub: String,
        iat: u64,
        exp: u64,
    }

    let header =
        jsonwebtoken::decode_header(assertion).map_err(|_| "assertion is not a JWT".to_owned())?;
    if header.alg != Algorithm::RS256 {
        return Err(format!("unsupported signing algorithm {:?}", header.alg));
    }
    let kid = header.kid.ok_or("assertion header has no kid")?;
    let (key_user, public_der) = {
        let data = shared.read();
        let key = data
            .machine_keys
            .get(&kid)
            .ok_or_else(|| format!("no key {kid} is registered (Errors.AuthNKey.NotFound)"))?;
        (key.user_id.clone(), key.public_der.clone())
    };
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[shared.issuer.as_str()]);
    validation.set_required_spec_claims(&["exp", "iat", "iss", "sub", "aud"]);
    validation.leeway = 0;
    let claims = jsonwebtoken::decode::<Claims>(
        assertion,
        &DecodingKey::from_rsa_der(&public_der),
        &validation,
    )
    .map_err(|e| match e.kind() {
        ErrorKind::InvalidSignature => "signature invalid".to_owned(),
        ErrorKind::ExpiredSignature => "assertion expired".to_owned(),
        ErrorKind::InvalidAudience => {
            format!("audience is not valid: it must include {}", shared.issuer)
        }
        ErrorKind::MissingRequiredClaim(claim) => format!("claim {claim} missing"),
        _ => format!("assertion invalid ({e})"),
    })?
    .claims;
    if claims.iss != claims.sub {
        return Err("delegation not yet implemented, issuer and sub must be identical".into());
    }
    if claims.sub != key_user {
        return Err("subject is not the key's user".into());
    }
    let now = wire::unix_secs(wire::now());
    if claims.iat > now {
        return Err("iat is in the future".into());
    }
    if now - claims.iat > MAX_ASSERTION_AGE_SECS {
        return Err("iat is older than 1h".into());
    }
    if claims.exp.saturating_sub(claims.iat) > MAX_ASSERTION_AGE_SECS {
        return Err("assertion lifetime (exp - iat) is longer than 1h".into());
    }
    match shared.read().users.get(&claims.sub) {
        Some(user) if user.machine_role.is_some() => Ok(claims.sub),
        _ => Err("subject is not a known service user".into()),
    }
}

/// Issues a token with the configured lifetime and answers it as ZITADEL does.
fn token_response(shared: &Shared, user_id: &str, scopes: Vec<String>) -> Response {
    let lifetime = shared.token_lifetime();
    let access_token = shared.issue_token(user_id, scopes, Some(lifetime), false);
    let mut response = errors::json(
        StatusCode::OK,
        &TokenResponse {
            access_token: &access_token,
            token_type: "Bearer",
            expires_in: lifetime.as_secs(),
        },
    );
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}
