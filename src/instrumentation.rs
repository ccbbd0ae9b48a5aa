//! How the ZITADEL client's calls show in usermeta's telemetry: each runs in a span whose id ZITADEL receives
//! as `traceparent`, and is counted by endpoint and HTTP status.

use std::time::Duration;

use usermeta_zitadel::{Instrument, Instrumentation};

/// The hooks [`server::Application`](crate::server::Application) gives the ZITADEL client.
pub fn upstream() -> Instrumentation {
    Instrumentation::new(Upstream)
}

struct Upstream;

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
}
