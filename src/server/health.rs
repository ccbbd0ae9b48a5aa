//! gRPC health: SERVING while usermeta serves, a service of its own per part it depends on, and NOT_SERVING
//! first at shutdown so load balancers stop sending calls before the listeners drain.

use std::future::Future;

use tokio::task::JoinHandle;
use tonic_health::{
    ServingStatus,
    pb::health_server::HealthServer,
    server::{HealthReporter, HealthService},
};

use crate::{
    api::{MetadataService, pb::user_metadata_service_server::UserMetadataServiceServer},
    authz,
    fleet::{self, SharedInvalidation},
};
use usermeta_zitadel::{Group, Zitadel};

/// The health service a reporter's statuses are served by.
pub(super) fn service(reporter: &HealthReporter) -> HealthServer<HealthService> {
    HealthServer::new(HealthService::from_health_reporter(reporter.clone()))
}

/// The gRPC listener's health: the API and every part it depends on SERVING; and the tasks that keep the
/// parts' statuses current (aborted when serving ends).
pub(super) async fn grpc(
    zitadel: &Zitadel,
    fleet: Option<&SharedInvalidation>,
) -> (HealthReporter, Vec<JoinHandle<()>>) {
    let health = HealthReporter::new();
    health
        .set_serving::<UserMetadataServiceServer<MetadataService>>()
        .await;
    for group in Group::ALL {
        health
            .set_service_status(group.health_name(), ServingStatus::Serving)
            .await;
    }
    let mut details: Vec<_> = Group::ALL
        .into_iter()
        .map(|group| {
            tokio::spawn(report_detail(
                health.clone(),
                group.health_name(),
                zitadel.watch_breaker(group),
                |open| !open,
            ))
        })
        .collect();
    if let Some(fallback) = zitadel.watch_budget_fallback() {
        details.push(tokio::spawn(report_detail(
            health.clone(),
            fleet::BUDGET_HEALTH_SERVICE,
            fallback,
            |on_fallback| !on_fallback,
        )));
    }
    if let Some(fleet) = fleet {
        details.push(tokio::spawn(report_detail(
            health.clone(),
            fleet::HEALTH_SERVICE,
            fleet.connected(),
            |connected| connected,
        )));
    }
    (health, details)
}

/// The ext_authz listener's own health, so Envoy's health checks see Check's state.
pub(super) async fn ext_authz() -> HealthReporter {
    let health = HealthReporter::new();
    health
        .set_service_status(authz::SERVICE_NAME, ServingStatus::Serving)
        .await;
    health
}

/// Reports a part usermeta depends on as a health service of its own: a breaker ([`Group::health_name`],
/// NOT_SERVING while open) or the Redis link ([`fleet::HEALTH_SERVICE`], NOT_SERVING while down). The
/// server as a whole stays SERVING: restarting usermeta would bring neither ZITADEL nor Redis back, and
/// reads from the cache and calls of the other group still work.
async fn report_detail(
    health: HealthReporter,
    name: &'static str,
    mut state: tokio::sync::watch::Receiver<bool>,
    healthy: fn(bool) -> bool,
) {
    loop {
        let status = if healthy(*state.borrow_and_update()) {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        health.set_service_status(name, status).await;
        if state.changed().await.is_err() {
            return;
        }
    }
}

/// Waits for the shutdown signal, then tells health checkers first so load balancers stop sending traffic.
pub(super) async fn drain(
    health: HealthReporter,
    authz_health: Option<HealthReporter>,
    shutdown: impl Future<Output = ()>,
) {
    shutdown.await;
    tracing::info!("shutting down: health NOT_SERVING, finishing in-flight calls");
    health
        .set_not_serving::<UserMetadataServiceServer<MetadataService>>()
        .await;
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    if let Some(authz_health) = authz_health {
        for service in [authz::SERVICE_NAME, ""] {
            authz_health
                .set_service_status(service, ServingStatus::NotServing)
                .await;
        }
    }
}
