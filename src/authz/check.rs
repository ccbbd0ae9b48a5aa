//! `envoy.service.auth.v3.Authorization/Check`: token → caller and metadata (cached userinfo) → route rules
//! → a decision, which `answer` turns into an OK with identity headers or a denial Envoy sends to the client
//! as is.

use std::{ops::ControlFlow, sync::Arc, time::Duration};

use compact_str::CompactString;
use envoy_types::ext_authz::v3::pb::CheckResponse;
use tonic::{Request, Response, Status};
use tracing::{Instrument as _, field::Empty};

use super::wire::{CheckRequest, authorization_server::Authorization};
use super::{AuthzConfig, Requirement, Rule};
use crate::{
    admission::{self, Admission, Overload, Refused},
    api::ApiError,
    caller::cache::CallerCache,
    caller::{Caller, IdentifyError, Identity, KnownCaller, Resolver, TokenError},
    org_cache::{OrgCache, OrgMetadata},
    policy::{Policy, Subject},
    sealing::Owner,
};
use usermeta_zitadel::{
    BearerError, CallerToken, ErrorKind, UpstreamError, Zitadel,
    budget::for_identified_caller,
    metadata::{MetadataItem, PackedMetadata},
};

/// Serves `envoy.service.auth.v3.Authorization`. Callers are identified exactly as the metadata API
/// identifies them (introspection, local JWT validation or userinfo, with the same cache, negative cache and
/// per-caller rate limit), and only metadata the policy lets the caller read of themself is passed on.
#[derive(Debug, Clone)]
pub struct AuthzService {
    zitadel: Arc<Zitadel>,
    cache: Arc<CallerCache>,
    resolver: Arc<Resolver>,
    pub(super) policy: Arc<Policy>,
    admission: Arc<Admission>,
    org_cache: Arc<OrgCache>,
    pub(super) config: Arc<AuthzConfig>,
}

/// Who an allowed request is from, and what of their metadata may go upstream.
#[derive(Debug)]
pub(super) struct Admitted {
    pub(super) user_id: CompactString,
    /// The caller's metadata, when headers or rules needed it.
    pub(super) metadata: Option<Arc<KnownCaller>>,
    /// The caller's organisation's own metadata, when `org:` headers or `org.` rules needed it.
    pub(super) org_metadata: Option<OrgMetadata>,
    /// Per configured header: whether the policy lets the caller read its key (of themself, or of their
    /// organisation for `org:` headers; hidden keys never).
    pub(super) readable: Vec<bool>,
}

/// What Check decided, before it becomes Envoy's answer.
#[derive(Debug)]
pub(super) enum Decision {
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
    /// 429: the caller already has its share of the calls in flight ([`MAX_IN_FLIGHT_PER_CALLER`](crate::settings::names::MAX_IN_FLIGHT_PER_CALLER)).
    CallerOverloaded,
    /// 429: usermeta's request budget toward ZITADEL has nothing left to identify this caller with.
    BudgetExhausted { retry_after: Duration },
    /// 429: this caller's share of that budget ([`UPSTREAM_CALLER_SHARE`](crate::settings::names::UPSTREAM_CALLER_SHARE)) is spent.
    CallerShareExhausted { retry_after: Duration },
    /// 503: ZITADEL could not say who the caller is (or not in time).
    Unavailable,
}

/// Everything Check needs besides its configuration, shared with the metadata API.
#[derive(Debug, Clone)]
pub struct Shared {
    /// The ZITADEL client (userinfo with the caller's token).
    pub zitadel: Arc<Zitadel>,
    /// What ZITADEL said about tokens, shared with the metadata API.
    pub cache: Arc<CallerCache>,
    /// How callers are identified, as for the metadata API.
    pub resolver: Arc<Resolver>,
    /// Which of their own keys callers may read; only those are passed upstream.
    pub policy: Arc<Policy>,
    /// The rate limit, in-flight limits and deadlines, shared with the metadata API (one budget per caller).
    pub admission: Arc<Admission>,
    /// Organisations' metadata, shared with the metadata API (`org:` headers and `org.` rules).
    pub org_cache: Arc<OrgCache>,
}

impl AuthzService {
    /// Check, with the metadata API's `shared` dependencies and its own `config`.
    pub fn new(shared: Shared, config: Arc<AuthzConfig>) -> Self {
        AuthzService {
            zitadel: shared.zitadel,
            cache: shared.cache,
            resolver: shared.resolver,
            policy: shared.policy,
            admission: shared.admission,
            org_cache: shared.org_cache,
            config,
        }
    }

    /// What can be decided from the request alone: the route rules that apply, then the door every call
    /// passes ([`Admission::caller`]: the bearer token, the per-caller rate limit). `Err` is the decision
    /// already made.
    fn enter<'a>(&'a self, request: &'a CheckRequest) -> Result<Entry<'a>, Decision> {
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
        match self.admission.caller(token) {
            Ok(token) => Ok(Entry { rules, token }),
            // No bearer credentials at all (absent, or another scheme).
            Err(Refused::Token(BearerError::NotBearer))
                if self.config.allow_anonymous && rules.is_empty() =>
            {
                Err(Decision::Allow(None))
            }
            Err(Refused::Token(BearerError::NotBearer)) => Err(Decision::Unauthenticated {
                token_present: false,
                reason: "the request has no bearer token",
            }),
            Err(Refused::Token(BearerError::BadCharacters)) => Err(Decision::Unauthenticated {
                token_present: true,
                reason: "the bearer token is malformed",
            }),
            Err(Refused::RateLimited { retry_after }) => Err(Decision::RateLimited { retry_after }),
        }
    }

    /// The caller and their metadata when memory has them (the userinfo cache); `None` means asking ZITADEL.
    fn looked_up_in_memory(&self, token: &CallerToken) -> Option<LookedUp> {
        if !self.resolver.uses_userinfo() {
            return None;
        }
        let known = match self.cache.cached_userinfo(token)? {
            Ok(known) => known,
            Err(error) => return Some(Err(error)),
        };
        // The organisation's metadata too, when needed: else ZITADEL is asked.
        let org = match (
            self.config.needs_organization(),
            known.identity.org_id.as_deref(),
        ) {
            (true, Some(org_id)) => Some(self.org_cache.get(org_id)?),
            _ => None,
        };
        let metadata = Some(Arc::clone(&known));
        Some(Ok((Caller::Userinfo(known), metadata, org)))
    }

    /// The caller's organisation's own metadata, when headers or rules need it (from memory while fresh).
    async fn organization_metadata(
        &self,
        identity: &Identity,
    ) -> Result<Option<OrgMetadata>, UpstreamError> {
        let Some(org_id) = identity
            .org_id
            .as_deref()
            .filter(|_| self.config.needs_organization())
        else {
            return Ok(None);
        };
        let zitadel = Arc::clone(&self.zitadel);
        let owned = org_id.to_owned();
        let read =
            async move { for_identified_caller(zitadel.list_all_org_metadata(&owned)).await };
        self.org_cache.load(org_id, read).await.map(Some)
    }

    /// The caller and, when headers or rules need it, their metadata, asking ZITADEL where memory has not
    /// got them.
    async fn look_up(&self, entry: &Entry<'_>) -> LookedUp {
        let token = &entry.token;
        let needs_metadata = !self.config.headers.is_empty()
            || entry.rules.iter().any(|rule| {
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
        // A refusal of the organisation's read is usermeta's (its service user's) problem, never the token's:
        // it must not become a 401, so it fails as ZITADEL being unable to answer (503, or fail-open).
        let org = self.organization_metadata(&caller).await.map_err(|error| {
            if error.kind() == ErrorKind::Refused {
                tracing::warn!(%error, "ZITADEL refused reading the caller's organisation's metadata");
                IdentifyError::Upstream(UpstreamError::Unreachable {
                    endpoint: error.endpoint(),
                    reason: format!("the organisation's metadata was refused ({error})"),
                })
            } else {
                IdentifyError::Upstream(error)
            }
        })?;
        Ok((caller, metadata, org))
    }

    /// [`AuthzService::look_up`] within the call's deadline (the caller's `grpc-timeout`, cut to the maximum,
    /// or the request timeout), which bounds every ZITADEL call it makes; `None` when the deadline came first.
    async fn look_up_in_time(
        &self,
        request: &Request<CheckRequest>,
        entry: &Entry<'_>,
    ) -> Option<LookedUp> {
        let deadline = self.admission.deadline(request.metadata());
        admission::within(deadline, self.look_up(entry)).await
    }

    /// The decision for a caller looked up: the route rules, and what of their metadata may go upstream.
    fn decide(&self, entry: Entry<'_>, looked_up: LookedUp) -> Decision {
        let (caller, metadata, org_metadata) = match looked_up {
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
            Err(error) if self.config.fail_open && entry.rules.is_empty() => {
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
        for rule in entry.rules {
            if let Some(unmet) = rule.requirements.iter().find(|r| {
                !satisfies(
                    &self.policy,
                    identity,
                    packed,
                    org_metadata.as_deref().map(Vec::as_slice),
                    r,
                )
            }) {
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
                    // Nor a key hidden from the organisation's members.
                    Requirement::OrgMetadata { key, .. }
                        if self
                            .policy
                            .is_hidden_in(crate::policy::Resource::Organization, key) =>
                    {
                        format!("route rule {} is not met", rule.origin)
                    }
                    Requirement::OrgMetadata { key, .. } => format!(
                        "route rule {} requires a different value of your organisation's metadata `{key}`",
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
        let own = self.policy.read_scope(identity, me).ok();
        // And of their organisation what its members may read (hidden keys never).
        let org_scope = identity
            .org_id
            .as_deref()
            .filter(|_| org_metadata.is_some())
            .and_then(|org_id| self.policy.org_read_scope(identity, org_id).ok());
        let readable = self
            .config
            .headers
            .iter()
            .map(|mapping| {
                let scope = if mapping.organization {
                    org_scope.as_ref()
                } else {
                    own.as_ref()
                };
                scope.is_some_and(|scope| scope.allows(&mapping.key))
            })
            .collect();
        Decision::Allow(Some(Admitted {
            user_id: identity.sub.clone(),
            metadata,
            org_metadata,
            readable,
        }))
    }
}

fn is_token_rejection(error: &IdentifyError) -> bool {
    match error {
        IdentifyError::Token(_) => true,
        IdentifyError::Upstream(error) => error.kind() == ErrorKind::Refused,
        _ => false,
    }
}

/// Whether the caller meets one requirement of a rule. A sealed key's value is compared as opened (a value
/// that does not open meets no requirement).
fn satisfies(
    policy: &Policy,
    identity: &Identity,
    metadata: Option<&PackedMetadata>,
    org_metadata: Option<&[MetadataItem]>,
    requirement: &Requirement,
) -> bool {
    match requirement {
        Requirement::Role(role) => identity.roles.contains(role),
        Requirement::Metadata { key, value } => {
            let Some(Some(stored)) = metadata.and_then(|m| m.get(key)) else {
                return false;
            };
            if policy.is_sealed(key) {
                policy
                    .reveal(Owner::User(&identity.sub), key, stored)
                    .is_ok_and(|opened| *opened == *value.as_bytes())
            } else {
                stored == value.as_bytes()
            }
        }
        Requirement::OrgMetadata { key, value } => org_metadata.is_some_and(|items| {
            items
                .iter()
                .any(|item| item.key == *key && item.value.as_deref() == Some(value.as_bytes()))
        }),
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
        let waiting = span.in_scope(|| match self.enter(request.get_ref()) {
            Err(decision) => ControlFlow::Break(self.answer(decision)),
            Ok(entry) => match self.looked_up_in_memory(&entry.token) {
                Some(looked_up) => ControlFlow::Break(self.answer(self.decide(entry, looked_up))),
                None => ControlFlow::Continue(entry),
            },
        });
        let entry = match waiting {
            ControlFlow::Break(answer) => return Ok(Response::new(answer)),
            ControlFlow::Continue(entry) => entry,
        };
        // Only a Check that waits on ZITADEL counts against the in-flight limits (shared with the metadata
        // API): over the caller's share it is denied (429); over the global limit it fails as a call, as
        // every listener's overload does.
        let admitted = match self.admission.admit_waiting(&entry.token) {
            Ok(admitted) => admitted,
            Err(Overload::Caller { .. }) => {
                let answer = span.in_scope(|| self.answer(Decision::CallerOverloaded));
                return Ok(Response::new(answer));
            }
            Err(global) => return Err(ApiError::from(global).into()),
        };
        let looked_up = admitted
            .run(self.look_up_in_time(&request, &entry))
            .instrument(span.clone())
            .await;
        let answer = span.in_scope(|| match looked_up {
            Some(looked_up) => self.answer(self.decide(entry, looked_up)),
            None => self.answer(Decision::Unavailable),
        });
        Ok(Response::new(answer))
    }
}

/// A request past the door, before its caller is looked up.
struct Entry<'a> {
    /// The route rules that apply to the request's path and host.
    rules: Vec<&'a Rule>,
    token: CallerToken,
}

/// The caller of a token and, when needed, their metadata, or why they could not be looked up.
type LookedUp = Result<(Caller, Option<Arc<KnownCaller>>, Option<OrgMetadata>), IdentifyError>;

#[cfg(test)]
mod tests {
    use super::*;

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
