//! Recording of every request the stand-in receives.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

use bytes::Bytes;
use http::{HeaderMap, Method, Version};

/// One request as the stand-in received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// The HTTP method.
    pub method: Method,
    /// The HTTP version it came in (HTTP/1.1, or HTTP/2 over h2c).
    pub version: Version,
    /// The raw path, still percent-encoded (e.g. `/management/v1/users/1/metadata/a%2Fb`).
    pub path: String,
    /// The raw query string, if any.
    pub query: Option<String>,
    /// All request headers.
    pub headers: HeaderMap,
    /// The whole request body.
    pub body: Bytes,
}

impl RecordedRequest {
    /// The token of an `Authorization: Bearer <token>` header (scheme matched case-insensitively), if any.
    pub fn bearer(&self) -> Option<&str> {
        let value = self.header("authorization")?;
        let (scheme, token) = value.split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
    }

    /// The value of header `name`, if present and valid UTF-8/ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)?.to_str().ok()
    }

    /// Whether this is a Management API v1 call (`/management/v1/...`).
    pub fn is_management(&self) -> bool {
        self.path.starts_with("/management/v1/")
            || self.is_user_v2_connect()
            || self.is_user_v2_rest()
    }

    /// Whether this is an Auth API v1 call (`/auth/v1/...`).
    pub fn is_auth_api(&self) -> bool {
        self.path.starts_with("/auth/v1/")
    }

    /// Whether this is a v2 user service call over Connect (`/zitadel.user.v2.UserService/...`).
    pub fn is_user_v2_connect(&self) -> bool {
        self.path.starts_with("/zitadel.user.v2.UserService/")
    }

    /// Whether this is a v2 user service call over REST (`/v2/users...`).
    pub fn is_user_v2_rest(&self) -> bool {
        self.path == "/v2/users" || self.path.starts_with("/v2/users/")
    }

    /// The Connect procedure name of a v2 call (e.g. `SetUserMetadata`), if this is one.
    pub fn connect_procedure(&self) -> Option<&str> {
        self.path.strip_prefix("/zitadel.user.v2.UserService/")
    }

    /// Whether this is a userinfo call (`/oidc/v1/userinfo`).
    pub fn is_userinfo(&self) -> bool {
        self.path == "/oidc/v1/userinfo"
    }

    /// Whether this is a token call (`/oauth/v2/token`).
    pub fn is_token(&self) -> bool {
        self.path == "/oauth/v2/token"
    }
}

/// Append-only log of requests.
#[derive(Debug)]
pub(super) struct Recorder {
    // Recording can be switched off so a long `usermeta dev` session or a benchmark does not grow memory.
    enabled: AtomicBool,
    requests: Mutex<Vec<RecordedRequest>>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            enabled: AtomicBool::new(true),
            requests: Mutex::new(Vec::new()),
        }
    }
}

impl Recorder {
    pub(super) fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    pub(super) fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<RecordedRequest>> {
        self.requests.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn push(&self, request: RecordedRequest) {
        self.lock().push(request);
    }

    pub(super) fn all(&self) -> Vec<RecordedRequest> {
        self.lock().clone()
    }

    pub(super) fn clear(&self) {
        self.lock().clear();
    }
}
