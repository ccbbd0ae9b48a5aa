//! The body of a ZITADEL Actions v2 event target call (`ContextInfoEvent`): which user's metadata changed and
//! how. The affected user is `aggregateID` (`userID` is whoever made the change); `event_payload` is an
//! object, or (older ZITADEL versions) a base64 string of the same JSON; a value is standard base64.

use std::time::SystemTime;

use base64::Engine as _;
use serde::Deserialize;

use crate::fleet::{ChangeKind, MetadataChange};

pub(super) const SET: &str = "user.metadata.set";
pub(super) const REMOVED: &str = "user.metadata.removed";
pub(super) const REMOVED_ALL: &str = "user.metadata.removed.all";
pub(super) const ORG_SET: &str = "org.metadata.set";
pub(super) const ORG_REMOVED: &str = "org.metadata.removed";
pub(super) const ORG_REMOVED_ALL: &str = "org.metadata.removed.all";

/// Longest user id and key accepted (ZITADEL's own limits).
const MAX_ID_CHARS: usize = 200;
const MAX_KEY_CHARS: usize = 200;

/// What a body asks of usermeta.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Event {
    /// A metadata event: this change.
    Metadata(MetadataChange),
    /// An organisation's metadata changed (`org.metadata.*`, aggregate `org`): the organisation id. The
    /// payload is not needed (ZITADEL 4.1 sent it empty): what the organisation holds is read again.
    Organization(String),
    /// Another event type (an execution on a wider group than `user.metadata`): nothing to do.
    Ignored(String),
}

/// The body is not an event usermeta can apply. The messages name the field at fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("the body is not a ZITADEL event: {0}")]
pub(super) struct Malformed(String);

#[derive(Deserialize)]
struct EventType {
    event_type: String,
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(rename = "aggregateID")]
    aggregate_id: String,
    #[serde(rename = "aggregateType", default)]
    aggregate_type: Option<String>,
    #[serde(default)]
    created_at: Option<String>,
    #[serde(default)]
    event_payload: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Payload {
    key: String,
    #[serde(default)]
    value: Option<String>,
}

/// Reads one event body.
pub(super) fn parse(body: &[u8]) -> Result<Event, Malformed> {
    let EventType { event_type } = serde_json::from_slice(body).map_err(|e| {
        Malformed(format!(
            "expected a JSON object with event_type ({})",
            where_(&e)
        ))
    })?;
    if matches!(event_type.as_str(), ORG_SET | ORG_REMOVED | ORG_REMOVED_ALL) {
        return organization(body, &event_type);
    }
    let kind = match event_type.as_str() {
        SET => ChangeKind::Set,
        REMOVED => ChangeKind::Delete,
        REMOVED_ALL => ChangeKind::DeleteAll,
        _ => return Ok(Event::Ignored(event_type)),
    };
    let envelope: Envelope = serde_json::from_slice(body).map_err(|e| {
        Malformed(format!(
            "a {event_type} event needs aggregateID ({})",
            where_(&e)
        ))
    })?;
    if let Some(other) = envelope
        .aggregate_type
        .as_deref()
        .filter(|aggregate| *aggregate != "user")
    {
        return Err(Malformed(format!(
            "aggregateType is {other:?}; metadata events are of aggregate type \"user\""
        )));
    }
    let user_id = envelope.aggregate_id;
    if user_id.is_empty()
        || user_id.chars().count() > MAX_ID_CHARS
        || user_id.chars().any(char::is_control)
    {
        return Err(Malformed(format!(
            "aggregateID must be a user id of 1 to {MAX_ID_CHARS} printable characters"
        )));
    }
    let time = envelope
        .created_at
        .as_deref()
        .and_then(|created| humantime::parse_rfc3339_weak(created).ok())
        .unwrap_or_else(SystemTime::now);
    let (key, value) = match kind {
        ChangeKind::DeleteAll => (String::new(), None),
        ChangeKind::Set | ChangeKind::Delete => {
            let payload = payload(envelope.event_payload, &event_type)?;
            if payload.key.is_empty()
                || payload.key.chars().count() > MAX_KEY_CHARS
                || payload.key.chars().any(char::is_control)
            {
                return Err(Malformed(format!(
                    "event_payload.key must be a metadata key of 1 to {MAX_KEY_CHARS} printable characters"
                )));
            }
            let value = match (kind, payload.value) {
                (ChangeKind::Set, Some(value)) => {
                    Some(standard_base64(&value).ok_or_else(|| {
                        Malformed("event_payload.value is not standard base64".to_owned())
                    })?)
                }
                _ => None,
            };
            (payload.key, value)
        }
    };
    Ok(Event::Metadata(MetadataChange {
        user_id,
        key,
        kind,
        value,
        time,
    }))
}

/// An `org.metadata.*` event: the organisation is `aggregateID`; nothing else is needed.
fn organization(body: &[u8], event_type: &str) -> Result<Event, Malformed> {
    let envelope: Envelope = serde_json::from_slice(body).map_err(|e| {
        Malformed(format!(
            "a {event_type} event needs aggregateID ({})",
            where_(&e)
        ))
    })?;
    if let Some(other) = envelope
        .aggregate_type
        .as_deref()
        .filter(|aggregate| *aggregate != "org")
    {
        return Err(Malformed(format!(
            "aggregateType is {other:?}; organisation metadata events are of aggregate type \"org\""
        )));
    }
    let org_id = envelope.aggregate_id;
    if org_id.is_empty()
        || org_id.chars().count() > MAX_ID_CHARS
        || org_id.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(Malformed(format!(
            "aggregateID must be an organisation id of 1 to {MAX_ID_CHARS} printable characters"
        )));
    }
    Ok(Event::Organization(org_id))
}

/// The payload as an object, from either form ZITADEL sends.
fn payload(raw: Option<serde_json::Value>, event_type: &str) -> Result<Payload, Malformed> {
    let missing = || Malformed(format!("a {event_type} event needs event_payload with key"));
    let object = match raw.ok_or_else(missing)? {
        serde_json::Value::String(encoded) => {
            let json = standard_base64(&encoded).ok_or_else(|| {
                Malformed("event_payload is a string but not base64 of a JSON object".to_owned())
            })?;
            serde_json::from_slice(&json).map_err(|e| {
                Malformed(format!(
                    "event_payload is base64 but not of a JSON object ({})",
                    where_(&e)
                ))
            })?
        }
        object @ serde_json::Value::Object(_) => object,
        _ => return Err(missing()),
    };
    serde_json::from_value(object).map_err(|e| {
        Malformed(format!(
            "event_payload needs key, a string ({})",
            where_(&e)
        ))
    })
}

/// Where and what kind of JSON error, without serde's text, which quotes the offending value (a metadata value
/// must not reach an answer or a log line).
fn where_(error: &serde_json::Error) -> String {
    let kind = match error.classify() {
        serde_json::error::Category::Io => "unreadable",
        serde_json::error::Category::Syntax => "not JSON",
        serde_json::error::Category::Data => "a field missing or of the wrong type",
        serde_json::error::Category::Eof => "cut short",
    };
    if error.line() == 0 {
        kind.to_owned()
    } else {
        format!("{kind} at line {} column {}", error.line(), error.column())
    }
}

/// Go's `[]byte` in JSON: standard base64, padded (unpadded accepted too).
fn standard_base64(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(text))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(event_type: &str, payload: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "aggregateID": "312909075211944344",
            "aggregateType": "user",
            "resourceOwner": "312909075211878808",
            "instanceID": "312909075211813272",
            "version": "v2",
            "sequence": 13,
            "event_type": event_type,
            "created_at": "2025-09-05T08:55:36.156333Z",
            "userID": "312909075212010000",
            "event_payload": payload,
        }))
        .expect("json")
    }

    fn change(event: Event) -> MetadataChange {
        match event {
            Event::Metadata(change) => change,
            Event::Ignored(other) => panic!("ignored {other}"),
            Event::Organization(org) => panic!("organisation {org}"),
        }
    }

    #[test]
    fn a_set_event_names_the_affected_user_key_and_value() {
        let event = parse(&body(
            SET,
            serde_json::json!({"key": "tier", "value": "Z29sZA=="}),
        ))
        .expect("valid");
        let change = change(event);
        assert_eq!(
            change.user_id, "312909075211944344",
            "aggregateID, not userID"
        );
        assert_eq!(
            (change.key.as_str(), change.kind, change.value.as_deref()),
            ("tier", ChangeKind::Set, Some(b"gold".as_slice()))
        );
        assert_eq!(
            change.time,
            humantime::parse_rfc3339("2025-09-05T08:55:36.156333Z").expect("time")
        );
    }

    #[test]
    fn a_base64_payload_reads_as_the_object() {
        let encoded = base64::engine::general_purpose::STANDARD.encode(br#"{"key":"tier"}"#);
        let change = change(parse(&body(REMOVED, serde_json::json!(encoded))).expect("valid"));
        assert_eq!(
            (change.key.as_str(), change.kind, change.value),
            ("tier", ChangeKind::Delete, None)
        );
    }

    #[test]
    fn removed_all_needs_no_payload_and_other_types_are_ignored() {
        let change = change(parse(&body(REMOVED_ALL, serde_json::Value::Null)).expect("valid"));
        assert_eq!(
            (change.key.as_str(), change.kind),
            ("", ChangeKind::DeleteAll)
        );
        assert_eq!(
            parse(&body("user.human.added", serde_json::Value::Null)),
            Ok(Event::Ignored("user.human.added".to_owned()))
        );
    }

    #[test]
    fn organisation_events_name_the_organisation_with_or_without_a_payload() {
        for event_type in [ORG_SET, ORG_REMOVED, ORG_REMOVED_ALL] {
            for payload in [
                serde_json::json!({"key": "plan", "value": "Z29sZA=="}),
                serde_json::json!({}),
            ] {
                let body = serde_json::json!({
                    "aggregateID": "o1", "aggregateType": "org", "event_type": event_type,
                    "event_payload": payload,
                });
                assert_eq!(
                    parse(body.to_string().as_bytes()),
                    Ok(Event::Organization("o1".to_owned())),
                    "{event_type}"
                );
            }
        }
        let wrong = serde_json::json!({"aggregateID": "o1", "aggregateType": "user", "event_type": ORG_SET});
        assert!(parse(wrong.to_string().as_bytes()).is_err());
    }

    #[test]
    fn a_malformed_event_is_described_without_quoting_its_values() {
        for bad in [
            body(SET, serde_json::json!({"key": "k", "value": 424242})),
            body(SET, serde_json::json!({"key": 424242})),
            br#"{"event_type":"user.metadata.set","aggregateID":424242}"#.to_vec(),
            br#"{"event_type":424242}"#.to_vec(),
        ] {
            let error = parse(&bad).unwrap_err().to_string();
            assert!(!error.contains("424242"), "{error}");
        }
    }

    #[test]
    fn malformed_bodies_are_refused() {
        for bad in [
            b"not json".to_vec(),
            b"[]".to_vec(),
            br#"{"event_type":"user.metadata.set"}"#.to_vec(),
            body(SET, serde_json::Value::Null),
            body(SET, serde_json::json!({"key": ""})),
            body(SET, serde_json::json!({"key": "k", "value": "%%%"})),
            body(REMOVED, serde_json::json!("not base64!")),
            body(REMOVED, serde_json::json!(42)),
        ] {
            assert!(parse(&bad).is_err(), "{}", String::from_utf8_lossy(&bad));
        }
    }
}
