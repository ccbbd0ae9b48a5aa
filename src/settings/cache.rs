//! The caller cache: how long ZITADEL's answers about tokens are reused, into a [`CacheConfig`]; and how long
//! organisations' metadata is, into an [`OrgCacheConfig`].

use std::time::Duration;

use super::names;
use clap::Args;

use crate::{caller::cache::CacheConfig, org_cache::OrgCacheConfig};

/// The caller cache: how long ZITADEL's answers about tokens are reused.
#[derive(Debug, Args)]
pub struct CacheArgs {
    /// How long ZITADEL's answer about a token is reused (never past a JWT's own `exp`); 0 turns caching off.
    /// It bounds how long a revoked token keeps working here and how stale metadata written elsewhere can be.
    #[arg(long, env = names::CACHE_TTL, default_value = "30s", value_parser = humantime::parse_duration)]
    pub cache_ttl: Duration,
    /// How long a token ZITADEL rejected is refused without asking again.
    #[arg(long, env = "USERMETA_CACHE_NEGATIVE_TTL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub cache_negative_ttl: Duration,
    /// Most tokens remembered at once (least recently used go first).
    #[arg(long, env = "USERMETA_CACHE_CAPACITY", default_value_t = 100_000)]
    pub cache_capacity: u64,
    /// How long an organisation's metadata (read by ListOrganizationMetadata, routed on by ext_authz) is
    /// reused; 0 reads ZITADEL every time. Writes through any replica and ZITADEL's `org.metadata.*` events
    /// end it sooner; it bounds how stale an organisation's metadata changed elsewhere can be.
    #[arg(long, env = names::ORG_CACHE_TTL, default_value = "30s", value_parser = humantime::parse_duration)]
    pub org_cache_ttl: Duration,
    /// Most organisations whose metadata is remembered at once (the least useful go first).
    #[arg(long, env = names::ORG_CACHE_CAPACITY, default_value_t = 10_000)]
    pub org_cache_capacity: u64,
    /// Most bytes of users' metadata listings kept in memory (another user's ListMetadata, BatchGetMetadata,
    /// FindUsersByMetadata's checks), each for USERMETA_CACHE_TTL per user and organisation scope and dropped
    /// at once when the user changes (here, on another replica through Redis, or by ZITADEL's events through
    /// the webhook); 0 turns it off.
    #[arg(long, env = names::METADATA_CACHE_BYTES, default_value_t = crate::listings::DEFAULT_MAX_BYTES)]
    pub metadata_cache_bytes: u64,
}

impl CacheArgs {
    /// The caller cache's configuration.
    pub fn config(&self) -> CacheConfig {
        CacheConfig {
            ttl: self.cache_ttl,
            negative_ttl: self.cache_negative_ttl,
            capacity: self.cache_capacity,
        }
    }

    /// The organisation cache's configuration.
    pub fn org_config(&self) -> OrgCacheConfig {
        OrgCacheConfig {
            ttl: self.org_cache_ttl,
            capacity: self.org_cache_capacity,
        }
    }
}
