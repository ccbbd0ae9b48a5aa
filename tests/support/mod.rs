//! The one way tests start usermeta: [`AppBuilder`] over the service's typed `Config` (its defaults plus what
//! a test overrides), shared by every test binary (`#[path = ".../support/mod.rs"] mod support;`).
#![allow(dead_code)] // each test binary uses part of it

use std::{net::SocketAddr, time::Duration};

use secrecy::SecretString;
use tokio::{sync::oneshot, task::JoinHandle};
use usermeta::{
    authz::{AuthzConfig, ExtAuthz},
    caller::{IdentityConfig, cache::CacheConfig},
    policy::Policy,
    server::{Application, Config, Limits, ServeOptions, StartError},
};
use usermeta_zitadel::{Http2, Resilience, ServiceCredential, management::ApiChoice};

/// Settings of the ZITADEL client and the caches that tests vary together.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub timeout: Duration,
    pub cache: CacheConfig,
    pub resilience: Resilience,
    pub limits: Limits,
    pub http2: Http2,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            timeout: Duration::from_secs(5),
            cache: CacheConfig::default(),
            resilience: Resilience::default(),
            limits: Limits::default(),
            http2: Http2::default(),
        }
    }
}

/// A usermeta to start on 127.0.0.1:0: [`Config::new`]'s defaults, changed by each method.
pub struct AppBuilder {
    config: Config,
}

impl AppBuilder {
    /// Against the v1 management API unless [`AppBuilder::api`] says otherwise: the tests that pin v1's wire
    /// format need it, and the backend-independent suite runs against both.
    ///
    /// Without the request budget toward ZITADEL (on by default): it refills with the clock, and tests that
    /// send ZITADEL many requests in a burst would depend on the machine's speed. Tests of the budget set one
    /// ([`AppBuilder::configure`]).
    pub fn new(zitadel_url: &str, credential: ServiceCredential) -> Self {
        let mut config = Config::new(zitadel_url.parse().expect("a ZITADEL URL"), credential);
        config.zitadel.management_api = ApiChoice::V1;
        config.zitadel.upstream_budget = None;
        AppBuilder { config }.options(Options::default())
    }

    /// Which ZITADEL API manages metadata (v1, v2 or auto).
    pub fn api(mut self, api: ApiChoice) -> Self {
        self.config.zitadel.management_api = api;
        self
    }

    /// [`AppBuilder::new`] with a personal access token as the service credential.
    pub fn with_pat(zitadel_url: &str, pat: &str) -> Self {
        Self::new(zitadel_url, ServiceCredential::Pat(SecretString::from(pat)))
    }

    pub fn policy(mut self, policy: Policy) -> Self {
        self.config.policy = policy;
        self
    }

    pub fn options(mut self, options: Options) -> Self {
        self.config.zitadel.timeout = options.timeout;
        self.config.zitadel.resilience = options.resilience;
        self.config.zitadel.http2 = options.http2;
        self.config.cache = options.cache;
        self.config.limits = options.limits;
        self
    }

    /// How callers are identified (introspection, JWT validation, userinfo).
    pub fn identity(mut self, identity: IdentityConfig) -> Self {
        self.config.identity = identity;
        self
    }

    /// usermeta's project: roles ZITADEL asserts for it count.
    pub fn project_id(mut self, project_id: &str) -> Self {
        self.config.zitadel.project_id = Some(project_id.to_owned());
        self
    }

    /// Envoy's external authorization API on a listener of its own (127.0.0.1:0).
    pub fn ext_authz(mut self, config: AuthzConfig) -> Self {
        self.config.options.ext_authz = Some(ExtAuthz {
            config,
            listen: "127.0.0.1:0".parse().expect("an address"),
            tls: None,
        });
        self
    }

    /// Metrics, TLS, shutdown and trusted CAs; keeps an ext_authz listener set before.
    pub fn serve_options(mut self, options: ServeOptions) -> Self {
        let ext_authz = self.config.options.ext_authz.take();
        self.config.options = ServeOptions {
            ext_authz: options.ext_authz.or(ext_authz),
            ..options
        };
        self
    }

    /// ZITADEL's event webhook on 127.0.0.1:0, checking signatures with `keys` (one per line).
    pub fn webhook(mut self, keys: &str) -> Self {
        self.config.options.webhook = Some(usermeta::fleet::webhook::WebhookConfig {
            listen: "127.0.0.1:0".parse().expect("an address"),
            keys: usermeta::fleet::webhook::SigningKeys::from_text(keys).expect("signing keys"),
            limits: usermeta::fleet::webhook::WebhookLimits::default(),
        });
        self
    }

    /// What the webhook ([`AppBuilder::webhook`], called before) takes on at once.
    pub fn webhook_limits(mut self, limits: usermeta::fleet::webhook::WebhookLimits) -> Self {
        self.config
            .options
            .webhook
            .as_mut()
            .expect("AppBuilder::webhook first")
            .limits = limits;
        self
    }

    /// Anything else of the configuration.
    pub fn configure(mut self, edit: impl FnOnce(&mut Config)) -> Self {
        edit(&mut self.config);
        self
    }

    pub fn config(self) -> Config {
        self.config
    }

    /// Builds (binds) without serving: for tests of start-up errors.
    pub async fn build(self) -> Result<Application, StartError> {
        Application::build(self.config).await
    }

    /// Builds and serves in a task until [`Spawned::stop`] is sent or dropped.
    pub async fn spawn(self) -> Spawned {
        Spawned::serve(self.build().await.expect("usermeta builds"))
    }
}

/// A usermeta serving in a task; it stops when `stop` is dropped (or sent), and `stopped` ends after.
pub struct Spawned {
    pub addr: SocketAddr,
    pub authz_addr: Option<SocketAddr>,
    pub metrics_addr: Option<SocketAddr>,
    pub webhook_addr: Option<SocketAddr>,
    pub stop: oneshot::Sender<()>,
    pub stopped: JoinHandle<()>,
}

impl Spawned {
    pub fn serve(app: Application) -> Spawned {
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
        Spawned {
            addr,
            authz_addr,
            metrics_addr,
            webhook_addr,
            stop,
            stopped,
        }
    }

    /// The address and the stop handle, for tests that need nothing else.
    pub fn into_pair(self) -> (SocketAddr, oneshot::Sender<()>) {
        (self.addr, self.stop)
    }
}
