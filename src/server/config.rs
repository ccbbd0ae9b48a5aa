//! What the server is built from: [`Config`], validated, with its [`Limits`] and [`ServeOptions`].

use std::{net::SocketAddr, time::Duration};

use crate::{
    admission::Shed,
    api::RequestLimits,
    authz::ExtAuthz,
    caller::{IdentityConfig, cache::CacheConfig},
    fleet::{FleetBudgetConfig, RedisConfig, WatchLimits, WriteLockConfig, webhook::WebhookConfig},
    policy::Policy,
    settings::names,
    tls::TlsFiles,
};
use usermeta_zitadel::ZitadelConfig;

/// Everything the server needs, validated: the one configuration `serve` (from settings), `dev` and the
/// tests build, as [`Config::new`]'s defaults plus what they override.
#[derive(Debug)]
pub struct Config {
    /// Where the gRPC API listens; port 0 picks a free one
    /// ([`Application::local_addr`](super::Application::local_addr) says which).
    pub listen: SocketAddr,
    /// The ZITADEL instance and how usermeta calls it.
    pub zitadel: ZitadelConfig,
    /// Who may do what, per key.
    pub policy: Policy,
    /// The caller cache: its size and how long it keeps an answer.
    pub cache: CacheConfig,
    /// Organisations' metadata remembered: how many and for how long.
    pub org_cache: crate::org_cache::OrgCacheConfig,
    /// Most bytes of users' listings kept in memory ([`crate::listings`]; they live `cache.ttl`); 0: none.
    pub metadata_cache_bytes: u64,
    /// The rate limit, the in-flight limits, deadlines and stream limits.
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
            zitadel: ZitadelConfig {
                setting_names: names::ZITADEL_CLIENT,
                ..ZitadelConfig::new(zitadel_url, service_credential)
            },
            policy: Policy::default(),
            cache: CacheConfig::default(),
            org_cache: crate::org_cache::OrgCacheConfig::default(),
            metadata_cache_bytes: crate::listings::DEFAULT_MAX_BYTES,
            limits: Limits::default(),
            identity: IdentityConfig::default(),
            options: ServeOptions::default(),
        }
    }
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
    pub watch: WatchLimits,
}

impl Limits {
    /// The in-flight limits these call for, shared by every listener.
    pub(super) fn shed(&self) -> Shed {
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
            watch: WatchLimits::default(),
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
    pub redis: Option<RedisConfig>,
    /// ZITADEL's event webhook; `None` serves none.
    pub webhook: Option<WebhookConfig>,
    /// How conditional writes and merge patches are serialised (across the fleet through `redis`).
    pub write_locks: WriteLockConfig,
    /// One request budget toward ZITADEL for every replica on `redis` (it needs `redis`); `None`: each
    /// replica keeps to its own ([`ZitadelConfig::upstream_budget`]).
    pub upstream_fleet: Option<FleetBudgetConfig>,
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
            write_locks: WriteLockConfig::default(),
            upstream_fleet: None,
        }
    }
}
