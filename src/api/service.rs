//! The UserMetadataService: what it serves with, the door every call passes, and the tonic trait that hands
//! each RPC to its handler in [`super::rpc`]. Each handler reads top to bottom: admission (token, rate limit,
//! validation) → caller → policy → ZITADEL → answer; errors leave through [`ApiError`]'s one conversion to a
//! status.

use std::{future::Future, ops::ControlFlow, sync::Arc, time::Duration};

use futures::future::BoxFuture;
use http::Extensions;
use tokio::sync::watch;
use tonic::{Request, Response, Status, metadata::MetadataMap};
use tracing::{Instrument as _, field::Empty};

use super::{ApiError, ChangeStream, page_token::PageTokenKey, pb, validate};
use crate::{
    admission::{self, Admission, RateLimiter, Shed},
    caller::{self, Caller, Resolver, cache::CallerCache},
    fleet::{Changes, WriteLocks},
    listings::ListingCache,
    policy::Policy,
};
use usermeta_zitadel::{CallerToken, Zitadel, budget::for_identified_caller};

/// Bounds on each request: its default deadline, an optional per-caller rate limit, and how wide a batch reads.
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

impl RequestLimits {
    /// The door these limits make, with `shed`'s in-flight limits: one for every listener, so a caller has
    /// one budget whichever it calls.
    pub fn admission(&self, shed: Shed) -> Admission {
        Admission::new(
            self.request_timeout,
            self.max_request_timeout,
            RateLimiter::new(self.caller_rate, self.caller_burst),
            shed,
        )
    }
}

/// Serves `usermeta.v1.UserMetadataService`.
#[derive(Debug, Clone)]
pub struct MetadataService {
    pub(super) zitadel: Arc<Zitadel>,
    pub(super) policy: Arc<Policy>,
    pub(super) cache: Arc<CallerCache>,
    pub(super) listings: Arc<ListingCache>,
    pub(super) resolver: Arc<Resolver>,
    pub(super) admission: Arc<Admission>,
    pub(super) batch_concurrency: usize,
    pub(super) page_tokens: PageTokenKey,
    pub(super) changes: Changes,
    pub(super) write_locks: Arc<WriteLocks>,
    pub(super) stopping: watch::Receiver<bool>,
}

/// Everything a [`MetadataService`] serves with, each made once by the composition root.
#[derive(Debug)]
pub struct Dependencies {
    /// The ZITADEL client: management calls with the service credential, userinfo and the auth API with the
    /// caller's token.
    pub zitadel: Arc<Zitadel>,
    /// Who may do what, per key; decided before any management call.
    pub policy: Arc<Policy>,
    /// What ZITADEL said about tokens, shared with Envoy's Check.
    pub cache: Arc<CallerCache>,
    /// Users' listings read with the service credential, from memory while fresh (the one `changes` drops).
    pub listings: Arc<ListingCache>,
    /// How callers are identified (introspection, local JWT validation, userinfo).
    pub resolver: Arc<Resolver>,
    /// The rate limit, in-flight limits and deadlines, shared with Envoy's Check (one budget per caller).
    pub admission: Arc<Admission>,
    /// Users one BatchGetMetadata call reads from ZITADEL at once (at least one).
    pub batch_concurrency: usize,
    /// Signs ListMetadata's and FindUsersByMetadata's page tokens; shared by the replicas of a deployment.
    pub page_tokens: PageTokenKey,
    /// Where this replica's writes are announced: its cache (the same as `cache`), the other replicas (Redis,
    /// when configured) and its WatchMetadata streams.
    pub changes: Changes,
    /// Serialises the writes of one user that read before they write (conditions, merge patches).
    pub write_locks: Arc<WriteLocks>,
    /// Turns true when the replica stops: WatchMetadata streams end then.
    pub stopping: watch::Receiver<bool>,
}

/// A call past the door: its caller's token, counted against the caller's rate limit, and its request,
/// validated.
pub(super) struct Call<R> {
    pub token: CallerToken,
    pub request: R,
    /// The call's gRPC metadata (its deadline, for a call that waits).
    pub metadata: MetadataMap,
    /// The call's extensions (the client certificate mTLS verified).
    pub extensions: Extensions,
}

impl MetadataService {
    /// The service, from what the composition root made.
    pub fn new(dependencies: Dependencies) -> Self {
        let Dependencies {
            zitadel,
            policy,
            cache,
            listings,
            resolver,
            admission,
            batch_concurrency,
            page_tokens,
            changes,
            write_locks,
            stopping,
        } = dependencies;
        MetadataService {
            zitadel,
            policy,
            listings,
            cache,
            resolver,
            admission,
            batch_concurrency: batch_concurrency.max(1),
            page_tokens,
            changes,
            write_locks,
            stopping,
        }
    }

    /// The door every RPC passes first: the bearer token, the caller's rate limit, then the request's
    /// validation. Who the caller is comes next ([`MetadataService::identify`]), where the RPC needs it.
    pub(super) fn admit<M, R>(
        &self,
        request: Request<M>,
        validate: impl FnOnce(M) -> Result<R, ApiError>,
    ) -> Result<Call<R>, ApiError> {
        let (metadata, extensions, message) = request.into_parts();
        let token = self.admission.caller(caller::bearer_token(&metadata))?;
        Ok(Call {
            token,
            request: validate(message)?,
            metadata,
            extensions,
        })
    }

    /// Who the caller is, as the configured way says (from the cache when it can).
    pub(super) async fn identify(&self, token: &CallerToken) -> Result<Caller, ApiError> {
        Ok(self
            .resolver
            .identify(&self.cache, &self.zitadel, token)
            .await?)
    }

    /// Runs `work` as an identified caller's (for the request budget toward ZITADEL) when the cache knows
    /// `token`; otherwise as it is.
    pub(super) async fn as_known<T>(
        &self,
        token: &CallerToken,
        work: impl Future<Output = T>,
    ) -> T {
        if self.cache.knows(token) {
            for_identified_caller(work).await
        } else {
            work.await
        }
    }

    /// Runs a handler within the request's deadline ([`admission::within`]); the answer is DEADLINE_EXCEEDED
    /// at the deadline whatever is still pending. Boxed here, once: the handlers' futures are large, and each
    /// wrapper holding one inline would copy it.
    fn bounded<'a, T: 'a>(
        deadline: std::time::Instant,
        handler: impl Future<Output = Result<T, ApiError>> + Send + 'a,
    ) -> BoxFuture<'a, Result<T, ApiError>> {
        Box::pin(async move {
            admission::within(deadline, handler)
                .await
                .unwrap_or(Err(ApiError::DeadlineExceeded))
        })
    }

    /// Answers a call of every RPC but GetMyMetadata: through the door ([`MetadataService::admit`]: token,
    /// rate limit, validation), then counted against the in-flight limits (it waits on ZITADEL) and answered
    /// by `handler` within the request's deadline ([`MetadataService::bounded`]). GetMyMetadata takes the same
    /// steps in the same order, with memory asked before the count.
    fn answer<'a, M, R, T: 'a, F>(
        &self,
        request: Request<M>,
        validate: impl FnOnce(M) -> Result<R, ApiError>,
        handler: impl FnOnce(Call<R>) -> F,
    ) -> impl Future<Output = Result<Response<T>, Status>> + 'a
    where
        F: Future<Output = Result<T, ApiError>> + Send + 'a,
    {
        let answer = self.admit(request, validate).and_then(|call| {
            let admitted = self.admission.admit_waiting(&call.token)?;
            let deadline = self.admission.deadline(&call.metadata);
            Ok(Self::bounded(deadline, admitted.run(handler(call))))
        });
        async move { Ok(Response::new(answer?.await?)) }
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
        let admitted = self
            .admission
            .admit_waiting(&token)
            .map_err(ApiError::from)?;
        let read = admitted.run(self.read_mine(token, request).instrument(span));
        Ok(Response::new(Self::bounded(deadline, read).await?))
    }

    async fn list_metadata(
        &self,
        request: Request<pb::ListMetadataRequest>,
    ) -> Result<Response<pb::ListMetadataResponse>, Status> {
        self.answer(
            request,
            |message| validate::list(message, &self.page_tokens),
            |call| self.list(call),
        )
        .await
    }

    async fn set_metadata(
        &self,
        request: Request<pb::SetMetadataRequest>,
    ) -> Result<Response<pb::SetMetadataResponse>, Status> {
        self.answer(request, validate::set, |call| self.set(call))
            .await
    }

    async fn delete_metadata(
        &self,
        request: Request<pb::DeleteMetadataRequest>,
    ) -> Result<Response<pb::DeleteMetadataResponse>, Status> {
        self.answer(request, validate::delete, |call| self.delete(call))
            .await
    }

    async fn find_users_by_metadata(
        &self,
        request: Request<pb::FindUsersByMetadataRequest>,
    ) -> Result<Response<pb::FindUsersByMetadataResponse>, Status> {
        self.answer(
            request,
            |message| validate::find(message, &self.page_tokens),
            |call| self.find(call),
        )
        .await
    }

    type WatchMetadataStream = ChangeStream;

    async fn watch_metadata(
        &self,
        request: Request<pb::WatchMetadataRequest>,
    ) -> Result<Response<ChangeStream>, Status> {
        // The deadline bounds opening the stream (identifying the caller, placing the user); the stream
        // itself lasts until the caller ends it (or its own deadline does).
        self.answer(request, validate::watch, |call| self.watch(call))
            .await
    }

    async fn list_organization_metadata(
        &self,
        request: Request<pb::ListOrganizationMetadataRequest>,
    ) -> Result<Response<pb::ListOrganizationMetadataResponse>, Status> {
        self.answer(
            request,
            |message| validate::org_list(message, &self.page_tokens),
            |call| self.list_organization(call),
        )
        .await
    }

    async fn set_organization_metadata(
        &self,
        request: Request<pb::SetOrganizationMetadataRequest>,
    ) -> Result<Response<pb::SetOrganizationMetadataResponse>, Status> {
        self.answer(request, validate::org_set, |call| {
            self.set_organization(call)
        })
        .await
    }

    async fn delete_organization_metadata(
        &self,
        request: Request<pb::DeleteOrganizationMetadataRequest>,
    ) -> Result<Response<pb::DeleteOrganizationMetadataResponse>, Status> {
        self.answer(request, validate::org_delete, |call| {
            self.delete_organization(call)
        })
        .await
    }

    async fn batch_get_metadata(
        &self,
        request: Request<pb::BatchGetMetadataRequest>,
    ) -> Result<Response<pb::BatchGetMetadataResponse>, Status> {
        self.answer(request, validate::batch_get, |call| self.batch(call))
            .await
    }
}
