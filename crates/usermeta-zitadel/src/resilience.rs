//! Keeping ZITADEL's trouble from becoming usermeta's: the caller's deadline bounds every call, failed calls
//! that are safe to repeat are retried with jittered backoff inside a retry budget, and a circuit breaker per
//! upstream group fails fast while ZITADEL is down.
//!
//! - **Deadline**: a task-local set by the gRPC handler; each HTTP call gets `min(configured timeout,
//!   time left)`, and nothing is sent once the deadline has passed.
//! - **Retries**: connection errors, timeouts and HTTP 502/503/504, at most `max_attempts` calls, full-jitter
//!   exponential backoff, never past the deadline. 429 and other 4xx are never retried.
//! - **Budget**: a token bucket per group. Every call deposits `ratio` of a retry (capped at `floor`); every
//!   retry takes a whole one. Retries therefore stay below `floor + ratio × calls`, so a 5xx storm cannot
//!   multiply traffic.
//! - **Breaker**: `failures` consecutive failures (transport errors, timeouts, 5xx; not 4xx) open it for
//!   `cooldown`: calls fail at once without reaching ZITADEL. Then one probe goes through; its success closes
//!   it, its failure opens it again.

use std::{
    future::Future,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use rand::Rng as _;
use tokio::sync::watch;

tokio::task_local! {
    static DEADLINE: Option<Instant>;
}

/// Runs `future` with `deadline` bounding every ZITADEL call it makes.
pub async fn with_deadline<F: Future>(deadline: Instant, future: F) -> F::Output {
    DEADLINE.scope(Some(deadline), future).await
}

/// Runs `future` without a caller's deadline: for work shared by several requests (the cache's single-flight
/// lookups), where each waiting request bounds its own wait. Calls still get the configured timeout.
pub async fn detached<F: Future>(future: F) -> F::Output {
    DEADLINE.scope(None, future).await
}

/// The deadline of the request being served, if any.
pub(crate) fn current_deadline() -> Option<Instant> {
    DEADLINE.try_with(|deadline| *deadline).ok().flatten()
}

/// How usermeta protects itself and ZITADEL from ZITADEL's failures.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Resilience {
    /// Most calls (first try included) per request to ZITADEL; 1 turns retries off.
    pub max_attempts: u32,
    /// First backoff; each retry doubles it (full jitter).
    pub backoff_base: Duration,
    /// Longest backoff between two calls.
    pub backoff_max: Duration,
    /// Retries allowed per call made, on average (0.1 = at most 10 % extra traffic).
    pub retry_budget_ratio: f64,
    /// Retries always available after a calm period (the bucket size).
    pub retry_budget_floor: u32,
    /// Consecutive failures that open a breaker; 0 turns breakers off.
    pub breaker_failures: u32,
    /// How long an open breaker fails calls before letting a probe through.
    pub breaker_cooldown: Duration,
}

impl Default for Resilience {
    fn default() -> Self {
        Resilience {
            max_attempts: 3,
            backoff_base: Duration::from_millis(50),
            backoff_max: Duration::from_secs(1),
            retry_budget_ratio: 0.1,
            retry_budget_floor: 10,
            breaker_failures: 5,
            breaker_cooldown: Duration::from_secs(5),
        }
    }
}

impl Resilience {
    /// The full-jitter backoff before retry number `retry` (1 for the first retry).
    pub(crate) fn backoff(&self, retry: u32) -> Duration {
        let ceiling = self
            .backoff_base
            .saturating_mul(
                1u32.checked_shl(retry.saturating_sub(1))
                    .unwrap_or(u32::MAX),
            )
            .min(self.backoff_max);
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::rng().random_range(0..=millis))
    }
}

/// The upstream groups, each with its own budget and breaker: calls with the caller's token (userinfo, the
/// auth API) and calls with the service credential (the management API) fail for different reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    CallerToken,
    Management,
}

impl Group {
    pub const ALL: [Group; 2] = [Group::CallerToken, Group::Management];

    /// The gRPC health service name that reports this group's breaker.
    pub fn health_name(self) -> &'static str {
        match self {
            Group::CallerToken => "usermeta.zitadel.caller",
            Group::Management => "usermeta.zitadel.management",
        }
    }
}

/// Retry tokens in thousandths, so the ratio needs no float atomics.
const MILLI: u64 = 1000;

/// A token bucket of retries.
#[derive(Debug)]
pub(crate) struct RetryBudget {
    deposit: u64,
    cap: u64,
    balance: AtomicU64,
}

impl RetryBudget {
    pub(crate) fn new(ratio: f64, floor: u32) -> Self {
        // Saturating float-to-int conversion; a negative or NaN ratio means no deposits.
        let deposit = (ratio.clamp(0.0, 1000.0) * MILLI as f64) as u64;
        let cap = u64::from(floor) * MILLI;
        RetryBudget {
            deposit,
            cap,
            balance: AtomicU64::new(cap),
        }
    }

    /// A call was made: it earns a fraction of a retry.
    pub(crate) fn deposit(&self) {
        let _ = self
            .balance
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                Some(b.saturating_add(self.deposit).min(self.cap.max(MILLI)))
            });
    }

    /// Takes one retry, if the budget has one.
    pub(crate) fn withdraw(&self) -> bool {
        self.balance
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| {
                b.checked_sub(MILLI)
            })
            .is_ok()
    }
}

#[derive(Debug, Clone, Copy)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

/// How one call ended, for the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// ZITADEL answered (any 2xx, 4xx or 429): it is up.
    Alive,
    /// Transport error, timeout, or 5xx.
    Failed,
    /// Says nothing about ZITADEL (cut short by the caller's deadline, or cancelled).
    Unknown,
}

/// A circuit breaker for one group.
#[derive(Debug)]
pub(crate) struct Breaker {
    group: Group,
    threshold: u32,
    cooldown: Duration,
    state: Mutex<State>,
    /// `true` while open, for health reporting.
    open: watch::Sender<bool>,
}

impl Breaker {
    pub(crate) fn new(group: Group, threshold: u32, cooldown: Duration) -> Self {
        Breaker {
            group,
            threshold,
            cooldown,
            state: Mutex::new(State::Closed { failures: 0 }),
            open: watch::Sender::new(false),
        }
    }

    /// Follows whether the breaker is open.
    pub(crate) fn watch_open(&self) -> watch::Receiver<bool> {
        self.open.subscribe()
    }

    /// Lets a call through, or says how long until the next probe.
    pub(crate) fn admit(&self) -> Result<Pass<'_>, Duration> {
        if self.threshold == 0 {
            return Ok(Pass::new(self, false));
        }
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match *state {
            State::Closed { .. } => Ok(Pass::new(self, false)),
            State::Open { until } => {
                let now = Instant::now();
                if now < until {
                    Err(until - now)
                } else {
                    *state = State::HalfOpen { probing: true };
                    tracing::info!(group = ?self.group, "ZITADEL circuit half-open: probing");
                    Ok(Pass::new(self, true))
                }
            }
            // One probe at a time; the others fail fast until it has answered.
            State::HalfOpen { probing: true } => Err(Duration::ZERO),
            State::HalfOpen { probing: false } => {
                *state = State::HalfOpen { probing: true };
                Ok(Pass::new(self, true))
            }
        }
    }

    fn record(&self, probe: bool, outcome: Outcome) {
        if self.threshold == 0 {
            return;
        }
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match (outcome, *state) {
            (Outcome::Alive, State::Closed { .. }) => *state = State::Closed { failures: 0 },
            (Outcome::Alive, State::HalfOpen { .. }) if probe => {
                *state = State::Closed { failures: 0 };
                tracing::info!(group = ?self.group, "ZITADEL circuit closed: the probe succeeded");
                self.open.send_replace(false);
            }
            (Outcome::Failed, State::Closed { failures }) => {
                let failures = failures.saturating_add(1);
                *state = if failures >= self.threshold {
                    tracing::warn!(group = ?self.group, failures, cooldown = ?self.cooldown, "ZITADEL circuit open: failing calls fast");
                    self.open.send_replace(true);
                    State::Open {
                        until: Instant::now() + self.cooldown,
                    }
                } else {
                    State::Closed { failures }
                };
            }
            (Outcome::Failed, State::HalfOpen { .. }) if probe => {
                tracing::warn!(group = ?self.group, cooldown = ?self.cooldown, "ZITADEL circuit open again: the probe failed");
                *state = State::Open {
                    until: Instant::now() + self.cooldown,
                };
            }
            (Outcome::Unknown, State::HalfOpen { .. }) if probe => {
                *state = State::HalfOpen { probing: false };
            }
            _ => {}
        }
    }
}

/// Permission for one call; reports its outcome. A probe dropped unreported (its request was cancelled)
/// frees the probe slot.
pub(crate) struct Pass<'a> {
    breaker: &'a Breaker,
    probe: bool,
    reported: bool,
}

impl<'a> Pass<'a> {
    fn new(breaker: &'a Breaker, probe: bool) -> Self {
        Pass {
            breaker,
            probe,
            reported: false,
        }
    }

    pub(crate) fn report(mut self, outcome: Outcome) {
        self.reported = true;
        self.breaker.record(self.probe, outcome);
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        if !self.reported {
            self.breaker.record(self.probe, Outcome::Unknown);
        }
    }
}

/// The budget and breaker of one group.
#[derive(Debug)]
pub(crate) struct Guard {
    pub(crate) budget: RetryBudget,
    pub(crate) breaker: Breaker,
}

/// Both groups' guards and the policy.
#[derive(Debug)]
pub(crate) struct Guards {
    pub(crate) policy: Resilience,
    caller: Guard,
    management: Guard,
}

impl Guards {
    pub(crate) fn new(policy: Resilience) -> Self {
        let guard = |group| Guard {
            budget: RetryBudget::new(policy.retry_budget_ratio, policy.retry_budget_floor),
            breaker: Breaker::new(group, policy.breaker_failures, policy.breaker_cooldown),
        };
        Guards {
            policy,
            caller: guard(Group::CallerToken),
            management: guard(Group::Management),
        }
    }

    pub(crate) fn of(&self, group: Group) -> &Guard {
        match group {
            Group::CallerToken => &self.caller,
            Group::Management => &self.management,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_bounds_retries_by_floor_plus_ratio() {
        let budget = RetryBudget::new(0.1, 10);
        let mut retries = 0;
        for _ in 0..1000 {
            budget.deposit();
            if budget.withdraw() {
                retries += 1;
            }
        }
        assert!(retries <= 10 + 100, "{retries}");
        assert!(retries >= 100, "{retries}");
        let empty = RetryBudget::new(0.0, 0);
        empty.deposit();
        assert!(!empty.withdraw());
    }

    #[test]
    fn the_breaker_opens_fails_fast_probes_and_closes() {
        let breaker = Breaker::new(Group::Management, 2, Duration::from_millis(30));
        breaker.admit().unwrap().report(Outcome::Failed);
        breaker.admit().unwrap().report(Outcome::Alive);
        breaker.admit().unwrap().report(Outcome::Failed);
        assert!(
            !*breaker.watch_open().borrow(),
            "a success in between resets"
        );
        breaker.admit().unwrap().report(Outcome::Failed);
        assert!(*breaker.watch_open().borrow());
        let wait = breaker.admit().err().unwrap();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(30));
        std::thread::sleep(Duration::from_millis(35));
        let probe = breaker.admit().unwrap();
        assert!(breaker.admit().is_err(), "one probe at a time");
        drop(probe);
        let probe = breaker.admit().expect("a cancelled probe frees the slot");
        probe.report(Outcome::Failed);
        assert!(breaker.admit().is_err(), "a failed probe reopens");
        std::thread::sleep(Duration::from_millis(35));
        breaker.admit().unwrap().report(Outcome::Alive);
        assert!(!*breaker.watch_open().borrow());
        assert!(breaker.admit().is_ok());
    }

    #[test]
    fn a_zero_threshold_never_opens() {
        let breaker = Breaker::new(Group::CallerToken, 0, Duration::from_secs(60));
        for _ in 0..100 {
            breaker.admit().unwrap().report(Outcome::Failed);
        }
        assert!(breaker.admit().is_ok());
    }

    #[test]
    fn backoff_is_jittered_below_an_exponential_ceiling() {
        let policy = Resilience::default();
        for retry in 1..40 {
            let ceiling = (policy.backoff_base * 2u32.saturating_pow(retry - 1).min(1 << 20))
                .min(policy.backoff_max);
            assert!(policy.backoff(retry) <= ceiling);
        }
    }
}
