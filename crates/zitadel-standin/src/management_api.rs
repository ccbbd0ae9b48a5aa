//! Management API v1: metadata of any user in the context org (List, Get, Set, BulkSet, Remove, BulkRemove).
//!
//! Checks run in ZITADEL's order: the gateway decodes the body (400), the auth interceptor checks the token,
//! the org header and the permission (401/403), protoc-gen-validate checks the request (400), then the
//! command or query runs.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};

use super::caller::{self, Caller};
use super::state::{Data, Shared, User};
use super::{errors, wire};

type Reply = Result<Response, errors::Reject>;

/// `/management/v1/users/{id}/metadata/{key}`, where `{key}` may be `_search` or `_bulk`.
pub(super) async fn dispatch(
    State(shared): State<Arc<Shared>>,
    method: Method,
    params: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !shared.read().apis.management_v1 {
        return errors::gateway_not_found();
    }
    let Ok(Path((id, key))) = params else {
        return *errors::invalid_argument("type mismatch, parameter: id or key");
    };
    let result = match (&method, key.as_str()) {
        (&Method::POST, "_search") => list(&shared, &headers, &id, &body),
        (&Method::POST, "_bulk") => bulk_set(&shared, &headers, &id, &body),
        (&Method::DELETE, "_bulk") => bulk_remove(&shared, &headers, &id, &body),
        (&Method::GET, _) => get(&shared, &headers, &id, &key),
        (&Method::POST, _) => set(&shared, &headers, &id, &key, &body),
        (&Method::DELETE, _) => remove(&shared, &headers, &id, &key),
        _ => Err(errors::method_not_allowed()),
    };
    result.unwrap_or_else(|error| *error)
}

/// Authenticates a manager for the context org.
fn manager(shared: &Shared, data: &Data, headers: &HeaderMap) -> Result<Caller, errors::Reject> {
    let caller = caller::authenticate(shared, data, headers)?;
    caller.require_manager()?;
    Ok(caller)
}

/// The target user as the command side sees it: it must exist in the context org.
fn target_user<'a>(
    users: &'a mut HashMap<String, User>,
    id: &str,
    org: &str,
) -> Result<&'a mut User, errors::Reject> {
    users
        .get_mut(id)
        .filter(|user| user.org_id == org)
        .ok_or_else(errors::user_not_found_command)
}

fn list(shared: &Shared, headers: &HeaderMap, id: &str, body: &[u8]) -> Reply {
    let request = wire::decode_list(body)?;
    let data = shared.read();
    let caller = manager(shared, &data, headers)?;
    wire::check_runes(id, "ListUserMetadataRequest.Id")?;
    request.validate("ListUserMetadataRequest")?;
    // The query filters by resource owner = context org: a user elsewhere simply has no rows.
    let user = data
        .users
        .get(id)
        .filter(|user| user.org_id == caller.context_org);
    let (total, page) = match user {
        Some(user) => request.apply(&user.metadata),
        None => (0, Vec::new()),
    };
    let response = wire::ListResponse {
        details: wire::ListDetails {
            total_result: total,
            processed_sequence: data.events.processed_sequence,
            view_timestamp: wire::rfc3339(wire::now()),
        },
        result: page
            .into_iter()
            .map(|(key, entry)| wire::Metadata::new(key, entry, &caller.context_org))
            .collect(),
    };
    Ok(errors::json(StatusCode::OK, &response))
}

fn get(shared: &Shared, headers: &HeaderMap, id: &str, key: &str) -> Reply {
    let data = shared.read();
    let caller = manager(shared, &data, headers)?;
    wire::check_runes(id, "GetUserMetadataRequest.Id")?;
    wire::check_runes(key, "GetUserMetadataRequest.Key")?;
    let entry = data
        .users
        .get(id)
        .filter(|user| user.org_id == caller.context_org)
        .and_then(|user| user.metadata.get(key))
        .ok_or_else(errors::metadata_not_found_query)?;
    let response = wire::GetResponse {
        metadata: wire::Metadata::new(key, entry, &caller.context_org),
    };
    Ok(errors::json(StatusCode::OK, &response))
}

fn set(shared: &Shared, headers: &HeaderMap, id: &str, key: &str, body: &[u8]) -> Reply {
    let value = wire::decode_set(body)?;
    let mut guard = shared.write();
    let data = &mut *guard;
    let caller = manager(shared, data, headers)?;
    wire::check_runes(id, "SetUserMetadataRequest.Id")?;
    wire::check_runes(key, "SetUserMetadataRequest.Key")?;
    wire::check_value(&value, "SetUserMetadataRequest.Value")?;
    let user = target_user(&mut data.users, id, &caller.context_org)?;
    // Setting the stored value pushes no event; ZITADEL answers with the current details.
    if let Some(entry) = user.metadata.get(key).filter(|entry| entry.value == value) {
        let response =
            wire::WriteResponse::new(entry.sequence, entry.change_date, &caller.context_org);
        return Ok(errors::json(StatusCode::OK, &response));
    }
    let now = wire::now();
    let sequence = user.set_metadata(key, value, now, &mut data.events);
    Ok(errors::json(
        StatusCode::OK,
        &wire::WriteResponse::new(sequence, now, &caller.context_org),
    ))
}

fn bulk_set(shared: &Shared, headers: &HeaderMap, id: &str, body: &[u8]) -> Reply {
    let metadata = wire::decode_bulk_set(body)?;
    let mut guard = shared.write();
    let data = &mut *guard;
    let caller = manager(shared, data, headers)?;
    wire::check_runes(id, "BulkSetUserMetadataRequest.Id")?;
    for (i, (key, value)) in metadata.iter().enumerate() {
        let cause = wire::rune_error(key, "BulkSetUserMetadataRequest_Metadata.Key")
            .or_else(|| wire::value_error(value, "BulkSetUserMetadataRequest_Metadata.Value"));
        if let Some(cause) = cause {
            return Err(errors::invalid_argument(&format!(
                "invalid BulkSetUserMetadataRequest.Metadata[{i}]: embedded message failed validation | caused by: {cause}"
            )));
        }
    }
    if metadata.is_empty() {
        return Err(errors::metadata_no_data());
    }
    let user = target_user(&mut data.users, id, &caller.context_org)?;
    let now = wire::now();
    // Unlike Set, the bulk command pushes an event for every entry, changed or not.
    let mut sequence = user.sequence;
    for (key, value) in metadata {
        sequence = user.set_metadata(&key, value, now, &mut data.events);
    }
    Ok(errors::json(
        StatusCode::OK,
        &wire::WriteResponse::new(sequence, now, &caller.context_org),
    ))
}

fn remove(shared: &Shared, headers: &HeaderMap, id: &str, key: &str) -> Reply {
    let mut guard = shared.write();
    let data = &mut *guard;
    let caller = manager(shared, data, headers)?;
    wire::check_runes(id, "RemoveUserMetadataRequest.Id")?;
    wire::check_runes(key, "RemoveUserMetadataRequest.Key")?;
    let user = target_user(&mut data.users, id, &caller.context_org)?;
    if !user.metadata.contains_key(key) {
        return Err(errors::metadata_not_found_command());
    }
    let sequence = user.remove_metadata(key, &mut data.events);
    Ok(errors::json(
        StatusCode::OK,
        &wire::WriteResponse::new(sequence, wire::now(), &caller.context_org),
    ))
}

fn bulk_remove(shared: &Shared, headers: &HeaderMap, id: &str, body: &[u8]) -> Reply {
    let keys = wire::decode_bulk_remove(body)?;
    let mut guard = shared.write();
    let data = &mut *guard;
    let caller = manager(shared, data, headers)?;
    wire::check_runes(id, "BulkRemoveUserMetadataRequest.Id")?;
    for (i, key) in keys.iter().enumerate() {
        wire::check_runes(key, &format!("BulkRemoveUserMetadataRequest.Keys[{i}]"))?;
    }
    if keys.is_empty() {
        return Err(errors::metadata_no_data());
    }
    let user = target_user(&mut data.users, id, &caller.context_org)?;
    // All or nothing: one unknown key fails the whole request before anything is removed.
    if keys.iter().any(|key| !user.metadata.contains_key(key)) {
        return Err(errors::keys_not_existing());
    }
    let mut sequence = user.sequence;
    for key in &keys {
        sequence = user.remove_metadata(key, &mut data.events);
    }
    Ok(errors::json(
        StatusCode::OK,
        &wire::WriteResponse::new(sequence, wire::now(), &caller.context_org),
    ))
}
