//! Error answers as ZITADEL writes them: grpc-gateway `google.rpc.Status` bodies for the REST APIs and OAuth
//! `{"error","error_description"}` bodies for the OIDC endpoints.

use axum::response::Response;
use base64::Engine as _;
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

/// Unknown, expired or revoked token (and, in current ZITADEL, a missing audience).
pub(super) fn token_invalid() -> Reject {
    Box::new(zitadel(
        StatusCode::UNAUTHORIZED,
        16,
        "AUTH-7fs1e",
        "Token is invalid",
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

// ---------------------------------------------------------------------------------------------------------
// transport-independent errors of the v2 services

/// The gRPC status codes ZITADEL answers with, and how each transport shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Code {
    InvalidArgument,
    Unauthenticated,
    PermissionDenied,
    NotFound,
    FailedPrecondition,
    ResourceExhausted,
    Unimplemented,
    Internal,
    Unavailable,
    DeadlineExceeded,
    AlreadyExists,
    Canceled,
    Unknown,
}

impl Code {
    /// The numeric gRPC code (what grpc-gateway bodies carry).
    pub(super) fn grpc(self) -> i32 {
        match self {
            Code::Canceled => 1,
            Code::Unknown => 2,
            Code::InvalidArgument => 3,
            Code::DeadlineExceeded => 4,
            Code::NotFound => 5,
            Code::AlreadyExists => 6,
            Code::PermissionDenied => 7,
            Code::ResourceExhausted => 8,
            Code::FailedPrecondition => 9,
            Code::Unimplemented => 12,
            Code::Internal => 13,
            Code::Unavailable => 14,
            Code::Unauthenticated => 16,
        }
    }

    /// The Connect protocol's name of the code (snake_case).
    pub(super) fn connect_name(self) -> &'static str {
        match self {
            Code::Canceled => "canceled",
            Code::Unknown => "unknown",
            Code::InvalidArgument => "invalid_argument",
            Code::DeadlineExceeded => "deadline_exceeded",
            Code::NotFound => "not_found",
            Code::AlreadyExists => "already_exists",
            Code::PermissionDenied => "permission_denied",
            Code::ResourceExhausted => "resource_exhausted",
            Code::FailedPrecondition => "failed_precondition",
            Code::Unimplemented => "unimplemented",
            Code::Internal => "internal",
            Code::Unavailable => "unavailable",
            Code::Unauthenticated => "unauthenticated",
        }
    }

    /// The HTTP status of a Connect unary error (connectrpc.com protocol spec, "Error Codes").
    pub(super) fn connect_status(self) -> StatusCode {
        match self {
            Code::Canceled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            Code::Unknown | Code::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            Code::InvalidArgument | Code::FailedPrecondition => StatusCode::BAD_REQUEST,
            Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::AlreadyExists => StatusCode::CONFLICT,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        }
    }

    /// The HTTP status grpc-gateway v2 gives the code (`runtime.HTTPStatusFromCode`).
    pub(super) fn gateway_status(self) -> StatusCode {
        match self {
            Code::FailedPrecondition => StatusCode::BAD_REQUEST,
            Code::Canceled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
            other => other.connect_status(),
        }
    }

    /// The code whose Connect status is `status`, for faults that answer a bare status on a Connect path.
    pub(super) fn for_status(status: StatusCode) -> Code {
        match status.as_u16() {
            400 => Code::InvalidArgument,
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 => Code::NotFound,
            409 => Code::AlreadyExists,
            429 => Code::ResourceExhausted,
            499 => Code::Canceled,
            500 => Code::Internal,
            501 => Code::Unimplemented,
            503 => Code::Unavailable,
            504 => Code::DeadlineExceeded,
            _ => Code::Unknown,
        }
    }
}

/// A failed v2 call before it is written out: Connect JSON or grpc-gateway JSON, depending on the transport.
#[derive(Debug, Clone)]
pub(super) struct Failure {
    pub(super) code: Code,
    /// The whole message, for ZITADEL errors `"<text> (<id>)"`.
    pub(super) message: String,
    /// ZITADEL's `ErrorDetail` as `(id, text)`; `None` for decoding and validation errors.
    pub(super) detail: Option<(&'static str, String)>,
}

impl Failure {
    /// A ZITADEL error (`zerrors`): message `"<text> (<id>)"` plus an `ErrorDetail`.
    pub(super) fn zitadel(code: Code, id: &'static str, text: &str) -> Failure {
        Failure {
            code,
            message: format!("{text} ({id})"),
            detail: Some((id, text.to_owned())),
        }
    }

    /// An error without details: request decoding, protoc-gen-validate, the auth header checks.
    pub(super) fn plain(code: Code, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
            detail: None,
        }
    }

    /// The grpc-gateway answer (REST twins of the v2 services).
    pub(super) fn to_gateway(&self) -> Response {
        gateway_error(
            self.code.gateway_status(),
            self.code.grpc(),
            &self.message,
            self.detail.as_ref().map(|(id, text)| (*id, text.as_str())),
        )
    }

    /// The Connect unary error answer: `{"code","message","details":[{"type","value"}]}`, where `type` is the
    /// detail's message name without the `type.googleapis.com/` prefix and `value` its protobuf encoding in
    /// unpadded standard base64 (connect-go's `RawStdEncoding`).
    pub(super) fn to_connect(&self) -> Response {
        let details = self.detail.as_ref().map(|(id, text)| {
            vec![serde_json::json!({
                "type": "zitadel.v1.ErrorDetail",
                "value": base64::engine::general_purpose::STANDARD_NO_PAD
                    .encode(error_detail_protobuf(id, text)),
            })]
        });
        let mut body = serde_json::json!({
            "code": self.code.connect_name(),
            "message": self.message,
        });
        if let (Some(details), Some(map)) = (details, body.as_object_mut()) {
            map.insert("details".into(), serde_json::Value::Array(details));
        }
        json(self.code.connect_status(), &body)
    }
}

/// `zitadel.v1.ErrorDetail{id = 1, message = 2}` in protobuf wire format.
pub(super) fn error_detail_protobuf(id: &str, message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(id.len() + message.len() + 8);
    for (tag, text) in [(0x0a_u8, id), (0x12, message)] {
        if text.is_empty() {
            continue;
        }
        out.push(tag);
        let mut len = text.len();
        loop {
            let byte = (len & 0x7f) as u8;
            len >>= 7;
            if len == 0 {
                out.push(byte);
                break;
            }
            out.push(byte | 0x80);
        }
        out.extend_from_slice(text.as_bytes());
    }
    out
}
