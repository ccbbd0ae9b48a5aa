//! TLS: the gRPC port's certificate and key (and client CA, for mTLS), and the CA trusted toward ZITADEL.
//! The ext_authz listener's TLS files are settings of [`super::ext_authz`].

use std::path::PathBuf;

use super::names;
use clap::Args;

use crate::tls::{self, TlsError, TlsFiles, TlsSettings};

/// TLS of the gRPC port and toward ZITADEL.
#[derive(Debug, Default, Args)]
pub struct TlsArgs {
    /// PEM certificate chain for TLS on the gRPC port (with --tls-key-file); plaintext when unset.
    #[arg(long, env = "USERMETA_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of the TLS certificate.
    #[arg(long, env = "USERMETA_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,
    /// PEM CA certificates: when set, clients must present a certificate signed by one of them (mTLS).
    #[arg(long, env = "USERMETA_TLS_CLIENT_CA_FILE", requires = "tls_cert_file")]
    pub tls_client_ca_file: Option<PathBuf>,
    /// PEM CA certificates trusted toward ZITADEL beside the system's (a privately-signed deployment).
    #[arg(long, env = names::ZITADEL_CA_FILE)]
    pub zitadel_ca_file: Option<PathBuf>,
}

impl TlsArgs {
    /// The gRPC port's TLS files; `None` serves plaintext.
    pub fn grpc(&self) -> Result<Option<TlsFiles>, TlsError> {
        TlsSettings::GRPC.files(
            self.tls_cert_file.as_ref(),
            self.tls_key_file.as_ref(),
            self.tls_client_ca_file.as_ref(),
        )
    }

    /// The extra CA certificates trusted toward ZITADEL, read from their file; none when unset.
    pub fn zitadel_roots(&self) -> Result<Vec<reqwest::Certificate>, TlsError> {
        match &self.zitadel_ca_file {
            Some(path) => tls::zitadel_roots(path),
            None => Ok(Vec::new()),
        }
    }
}
