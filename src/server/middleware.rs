//! The one stack both gRPC listeners (the API and Envoy's Check) serve through, so a call is measured and
//! traced alike on either.

use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::{Server, ServerTlsConfig, server::TcpIncoming};
use tower::layer::util::{Identity, Stack};

use super::Limits;
use crate::{metrics::GrpcMetricsLayer, telemetry::RequestContextLayer};

/// The layers of [`grpc_server`], outermost last (as tonic stacks them).
pub(super) type Layers = Stack<GrpcMetricsLayer, Stack<RequestContextLayer, Identity>>;

/// A gRPC server with TLS when configured, `limits.max_streams_per_connection` calls per connection, and the
/// layers every call goes through.
pub(super) fn grpc_server(
    tls: Option<ServerTlsConfig>,
    limits: &Limits,
    metrics_enabled: bool,
) -> Result<Server<Layers>, tonic::transport::Error> {
    let mut builder = Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    Ok(builder
        .max_concurrent_streams(limits.max_streams_per_connection)
        // Outermost first: the request context (request id, trace span) surrounds the measured call.
        // The in-flight limits are applied by the handlers, to the calls that wait on ZITADEL.
        .layer(RequestContextLayer)
        .layer(GrpcMetricsLayer::new(metrics_enabled)))
}

/// A listener's connections, as both servers take them.
pub(super) fn incoming(listener: TcpListener) -> TcpIncoming {
    // Nagle's algorithm would hold small responses back for a delayed ACK (a 40 ms tail).
    TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(60)))
}
