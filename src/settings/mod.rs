//! The command line and its settings. Every setting is a flag with an environment twin; start-up validates
//! them once and names the setting in every error.
// Doc comments of settings are `--help` texts, where a URL reads best bare.
#![allow(rustdoc::bare_urls)]

use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use clap::{Args, Parser, Subcommand, ValueEnum};

pub mod ext_authz;
mod name;
pub mod reference;
pub use name::Setting;
use secrecy::SecretString;
use url::Url;

use crate::{
    api::RequestLimits,
    caller::cache::CacheConfig,
    caller::{ApplicationKey, IdentityConfig, IntrospectionAuth, JwtConfig},
    fleet::WatchLimits,
    policy::Policy,
    server::Limits,
};
use usermeta_zitadel::{
    Http2, Resilience, ServiceCredential, ServiceKey, UpstreamBudget, management::ApiChoice,
};

/// usermeta: one gRPC contract for reading and writing ZITADEL user metadata.
#[derive(Debug, Parser)]
#[command(name = "usermeta", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format. The level comes from RUST_LOG (default `info`), e.g. RUST_LOG=usermeta=debug.
    #[arg(long, env = "USERMETA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
    /// TOML file with settings of `serve`: keys are the flag names in snake_case (`zitadel_url = "..."`,
    /// `admins = ["..."]`). Environment variables and flags override it.
    #[arg(long, env = "USERMETA_CONFIG", global = true)]
    pub config: Option<PathBuf>,
}

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

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the gRPC API against a ZITADEL instance.
    Serve(Box<ServeArgs>),
    /// Start an embedded ZITADEL stand-in with demo data and serve against it (for trying usermeta out).
    #[cfg(feature = "dev")]
    Dev(DevArgs),
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
    #[arg(long, env = "USERMETA_LISTEN", default_value = "0.0.0.0:50051")]
    pub listen: SocketAddr,
    /// URL of the ZITADEL instance (its issuer), e.g. https://my-instance.zitadel.cloud.
    #[arg(long, env = "USERMETA_ZITADEL_URL")]
    pub zitadel_url: String,
    #[command(flatten)]
    pub credential: CredentialArgs,
    #[command(flatten)]
    pub access: AccessArgs,
    #[command(flatten, next_help_heading = "ZITADEL connection")]
    pub zitadel: ZitadelArgs,
    #[command(flatten, next_help_heading = "Caller cache")]
    pub cache: CacheArgs,
    #[command(flatten, next_help_heading = "Limits")]
    pub limits: LimitArgs,
    #[command(flatten, next_help_heading = "Operations")]
    pub ops: OpsArgs,
    #[command(flatten, next_help_heading = "Fleet")]
    pub fleet: FleetArgs,
    #[command(flatten, next_help_heading = "Envoy external authorization")]
    pub ext_authz: ext_authz::ExtAuthzArgs,
}

/// How replicas of one deployment keep their caches in agreement.
#[derive(Debug, Args)]
pub struct FleetArgs {
    /// Redis for shared invalidation between replicas: redis://host:6379[/db] or rediss://host:6380 (TLS). Each
    /// replica publishes the users it changed and drops others' cached answers for them. Off when unset.
    #[arg(long, env = "USERMETA_REDIS_URL")]
    pub redis_url: Option<String>,
    /// File holding the Redis password (AUTH), kept out of the URL and of every log line.
    #[arg(long, env = "USERMETA_REDIS_PASSWORD_FILE", requires = "redis_url")]
    pub redis_password_file: Option<PathBuf>,
    /// File holding the key replicas seal their Redis messages with: a random secret of at least 32 characters,
    /// the same on every replica (one per line while rotating; the first signs). Unset: derived from the
    /// service credential, which every replica holds alike.
    #[arg(long, env = "USERMETA_REDIS_BUS_KEY_FILE", requires = "redis_url")]
    pub redis_bus_key_file: Option<PathBuf>,
    /// Address of the listener for ZITADEL's Actions v2 events (POST /zitadel/events), e.g. 0.0.0.0:8090.
    /// Keep it inside the cluster. Off when unset.
    #[arg(
        long,
        env = "USERMETA_WEBHOOK_LISTEN",
        requires = "webhook_signing_key_file"
    )]
    pub webhook_listen: Option<SocketAddr>,
    /// File holding the event target's signing key (the signingKey ZITADEL returned for the target); one
    /// key per line while rotating.
    #[arg(
        long,
        env = "USERMETA_WEBHOOK_SIGNING_KEY_FILE",
        requires = "webhook_listen"
    )]
    pub webhook_signing_key_file: Option<PathBuf>,
    /// Connections the webhook serves at once; one more is answered 503 at once (ZITADEL holds a few).
    #[arg(long, env = "USERMETA_WEBHOOK_MAX_CONNECTIONS", default_value_t = WEBHOOK_DEFAULTS.max_connections as u32, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub webhook_max_connections: u32,
    /// Event body bytes the webhook buffers at once over all its requests (at least 1048576: one event with
    /// ZITADEL's largest value); a body whose declared length does not fit in what is left is answered 503
    /// unread.
    #[arg(long, env = "USERMETA_WEBHOOK_MAX_BUFFERED_BYTES", default_value_t = WEBHOOK_DEFAULTS.max_buffered_bytes as u64, value_parser = clap::value_parser!(u64).range(crate::fleet::webhook::MAX_BODY_BYTES as u64..=1 << 32))]
    pub webhook_max_buffered_bytes: u64,
    /// How long a client may take to send an event's body once its headers are in (100ms to 60s); a slower
    /// one is answered 408. ZITADEL sends a body at once: raise it only for a slow link.
    #[arg(long, env = "USERMETA_WEBHOOK_BODY_TIMEOUT", default_value = "2s", value_parser = webhook_body_timeout)]
    pub webhook_body_timeout: Duration,
}

/// The webhook's limits when no setting says otherwise.
const WEBHOOK_DEFAULTS: crate::fleet::webhook::WebhookLimits =
    crate::fleet::webhook::WebhookLimits::DEFAULT;

impl Default for FleetArgs {
    /// Nothing on, the limits at their defaults (as the command line without fleet flags).
    fn default() -> Self {
        FleetArgs {
            redis_url: None,
            redis_password_file: None,
            redis_bus_key_file: None,
            webhook_listen: None,
            webhook_signing_key_file: None,
            webhook_max_connections: WEBHOOK_DEFAULTS.max_connections as u32,
            webhook_max_buffered_bytes: WEBHOOK_DEFAULTS.max_buffered_bytes as u64,
            webhook_body_timeout: WEBHOOK_DEFAULTS.body_timeout,
        }
    }
}

fn webhook_body_timeout(raw: &str) -> Result<Duration, String> {
    let timeout = humantime::parse_duration(raw).map_err(|e| e.to_string())?;
    if (Duration::from_millis(100)..=Duration::from_secs(60)).contains(&timeout) {
        Ok(timeout)
    } else {
        Err("must be between 100ms and 60s".to_owned())
    }
}

const REDIS_URL: Setting = Setting::new("redis_url");
const REDIS_PASSWORD_FILE: Setting = Setting::new("redis_password_file");
const REDIS_BUS_KEY_FILE: Setting = Setting::new("redis_bus_key_file");
const WEBHOOK_SIGNING_KEY_FILE: Setting = Setting::new("webhook_signing_key_file");

impl FleetArgs {
    /// The Redis link, reading the password file; `None` when no Redis is configured.
    pub fn redis(&self) -> Result<Option<crate::fleet::RedisConfig>, SettingsError> {
        let Some(url) = &self.redis_url else {
            return Ok(None);
        };
        let parsed = url::Url::parse(url).map_err(|e| {
            invalid(
                REDIS_URL,
                format!("is not a URL ({e}); use redis://host:6379 or rediss://host:6380"),
            )
        })?;
        if !matches!(parsed.scheme(), "redis" | "rediss") || parsed.host_str().is_none() {
            return Err(invalid(
                REDIS_URL,
                "must be redis://host:port or rediss://host:port (TLS)",
            ));
        }
        if parsed.password().is_some() {
            return Err(invalid(
                REDIS_URL,
                "holds a password; put it in a file named by USERMETA_REDIS_PASSWORD_FILE (--redis-password-file) instead, so it never shows in the environment or a log",
            ));
        }
        let password = match &self.redis_password_file {
            None => None,
            Some(path) => {
                let text = read_secret_file(REDIS_PASSWORD_FILE, path)?;
                let password = text.trim();
                if password.is_empty() {
                    return Err(invalid(REDIS_PASSWORD_FILE, "the password file is empty"));
                }
                Some(password.to_owned())
            }
        };
        let bus_key = match &self.redis_bus_key_file {
            None => None,
            Some(path) => Some(
                crate::fleet::BusKey::from_text(&read_secret_file(REDIS_BUS_KEY_FILE, path)?)
                    .map_err(|e| invalid(REDIS_BUS_KEY_FILE, format!("{} {e}", path.display())))?,
            ),
        };
        Ok(Some(crate::fleet::RedisConfig {
            url: url.clone(),
            password,
            bus_key,
        }))
    }

    /// ZITADEL's event webhook, reading the signing keys; `None` when it is off.
    pub fn webhook(&self) -> Result<Option<crate::fleet::webhook::WebhookConfig>, SettingsError> {
        let (Some(listen), Some(path)) = (self.webhook_listen, &self.webhook_signing_key_file)
        else {
            return Ok(None);
        };
        let text = read_secret_file(WEBHOOK_SIGNING_KEY_FILE, path)?;
        let keys = crate::fleet::webhook::SigningKeys::from_text(&text)
            .map_err(|e| invalid(WEBHOOK_SIGNING_KEY_FILE, format!("{} {e}", path.display())))?;
        Ok(Some(crate::fleet::webhook::WebhookConfig {
            listen,
            keys,
            limits: crate::fleet::webhook::WebhookLimits {
                max_connections: self.webhook_max_connections as usize,
                max_buffered_bytes: usize::try_from(self.webhook_max_buffered_bytes)
                    .unwrap_or(usize::MAX),
                body_timeout: self.webhook_body_timeout,
            },
        }))
    }
}

/// Operational settings of `serve`: metrics, shutdown, TLS.
#[derive(Debug, Default, Args)]
pub struct OpsArgs {
    /// Address serving Prometheus metrics at /metrics, e.g. 0.0.0.0:9090; metrics are off when unset.
    #[arg(long, env = "USERMETA_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// How long in-flight calls may take to finish after SIGTERM/SIGINT before usermeta exits anyway.
    #[arg(long, env = "USERMETA_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
    /// PEM certificate chain for TLS on the gRPC port (with --tls-key-file); plaintext when unset.
    #[arg(long, env = "USERMETA_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of the TLS certificate.
    #[arg(long, env = "USERMETA_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,
    /// PEM CA certificates: when set, clients must present a certificate signed by one of them (mTLS).
    #[arg(long, env = "USERMETA_TLS_CLIENT_CA_FILE", requires = "tls_cert_file")]
    pub tls_client_ca_file: Option<PathBuf>,
    /// PEM CA certificates trusted toward ZITADEL beside the system's (a privately-signed deployment).
    #[arg(long, env = "USERMETA_ZITADEL_CA_FILE")]
    pub zitadel_ca_file: Option<PathBuf>,
}

/// Who callers are (introspection, local JWT validation, or userinfo) and what they may do (the policy).
#[derive(Debug, Default, Args)]
pub struct AccessArgs {
    /// TOML file of authorisation rules and key declarations; without it, users may read their own metadata
    /// and only USERMETA_ADMINS / USERMETA_SELF_WRITABLE_KEYS grant more.
    #[arg(long, env = "USERMETA_POLICY_FILE")]
    pub policy_file: Option<PathBuf>,
    /// Client id of usermeta's ZITADEL API application, to introspect callers' tokens (with a client secret).
    #[arg(long, env = "USERMETA_INTROSPECTION_CLIENT_ID")]
    pub introspection_client_id: Option<String>,
    /// Client secret of that API application (prefer the _FILE form: flags show up in `ps`).
    #[arg(long, env = "USERMETA_INTROSPECTION_SECRET", hide_env_values = true)]
    pub introspection_secret: Option<String>,
    /// File holding that API application's client secret.
    #[arg(long, env = "USERMETA_INTROSPECTION_SECRET_FILE")]
    pub introspection_secret_file: Option<PathBuf>,
    /// Key file of usermeta's API application (private_key_jwt): {"type":"application",...}.
    #[arg(long, env = "USERMETA_INTROSPECTION_KEY_FILE")]
    pub introspection_key_file: Option<PathBuf>,
    /// Validate JWT access tokens locally against ZITADEL's keys; the accepted audiences (usermeta's project
    /// id or client id, comma-separated).
    #[arg(long, env = "USERMETA_JWT_AUDIENCE", value_delimiter = ',')]
    pub jwt_audience: Vec<String>,
    /// Shortest time between two fetches of ZITADEL's keys caused by an unknown key id.
    #[arg(long, env = "USERMETA_JWKS_MIN_REFRESH", default_value = "30s", value_parser = humantime::parse_duration)]
    pub jwks_min_refresh: Duration,
    /// usermeta's ZITADEL project id: only the roles ZITADEL asserts for this project (the claim
    /// `urn:zitadel:iam:org:project:{id}:roles`) are callers' roles. Required when a policy or ext_authz rule
    /// names roles.
    #[arg(long, env = "USERMETA_PROJECT_ID")]
    pub project_id: Option<String>,
    /// ZITADEL user ids allowed to read other users and to write or delete any user's metadata (comma-separated).
    #[arg(long, env = "USERMETA_ADMINS", value_delimiter = ',')]
    pub admins: Vec<String>,
    /// Key prefixes users may write and delete on themselves (comma-separated); none by default.
    #[arg(long, env = "USERMETA_SELF_WRITABLE_KEYS", value_delimiter = ',')]
    pub self_writable_keys: Vec<String>,
}

const INTROSPECTION_ID: Setting = Setting::new("introspection_client_id");
const INTROSPECTION_SECRET: Setting = Setting::new("introspection_secret");
const INTROSPECTION_SECRET_FILE: Setting = Setting::new("introspection_secret_file");
const INTROSPECTION_KEY_FILE: Setting = Setting::new("introspection_key_file");
const POLICY_FILE: Setting = Setting::new("policy_file");
/// The setting that names usermeta's project, for messages of rules that need it.
pub const PROJECT_ID: Setting = Setting::new("project_id");

impl AccessArgs {
    /// How callers are identified. Secrets and keys are named by setting and file, never shown.
    pub fn identity(&self) -> Result<IdentityConfig, SettingsError> {
        let audience = clean_list(&self.jwt_audience);
        let jwt = (!audience.is_empty()).then_some(JwtConfig {
            audience,
            min_refresh_interval: self.jwks_min_refresh,
        });
        Ok(IdentityConfig {
            introspection: self.introspection()?,
            jwt,
        })
    }

    fn introspection(&self) -> Result<Option<IntrospectionAuth>, SettingsError> {
        let client_id = self
            .introspection_client_id
            .as_deref()
            .map(str::trim)
            .filter(|id| !id.is_empty());
        let secret = match (&self.introspection_secret, &self.introspection_secret_file) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    INTROSPECTION_SECRET,
                    "both USERMETA_INTROSPECTION_SECRET and USERMETA_INTROSPECTION_SECRET_FILE are set; set exactly one",
                ));
            }
            (Some(secret), None) => Some(secret_from(INTROSPECTION_SECRET, secret)?),
            (None, Some(path)) => Some(secret_from(
                INTROSPECTION_SECRET_FILE,
                &read_secret_file(INTROSPECTION_SECRET_FILE, path)?,
            )?),
            (None, None) => None,
        };
        match (client_id, secret, &self.introspection_key_file) {
            (None, None, None) => Ok(None),
            (_, Some(_), Some(_)) => Err(invalid(
                INTROSPECTION_KEY_FILE,
                "both a client secret and a key file are set for introspection; set exactly one",
            )),
            (Some(client_id), Some(secret), None) => Ok(Some(IntrospectionAuth::ClientSecret {
                client_id: client_id.to_owned(),
                secret,
            })),
            (None, Some(_), None) => Err(invalid(
                INTROSPECTION_ID,
                "not set, but an introspection secret is: set the API application's client id",
            )),
            (Some(_), None, None) => Err(invalid(
                INTROSPECTION_SECRET,
                "not set, but USERMETA_INTROSPECTION_CLIENT_ID is: set the API application's client secret (or USERMETA_INTROSPECTION_SECRET_FILE), or its key file (USERMETA_INTROSPECTION_KEY_FILE)",
            )),
            (client_id, None, Some(path)) => {
                let text = std::fs::read(path).map_err(|e| {
                    invalid(
                        INTROSPECTION_KEY_FILE,
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                let key = ApplicationKey::from_json(&text).map_err(|e| {
                    invalid(INTROSPECTION_KEY_FILE, format!("{} {e}", path.display()))
                })?;
                if let Some(id) = client_id
                    && id != key.client_id()
                {
                    return Err(invalid(
                        INTROSPECTION_ID,
                        format!(
                            "is {id}, but the key file {} belongs to client {}",
                            path.display(),
                            key.client_id()
                        ),
                    ));
                }
                Ok(Some(IntrospectionAuth::PrivateKeyJwt(key)))
            }
        }
    }

    /// usermeta's project id, trimmed; `None` when unset.
    pub fn project_id(&self) -> Result<Option<String>, SettingsError> {
        let Some(id) = self.project_id.as_deref().map(str::trim) else {
            return Ok(None);
        };
        if id.is_empty()
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
        {
            return Err(invalid(
                PROJECT_ID,
                format!(
                    "`{id}` is not a ZITADEL project id (letters, digits, `-`, `_`); copy it from the project's page in ZITADEL Console"
                ),
            ));
        }
        Ok(Some(id.to_owned()))
    }

    /// The policy file (when set) plus the shorthand rules. A rule that names roles needs
    /// USERMETA_PROJECT_ID: roles mean nothing without the project that defines them.
    pub fn policy(&self) -> Result<Policy, SettingsError> {
        let policy = match &self.policy_file {
            Some(path) => Policy::load(path).map_err(|e| invalid(POLICY_FILE, e.to_string()))?,
            None => Policy::default(),
        };
        if self.project_id()?.is_none()
            && let Some(rule) = policy
                .rules()
                .iter()
                .find(|rule| !rule.who.roles.is_empty())
        {
            return Err(invalid(
                PROJECT_ID,
                format!(
                    "not set, but rule `{}` of USERMETA_POLICY_FILE names roles; set it to usermeta's ZITADEL project id, whose roles the rules mean (roles of other projects never count)",
                    rule.name
                ),
            ));
        }
        Ok(policy.with_shorthands(
            clean_list(&self.admins),
            self_writable_prefixes(&self.self_writable_keys),
        ))
    }
}

/// The service user's credential toward the management API: exactly one kind of these (a PAT, a JWT-profile
/// key file, or client credentials).
#[derive(Debug, Default, Args)]
pub struct CredentialArgs {
    /// Personal access token of the ZITADEL service user (prefer the _FILE form: flags show up in `ps`).
    #[arg(long, env = "USERMETA_SERVICE_PAT", hide_env_values = true)]
    pub service_pat: Option<String>,
    /// File holding the service user's personal access token.
    #[arg(long, env = "USERMETA_SERVICE_PAT_FILE")]
    pub service_pat_file: Option<PathBuf>,
    /// JSON key file of the service user (JWT profile), as ZITADEL downloads it: {"type":"serviceaccount",...}.
    #[arg(long, env = "USERMETA_SERVICE_KEY_FILE")]
    pub service_key_file: Option<PathBuf>,
    /// Client id of the service user (client credentials), with a client secret.
    #[arg(long, env = "USERMETA_SERVICE_CLIENT_ID")]
    pub service_client_id: Option<String>,
    /// Client secret of the service user (prefer the _FILE form: flags show up in `ps`).
    #[arg(long, env = "USERMETA_SERVICE_CLIENT_SECRET", hide_env_values = true)]
    pub service_client_secret: Option<String>,
    /// File holding the service user's client secret.
    #[arg(long, env = "USERMETA_SERVICE_CLIENT_SECRET_FILE")]
    pub service_client_secret_file: Option<PathBuf>,
}

/// How usermeta talks to ZITADEL: HTTP versions, timeouts, retries and circuit breakers.
#[derive(Debug, Args)]
pub struct ZitadelArgs {
    /// When to speak HTTP/2 to ZITADEL: `negotiate` (when its TLS offers it, else HTTP/1.1) or `always`
    /// (also without TLS: h2c, which a plain-HTTP ZITADEL reached directly serves).
    #[arg(long, env = "USERMETA_ZITADEL_HTTP2", default_value = "negotiate", value_parser = http2_parser())]
    pub zitadel_http2: Http2,
    /// Which ZITADEL API manages users' metadata: `v2` (the v2 user service, ZITADEL 4.0+), `v1` (the
    /// management API, deprecated since ZITADEL v4), or `auto` (v2 where ZITADEL serves it, else v1; decided
    /// once and again when a call says otherwise).
    #[arg(long, env = "USERMETA_ZITADEL_API", default_value = "auto", value_parser = api_parser())]
    pub zitadel_api: ApiChoice,
    /// With the v2 API: how long this instance lays its own writes over ZITADEL's eventually consistent
    /// listing, so a caller lists what it just wrote (a write the listing shows is dropped sooner); 0 turns
    /// it off.
    #[arg(long, env = "USERMETA_READ_YOUR_WRITES", default_value = "60s", value_parser = humantime::parse_duration)]
    pub read_your_writes: Duration,
    /// How long one call to ZITADEL may take, e.g. 5s or 1500ms.
    #[arg(long, env = "USERMETA_UPSTREAM_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub upstream_timeout: Duration,
    /// Most calls to ZITADEL per request and endpoint, first try included; 1 turns retries off.
    #[arg(long, env = "USERMETA_RETRY_MAX_ATTEMPTS", default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=10))]
    pub retry_max_attempts: u32,
    /// First retry backoff (doubled per retry, full jitter, at most 1s).
    #[arg(long, env = "USERMETA_RETRY_BACKOFF", default_value = "50ms", value_parser = humantime::parse_duration)]
    pub retry_backoff: Duration,
    /// Retries allowed per ZITADEL call on average (0.1: at most 10% extra calls, plus 10 after a calm period).
    #[arg(long, env = "USERMETA_RETRY_BUDGET", default_value_t = 0.1, value_parser = retry_budget)]
    pub retry_budget: f64,
    /// Failed requests (after their retries: a connection error, timeout or 5xx on the last attempt) within
    /// USERMETA_BREAKER_WINDOW below which a circuit breaker never opens; with only failures in the window,
    /// this many open it. 0 turns breakers off. (Before: consecutive failed attempts.)
    #[arg(long, env = "USERMETA_BREAKER_FAILURES", default_value_t = 5)]
    pub breaker_failures: u32,
    /// Requests within USERMETA_BREAKER_WINDOW from which USERMETA_BREAKER_FAILURE_RATIO opens a breaker that
    /// also saw successes.
    #[arg(long, env = "USERMETA_BREAKER_MIN_REQUESTS", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub breaker_min_requests: u32,
    /// Share of failed requests within USERMETA_BREAKER_WINDOW (above 0, at most 1) that opens a breaker, once
    /// USERMETA_BREAKER_MIN_REQUESTS were made.
    #[arg(long, env = "USERMETA_BREAKER_FAILURE_RATIO", default_value_t = 0.5, value_parser = failure_ratio)]
    pub breaker_failure_ratio: f64,
    /// How far back a breaker counts requests (in ten buckets), e.g. 10s.
    #[arg(long, env = "USERMETA_BREAKER_WINDOW", default_value = "10s", value_parser = breaker_window)]
    pub breaker_window: Duration,
    /// How long an open breaker fails calls at once before letting one probe through.
    #[arg(long, env = "USERMETA_BREAKER_COOLDOWN", default_value = "5s", value_parser = humantime::parse_duration)]
    pub breaker_cooldown: Duration,
    /// Most requests per second this instance sends to ZITADEL, retries included (e.g. 12.5); past it, callers
    /// with tokens usermeta does not know yet get RESOURCE_EXHAUSTED UPSTREAM_BUDGET_EXHAUSTED first. ZITADEL
    /// Cloud allows 50 per second per source IP over a minute: the default, 40, is four fifths of that for one
    /// instance; give each of N replicas behind one IP 0.8 × 50 / N. 0 means no budget (a self-hosted ZITADEL
    /// without a rate limit).
    #[arg(long, env = "USERMETA_UPSTREAM_RATE_LIMIT", default_value_t = UpstreamBudget::DEFAULT_RATE, value_parser = upstream_rate)]
    pub upstream_rate_limit: f64,
    /// Requests to ZITADEL that may go at once after a calm period (the budget's bucket); default: one
    /// second's worth of USERMETA_UPSTREAM_RATE_LIMIT.
    #[arg(long, env = "USERMETA_UPSTREAM_BURST", value_parser = clap::value_parser!(u32).range(1..))]
    pub upstream_burst: Option<u32>,
    /// Share of USERMETA_UPSTREAM_BURST kept for calls of callers already identified (management calls, their
    /// own reads): identifying new tokens may use the budget only while more than this is left (0 to 1).
    #[arg(long, env = "USERMETA_UPSTREAM_RESERVE", default_value_t = UpstreamBudget::DEFAULT_RESERVE, value_parser = retry_budget)]
    pub upstream_reserve: f64,
    /// Share of USERMETA_UPSTREAM_RATE_LIMIT and of USERMETA_UPSTREAM_BURST one caller token may spend (above 0,
    /// at most 1; 1: no per-caller share), so one caller's BatchGetMetadata or FindUsersByMetadata cannot spend
    /// the whole budget; past it, RESOURCE_EXHAUSTED CALLER_UPSTREAM_SHARE_EXHAUSTED.
    #[arg(long, env = "USERMETA_UPSTREAM_CALLER_SHARE", default_value_t = UpstreamBudget::DEFAULT_CALLER_SHARE, value_parser = caller_share)]
    pub upstream_caller_share: f64,
}

/// The caller cache: how long ZITADEL's answers about tokens are reused.
#[derive(Debug, Args)]
pub struct CacheArgs {
    /// How long ZITADEL's answer about a token is reused (never past a JWT's own `exp`); 0 turns caching off.
    /// It bounds how long a revoked token keeps working here and how stale metadata written elsewhere can be.
    #[arg(long, env = "USERMETA_CACHE_TTL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub cache_ttl: Duration,
    /// How long a token ZITADEL rejected is refused without asking again.
    #[arg(long, env = "USERMETA_CACHE_NEGATIVE_TTL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub cache_negative_ttl: Duration,
    /// Most tokens remembered at once (least recently used go first).
    #[arg(long, env = "USERMETA_CACHE_CAPACITY", default_value_t = 100_000)]
    pub cache_capacity: u64,
}

/// What one caller and the whole server may ask for: deadlines, concurrency, sizes, rates.
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// Deadline of a request whose caller sets no gRPC deadline (`grpc-timeout`); a caller's deadline applies as given.
    #[arg(long, env = "USERMETA_REQUEST_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// Longest deadline a caller may ask for (`grpc-timeout`); longer ones are cut to it, so no call can hold
    /// its resources (and ZITADEL retries) for hours.
    #[arg(long, env = "USERMETA_MAX_REQUEST_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub max_request_timeout: Duration,
    /// Most calls waiting on ZITADEL at once (the metadata API and Check together; answers from memory are
    /// not counted); more are refused at once with RESOURCE_EXHAUSTED OVERLOADED; 0 means no limit.
    #[arg(long, env = "USERMETA_MAX_IN_FLIGHT", default_value_t = 1024)]
    pub max_in_flight: usize,
    /// Most of those with one caller token, so one caller cannot hold every slot; more are refused at once
    /// with RESOURCE_EXHAUSTED CALLER_OVERLOADED. Default: an eighth of USERMETA_MAX_IN_FLIGHT (128); 0 means
    /// no per-caller limit.
    #[arg(long, env = "USERMETA_MAX_IN_FLIGHT_PER_CALLER")]
    pub max_in_flight_per_caller: Option<usize>,
    /// Most concurrent calls (HTTP/2 streams) per client connection.
    #[arg(long, env = "USERMETA_MAX_STREAMS_PER_CONNECTION", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_streams_per_connection: u32,
    /// Largest gRPC request or response message, in bytes (a few 500000-byte values per SetMetadata fit).
    #[arg(long, env = "USERMETA_MAX_MESSAGE_BYTES", default_value_t = 8 * 1024 * 1024, value_parser = clap::value_parser!(u32).range(65536..))]
    pub max_message_bytes: u32,
    /// Requests per second allowed per caller token; 0 (the default) means no per-caller limit.
    #[arg(long, env = "USERMETA_CALLER_RATE_LIMIT", default_value_t = 0)]
    pub caller_rate_limit: u32,
    /// Requests a caller may send in a burst before its rate limit applies.
    #[arg(long, env = "USERMETA_CALLER_RATE_BURST", default_value_t = 20)]
    pub caller_rate_burst: u32,
    /// ZITADEL calls one BatchGetMetadata request makes at once (each user costs one or two calls).
    #[arg(long, env = "USERMETA_BATCH_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub batch_concurrency: u32,
    /// Most WatchMetadata streams open on this replica at once; more are refused with RESOURCE_EXHAUSTED
    /// (WATCH_STREAMS_EXHAUSTED).
    #[arg(long, env = "USERMETA_WATCH_MAX_STREAMS", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub watch_max_streams: u32,
    /// Most WatchMetadata streams one caller (one ZITADEL user) has open on this replica at once.
    #[arg(long, env = "USERMETA_WATCH_MAX_STREAMS_PER_CALLER", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub watch_max_streams_per_caller: u32,
    /// Longest life of a WatchMetadata stream; it then ends with UNAVAILABLE (WATCH_MAX_DURATION) and the
    /// client reopens it. A stream also ends when its token expires or ZITADEL stops accepting it.
    #[arg(long, env = "USERMETA_WATCH_MAX_DURATION", default_value = "1h", value_parser = humantime::parse_duration)]
    pub watch_max_duration: Duration,
    /// Bytes of changes one WatchMetadata stream may have waiting to be read; a stream further behind ends
    /// with RESOURCE_EXHAUSTED (WATCH_LAGGED). One write always fits.
    #[arg(long, env = "USERMETA_WATCH_BUFFER_BYTES", default_value_t = 1024 * 1024, value_parser = clap::value_parser!(u32).range(1024..))]
    pub watch_buffer_bytes: u32,
    /// Bytes of changes all WatchMetadata streams of this replica together may have waiting; past it, the
    /// streams that are behind end with WATCH_LAGGED.
    #[arg(long, env = "USERMETA_WATCH_BUFFER_MEMORY", default_value_t = 64 * 1024 * 1024, value_parser = clap::value_parser!(u32).range(65536..))]
    pub watch_buffer_memory: u32,
}

/// `negotiate` | `always`, listed in `--help` (the ZITADEL client's own type knows nothing of the command line).
fn http2_parser() -> impl clap::builder::TypedValueParser<Value = Http2> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(["negotiate", "always"]).map(|value| {
        match value.as_str() {
            "always" => Http2::Always,
            _ => Http2::Negotiate,
        }
    })
}

/// `v1` | `v2` | `auto`, listed in `--help`.
fn api_parser() -> impl clap::builder::TypedValueParser<Value = ApiChoice> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(["auto", "v1", "v2"]).map(|value| {
        match value.as_str() {
            "v1" => ApiChoice::V1,
            "v2" => ApiChoice::V2,
            _ => ApiChoice::Auto,
        }
    })
}

fn retry_budget(raw: &str) -> Result<f64, String> {
    let ratio: f64 = raw.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&ratio) {
        Ok(ratio)
    } else {
        Err("must be between 0 and 1".to_owned())
    }
}

fn upstream_rate(raw: &str) -> Result<f64, String> {
    let rate: f64 = raw.parse().map_err(|e| format!("{e}"))?;
    if rate.is_finite() && rate >= 0.0 {
        Ok(rate)
    } else {
        Err("must be a number of requests per second, 0 or more (0: no budget)".to_owned())
    }
}

fn caller_share(raw: &str) -> Result<f64, String> {
    let share: f64 = raw.parse().map_err(|e| format!("{e}"))?;
    if share > 0.0 && share <= 1.0 {
        Ok(share)
    } else {
        Err("must be above 0 and at most 1 (0.5: one caller may spend half of the budget; 1: all of it)".to_owned())
    }
}

fn failure_ratio(raw: &str) -> Result<f64, String> {
    let ratio: f64 = raw.parse().map_err(|e| format!("{e}"))?;
    if ratio > 0.0 && ratio <= 1.0 {
        Ok(ratio)
    } else {
        Err("must be above 0 and at most 1 (0.5: half of the requests failed)".to_owned())
    }
}

fn breaker_window(raw: &str) -> Result<Duration, String> {
    let window = humantime::parse_duration(raw).map_err(|e| e.to_string())?;
    if window >= Duration::from_millis(100) {
        Ok(window)
    } else {
        Err(
            "must be at least 100ms (the breaker counts in ten buckets of a tenth of it)"
                .to_owned(),
        )
    }
}

/// Settings of `usermeta dev`.
#[cfg(feature = "dev")]
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Address the gRPC server listens on.
    #[arg(long, env = "USERMETA_LISTEN", default_value = "127.0.0.1:50051")]
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
        env = "USERMETA_SELF_WRITABLE_KEYS",
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
    #[error("{setting}: {problem}")]
    Invalid {
        /// The setting (or settings) at fault, as `USERMETA_X (--x)`.
        setting: String,
        problem: String,
    },
}

fn invalid(setting: impl fmt::Display, problem: impl Into<String>) -> SettingsError {
    SettingsError::Invalid {
        setting: setting.to_string(),
        problem: problem.into(),
    }
}

/// Parses and checks the ZITADEL URL.
pub fn zitadel_url(raw: &str) -> Result<Url, SettingsError> {
    const SETTING: Setting = Setting::new("zitadel_url");
    let url = Url::parse(raw.trim())
        .map_err(|e| invalid(SETTING, format!("`{raw}` is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(
            SETTING,
            format!("must be an http or https URL, is `{}:`", url.scheme()),
        ));
    }
    if url.host().is_none() {
        return Err(invalid(SETTING, "must name a host"));
    }
    if url.query().is_some()
        || url.fragment().is_some()
        || !url.username().is_empty()
        || url.password().is_some()
    {
        return Err(invalid(
            SETTING,
            "must not carry credentials, a query or a fragment",
        ));
    }
    Ok(url)
}

const PAT: Setting = Setting::new("service_pat");
const PAT_FILE: Setting = Setting::new("service_pat_file");
const KEY_FILE: Setting = Setting::new("service_key_file");
const CLIENT_ID: Setting = Setting::new("service_client_id");
const CLIENT_SECRET: Setting = Setting::new("service_client_secret");
const CLIENT_SECRET_FILE: Setting = Setting::new("service_client_secret_file");
const ALL_CREDENTIALS: &str = "USERMETA_SERVICE_PAT[_FILE], USERMETA_SERVICE_KEY_FILE, USERMETA_SERVICE_CLIENT_ID with USERMETA_SERVICE_CLIENT_SECRET[_FILE]";

impl CredentialArgs {
    /// The one configured service credential. Key and secret problems name the setting (and file) and the
    /// problem, never the content.
    pub fn credential(&self) -> Result<ServiceCredential, SettingsError> {
        let pat = self.service_pat.is_some() || self.service_pat_file.is_some();
        let key = self.service_key_file.is_some();
        let client = self.service_client_id.is_some()
            || self.service_client_secret.is_some()
            || self.service_client_secret_file.is_some();
        let kinds: Vec<&str> = [
            (pat, "a personal access token (USERMETA_SERVICE_PAT[_FILE])"),
            (key, "a JWT profile key (USERMETA_SERVICE_KEY_FILE)"),
            (
                client,
                "client credentials (USERMETA_SERVICE_CLIENT_ID/_SECRET[_FILE])",
            ),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect();
        match kinds.as_slice() {
            [] => {
                return Err(invalid(
                    ALL_CREDENTIALS,
                    "no service credential is set; set exactly one kind: a personal access token, a JWT profile key file, or client credentials of a ZITADEL service user with a manager role",
                ));
            }
            [_] => {}
            several => {
                return Err(invalid(
                    ALL_CREDENTIALS,
                    format!(
                        "{} are set; set exactly one kind of service credential",
                        several.join(" and ")
                    ),
                ));
            }
        }
        if pat {
            self.pat()
        } else if let Some(path) = &self.service_key_file {
            key_from_file(path)
        } else {
            self.client_credentials()
        }
    }

    fn pat(&self) -> Result<ServiceCredential, SettingsError> {
        match (&self.service_pat, &self.service_pat_file) {
            (Some(_), Some(_)) => Err(invalid(
                format!("{PAT} and {PAT_FILE}"),
                "both are set; set exactly one",
            )),
            (Some(pat), None) => pat_from(PAT, pat),
            (None, Some(path)) => pat_from(PAT_FILE, &read_secret_file(PAT_FILE, path)?),
            (None, None) => Err(invalid(PAT, "not set")),
        }
    }

    fn client_credentials(&self) -> Result<ServiceCredential, SettingsError> {
        let secret = match (
            &self.service_client_secret,
            &self.service_client_secret_file,
        ) {
            (Some(_), Some(_)) => {
                return Err(invalid(
                    format!("{CLIENT_SECRET} and {CLIENT_SECRET_FILE}"),
                    "both are set; set exactly one",
                ));
            }
            (Some(secret), None) => secret_from(CLIENT_SECRET, secret)?,
            (None, Some(path)) => secret_from(
                CLIENT_SECRET_FILE,
                &read_secret_file(CLIENT_SECRET_FILE, path)?,
            )?,
            (None, None) => {
                return Err(invalid(
                    CLIENT_SECRET,
                    "not set, but USERMETA_SERVICE_CLIENT_ID is: set the client secret generated for the service user (or USERMETA_SERVICE_CLIENT_SECRET_FILE)",
                ));
            }
        };
        let client_id = self
            .service_client_id
            .as_deref()
            .map(str::trim)
            .unwrap_or_default();
        if client_id.is_empty() {
            return Err(invalid(
                CLIENT_ID,
                "not set or empty, but a client secret is: set the service user's client id",
            ));
        }
        Ok(ServiceCredential::ClientCredentials {
            client_id: client_id.to_owned(),
            secret,
        })
    }
}

fn read_secret_file(setting: Setting, path: &Path) -> Result<String, SettingsError> {
    std::fs::read_to_string(path)
        .map_err(|e| invalid(setting, format!("cannot read {}: {e}", path.display())))
}

fn secret_from(setting: Setting, text: &str) -> Result<SecretString, SettingsError> {
    let secret = text.trim();
    if secret.is_empty() {
        return Err(invalid(setting, "the client secret is empty"));
    }
    Ok(SecretString::from(secret))
}

fn key_from_file(path: &Path) -> Result<ServiceCredential, SettingsError> {
    let text = std::fs::read(path)
        .map_err(|e| invalid(KEY_FILE, format!("cannot read {}: {e}", path.display())))?;
    ServiceKey::from_json(&text)
        .map(ServiceCredential::JwtProfile)
        .map_err(|e| invalid(KEY_FILE, format!("{} {e}", path.display())))
}

fn pat_from(setting: Setting, text: &str) -> Result<ServiceCredential, SettingsError> {
    let pat = text.trim();
    if pat.is_empty() {
        return Err(invalid(setting, "the personal access token is empty"));
    }
    // The token goes into an Authorization header; say what is wrong without echoing it.
    if !pat.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            setting,
            "the personal access token has spaces or non-ASCII characters; is it the right file?",
        ));
    }
    Ok(ServiceCredential::Pat(SecretString::from(pat)))
}

impl OpsArgs {
    /// The server's operational options; reads the ZITADEL CA file.
    pub fn serve_options(&self) -> Result<crate::server::ServeOptions, crate::tls::TlsError> {
        let tls = crate::tls::TlsSettings::GRPC.files(
            self.tls_cert_file.as_ref(),
            self.tls_key_file.as_ref(),
            self.tls_client_ca_file.as_ref(),
        )?;
        let zitadel_roots = match &self.zitadel_ca_file {
            Some(path) => crate::tls::zitadel_roots(path)?,
            None => Vec::new(),
        };
        Ok(crate::server::ServeOptions {
            metrics_listen: self.metrics_listen,
            shutdown_grace: self.shutdown_grace,
            tls,
            zitadel_roots,
            ext_authz: None,
            redis: None,
            webhook: None,
        })
    }
}

impl ZitadelArgs {
    pub fn resilience(&self) -> Resilience {
        Resilience {
            max_attempts: self.retry_max_attempts,
            backoff_base: self.retry_backoff,
            retry_budget_ratio: self.retry_budget,
            breaker_failures: self.breaker_failures,
            breaker_min_requests: self.breaker_min_requests,
            breaker_failure_ratio: self.breaker_failure_ratio,
            breaker_window: self.breaker_window,
            breaker_cooldown: self.breaker_cooldown,
            ..Resilience::default()
        }
    }
}

impl ZitadelArgs {
    /// The request budget toward ZITADEL, unless its rate is 0.
    pub fn upstream_budget(&self) -> Option<UpstreamBudget> {
        (self.upstream_rate_limit > 0.0).then(|| UpstreamBudget {
            rate: self.upstream_rate_limit,
            burst: self.upstream_burst.unwrap_or_else(|| {
                usermeta_zitadel::budget::one_second_of(self.upstream_rate_limit)
            }),
            reserve: self.upstream_reserve,
            caller_share: self.upstream_caller_share,
        })
    }
}

impl CacheArgs {
    pub fn config(&self) -> CacheConfig {
        CacheConfig {
            ttl: self.cache_ttl,
            negative_ttl: self.cache_negative_ttl,
            capacity: self.cache_capacity,
        }
    }
}

impl LimitArgs {
    pub fn limits(&self) -> Limits {
        Limits {
            max_in_flight: self.max_in_flight,
            max_in_flight_per_caller: self.max_in_flight_per_caller,
            max_streams_per_connection: self.max_streams_per_connection,
            max_message_bytes: usize::try_from(self.max_message_bytes).unwrap_or(usize::MAX),
            requests: RequestLimits {
                request_timeout: self.request_timeout,
                max_request_timeout: self.max_request_timeout.max(self.request_timeout),
                caller_rate: self.caller_rate_limit,
                caller_burst: self.caller_rate_burst,
                batch_concurrency: self.batch_concurrency as usize,
            },
            watch: WatchLimits {
                max_streams: self.watch_max_streams as usize,
                max_streams_per_caller: self.watch_max_streams_per_caller as usize,
                buffer_bytes: self.watch_buffer_bytes as usize,
                buffer_memory: self.watch_buffer_memory as usize,
                max_duration: self.watch_max_duration,
            },
        }
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
        for setting in [
            INTROSPECTION_ID,
            INTROSPECTION_SECRET,
            INTROSPECTION_SECRET_FILE,
            INTROSPECTION_KEY_FILE,
            POLICY_FILE,
            PROJECT_ID,
            PAT,
            PAT_FILE,
            KEY_FILE,
            CLIENT_ID,
            CLIENT_SECRET,
            CLIENT_SECRET_FILE,
            REDIS_URL,
            REDIS_PASSWORD_FILE,
            REDIS_BUS_KEY_FILE,
            WEBHOOK_SIGNING_KEY_FILE,
            Setting::new("zitadel_url"),
        ]
        .into_iter()
        .chain(ext_authz::SETTINGS)
        {
            assert!(name::is_known(setting), "{setting} is no flag");
        }
    }

    #[test]
    fn zitadel_url_must_be_http_with_a_host() {
        assert!(zitadel_url("https://my.zitadel.cloud").is_ok());
        assert!(zitadel_url("http://localhost:8080/").is_ok());
        for bad in [
            "my.zitadel.cloud",
            "ftp://x",
            "https://x?y=1",
            "https://u:p@x",
        ] {
            let error = zitadel_url(bad).unwrap_err().to_string();
            assert!(error.starts_with("USERMETA_ZITADEL_URL"), "{error}");
        }
    }

    #[test]
    fn exactly_one_credential() {
        let none = CredentialArgs::default();
        assert!(
            none.credential()
                .unwrap_err()
                .to_string()
                .contains("no service credential")
        );
        let both = CredentialArgs {
            service_pat: Some("x".into()),
            service_pat_file: Some("/f".into()),
            ..Default::default()
        };
        assert!(
            both.credential()
                .unwrap_err()
                .to_string()
                .contains("both are set")
        );
    }

    #[test]
    fn pat_file_problems_name_the_setting_not_the_secret() {
        let dir = std::env::temp_dir().join(format!("usermeta-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = CredentialArgs {
            service_pat_file: Some(dir.join("nope.pat")),
            ..Default::default()
        };
        let error = missing.credential().unwrap_err().to_string();
        assert!(
            error.starts_with("USERMETA_SERVICE_PAT_FILE") && error.contains("nope.pat"),
            "{error}"
        );

        let empty = dir.join("empty.pat");
        std::fs::write(&empty, "\n").unwrap();
        let error = CredentialArgs {
            service_pat_file: Some(empty),
            ..Default::default()
        }
        .credential()
        .unwrap_err();
        assert!(error.to_string().contains("empty"), "{error}");

        let spaced = dir.join("spaced.pat");
        std::fs::write(&spaced, "secret with spaces").unwrap();
        let error = CredentialArgs {
            service_pat_file: Some(spaced),
            ..Default::default()
        }
        .credential()
        .unwrap_err();
        assert!(!error.to_string().contains("secret"), "{error}");

        let good = dir.join("good.pat");
        std::fs::write(&good, "abc123\n").unwrap();
        assert!(
            CredentialArgs {
                service_pat_file: Some(good),
                ..Default::default()
            }
            .credential()
            .is_ok()
        );
    }

    #[test]
    fn a_bad_policy_file_stops_start_up_naming_setting_file_and_line() {
        let dir = temp_dir("policy");
        let path = dir.join("policy.toml");
        std::fs::write(
            &path,
            "# comment\n[[rule]]\nwhose = \"self\"\nkeys = [\"a\"]\nactions = [\"read\", \"fly\"]\n",
        )
        .unwrap();
        let args = AccessArgs {
            policy_file: Some(path.clone()),
            ..Default::default()
        };
        let error = args.policy().unwrap_err().to_string();
        assert!(error.starts_with("USERMETA_POLICY_FILE"), "{error}");
        assert!(
            error.contains(&format!("{}, line 5", path.display())),
            "{error}"
        );
        assert!(error.contains("fly"), "{error}");
    }

    #[test]
    fn introspection_needs_a_client_id_with_exactly_one_credential() {
        let only_id = AccessArgs {
            introspection_client_id: Some("app@project".into()),
            ..Default::default()
        };
        assert!(
            only_id
                .identity()
                .unwrap_err()
                .to_string()
                .starts_with("USERMETA_INTROSPECTION_SECRET")
        );
        let only_secret = AccessArgs {
            introspection_secret: Some("s3cr3t".into()),
            ..Default::default()
        };
        let error = only_secret.identity().unwrap_err().to_string();
        assert!(
            error.starts_with("USERMETA_INTROSPECTION_CLIENT_ID"),
            "{error}"
        );
        assert!(!error.contains("s3cr3t"), "{error}");
        let both = AccessArgs {
            introspection_client_id: Some("app@project".into()),
            introspection_secret: Some("s3cr3t".into()),
            introspection_key_file: Some("/k.json".into()),
            ..Default::default()
        };
        assert!(
            both.identity()
                .unwrap_err()
                .to_string()
                .contains("exactly one")
        );
        let none = AccessArgs::default().identity().unwrap();
        assert!(none.introspection.is_none() && none.jwt.is_none());
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("usermeta-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn key_file_args(path: PathBuf) -> CredentialArgs {
        CredentialArgs {
            service_key_file: Some(path),
            ..Default::default()
        }
    }

    #[test]
    fn kinds_of_credential_exclude_each_other() {
        let error = CredentialArgs::default()
            .credential()
            .unwrap_err()
            .to_string();
        for setting in [
            "USERMETA_SERVICE_PAT",
            "USERMETA_SERVICE_KEY_FILE",
            "USERMETA_SERVICE_CLIENT_ID",
        ] {
            assert!(error.contains(setting), "{error}");
        }
        let two = CredentialArgs {
            service_pat: Some("p4t".into()),
            service_key_file: Some("/k.json".into()),
            ..Default::default()
        };
        let error = two.credential().unwrap_err().to_string();
        assert!(
            error.contains("USERMETA_SERVICE_PAT[_FILE]")
                && error.contains("USERMETA_SERVICE_KEY_FILE")
                && error.contains("exactly one"),
            "{error}"
        );
        assert!(!error.contains("p4t"), "{error}");
        let three = CredentialArgs {
            service_pat_file: Some("/p".into()),
            service_key_file: Some("/k.json".into()),
            service_client_id: Some("id".into()),
            ..Default::default()
        };
        assert!(
            three
                .credential()
                .unwrap_err()
                .to_string()
                .contains("client credentials")
        );
    }

    #[test]
    fn key_file_problems_name_the_file_and_the_problem_never_the_key() {
        let dir = temp_dir("keys");
        let good = zitadel_standin::keys::generate_rsa_key();
        let file = |name: &str, content: &str| {
            let path = dir.join(name);
            std::fs::write(&path, content).unwrap();
            path
        };
        let key_json = |kind: &str, pem: &str| {
            serde_json::json!({"type": kind, "keyId": "k1", "key": pem, "userId": "u1"}).to_string()
        };
        let bad_pem = "-----BEGIN RSA PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA==\n-----END RSA PRIVATE KEY-----\n";
        let not_base64 = "-----BEGIN RSA PRIVATE KEY-----\nsecret key material!\n-----END RSA PRIVATE KEY-----\n";
        let cases: Vec<(PathBuf, &str)> = vec![
            (dir.join("missing.json"), "cannot read"),
            (dir.clone(), "cannot read"),
            (file("text.json", "secret key material"), "is not JSON"),
            (file("list.json", "[\"secret\"]"), "not a JSON object"),
            (
                file(
                    "no-key-id.json",
                    r#"{"type":"serviceaccount","key":"x","userId":"u"}"#,
                ),
                "no string field `keyId`",
            ),
            (
                file(
                    "no-key.json",
                    r#"{"type":"serviceaccount","keyId":"k","userId":"u"}"#,
                ),
                "no string field `key`",
            ),
            (
                file("app.json", &key_json("application", &good.private_pem)),
                "is an application key",
            ),
            (
                file("other.json", &key_json("jwt", &good.private_pem)),
                "expected \"serviceaccount\"",
            ),
            (
                file("bad-der.json", &key_json("serviceaccount", bad_pem)),
                "not a usable RSA private key",
            ),
            (
                file("bad-pem.json", &key_json("serviceaccount", not_base64)),
                "not a usable RSA private key",
            ),
            (
                file(
                    "not-pem.json",
                    &key_json("serviceaccount", "secret key material"),
                ),
                "not a usable RSA private key",
            ),
        ];
        for (path, problem) in cases {
            let error = key_file_args(path.clone())
                .credential()
                .unwrap_err()
                .to_string();
            assert!(error.starts_with("USERMETA_SERVICE_KEY_FILE"), "{error}");
            assert!(error.contains(&path.display().to_string()), "{error}");
            assert!(error.contains(problem), "{path:?}: {error}");
            for secret in ["secret", "c2VjcmV0", "MII"] {
                assert!(!error.contains(secret), "{error}");
            }
        }

        let ok = key_file_args(file(
            "good.json",
            &key_json("serviceaccount", &good.private_pem),
        ))
        .credential()
        .unwrap();
        assert_eq!(ok.describe(), "JWT profile key k1 of service user u1");
        assert!(!format!("{ok:?}").contains("PRIVATE"));
        // A PKCS#8 key works as well as ZITADEL's PKCS#1.
        let pkcs8 = {
            use aws_lc_rs::encoding::AsDer as _;
            let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
            let der = pair.as_der().unwrap();
            zitadel_standin::keys::pem("PRIVATE KEY", der.as_ref())
        };
        assert!(
            key_file_args(file("pkcs8.json", &key_json("serviceaccount", &pkcs8)))
                .credential()
                .is_ok()
        );
    }

    #[test]
    fn client_credentials_need_an_id_and_exactly_one_non_empty_secret() {
        let dir = temp_dir("client");
        let args = |id: Option<&str>, secret: Option<&str>, file: Option<PathBuf>| CredentialArgs {
            service_client_id: id.map(str::to_owned),
            service_client_secret: secret.map(str::to_owned),
            service_client_secret_file: file,
            ..Default::default()
        };
        let fails = |args: CredentialArgs, setting: &str, problem: &str| {
            let error = args.credential().unwrap_err().to_string();
            assert!(error.starts_with(setting), "{error}");
            assert!(error.contains(problem), "{error}");
            assert!(!error.contains("s3cr3t"), "{error}");
        };
        fails(
            args(Some("svc"), None, None),
            "USERMETA_SERVICE_CLIENT_SECRET",
            "not set",
        );
        fails(
            args(None, Some("s3cr3t"), None),
            "USERMETA_SERVICE_CLIENT_ID",
            "not set or empty",
        );
        fails(
            args(Some(" "), Some("s3cr3t"), None),
            "USERMETA_SERVICE_CLIENT_ID",
            "not set or empty",
        );
        fails(
            args(Some("svc"), Some(" \n"), None),
            "USERMETA_SERVICE_CLIENT_SECRET",
            "empty",
        );
        fails(
            args(Some("svc"), Some("s3cr3t"), Some(dir.join("x"))),
            "USERMETA_SERVICE_CLIENT_SECRET",
            "both are set",
        );
        fails(
            args(Some("svc"), None, Some(dir.join("missing"))),
            "USERMETA_SERVICE_CLIENT_SECRET_FILE",
            "cannot read",
        );
        let empty = dir.join("empty");
        std::fs::write(&empty, "\n").unwrap();
        fails(
            args(Some("svc"), None, Some(empty)),
            "USERMETA_SERVICE_CLIENT_SECRET_FILE",
            "empty",
        );

        let good = dir.join("good");
        std::fs::write(&good, "s3cr3t\n").unwrap();
        let credential = args(Some("svc@acme"), None, Some(good))
            .credential()
            .unwrap();
        assert_eq!(
            credential.describe(),
            "client credentials of client svc@acme"
        );
        assert!(!format!("{credential:?}").contains("s3cr3t"));
        assert!(args(Some("svc"), Some("s3cr3t"), None).credential().is_ok());
    }

    /// `usermeta serve` with the least it needs (a ZITADEL URL and a PAT) and `extra` flags, parsed.
    fn serve_with(extra: &[&str]) -> Result<ServeArgs, clap::Error> {
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

    #[test]
    fn the_command_line_is_consistent_and_limits_have_safe_defaults() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
        let args = serve_with(&[]).unwrap();
        assert_eq!(args.zitadel.resilience(), Resilience::default());
        assert_eq!(
            args.zitadel.upstream_budget(),
            Some(UpstreamBudget::default()),
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
    fn the_upstream_budget_is_on_and_takes_a_second_of_its_rate_as_burst_unless_told() {
        let parse = |extra: &[&str]| serve_with(extra).map(|args| args.zitadel.upstream_budget());
        assert_eq!(
            parse(&[]).unwrap(),
            Some(UpstreamBudget {
                rate: 40.0,
                burst: 40,
                reserve: 0.2,
                caller_share: 0.5
            })
        );
        assert_eq!(
            parse(&["--upstream-rate-limit", "12.5"]).unwrap(),
            Some(UpstreamBudget {
                rate: 12.5,
                burst: 13,
                reserve: 0.2,
                caller_share: 0.5
            })
        );
        assert_eq!(
            parse(&[
                "--upstream-rate-limit",
                "40",
                "--upstream-burst",
                "100",
                "--upstream-reserve",
                "0.5",
                "--upstream-caller-share",
                "1"
            ])
            .unwrap(),
            Some(UpstreamBudget {
                rate: 40.0,
                burst: 100,
                reserve: 0.5,
                caller_share: 1.0
            })
        );
        assert!(parse(&["--upstream-caller-share", "0"]).is_err());
        assert!(parse(&["--upstream-caller-share", "1.5"]).is_err());
        assert_eq!(parse(&["--upstream-rate-limit", "0"]).unwrap(), None);
        assert!(parse(&["--upstream-rate-limit", "-1"]).is_err());
        assert!(parse(&["--upstream-rate-limit", "10", "--upstream-burst", "0"]).is_err());
        assert!(parse(&["--upstream-rate-limit", "10", "--upstream-reserve", "2"]).is_err());
        assert!(parse(&["--breaker-failure-ratio", "0"]).is_err());
        assert!(parse(&["--breaker-window", "10ms"]).is_err());
    }

    #[test]
    fn the_webhook_limits_default_to_production_values_and_are_bounded() {
        let parse = |extra: &[&str]| serve_with(extra).map(|args| args.fleet);
        let defaults = parse(&[]).unwrap();
        assert_eq!(defaults.webhook_max_connections, 64);
        assert_eq!(defaults.webhook_max_buffered_bytes, 8 * 1024 * 1024);
        assert_eq!(defaults.webhook_body_timeout, Duration::from_secs(2));
        assert_eq!(
            (
                defaults.webhook_max_connections,
                defaults.webhook_max_buffered_bytes,
                defaults.webhook_body_timeout
            ),
            (
                FleetArgs::default().webhook_max_connections,
                FleetArgs::default().webhook_max_buffered_bytes,
                FleetArgs::default().webhook_body_timeout
            ),
            "FleetArgs::default() is the command line's default"
        );
        let set = parse(&[
            "--webhook-max-connections",
            "8",
            "--webhook-max-buffered-bytes",
            "2097152",
            "--webhook-body-timeout",
            "500ms",
        ])
        .unwrap();
        assert_eq!(
            (
                set.webhook_max_connections,
                set.webhook_max_buffered_bytes,
                set.webhook_body_timeout
            ),
            (8, 2_097_152, Duration::from_millis(500))
        );
        for bad in [
            ["--webhook-max-connections", "0"],
            // Less than one event of ZITADEL's largest value.
            ["--webhook-max-buffered-bytes", "1000"],
            ["--webhook-body-timeout", "10ms"],
            ["--webhook-body-timeout", "5m"],
        ] {
            assert!(parse(&bad).is_err(), "{bad:?}");
        }
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
