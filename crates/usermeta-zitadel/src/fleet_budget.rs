//! One request budget toward ZITADEL for a whole fleet: replicas behind one source IP share ZITADEL Cloud's
//! rate limit, so the budget is one token bucket kept where every replica reaches it ([`SharedBucket`], Redis
//! in the service), with the classes and reserve of the replica's own ([`crate::budget`]).
//!
//! Leases: a replica takes tokens a few at a time and spends them locally, so most requests pay no round trip
//! to the store. A lease is spent within [`LEASE_TTL`] or forgotten (what is forgotten was counted, so the
//! fleet only sends less); its size adapts to the replica's pace, from one token up to [`LEASE_MAX`] (and a
//! tenth of a second's worth of the rate): a lease that runs out asks for twice as many next time, one that
//! expires unspent for half. So an idle replica holds at most one token, a busy one uses what idle ones leave,
//! and a replica killed with a lease loses at most one lease. In any window the fleet sends at most what the
//! store granted in it and in the [`LEASE_TTL`] before: the burst, plus the rate over the window and
//! [`LEASE_TTL`].
//!
//! Tokens of the identification class are leased only above the reserve, and only identification spends them
//! or any other class; identified callers' requests spend either kind. The service credential's own token
//! requests are charged, never refused: from a lease when one is held, otherwise as a debt the next lease
//! repays.
//!
//! When the store cannot be reached, the replica falls back to a budget of its own (its fallback rate), says
//! so once (log, [`crate::Instrument::upstream_budget_fallback`], `FleetBucket::watch_fallback`) and asks
//! the store again every [`PROBE_EVERY`] in the background, going back to the shared budget once it answers.

use std::{
    fmt,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use futures::future::BoxFuture;
use tokio::sync::watch;

use crate::{
    budget::{self, Bucket, Class, Limit, Refused, Shares, UpstreamBudget},
    instrument::Instrumentation,
};

/// How long a leased token may wait to be spent before it is forgotten.
pub const LEASE_TTL: Duration = Duration::from_millis(250);
/// The most tokens one lease takes.
pub const LEASE_MAX: u32 = 16;
/// How often a replica on its fallback budget asks the store whether it answers again.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

/// A token bucket every replica of a fleet reaches, updated atomically per request (a Redis script in the
/// service). It holds counters only: the bucket's tokens and when they were last refilled.
pub trait SharedBucket: Send + Sync + fmt::Debug + 'static {
    /// Refills the bucket at `request.rate` up to `request.burst`, charges `request.debt` whatever is left,
    /// then grants up to `request.want` tokens while more than `request.floor` remain. `want` 0 only charges
    /// (or probes).
    fn lease(&self, request: LeaseRequest) -> BoxFuture<'_, Result<Lease, SharedBucketError>>;
}

/// One request to a [`SharedBucket`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LeaseRequest {
    /// The fleet's rate, tokens per second (above 0).
    pub rate: f64,
    /// The bucket's size.
    pub burst: f64,
    /// Tokens the grant must leave in the bucket (the reserve, for identification).
    pub floor: f64,
    /// Most tokens wanted.
    pub want: u32,
    /// Tokens spent without asking (the service credential's token requests), charged first.
    pub debt: u32,
}

/// A [`SharedBucket`]'s answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Lease {
    /// `tokens` granted (at least one, at most the want); `left` in the bucket after.
    Granted {
        /// Tokens granted.
        tokens: u32,
        /// Tokens left in the shared bucket.
        left: f64,
    },
    /// Nothing granted (or nothing wanted): a token above the floor comes back after `retry_after`.
    Refused {
        /// When a token above the floor will be there.
        retry_after: Duration,
        /// Tokens left in the shared bucket (below zero while a debt is repaid).
        left: f64,
    },
}

/// The shared bucket could not be asked (unreachable, timed out, a script error); says why, without secrets.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SharedBucketError(pub String);

/// The fleet's budget toward one ZITADEL.
#[derive(Debug, Clone)]
pub struct FleetBudget {
    /// The fleet's rate, burst, reserve and caller share.
    pub budget: UpstreamBudget,
    /// This replica's budget while the shared bucket cannot be reached.
    pub fallback: UpstreamBudget,
    /// Where the fleet's bucket is.
    pub store: Arc<dyn SharedBucket>,
}

/// Leased tokens of one class, and until when they may be spent.
#[derive(Debug, Clone, Copy)]
struct Pool {
    tokens: u32,
    expires: Instant,
    /// The size of the next lease.
    next_lease: u32,
    /// No lease of this class until then: the store said the bucket is empty for it.
    refused_until: Option<(Instant, f64)>,
}

impl Pool {
    fn new(now: Instant) -> Pool {
        Pool {
            tokens: 0,
            expires: now,
            next_lease: 1,
            refused_until: None,
        }
    }

    /// Forgets tokens whose lease expired (and leases fewer next time).
    fn expire(&mut self, now: Instant) {
        if self.tokens > 0 && now >= self.expires {
            self.tokens = 0;
            self.next_lease = (self.next_lease / 2).max(1);
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        self.expire(now);
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

#[derive(Debug)]
struct Leased {
    /// Tokens leased above the reserve: any class may spend them.
    identify: Pool,
    /// Tokens leased for identified callers: identification may not spend them.
    manage: Pool,
    /// Charges not yet told to the store.
    debt: u32,
    /// On the fallback budget (the store did not answer).
    fallback: bool,
    /// A probe of the store is under way.
    probing: bool,
}

impl Leased {
    fn pool(&mut self, class: Class) -> &mut Pool {
        match class {
            Class::Identify => &mut self.identify,
            Class::Manage => &mut self.manage,
        }
    }

    /// Spends a leased token for `class`: identified callers' requests spend either kind.
    fn take(&mut self, class: Class, now: Instant) -> bool {
        match class {
            Class::Identify => self.identify.take(now),
            Class::Manage => self.manage.take(now) || self.identify.take(now),
        }
    }
}

/// The request budget toward one ZITADEL: this replica's own, or the fleet's.
#[derive(Debug)]
pub(crate) enum Budget {
    /// This replica's bucket ([`UpstreamBudget`]).
    Replica(Bucket),
    /// The fleet's bucket, shared through a store (this module).
    Fleet(Arc<FleetBucket>),
}

impl Budget {
    /// Takes a token for a request of `class` made now, or says when one will be there.
    pub(crate) async fn try_take(&self, class: Class) -> Result<f64, Refused> {
        match self {
            Budget::Replica(bucket) => bucket.try_take(class, Instant::now()),
            Budget::Fleet(fleet) => fleet.try_take(class).await,
        }
    }

    /// Counts a request sent whatever the budget says; the tokens left (below zero: owed).
    pub(crate) fn charge(&self, now: Instant) -> f64 {
        match self {
            Budget::Replica(bucket) => bucket.charge(now),
            Budget::Fleet(fleet) => fleet.charge(now),
        }
    }
}

/// The fleet's budget as one replica spends it.
pub(crate) struct FleetBucket {
    store: Arc<dyn SharedBucket>,
    rate: f64,
    burst: f64,
    reserve: f64,
    lease_max: u32,
    leased: Mutex<Leased>,
    /// One lease asked at a time: concurrent requests finding the pool empty wait for it, then spend from it.
    leasing: tokio::sync::Mutex<()>,
    shares: Option<Shares>,
    fallback: Bucket,
    on_fallback: watch::Sender<bool>,
    instrumentation: Instrumentation,
}

impl fmt::Debug for FleetBucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FleetBucket")
            .field("store", &self.store)
            .field("rate", &self.rate)
            .field("burst", &self.burst)
            .finish_non_exhaustive()
    }
}

impl FleetBucket {
    pub(crate) fn new(config: FleetBudget, instrumentation: Instrumentation, now: Instant) -> Self {
        let budget = config.budget;
        let burst = f64::from(budget.burst.max(1));
        let reserve = budget::reserve_tokens(&budget);
        let rate = budget.rate.max(f64::MIN_POSITIVE);
        // A tenth of a second's worth, within a quarter of the burst: leases never hold much of the budget.
        let lease_max = ((rate / 10.0).ceil() as u32)
            .min((budget.burst / 4).max(1))
            .clamp(1, LEASE_MAX);
        let (on_fallback, _) = watch::channel(false);
        instrumentation.hooks().upstream_budget_fallback(false);
        FleetBucket {
            store: config.store,
            rate,
            burst,
            reserve,
            lease_max,
            leased: Mutex::new(Leased {
                identify: Pool::new(now),
                manage: Pool::new(now),
                debt: 0,
                fallback: false,
                probing: false,
            }),
            leasing: tokio::sync::Mutex::new(()),
            shares: Shares::of(&budget),
            fallback: Bucket::new(config.fallback, now),
            on_fallback,
            instrumentation,
        }
    }

    fn leased(&self) -> std::sync::MutexGuard<'_, Leased> {
        self.leased.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Follows whether this replica spends its fallback budget (the shared one is out of reach).
    pub(crate) fn watch_fallback(&self) -> watch::Receiver<bool> {
        self.on_fallback.subscribe()
    }

    /// Takes a token for a request of `class` (within the current caller's share), or says when one will be
    /// there. `Ok` holds the tokens left, as well as this replica knows.
    pub(crate) async fn try_take(self: &Arc<Self>, class: Class) -> Result<f64, Refused> {
        let now = Instant::now();
        if self.leased().fallback {
            self.probe_soon();
            return self.fallback.try_take(class, now);
        }
        let caller = match (&self.shares, budget::current_caller()) {
            (Some(shares), Some(caller)) => {
                shares.check(caller, now)?;
                Some((shares, caller))
            }
            _ => None,
        };
        let taken = self.take(class).await;
        if let (Ok(_), Some((shares, caller))) = (&taken, caller) {
            shares.spend(caller);
        }
        taken
    }

    /// [`FleetBucket::try_take`] without the caller's share.
    async fn take(self: &Arc<Self>, class: Class) -> Result<f64, Refused> {
        if let Some(taken) = self.take_leased(class, Instant::now()) {
            return taken;
        }
        // The pool is empty: one lease at a time; whoever waited may find the pool filled meanwhile.
        let _leasing = self.leasing.lock().await;
        let now = Instant::now();
        if let Some(taken) = self.take_leased(class, now) {
            return taken;
        }
        let (want, debt) = {
            let mut leased = self.leased();
            if leased.fallback {
                drop(leased);
                return self.fallback.try_take(class, now);
            }
            let want = leased.pool(class).next_lease.min(self.lease_max);
            (want, std::mem::take(&mut leased.debt))
        };
        let floor = match class {
            Class::Identify => self.reserve,
            Class::Manage => 0.0,
        };
        let request = LeaseRequest {
            rate: self.rate,
            burst: self.burst,
            floor,
            want,
            debt,
        };
        match self.store.lease(request).await {
            Ok(Lease::Granted { tokens, left }) => {
                let now = Instant::now();
                let mut leased = self.leased();
                let pool = leased.pool(class);
                // One is this request's; the rest wait in the pool.
                pool.tokens = tokens.saturating_sub(1);
                pool.expires = now + LEASE_TTL;
                pool.refused_until = None;
                if tokens >= pool.next_lease {
                    pool.next_lease = (pool.next_lease * 2).min(self.lease_max);
                }
                Ok(left + f64::from(pool.tokens))
            }
            Ok(Lease::Refused { retry_after, left }) => {
                let until = Instant::now() + retry_after;
                self.leased().pool(class).refused_until = Some((until, left));
                Err(Refused {
                    retry_after,
                    tokens: left,
                    by: Limit::Budget(class),
                })
            }
            Err(error) => {
                {
                    let mut leased = self.leased();
                    // Counted against the fallback budget from now on: nothing is lost.
                    leased.debt += debt;
                }
                self.fall_back(&error);
                self.fallback.try_take(class, Instant::now())
            }
        }
    }

    /// A token from the lease held for `class`, or the refusal the store gave while it holds; `None` when a
    /// lease must be asked for.
    fn take_leased(&self, class: Class, now: Instant) -> Option<Result<f64, Refused>> {
        let mut leased = self.leased();
        if leased.take(class, now) {
            let held = leased.identify.tokens + leased.manage.tokens;
            return Some(Ok(f64::from(held)));
        }
        let pool = leased.pool(class);
        match pool.refused_until {
            Some((until, left)) if now < until => Some(Err(Refused {
                retry_after: until - now,
                tokens: left,
                by: Limit::Budget(class),
            })),
            _ => None,
        }
    }

    /// Counts a request sent whatever the budget says: from a lease when one is held, otherwise owed to the
    /// store with the next lease. Returns the tokens this replica holds after it (below zero: owed).
    pub(crate) fn charge(&self, now: Instant) -> f64 {
        let mut leased = self.leased();
        if leased.fallback {
            drop(leased);
            return self.fallback.charge(now);
        }
        if leased.take(Class::Manage, now) {
            return f64::from(leased.identify.tokens + leased.manage.tokens);
        }
        leased.debt += 1;
        -f64::from(leased.debt)
    }

    /// Switches to the fallback budget, saying so once.
    fn fall_back(self: &Arc<Self>, error: &SharedBucketError) {
        {
            let mut leased = self.leased();
            if leased.fallback {
                return;
            }
            leased.fallback = true;
            leased.identify = Pool::new(Instant::now());
            leased.manage = Pool::new(Instant::now());
        }
        tracing::warn!(
            %error,
            fallback_rate = self.fallback_rate(),
            "the fleet's request budget toward ZITADEL cannot be reached; this replica keeps to its own fallback budget until it can"
        );
        self.instrumentation.hooks().upstream_budget_fallback(true);
        self.on_fallback.send_replace(true);
        self.probe_soon();
    }

    fn fallback_rate(&self) -> f64 {
        self.fallback.rate()
    }

    /// Starts a background probe of the store, unless one is under way; it goes back to the shared budget once
    /// the store answers, and asks again every [`PROBE_EVERY`] until then.
    fn probe_soon(self: &Arc<Self>) {
        {
            let mut leased = self.leased();
            if leased.probing || !leased.fallback {
                return;
            }
            leased.probing = true;
        }
        let bucket = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(PROBE_EVERY).await;
                let debt = std::mem::take(&mut bucket.leased().debt);
                let probe = LeaseRequest {
                    rate: bucket.rate,
                    burst: bucket.burst,
                    floor: 0.0,
                    want: 0,
                    debt,
                };
                match bucket.store.lease(probe).await {
                    Ok(_) => {
                        {
                            let mut leased = bucket.leased();
                            leased.fallback = false;
                            leased.probing = false;
                        }
                        tracing::info!(
                            "the fleet's request budget toward ZITADEL answers again; this replica shares it again"
                        );
                        bucket
                            .instrumentation
                            .hooks()
                            .upstream_budget_fallback(false);
                        bucket.on_fallback.send_replace(false);
                        return;
                    }
                    Err(error) => {
                        bucket.leased().debt += debt;
                        tracing::debug!(%error, "the fleet's request budget still cannot be reached");
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    /// A bucket in memory, as the Redis script keeps it, that can be made unreachable.
    #[derive(Debug)]
    struct Store {
        state: Mutex<(f64, Instant)>,
        down: AtomicBool,
        asked: AtomicU32,
    }

    impl Store {
        fn new(burst: f64) -> Arc<Store> {
            Arc::new(Store {
                state: Mutex::new((burst, Instant::now())),
                down: AtomicBool::new(false),
                asked: AtomicU32::new(0),
            })
        }
    }

    impl SharedBucket for Store {
        fn lease(&self, r: LeaseRequest) -> BoxFuture<'_, Result<Lease, SharedBucketError>> {
            self.asked.fetch_add(1, Ordering::SeqCst);
            let answer = if self.down.load(Ordering::SeqCst) {
                Err(SharedBucketError("down".into()))
            } else {
                let mut state = self.state.lock().unwrap();
                let now = Instant::now();
                state.0 = (state.0 + (now - state.1).as_secs_f64() * r.rate).min(r.burst);
                state.1 = now;
                state.0 -= f64::from(r.debt);
                let available = (state.0 - r.floor).floor().max(0.0) as u32;
                let granted = available.min(r.want);
                state.0 -= f64::from(granted);
                Ok(if granted > 0 {
                    Lease::Granted {
                        tokens: granted,
                        left: state.0,
                    }
                } else {
                    Lease::Refused {
                        retry_after: Duration::from_secs_f64(
                            (r.floor + 1.0 - state.0).max(0.0) / r.rate,
                        ),
                        left: state.0,
                    }
                })
            };
            Box::pin(async move { answer })
        }
    }

    fn fleet(store: &Arc<Store>, rate: f64, burst: u32, reserve: f64) -> Arc<FleetBucket> {
        let budget = UpstreamBudget {
            rate,
            burst,
            reserve,
            caller_share: 1.0,
        };
        Arc::new(FleetBucket::new(
            FleetBudget {
                budget,
                fallback: UpstreamBudget {
                    rate: 1.0,
                    burst: 2,
                    reserve: 0.0,
                    caller_share: 1.0,
                },
                store: Arc::clone(store) as Arc<dyn SharedBucket>,
            },
            Instrumentation::none(),
            Instant::now(),
        ))
    }

    #[tokio::test]
    async fn replicas_together_never_take_more_than_the_shared_burst() {
        // A rate so low nothing refills during the test.
        let store = Store::new(20.0);
        let replicas: Vec<_> = (0..3).map(|_| fleet(&store, 0.001, 20, 0.0)).collect();
        let mut granted = 0;
        for round in 0..30 {
            for replica in &replicas {
                if replica.try_take(Class::Manage).await.is_ok() {
                    granted += 1;
                }
                let _ = round;
            }
        }
        assert_eq!(granted, 20);
    }

    #[tokio::test]
    async fn a_busy_replica_leases_more_at_a_time_so_most_calls_skip_the_store() {
        let store = Store::new(1000.0);
        let replica = fleet(&store, 1000.0, 1000, 0.0);
        for _ in 0..200 {
            replica
                .try_take(Class::Manage)
                .await
                .expect("within budget");
        }
        let asked = store.asked.load(Ordering::SeqCst);
        // 1 + 2 + 4 + 8 + 16 + 16 + ...: about 200 / 16 + 4 leases.
        assert!(asked <= 20, "{asked} leases for 200 requests");
    }

    #[tokio::test]
    async fn identification_leaves_the_reserve_to_identified_callers() {
        let store = Store::new(10.0);
        let replica = fleet(&store, 0.001, 10, 0.5);
        let mut identified = 0;
        while replica.try_take(Class::Identify).await.is_ok() {
            identified += 1;
        }
        assert_eq!(identified, 5);
        let mut managed = 0;
        while replica.try_take(Class::Manage).await.is_ok() {
            managed += 1;
        }
        assert_eq!(managed, 5);
    }

    #[tokio::test]
    async fn an_unreachable_store_means_the_fallback_budget_then_the_shared_one_again() {
        let store = Store::new(100.0);
        let replica = fleet(&store, 100.0, 100, 0.0);
        let mut fallback = replica.watch_fallback();
        store.down.store(true, Ordering::SeqCst);
        // The fallback budget: two at once, then refused.
        assert!(replica.try_take(Class::Manage).await.is_ok());
        assert!(*fallback.borrow_and_update());
        assert!(replica.try_take(Class::Manage).await.is_ok());
        let refused = replica.try_take(Class::Manage).await.unwrap_err();
        assert_eq!(refused.by, Limit::Budget(Class::Manage));
        store.down.store(false, Ordering::SeqCst);
        fallback.changed().await.expect("back on the shared budget");
        assert!(!*fallback.borrow());
        for _ in 0..10 {
            assert!(replica.try_take(Class::Manage).await.is_ok());
        }
    }

    #[tokio::test]
    async fn a_charge_is_owed_to_the_store_and_repaid_with_the_next_lease() {
        let store = Store::new(3.0);
        let replica = fleet(&store, 0.001, 3, 0.0);
        assert_eq!(replica.charge(Instant::now()), -1.0);
        assert_eq!(replica.charge(Instant::now()), -2.0);
        assert!(replica.try_take(Class::Manage).await.is_ok());
        assert!(replica.try_take(Class::Manage).await.is_err());
    }
}
