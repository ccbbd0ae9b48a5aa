//! The metadata domain: what usermeta reads from and writes to ZITADEL, free of wire formats.

use prost_types::Timestamp;

use crate::etag::{ETAG_LEN, push_etag};

/// One stored metadata entry, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct MetadataItem {
    /// The key, as stored.
    pub key: String,
    /// The decoded bytes; `None` when ZITADEL sent a value that could not be decoded.
    pub value: Option<Vec<u8>>,
    /// When the key was first set, where ZITADEL tells.
    pub create_time: Option<Timestamp>,
    /// When the key was last set, where ZITADEL tells.
    pub update_time: Option<Timestamp>,
}

/// A user's metadata without timestamps (as userinfo gives it), packed into one allocation for the caller
/// cache, which holds one per cached user (instead of two allocations an entry, plus the list). Each entry's
/// etag is computed once, when packed, not on every answer from memory.
///
/// Layout: the entry count, then per entry the key's and the value's length (`NO_VALUE`: none), all
/// little-endian `u32`, then each entry's key and value bytes, and its etag ([`ETAG_LEN`] bytes) after a
/// value.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct PackedMetadata(Box<[u8]>);

/// The value length of an entry whose value ZITADEL sent but could not be decoded.
const NO_VALUE: u32 = u32::MAX;

impl PackedMetadata {
    /// Packs entries in the order given. Lengths are 32 bits: ZITADEL's answers are read up to 64 MiB, so no
    /// entry comes near 4 GiB (one that did would be left out).
    pub fn new(items: impl IntoIterator<Item = MetadataItem>) -> Self {
        let len32 = |bytes: &[u8]| {
            u32::try_from(bytes.len())
                .ok()
                .filter(|len| *len != NO_VALUE)
        };
        let mut header = Vec::new();
        let mut data = Vec::new();
        let mut etag = String::with_capacity(ETAG_LEN);
        let mut count: u32 = 0;
        for item in items {
            let Some(key_len) = len32(item.key.as_bytes()) else {
                continue;
            };
            let value_len = match item.value.as_deref().map(len32) {
                None => NO_VALUE,
                Some(Some(len)) => len,
                Some(None) => continue,
            };
            header.extend_from_slice(&key_len.to_le_bytes());
            header.extend_from_slice(&value_len.to_le_bytes());
            data.extend_from_slice(item.key.as_bytes());
            if let Some(value) = item.value.as_deref() {
                data.extend_from_slice(value);
                etag.clear();
                push_etag(&item.key, value, &mut etag);
                data.extend_from_slice(etag.as_bytes());
            }
            count += 1;
        }
        if count == 0 {
            return PackedMetadata::default();
        }
        let mut packed = Vec::with_capacity(4 + header.len() + data.len());
        packed.extend_from_slice(&count.to_le_bytes());
        packed.extend_from_slice(&header);
        packed.extend_from_slice(&data);
        PackedMetadata(packed.into_boxed_slice())
    }

    /// Each entry's key and value (`None`: not decodable), in the order packed.
    pub fn iter(&self) -> impl Iterator<Item = (&str, Option<&[u8]>)> {
        self.entries().map(|(key, value, _)| (key, value))
    }

    /// Each entry's key, value (`None`: not decodable) and the value's etag, in the order packed.
    pub fn entries(&self) -> impl Iterator<Item = (&str, Option<&[u8]>, Option<&str>)> {
        let count = self.u32_at(0) as usize;
        let mut at = 4 + 8 * count;
        (0..count).filter_map(move |i| {
            let key_len = self.u32_at(4 + 8 * i) as usize;
            let value_len = self.u32_at(8 + 8 * i);
            let key = self.0.get(at..at + key_len)?;
            at += key_len;
            let (value, etag) = match value_len {
                NO_VALUE => (None, None),
                len => {
                    let value = self.0.get(at..at + len as usize)?;
                    at += len as usize;
                    let etag = self.0.get(at..at + ETAG_LEN)?;
                    at += ETAG_LEN;
                    (Some(value), std::str::from_utf8(etag).ok())
                }
            };
            // Keys were packed from `str`s, so this holds.
            Some((std::str::from_utf8(key).ok()?, value, etag))
        })
    }

    fn u32_at(&self, at: usize) -> u32 {
        self.0
            .get(at..at + 4)
            .and_then(|bytes| bytes.try_into().ok())
            .map_or(0, u32::from_le_bytes)
    }

    /// The value of `key`: `None` without such an entry, `Some(None)` when its value was not decodable.
    pub fn get(&self, key: &str) -> Option<Option<&[u8]>> {
        self.iter()
            .find(|(candidate, _)| *candidate == key)
            .map(|(_, value)| value)
    }

    /// How many entries are packed.
    pub fn len(&self) -> usize {
        self.u32_at(0) as usize
    }

    /// Whether no entry is packed.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Debug for PackedMetadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// How a key filter compares with stored keys; ZITADEL's `TextQueryMethod`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyMatch {
    /// The key is the pattern.
    Equals,
    /// The key is the pattern, ignoring case.
    EqualsIgnoreCase,
    /// The key starts with the pattern.
    StartsWith,
    /// The key starts with the pattern, ignoring case.
    StartsWithIgnoreCase,
    /// The key contains the pattern.
    Contains,
    /// The key contains the pattern, ignoring case.
    ContainsIgnoreCase,
    /// The key ends with the pattern.
    EndsWith,
    /// The key ends with the pattern, ignoring case.
    EndsWithIgnoreCase,
}

impl KeyMatch {
    /// The enum name the v2 user service takes in `keyFilter.method`.
    pub(crate) fn v2_method(self) -> &'static str {
        match self {
            KeyMatch::Equals => "TEXT_FILTER_METHOD_EQUALS",
            KeyMatch::EqualsIgnoreCase => "TEXT_FILTER_METHOD_EQUALS_IGNORE_CASE",
            KeyMatch::StartsWith => "TEXT_FILTER_METHOD_STARTS_WITH",
            KeyMatch::StartsWithIgnoreCase => "TEXT_FILTER_METHOD_STARTS_WITH_IGNORE_CASE",
            KeyMatch::Contains => "TEXT_FILTER_METHOD_CONTAINS",
            KeyMatch::ContainsIgnoreCase => "TEXT_FILTER_METHOD_CONTAINS_IGNORE_CASE",
            KeyMatch::EndsWith => "TEXT_FILTER_METHOD_ENDS_WITH",
            KeyMatch::EndsWithIgnoreCase => "TEXT_FILTER_METHOD_ENDS_WITH_IGNORE_CASE",
        }
    }

    /// The enum name ZITADEL's REST API takes in `keyQuery.method`.
    pub(crate) fn zitadel_method(self) -> &'static str {
        match self {
            KeyMatch::Equals => "TEXT_QUERY_METHOD_EQUALS",
            KeyMatch::EqualsIgnoreCase => "TEXT_QUERY_METHOD_EQUALS_IGNORE_CASE",
            KeyMatch::StartsWith => "TEXT_QUERY_METHOD_STARTS_WITH",
            KeyMatch::StartsWithIgnoreCase => "TEXT_QUERY_METHOD_STARTS_WITH_IGNORE_CASE",
            KeyMatch::Contains => "TEXT_QUERY_METHOD_CONTAINS",
            KeyMatch::ContainsIgnoreCase => "TEXT_QUERY_METHOD_CONTAINS_IGNORE_CASE",
            KeyMatch::EndsWith => "TEXT_QUERY_METHOD_ENDS_WITH",
            KeyMatch::EndsWithIgnoreCase => "TEXT_QUERY_METHOD_ENDS_WITH_IGNORE_CASE",
        }
    }
}

/// A filter on keys for listings.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyFilter {
    /// The pattern.
    pub key: String,
    /// How keys are compared with the pattern.
    pub matching: KeyMatch,
}

impl KeyFilter {
    /// Whether ZITADEL's filter lets `key` through (ignoring case as ZITADEL does: Unicode lower case).
    pub fn matches(&self, key: &str) -> bool {
        let compare = |key: &str, pattern: &str| match self.matching {
            KeyMatch::Equals | KeyMatch::EqualsIgnoreCase => key == pattern,
            KeyMatch::StartsWith | KeyMatch::StartsWithIgnoreCase => key.starts_with(pattern),
            KeyMatch::Contains | KeyMatch::ContainsIgnoreCase => key.contains(pattern),
            KeyMatch::EndsWith | KeyMatch::EndsWithIgnoreCase => key.ends_with(pattern),
        };
        match self.matching {
            // Case-sensitive: compared as they are, without copies (listings are filtered per request).
            KeyMatch::Equals | KeyMatch::StartsWith | KeyMatch::Contains | KeyMatch::EndsWith => {
                compare(key, &self.key)
            }
            _ => compare(&key.to_lowercase(), &self.key.to_lowercase()),
        }
    }
}

/// Which slice of a listing to fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    /// How many matching entries to skip.
    pub offset: u64,
    /// How many entries at most to return.
    pub limit: u32,
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// The entries of this page.
    pub items: Vec<MetadataItem>,
    /// How many entries match over all pages.
    pub total: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(key: &str, value: Option<&[u8]>) -> MetadataItem {
        MetadataItem {
            key: key.to_owned(),
            value: value.map(<[u8]>::to_vec),
            create_time: None,
            update_time: None,
        }
    }

    #[test]
    fn packed_metadata_gives_back_every_entry_in_order() {
        let items = vec![
            item("ContractNumber", Some(b"1234")),
            item("empty", Some(b"")),
            item("garbled", None),
            item("photo", Some(&[0xff, 0x00, 0x10])),
            item("", Some(b"no key")),
        ];
        let packed = PackedMetadata::new(items.clone());
        assert_eq!(packed.len(), 5);
        let unpacked: Vec<(String, Option<Vec<u8>>)> = packed
            .iter()
            .map(|(key, value)| (key.to_owned(), value.map(<[u8]>::to_vec)))
            .collect();
        let expected: Vec<(String, Option<Vec<u8>>)> = items
            .into_iter()
            .map(|item| (item.key, item.value))
            .collect();
        assert_eq!(unpacked, expected);
        assert_eq!(packed.get("ContractNumber"), Some(Some(&b"1234"[..])));
        assert_eq!(packed.get("empty"), Some(Some(&b""[..])));
        assert_eq!(packed.get("garbled"), Some(None));
        assert_eq!(packed.get("photo"), Some(Some(&[0xff, 0x00, 0x10][..])));
        assert_eq!(packed.get("missing"), None);
        assert!(PackedMetadata::new(Vec::new()).is_empty());
    }

    #[test]
    fn packed_metadata_keeps_each_values_etag() {
        let packed = PackedMetadata::new(vec![
            item("ContractNumber", Some(b"1234")),
            item("garbled", None),
            item("photo", Some(&[0xff, 0x00, 0x10])),
        ]);
        let etags: Vec<(&str, Option<&str>)> =
            packed.entries().map(|(key, _, etag)| (key, etag)).collect();
        let ours = crate::etag::etag("ContractNumber", b"1234");
        let photo = crate::etag::etag("photo", &[0xff, 0x00, 0x10]);
        assert_eq!(
            etags,
            [
                ("ContractNumber", Some(ours.as_str())),
                ("garbled", None),
                ("photo", Some(photo.as_str()))
            ]
        );
    }

    #[test]
    fn packed_metadata_compares_by_content() {
        let one = PackedMetadata::new(vec![item("a", Some(b"bc"))]);
        assert_eq!(one, PackedMetadata::new(vec![item("a", Some(b"bc"))]));
        // Same bytes, split differently.
        assert_ne!(one, PackedMetadata::new(vec![item("ab", Some(b"c"))]));
        assert_ne!(one, PackedMetadata::new(vec![item("a", None)]));
    }
}
