//! Binds the gRPC port and serves usermeta with health and reflection until told to stop.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tonic::transport::{Server, server::TcpIncoming};
use tonic_health::server::HealthReporter;

use crate::{
    api::{MetadataService, pb},
    cache::{CacheConfig, CallerCache},
    caller::{IdentityConfig, IdentitySetupError, Resolver},
    policy::Policy,
    zitadel::{SetupError, Zitadel, ZitadelConfig},
};

/// Everything the server needs, validated.
#[derive(Debug)]
pub struct Config {
    pub listen: SocketAddr,
    pub zitadel: ZitadelConfig,
    pub policy: Policy,
    pub cache: CacheConfig,
    /// How callers are identified; the default asks userinfo.
    pub identity: IdentityConfig,
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
    #[error("caller identification could not be set up: {0}")]
    Identity(#[from] IdentitySetupError),
    #[error("reflection could not load the service descriptors: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// A bound, ready-to-serve usermeta. Binding happens in [`Application::build`], so the port is known (and
/// taken) before serving starts.
pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    service: MetadataService,
}

impl Application {
    pub async fn build(config: Config) -> Result<Self, StartError> {
        let resolver = Resolver::new(
            config.identity,
            &config.zitadel.base_url,
            config.zitadel.timeout,
        )?;
        let zitadel = Arc::new(Zitadel::new(config.zitadel)?);
        let cache = Arc::new(CallerCache::new(config.cache));
        let service = MetadataService::new(zitadel, Arc::new(config.policy), cache)
            .with_resolver(Arc::new(resolver));
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
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn port(&self) -> u16 {
        self.local_addr.port()
    }

    /// Serves until `shutdown` completes; health turns NOT_SERVING first, then in-flight calls finish.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartError> {
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<pb::user_metadata_service_server::UserMetadataServiceServer<MetadataService>>().await;

        let reflection_v1 = reflection_builder().build_v1()?;
        let reflection_v1alpha = reflection_builder().build_v1alpha()?;

        tracing::info!(addr = %self.local_addr, "usermeta serving");
        let result = Server::builder()
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
                drain(health, shutdown),
            )
            .await;
        if let Err(error) = result {
            tracing::error!(%error, "gRPC server stopped with an error");
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
