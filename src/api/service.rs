//! The UserMetadataService handlers. Each reads top to bottom: token → validation → caller → policy →
//! ZITADEL → answer; errors leave through [`ApiError`]'s one conversion to a status.

use std::{
    collections::HashSet,
    future::Future,
    ops::ControlFlow,
    sync::Arc,
    task::Poll,
    time::{Duration, Instant},
};

use futures::{StreamExt as _, future::BoxFuture};
use tonic::{Request, Response, Status, metadata::MetadataMap};
use tracing::{Instrument as _, field::Empty, instrument};

use super::{
    ApiError,
    convert::value_to_pb,
    deadline,
    error::{self as api_error, Violations},
    page_token::{self, Offsets, PageTokenKey, Position},
    pb,
    rate_limit::RateLimiter,
    shed::{Admitted, Shed},
    validate::{self, Source},
    watch::{self, ChangeStream, Watched},
};
use crate::{
    caller::cache::CallerCache,
    caller::{self, Caller, Identity, Resolver},
    fleet::{ChangeKind, Changes, MAX_STREAMED_VALUE_BYTES, MetadataChange, WatchLimits},
    policy::{Action, FindScope, Policy, Subject},
    tls,
};
use usermeta_zitadel::{
    CallerToken, UpstreamError, Zitadel,
    budget::for_identified_caller,
    management::{Scoped, Target},
    metadata::{KeyFilter, KeyMatch, MetadataItem, PackedMetadata, Page, PageRequest},
    resilience,
};

/// Page size for reading a whole listing: ZITADEL's default and usual maximum.
const FULL_LISTING_PAGE: u32 = 1000;

/// Bounds on each request: its default deadline and an optional per-caller rate limit.
#[derive(Debug, Clone, Copy)]
pub struct RequestLimits {
    /// The deadline of a request whose caller sets no `grpc-timeout`.
    pub request_timeout: Duration,
    /// The longest deadline a caller's `grpc-timeout` may set; longer ones are cut to it.
    pub max_request_timeout: Duration,
    /// Requests per second per caller token; 0 means no limit.
    pub caller_rate: u32,
    /// Requests a caller may send at once before the rate applies.
    pub caller_burst: u32,
    /// Users one BatchGetMetadata call reads from ZITADEL at once.
    pub batch_concurrency: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            request_timeout: Duration::from_secs(10),
            max_request_timeout: Duration::from_secs(60),
            caller_rate: 0,
            caller_burst: 20,
            batch_concurrency: 8,
        }
    }
}

/// Serves `usermeta.v1.UserMetadataService`.
#[derive(Debug, Clone)]
pub struct MetadataService {
    zitadel: Arc<Zitadel>,
    policy: Arc<Policy>,
    cache: Arc<CallerCache>,
    request_timeout: Duration,
    max_request_timeout: Duration,
    rate_limiter: Option<Arc<RateLimiter>>,
    batch_concurrency: usize,
    resolver: Arc<Resolver>,
    /// Signs ListMetadata's page tokens; shared by the replicas of a deployment.
    page_tokens: PageTokenKey,
    /// Where this replica's writes are announced: its cache, the other replicas (Redis, when configured) and
    /// its WatchMetadata streams.
    changes: Changes,
    /// Turns true when the replica stops: WatchMetadata streams end then.
    stopping: tokio::sync::watch::Receiver<bool>,
    /// The in-flight limits of calls that wait on ZITADEL, shared with Envoy's Check.
    shed: Arc<Shed>,
}

impl MetadataService {
    /// Identifies callers by userinfo; see [`MetadataService::with_resolver`].
    pub fn new(zitadel: Arc<Zitadel>, policy: Arc<Policy>, cache: Arc<CallerCache>) -> Self {
        MetadataService {
            zitadel,
            policy,
            cache: Arc::clone(&cache),
            request_timeout: RequestLimits::default().request_timeout,
            max_request_timeout: RequestLimits::default().max_request_timeout,
            rate_limiter: None,
            batch_concurrency: RequestLimits::default().batch_concurrency,
            resolver: Arc::new(Resolver::userinfo()),
            page_tokens: PageTokenKey::random(),
            changes: Changes::local(Arc::clone(&cache), WatchLimits::default()),
            stopping: tokio::sync::watch::Sender::new(false).subscribe(),
            shed: Arc::new(Shed::unlimited()),
        }
    }

    /// Counts calls that wait on ZITADEL against `shed`'s limits (none until told).
    pub fn with_shed(mut self, shed: Arc<Shed>) -> Self {
        self.shed = shed;
        self
    }

    /// Ends WatchMetadata streams once `stopping` turns true (the server's shutdown).
    pub fn with_shutdown(mut self, stopping: tokio::sync::watch::Receiver<bool>) -> Self {
        self.stopping = stopping;
        self
    }

    /// Announces every change through `changes` (built on the same cache), e.g. to the other replicas.
    pub fn with_changes(mut self, changes: Changes) -> Self {
        self.changes = changes;
        self
    }

    /// Signs page tokens with `key`, so every replica holding it continues listings of the others.
    pub fn with_page_token_key(mut self, key: PageTokenKey) -> Self {
        self.page_tokens = key;
        self
    }

    /// The per-caller rate limit in force, to share with Envoy's Check (one budget per caller).
    pub fn rate_limiter(&self) -> Option<Arc<RateLimiter>> {
        self.rate_limiter.clone()
    }

    /// Applies request deadlines and the per-caller rate limit.
    pub fn with_limits(mut self, limits: RequestLimits) -> Self {
        self.request_timeout = limits.request_timeout;
        self.max_request_timeout = limits.max_request_timeout;
        self.rate_limiter = RateLimiter::new(limits.caller_rate, limits.caller_burst).map(Arc::new);
        self.batch_concurrency = limits.batch_concurrency.max(1);
        self
    }

    /// Runs a handler within the request's deadline: every ZITADEL call gets at most the time left, and the
    /// answer is DEADLINE_EXCEEDED at the deadline whatever is still pending. Boxed here, once: the handlers'
    /// futures are large, and each wrapper holding one inline would copy it.
    fn bounded<'a, T: 'a>(
        deadline: Instant,
        handler: impl Future<Output = Result<T, ApiError>> + Send + 'a,
    ) -> BoxFuture<'a, Result<T, ApiError>> {
        Box::pin(async move {
            let mut handler = std::pin::pin!(resilience::with_deadline(deadline, handler));
            // An answer from memory is ready at the first poll: the deadline's timer is only set up for
            // calls that wait.
            if let Poll::Ready(answer) = futures::poll!(&mut handler) {
                return answer;
            }
            tokio::time::timeout_at(deadline.into(), handler)
                .await
                .unwrap_or(Err(ApiError::DeadlineExceeded))
        })
    }

    /// Answers `request` with `handler`, bounded by the request's deadline ([`MetadataService::bounded`]).
    fn within_deadline<'a, M, T: 'a, F>(
        &self,
        request: Request<M>,
        handler: impl FnOnce(Request<M>) -> F,
    ) -> impl Future<Output = Result<Response<T>, Status>> + 'a
    where
        F: Future<Output = Result<T, ApiError>> + Send + 'a,
    {
        let answer = self.admit(request.metadata()).map(|admitted| {
            let deadline = self.deadline_of(request.metadata());
            Self::bounded(deadline, admitted.run(handler(request)))
        });
        async move { Ok(Response::new(answer?.await?)) }
    }

    /// Admits a call of every RPC but GetMyMetadata (which admits only what memory cannot answer): each waits
    /// on ZITADEL, unless refused before it asks. A call without a usable token is such a refusal: it is
    /// not counted. (The handler reads the token again: a hash beside a round trip to ZITADEL.)
    fn admit(&self, metadata: &MetadataMap) -> Result<Admitted, ApiError> {
        match caller::bearer_token(metadata) {
            Ok(token) => self.shed.admit(token.digest()),
            Err(_) => Ok(Admitted::uncounted()),
        }
    }

    /// When the request must be answered.
    fn deadline_of(&self, metadata: &MetadataMap) -> Instant {
        deadline::deadline(
            metadata,
            self.request_timeout,
            self.max_request_timeout,
            Instant::now(),
        )
    }

    /// Counts a request against its caller's rate limit.
    fn rate_limit(&self, token: &CallerToken) -> Result<(), ApiError> {
        match &self.rate_limiter {
            Some(limiter) => limiter
                .check(token.digest(), Instant::now())
                .map_err(|retry_after| ApiError::RateLimited { retry_after }),
            None => Ok(()),
        }
    }

    /// Identifies callers the configured way (introspection, local JWT validation, userinfo).
    pub fn with_resolver(mut self, resolver: Arc<Resolver>) -> Self {
        self.resolver = resolver;
        self
    }

    async fn identify(&self, token: &CallerToken) -> Result<Caller, ApiError> {
        Ok(self
            .resolver
            .identify(&self.cache, &self.zitadel, token)
            .await?)
    }

    /// Runs `work` as an identified caller's (for the request budget toward ZITADEL) when the cache knows
    /// `token`; otherwise as it is.
    async fn as_known<T>(&self, token: &CallerToken, work: impl Future<Output = T>) -> T {
        if self.cache.knows(token) {
            for_identified_caller(work).await
        } else {
            work.await
        }
    }

    /// GetMyMetadata as far as it goes without waiting: a caller whose userinfo answer is in memory is
    /// answered here (`Break`); any other goes on to [`MetadataService::read_mine`] with its token, request
    /// and deadline.
    fn mine_from_memory(
        &self,
        request: Request<pb::GetMyMetadataRequest>,
    ) -> Result<
        ControlFlow<pb::GetMyMetadataResponse, (CallerToken, validate::GetMine, Instant)>,
        ApiError,
    > {
        let (metadata, _, message) = request.into_parts();
        let token = caller::bearer_token(&metadata)?;
        self.rate_limit(&token)?;
        let request = validate::get_mine(message)?;
        tracing::Span::current().record("source", tracing::field::debug(request.source));
        if request.source == Source::Userinfo
            && self.resolver.uses_userinfo()
            && let Some(known) = self.cache.cached_userinfo(&token)
        {
            let known = known?;
            return Ok(ControlFlow::Break(self.answer_mine(
                &known.identity,
                OwnRead::Userinfo(&known.metadata),
                &request,
            )?));
        }
        // Only a call that waits has a use for its deadline.
        let deadline = self.deadline_of(&metadata);
        Ok(ControlFlow::Continue((token, request, deadline)))
    }

    /// GetMyMetadata for a caller not answered from memory. "Me" is whoever ZITADEL says owns the token; the
    /// metadata is read with that same token.
    async fn read_mine(
        &self,
        token: CallerToken,
        request: validate::GetMine,
    ) -> Result<pb::GetMyMetadataResponse, ApiError> {
        match request.source {
            // Not in memory (`mine_from_memory` looked).
            Source::Userinfo if self.resolver.uses_userinfo() => {
                let known = self.cache.fetch_userinfo(&self.zitadel, &token).await?;
                self.answer_mine(
                    &known.identity,
                    OwnRead::Userinfo(&known.metadata),
                    &request,
                )
            }
            // The identity first (cached, and local for JWTs): a refused token reaches no other endpoint.
            Source::Userinfo => {
                let caller = self.identify(&token).await?;
                let known =
                    for_identified_caller(self.cache.userinfo(&self.zitadel, &token)).await?;
                self.answer_mine(&caller, OwnRead::Userinfo(&known.metadata), &request)
            }
            Source::Token => match self.resolver.token_metadata(&self.zitadel, &token).await? {
                None => Err(ApiError::TokenSourceOff),
                Some(caller::TokenRead::NotJwt) => Err(ApiError::TokenNotJwt),
                Some(caller::TokenRead::Claims { identity, metadata }) => {
                    self.answer_mine(&identity, OwnRead::AuthApi(metadata), &request)
                }
            },
            Source::AuthApi => {
                // One exact key can be filtered by ZITADEL; several are filtered here (its queries are ANDed).
                let filter = match request.keys.as_slice() {
                    [key] => Some(KeyFilter {
                        key: key.clone(),
                        matching: KeyMatch::Equals,
                    }),
                    _ => None,
                };
                let read = async {
                    read_all(|page| self.zitadel.list_my_metadata(&token, filter.as_ref(), page))
                        .await
                        .map_err(ApiError::from)
                };
                let (caller, items) = if self.resolver.uses_userinfo() {
                    // Both ask ZITADEL with the caller's token anyway: side by side, as before. The read is
                    // an identified caller's when the identity comes from memory.
                    let read = self.as_known(&token, read);
                    tokio::try_join!(self.identify(&token), read)?
                } else {
                    let caller = self.identify(&token).await?;
                    (caller, for_identified_caller(read).await?)
                };
                self.answer_mine(&caller, OwnRead::AuthApi(items), &request)
            }
        }
    }

    /// The answer to GetMyMetadata: what the policy lets the caller read of what was read, sorted by key.
    fn answer_mine(
        &self,
        caller: &Identity,
        read: OwnRead<'_>,
        request: &validate::GetMine,
    ) -> Result<pb::GetMyMetadataResponse, ApiError> {
        tracing::Span::current().record("user_id", caller.sub.as_str());
        let me = Subject {
            user_id: &caller.sub,
            org_id: caller.org_id.as_deref(),
        };
        let scope = self.policy.read_scope(caller, me)?;
        for key in &request.keys {
            scope.require(key)?;
        }
        let wanted: Option<HashSet<&str>> =
            (!request.keys.is_empty()).then(|| request.keys.iter().map(String::as_str).collect());
        let answered = |key: &str| {
            wanted.as_ref().is_none_or(|wanted| wanted.contains(key)) && scope.allows(key)
        };
        let metadata = match read {
            // Already sorted by key: answered straight from the cached answer, no copy in between.
            OwnRead::Userinfo(packed) => packed
                .iter()
                .filter(|(key, _)| answered(key))
                .map(|(key, value)| pb::Metadata {
                    key: key.to_owned(),
                    value: value.map(|value| value_to_pb(value.to_vec())),
                    create_time: None,
                    update_time: None,
                })
                .collect(),
            OwnRead::AuthApi(mut items) => {
                items.retain(|item| answered(&item.key));
                items.sort_by(|a, b| a.key.cmp(&b.key));
                items.into_iter().map(Into::into).collect()
            }
        };
        Ok(pb::GetMyMetadataResponse {
            user_id: caller.sub.as_str().to_owned(),
            metadata,
        })
    }

    #[instrument(name = "ListMetadata", skip_all, fields(user_id, org_id))]
    async fn list(
        &self,
        request: Request<pb::ListMetadataRequest>,
    ) -> Result<pb::ListMetadataResponse, ApiError> {
        let token = caller::bearer_token(request.metadata())?;
        self.rate_limit(&token)?;
        let request = validate::list(request.into_inner(), &self.page_tokens)?;
        let filter = request.filter.as_ref();
        // An own listing reads with the caller's token, so ZITADEL decides whose it is; while every caller may
        // read their own keys, it needs no identity lookup.
        let (scope, other, identified) = match (request.user_id.as_deref(), self.policy.own_scope())
        {
            (None, Some(own)) => {
                caller::refuse_id_token(&token)?;
                (own, None, self.cache.knows(&token))
            }
            (user_id, _) => {
                let caller = self.identify(&token).await?;
                // Self is the caller ZITADEL names; a `user_id` equal to it changes nothing. Another user is
                // scoped to the organisation ZITADEL will act in, which is what the policy decides on.
                let other = match user_id.filter(|user_id| *user_id != caller.sub) {
                    Some(user_id) => {
                        let named = Target {
                            user_id,
                            org_id: request.org_id.as_deref(),
                        };
                        // Refused without asking ZITADEL anything when no organisation could change that.
                        self.policy
                            .read_in_any_organization(&caller, subject_of(named))?;
                        let exact: Vec<&str> = match filter {
                            Some(KeyFilter {
                                key,
                                matching: KeyMatch::Equals,
                            }) => vec![key.as_str()],
                            _ => Vec::new(),
                        };
                        Some(self.zitadel.scope(named).await.map_err(|e| {
                            let missing = unknown_user_not_found(e, user_id);
                            self.conceal_missing_user(
                                &caller,
                                user_id,
                                Action::Read,
                                &exact,
                                missing,
                            )
                        })?)
                    }
                    None => None,
                };
                let subject = match &other {
                    None => Subject {
                        user_id: &caller.sub,
                        org_id: caller.org_id.as_deref(),
                    },
                    Some(scoped) => subject_of(scoped.target()),
                };
                tracing::Span::current().record("user_id", subject.user_id);
                (self.policy.read_scope(&caller, subject)?, other, true)
            }
        };
        if let Some(KeyFilter {
            key,
            matching: KeyMatch::Equals,
        }) = filter
        {
            scope.require(key)?;
        }
        // Counts and page tokens account only for what the caller may see: when the policy hides some keys,
        // usermeta reads the whole listing and pages what is left; otherwise ZITADEL pages.
        let offsets = if scope.sees_every_key() {
            Offsets::Zitadel
        } else {
            Offsets::Visible
        };
        if request.resumed.is_some_and(|resumed| resumed != offsets) {
            return Err(ApiError::InvalidRequest(Violations::one(
                "page_token",
                "was issued while the policy let the caller see other keys of this user; drop page_token to start the listing over",
            )));
        }
        let target = other.as_ref().map(Scoped::target);
        let token = &token;
        let fetch = |page: PageRequest| {
            let fetch = async move {
                match target {
                    None => self.zitadel.list_my_metadata(token, filter, page).await,
                    Some(target) => self.zitadel.list_user_metadata(target, filter, page).await,
                }
            };
            // Ranked for the request budget: an identified caller's read, or a token not known yet.
            async move {
                if identified {
                    for_identified_caller(fetch).await
                } else {
                    fetch.await
                }
            }
        };
        let (items, total, next_offset) = match offsets {
            Offsets::Zitadel => {
                let page = fetch(request.page).await?;
                let fetched = page.items.len() as u64;
                let next = request.page.offset + fetched;
                let mut items = page.items;
                // Nothing to leave out when every key may be read; kept as the last line of defence.
                items.retain(|item| scope.allows(&item.key));
                (items, page.total, (fetched > 0).then_some(next))
            }
            Offsets::Visible => {
                let mut items = read_all(fetch).await?;
                items.retain(|item| scope.allows(&item.key));
                let total = items.len() as u64;
                let start = usize::try_from(request.page.offset.min(total)).unwrap_or(usize::MAX);
                let end = start
                    .saturating_add(request.page.limit as usize)
                    .min(items.len());
                let next = end as u64;
                items.truncate(end);
                items.drain(..start);
                (items, total, (end > start).then_some(next))
            }
        };
        let next_page_token = match next_offset {
            Some(offset) if offset < total => page_token::encode(
                &self.page_tokens,
                Position { offset, offsets },
                request.token_query(),
            ),
            _ => String::new(),
        };
        Ok(pb::ListMetadataResponse {
            total_size: i64::try_from(total).unwrap_or(i64::MAX),
            metadata: items.into_iter().map(Into::into).collect(),
            next_page_token,
        })
    }

    #[instrument(name = "SetMetadata", skip_all, fields(caller, user_id))]
    async fn set(
        &self,
        request: Request<pb::SetMetadataRequest>,
    ) -> Result<pb::SetMetadataResponse, ApiError> {
        let token = caller::bearer_token(request.metadata())?;
        self.rate_limit(&token)?;
        let client_cert = tls::client_cert(&request);
        let request = validate::set(request.into_inner())?;
        let caller = self.identify(&token).await?.with_client_cert(client_cert);
        let named = target_of(
            &caller,
            request.user_id.as_deref(),
            request.org_id.as_deref(),
        )?;
        let keys: Vec<&str> = request
            .entries
            .iter()
            .map(|(key, _)| key.as_str())
            .collect();
        audited(&caller, named, Action::Write, &keys, async {
            let scoped = self.scoped(&caller, named, Action::Write, &keys).await?;
            let target = scoped.target();
            self.policy.authorize(
                &caller,
                subject_of(target),
                Action::Write,
                keys.iter().copied(),
            )?;
            self.check_values(&request.entries)?;
            // Whatever the outcome, the write may have landed: cached answers about the user are stale.
            let stale = self.invalidate_on_drop(target.user_id, &keys);
            let update_time = self
                .zitadel
                .set_user_metadata(target, &request.entries)
                .await
                .map_err(|e| {
                    self.conceal_missing_user(
                        &caller,
                        target.user_id,
                        Action::Write,
                        &keys,
                        e.into(),
                    )
                })?;
            // Values go to streams only while they are small; a larger write is streamed by its keys.
            let values: usize = request.entries.iter().map(|(_, value)| value.len()).sum();
            let streamed = values <= MAX_STREAMED_VALUE_BYTES;
            stale.landed(
                ChangeKind::Set,
                request
                    .entries
                    .iter()
                    .map(|(key, value)| (key.as_str(), streamed.then(|| value.clone()))),
                update_time.as_ref(),
            );
            Ok(pb::SetMetadataResponse { update_time })
        })
        .await
    }

    #[instrument(name = "DeleteMetadata", skip_all, fields(caller, user_id))]
    async fn delete(
        &self,
        request: Request<pb::DeleteMetadataRequest>,
    ) -> Result<pb::DeleteMetadataResponse, ApiError> {
        let token = caller::bearer_token(request.metadata())?;
        self.rate_limit(&token)?;
        let client_cert = tls::client_cert(&request);
        let request = validate::delete(request.into_inner())?;
        let caller = self.identify(&token).await?.with_client_cert(client_cert);
        let named = target_of(
            &caller,
            request.user_id.as_deref(),
            request.org_id.as_deref(),
        )?;
        let keys: Vec<&str> = request.keys.iter().map(String::as_str).collect();
        audited(&caller, named, Action::Delete, &keys, async {
            let scoped = self.scoped(&caller, named, Action::Delete, &keys).await?;
            let target = scoped.target();
            self.policy.authorize(
                &caller,
                subject_of(target),
                Action::Delete,
                keys.iter().copied(),
            )?;
            let stale = self.invalidate_on_drop(target.user_id, &keys);
            let (removed, update_time) = self
                .delete_keys(target, &request.keys, request.allow_missing)
                .await
                .map_err(|e| {
                    self.conceal_missing_user(&caller, target.user_id, Action::Delete, &keys, e)
                })?;
            // Only what went: a key skipped by allow_missing never existed, and no stream hears of it.
            stale.landed(
                ChangeKind::Delete,
                removed.iter().map(|key| (key.as_str(), None)),
                update_time.as_ref(),
            );
            Ok(pb::DeleteMetadataResponse { update_time })
        })
        .await
    }

    /// The target in the organisation ZITADEL acts in ([`Zitadel::scope`]). What no organisation could allow is
    /// refused first, so a denial costs ZITADEL nothing.
    async fn scoped(
        &self,
        caller: &Identity,
        named: Target<'_>,
        action: Action,
        keys: &[&str],
    ) -> Result<Scoped, ApiError> {
        self.policy.authorize_in_any_organization(
            caller,
            subject_of(named),
            action,
            keys.iter().copied(),
        )?;
        self.zitadel
            .scope(named)
            .await
            .map_err(|e| self.conceal_missing_user(caller, named.user_id, action, keys, e.into()))
    }

    /// ZITADEL's "no such user here" (unknown, or outside the named organisation) as the refusal a user of an
    /// organisation none of the caller's rules name would get, when the caller's rules would refuse `action`
    /// on `keys` there: then the answer tells neither whether the user exists nor where (issue 31, class 11).
    /// A caller some rule lets act on users of any organisation gets ZITADEL's answer: it may act on whichever
    /// user exists, so "unknown" tells it nothing acting would not.
    fn conceal_missing_user(
        &self,
        caller: &Identity,
        user_id: &str,
        action: Action,
        keys: &[&str],
        error: ApiError,
    ) -> ApiError {
        let missing = match &error {
            ApiError::UserNotFound { .. } => true,
            ApiError::Upstream(upstream) => upstream.is_missing_user(),
            _ => false,
        };
        if !missing {
            return error;
        }
        // No organisation: no `whose = [orgs]` rule matches it, exactly as for another tenant's user.
        let elsewhere = Subject {
            user_id,
            org_id: None,
        };
        let refusal = match action {
            Action::Read => match self.policy.read_scope(caller, elsewhere) {
                Err(denial) => Some(denial),
                Ok(scope) => keys.iter().find_map(|key| scope.require(key).err()),
            },
            _ => self
                .policy
                .authorize(caller, elsewhere, action, keys.iter().copied())
                .err(),
        };
        refusal.map_or(error, ApiError::Denied)
    }

    #[instrument(name = "FindUsersByMetadata", skip_all, fields(caller))]
    async fn find(
        &self,
        request: Request<pb::FindUsersByMetadataRequest>,
    ) -> Result<pb::FindUsersByMetadataResponse, ApiError> {
        let token = caller::bearer_token(request.metadata())?;
        self.rate_limit(&token)?;
        let request = validate::find(request.into_inner(), &self.page_tokens)?;
        let caller = self.identify(&token).await?;
        tracing::Span::current().record("caller", caller.sub.as_str());
        // Who holds a value is asked only of callers some rule lets find on this key (anyone but themself).
        self.policy.authorize_in_any_organization(
            &caller,
            Subject {
                user_id: "",
                org_id: request.org_id.as_deref(),
            },
            Action::Find,
            [request.key.as_str()],
        )?;
        // ZITADEL is asked only within the organisations the caller's rules cover, so nothing it answers
        // (matches, counts) concerns users the caller may not find (issue 31, class 7).
        let scope = self.policy.find_scope(&caller, &request.key)?;
        let org_id = match (request.org_id.as_deref(), scope) {
            (Some(named), _) => Some(named.to_owned()),
            (None, FindScope::AnyOrganization) => None,
            (None, FindScope::Organizations(orgs)) => match <[String; 1]>::try_from(orgs) {
                Ok([only]) => Some(only),
                Err(orgs) => {
                    return Err(ApiError::InvalidRequest(Violations::one(
                        "organization_id",
                        format!(
                            "must name the organisation to search: the policy lets this caller find by `{}` only in organisations {}; send one of them",
                            request.key,
                            orgs.join(", ")
                        ),
                    )));
                }
            },
        };
        // A page holds the next `limit` users the caller may see; one more seen means a next page, which
        // starts at that user's place in ZITADEL's answer. Pages neither run short nor come out empty for
        // users the caller may not see, and the place is sealed in the token.
        let limit = request.page.limit as usize;
        let mut users = Vec::with_capacity(limit);
        let mut next = None;
        let mut offset = request.page.offset;
        'search: loop {
            let wanted = u32::try_from(limit + 1 - users.len()).unwrap_or(u32::MAX);
            let found = self
                .zitadel
                .find_users_by_metadata(
                    &request.key,
                    &request.value,
                    org_id.as_deref(),
                    PageRequest {
                        offset,
                        limit: wanted,
                    },
                )
                .await?;
            // Each user found passes the policy for that user and organisation, or is left out.
            for user in found.users {
                let visible = self
                    .policy
                    .authorize(
                        &caller,
                        Subject {
                            user_id: &user.user_id,
                            org_id: Some(&user.org_id),
                        },
                        Action::Find,
                        [request.key.as_str()],
                    )
                    .is_ok();
                if !visible {
                    continue;
                }
                if users.len() == limit {
                    next = Some(user.position);
                    break 'search;
                }
                users.push(pb::UserRef {
                    user_id: user.user_id,
                    organization_id: user.org_id,
                });
            }
            offset += found.fetched;
            if found.fetched == 0 || offset >= found.total {
                break;
            }
        }
        let next_page_token = next.map_or_else(String::new, |offset| {
            page_token::encode(
                &self.page_tokens,
                Position {
                    offset,
                    offsets: Offsets::Zitadel,
                },
                request.token_query(),
            )
        });
        Ok(pb::FindUsersByMetadataResponse {
            users,
            next_page_token,
        })
    }

    #[instrument(name = "BatchGetMetadata", skip_all, fields(caller, users))]
    async fn batch(
        &self,
        request: Request<pb::BatchGetMetadataRequest>,
    ) -> Result<pb::BatchGetMetadataResponse, ApiError> {
        let token = caller::bearer_token(request.metadata())?;
        self.rate_limit(&token)?;
        let request = validate::batch_get(request.into_inner())?;
        let caller = self.identify(&token).await?;
        let span = tracing::Span::current();
        span.record("caller", caller.sub.as_str());
        span.record("users", request.user_ids.len());
        // Users are read side by side, a bounded number at once, and answered in request order.
        // By index: a closure over `&String` would make the stream's future not provably `Send`.
        let reads = (0..request.user_ids.len())
            .map(|i| self.read_of_batch(&token, &caller, &request.user_ids[i], &request));
        let reads: Vec<Result<Vec<pb::Metadata>, ApiError>> = futures::stream::iter(reads)
            .buffered(self.batch_concurrency)
            .collect()
            .await;
        let mut results = Vec::with_capacity(reads.len());
        for (user_id, read) in request.user_ids.into_iter().zip(reads) {
            let (metadata, error) = match read {
                Ok(metadata) => (metadata, None),
                Err(error) => {
                    let status = api_error::status_message(&error);
                    // The deadline is the whole call's (whichever read met it): the other results go too.
                    if status.code == tonic::Code::DeadlineExceeded as i32 {
                        return Err(error);
                    }
                    tracing::info!(user_id, code = status.code, error = %error, "batch result failed");
                    (Vec::new(), Some(status))
                }
            };
            results.push(pb::UserMetadataResult {
                user_id,
                metadata,
                error,
            });
        }
        crate::metrics::batch_results(results.iter().map(|result| {
            result
                .error
                .as_ref()
                .map_or(tonic::Code::Ok, |status| tonic::Code::from_i32(status.code))
        }));
        Ok(pb::BatchGetMetadataResponse { results })
    }

    /// One user of a BatchGetMetadata call: what the policy lets the caller read of the keys asked for, sorted
    /// by key. The caller's own id reads with the caller's token (the auth API), as ListMetadata does; any
    /// other user with the service credential, scoped to the organisation ZITADEL acts in.
    async fn read_of_batch(
        &self,
        token: &CallerToken,
        caller: &Identity,
        user_id: &str,
        request: &validate::BatchGet,
    ) -> Result<Vec<pb::Metadata>, ApiError> {
        // One exact key can be filtered by ZITADEL; several are filtered here (its queries are ANDed).
        let filter = match request.keys.as_slice() {
            [key] => Some(KeyFilter {
                key: key.clone(),
                matching: KeyMatch::Equals,
            }),
            _ => None,
        };
        let filter = filter.as_ref();
        let org_id = request.org_id.as_deref();
        let mut items = if user_id == caller.sub {
            let target = target_of(caller, None, org_id)?;
            let scope = self.policy.read_scope(caller, subject_of(target))?;
            for key in &request.keys {
                scope.require(key)?;
            }
            let mut items =
                read_all(|page| self.zitadel.list_my_metadata(token, filter, page)).await?;
            items.retain(|item| scope.allows(&item.key));
            items
        } else {
            let named = Target { user_id, org_id };
            self.policy
                .read_in_any_organization(caller, subject_of(named))?;
            let keys: Vec<&str> = request.keys.iter().map(String::as_str).collect();
            let scoped = self.zitadel.scope(named).await.map_err(|e| {
                let missing = unknown_user_not_found(e, user_id);
                self.conceal_missing_user(caller, user_id, Action::Read, &keys, missing)
            })?;
            let target = scoped.target();
            let scope = self.policy.read_scope(caller, subject_of(target))?;
            for key in &request.keys {
                scope.require(key)?;
            }
            let mut items =
                read_all(|page| self.zitadel.list_user_metadata(target, filter, page)).await?;
            items.retain(|item| scope.allows(&item.key));
            items
        };
        if !request.keys.is_empty() {
            items.retain(|item| request.keys.contains(&item.key));
        }
        items.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(items.into_iter().map(Into::into).collect())
    }

    /// Opens a WatchMetadata stream: the caller, or another user the policy lets the caller read (in the
    /// organisation ZITADEL places the user in), checked before the stream opens; each change is then
    /// checked against the policy as a read of its key would be.
    #[instrument(name = "WatchMetadata", skip_all, fields(caller, user_id))]
    async fn watch(
        &self,
        request: Request<pb::WatchMetadataRequest>,
    ) -> Result<ChangeStream, ApiError> {
        let token = caller::bearer_token(request.metadata())?;
        self.rate_limit(&token)?;
        let request = validate::watch(request.into_inner())?;
        let caller = self.identify(&token).await?;
        let span = tracing::Span::current();
        span.record("caller", caller.sub.as_str());
        let (user_id, org_id) = match request.user_id.filter(|user_id| *user_id != caller.sub) {
            Some(user_id) => {
                let named = Target {
                    user_id: &user_id,
                    org_id: request.org_id.as_deref(),
                };
                self.policy
                    .read_in_any_organization(&caller, subject_of(named))?;
                // Changes name only the user, and no later call to ZITADEL would scope by organisation:
                // the policy decides on the organisation ZITADEL says the user is in.
                let located = self.zitadel.locate(named).await.map_err(|e| {
                    let missing = unknown_user_not_found(e, &user_id);
                    self.conceal_missing_user(&caller, &user_id, Action::Read, &[], missing)
                })?;
                let target = located.target();
                self.policy.read_scope(&caller, subject_of(target))?;
                (target.user_id.into(), target.org_id.map(Into::into))
            }
            None => {
                let me = Subject {
                    user_id: &caller.sub,
                    org_id: caller.org_id.as_deref(),
                };
                self.policy.read_scope(&caller, me)?;
                (caller.sub.clone(), caller.org_id.clone())
            }
        };
        span.record("user_id", tracing::field::display(&user_id));
        // From here on nothing is missed: changes that land while the stream starts are in its buffer.
        let subscription = self
            .changes
            .subscribe(&user_id, &caller.sub)
            .map_err(|limit| ApiError::TooManyStreams { limit })?;
        tracing::info!(user_id = %user_id, key_prefix = %request.key_prefix, "watching metadata");
        Ok(watch::change_stream(
            Watched {
                policy: Arc::clone(&self.policy),
                caller,
                user_id,
                org_id,
                key_prefix: request.key_prefix,
            },
            subscription,
            watch::Credential {
                token,
                resolver: Arc::clone(&self.resolver),
                cache: Arc::clone(&self.cache),
                zitadel: Arc::clone(&self.zitadel),
                timeout: self.request_timeout,
            },
            self.changes.watch_limits(),
            self.stopping.clone(),
        ))
    }

    /// The policy's value rules, as field violations of the request.
    fn check_values(&self, entries: &[(String, Vec<u8>)]) -> Result<(), ApiError> {
        let mut violations = Violations::default();
        for (i, (key, value)) in entries.iter().enumerate() {
            for description in self.policy.value_problems(key, value) {
                violations.add(format!("entries[{i}].value"), description);
            }
        }
        violations.into_result(())
    }

    /// Removes `keys` all or nothing; with `allow_missing`, removes those that exist. Returns the keys removed.
    async fn delete_keys(
        &self,
        target: Target<'_>,
        keys: &[String],
        allow_missing: bool,
    ) -> Result<(Vec<String>, Option<prost_types::Timestamp>), ApiError> {
        let mut to_remove = keys.to_vec();
        // A key can vanish between listing and removing (a concurrent delete); a few rounds settle it.
        for _ in 0..3 {
            match self.zitadel.remove_user_metadata(target, &to_remove).await {
                Ok(update_time) => return Ok((to_remove, update_time)),
                Err(e) if !e.is_missing_metadata() => return Err(e.into()),
                Err(_) if !allow_missing => {
                    return Err(ApiError::KeysNotFound {
                        user_id: target.user_id.to_owned(),
                        keys: keys.to_vec(),
                    });
                }
                Err(_) if to_remove.len() == 1 => return Ok((Vec::new(), None)),
                Err(_) => {
                    let existing: HashSet<String> =
                        read_all(|page| self.zitadel.list_user_metadata(target, None, page))
                            .await?
                            .into_iter()
                            .map(|item| item.key)
                            .collect();
                    to_remove.retain(|key| existing.contains(key));
                    if to_remove.is_empty() {
                        return Ok((Vec::new(), None));
                    }
                }
            }
        }
        Err(ApiError::KeysNotFound {
            user_id: target.user_id.to_owned(),
            keys: keys.to_vec(),
        })
    }
}

impl MetadataService {
    fn invalidate_on_drop<'a>(
        &'a self,
        user_id: &'a str,
        keys: &'a [&'a str],
    ) -> InvalidateOnDrop<'a> {
        InvalidateOnDrop {
            changes: Some(&self.changes),
            user_id,
            keys,
        }
    }
}

/// Marks a user's cached answers stale when a write ends, also when it ends by the deadline cutting it off
/// (it may have landed): here at once, and on the other replicas. A write known to have landed is announced
/// as the change it made instead ([`InvalidateOnDrop::landed`]).
struct InvalidateOnDrop<'a> {
    changes: Option<&'a Changes>,
    user_id: &'a str,
    keys: &'a [&'a str],
}

impl InvalidateOnDrop<'_> {
    /// The write landed: each key changed this way (with the value written, when there is one).
    fn landed<'k>(
        mut self,
        kind: ChangeKind,
        keys: impl Iterator<Item = (&'k str, Option<Vec<u8>>)>,
        update_time: Option<&prost_types::Timestamp>,
    ) {
        let time = update_time
            .and_then(|time| std::time::SystemTime::try_from(*time).ok())
            .unwrap_or_else(std::time::SystemTime::now);
        if let Some(changes) = self.changes.take() {
            changes.announce(
                keys.map(|(key, value)| MetadataChange {
                    user_id: self.user_id.to_owned(),
                    key: key.to_owned(),
                    kind,
                    value,
                    time,
                })
                .collect(),
            );
        }
    }
}

impl Drop for InvalidateOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(changes) = self.changes {
            changes.maybe_changed(self.user_id, self.keys);
        }
    }
}

/// ZITADEL's "no such user" as NOT_FOUND naming the user; any other failure as it is.
fn unknown_user_not_found(error: UpstreamError, user_id: &str) -> ApiError {
    if error.is_unknown_user() {
        ApiError::UserNotFound {
            user_id: user_id.to_owned(),
        }
    } else {
        error.into()
    }
}

/// The user a write addresses: the named one, or the caller. For the caller, ZITADEL's word on their
/// organisation (when the token carries it) scopes the call unless the request names one; a request that names
/// another organisation than the caller's for the caller's own metadata is refused, since the policy and
/// ZITADEL would otherwise see different organisations.
fn target_of<'a>(
    caller: &'a Identity,
    user_id: Option<&'a str>,
    org_id: Option<&'a str>,
) -> Result<Target<'a>, ApiError> {
    match user_id {
        Some(user_id) if user_id != caller.sub => Ok(Target { user_id, org_id }),
        _ => match (org_id, caller.org_id.as_deref()) {
            (Some(named), Some(own)) if named != own => {
                Err(ApiError::InvalidRequest(Violations::one(
                    "organization_id",
                    format!(
                        "names organisation {named}, but the caller's own metadata is in organisation {own} (as ZITADEL says); leave organization_id empty for your own metadata"
                    ),
                )))
            }
            (named, own) => Ok(Target {
                user_id: &caller.sub,
                org_id: named.or(own),
            }),
        },
    }
}

/// The policy's view of a target: exactly what ZITADEL receives, the user and the organisation the management
/// call is scoped to (for the caller themself, ZITADEL's word on their organisation unless the request named
/// it; a named organisation ZITADEL enforces by refusing users outside it).
fn subject_of(target: Target<'_>) -> Subject<'_> {
    Subject {
        user_id: target.user_id,
        org_id: target.org_id,
    }
}

/// Runs a write or delete and writes its audit line: who (user and client), on whom, which keys (never
/// values), and how it ended.
async fn audited<T>(
    caller: &Identity,
    target: Target<'_>,
    action: Action,
    keys: &[&str],
    operation: impl Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    let span = tracing::Span::current();
    span.record("caller", caller.sub.as_str());
    span.record("user_id", target.user_id);
    let result = operation.await;
    let outcome = match &result {
        Ok(_) => "ok",
        Err(ApiError::Denied(_)) => "denied",
        Err(ApiError::InvalidRequest(_)) => "invalid",
        Err(_) => "failed",
    };
    tracing::info!(
        target: "usermeta::audit",
        caller = %caller.sub,
        client_id = caller.client_id.as_deref().unwrap_or_default(),
        client_cert = caller.client_cert.as_ref().map(ToString::to_string),
        user_id = %target.user_id,
        org_id = target.org_id.unwrap_or_default(),
        action = action.name(),
        keys = ?keys,
        outcome,
        "metadata {}", action.name()
    );
    result
}

/// The caller's metadata as read: the metadata claim of a userinfo answer, or the auth API's listing.
enum OwnRead<'a> {
    Userinfo(&'a PackedMetadata),
    AuthApi(Vec<MetadataItem>),
}

/// Reads every page of a listing.
async fn read_all<F, Fut>(mut fetch: F) -> Result<Vec<MetadataItem>, UpstreamError>
where
    F: FnMut(PageRequest) -> Fut,
    Fut: Future<Output = Result<Page, UpstreamError>>,
{
    let mut items = Vec::new();
    loop {
        let page = fetch(PageRequest {
            offset: items.len() as u64,
            limit: FULL_LISTING_PAGE,
        })
        .await?;
        let done =
            page.items.is_empty() || items.len() as u64 + page.items.len() as u64 >= page.total;
        items.extend(page.items);
        if done {
            return Ok(items);
        }
    }
}

#[tonic::async_trait]
impl pb::user_metadata_service_server::UserMetadataService for MetadataService {
    async fn get_my_metadata(
        &self,
        request: Request<pb::GetMyMetadataRequest>,
    ) -> Result<Response<pb::GetMyMetadataResponse>, Status> {
        // DEBUG: a cached call pays for no span at the default level (the call is on every line anyway).
        let span = tracing::debug_span!("GetMyMetadata", source = Empty, user_id = Empty);
        let (token, request, deadline) = match span.in_scope(|| self.mine_from_memory(request))? {
            ControlFlow::Break(answer) => return Ok(Response::new(answer)),
            ControlFlow::Continue(waiting) => waiting,
        };
        // Only now, when the call will wait on ZITADEL, does it count against the in-flight limits.
        let admitted = self.shed.admit(token.digest())?;
        let read = admitted.run(self.read_mine(token, request).instrument(span));
        Ok(Response::new(Self::bounded(deadline, read).await?))
    }

    async fn list_metadata(
        &self,
        request: Request<pb::ListMetadataRequest>,
    ) -> Result<Response<pb::ListMetadataResponse>, Status> {
        self.within_deadline(request, |request| self.list(request))
            .await
    }

    async fn set_metadata(
        &self,
        request: Request<pb::SetMetadataRequest>,
    ) -> Result<Response<pb::SetMetadataResponse>, Status> {
        self.within_deadline(request, |request| self.set(request))
            .await
    }

    async fn delete_metadata(
        &self,
        request: Request<pb::DeleteMetadataRequest>,
    ) -> Result<Response<pb::DeleteMetadataResponse>, Status> {
        self.within_deadline(request, |request| self.delete(request))
            .await
    }

    async fn find_users_by_metadata(
        &self,
        request: Request<pb::FindUsersByMetadataRequest>,
    ) -> Result<Response<pb::FindUsersByMetadataResponse>, Status> {
        self.within_deadline(request, |request| self.find(request))
            .await
    }

    type WatchMetadataStream = ChangeStream;

    async fn watch_metadata(
        &self,
        request: Request<pb::WatchMetadataRequest>,
    ) -> Result<Response<ChangeStream>, Status> {
        // The deadline bounds opening the stream (identifying the caller, placing the user); the stream
        // itself lasts until the caller ends it (or its own deadline does).
        self.within_deadline(request, |request| self.watch(request))
            .await
    }

    async fn batch_get_metadata(
        &self,
        request: Request<pb::BatchGetMetadataRequest>,
    ) -> Result<Response<pb::BatchGetMetadataResponse>, Status> {
        self.within_deadline(request, |request| self.batch(request))
            .await
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt as _;
    use pb::user_metadata_service_server::UserMetadataService as _;

    use super::*;
    use crate::caller::cache::CacheConfig;

    /// A service built with `new` alone has no server to stop it: a WatchMetadata stream it opens must stay
    /// open, not end at once as if the replica were stopping.
    #[tokio::test]
    async fn a_service_built_with_new_alone_keeps_a_watch_stream_open() {
        let standin = zitadel_standin::StandIn::start().await.unwrap();
        let org = standin.create_org("Acme");
        let alice = standin.create_user(&org, "alice");
        let token = standin.issue_token(&alice, &["openid"]);
        let zitadel = Zitadel::new(usermeta_zitadel::ZitadelConfig::new(
            standin.url().parse().unwrap(),
            usermeta_zitadel::ServiceCredential::Pat("pat".into()),
        ))
        .unwrap();
        let service = MetadataService::new(
            Arc::new(zitadel),
            Arc::new(Policy::default()),
            Arc::new(CallerCache::new(CacheConfig::default())),
        );
        let mut request = Request::new(pb::WatchMetadataRequest::default());
        request.metadata_mut().insert(
            caller::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        let mut stream = service.watch_metadata(request).await.unwrap().into_inner();
        // Nothing has changed and nothing stops the replica: the stream has nothing to say yet.
        let first = stream.next().now_or_never();
        assert!(first.is_none(), "the stream ended as it opened: {first:?}");
    }
}
