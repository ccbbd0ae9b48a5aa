//! `envoy.service.auth.v3.Authorization/Check`: token → caller and metadata (cached userinfo) → route rules
//! → an OK answer with identity headers, or a denial Envoy sends to the client as is.
//!
//! Anti-forgery: every answer either sets (overwriting) or removes each configured header name, so a client
//! can never reach the upstream with its own value under one of them. Envoy applies `headers_to_remove`
//! after the headers it sets, so a name that is set must not also be listed for removal.

use std::{
    collections::HashMap,
    ops::ControlFlow,
    sync::Arc,
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::STANDARD};
use compact_str::CompactString;
use envoy_types::ext_authz::v3::pb::{
    CheckResponse, DeniedHttpResponse, HeaderAppendAction, HeaderValue, HeaderValueOption,
    HttpResponse, HttpStatus, OkHttpResponse,
};
use envoy_types::pb::google::{
    protobuf::{BoolValue, Struct, Value, value::Kind},
    rpc,
};
use tonic::{Code, Request, Response, Status};
use tracing::{Instrument as _, field::Empty};

use super::wire::{CheckRequest, authorization_server::Authorization};
use super::{AuthzConfig, BASE64_MARKER, BinaryValues, MAX_HEADER_VALUE_BYTES, Requirement, Rule};
use crate::{
    api::{ApiError, RequestLimits, deadline, rate_limit::RateLimiter, shed::Shed},
    caller::cache::CallerCache,
    caller::{Caller, IdentifyError, Identity, KnownCaller, Resolver, TokenError},
    policy::{Policy, Subject},
};
use usermeta_zitadel::{
    BearerError, CallerToken, ErrorKind, UpstreamError, Zitadel, metadata::PackedMetadata,
    resilience,
};

/// Serves `envoy.service.auth.v3.Authorization`. Callers are identified exactly as the metadata API
/// identifies them (introspection, local JWT validation or userinfo, with the same cache, negative cache and
/// per-caller rate limit), and only metadata the policy lets the caller read of themself is passed on.
#[derive(Debug, Clone)]
pub struct AuthzService {
    zitadel: Arc<Zitadel>,
    cache: Arc<CallerCache>,
    resolver: Arc<Resolver>,
    policy: Arc<Policy>,
    rate_limiter: Option<Arc<RateLimiter>>,
    limits: RequestLimits,
    shed: Arc<Shed>,
    config: Arc<AuthzConfig>,
}

/// Who an allowed request is from, and what of their metadata may go upstream.
#[derive(Debug)]
struct Admitted {
    user_id: CompactString,
    /// The caller's metadata, when headers or rules needed it.
    metadata: Option<Arc<KnownCaller>>,
    /// Keys of `metadata` the policy lets the caller read of themself (configured header keys only).
    readable: Vec<bool>,
}

/// What Check decided, before it becomes Envoy's answer.
#[derive(Debug)]
enum Decision {
    /// Forward, with the caller's identity when known.
    Allow(Option<Admitted>),
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
    /// 429: the caller's rate limit is spent.
    RateLimited { retry_after: Duration },
    /// 429: the caller already has its share of the calls in flight (`USERMETA_MAX_IN_FLIGHT_PER_CALLER`).
    CallerOverloaded,
    /// 429: usermeta's request budget toward ZITADEL has nothing left to identify this caller with.
    BudgetExhausted { retry_after: Duration },
    /// 429: this caller's share of that budget (`USERMETA_UPSTREAM_CALLER_SHARE`) is spent.
    CallerShareExhausted { retry_after: Duration },
    /// 503: ZITADEL could not say who the caller is (or not in time).
    Unavailable,
}

/// Everything Check needs besides its configuration, shared with the metadata API.
#[derive(Debug, Clone)]
pub struct Shared {
    pub zitadel: Arc<Zitadel>,
    pub cache: Arc<CallerCache>,
    pub resolver: Arc<Resolver>,
    pub policy: Arc<Policy>,
    pub rate_limiter: Option<Arc<RateLimiter>>,
    pub limits: RequestLimits,
    /// The in-flight limits, shared with the metadata API.
    pub shed: Arc<Shed>,
}

impl AuthzService {
    pub fn new(shared: Shared, config: Arc<AuthzConfig>) -> Self {
        AuthzService {
            zitadel: shared.zitadel,
            cache: shared.cache,
            resolver: shared.resolver,
            policy: shared.policy,
            rate_limiter: shared.rate_limiter,
            limits: shared.limits,
            shed: shared.shed,
            config,
        }
    }

    /// What can be decided from the request alone: the route rules that apply, the bearer token, the
    /// per-caller rate limit. `Err` is the decision already made.
    fn admission<'a>(&'a self, request: &'a CheckRequest) -> Result<Admission<'a>, Decision> {
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

        let token = match http.and_then(|http| http.authorization()) {
            None => Err(BearerError::NotBearer),
            Some(value) => CallerToken::from_shared(value),
        };
        let token = match token {
            Ok(token) => token,
            // No bearer credentials at all (absent, or another scheme).
            Err(BearerError::NotBearer) if self.config.allow_anonymous && rules.is_empty() => {
                return Err(Decision::Allow(None));
            }
            Err(BearerError::NotBearer) => {
                return Err(Decision::Unauthenticated {
                    token_present: false,
                    reason: "the request has no bearer token",
                });
            }
            Err(BearerError::BadCharacters) => {
                return Err(Decision::Unauthenticated {
                    token_present: true,
                    reason: "the bearer token is malformed",
                });
            }
        };
        if let Some(limiter) = &self.rate_limiter
            && let Err(retry_after) = limiter.check(token.digest(), Instant::now())
        {
            return Err(Decision::RateLimited { retry_after });
        }
        Ok(Admission { rules, token })
    }

    /// The caller and their metadata when memory has them (the userinfo cache); `None` means asking ZITADEL.
    fn looked_up_in_memory(&self, token: &CallerToken) -> Option<LookedUp> {
        if !self.resolver.uses_userinfo() {
            return None;
        }
        Some(self.cache.cached_userinfo(token)?.map(|known| {
            let metadata = Some(Arc::clone(&known));
            (Caller::Userinfo(known), metadata)
        }))
    }

    /// The caller and, when headers or rules need it, their metadata, asking ZITADEL where memory has not
    /// got them.
    async fn look_up(&self, admission: &Admission<'_>) -> LookedUp {
        let token = &admission.token;
        let needs_metadata = !self.config.headers.is_empty()
            || admission.rules.iter().any(|rule| {
                rule.requirements
                    .iter()
                    .any(|r| matches!(r, Requirement::Metadata { .. }))
            });
        let caller = self
            .resolver
            .identify(&self.cache, &self.zitadel, token)
            .await?;
        let metadata = match &caller {
            Caller::Userinfo(known) => Some(Arc::clone(known)),
            // The identity came from introspection or the JWT; the metadata is read like GetMyMetadata
            // reads it, with the caller's own token.
            Caller::Identified(_) if needs_metadata => {
                Some(self.cache.userinfo(&self.zitadel, token).await?)
            }
            Caller::Identified(_) => None,
        };
        Ok((caller, metadata))
    }

    /// [`AuthzService::look_up`] within the call's deadline (the caller's `grpc-timeout`, cut to the maximum,
    /// or the request timeout), which bounds every ZITADEL call it makes; `None` when the deadline came first.
    async fn look_up_in_time(
        &self,
        request: &Request<CheckRequest>,
        admission: &Admission<'_>,
    ) -> Option<LookedUp> {
        let deadline = deadline::deadline(
            request.metadata(),
            self.limits.request_timeout,
            self.limits.max_request_timeout,
            Instant::now(),
        );
        let looked_up = resilience::with_deadline(deadline, self.look_up(admission));
        tokio::time::timeout_at(deadline.into(), looked_up)
            .await
            .ok()
    }

    /// The decision for a caller looked up: the route rules, and what of their metadata may go upstream.
    fn decide(&self, admission: Admission<'_>, looked_up: LookedUp) -> Decision {
        let (caller, metadata) = match looked_up {
            Ok(found) => found,
            Err(IdentifyError::Token(TokenError::NoSubject)) => {
                return Decision::Forbidden {
                    reason: "the token names no user; request it with the scope `openid`"
                        .to_owned(),
                    challenge: Some(r#"Bearer error="insufficient_scope", scope="openid""#),
                };
            }
            Err(IdentifyError::Token(TokenError::NotAccessToken(kind))) => {
                tracing::info!(%kind, "token rejected: not an access token");
                return Decision::Unauthenticated {
                    token_present: true,
                    reason: "the bearer token is not an access token (an ID token?): send the access token",
                };
            }
            Err(error) if is_token_rejection(&error) => {
                tracing::info!(%error, "token rejected");
                return Decision::Unauthenticated {
                    token_present: true,
                    reason: "the bearer token is invalid, expired or revoked",
                };
            }
            Err(error) if self.config.fail_open && admission.rules.is_empty() => {
                tracing::warn!(%error, "ZITADEL unavailable; failing open (no identity headers)");
                return Decision::Allow(None);
            }
            Err(IdentifyError::Upstream(UpstreamError::BudgetExhausted {
                retry_after, ..
            })) => {
                return Decision::BudgetExhausted { retry_after };
            }
            Err(IdentifyError::Upstream(UpstreamError::CallerShareExhausted {
                retry_after,
                ..
            })) => {
                return Decision::CallerShareExhausted { retry_after };
            }
            Err(error) => {
                tracing::warn!(%error, "ZITADEL unavailable; failing closed (503)");
                return Decision::Unavailable;
            }
        };
        let identity: &Identity = &caller;
        tracing::Span::current().record("user_id", identity.sub.as_str());
        let packed = metadata.as_deref().map(|known| &known.metadata);
        for rule in admission.rules {
            if let Some(unmet) = rule
                .requirements
                .iter()
                .find(|r| !satisfies(identity, packed, r))
            {
                let reason = match unmet {
                    Requirement::Role(role) => {
                        format!("route rule {} requires the role `{role}`", rule.origin)
                    }
                    // The denial goes back to the caller: it never names a key hidden from them.
                    Requirement::Metadata { key, .. } if self.policy.is_hidden(key) => {
                        format!("route rule {} is not met", rule.origin)
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
        // What goes upstream is what the caller may read of themself (hidden keys never).
        let me = Subject {
            user_id: &identity.sub,
            org_id: identity.org_id.as_deref(),
        };
        let readable = match self.policy.read_scope(identity, me) {
            Ok(scope) => self
                .config
                .headers
                .iter()
                .map(|mapping| scope.allows(&mapping.key))
                .collect(),
            Err(_) => vec![false; self.config.headers.len()],
        };
        Decision::Allow(Some(Admitted {
            user_id: identity.sub.clone(),
            metadata,
            readable,
        }))
    }

    fn answer(&self, decision: Decision) -> CheckResponse {
        let record = |name: &'static str| {
            tracing::Span::current().record("decision", name);
            crate::metrics::check_decision(name);
        };
        match decision {
            Decision::Allow(admitted) => {
                record("allow");
                self.allow(admitted.as_ref())
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
            Decision::RateLimited { retry_after } => {
                record("rate_limited");
                denied_with(
                    Code::ResourceExhausted,
                    429,
                    "this caller sends more requests than usermeta's per-caller rate limit allows; retry later",
                    &[("retry-after", &whole_seconds(retry_after).to_string())],
                )
            }
            Decision::CallerOverloaded => {
                record("caller_overloaded");
                denied_with(
                    Code::ResourceExhausted,
                    429,
                    "this caller already has as many calls in flight as usermeta allows one caller (USERMETA_MAX_IN_FLIGHT_PER_CALLER); retry later",
                    &[("retry-after", "1")],
                )
            }
            Decision::BudgetExhausted { retry_after } => {
                record("upstream_budget_exhausted");
                denied_with(
                    Code::ResourceExhausted,
                    429,
                    "usermeta's request budget toward the identity provider is spent for tokens it does not know yet; retry later",
                    &[("retry-after", &whole_seconds(retry_after).to_string())],
                )
            }
            Decision::CallerShareExhausted { retry_after } => {
                record("caller_upstream_share_exhausted");
                denied_with(
                    Code::ResourceExhausted,
                    429,
                    "this caller has spent its share of usermeta's request budget toward the identity provider (USERMETA_UPSTREAM_CALLER_SHARE); retry later",
                    &[("retry-after", &whole_seconds(retry_after).to_string())],
                )
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
    fn allow(&self, admitted: Option<&Admitted>) -> CheckResponse {
        let mut set: Vec<(&str, String)> = Vec::new();
        // Only built when asked for: it copies every value once more.
        let mut fields = self
            .config
            .dynamic_metadata
            .then(HashMap::<String, Value>::new);
        if let Some(admitted) = admitted {
            let sub = &admitted.user_id;
            if let Some(header) = self.config.user_id_header.as_deref()
                && is_header_safe(sub)
            {
                set.push((header, sub.as_str().to_owned()));
            }
            let mut metadata = HashMap::new();
            let packed = admitted.metadata.as_deref().map(|known| &known.metadata);
            for (mapping, readable) in self.config.headers.iter().zip(&admitted.readable) {
                if !readable {
                    continue;
                }
                let Some(Some(value)) = packed.and_then(|p| p.get(&mapping.key)) else {
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
            .filter(|_| admitted.is_some())
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

/// A `Retry-After` in whole seconds, rounded up, at least 1.
fn whole_seconds(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// Whether ZITADEL refused the token itself (as opposed to being unable to answer).
fn is_token_rejection(error: &IdentifyError) -> bool {
    match error {
        IdentifyError::Token(_) => true,
        IdentifyError::Upstream(error) => error.kind() == ErrorKind::Refused,
        _ => false,
    }
}

fn satisfies(
    identity: &Identity,
    metadata: Option<&PackedMetadata>,
    requirement: &Requirement,
) -> bool {
    match requirement {
        Requirement::Role(role) => identity.roles.contains(role),
        Requirement::Metadata { key, value } => {
            metadata.and_then(|m| m.get(key)) == Some(Some(value.as_bytes()))
        }
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
    match challenge {
        Some(challenge) => denied_with(code, http_status, body, &[("www-authenticate", challenge)]),
        None => denied_with(code, http_status, body, &[]),
    }
}

fn denied_with(
    code: Code,
    http_status: i32,
    body: &str,
    extra_headers: &[(&str, &str)],
) -> CheckResponse {
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
    headers.extend(extra_headers.iter().map(|(k, v)| header(k, v)));
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
        // DEBUG: a cached Check pays for no span at the default level (the call is on every line anyway).
        let span = tracing::debug_span!("Check", path = Empty, user_id = Empty, decision = Empty);
        // A caller memory knows is answered at once, before any deadline timer is set up.
        let waiting = span.in_scope(|| match self.admission(request.get_ref()) {
            Err(decision) => ControlFlow::Break(self.answer(decision)),
            Ok(admission) => match self.looked_up_in_memory(&admission.token) {
                Some(looked_up) => {
                    ControlFlow::Break(self.answer(self.decide(admission, looked_up)))
                }
                None => ControlFlow::Continue(admission),
            },
        });
        let admission = match waiting {
            ControlFlow::Break(answer) => return Ok(Response::new(answer)),
            ControlFlow::Continue(admission) => admission,
        };
        // Only a Check that waits on ZITADEL counts against the in-flight limits (shared with the metadata
        // API): over the caller's share it is denied (429); over the global limit it fails as a call, as
        // every listener's overload does.
        let admitted = match self.shed.admit(admission.token.digest()) {
            Ok(admitted) => admitted,
            Err(ApiError::CallerOverloaded { .. }) => {
                let answer = span.in_scope(|| self.answer(Decision::CallerOverloaded));
                return Ok(Response::new(answer));
            }
            Err(refused) => return Err(refused.into()),
        };
        let looked_up = admitted
            .run(self.look_up_in_time(&request, &admission))
            .instrument(span.clone())
            .await;
        let answer = span.in_scope(|| match looked_up {
            Some(looked_up) => self.answer(self.decide(admission, looked_up)),
            None => self.answer(Decision::Unavailable),
        });
        Ok(Response::new(answer))
    }
}

/// What Check knows of a request before looking up its caller.
struct Admission<'a> {
    /// The route rules that apply to the request's path and host.
    rules: Vec<&'a Rule>,
    token: CallerToken,
}

/// The caller of a token and, when needed, their metadata, or why they could not be looked up.
type LookedUp = Result<(Caller, Option<Arc<KnownCaller>>), IdentifyError>;

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
        use usermeta_zitadel::{Endpoint, Rejection, UpstreamError};
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
