//! WatchMetadata: opens a stream of one user's changes ([`stream`]) for a caller the policy lets read them,
//! checked before the stream opens.

mod stream;

use std::sync::Arc;

use tracing::instrument;

use super::{subject_of, unknown_user_not_found};
use crate::{
    api::{ApiError, MetadataService, service::Call, validate},
    policy::{Action, Subject},
};
use usermeta_zitadel::management::Target;

pub use stream::ChangeStream;
use stream::{Credential, Watched, change_stream};

impl MetadataService {
    /// Opens a WatchMetadata stream: the caller, or another user the policy lets the caller read (in the
    /// organisation ZITADEL places the user in), checked before the stream opens; each change is then
    /// checked against the policy as a read of its key would be.
    #[instrument(name = "WatchMetadata", skip_all, fields(caller, user_id))]
    pub(in crate::api) async fn watch(
        &self,
        Call { token, request, .. }: Call<validate::Watch>,
    ) -> Result<ChangeStream, ApiError> {
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
        Ok(change_stream(
            Watched {
                policy: Arc::clone(&self.policy),
                caller,
                user_id,
                org_id,
                key_prefix: request.key_prefix,
            },
            subscription,
            Credential {
                token,
                resolver: Arc::clone(&self.resolver),
                cache: Arc::clone(&self.cache),
                zitadel: Arc::clone(&self.zitadel),
                timeout: self.admission.request_timeout(),
            },
            self.changes.watch_limits(),
            self.stopping.clone(),
        ))
    }
}

/// The WatchMetadata trap of issue 33: a service built with placeholders (a shutdown receiver whose sender
/// was dropped at once) ended every stream as it opened. Built from its dependencies, a service's streams
/// stay open until the replica stops.
#[cfg(test)]
mod opening {
    use futures::{FutureExt as _, StreamExt as _};
    use tokio::sync::watch;

    use super::*;
    use crate::api::pb::{self, user_metadata_service_server::UserMetadataService as _};
    use crate::{
        admission::Shed,
        api::{Dependencies, PageTokenKey, RequestLimits},
        caller::{
            Resolver,
            cache::{CacheConfig, CallerCache},
        },
        fleet::{Changes, WatchLimits, WriteLockConfig, WriteLocks},
        policy::Policy,
    };
    use tonic::Request;
    use usermeta_zitadel::Zitadel;

    /// A service against `standin` as the composition root builds it, and its stop signal.
    fn service(standin: &zitadel_standin::StandIn) -> (MetadataService, watch::Sender<bool>) {
        let zitadel = Zitadel::new(usermeta_zitadel::ZitadelConfig::new(
            standin.url().parse().unwrap(),
            usermeta_zitadel::ServiceCredential::Pat("pat".into()),
        ))
        .unwrap();
        let cache = Arc::new(CallerCache::new(CacheConfig::default()));
        let stopping = watch::Sender::new(false);
        let service = MetadataService::new(Dependencies {
            zitadel: Arc::new(zitadel),
            policy: Arc::new(Policy::default()),
            cache: Arc::clone(&cache),
            listings: Arc::new(crate::listings::ListingCache::off()),
            resolver: Arc::new(Resolver::userinfo()),
            admission: Arc::new(RequestLimits::default().admission(Shed::unlimited())),
            batch_concurrency: 1,
            page_tokens: PageTokenKey::random(),
            changes: Changes::local(
                crate::fleet::Caches::callers_only(cache),
                WatchLimits::default(),
            ),
            write_locks: Arc::new(WriteLocks::local(WriteLockConfig::default())),
            stopping: stopping.subscribe(),
        });
        (service, stopping)
    }

    #[tokio::test]
    async fn a_stream_stays_open_until_the_replica_stops() {
        let standin = zitadel_standin::StandIn::start().await.unwrap();
        let org = standin.create_org("Acme");
        let alice = standin.create_user(&org, "alice");
        let token = standin.issue_token(&alice, &["openid"]);
        let (service, stopping) = service(&standin);
        let mut request = Request::new(pb::WatchMetadataRequest::default());
        request.metadata_mut().insert(
            crate::caller::AUTHORIZATION,
            format!("Bearer {token}").parse().unwrap(),
        );
        let mut stream = service.watch_metadata(request).await.unwrap().into_inner();
        // Nothing has changed and the replica runs: the stream has nothing to say yet.
        let first = stream.next().now_or_never();
        assert!(first.is_none(), "the stream ended as it opened: {first:?}");

        stopping.send_replace(true);
        let ended = stream.next().await.unwrap().unwrap_err();
        assert_eq!(ended.code(), tonic::Code::Unavailable);
        assert!(ended.message().contains("shutting down"), "{ended:?}");
    }
}
