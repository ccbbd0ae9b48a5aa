//! OIDC/OAuth endpoints: userinfo, the token endpoint (client credentials and the JWT-profile grant),
//! introspection for API applications (client secret or `private_key_jwt`), the JWKS, and JWT access tokens.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde::Serialize;
use serde_json::{Map, Value};

use super::state::{Data, ROLES_SCOPE, Shared, Token};
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
    match user_claims(&data, token) {
        Some(claims) => errors::json(StatusCode::OK, &Value::Object(claims)),
        None => errors::oauth(
            StatusCode::UNAUTHORIZED,
            "access_denied",
            "access token invalid",
        ),
    }
}

/// The userinfo claims of a valid token by its scopes (also part of an active introspection answer), or
/// `None` for an unknown, expired or revoked token.
fn user_claims(data: &Data, token: &str) -> Option<Map<String, Value>> {
    let token = data.valid_token(token)?;
    // A PAT answers as if it had the scope `openid`.
    let pat_scopes = [SCOPE_OPENID.to_owned()];
    let scopes: &[String] = if token.pat {
        &pat_scopes
    } else {
        &token.scopes
    };
    scope_claims(
        data,
        &token.user_id,
        scopes,
        token.request_project(data).as_deref(),
    )
}

/// The claims `scopes` ask for of `user_id` (userinfo's, and what ZITADEL asserts in an ID token), or `None`
/// for an unknown user.
fn scope_claims(
    data: &Data,
    user_id: &str,
    scopes: &[String],
    request_project: Option<&str>,
) -> Option<Map<String, Value>> {
    let user = data.users.get(user_id)?;
    let org = data.orgs.get(&user.org_id)?;
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
    if has(ROLES_SCOPE) {
        claims.extend(role_claims(data, &user.id, request_project));
    }
    Some(claims)
}

/// `urn:zitadel:iam:org:project:{id}:roles` for every project the user has roles in, and, as ZITADEL does,
/// the generic `urn:zitadel:iam:org:project:roles` repeating only the roles of the project the token was
/// requested for; each `{"role": {"<org id>": "<org domain>"}}`.
fn role_claims(data: &Data, user_id: &str, request_project: Option<&str>) -> Map<String, Value> {
    let mut claims = Map::new();
    let Some(grants) = data.grants.get(user_id) else {
        return claims;
    };
    for (project_id, roles) in grants {
        let org_id = data
            .projects
            .get(project_id)
            .map(|p| p.org_id.clone())
            .unwrap_or_default();
        let domain = data
            .orgs
            .get(&org_id)
            .map(|o| o.primary_domain.clone())
            .unwrap_or_default();
        let mut project = Map::new();
        for role in roles {
            let owner = Value::Object(Map::from_iter([(
                org_id.clone(),
                Value::from(domain.as_str()),
            )]));
            project.insert(role.clone(), owner);
        }
        if request_project == Some(project_id.as_str()) {
            claims.insert(
                "urn:zitadel:iam:org:project:roles".into(),
                Value::Object(project.clone()),
            );
        }
        claims.insert(
            format!("urn:zitadel:iam:org:project:{project_id}:roles"),
            Value::Object(project),
        );
    }
    claims
}

const CLIENT_ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// `POST /oauth/v2/introspect`: an API application asks about a token. Client authentication failures are
/// errors; everything else is HTTP 200, `{"active":false}` for tokens that do not count for this client.
pub(super) async fn introspect(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let assertion = form_field(&body, "client_assertion").filter(|a| !a.is_empty());
    let basic = match client_credentials_of(&headers, &body) {
        Ok(credentials) => credentials,
        Err(response) => return *response,
    };
    let client_id = match (basic, assertion) {
        (Some(_), Some(_)) => {
            return errors::oauth(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "client authentication must not use more than one method",
            );
        }
        (None, None) => {
            return errors::oauth(
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                "client must be authenticated",
            );
        }
        (Some((client_id, secret)), None) => {
            let data = shared.read();
            match data.apps.get(&client_id) {
                Some(app) if app.secret.as_deref() == Some(secret.as_str()) => client_id,
                _ => {
                    return errors::oauth(
                        StatusCode::BAD_REQUEST,
                        "unauthorized_client",
                        "client authentication failed",
                    );
                }
            }
        }
        (None, Some(assertion)) => {
            if form_field(&body, "client_assertion_type").as_deref() != Some(CLIENT_ASSERTION_TYPE)
            {
                return errors::oauth(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    "client_assertion_type must be jwt-bearer",
                );
            }
            match verify_client_assertion(&shared, &assertion) {
                Ok(client_id) => client_id,
                Err(description) => {
                    return errors::oauth(
                        StatusCode::BAD_REQUEST,
                        "unauthorized_client",
                        &description,
                    );
                }
            }
        }
    };
    let token = form_field(&body, "token").unwrap_or_default();
    let data = shared.read();
    let inactive = || errors::json(StatusCode::OK, &serde_json::json!({"active": false}));
    let Some(project_id) = data.apps.get(&client_id).map(|app| app.project_id.clone()) else {
        return inactive();
    };
    let Some(entry) = data.valid_token(&token) else {
        return inactive();
    };
    let audience = entry.audience();
    // ZITADEL's validateIntrospectionAudience: the token's audience must contain the client or its project.
    if entry.pat || !audience.iter().any(|a| *a == client_id || *a == project_id) {
        return inactive();
    }
    let Some(mut claims) = user_claims(&data, &token) else {
        return inactive();
    };
    let user = data.users.get(&entry.user_id);
    claims.insert("active".into(), Value::from(true));
    claims.insert("sub".into(), Value::from(entry.user_id.as_str()));
    claims.insert("scope".into(), Value::from(entry.scopes.join(" ")));
    claims.insert("token_type".into(), Value::from("Bearer"));
    claims.insert("aud".into(), Value::from(audience));
    claims.insert("iss".into(), Value::from(shared.issuer.as_str()));
    claims.insert("iat".into(), Value::from(entry.iat));
    claims.insert("nbf".into(), Value::from(entry.iat));
    if let Some(exp) = entry.exp {
        claims.insert("exp".into(), Value::from(exp));
    }
    if let Some(client) = &entry.client_id {
        claims.insert("client_id".into(), Value::from(client.as_str()));
    }
    if let Some(user) = user {
        claims.insert("username".into(), Value::from(user.username.as_str()));
    }
    errors::json(StatusCode::OK, &Value::Object(claims))
}

/// An API application's `private_key_jwt` assertion: RS256 by a registered app key, `iss` = `sub` = the
/// key's client id, `aud` containing the issuer, not expired.
fn verify_client_assertion(shared: &Shared, assertion: &str) -> Result<String, String> {
    use jsonwebtoken::{Algorithm, DecodingKey, Validation};

    #[derive(serde::Deserialize)]
    struct Claims {
        iss: String,
        sub: String,
    }
    let header =
        jsonwebtoken::decode_header(assertion).map_err(|_| "assertion is not a JWT".to_owned())?;
    let kid = header.kid.ok_or("assertion header has no kid")?;
    let (client_id, public_der) = shared
        .read()
        .app_keys
        .get(&kid)
        .cloned()
        .ok_or_else(|| format!("no application key {kid} is registered"))?;
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&[shared.issuer.as_str()]);
    validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
    validation.leeway = 0;
    let claims = jsonwebtoken::decode::<Claims>(
        assertion,
        &DecodingKey::from_rsa_der(&public_der),
        &validation,
    )
    .map_err(|e| format!("client assertion invalid ({e})"))?
    .claims;
    if claims.iss != client_id || claims.sub != client_id {
        return Err("iss and sub must be the key's client id".into());
    }
    Ok(client_id)
}

/// `GET /oauth/v2/keys`: the published JWT signing keys.
pub(super) async fn keys(State(shared): State<Arc<Shared>>) -> Response {
    use base64::Engine as _;
    let encode = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let data = shared.read();
    let keys: Vec<Value> = data
        .signing_keys
        .iter()
        .filter(|k| k.published)
        .filter_map(|k| {
            let (n, e) = super::keys::rsa_public_components(&k.public_der)?;
            Some(serde_json::json!({
                "use": "sig", "kty": "RSA", "kid": k.kid, "alg": "RS256", "n": encode(n), "e": encode(e),
            }))
        })
        .collect();
    errors::json(StatusCode::OK, &serde_json::json!({ "keys": keys }))
}

/// What a JWT access token issued by the stand-in says.
#[derive(Debug, Clone)]
pub struct JwtSpec {
    /// The granted scopes (`scope`); the roles and metadata they ask for become claims.
    pub scopes: Vec<String>,
    /// `aud`, besides the projects named by `…:project:id:{id}:aud` scopes.
    pub audience: Vec<String>,
    /// `client_id`, the application the token was issued to.
    pub client_id: Option<String>,
    /// Seconds until `exp`; negative for an already expired token.
    pub expires_in: i64,
    /// `iss`; the stand-in's URL when `None`.
    pub issuer: Option<String>,
    /// Sign with a key that `/oauth/v2/keys` does not publish.
    pub unpublished_key: bool,
    /// Seconds from now until `nbf` (ZITADEL sets it to the issue time: 0).
    pub not_before_in: i64,
}

impl Default for JwtSpec {
    fn default() -> Self {
        JwtSpec {
            scopes: Vec::new(),
            audience: Vec::new(),
            client_id: None,
            expires_in: 43199,
            issuer: None,
            unpublished_key: false,
            not_before_in: 0,
        }
    }
}

/// Issues a JWT access token for `user_id`, signed by the newest published (or an unpublished) key, with
/// `iss`, `sub`, `aud`, `exp`, `iat`, `client_id`, `scope` and, with the roles scope, the roles claims.
pub(super) fn issue_jwt(shared: &Shared, user_id: &str, spec: JwtSpec) -> String {
    let wanted_published = !spec.unpublished_key;
    let has_key = shared
        .read()
        .signing_keys
        .iter()
        .any(|k| k.published == wanted_published);
    if !has_key {
        shared.add_signing_key(wanted_published);
    }
    let now = wire::unix_secs(wire::now());
    let exp = now.saturating_add_signed(spec.expires_in);
    let (kid, pem, claims) = {
        let data = shared.read();
        let Some(key) = data
            .signing_keys
            .iter()
            .rev()
            .find(|k| k.published == wanted_published)
        else {
            panic!("stand-in: no signing key");
        };
        assert!(
            data.users.contains_key(user_id),
            "stand-in: unknown user {user_id:?}"
        );
        let entry = Token {
            user_id: user_id.to_owned(),
            scopes: spec.scopes.clone(),
            expires_at: None,
            pat: false,
            audience: spec.audience.clone(),
            client_id: spec.client_id.clone(),
            exp: Some(exp),
            iat: now,
        };
        let mut claims = Map::new();
        claims.insert(
            "iss".into(),
            Value::from(spec.issuer.clone().unwrap_or_else(|| shared.issuer.clone())),
        );
        claims.insert("sub".into(), Value::from(user_id));
        claims.insert("aud".into(), Value::from(entry.audience()));
        claims.insert("exp".into(), Value::from(exp));
        claims.insert("iat".into(), Value::from(now));
        claims.insert(
            "nbf".into(),
            Value::from(now.saturating_add_signed(spec.not_before_in)),
        );
        claims.insert("jti".into(), Value::from(shared_random_id()));
        claims.insert("scope".into(), Value::from(spec.scopes.join(" ")));
        if let Some(client) = &spec.client_id {
            claims.insert("client_id".into(), Value::from(client.as_str()));
        }
        if spec.scopes.iter().any(|s| s == ROLES_SCOPE) {
            claims.extend(role_claims(
                &data,
                user_id,
                entry.request_project(&data).as_deref(),
            ));
        }
        // ZITADEL's "User Info inside ID Token" (and JWT access tokens asked with the scope) carry the claim.
        if spec.scopes.iter().any(|s| s == SCOPE_METADATA)
            && let Some(user) = data.users.get(user_id)
            && !user.metadata.is_empty()
        {
            let metadata: Map<String, Value> = user
                .metadata
                .iter()
                .map(|(key, entry)| (key.clone(), Value::from(wire::encode_claim(&entry.value))))
                .collect();
            claims.insert(SCOPE_METADATA.into(), Value::Object(metadata));
        }
        if spec.scopes.iter().any(|s| s == SCOPE_RESOURCE_OWNER)
            && let Some(user) = data.users.get(user_id)
        {
            claims.insert(
                format!("{SCOPE_RESOURCE_OWNER}:id"),
                Value::from(user.org_id.as_str()),
            );
        }
        (key.kid.clone(), key.private_pem.clone(), claims)
    };
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(kid);
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes())
        .unwrap_or_else(|e| panic!("stand-in: signing key ({e})"));
    let token = jsonwebtoken::encode(&header, &Value::Object(claims), &key)
        .unwrap_or_else(|e| panic!("stand-in: signing ({e})"));
    let remaining = u64::try_from(spec.expires_in).unwrap_or(0);
    shared.store_token(
        token.clone(),
        Token {
            user_id: user_id.to_owned(),
            scopes: spec.scopes,
            // An already expired token is stored expired, so userinfo and introspection refuse it too.
            expires_at: std::time::Instant::now()
                .checked_add(std::time::Duration::from_secs(remaining)),
            pat: false,
            audience: spec.audience,
            client_id: spec.client_id,
            exp: Some(exp),
            iat: now,
        },
    );
    token
}

/// What an ID token issued by the stand-in says, as ZITADEL's `createIDToken` builds one
/// (`oidc.NewIDTokenClaims`): the client in `azp` and `client_id` (and appended to `aud`), `auth_time`, `amr`,
/// the session in `sid`, `at_hash` when issued beside an access token, `nonce` when the authorization request
/// had one, and the user's claims; never `jti` or `scope`. Signed with the same keys and issuer as access
/// tokens, header `typ: JWT`.
#[derive(Debug, Clone)]
pub struct IdTokenSpec {
    /// The OIDC client the token was issued to (`azp`, `client_id`, and an `aud` entry).
    pub client_id: String,
    /// The scopes of the authorization request: `openid`, `profile`, `urn:zitadel:iam:user:metadata`, …, and
    /// `urn:zitadel:iam:org:project:id:{id}:aud` for more audience.
    pub scopes: Vec<String>,
    /// `aud` besides the client and the projects named by scopes (ZITADEL adds the client's project).
    pub audience: Vec<String>,
    /// The access token issued with it, whose hash goes into `at_hash` (code and refresh flows).
    pub access_token: Option<String>,
    /// The authorization request's `nonce`.
    pub nonce: Option<String>,
    /// ZITADEL's "User Info inside ID Token": the user's claims by scope (metadata included) in the token.
    pub userinfo: bool,
    /// Seconds until `exp`.
    pub expires_in: i64,
}

impl Default for IdTokenSpec {
    fn default() -> Self {
        IdTokenSpec {
            client_id: "webapp".into(),
            scopes: vec![SCOPE_OPENID.into()],
            audience: Vec::new(),
            access_token: None,
            nonce: None,
            userinfo: true,
            expires_in: 43199,
        }
    }
}

/// Issues an ID token for `user_id` as [`IdTokenSpec`] says, signed by the newest published key. It is not an
/// access token: ZITADEL resolves bearer tokens at userinfo and introspection by the token id (`jti`) an ID
/// token lacks (`verifyAccessToken`), so the stand-in keeps no token entry for it and both refuse it.
pub(super) fn issue_id_token(shared: &Shared, user_id: &str, spec: IdTokenSpec) -> String {
    if !shared.read().signing_keys.iter().any(|k| k.published) {
        shared.add_signing_key(true);
    }
    let now = wire::unix_secs(wire::now());
    let (kid, pem, claims) = {
        let data = shared.read();
        let Some(key) = data.signing_keys.iter().rev().find(|k| k.published) else {
            panic!("stand-in: no signing key");
        };
        assert!(
            data.users.contains_key(user_id),
            "stand-in: unknown user {user_id:?}"
        );
        let scoped = Token {
            user_id: user_id.to_owned(),
            scopes: spec.scopes.clone(),
            expires_at: None,
            pat: false,
            audience: spec.audience.clone(),
            client_id: Some(spec.client_id.clone()),
            exp: None,
            iat: now,
        };
        let mut audience = scoped.audience();
        if !audience.contains(&spec.client_id) {
            audience.push(spec.client_id.clone());
        }
        let mut claims = if spec.userinfo {
            scope_claims(
                &data,
                user_id,
                &spec.scopes,
                scoped.request_project(&data).as_deref(),
            )
            .unwrap_or_default()
        } else {
            Map::new()
        };
        claims.insert("sub".into(), Value::from(user_id));
        claims.insert("iss".into(), Value::from(shared.issuer.as_str()));
        claims.insert("aud".into(), Value::from(audience));
        claims.insert(
            "exp".into(),
            Value::from(now.saturating_add_signed(spec.expires_in)),
        );
        claims.insert("iat".into(), Value::from(now));
        claims.insert("auth_time".into(), Value::from(now.saturating_sub(60)));
        claims.insert("amr".into(), Value::from(vec!["pwd"]));
        claims.insert("azp".into(), Value::from(spec.client_id.as_str()));
        claims.insert("client_id".into(), Value::from(spec.client_id.as_str()));
        claims.insert(
            "sid".into(),
            Value::from(format!("V2_{}", shared_random_id())),
        );
        if let Some(nonce) = &spec.nonce {
            claims.insert("nonce".into(), Value::from(nonce.as_str()));
        }
        if let Some(access_token) = &spec.access_token {
            claims.insert("at_hash".into(), Value::from(at_hash(access_token)));
        }
        (key.kid.clone(), key.private_pem.clone(), claims)
    };
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(kid);
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes())
        .unwrap_or_else(|e| panic!("stand-in: signing key ({e})"));
    jsonwebtoken::encode(&header, &Value::Object(claims), &key)
        .unwrap_or_else(|e| panic!("stand-in: signing ({e})"))
}

/// OpenID Connect's `at_hash` for RS256: the left half of the access token's SHA-256, base64url unpadded.
fn at_hash(access_token: &str) -> String {
    use base64::Engine as _;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, access_token.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&digest.as_ref()[..16])
}

fn shared_random_id() -> String {
    use rand::Rng as _;
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(16)
        .map(char::from)
        .collect()
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
