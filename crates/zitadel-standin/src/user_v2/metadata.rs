//! `SetUserMetadata`, `ListUserMetadata` and `DeleteUserMetadata` (ZITADEL 4.0+, PR #10005), as
//! `internal/api/grpc/user/v2/metadata.go` and the commands and queries behind it behave.

use http::HeaderMap;
use serde_json::{Map, Value, json};

use super::super::errors::{Code, Failure};
use super::super::state::{Entry, Shared, User};
use super::super::wire;
use super::json;
use super::{
    Outcome, applied_limit, auth_option, authenticate, check_runes, may_manage, may_read, put,
    put_u64,
};

/// The names of `zitadel.filter.v2.TextFilterMethod`, by number.
pub(crate) const TEXT_FILTER_METHODS: [&str; 8] = [
    "TEXT_FILTER_METHOD_EQUALS",
    "TEXT_FILTER_METHOD_EQUALS_IGNORE_CASE",
    "TEXT_FILTER_METHOD_STARTS_WITH",
    "TEXT_FILTER_METHOD_STARTS_WITH_IGNORE_CASE",
    "TEXT_FILTER_METHOD_CONTAINS",
    "TEXT_FILTER_METHOD_CONTAINS_IGNORE_CASE",
    "TEXT_FILTER_METHOD_ENDS_WITH",
    "TEXT_FILTER_METHOD_ENDS_WITH_IGNORE_CASE",
];

/// `Errors.Metadata.NoData` (FailedPrecondition): an empty list to set or delete.
fn no_data() -> Failure {
    Failure::zitadel(
        Code::FailedPrecondition,
        "META-9mm2d",
        "Metadata list is empty",
    )
}

/// `checkUserExists` (FailedPrecondition): the command's target user does not exist.
fn user_not_found() -> Failure {
    Failure::zitadel(
        Code::FailedPrecondition,
        "COMMAND-uXHNj",
        "User could not be found",
    )
}

/// `SetUserMetadata`: `{"userId","metadata":[{"key","value"}]}` → `{"setDate"}`.
pub(super) fn set(shared: &Shared, headers: &HeaderMap, request: &Map<String, Value>) -> Outcome {
    let user_id = json::string(json::field(request, "userId", "user_id"), "user_id")?;
    let mut entries = Vec::new();
    for item in json::messages(json::field(request, "metadata", "metadata"), "metadata")? {
        let empty = Map::new();
        let item = item.unwrap_or(&empty);
        entries.push((
            json::string(json::field(item, "key", "key"), "key")?,
            json::bytes(json::field(item, "value", "value"), "value")?,
        ));
    }
    let mut guard = shared.write();
    let data = &mut *guard;
    let caller = authenticate(shared, data, headers)?;
    auth_option(caller)?;
    let caller_id = caller.id.clone();
    check_runes(&user_id, "SetUserMetadataRequest.UserId")?;
    let empty_deletes = data.empty_value_deletes;
    for (i, (key, value)) in entries.iter().enumerate() {
        let cause = wire::rune_error(key, "Metadata.Key").or_else(|| {
            let refused = if empty_deletes { value.len() > 500_000 } else { !(1..=500_000).contains(&value.len()) };
            refused.then(|| {
                if empty_deletes {
                    "invalid Metadata.Value: value length must be at most 500000 bytes".to_owned()
                } else {
                    "invalid Metadata.Value: value length must be between 1 and 500000 bytes, inclusive".to_owned()
                }
            })
        });
        if let Some(cause) = cause {
            return Err(Failure::plain(
                Code::InvalidArgument,
                format!(
                    "invalid SetUserMetadataRequest.Metadata[{i}]: embedded message failed validation | caused by: {cause}"
                ),
            ));
        }
    }
    if entries.is_empty() {
        return Err(no_data());
    }
    let allowed = {
        let caller = data.users.get(&caller_id);
        let target = data.users.get(&user_id).ok_or_else(user_not_found)?;
        caller.is_some_and(|caller| may_manage(caller, target))
    };
    if !allowed {
        return Err(super::membership_not_found());
    }
    let Some(user) = data.users.get_mut(&user_id) else {
        return Err(user_not_found());
    };
    let now = wire::now();
    let mut changed = false;
    for (key, value) in entries {
        if value.is_empty() {
            // Only reached with `empty_value_deletes`: the newer ZITADEL removes the key, if present.
            if user.metadata.contains_key(&key) {
                user.remove_metadata(&key, &mut data.events);
                changed = true;
            }
            continue;
        }
        // An unchanged value pushes no event (the answer then carries the last change's date).
        if user
            .metadata
            .get(&key)
            .is_some_and(|entry| entry.value == value)
        {
            continue;
        }
        user.set_metadata(&key, value, now, &mut data.events);
        changed = true;
    }
    let date = if changed { now } else { user.changed };
    Ok(json!({ "setDate": wire::rfc3339(date) }))
}

/// `DeleteUserMetadata`: `{"userId","keys":[…]}` → `{"deletionDate"}`; all or nothing.
pub(super) fn delete(
    shared: &Shared,
    headers: &HeaderMap,
    request: &Map<String, Value>,
) -> Outcome {
    let user_id = json::string(json::field(request, "userId", "user_id"), "user_id")?;
    let keys = json::strings(json::field(request, "keys", "keys"), "keys")?;
    let mut guard = shared.write();
    let data = &mut *guard;
    let caller = authenticate(shared, data, headers)?;
    auth_option(caller)?;
    let caller_id = caller.id.clone();
    check_runes(&user_id, "DeleteUserMetadataRequest.UserId")?;
    for (i, key) in keys.iter().enumerate() {
        check_runes(key, &format!("DeleteUserMetadataRequest.Keys[{i}]"))?;
    }
    if keys.is_empty() {
        return Err(no_data());
    }
    let allowed = {
        let caller = data.users.get(&caller_id);
        let target = data.users.get(&user_id).ok_or_else(user_not_found)?;
        caller.is_some_and(|caller| may_manage(caller, target))
    };
    if !allowed {
        return Err(super::membership_not_found());
    }
    let Some(user) = data.users.get_mut(&user_id) else {
        return Err(user_not_found());
    };
    if keys.iter().any(|key| !user.metadata.contains_key(key)) {
        return Err(Failure::zitadel(
            Code::NotFound,
            "META-2nnds",
            "One or more keys do not exist",
        ));
    }
    for key in &keys {
        user.remove_metadata(key, &mut data.events);
    }
    Ok(json!({ "deletionDate": wire::rfc3339(user.changed) }))
}

/// A decoded `MetadataKeyFilter`.
pub(crate) struct KeyFilter {
    pub(crate) key: String,
    pub(crate) method: i64,
}

impl KeyFilter {
    pub(crate) fn decode(map: &Map<String, Value>) -> Result<KeyFilter, Failure> {
        Ok(KeyFilter {
            key: json::string(json::field(map, "key", "key"), "key")?,
            method: json::enumeration(
                json::field(map, "method", "method"),
                &TEXT_FILTER_METHODS,
                "method",
            )?,
        })
    }

    /// protoc-gen-validate's rules on the filter (`prefix` names where it sits).
    pub(crate) fn validate(&self, prefix: &str) -> Result<(), Failure> {
        let inner = "invalid MetadataKeyFilter";
        if self.key.chars().count() > 200 {
            return Err(Failure::plain(
                Code::InvalidArgument,
                format!("{prefix}{inner}.Key: value length must be at most 200 runes"),
            ));
        }
        if !(0..8).contains(&self.method) {
            return Err(Failure::plain(
                Code::InvalidArgument,
                format!("{prefix}{inner}.Method: value must be one of the defined enum values"),
            ));
        }
        Ok(())
    }

    pub(crate) fn matches(&self, key: &str) -> bool {
        wire::text_matches(self.method, &self.key, key)
    }
}

/// `ListUserMetadata`: `{"userId","pagination":{"offset","limit","asc"},"filters":[{"keyFilter"}]}` →
/// `{"pagination":{"totalResult","appliedLimit"},"metadata":[{"creationDate","changeDate","key","value"}]}`.
pub(super) fn list(shared: &Shared, headers: &HeaderMap, request: &Map<String, Value>) -> Outcome {
    let user_id = json::string(json::field(request, "userId", "user_id"), "user_id")?;
    let (mut offset, mut limit, mut asc) = (0, 0, false);
    if let Some(page) = json::message(
        json::field(request, "pagination", "pagination"),
        "pagination",
    )? {
        offset = json::uint(json::field(page, "offset", "offset"), "uint64", "offset")?;
        limit = json::uint(json::field(page, "limit", "limit"), "uint32", "limit")?;
        asc = json::boolean(json::field(page, "asc", "asc"), "asc")?;
    }
    let mut filters = Vec::new();
    for item in json::messages(json::field(request, "filters", "filters"), "filters")? {
        let key_filter = match item {
            Some(item) => json::message(json::field(item, "keyFilter", "key_filter"), "keyFilter")?,
            None => None,
        };
        filters.push(key_filter.map(KeyFilter::decode).transpose()?);
    }
    let data = shared.read();
    let caller = authenticate(shared, &data, headers)?;
    auth_option(caller)?;
    check_runes(&user_id, "ListUserMetadataRequest.UserId")?;
    for (i, filter) in filters.iter().enumerate() {
        if let Some(filter) = filter {
            filter.validate(&format!(
                "invalid ListUserMetadataRequest.Filters[{i}]: embedded message failed validation | caused by: invalid MetadataSearchFilter.KeyFilter: embedded message failed validation | caused by: "
            ))?;
        }
    }
    let applied = applied_limit(limit)?;
    // `UserMetadataFiltersToQuery`: a filter with no member set is refused by the handler.
    if filters.iter().any(Option::is_none) {
        return Err(Failure::zitadel(
            Code::InvalidArgument,
            "METAD-fdg23",
            "List.Query.Invalid",
        ));
    }
    let filters: Vec<KeyFilter> = filters.into_iter().flatten().collect();
    let lag = data.events.search_lag;
    // The projection: no rows for a missing user or one the lagged projection has not seen yet.
    let target = data
        .users
        .get(&user_id)
        .filter(|user| user.visible_with_lag(lag));
    let view = target
        .map(|user| user.metadata_as_of(lag))
        .unwrap_or_default();
    let mut rows: Vec<(&String, &Entry)> = view
        .iter()
        .filter(|(key, _)| filters.iter().all(|filter| filter.matches(key)))
        .collect();
    rows.sort_by_key(|(_, entry)| (entry.creation_date, entry.created_sequence));
    if !asc {
        rows.reverse();
    }
    // The count is taken with the rows (`COUNT(*) OVER ()`), before the permission filter drops rows.
    let total = rows.len() as u64;
    let readable = target.is_some_and(|target: &User| may_read(caller, target));
    let page: Vec<Value> = if readable {
        rows.into_iter()
            .skip(usize::try_from(offset).unwrap_or(usize::MAX))
            .take(usize::try_from(applied).unwrap_or(usize::MAX))
            .map(|(key, entry)| {
                let mut item = Map::new();
                item.insert(
                    "creationDate".into(),
                    Value::String(wire::rfc3339(entry.creation_date)),
                );
                item.insert(
                    "changeDate".into(),
                    Value::String(wire::rfc3339(entry.change_date)),
                );
                put(&mut item, "key", Value::String(key.clone()));
                put(
                    &mut item,
                    "value",
                    Value::String(wire::encode_bytes(&entry.value)),
                );
                Value::Object(item)
            })
            .collect()
    } else {
        Vec::new()
    };
    let mut pagination = Map::new();
    put_u64(&mut pagination, "totalResult", total);
    put_u64(&mut pagination, "appliedLimit", applied);
    let mut answer = Map::new();
    answer.insert("pagination".into(), Value::Object(pagination));
    put(&mut answer, "metadata", Value::Array(page));
    Ok(Value::Object(answer))
}
