//! The composition root: [`Application::build`] makes every part once from a validated [`Config`] and binds
//! the listeners; [`Application::run_until`] serves them until told to stop, then drains.
//!
//! | file | what |
//! |---|---|
//! | `config.rs` | [`Config`], [`Limits`], [`ServeOptions`] |
//! | `listeners.rs` | the four listeners (gRPC, ext_authz, metrics, webhook): bound at build, one function each to serve |
//! | `middleware.rs` | the one layer stack both gRPC listeners serve through |
//! | `health.rs` | gRPC health, and NOT_SERVING first at shutdown |
//! | `checks.rs` | what start-up says and refuses about the configuration |

mod checks;
mod config;
mod health;
mod listeners;
mod middleware;

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use tokio::sync::{oneshot, watch};

pub use config::{Config, Limits, ServeOptions};
use listeners::{ExtAuthzListener, GrpcListener, MetricsListener, WebhookListener};

use crate::{
    api::{self, MetadataService, PageTokenKey},
    authz::{self, AuthzService, ExtAuthz},
    caller::{IdentitySetupError, Resolver, cache::CallerCache},
    fleet::{
        self, BusKey, Caches, Changes, RedisConfig, SharedInvalidation, WatchLimits, WriteLocks,
    },
    listings::ListingCache,
    settings::names,
    tls::{TlsError, TlsSettings},
};
use usermeta_zitadel::{SetupError, Zitadel};

/// The server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The ZITADEL client could not be built.
    #[error(transparent)]
    Zitadel(#[from] SetupError),
    /// Caller identification could not be set up.
    #[error("caller identification could not be set up: {0}")]
    Identity(#[from] IdentitySetupError),
    /// Reflection could not load the embedded descriptors.
    #[error("reflection could not load the service descriptors: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// A TLS file is missing or unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The policy seals keys but usermeta has no sealing keys; the text names both settings.
    #[error("{0}")]
    Sealing(String),
    /// The ext_authz configuration contradicts the rest; the text names the settings.
    #[error("{0}")]
    ExtAuthz(String),
    /// The metrics recorder or its listener could not start.
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    /// The Redis connection for the fleet could not be set up.
    #[error(transparent)]
    Redis(#[from] crate::fleet::RedisSetupError),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// A bound, ready-to-serve usermeta. Binding happens in [`Application::build`], so the ports are known (and
/// taken) before serving starts.
pub struct Application {
    api: GrpcListener,
    service: MetadataService,
    ext_authz: Option<ExtAuthzListener>,
    metrics: Option<MetricsListener>,
    webhook: Option<WebhookListener>,
    zitadel: Arc<Zitadel>,
    fleet: Option<SharedInvalidation>,
    limits: Limits,
    shutdown_grace: Duration,
    /// Turns true at shutdown: the ext_authz listener and WatchMetadata streams stop.
    stopping: watch::Sender<bool>,
}

impl Application {
    /// Validates what is left to check (TLS files, ext_authz against the policy), makes every part once and
    /// binds every listener, so the ports are known and taken before serving starts.
    pub async fn build(config: Config) -> Result<Self, StartError> {
        let options = config.options;
        let api_tls = options
            .tls
            .as_ref()
            .map(|files| files.load_checked(&TlsSettings::GRPC))
            .transpose()?;
        let metrics = MetricsListener::bind(options.metrics_listen).await?;
        // Replicas sharing the service credential accept each other's page tokens.
        let page_tokens = PageTokenKey::new(
            &config
                .zitadel
                .service_credential
                .derive_secret("usermeta page tokens v2"),
        );
        // Likewise the fleet's messages on Redis, unless a key file says otherwise.
        let bus_secret = config
            .zitadel
            .service_credential
            .derive_secret(fleet::BUS_KEY_PURPOSE);
        let mut zitadel_config = config.zitadel;
        zitadel_config.fleet_budget = fleet_budget(
            options.upstream_fleet,
            options.redis.as_ref(),
            &zitadel_config,
        )?;
        let zitadel = Arc::new(Zitadel::build(
            zitadel_config,
            options.zitadel_roots,
            crate::instrumentation::upstream(),
        )?);
        checks::announce_management_api(&zitadel);
        let resolver = Arc::new(Resolver::new(config.identity, &zitadel)?);
        let cache = Arc::new(CallerCache::new(config.cache));
        checks::check_sealing(&config.policy)?;
        let listings = Arc::new(ListingCache::new(
            config.cache.ttl,
            config.metadata_cache_bytes,
        ));
        checks::warn_hidden_keys_are_not_sealed(&config.policy);
        let policy = Arc::new(config.policy);
        // One door for both listeners: they share ZITADEL and this process, and a caller has one budget.
        let admission = Arc::new(config.limits.requests.admission(config.limits.shed()));
        let caches = Caches {
            callers: Arc::clone(&cache),
            listings: Arc::clone(&listings),
        };
        let org_cache = Arc::new(crate::org_cache::OrgCache::new(config.org_cache));
        let changes = changes(
            caches,
            org_cache,
            config.limits.watch,
            options.redis,
            &bus_secret,
        )?;
        let fleet = changes.shared().cloned();
        let write_locks = Arc::new(match &fleet {
            Some(shared) => shared.write_locks(options.write_locks),
            None => WriteLocks::local(options.write_locks),
        });
        checks::announce_write_locks(&write_locks, options.write_locks);
        let org_cache = Arc::clone(changes.org_cache());
        let webhook = WebhookListener::bind(options.webhook, &changes).await?;
        let stopping = watch::Sender::new(false);
        let service = MetadataService::new(api::Dependencies {
            zitadel: Arc::clone(&zitadel),
            policy: Arc::clone(&policy),
            cache: Arc::clone(&cache),
            listings,
            resolver: Arc::clone(&resolver),
            admission: Arc::clone(&admission),
            batch_concurrency: config.limits.requests.batch_concurrency,
            page_tokens,
            changes,
            write_locks,
            stopping: stopping.subscribe(),
        });
        let ext_authz = match options.ext_authz {
            None => None,
            Some(ext) => {
                let shared = authz::check::Shared {
                    zitadel: Arc::clone(&zitadel),
                    cache,
                    resolver,
                    policy,
                    admission,
                    org_cache,
                };
                Some(ext_authz_listener(ext, shared).await?)
            }
        };
        let api = GrpcListener::bind(config.listen, api_tls).await?;
        Ok(Application {
            api,
            service,
            ext_authz,
            metrics,
            webhook,
            zitadel,
            fleet,
            limits: config.limits,
            shutdown_grace: options.shutdown_grace,
            stopping,
        })
    }

    /// The address Envoy's Check is served on, when ext_authz is on.
    pub fn ext_authz_addr(&self) -> Option<SocketAddr> {
        self.ext_authz.as_ref().map(|ext| ext.grpc.local_addr)
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.api.local_addr
    }

    /// The port actually bound (useful with port 0).
    pub fn port(&self) -> u16 {
        self.api.local_addr.port()
    }

    /// The address ZITADEL's events are POSTed to, when the webhook is on.
    pub fn webhook_addr(&self) -> Option<SocketAddr> {
        self.webhook.as_ref()?.listener.local_addr().ok()
    }

    /// The address `/metrics` is served on, when metrics are on.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref()?.listener.local_addr().ok()
    }

    /// Serves until `shutdown` completes; health turns NOT_SERVING first, then in-flight calls finish within
    /// the grace period (after it, the server stops anyway and the remaining calls fail).
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartError> {
        let (api_health, mut background) = health::grpc(&self.zitadel, self.fleet.as_ref()).await;
        let ext_authz = match self.ext_authz {
            Some(listener) => Some((listener, health::ext_authz().await)),
            None => None,
        };
        let stopping = self.stopping;
        let stop_rx = stopping.subscribe();
        let (signalled, grace_starts) = oneshot::channel::<()>();
        let drained = {
            let api_health = api_health.clone();
            let ext_authz_health = ext_authz.as_ref().map(|(_, health)| health.clone());
            async move {
                health::drain(api_health, ext_authz_health, shutdown).await;
                let _ = stopping.send(true);
                let _ = signalled.send(());
            }
        };
        let limits = self.limits;
        let metrics_enabled = self.metrics.is_some();
        let api = listeners::api(
            self.api,
            self.service,
            health::service(&api_health),
            &limits,
            metrics_enabled,
            drained,
        )?;
        let ext_authz = async move {
            let Some((listener, health)) = ext_authz else {
                return Ok(());
            };
            let health = health::service(&health);
            listeners::ext_authz(listener, health, &limits, metrics_enabled, stop_rx).await
        };
        // Scrapable until the server stops, shutdown included.
        background.extend(self.metrics.map(MetricsListener::serve));
        background.extend(self.webhook.map(WebhookListener::serve));
        let grace = self.shutdown_grace;
        let grace_over = async move {
            if grace_starts.await.is_err() {
                return std::future::pending().await;
            }
            tokio::time::sleep(grace).await;
        };
        tokio::select! {
            (api, ext_authz) = async { tokio::join!(api, ext_authz) } => {
                for (listener, result) in [("gRPC", api), ("ext_authz", ext_authz)] {
                    if let Err(error) = result {
                        tracing::error!(%error, listener, "server stopped with an error");
                    }
                }
            }
            () = grace_over => {
                tracing::warn!(grace = ?grace, "shutdown grace period over; stopping with calls still in flight");
            }
        }
        for task in background {
            task.abort();
        }
        tracing::info!("usermeta stopped");
        Ok(())
    }
}

/// The fleet's request budget toward ZITADEL in Redis, when one is set (settings refuse one without Redis).
fn fleet_budget(
    fleet: Option<fleet::FleetBudgetConfig>,
    redis: Option<&RedisConfig>,
    zitadel: &usermeta_zitadel::ZitadelConfig,
) -> Result<Option<usermeta_zitadel::fleet_budget::FleetBudget>, StartError> {
    let (Some(fleet), Some(redis)) = (fleet, redis) else {
        return Ok(None);
    };
    let store = fleet::RedisBudget::new(redis, &zitadel.base_url)?;
    tracing::info!(
        rate = fleet.budget.rate,
        burst = fleet.budget.burst,
        fallback_rate = fleet.fallback.rate,
        "requests to ZITADEL counted against the fleet's budget in Redis ({})",
        names::UPSTREAM_FLEET_RATE_LIMIT
    );
    Ok(Some(usermeta_zitadel::fleet_budget::FleetBudget {
        budget: fleet.budget,
        fallback: fleet.fallback,
        store,
    }))
}

/// The feed of users' changes: this replica's own, and the other replicas' through Redis when configured.
fn changes(
    caches: Caches,
    org_cache: Arc<crate::org_cache::OrgCache>,
    limits: WatchLimits,
    redis: Option<RedisConfig>,
    bus_secret: &[u8],
) -> Result<Changes, StartError> {
    let changes = Changes::local(caches, limits).with_org_cache(org_cache);
    let Some(mut redis) = redis else {
        return Ok(changes);
    };
    let key = match redis.bus_key.take() {
        Some(key) => {
            tracing::info!(
                keys = key.len(),
                "fleet messages on Redis sealed with the key of {}",
                names::REDIS_BUS_KEY_FILE
            );
            key
        }
        None => {
            tracing::info!(
                "fleet messages on Redis sealed with a key derived from the service credential (every replica needs the same credential, or {})",
                names::REDIS_BUS_KEY_FILE
            );
            BusKey::from_secret(bus_secret)
        }
    };
    Ok(changes.with_redis(redis, key)?)
}

/// The fleet's per-user write locks as `serve` takes them (through Redis when `config` names it, with the same
/// bus key), for a tool that writes beside the replicas (`usermeta reseal`): its writes then never land between
/// a replica's read and write. Takes the Redis settings out of `config`.
pub fn write_locks(config: &mut Config) -> Result<Arc<WriteLocks>, StartError> {
    let bus_secret = config
        .zitadel
        .service_credential
        .derive_secret(fleet::BUS_KEY_PURPOSE);
    // Only the locks are used: nothing is cached, and no stream is served.
    let cache = Arc::new(CallerCache::new(config.cache));
    let org_cache = Arc::new(crate::org_cache::OrgCache::new(config.org_cache));
    let changes = changes(
        Caches::callers_only(cache),
        org_cache,
        config.limits.watch,
        config.options.redis.take(),
        &bus_secret,
    )?;
    Ok(Arc::new(match changes.shared() {
        Some(shared) => shared.write_locks(config.options.write_locks),
        None => WriteLocks::local(config.options.write_locks),
    }))
}

/// Checks the ext_authz configuration against the policy, loads its TLS and binds its listener.
async fn ext_authz_listener(
    ext: ExtAuthz,
    shared: authz::check::Shared,
) -> Result<ExtAuthzListener, StartError> {
    checks::check_ext_authz_headers(&ext.config, &shared.policy)?;
    let tls = ext
        .tls
        .as_ref()
        .map(|files| files.load_checked(&TlsSettings::EXT_AUTHZ))
        .transpose()?;
    let grpc = GrpcListener::bind(ext.listen, tls).await?;
    Ok(ExtAuthzListener {
        grpc,
        service: AuthzService::new(shared, Arc::new(ext.config)),
    })
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
