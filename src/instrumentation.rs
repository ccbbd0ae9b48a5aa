//! How the ZITADEL client's calls show in usermeta's telemetry: each runs in a span whose id ZITADEL receives
//! as `traceparent`, and is counted by endpoint and HTTP status; the management API in use is a gauge; a
//! deprecated endpoint is a warning, once per endpoint; the request budget's decisions are counted; the
//! breakers' states are gauges.

use std::{
    collections::HashSet,
    sync::{Mutex, PoisonError},
    time::Duration,
};

use usermeta_zitadel::{Instrument, Instrumentation, resilience::Group};

/// The hooks [`server::Application`](crate::server::Application) gives the ZITADEL client.
pub fn upstream() -> Instrumentation {
    Instrumentation::new(Upstream::default())
}

#[derive(Default)]
struct Upstream {
    /// Endpoints already warned about.
    deprecated: Mutex<HashSet<&'static str>>,
}

impl Instrument for Upstream {
    fn call_started(&self, endpoint: &'static str) -> (tracing::Span, http::HeaderMap) {
        crate::telemetry::upstream_span(endpoint)
    }

    fn call_finished(&self, endpoint: &'static str, http_status: Option<u16>, elapsed: Duration) {
        crate::metrics::upstream_call(endpoint, http_status, elapsed);
    }

    fn token_refreshed(&self, ok: bool) {
        crate::metrics::token_refresh(ok);
    }

    fn deprecated(&self, endpoint: &'static str) {
        let first = self
            .deprecated
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(endpoint);
        if first {
            tracing::warn!(
                endpoint,
                "ZITADEL marks {endpoint} as deprecated (a `Deprecation` header); move to the v2 user service with {}=v2 (or auto)",
                crate::settings::names::ZITADEL_API
            );
        }
    }

    fn management_api_in_use(&self, api: &'static str) {
        crate::metrics::management_api(api);
    }

    fn upstream_budget(&self, class: &'static str, granted: bool, tokens: f64) {
        crate::metrics::upstream_budget(class, granted, tokens);
    }

    fn upstream_budget_fallback(&self, on_fallback: bool) {
        crate::metrics::upstream_budget_fallback(on_fallback);
    }

    fn upstream_caller_share_refused(&self, class: &'static str) {
        crate::metrics::upstream_caller_share_refused(class);
    }

    fn breaker_changed(&self, group: Group, open: bool) {
        let group = match group {
            Group::CallerToken => "caller",
            Group::Management => "management",
        };
        crate::metrics::breaker_open(group, open);
    }
}
