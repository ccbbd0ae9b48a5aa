//! What usermeta shows an operator: gRPC health, `/metrics`, and Envoy's Check as a gateway sends it.

use std::net::SocketAddr;

use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, attribute_context,
};
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use super::wait::eventually;

/// The health `service` reports at `addr` ("" for the server as a whole).
pub(crate) async fn health_of(addr: SocketAddr, service: &str) -> ServingStatus {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status()
}

/// Waits for `service` to report `expected`: changes reach health asynchronously.
pub(crate) async fn eventually_health(addr: SocketAddr, service: &str, expected: ServingStatus) {
    eventually(&format!("{service} becomes {expected:?}"), || async move {
        (health_of(addr, service).await == expected).then_some(())
    })
    .await;
}

/// A `/metrics` scrape.
pub(crate) async fn scrape(metrics_addr: SocketAddr) -> String {
    reqwest::get(format!("http://{metrics_addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// The value of one series of a `/metrics` scrape (`name{label="value"}` exactly as exported), 0 when absent.
/// The recorder is process-wide: compare a value with an earlier one, never with a constant.
pub(crate) async fn metric(metrics_addr: SocketAddr, series: &str) -> f64 {
    scrape(metrics_addr)
        .await
        .lines()
        .filter_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|value| value.trim().parse::<f64>().unwrap())
        .sum()
}

/// A Check for a GET with `token`, as Envoy sends it.
pub(crate) fn check_request(token: &str) -> CheckRequest {
    let headers = [("authorization".to_owned(), format!("Bearer {token}"))].into();
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    method: "GET".into(),
                    path: "/".into(),
                    host: "api.example.com".into(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}
