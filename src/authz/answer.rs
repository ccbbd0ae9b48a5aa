//! Check's decision as Envoy's answer: an OK with the identity headers, or a denial with the status, headers
//! and body Envoy sends the client as they are.
//!
//! Anti-forgery: every answer either sets (overwriting) or removes each configured header name, so a client
//! can never reach the upstream with its own value under one of them. Envoy applies `headers_to_remove`
//! after the headers it sets, so a name that is set must not also be listed for removal.

use std::{collections::HashMap, time::Duration};

use base64::{Engine, engine::general_purpose::STANDARD};
use envoy_types::ext_authz::v3::pb::{
    CheckResponse, DeniedHttpResponse, HeaderAppendAction, HeaderValue, HeaderValueOption,
    HttpResponse, HttpStatus, OkHttpResponse,
};
use envoy_types::pb::google::{
    protobuf::{BoolValue, Struct, Value, value::Kind},
    rpc,
};
use tonic::Code;

use super::{
    BASE64_MARKER, BinaryValues, MAX_HEADER_VALUE_BYTES,
    check::{Admitted, AuthzService, Decision},
};
use crate::{sealing::Owner, settings::names};

impl AuthzService {
    pub(super) fn answer(&self, decision: Decision) -> CheckResponse {
        let record = |name: &'static str| {
            tracing::Span::current().record("decision", name);
            crate::metrics::check_decision(name);
        };
        match decision {
            Decision::Allow(admitted) => {
                record("allow");
                self.allow(admitted.as_ref())
            }
            Decision::Unauthenticated {
                token_present,
                reason,
            } => {
                record("unauthenticated");
                tracing::info!(reason, "denied (401)");
                let challenge = if token_present {
                    r#"Bearer error="invalid_token""#
                } else {
                    "Bearer"
                };
                denied(Code::Unauthenticated, 401, reason, Some(challenge))
            }
            Decision::Forbidden { reason, challenge } => {
                record("forbidden");
                tracing::info!(reason, "denied (403)");
                denied(Code::PermissionDenied, 403, &reason, challenge)
            }
            Decision::RateLimited { retry_after } => {
                record("rate_limited");
                denied_with(
                    Code::ResourceExhausted,
                    429,
                    "this caller sends more requests than usermeta's per-caller rate limit allows; retry later",
                    &[("retry-after", &whole_seconds(retry_after).to_string())],
                )
            }
            Decision::CallerOverloaded => {
                record("caller_overloaded");
                denied_with(
                    Code::ResourceExhausted,
                    429,
                    &format!(
                        "this caller already has as many calls in flight as usermeta allows one caller ({}); retry later",
                        names::MAX_IN_FLIGHT_PER_CALLER
                    ),
                    &[("retry-after", "1")],
                )
            }
            Decision::BudgetExhausted { retry_after } => {
                record("upstream_budget_exhausted");
                denied_with(
                    Code::ResourceExhausted,
                    429,
                    "usermeta's request budget toward the identity provider is spent for tokens it does not know yet; retry later",
                    &[("retry-after", &whole_seconds(retry_after).to_string())],
                )
            }
            Decision::CallerShareExhausted { retry_after } => {
                record("caller_upstream_share_exhausted");
                denied_with(
                    Code::ResourceExhausted,
                    429,
                    &format!(
                        "this caller has spent its share of usermeta's request budget toward the identity provider ({}); retry later",
                        names::UPSTREAM_CALLER_SHARE
                    ),
                    &[("retry-after", &whole_seconds(retry_after).to_string())],
                )
            }
            Decision::Unavailable => {
                record("unavailable");
                denied(
                    Code::Unavailable,
                    503,
                    "the identity provider is unavailable; retry later",
                    None,
                )
            }
        }
    }

    /// OK: identity headers set (overwriting), every other managed header removed.
    fn allow(&self, admitted: Option<&Admitted>) -> CheckResponse {
        let mut set: Vec<(&str, String)> = Vec::new();
        // Only built when asked for: it copies every value once more.
        let mut fields = self
            .config
            .dynamic_metadata
            .then(HashMap::<String, Value>::new);
        if let Some(admitted) = admitted {
            let sub = &admitted.user_id;
            if let Some(header) = self.config.user_id_header.as_deref()
                && is_header_safe(sub)
            {
                set.push((header, sub.as_str().to_owned()));
            }
            let mut metadata = HashMap::new();
            let packed = admitted.metadata.as_deref().map(|known| &known.metadata);
            let org = admitted.org_metadata.as_deref();
            for (mapping, readable) in self.config.headers.iter().zip(&admitted.readable) {
                if !readable {
                    continue;
                }
                let found = if mapping.organization {
                    org.and_then(|items| items.iter().find(|item| item.key == mapping.key))
                        .and_then(|item| item.value.as_deref())
                } else {
                    packed.and_then(|p| p.get(&mapping.key)).flatten()
                };
                let Some(stored) = found else {
                    continue;
                };
                // A sealed value goes upstream opened; one that does not open is not sent.
                let value = if !mapping.organization && self.policy.is_sealed(&mapping.key) {
                    match self.policy.reveal(Owner::User(sub), &mapping.key, stored) {
                        Ok(opened) => opened,
                        Err(_) => continue,
                    }
                } else {
                    std::borrow::Cow::Borrowed(stored)
                };
                let Some(text) = header_text(&value, self.config.binary, &mapping.key) else {
                    continue;
                };
                if fields.is_some() {
                    metadata.insert(mapping.key.clone(), string_value(text.clone()));
                }
                set.push((mapping.header.as_str(), text));
            }
            if let Some(fields) = &mut fields {
                fields.insert("user_id".to_owned(), string_value(sub.as_str().to_owned()));
                fields.insert(
                    "metadata".to_owned(),
                    Value {
                        kind: Some(Kind::StructValue(Struct { fields: metadata })),
                    },
                );
            }
        }
        let headers_to_remove = self
            .config
            .managed_headers()
            .filter(|name| !set.iter().any(|(set_name, _)| set_name == name))
            .map(str::to_owned)
            .collect();
        let headers = set
            .into_iter()
            .map(|(key, value)| HeaderValueOption {
                header: Some(HeaderValue {
                    key: key.to_owned(),
                    value,
                    raw_value: Vec::new(),
                }),
                // Overwrite, never append to a client's value: `append` for Envoys that read only the
                // deprecated flag (it wins when present), `append_action` for those that read only it.
                #[allow(deprecated)]
                append: Some(BoolValue { value: false }),
                append_action: HeaderAppendAction::OverwriteIfExistsOrAdd.into(),
                keep_empty_value: false,
            })
            .collect();
        let dynamic_metadata = fields
            .filter(|_| admitted.is_some())
            .map(|fields| Struct { fields });
        CheckResponse {
            status: Some(rpc::Status {
                code: Code::Ok.into(),
                message: String::new(),
                details: Vec::new(),
            }),
            dynamic_metadata,
            http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
                headers,
                headers_to_remove,
                ..OkHttpResponse::default()
            })),
        }
    }
}

/// A `Retry-After` in whole seconds, rounded up, at least 1.
fn whole_seconds(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// The header text for a value: UTF-8 text as is when header-safe, other bytes base64 with the marker (or
/// nothing); `None` means the header is not sent. Never a value that could end or add a header line.
fn header_text(value: &[u8], binary: BinaryValues, key: &str) -> Option<String> {
    let text = match std::str::from_utf8(value) {
        Ok(text) if is_header_safe(text) => text.to_owned(),
        Ok(_) => {
            tracing::warn!(
                key,
                "metadata value is not header-safe (control characters); not sent"
            );
            return None;
        }
        Err(_) => match binary {
            BinaryValues::Base64 => format!("{BASE64_MARKER}{}", STANDARD.encode(value)),
            BinaryValues::Drop => return None,
        },
    };
    if text.len() > MAX_HEADER_VALUE_BYTES {
        tracing::warn!(
            key,
            bytes = text.len(),
            "metadata value too long for a header; not sent"
        );
        return None;
    }
    Some(text)
}

/// No control characters (CR, LF, NUL and the rest, except tab), no DEL.
fn is_header_safe(text: &str) -> bool {
    text.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

fn string_value(text: String) -> Value {
    Value {
        kind: Some(Kind::StringValue(text)),
    }
}

fn denied(code: Code, http_status: i32, body: &str, challenge: Option<&str>) -> CheckResponse {
    match challenge {
        Some(challenge) => denied_with(code, http_status, body, &[("www-authenticate", challenge)]),
        None => denied_with(code, http_status, body, &[]),
    }
}

fn denied_with(
    code: Code,
    http_status: i32,
    body: &str,
    extra_headers: &[(&str, &str)],
) -> CheckResponse {
    let header = |key: &str, value: &str| HeaderValueOption {
        header: Some(HeaderValue {
            key: key.to_owned(),
            value: value.to_owned(),
            raw_value: Vec::new(),
        }),
        #[allow(deprecated)]
        append: None,
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd.into(),
        keep_empty_value: false,
    };
    let mut headers = vec![header("content-type", "text/plain; charset=utf-8")];
    headers.extend(extra_headers.iter().map(|(k, v)| header(k, v)));
    CheckResponse {
        status: Some(rpc::Status {
            code: code.into(),
            message: body.to_owned(),
            details: Vec::new(),
        }),
        dynamic_metadata: None,
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus { code: http_status }),
            headers,
            body: format!("{body}\n"),
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_text_never_carries_line_breaks() {
        assert_eq!(
            header_text(b"1234", BinaryValues::Base64, "k").as_deref(),
            Some("1234")
        );
        assert_eq!(
            header_text("Zürich\tx".as_bytes(), BinaryValues::Drop, "k").as_deref(),
            Some("Zürich\tx")
        );
        for bad in [&b"a\r\nx-evil: 1"[..], b"a\nb", b"a\0b", b"a\x7fb"] {
            assert_eq!(header_text(bad, BinaryValues::Base64, "k"), None);
        }
        assert_eq!(
            header_text(&[0xff, 0x00], BinaryValues::Base64, "k").as_deref(),
            Some("base64:/wA=")
        );
        assert_eq!(header_text(&[0xff, 0x00], BinaryValues::Drop, "k"), None);
        assert_eq!(
            header_text(
                &vec![b'a'; MAX_HEADER_VALUE_BYTES + 1],
                BinaryValues::Drop,
                "k"
            ),
            None
        );
    }
}
