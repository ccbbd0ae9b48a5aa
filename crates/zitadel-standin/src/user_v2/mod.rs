//! `zitadel.user.v2.UserService` (ZITADEL v4): the metadata RPCs (`SetUserMetadata`, `ListUserMetadata`,
//! `DeleteUserMetadata`), `GetUserByID` and `ListUsers`, over both transports ZITADEL serves them on:
//!
//! - Connect unary with JSON (`POST /zitadel.user.v2.UserService/<Procedure>`, what the official SDKs call):
//!   errors are Connect bodies `{"code":"not_found","message":…,"details":[{"type","value"}]}` with
//!   Connect's HTTP status;
//! - the REST twins through grpc-gateway (`/v2/users/...`): errors are `google.rpc.Status` bodies with numeric
//!   codes, as in v1.
//!
//! Checks run in ZITADEL's order: decoding (400), the token (401), the RPC's auth option in the caller's own
//! organisation (`user.read`/`user.write`; no `x-zitadel-orgid` in v2), protoc-gen-validate (400), then the
//! command or query, which checks the permission again in the target user's real organisation. A caller
//! without any membership there gets `not_found` "membership not found (AUTHZ-cdgFk)" from
//! `authz.CheckPermission`; reads the caller may not make are dropped from search results instead.

pub(super) mod json;
pub(super) mod metadata;
mod users;

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde_json::{Map, Value};

use super::errors::{self, Code, Failure};
use super::state::{Data, Shared, User};
use super::{ManagerRole, caller};

/// What an RPC answers before the transport writes it.
type Outcome = Result<Value, Failure>;

/// The RPCs served, by Connect procedure name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rpc {
    SetUserMetadata,
    ListUserMetadata,
    DeleteUserMetadata,
    GetUserById,
    ListUsers,
}

impl Rpc {
    fn from_procedure(name: &str) -> Option<Rpc> {
        Some(match name {
            "SetUserMetadata" => Rpc::SetUserMetadata,
            "ListUserMetadata" => Rpc::ListUserMetadata,
            "DeleteUserMetadata" => Rpc::DeleteUserMetadata,
            "GetUserByID" => Rpc::GetUserById,
            "ListUsers" => Rpc::ListUsers,
            _ => return None,
        })
    }

    /// The request message's Go type, as connect-go names it in decoding errors.
    fn request_type(self) -> &'static str {
        match self {
            Rpc::SetUserMetadata => "*user.SetUserMetadataRequest",
            Rpc::ListUserMetadata => "*user.ListUserMetadataRequest",
            Rpc::DeleteUserMetadata => "*user.DeleteUserMetadataRequest",
            Rpc::GetUserById => "*user.GetUserByIDRequest",
            Rpc::ListUsers => "*user.ListUsersRequest",
        }
    }

    /// Whether the RPC exists only from ZITADEL 4.0 on (the metadata RPCs).
    fn is_metadata(self) -> bool {
        matches!(
            self,
            Rpc::SetUserMetadata | Rpc::ListUserMetadata | Rpc::DeleteUserMetadata
        )
    }

    fn call(self, shared: &Shared, headers: &HeaderMap, request: &Map<String, Value>) -> Outcome {
        match self {
            Rpc::SetUserMetadata => metadata::set(shared, headers, request),
            Rpc::ListUserMetadata => metadata::list(shared, headers, request),
            Rpc::DeleteUserMetadata => metadata::delete(shared, headers, request),
            Rpc::GetUserById => users::get(shared, headers, request),
            Rpc::ListUsers => users::list(shared, headers, request),
        }
    }
}

// ---------------------------------------------------------------------------------------------------------
// Connect

/// `POST /zitadel.user.v2.UserService/{procedure}` with `Content-Type: application/json`.
pub(super) async fn connect(
    State(shared): State<Arc<Shared>>,
    method: Method,
    procedure: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let metadata_on = shared.read().apis.user_v2_metadata;
    let rpc = procedure
        .ok()
        .and_then(|Path(name)| Rpc::from_procedure(&name))
        .filter(|rpc| metadata_on || !rpc.is_metadata());
    // The generated connect-go handler answers `http.NotFound` for a procedure the service does not have.
    let Some(rpc) = rpc else {
        return connect_unknown_procedure();
    };
    if method != Method::POST {
        let mut response = status_only(StatusCode::METHOD_NOT_ALLOWED);
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return response;
    }
    if !is_json(&headers) {
        let mut response = status_only(StatusCode::UNSUPPORTED_MEDIA_TYPE);
        response
            .headers_mut()
            .insert("accept-post", HeaderValue::from_static("application/json"));
        return response;
    }
    let outcome = json::object(&body).and_then(|request| rpc.call(&shared, &headers, &request));
    // connect-go reports decoding errors of its JSON codec with the message type in front.
    let outcome = outcome.map_err(|failure| {
        if failure.message.starts_with("proto: ") {
            Failure::plain(
                failure.code,
                format!("unmarshal into {}: {}", rpc.request_type(), failure.message),
            )
        } else {
            failure
        }
    });
    match outcome {
        Ok(answer) => errors::json(StatusCode::OK, &answer),
        Err(failure) => failure.to_connect(),
    }
}

/// Whether the request's media type is JSON (parameters such as `charset` allowed).
pub(super) fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

pub(super) fn status_only(status: StatusCode) -> Response {
    let mut response = Response::new(axum::body::Body::empty());
    *response.status_mut() = status;
    response
}

/// Go's `http.NotFound`: `404`, `text/plain; charset=utf-8`, `404 page not found`.
pub(super) fn connect_unknown_procedure() -> Response {
    let mut response = Response::new(axum::body::Body::from("404 page not found\n"));
    *response.status_mut() = StatusCode::NOT_FOUND;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response.headers_mut().insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    response
}

// ---------------------------------------------------------------------------------------------------------
// REST (grpc-gateway)

fn rest(
    shared: &Shared,
    rpc: Rpc,
    headers: &HeaderMap,
    request: Result<Map<String, Value>, Failure>,
) -> Response {
    if rpc.is_metadata() && !shared.read().apis.user_v2_metadata {
        return errors::gateway_not_found();
    }
    match request.and_then(|request| rpc.call(shared, headers, &request)) {
        Ok(answer) => errors::json(StatusCode::OK, &answer),
        Err(failure) => failure.to_gateway(),
    }
}

/// The body with the path's `user_id` bound into it (the path wins, as in grpc-gateway).
fn with_user_id(body: &[u8], user_id: String) -> Result<Map<String, Value>, Failure> {
    let mut request = json::object(body)?;
    request.remove("user_id");
    request.insert("userId".into(), Value::String(user_id));
    Ok(request)
}

fn path_user_id(params: Result<Path<String>, PathRejection>) -> Result<String, Failure> {
    params
        .map(|Path(id)| id)
        .map_err(|_| Failure::plain(Code::InvalidArgument, "type mismatch, parameter: user_id"))
}

/// `POST /v2/users`: ListUsers.
pub(super) async fn rest_list_users(
    State(shared): State<Arc<Shared>>,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if method != Method::POST {
        return *errors::method_not_allowed();
    }
    rest(&shared, Rpc::ListUsers, &headers, json::object(&body))
}

/// `GET /v2/users/{user_id}`: GetUserByID.
pub(super) async fn rest_get_user(
    State(shared): State<Arc<Shared>>,
    method: Method,
    params: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Response {
    if method != Method::GET {
        return *errors::method_not_allowed();
    }
    let request = path_user_id(params).and_then(|id| with_user_id(b"", id));
    rest(&shared, Rpc::GetUserById, &headers, request)
}

/// `POST /v2/users/{user_id}/metadata` (Set) and `DELETE /v2/users/{user_id}/metadata?keys=…` (Delete).
pub(super) async fn rest_metadata(
    State(shared): State<Arc<Shared>>,
    method: Method,
    params: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match method {
        Method::POST => {
            let request = path_user_id(params).and_then(|id| with_user_id(&body, id));
            rest(&shared, Rpc::SetUserMetadata, &headers, request)
        }
        Method::DELETE => {
            // No body binding: the keys come from the query string (`keys=a&keys=b`).
            let request = path_user_id(params)
                .and_then(|id| with_user_id(b"", id))
                .map(|mut request| {
                    let keys: Vec<Value> =
                        url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
                            .filter(|(name, _)| name == "keys")
                            .map(|(_, value)| Value::String(value.into_owned()))
                            .collect();
                    request.insert("keys".into(), Value::Array(keys));
                    request
                });
            rest(&shared, Rpc::DeleteUserMetadata, &headers, request)
        }
        _ => {
            if !shared.read().apis.user_v2_metadata {
                return errors::gateway_not_found();
            }
            *errors::method_not_allowed()
        }
    }
}

/// `POST /v2/users/{user_id}/metadata/search`: ListUserMetadata.
pub(super) async fn rest_list_metadata(
    State(shared): State<Arc<Shared>>,
    method: Method,
    params: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if method != Method::POST {
        if !shared.read().apis.user_v2_metadata {
            return errors::gateway_not_found();
        }
        return *errors::method_not_allowed();
    }
    let request = path_user_id(params).and_then(|id| with_user_id(&body, id));
    rest(&shared, Rpc::ListUserMetadata, &headers, request)
}

// ---------------------------------------------------------------------------------------------------------
// who may do what

/// The authenticated caller (token checks as in v1: header, validity, the ZITADEL audience unless a PAT).
pub(super) fn authenticate<'a>(
    shared: &Shared,
    data: &'a Data,
    headers: &HeaderMap,
) -> Result<&'a User, Failure> {
    caller::identify(shared, data, headers).map_err(caller::Refusal::failure)
}

/// `authz.CheckPermission` when the caller has no membership that could grant the permission.
pub(super) fn membership_not_found() -> Failure {
    Failure::zitadel(Code::NotFound, "AUTHZ-cdgFk", "membership not found")
}

/// The RPC's auth option (`user.read` or `user.write`), checked by the interceptor in the caller's own
/// organisation: every manager role grants both there; no role means no membership at all.
fn auth_option(caller: &User) -> Result<(), Failure> {
    match caller.role() {
        ManagerRole::IamOwner | ManagerRole::OrgOwner => Ok(()),
        ManagerRole::None => Err(membership_not_found()),
    }
}

/// Whether the caller holds `user.read`/`user.write` in the target user's organisation (no self-management).
fn may_manage(caller: &User, target: &User) -> bool {
    match caller.role() {
        ManagerRole::IamOwner => true,
        ManagerRole::OrgOwner => caller.org_id == target.org_id,
        ManagerRole::None => false,
    }
}

/// Whether the caller may read the target user (`userCheckPermission`: oneself always, others with
/// `user.read` in their organisation).
fn may_read(caller: &User, target: &User) -> bool {
    caller.id == target.id || may_manage(caller, target)
}

/// protoc-gen-validate's rune-length rule of `<message>.<field>` (1 to 200 runes).
pub(super) fn check_runes(text: &str, message_field: &str) -> Result<(), Failure> {
    match super::wire::rune_error(text, message_field) {
        Some(message) => Err(Failure::plain(Code::InvalidArgument, message)),
        None => Ok(()),
    }
}

/// The list limit ZITADEL applies when the request gives none (`DefaultQueryLimit`).
const DEFAULT_LIMIT: u64 = 100;
/// The largest limit ZITADEL accepts (`MaxQueryLimit`); above it the request is refused, not clamped.
const MAX_LIMIT: u64 = 1000;

/// `filter.PaginationPbToQuery` / `object.ListQueryToQuery`: the applied limit, or `QUERY-4M0fs`.
pub(super) fn applied_limit(limit: u64) -> Result<u64, Failure> {
    if limit > MAX_LIMIT {
        return Err(Failure::zitadel(
            Code::InvalidArgument,
            "QUERY-4M0fs",
            "Limit exceeded",
        ));
    }
    Ok(if limit == 0 { DEFAULT_LIMIT } else { limit })
}

/// A uint64 field as proto3 JSON writes it (a string), omitted when zero.
pub(super) fn put_u64(map: &mut Map<String, Value>, name: &str, value: u64) {
    if value != 0 {
        map.insert(name.to_owned(), Value::String(value.to_string()));
    }
}

/// Inserts `value` unless it is the field's default (proto3 JSON with `EmitUnpopulated=false`).
pub(super) fn put(map: &mut Map<String, Value>, name: &str, value: Value) {
    let default = match &value {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_u64() == Some(0),
        Value::Object(_) => false,
    };
    if !default {
        map.insert(name.to_owned(), value);
    }
}
