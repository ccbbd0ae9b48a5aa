//! The four listeners: each is bound by [`super::Application::build`] (so its port is known and taken before
//! serving starts) and served by one function here. gRPC serves the metadata API with health and reflection;
//! ext_authz serves Envoy's Check beside a health service of its own; metrics and the webhook are plain
//! HTTP/1.1 tasks.

use std::{future::Future, net::SocketAddr, sync::Arc};

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tonic::transport::ServerTlsConfig;
use tonic_health::{pb::health_server::HealthServer, server::HealthService};

use super::{
    Limits, StartError,
    middleware::{grpc_server, incoming},
};
use crate::{
    api::{MetadataService, pb, pb::user_metadata_service_server::UserMetadataServiceServer},
    authz::{AuthzService, wire::authorization_server::AuthorizationServer},
    fleet::{
        Changes,
        webhook::{self, Webhook, WebhookConfig},
    },
};

/// Binds a listener, naming the address when it cannot.
async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })
}

/// A bound gRPC listener (the API's or ext_authz's) and its TLS; `None` serves plaintext (h2c).
pub(super) struct GrpcListener {
    listener: TcpListener,
    pub(super) local_addr: SocketAddr,
    tls: Option<ServerTlsConfig>,
}

impl GrpcListener {
    pub(super) async fn bind(
        addr: SocketAddr,
        tls: Option<ServerTlsConfig>,
    ) -> Result<Self, StartError> {
        let listener = bind(addr).await?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| StartError::Bind { addr, source })?;
        Ok(GrpcListener {
            listener,
            local_addr,
            tls,
        })
    }
}

/// The metadata API with health and reflection, served until `shutdown` completes. Fails before serving
/// when TLS or reflection cannot be set up.
pub(super) fn api(
    grpc: GrpcListener,
    service: MetadataService,
    health: HealthServer<HealthService>,
    limits: &Limits,
    metrics_enabled: bool,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<impl Future<Output = Result<(), tonic::transport::Error>>, StartError> {
    let service = UserMetadataServiceServer::new(service)
        .max_decoding_message_size(limits.max_message_bytes)
        .max_encoding_message_size(limits.max_message_bytes);
    let reflection_v1 = reflection().build_v1()?;
    let reflection_v1alpha = reflection().build_v1alpha()?;
    tracing::info!(addr = %grpc.local_addr, tls = grpc.tls.is_some(), "usermeta serving");
    Ok(grpc_server(grpc.tls, limits, metrics_enabled)?
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(service)
        .serve_with_incoming_shutdown(incoming(grpc.listener), shutdown))
}

fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        // The contract's set holds google.rpc's status and error details too (build.rs), so grpcurl and other
        // reflection clients decode BadRequest, ErrorInfo and RetryInfo wherever they appear.
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// The bound ext_authz listener and what serves it.
pub(super) struct ExtAuthzListener {
    pub(super) grpc: GrpcListener,
    pub(super) service: AuthzService,
}

/// Envoy's Check with its own health service, served until `stopping` turns true.
pub(super) async fn ext_authz(
    ext_authz: ExtAuthzListener,
    health: HealthServer<HealthService>,
    limits: &Limits,
    metrics_enabled: bool,
    mut stopping: watch::Receiver<bool>,
) -> Result<(), tonic::transport::Error> {
    let grpc = ext_authz.grpc;
    tracing::info!(addr = %grpc.local_addr, tls = grpc.tls.is_some(), "ext_authz serving");
    grpc_server(grpc.tls, limits, metrics_enabled)?
        .add_service(health)
        // envoy-types ships no descriptor set, so reflection does not list this service.
        .add_service(AuthorizationServer::new(ext_authz.service))
        .serve_with_incoming_shutdown(incoming(grpc.listener), async move {
            let _ = stopping.wait_for(|stopping| *stopping).await;
        })
        .await
}

/// The bound `/metrics` listener and the recorder it reads.
pub(super) struct MetricsListener {
    pub(super) listener: TcpListener,
    handle: PrometheusHandle,
}

impl MetricsListener {
    /// Installs the recorder and binds; `None` when metrics are off.
    pub(super) async fn bind(addr: Option<SocketAddr>) -> Result<Option<Self>, StartError> {
        let Some(addr) = addr else {
            return Ok(None);
        };
        let handle = crate::metrics::install()?;
        Ok(Some(MetricsListener {
            listener: bind(addr).await?,
            handle,
        }))
    }

    /// Serves `/metrics` until the task is aborted.
    pub(super) fn serve(self) -> JoinHandle<()> {
        crate::metrics::serve(self.listener, self.handle)
    }
}

/// The bound listener for ZITADEL's events and what answers them.
pub(super) struct WebhookListener {
    pub(super) listener: TcpListener,
    webhook: Arc<Webhook>,
}

impl WebhookListener {
    /// Binds; `None` when the webhook is off. Events it accepts go into `changes`.
    pub(super) async fn bind(
        config: Option<WebhookConfig>,
        changes: &Changes,
    ) -> Result<Option<Self>, StartError> {
        let Some(config) = config else {
            return Ok(None);
        };
        Ok(Some(WebhookListener {
            listener: bind(config.listen).await?,
            webhook: Webhook::new(config.keys, config.limits, changes.clone()),
        }))
    }

    /// Serves the webhook until the task is aborted.
    pub(super) fn serve(self) -> JoinHandle<()> {
        tracing::info!(addr = ?self.listener.local_addr().ok(), path = webhook::PATH, "ZITADEL event webhook serving");
        webhook::serve(self.listener, self.webhook)
    }
}
