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
//! One caller's share: each caller token (by its digest, set with [`for_caller`]) may spend at most
//! `caller_share` of the rate and of the burst, in a bucket of its own besides the replica's. So one caller's
//! BatchGetMetadata or FindUsersByMetadata (up to hundreds of requests each) cannot spend the whole budget:
//! the rest stays for everyone else.
//!
//! A refused request is not sent; the caller learns when a token of its class (or of its share) will be there.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use crate::{Endpoint, UpstreamError};

tokio::task_local! {
    static IDENTIFIED: ();
    static CALLER: [u8; 32];
}

/// Callers' buckets tracked before those full again (idle) are forgotten.
const PRUNE_CALLERS_AT: usize = 10_000;

/// Runs `future` as the work of the caller whose token has `digest` (never the token itself): its requests
/// to ZITADEL spend that caller's share of the budget.
pub async fn for_caller<F: Future>(digest: [u8; 32], future: F) -> F::Output {
    CALLER.scope(digest, future).await
}

/// The caller of the request being made, if it is made for one.
pub(crate) fn current_caller() -> Option<[u8; 32]> {
    CALLER.try_with(|digest| *digest).ok()
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
    /// Share of the rate and of the burst one caller token may spend (above 0, at most 1; 1: one caller may
    /// spend it all).
    pub caller_share: f64,
}

impl UpstreamBudget {
    /// The default rate, for one instance behind its own source IP in front of ZITADEL Cloud (50 requests per
    /// second per IP over a minute): four fifths of it, so that with the default burst one instance sends at
    /// most 40 + 60 × 40 = 2440 requests in any minute, of the 3000 allowed. Replicas sharing an IP divide it.
    pub const DEFAULT_RATE: f64 = 40.0;

    /// The default reserve: a fifth of the burst is kept for identified callers.
    pub const DEFAULT_RESERVE: f64 = 0.2;

    /// The default share of one caller: half of the budget stays for everyone else.
    pub const DEFAULT_CALLER_SHARE: f64 = 0.5;

    /// `rate` per second with a burst of one second's worth and the default reserve and caller share.
    pub fn per_second(rate: f64) -> Self {
        UpstreamBudget {
            rate,
            burst: one_second_of(rate),
            reserve: Self::DEFAULT_RESERVE,
            caller_share: Self::DEFAULT_CALLER_SHARE,
        }
    }

    /// One caller's part: `caller_share` of the rate, and of the burst (at least one request); `None` when a
    /// caller may spend it all.
    fn caller_part(&self) -> Option<(f64, f64)> {
        let share = self.caller_share;
        // NaN, 0 or 1 and above: no share of its own (settings accept only above 0, at most 1).
        if !(share > 0.0 && share < 1.0) {
            return None;
        }
        let burst = (f64::from(self.burst.max(1)) * share).floor().max(1.0);
        Some((self.rate.max(f64::MIN_POSITIVE) * share, burst))
    }
}

impl Default for UpstreamBudget {
    /// [`UpstreamBudget::DEFAULT_RATE`] per second, a burst of one second's worth, the default reserve and
    /// caller share.
    fn default() -> Self {
        Self::per_second(Self::DEFAULT_RATE)
    }
}

/// A second's worth of requests at `rate`, at least one.
pub fn one_second_of(rate: f64) -> u32 {
    // Saturating float-to-int conversion.
    (rate.ceil() as u32).max(1)
}

/// The tokens of `budget`'s burst identification must leave: the reserve, capped so identification keeps at
/// least one token of the bucket.
pub(crate) fn reserve_tokens(budget: &UpstreamBudget) -> f64 {
    let burst = f64::from(budget.burst.max(1));
    (budget.reserve.clamp(0.0, 1.0) * burst)
        .floor()
        .min(burst - 1.0)
}

/// What refused a request.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Limit {
    /// The replica's budget, for requests of this class.
    Budget(Class),
    /// The caller's share of it: `per_second` and `burst` are the share's.
    CallerShare { per_second: f64, burst: f64 },
}

/// A request the budget refused: nothing was sent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Refused {
    /// When a token of the request's class (or of the caller's share) will be there, at the earliest.
    pub(crate) retry_after: Duration,
    /// The tokens in the bucket that refused.
    pub(crate) tokens: f64,
    pub(crate) by: Limit,
}

impl Refused {
    /// The error of a request to `endpoint` refused so.
    pub(crate) fn error(self, endpoint: Endpoint) -> UpstreamError {
        match self.by {
            Limit::Budget(class) => UpstreamError::BudgetExhausted {
                endpoint,
                class,
                retry_after: self.retry_after,
            },
            Limit::CallerShare { per_second, burst } => UpstreamError::CallerShareExhausted {
                endpoint,
                retry_after: self.retry_after,
                per_second,
                // A whole number of requests (at least one), within u32 as the burst is.
                burst: burst as u32,
            },
        }
    }
}

/// The token bucket of one ZITADEL, and one per caller for its share.
#[derive(Debug)]
pub(crate) struct Bucket {
    rate: f64,
    burst: f64,
    /// Tokens identification must leave in the bucket.
    reserve: f64,
    state: Mutex<State>,
    shares: Option<Shares>,
}

#[derive(Debug, Clone, Copy)]
struct State {
    /// May go below zero after a [`Bucket::charge`]: the debt is repaid before anything else is granted.
    tokens: f64,
    at: Instant,
}

impl State {
    fn full(burst: f64, now: Instant) -> Self {
        State {
            tokens: burst,
            at: now,
        }
    }

    /// Adds what `rate` refilled since the last look, up to `burst`.
    fn refill(&mut self, rate: f64, burst: f64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(burst);
        self.at = self.at.max(now);
    }
}

/// Each caller's share: a bucket per caller token digest (never the token), made full on its first request.
#[derive(Debug)]
pub(crate) struct Shares {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<[u8; 32], State>>,
}

impl Shares {
    /// Each caller's part of `budget`, unless one caller may spend it all.
    pub(crate) fn of(budget: &UpstreamBudget) -> Option<Shares> {
        budget.caller_part().map(|(rate, burst)| Shares {
            rate,
            burst,
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// Whether `caller`'s share holds a token now (it is spent by [`Shares::spend`] once the budget granted
    /// the request, so a refusal there costs no share).
    pub(crate) fn check(&self, caller: [u8; 32], now: Instant) -> Result<(), Refused> {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.len() >= PRUNE_CALLERS_AT {
            // A full bucket is what a caller not seen before gets: forgetting it changes nothing.
            buckets.retain(|_, bucket| {
                bucket.refill(self.rate, self.burst, now);
                bucket.tokens < self.burst
            });
        }
        let share = buckets
            .entry(caller)
            .or_insert_with(|| State::full(self.burst, now));
        share.refill(self.rate, self.burst, now);
        if share.tokens < 1.0 {
            return Err(Refused {
                retry_after: Duration::from_secs_f64((1.0 - share.tokens) / self.rate),
                tokens: share.tokens,
                by: Limit::CallerShare {
                    per_second: self.rate,
                    burst: self.burst,
                },
            });
        }
        Ok(())
    }

    /// Spends a token of `caller`'s share (checked with [`Shares::check`]).
    pub(crate) fn spend(&self, caller: [u8; 32]) {
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(share) = buckets.get_mut(&caller) {
            share.tokens -= 1.0;
        }
    }
}

impl Bucket {
    pub(crate) fn new(budget: UpstreamBudget, now: Instant) -> Self {
        let burst = f64::from(budget.burst.max(1));
        let reserve = reserve_tokens(&budget);
        Bucket {
            rate: budget.rate.max(f64::MIN_POSITIVE),
            burst,
            reserve,
            state: Mutex::new(State::full(burst, now)),
            shares: Shares::of(&budget),
        }
    }

    /// The bucket's rate, requests per second.
    pub(crate) fn rate(&self) -> f64 {
        self.rate
    }

    fn refilled(&self, now: Instant) -> std::sync::MutexGuard<'_, State> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.refill(self.rate, self.burst, now);
        state
    }

    /// Takes a token for a request of `class` made now (for the caller [`for_caller`] names, if any), or says
    /// when one will be there. `Ok` holds the tokens left in the replica's bucket.
    pub(crate) fn try_take(&self, class: Class, now: Instant) -> Result<f64, Refused> {
        let (Some(shares), Some(caller)) = (&self.shares, current_caller()) else {
            return self.take(class, now);
        };
        shares.check(caller, now)?;
        // Taken from the share only once the replica's bucket granted it: a refusal there costs no share.
        let left = self.take(class, now)?;
        shares.spend(caller);
        Ok(left)
    }

    /// Takes a token of the replica's bucket for a request of `class`.
    fn take(&self, class: Class, now: Instant) -> Result<f64, Refused> {
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
            by: Limit::Budget(class),
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
                    caller_share: 1.0,
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
    async fn one_caller_spends_only_its_share_and_leaves_the_rest_to_others() {
        let now = Instant::now();
        // Ten requests, half of them one caller's at most.
        let bucket = Bucket::new(
            UpstreamBudget {
                rate: 10.0,
                burst: 10,
                reserve: 0.0,
                caller_share: 0.5,
            },
            now,
        );
        let (greedy, other) = ([1; 32], [2; 32]);
        for left in [9.0, 8.0, 7.0, 6.0, 5.0] {
            let taken = for_caller(greedy, async { bucket.try_take(Class::Manage, now) }).await;
            assert_eq!(taken, Ok(left));
        }
        let refused = for_caller(greedy, async { bucket.try_take(Class::Manage, now) })
            .await
            .unwrap_err();
        assert_eq!(
            refused.by,
            Limit::CallerShare {
                per_second: 5.0,
                burst: 5.0
            }
        );
        // One of its share's tokens comes back at its rate: 5 per second.
        assert!(close(refused.retry_after, 200), "{:?}", refused.retry_after);
        // Another caller, and work for no caller, still find the other half.
        for _ in 0..4 {
            assert!(
                for_caller(other, async { bucket.try_take(Class::Manage, now) })
                    .await
                    .is_ok()
            );
        }
        assert!(bucket.try_take(Class::Manage, now).is_ok());
        // The replica's bucket is empty: its refusal names the budget and costs no share.
        let refused = for_caller(other, async { bucket.try_take(Class::Manage, now) })
            .await
            .unwrap_err();
        assert_eq!(refused.by, Limit::Budget(Class::Manage));
        let later = now + Duration::from_millis(100);
        assert!(
            for_caller(other, async { bucket.try_take(Class::Manage, later) })
                .await
                .is_ok()
        );
    }

    #[test]
    fn a_share_is_at_least_one_request_and_one_means_none() {
        let part = |burst, caller_share| {
            UpstreamBudget {
                rate: 4.0,
                burst,
                reserve: 0.2,
                caller_share,
            }
            .caller_part()
        };
        assert_eq!(part(1, 0.5), Some((2.0, 1.0)));
        assert_eq!(part(40, 0.5), Some((2.0, 20.0)));
        assert_eq!(part(40, 1.0), None);
        assert_eq!(part(40, f64::NAN), None);
        let default = UpstreamBudget::default();
        assert_eq!(default.rate, 40.0);
        assert_eq!(default.burst, 40);
        assert_eq!(default.caller_part(), Some((20.0, 20.0)));
        // Within ZITADEL Cloud's 50 requests per second over any minute, with room to spare.
        assert!(f64::from(default.burst) + 60.0 * default.rate <= 0.85 * 60.0 * 50.0);
    }

    #[tokio::test]
    async fn idle_callers_are_forgotten() {
        let now = Instant::now();
        let bucket = Bucket::new(
            UpstreamBudget {
                rate: 1000.0,
                burst: 10,
                reserve: 0.0,
                caller_share: 0.5,
            },
            now,
        );
        for i in 0..PRUNE_CALLERS_AT as u32 {
            let mut caller = [0; 32];
            caller[..4].copy_from_slice(&i.to_le_bytes());
            let _ = for_caller(caller, async { bucket.try_take(Class::Manage, now) }).await;
        }
        let later = now + Duration::from_secs(1);
        let _ = for_caller([0xff; 32], async { bucket.try_take(Class::Manage, later) }).await;
        let tracked = bucket
            .shares
            .as_ref()
            .unwrap()
            .buckets
            .lock()
            .unwrap()
            .len();
        assert_eq!(
            tracked, 1,
            "the refilled callers are gone, the new one is there"
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
