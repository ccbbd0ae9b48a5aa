//! Auth API v1: the caller's own metadata (`ListMyMetadata`, `GetMyMetadata`).

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};

use super::state::Shared;
use super::{caller, errors, wire};

/// `/auth/v1/users/me/metadata/{key}`: `POST _search` lists, `GET {key}` gets.
pub(super) async fn dispatch(
    State(shared): State<Arc<Shared>>,
    method: Method,
    key: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(Path(key)) = key else {
        return *errors::invalid_argument("type mismatch, parameter: key");
    };
    let result = match (&method, key.as_str()) {
        (&Method::POST, "_search") => list(&shared, &headers, &body),
        (&Method::GET, _) => get(&shared, &headers, &key),
        _ => Err(errors::method_not_allowed()),
    };
    result.unwrap_or_else(|error| *error)
}

fn list(shared: &Shared, headers: &HeaderMap, body: &[u8]) -> Result<Response, errors::Reject> {
    let request = wire::decode_list(body)?;
    let data = shared.read();
    let caller = caller::authenticate(shared, &data, headers)?;
    request.validate("ListMyMetadataRequest")?;
    let user = data
        .users
        .get(&caller.user_id)
        .ok_or_else(errors::token_invalid)?;
    let (total, page) = request.apply(&user.metadata);
    let response = wire::ListResponse {
        details: wire::ListDetails {
            total_result: total,
            processed_sequence: data.events.processed_sequence,
            view_timestamp: wire::rfc3339(wire::now()),
        },
        result: page
            .into_iter()
            .map(|(key, entry)| wire::Metadata::new(key, entry, &user.org_id))
            .collect(),
    };
    Ok(errors::json(StatusCode::OK, &response))
}

fn get(shared: &Shared, headers: &HeaderMap, key: &str) -> Result<Response, errors::Reject> {
    let data = shared.read();
    let caller = caller::authenticate(shared, &data, headers)?;
    wire::check_runes(key, "GetMyMetadataRequest.Key")?;
    let user = data
        .users
        .get(&caller.user_id)
        .ok_or_else(errors::token_invalid)?;
    let entry = user
        .metadata
        .get(key)
        .ok_or_else(errors::metadata_not_found_query)?;
    let response = wire::GetResponse {
        metadata: wire::Metadata::new(key, entry, &user.org_id),
    };
    Ok(errors::json(StatusCode::OK, &response))
}
