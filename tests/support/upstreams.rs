//! ZITADEL misbehaving: faults the stand-in injects, and scripted upstreams for what the real ZITADEL might
//! send but the stand-in never does.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use axum::{Json, Router, routing::get};
use zitadel_standin::{Fault, FaultKind};

/// A fault on requests whose path starts with `path_prefix`, for `times` requests (`None`: until cleared).
pub(crate) fn fault(path_prefix: &str, times: Option<u32>, kind: FaultKind) -> Fault {
    Fault {
        path_prefix: path_prefix.into(),
        times,
        kind,
    }
}

/// Serves `router` on 127.0.0.1:0 in a task, and returns its URL.
pub(crate) async fn serve_upstream(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    url
}

/// A scripted ZITADEL that answers userinfo with fixed claims for any token, counting calls.
pub(crate) async fn raw_userinfo(claims: serde_json::Value) -> (String, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let router = Router::new().route(
        "/oidc/v1/userinfo",
        get(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            let claims = claims.clone();
            async move { Json(claims) }
        }),
    );
    (serve_upstream(router).await, calls)
}
