//! How every log line of a gRPC call names the call, at no cost to calls that write none.
//!
//! A tracing span per call would do it, but the log layer pays for each enabled span whether or not a line is
//! ever written: it allocates the span in the registry and formats its fields on creation, and every poll
//! enters and exits it. On a cached call that was a fifth of the work. So the call's context (method and
//! request id) lives in the call's task-local [`CallContext`](super::CallContext) only, and the formatters
//! here write it into the lines that are written, where the `grpc` span used to be:
//! `… INFO grpc{method=GetMyMetadata request_id=…}:GetMyMetadata{…}: usermeta::api: …` in text, and an entry
//! `{"method":…,"request_id":…,"name":"grpc"}` first in `spans` (and as `span` when no other span is open) in
//! JSON. The `grpc` span itself is still created for OpenTelemetry when spans are exported; the log layer
//! never sees it ([`HideCallSpan`]), so no line names the call twice.

use std::fmt;

use tracing::{Event, Level, Metadata, Subscriber, span, subscriber::Interest};
use tracing_subscriber::{
    filter::LevelFilter,
    fmt::{
        FmtContext, FormatEvent, FormatFields,
        format::{self, Format, Full, Json, Writer},
        time::{FormatTime as _, SystemTime},
    },
    layer::{Context, Filter},
    registry::LookupSpan,
};

/// The target of the per-call `grpc` span: for OpenTelemetry only, hidden from log lines.
pub(super) const CALL_SPAN_TARGET: &str = "usermeta::call";

fn is_call_span(metadata: &Metadata<'_>) -> bool {
    metadata.is_span() && metadata.target() == CALL_SPAN_TARGET
}

/// The log layer's filter without the `grpc` span: the formatters write the call's context themselves.
/// Everything else is `F`'s decision.
pub(super) struct HideCallSpan<F>(pub(super) F);

impl<S, F: Filter<S>> Filter<S> for HideCallSpan<F> {
    fn enabled(&self, metadata: &Metadata<'_>, cx: &Context<'_, S>) -> bool {
        !is_call_span(metadata) && self.0.enabled(metadata, cx)
    }

    fn callsite_enabled(&self, metadata: &'static Metadata<'static>) -> Interest {
        if is_call_span(metadata) {
            Interest::never()
        } else {
            self.0.callsite_enabled(metadata)
        }
    }

    fn event_enabled(&self, event: &Event<'_>, cx: &Context<'_, S>) -> bool {
        self.0.event_enabled(event, cx)
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        self.0.max_level_hint()
    }

    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, cx: Context<'_, S>) {
        self.0.on_new_span(attrs, id, cx);
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, cx: Context<'_, S>) {
        self.0.on_record(id, values, cx);
    }

    fn on_enter(&self, id: &span::Id, cx: Context<'_, S>) {
        self.0.on_enter(id, cx);
    }

    fn on_exit(&self, id: &span::Id, cx: Context<'_, S>) {
        self.0.on_exit(id, cx);
    }

    fn on_close(&self, id: span::Id, cx: Context<'_, S>) {
        self.0.on_close(id, cx);
    }
}

/// Text lines as `tracing_subscriber`'s default format writes them, with the call's context as the first span.
pub(super) struct TextLines {
    /// The default format after the timestamp and level: spans, target, fields.
    rest: Format<Full, ()>,
}

impl Default for TextLines {
    fn default() -> Self {
        TextLines {
            rest: format().without_time().with_level(false),
        }
    }
}

fn format() -> Format<Full, SystemTime> {
    format::Format::default()
}

impl<S, N> FormatEvent<S, N> for TextLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // The default format's styles: a dimmed time and separators, a coloured level, bold span names.
        let (dimmed, bold, reset) = if writer.has_ansi_escapes() {
            ("\x1b[2m", "\x1b[1m", "\x1b[0m")
        } else {
            ("", "", "")
        };
        writer.write_str(dimmed)?;
        if SystemTime.format_time(&mut writer).is_err() {
            writer.write_str("<unknown time>")?;
        }
        write!(writer, "{reset} ")?;
        let (colour, level) = match *event.metadata().level() {
            Level::TRACE => ("\x1b[35m", "TRACE"),
            Level::DEBUG => ("\x1b[34m", "DEBUG"),
            Level::INFO => ("\x1b[32m", " INFO"),
            Level::WARN => ("\x1b[33m", " WARN"),
            Level::ERROR => ("\x1b[31m", "ERROR"),
        };
        if writer.has_ansi_escapes() {
            write!(writer, "{colour}{level}{reset} ")?;
        } else {
            write!(writer, "{level} ")?;
        }
        // Both values are plain (a method name; a request id checked plain or generated): written as is.
        let call = super::with_current_call(|call| {
            write!(
                writer,
                "{bold}grpc{{{reset}method={} request_id={}{bold}}}{reset}{dimmed}:{reset}",
                call.method,
                call.hand_out_request_id()
            )
        });
        if let Some(written) = call {
            written?;
            // The spans that follow end with the space before the target; without any, it is written here.
            if ctx.event_scope().is_none() {
                writer.write_char(' ')?;
            }
        }
        self.rest.format_event(ctx, writer, event)
    }
}

/// JSON lines as `tracing_subscriber`'s JSON format writes them, with the call's context as the first span.
pub(super) struct JsonLines {
    line: Format<Json, SystemTime>,
}

impl Default for JsonLines {
    fn default() -> Self {
        JsonLines {
            line: format().json(),
        }
    }
}

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let Some(call) = super::with_current_call(|call| {
            let text = |value: &str| serde_json::to_string(value).unwrap_or_default();
            format!(
                r#""method":{},"request_id":{},"name":"grpc""#,
                text(call.method),
                text(&call.hand_out_request_id().to_string())
            )
        }) else {
            return self.line.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.line.format_event(ctx, Writer::new(&mut line), event)?;
        writer.write_str(&with_call_span(&line, &call))
    }
}

/// A JSON line with the call's span (its fields and name, `call`) first in `spans`, or as `span` and `spans`
/// of a line that had none.
fn with_call_span(line: &str, call: &str) -> String {
    // Only the list itself can hold this text: a quote inside a JSON string is escaped, so `,"` is structure.
    const SPANS: &str = r#","spans":["#;
    if let Some(at) = line.rfind(SPANS) {
        let (head, tail) = line.split_at(at + SPANS.len());
        return format!("{head}{{{call}}},{tail}");
    }
    let object = line.trim_end();
    let object = object.strip_suffix('}').unwrap_or(object);
    format!("{object},\"span\":{{{call}}},\"spans\":[{{{call}}}]}}\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::{
        CURRENT_CALL, CallContext, LogFormat, RequestId, captured::Captured, subscriber,
    };
    use tracing_subscriber::EnvFilter;

    /// The lines `emit` writes through usermeta's subscriber (spans not exported), with `filter`.
    fn lines(format: LogFormat, filter: &str, emit: impl FnOnce()) -> Vec<String> {
        let captured = Captured::default();
        let writer = captured.clone();
        let logs = subscriber(format, EnvFilter::new(filter), move || writer.clone(), None);
        tracing::subscriber::with_default(logs, emit);
        captured.text().lines().map(str::to_owned).collect()
    }

    fn in_call(emit: impl FnOnce()) {
        let call = CallContext::new("GetMyMetadata", RequestId::Generated(0xfeed));
        CURRENT_CALL.sync_scope(call, emit);
    }

    const ID: &str = "0000000000000000000000000000feed";

    /// What a call writes: a line with no span, one inside the handler's span, and the `grpc` span itself
    /// (created for OpenTelemetry, here with every span enabled).
    fn a_call() {
        in_call(|| {
            let call_span = tracing::info_span!(target: CALL_SPAN_TARGET, "grpc", request_id = ID);
            let _call = call_span.enter();
            tracing::warn!(target: "usermeta::api", code = 14, "request failed");
            let handler = tracing::debug_span!("GetMyMetadata", user_id = "42");
            let _handler = handler.enter();
            tracing::info!(target: "usermeta::api", "answered");
        });
        tracing::info!(target: "usermeta", "outside any call");
    }

    #[test]
    fn text_lines_of_a_call_name_it_once_where_its_span_would_be() {
        let lines = lines(LogFormat::Text, "trace", a_call);
        assert_eq!(lines.len(), 3, "{lines:#?}");
        let call = format!("grpc{{method=GetMyMetadata request_id={ID}}}:");
        assert!(
            lines[0].ends_with(&format!(
                " WARN {call} usermeta::api: request failed code=14"
            )),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].ends_with(&format!(
                " INFO {call}GetMyMetadata{{user_id=42}}: usermeta::api: answered"
            )),
            "{}",
            lines[1]
        );
        assert!(
            lines[2].ends_with(" INFO usermeta: outside any call"),
            "{}",
            lines[2]
        );
        for line in &lines {
            assert!(line.starts_with("20"), "{line}");
            assert!(line.matches("request_id=").count() <= 1, "{line}");
        }
    }

    #[test]
    fn json_lines_of_a_call_carry_it_as_their_first_span() {
        let lines = lines(LogFormat::Json, "trace", a_call);
        assert_eq!(lines.len(), 3, "{lines:#?}");
        let parsed: Vec<serde_json::Value> = lines
            .iter()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        let call = serde_json::json!({"method": "GetMyMetadata", "request_id": ID, "name": "grpc"});
        assert_eq!(parsed[0]["span"], call, "{}", lines[0]);
        assert_eq!(parsed[0]["spans"], serde_json::json!([call]));
        assert_eq!(parsed[0]["fields"]["message"], "request failed");
        assert_eq!(parsed[0]["level"], "WARN");
        assert_eq!(parsed[1]["span"]["name"], "GetMyMetadata", "{}", lines[1]);
        assert_eq!(
            parsed[1]["spans"],
            serde_json::json!([call, {"user_id": "42", "name": "GetMyMetadata"}])
        );
        assert!(parsed[2].get("spans").is_none(), "{}", lines[2]);
        assert!(parsed[2].get("span").is_none(), "{}", lines[2]);
    }

    #[test]
    fn at_the_default_level_a_call_needs_no_span_for_its_lines() {
        let lines = lines(LogFormat::Text, "info", || {
            in_call(|| {
                assert!(
                    tracing::info_span!(target: CALL_SPAN_TARGET, "grpc").is_disabled(),
                    "the call span is for OpenTelemetry only"
                );
                assert!(tracing::debug_span!("GetMyMetadata").is_disabled());
                tracing::warn!(target: "usermeta::api", "request failed");
            });
        });
        assert_eq!(lines.len(), 1, "{lines:#?}");
        assert!(
            lines[0].contains(&format!("request_id={ID}")),
            "{}",
            lines[0]
        );
    }

    #[test]
    fn the_call_span_goes_first_in_json_span_lists() {
        let call = r#""name":"grpc""#;
        assert_eq!(
            with_call_span(
                r#"{"a":1,"span":{"name":"x"},"spans":[{"name":"x"}]}"#,
                call
            ),
            r#"{"a":1,"span":{"name":"x"},"spans":[{"name":"grpc"},{"name":"x"}]}"#
        );
        assert_eq!(
            with_call_span("{\"a\":\",\\\"spans\\\":[\"}\n", call),
            "{\"a\":\",\\\"spans\\\":[\",\"span\":{\"name\":\"grpc\"},\"spans\":[{\"name\":\"grpc\"}]}\n"
        );
    }
}
