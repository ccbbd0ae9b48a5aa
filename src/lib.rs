//! usermeta: one gRPC contract over ZITADEL user metadata.
//!
//! A request enters through [`api`] (the tonic service, request validation and the one mapping of errors to
//! gRPC statuses), learns who is calling from [`caller`] (introspection, local JWT validation or userinfo),
//! is checked against the per-key rules of [`policy`], and reaches ZITADEL through
//! [`zitadel`] (userinfo and the auth API with the caller's token, the management API with the service
//! credential: a PAT, or a key or client secret exchanged for tokens kept fresh by `zitadel::token_source`). [`server`] binds and serves it with health and reflection; `dev` (the default-on `dev`
//! feature) runs it against the in-process ZITADEL stand-in of the `zitadel-standin` crate, which the tests
//! use too. [`authz`] optionally serves Envoy's external authorization
//! API on the same port, injecting allow-listed metadata as upstream headers.
#![forbid(unsafe_code)]

pub mod api;
pub mod authz;
pub mod caller;
pub mod config_file;
#[cfg(feature = "dev")]
pub mod dev;
pub mod healthcheck;
pub mod metadata;
pub mod metrics;
pub mod policy;
pub mod server;
pub mod settings;
pub mod telemetry;
pub mod tls;
pub mod zitadel;

use server::{Application, Config};
use settings::{ServeArgs, SettingsError};
use zitadel::ZitadelConfig;

/// Why usermeta stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    Start(#[from] server::StartError),
    #[cfg(feature = "dev")]
    #[error("the ZITADEL stand-in could not start: {0}")]
    StandIn(std::io::Error),
}

/// Validates the `serve` settings into a server configuration.
pub fn serve_config(args: ServeArgs) -> Result<Config, SettingsError> {
    Ok(Config {
        listen: args.listen,
        zitadel: ZitadelConfig {
            base_url: settings::zitadel_url(&args.zitadel_url)?,
            timeout: args.common.upstream_timeout,
            service_credential: args.credential.credential()?,
            resilience: args.common.resilience(),
            http2: args.common.zitadel_http2,
            project_id: args.access.project_id()?,
        },
        policy: args.access.policy(&args.common)?,
        cache: args.common.cache_config(),
        limits: args.common.limits(),
        identity: args.access.identity()?,
    })
}

/// `usermeta serve`: serve until SIGINT or SIGTERM.
pub async fn serve(args: ServeArgs) -> Result<(), RunError> {
    let ext_authz = args.ext_authz.served()?;
    if let Some(rule) = ext_authz
        .as_ref()
        .and_then(|served| served.config.first_role_rule())
        && args.access.project_id()?.is_none()
    {
        return Err(SettingsError::Invalid {
            setting: settings::PROJECT_ID,
            problem: format!(
                "not set, but ext_authz rule {} requires a role; set it to usermeta's ZITADEL project id, whose roles the rules mean (roles of other projects never count)",
                rule.origin
            ),
        }
        .into());
    }
    let mut options = args.ops.serve_options().map_err(server::StartError::from)?;
    options.ext_authz = ext_authz;
    let app = Application::build_with(serve_config(args)?, options).await?;
    app.run_until(server::shutdown_signal()).await?;
    Ok(())
}
