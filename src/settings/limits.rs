//! Limits: deadlines, concurrency, message sizes, per-caller rates and WatchMetadata streams, into the
//! server's [`Limits`].

use std::time::Duration;

use super::names;
use clap::Args;

use crate::{api::RequestLimits, fleet::WatchLimits, server::Limits};

/// What one caller and the whole server may ask for: deadlines, concurrency, sizes, rates.
#[derive(Debug, Args)]
pub struct LimitArgs {
    /// Deadline of a request whose caller sets no gRPC deadline (`grpc-timeout`); a caller's deadline applies as given.
    #[arg(long, env = "USERMETA_REQUEST_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// Longest deadline a caller may ask for (`grpc-timeout`); longer ones are cut to it, so no call can hold
    /// its resources (and ZITADEL retries) for hours.
    #[arg(long, env = "USERMETA_MAX_REQUEST_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub max_request_timeout: Duration,
    /// Most calls waiting on ZITADEL at once (the metadata API and Check together; answers from memory are
    /// not counted); more are refused at once with RESOURCE_EXHAUSTED OVERLOADED; 0 means no limit.
    #[arg(long, env = names::MAX_IN_FLIGHT, default_value_t = 1024)]
    pub max_in_flight: usize,
    /// Most of those with one caller token, so one caller cannot hold every slot; more are refused at once
    /// with RESOURCE_EXHAUSTED CALLER_OVERLOADED. Default: an eighth of USERMETA_MAX_IN_FLIGHT (128); 0 means
    /// no per-caller limit.
    #[arg(long, env = names::MAX_IN_FLIGHT_PER_CALLER)]
    pub max_in_flight_per_caller: Option<usize>,
    /// Most concurrent calls (HTTP/2 streams) per client connection.
    #[arg(long, env = "USERMETA_MAX_STREAMS_PER_CONNECTION", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_streams_per_connection: u32,
    /// Largest gRPC request or response message, in bytes (a few 500000-byte values per SetMetadata fit).
    #[arg(long, env = "USERMETA_MAX_MESSAGE_BYTES", default_value_t = 8 * 1024 * 1024, value_parser = clap::value_parser!(u32).range(65536..))]
    pub max_message_bytes: u32,
    /// Requests per second allowed per caller token; 0 (the default) means no per-caller limit.
    #[arg(long, env = "USERMETA_CALLER_RATE_LIMIT", default_value_t = 0)]
    pub caller_rate_limit: u32,
    /// Requests a caller may send in a burst before its rate limit applies.
    #[arg(long, env = "USERMETA_CALLER_RATE_BURST", default_value_t = 20)]
    pub caller_rate_burst: u32,
    /// ZITADEL calls one BatchGetMetadata request makes at once (each user costs one or two calls).
    #[arg(long, env = "USERMETA_BATCH_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub batch_concurrency: u32,
    /// Most WatchMetadata streams open on this replica at once; more are refused with RESOURCE_EXHAUSTED
    /// (WATCH_STREAMS_EXHAUSTED).
    #[arg(long, env = names::WATCH_MAX_STREAMS, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub watch_max_streams: u32,
    /// Most WatchMetadata streams one caller (one ZITADEL user) has open on this replica at once.
    #[arg(long, env = names::WATCH_MAX_STREAMS_PER_CALLER, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub watch_max_streams_per_caller: u32,
    /// Longest life of a WatchMetadata stream; it then ends with UNAVAILABLE (WATCH_MAX_DURATION) and the
    /// client reopens it. A stream also ends when its token expires or ZITADEL stops accepting it.
    #[arg(long, env = names::WATCH_MAX_DURATION, default_value = "1h", value_parser = humantime::parse_duration)]
    pub watch_max_duration: Duration,
    /// Bytes of changes one WatchMetadata stream may have waiting to be read; a stream further behind ends
    /// with RESOURCE_EXHAUSTED (WATCH_LAGGED). One write always fits.
    #[arg(long, env = names::WATCH_BUFFER_BYTES, default_value_t = 1024 * 1024, value_parser = clap::value_parser!(u32).range(1024..))]
    pub watch_buffer_bytes: u32,
    /// Bytes of changes all WatchMetadata streams of this replica together may have waiting; past it, the
    /// streams that are behind end with WATCH_LAGGED.
    #[arg(long, env = names::WATCH_BUFFER_MEMORY, default_value_t = 64 * 1024 * 1024, value_parser = clap::value_parser!(u32).range(65536..))]
    pub watch_buffer_memory: u32,
}

impl LimitArgs {
    /// The limits the server holds calls to.
    pub fn limits(&self) -> Limits {
        Limits {
            max_in_flight: self.max_in_flight,
            max_in_flight_per_caller: self.max_in_flight_per_caller,
            max_streams_per_connection: self.max_streams_per_connection,
            max_message_bytes: usize::try_from(self.max_message_bytes).unwrap_or(usize::MAX),
            requests: RequestLimits {
                request_timeout: self.request_timeout,
                max_request_timeout: self.max_request_timeout.max(self.request_timeout),
                caller_rate: self.caller_rate_limit,
                caller_burst: self.caller_rate_burst,
                batch_concurrency: self.batch_concurrency as usize,
            },
            watch: WatchLimits {
                max_streams: self.watch_max_streams as usize,
                max_streams_per_caller: self.watch_max_streams_per_caller as usize,
                buffer_bytes: self.watch_buffer_bytes as usize,
                buffer_memory: self.watch_buffer_memory as usize,
                max_duration: self.watch_max_duration,
            },
        }
    }
}
