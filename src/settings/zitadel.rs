//! ZITADEL: the instance's URL and how usermeta talks to it (HTTP versions, the management API, timeouts,
//! retries, circuit breakers, the request budget), into the ZITADEL client's own types.

use std::time::Duration;

use clap::Args;
use url::Url;

use super::{Setting, SettingsError, invalid, names};
use usermeta_zitadel::{Http2, Resilience, UpstreamBudget, management::ApiChoice};

/// How usermeta talks to ZITADEL: HTTP versions, timeouts, retries and circuit breakers.
#[derive(Debug, Args)]
pub struct ZitadelArgs {
    /// When to speak HTTP/2 to ZITADEL: `negotiate` (when its TLS offers it, else HTTP/1.1) or `always`
    /// (also without TLS: h2c, which a plain-HTTP ZITADEL reached directly serves).
    #[arg(long, env = names::ZITADEL_HTTP2, default_value = "negotiate", value_parser = http2_parser())]
    pub zitadel_http2: Http2,
    /// Which ZITADEL API manages users' metadata: `v2` (the v2 user service, ZITADEL 4.0+), `v1` (the
    /// management API, deprecated since ZITADEL v4), or `auto` (v2 where ZITADEL serves it, else v1; decided
    /// once and again when a call says otherwise).
    #[arg(long, env = names::ZITADEL_API, default_value = "auto", value_parser = api_parser())]
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
    #[arg(long, env = names::UPSTREAM_RATE_LIMIT, default_value_t = UpstreamBudget::DEFAULT_RATE, value_parser = upstream_rate)]
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
    #[arg(long, env = names::UPSTREAM_CALLER_SHARE, default_value_t = UpstreamBudget::DEFAULT_CALLER_SHARE, value_parser = caller_share)]
    pub upstream_caller_share: f64,
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

/// A number `accept` takes; otherwise `problem`, which clap shows beside the flag.
fn number(raw: &str, accept: fn(f64) -> bool, problem: &str) -> Result<f64, String> {
    let value: f64 = raw.parse().map_err(|e| format!("{e}"))?;
    if accept(value) {
        Ok(value)
    } else {
        Err(problem.to_owned())
    }
}

fn retry_budget(raw: &str) -> Result<f64, String> {
    number(
        raw,
        |ratio| (0.0..=1.0).contains(&ratio),
        "must be between 0 and 1",
    )
}

fn upstream_rate(raw: &str) -> Result<f64, String> {
    number(
        raw,
        |rate| rate.is_finite() && rate >= 0.0,
        "must be a number of requests per second, 0 or more (0: no budget)",
    )
}

fn caller_share(raw: &str) -> Result<f64, String> {
    number(
        raw,
        |share| share > 0.0 && share <= 1.0,
        "must be above 0 and at most 1 (0.5: one caller may spend half of the budget; 1: all of it)",
    )
}

fn failure_ratio(raw: &str) -> Result<f64, String> {
    number(
        raw,
        |ratio| ratio > 0.0 && ratio <= 1.0,
        "must be above 0 and at most 1 (0.5: half of the requests failed)",
    )
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

const ZITADEL_URL: Setting = Setting::new("zitadel_url");

/// Every setting this module's messages name.
#[cfg(test)]
pub(super) const SETTINGS: [Setting; 1] = [ZITADEL_URL];

/// Parses and checks the ZITADEL URL.
pub fn zitadel_url(raw: &str) -> Result<Url, SettingsError> {
    let url = Url::parse(raw.trim())
        .map_err(|e| invalid(ZITADEL_URL, format!("`{raw}` is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(
            ZITADEL_URL,
            format!("must be an http or https URL, is `{}:`", url.scheme()),
        ));
    }
    if url.host().is_none() {
        return Err(invalid(ZITADEL_URL, "must name a host"));
    }
    if url.query().is_some()
        || url.fragment().is_some()
        || !url.username().is_empty()
        || url.password().is_some()
    {
        return Err(invalid(
            ZITADEL_URL,
            "must not carry credentials, a query or a fragment",
        ));
    }
    Ok(url)
}

impl ZitadelArgs {
    /// How calls to ZITADEL are retried and when a circuit breaker opens.
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::tests::serve_with;

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
}
