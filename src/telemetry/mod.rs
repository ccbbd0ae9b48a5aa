//! Logs and traces. Structured `tracing` events go to stderr as text or JSON (level from `RUST_LOG`, default
//! `info`). A W3C `traceparent` from the caller continues through usermeta to every ZITADEL call. Spans are
//! recorded by OpenTelemetry and exported over OTLP only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set; without
//! it, the call's trace context is carried beside its request id, and each ZITADEL call gets a fresh span id.
//!
//! Every gRPC call has a request id (from `x-request-id` when the caller sent a usable one, else generated),
//! and every log line of a call names it and the method, as a `grpc` span would (see `call_log.rs` for why it
//! is no span). The response names it (`x-request-id`) whenever it names anything: always for the caller's own
//! id, and for a generated one when a log line, an error message or an exported span of the call names it.

use std::{
    cell::{Cell, OnceCell},
    io::IsTerminal as _,
};

use http::{HeaderName, HeaderValue};
use opentelemetry::{
    Context,
    propagation::TextMapPropagator as _,
    trace::{
        SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
        TracerProvider as _,
    },
};
use opentelemetry_http::HeaderInjector;
use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::{
    EnvFilter, Layer, filter::Targets, fmt, fmt::MakeWriter, prelude::*, registry::LookupSpan,
};

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines, fields escaped (see [`EscapedFields`]).
    Text,
    /// One JSON object a line.
    Json,
}

mod call_log;
#[cfg(test)]
mod captured;
mod request_context;
mod text_fields;

pub use request_context::{RequestContext, RequestContextFuture, RequestContextLayer};
pub use text_fields::EscapedFields;

/// The gRPC metadata key of the request id, in and out.
pub const REQUEST_ID: &str = "x-request-id";
/// Header names as values, so the per-call lookups need not parse them from text.
const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static(REQUEST_ID);
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// Longest request id taken from a caller; longer ones are replaced (they end up in every log line).
const MAX_REQUEST_ID: usize = 128;

/// Tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter could not be built from the `OTEL_*` settings.
    #[error("OTEL_EXPORTER_OTLP_ENDPOINT is set but the OTLP exporter could not be built: {0}")]
    Otlp(#[from] opentelemetry_otlp::ExporterBuildError),
    /// Another global subscriber is installed (a second start in one process).
    #[error("a global log subscriber is already installed")]
    AlreadyInstalled,
}

/// The installed tracer provider; [`Telemetry::shutdown`] flushes spans still waiting for export.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Flushes and stops the exporter. Call outside the async runtime (the OTLP client blocks).
    pub fn shutdown(self) {
        if let Err(error) = self.provider.shutdown() {
            eprintln!("usermeta: could not flush traces: {error}");
        }
    }
}

/// Installs the global subscriber, logging to stderr. Call once, from `main`, before the runtime starts:
/// the OTLP exporter's blocking HTTP client must not be built inside it.
pub fn init(format: impl Into<LogFormat>) -> Result<Telemetry, TelemetryError> {
    init_with(format, "info", std::io::stderr)
}

/// [`init`] with a default filter (used when `RUST_LOG` is unset) and a writer; tests capture logs with it.
pub fn init_with<W>(
    format: impl Into<LogFormat>,
    default_filter: &str,
    writer: W,
) -> Result<Telemetry, TelemetryError>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let mut provider = SdkTracerProvider::builder().with_resource(
        opentelemetry_sdk::Resource::builder()
            .with_service_name("usermeta")
            .build(),
    );
    let exporting = std::env::var_os("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
        || std::env::var_os("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some();
    if exporting {
        // Reads the endpoint, headers and timeout from the standard OTEL_EXPORTER_OTLP_* variables.
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()?;
        provider = provider.with_batch_exporter(exporter);
    }
    let provider = provider.build();
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let tracer = exporting.then_some(&provider);
    let installed = subscriber(format.into(), filter, writer, tracer).try_init();
    installed.map_err(|_| TelemetryError::AlreadyInstalled)?;
    Ok(Telemetry { provider })
}

/// Log lines, and spans for OpenTelemetry when `tracer` exports them.
fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
    tracer: Option<&SdkTracerProvider>,
) -> Box<dyn tracing::Subscriber + Send + Sync + 'static>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let logs = tracing_subscriber::registry();
    // Spans reach OpenTelemetry whatever RUST_LOG says. Without an exporter there is nothing to record them
    // for, and recording costs more than the cached call itself: then no OpenTelemetry layer at all (not even
    // a `None` one: that would enable every span the log filter turns down), and `upstream_span` continues
    // the caller's trace from the call's context instead. The per-call handler spans are DEBUG (so that logs
    // at the default level pay for none), and exported all the same.
    match tracer {
        None => Box::new(logs.with(log_layer(format, filter, writer))),
        Some(provider) => Box::new(
            logs.with(
                tracing_opentelemetry::layer()
                    .with_tracer(provider.tracer("usermeta"))
                    .with_filter(Targets::new().with_target("usermeta", tracing::Level::DEBUG)),
            )
            .with(log_layer(format, filter, writer)),
        ),
    }
}

/// The log lines: to stderr (or `writer`) as `filter` says, each line of a gRPC call naming the call.
fn log_layer<S, W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
) -> Box<dyn Layer<S> + Send + Sync + 'static>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = call_log::HideCallSpan(filter);
    match format {
        LogFormat::Text => fmt::layer()
            // No request field can pass for another field or line (JSON escapes by itself).
            .fmt_fields(EscapedFields)
            .event_format(call_log::TextLines::default())
            // Colour codes only for a person at a terminal, not in collected logs.
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(writer)
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .event_format(call_log::JsonLines::default())
            .with_writer(writer)
            .with_filter(filter)
            .boxed(),
    }
}

/// What one gRPC call carries to its log lines and ZITADEL calls.
struct CallContext {
    /// The method's name as metrics label it.
    method: &'static str,
    request_id: RequestId,
    /// The trace this call belongs to: the caller's (`traceparent`), or one of its own, made on first use.
    trace: OnceCell<SpanContext>,
    /// Whether the request id went somewhere (a log line, an error message), so the response names it too.
    request_id_handed_out: Cell<bool>,
}

impl CallContext {
    fn new(method: &'static str, request_id: RequestId) -> Self {
        CallContext {
            method,
            request_id,
            trace: OnceCell::new(),
            request_id_handed_out: Cell::new(false),
        }
    }

    /// The request id, for something that will name it; the call's response then names it as well.
    fn hand_out_request_id(&self) -> &RequestId {
        self.request_id_handed_out.set(true);
        &self.request_id
    }
}

tokio::task_local! {
    static CURRENT_CALL: CallContext;
}

/// The request id of the gRPC call being served, if any.
pub fn current_request_id() -> Option<String> {
    with_current_call(|call| call.hand_out_request_id().to_string())
}

/// `f` of the gRPC call being served, if any.
fn with_current_call<R>(f: impl FnOnce(&CallContext) -> R) -> Option<R> {
    CURRENT_CALL.try_with(f).ok()
}

/// A call's request id: the caller's, or one made for the call. Kept as it came (the caller's header value,
/// or the random number), so it is only turned into text where it is written.
#[derive(Debug, Clone)]
enum RequestId {
    /// The caller's `x-request-id`, short and plain (it goes into logs).
    Given(HeaderValue),
    Generated(u128),
}

impl RequestId {
    /// The caller's request id if it is short and plain, else a fresh random one.
    fn of(headers: &http::HeaderMap) -> RequestId {
        headers
            .get(REQUEST_ID_HEADER)
            .filter(|id| {
                !id.is_empty()
                    && id.len() <= MAX_REQUEST_ID
                    && id
                        .as_bytes()
                        .iter()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
            })
            .map_or_else(
                || RequestId::Generated(rand::random()),
                |id| RequestId::Given(id.clone()),
            )
    }

    /// The id as a response header value, never HPACK-indexed: a value unique to each response would only
    /// churn the connection's header table (and cost a search of it per response).
    fn header_value(&self) -> HeaderValue {
        let mut value = match self {
            RequestId::Given(id) => id.clone(),
            RequestId::Generated(n) => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                let mut text = [0u8; 32];
                for (i, digit) in text.iter_mut().enumerate() {
                    *digit = HEX[((n >> (124 - 4 * i)) & 0xf) as usize];
                }
                HeaderValue::from_bytes(&text).unwrap_or(HeaderValue::from_static("-"))
            }
        };
        value.set_sensitive(true);
        value
    }
}

impl std::fmt::Display for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // Checked plain ASCII in `of`.
            RequestId::Given(id) => f.write_str(id.to_str().unwrap_or_default()),
            RequestId::Generated(n) => write!(f, "{n:032x}"),
        }
    }
}

/// A span for one HTTP call to ZITADEL, and the `traceparent`/`tracestate` headers naming it as the parent,
/// so ZITADEL's traces (and its logs) join the caller's trace.
pub fn upstream_span(endpoint: &'static str) -> (tracing::Span, http::HeaderMap) {
    let span = tracing::info_span!("zitadel", endpoint);
    let mut headers = http::HeaderMap::new();
    let recorded = span.context();
    let context = if recorded.span().span_context().is_valid() {
        recorded
    } else {
        // Spans are not exported: name a fresh span id within the call's trace, so ZITADEL's side still joins it.
        Context::new().with_remote_span_context(unrecorded_child())
    };
    TraceContextPropagator::new().inject_context(&context, &mut HeaderInjector(&mut headers));
    (span, headers)
}

/// A new span id in the current call's trace (or in a trace of its own outside a call), keeping the caller's
/// sampling decision and `tracestate`; a trace usermeta starts is sampled, as the SDK's default sampler does.
fn unrecorded_child() -> SpanContext {
    let child_of = |trace: &SpanContext| {
        SpanContext::new(
            trace.trace_id(),
            random_span_id(),
            trace.trace_flags(),
            false,
            trace.trace_state().clone(),
        )
    };
    CURRENT_CALL
        .try_with(|call| child_of(call.trace.get_or_init(new_trace)))
        .unwrap_or_else(|_| child_of(&new_trace()))
}

fn new_trace() -> SpanContext {
    let trace_id = TraceId::from(rand::random::<u128>().max(1));
    SpanContext::new(
        trace_id,
        random_span_id(),
        TraceFlags::SAMPLED,
        false,
        TraceState::NONE,
    )
}

fn random_span_id() -> SpanId {
    SpanId::from(rand::random::<u64>().max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Response};

    #[test]
    fn plain_request_ids_are_kept_others_replaced() {
        let mut headers = http::HeaderMap::new();
        headers.insert(REQUEST_ID, HeaderValue::from_static("abc-123_x.y:z"));
        let id_of = |headers: &http::HeaderMap| {
            let id = RequestId::of(headers);
            // The header sent back says what the logs say.
            assert_eq!(id.header_value().to_str().unwrap(), id.to_string());
            id.to_string()
        };
        assert_eq!(id_of(&headers), "abc-123_x.y:z");
        for bad in ["has space", "quote\"", ""] {
            headers.insert(REQUEST_ID, HeaderValue::from_str(bad).unwrap());
            let id = id_of(&headers);
            assert_eq!(id.len(), 32, "{bad:?} → {id}");
            assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        }
        headers.insert(REQUEST_ID, HeaderValue::from_str(&"a".repeat(129)).unwrap());
        assert_eq!(id_of(&headers).len(), 32);
        assert_ne!(
            id_of(&http::HeaderMap::new()),
            id_of(&http::HeaderMap::new())
        );
        assert_eq!(
            RequestId::Generated(0xab).header_value(),
            format!("{:032x}", 0xab)
        );
    }

    #[test]
    fn warnings_of_a_call_name_its_request_id_with_only_warnings_logged() {
        let captured = super::captured::Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let call = CallContext::new("GetMyMetadata", RequestId::Generated(0xfeed));
        let status = tracing::subscriber::with_default(subscriber, || {
            CURRENT_CALL.sync_scope(call, || {
                tonic::Status::from(crate::api::ApiError::DeadlineExceeded)
            })
        });
        let id = format!("{:032x}", 0xfeed);
        let logs = captured.text();
        assert!(
            logs.contains("request failed") && logs.contains(&id),
            "{logs}"
        );
        assert!(status.message().contains(&id), "{}", status.message());
    }

    fn trace_and_span_of(headers: &http::HeaderMap) -> (String, String) {
        let traceparent = headers["traceparent"].to_str().unwrap();
        let parts: Vec<&str> = traceparent.split('-').collect();
        assert_eq!(parts.len(), 4, "{traceparent}");
        assert_eq!(parts[3], "01", "{traceparent}");
        (parts[1].to_owned(), parts[2].to_owned())
    }

    #[tokio::test]
    async fn calls_to_zitadel_share_their_calls_trace_without_an_exporter() {
        let call = || CallContext::new("GetMyMetadata", RequestId::Generated(1));
        let (first, second) = CURRENT_CALL
            .scope(call(), async {
                let (_, first) = upstream_span("userinfo");
                let (_, second) = upstream_span("userinfo");
                (trace_and_span_of(&first), trace_and_span_of(&second))
            })
            .await;
        assert_eq!(first.0, second.0, "one trace per gRPC call");
        assert_ne!(first.1, second.1, "a span id per ZITADEL call");
        let (other, _) = CURRENT_CALL
            .scope(call(), async {
                trace_and_span_of(&upstream_span("userinfo").1)
            })
            .await;
        assert_ne!(other, first.0, "another call, another trace");
    }

    /// Calls the layer around a service that hands the request id out (`hand_out`) or not, and returns the
    /// response's `x-request-id`.
    async fn response_request_id(
        request_id: Option<&'static str>,
        hand_out: bool,
    ) -> Option<HeaderValue> {
        use tower::{Layer as _, ServiceExt as _};
        let inner = tower::service_fn(move |_: Request<()>| async move {
            if hand_out {
                assert!(current_request_id().is_some());
            }
            Ok::<_, std::convert::Infallible>(Response::new(()))
        });
        let mut request = Request::builder().uri("/usermeta.v1.UserMetadataService/GetMyMetadata");
        if let Some(id) = request_id {
            request = request.header(REQUEST_ID, id);
        }
        let response = RequestContextLayer
            .layer(inner)
            .oneshot(request.body(()).unwrap())
            .await
            .unwrap();
        response.headers().get(REQUEST_ID).cloned()
    }

    #[tokio::test]
    async fn the_request_id_goes_back_never_indexed() {
        let id = response_request_id(None, true)
            .await
            .expect("handed out, so sent");
        assert_eq!(id.len(), 32);
        assert!(id.as_bytes().iter().all(u8::is_ascii_hexdigit));
        // Unique per response: indexing it in HPACK's table would only evict useful entries.
        assert!(id.is_sensitive());
        let given = response_request_id(Some("req-7"), false).await.unwrap();
        assert_eq!(given, "req-7");
        assert!(given.is_sensitive());
    }

    #[tokio::test]
    async fn a_generated_request_id_goes_back_only_when_it_names_something() {
        assert_eq!(response_request_id(None, false).await, None);
        assert!(response_request_id(None, true).await.is_some());
        // The caller's own id always comes back, named anywhere or not.
        assert_eq!(
            response_request_id(Some("req-quiet"), false).await.unwrap(),
            "req-quiet"
        );
        // An unusable one is replaced, and the replacement follows the rule of generated ids.
        assert_eq!(response_request_id(Some("has spaces"), false).await, None);
        let replaced = response_request_id(Some("has spaces"), true).await.unwrap();
        assert_ne!(replaced, "has spaces");
    }
}
