//! The metadata domain: what usermeta reads from and writes to ZITADEL, free of wire formats.

use prost_types::Timestamp;

/// One stored metadata entry, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct MetadataItem {
    pub key: String,
    /// The decoded bytes; `None` when ZITADEL sent a value that could not be decoded.
    pub value: Option<Vec<u8>>,
    pub create_time: Option<Timestamp>,
    pub update_time: Option<Timestamp>,
}

/// A metadata entry without timestamps (as userinfo gives it), in little memory: the caller cache holds one
/// per key of every cached user.
#[derive(Debug, Clone, PartialEq)]
pub struct CompactItem {
    pub key: Box<str>,
    pub value: Option<Box<[u8]>>,
}

impl From<MetadataItem> for CompactItem {
    fn from(item: MetadataItem) -> Self {
        CompactItem {
            key: item.key.into_boxed_str(),
            value: item.value.map(Vec::into_boxed_slice),
        }
    }
}

impl From<&CompactItem> for MetadataItem {
    fn from(item: &CompactItem) -> Self {
        MetadataItem {
            key: item.key.as_ref().to_owned(),
            value: item.value.as_deref().map(<[u8]>::to_vec),
            create_time: None,
            update_time: None,
        }
    }
}

/// How a key filter compares with stored keys; ZITADEL's `TextQueryMethod`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyMatch {
    Equals,
    EqualsIgnoreCase,
    StartsWith,
    StartsWithIgnoreCase,
    Contains,
    ContainsIgnoreCase,
    EndsWith,
    EndsWithIgnoreCase,
}

impl KeyMatch {
    /// The enum name ZITADEL's REST API takes in `keyQuery.method`.
    pub fn zitadel_method(self) -> &'static str {
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
    pub key: String,
    pub matching: KeyMatch,
}

/// Which slice of a listing to fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    pub offset: u64,
    pub limit: u32,
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub items: Vec<MetadataItem>,
    /// How many entries match over all pages.
    pub total: u64,
}
