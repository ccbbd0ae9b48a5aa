//! Error answers as ZITADEL writes them: grpc-gateway `google.rpc.Status` bodies for the REST APIs and OAuth
//! `{"error","error_description"}` bodies for the OIDC endpoints.

use axum::response::Response;
use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;

/// An error answer on its way out of a handler (boxed to keep `Result`s small).
pub(super) type Reject = Box<Response>;

/// A JSON answer with the given status.
pub(super) fn json_response(status: StatusCode, body: Bytes) -> Response {
    let mut response = Response::new(axum::body::Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Serializes `value` as a JSON answer.
pub(super) fn json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => json_response(status, Bytes::from(body)),
        Err(_) => gateway_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            13,
            "An internal error occurred",
            None,
        ),
    }
}

#[derive(Serialize)]
struct Status<'a> {
    code: i32,
    message: &'a str,
    // An empty list is omitted, as grpc-gateway does with EmitUnpopulated=false.
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<[ErrorDetail<'a>; 1]>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    #[serde(rename = "@type")]
    type_url: &'static str,
    id: &'a str,
    message: &'a str,
}

/// A grpc-gateway error body; `detail` is the ZITADEL `ErrorDetail` as `(id, message)`.
pub(super) fn gateway_error(
    status: StatusCode,
    code: i32,
    message: &str,
    detail: Option<(&str, &str)>,
) -> Response {
    let body = Status {
        code,
        message,
        details: detail.map(|(id, message)| {
            [ErrorDetail {
                type_url: "type.googleapis.com/zitadel.v1.ErrorDetail",
                id,
                message,
            }]
        }),
    };
    match serde_json::to_vec(&body) {
        Ok(body) => json_response(status, Bytes::from(body)),
        Err(_) => json_response(
            status,
            Bytes::from_static(br#"{"code":13,"message":"internal"}"#),
        ),
    }
}

/// A ZITADEL error (`zerrors`) as the gateway shows it: message `"<text> (<id>)"` plus an `ErrorDetail`.
pub(super) fn zitadel(status: StatusCode, code: i32, id: &str, text: &str) -> Response {
    gateway_error(status, code, &format!("{text} ({id})"), Some((id, text)))
}

/// The gateway's answer for an unknown route.
pub(super) fn gateway_not_found() -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        Bytes::from_static(br#"{"code":5,"message":"Not Found"}"#),
    )
}

/// The gateway's answer when the path exists for other methods only (405 → Unimplemented → 501).
pub(super) fn method_not_allowed() -> Reject {
    Box::new(json_response(
        StatusCode::NOT_IMPLEMENTED,
        Bytes::from_static(br#"{"code":12,"message":"Method Not Allowed"}"#),
    ))
}

/// InvalidArgument without details: request decoding and protoc-gen-validate failures.
pub(super) fn invalid_argument(message: &str) -> Reject {
    Box::new(gateway_error(StatusCode::BAD_REQUEST, 3, message, None))
}

/// No `Authorization` header on an API call.
pub(super) fn auth_header_missing() -> Reject {
    Box::new(gateway_error(
        StatusCode::UNAUTHORIZED,
        16,
        "auth header missing",
        None,
    ))
}

/// An `Authorization` header that is not `Bearer <token>`.
pub(super) fn invalid_auth_header() -> Reject {
    Box::new(zitadel(
        StatusCode::UNAUTHORIZED,
        16,
        "AUTH-7fs1e",
        "invalid auth header",
    ))
}

/// Unknown, expired or revoked token (and, in current ZITADEL, a missing audience).
pub(super) fn token_invalid() -> Reject {
    Box::new(zitadel(
        StatusCode::UNAUTHORIZED,
        16,
        "AUTH-7fs1e",
        "Token is invalid",
    ))
}

/// Missing audience as older ZITADEL versions report it.
pub(super) fn invalid_audience() -> Reject {
    Box::new(zitadel(
        StatusCode::UNAUTHORIZED,
        16,
        "APP-Zxfako",
        "invalid audience",
    ))
}

/// `x-zitadel-orgid` names an organisation that does not exist.
pub(super) fn org_not_found() -> Reject {
    Box::new(zitadel(
        StatusCode::FORBIDDEN,
        7,
        "AUTH-Bs7Ds",
        "Organisation doesn't exist",
    ))
}

/// The caller has no manager role for the context organisation.
pub(super) fn no_permission() -> Reject {
    Box::new(zitadel(
        StatusCode::FORBIDDEN,
        7,
        "AUTH-5mWD2",
        "No matching permissions found",
    ))
}

/// Get of a key that does not exist (or of a user outside the context org).
pub(super) fn metadata_not_found_query() -> Reject {
    Box::new(zitadel(
        StatusCode::NOT_FOUND,
        5,
        "QUERY-Rgh32",
        "Metadata not found",
    ))
}

/// Remove of a key that does not exist.
pub(super) fn metadata_not_found_command() -> Reject {
    Box::new(zitadel(
        StatusCode::NOT_FOUND,
        5,
        "META-ncnw3",
        "Metadata not found",
    ))
}

/// BulkRemove naming a key that does not exist.
pub(super) fn keys_not_existing() -> Reject {
    Box::new(zitadel(
        StatusCode::NOT_FOUND,
        5,
        "META-2nnds",
        "One or more keys do not exist",
    ))
}

/// BulkSet/BulkRemove with an empty list (FailedPrecondition).
pub(super) fn metadata_no_data() -> Reject {
    Box::new(zitadel(
        StatusCode::BAD_REQUEST,
        9,
        "META-9mm2d",
        "Metadata list is empty",
    ))
}

/// A write on a user that is not in the context org or does not exist (FailedPrecondition).
pub(super) fn user_not_found_command() -> Reject {
    Box::new(zitadel(
        StatusCode::BAD_REQUEST,
        9,
        "COMMAND-uXHNj",
        "User could not be found",
    ))
}

/// A list limit above the configured maximum.
pub(super) fn limit_exceeded() -> Reject {
    Box::new(zitadel(
        StatusCode::BAD_REQUEST,
        3,
        "QUERY-4M9fs",
        "Limit exceeded",
    ))
}

#[derive(Serialize)]
struct OAuthError<'a> {
    error: &'a str,
    error_description: &'a str,
}

/// An OAuth/OIDC error body as zitadel/oidc writes it.
pub(super) fn oauth(status: StatusCode, error: &str, description: &str) -> Response {
    json(
        status,
        &OAuthError {
            error,
            error_description: description,
        },
    )
}

/// The gRPC code grpc-gateway would have mapped to `status` (the inverse of `HTTPStatusFromCode`).
pub(super) fn grpc_code_for_status(status: StatusCode) -> i32 {
    match status.as_u16() {
        200 => 0,
        400 => 3,
        401 => 16,
        403 => 7,
        404 => 5,
        409 => 6,
        412 => 9,
        429 => 8,
        499 => 1,
        501 => 12,
        503 => 14,
        504 => 4,
        500 => 13,
        _ => 2,
    }
}
