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
//! - **Breaker**: counts *requests* (one logical call, after its retries: its last attempt decides) over a
//!   rolling window (`window`, in ten buckets). A request failed when its last attempt met a transport error,
//!   a timeout or a 5xx; 4xx and 429 mean ZITADEL is up. It opens for `cooldown` when the window holds at
//!   least `failures` failed requests and either every request in it failed (a total outage, at any traffic)
//!   or at least `min_requests` were made and `failure_ratio` of them failed (a partial one). Open, calls fail
//!   at once without reaching ZITADEL; then one probe (a single attempt) goes through: its success closes it
//!   with an empty window, its failure opens it again. Two or three failed requests among good ones, or
//!   alone, never open it.

use std::{
    future::Future,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use rand::Rng as _;
use tokio::{sync::watch, task::futures::TaskLocalFuture};

use crate::Instrumentation;

tokio::task_local! {
    static DEADLINE: Option<Instant>;
}

/// Runs `future` with `deadline` bounding every ZITADEL call it makes. A plain function, not an `async fn`:
/// an `async fn` would hold `future` twice (its argument and the scope), and request futures are large.
pub fn with_deadline<F: Future>(
    deadline: Instant,
    future: F,
) -> TaskLocalFuture<Option<Instant>, F> {
    DEADLINE.scope(Some(deadline), future)
}

/// Runs `future` without a caller's deadline: for work shared by several requests (the cache's single-flight
/// lookups), where each waiting request bounds its own wait. Calls still get the configured timeout.
pub fn detached<F: Future>(future: F) -> TaskLocalFuture<Option<Instant>, F> {
    DEADLINE.scope(None, future)
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
    /// Failed requests in the window below which a breaker never opens; 0 turns breakers off.
    pub breaker_failures: u32,
    /// Requests in the window from which the failure ratio opens a breaker that also saw successes.
    pub breaker_min_requests: u32,
    /// Share of failed requests in the window (0 < ratio ≤ 1) that opens a breaker, with enough requests.
    pub breaker_failure_ratio: f64,
    /// How far back the breaker counts requests.
    pub breaker_window: Duration,
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
            breaker_min_requests: 20,
            breaker_failure_ratio: 0.5,
            breaker_window: Duration::from_secs(10),
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
    /// Calls with the caller's token: userinfo, the auth API, introspection, signing keys.
    CallerToken,
    /// Calls with the service credential: the token exchange, the management API, the v2 user service.
    Management,
}

impl Group {
    /// Every group, for metrics and health that report each.
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
    Closed,
    Open { until: Instant },
    HalfOpen { probing: bool },
}

/// How one request (one logical call, after its retries) ended, for the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// ZITADEL answered (any 2xx, 4xx or 429): it is up.
    Alive,
    /// Transport error, timeout, or 5xx, on the last attempt.
    Failed,
    /// Says nothing about ZITADEL (cut short by the caller's deadline before any failure, nothing sent, or
    /// cancelled).
    Unknown,
}

/// When the outcomes in the window open a breaker: enough failed requests, and either all of them failed or
/// enough of a large enough sample did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct TripRule {
    /// Failed requests in the window needed before anything opens; 0 never opens.
    pub(crate) failures: u32,
    /// Requests in the window from which the failure ratio decides.
    pub(crate) min_requests: u32,
    /// Share of failed requests that opens, once `min_requests` were made.
    pub(crate) ratio: f64,
}

impl TripRule {
    fn of(policy: &Resilience) -> Self {
        TripRule {
            failures: policy.breaker_failures,
            min_requests: policy.breaker_min_requests,
            ratio: policy.breaker_failure_ratio,
        }
    }

    /// Whether `failures` failed requests out of `requests` in the window open the breaker. A total outage
    /// (every request failed) opens after `self.failures` requests at any traffic; a partial one needs the
    /// volume, so a blip among many good requests does not.
    pub(crate) fn trips(&self, requests: u32, failures: u32) -> bool {
        if self.failures == 0 || failures < self.failures {
            return false;
        }
        failures >= requests
            || (requests >= self.min_requests
                && f64::from(failures) >= self.ratio * f64::from(requests))
    }
}

/// Buckets of the rolling window.
const WINDOW_BUCKETS: usize = 10;

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Which slice of time (in bucket lengths since the window's epoch) the counts are of.
    tick: u64,
    requests: u32,
    failures: u32,
}

/// Request outcomes over the last `span`, in [`WINDOW_BUCKETS`] buckets: a bucket older than the span is
/// reused (and reset) for the current slice, so nothing needs a timer.
#[derive(Debug)]
pub(crate) struct Window {
    epoch: Instant,
    bucket: Duration,
    buckets: [Bucket; WINDOW_BUCKETS],
}

impl Window {
    pub(crate) fn new(span: Duration, epoch: Instant) -> Self {
        let bucket = (span / WINDOW_BUCKETS as u32).max(Duration::from_millis(1));
        Window {
            epoch,
            bucket,
            buckets: [Bucket::default(); WINDOW_BUCKETS],
        }
    }

    fn tick(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.epoch).as_nanos();
        u64::try_from(since / self.bucket.as_nanos()).unwrap_or(u64::MAX)
    }

    /// Counts one request at `now`.
    pub(crate) fn record(&mut self, now: Instant, failed: bool) {
        let tick = self.tick(now);
        let slot = &mut self.buckets[(tick % WINDOW_BUCKETS as u64) as usize];
        if slot.tick != tick {
            *slot = Bucket {
                tick,
                ..Bucket::default()
            };
        }
        slot.requests = slot.requests.saturating_add(1);
        if failed {
            slot.failures = slot.failures.saturating_add(1);
        }
    }

    /// Requests and failed requests within the window at `now`.
    pub(crate) fn totals(&self, now: Instant) -> (u32, u32) {
        let tick = self.tick(now);
        self.buckets
            .iter()
            .filter(|b| b.tick <= tick && tick - b.tick < WINDOW_BUCKETS as u64)
            .fold((0u32, 0u32), |(requests, failures), b| {
                (
                    requests.saturating_add(b.requests),
                    failures.saturating_add(b.failures),
                )
            })
    }

    /// Forgets every outcome: after the breaker changed state, old outcomes say nothing.
    pub(crate) fn clear(&mut self) {
        self.buckets = [Bucket::default(); WINDOW_BUCKETS];
    }
}

#[derive(Debug)]
struct Inner {
    state: State,
    window: Window,
}

/// A circuit breaker for one group. It counts requests, not attempts: a request retried three times is one
/// outcome, its last.
#[derive(Debug)]
pub(crate) struct Breaker {
    group: Group,
    rule: TripRule,
    window: Duration,
    cooldown: Duration,
    inner: Mutex<Inner>,
    /// `true` while open, for health reporting.
    open: watch::Sender<bool>,
    /// Told of every change of `open`, for metrics.
    instrumentation: Instrumentation,
}

impl Breaker {
    pub(crate) fn new(group: Group, policy: &Resilience, instrumentation: Instrumentation) -> Self {
        instrumentation.hooks().breaker_changed(group, false);
        Breaker {
            group,
            rule: TripRule::of(policy),
            window: policy.breaker_window,
            cooldown: policy.breaker_cooldown,
            inner: Mutex::new(Inner {
                state: State::Closed,
                window: Window::new(policy.breaker_window, Instant::now()),
            }),
            open: watch::Sender::new(false),
            instrumentation,
        }
    }

    fn set_open(&self, open: bool) {
        self.open.send_replace(open);
        self.instrumentation
            .hooks()
            .breaker_changed(self.group, open);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Follows whether the breaker is open.
    pub(crate) fn watch_open(&self) -> watch::Receiver<bool> {
        self.open.subscribe()
    }

    /// Lets a request through, or says how long until the next probe.
    pub(crate) fn admit(&self) -> Result<Pass<'_>, Duration> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Result<Pass<'_>, Duration> {
        if self.rule.failures == 0 {
            return Ok(Pass::new(self, false));
        }
        let mut inner = self.lock();
        match inner.state {
            State::Closed => Ok(Pass::new(self, false)),
            State::Open { until } => {
                if now < until {
                    Err(until - now)
                } else {
                    inner.state = State::HalfOpen { probing: true };
                    tracing::info!(group = ?self.group, "ZITADEL circuit half-open: probing");
                    Ok(Pass::new(self, true))
                }
            }
            // One probe at a time; the others fail fast until it has answered.
            State::HalfOpen { probing: true } => Err(Duration::ZERO),
            State::HalfOpen { probing: false } => {
                inner.state = State::HalfOpen { probing: true };
                Ok(Pass::new(self, true))
            }
        }
    }

    /// Whether a request admitted earlier may send another attempt: not once the breaker opened meanwhile.
    fn is_closed(&self) -> bool {
        self.rule.failures == 0 || matches!(self.lock().state, State::Closed)
    }

    fn record(&self, probe: bool, outcome: Outcome) {
        self.record_at(Instant::now(), probe, outcome);
    }

    fn record_at(&self, now: Instant, probe: bool, outcome: Outcome) {
        if self.rule.failures == 0 {
            return;
        }
        let mut inner = self.lock();
        match (outcome, inner.state) {
            (Outcome::Alive, State::Closed) => inner.window.record(now, false),
            (Outcome::Alive, State::HalfOpen { .. }) if probe => {
                inner.state = State::Closed;
                inner.window.clear();
                tracing::info!(group = ?self.group, "ZITADEL circuit closed: the probe succeeded");
                self.set_open(false);
            }
            (Outcome::Failed, State::Closed) => {
                inner.window.record(now, true);
                let (requests, failures) = inner.window.totals(now);
                if self.rule.trips(requests, failures) {
                    tracing::warn!(
                        group = ?self.group,
                        requests,
                        failures,
                        window = ?self.window,
                        cooldown = ?self.cooldown,
                        "ZITADEL circuit open: failing calls fast"
                    );
                    inner.state = State::Open {
                        until: now + self.cooldown,
                    };
                    inner.window.clear();
                    self.set_open(true);
                }
            }
            (Outcome::Failed, State::HalfOpen { .. }) if probe => {
                tracing::warn!(group = ?self.group, cooldown = ?self.cooldown, "ZITADEL circuit open again: the probe failed");
                inner.state = State::Open {
                    until: now + self.cooldown,
                };
            }
            (Outcome::Unknown, State::HalfOpen { .. }) if probe => {
                inner.state = State::HalfOpen { probing: false };
            }
            _ => {}
        }
    }
}

/// Permission for one request; reports its outcome once. A request dropped unreported (cancelled) counts as
/// unknown, which frees a probe's slot.
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

    /// Whether the request may retry: a probe is one attempt (as its failure reopens the breaker), and no
    /// request retries into a breaker that opened meanwhile.
    pub(crate) fn may_retry(&self) -> bool {
        !self.probe && self.breaker.is_closed()
    }

    pub(crate) fn report(mut self, outcome: Outcome) {
        self.reported = true;
        self.breaker.record(self.probe, outcome);
    }

    #[cfg(test)]
    fn report_at(mut self, now: Instant, outcome: Outcome) {
        self.reported = true;
        self.breaker.record_at(now, self.probe, outcome);
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
    pub(crate) fn new(policy: Resilience, instrumentation: &Instrumentation) -> Self {
        let guard = |group| Guard {
            budget: RetryBudget::new(policy.retry_budget_ratio, policy.retry_budget_floor),
            breaker: Breaker::new(group, &policy, instrumentation.clone()),
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

    fn policy(failures: u32, cooldown: Duration) -> Resilience {
        Resilience {
            breaker_failures: failures,
            breaker_cooldown: cooldown,
            ..Resilience::default()
        }
    }

    /// Reports one request's outcome at `now`.
    fn request(breaker: &Breaker, now: Instant, outcome: Outcome) {
        breaker
            .admit_at(now)
            .expect("admitted")
            .report_at(now, outcome);
    }

    fn is_open(breaker: &Breaker) -> bool {
        *breaker.watch_open().borrow()
    }

    #[test]
    fn the_rule_needs_failures_and_then_a_total_outage_or_the_ratio_over_the_volume() {
        let rule = TripRule {
            failures: 5,
            min_requests: 20,
            ratio: 0.5,
        };
        // A few failed requests, alone or among good ones, never open.
        for failures in 0..5 {
            assert!(!rule.trips(failures, failures), "{failures} alone");
            assert!(!rule.trips(failures + 1, failures));
        }
        // A total outage opens once enough requests failed, whatever the volume.
        assert!(rule.trips(5, 5));
        assert!(rule.trips(100, 100));
        // A partial one needs the volume and the ratio.
        assert!(!rule.trips(19, 10), "below the volume");
        assert!(rule.trips(20, 10));
        assert!(!rule.trips(20, 9), "below the ratio");
        assert!(!rule.trips(1000, 300));
        assert!(rule.trips(1000, 500));
        let off = TripRule {
            failures: 0,
            ..rule
        };
        assert!(!off.trips(100, 100));
    }

    #[test]
    fn the_window_forgets_what_is_older_than_its_span() {
        let epoch = Instant::now();
        let at = |ms: u64| epoch + Duration::from_millis(ms);
        let mut window = Window::new(Duration::from_secs(10), epoch);
        window.record(at(0), true);
        window.record(at(500), false);
        window.record(at(4_200), true);
        assert_eq!(window.totals(at(4_200)), (3, 2));
        // 10 s later the first second's bucket has left the window; the fifth's has not.
        assert_eq!(window.totals(at(10_000)), (1, 1));
        assert_eq!(window.totals(at(13_999)), (1, 1));
        assert_eq!(window.totals(at(14_000)), (0, 0));
        // A bucket reused for a later slice starts from zero.
        window.record(at(20_100), false);
        assert_eq!(window.totals(at(20_100)), (1, 0));
        window.clear();
        assert_eq!(window.totals(at(20_100)), (0, 0));
    }

    #[test]
    fn two_or_three_failed_requests_do_not_open_the_breaker() {
        let breaker = Breaker::new(
            Group::CallerToken,
            &Resilience::default(),
            Instrumentation::none(),
        );
        let now = Instant::now();
        for _ in 0..3 {
            request(&breaker, now, Outcome::Failed);
        }
        assert!(!is_open(&breaker));
        assert!(
            breaker.admit_at(now).is_ok(),
            "the next caller reaches ZITADEL"
        );
        // Among good requests, even a burst of failures stays below the ratio.
        for _ in 0..30 {
            request(&breaker, now, Outcome::Alive);
        }
        for _ in 0..20 {
            request(&breaker, now, Outcome::Failed);
        }
        assert!(!is_open(&breaker), "20 of 53 failed");
    }

    #[test]
    fn a_total_outage_opens_after_the_failures_and_the_ratio_opens_a_partial_one() {
        let now = Instant::now();
        let breaker = Breaker::new(
            Group::CallerToken,
            &Resilience::default(),
            Instrumentation::none(),
        );
        for _ in 0..4 {
            request(&breaker, now, Outcome::Failed);
        }
        assert!(!is_open(&breaker));
        request(&breaker, now, Outcome::Failed);
        assert!(is_open(&breaker), "five failed requests and nothing else");

        let breaker = Breaker::new(
            Group::CallerToken,
            &Resilience::default(),
            Instrumentation::none(),
        );
        for _ in 0..10 {
            request(&breaker, now, Outcome::Alive);
        }
        for _ in 0..9 {
            request(&breaker, now, Outcome::Failed);
        }
        assert!(!is_open(&breaker), "19 requests: below the volume");
        request(&breaker, now, Outcome::Failed);
        assert!(is_open(&breaker), "10 of 20 failed");
    }

    #[test]
    fn successes_age_out_so_a_sustained_outage_opens_at_low_traffic() {
        let breaker = Breaker::new(
            Group::Management,
            &Resilience::default(),
            Instrumentation::none(),
        );
        // After the breaker's own epoch, so bucket boundaries fall on whole seconds from here.
        let epoch = Instant::now();
        let at = |ms: u64| epoch + Duration::from_millis(ms);
        request(&breaker, at(0), Outcome::Alive);
        // One failed request a second: the success keeps it closed while it is in the window.
        for second in 1..=8 {
            request(&breaker, at(second * 1000), Outcome::Failed);
        }
        assert!(!is_open(&breaker), "8 of 9 failed, below the volume");
        request(&breaker, at(10_000), Outcome::Failed);
        assert!(is_open(&breaker), "the success left the window");
    }

    #[test]
    fn unknown_outcomes_and_4xx_count_for_nothing_bad() {
        let now = Instant::now();
        let breaker = Breaker::new(
            Group::Management,
            &policy(2, Duration::from_secs(1)),
            Instrumentation::none(),
        );
        request(&breaker, now, Outcome::Failed);
        for _ in 0..10 {
            request(&breaker, now, Outcome::Unknown);
            drop(breaker.admit_at(now).unwrap());
        }
        assert!(!is_open(&breaker));
        request(&breaker, now, Outcome::Failed);
        assert!(is_open(&breaker));
    }

    #[test]
    fn an_open_breaker_fails_fast_probes_once_and_closes() {
        let epoch = Instant::now();
        let at = |ms: u64| epoch + Duration::from_millis(ms);
        let cooldown = Duration::from_millis(30);
        let breaker = Breaker::new(
            Group::Management,
            &policy(2, cooldown),
            Instrumentation::none(),
        );
        request(&breaker, at(0), Outcome::Failed);
        let in_flight = breaker.admit_at(at(0)).unwrap();
        assert!(in_flight.may_retry());
        request(&breaker, at(0), Outcome::Failed);
        assert!(is_open(&breaker));
        assert!(!in_flight.may_retry(), "no retry into an open breaker");
        in_flight.report_at(at(0), Outcome::Failed);
        let wait = breaker.admit_at(at(10)).err().unwrap();
        assert_eq!(wait, Duration::from_millis(20));

        let probe = breaker.admit_at(at(30)).unwrap();
        assert!(!probe.may_retry(), "a probe is one attempt");
        assert_eq!(breaker.admit_at(at(31)).err(), Some(Duration::ZERO));
        drop(probe);
        breaker
            .admit_at(at(32))
            .expect("a cancelled probe frees the slot")
            .report_at(at(32), Outcome::Failed);
        assert!(breaker.admit_at(at(40)).is_err(), "a failed probe reopens");
        assert!(is_open(&breaker));

        breaker
            .admit_at(at(62))
            .unwrap()
            .report_at(at(62), Outcome::Alive);
        assert!(!is_open(&breaker));
        // Closed with an empty window: one more failure is not two.
        request(&breaker, at(63), Outcome::Failed);
        assert!(!is_open(&breaker));
        assert!(breaker.admit_at(at(63)).is_ok());
    }

    /// Hooks that keep the breaker states they are told of.
    #[derive(Default)]
    struct BreakerStates(std::sync::Mutex<Vec<(Group, bool)>>);

    impl crate::Instrument for std::sync::Arc<BreakerStates> {
        fn call_started(&self, _: &'static str) -> (tracing::Span, http::HeaderMap) {
            (tracing::Span::none(), http::HeaderMap::new())
        }
        fn call_finished(&self, _: &'static str, _: Option<u16>, _: Duration) {}
        fn token_refreshed(&self, _: bool) {}
        fn breaker_changed(&self, group: Group, open: bool) {
            self.0.lock().unwrap().push((group, open));
        }
    }

    #[test]
    fn the_hooks_hear_the_breaker_start_closed_open_and_close() {
        let states = std::sync::Arc::new(BreakerStates::default());
        let epoch = Instant::now();
        let at = |ms: u64| epoch + Duration::from_millis(ms);
        let breaker = Breaker::new(
            Group::Management,
            &policy(2, Duration::from_millis(30)),
            Instrumentation::new(states.clone()),
        );
        request(&breaker, at(0), Outcome::Failed);
        request(&breaker, at(0), Outcome::Failed);
        request(&breaker, at(30), Outcome::Alive);
        assert_eq!(
            *states.0.lock().unwrap(),
            [
                (Group::Management, false),
                (Group::Management, true),
                (Group::Management, false)
            ]
        );
    }

    #[test]
    fn zero_failures_never_opens() {
        let breaker = Breaker::new(
            Group::CallerToken,
            &policy(0, Duration::from_secs(60)),
            Instrumentation::none(),
        );
        let now = Instant::now();
        for _ in 0..100 {
            request(&breaker, now, Outcome::Failed);
        }
        assert!(breaker.admit_at(now).is_ok());
        assert!(!is_open(&breaker));
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
