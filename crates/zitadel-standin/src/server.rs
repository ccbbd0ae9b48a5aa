//! The accept loop and per-connection serving (HTTP/1 and h2c via hyper-util), the recorder and the faults.
//!
//! Connections are served here rather than by `axum::serve` so that a `DropConnection` fault can close the
//! TCP connection without writing any HTTP answer.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::{any, get, post};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tower::ServiceExt;

use super::errors;
use super::faults::FaultKind;
use super::state::Shared;
use super::{auth_api, management_api, oidc, org_metadata, user_v2};

/// Builds the router of every endpoint the stand-in serves.
fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/oidc/v1/userinfo", any(oidc::userinfo))
        .route("/oauth/v2/token", post(oidc::token))
        .route("/oauth/v2/introspect", post(oidc::introspect))
        .route("/oauth/v2/keys", get(oidc::keys))
        .route("/auth/v1/users/me/metadata/{key}", any(auth_api::dispatch))
        .route(
            "/management/v1/users/{id}/metadata/{key}",
            any(management_api::dispatch),
        )
        .route(
            "/management/v1/metadata/{key}",
            any(org_metadata::v1_dispatch),
        )
        .route(
            "/zitadel.org.v2.OrganizationService/{procedure}",
            any(org_metadata::v2_connect),
        )
        .route(
            "/v2/organizations/{organization_id}/metadata",
            any(org_metadata::v2_rest_metadata),
        )
        .route(
            "/v2/organizations/{organization_id}/metadata/search",
            any(org_metadata::v2_rest_list_metadata),
        )
        .route(
            "/zitadel.user.v2.UserService/{procedure}",
            any(user_v2::connect),
        )
        .route("/v2/users", any(user_v2::rest_list_users))
        .route("/v2/users/{user_id}", any(user_v2::rest_get_user))
        .route("/v2/users/{user_id}/metadata", any(user_v2::rest_metadata))
        .route(
            "/v2/users/{user_id}/metadata/search",
            any(user_v2::rest_list_metadata),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(not_found)
        .with_state(shared)
}

/// grpc-gateway's answer for a path it has no route for.
async fn not_found() -> axum::response::Response {
    errors::gateway_not_found()
}

/// Accepts connections until told to stop (or until the last `StandIn` handle is dropped).
pub(super) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let router = router(Arc::clone(&shared));
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    shared.connection_accepted();
                    connections.spawn(serve_connection(stream, Arc::clone(&shared), router.clone(), stop.clone()));
                }
                // E.g. EMFILE: back off briefly instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            },
            // Ok: shutdown() was called; Err: every StandIn handle is gone.
            _ = stop.changed() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    // Aborts every open connection.
    connections.shutdown().await;
}

async fn serve_connection(
    stream: TcpStream,
    shared: Arc<Shared>,
    router: Router,
    mut stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let kill = Arc::new(Notify::new());
    let service_kill = Arc::clone(&kill);
    let service = hyper::service::service_fn(move |request| {
        handle(
            request,
            Arc::clone(&shared),
            router.clone(),
            Arc::clone(&service_kill),
        )
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    // Leaving the select drops the connection, which closes the socket without another byte written.
    tokio::select! {
        _ = connection => {}
        _ = kill.notified() => {}
        _ = stop.changed() => {}
    }
}

/// The error a service future returns to make hyper abandon the request without an answer.
#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by a stand-in fault")
    }
}

impl std::error::Error for Dropped {}

async fn handle(
    request: Request<Incoming>,
    shared: Arc<Shared>,
    router: Router,
    kill: Arc<Notify>,
) -> Result<Response<Body>, Dropped> {
    let (parts, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return Err(Dropped),
    };
    shared.record(&parts, &body);
    if let Some(kind) = shared.faults.take(parts.uri.path()) {
        match kind {
            FaultKind::Latency(delay) => tokio::time::sleep(delay).await,
            FaultKind::DropConnection => {
                kill.notify_one();
                return Err(Dropped);
            }
            other => {
                let connect = parts.uri.path().starts_with("/zitadel.");
                return Ok(other.response(connect));
            }
        }
    }
    let deprecated = shared
        .deprecate_v1
        .load(std::sync::atomic::Ordering::Relaxed)
        && ["/management/v1/", "/auth/v1/", "/admin/v1/"]
            .iter()
            .any(|prefix| parts.uri.path().starts_with(prefix));
    let request = Request::from_parts(parts, Body::from(body));
    // The router's error type is Infallible.
    let mut response = match router.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    if deprecated {
        // RFC 9745: a structured-field date, here 2026-01-01T00:00:00Z.
        response
            .headers_mut()
            .insert("deprecation", http::HeaderValue::from_static("@1767225600"));
    }
    Ok(response)
}
