//! The fleet: Redis, over which replicas tell each other which users they changed, and the listener for
//! ZITADEL's change events (the webhook), validated into [`RedisConfig`] and [`WebhookConfig`].

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Args;

use super::{Setting, SettingsError, invalid, names, secret::read_secret_file};
use usermeta_zitadel::UpstreamBudget;

use crate::fleet::{
    BusKey, FleetBudgetConfig, RedisConfig, WriteLockConfig,
    webhook::{self, SigningKeys, WebhookConfig, WebhookLimits},
};

/// How replicas of one deployment keep their caches in agreement.
#[derive(Debug, Args)]
pub struct FleetArgs {
    /// Redis for shared invalidation between replicas: redis://host:6379[/db] or rediss://host:6380 (TLS). Each
    /// replica publishes the users it changed and drops others' cached answers for them. Off when unset.
    #[arg(long, env = names::REDIS_URL)]
    pub redis_url: Option<String>,
    /// File holding the Redis password (AUTH), kept out of the URL and of every log line.
    #[arg(long, env = names::REDIS_PASSWORD_FILE, requires = "redis_url")]
    pub redis_password_file: Option<PathBuf>,
    /// File holding the key replicas seal their Redis messages with: a random secret of at least 32 characters,
    /// the same on every replica (one per line while rotating; the first signs). Unset: derived from the
    /// service credential, which every replica holds alike.
    #[arg(long, env = names::REDIS_BUS_KEY_FILE, requires = "redis_url")]
    pub redis_bus_key_file: Option<PathBuf>,
    /// This deployment runs a single replica. Conditional writes and merge patches are then atomic without
    /// Redis (no start-up warning), and while a configured Redis does not answer they are serialised by the
    /// replica instead of refused with UNAVAILABLE. Never set it for several replicas.
    #[arg(long, env = names::SINGLE_REPLICA, default_value_t = false, action = clap::ArgAction::Set)]
    pub single_replica: bool,
    /// How long the per-user write lock in Redis lives unless its holder extends it (1s to 5m): how long a
    /// replica that died holding it keeps the others waiting, and more than a read and a write to ZITADEL
    /// take. The holder extends it by as much right before it writes.
    #[arg(long, env = names::WRITE_LOCK_TTL, default_value = "10s", value_parser = write_lock_ttl)]
    pub write_lock_ttl: Duration,
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
        env = names::WEBHOOK_SIGNING_KEY_FILE,
        requires = "webhook_listen"
    )]
    pub webhook_signing_key_file: Option<PathBuf>,
    /// Connections the webhook serves at once; one more is answered 503 at once (ZITADEL holds a few).
    #[arg(long, env = "USERMETA_WEBHOOK_MAX_CONNECTIONS", default_value_t = WEBHOOK_DEFAULTS.max_connections as u32, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub webhook_max_connections: u32,
    /// Event body bytes the webhook buffers at once over all its requests (at least 1048576: one event with
    /// ZITADEL's largest value); a body whose declared length does not fit in what is left is answered 503
    /// unread.
    #[arg(long, env = "USERMETA_WEBHOOK_MAX_BUFFERED_BYTES", default_value_t = WEBHOOK_DEFAULTS.max_buffered_bytes as u64, value_parser = clap::value_parser!(u64).range(webhook::MAX_BODY_BYTES as u64..=1 << 32))]
    pub webhook_max_buffered_bytes: u64,
    /// How long a client may take to send an event's body once its headers are in (100ms to 60s); a slower
    /// one is answered 408. ZITADEL sends a body at once: raise it only for a slow link.
    #[arg(long, env = "USERMETA_WEBHOOK_BODY_TIMEOUT", default_value = "2s", value_parser = webhook_body_timeout)]
    pub webhook_body_timeout: Duration,
    /// Most requests per second the whole fleet sends to ZITADEL (retries included), counted in Redis and
    /// shared by every replica on it: scaling out does not raise it, and a busy replica uses what idle ones
    /// leave. ZITADEL Cloud allows 50 per second per source IP over a minute: behind one IP, 40 leaves room.
    /// When set, it replaces USERMETA_UPSTREAM_RATE_LIMIT and USERMETA_UPSTREAM_BURST (the reserve and the
    /// caller share still apply). Unset: each replica keeps to its own budget.
    #[arg(long, env = names::UPSTREAM_FLEET_RATE_LIMIT, requires = "redis_url", value_parser = fleet_rate)]
    pub upstream_fleet_rate_limit: Option<f64>,
    /// Requests the fleet may send to ZITADEL at once after a calm period; default: one second's worth of
    /// USERMETA_UPSTREAM_FLEET_RATE_LIMIT.
    #[arg(long, env = names::UPSTREAM_FLEET_BURST, requires = "upstream_fleet_rate_limit", value_parser = clap::value_parser!(u32).range(1..))]
    pub upstream_fleet_burst: Option<u32>,
    /// How many replicas share the fleet's budget, for each one's fallback while Redis cannot be reached
    /// (USERMETA_UPSTREAM_FLEET_RATE_LIMIT divided by it). Set it to the most replicas that run at once (an
    /// autoscaler's maximum) so the fleet stays inside the budget even then.
    #[arg(long, env = names::UPSTREAM_FLEET_REPLICAS, default_value_t = 3, requires = "upstream_fleet_rate_limit", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub upstream_fleet_replicas: u32,
    /// Requests per second this replica sends to ZITADEL while the fleet's budget in Redis cannot be reached;
    /// default: USERMETA_UPSTREAM_FLEET_RATE_LIMIT / USERMETA_UPSTREAM_FLEET_REPLICAS.
    #[arg(long, env = names::UPSTREAM_FLEET_FALLBACK_RATE_LIMIT, requires = "upstream_fleet_rate_limit", value_parser = fleet_rate)]
    pub upstream_fleet_fallback_rate_limit: Option<f64>,
}

/// The webhook's limits when no setting says otherwise.
const WEBHOOK_DEFAULTS: WebhookLimits = WebhookLimits::DEFAULT;

impl Default for FleetArgs {
    /// Nothing on, the limits at their defaults (as the command line without fleet flags).
    fn default() -> Self {
        FleetArgs {
            redis_url: None,
            redis_password_file: None,
            redis_bus_key_file: None,
            single_replica: false,
            write_lock_ttl: WriteLockConfig::default().ttl,
            webhook_listen: None,
            webhook_signing_key_file: None,
            webhook_max_connections: WEBHOOK_DEFAULTS.max_connections as u32,
            webhook_max_buffered_bytes: WEBHOOK_DEFAULTS.max_buffered_bytes as u64,
            webhook_body_timeout: WEBHOOK_DEFAULTS.body_timeout,
            upstream_fleet_rate_limit: None,
            upstream_fleet_burst: None,
            upstream_fleet_replicas: 3,
            upstream_fleet_fallback_rate_limit: None,
        }
    }
}

fn write_lock_ttl(raw: &str) -> Result<Duration, String> {
    duration_within(raw, Duration::from_secs(1), Duration::from_secs(300))
}

fn fleet_rate(raw: &str) -> Result<f64, String> {
    const PROBLEM: &str = "must be a number of requests per second above 0 (e.g. 40)";
    match raw.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        Ok(_) => Err(PROBLEM.to_owned()),
        Err(e) => Err(format!("{e}; {PROBLEM}")),
    }
}

fn webhook_body_timeout(raw: &str) -> Result<Duration, String> {
    duration_within(raw, Duration::from_millis(100), Duration::from_secs(60))
}

/// A duration between `min` and `max`, both included.
fn duration_within(raw: &str, min: Duration, max: Duration) -> Result<Duration, String> {
    let duration = humantime::parse_duration(raw).map_err(|e| e.to_string())?;
    if (min..=max).contains(&duration) {
        Ok(duration)
    } else {
        Err(format!(
            "must be between {} and {}",
            humantime::format_duration(min),
            humantime::format_duration(max)
        ))
    }
}

const REDIS_URL: Setting = Setting::new("redis_url");
const REDIS_PASSWORD_FILE: Setting = Setting::new("redis_password_file");
const REDIS_BUS_KEY_FILE: Setting = Setting::new("redis_bus_key_file");
const WEBHOOK_SIGNING_KEY_FILE: Setting = Setting::new("webhook_signing_key_file");

/// Every setting this module's messages name.
#[cfg(test)]
pub(super) const SETTINGS: [Setting; 4] = [
    REDIS_URL,
    REDIS_PASSWORD_FILE,
    REDIS_BUS_KEY_FILE,
    WEBHOOK_SIGNING_KEY_FILE,
];

impl FleetArgs {
    /// How writes that read first are serialised.
    pub fn write_locks(&self) -> WriteLockConfig {
        WriteLockConfig {
            single_replica: self.single_replica,
            ttl: self.write_lock_ttl,
        }
    }

    /// The Redis link, reading the password file; `None` when no Redis is configured.
    pub fn redis(&self) -> Result<Option<RedisConfig>, SettingsError> {
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
                BusKey::from_text(&read_secret_file(REDIS_BUS_KEY_FILE, path)?)
                    .map_err(|e| invalid(REDIS_BUS_KEY_FILE, format!("{} {e}", path.display())))?,
            ),
        };
        Ok(Some(RedisConfig {
            url: url.clone(),
            password,
            bus_key,
        }))
    }

    /// The fleet's request budget toward ZITADEL and each replica's fallback, with the replica settings'
    /// `reserve` and `caller_share`; `None` when no fleet rate is set.
    pub fn upstream_fleet(&self, reserve: f64, caller_share: f64) -> Option<FleetBudgetConfig> {
        let rate = self.upstream_fleet_rate_limit?;
        let replicas = self.upstream_fleet_replicas.max(1);
        let burst = self
            .upstream_fleet_burst
            .unwrap_or_else(|| usermeta_zitadel::budget::one_second_of(rate));
        let fallback_rate = self
            .upstream_fleet_fallback_rate_limit
            .unwrap_or(rate / f64::from(replicas));
        Some(FleetBudgetConfig {
            budget: UpstreamBudget {
                rate,
                burst,
                reserve,
                caller_share,
            },
            fallback: UpstreamBudget {
                rate: fallback_rate,
                // Each replica's part of the fleet's burst, and never more than a second of its own rate.
                burst: burst
                    .div_ceil(replicas)
                    .min(usermeta_zitadel::budget::one_second_of(fallback_rate))
                    .max(1),
                reserve,
                caller_share,
            },
        })
    }

    /// ZITADEL's event webhook, reading the signing keys; `None` when it is off.
    pub fn webhook(&self) -> Result<Option<WebhookConfig>, SettingsError> {
        let (Some(listen), Some(path)) = (self.webhook_listen, &self.webhook_signing_key_file)
        else {
            return Ok(None);
        };
        let text = read_secret_file(WEBHOOK_SIGNING_KEY_FILE, path)?;
        let keys = SigningKeys::from_text(&text)
            .map_err(|e| invalid(WEBHOOK_SIGNING_KEY_FILE, format!("{} {e}", path.display())))?;
        Ok(Some(WebhookConfig {
            listen,
            keys,
            limits: WebhookLimits {
                max_connections: self.webhook_max_connections as usize,
                max_buffered_bytes: usize::try_from(self.webhook_max_buffered_bytes)
                    .unwrap_or(usize::MAX),
                body_timeout: self.webhook_body_timeout,
            },
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::tests::serve_with;

    #[test]
    fn the_fleet_budget_needs_redis_and_divides_into_a_fallback_per_replica() {
        let parse =
            |extra: &[&str]| serve_with(extra).map(|args| args.fleet.upstream_fleet(0.2, 0.5));
        assert_eq!(parse(&[]).unwrap(), None);
        assert!(
            parse(&["--upstream-fleet-rate-limit", "40"]).is_err(),
            "needs Redis"
        );
        let redis = ["--redis-url", "redis://r:6379"];
        let fleet = parse(&[&redis[..], &["--upstream-fleet-rate-limit", "40"]].concat())
            .unwrap()
            .expect("on");
        assert_eq!((fleet.budget.rate, fleet.budget.burst), (40.0, 40));
        assert_eq!(
            (fleet.budget.reserve, fleet.budget.caller_share),
            (0.2, 0.5)
        );
        // Divided by the default three replicas.
        assert!((fleet.fallback.rate - 40.0 / 3.0).abs() < 1e-9);
        assert_eq!(fleet.fallback.burst, 14);
        let fleet = parse(
            &[
                &redis[..],
                &[
                    "--upstream-fleet-rate-limit",
                    "40",
                    "--upstream-fleet-burst",
                    "80",
                    "--upstream-fleet-replicas",
                    "10",
                    "--upstream-fleet-fallback-rate-limit",
                    "2",
                ],
            ]
            .concat(),
        )
        .unwrap()
        .expect("on");
        assert_eq!(fleet.budget.burst, 80);
        assert_eq!((fleet.fallback.rate, fleet.fallback.burst), (2.0, 2));
        for bad in ["0", "-1", "NaN", "inf", "x"] {
            let flag = format!("--upstream-fleet-rate-limit={bad}");
            let error = parse(&[&redis[..], &[flag.as_str()]].concat())
                .unwrap_err()
                .to_string();
            assert!(error.contains("above 0"), "{bad}: {error}");
        }
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
}
