//! Conversions between the generated proto types and the domain.

use super::pb;
use usermeta_zitadel::etag::etag;
use usermeta_zitadel::metadata::{KeyMatch, MetadataItem};

impl From<MetadataItem> for pb::Metadata {
    fn from(item: MetadataItem) -> Self {
        metadata_to_pb(item.key, item.value, item.create_time, item.update_time)
    }
}

/// One entry as answered, with its etag computed here, where its value is at hand (and only here).
pub(super) fn metadata_to_pb(
    key: String,
    value: Option<Vec<u8>>,
    create_time: Option<prost_types::Timestamp>,
    update_time: Option<prost_types::Timestamp>,
) -> pb::Metadata {
    let etag = value
        .as_deref()
        .map(|value| etag(&key, value))
        .unwrap_or_default();
    pb::Metadata {
        key,
        value: value.map(value_to_pb),
        create_time,
        update_time,
        etag,
    }
}

/// UTF-8 bytes become `text`, anything else `binary`.
pub(super) fn value_to_pb(bytes: Vec<u8>) -> pb::MetadataValue {
    let kind = match String::from_utf8(bytes) {
        Ok(text) => pb::metadata_value::Kind::Text(text),
        Err(not_utf8) => pb::metadata_value::Kind::Binary(not_utf8.into_bytes()),
    };
    pb::MetadataValue { kind: Some(kind) }
}

/// The bytes a value stands for; `None` when neither `text` nor `binary` is set.
pub(super) fn value_from_pb(value: Option<pb::MetadataValue>) -> Option<Vec<u8>> {
    match value?.kind? {
        pb::metadata_value::Kind::Text(text) => Some(text.into_bytes()),
        pb::metadata_value::Kind::Binary(bytes) => Some(bytes),
    }
}

impl From<pb::KeyMatch> for KeyMatch {
    fn from(m: pb::KeyMatch) -> Self {
        match m {
            pb::KeyMatch::Unspecified | pb::KeyMatch::Equals => KeyMatch::Equals,
            pb::KeyMatch::EqualsIgnoreCase => KeyMatch::EqualsIgnoreCase,
            pb::KeyMatch::StartsWith => KeyMatch::StartsWith,
            pb::KeyMatch::StartsWithIgnoreCase => KeyMatch::StartsWithIgnoreCase,
            pb::KeyMatch::Contains => KeyMatch::Contains,
            pb::KeyMatch::ContainsIgnoreCase => KeyMatch::ContainsIgnoreCase,
            pb::KeyMatch::EndsWith => KeyMatch::EndsWith,
            pb::KeyMatch::EndsWithIgnoreCase => KeyMatch::EndsWithIgnoreCase,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_is_text_and_the_rest_binary() {
        assert_eq!(
            value_to_pb(b"1234".to_vec()).kind,
            Some(pb::metadata_value::Kind::Text("1234".into()))
        );
        assert_eq!(
            value_to_pb(vec![0xff, 0x00]).kind,
            Some(pb::metadata_value::Kind::Binary(vec![0xff, 0x00]))
        );
    }
}
