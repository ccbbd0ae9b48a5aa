//! What the service learns of every HTTP call this crate makes: the span it runs in (with the trace headers
//! ZITADEL receives) and its outcome. The crate knows nothing of how those become logs, traces or metrics; the
//! service plugs that in ([`Instrumentation`]) when it builds the client.

use std::sync::Arc;
use std::time::Duration;

/// Hooks called around every HTTP call to ZITADEL. Calls are rare beside the work they wrap (a network round
/// trip), so dynamic dispatch costs nothing that matters.
pub trait Instrument: Send + Sync + 'static {
    /// Before a call to `endpoint`: the span the call runs in, and headers to send with it (`traceparent`).
    fn call_started(&self, endpoint: &'static str) -> (tracing::Span, http::HeaderMap);
    /// After the call: ZITADEL's HTTP status (`None`: no answer arrived) and how long it took.
    fn call_finished(&self, endpoint: &'static str, http_status: Option<u16>, elapsed: Duration);
    /// A request to the token endpoint for the service credential ended (`ok`: a token came back).
    fn token_refreshed(&self, ok: bool);
    /// ZITADEL answered a call to `endpoint` with a `Deprecation` header.
    fn deprecated(&self, _endpoint: &'static str) {}
    /// The management API (`v1`, `v2`) now in use.
    fn management_api_in_use(&self, _api: &'static str) {}
    /// The request budget toward ZITADEL granted (or refused) a request of `class` (`identify`, `manage`);
    /// `tokens` are left in the bucket (below zero while a charge is repaid).
    fn upstream_budget(&self, _class: &'static str, _granted: bool, _tokens: f64) {}
    /// The caller's share of the request budget refused a request of `class` (the replica's bucket was not
    /// asked).
    fn upstream_caller_share_refused(&self, _class: &'static str) {}
    /// The fleet's shared request budget could not be reached and this replica keeps to its fallback budget
    /// (`true`), or it answers again (`false`; also called once as the client is built with a fleet budget).
    fn upstream_budget_fallback(&self, _on_fallback: bool) {}
    /// The circuit breaker of `group` opened (`open`) or closed; also called once per group as the client is
    /// built, with the breaker closed.
    fn breaker_changed(&self, _group: crate::resilience::Group, _open: bool) {}
}

/// The hooks in use: [`Instrumentation::none`] unless the service gives its own.
#[derive(Clone)]
pub struct Instrumentation(Arc<dyn Instrument>);

impl Instrumentation {
    /// The service's hooks.
    pub fn new(hooks: impl Instrument) -> Self {
        Instrumentation(Arc::new(hooks))
    }

    /// A plain `zitadel` span per call, no trace headers, no counts.
    pub fn none() -> Self {
        Instrumentation::new(Silent)
    }

    pub(crate) fn hooks(&self) -> &dyn Instrument {
        &*self.0
    }
}

impl Default for Instrumentation {
    fn default() -> Self {
        Instrumentation::none()
    }
}

impl std::fmt::Debug for Instrumentation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Instrumentation")
    }
}

struct Silent;

impl Instrument for Silent {
    fn call_started(&self, endpoint: &'static str) -> (tracing::Span, http::HeaderMap) {
        (
            tracing::info_span!("zitadel", endpoint),
            http::HeaderMap::new(),
        )
    }

    fn call_finished(&self, _: &'static str, _: Option<u16>, _: Duration) {}

    fn token_refreshed(&self, _: bool) {}
}
