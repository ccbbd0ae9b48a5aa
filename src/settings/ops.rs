//! Operations: where metrics are served, how long shutdown may take, and TLS ([`super::tls`]).

use std::{net::SocketAddr, time::Duration};

use clap::Args;

use super::tls::TlsArgs;

/// Operational settings of `serve`: metrics, shutdown, TLS.
#[derive(Debug, Default, Args)]
pub struct OpsArgs {
    /// Address serving Prometheus metrics at /metrics, e.g. 0.0.0.0:9090; metrics are off when unset.
    #[arg(long, env = "USERMETA_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// How long in-flight calls may take to finish after SIGTERM/SIGINT before usermeta exits anyway.
    #[arg(long, env = "USERMETA_SHUTDOWN_GRACE", default_value = "10s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,
    /// TLS on the gRPC listener, and the CA usermeta trusts ZITADEL's certificate by.
    #[command(flatten)]
    pub tls: TlsArgs,
}
