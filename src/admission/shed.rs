//! Back-pressure on the calls that wait on ZITADEL: at most [`MAX_IN_FLIGHT`](crate::settings::names::MAX_IN_FLIGHT) of them at once, and at
//! most [`MAX_IN_FLIGHT_PER_CALLER`](crate::settings::names::MAX_IN_FLIGHT_PER_CALLER) per caller token, so one caller cannot hold every slot. Beyond
//! either, a call is refused at once with RESOURCE_EXHAUSTED (and a retry hint) instead of queueing: a queue
//! only turns overload into timeouts.
//!
//! Only calls that will wait on ZITADEL are counted: the handlers admit a call once it is clear memory cannot
//! answer it. A caller answered from memory (a cached GetMyMetadata or Check) holds nothing while it runs, so it
//! is answered whatever slow upstream calls hold, and pays nothing here.

use std::{
    collections::{HashMap, hash_map::Entry},
    future::Future,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
};

/// Why a call that would wait on ZITADEL was not started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overload {
    /// `limit` calls already wait on ZITADEL.
    Global {
        /// The most calls that may wait on ZITADEL at once
        /// ([`MAX_IN_FLIGHT`](crate::settings::names::MAX_IN_FLIGHT)).
        limit: usize,
    },
    /// This caller already has `limit` calls waiting on ZITADEL.
    Caller {
        /// The most calls one caller may have waiting on ZITADEL at once
        /// ([`MAX_IN_FLIGHT_PER_CALLER`](crate::settings::names::MAX_IN_FLIGHT_PER_CALLER)).
        limit: usize,
    },
}

/// Callers' counts are kept in this many maps, by the first byte of the token digest: admitting one caller
/// never waits for another's.
const SHARDS: usize = 16;

/// The default share of one caller: an eighth of the global limit (rounded up), so at least eight callers'
/// slow calls are needed to fill it.
pub const DEFAULT_CALLER_DIVISOR: usize = 8;

/// The in-flight limits, shared by the metadata API and Envoy's Check (one process, one ZITADEL).
#[derive(Debug)]
pub struct Shed {
    /// Most calls waiting on ZITADEL at once; 0 means no limit.
    limit: usize,
    /// Most of them with one caller token; 0 means no limit.
    per_caller: usize,
    in_flight: AtomicUsize,
    /// Calls in flight per caller, by token digest (never the token); a caller with none has no entry.
    callers: [Mutex<HashMap<[u8; 32], usize>>; SHARDS],
}

impl Shed {
    /// `limit` calls in flight, `per_caller` of them per caller token (0: no limit, for either).
    pub fn new(limit: usize, per_caller: usize) -> Self {
        Shed {
            limit,
            per_caller,
            in_flight: AtomicUsize::new(0),
            callers: Default::default(),
        }
    }

    /// No limit at all.
    pub fn unlimited() -> Self {
        Self::new(0, 0)
    }

    /// A caller's default share of `limit`: [`DEFAULT_CALLER_DIVISOR`], at least one call (none when `limit`
    /// is none).
    pub fn default_per_caller(limit: usize) -> usize {
        limit.div_ceil(DEFAULT_CALLER_DIVISOR)
    }

    /// Counts a call of `caller` (its token's digest) that is about to wait on ZITADEL, or refuses it: the
    /// caller's own share first (the more specific answer), then the global limit. A refused call changes
    /// nothing.
    pub fn admit(self: &Arc<Self>, caller: [u8; 32]) -> Result<Admitted, Overload> {
        if self.per_caller > 0 {
            let mut callers = self.shard(&caller);
            let count = callers.entry(caller).or_insert(0);
            // A caller at its share has an entry already: a refusal leaves none behind.
            if *count >= self.per_caller {
                drop(callers);
                crate::metrics::shed(crate::metrics::ShedLimit::PerCaller);
                return Err(Overload::Caller {
                    limit: self.per_caller,
                });
            }
            *count += 1;
        }
        // A counter rather than a semaphore: nothing waits for a permit, and releasing one of tokio's takes
        // its waiter lock.
        if self.limit > 0 && self.in_flight.fetch_add(1, Ordering::AcqRel) >= self.limit {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            self.leave(&caller);
            crate::metrics::shed(crate::metrics::ShedLimit::Global);
            return Err(Overload::Global { limit: self.limit });
        }
        crate::metrics::waiting_calls(1.0);
        Ok(Admitted {
            shed: Arc::clone(self),
            caller,
        })
    }

    /// Counts out one call of `caller` from its share.
    fn leave(&self, caller: &[u8; 32]) {
        if self.per_caller == 0 {
            return;
        }
        let mut callers = self.shard(caller);
        if let Entry::Occupied(mut count) = callers.entry(*caller) {
            *count.get_mut() -= 1;
            // Forgotten at zero: the maps hold only callers with calls in flight.
            if *count.get() == 0 {
                count.remove();
            }
        }
    }

    fn shard(&self, caller: &[u8; 32]) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], usize>> {
        self.callers[usize::from(caller[0]) % SHARDS]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Calls counted now (for tests).
    #[cfg(test)]
    fn counted(&self, caller: &[u8; 32]) -> (usize, usize) {
        let own = self.shard(caller).get(caller).copied().unwrap_or(0);
        (self.in_flight.load(Ordering::Acquire), own)
    }
}

/// One admitted call; dropping it (answer sent, or the call dropped) counts it out.
#[derive(Debug)]
pub struct Admitted {
    /// The limits it counts against.
    shed: Arc<Shed>,
    /// Its caller, as the limits key it.
    caller: [u8; 32],
}

impl Admitted {
    /// Runs `call`, counted until it ends or is dropped, as its caller's work: its requests to ZITADEL spend
    /// that caller's share of the request budget ([`usermeta_zitadel::budget::for_caller`]).
    pub async fn run<F: Future>(self, call: F) -> F::Output {
        let output = usermeta_zitadel::budget::for_caller(self.caller, call).await;
        drop(self);
        output
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if self.shed.limit > 0 {
            self.shed.in_flight.fetch_sub(1, Ordering::AcqRel);
        }
        self.shed.leave(&self.caller);
        crate::metrics::waiting_calls(-1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused_reason(answer: Result<Admitted, Overload>) -> &'static str {
        match answer {
            Ok(_) => "admitted",
            Err(Overload::Global { .. }) => "overloaded",
            Err(Overload::Caller { .. }) => "caller overloaded",
        }
    }

    #[test]
    fn each_caller_gets_its_share_and_all_of_them_the_global_limit() {
        let shed = Arc::new(Shed::new(3, 2));
        let (a, b, c) = ([1; 32], [2; 32], [3; 32]);
        let a1 = shed.admit(a).unwrap();
        let _a2 = shed.admit(a).unwrap();
        assert_eq!(refused_reason(shed.admit(a)), "caller overloaded");
        assert_eq!(shed.counted(&a), (2, 2), "a refusal counts nothing");
        let _b1 = shed.admit(b).unwrap();
        assert_eq!(refused_reason(shed.admit(c)), "overloaded");
        assert_eq!(shed.counted(&c), (3, 0), "a refusal counts nothing");
        // A call ending frees its slot and its caller's.
        drop(a1);
        assert_eq!(shed.counted(&a), (2, 1));
        let _c1 = shed.admit(c).unwrap();
        assert_eq!(refused_reason(shed.admit(b)), "overloaded");
        assert_eq!(shed.counted(&b), (3, 1));
    }

    #[test]
    fn callers_without_calls_are_forgotten() {
        let shed = Arc::new(Shed::new(0, 1));
        let callers: Vec<[u8; 32]> = (0..=255).map(|i| [i; 32]).collect();
        let admitted: Vec<_> = callers.iter().map(|c| shed.admit(*c).unwrap()).collect();
        drop(admitted);
        assert!(
            shed.callers
                .iter()
                .all(|shard| shard.lock().unwrap().is_empty())
        );
    }

    #[test]
    fn zero_means_no_limit_and_the_default_share_is_an_eighth() {
        let shed = Arc::new(Shed::unlimited());
        let admitted: Vec<_> = (0..10_000).map(|_| shed.admit([7; 32]).unwrap()).collect();
        assert_eq!(admitted.len(), 10_000);
        assert_eq!(Shed::default_per_caller(1024), 128);
        assert_eq!(Shed::default_per_caller(2), 1);
        assert_eq!(Shed::default_per_caller(0), 0);
    }

    #[tokio::test]
    async fn a_dropped_call_counts_itself_out() {
        let shed = Arc::new(Shed::new(1, 1));
        let call = shed
            .admit([9; 32])
            .unwrap()
            .run(std::future::pending::<()>());
        let task = tokio::spawn(call);
        tokio::task::yield_now().await;
        assert!(shed.admit([8; 32]).is_err());
        task.abort();
        let _ = task.await;
        assert!(shed.admit([8; 32]).is_ok());
    }
}
