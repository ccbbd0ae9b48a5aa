//! Prometheus metrics: the series usermeta records, the recorder behind them, the `/metrics` listener, and
//! ([`GrpcMetricsLayer`], in `grpc_layer.rs`) the tower layer that measures every gRPC call.
//!
//! Recording goes through the `metrics` facade, so with no recorder installed (metrics off) every call is a
//! no-op. The recorder is process-global; the `/metrics` route is served per [`crate::server::Application`].

use std::{sync::OnceLock, time::Duration};

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

mod grpc_layer;
pub use grpc_layer::{GrpcMetrics, GrpcMetricsLayer, MeteredBody};

// The series' names, used only here and in `grpc_layer.rs`; `describe` gives each its help text.
const GRPC_REQUESTS: &str = "usermeta_grpc_requests_total";
const GRPC_DURATION: &str = "usermeta_grpc_request_duration_seconds";
const GRPC_IN_FLIGHT: &str = "usermeta_grpc_requests_in_flight";
const CALLS_SHED: &str = "usermeta_calls_shed_total";
const CALLS_WAITING: &str = "usermeta_calls_waiting_on_zitadel";
const UPSTREAM_REQUESTS: &str = "usermeta_upstream_requests_total";
const UPSTREAM_DURATION: &str = "usermeta_upstream_request_duration_seconds";
const CACHE_LOOKUPS: &str = "usermeta_cache_lookups_total";
const CACHE_ENTRIES: &str = "usermeta_caller_cache_entries";
const TOKEN_REFRESHES: &str = "usermeta_service_token_refreshes_total";
const MANAGEMENT_API: &str = "usermeta_zitadel_management_api";
const BATCH_RESULTS: &str = "usermeta_batch_results_total";
const REDIS_CONNECTED: &str = "usermeta_redis_connected";
const INVALIDATIONS: &str = "usermeta_shared_invalidations_total";
const INVALIDATIONS_REJECTED: &str = "usermeta_shared_invalidations_rejected_total";
const UPSTREAM_BUDGET: &str = "usermeta_upstream_budget_requests_total";
const UPSTREAM_BUDGET_TOKENS: &str = "usermeta_upstream_budget_tokens";
const WATCH_STREAMS: &str = "usermeta_watch_streams";
const WATCH_ENDED: &str = "usermeta_watch_streams_ended_total";
const WEBHOOK_EVENTS: &str = "usermeta_webhook_events_total";
const SEALED_READS: &str = "usermeta_sealed_values_read_total";
const SEALED_WRITES: &str = "usermeta_sealed_values_written_total";
const CONNECTIONS_REFUSED: &str = "usermeta_http_connections_refused_total";
const CHECK_DECISIONS: &str = "usermeta_ext_authz_decisions_total";
const BREAKER_OPEN: &str = "usermeta_upstream_breaker_open";
const BUILD_INFO: &str = "usermeta_build_info";
const UPSTREAM_BUDGET_FALLBACK: &str = "usermeta_upstream_budget_fallback";
const METADATA_CACHE_LOOKUPS: &str = "usermeta_metadata_cache_lookups_total";
const METADATA_CACHE_ENTRIES: &str = "usermeta_metadata_cache_entries";

/// Connections the `/metrics` listener serves at once.
const MAX_SCRAPE_CONNECTIONS: usize = 16;

/// Latency buckets in seconds: from a cache hit (sub-millisecond) to a call at the default 5 s timeout.
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The recorder could not be installed (another metrics recorder owns the process).
#[derive(Debug, Clone, thiserror::Error)]
#[error("the metrics recorder could not be installed: {0}")]
pub struct MetricsError(String);

static HANDLE: OnceLock<Result<PrometheusHandle, MetricsError>> = OnceLock::new();

/// Installs the process-wide Prometheus recorder (once; later calls return the same handle).
pub fn install() -> Result<PrometheusHandle, MetricsError> {
    HANDLE
        .get_or_init(|| {
            let failed = |e: BuildError| MetricsError(e.to_string());
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_duration_seconds".into()), BUCKETS)
                .map_err(failed)?
                .install_recorder()
                .map_err(failed)?;
            describe();
            metrics_process::Collector::default().describe();
            gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            start_at_zero();
            Ok(handle)
        })
        .clone()
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        SEALED_READS,
        "Values of sealed keys read from ZITADEL that were not under the newest sealing key, by outcome: old_key (opened; `usermeta reseal` moves it), not_sealed (plaintext in ZITADEL), unknown_version, damaged, unknown_key, does_not_open (altered or copied); all but old_key were withheld"
    );
    describe_counter!(
        SEALED_WRITES,
        "Values of sealed keys sealed on their way to ZITADEL (SetMetadata and `usermeta reseal`)"
    );
    describe_counter!(
        GRPC_REQUESTS,
        "gRPC calls finished, by method and status code"
    );
    describe_histogram!(
        GRPC_DURATION,
        Unit::Seconds,
        "gRPC call latency until the status is sent, by method"
    );
    describe_gauge!(GRPC_IN_FLIGHT, "gRPC calls being served");
    describe_gauge!(
        MANAGEMENT_API,
        "1 for the ZITADEL API that manages metadata now (label api: v1 or v2), 0 for the other"
    );
    describe_counter!(
        UPSTREAM_REQUESTS,
        "HTTP calls to ZITADEL, by endpoint and HTTP status (`error` when no answer arrived)"
    );
    describe_histogram!(
        UPSTREAM_DURATION,
        Unit::Seconds,
        "HTTP call latency toward ZITADEL, body included, by endpoint"
    );
    describe_counter!(
        CACHE_LOOKUPS,
        "Caller cache lookups: hit, miss, or negative_hit (a recently rejected token)"
    );
    describe_gauge!(
        CACHE_ENTRIES,
        "Tokens in the caller cache (answers from userinfo, expired ones until evicted), as of its last miss"
    );
    describe_gauge!(
        REDIS_CONNECTED,
        format!(
            "1 while this replica hears other replicas' changes through Redis ({}), 0 while not",
            crate::settings::names::REDIS_URL
        )
    );
    describe_counter!(
        INVALIDATIONS,
        "Shared invalidations through Redis, by outcome: published, publish_failed, dropped, received"
    );
    describe_counter!(
        INVALIDATIONS_REJECTED,
        "Messages on the fleet's Redis channel not believed, by reason: oversized, unparsable, bad_tag (not sealed with this replica's bus key), out_of_bounds, stale, replayed"
    );
    describe_gauge!(WATCH_STREAMS, "WatchMetadata streams open on this replica");
    describe_counter!(
        WATCH_ENDED,
        "WatchMetadata streams ended by usermeta, by reason: lagged (the reader fell too far behind) or shutting_down"
    );
    describe_counter!(
        WEBHOOK_EVENTS,
        "Requests to the ZITADEL event webhook, by outcome: applied, ignored (another event type), unsigned, bad_signature, stale, replayed, malformed, unsupported_media_type, length_required, too_large, buffer_full (the replica's body budget is in use), body_timeout, too_many_connections (refused at accept), not_found (another path or method)"
    );
    describe_counter!(
        CONNECTIONS_REFUSED,
        "Connections to the /metrics listener answered 503 at once because too many were open (label listener)"
    );
    describe_counter!(
        BATCH_RESULTS,
        "Per-user results of BatchGetMetadata calls, by status code (OK, PERMISSION_DENIED, NOT_FOUND, …)"
    );
    describe_counter!(
        TOKEN_REFRESHES,
        "Management API token requests, by outcome (ok or error)"
    );
    describe_counter!(
        UPSTREAM_BUDGET,
        format!(
            "Requests to ZITADEL the request budget ({}) decided on, by class (identify: tokens usermeta does not know yet; manage: identified callers and the service credential) and outcome (granted; refused: the replica's budget is spent; refused_caller_share: the caller's share of it, {}, is spent; refused requests are not sent)",
            crate::settings::names::UPSTREAM_RATE_LIMIT,
            crate::settings::names::UPSTREAM_CALLER_SHARE
        )
    );
    describe_counter!(
        CALLS_SHED,
        format!(
            "Calls refused at once without starting, by the in-flight limit that refused them: max_in_flight ({}) or max_in_flight_per_caller ({})",
            crate::settings::names::MAX_IN_FLIGHT,
            crate::settings::names::MAX_IN_FLIGHT_PER_CALLER
        )
    );
    describe_gauge!(
        CALLS_WAITING,
        format!(
            "Calls counted against {}: those that wait on ZITADEL (answers from memory are not counted)",
            crate::settings::names::MAX_IN_FLIGHT
        )
    );
    describe_counter!(
        CHECK_DECISIONS,
        "Envoy Check answers, by decision: allow, unauthenticated, forbidden, rate_limited, caller_overloaded, upstream_budget_exhausted, caller_upstream_share_exhausted, unavailable (ZITADEL could not be asked: 503)"
    );
    describe_gauge!(
        BREAKER_OPEN,
        "1 while the circuit breaker of a group of calls to ZITADEL is open (label group: caller or management), 0 while closed or probing"
    );
    describe_gauge!(
        BUILD_INFO,
        "Always 1; label version: the running usermeta's version"
    );
    describe_gauge!(
        UPSTREAM_BUDGET_FALLBACK,
        format!(
            "1 while this replica keeps to its fallback budget toward ZITADEL ({}) because the fleet's budget in Redis ({}) cannot be reached, 0 while it shares the fleet's",
            crate::settings::names::UPSTREAM_FLEET_FALLBACK_RATE_LIMIT,
            crate::settings::names::UPSTREAM_FLEET_RATE_LIMIT
        )
    );
    describe_counter!(
        METADATA_CACHE_LOOKUPS,
        "Lookups of users' metadata listings read with the service credential (another user's ListMetadata, BatchGetMetadata): hit or miss"
    );
    describe_gauge!(
        METADATA_CACHE_ENTRIES,
        "Listings in the metadata cache (per user and organisation scope, expired ones until evicted), as of its last miss"
    );
    describe_gauge!(
        UPSTREAM_BUDGET_TOKENS,
        "Requests the budget toward ZITADEL would grant at once, as of its last decision"
    );
}

/// Creates the counters of rare events at 0, so they are on `/metrics` before the first one: a rule's
/// `increase()` sees the first event, and a dashboard shows 0 rather than no data.
fn start_at_zero() {
    for outcome in [
        "old_key",
        "not_sealed",
        "unknown_version",
        "damaged",
        "unknown_key",
        "does_not_open",
    ] {
        counter!(SEALED_READS, "outcome" => outcome).absolute(0);
    }
    counter!(SEALED_WRITES).absolute(0);
    for outcome in ["ok", "error"] {
        counter!(TOKEN_REFRESHES, "outcome" => outcome).absolute(0);
    }
    for class in ["identify", "manage"] {
        for outcome in ["granted", "refused", "refused_caller_share"] {
            counter!(UPSTREAM_BUDGET, "class" => class, "outcome" => outcome).absolute(0);
        }
    }
    for limit in ["max_in_flight", "max_in_flight_per_caller"] {
        counter!(CALLS_SHED, "limit" => limit).absolute(0);
    }
    for result in ["hit", "miss"] {
        counter!(METADATA_CACHE_LOOKUPS, "result" => result).absolute(0);
    }
    for result in ["hit", "miss", "negative_hit"] {
        counter!(CACHE_LOOKUPS, "result" => result).absolute(0);
    }
}

/// Serves `GET /metrics` on `listener` until the returned task is aborted. HTTP/1.1 by hyper directly: a
/// scrape endpoint needs no router.
pub fn serve(listener: TcpListener, handle: PrometheusHandle) -> tokio::task::JoinHandle<()> {
    let upkeep_handle = handle.clone();
    tokio::spawn(async move {
        // Histogram samples wait in buffers until drained; drain them even when nobody scrapes.
        let upkeep = async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                upkeep_handle.run_upkeep();
            }
        };
        // A scraper or two, never more: a cap keeps stray connections from piling up.
        let limit = crate::http1::ConnectionLimit {
            max_connections: MAX_SCRAPE_CONNECTIONS,
            on_refused: || counter!(CONNECTIONS_REFUSED, "listener" => "metrics").increment(1),
        };
        let accept = crate::http1::serve(listener, "metrics", limit, move |request| {
            let answer = scrape_answer(&handle, &request);
            async move { answer }
        });
        tokio::select! {
            () = accept => {}
            () = upkeep => {}
        }
    })
}

/// The answer to one request of the metrics listener: the text format at `GET /metrics` (the process's
/// CPU, memory and file descriptors read at that moment), 404 elsewhere.
fn scrape_answer<B>(handle: &PrometheusHandle, request: &http::Request<B>) -> crate::http1::Answer {
    let (status, content_type, body) =
        if request.uri().path() == "/metrics" && request.method() == http::Method::GET {
            metrics_process::Collector::default().collect();
            (
                http::StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                handle.render(),
            )
        } else {
            (
                http::StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
                "not found: metrics are at GET /metrics\n".to_owned(),
            )
        };
    crate::http1::text(status, content_type, body)
}

/// Records one HTTP call upstream: `endpoint` names it (`userinfo`, `management.SetUserMetadata`, …), `status`
/// is the HTTP status, or `None` when no answer arrived.
pub fn upstream_call(endpoint: &'static str, status: Option<u16>, elapsed: Duration) {
    let status = status.map_or_else(|| "error".to_owned(), |s| s.to_string());
    counter!(UPSTREAM_REQUESTS, "endpoint" => endpoint, "status" => status).increment(1);
    histogram!(UPSTREAM_DURATION, "endpoint" => endpoint).record(elapsed.as_secs_f64());
}

/// What a caller cache lookup found.
#[derive(Debug, Clone, Copy)]
pub enum CacheResult {
    /// A cached answer about the token.
    Hit,
    /// Not cached: ZITADEL was asked.
    Miss,
    /// A cached refusal of the token.
    NegativeHit,
}

/// Called on every cached call: literal labels make a static key, where a variable one is built per call.
pub fn cache_lookup(result: CacheResult) {
    match result {
        CacheResult::Hit => counter!(CACHE_LOOKUPS, "result" => "hit").increment(1),
        CacheResult::Miss => counter!(CACHE_LOOKUPS, "result" => "miss").increment(1),
        CacheResult::NegativeHit => {
            counter!(CACHE_LOOKUPS, "result" => "negative_hit").increment(1);
        }
    }
}

/// How many tokens the caller cache holds.
pub fn cache_entries(entries: usize) {
    gauge!(CACHE_ENTRIES).set(entries as f64);
}

/// One lookup in the metadata cache: `hit` or `miss`.
pub fn metadata_cache_lookup(hit: bool) {
    if hit {
        counter!(METADATA_CACHE_LOOKUPS, "result" => "hit").increment(1);
    } else {
        counter!(METADATA_CACHE_LOOKUPS, "result" => "miss").increment(1);
    }
}

/// How many listings the metadata cache holds.
pub fn metadata_cache_entries(entries: usize) {
    gauge!(METADATA_CACHE_ENTRIES).set(entries as f64);
}

/// Whether this replica keeps to its fallback budget toward ZITADEL.
pub fn upstream_budget_fallback(on: bool) {
    gauge!(UPSTREAM_BUDGET_FALLBACK).set(if on { 1.0 } else { 0.0 });
}

/// Which management API is in use now.
pub fn management_api(in_use: &'static str) {
    for api in ["v1", "v2"] {
        gauge!(MANAGEMENT_API, "api" => api).set(if api == in_use { 1.0 } else { 0.0 });
    }
}

/// Records one decision of the request budget toward ZITADEL, and the tokens it left.
pub fn upstream_budget(class: &'static str, granted: bool, tokens: f64) {
    let outcome = if granted { "granted" } else { "refused" };
    counter!(UPSTREAM_BUDGET, "class" => class, "outcome" => outcome).increment(1);
    gauge!(UPSTREAM_BUDGET_TOKENS).set(tokens);
}

/// The in-flight limit that refused a call.
#[derive(Debug, Clone, Copy)]
pub enum ShedLimit {
    /// [`MAX_IN_FLIGHT`](crate::settings::names::MAX_IN_FLIGHT).
    Global,
    /// [`MAX_IN_FLIGHT_PER_CALLER`](crate::settings::names::MAX_IN_FLIGHT_PER_CALLER).
    PerCaller,
}

/// Records a call an in-flight limit refused.
pub fn shed(limit: ShedLimit) {
    match limit {
        ShedLimit::Global => counter!(CALLS_SHED, "limit" => "max_in_flight").increment(1),
        ShedLimit::PerCaller => {
            counter!(CALLS_SHED, "limit" => "max_in_flight_per_caller").increment(1);
        }
    }
}

/// A call that waits on ZITADEL was admitted (`1.0`) or ended (`-1.0`).
pub fn waiting_calls(delta: f64) {
    gauge!(CALLS_WAITING).increment(delta);
}

/// Records a request to ZITADEL the caller's share of the budget refused (the replica's bucket not asked).
pub fn upstream_caller_share_refused(class: &'static str) {
    counter!(UPSTREAM_BUDGET, "class" => class, "outcome" => "refused_caller_share").increment(1);
}

/// One answer of Envoy's Check (`decision` is one of the literals the describe text lists).
pub fn check_decision(decision: &'static str) {
    // Check is on the hot path: literal labels make static keys, where a variable one is built per call.
    macro_rules! count {
        ($($name:literal)|+) => {
            match decision {
                $($name => counter!(CHECK_DECISIONS, "decision" => $name).increment(1),)+
                other => counter!(CHECK_DECISIONS, "decision" => other).increment(1),
            }
        };
    }
    count!(
        "allow"
            | "unauthenticated"
            | "forbidden"
            | "rate_limited"
            | "caller_overloaded"
            | "upstream_budget_exhausted"
            | "caller_upstream_share_exhausted"
            | "unavailable"
    );
}

/// Whether the circuit breaker of a group of calls to ZITADEL (`caller` or `management`) is open.
pub fn breaker_open(group: &'static str, open: bool) {
    gauge!(BREAKER_OPEN, "group" => group).set(if open { 1.0 } else { 0.0 });
}

/// Records one management API token request.
pub fn token_refresh(ok: bool) {
    let outcome = if ok { "ok" } else { "error" };
    counter!(TOKEN_REFRESHES, "outcome" => outcome).increment(1);
}

/// Whether the subscription to other replicas' changes is up.
pub fn redis_connected(up: bool) {
    gauge!(REDIS_CONNECTED).set(if up { 1.0 } else { 0.0 });
}

/// One shared invalidation sent or heard (`outcome` is one of the literals the describe text lists).
pub fn invalidation(outcome: &'static str) {
    counter!(INVALIDATIONS, "outcome" => outcome).increment(1);
}

/// One message on the fleet's channel not believed (`reason` is one of the literals the describe text lists).
pub fn invalidation_rejected(reason: &'static str) {
    counter!(INVALIDATIONS_REJECTED, "reason" => reason).increment(1);
}

/// A WatchMetadata stream opened (`1.0`) or closed (`-1.0`).
pub fn watch_streams(delta: f64) {
    gauge!(WATCH_STREAMS).increment(delta);
}

/// A WatchMetadata stream ended by usermeta (`reason` is one of the literals the describe text lists).
pub fn watch_ended(reason: &'static str) {
    counter!(WATCH_ENDED, "reason" => reason).increment(1);
}

/// A value of a sealed key read that was not under the newest sealing key (`outcome`: `old_key`, or why it
/// did not open).
pub fn sealed_value_read(outcome: &'static str) {
    counter!(SEALED_READS, "outcome" => outcome).increment(1);
}

/// Values of sealed keys sealed on their way to ZITADEL.
pub fn sealed_values_written(values: u64) {
    counter!(SEALED_WRITES).increment(values);
}

/// One event POSTed to the webhook (`outcome` is one of the literals the describe text lists).
pub fn webhook_event(outcome: &'static str) {
    counter!(WEBHOOK_EVENTS, "outcome" => outcome).increment(1);
}

/// Records the per-user results of one BatchGetMetadata call.
pub fn batch_results(codes: impl IntoIterator<Item = tonic::Code>) {
    for code in codes {
        counter!(BATCH_RESULTS, "code" => code_name(code)).increment(1);
    }
}

/// The name of a gRPC status code, e.g. `OK`, `NOT_FOUND`.
pub fn code_name(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Ok => "OK",
        tonic::Code::Cancelled => "CANCELLED",
        tonic::Code::Unknown => "UNKNOWN",
        tonic::Code::InvalidArgument => "INVALID_ARGUMENT",
        tonic::Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        tonic::Code::NotFound => "NOT_FOUND",
        tonic::Code::AlreadyExists => "ALREADY_EXISTS",
        tonic::Code::PermissionDenied => "PERMISSION_DENIED",
        tonic::Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        tonic::Code::FailedPrecondition => "FAILED_PRECONDITION",
        tonic::Code::Aborted => "ABORTED",
        tonic::Code::OutOfRange => "OUT_OF_RANGE",
        tonic::Code::Unimplemented => "UNIMPLEMENTED",
        tonic::Code::Internal => "INTERNAL",
        tonic::Code::Unavailable => "UNAVAILABLE",
        tonic::Code::DataLoss => "DATA_LOSS",
        tonic::Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Methods usermeta serves. Anything else is labelled `unknown`: a client must not be able to mint series.
const KNOWN_METHODS: &[&str] = &[
    "/usermeta.v1.UserMetadataService/GetMyMetadata",
    "/usermeta.v1.UserMetadataService/ListMetadata",
    "/usermeta.v1.UserMetadataService/SetMetadata",
    "/usermeta.v1.UserMetadataService/DeleteMetadata",
    "/usermeta.v1.UserMetadataService/FindUsersByMetadata",
    "/usermeta.v1.UserMetadataService/BatchGetMetadata",
    "/usermeta.v1.UserMetadataService/WatchMetadata",
    "/usermeta.v1.UserMetadataService/ListOrganizationMetadata",
    "/usermeta.v1.UserMetadataService/SetOrganizationMetadata",
    "/usermeta.v1.UserMetadataService/DeleteOrganizationMetadata",
    "/envoy.service.auth.v3.Authorization/Check",
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.health.v1.Health/List",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// The `method` label of a request path: `package.Service/Method`, or `unknown`.
pub fn method_label(path: &str) -> &'static str {
    KNOWN_METHODS
        .iter()
        .find(|known| **known == path)
        .map_or("unknown", |known| &known[1..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_known_methods_become_labels() {
        assert_eq!(
            method_label("/usermeta.v1.UserMetadataService/SetMetadata"),
            "usermeta.v1.UserMetadataService/SetMetadata"
        );
        assert_eq!(
            method_label("/usermeta.v1.UserMetadataService/Nope"),
            "unknown"
        );
        assert_eq!(method_label("/x"), "unknown");
    }
}
