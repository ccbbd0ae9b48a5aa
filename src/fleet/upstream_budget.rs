//! The fleet's request budget toward ZITADEL, kept in Redis: one token bucket per ZITADEL, refilled and
//! taken by one Lua script, so every replica's lease is atomic against every other's. Redis holds two
//! counters under a name derived from ZITADEL's URL (never a token, a user or anything else): the tokens left
//! and when they were counted, by Redis's own clock (`TIME`), so replicas' clocks do not matter. A full bucket
//! expires: a fleet idle long enough leaves nothing behind.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use futures::future::BoxFuture;
use usermeta_zitadel::{
    UpstreamBudget,
    fleet_budget::{Lease, LeaseRequest, SharedBucket, SharedBucketError},
};

use super::{RedisConfig, RedisSetupError};

/// How long a lease may wait for Redis before this replica turns to its fallback budget: a request to ZITADEL
/// waits for it, so it is short.
const LEASE_TIMEOUT: Duration = Duration::from_millis(250);

/// The fleet's budget and what each replica keeps to without Redis, from the settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FleetBudgetConfig {
    /// The fleet's rate and burst (with the reserve and caller share of the replica's settings).
    pub budget: UpstreamBudget,
    /// One replica's budget while Redis cannot be reached.
    pub fallback: UpstreamBudget,
}

/// Refills at `rate` up to `burst` by Redis's clock, charges `debt`, then grants up to `want` tokens above
/// `floor`. Returns `{granted, wait_ms, tokens_left}` (the last as a string: Lua numbers become integers).
const LEASE_SCRIPT: &str = r"
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local floor = tonumber(ARGV[3])
local want = tonumber(ARGV[4])
local debt = tonumber(ARGV[5])
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil or at == nil then
  tokens = burst
  at = now
end
if now > at then
  tokens = math.min(burst, tokens + (now - at) / 1000 * rate)
  at = now
end
tokens = tokens - debt
local granted = 0
local above = math.floor(tokens - floor)
if want > 0 and above > 0 then
  granted = math.min(want, above)
end
tokens = tokens - granted
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(at))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) / rate * 1000) + 1000)
local wait = 0
if granted == 0 then
  wait = math.ceil((floor + 1 - tokens) / rate * 1000)
end
return {granted, wait, tostring(tokens)}
";

/// The fleet's bucket in Redis.
pub struct RedisBudget {
    client: redis::Client,
    connection: Mutex<Option<redis::aio::MultiplexedConnection>>,
    script: redis::Script,
    /// `usermeta.budget.<digest of ZITADEL's URL>`.
    key: String,
}

impl std::fmt::Debug for RedisBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBudget")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl RedisBudget {
    /// The bucket toward the ZITADEL at `zitadel_url` in the Redis of `config`; connects when first used.
    pub fn new(
        config: &RedisConfig,
        zitadel_url: &url::Url,
    ) -> Result<Arc<RedisBudget>, RedisSetupError> {
        Ok(Arc::new(RedisBudget {
            client: config.client()?,
            connection: Mutex::new(None),
            script: redis::Script::new(LEASE_SCRIPT),
            key: bucket_name(zitadel_url),
        }))
    }

    async fn connection(&self) -> Result<redis::aio::MultiplexedConnection, redis::RedisError> {
        let held = self
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if let Some(connection) = held {
            return Ok(connection);
        }
        let connection = self.client.get_multiplexed_async_connection().await?;
        *self
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(connection.clone());
        Ok(connection)
    }

    async fn ask(&self, request: LeaseRequest) -> Result<Lease, SharedBucketError> {
        let asked = async {
            let mut connection = self.connection().await?;
            let (granted, wait_ms, left): (u32, u64, String) = self
                .script
                .key(&self.key)
                .arg(request.rate)
                .arg(request.burst)
                .arg(request.floor)
                .arg(request.want)
                .arg(request.debt)
                .invoke_async(&mut connection)
                .await?;
            Ok::<_, redis::RedisError>((granted, wait_ms, left))
        };
        let answer = match tokio::time::timeout(LEASE_TIMEOUT, asked).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(error)) => {
                self.forget_connection();
                return Err(SharedBucketError(format!("Redis: {error}")));
            }
            Err(_) => {
                self.forget_connection();
                return Err(SharedBucketError(format!(
                    "Redis did not answer within {LEASE_TIMEOUT:?}"
                )));
            }
        };
        let (granted, wait_ms, left) = answer;
        let left: f64 = left.parse().unwrap_or(0.0);
        Ok(if granted > 0 {
            Lease::Granted {
                tokens: granted,
                left,
            }
        } else {
            Lease::Refused {
                retry_after: Duration::from_millis(wait_ms),
                left,
            }
        })
    }

    fn forget_connection(&self) {
        *self
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }
}

impl SharedBucket for RedisBudget {
    fn lease(&self, request: LeaseRequest) -> BoxFuture<'_, Result<Lease, SharedBucketError>> {
        Box::pin(self.ask(request))
    }
}

/// The Redis name of the bucket toward one ZITADEL: replicas of one fleet name it alike, fleets toward other
/// instances differently, and the name says nothing of the URL.
fn bucket_name(zitadel_url: &url::Url) -> String {
    let url = zitadel_url.as_str().trim_end_matches('/');
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, url.as_bytes());
    let hex: String = digest.as_ref()[..12]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    format!("usermeta.budget.{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_zitadel_one_bucket_whatever_the_trailing_slash() {
        let a = bucket_name(&"https://a.zitadel.cloud".parse().unwrap());
        let b = bucket_name(&"https://a.zitadel.cloud/".parse().unwrap());
        let c = bucket_name(&"https://b.zitadel.cloud".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(!a.contains("zitadel.cloud"));
    }
}
