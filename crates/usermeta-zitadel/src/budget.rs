//! Staying inside ZITADEL's own rate limit: one token bucket per ZITADEL, taken by every HTTP request sent to
//! it (retries included: ZITADEL counts requests, not usermeta's calls).
//!
//! ZITADEL Cloud allows 50 requests per second per source IP over a minute, all APIs together, and a fleet
//! behind one NAT shares that. Cached answers cost nothing; what costs is a token usermeta does not know yet
//! (random or rotating tokens each mean a userinfo or introspection call) and the management calls of callers
//! already identified. The bucket prefers the second: identification (the [`Class::Identify`] requests) may
//! only take a token while more than the reserve is left, so when new tokens exhaust the budget, identified
//! callers' calls still get the reserve and then every token that refills.
//!
//! A refused request is not sent; the caller learns when a token of its class will be there.

use std::{
    future::Future,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use crate::Endpoint;

tokio::task_local! {
    static IDENTIFIED: ();
}

/// Runs `future` as the work of a caller already identified: its calls with the caller's token (the auth
/// API, userinfo for the metadata claim) count as [`Class::Manage`], not as identification.
pub async fn for_identified_caller<F: Future>(future: F) -> F::Output {
    IDENTIFIED.scope((), future).await
}

/// Who a request to ZITADEL is for, as the budget ranks them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Finding out who a token belongs to (userinfo, introspection, signing keys), and any call with a
    /// caller's token usermeta has not identified: what random or rotating tokens cost. Refused first.
    Identify,
    /// The management API with the service credential (asked only for identified callers the policy allowed),
    /// the service credential's own token, and calls with the token of a caller already identified.
    Manage,
}

impl Class {
    /// The class of a request to `endpoint` made now (inside [`for_identified_caller`] or not).
    pub fn of(endpoint: Endpoint) -> Class {
        let identifies = matches!(
            endpoint,
            Endpoint::Userinfo
                | Endpoint::AuthListMyMetadata
                | Endpoint::Introspection
                | Endpoint::Jwks
        );
        if identifies && IDENTIFIED.try_with(|()| ()).is_err() {
            Class::Identify
        } else {
            Class::Manage
        }
    }

    /// The metrics label.
    pub fn name(self) -> &'static str {
        match self {
            Class::Identify => "identify",
            Class::Manage => "manage",
        }
    }
}

/// How many requests per second usermeta may send to one ZITADEL.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpstreamBudget {
    /// Requests per second, on average (above 0).
    pub rate: f64,
    /// Requests that may go at once after a calm period (the bucket's size, at least 1).
    pub burst: u32,
    /// Share of the burst only [`Class::Manage`] requests may use (0 to 1; capped so identification keeps
    /// at least one token of the bucket).
    pub reserve: f64,
}

impl UpstreamBudget {
    /// The default reserve: a fifth of the burst is kept for identified callers.
    pub const DEFAULT_RESERVE: f64 = 0.2;

    /// `rate` per second with a burst of one second's worth and the default reserve.
    pub fn per_second(rate: f64) -> Self {
        UpstreamBudget {
            rate,
            burst: one_second_of(rate),
            reserve: Self::DEFAULT_RESERVE,
        }
    }
}

/// A second's worth of requests at `rate`, at least one.
pub fn one_second_of(rate: f64) -> u32 {
    // Saturating float-to-int conversion.
    (rate.ceil() as u32).max(1)
}

/// A request the budget refused: nothing was sent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Refused {
    /// When a token of the request's class will be there, at the earliest.
    pub(crate) retry_after: Duration,
    /// The tokens in the bucket.
    pub(crate) tokens: f64,
}

/// The token bucket of one ZITADEL.
#[derive(Debug)]
pub(crate) struct Bucket {
    rate: f64,
    burst: f64,
    /// Tokens identification must leave in the bucket.
    reserve: f64,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// May go below zero after a [`Bucket::charge`]: the debt is repaid before anything else is granted.
    tokens: f64,
    at: Instant,
}

impl Bucket {
    pub(crate) fn new(budget: UpstreamBudget, now: Instant) -> Self {
        let burst = f64::from(budget.burst.max(1));
        let reserve = (budget.reserve.clamp(0.0, 1.0) * burst)
            .floor()
            .min(burst - 1.0);
        Bucket {
            rate: budget.rate.max(f64::MIN_POSITIVE),
            burst,
            reserve,
            state: Mutex::new(State {
                tokens: burst,
                at: now,
            }),
        }
    }

    fn refilled(&self, now: Instant) -> std::sync::MutexGuard<'_, State> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let elapsed = now.saturating_duration_since(state.at).as_secs_f64();
        state.tokens = (state.tokens + elapsed * self.rate).min(self.burst);
        state.at = state.at.max(now);
        state
    }

    /// Takes a token for a request of `class`, or says when one will be there. `Ok` holds the tokens left.
    pub(crate) fn try_take(&self, class: Class, now: Instant) -> Result<f64, Refused> {
        let floor = match class {
            Class::Identify => self.reserve,
            Class::Manage => 0.0,
        };
        let mut state = self.refilled(now);
        if state.tokens - 1.0 >= floor {
            state.tokens -= 1.0;
            return Ok(state.tokens);
        }
        let missing = floor + 1.0 - state.tokens;
        Err(Refused {
            retry_after: Duration::from_secs_f64(missing / self.rate),
            tokens: state.tokens,
        })
    }

    /// Counts a request that is sent whatever the budget says (the service credential's token, without which
    /// no management call works). Returns the tokens left, possibly below zero.
    pub(crate) fn charge(&self, now: Instant) -> f64 {
        let mut state = self.refilled(now);
        state.tokens -= 1.0;
        state.tokens
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bucket(rate: f64, burst: u32, reserve: f64) -> (Bucket, Instant) {
        let now = Instant::now();
        (
            Bucket::new(
                UpstreamBudget {
                    rate,
                    burst,
                    reserve,
                },
                now,
            ),
            now,
        )
    }

    /// Within a microsecond of `ms` milliseconds (float arithmetic).
    fn close(wait: Duration, ms: u64) -> bool {
        wait.abs_diff(Duration::from_millis(ms)) < Duration::from_micros(1)
    }

    #[test]
    fn the_burst_goes_at_once_then_the_rate_refills_it() {
        let (bucket, now) = bucket(10.0, 5, 0.0);
        for left in (0..5).rev() {
            assert_eq!(bucket.try_take(Class::Manage, now), Ok(f64::from(left)));
        }
        let refused = bucket.try_take(Class::Manage, now).unwrap_err();
        assert!(close(refused.retry_after, 100), "{:?}", refused.retry_after);
        let later = now + Duration::from_millis(100);
        assert!(bucket.try_take(Class::Manage, later).is_ok());
        assert!(bucket.try_take(Class::Manage, later).is_err());
        // Never more than the burst, however long it was calm.
        let calm = later + Duration::from_secs(3600);
        for _ in 0..5 {
            assert!(bucket.try_take(Class::Manage, calm).is_ok());
        }
        assert!(bucket.try_take(Class::Manage, calm).is_err());
    }

    #[test]
    fn over_a_minute_no_more_than_burst_plus_rate_times_sixty_go() {
        let (bucket, start) = bucket(12.0, 24, 0.2);
        let mut granted = 0;
        // A caller asking every millisecond for a minute, half identification, half management.
        for ms in 0..60_000u64 {
            let class = if ms % 2 == 0 {
                Class::Identify
            } else {
                Class::Manage
            };
            if bucket
                .try_take(class, start + Duration::from_millis(ms))
                .is_ok()
            {
                granted += 1;
            }
        }
        assert!(granted <= 24 + 12 * 60, "{granted}");
        assert!(granted >= 12 * 60, "{granted}");
    }

    #[test]
    fn identification_leaves_the_reserve_to_identified_callers() {
        let (bucket, now) = bucket(10.0, 10, 0.2);
        // Identification takes the bucket down to the reserve (two tokens), no further.
        for _ in 0..8 {
            assert!(bucket.try_take(Class::Identify, now).is_ok());
        }
        let refused = bucket.try_take(Class::Identify, now).unwrap_err();
        assert!(close(refused.retry_after, 100), "{:?}", refused.retry_after);
        // Management calls still go, down to empty.
        assert_eq!(bucket.try_take(Class::Manage, now), Ok(1.0));
        assert_eq!(bucket.try_take(Class::Manage, now), Ok(0.0));
        let refused = bucket.try_take(Class::Manage, now).unwrap_err();
        assert!(close(refused.retry_after, 100), "{:?}", refused.retry_after);
        // As tokens refill, identification waits until the reserve is whole again.
        let later = now + Duration::from_millis(250);
        assert!(bucket.try_take(Class::Identify, later).is_err());
        assert!(bucket.try_take(Class::Manage, later).is_ok());
        // 2.5 tokens refilled, one taken: 1.5 left, and identification needs 3.
        let refused = bucket.try_take(Class::Identify, later).unwrap_err();
        assert!(close(refused.retry_after, 150), "{:?}", refused.retry_after);
    }

    #[test]
    fn a_tiny_burst_keeps_a_token_for_identification() {
        let (bucket, now) = bucket(1.0, 1, 0.5);
        assert!(bucket.try_take(Class::Identify, now).is_ok());
        let (bucket, now) = self::bucket(1.0, 3, 1.0);
        assert!(bucket.try_take(Class::Identify, now).is_ok());
        assert!(bucket.try_take(Class::Identify, now).is_err());
    }

    #[test]
    fn a_charge_is_repaid_before_anything_else_goes() {
        let (bucket, now) = bucket(1.0, 1, 0.0);
        assert!(bucket.try_take(Class::Manage, now).is_ok());
        assert_eq!(bucket.charge(now), -1.0);
        let refused = bucket.try_take(Class::Manage, now).unwrap_err();
        assert!(
            close(refused.retry_after, 2000),
            "{:?}",
            refused.retry_after
        );
        assert!(
            bucket
                .try_take(Class::Manage, now + Duration::from_secs(2))
                .is_ok()
        );
    }

    #[tokio::test]
    async fn calls_with_a_callers_token_identify_unless_the_caller_is_identified() {
        assert_eq!(Class::of(Endpoint::Userinfo), Class::Identify);
        assert_eq!(Class::of(Endpoint::AuthListMyMetadata), Class::Identify);
        assert_eq!(Class::of(Endpoint::Introspection), Class::Identify);
        assert_eq!(Class::of(Endpoint::Jwks), Class::Identify);
        assert_eq!(Class::of(Endpoint::ManagementSetMetadata), Class::Manage);
        assert_eq!(Class::of(Endpoint::UserV2ListMetadata), Class::Manage);
        assert_eq!(Class::of(Endpoint::Token), Class::Manage);
        for_identified_caller(async {
            assert_eq!(Class::of(Endpoint::AuthListMyMetadata), Class::Manage);
            assert_eq!(Class::of(Endpoint::Userinfo), Class::Manage);
        })
        .await;
    }
}
