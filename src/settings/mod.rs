//! The command line and its settings. Every setting is a flag with an environment twin; start-up validates
//! them once and names the setting in every error.
//!
//! One module per concern, each owning its flags, their parsing and their validation into the typed
//! configuration of the layer that uses them: [`zitadel`] (the instance and the connection to it),
//! [`credential`] (the service user), [`access`] (who callers are and what they may do), [`cache`] (the caller
//! cache), [`limits`], [`ops`] (metrics, shutdown), [`tls`], [`fleet`] (Redis, ZITADEL's events), [`ext_authz`]
//! (Envoy's Check). This module assembles them into the subcommands' arguments.
// Doc comments of settings are `--help` texts, where a URL reads best bare.
#![allow(rustdoc::bare_urls)]

use std::{fmt, net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

pub mod access;
pub mod cache;
pub mod credential;
pub mod ext_authz;
pub mod fleet;
pub mod limits;
pub mod names;
pub mod ops;
pub mod reference;
mod secret;
mod setting;
pub mod tls;
pub mod zitadel;

pub use access::{AccessArgs, PROJECT_ID};
pub use cache::CacheArgs;
pub use credential::CredentialArgs;
pub use fleet::FleetArgs;
pub use limits::LimitArgs;
pub use ops::OpsArgs;
pub use setting::Setting;
pub use tls::TlsArgs;
pub use zitadel::{ZitadelArgs, zitadel_url};

/// usermeta: one gRPC contract for reading and writing ZITADEL user metadata.
#[derive(Debug, Parser)]
#[command(name = "usermeta", version, about, long_about = None)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
    /// Log format. The level comes from RUST_LOG (default `info`), e.g. RUST_LOG=usermeta=debug.
    #[arg(long, env = "USERMETA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// TOML file with settings of `serve`: keys are the flag names in snake_case (`zitadel_url = "..."`,
    /// `admins = ["..."]`). Environment variables and flags override it.
    #[arg(long, env = names::CONFIG, global = true)]
    pub config: Option<PathBuf>,
}

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line.
    Json,
}

impl From<LogFormat> for crate::telemetry::LogFormat {
    fn from(format: LogFormat) -> Self {
        match format {
            LogFormat::Text => crate::telemetry::LogFormat::Text,
            LogFormat::Json => crate::telemetry::LogFormat::Json,
        }
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the gRPC API against a ZITADEL instance.
    Serve(Box<ServeArgs>),
    /// Start an embedded ZITADEL stand-in with demo data and serve against it (for trying usermeta out).
    #[cfg(feature = "dev")]
    Dev(DevArgs),
    /// Re-seal the values of sealed keys under the newest key of USERMETA_SEALING_KEYS_FILE, with `serve`'s
    /// settings (run it after adding a key; run it again to resume).
    Reseal(ResealArgs),
    /// Ask a running usermeta for its gRPC health; exit 0 when SERVING, 1 otherwise (for container health checks).
    Healthcheck(HealthcheckArgs),
    /// Print the configuration reference (markdown) generated from these settings: the book's chapter.
    #[command(hide = true)]
    ConfigReference,
}

/// Settings of `usermeta serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address the gRPC server listens on.
    #[arg(long, env = names::LISTEN, default_value = "0.0.0.0:50051")]
    pub listen: SocketAddr,
    /// URL of the ZITADEL instance (its issuer), e.g. https://my-instance.zitadel.cloud.
    #[arg(long, env = names::ZITADEL_URL)]
    pub zitadel_url: String,
    /// The service credential usermeta calls the management API with.
    #[command(flatten)]
    pub credential: CredentialArgs,
    /// Who may do what, and how callers are identified.
    #[command(flatten)]
    pub access: AccessArgs,
    /// How usermeta calls ZITADEL: timeouts, retries, breakers, HTTP/2, the management API.
    #[command(flatten, next_help_heading = "ZITADEL connection")]
    pub zitadel: ZitadelArgs,
    /// The caller cache.
    #[command(flatten, next_help_heading = "Caller cache")]
    pub cache: CacheArgs,
    /// Rate limit, in-flight limits, deadlines and stream limits.
    #[command(flatten, next_help_heading = "Limits")]
    pub limits: LimitArgs,
    /// Metrics, TLS and shutdown.
    #[command(flatten, next_help_heading = "Operations")]
    pub ops: OpsArgs,
    /// Replicas that share invalidations (Redis) and ZITADEL's events (the webhook).
    #[command(flatten, next_help_heading = "Fleet")]
    pub fleet: FleetArgs,
    /// Envoy's Check on its own listener.
    #[command(flatten, next_help_heading = "Envoy external authorization")]
    pub ext_authz: ext_authz::ExtAuthzArgs,
}

/// Settings of `usermeta reseal`: `serve`'s, and what the run may do.
#[derive(Debug, Args)]
pub struct ResealArgs {
    /// `serve`'s settings: the same ZITADEL, service credential, policy and sealing keys as the service.
    #[command(flatten)]
    pub serve: Box<ServeArgs>,
    /// Count what would be re-sealed; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also seal plaintext values found under sealed keys (written around usermeta, or before the key was
    /// declared sealed); without it they are counted and left.
    #[arg(long)]
    pub seal_plaintext: bool,
    /// Stop after writing this many users (spread a large rotation over several runs).
    #[arg(long)]
    pub max_users: Option<u64>,
}

/// Settings of `usermeta dev`.
#[cfg(feature = "dev")]
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Address the gRPC server listens on.
    #[arg(long, env = names::LISTEN, default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Address the ZITADEL stand-in listens on (port 0 picks a free one).
    #[arg(
        long,
        env = "USERMETA_DEV_ZITADEL_LISTEN",
        default_value = "127.0.0.1:0"
    )]
    pub zitadel_listen: SocketAddr,
    /// Key prefixes users may write and delete on themselves (comma-separated).
    #[arg(
        long,
        env = names::SELF_WRITABLE_KEYS,
        value_delimiter = ',',
        default_value = "profile."
    )]
    pub self_writable_keys: Vec<String>,
}

/// Settings of `usermeta healthcheck`.
#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// Address (host:port) of the usermeta to check [default: USERMETA_LISTEN's port on loopback, else
    /// 127.0.0.1:50051].
    #[arg(long, env = "USERMETA_HEALTHCHECK_ADDR")]
    pub addr: Option<String>,
    /// Service to ask about; empty asks about the server as a whole.
    #[arg(long, default_value = "")]
    pub service: String,
    /// How long the whole check may take, e.g. 2s or 500ms.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// A setting is missing or wrong.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// The value of a setting (or the lack of one) cannot be used.
    #[error("{setting}: {problem}")]
    Invalid {
        /// The setting (or settings) at fault, as `USERMETA_X (--x)`.
        setting: String,
        /// What is wrong, and what to set instead.
        problem: String,
    },
}

fn invalid(setting: impl fmt::Display, problem: impl Into<String>) -> SettingsError {
    SettingsError::Invalid {
        setting: setting.to_string(),
        problem: problem.into(),
    }
}

/// Self-writable key prefixes, trimmed. Empty entries are dropped: an empty prefix would make every key
/// self-writable, which nobody means by a stray comma.
pub fn self_writable_prefixes(raw: &[String]) -> Vec<String> {
    clean_list(raw)
}

fn clean_list(raw: &[String]) -> Vec<String> {
    raw.iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_messages_name_is_a_flag_with_an_environment_twin() {
        for named in [
            zitadel::SETTINGS.as_slice(),
            &credential::SETTINGS,
            &access::SETTINGS,
        ]
        .into_iter()
        .flatten()
        .chain(&fleet::SETTINGS)
        .chain(&ext_authz::SETTINGS)
        {
            assert!(setting::is_known(*named), "{named} is no flag");
        }
    }

    /// `usermeta serve` with the least it needs (a ZITADEL URL and a PAT) and `extra` flags, parsed.
    pub(super) fn serve_with(extra: &[&str]) -> Result<ServeArgs, clap::Error> {
        let mut args = vec![
            "usermeta",
            "serve",
            "--zitadel-url",
            "http://x",
            "--service-pat",
            "p",
        ];
        args.extend_from_slice(extra);
        match Cli::try_parse_from(args)?.command {
            Command::Serve(args) => Ok(*args),
            _ => panic!("not serve"),
        }
    }

    /// A scratch directory of this test process.
    pub(super) fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("usermeta-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn the_command_line_is_consistent_and_limits_have_safe_defaults() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
        let args = serve_with(&[]).unwrap();
        assert_eq!(
            args.zitadel.resilience(),
            usermeta_zitadel::Resilience::default()
        );
        assert_eq!(
            args.zitadel.upstream_budget(),
            Some(usermeta_zitadel::UpstreamBudget::default()),
            "a budget sized for ZITADEL Cloud unless told otherwise"
        );
        let limits = args.limits.limits();
        assert_eq!(limits.max_message_bytes, 8 * 1024 * 1024);
        assert_eq!(limits.max_in_flight, 1024);
        assert_eq!(
            limits.max_in_flight_per_caller, None,
            "a caller's share of the in-flight limit is derived from it unless set"
        );
        assert_eq!(
            limits.requests.caller_rate, 0,
            "no per-caller limit unless asked"
        );
        assert!(Cli::try_parse_from(["usermeta", "serve", "--retry-budget", "1.5"]).is_err());
    }

    #[test]
    fn empty_self_writable_prefixes_are_dropped() {
        assert_eq!(
            self_writable_prefixes(&["profile.".into(), " ".into(), "".into()]),
            ["profile."]
        );
        assert!(self_writable_prefixes(&[]).is_empty());
    }
}
