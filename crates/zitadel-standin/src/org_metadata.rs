//! Organisation metadata, as ZITADEL serves it:
//!
//! - Management API v1 (`/management/v1/metadata/{key}`, `…/_search`, `…/_bulk`), acting on the context
//!   organisation (`x-zitadel-orgid`, else the caller's own); `org.read` / `org.write`, which a manager role
//!   grants in its own organisation (ORG_OWNER) or everywhere (IAM_OWNER). A header naming an unknown
//!   organisation is `AUTH-Bs7Ds` (403), checked before anything else, as for users.
//! - `zitadel.org.v2.OrganizationService` (ZITADEL 4.7+): `SetOrganizationMetadata`, `ListOrganizationMetadata`,
//!   `DeleteOrganizationMetadata` over Connect (and `ListOrganizations` by id, older than the metadata RPCs),
//!   plus the REST twins `POST /v2/organizations/{organization_id}/metadata`, `POST …/metadata/search` and
//!   `DELETE …/metadata?keys=…`. The permission is checked in the named organisation; a caller with no
//!   membership there is told "membership not found" (`AUTHZ-cdgFk`), as the v2 user service does. The
//!   commands refuse an organisation that does not exist (`COMMAND-QXPGs`, not found); the listing, a query,
//!   has no rows for one. [`Apis::org_v2_metadata`](super::Apis) off plays ZITADEL 4.0 to 4.6: the metadata
//!   procedures are unknown to connect-go (404) and their REST paths to grpc-gateway (404).

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use serde_json::{Map, Value, json};

use super::caller;
use super::errors::{self, Code, Failure};
use super::state::{Data, Entry, Shared, User};
use super::user_v2::{self, json, metadata::KeyFilter};
use super::{ManagerRole, wire};

type Reply = Result<Response, errors::Reject>;

// ---------------------------------------------------------------------------------------------------------
// v1 management

/// `/management/v1/metadata/{key}`, where `{key}` may be `_search` or `_bulk`.
pub(super) async fn v1_dispatch(
    State(shared): State<Arc<Shared>>,
    method: Method,
    params: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !shared.read().apis.management_v1 {
        return errors::gateway_not_found();
    }
    let Ok(Path(key)) = params else {
        return *errors::invalid_argument("type mismatch, parameter: key");
    };
    let result = match (&method, key.as_str()) {
        (&Method::POST, "_search") => v1_list(&shared, &headers, &body),
        (&Method::POST, "_bulk") => v1_bulk_set(&shared, &headers, &body),
        (&Method::DELETE, "_bulk") => v1_bulk_remove(&shared, &headers, &body),
        (&Method::POST, _) => v1_set(&shared, &headers, &key, &body),
        (&Method::DELETE, _) => v1_remove(&shared, &headers, &key),
        _ => Err(errors::method_not_allowed()),
    };
    result.unwrap_or_else(|error| *error)
}

/// The context organisation of a manager allowed there.
fn v1_manager(shared: &Shared, data: &Data, headers: &HeaderMap) -> Result<String, errors::Reject> {
    let caller = caller::authenticate(shared, data, headers)?;
    caller.require_manager()?;
    Ok(caller.context_org)
}

fn v1_list(shared: &Shared, headers: &HeaderMap, body: &[u8]) -> Reply {
    let request = wire::decode_list(body)?;
    let data = shared.read();
    let org_id = v1_manager(shared, &data, headers)?;
    request.validate("ListOrgMetadataRequest")?;
    let org = data.orgs.get(&org_id).ok_or_else(errors::org_not_found)?;
    let (total, page) = request.apply(&org.metadata);
    let response = wire::ListResponse {
        details: wire::ListDetails {
            total_result: total,
            processed_sequence: data.events.processed_sequence,
            view_timestamp: wire::rfc3339(wire::now()),
        },
        result: page
            .into_iter()
            .map(|(key, entry)| wire::Metadata::new(key, entry, &org_id))
            .collect(),
    };
    Ok(errors::json(StatusCode::OK, &response))
}

fn v1_set(shared: &Shared, headers: &HeaderMap, key: &str, body: &[u8]) -> Reply {
    let value = wire::decode_set(body)?;
    let mut guard = shared.write();
    let data = &mut *guard;
    let org_id = v1_manager(shared, data, headers)?;
    wire::check_runes(key, "SetOrgMetadataRequest.Key")?;
    wire::check_value(&value, "SetOrgMetadataRequest.Value")?;
    let org = data
        .orgs
        .get_mut(&org_id)
        .ok_or_else(errors::org_not_found)?;
    // Setting the stored value pushes no event; ZITADEL answers with the current details.
    if let Some(entry) = org.metadata.get(key).filter(|entry| entry.value == value) {
        let response = wire::WriteResponse::new(entry.sequence, entry.change_date, &org_id);
        return Ok(errors::json(StatusCode::OK, &response));
    }
    let now = wire::now();
    let sequence = org.set_metadata(key, value, now, &mut data.events);
    Ok(errors::json(
        StatusCode::OK,
        &wire::WriteResponse::new(sequence, now, &org_id),
    ))
}

fn v1_bulk_set(shared: &Shared, headers: &HeaderMap, body: &[u8]) -> Reply {
    let metadata = wire::decode_bulk_set(body)?;
    let mut guard = shared.write();
    let data = &mut *guard;
    let org_id = v1_manager(shared, data, headers)?;
    for (i, (key, value)) in metadata.iter().enumerate() {
        let cause = wire::rune_error(key, "BulkSetOrgMetadataRequest_Metadata.Key")
            .or_else(|| wire::value_error(value, "BulkSetOrgMetadataRequest_Metadata.Value"));
        if let Some(cause) = cause {
            return Err(errors::invalid_argument(&format!(
                "invalid BulkSetOrgMetadataRequest.Metadata[{i}]: embedded message failed validation | caused by: {cause}"
            )));
        }
    }
    if metadata.is_empty() {
        return Err(errors::metadata_no_data());
    }
    let org = data
        .orgs
        .get_mut(&org_id)
        .ok_or_else(errors::org_not_found)?;
    let now = wire::now();
    let mut sequence = org.sequence;
    for (key, value) in metadata {
        sequence = org.set_metadata(&key, value, now, &mut data.events);
    }
    Ok(errors::json(
        StatusCode::OK,
        &wire::WriteResponse::new(sequence, now, &org_id),
    ))
}

fn v1_remove(shared: &Shared, headers: &HeaderMap, key: &str) -> Reply {
    let mut guard = shared.write();
    let data = &mut *guard;
    let org_id = v1_manager(shared, data, headers)?;
    wire::check_runes(key, "RemoveOrgMetadataRequest.Key")?;
    let org = data
        .orgs
        .get_mut(&org_id)
        .ok_or_else(errors::org_not_found)?;
    if !org.metadata.contains_key(key) {
        return Err(errors::metadata_not_found_command());
    }
    let sequence = org.remove_metadata(key, &mut data.events);
    Ok(errors::json(
        StatusCode::OK,
        &wire::WriteResponse::new(sequence, wire::now(), &org_id),
    ))
}

fn v1_bulk_remove(shared: &Shared, headers: &HeaderMap, body: &[u8]) -> Reply {
    let keys = wire::decode_bulk_remove(body)?;
    let mut guard = shared.write();
    let data = &mut *guard;
    let org_id = v1_manager(shared, data, headers)?;
    for (i, key) in keys.iter().enumerate() {
        wire::check_runes(key, &format!("BulkRemoveOrgMetadataRequest.Keys[{i}]"))?;
    }
    if keys.is_empty() {
        return Err(errors::metadata_no_data());
    }
    let org = data
        .orgs
        .get_mut(&org_id)
        .ok_or_else(errors::org_not_found)?;
    if keys.iter().any(|key| !org.metadata.contains_key(key)) {
        return Err(errors::keys_not_existing());
    }
    let mut sequence = org.sequence;
    for key in &keys {
        sequence = org.remove_metadata(key, &mut data.events);
    }
    Ok(errors::json(
        StatusCode::OK,
        &wire::WriteResponse::new(sequence, wire::now(), &org_id),
    ))
}

// ---------------------------------------------------------------------------------------------------------
// v2 organisation service

type Outcome = Result<Value, Failure>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rpc {
    SetOrganizationMetadata,
    ListOrganizationMetadata,
    DeleteOrganizationMetadata,
    ListOrganizations,
}

impl Rpc {
    fn from_procedure(name: &str) -> Option<Rpc> {
        Some(match name {
            "SetOrganizationMetadata" => Rpc::SetOrganizationMetadata,
            "ListOrganizationMetadata" => Rpc::ListOrganizationMetadata,
            "DeleteOrganizationMetadata" => Rpc::DeleteOrganizationMetadata,
            "ListOrganizations" => Rpc::ListOrganizations,
            _ => return None,
        })
    }

    /// Whether the RPC exists only from ZITADEL 4.7 on.
    fn is_metadata(self) -> bool {
        self != Rpc::ListOrganizations
    }

    fn call(self, shared: &Shared, headers: &HeaderMap, request: &Map<String, Value>) -> Outcome {
        match self {
            Rpc::SetOrganizationMetadata => v2_set(shared, headers, request),
            Rpc::ListOrganizationMetadata => v2_list(shared, headers, request),
            Rpc::DeleteOrganizationMetadata => v2_delete(shared, headers, request),
            Rpc::ListOrganizations => v2_list_orgs(shared, headers, request),
        }
    }
}

/// `POST /zitadel.org.v2.OrganizationService/{procedure}` with `Content-Type: application/json`.
pub(super) async fn v2_connect(
    State(shared): State<Arc<Shared>>,
    method: Method,
    procedure: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let metadata_on = shared.read().apis.org_v2_metadata;
    let rpc = procedure
        .ok()
        .and_then(|Path(name)| Rpc::from_procedure(&name))
        .filter(|rpc| metadata_on || !rpc.is_metadata());
    let Some(rpc) = rpc else {
        return user_v2::connect_unknown_procedure();
    };
    if method != Method::POST {
        return user_v2::status_only(StatusCode::METHOD_NOT_ALLOWED);
    }
    if !user_v2::is_json(&headers) {
        return user_v2::status_only(StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
    match json::object(&body).and_then(|request| rpc.call(&shared, &headers, &request)) {
        Ok(answer) => errors::json(StatusCode::OK, &answer),
        Err(failure) => failure.to_connect(),
    }
}

/// `POST /v2/organizations/{organization_id}/metadata` (Set) and `DELETE …/metadata?keys=…` (Delete).
pub(super) async fn v2_rest_metadata(
    State(shared): State<Arc<Shared>>,
    method: Method,
    params: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !shared.read().apis.org_v2_metadata {
        return errors::gateway_not_found();
    }
    let request = match method {
        Method::POST => {
            with_org_id(&body, params).map(|request| (Rpc::SetOrganizationMetadata, request))
        }
        Method::DELETE => with_org_id(b"", params).map(|mut request| {
            let keys: Vec<Value> =
                url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
                    .filter(|(name, _)| name == "keys")
                    .map(|(_, value)| Value::String(value.into_owned()))
                    .collect();
            request.insert("keys".into(), Value::Array(keys));
            (Rpc::DeleteOrganizationMetadata, request)
        }),
        _ => return *errors::method_not_allowed(),
    };
    rest_answer(&shared, &headers, request)
}

/// `POST /v2/organizations/{organization_id}/metadata/search`: ListOrganizationMetadata.
pub(super) async fn v2_rest_list_metadata(
    State(shared): State<Arc<Shared>>,
    method: Method,
    params: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !shared.read().apis.org_v2_metadata {
        return errors::gateway_not_found();
    }
    if method != Method::POST {
        return *errors::method_not_allowed();
    }
    let request =
        with_org_id(&body, params).map(|request| (Rpc::ListOrganizationMetadata, request));
    rest_answer(&shared, &headers, request)
}

fn rest_answer(
    shared: &Shared,
    headers: &HeaderMap,
    request: Result<(Rpc, Map<String, Value>), Failure>,
) -> Response {
    match request.and_then(|(rpc, request)| rpc.call(shared, headers, &request)) {
        Ok(answer) => errors::json(StatusCode::OK, &answer),
        Err(failure) => failure.to_gateway(),
    }
}

/// The body with the path's `organization_id` bound into it (the path wins, as in grpc-gateway).
fn with_org_id(
    body: &[u8],
    params: Result<Path<String>, PathRejection>,
) -> Result<Map<String, Value>, Failure> {
    let Path(org_id) = params.map_err(|_| {
        Failure::plain(
            Code::InvalidArgument,
            "type mismatch, parameter: organization_id",
        )
    })?;
    let mut request = json::object(body)?;
    request.remove("organization_id");
    request.insert("organizationId".into(), Value::String(org_id));
    Ok(request)
}

/// Whether the caller holds `org.read` / `org.write` in `org_id`: IAM_OWNER everywhere, ORG_OWNER in its own
/// organisation; otherwise "membership not found", as `authz.CheckPermission` answers.
fn require_org_permission(caller: &User, org_id: &str) -> Result<(), Failure> {
    let allowed = match caller.role() {
        ManagerRole::IamOwner => true,
        ManagerRole::OrgOwner => caller.org_id == org_id,
        ManagerRole::None => false,
    };
    if allowed {
        Ok(())
    } else {
        Err(user_v2::membership_not_found())
    }
}

/// `Errors.Org.NotFound` from the commands' organisation check.
fn org_not_found() -> Failure {
    Failure::zitadel(Code::NotFound, "COMMAND-QXPGs", "Organisation not found")
}

fn no_data() -> Failure {
    Failure::zitadel(
        Code::FailedPrecondition,
        "META-9mm2d",
        "Metadata list is empty",
    )
}

fn org_id_of(request: &Map<String, Value>, message: &str) -> Result<String, Failure> {
    let org_id = json::string(
        json::field(request, "organizationId", "organization_id"),
        "organization_id",
    )?;
    user_v2::check_runes(&org_id, &format!("{message}.OrganizationId"))?;
    Ok(org_id)
}

/// `SetOrganizationMetadata`: `{"organizationId","metadata":[{"key","value"}]}` → `{"setDate"}`.
fn v2_set(shared: &Shared, headers: &HeaderMap, request: &Map<String, Value>) -> Outcome {
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
    let caller = user_v2::authenticate(shared, data, headers)?;
    let org_id = org_id_of(request, "SetOrganizationMetadataRequest")?;
    for (i, (key, value)) in entries.iter().enumerate() {
        let cause = wire::rune_error(key, "Metadata.Key")
            .or_else(|| wire::value_error(value, "Metadata.Value"));
        if let Some(cause) = cause {
            return Err(Failure::plain(
                Code::InvalidArgument,
                format!(
                    "invalid SetOrganizationMetadataRequest.Metadata[{i}]: embedded message failed validation | caused by: {cause}"
                ),
            ));
        }
    }
    require_org_permission(caller, &org_id)?;
    if entries.is_empty() {
        return Err(no_data());
    }
    let org = data.orgs.get_mut(&org_id).ok_or_else(org_not_found)?;
    let now = wire::now();
    let mut changed = false;
    for (key, value) in entries {
        if org
            .metadata
            .get(&key)
            .is_some_and(|entry| entry.value == value)
        {
            continue;
        }
        org.set_metadata(&key, value, now, &mut data.events);
        changed = true;
    }
    let date = if changed { now } else { org.changed };
    Ok(json!({ "setDate": wire::rfc3339(date) }))
}

/// `DeleteOrganizationMetadata`: `{"organizationId","keys":[…]}` → `{"deletionDate"}`; all or nothing.
fn v2_delete(shared: &Shared, headers: &HeaderMap, request: &Map<String, Value>) -> Outcome {
    let keys = json::strings(json::field(request, "keys", "keys"), "keys")?;
    let mut guard = shared.write();
    let data = &mut *guard;
    let caller = user_v2::authenticate(shared, data, headers)?;
    let org_id = org_id_of(request, "DeleteOrganizationMetadataRequest")?;
    for (i, key) in keys.iter().enumerate() {
        user_v2::check_runes(key, &format!("DeleteOrganizationMetadataRequest.Keys[{i}]"))?;
    }
    require_org_permission(caller, &org_id)?;
    if keys.is_empty() {
        return Err(no_data());
    }
    let org = data.orgs.get_mut(&org_id).ok_or_else(org_not_found)?;
    if keys.iter().any(|key| !org.metadata.contains_key(key)) {
        return Err(Failure::zitadel(
            Code::NotFound,
            "META-2nnds",
            "One or more keys do not exist",
        ));
    }
    for key in &keys {
        org.remove_metadata(key, &mut data.events);
    }
    Ok(json!({ "deletionDate": wire::rfc3339(org.changed) }))
}

/// `ListOrganizationMetadata`: `{"organizationId","pagination","filters":[{"keyFilter"}]}` →
/// `{"pagination":{"totalResult","appliedLimit"},"metadata":[…]}`, oldest first unless `asc` is false.
fn v2_list(shared: &Shared, headers: &HeaderMap, request: &Map<String, Value>) -> Outcome {
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
    let caller = user_v2::authenticate(shared, &data, headers)?;
    let org_id = org_id_of(request, "ListOrganizationMetadataRequest")?;
    for (i, filter) in filters.iter().enumerate() {
        if let Some(filter) = filter {
            filter.validate(&format!(
                "invalid ListOrganizationMetadataRequest.Filters[{i}]: embedded message failed validation | caused by: invalid MetadataSearchFilter.KeyFilter: embedded message failed validation | caused by: "
            ))?;
        }
    }
    require_org_permission(caller, &org_id)?;
    let applied = user_v2::applied_limit(limit)?;
    if filters.iter().any(Option::is_none) {
        return Err(Failure::zitadel(
            Code::InvalidArgument,
            "METAD-fdg23",
            "List.Query.Invalid",
        ));
    }
    let filters: Vec<KeyFilter> = filters.into_iter().flatten().collect();
    // A query: an organisation that does not exist simply has no rows.
    let mut rows: Vec<(&String, &Entry)> = data
        .orgs
        .get(&org_id)
        .map(|org| {
            org.metadata
                .iter()
                .filter(|(key, _)| filters.iter().all(|filter| filter.matches(key)))
                .collect()
        })
        .unwrap_or_default();
    rows.sort_by_key(|(_, entry)| (entry.creation_date, entry.created_sequence));
    if !asc {
        rows.reverse();
    }
    let total = rows.len() as u64;
    let page: Vec<Value> = rows
        .into_iter()
        .skip(usize::try_from(offset).unwrap_or(usize::MAX))
        .take(usize::try_from(applied).unwrap_or(usize::MAX))
        .map(|(key, entry)| {
            // `zitadel.org.v2.Metadata` is `{key, value}`: unlike users' entries, no dates.
            let mut item = Map::new();
            user_v2::put(&mut item, "key", Value::String(key.clone()));
            user_v2::put(
                &mut item,
                "value",
                Value::String(wire::encode_bytes(&entry.value)),
            );
            Value::Object(item)
        })
        .collect();
    let mut pagination = Map::new();
    user_v2::put_u64(&mut pagination, "totalResult", total);
    user_v2::put_u64(&mut pagination, "appliedLimit", applied);
    let mut answer = Map::new();
    answer.insert("pagination".into(), Value::Object(pagination));
    user_v2::put(&mut answer, "metadata", Value::Array(page));
    Ok(Value::Object(answer))
}

/// `ListOrganizations` with `idQuery` members (the only query the stand-in knows): the organisations the caller
/// may read (`org.read`) among those named, as `{"details":{"totalResult"},"result":[{"id","name",…}]}`.
fn v2_list_orgs(shared: &Shared, headers: &HeaderMap, request: &Map<String, Value>) -> Outcome {
    let mut ids = Vec::new();
    for query in json::messages(json::field(request, "queries", "queries"), "queries")? {
        let Some(query) = query else { continue };
        if let Some(id_query) = json::message(json::field(query, "idQuery", "id_query"), "idQuery")?
        {
            ids.push(json::string(json::field(id_query, "id", "id"), "id")?);
        }
    }
    let data = shared.read();
    let caller = user_v2::authenticate(shared, &data, headers)?;
    let result: Vec<Value> = data
        .orgs
        .values()
        .filter(|org| ids.is_empty() || ids.contains(&org.id))
        .filter(|org| require_org_permission(caller, &org.id).is_ok())
        .map(|org| {
            json!({
                "id": org.id,
                "name": org.name,
                "primaryDomain": org.primary_domain,
                "state": "ORGANIZATION_STATE_ACTIVE",
            })
        })
        .collect();
    let mut details = Map::new();
    user_v2::put_u64(&mut details, "totalResult", result.len() as u64);
    let mut answer = Map::new();
    answer.insert("details".into(), Value::Object(details));
    user_v2::put(&mut answer, "result", Value::Array(result));
    Ok(Value::Object(answer))
}
