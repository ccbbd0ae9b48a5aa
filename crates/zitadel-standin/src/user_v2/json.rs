//! Reading proto3 JSON requests of the v2 services into plain values: lowerCamelCase or proto field names,
//! `null` as absent, 64-bit integers as numbers or strings, enums by name or number, `bytes` in any base64
//! flavour Go's protojson accepts. Errors are transport-independent [`Failure`]s (invalid_argument).

use serde_json::{Map, Value};

use super::super::errors::{Code, Failure};
use super::super::wire;

pub(crate) type Decoded<T> = Result<T, Failure>;

/// A decoding error (invalid_argument without details).
fn bad(message: String) -> Failure {
    Failure::plain(Code::InvalidArgument, message)
}

/// Parses a request body as a JSON object; an empty body is an empty message.
pub(crate) fn object(body: &[u8]) -> Decoded<Map<String, Value>> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(bad(format!(
            "proto: syntax error: unexpected token {other}"
        ))),
        Err(e) => Err(bad(format!("proto: syntax error: {e}"))),
    }
}

/// A field by its JSON (lowerCamelCase) or proto (snake_case) name; `null` counts as absent.
pub(crate) fn field<'a>(
    map: &'a Map<String, Value>,
    json_name: &str,
    proto_name: &str,
) -> Option<&'a Value> {
    map.get(json_name)
        .or_else(|| map.get(proto_name))
        .filter(|v| !v.is_null())
}

pub(crate) fn uint(value: Option<&Value>, kind: &str, name: &str) -> Decoded<u64> {
    let parsed = match value {
        None => Some(0),
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.parse::<u64>().ok(),
        Some(_) => None,
    };
    let too_big = kind == "uint32" && parsed.is_some_and(|v| v > u64::from(u32::MAX));
    match parsed {
        Some(v) if !too_big => Ok(v),
        _ => Err(bad(format!(
            "proto: invalid value for {kind} field {name}: {}",
            value.map(Value::to_string).unwrap_or_default()
        ))),
    }
}

pub(crate) fn boolean(value: Option<&Value>, name: &str) -> Decoded<bool> {
    match value {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(bad(format!(
            "proto: invalid value for bool field {name}: {other}"
        ))),
    }
}

pub(crate) fn string(value: Option<&Value>, name: &str) -> Decoded<String> {
    match value {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(bad(format!(
            "proto: invalid value for string field {name}: {other}"
        ))),
    }
}

pub(crate) fn bytes(value: Option<&Value>, name: &str) -> Decoded<Vec<u8>> {
    match value {
        None => Ok(Vec::new()),
        Some(Value::String(s)) => wire::decode_bytes(s).ok_or_else(|| {
            bad(format!(
                "proto: invalid value for bytes field {name}: {s:?}"
            ))
        }),
        Some(other) => Err(bad(format!(
            "proto: invalid value for bytes field {name}: {other}"
        ))),
    }
}

/// A message field; `None` when absent.
pub(crate) fn message<'a>(
    value: Option<&'a Value>,
    name: &str,
) -> Decoded<Option<&'a Map<String, Value>>> {
    match value {
        None => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map)),
        Some(other) => Err(bad(format!(
            "proto: invalid value for message field {name}: {other}"
        ))),
    }
}

/// The items of a repeated field (empty when absent).
pub(crate) fn list<'a>(value: Option<&'a Value>, name: &str) -> Decoded<&'a [Value]> {
    match value {
        None => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(other) => Err(bad(format!(
            "proto: invalid value for repeated field {name}: {other}"
        ))),
    }
}

/// The strings of a repeated string field.
pub(crate) fn strings(value: Option<&Value>, name: &str) -> Decoded<Vec<String>> {
    list(value, name)?
        .iter()
        .map(|item| string(Some(item).filter(|v| !v.is_null()), name))
        .collect()
}

/// The messages of a repeated message field (`null` items are empty messages).
pub(crate) fn messages<'a>(
    value: Option<&'a Value>,
    name: &str,
) -> Decoded<Vec<Option<&'a Map<String, Value>>>> {
    list(value, name)?
        .iter()
        .map(|item| message(Some(item).filter(|v| !v.is_null()), name))
        .collect()
}

/// An enum by one of `names` (indexed by number) or by any int32 (proto3 enums are open).
pub(crate) fn enumeration(value: Option<&Value>, names: &[&str], name: &str) -> Decoded<i64> {
    wire::enum_number(value, names).ok_or_else(|| {
        bad(format!(
            "proto: invalid value for enum field {name}: {}",
            value.map(Value::to_string).unwrap_or_default()
        ))
    })
}
