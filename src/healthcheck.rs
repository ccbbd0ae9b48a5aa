//! `usermeta healthcheck`: asks a running usermeta for `grpc.health.v1.Health/Check` and turns the answer into
//! an exit code, so a container image needs no separate probe binary (`HEALTHCHECK CMD ["/usermeta",
//! "healthcheck"]`).
//!
//! Exit 0 means SERVING; exit 1 means anything else (NOT_SERVING, an unknown service, no answer within the
//! timeout, nothing listening). One line is printed either way: on stdout when serving, on stderr otherwise.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    process::ExitCode,
    time::Duration,
};

use tonic::{Code, transport::Endpoint};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::settings::HealthcheckArgs;

/// Where to look when neither `--addr` nor [`LISTEN`](crate::settings::names::LISTEN) says.
pub const DEFAULT_ADDR: &str = "127.0.0.1:50051";

/// Why the check did not get a health answer.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// `--addr` is not an address tonic can connect to.
    #[error("`{addr}` is not a host:port address ({source})")]
    InvalidAddress {
        /// The address as given.
        addr: String,
        /// Why tonic refused it.
        source: tonic::transport::Error,
    },
    /// The connection failed; the text is the transport's error chain.
    #[error("cannot connect ({0})")]
    Connect(String),
    /// No answer within the check's timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The server has no health status for the service asked about.
    #[error("the server does not know the service {0:?}")]
    UnknownService(String),
    /// The health call ended with another gRPC status.
    #[error("the health call failed: {code:?}: {message}")]
    Call {
        /// Its code.
        code: Code,
        /// Its message.
        message: String,
    },
}

/// Runs the check and prints its one line; the exit code is 0 only for SERVING.
pub async fn run(args: HealthcheckArgs) -> ExitCode {
    let addr = args.addr.clone().unwrap_or_else(|| {
        default_addr(
            std::env::var(crate::settings::names::LISTEN)
                .ok()
                .as_deref(),
        )
    });
    let subject = if args.service.is_empty() {
        format!("{addr} (server)")
    } else {
        format!("{addr} service {:?}", args.service)
    };
    match check(&addr, &args.service, args.timeout).await {
        Ok(ServingStatus::Serving) => {
            println!("usermeta healthcheck: {subject}: SERVING");
            ExitCode::SUCCESS
        }
        Ok(status) => {
            eprintln!("usermeta healthcheck: {subject}: {}", status.as_str_name());
            ExitCode::FAILURE
        }
        Err(error) => {
            eprintln!("usermeta healthcheck: {subject}: {error}");
            ExitCode::FAILURE
        }
    }
}

/// Calls `grpc.health.v1.Health/Check` for `service` ("" is the whole server) at `addr` (host:port, plaintext),
/// giving up after `timeout` in total.
pub async fn check(
    addr: &str,
    service: &str,
    timeout: Duration,
) -> Result<ServingStatus, CheckError> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|source| CheckError::InvalidAddress {
            addr: addr.to_owned(),
            source,
        })?
        .connect_timeout(timeout)
        .timeout(timeout);
    let call = async {
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| CheckError::Connect(error_chain(&e)))?;
        HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .map(|answer| answer.into_inner().status())
            .map_err(|status| match status.code() {
                // tonic-health answers NOT_FOUND for a service it was never told about.
                Code::NotFound => CheckError::UnknownService(service.to_owned()),
                Code::DeadlineExceeded | Code::Cancelled => CheckError::Timeout(timeout),
                code => CheckError::Call {
                    code,
                    message: status.message().to_owned(),
                },
            })
    };
    // The endpoint's own timeouts cover connecting and the call; this also bounds a peer that accepts the TCP
    // connection but never completes the HTTP/2 handshake.
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| CheckError::Timeout(timeout))?
}

/// The address to check when `--addr` is not given: the port usermeta listens on ([`LISTEN`](crate::settings::names::LISTEN), which a
/// container's health check inherits), reached over loopback when the server listens on every interface.
pub fn default_addr(listen: Option<&str>) -> String {
    let Some(listen) = listen.and_then(|raw| raw.trim().parse::<SocketAddr>().ok()) else {
        return DEFAULT_ADDR.to_owned();
    };
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port()).to_string()
}

/// An error and its sources on one line: tonic's transport errors say little at the top level.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut last = text.clone();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Layers of hyper and tonic often repeat their inner error's words; say them once.
        if cause_text != last {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        last = cause_text;
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_addr_follows_the_listen_port_over_loopback() {
        assert_eq!(default_addr(None), "127.0.0.1:50051");
        assert_eq!(default_addr(Some("0.0.0.0:9000")), "127.0.0.1:9000");
        assert_eq!(default_addr(Some("[::]:9000")), "[::1]:9000");
        assert_eq!(default_addr(Some("10.1.2.3:9000")), "10.1.2.3:9000");
        assert_eq!(default_addr(Some("not an address")), "127.0.0.1:50051");
    }
}
