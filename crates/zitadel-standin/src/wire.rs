//! The wire format of ZITADEL's REST gateway (protojson): request decoding, response shapes, base64 flavours
//! and RFC 3339 timestamps.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::{Serialize, Serializer};
use serde_json::{Map, Value};

use super::errors;
use super::state::Entry;

/// Largest `limit` a list request may ask for (ZITADEL's default maximum).
pub(super) const MAX_LIST_LIMIT: u32 = 1000;
/// `limit` used when the request gives none (or 0).
pub(super) const DEFAULT_LIST_LIMIT: u32 = 1000;

// ---------------------------------------------------------------------------------------------------------
// time

/// Now, truncated to microseconds like timestamps stored by ZITADEL (Postgres precision).
pub(super) fn now() -> SystemTime {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let truncated = std::time::Duration::new(since.as_secs(), since.subsec_micros() * 1000);
    UNIX_EPOCH + truncated
}

/// Seconds since the Unix epoch.
pub(super) fn unix_secs(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// RFC 3339 in UTC as protojson writes a Timestamp: 0, 3, 6 or 9 fractional digits.
pub(super) fn rfc3339(time: SystemTime) -> String {
    let since = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let nanos = since.subsec_nanos();
    let (year, month, day) = civil_from_days(secs / 86_400);
    let rem = secs % 86_400;
    let (hour, minute, second) = (rem / 3600, rem % 3600 / 60, rem % 60);
    let fraction = if nanos == 0 {
        String::new()
    } else if nanos.is_multiple_of(1_000_000) {
        format!(".{:03}", nanos / 1_000_000)
    } else if nanos.is_multiple_of(1000) {
        format!(".{:06}", nanos / 1000)
    } else {
        format!(".{nanos:09}")
    };
    format!("{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}{fraction}Z")
}

/// Gregorian date of a day count since 1970-01-01 (H. Hinnant's `civil_from_days`, non-negative days only).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

// ---------------------------------------------------------------------------------------------------------
// base64

const LENIENT: GeneralPurposeConfig =
    GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true);
const STD_PADDED: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    LENIENT.with_decode_padding_mode(DecodePaddingMode::RequireCanonical),
);
const STD_RAW: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    LENIENT.with_decode_padding_mode(DecodePaddingMode::RequireNone),
);
const URL_PADDED: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    LENIENT.with_decode_padding_mode(DecodePaddingMode::RequireCanonical),
);
const URL_RAW: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    LENIENT.with_decode_padding_mode(DecodePaddingMode::RequireNone),
);

/// Decodes a protojson `bytes` value the way Go's protojson does: URL-safe alphabet if the text has `-` or `_`,
/// standard otherwise; padded if the length is a multiple of 4, unpadded otherwise.
pub(super) fn decode_bytes(text: &str) -> Option<Vec<u8>> {
    let url = text.contains(['-', '_']);
    let padded = text.len().is_multiple_of(4);
    let engine = match (url, padded) {
        (false, true) => &STD_PADDED,
        (false, false) => &STD_RAW,
        (true, true) => &URL_PADDED,
        (true, false) => &URL_RAW,
    };
    engine.decode(text).ok()
}

/// Encodes `bytes` as protojson does: standard alphabet with padding.
pub(super) fn encode_bytes(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Encodes a userinfo metadata claim value: base64url without padding (Go's `RawURLEncoding`).
pub(super) fn encode_claim(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

// ---------------------------------------------------------------------------------------------------------
// responses

fn is_zero(value: &u64) -> bool {
    *value == 0
}

/// uint64 as a JSON string (proto3 JSON mapping).
fn as_string<S: Serializer>(value: &u64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

/// `zitadel.v1.ObjectDetails`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ObjectDetails<'a> {
    #[serde(skip_serializing_if = "is_zero", serialize_with = "as_string")]
    pub(super) sequence: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) creation_date: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) change_date: Option<String>,
    #[serde(skip_serializing_if = "str::is_empty")]
    pub(super) resource_owner: &'a str,
}

/// `zitadel.v1.ListDetails`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct ListDetails {
    #[serde(skip_serializing_if = "is_zero", serialize_with = "as_string")]
    pub(super) total_result: u64,
    #[serde(skip_serializing_if = "is_zero", serialize_with = "as_string")]
    pub(super) processed_sequence: u64,
    pub(super) view_timestamp: String,
}

/// `zitadel.metadata.v1.Metadata`.
#[derive(Serialize)]
pub(super) struct Metadata<'a> {
    details: ObjectDetails<'a>,
    key: &'a str,
    value: String,
}

impl<'a> Metadata<'a> {
    pub(super) fn new(key: &'a str, entry: &Entry, resource_owner: &'a str) -> Metadata<'a> {
        Metadata {
            details: ObjectDetails {
                sequence: entry.sequence,
                creation_date: Some(rfc3339(entry.creation_date)),
                change_date: Some(rfc3339(entry.change_date)),
                resource_owner,
            },
            key,
            value: encode_bytes(&entry.value),
        }
    }
}

/// `List*MetadataResponse`.
#[derive(Serialize)]
pub(super) struct ListResponse<'a> {
    pub(super) details: ListDetails,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(super) result: Vec<Metadata<'a>>,
}

/// `Get*MetadataResponse`.
#[derive(Serialize)]
pub(super) struct GetResponse<'a> {
    pub(super) metadata: Metadata<'a>,
}

/// The answer of the write calls: `{"details": ObjectDetails}` (Set's `id` is never filled by ZITADEL).
#[derive(Serialize)]
pub(super) struct WriteResponse<'a> {
    pub(super) details: ObjectDetails<'a>,
}

impl<'a> WriteResponse<'a> {
    pub(super) fn new(
        sequence: u64,
        change_date: SystemTime,
        resource_owner: &'a str,
    ) -> WriteResponse<'a> {
        WriteResponse {
            details: ObjectDetails {
                sequence,
                creation_date: None,
                change_date: Some(rfc3339(change_date)),
                resource_owner,
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// requests

type Decoded<T> = Result<T, errors::Reject>;

/// A decoding error: the gateway answers 400 / code 3 without details.
fn bad(message: String) -> errors::Reject {
    errors::invalid_argument(&message)
}

/// Parses a request body as a JSON object; an empty body is an empty message.
fn object(body: &[u8]) -> Decoded<Map<String, Value>> {
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
fn field<'a>(map: &'a Map<String, Value>, json_name: &str, proto_name: &str) -> Option<&'a Value> {
    map.get(json_name)
        .or_else(|| map.get(proto_name))
        .filter(|v| !v.is_null())
}

fn uint(value: Option<&Value>, kind: &str, name: &str) -> Decoded<u64> {
    let parsed = match value {
        None => Some(0),
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.parse::<u64>().ok(),
        Some(_) => None,
    };
    parsed.ok_or_else(|| {
        bad(format!(
            "proto: invalid value for {kind} field {name}: {}",
            value.map(Value::to_string).unwrap_or_default()
        ))
    })
}

fn boolean(value: Option<&Value>, name: &str) -> Decoded<bool> {
    match value {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(other) => Err(bad(format!(
            "proto: invalid value for bool field {name}: {other}"
        ))),
    }
}

fn string(value: Option<&Value>, name: &str) -> Decoded<String> {
    match value {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(bad(format!(
            "proto: invalid value for string field {name}: {other}"
        ))),
    }
}

fn bytes_field(value: Option<&Value>, name: &str) -> Decoded<Vec<u8>> {
    match value {
        None => Ok(Vec::new()),
        Some(Value::String(s)) => decode_bytes(s).ok_or_else(|| {
            bad(format!(
                "proto: invalid value for bytes field {name}: {s:?}"
            ))
        }),
        Some(other) => Err(bad(format!(
            "proto: invalid value for bytes field {name}: {other}"
        ))),
    }
}

fn sub_object<'a>(value: Option<&'a Value>, name: &str) -> Decoded<Option<&'a Map<String, Value>>> {
    match value {
        None => Ok(None),
        Some(Value::Object(map)) => Ok(Some(map)),
        Some(other) => Err(bad(format!(
            "proto: invalid value for message field {name}: {other}"
        ))),
    }
}

fn list<'a>(value: Option<&'a Value>, name: &str) -> Decoded<&'a [Value]> {
    match value {
        None => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(other) => Err(bad(format!(
            "proto: invalid value for repeated field {name}: {other}"
        ))),
    }
}

/// The names of `zitadel.v1.TextQueryMethod`, by number.
const TEXT_QUERY_METHODS: [&str; 8] = [
    "TEXT_QUERY_METHOD_EQUALS",
    "TEXT_QUERY_METHOD_EQUALS_IGNORE_CASE",
    "TEXT_QUERY_METHOD_STARTS_WITH",
    "TEXT_QUERY_METHOD_STARTS_WITH_IGNORE_CASE",
    "TEXT_QUERY_METHOD_CONTAINS",
    "TEXT_QUERY_METHOD_CONTAINS_IGNORE_CASE",
    "TEXT_QUERY_METHOD_ENDS_WITH",
    "TEXT_QUERY_METHOD_ENDS_WITH_IGNORE_CASE",
];

/// An enum's number: absent is 0, a name from `names` (indexed by number), or any int32 (proto3 enums are
/// open); `None` for anything else.
pub(super) fn enum_number(value: Option<&Value>, names: &[&str]) -> Option<i64> {
    match value {
        None => Some(0),
        Some(Value::String(name)) => names
            .iter()
            .position(|known| known == name)
            .and_then(|i| i64::try_from(i).ok()),
        Some(Value::Number(n)) => n.as_i64().filter(|v| i32::try_from(*v).is_ok()),
        Some(_) => None,
    }
}

/// An enum accepts a known name or any int32 (proto3 enums are open; `defined_only` is checked later).
fn text_query_method(value: Option<&Value>) -> Decoded<i64> {
    enum_number(value, &TEXT_QUERY_METHODS).ok_or_else(|| {
        bad(format!(
            "proto: invalid value for enum field method: {}",
            value.map(Value::to_string).unwrap_or_default()
        ))
    })
}

/// `zitadel.metadata.v1.MetadataKeyQuery`.
pub(super) struct KeyQuery {
    pub(super) key: String,
    pub(super) method: i64,
}

/// A decoded `List*MetadataRequest` (without the path parameters).
pub(super) struct ListRequest {
    pub(super) offset: u64,
    pub(super) limit: u64,
    pub(super) asc: bool,
    /// `None` for a `MetadataQuery` with its required oneof unset.
    pub(super) queries: Vec<Option<KeyQuery>>,
}

pub(super) fn decode_list(body: &[u8]) -> Decoded<ListRequest> {
    let map = object(body)?;
    let (mut offset, mut limit, mut asc) = (0, 0, false);
    if let Some(query) = sub_object(field(&map, "query", "query"), "query")? {
        offset = uint(field(query, "offset", "offset"), "uint64", "offset")?;
        limit = uint(field(query, "limit", "limit"), "uint32", "limit")?;
        if limit > u64::from(u32::MAX) {
            return Err(bad(format!(
                "proto: invalid value for uint32 field limit: {limit}"
            )));
        }
        asc = boolean(field(query, "asc", "asc"), "asc")?;
    }
    let mut queries = Vec::new();
    for item in list(field(&map, "queries", "queries"), "queries")? {
        let item = sub_object(Some(item).filter(|v| !v.is_null()), "queries")?;
        let key_query = match item {
            Some(item) => sub_object(field(item, "keyQuery", "key_query"), "keyQuery")?,
            None => None,
        };
        queries.push(match key_query {
            Some(q) => Some(KeyQuery {
                key: string(field(q, "key", "key"), "key")?,
                method: text_query_method(field(q, "method", "method"))?,
            }),
            None => None,
        });
    }
    Ok(ListRequest {
        offset,
        limit,
        asc,
        queries,
    })
}

/// The `value` of a `SetUserMetadataRequest`.
pub(super) fn decode_set(body: &[u8]) -> Decoded<Vec<u8>> {
    let map = object(body)?;
    bytes_field(field(&map, "value", "value"), "value")
}

/// The `metadata` of a `BulkSetUserMetadataRequest` as `(key, value)` pairs.
pub(super) fn decode_bulk_set(body: &[u8]) -> Decoded<Vec<(String, Vec<u8>)>> {
    let map = object(body)?;
    let mut out = Vec::new();
    for item in list(field(&map, "metadata", "metadata"), "metadata")? {
        let empty = Map::new();
        let item = sub_object(Some(item).filter(|v| !v.is_null()), "metadata")?.unwrap_or(&empty);
        out.push((
            string(field(item, "key", "key"), "key")?,
            bytes_field(field(item, "value", "value"), "value")?,
        ));
    }
    Ok(out)
}

/// The `keys` of a `BulkRemoveUserMetadataRequest`.
pub(super) fn decode_bulk_remove(body: &[u8]) -> Decoded<Vec<String>> {
    let map = object(body)?;
    list(field(&map, "keys", "keys"), "keys")?
        .iter()
        .map(|key| string(Some(key).filter(|v| !v.is_null()), "keys"))
        .collect()
}

// ---------------------------------------------------------------------------------------------------------
// validation (protoc-gen-validate texts) and listing

/// protoc-gen-validate's `value length must be between 1 and 200 runes, inclusive` for `<message>.<field>`.
pub(super) fn rune_error(text: &str, message_field: &str) -> Option<String> {
    let runes = text.chars().count();
    (!(1..=200).contains(&runes)).then(|| {
        format!("invalid {message_field}: value length must be between 1 and 200 runes, inclusive")
    })
}

/// protoc-gen-validate's `value length must be between 1 and 500000 bytes, inclusive` for `<message>.<field>`.
pub(super) fn value_error(value: &[u8], message_field: &str) -> Option<String> {
    (!(1..=500_000).contains(&value.len())).then(|| {
        format!(
            "invalid {message_field}: value length must be between 1 and 500000 bytes, inclusive"
        )
    })
}

/// [`rune_error`] as a 400 answer.
pub(super) fn check_runes(text: &str, message_field: &str) -> Result<(), errors::Reject> {
    rune_error(text, message_field).map_or(Ok(()), |message| Err(bad(message)))
}

/// [`value_error`] as a 400 answer.
pub(super) fn check_value(value: &[u8], message_field: &str) -> Result<(), errors::Reject> {
    value_error(value, message_field).map_or(Ok(()), |message| Err(bad(message)))
}

impl ListRequest {
    /// protoc-gen-validate rules of `queries` (message is e.g. `ListUserMetadataRequest`), then the limit check.
    pub(super) fn validate(&self, message: &str) -> Result<(), errors::Reject> {
        for (i, query) in self.queries.iter().enumerate() {
            let prefix = format!(
                "invalid {message}.Queries[{i}]: embedded message failed validation | caused by: "
            );
            let Some(query) = query else {
                return Err(bad(format!(
                    "{prefix}invalid MetadataQuery.Query: value is required"
                )));
            };
            let inner =
                "invalid MetadataQuery.KeyQuery: embedded message failed validation | caused by: ";
            if query.key.chars().count() > 200 {
                return Err(bad(format!(
                    "{prefix}{inner}invalid MetadataKeyQuery.Key: value length must be at most 200 runes"
                )));
            }
            if !(0..8).contains(&query.method) {
                return Err(bad(format!(
                    "{prefix}{inner}invalid MetadataKeyQuery.Method: value must be one of the defined enum values"
                )));
            }
        }
        if self.limit > u64::from(MAX_LIST_LIMIT) {
            return Err(errors::limit_exceeded());
        }
        Ok(())
    }

    /// The matching entries in the requested order and page, and how many matched in total.
    pub(super) fn apply<'a>(
        &self,
        metadata: &'a BTreeMap<String, Entry>,
    ) -> (u64, Vec<(&'a String, &'a Entry)>) {
        let matches = |key: &str| {
            self.queries
                .iter()
                .flatten()
                .all(|q| text_matches(q.method, &q.key, key))
        };
        let mut found: Vec<_> = metadata.iter().filter(|(key, _)| matches(key)).collect();
        if !self.asc {
            found.reverse();
        }
        let total = found.len() as u64;
        let limit = if self.limit == 0 {
            DEFAULT_LIST_LIMIT as usize
        } else {
            usize::try_from(self.limit).unwrap_or(usize::MAX)
        };
        let offset = usize::try_from(self.offset).unwrap_or(usize::MAX);
        let page = found.into_iter().skip(offset).take(limit).collect();
        (total, page)
    }
}

/// `TextQueryMethod` semantics on a key (odd methods are the `_IGNORE_CASE` variants).
pub(super) fn text_matches(method: i64, pattern: &str, key: &str) -> bool {
    if method % 2 == 1 {
        return text_matches(method - 1, &pattern.to_lowercase(), &key.to_lowercase());
    }
    match method / 2 {
        0 => key == pattern,
        1 => key.starts_with(pattern),
        2 => key.contains(pattern),
        _ => key.ends_with(pattern),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_timestamps_like_protojson() {
        let t = UNIX_EPOCH + Duration::new(1_659_604_146, 259_324_000);
        assert_eq!(rfc3339(t), "2022-08-04T09:09:06.259324Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::new(951_782_400, 0)),
            "2000-02-29T00:00:00Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::new(0, 5_000_000)),
            "1970-01-01T00:00:00.005Z"
        );
    }

    #[test]
    fn decodes_every_base64_flavour() {
        for text in ["+/8=", "+/8", "-_8=", "-_8"] {
            assert_eq!(decode_bytes(text), Some(vec![0xfb, 0xff]), "{text}");
        }
        assert_eq!(decode_bytes("!!!"), None);
    }
}
