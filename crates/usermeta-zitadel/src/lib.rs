//! ZITADEL, as usermeta calls it: [`userinfo`] and the [`auth_api`] with the caller's token, the
//! [`management`] API with the service credential, introspection and signing keys ([`Zitadel::introspect`],
//! [`Zitadel::signing_keys`]). One pooled HTTP client serves all of them, and every call goes through one
//! door ([`Zitadel`]'s transport): the caller's deadline, retries within a retry budget, a circuit breaker
//! per group ([`resilience`]), a request budget per ZITADEL ([`budget`]), and the service's [`Instrument`]
//! hooks (trace headers, metrics).
//!
//! The crate sits below the service and knows nothing of gRPC handlers, settings or telemetry backends: its
//! inputs are [`ZitadelConfig`] and [`metadata`]'s domain types, its failures one [`UpstreamError`].

pub mod auth_api;
pub mod budget;
pub mod credential;
pub mod error;
pub mod etag;
pub mod fleet_budget;
#[cfg(test)]
mod fuzz_tests;
pub mod instrument;
pub mod management;
pub mod metadata;
mod oauth;
mod path;
pub mod resilience;
pub mod token_source;
pub mod userinfo;
pub mod value;
mod wire;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::{Bytes, BytesMut};
use serde::de::DeserializeOwned;
use tracing::Instrument as _;
use url::Url;

pub use budget::UpstreamBudget;
pub use credential::{BearerError, CallerToken, KeyFileError, ServiceCredential, ServiceKey};
pub use error::{Endpoint, ErrorKind, Rejection, UpstreamError};
pub use instrument::{Instrument, Instrumentation};
pub use resilience::{Group, Resilience};

use crate::metadata::MetadataItem;

/// Largest answer usermeta reads from ZITADEL; a full page of large values fits, a runaway body does not.
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// Everything needed to reach one ZITADEL instance.
#[derive(Debug)]
pub struct ZitadelConfig {
    /// The instance URL (the issuer), e.g. `https://my-instance.zitadel.cloud`.
    pub base_url: Url,
    /// How long one HTTP call to ZITADEL may take, connect included.
    pub timeout: Duration,
    /// What the management API calls authenticate with.
    pub service_credential: ServiceCredential,
    /// Retries, retry budget and circuit breakers.
    pub resilience: Resilience,
    /// Which HTTP versions the connections to ZITADEL speak.
    pub http2: Http2,
    /// usermeta's project in ZITADEL: only roles ZITADEL asserts for it are callers' roles. `None`: callers
    /// have no roles.
    pub project_id: Option<String>,
    /// Which API manages users' metadata: v1, v2, or v2 where served.
    pub management_api: management::ApiChoice,
    /// How long this replica lays its own writes over v2's eventually consistent listing (0: not at all).
    pub read_your_writes: Duration,
    /// Most requests per second sent to this ZITADEL (retries included), and one caller's share of them;
    /// `None`: no budget. [`ZitadelConfig::new`] sets [`UpstreamBudget::default`].
    pub upstream_budget: Option<UpstreamBudget>,
    /// One budget for the whole fleet, shared through a store; when set, it replaces `upstream_budget`.
    pub fleet_budget: Option<fleet_budget::FleetBudget>,
    /// What the operator calls these settings, for hints in errors.
    pub setting_names: SettingNames,
}

/// What the operator calls the client's settings, handed in by whoever reads them (the client knows no
/// command line); hints name a setting only when given its name.
#[derive(Debug, Clone, Copy, Default)]
pub struct SettingNames {
    /// The setting that chooses [`ZitadelConfig::http2`].
    pub http2: Option<&'static str>,
}

/// How long this replica lays its own writes over v2's listing by default: ZITADEL's own tests wait up to a
/// minute for its projection; a write the listing shows earlier is dropped from the overlay at once.
const DEFAULT_READ_YOUR_WRITES: Duration = Duration::from_secs(60);

impl ZitadelConfig {
    /// The defaults for an instance and a credential: 5 s per call, default resilience, HTTP/2 negotiated,
    /// no project, the management API chosen automatically, the default request budget (sized for one
    /// instance in front of ZITADEL Cloud: [`UpstreamBudget::DEFAULT_RATE`]).
    pub fn new(base_url: Url, service_credential: ServiceCredential) -> Self {
        ZitadelConfig {
            base_url,
            timeout: Duration::from_secs(5),
            service_credential,
            resilience: Resilience::default(),
            http2: Http2::default(),
            project_id: None,
            management_api: management::ApiChoice::default(),
            read_your_writes: DEFAULT_READ_YOUR_WRITES,
            upstream_budget: Some(UpstreamBudget::default()),
            fleet_budget: None,
            setting_names: SettingNames::default(),
        }
    }
}

/// When usermeta speaks HTTP/2 to ZITADEL. Over HTTP/2 every concurrent call shares one connection per
/// ZITADEL host; over HTTP/1.1 each call in flight needs a pooled connection of its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Http2 {
    /// HTTP/2 when ZITADEL offers it in the TLS handshake (ALPN), HTTP/1.1 otherwise: right for any
    /// `https://` ZITADEL, and for a plain-HTTP one behind a proxy that may speak only HTTP/1.1.
    #[default]
    Negotiate,
    /// HTTP/2 from the first byte, also without TLS (h2c): for a plain-HTTP ZITADEL reached directly, which
    /// serves h2c on its port. A server that speaks only HTTP/1.1 then fails every call.
    Always,
}

/// Could not set up the ZITADEL client.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The URL cannot have paths appended (`mailto:`, `data:`); the URL.
    #[error("the ZITADEL URL {0} cannot be a base for API paths")]
    BadBaseUrl(String),
    /// The credential's token is not a valid header value.
    #[error("the service credential cannot be sent as an HTTP header: {0}")]
    BadCredential(BearerError),
    /// reqwest could not build the client (the TLS roots, the system's configuration).
    #[error("the HTTP client could not be built: {0}")]
    HttpClient(#[from] reqwest::Error),
}

/// A client of one ZITADEL instance. Cheap to share behind an `Arc`; all URLs that do not depend on the
/// request are built once here.
#[derive(Debug)]
pub struct Zitadel {
    http: reqwest::Client,
    /// The service's hooks around every HTTP call (spans, trace headers, metrics).
    instrumentation: Instrumentation,
    timeout: Duration,
    base_url: Url,
    userinfo_url: Url,
    auth_list_url: Url,
    introspect_url: Url,
    keys_url: Url,
    /// The instance URL without a trailing slash, as ZITADEL names itself.
    issuer: String,
    /// The management API's `Authorization`: a PAT, or an access token kept fresh in the background.
    service_token: token_source::TokenSource,
    guards: resilience::Guards,
    /// The request budget toward this ZITADEL, shared with the token source.
    budget: Option<Arc<fleet_budget::Budget>>,
    http2: Http2,
    setting_names: SettingNames,
    project_id: Option<String>,
    /// Which API manages users' metadata.
    selector: management::Selector,
    /// Writes through this replica, laid over v2's lagging listing.
    recent_writes: management::RecentWrites,
    /// Users' organisations, as v2 needs them for the policy.
    user_orgs: management::UserOrgs,
    /// Which API manages organisations' metadata (v2 only from ZITADEL 4.7, so apart from users').
    org_selector: management::Selector,
    /// Organisation metadata writes through this replica, laid over v2's lagging listing.
    org_recent_writes: management::RecentWrites,
}

impl Zitadel {
    /// A client trusting the system's CAs, without instrumentation.
    pub fn new(config: ZitadelConfig) -> Result<Self, SetupError> {
        Self::build(config, Vec::new(), Instrumentation::none())
    }

    /// [`Zitadel::new`] trusting `extra_roots` beside the system's CAs (a privately-signed ZITADEL), with the
    /// service's hooks around every call.
    pub fn build(
        config: ZitadelConfig,
        extra_roots: Vec<reqwest::Certificate>,
        instrumentation: Instrumentation,
    ) -> Result<Self, SetupError> {
        let mut base_url = config.base_url;
        if base_url.cannot_be_a_base() {
            return Err(SetupError::BadBaseUrl(base_url.to_string()));
        }
        // A trailing slash makes `join` keep any path prefix of a ZITADEL behind a reverse proxy.
        if !base_url.path().ends_with('/') {
            let path = format!("{}/", base_url.path());
            base_url.set_path(&path);
        }
        let join = |path: &str| {
            base_url
                .join(path)
                .map_err(|_| SetupError::BadBaseUrl(base_url.to_string()))
        };
        // The issuer as ZITADEL names itself (the audience of JWT-profile assertions): no trailing slash.
        let issuer = base_url.as_str().trim_end_matches('/').to_owned();
        let userinfo_url = join("oidc/v1/userinfo")?;
        let token_url = join("oauth/v2/token")?;
        let auth_list_url = join("auth/v1/users/me/metadata/_search")?;
        let introspect_url = join("oauth/v2/introspect")?;
        let keys_url = join("oauth/v2/keys")?;
        let mut http = reqwest::Client::builder();
        if !extra_roots.is_empty() {
            http = http.tls_certs_merge(extra_roots);
        }
        if config.http2 == Http2::Always {
            http = http.http2_prior_knowledge();
        }
        let http = http
            .connect_timeout(config.timeout)
            .timeout(config.timeout)
            // Never follow a redirect: it could carry a bearer token somewhere else.
            .redirect(reqwest::redirect::Policy::none())
            .tcp_nodelay(true)
            // Idle connections stay open for the next call; keep-alive probes (TCP, and HTTP/2 pings while
            // idle) find a peer or middlebox that dropped one before a caller's request is sent into it.
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_keepalive(Duration::from_secs(30))
            .http2_keep_alive_interval(Duration::from_secs(30))
            .http2_keep_alive_timeout(Duration::from_secs(10))
            .http2_keep_alive_while_idle(true)
            .http2_adaptive_window(true)
            .user_agent(concat!("usermeta/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let budget = match config.fleet_budget {
            Some(fleet) => Some(fleet_budget::Budget::Fleet(Arc::new(
                fleet_budget::FleetBucket::new(fleet, instrumentation.clone(), Instant::now()),
            ))),
            None => config.upstream_budget.map(|budget| {
                fleet_budget::Budget::Replica(budget::Bucket::new(budget, Instant::now()))
            }),
        }
        .map(Arc::new);
        let service_token = token_source::TokenSource::new(
            config.service_credential,
            http.clone(),
            instrumentation.clone(),
            budget.clone(),
            config.timeout,
            issuer.clone(),
            token_url,
        )?;
        let guards = resilience::Guards::new(config.resilience, &instrumentation);
        Ok(Zitadel {
            http,
            instrumentation,
            timeout: config.timeout,
            userinfo_url,
            auth_list_url,
            introspect_url,
            keys_url,
            issuer,
            base_url,
            service_token,
            guards,
            budget,
            http2: config.http2,
            setting_names: config.setting_names,
            project_id: config.project_id,
            selector: management::Selector::new(config.management_api, management::Family::Users),
            org_selector: management::Selector::new(
                config.management_api,
                management::Family::Organizations,
            ),
            org_recent_writes: management::RecentWrites::new(config.read_your_writes),
            recent_writes: management::RecentWrites::new(config.read_your_writes),
            user_orgs: management::UserOrgs::new(management::USER_ORG_CAPACITY),
        })
    }

    /// usermeta's project, whose roles count as callers' roles.
    pub fn project_id(&self) -> Option<&str> {
        self.project_id.as_deref()
    }

    /// How long one HTTP call to ZITADEL may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Follows whether `group`'s circuit breaker is open (for health reporting).
    pub fn watch_breaker(&self, group: Group) -> tokio::sync::watch::Receiver<bool> {
        self.guards.of(group).breaker.watch_open()
    }

    /// Follows whether this replica keeps to its fallback budget because the fleet's shared budget cannot be
    /// reached (for health reporting); `None` without a fleet budget.
    pub fn watch_budget_fallback(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        match self.budget.as_deref()? {
            fleet_budget::Budget::Fleet(fleet) => Some(fleet.watch_fallback()),
            fleet_budget::Budget::Replica(_) => None,
        }
    }

    /// The operator's choice of management API.
    pub fn management_api_choice(&self) -> management::ApiChoice {
        self.selector.choice()
    }

    /// Sends a request and returns the body of a 2xx answer; anything else becomes an [`UpstreamError`].
    async fn send(
        &self,
        endpoint: Endpoint,
        request: reqwest::RequestBuilder,
    ) -> Result<Bytes, UpstreamError> {
        self.send_retrying(endpoint, request).await.result
    }

    /// Sends a request within the caller's deadline, through the group's breaker, retrying what is safe to
    /// retry (see [`resilience`]). Every ZITADEL call usermeta makes is safe to repeat: reads, a set of the
    /// same value, and a remove (whose NOT_FOUND after an attempt that may have landed the caller checks).
    /// The breaker sees the request once, with the outcome of its last attempt.
    async fn send_retrying(&self, endpoint: Endpoint, request: reqwest::RequestBuilder) -> Sent {
        let guard = self.guards.of(endpoint.group());
        let policy = &self.guards.policy;
        let deadline = resilience::current_deadline();
        let pass = match guard.breaker.admit() {
            Ok(pass) => pass,
            Err(retry_after) => {
                return Sent {
                    result: Err(UpstreamError::CircuitOpen {
                        endpoint,
                        retry_after,
                    }),
                    may_have_landed: false,
                };
            }
        };
        if let Err(refused) = self.take_budget(endpoint).await {
            // Nothing sent: the breaker learns nothing (a dropped pass frees a probe's slot).
            drop(pass);
            return Sent {
                result: Err(refused.error(endpoint)),
                may_have_landed: false,
            };
        }
        guard.budget.deposit();
        let mut may_have_landed = false;
        // An attempt failed (transport, timeout, 5xx): a request cut short after it still failed.
        let mut failed_before = false;
        let mut request = request;
        let mut attempt = 1;
        loop {
            let cut_short = if failed_before {
                resilience::Outcome::Failed
            } else {
                resilience::Outcome::Unknown
            };
            // The time this attempt may take: the configured timeout, cut to what is left of the deadline.
            let (timeout, cut) = match deadline {
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        pass.report(cut_short);
                        return Sent {
                            result: Err(UpstreamError::DeadlineExceeded { endpoint }),
                            may_have_landed,
                        };
                    }
                    (left.min(self.timeout), left < self.timeout)
                }
                None => (self.timeout, false),
            };
            let next = request.try_clone();
            let failure = match send(
                &self.instrumentation,
                endpoint,
                timeout,
                request.timeout(timeout),
            )
            .await
            {
                Ok(body) => {
                    pass.report(resilience::Outcome::Alive);
                    return Sent {
                        result: Ok(body),
                        may_have_landed,
                    };
                }
                Err(failure) => failure,
            };
            let (outcome, retryable, landed) = match &failure.error {
                UpstreamError::Timeout { .. } if cut => {
                    pass.report(cut_short);
                    return Sent {
                        result: Err(UpstreamError::DeadlineExceeded { endpoint }),
                        may_have_landed: true,
                    };
                }
                // A refused connection never reached ZITADEL; anything later may have.
                UpstreamError::Unreachable { .. } => {
                    (resilience::Outcome::Failed, true, !failure.before_sending)
                }
                UpstreamError::Timeout { .. } => (resilience::Outcome::Failed, true, true),
                UpstreamError::Rejected { http_status, .. } if *http_status >= 500 => (
                    resilience::Outcome::Failed,
                    matches!(http_status, 502..=504),
                    true,
                ),
                UpstreamError::Rejected { .. } => (resilience::Outcome::Alive, false, false),
                _ => (cut_short, false, false),
            };
            failed_before |= outcome == resilience::Outcome::Failed;
            may_have_landed |= landed;
            let error = self.explained(failure);
            let give_up = |pass: resilience::Pass<'_>, error| {
                pass.report(outcome);
                Sent {
                    result: Err(error),
                    may_have_landed,
                }
            };
            let Some(next) = next.filter(|_| retryable && attempt < policy.max_attempts) else {
                return give_up(pass, error);
            };
            if !pass.may_retry() {
                tracing::debug!(%endpoint, %error, "not retrying: a probe, or the circuit opened meanwhile");
                return give_up(pass, error);
            }
            let backoff = policy.backoff(attempt);
            if deadline.is_some_and(|deadline| Instant::now() + backoff >= deadline) {
                return give_up(pass, error);
            }
            if !guard.budget.withdraw() {
                tracing::debug!(%endpoint, %error, "not retrying: the retry budget is spent");
                return give_up(pass, error);
            }
            if self.take_budget(endpoint).await.is_err() {
                tracing::debug!(%endpoint, %error, "not retrying: the request budget toward ZITADEL is spent");
                return give_up(pass, error);
            }
            tracing::debug!(%endpoint, attempt, ?backoff, %error, "retrying a failed ZITADEL call");
            tokio::time::sleep(backoff).await;
            request = next;
            attempt += 1;
        }
    }

    /// Takes a token of the request budget for one request to `endpoint`, telling the instrumentation.
    async fn take_budget(&self, endpoint: Endpoint) -> Result<(), budget::Refused> {
        let Some(bucket) = &self.budget else {
            return Ok(());
        };
        let class = budget::Class::of(endpoint);
        let taken = bucket.try_take(class).await;
        let hooks = self.instrumentation.hooks();
        match &taken {
            Ok(left) => hooks.upstream_budget(class.name(), true, *left),
            Err(refused) => match refused.by {
                budget::Limit::Budget(_) => {
                    hooks.upstream_budget(class.name(), false, refused.tokens);
                }
                budget::Limit::CallerShare { .. } => {
                    hooks.upstream_caller_share_refused(class.name())
                }
            },
        }
        taken.map(|_| ())
    }

    /// The failure's error, saying so when HTTP/2 from the first byte is a likely cause: a connection that
    /// opened and then broke, with `Http2::Always`, is what a server speaking only HTTP/1.1 does.
    fn explained(&self, failure: Failure) -> UpstreamError {
        match failure.error {
            UpstreamError::Unreachable {
                endpoint,
                mut reason,
            } if self.http2 == Http2::Always && !failure.before_sending => {
                let setting = self
                    .setting_names
                    .http2
                    .map(|name| format!(", {name}=always"))
                    .unwrap_or_default();
                reason.push_str(&format!(
                    " (usermeta speaks HTTP/2 from the first byte{setting}; \
                     if this address speaks only HTTP/1.1, set it to negotiate)"
                ));
                UpstreamError::Unreachable { endpoint, reason }
            }
            error => error,
        }
    }

    /// Sends a request and reads a 2xx JSON answer.
    async fn send_json<T: DeserializeOwned>(
        &self,
        endpoint: Endpoint,
        request: reqwest::RequestBuilder,
    ) -> Result<T, UpstreamError> {
        let body = self.send(endpoint, request).await?;
        parse_json(endpoint, &body)
    }
}

pub(crate) fn parse_json<T: DeserializeOwned>(
    endpoint: Endpoint,
    body: &[u8],
) -> Result<T, UpstreamError> {
    serde_json::from_slice(body).map_err(|e| UpstreamError::BadResponse {
        endpoint,
        reason: format!("not the expected JSON ({e})"),
    })
}

/// The outcome of [`Zitadel::send_retrying`].
pub(crate) struct Sent {
    result: Result<Bytes, UpstreamError>,
    /// Whether a failed attempt before the last may have changed something in ZITADEL.
    may_have_landed: bool,
}

/// One failed attempt.
struct Failure {
    error: UpstreamError,
    /// The connection could not be made: ZITADEL cannot have seen the request.
    before_sending: bool,
}

impl From<UpstreamError> for Failure {
    fn from(error: UpstreamError) -> Self {
        Failure {
            error,
            before_sending: false,
        }
    }
}

/// Sends a request once and returns the body of a 2xx answer; anything else becomes an [`UpstreamError`].
async fn send(
    instrumentation: &Instrumentation,
    endpoint: Endpoint,
    timeout: Duration,
    request: reqwest::RequestBuilder,
) -> Result<Bytes, Failure> {
    // Observability for every HTTP call in one place: a span whose id ZITADEL receives as `traceparent`,
    // and the call's count and latency by endpoint and HTTP status.
    let hooks = instrumentation.hooks();
    let (span, trace_headers) = hooks.call_started(endpoint.name());
    let started = std::time::Instant::now();
    let mut seen = Seen::default();
    let result = exchange(endpoint, timeout, request.headers(trace_headers), &mut seen)
        .instrument(span)
        .await;
    hooks.call_finished(endpoint.name(), seen.http_status, started.elapsed());
    if seen.deprecated {
        hooks.deprecated(endpoint.name());
    }
    result
}

/// What [`exchange`] saw of an answer, for the instrumentation.
#[derive(Default)]
struct Seen {
    http_status: Option<u16>,
    /// The answer carried a `Deprecation` header (RFC 9745; ZITADEL v5 plans it on every v1 call).
    deprecated: bool,
}

/// [`send`] without the observability; `seen` is filled once an answer arrives.
async fn exchange(
    endpoint: Endpoint,
    timeout: Duration,
    request: reqwest::RequestBuilder,
    seen: &mut Seen,
) -> Result<Bytes, Failure> {
    let transport = |e: reqwest::Error| Failure {
        before_sending: e.is_connect(),
        error: UpstreamError::from_transport(endpoint, timeout, e),
    };
    let mut response = request
        .header(http::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(transport)?;
    let status = response.status();
    seen.http_status = Some(status.as_u16());
    seen.deprecated = response.headers().contains_key("deprecation");
    let retry_after = response
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);

    let mut body = BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(transport)? {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(UpstreamError::BadResponse {
                endpoint,
                reason: format!("the answer is larger than {MAX_RESPONSE_BYTES} bytes"),
            }
            .into());
        }
        body.extend_from_slice(&chunk);
    }
    let body = body.freeze();
    if status.is_success() {
        return Ok(body);
    }
    let rejection = Rejection::parse(status.as_u16(), retry_after, &body);
    if rejection.code == tonic::Code::Ok {
        // An error answer that claims success is no answer usermeta can act on.
        return Err(UpstreamError::BadResponse {
            endpoint,
            reason: format!(
                "HTTP {status} with an error body whose code is 0 (OK)",
                status = status.as_u16()
            ),
        }
        .into());
    }
    Err(UpstreamError::Rejected {
        endpoint,
        http_status: status.as_u16(),
        rejection,
    }
    .into())
}

/// Turns a stored entry from ZITADEL's wire shape into the domain shape. A value that does not decode keeps
/// its key and loses its value, with a warning naming the key (never the value).
fn decode_item(
    endpoint: Endpoint,
    key: String,
    value: Option<&str>,
    details: Option<wire::ObjectDetails>,
) -> MetadataItem {
    let value = match value {
        Some(encoded) => match value::decode(encoded) {
            Ok(bytes) => Some(bytes),
            Err(error) => {
                tracing::warn!(%endpoint, key = %key, %error, "metadata value from ZITADEL is not base64; returning the key without a value");
                None
            }
        },
        // proto3 JSON omits an empty `bytes` field.
        None => Some(Vec::new()),
    };
    let timestamp = |field: &str, text: Option<String>| {
        let text = text?;
        match text.parse::<prost_types::Timestamp>() {
            Ok(ts) => Some(ts),
            Err(error) => {
                tracing::warn!(%endpoint, key = %key, field, %error, "timestamp from ZITADEL is not RFC 3339; leaving it unset");
                None
            }
        }
    };
    let (created, changed) = details
        .map(|d| (d.creation_date, d.change_date))
        .unwrap_or_default();
    MetadataItem {
        create_time: timestamp("creationDate", created),
        update_time: timestamp("changeDate", changed),
        value,
        key,
    }
}
