//! TLS on the gRPC port (rustls through tonic), optionally requiring client certificates (mTLS), and the
//! client identity a verified certificate names; plus the extra CA for a privately-signed ZITADEL.

use std::{fmt, path::PathBuf, time::Duration};

use tonic::transport::{
    Certificate, Identity, ServerTlsConfig,
    server::{TcpConnectInfo, TlsConnectInfo},
};

use crate::settings::names;

/// How long a TLS handshake may take before the connection is dropped (a slow client holds a socket).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// TLS settings of the gRPC port.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM CA certificates; when set, every client must present a certificate signed by one of them.
    pub client_ca_file: Option<PathBuf>,
}

/// A TLS file is missing or unusable.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{setting}: cannot read {path}: {source}")]
    Read {
        /// The setting that named the file.
        setting: &'static str,
        /// The file's path.
        path: String,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A certificate file holds no certificate.
    #[error("{setting}: {path} holds no PEM certificate")]
    NoCertificate {
        /// The setting that named the file.
        setting: &'static str,
        /// The file's path.
        path: String,
    },
    /// The certificate and key do not make a usable identity (no key, a key of another certificate, …).
    #[error("{cert} / {key}: the certificate and key cannot be used: {reason}")]
    Unusable {
        /// The certificate's setting.
        cert: &'static str,
        /// The key's setting.
        key: &'static str,
        /// rustls's or the PEM parser's error.
        reason: String,
    },
    /// One of the certificate and key is set without the other, or a client CA without both.
    #[error("{cert} and {key}: set both for TLS ({client_ca} needs them too)")]
    Incomplete {
        /// The certificate's setting.
        cert: &'static str,
        /// The key's setting.
        key: &'static str,
        /// The client CA's setting.
        client_ca: &'static str,
    },
    /// The CA file for ZITADEL holds no usable certificate.
    #[error("{setting}: {path} holds no usable PEM certificate ({reason})", setting = crate::settings::names::ZITADEL_CA_FILE)]
    BadZitadelCa {
        /// The file's path.
        path: String,
        /// Why no certificate in it could be used.
        reason: String,
    },
}

/// The settings a listener's TLS files come from, for messages.
#[derive(Debug, Clone, Copy)]
pub struct TlsSettings {
    /// The certificate's setting.
    pub cert: &'static str,
    /// The private key's setting.
    pub key: &'static str,
    /// The client CA's setting (mTLS).
    pub client_ca: &'static str,
}

impl TlsSettings {
    /// The public gRPC port.
    pub const GRPC: TlsSettings = TlsSettings {
        cert: names::TLS_CERT_FILE_SETTING,
        key: names::TLS_KEY_FILE_SETTING,
        client_ca: names::TLS_CLIENT_CA_FILE_SETTING,
    };
    /// The ext_authz listener.
    pub const EXT_AUTHZ: TlsSettings = TlsSettings {
        cert: names::EXT_AUTHZ_TLS_CERT_FILE_SETTING,
        key: names::EXT_AUTHZ_TLS_KEY_FILE_SETTING,
        client_ca: names::EXT_AUTHZ_TLS_CLIENT_CA_FILE_SETTING,
    };

    /// Both files or neither (a client CA needs them): clap checks pairs of flags, not of config-file keys.
    pub fn files(
        &self,
        cert_file: Option<&PathBuf>,
        key_file: Option<&PathBuf>,
        client_ca_file: Option<&PathBuf>,
    ) -> Result<Option<TlsFiles>, TlsError> {
        match (cert_file, key_file) {
            (Some(cert_file), Some(key_file)) => Ok(Some(TlsFiles {
                cert_file: cert_file.clone(),
                key_file: key_file.clone(),
                client_ca_file: client_ca_file.cloned(),
            })),
            (None, None) if client_ca_file.is_none() => Ok(None),
            _ => Err(TlsError::Incomplete {
                cert: self.cert,
                key: self.key,
                client_ca: self.client_ca,
            }),
        }
    }
}

fn read(setting: &'static str, path: &PathBuf) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        setting,
        path: path.display().to_string(),
        source,
    })
}

fn has_certificate(pem: &[u8]) -> bool {
    String::from_utf8_lossy(pem).contains("-----BEGIN CERTIFICATE-----")
}

impl TlsFiles {
    /// Reads the files into tonic's server TLS configuration and checks that the certificate and key can be
    /// used, so a bad pair fails start-up rather than the first client. Errors name `settings`.
    pub fn load_checked(&self, settings: &TlsSettings) -> Result<ServerTlsConfig, TlsError> {
        let config = self.load(settings)?;
        tonic::transport::Server::builder()
            .tls_config(config.clone())
            .map_err(|e| TlsError::Unusable {
                cert: settings.cert,
                key: settings.key,
                reason: e.to_string(),
            })?;
        Ok(config)
    }

    fn load(&self, settings: &TlsSettings) -> Result<ServerTlsConfig, TlsError> {
        let cert = read(settings.cert, &self.cert_file)?;
        if !has_certificate(&cert) {
            return Err(TlsError::NoCertificate {
                setting: settings.cert,
                path: self.cert_file.display().to_string(),
            });
        }
        let key = read(settings.key, &self.key_file)?;
        let mut config = ServerTlsConfig::new()
            .identity(Identity::from_pem(cert, key))
            .timeout(HANDSHAKE_TIMEOUT);
        if let Some(path) = &self.client_ca_file {
            let ca = read(settings.client_ca, path)?;
            if !has_certificate(&ca) {
                return Err(TlsError::NoCertificate {
                    setting: settings.client_ca,
                    path: path.display().to_string(),
                });
            }
            // Required, not optional: a client without a certificate is refused in the handshake.
            config = config
                .client_ca_root(Certificate::from_pem(ca))
                .client_auth_optional(false);
        }
        Ok(config)
    }
}

/// Reads the extra CA certificates trusted toward ZITADEL (beside the system's).
pub fn zitadel_roots(path: &PathBuf) -> Result<Vec<reqwest::Certificate>, TlsError> {
    let bad = |reason: String| TlsError::BadZitadelCa {
        path: path.display().to_string(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no certificate found".to_owned()));
    }
    Ok(certs)
}

/// Who a verified client certificate says the client is.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientCert {
    /// The subject's common name.
    pub common_name: Option<String>,
    /// Subject alternative names: `dns:…`, `uri:…` (e.g. a SPIFFE id), `email:…`, `ip:…`.
    pub sans: Vec<String>,
}

impl fmt::Display for ClientCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(cn) = &self.common_name {
            parts.push(format!("CN={cn}"));
        }
        if !self.sans.is_empty() {
            parts.push(format!("SAN={}", self.sans.join(",")));
        }
        f.write_str(&parts.join(" "))
    }
}

/// The identity of the client certificate the TLS handshake verified, if there was one (from a call's
/// extensions, as tonic records it). Without a client
/// CA there is no verification, so nothing is claimed.
pub fn client_cert(extensions: &http::Extensions) -> Option<ClientCert> {
    let certs = extensions
        .get::<TlsConnectInfo<TcpConnectInfo>>()?
        .peer_certs()?;
    let leaf = certs.first()?;
    parse(leaf.as_ref())
}

fn parse(der: &[u8]) -> Option<ClientCert> {
    use x509_parser::{extensions::GeneralName, prelude::FromDer as _};
    let (_, cert) = x509_parser::certificate::X509Certificate::from_der(der).ok()?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_owned);
    let sans = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::DNSName(dns) => Some(format!("dns:{dns}")),
                    GeneralName::URI(uri) => Some(format!("uri:{uri}")),
                    GeneralName::RFC822Name(email) => Some(format!("email:{email}")),
                    GeneralName::IPAddress(bytes) => ip(bytes).map(|ip| format!("ip:{ip}")),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Some(ClientCert { common_name, sans })
}

fn ip(bytes: &[u8]) -> Option<std::net::IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(std::net::IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(std::net::IpAddr::from),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cn_and_sans() {
        let mut params = rcgen::CertificateParams::new(vec!["svc.internal".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "billing");
        params.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://acme/billing".try_into().unwrap(),
        ));
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let parsed = parse(cert.der()).unwrap();
        assert_eq!(parsed.common_name.as_deref(), Some("billing"));
        assert_eq!(
            parsed.sans,
            ["dns:svc.internal", "uri:spiffe://acme/billing"]
        );
        assert_eq!(
            parsed.to_string(),
            "CN=billing SAN=dns:svc.internal,uri:spiffe://acme/billing"
        );
    }
}
