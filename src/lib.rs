//! usermeta: one gRPC contract over ZITADEL user metadata.
//!
//! # Layout
//!
//! A request reads top to bottom, and modules import only downward (CI checks it:
//! `scripts/check-module-cycles.sh`). The crates enforce the rest: the ZITADEL client
//! (`crates/usermeta-zitadel`) cannot reach the service, and the stand-in (`crates/zitadel-standin`) is only a
//! dependency of `usermeta dev` and of the tests.
//!
//! | layer | modules | what lives there |
//! |---|---|---|
//! | configuration | [`settings`], [`config_file`] | flags with environment twins and the `--config` file, validated once at start-up; the names of settings ([`settings::names`]) are a leaf that any layer may name in its messages |
//! | composition | [`serve`], [`server`], [`instrumentation`], `dev` | the listeners, TLS ([`tls`]), health, reflection, shutdown; the ZITADEL client's calls as spans and metrics; `dev` (the default-on `dev` feature) runs usermeta against the `zitadel-standin` crate |
//! | the surfaces | [`api`], [`authz`] | the `UserMetadataService`, one handler file per RPC, with request validation, page tokens and the one error → status mapping ([`api::ApiError`]); Envoy's `Check` on its own listener |
//! | the door | [`admission`] | what every call of both surfaces passes, through one [`admission::Admission`]: the bearer token and the per-caller rate limit, then, for a call that waits on ZITADEL, the in-flight limits and the deadline |
//! | the fleet | [`fleet`] | replicas telling each other which users and organisations they changed (Redis pub/sub), ZITADEL's change events (the webhook), the feed of WatchMetadata streams; so their caches agree; the per-user write locks of conditional writes and merge patches ([`fleet::WriteLocks`], across replicas through Redis); the fleet's one request budget toward ZITADEL ([`fleet::RedisBudget`]) |
//! | who and what | [`caller`], [`listings`], [`policy`], [`org_cache`] | the bearer token and who ZITADEL says it is (introspection, JWT validation or userinfo), the caller cache ([`caller::cache`]); users' listings read with the service credential, from memory while fresh; who may do what, per key; organisations' metadata remembered |
//! | leaves | [`metrics`], [`telemetry`], [`http1`] | Prometheus series; logs, traces and request ids, knowing nothing of ZITADEL or settings; plain HTTP/1.1 listeners (metrics, ZITADEL's events) |
//! | ZITADEL (crate [`usermeta_zitadel`]) | its own crate below the service | every HTTP call through one transport (deadline, retries, retry budget, circuit breakers: [`usermeta_zitadel::resilience`]; the request budget toward ZITADEL: [`usermeta_zitadel::budget`]), userinfo, the auth API, the management API behind [`usermeta_zitadel::management::ManagementApi`], introspection and keys ([`usermeta_zitadel::Zitadel::introspect`]), the service credential and its token source, error bodies ([`usermeta_zitadel::UpstreamError`]), the metadata domain types ([`usermeta_zitadel::metadata`]); hooks for the service's telemetry ([`usermeta_zitadel::Instrument`]) |
//!
//! A call: [`admission`] reads its token and counts it against the caller's rate limit, [`api`] validates the
//! request, [`caller`] identifies the token (from the cache when it can), [`policy`] decides on every key
//! before any management call, [`usermeta_zitadel`] sends exactly what the policy checked, and the answer (or
//! the error, through [`api::ApiError`]) goes back. [`healthcheck`] is the container's probe binary mode.
#![forbid(unsafe_code)]

pub mod admission;
pub mod api;
pub mod authz;
pub mod caller;
pub mod config_file;
#[cfg(feature = "dev")]
pub mod dev;
pub mod fleet;
pub mod healthcheck;
pub mod http1;
pub mod instrumentation;
pub mod listings;
pub mod metrics;
pub mod org_cache;
pub mod policy;
pub mod reseal;
pub mod sealing;
pub mod server;
pub mod settings;
pub mod telemetry;
pub mod tls;

use server::{Application, Config, ServeOptions};
use settings::{ServeArgs, SettingsError};
use usermeta_zitadel::ZitadelConfig;

/// Why usermeta stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A setting is missing or wrong.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// The server could not start.
    #[error(transparent)]
    Start(#[from] server::StartError),
    /// `usermeta reseal` stopped, or some users failed.
    #[error("re-sealing: {0}")]
    Reseal(String),
    /// `usermeta dev` could not start its ZITADEL stand-in.
    #[cfg(feature = "dev")]
    #[error("the ZITADEL stand-in could not start: {0}")]
    StandIn(std::io::Error),
}

/// Validates the `serve` settings into the server's configuration.
pub fn serve_config(args: ServeArgs) -> Result<Config, RunError> {
    let project_id = args.access.project_id()?;
    let ext_authz = args.ext_authz.served()?;
    if let Some(rule) = ext_authz
        .as_ref()
        .and_then(|served| served.config.first_role_rule())
        && project_id.is_none()
    {
        return Err(SettingsError::Invalid {
            setting: settings::PROJECT_ID.to_string(),
            problem: format!(
                "not set, but ext_authz rule {} requires a role; set it to usermeta's ZITADEL project id, whose roles the rules mean (roles of other projects never count)",
                rule.origin
            ),
        }
        .into());
    }
    let options = ServeOptions {
        metrics_listen: args.ops.metrics_listen,
        shutdown_grace: args.ops.shutdown_grace,
        tls: args.ops.tls.grpc().map_err(server::StartError::from)?,
        zitadel_roots: args
            .ops
            .tls
            .zitadel_roots()
            .map_err(server::StartError::from)?,
        ext_authz,
        redis: args.fleet.redis()?,
        webhook: args.fleet.webhook()?,
        write_locks: args.fleet.write_locks(),
        upstream_fleet: args.fleet.upstream_fleet(
            args.zitadel.upstream_reserve,
            args.zitadel.upstream_caller_share,
        ),
    };
    let base_url = settings::zitadel_url(&args.zitadel_url)?;
    let policy = args.access.sealed_policy(&base_url)?;
    Ok(Config {
        listen: args.listen,
        zitadel: ZitadelConfig {
            base_url,
            timeout: args.zitadel.upstream_timeout,
            service_credential: args.credential.credential()?,
            resilience: args.zitadel.resilience(),
            http2: args.zitadel.zitadel_http2,
            project_id,
            management_api: args.zitadel.zitadel_api,
            read_your_writes: args.zitadel.read_your_writes,
            upstream_budget: args.zitadel.upstream_budget(),
            fleet_budget: None,
            setting_names: settings::names::ZITADEL_CLIENT,
        },
        policy,
        cache: args.cache.config(),
        org_cache: args.cache.org_config(),
        metadata_cache_bytes: args.cache.metadata_cache_bytes,
        limits: args.limits.limits(),
        identity: args.access.identity()?,
        options,
    })
}

/// `usermeta serve`: serve until SIGINT or SIGTERM.
pub async fn serve(args: ServeArgs) -> Result<(), RunError> {
    let app = Application::build(serve_config(args)?).await?;
    app.run_until(server::shutdown_signal()).await?;
    Ok(())
}
