//! `envoy.service.auth.v3.Authorization/Check`: token → caller and metadata (cached userinfo) → route rules
//! → an OK answer with identity headers, or a denial Envoy sends to the client as is.
//!
//! Anti-forgery: every answer either sets (overwriting) or removes each configured header name, so a client
//! can never reach the upstream with its own value under one of them. Envoy applies `headers_to_remove`
//! after the headers it sets, so a name that is set must not also be listed for removal.

use std::{collections::HashMap, sync::Arc};

use base64::{Engine, engine::general_purpose::STANDARD};
use envoy_types::ext_authz::v3::pb::{
    Authorization, CheckRequest, CheckResponse, DeniedHttpResponse, HeaderAppendAction,
    HeaderValue, HeaderValueOption, HttpResponse, HttpStatus, OkHttpResponse,
};
use envoy_types::pb::google::{
    protobuf::{BoolValue, Struct, Value, value::Kind},
    rpc,
};
use tonic::{Code, Request, Response, Status};
use tracing::instrument;

use super::{AuthzConfig, BASE64_MARKER, BinaryValues, MAX_HEADER_VALUE_BYTES, Requirement, Rule};
use crate::{
    cache::CallerCache,
    caller::{AUTHORIZATION, IdentifyError, Identity, KnownCaller, TokenError},
    metadata::PackedMetadata,
    zitadel::{BearerError, CallerToken, UpstreamError, Zitadel},
};

/// Serves `envoy.service.auth.v3.Authorization`.
#[derive(Debug, Clone)]
pub struct AuthzService {
    zitadel: Arc<Zitadel>,
    cache: Arc<CallerCache>,
    config: Arc<AuthzConfig>,
}

/// What Check decided, before it becomes Envoy's answer.
#[derive(Debug)]
enum Decision {
    /// Forward, with the caller's identity when known.
    Allow(Option<Arc<KnownCaller>>),
    /// 401: no usable token. `token_present` adds `error="invalid_token"` to the challenge.
    Unauthenticated {
        token_present: bool,
        reason: &'static str,
    },
    /// 403: authenticated, but not allowed here (a route rule, or a token without `openid`).
    Forbidden {
        reason: String,
        challenge: Option<&'static str>,
    },
    /// 503: ZITADEL could not say who the caller is.
    Unavailable,
}

impl AuthzService {
    pub fn new(zitadel: Arc<Zitadel>, cache: Arc<CallerCache>, config: Arc<AuthzConfig>) -> Self {
        AuthzService {
            zitadel,
            cache,
            config,
        }
    }

    #[instrument(name = "Check", skip_all, fields(path, user_id, decision))]
    async fn decide(&self, request: &CheckRequest) -> Decision {
        let http = request
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref());
        let (path, host) = http.map_or(("", ""), |h| (h.path.as_str(), h.host.as_str()));
        // The query string may carry secrets; it never reaches the logs.
        tracing::Span::current().record("path", path.split('?').next().unwrap_or_default());
        let rules: Vec<&Rule> = self
            .config
            .rules
            .iter()
            .filter(|rule| rule.applies_to(path, host))
            .collect();

        let token = match http.and_then(authorization_header) {
            None => Err(BearerError::NotBearer),
            Some(value) => CallerToken::from_authorization(value),
        };
        let token = match token {
            Ok(token) => token,
            // No bearer credentials at all (absent, or another scheme).
            Err(BearerError::NotBearer) if self.config.allow_anonymous && rules.is_empty() => {
                return Decision::Allow(None);
            }
            Err(BearerError::NotBearer) => {
                return Decision::Unauthenticated {
                    token_present: false,
                    reason: "the request has no bearer token",
                };
            }
            Err(BearerError::BadCharacters) => {
                return Decision::Unauthenticated {
                    token_present: true,
                    reason: "the bearer token is malformed",
                };
            }
        };

        let known = match self.cache.userinfo(&self.zitadel, &token).await {
            Ok(known) => known,
            Err(IdentifyError::Token(TokenError::NoSubject)) => {
                return Decision::Forbidden {
                    reason: "the token names no user; request it with the scope `openid`"
                        .to_owned(),
                    challenge: Some(r#"Bearer error="insufficient_scope", scope="openid""#),
                };
            }
            Err(error) if is_token_rejection(&error) => {
                tracing::info!(%error, "token rejected");
                return Decision::Unauthenticated {
                    token_present: true,
                    reason: "the bearer token is invalid, expired or revoked",
                };
            }
            Err(error) if self.config.fail_open && rules.is_empty() => {
                tracing::warn!(%error, "ZITADEL unavailable; failing open (no identity headers)");
                return Decision::Allow(None);
            }
            Err(error) => {
                tracing::warn!(%error, "ZITADEL unavailable; failing closed (503)");
                return Decision::Unavailable;
            }
        };
        let identity = &known.identity;
        tracing::Span::current().record("user_id", identity.sub.as_str());
        for rule in rules {
            if let Some(unmet) = rule
                .requirements
                .iter()
                .find(|r| !satisfies(identity, &known.metadata, r))
            {
                let reason = match unmet {
                    Requirement::Role(role) => {
                        format!("route rule {} requires the role `{role}`", rule.origin)
                    }
                    Requirement::Metadata { key, .. } => format!(
                        "route rule {} requires a different value of metadata `{key}`",
                        rule.origin
                    ),
                };
                return Decision::Forbidden {
                    reason,
                    challenge: None,
                };
            }
        }
        Decision::Allow(Some(known))
    }

    fn answer(&self, decision: Decision) -> CheckResponse {
        let record = |name: &str| {
            tracing::Span::current().record("decision", name);
        };
        match decision {
            Decision::Allow(info) => {
                record("allow");
                self.allow(info.as_deref())
            }
            Decision::Unauthenticated {
                token_present,
                reason,
            } => {
                record("unauthenticated");
                tracing::info!(reason, "denied (401)");
                let challenge = if token_present {
                    r#"Bearer error="invalid_token""#
                } else {
                    "Bearer"
                };
                denied(Code::Unauthenticated, 401, reason, Some(challenge))
            }
            Decision::Forbidden { reason, challenge } => {
                record("forbidden");
                tracing::info!(reason, "denied (403)");
                denied(Code::PermissionDenied, 403, &reason, challenge)
            }
            Decision::Unavailable => {
                record("unavailable");
                denied(
                    Code::Unavailable,
                    503,
                    "the identity provider is unavailable; retry later",
                    None,
                )
            }
        }
    }

    /// OK: identity headers set (overwriting), every other managed header removed.
    fn allow(&self, info: Option<&KnownCaller>) -> CheckResponse {
        let mut set: Vec<(&str, String)> = Vec::new();
        // Only built when asked for: it copies every value once more.
        let mut fields = self
            .config
            .dynamic_metadata
            .then(HashMap::<String, Value>::new);
        if let Some(info) = info {
            let sub = &info.identity.sub;
            if let Some(header) = self.config.user_id_header.as_deref() {
                set.push((header, sub.as_str().to_owned()));
            }
            let mut metadata = HashMap::new();
            for mapping in &self.config.headers {
                let Some(Some(value)) = info.metadata.get(&mapping.key) else {
                    continue;
                };
                let Some(text) = header_text(value, self.config.binary, &mapping.key) else {
                    continue;
                };
                if fields.is_some() {
                    metadata.insert(mapping.key.clone(), string_value(text.clone()));
                }
                set.push((mapping.header.as_str(), text));
            }
            if let Some(fields) = &mut fields {
                fields.insert("user_id".to_owned(), string_value(sub.as_str().to_owned()));
                fields.insert(
                    "metadata".to_owned(),
                    Value {
                        kind: Some(Kind::StructValue(Struct { fields: metadata })),
                    },
                );
            }
        }
        let headers_to_remove = self
            .config
            .managed_headers()
            .filter(|name| !set.iter().any(|(set_name, _)| set_name == name))
            .map(str::to_owned)
            .collect();
        let headers = set
            .into_iter()
            .map(|(key, value)| HeaderValueOption {
                header: Some(HeaderValue {
                    key: key.to_owned(),
                    value,
                    raw_value: Vec::new(),
                }),
                // Overwrite, never append to a client's value: `append` for Envoys that read only the
                // deprecated flag (it wins when present), `append_action` for those that read only it.
                #[allow(deprecated)]
                append: Some(BoolValue { value: false }),
                append_action: HeaderAppendAction::OverwriteIfExistsOrAdd.into(),
                keep_empty_value: false,
            })
            .collect();
        let dynamic_metadata = fields
            .filter(|_| info.is_some())
            .map(|fields| Struct { fields });
        CheckResponse {
            status: Some(rpc::Status {
                code: Code::Ok.into(),
                message: String::new(),
                details: Vec::new(),
            }),
            dynamic_metadata,
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                headers,
                headers_to_remove,
                ..OkHttpResponse::default()
            })),
        }
    }
}

/// The request's `authorization` value: Envoy sends lower-case names, in `headers` or (with
/// `encode_raw_headers`) in `header_map`.
fn authorization_header(
    http: &envoy_types::pb::envoy::service::auth::v3::attribute_context::HttpRequest,
) -> Option<&[u8]> {
    if let Some(value) = http.headers.get(AUTHORIZATION) {
        return Some(value.as_bytes());
    }
    if let Some((_, value)) = http
        .headers
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(AUTHORIZATION))
    {
        return Some(value.as_bytes());
    }
    let header = http
        .header_map
        .as_ref()?
        .headers
        .iter()
        .find(|h| h.key.eq_ignore_ascii_case(AUTHORIZATION))?;
    Some(if header.raw_value.is_empty() {
        header.value.as_bytes()
    } else {
        &header.raw_value
    })
}

/// Whether ZITADEL refused the token itself (as opposed to being unable to answer).
fn is_token_rejection(error: &IdentifyError) -> bool {
    match error {
        IdentifyError::Token(_) => true,
        IdentifyError::Upstream(UpstreamError::Rejected { http_status, .. }) => {
            (400..500).contains(http_status) && *http_status != 429 && *http_status != 408
        }
        _ => false,
    }
}

fn satisfies(identity: &Identity, metadata: &PackedMetadata, requirement: &Requirement) -> bool {
    match requirement {
        Requirement::Role(role) => identity.roles.contains(role),
        Requirement::Metadata { key, value } => metadata.get(key) == Some(Some(value.as_bytes())),
    }
}

/// The header text for a value: UTF-8 text as is when header-safe, other bytes base64 with the marker (or
/// nothing); `None` means the header is not sent. Never a value that could end or add a header line.
fn header_text(value: &[u8], binary: BinaryValues, key: &str) -> Option<String> {
    let text = match std::str::from_utf8(value) {
        Ok(text) if is_header_safe(text) => text.to_owned(),
        Ok(_) => {
            tracing::warn!(
                key,
                "metadata value is not header-safe (control characters); not sent"
            );
            return None;
        }
        Err(_) => match binary {
            BinaryValues::Base64 => format!("{BASE64_MARKER}{}", STANDARD.encode(value)),
            BinaryValues::Drop => return None,
        },
    };
    if text.len() > MAX_HEADER_VALUE_BYTES {
        tracing::warn!(
            key,
            bytes = text.len(),
            "metadata value too long for a header; not sent"
        );
        return None;
    }
    Some(text)
}

/// No control characters (CR, LF, NUL and the rest, except tab), no DEL.
fn is_header_safe(text: &str) -> bool {
    text.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

fn string_value(text: String) -> Value {
    Value {
        kind: Some(Kind::StringValue(text)),
    }
}

fn denied(code: Code, http_status: i32, body: &str, challenge: Option<&str>) -> CheckResponse {
    let header = |key: &str, value: &str| HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value: value.to_owned(),
            raw_value: Vec::new(),
        }),
        #[allow(deprecated)]
        append: None,
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd.into(),
        keep_empty_value: false,
    };
    let mut headers = vec![header("content-type", "text/plain; charset=utf-8")];
    headers.extend(challenge.map(|c| header("www-authenticate", c)));
    CheckResponse {
        status: Some(rpc::Status {
            code: code.into(),
            message: body.to_owned(),
            details: Vec::new(),
        }),
        dynamic_metadata: None,
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus { code: http_status }),
            headers,
            body: format!("{body}\n"),
        })),
    }
}

#[tonic::async_trait]
impl Authorization for AuthzService {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let decision = self.decide(request.get_ref()).await;
        Ok(Response::new(self.answer(decision)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_text_never_carries_line_breaks() {
        assert_eq!(
            header_text(b"1234", BinaryValues::Base64, "k").as_deref(),
            Some("1234")
        );
        assert_eq!(
            header_text("Zürich\tx".as_bytes(), BinaryValues::Drop, "k").as_deref(),
            Some("Zürich\tx")
        );
        for bad in [&b"a\r\nx-evil: 1"[..], b"a\nb", b"a\0b", b"a\x7fb"] {
            assert_eq!(header_text(bad, BinaryValues::Base64, "k"), None);
        }
        assert_eq!(
            header_text(&[0xff, 0x00], BinaryValues::Base64, "k").as_deref(),
            Some("base64:/wA=")
        );
        assert_eq!(header_text(&[0xff, 0x00], BinaryValues::Drop, "k"), None);
        assert_eq!(
            header_text(
                &vec![b'a'; MAX_HEADER_VALUE_BYTES + 1],
                BinaryValues::Drop,
                "k"
            ),
            None
        );
    }

    #[test]
    fn only_refusals_of_the_token_are_token_problems() {
        use crate::zitadel::{Endpoint, Rejection};
        let rejected = |http_status| {
            IdentifyError::from(UpstreamError::Rejected {
                endpoint: Endpoint::Userinfo,
                http_status,
                rejection: Rejection::parse(http_status, None, b"{}"),
            })
        };
        assert!(is_token_rejection(&rejected(401)));
        assert!(is_token_rejection(&rejected(403)));
        assert!(!is_token_rejection(&rejected(429)));
        assert!(!is_token_rejection(&rejected(503)));
    }
}
