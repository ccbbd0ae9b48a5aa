//! Request validation, before any upstream call. Every violation is collected, so a caller fixes them all at
//! once; the limits are ZITADEL's own (keys 1..200 characters, values 1..500000 bytes, ids up to 200).
//!
//! What passes here reaches the policy, the audit line, the cache and ZITADEL as the same bytes: ids and keys
//! that a URL, a header or a log line would change on the way (control characters, whitespace in ids, URL
//! delimiters in ids, the path segments `.` and `..`) are refused rather than cleaned up.

mod fields;

use std::collections::HashMap;

use super::{
    ApiError,
    convert::value_from_pb,
    error::Violations,
    page_token::{self, Offsets, PageTokenKey, Query},
    pb,
};
use usermeta_zitadel::metadata::{KeyFilter, KeyMatch, PageRequest};

pub(super) const MAX_KEY_CHARS: usize = 200;
pub(super) const MAX_VALUE_BYTES: usize = 500_000;
pub(super) const MAX_ID_CHARS: usize = 200;
pub(super) const DEFAULT_PAGE_SIZE: u32 = 100;
pub(super) const MAX_PAGE_SIZE: u32 = 1000;
/// The most keys or entries one request names (SetMetadata's entries, DeleteMetadata's keys, GetMyMetadata's
/// and BatchGetMetadata's keys). Counted before any of them is looked at, so what a request costs to validate,
/// answer and log is bounded whatever it holds.
pub(super) const MAX_KEYS_PER_REQUEST: usize = 100;

/// Where GetMyMetadata reads from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    Userinfo,
    AuthApi,
    /// The bearer JWT's own metadata claim.
    Token,
}

/// A valid GetMyMetadata request.
#[derive(Debug)]
pub(super) struct GetMine {
    pub keys: Vec<String>,
    pub source: Source,
}

/// A valid ListMetadata request.
#[derive(Debug)]
pub(super) struct List {
    /// `None` means the caller.
    pub user_id: Option<String>,
    pub org_id: Option<String>,
    pub filter: Option<KeyFilter>,
    pub page: PageRequest,
    /// What the offset of a continued listing counts (`None` on its first page); it must match what the
    /// caller's view counts now.
    pub resumed: Option<Offsets>,
}

impl List {
    /// The query page tokens of this listing are bound to.
    pub(super) fn token_query(&self) -> Query<'_> {
        Query {
            user_id: self.user_id.as_deref().unwrap_or_default(),
            org_id: self.org_id.as_deref().unwrap_or_default(),
            filter: self.filter.as_ref(),
            find: None,
            organization: false,
        }
    }
}

/// A valid FindUsersByMetadata request.
#[derive(Debug)]
pub(super) struct Find {
    pub key: String,
    pub value: Vec<u8>,
    pub org_id: Option<String>,
    pub page: PageRequest,
}

impl Find {
    /// The query page tokens of this search are bound to.
    pub(super) fn token_query(&self) -> Query<'_> {
        Query {
            user_id: "",
            org_id: self.org_id.as_deref().unwrap_or_default(),
            filter: None,
            find: Some((&self.key, &self.value)),
            organization: false,
        }
    }
}

/// The longest value ZITADEL's metadata value filter compares.
pub(super) const MAX_FIND_VALUE_BYTES: usize = 200;

pub(super) fn find(
    request: pb::FindUsersByMetadataRequest,
    key: &PageTokenKey,
) -> Result<Find, ApiError> {
    let mut v = Violations::default();
    v.key(|| "key".to_owned(), &request.key);
    let org_id = v.org_id(request.organization_id);
    let value = match value_from_pb(request.value) {
        None => {
            v.add("value", "must be set: give `text` or `binary`");
            Vec::new()
        }
        Some(bytes) if bytes.is_empty() => {
            v.add("value", "must not be empty: ZITADEL stores no empty values");
            bytes
        }
        Some(bytes) if bytes.len() > MAX_FIND_VALUE_BYTES => {
            v.add(
                "value",
                format!(
                    "must be at most {MAX_FIND_VALUE_BYTES} bytes (the most ZITADEL's metadata filter compares), is {}",
                    bytes.len()
                ),
            );
            bytes
        }
        Some(bytes) => bytes,
    };
    let limit = page_size(&mut v, request.page_size);
    let mut find = Find {
        key: request.key,
        value,
        org_id,
        page: PageRequest { offset: 0, limit },
    };
    if let Some(position) = resume(&mut v, key, &request.page_token, find.token_query()) {
        find.page.offset = position.offset;
    }
    v.finish(find)
}

/// Where a page token says a listing goes on (`None`: no token, or one that is refused as a violation).
fn resume(
    v: &mut Violations,
    key: &PageTokenKey,
    token: &str,
    query: page_token::Query<'_>,
) -> Option<page_token::Position> {
    if token.is_empty() {
        return None;
    }
    page_token::decode(key, token, query)
        .map_err(|e| v.add("page_token", e.to_string()))
        .ok()
}

fn page_size(v: &mut Violations, page_size: i32) -> u32 {
    match u32::try_from(page_size) {
        Ok(0) => DEFAULT_PAGE_SIZE,
        Ok(size) if size <= MAX_PAGE_SIZE => size,
        _ => {
            v.add(
                "page_size",
                format!(
                    "must be between 0 (meaning {DEFAULT_PAGE_SIZE}) and {MAX_PAGE_SIZE}, is {page_size}"
                ),
            );
            DEFAULT_PAGE_SIZE
        }
    }
}

/// A valid BatchGetMetadata request.
#[derive(Debug)]
pub(super) struct BatchGet {
    /// Distinct, in request order.
    pub user_ids: Vec<String>,
    /// Empty means every key the caller may read.
    pub keys: Vec<String>,
    pub org_id: Option<String>,
}

/// The most users one BatchGetMetadata call reads.
pub(super) const MAX_BATCH_USERS: usize = 100;

pub(super) fn batch_get(request: pb::BatchGetMetadataRequest) -> Result<BatchGet, ApiError> {
    let mut v = Violations::default();
    match request.user_ids.len() {
        0 => v.add(
            "user_ids",
            format!("must name 1 to {MAX_BATCH_USERS} users, names none"),
        ),
        n if n > MAX_BATCH_USERS => v.add(
            "user_ids",
            format!("must name at most {MAX_BATCH_USERS} users, names {n}; split the batch"),
        ),
        _ => {}
    }
    v.within("keys", request.keys.len(), MAX_KEYS_PER_REQUEST, "keys");
    // Past the counts, each user and key is looked at: only when there are not too many of them.
    if !v.is_empty() {
        return v.finish_invalid();
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, user_id) in request.user_ids.iter().enumerate() {
        if user_id.is_empty() {
            v.add(
                format!("user_ids[{i}]"),
                "must not be empty: name the user (your own id reads your metadata)",
            );
            continue;
        }
        v.id_of_user(|| format!("user_ids[{i}]"), user_id);
        if let Some(&first) = seen.get(user_id.as_str()) {
            v.add(
                format!("user_ids[{i}]"),
                format!("repeats user_ids[{first}]; name each user once"),
            );
        } else {
            seen.insert(user_id, i);
        }
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, key) in request.keys.iter().enumerate() {
        v.key(|| format!("keys[{i}]"), key);
        if let Some(&first) = seen.get(key.as_str()) {
            v.add(
                format!("keys[{i}]"),
                format!("repeats keys[{first}]; name each key once"),
            );
        } else {
            seen.insert(key, i);
        }
    }
    let org_id = v.org_id(request.organization_id);
    v.finish(BatchGet {
        user_ids: request.user_ids,
        keys: request.keys,
        org_id,
    })
}

/// A valid SetMetadata request.
#[derive(Debug)]
pub(super) struct Set {
    pub user_id: Option<String>,
    pub org_id: Option<String>,
    /// The entries, in request order; a patched entry's value is empty until the patch is applied.
    pub entries: Vec<(String, Vec<u8>)>,
    /// The entries with a condition or a merge patch, in request order; empty for a plain write, which
    /// reads nothing.
    pub guarded: Vec<Guard>,
}

/// What must hold of a key before a write touches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Condition {
    /// Its current etag is this one.
    Match(String),
    /// It does not exist.
    Absent,
}

/// One entry of a SetMetadata request that is read before it is written.
#[derive(Debug)]
pub(crate) struct Guard {
    /// Its index in [`Set::entries`] (and the request's `entries`).
    pub index: usize,
    pub condition: Option<Condition>,
    /// An RFC 7396 merge patch to apply to the current value.
    pub patch: Option<serde_json::Map<String, serde_json::Value>>,
}

/// The longest etag a request may name: longer than any usermeta makes (24 characters).
pub(crate) const MAX_ETAG_CHARS: usize = 100;

/// A valid DeleteMetadata request.
#[derive(Debug)]
pub(super) struct Delete {
    pub user_id: Option<String>,
    pub org_id: Option<String>,
    pub keys: Vec<String>,
    pub allow_missing: bool,
    /// Keys to remove only if their etag is the one given, in the order of `keys`.
    pub if_match: Vec<(String, String)>,
}

pub(super) fn get_mine(request: pb::GetMyMetadataRequest) -> Result<GetMine, ApiError> {
    let mut v = Violations::default();
    if !v.within("keys", request.keys.len(), MAX_KEYS_PER_REQUEST, "keys") {
        return v.finish_invalid();
    }
    for (i, key) in request.keys.iter().enumerate() {
        v.key(|| format!("keys[{i}]"), key);
    }
    let source = match pb::MetadataSource::try_from(request.source) {
        Ok(pb::MetadataSource::Unspecified | pb::MetadataSource::Userinfo) => Source::Userinfo,
        Ok(pb::MetadataSource::AuthApi) => Source::AuthApi,
        Ok(pb::MetadataSource::Token) => Source::Token,
        Err(_) => {
            v.add("source", format!("{} is not a MetadataSource; use METADATA_SOURCE_USERINFO, METADATA_SOURCE_AUTH_API or METADATA_SOURCE_TOKEN", request.source));
            Source::Userinfo
        }
    };
    v.finish(GetMine {
        keys: request.keys,
        source,
    })
}

pub(super) fn list(request: pb::ListMetadataRequest, key: &PageTokenKey) -> Result<List, ApiError> {
    let mut v = Violations::default();
    let user_id = v.user_id(request.user_id);
    let org_id = v.org_id(request.organization_id);
    let filter = key_filter(&mut v, request.key_filter);
    let limit = page_size(&mut v, request.page_size);
    let mut list = List {
        user_id,
        org_id,
        filter,
        page: PageRequest { offset: 0, limit },
        resumed: None,
    };
    if let Some(position) = resume(&mut v, key, &request.page_token, list.token_query()) {
        list.page.offset = position.offset;
        list.resumed = Some(position.offsets);
    }
    v.finish(list)
}

/// A valid WatchMetadata request.
#[derive(Debug)]
pub(super) struct Watch {
    /// `None` means the caller.
    pub user_id: Option<String>,
    /// Empty streams every key.
    pub key_prefix: String,
    pub org_id: Option<String>,
}

pub(super) fn watch(request: pb::WatchMetadataRequest) -> Result<Watch, ApiError> {
    let mut v = Violations::default();
    let user_id = v.user_id(request.user_id);
    v.key_pattern("key_prefix", &request.key_prefix);
    let org_id = v.org_id(request.organization_id);
    v.finish(Watch {
        user_id,
        key_prefix: request.key_prefix,
        org_id,
    })
}

pub(super) fn set(request: pb::SetMetadataRequest) -> Result<Set, ApiError> {
    let mut v = Violations::default();
    let user_id = v.user_id(request.user_id);
    let org_id = v.org_id(request.organization_id);
    if !v.within(
        "entries",
        request.entries.len(),
        MAX_KEYS_PER_REQUEST,
        "entries",
    ) {
        return v.finish_invalid();
    }
    v.distinct_keys(
        "entries",
        request
            .entries
            .iter()
            .enumerate()
            .map(|(i, e)| (format!("entries[{i}].key"), e.key.as_str())),
    );
    let mut entries = Vec::with_capacity(request.entries.len());
    let mut guarded = Vec::new();
    for (i, entry) in request.entries.into_iter().enumerate() {
        let condition = condition(&mut v, i, &entry.if_match, entry.if_absent);
        let patch = (!entry.json_merge_patch.is_empty())
            .then(|| merge_patch(&mut v, i, &entry.json_merge_patch))
            .flatten();
        let value = match (
            value_from_pb(entry.value),
            entry.json_merge_patch.is_empty(),
        ) {
            (Some(_), false) => {
                v.add(
                    format!("entries[{i}].json_merge_patch"),
                    "must not be set together with value: set one of them",
                );
                Vec::new()
            }
            (None, false) => Vec::new(),
            (None, true) => {
                v.add(
                    format!("entries[{i}].value"),
                    "must be set: give `text` or `binary`, or a json_merge_patch",
                );
                Vec::new()
            }
            (Some(bytes), true) if bytes.is_empty() => {
                v.add(
                    format!("entries[{i}].value"),
                    "must not be empty: ZITADEL cannot store an empty value; use DeleteMetadata to remove a key",
                );
                bytes
            }
            (Some(bytes), true) if bytes.len() > MAX_VALUE_BYTES => {
                v.add(
                    format!("entries[{i}].value"),
                    format!(
                        "must be at most {MAX_VALUE_BYTES} bytes, is {}",
                        bytes.len()
                    ),
                );
                bytes
            }
            (Some(bytes), true) => bytes,
        };
        if condition.is_some() || patch.is_some() {
            guarded.push(Guard {
                index: i,
                condition,
                patch,
            });
        }
        entries.push((entry.key, value));
    }
    v.finish(Set {
        user_id,
        org_id,
        entries,
        guarded,
    })
}

/// An entry's condition: `if_match`, `if_absent`, neither, never both.
fn condition(v: &mut Violations, i: usize, if_match: &str, if_absent: bool) -> Option<Condition> {
    match (if_match.is_empty(), if_absent) {
        (true, false) => None,
        (true, true) => Some(Condition::Absent),
        (false, true) => {
            v.add(
                format!("entries[{i}].if_absent"),
                "must not be set together with if_match: a key that must not exist has no etag",
            );
            None
        }
        (false, false) => etag(v, || format!("entries[{i}].if_match"), if_match)
            .map(|etag| Condition::Match(etag.to_owned())),
    }
}

/// An etag as a caller names it: never compared with anything longer than usermeta makes.
fn etag<'e>(v: &mut Violations, field: impl FnOnce() -> String, etag: &'e str) -> Option<&'e str> {
    if etag.chars().count() > MAX_ETAG_CHARS {
        v.add(
            field(),
            format!("must be at most {MAX_ETAG_CHARS} characters: pass the etag a read returned"),
        );
        return None;
    }
    Some(etag)
}

/// An RFC 7396 merge patch: a JSON object of at most a value's size.
fn merge_patch(
    v: &mut Violations,
    i: usize,
    patch: &str,
) -> Option<serde_json::Map<String, serde_json::Value>> {
    let field = || format!("entries[{i}].json_merge_patch");
    if patch.len() > MAX_VALUE_BYTES {
        v.add(
            field(),
            format!(
                "must be at most {MAX_VALUE_BYTES} bytes, is {}",
                patch.len()
            ),
        );
        return None;
    }
    match serde_json::from_str::<serde_json::Value>(patch) {
        Ok(serde_json::Value::Object(patch)) => Some(patch),
        Ok(_) => {
            v.add(
                field(),
                "must be a JSON object (an RFC 7396 merge patch); to replace the whole value, set value",
            );
            None
        }
        Err(e) => {
            v.add(field(), format!("is not JSON: {e}"));
            None
        }
    }
}

pub(super) fn delete(request: pb::DeleteMetadataRequest) -> Result<Delete, ApiError> {
    let mut v = Violations::default();
    let user_id = v.user_id(request.user_id);
    let org_id = v.org_id(request.organization_id);
    if !v.within("keys", request.keys.len(), MAX_KEYS_PER_REQUEST, "keys") {
        return v.finish_invalid();
    }
    v.distinct_keys(
        "keys",
        request
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| (format!("keys[{i}]"), k.as_str())),
    );
    if !v.within(
        "if_match",
        request.if_match.len(),
        MAX_KEYS_PER_REQUEST,
        "keys",
    ) {
        return v.finish_invalid();
    }
    let mut if_match = Vec::with_capacity(request.if_match.len());
    for (key, expected) in &request.if_match {
        if !request.keys.contains(key) {
            v.add(
                format!("if_match[{key}]"),
                "names a key that is not in keys: name every key to remove in keys",
            );
        } else if expected.is_empty() {
            v.add(
                format!("if_match[{key}]"),
                "must not be empty: pass the etag a read returned, or leave the key out of if_match",
            );
        } else if let Some(expected) = etag(&mut v, || format!("if_match[{key}]"), expected) {
            if_match.push((key.clone(), expected.to_owned()));
        }
    }
    // In the order of `keys`, whatever order the map came in.
    if_match.sort_by_key(|(key, _)| request.keys.iter().position(|k| k == key));
    v.finish(Delete {
        user_id,
        org_id,
        keys: request.keys,
        allow_missing: request.allow_missing,
        if_match,
    })
}

/// A valid ListOrganizationMetadata request.
#[derive(Debug)]
pub(super) struct OrgList {
    /// `None` means the caller's own organisation.
    pub org_id: Option<String>,
    pub filter: Option<KeyFilter>,
    pub page: PageRequest,
    /// What the offset of a continued listing counts (`None` on its first page).
    pub resumed: Option<Offsets>,
}

impl OrgList {
    /// The query page tokens of this listing are bound to: the organisation as the request named it.
    pub(super) fn token_query(&self) -> Query<'_> {
        Query {
            user_id: "",
            org_id: self.org_id.as_deref().unwrap_or_default(),
            filter: self.filter.as_ref(),
            find: None,
            organization: true,
        }
    }
}

/// A valid SetOrganizationMetadata request.
#[derive(Debug)]
pub(super) struct OrgSet {
    pub org_id: Option<String>,
    pub entries: Vec<(String, Vec<u8>)>,
}

/// A valid DeleteOrganizationMetadata request.
#[derive(Debug)]
pub(super) struct OrgDelete {
    pub org_id: Option<String>,
    pub keys: Vec<String>,
    pub allow_missing: bool,
}

fn key_filter(v: &mut Violations, filter: Option<pb::KeyFilter>) -> Option<KeyFilter> {
    filter.map(|filter| {
        v.key_pattern("key_filter.key", &filter.key);
        let matching = pb::KeyMatch::try_from(filter.r#match).map(KeyMatch::from).unwrap_or_else(|_| {
            v.add("key_filter.match", format!("{} is not a KeyMatch; use one of KEY_MATCH_EQUALS … KEY_MATCH_ENDS_WITH_IGNORE_CASE", filter.r#match));
            KeyMatch::Equals
        });
        KeyFilter { key: filter.key, matching }
    })
}

/// The entries of a set, each a key and a value ZITADEL can store.
fn entries(v: &mut Violations, request: Vec<pb::MetadataEntry>) -> Vec<(String, Vec<u8>)> {
    v.distinct_keys(
        "entries",
        request
            .iter()
            .enumerate()
            .map(|(i, e)| (format!("entries[{i}].key"), e.key.as_str())),
    );
    let mut entries = Vec::with_capacity(request.len());
    for (i, entry) in request.into_iter().enumerate() {
        match value_from_pb(entry.value) {
            None => v.add(format!("entries[{i}].value"), "must be set: give `text` or `binary`"),
            Some(bytes) if bytes.is_empty() => v.add(
                format!("entries[{i}].value"),
                "must not be empty: ZITADEL cannot store an empty value; use DeleteOrganizationMetadata to remove a key",
            ),
            Some(bytes) if bytes.len() > MAX_VALUE_BYTES => v.add(
                format!("entries[{i}].value"),
                format!("must be at most {MAX_VALUE_BYTES} bytes, is {}", bytes.len()),
            ),
            Some(bytes) => entries.push((entry.key, bytes)),
        }
    }
    entries
}

pub(super) fn org_list(
    request: pb::ListOrganizationMetadataRequest,
    key: &PageTokenKey,
) -> Result<OrgList, ApiError> {
    let mut v = Violations::default();
    let org_id = v.organization(request.organization_id);
    let filter = key_filter(&mut v, request.key_filter);
    let limit = page_size(&mut v, request.page_size);
    let mut list = OrgList {
        org_id,
        filter,
        page: PageRequest { offset: 0, limit },
        resumed: None,
    };
    if let Some(position) = resume(&mut v, key, &request.page_token, list.token_query()) {
        list.page.offset = position.offset;
        list.resumed = Some(position.offsets);
    }
    v.finish(list)
}

pub(super) fn org_set(request: pb::SetOrganizationMetadataRequest) -> Result<OrgSet, ApiError> {
    let mut v = Violations::default();
    let org_id = v.organization(request.organization_id);
    if !v.within(
        "entries",
        request.entries.len(),
        MAX_KEYS_PER_REQUEST,
        "entries",
    ) {
        return v.finish_invalid();
    }
    let entries = entries(&mut v, request.entries);
    v.finish(OrgSet { org_id, entries })
}

pub(super) fn org_delete(
    request: pb::DeleteOrganizationMetadataRequest,
) -> Result<OrgDelete, ApiError> {
    let mut v = Violations::default();
    let org_id = v.organization(request.organization_id);
    if !v.within("keys", request.keys.len(), MAX_KEYS_PER_REQUEST, "keys") {
        return v.finish_invalid();
    }
    v.distinct_keys(
        "keys",
        request
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| (format!("keys[{i}]"), k.as_str())),
    );
    v.finish(OrgDelete {
        org_id,
        keys: request.keys,
        allow_missing: request.allow_missing,
    })
}
