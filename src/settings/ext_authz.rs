//! The `USERMETA_EXT_AUTHZ*` settings (flags with environment twins), validated into an [`AuthzConfig`].

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, builder::BoolishValueParser};

use super::{Setting, SettingsError};
use crate::{
    authz::{AuthzConfig, BinaryValues, ExtAuthz, header_name, parse_header_map, parse_rules},
    tls::TlsSettings,
};

/// Settings of the Envoy external authorization endpoint.
#[derive(Debug, Args)]
pub struct ExtAuthzArgs {
    /// Serve Envoy's external authorization API (envoy.service.auth.v3.Authorization), on
    /// USERMETA_EXT_AUTHZ_LISTEN (never on the public gRPC port).
    #[arg(long, env = "USERMETA_EXT_AUTHZ", value_parser = BoolishValueParser::new(), default_value_t = false)]
    pub ext_authz: bool,
    /// Address Check is served on, reachable by Envoy only: e.g. 127.0.0.1:50052 for a sidecar, or a port a
    /// NetworkPolicy opens to the gateway. Required with USERMETA_EXT_AUTHZ.
    #[arg(long, env = "USERMETA_EXT_AUTHZ_LISTEN")]
    pub ext_authz_listen: Option<SocketAddr>,
    /// PEM certificate chain for TLS on the ext_authz listener (with --ext-authz-tls-key-file).
    #[arg(long, env = "USERMETA_EXT_AUTHZ_TLS_CERT_FILE")]
    pub ext_authz_tls_cert_file: Option<PathBuf>,
    /// PEM private key of that certificate.
    #[arg(long, env = "USERMETA_EXT_AUTHZ_TLS_KEY_FILE")]
    pub ext_authz_tls_key_file: Option<PathBuf>,
    /// PEM CA certificates: Envoy must present a certificate signed by one of them (mTLS).
    #[arg(long, env = "USERMETA_EXT_AUTHZ_TLS_CLIENT_CA_FILE")]
    pub ext_authz_tls_client_ca_file: Option<PathBuf>,
    /// Metadata keys passed upstream as headers: `key=header-name` pairs, comma separated
    /// (e.g. ContractNumber=x-user-contract-number); `org:key=header-name` passes a key of the caller's
    /// organisation's own metadata (e.g. org:plan=x-tenant-plan). Keys not listed are never sent.
    #[arg(long, env = "USERMETA_EXT_AUTHZ_HEADERS", default_value = "")]
    pub ext_authz_headers: String,
    /// Header carrying the caller's ZITADEL user id; empty sends none.
    #[arg(
        long,
        env = "USERMETA_EXT_AUTHZ_USER_ID_HEADER",
        default_value = "x-user-id"
    )]
    pub ext_authz_user_id_header: String,
    /// Values that are not UTF-8 text: sent as `base64:<standard base64>`, or dropped.
    #[arg(long, env = "USERMETA_EXT_AUTHZ_BINARY", default_value = "base64", value_parser = binary_parser())]
    pub ext_authz_binary: BinaryValues,
    /// Let requests without a bearer token pass, without identity headers (a bad token is still denied).
    #[arg(long, env = "USERMETA_EXT_AUTHZ_ALLOW_ANONYMOUS", value_parser = BoolishValueParser::new(), default_value_t = false)]
    pub ext_authz_allow_anonymous: bool,
    /// When ZITADEL cannot answer, let requests pass without identity headers instead of denying them with
    /// 503 (requests a route rule covers are still denied).
    #[arg(long, env = "USERMETA_EXT_AUTHZ_FAIL_OPEN", value_parser = BoolishValueParser::new(), default_value_t = false)]
    pub ext_authz_fail_open: bool,
    /// Also return the user id and the passed values as Envoy dynamic metadata.
    #[arg(long, env = "USERMETA_EXT_AUTHZ_DYNAMIC_METADATA", value_parser = BoolishValueParser::new(), default_value_t = false)]
    pub ext_authz_dynamic_metadata: bool,
    /// Route rules separated by `;`, each like `path=/admin role=admin`,
    /// `host=api.example.com path=/contracts metadata.ContractNumber=1234`, or (on the caller's organisation's
    /// own metadata) `path=/enterprise org.plan=enterprise`.
    #[arg(long, env = "USERMETA_EXT_AUTHZ_RULES", default_value = "")]
    pub ext_authz_rules: String,
    /// File with route rules, one a line (`#` comments), in the syntax of USERMETA_EXT_AUTHZ_RULES.
    #[arg(long, env = "USERMETA_EXT_AUTHZ_RULES_FILE")]
    pub ext_authz_rules_file: Option<PathBuf>,
}

/// `base64` | `drop`, listed in `--help`.
fn binary_parser() -> impl clap::builder::TypedValueParser<Value = BinaryValues> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(["base64", "drop"]).map(|value| match value.as_str() {
        "drop" => BinaryValues::Drop,
        _ => BinaryValues::Base64,
    })
}

const LISTEN: Setting = Setting::new("ext_authz_listen");
const HEADERS: Setting = Setting::new("ext_authz_headers");
const USER_ID_HEADER: Setting = Setting::new("ext_authz_user_id_header");
const RULES: Setting = Setting::new("ext_authz_rules");
const RULES_FILE: Setting = Setting::new("ext_authz_rules_file");

/// Every setting this module's messages name.
#[cfg(test)]
pub(super) const SETTINGS: [Setting; 5] = [LISTEN, HEADERS, USER_ID_HEADER, RULES, RULES_FILE];

fn invalid(setting: Setting, problem: String) -> SettingsError {
    SettingsError::Invalid {
        setting: setting.to_string(),
        problem,
    }
}

impl ExtAuthzArgs {
    /// The validated endpoint, or `None` when it is off.
    pub fn served(&self) -> Result<Option<ExtAuthz>, SettingsError> {
        let Some(config) = self.config()? else {
            return Ok(None);
        };
        let listen = self.ext_authz_listen.ok_or_else(|| {
            invalid(
                LISTEN,
                "not set, but USERMETA_EXT_AUTHZ is on: Check is served only on a listener of its own, for Envoy alone (e.g. 127.0.0.1:50052 beside a sidecar Envoy); it is never served on the public gRPC port".to_owned(),
            )
        })?;
        let tls = TlsSettings::EXT_AUTHZ
            .files(
                self.ext_authz_tls_cert_file.as_ref(),
                self.ext_authz_tls_key_file.as_ref(),
                self.ext_authz_tls_client_ca_file.as_ref(),
            )
            .map_err(|e| invalid(LISTEN, e.to_string()))?;
        Ok(Some(ExtAuthz {
            config,
            listen,
            tls,
        }))
    }

    /// The validated configuration, or `None` when the endpoint is off.
    pub fn config(&self) -> Result<Option<AuthzConfig>, SettingsError> {
        if !self.ext_authz {
            return Ok(None);
        }
        let headers = parse_header_map(&self.ext_authz_headers).map_err(|e| invalid(HEADERS, e))?;
        let user_id_header = match self.ext_authz_user_id_header.trim() {
            "" => None,
            name => Some(header_name(name).map_err(|e| invalid(USER_ID_HEADER, e))?),
        };
        let mut rules = parse_rules(&self.ext_authz_rules.replace(';', "\n"), "rule")
            .map_err(|e| invalid(RULES, e))?;
        if let Some(path) = &self.ext_authz_rules_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| invalid(RULES_FILE, format!("cannot read {}: {e}", path.display())))?;
            rules.extend(
                parse_rules(&text, &path.display().to_string())
                    .map_err(|e| invalid(RULES_FILE, e))?,
            );
        }
        let config = AuthzConfig {
            headers,
            user_id_header,
            binary: self.ext_authz_binary,
            allow_anonymous: self.ext_authz_allow_anonymous,
            fail_open: self.ext_authz_fail_open,
            dynamic_metadata: self.ext_authz_dynamic_metadata,
            rules,
        };
        config.validate().map_err(|e| invalid(HEADERS, e))?;
        Ok(Some(config))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ExtAuthzArgs,
    }

    fn config(args: &[&str]) -> Result<Option<AuthzConfig>, SettingsError> {
        let cli = Cli::try_parse_from(std::iter::once("usermeta").chain(args.iter().copied()))
            .expect("parses");
        cli.args.config()
    }

    #[test]
    fn off_unless_enabled() {
        assert_eq!(config(&["--ext-authz-headers", "a=x-a"]).unwrap(), None);
    }

    #[test]
    fn reads_every_setting() {
        let config = config(&[
            "--ext-authz",
            "--ext-authz-headers",
            "ContractNumber=x-user-contract-number",
            "--ext-authz-user-id-header",
            "",
            "--ext-authz-binary",
            "drop",
            "--ext-authz-allow-anonymous",
            "--ext-authz-fail-open",
            "--ext-authz-dynamic-metadata",
            "--ext-authz-rules",
            "path=/a role=x; path=/b metadata.k=v",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(config.headers.len(), 1);
        assert_eq!(config.user_id_header, None);
        assert_eq!(config.binary, BinaryValues::Drop);
        assert!(config.allow_anonymous && config.fail_open && config.dynamic_metadata);
        assert_eq!(config.rules.len(), 2);
        assert_eq!(config.rules[1].origin, "rule:2");
    }

    #[test]
    fn errors_name_the_setting() {
        let error = config(&["--ext-authz", "--ext-authz-headers", "a=X-A"])
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("USERMETA_EXT_AUTHZ_HEADERS"), "{error}");
        let error = config(&["--ext-authz", "--ext-authz-user-id-header", ":authority"])
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("USERMETA_EXT_AUTHZ_USER_ID_HEADER"),
            "{error}"
        );
        let error = config(&["--ext-authz", "--ext-authz-rules", "path=/a role=x;bogus"])
            .unwrap_err()
            .to_string();
        assert!(
            error.starts_with("USERMETA_EXT_AUTHZ_RULES") && error.contains("rule:2"),
            "{error}"
        );
        let error = config(&[
            "--ext-authz",
            "--ext-authz-rules-file",
            "/nonexistent/rules",
        ])
        .unwrap_err()
        .to_string();
        assert!(
            error.starts_with("USERMETA_EXT_AUTHZ_RULES_FILE"),
            "{error}"
        );
    }
}
