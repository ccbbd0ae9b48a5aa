//! Binds the gRPC port and serves usermeta with health and reflection until told to stop.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tonic::transport::{Server, ServerTlsConfig, server::TcpIncoming};
use tonic_health::server::HealthReporter;

use crate::{
    admission::Shed,
    api::{self, MetadataService, RequestLimits, pb},
    authz::{
        self, AuthzConfig, AuthzService, ExtAuthz, wire::authorization_server::AuthorizationServer,
    },
    caller::cache::{CacheConfig, CallerCache},
    caller::{IdentityConfig, IdentitySetupError, Resolver},
    fleet::{Changes, SharedInvalidation, webhook::Webhook},
    policy::Policy,
    tls::{TlsError, TlsFiles, TlsSettings},
};
use usermeta_zitadel::{
    Group, SetupError, Zitadel, ZitadelConfig,
    management::{ApiChoice, ManagementApi},
};

/// Everything the server needs, validated: the one configuration `serve` (from settings), `dev` and the
/// tests build, as [`Config::new`]'s defaults plus what they override.
#[derive(Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub zitadel: ZitadelConfig,
    pub policy: Policy,
    pub cache: CacheConfig,
    pub limits: Limits,
    /// How callers are identified; the default asks userinfo.
    pub identity: IdentityConfig,
    /// Metrics, TLS, shutdown, ext_authz.
    pub options: ServeOptions,
}

impl Config {
    /// The defaults for a ZITADEL and the service credential: listens on 127.0.0.1:0 (a free port), the
    /// default policy (users read their own metadata), 5 s upstream timeout, and every other default.
    pub fn new(
        zitadel_url: url::Url,
        service_credential: usermeta_zitadel::ServiceCredential,
    ) -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            zitadel: ZitadelConfig::new(zitadel_url, service_credential),
            policy: Policy::default(),
            cache: CacheConfig::default(),
            limits: Limits::default(),
            identity: IdentityConfig::default(),
            options: ServeOptions::default(),
        }
    }
}

/// Says at start-up which ZITADEL API manages metadata; for `auto`, asks ZITADEL in the background (a ZITADEL
/// that is not up yet is asked again on the first call).
fn announce_management_api(zitadel: &Arc<Zitadel>) {
    let fixed = match zitadel.management_api_choice() {
        ApiChoice::V1 => ManagementApi::V1,
        ApiChoice::V2 => ManagementApi::V2,
        ApiChoice::Auto => {
            let zitadel = Arc::clone(zitadel);
            tokio::spawn(async move {
                if let Err(error) = zitadel.management_api().await {
                    tracing::warn!(%error, "could not yet learn which management API ZITADEL serves (USERMETA_ZITADEL_API=auto); asking again on the first call");
                }
            });
            return;
        }
    };
    tracing::info!(
        api = fixed.name(),
        "managing metadata through ZITADEL's {} API (USERMETA_ZITADEL_API={})",
        fixed.name(),
        fixed.name()
    );
    crate::metrics::management_api(fixed.name());
}

/// Back-pressure: how much work usermeta accepts at once.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most calls waiting on ZITADEL at once (UserMetadataService and Check, across all connections); more
    /// are refused at once with RESOURCE_EXHAUSTED (no queue). Calls answered from memory are not counted.
    /// 0 means no limit.
    pub max_in_flight: usize,
    /// Most of those with one caller token, so one caller cannot hold every slot; `None`: an eighth of
    /// `max_in_flight` ([`Shed::default_per_caller`]). 0 means no per-caller limit.
    pub max_in_flight_per_caller: Option<usize>,
    /// HTTP/2 streams (concurrent calls) one connection may open.
    pub max_streams_per_connection: u32,
    /// Largest request or response message; a SetMetadata with several large values must fit.
    pub max_message_bytes: usize,
    /// Deadlines and the per-caller rate limit.
    pub requests: RequestLimits,
    /// WatchMetadata streams: how many, how much they buffer, how long they live.
    pub watch: crate::fleet::WatchLimits,
}

impl Limits {
    /// The in-flight limits these call for, shared by every listener.
    fn shed(&self) -> Shed {
        let per_caller = self
            .max_in_flight_per_caller
            .unwrap_or_else(|| Shed::default_per_caller(self.max_in_flight));
        Shed::new(self.max_in_flight, per_caller)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_in_flight: 1024,
            max_in_flight_per_caller: None,
            max_streams_per_connection: 256,
            max_message_bytes: 8 * 1024 * 1024,
            requests: RequestLimits::default(),
            watch: crate::fleet::WatchLimits::default(),
        }
    }
}

/// Operational settings beside [`Config`]: metrics, TLS, shutdown. The defaults serve plaintext gRPC,
/// without metrics, with a 10 s shutdown grace period.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Where `/metrics` is served; `None` turns metrics off.
    pub metrics_listen: Option<SocketAddr>,
    /// How long in-flight calls may take to finish after a shutdown signal.
    pub shutdown_grace: Duration,
    /// TLS on the gRPC port; `None` serves plaintext (h2c).
    pub tls: Option<TlsFiles>,
    /// Extra CA certificates trusted toward ZITADEL (beside the system's).
    pub zitadel_roots: Vec<reqwest::Certificate>,
    /// Envoy's external authorization API, on a listener of its own; `None` serves none.
    pub ext_authz: Option<ExtAuthz>,
    /// Redis, for invalidation shared with the other replicas; `None` keeps each replica's cache its own.
    pub redis: Option<crate::fleet::RedisConfig>,
    /// ZITADEL's event webhook; `None` serves none.
    pub webhook: Option<crate::fleet::webhook::WebhookConfig>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            metrics_listen: None,
            shutdown_grace: Duration::from_secs(10),
            tls: None,
            zitadel_roots: Vec::new(),
            ext_authz: None,
            redis: None,
            webhook: None,
        }
    }
}

/// The bound ext_authz listener and what serves it.
struct AuthzEndpoint {
    listener: TcpListener,
    local_addr: SocketAddr,
    service: AuthzService,
    tls: Option<ServerTlsConfig>,
}

/// The server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Zitadel(#[from] SetupError),
    #[error("caller identification could not be set up: {0}")]
    Identity(#[from] IdentitySetupError),
    #[error("reflection could not load the service descriptors: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("{0}")]
    ExtAuthz(String),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    #[error(transparent)]
    Redis(#[from] crate::fleet::RedisSetupError),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// A bound, ready-to-serve usermeta. Binding happens in [`Application::build`], so the port is known (and
/// taken) before serving starts.
pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    service: MetadataService,
    tls: Option<ServerTlsConfig>,
    metrics: Option<(TcpListener, metrics_exporter_prometheus::PrometheusHandle)>,
    shutdown_grace: Duration,
    zitadel: Arc<Zitadel>,
    authz: Option<AuthzEndpoint>,
    limits: Limits,
    fleet: Option<SharedInvalidation>,
    webhook: Option<(TcpListener, Arc<Webhook>)>,
    /// Turns true at shutdown: the ext_authz listener and WatchMetadata streams stop.
    stopping: tokio::sync::watch::Sender<bool>,
}

impl Application {
    /// Validates what is left to check (TLS files, ext_authz against the policy) and binds every listener
    /// (gRPC, ext_authz, metrics), so the ports are known and taken before serving starts.
    pub async fn build(config: Config) -> Result<Self, StartError> {
        let options = config.options;
        let tls = options
            .tls
            .as_ref()
            .map(|files| files.load_checked(&TlsSettings::GRPC))
            .transpose()?;
        let metrics = match options.metrics_listen {
            Some(addr) => {
                let handle = crate::metrics::install()?;
                Some((bind(addr).await?, handle))
            }
            None => None,
        };
        // Replicas sharing the service credential accept each other's page tokens.
        let page_tokens = crate::api::PageTokenKey::new(
            &config
                .zitadel
                .service_credential
                .derive_secret("usermeta page tokens v2"),
        );
        // Likewise the fleet's messages on Redis, unless a key file says otherwise.
        let bus_secret = config
            .zitadel
            .service_credential
            .derive_secret(crate::fleet::BUS_KEY_PURPOSE);
        let zitadel = Arc::new(Zitadel::build(
            config.zitadel,
            options.zitadel_roots,
            crate::instrumentation::upstream(),
        )?);
        announce_management_api(&zitadel);
        let resolver = Arc::new(Resolver::new(config.identity, &zitadel)?);
        let cache = Arc::new(CallerCache::new(config.cache));
        warn_hidden_keys_are_not_sealed(&config.policy);
        let policy = Arc::new(config.policy);
        // One door for both listeners: they share ZITADEL and this process, and a caller has one budget.
        let admission = Arc::new(config.limits.requests.admission(config.limits.shed()));
        let mut changes = Changes::local(Arc::clone(&cache), config.limits.watch);
        if let Some(mut redis) = options.redis {
            let key = match redis.bus_key.take() {
                Some(key) => {
                    tracing::info!(
                        keys = key.len(),
                        "fleet messages on Redis sealed with the key of USERMETA_REDIS_BUS_KEY_FILE"
                    );
                    key
                }
                None => {
                    tracing::info!(
                        "fleet messages on Redis sealed with a key derived from the service credential (every replica needs the same credential, or USERMETA_REDIS_BUS_KEY_FILE)"
                    );
                    crate::fleet::BusKey::from_secret(&bus_secret)
                }
            };
            changes = changes.with_redis(redis, key)?;
        }
        let fleet = changes.shared().cloned();
        let webhook = match options.webhook {
            Some(webhook) => {
                let listener = bind(webhook.listen).await?;
                Some((
                    listener,
                    Webhook::new(webhook.keys, webhook.limits, changes.clone()),
                ))
            }
            None => None,
        };
        let stopping = tokio::sync::watch::Sender::new(false);
        let service = MetadataService::new(api::Dependencies {
            zitadel: Arc::clone(&zitadel),
            policy: Arc::clone(&policy),
            cache: Arc::clone(&cache),
            resolver: Arc::clone(&resolver),
            admission: Arc::clone(&admission),
            batch_concurrency: config.limits.requests.batch_concurrency,
            page_tokens,
            changes,
            stopping: stopping.subscribe(),
        });
        let authz = match options.ext_authz {
            None => None,
            Some(ext) => {
                check_ext_authz_headers(&ext.config, &policy)?;
                let tls = ext
                    .tls
                    .as_ref()
                    .map(|files| files.load_checked(&TlsSettings::EXT_AUTHZ))
                    .transpose()?;
                let listener = bind(ext.listen).await?;
                let local_addr = listener.local_addr().map_err(|source| StartError::Bind {
                    addr: ext.listen,
                    source,
                })?;
                let shared = authz::check::Shared {
                    zitadel: Arc::clone(&zitadel),
                    cache: Arc::clone(&cache),
                    resolver,
                    policy,
                    admission,
                };
                Some(AuthzEndpoint {
                    listener,
                    local_addr,
                    service: AuthzService::new(shared, Arc::new(ext.config)),
                    tls,
                })
            }
        };
        let listener = bind(config.listen).await?;
        let local_addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        Ok(Application {
            listener,
            local_addr,
            service,
            tls,
            metrics,
            shutdown_grace: options.shutdown_grace,
            zitadel,
            authz,
            limits: config.limits,
            fleet,
            webhook,
            stopping,
        })
    }

    /// The address Envoy's Check is served on, when ext_authz is on.
    pub fn ext_authz_addr(&self) -> Option<SocketAddr> {
        self.authz.as_ref().map(|authz| authz.local_addr)
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn port(&self) -> u16 {
        self.local_addr.port()
    }

    /// The address ZITADEL's events are POSTed to, when the webhook is on.
    pub fn webhook_addr(&self) -> Option<SocketAddr> {
        let (listener, _) = self.webhook.as_ref()?;
        listener.local_addr().ok()
    }

    /// The address `/metrics` is served on, when metrics are on.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        let (listener, _) = self.metrics.as_ref()?;
        listener.local_addr().ok()
    }

    /// Serves until `shutdown` completes; health turns NOT_SERVING first, then in-flight calls finish within
    /// the grace period (after it, the server stops anyway and the remaining calls fail).
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartError> {
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<pb::user_metadata_service_server::UserMetadataServiceServer<MetadataService>>().await;
        for group in Group::ALL {
            health
                .set_service_status(group.health_name(), tonic_health::ServingStatus::Serving)
                .await;
        }
        let mut detail_health: Vec<_> = Group::ALL
            .into_iter()
            .map(|group| {
                tokio::spawn(report_detail(
                    health.clone(),
                    group.health_name(),
                    self.zitadel.watch_breaker(group),
                    |open| !open,
                ))
            })
            .collect();
        if let Some(fleet) = &self.fleet {
            detail_health.push(tokio::spawn(report_detail(
                health.clone(),
                crate::fleet::HEALTH_SERVICE,
                fleet.connected(),
                |connected| connected,
            )));
        }
        let limits = self.limits;
        let service =
            pb::user_metadata_service_server::UserMetadataServiceServer::new(self.service)
                .max_decoding_message_size(limits.max_message_bytes)
                .max_encoding_message_size(limits.max_message_bytes);

        let reflection_v1 = reflection_builder().build_v1()?;
        let reflection_v1alpha = reflection_builder().build_v1alpha()?;

        tracing::info!(addr = %self.local_addr, tls = self.tls.is_some(), "usermeta serving");
        // Scrapable until the server stops, shutdown included.
        let metrics_enabled = self.metrics.is_some();
        let metrics = self
            .metrics
            .map(|(listener, handle)| crate::metrics::serve(listener, handle));
        let webhook = self.webhook.map(|(listener, webhook)| {
            tracing::info!(addr = ?listener.local_addr().ok(), path = crate::fleet::webhook::PATH, "ZITADEL event webhook serving");
            crate::fleet::webhook::serve(listener, webhook)
        });
        let mut builder = Server::builder();
        if let Some(tls) = self.tls {
            builder = builder.tls_config(tls)?;
        }
        // The ext_authz listener has a health service of its own, so Envoy's health checks see Check's state.
        let authz_health = match &self.authz {
            Some(_) => {
                let (reporter, service) = tonic_health::server::health_reporter();
                reporter
                    .set_service_status(authz::SERVICE_NAME, tonic_health::ServingStatus::Serving)
                    .await;
                Some((reporter, service))
            }
            None => None,
        };
        let stopping = self.stopping;
        let stop_rx = stopping.subscribe();
        let (signalled, grace_starts) = tokio::sync::oneshot::channel::<()>();
        let drain_reporters = (
            health,
            authz_health.as_ref().map(|(reporter, _)| reporter.clone()),
        );
        let shutdown = async move {
            drain(drain_reporters.0, drain_reporters.1, shutdown).await;
            let _ = stopping.send(true);
            let _ = signalled.send(());
        };
        let serve = builder
            .max_concurrent_streams(limits.max_streams_per_connection)
            // Outermost first: the request context (request id, trace span) surrounds the measured call.
            // The in-flight limits are applied by the handlers, to the calls that wait on ZITADEL.
            .layer(crate::telemetry::RequestContextLayer)
            .layer(crate::metrics::GrpcMetricsLayer::new(metrics_enabled))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(service)
            .serve_with_incoming_shutdown(incoming(self.listener), shutdown);
        let authz_serve = async move {
            let (Some(authz), Some((_, health_service))) = (self.authz, authz_health) else {
                return Ok(());
            };
            tracing::info!(addr = %authz.local_addr, tls = authz.tls.is_some(), "ext_authz serving");
            let mut builder = Server::builder();
            if let Some(tls) = authz.tls {
                builder = builder.tls_config(tls)?;
            }
            let mut stop_rx = stop_rx;
            builder
                .max_concurrent_streams(limits.max_streams_per_connection)
                .layer(crate::telemetry::RequestContextLayer)
                .layer(crate::metrics::GrpcMetricsLayer::new(metrics_enabled))
                .add_service(health_service)
                // envoy-types ships no descriptor set, so reflection does not list this service.
                .add_service(AuthorizationServer::new(authz.service))
                .serve_with_incoming_shutdown(incoming(authz.listener), async move {
                    let _ = stop_rx.wait_for(|stopping| *stopping).await;
                })
                .await
        };
        let grace = self.shutdown_grace;
        let grace_over = async move {
            if grace_starts.await.is_err() {
                return std::future::pending().await;
            }
            tokio::time::sleep(grace).await;
        };
        let both = async { tokio::join!(serve, authz_serve) };
        tokio::select! {
            (main, ext) = both => {
                for (listener, result) in [("gRPC", main), ("ext_authz", ext)] {
                    if let Err(error) = result {
                        tracing::error!(%error, listener, "server stopped with an error");
                    }
                }
            }
            () = grace_over => {
                tracing::warn!(grace = ?grace, "shutdown grace period over; stopping with calls still in flight");
            }
        }
        for task in metrics.into_iter().chain(webhook) {
            task.abort();
        }
        for task in detail_health {
            task.abort();
        }
        tracing::info!("usermeta stopped");
        Ok(())
    }
}

/// Binds a listener, naming the address when it cannot.
async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

/// A listener's connections, as both servers take them.
fn incoming(listener: TcpListener) -> TcpIncoming {
    // Nagle's algorithm would hold small responses back for a delayed ACK (a 40 ms tail).
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)))
}

/// A header mapping of a key the policy hides from its user would never be sent (Check passes on only what
/// the caller may read of themself): refused at start-up rather than silently never sent.
/// `hidden = true` filters usermeta's answers only: the user reads the same keys from ZITADEL with the token
/// they call usermeta with. Said once at start-up, naming the patterns (never values), so nobody takes hidden
/// keys for a place to keep secrets. Sealed keys (a later change) will be the ones this no longer warns about.
fn warn_hidden_keys_are_not_sealed(policy: &Policy) {
    let hidden = policy.hidden_keys();
    if hidden.is_empty() {
        return;
    }
    tracing::warn!(
        keys = %hidden.join(", "),
        "the policy hides these keys from their users in usermeta's answers only; they are not sealed: ZITADEL still gives each user their own values (userinfo and tokens with the scope urn:zitadel:iam:user:metadata, the auth API), so keep nothing secret in them"
    );
}

fn check_ext_authz_headers(config: &AuthzConfig, policy: &Policy) -> Result<(), StartError> {
    match config.headers.iter().find(|m| policy.is_hidden(&m.key)) {
        Some(mapping) => Err(StartError::ExtAuthz(format!(
            "USERMETA_EXT_AUTHZ_HEADERS (--ext-authz-headers): `{}` is declared hidden in the policy, and Check passes on only what the caller may read of themself; remove it, or route on it with a rule (metadata.{}=VALUE) instead",
            mapping.key, mapping.key
        ))),
        None => Ok(()),
    }
}

/// Reports a part usermeta depends on as a health service of its own: a breaker ([`Group::health_name`],
/// NOT_SERVING while open) or the Redis link ([`crate::fleet::HEALTH_SERVICE`], NOT_SERVING while down). The
/// server as a whole stays SERVING: restarting usermeta would bring neither ZITADEL nor Redis back, and
/// reads from the cache and calls of the other group still work.
async fn report_detail(
    health: HealthReporter,
    name: &'static str,
    mut state: tokio::sync::watch::Receiver<bool>,
    healthy: fn(bool) -> bool,
) {
    loop {
        let status = if healthy(*state.borrow_and_update()) {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        health.set_service_status(name, status).await;
        if state.changed().await.is_err() {
            return;
        }
    }
}

fn reflection_builder() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        // The contract's set holds google.rpc's status and error details too (build.rs), so grpcurl and other
        // reflection clients decode BadRequest, ErrorInfo and RetryInfo wherever they appear.
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// Waits for the shutdown signal, then tells health checkers first so load balancers stop sending traffic.
async fn drain(
    health: HealthReporter,
    authz_health: Option<HealthReporter>,
    shutdown: impl Future<Output = ()>,
) {
    shutdown.await;
    tracing::info!("shutting down: health NOT_SERVING, finishing in-flight calls");
    health.set_not_serving::<pb::user_metadata_service_server::UserMetadataServiceServer<MetadataService>>().await;
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    if let Some(authz_health) = authz_health {
        for service in [authz::SERVICE_NAME, ""] {
            authz_health
                .set_service_status(service, tonic_health::ServingStatus::NotServing)
                .await;
        }
    }
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}
