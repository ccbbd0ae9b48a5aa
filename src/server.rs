//! Binds the gRPC port and serves usermeta with health and reflection until told to stop.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tonic::transport::{Server, ServerTlsConfig, server::TcpIncoming};
use tonic_health::server::HealthReporter;

use crate::{
    api::{MetadataService, pb},
    cache::{CacheConfig, CallerCache},
    policy::Policy,
    tls::{TlsError, TlsFiles},
    zitadel::{SetupError, Zitadel, ZitadelConfig},
};

/// Everything the server needs, validated.
#[derive(Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub zitadel: ZitadelConfig,
    pub policy: Policy,
    pub cache: CacheConfig,
}

/// Operational settings beside [`Config`]: metrics, TLS, shutdown. The defaults serve plaintext gRPC,
/// without metrics, with a 10 s shutdown grace period.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Where `/metrics` is served; `None` turns metrics off.
    pub metrics_listen: Option<SocketAddr>,
    /// How long in-flight calls may take to finish after a shutdown signal.
    pub shutdown_grace: Duration,
    /// TLS on the gRPC port; `None` serves plaintext (h2c).
    pub tls: Option<TlsFiles>,
    /// Extra CA certificates trusted toward ZITADEL (beside the system's).
    pub zitadel_roots: Vec<reqwest::Certificate>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            metrics_listen: None,
            shutdown_grace: Duration::from_secs(10),
            tls: None,
            zitadel_roots: Vec::new(),
        }
    }
}

/// The server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Zitadel(#[from] SetupError),
    #[error("reflection could not load the service descriptors: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// A bound, ready-to-serve usermeta. Binding happens in [`Application::build`], so the port is known (and
/// taken) before serving starts.
pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    service: MetadataService,
    tls: Option<ServerTlsConfig>,
    metrics: Option<(TcpListener, metrics_exporter_prometheus::PrometheusHandle)>,
    shutdown_grace: Duration,
}

impl Application {
    pub async fn build(config: Config) -> Result<Self, StartError> {
        Self::build_with(config, ServeOptions::default()).await
    }

    /// [`Application::build`] with metrics, TLS and shutdown settings. Binds the metrics port too.
    pub async fn build_with(config: Config, options: ServeOptions) -> Result<Self, StartError> {
        let tls = options.tls.as_ref().map(TlsFiles::load).transpose()?;
        if let Some(tls) = &tls {
            // Parses the certificate and key now, so a bad pair fails start-up rather than the first client.
            Server::builder()
                .tls_config(tls.clone())
                .map_err(|e| TlsError::Unusable(e.to_string()))?;
        }
        let metrics = match options.metrics_listen {
            Some(addr) => {
                let handle = crate::metrics::install()?;
                let listener = TcpListener::bind(addr)
                    .await
                    .map_err(|source| StartError::Bind { addr, source })?;
                Some((listener, handle))
            }
            None => None,
        };
        let zitadel = Arc::new(Zitadel::with_extra_roots(
            config.zitadel,
            options.zitadel_roots,
        )?);
        let cache = Arc::new(CallerCache::new(config.cache));
        let service = MetadataService::new(zitadel, Arc::new(config.policy), cache);
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| StartError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let local_addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        Ok(Application {
            listener,
            local_addr,
            service,
            tls,
            metrics,
            shutdown_grace: options.shutdown_grace,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn port(&self) -> u16 {
        self.local_addr.port()
    }

    /// The address `/metrics` is served on, when metrics are on.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        let (listener, _) = self.metrics.as_ref()?;
        listener.local_addr().ok()
    }

    /// Serves until `shutdown` completes; health turns NOT_SERVING first, then in-flight calls finish within
    /// the grace period (after it, the server stops anyway and the remaining calls fail).
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartError> {
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<pb::user_metadata_service_server::UserMetadataServiceServer<MetadataService>>().await;

        let reflection_v1 = reflection_builder().build_v1()?;
        let reflection_v1alpha = reflection_builder().build_v1alpha()?;

        tracing::info!(addr = %self.local_addr, tls = self.tls.is_some(), "usermeta serving");
        // Scrapable until the server stops, shutdown included.
        let metrics = self
            .metrics
            .map(|(listener, handle)| crate::metrics::serve(listener, handle));
        let mut builder = Server::builder();
        if let Some(tls) = self.tls {
            builder = builder.tls_config(tls)?;
        }
        let (signalled, grace_starts) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            drain(health, shutdown).await;
            let _ = signalled.send(());
        };
        let serve = builder
            // Outermost first: the request context (request id, trace span) surrounds the measured call.
            .layer(crate::telemetry::RequestContextLayer)
            .layer(crate::metrics::GrpcMetricsLayer)
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(
                pb::user_metadata_service_server::UserMetadataServiceServer::new(self.service),
            )
            .serve_with_incoming_shutdown(
                // Nagle's algorithm would hold small responses back for a delayed ACK (a 40 ms tail).
                TcpIncoming::from(self.listener)
                    .with_nodelay(Some(true))
                    .with_keepalive(Some(Duration::from_secs(60))),
                shutdown,
            );
        let grace = self.shutdown_grace;
        let grace_over = async move {
            if grace_starts.await.is_err() {
                return std::future::pending().await;
            }
            tokio::time::sleep(grace).await;
        };
        tokio::select! {
            result = serve => {
                if let Err(error) = result {
                    tracing::error!(%error, "gRPC server stopped with an error");
                }
            }
            () = grace_over => {
                tracing::warn!(grace = ?grace, "shutdown grace period over; stopping with calls still in flight");
            }
        }
        if let Some(metrics) = metrics {
            metrics.abort();
        }
        tracing::info!("usermeta stopped");
        Ok(())
    }
}

fn reflection_builder() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        // So grpcurl and other reflection clients can decode BadRequest, ErrorInfo and RetryInfo details.
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
}

/// Waits for the shutdown signal, then tells health checkers first so load balancers stop sending traffic.
async fn drain(health: HealthReporter, shutdown: impl Future<Output = ()>) {
    shutdown.await;
    tracing::info!("shutting down: health NOT_SERVING, finishing in-flight calls");
    health.set_not_serving::<pb::user_metadata_service_server::UserMetadataServiceServer<MetadataService>>().await;
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}
