//! The command line and its settings. Every setting is a flag with an environment twin; start-up validates
//! them once and names the setting in every error.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};
use secrecy::SecretString;
use url::Url;

use crate::zitadel::ServiceCredential;

/// usermeta: one gRPC contract for reading and writing ZITADEL user metadata.
#[derive(Debug, Parser)]
#[command(name = "usermeta", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format.
    #[arg(long, env = "USERMETA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object a line.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the gRPC API against a ZITADEL instance.
    Serve(ServeArgs),
    /// Start an embedded ZITADEL stand-in with demo data and serve against it (for trying usermeta out).
    Dev(DevArgs),
    /// Ask a running usermeta for its gRPC health; exit 0 when SERVING, 1 otherwise (for container health checks).
    Healthcheck(HealthcheckArgs),
}

/// Settings of `usermeta serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address the gRPC server listens on.
    #[arg(long, env = "USERMETA_LISTEN", default_value = "0.0.0.0:50051")]
    pub listen: SocketAddr,
    /// URL of the ZITADEL instance (its issuer), e.g. https://my-instance.zitadel.cloud.
    #[arg(long, env = "USERMETA_ZITADEL_URL")]
    pub zitadel_url: String,
    #[command(flatten)]
    pub credential: CredentialArgs,
    #[command(flatten)]
    pub common: CommonArgs,
}

/// The service user's credential toward the management API: exactly one of these.
#[derive(Debug, Args)]
pub struct CredentialArgs {
    /// Personal access token of the ZITADEL service user (prefer the _FILE form: flags show up in `ps`).
    #[arg(long, env = "USERMETA_SERVICE_PAT", hide_env_values = true)]
    pub service_pat: Option<String>,
    /// File holding the service user's personal access token.
    #[arg(long, env = "USERMETA_SERVICE_PAT_FILE")]
    pub service_pat_file: Option<PathBuf>,
}

/// Settings shared by `serve` and `dev`.
#[derive(Debug, Args)]
pub struct CommonArgs {
    /// ZITADEL user ids allowed to read other users and to write or delete any user's metadata (comma-separated).
    #[arg(long, env = "USERMETA_ADMINS", value_delimiter = ',')]
    pub admins: Vec<String>,
    /// Key prefixes users may write and delete on themselves (comma-separated); none by default.
    #[arg(long, env = "USERMETA_SELF_WRITABLE_KEYS", value_delimiter = ',')]
    pub self_writable_keys: Vec<String>,
    /// How long one call to ZITADEL may take, e.g. 5s or 1500ms.
    #[arg(long, env = "USERMETA_UPSTREAM_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub upstream_timeout: Duration,
}

/// Settings of `usermeta dev`.
#[derive(Debug, Args)]
pub struct DevArgs {
    /// Address the gRPC server listens on.
    #[arg(long, env = "USERMETA_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,
    /// Address the ZITADEL stand-in listens on (port 0 picks a free one).
    #[arg(
        long,
        env = "USERMETA_DEV_ZITADEL_LISTEN",
        default_value = "127.0.0.1:0"
    )]
    pub zitadel_listen: SocketAddr,
    /// Key prefixes users may write and delete on themselves (comma-separated).
    #[arg(
        long,
        env = "USERMETA_SELF_WRITABLE_KEYS",
        value_delimiter = ',',
        default_value = "profile."
    )]
    pub self_writable_keys: Vec<String>,
}

/// Settings of `usermeta healthcheck`.
#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// Address (host:port) of the usermeta to check [default: USERMETA_LISTEN's port on loopback, else
    /// 127.0.0.1:50051].
    #[arg(long, env = "USERMETA_HEALTHCHECK_ADDR")]
    pub addr: Option<String>,
    /// Service to ask about; empty asks about the server as a whole.
    #[arg(long, default_value = "")]
    pub service: String,
    /// How long the whole check may take, e.g. 2s or 500ms.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// A setting is missing or wrong.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("{setting}: {problem}")]
    Invalid {
        setting: &'static str,
        problem: String,
    },
}

fn invalid(setting: &'static str, problem: impl Into<String>) -> SettingsError {
    SettingsError::Invalid {
        setting,
        problem: problem.into(),
    }
}

/// Parses and checks the ZITADEL URL.
pub fn zitadel_url(raw: &str) -> Result<Url, SettingsError> {
    const SETTING: &str = "USERMETA_ZITADEL_URL (--zitadel-url)";
    let url = Url::parse(raw.trim())
        .map_err(|e| invalid(SETTING, format!("`{raw}` is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(
            SETTING,
            format!("must be an http or https URL, is `{}:`", url.scheme()),
        ));
    }
    if url.host().is_none() {
        return Err(invalid(SETTING, "must name a host"));
    }
    if url.query().is_some()
        || url.fragment().is_some()
        || !url.username().is_empty()
        || url.password().is_some()
    {
        return Err(invalid(
            SETTING,
            "must not carry credentials, a query or a fragment",
        ));
    }
    Ok(url)
}

impl CredentialArgs {
    /// The one configured service credential.
    pub fn credential(&self) -> Result<ServiceCredential, SettingsError> {
        const BOTH: &str = "USERMETA_SERVICE_PAT (--service-pat) and USERMETA_SERVICE_PAT_FILE (--service-pat-file)";
        match (&self.service_pat, &self.service_pat_file) {
            (Some(_), Some(_)) => Err(invalid(BOTH, "both are set; set exactly one")),
            (None, None) => Err(invalid(
                BOTH,
                "no service credential is set; set one to the personal access token of a ZITADEL service user with a manager role",
            )),
            (Some(pat), None) => pat_from("USERMETA_SERVICE_PAT (--service-pat)", pat),
            (None, Some(path)) => {
                const SETTING: &str = "USERMETA_SERVICE_PAT_FILE (--service-pat-file)";
                let text = std::fs::read_to_string(path).map_err(|e| {
                    invalid(SETTING, format!("cannot read {}: {e}", path.display()))
                })?;
                pat_from(SETTING, &text)
            }
        }
    }
}

fn pat_from(setting: &'static str, text: &str) -> Result<ServiceCredential, SettingsError> {
    let pat = text.trim();
    if pat.is_empty() {
        return Err(invalid(setting, "the personal access token is empty"));
    }
    // The token goes into an Authorization header; say what is wrong without echoing it.
    if !pat.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid(
            setting,
            "the personal access token has spaces or non-ASCII characters; is it the right file?",
        ));
    }
    Ok(ServiceCredential::Pat(SecretString::from(pat)))
}

impl CommonArgs {
    /// Admin ids, trimmed, empty entries dropped.
    pub fn admins(&self) -> Vec<String> {
        clean_list(&self.admins)
    }
}

/// Self-writable key prefixes, trimmed. Empty entries are dropped: an empty prefix would make every key
/// self-writable, which nobody means by a stray comma.
pub fn self_writable_prefixes(raw: &[String]) -> Vec<String> {
    clean_list(raw)
}

fn clean_list(raw: &[String]) -> Vec<String> {
    raw.iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zitadel_url_must_be_http_with_a_host() {
        assert!(zitadel_url("https://my.zitadel.cloud").is_ok());
        assert!(zitadel_url("http://localhost:8080/").is_ok());
        for bad in [
            "my.zitadel.cloud",
            "ftp://x",
            "https://x?y=1",
            "https://u:p@x",
        ] {
            let error = zitadel_url(bad).unwrap_err().to_string();
            assert!(error.starts_with("USERMETA_ZITADEL_URL"), "{error}");
        }
    }

    #[test]
    fn exactly_one_credential() {
        let none = CredentialArgs {
            service_pat: None,
            service_pat_file: None,
        };
        assert!(
            none.credential()
                .unwrap_err()
                .to_string()
                .contains("no service credential")
        );
        let both = CredentialArgs {
            service_pat: Some("x".into()),
            service_pat_file: Some("/f".into()),
        };
        assert!(
            both.credential()
                .unwrap_err()
                .to_string()
                .contains("both are set")
        );
    }

    #[test]
    fn pat_file_problems_name_the_setting_not_the_secret() {
        let dir = std::env::temp_dir().join(format!("usermeta-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = CredentialArgs {
            service_pat: None,
            service_pat_file: Some(dir.join("nope.pat")),
        };
        let error = missing.credential().unwrap_err().to_string();
        assert!(
            error.starts_with("USERMETA_SERVICE_PAT_FILE") && error.contains("nope.pat"),
            "{error}"
        );

        let empty = dir.join("empty.pat");
        std::fs::write(&empty, "\n").unwrap();
        let error = CredentialArgs {
            service_pat: None,
            service_pat_file: Some(empty),
        }
        .credential()
        .unwrap_err();
        assert!(error.to_string().contains("empty"), "{error}");

        let spaced = dir.join("spaced.pat");
        std::fs::write(&spaced, "secret with spaces").unwrap();
        let error = CredentialArgs {
            service_pat: None,
            service_pat_file: Some(spaced),
        }
        .credential()
        .unwrap_err();
        assert!(!error.to_string().contains("secret"), "{error}");

        let good = dir.join("good.pat");
        std::fs::write(&good, "abc123\n").unwrap();
        assert!(
            CredentialArgs {
                service_pat: None,
                service_pat_file: Some(good)
            }
            .credential()
            .is_ok()
        );
    }

    #[test]
    fn empty_self_writable_prefixes_are_dropped() {
        assert_eq!(
            self_writable_prefixes(&["profile.".into(), " ".into(), "".into()]),
            ["profile."]
        );
        assert!(self_writable_prefixes(&[]).is_empty());
    }
}
