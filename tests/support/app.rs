//! [`TestApp`]: a running usermeta, its stand-in ZITADEL and a cast of users; [`TestAppBuilder`], the one way a
//! test starts usermeta. Every knob is flat; the builder is the only place the tests construct the server's
//! `Config`, so a change in how the service is configured is one change here.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use secrecy::SecretString;
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::{Request, Response, Status, transport::Channel};
use usermeta::{
    api::pb::{self, user_metadata_service_client::UserMetadataServiceClient},
    authz::{AuthzConfig, ExtAuthz},
    caller::{IdentityConfig, cache::CacheConfig},
    fleet::{
        FleetBudgetConfig, RedisConfig, WriteLockConfig,
        webhook::{SigningKeys, WebhookConfig, WebhookLimits},
    },
    policy::Policy,
    sealing::Sealer,
    server::{Application, Config, Limits, StartError},
    tls::TlsFiles,
};
use usermeta_zitadel::{
    Http2, Resilience, ServiceCredential, UpstreamBudget, management::ApiChoice,
};
use zitadel_standin::{ManagerRole, RecordedRequest, StandIn};

use super::calls::{authed, connect};

/// Scopes a typical caller token has: identity, metadata, organisation, and the ZITADEL audience.
pub(crate) const FULL_SCOPES: &[&str] = &[
    "openid",
    "profile",
    "urn:zitadel:iam:user:metadata",
    "urn:zitadel:iam:user:resourceowner",
    "urn:zitadel:iam:org:project:id:zitadel:aud",
];

/// Key prefix the test policy makes self-writable.
pub(crate) const SELF_WRITABLE: &str = "profile.";

/// The stand-in and the users seeded in it: alice and the admin in Acme, bob in Globex, and an IAM_OWNER
/// service user whose PAT usermeta holds.
#[derive(Clone)]
pub(crate) struct Cast {
    pub standin: StandIn,
    /// Organisation of alice, the admin and the service user.
    pub org: String,
    /// A second organisation, holding bob.
    pub other_org: String,
    pub alice: String,
    pub alice_token: String,
    pub admin: String,
    pub admin_token: String,
    pub bob: String,
    pub service_pat: String,
}

impl Cast {
    async fn seed() -> Cast {
        let standin = StandIn::start().await.expect("stand-in starts");
        let org = standin.create_org("Acme");
        let other_org = standin.create_org("Globex");
        let alice = standin.create_user(&org, "alice");
        let admin = standin.create_user(&org, "admin");
        let bob = standin.create_user(&other_org, "bob");
        let service_user = standin.create_service_user(&org, "usermeta", ManagerRole::IamOwner);
        let service_pat = standin.issue_pat(&service_user);
        standin.set_metadata(&alice, "ContractNumber", b"1234");
        standin.set_metadata(&alice, "profile.language", b"en");
        standin.set_metadata(&bob, "ContractNumber", b"5678");
        let alice_token = standin.issue_token(&alice, FULL_SCOPES);
        let admin_token = standin.issue_token(&admin, FULL_SCOPES);
        Cast {
            standin,
            org,
            other_org,
            alice,
            alice_token,
            admin,
            admin_token,
            bob,
            service_pat,
        }
    }

    /// The test policy: the admin may do anything, everyone may write their own `profile.` keys.
    fn policy(&self) -> Policy {
        Policy::new([self.admin.clone()], vec![SELF_WRITABLE.into()])
    }
}

/// A running usermeta on 127.0.0.1:0 with the [`Cast`] it was started with. It stops when `stop` is dropped
/// (or sent), and `stopped` ends after.
pub(crate) struct TestApp {
    pub cast: Cast,
    pub addr: SocketAddr,
    pub client: UserMetadataServiceClient<Channel>,
    /// Where Envoy's Check is served, when ext_authz is on (never on `addr`).
    pub authz_addr: Option<SocketAddr>,
    /// Where `/metrics` is served, when [`TestAppBuilder::metrics`] asked for it.
    pub metrics_addr: Option<SocketAddr>,
    /// Where ZITADEL's events are received, when [`TestAppBuilder::webhook`] asked for it.
    pub webhook_addr: Option<SocketAddr>,
    pub stop: oneshot::Sender<()>,
    pub stopped: JoinHandle<()>,
}

impl std::ops::Deref for TestApp {
    type Target = Cast;

    fn deref(&self) -> &Cast {
        &self.cast
    }
}

/// What a [`TestApp`] varies: where ZITADEL is and how usermeta talks to it, the policy, limits, caches and
/// which listeners it opens. Without a knob, usermeta runs with the service's defaults, except as
/// [`TestApp::builder`] says.
pub(crate) struct TestAppBuilder {
    /// The cast to reuse; a fresh one is seeded when `None`.
    cast: Option<Cast>,
    zitadel_url: Option<String>,
    credential: Option<ServiceCredential>,
    policy: Option<Policy>,
    edits: Vec<ConfigEdit>,
}

/// One knob's change to the service's configuration, applied in the order the knobs were called.
type ConfigEdit = Box<dyn FnOnce(&mut Config) + Send>;

impl TestApp {
    /// The usual app: [`TestApp::builder`] with nothing changed.
    pub(crate) async fn spawn() -> TestApp {
        TestApp::builder().spawn().await
    }

    /// A fresh stand-in seeded with the [`Cast`], and usermeta in front of it with the test policy (the admin
    /// may do anything, everyone may write their own `profile.` keys), against the v1 management API (the
    /// tests that pin v1's wire format need it; the backend-independent suite runs against both) and without
    /// the request budget toward ZITADEL (it refills with the clock, and tests that send ZITADEL many requests
    /// in a burst would depend on the machine's speed; tests of the budget set one).
    pub(crate) fn builder() -> TestAppBuilder {
        TestAppBuilder {
            cast: None,
            zitadel_url: None,
            credential: None,
            policy: None,
            edits: Vec::new(),
        }
    }

    /// A fresh stand-in seeded with the [`Cast`], for a test that needs its ids before usermeta starts (a
    /// policy naming them); start usermeta with [`TestAppBuilder::reuse`].
    pub(crate) async fn seeded() -> Cast {
        let cast = Cast::seed().await;
        cast.standin.clear_requests();
        cast
    }

    /// Another usermeta in front of this app's stand-in, with the same cast, service user and test policy.
    pub(crate) fn another(&self) -> TestAppBuilder {
        TestAppBuilder {
            cast: Some(self.cast.clone()),
            ..TestApp::builder()
        }
    }

    pub(crate) async fn get_my_metadata(
        &self,
        token: &str,
        request: pb::GetMyMetadataRequest,
    ) -> Result<Response<pb::GetMyMetadataResponse>, Status> {
        self.client
            .clone()
            .get_my_metadata(authed(request, token))
            .await
    }

    pub(crate) async fn list_metadata(
        &self,
        token: &str,
        request: pb::ListMetadataRequest,
    ) -> Result<Response<pb::ListMetadataResponse>, Status> {
        self.client
            .clone()
            .list_metadata(authed(request, token))
            .await
    }

    pub(crate) async fn set_metadata(
        &self,
        token: &str,
        request: pb::SetMetadataRequest,
    ) -> Result<Response<pb::SetMetadataResponse>, Status> {
        self.client
            .clone()
            .set_metadata(authed(request, token))
            .await
    }

    pub(crate) async fn delete_metadata(
        &self,
        token: &str,
        request: pb::DeleteMetadataRequest,
    ) -> Result<Response<pb::DeleteMetadataResponse>, Status> {
        self.client
            .clone()
            .delete_metadata(authed(request, token))
            .await
    }

    /// Alice's GetMyMetadata for all of her keys.
    pub(crate) async fn list_org_metadata(
        &self,
        token: &str,
        request: pb::ListOrganizationMetadataRequest,
    ) -> Result<pb::ListOrganizationMetadataResponse, Status> {
        self.client
            .clone()
            .list_organization_metadata(authed(request, token))
            .await
            .map(Response::into_inner)
    }

    pub(crate) async fn set_org_metadata(
        &self,
        token: &str,
        request: pb::SetOrganizationMetadataRequest,
    ) -> Result<pb::SetOrganizationMetadataResponse, Status> {
        self.client
            .clone()
            .set_organization_metadata(authed(request, token))
            .await
            .map(Response::into_inner)
    }

    pub(crate) async fn delete_org_metadata(
        &self,
        token: &str,
        request: pb::DeleteOrganizationMetadataRequest,
    ) -> Result<pb::DeleteOrganizationMetadataResponse, Status> {
        self.client
            .clone()
            .delete_organization_metadata(authed(request, token))
            .await
            .map(Response::into_inner)
    }

    /// Requests the stand-in received for organisations' metadata (v1 `/management/v1/metadata/…`, v2
    /// `zitadel.org.v2.OrganizationService`).
    pub(crate) fn org_metadata_requests(&self) -> Vec<RecordedRequest> {
        self.standin
            .requests()
            .into_iter()
            .filter(|r| {
                r.path.starts_with("/management/v1/metadata/")
                    || r.path.starts_with("/zitadel.org.v2.OrganizationService/")
            })
            .collect()
    }

    pub(crate) fn get_mine(&self) -> Request<pb::GetMyMetadataRequest> {
        authed(pb::GetMyMetadataRequest::default(), &self.alice_token)
    }

    /// The ext_authz listener's address (the app must have been spawned with ext_authz).
    pub(crate) fn authz_addr(&self) -> SocketAddr {
        self.authz_addr.expect("spawned with ext_authz")
    }

    /// The metrics listener's address (the app must have been spawned with metrics).
    pub(crate) fn metrics_addr(&self) -> SocketAddr {
        self.metrics_addr.expect("spawned with metrics")
    }

    pub(crate) fn management_requests(&self) -> Vec<RecordedRequest> {
        self.standin
            .requests()
            .into_iter()
            .filter(|r| r.is_management())
            .collect()
    }

    /// The management calls that read or write metadata (without v2's lookup of a user's organisation).
    pub(crate) fn metadata_requests(&self) -> Vec<RecordedRequest> {
        self.management_requests()
            .into_iter()
            .filter(|r| r.connect_procedure() != Some("GetUserByID"))
            .collect()
    }

    /// How many userinfo calls the stand-in received.
    pub(crate) fn userinfo_requests(&self) -> usize {
        self.standin
            .requests()
            .iter()
            .filter(|r| r.is_userinfo())
            .count()
    }

    /// Asserts the stand-in received nothing at all.
    #[track_caller]
    pub(crate) fn assert_no_upstream_request(&self) {
        let seen: Vec<String> = self
            .standin
            .requests()
            .iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect();
        assert!(seen.is_empty(), "expected no ZITADEL request, saw {seen:?}");
    }

    #[track_caller]
    pub(crate) fn assert_no_management_request(&self) {
        let seen: Vec<String> = self
            .management_requests()
            .iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect();
        assert!(seen.is_empty(), "expected no management call, saw {seen:?}");
    }
}

impl TestAppBuilder {
    fn edit(mut self, edit: impl FnOnce(&mut Config) + Send + 'static) -> Self {
        self.edits.push(Box::new(edit));
        self
    }

    /// Talk to the ZITADEL at `url` instead of the cast's stand-in (a scripted upstream, a stand-in behind
    /// TLS); the cast stays for tokens and comparisons.
    pub(crate) fn zitadel_url(mut self, url: &str) -> Self {
        self.zitadel_url = Some(url.to_owned());
        self
    }

    /// In front of `cast` (from [`TestApp::seeded`]) instead of a fresh one.
    pub(crate) fn reuse(mut self, cast: Cast) -> Self {
        self.cast = Some(cast);
        self
    }

    /// The service credential, instead of the cast's service user's PAT.
    pub(crate) fn credential(mut self, credential: ServiceCredential) -> Self {
        self.credential = Some(credential);
        self
    }

    /// A personal access token as the service credential.
    pub(crate) fn pat(self, pat: &str) -> Self {
        self.credential(ServiceCredential::Pat(SecretString::from(pat)))
    }

    /// Which ZITADEL API manages metadata (v1, v2 or auto).
    pub(crate) fn api(self, api: ApiChoice) -> Self {
        self.edit(move |config| config.zitadel.management_api = api)
    }

    pub(crate) fn policy(mut self, policy: Policy) -> Self {
        self.policy = Some(policy);
        self
    }

    /// Sealing keys (a key file's text) for the policy's sealed keys, bound to the ZITADEL URL as `serve`
    /// binds them.
    pub(crate) fn sealing(self, keys: &str) -> Self {
        self.sealing_for(keys, None)
    }

    /// [`TestAppBuilder::sealing`] bound to `instance` instead of the ZITADEL URL (another instance's values).
    pub(crate) fn sealing_for(self, keys: &str, instance: Option<&str>) -> Self {
        let keys = keys.to_owned();
        let instance = instance.map(str::to_owned);
        self.edit(move |config| {
            let instance = instance.unwrap_or_else(|| {
                config
                    .zitadel
                    .base_url
                    .as_str()
                    .trim_end_matches('/')
                    .to_owned()
            });
            let sealer = Sealer::from_text(&keys, &instance).expect("sealing keys");
            config.policy = std::mem::take(&mut config.policy).with_sealer(Arc::new(sealer));
        })
    }

    /// How long one request to ZITADEL may take.
    pub(crate) fn timeout(self, timeout: Duration) -> Self {
        self.edit(move |config| config.zitadel.timeout = timeout)
    }

    pub(crate) fn resilience(self, resilience: Resilience) -> Self {
        self.edit(move |config| config.zitadel.resilience = resilience)
    }

    pub(crate) fn http2(self, http2: Http2) -> Self {
        self.edit(move |config| config.zitadel.http2 = http2)
    }

    /// The request budget toward ZITADEL (off unless set).
    pub(crate) fn upstream_budget(self, budget: UpstreamBudget) -> Self {
        self.edit(move |config| config.zitadel.upstream_budget = Some(budget))
    }

    /// Fault tests: every retry after a millisecond, so a test of many failures is quick.
    pub(crate) fn fast_retries(self, resilience: Resilience) -> Self {
        self.resilience(Resilience {
            backoff_base: Duration::from_millis(1),
            ..resilience
        })
    }

    /// No caching: every call reaches ZITADEL.
    pub(crate) fn no_cache(self) -> Self {
        self.edit(|config| {
            config.cache.ttl = Duration::ZERO;
            config.org_cache.ttl = Duration::ZERO;
        })
    }

    /// Organisations' metadata read from ZITADEL every time (tests that change it behind usermeta's back).
    pub(crate) fn no_org_cache(self) -> Self {
        self.edit(|config| config.org_cache.ttl = Duration::ZERO)
    }

    /// No cache of users' listings: reads of other users' metadata always reach ZITADEL (for tests that
    /// change the stand-in's data behind usermeta's back, which only the TTL would otherwise bound).
    pub(crate) fn no_metadata_cache(self) -> Self {
        self.edit(|config| config.metadata_cache_bytes = 0)
    }

    pub(crate) fn cache(self, cache: CacheConfig) -> Self {
        self.edit(move |config| config.cache = cache)
    }

    pub(crate) fn limits(self, limits: Limits) -> Self {
        self.edit(move |config| config.limits = limits)
    }

    /// How callers are identified (introspection, JWT validation, userinfo).
    pub(crate) fn identity(self, identity: IdentityConfig) -> Self {
        self.edit(move |config| config.identity = identity)
    }

    /// usermeta's project: roles ZITADEL asserts for it count.
    pub(crate) fn project_id(self, project_id: &str) -> Self {
        let project_id = project_id.to_owned();
        self.edit(move |config| config.zitadel.project_id = Some(project_id))
    }

    /// Envoy's external authorization API on a listener of its own (127.0.0.1:0).
    pub(crate) fn ext_authz(self, authz: AuthzConfig) -> Self {
        self.edit(move |config| {
            config.options.ext_authz = Some(ExtAuthz {
                config: authz,
                listen: any_port(),
                tls: None,
            })
        })
    }

    /// `/metrics` on a listener of its own (127.0.0.1:0).
    pub(crate) fn metrics(self) -> Self {
        self.edit(|config| config.options.metrics_listen = Some(any_port()))
    }

    /// TLS on the gRPC port.
    pub(crate) fn tls(self, files: TlsFiles) -> Self {
        self.edit(move |config| config.options.tls = Some(files))
    }

    /// CA certificates trusted toward ZITADEL, beside the system's.
    pub(crate) fn zitadel_roots(self, roots: Vec<reqwest::Certificate>) -> Self {
        self.edit(move |config| config.options.zitadel_roots = roots)
    }

    /// How long in-flight calls may take to finish after the stop signal.
    pub(crate) fn shutdown_grace(self, grace: Duration) -> Self {
        self.edit(move |config| config.options.shutdown_grace = grace)
    }

    /// Redis, for invalidation shared with other replicas.
    pub(crate) fn redis(self, redis: RedisConfig) -> Self {
        self.edit(move |config| config.options.redis = Some(redis))
    }

    /// How conditional writes and merge patches are serialised (the lock's lifetime, single replica).
    pub(crate) fn write_locks(self, locks: WriteLockConfig) -> Self {
        self.edit(move |config| config.options.write_locks = locks)
    }

    /// One request budget toward ZITADEL for every replica on the Redis at `redis` (`fleet.budget`), and
    /// `fleet.fallback` while it cannot be reached.
    pub(crate) fn fleet_budget(self, redis: &str, fleet: FleetBudgetConfig) -> Self {
        let redis = RedisConfig::new(redis);
        self.edit(move |config| {
            config.options.redis = Some(redis);
            config.options.upstream_fleet = Some(fleet);
        })
    }

    /// ZITADEL's event webhook on 127.0.0.1:0, checking signatures with `keys` (one per line) and taking on
    /// `limits` at once.
    pub(crate) fn webhook_with(self, keys: &str, limits: WebhookLimits) -> Self {
        let keys = SigningKeys::from_text(keys).expect("signing keys");
        self.edit(move |config| {
            config.options.webhook = Some(WebhookConfig {
                listen: any_port(),
                keys,
                limits,
            })
        })
    }

    /// [`TestAppBuilder::webhook_with`] the default limits.
    pub(crate) fn webhook(self, keys: &str) -> Self {
        self.webhook_with(keys, WebhookLimits::default())
    }

    /// Builds (binds) without serving: for tests of start-up errors.
    pub(crate) async fn build(self) -> Result<(Cast, Application), StartError> {
        let fresh = self.cast.is_none();
        let cast = match self.cast {
            Some(cast) => cast,
            None => Cast::seed().await,
        };
        let url = self.zitadel_url.unwrap_or_else(|| cast.standin.url());
        let credential = self.credential.unwrap_or_else(|| {
            ServiceCredential::Pat(SecretString::from(cast.service_pat.clone()))
        });
        let mut config = shipped_config(&url, credential);
        config.zitadel.management_api = ApiChoice::V1;
        config.zitadel.upstream_budget = None;
        config.policy = self.policy.unwrap_or_else(|| cast.policy());
        for edit in self.edits {
            edit(&mut config);
        }
        let app = Application::build(config).await?;
        if fresh {
            // Tests count what ZITADEL received from their calls, not from the seeding.
            cast.standin.clear_requests();
        }
        Ok((cast, app))
    }

    /// Builds and serves in a task until [`TestApp::stop`] is sent or dropped.
    pub(crate) async fn spawn(self) -> TestApp {
        let (cast, app) = self.build().await.expect("usermeta builds");
        let addr = app.local_addr();
        let authz_addr = app.ext_authz_addr();
        let metrics_addr = app.metrics_addr();
        let webhook_addr = app.webhook_addr();
        let (stop, on_stop) = oneshot::channel::<()>();
        let stopped = tokio::spawn(async move {
            app.run_until(async {
                let _ = on_stop.await;
            })
            .await
            .expect("usermeta serves until stopped");
        });
        TestApp {
            cast,
            client: connect(addr).await,
            addr,
            authz_addr,
            metrics_addr,
            webhook_addr,
            stop,
            stopped,
        }
    }
}

/// The request budget toward ZITADEL that `usermeta serve` runs with unless told otherwise.
pub(crate) fn shipped_upstream_budget() -> Option<UpstreamBudget> {
    let credential = ServiceCredential::Pat(SecretString::from("unused"));
    shipped_config("http://zitadel.invalid", credential)
        .zitadel
        .upstream_budget
}

/// What `usermeta serve` runs with unless told otherwise; the one place the tests construct a `Config`.
fn shipped_config(zitadel_url: &str, credential: ServiceCredential) -> Config {
    Config::new(zitadel_url.parse().expect("a ZITADEL URL"), credential)
}

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}
