//! The `Authorization` header of management calls, kept valid without stalling requests.
//!
//! A PAT is the header itself. A JWT-profile key or client credentials are exchanged at `/oauth/v2/token` for
//! an access token whose lifetime is read from `expires_in`. The token is cached behind an [`ArcSwapOption`]
//! (a request reads it without taking a lock), and one background task refreshes it ahead of expiry, so in
//! steady state no request waits. A request that finds no valid token (at start-up, after expiry, or after a
//! 401) joins the one refresh in flight; concurrent callers share it rather than each minting a token.

use std::{
    fmt,
    sync::{Arc, Mutex, OnceLock, PoisonError, Weak},
    time::{Duration, Instant, SystemTime},
};

use arc_swap::ArcSwapOption;
use futures::{
    FutureExt as _,
    future::{BoxFuture, Shared},
};
use http::HeaderValue;
use secrecy::SecretString;
use serde::Deserialize;
use tokio::{sync::Notify, task::AbortHandle};
use url::Url;

use super::{
    BearerError, Endpoint, Instrumentation, ServiceCredential, SetupError, UpstreamError,
    credential::ServiceKey,
};

/// The scope of service tokens: `openid` (required by both grants) and the ZITADEL project audience, without
/// which the management API refuses OAuth tokens.
pub(crate) const SERVICE_TOKEN_SCOPE: &str = "openid urn:zitadel:iam:org:project:id:zitadel:aud";

const JWT_BEARER_GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// Refresh at least this long before expiry (when the lifetime allows): covers a slow or retried refresh.
const MIN_MARGIN: Duration = Duration::from_secs(30);
/// Never refresh more often than this in the background, whatever `expires_in` says.
const MIN_REFRESH_DELAY: Duration = Duration::from_secs(1);
/// Backoff of background retries after a failed refresh.
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(60);

/// The source of the management API's `Authorization` header.
pub(crate) struct TokenSource {
    kind: Kind,
}

enum Kind {
    Fixed {
        authorization: HeaderValue,
    },
    OAuth {
        oauth: Arc<OAuth>,
        background: OnceLock<AbortHandle>,
    },
}

/// One exchanged access token.
struct Token {
    authorization: HeaderValue,
    /// When the background task replaces it.
    refresh_at: Instant,
    /// `None` when ZITADEL gave no `expires_in`: then only a 401 retires it.
    expires_at: Option<Instant>,
}

impl Token {
    fn is_valid(&self, now: Instant) -> bool {
        self.expires_at.is_none_or(|at| now < at)
    }
}

enum Grant {
    JwtProfile(ServiceKey),
    ClientCredentials { basic: HeaderValue },
}

type Refresh = Shared<BoxFuture<'static, Result<Arc<Token>, UpstreamError>>>;

struct OAuth {
    grant: Grant,
    /// What the credential is, for messages (ids only).
    credential: String,
    http: reqwest::Client,
    instrumentation: Instrumentation,
    /// The request budget toward ZITADEL: token requests count against it.
    budget: Option<Arc<crate::fleet_budget::Budget>>,
    timeout: Duration,
    token_url: Url,
    /// The `aud` of JWT-profile assertions: the issuer URL without a trailing slash.
    issuer: String,
    current: ArcSwapOption<Token>,
    /// The refresh in flight, if any. Tokens are stored under this lock too, so a check-then-start is atomic.
    in_flight: Mutex<Option<Refresh>>,
    /// The last failed refresh: requests within [`FAILURE_HOLD`] of it get its error instead of a new token
    /// request each, so a rejected credential does not turn traffic into a stream of token requests.
    last_failure: Mutex<Option<(Instant, UpstreamError)>>,
    /// Wakes the background task when the token changed outside its schedule (stored, or dropped after a
    /// 401). Not inside `OAuth`'s `Arc`, so the sleeping task holds only a `Weak`.
    wake: Arc<Notify>,
}

/// How long a failed refresh answers requests before the next one is tried on a request's behalf.
const FAILURE_HOLD: Duration = Duration::from_secs(1);

impl TokenSource {
    /// Builds the source; for the OAuth kinds the first token is fetched in the background at once (when
    /// called inside a tokio runtime; otherwise on first use).
    pub(crate) fn new(
        credential: ServiceCredential,
        http: reqwest::Client,
        instrumentation: Instrumentation,
        budget: Option<Arc<crate::fleet_budget::Budget>>,
        timeout: Duration,
        issuer: String,
        token_url: Url,
    ) -> Result<Self, SetupError> {
        let credential_text = credential.describe();
        let grant = match credential {
            ServiceCredential::Pat(pat) => {
                let authorization = super::credential::pat_authorization(&pat)
                    .map_err(SetupError::BadCredential)?;
                return Ok(TokenSource {
                    kind: Kind::Fixed { authorization },
                });
            }
            ServiceCredential::JwtProfile(key) => Grant::JwtProfile(key),
            ServiceCredential::ClientCredentials { client_id, secret } => {
                Grant::ClientCredentials {
                    basic: basic_authorization(&client_id, &secret)?,
                }
            }
        };
        let source = TokenSource {
            kind: Kind::OAuth {
                oauth: Arc::new(OAuth {
                    grant,
                    credential: credential_text,
                    http,
                    instrumentation,
                    budget,
                    timeout,
                    token_url,
                    issuer,
                    current: ArcSwapOption::empty(),
                    in_flight: Mutex::new(None),
                    last_failure: Mutex::new(None),
                    wake: Arc::new(Notify::new()),
                }),
                background: OnceLock::new(),
            },
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            source.start_background();
        }
        Ok(source)
    }

    /// The header for the next management call. Lock-free while a valid token is cached.
    pub(crate) async fn authorization(&self) -> Result<HeaderValue, UpstreamError> {
        match &self.kind {
            Kind::Fixed { authorization } => Ok(authorization.clone()),
            Kind::OAuth { oauth, .. } => {
                if let Some(token) = oauth.current.load().as_deref()
                    && token.is_valid(Instant::now())
                {
                    return Ok(token.authorization.clone());
                }
                self.start_background();
                let token = oauth
                    .refresh(
                        |current| !current.is_some_and(|t| t.is_valid(Instant::now())),
                        true,
                    )
                    .await?;
                Ok(token.authorization.clone())
            }
        }
    }

    /// Whether a rejected header can be replaced (a PAT cannot).
    pub(crate) fn can_refresh(&self) -> bool {
        matches!(self.kind, Kind::OAuth { .. })
    }

    /// Forgets `rejected` if it is still the cached token, so the next [`Self::authorization`] refreshes. A
    /// token already replaced (another request saw the 401 first) is left alone: that refresh is shared.
    pub(crate) fn invalidate(&self, rejected: &HeaderValue) {
        if let Kind::OAuth { oauth, .. } = &self.kind {
            let _slot = oauth.lock_in_flight();
            if oauth
                .current
                .load()
                .as_deref()
                .is_some_and(|t| t.authorization == rejected)
            {
                tracing::info!(credential = %oauth.credential, "ZITADEL rejected the management API token; refreshing it");
                oauth.current.store(None);
                oauth.wake.notify_one();
            }
        }
    }

    fn start_background(&self) {
        if let Kind::OAuth { oauth, background } = &self.kind {
            background.get_or_init(|| {
                tokio::spawn(run_background(
                    Arc::downgrade(oauth),
                    Arc::clone(&oauth.wake),
                ))
                .abort_handle()
            });
        }
    }
}

impl Drop for TokenSource {
    fn drop(&mut self) {
        if let Kind::OAuth { background, .. } = &self.kind
            && let Some(handle) = background.get()
        {
            handle.abort();
        }
    }
}

impl fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Fixed { .. } => f.write_str("TokenSource(personal access token, <redacted>)"),
            Kind::OAuth { oauth, .. } => write!(f, "TokenSource({}, <redacted>)", oauth.credential),
        }
    }
}

/// The token endpoint's `client_secret_basic` header.
fn basic_authorization(client_id: &str, secret: &SecretString) -> Result<HeaderValue, SetupError> {
    super::credential::client_secret_basic(client_id, secret)
        .ok_or(SetupError::BadCredential(BearerError::BadCharacters))
}

/// How long after issue a token of `lifetime` is refreshed: when a fifth of its lifetime is left, but at
/// least [`MIN_MARGIN`] ahead, and never in its first half nor sooner than [`MIN_REFRESH_DELAY`].
fn refresh_delay(lifetime: Duration) -> Duration {
    let margin = (lifetime / 5).max(MIN_MARGIN).min(lifetime / 2);
    lifetime.saturating_sub(margin).max(MIN_REFRESH_DELAY)
}

impl OAuth {
    fn lock_in_flight(&self) -> std::sync::MutexGuard<'_, Option<Refresh>> {
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Joins the refresh in flight, or starts one if `needed(current token)` still holds under the lock (a
    /// refresh may have finished since the caller looked). The fetch runs in its own task, so a caller that
    /// gives up does not cancel it for the others. With `hold_failures`, a refresh that failed within
    /// [`FAILURE_HOLD`] answers again instead of a new token request.
    fn refresh(
        self: &Arc<Self>,
        needed: impl Fn(Option<&Token>) -> bool,
        hold_failures: bool,
    ) -> Refresh {
        let mut slot = self.lock_in_flight();
        if let Some(refresh) = slot.as_ref() {
            return refresh.clone();
        }
        let current = self.current.load_full();
        if let Some(token) = current.as_ref()
            && !needed(Some(token))
        {
            return futures::future::ready(Ok(Arc::clone(token)))
                .boxed()
                .shared();
        }
        if hold_failures
            && let Some((at, error)) = self
                .last_failure
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
            && at.elapsed() < FAILURE_HOLD
        {
            return futures::future::ready(Err(error.clone())).boxed().shared();
        }
        let this = Arc::clone(self);
        let task = tokio::spawn(async move {
            let result = this.fetch().await;
            let mut slot = this.lock_in_flight();
            let mut last_failure = this
                .last_failure
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match &result {
                Ok(token) => {
                    this.current.store(Some(Arc::clone(token)));
                    *last_failure = None;
                    this.wake.notify_one();
                }
                Err(error) => *last_failure = Some((Instant::now(), error.clone())),
            }
            *slot = None;
            result
        });
        let credential = self.credential.clone();
        let refresh = async move {
            task.await.unwrap_or_else(|_| {
                Err(UpstreamError::CredentialRefresh {
                    credential,
                    cause: Box::new(UpstreamError::BadResponse {
                        endpoint: Endpoint::Token,
                        reason: "the refresh task ended unexpectedly".to_owned(),
                    }),
                })
            })
        }
        .boxed()
        .shared();
        *slot = Some(refresh.clone());
        refresh
    }

    /// The token request of this credential's grant.
    fn token_request(&self) -> Result<reqwest::RequestBuilder, UpstreamError> {
        let mut form = url::form_urlencoded::Serializer::new(String::new());
        let mut request = self.http.post(self.token_url.clone());
        match &self.grant {
            Grant::JwtProfile(key) => {
                let assertion = key
                    .assertion(&self.issuer, SystemTime::now())
                    .map_err(|e| UpstreamError::BadResponse {
                        endpoint: Endpoint::Token,
                        reason: format!("the JWT-profile assertion could not be signed ({e})"),
                    })?;
                form.append_pair("grant_type", JWT_BEARER_GRANT)
                    .append_pair("assertion", &assertion);
            }
            Grant::ClientCredentials { basic } => {
                form.append_pair("grant_type", "client_credentials");
                request = request.header(http::header::AUTHORIZATION, basic.clone());
            }
        }
        form.append_pair("scope", SERVICE_TOKEN_SCOPE);
        Ok(request
            .header(
                http::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(form.finish()))
    }

    /// One token request.
    async fn fetch(&self) -> Result<Arc<Token>, UpstreamError> {
        let failed = |cause: UpstreamError| UpstreamError::CredentialRefresh {
            credential: self.credential.clone(),
            cause: Box::new(cause),
        };
        let endpoint = Endpoint::Token;
        let request = self.token_request().map_err(failed)?;

        // Lifetimes count from before the request: the token cannot have been issued earlier.
        let sent = Instant::now();
        // Counted against the request budget, never refused by it: no management call works without it.
        if let Some(budget) = &self.budget {
            let left = budget.charge(sent);
            self.instrumentation.hooks().upstream_budget(
                crate::budget::Class::Manage.name(),
                true,
                left,
            );
        }
        let body = super::send(&self.instrumentation, endpoint, self.timeout, request).await;
        self.instrumentation.hooks().token_refreshed(body.is_ok());
        let body = body.map_err(|failure| failed(failure.error))?;
        let answer: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
            failed(UpstreamError::BadResponse {
                endpoint,
                reason: format!("not a token response ({e})"),
            })
        })?;
        let bad = |reason: &str| {
            failed(UpstreamError::BadResponse {
                endpoint,
                reason: reason.to_owned(),
            })
        };
        if answer
            .token_type
            .as_deref()
            .is_some_and(|t| !t.eq_ignore_ascii_case("bearer"))
        {
            return Err(bad("the token type is not Bearer"));
        }
        let access_token = answer.access_token.trim();
        if access_token.is_empty() {
            return Err(bad("the access token is empty"));
        }
        let mut authorization = HeaderValue::try_from(format!("Bearer {access_token}"))
            .map_err(|_| bad("the access token has characters a header cannot carry"))?;
        authorization.set_sensitive(true);

        let lifetime = answer.expires_in.map(Duration::from_secs);
        match lifetime {
            Some(lifetime) => {
                tracing::debug!(credential = %self.credential, expires_in = lifetime.as_secs(), "obtained a management API token");
            }
            None => {
                tracing::warn!(credential = %self.credential, "ZITADEL's token answer has no expires_in; the token is used until ZITADEL rejects it");
            }
        }
        Ok(Arc::new(Token {
            authorization,
            refresh_at: lifetime.map_or(sent + MIN_REFRESH_DELAY, |l| sent + refresh_delay(l)),
            expires_at: lifetime.map(|l| sent + l),
        }))
    }
}

/// ZITADEL's token answer. No `Debug`: it holds the token.
#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    token_type: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// Keeps the token fresh until the [`TokenSource`] is dropped (it aborts this task; the `Weak` is a second
/// guard). Failures are retried with backoff while the old token, if any, stays in use; a token dropped after
/// a 401 or replaced by a request's refresh wakes it to reschedule.
async fn run_background(oauth: Weak<OAuth>, wake: Arc<Notify>) {
    let mut failures: u32 = 0;
    loop {
        let wait = {
            let Some(this) = oauth.upgrade() else { return };
            match (failures, this.current.load().as_deref()) {
                (0, Some(token)) => token
                    .expires_at
                    .map(|_| token.refresh_at.saturating_duration_since(Instant::now())),
                (0, None) => Some(Duration::ZERO),
                (n, _) => Some(
                    FIRST_RETRY
                        .saturating_mul(2u32.saturating_pow(n - 1))
                        .min(MAX_RETRY),
                ),
            }
        };
        let notified = wake.notified();
        match wait {
            Some(wait) => {
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = notified => {}
                }
            }
            // No known expiry: nothing to do until a 401 drops the token.
            None => notified.await,
        }
        let refresh = {
            let Some(this) = oauth.upgrade() else { return };
            let due = |current: Option<&Token>| {
                current.is_none_or(|t| t.expires_at.is_some() && Instant::now() >= t.refresh_at)
            };
            if !due(this.current.load().as_deref()) {
                // Woken by a new token: reschedule for it.
                failures = 0;
                continue;
            }
            this.refresh(due, false)
        };
        match refresh.await {
            Ok(_) => failures = 0,
            Err(error) => {
                failures = failures.saturating_add(1);
                tracing::warn!(%error, attempt = failures, "could not refresh the management API token; retrying in the background");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refreshes_ahead_of_expiry_with_a_margin() {
        // ZITADEL's usual 12 h: refresh with a fifth left.
        let twelve_hours = Duration::from_secs(43199);
        assert_eq!(refresh_delay(twelve_hours), twelve_hours - twelve_hours / 5);
        // Short lifetimes: at least 30 s ahead, but not in the first half.
        assert_eq!(
            refresh_delay(Duration::from_secs(120)),
            Duration::from_secs(90)
        );
        assert_eq!(
            refresh_delay(Duration::from_secs(2)),
            Duration::from_secs(1)
        );
        // Never a busy loop.
        assert_eq!(refresh_delay(Duration::ZERO), MIN_REFRESH_DELAY);
    }

    #[test]
    fn basic_auth_form_url_encodes_both_parts() {
        // The example of zitadel-api.md §1.3.
        let value = basic_authorization(
            "78366401571920522@amce",
            &SecretString::from("veryweaksecret!"),
        )
        .unwrap();
        assert_eq!(
            value,
            "Basic NzgzNjY0MDE1NzE5MjA1MjIlNDBhbWNlOnZlcnl3ZWFrc2VjcmV0JTIx"
        );
        assert!(value.is_sensitive());
    }
}
