//! The service credential: the ZITADEL service user usermeta manages metadata as, into a
//! [`ServiceCredential`].

use std::path::{Path, PathBuf};

use clap::Args;
use secrecy::SecretString;

use super::{
    Setting, SettingsError, invalid, names,
    secret::{SecretSetting, secret_from},
};
use usermeta_zitadel::{ServiceCredential, ServiceKey};

/// The service user's credential toward the management API: exactly one kind of these (a PAT, a JWT-profile
/// key file, or client credentials).
#[derive(Debug, Default, Args)]
pub struct CredentialArgs {
    /// Personal access token of the ZITADEL service user (prefer the _FILE form: flags show up in `ps`).
    #[arg(long, env = "USERMETA_SERVICE_PAT", hide_env_values = true)]
    pub service_pat: Option<String>,
    /// File holding the service user's personal access token.
    #[arg(long, env = names::SERVICE_PAT_FILE)]
    pub service_pat_file: Option<PathBuf>,
    /// JSON key file of the service user (JWT profile), as ZITADEL downloads it: {"type":"serviceaccount",...}.
    #[arg(long, env = "USERMETA_SERVICE_KEY_FILE")]
    pub service_key_file: Option<PathBuf>,
    /// Client id of the service user (client credentials), with a client secret.
    #[arg(long, env = "USERMETA_SERVICE_CLIENT_ID")]
    pub service_client_id: Option<String>,
    /// Client secret of the service user (prefer the _FILE form: flags show up in `ps`).
    #[arg(long, env = "USERMETA_SERVICE_CLIENT_SECRET", hide_env_values = true)]
    pub service_client_secret: Option<String>,
    /// File holding the service user's client secret.
    #[arg(long, env = "USERMETA_SERVICE_CLIENT_SECRET_FILE")]
    pub service_client_secret_file: Option<PathBuf>,
}

const PAT: SecretSetting = SecretSetting {
    value: Setting::new("service_pat"),
    file: Setting::new("service_pat_file"),
};
const KEY_FILE: Setting = Setting::new("service_key_file");
const CLIENT_ID: Setting = Setting::new("service_client_id");
const CLIENT_SECRET: SecretSetting = SecretSetting {
    value: Setting::new("service_client_secret"),
    file: Setting::new("service_client_secret_file"),
};
/// Every setting this module's messages name.
#[cfg(test)]
pub(super) const SETTINGS: [Setting; 6] = [
    PAT.value,
    PAT.file,
    KEY_FILE,
    CLIENT_ID,
    CLIENT_SECRET.value,
    CLIENT_SECRET.file,
];
const ALL_CREDENTIALS: &str = "USERMETA_SERVICE_PAT[_FILE], USERMETA_SERVICE_KEY_FILE, USERMETA_SERVICE_CLIENT_ID with USERMETA_SERVICE_CLIENT_SECRET[_FILE]";

impl CredentialArgs {
    /// The one configured service credential. Key and secret problems name the setting (and file) and the
    /// problem, never the content.
    pub fn credential(&self) -> Result<ServiceCredential, SettingsError> {
        let pat = self.service_pat.is_some() || self.service_pat_file.is_some();
        let key = self.service_key_file.is_some();
        let client = self.service_client_id.is_some()
            || self.service_client_secret.is_some()
            || self.service_client_secret_file.is_some();
        let kinds: Vec<&str> = [
            (pat, "a personal access token (USERMETA_SERVICE_PAT[_FILE])"),
            (key, "a JWT profile key (USERMETA_SERVICE_KEY_FILE)"),
            (
                client,
                "client credentials (USERMETA_SERVICE_CLIENT_ID/_SECRET[_FILE])",
            ),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect();
        match kinds.as_slice() {
            [] => {
                return Err(invalid(
                    ALL_CREDENTIALS,
                    "no service credential is set; set exactly one kind: a personal access token, a JWT profile key file, or client credentials of a ZITADEL service user with a manager role",
                ));
            }
            [_] => {}
            several => {
                return Err(invalid(
                    ALL_CREDENTIALS,
                    format!(
                        "{} are set; set exactly one kind of service credential",
                        several.join(" and ")
                    ),
                ));
            }
        }
        if pat {
            self.pat()
        } else if let Some(path) = &self.service_key_file {
            key_from_file(path)
        } else {
            self.client_credentials()
        }
    }

    fn pat(&self) -> Result<ServiceCredential, SettingsError> {
        match PAT.read(
            self.service_pat.as_deref(),
            self.service_pat_file.as_deref(),
        )? {
            Some((setting, text)) => pat_from(setting, &text),
            None => Err(invalid(PAT.value, "not set")),
        }
    }

    fn client_credentials(&self) -> Result<ServiceCredential, SettingsError> {
        let Some((setting, text)) = CLIENT_SECRET.read(
            self.service_client_secret.as_deref(),
            self.service_client_secret_file.as_deref(),
        )?
        else {
            return Err(invalid(
                CLIENT_SECRET.value,
                "not set, but USERMETA_SERVICE_CLIENT_ID is: set the client secret generated for the service user (or USERMETA_SERVICE_CLIENT_SECRET_FILE)",
            ));
        };
        let secret = secret_from(setting, &text)?;
        let client_id = self
            .service_client_id
            .as_deref()
            .map(str::trim)
            .unwrap_or_default();
        if client_id.is_empty() {
            return Err(invalid(
                CLIENT_ID,
                "not set or empty, but a client secret is: set the service user's client id",
            ));
        }
        Ok(ServiceCredential::ClientCredentials {
            client_id: client_id.to_owned(),
            secret,
        })
    }
}

fn key_from_file(path: &Path) -> Result<ServiceCredential, SettingsError> {
    let text = std::fs::read(path)
        .map_err(|e| invalid(KEY_FILE, format!("cannot read {}: {e}", path.display())))?;
    ServiceKey::from_json(&text)
        .map(ServiceCredential::JwtProfile)
        .map_err(|e| invalid(KEY_FILE, format!("{} {e}", path.display())))
}

fn pat_from(setting: Setting, text: &str) -> Result<ServiceCredential, SettingsError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::tests::temp_dir;

    #[test]
    fn exactly_one_credential() {
        let none = CredentialArgs::default();
        assert!(
            none.credential()
                .unwrap_err()
                .to_string()
                .contains("no service credential")
        );
        let both = CredentialArgs {
            service_pat: Some("x".into()),
            service_pat_file: Some("/f".into()),
            ..Default::default()
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
        let dir = temp_dir("settings");
        let written = |name: &str, content: &str| {
            let path = dir.join(name);
            std::fs::write(&path, content).unwrap();
            path
        };
        let pat_file = |path: PathBuf| {
            CredentialArgs {
                service_pat_file: Some(path),
                ..Default::default()
            }
            .credential()
        };
        let error = pat_file(dir.join("nope.pat")).unwrap_err().to_string();
        assert!(
            error.starts_with("USERMETA_SERVICE_PAT_FILE") && error.contains("nope.pat"),
            "{error}"
        );
        let error = pat_file(written("empty.pat", "\n")).unwrap_err();
        assert!(error.to_string().contains("empty"), "{error}");
        let error = pat_file(written("spaced.pat", "secret with spaces")).unwrap_err();
        assert!(!error.to_string().contains("secret"), "{error}");
        assert!(pat_file(written("good.pat", "abc123\n")).is_ok());
    }

    fn key_file_args(path: PathBuf) -> CredentialArgs {
        CredentialArgs {
            service_key_file: Some(path),
            ..Default::default()
        }
    }

    #[test]
    fn kinds_of_credential_exclude_each_other() {
        let error = CredentialArgs::default()
            .credential()
            .unwrap_err()
            .to_string();
        for setting in [
            "USERMETA_SERVICE_PAT",
            "USERMETA_SERVICE_KEY_FILE",
            "USERMETA_SERVICE_CLIENT_ID",
        ] {
            assert!(error.contains(setting), "{error}");
        }
        let two = CredentialArgs {
            service_pat: Some("p4t".into()),
            service_key_file: Some("/k.json".into()),
            ..Default::default()
        };
        let error = two.credential().unwrap_err().to_string();
        assert!(
            error.contains("USERMETA_SERVICE_PAT[_FILE]")
                && error.contains("USERMETA_SERVICE_KEY_FILE")
                && error.contains("exactly one"),
            "{error}"
        );
        assert!(!error.contains("p4t"), "{error}");
        let three = CredentialArgs {
            service_pat_file: Some("/p".into()),
            service_key_file: Some("/k.json".into()),
            service_client_id: Some("id".into()),
            ..Default::default()
        };
        assert!(
            three
                .credential()
                .unwrap_err()
                .to_string()
                .contains("client credentials")
        );
    }

    #[test]
    fn key_file_problems_name_the_file_and_the_problem_never_the_key() {
        let dir = temp_dir("keys");
        let good = zitadel_standin::keys::generate_rsa_key();
        let file = |name: &str, content: &str| {
            let path = dir.join(name);
            std::fs::write(&path, content).unwrap();
            path
        };
        let key_json = |kind: &str, pem: &str| {
            serde_json::json!({"type": kind, "keyId": "k1", "key": pem, "userId": "u1"}).to_string()
        };
        let bad_pem = "-----BEGIN RSA PRIVATE KEY-----\nc2VjcmV0LWtleS1tYXRlcmlhbA==\n-----END RSA PRIVATE KEY-----\n";
        let not_base64 = "-----BEGIN RSA PRIVATE KEY-----\nsecret key material!\n-----END RSA PRIVATE KEY-----\n";
        let cases: Vec<(PathBuf, &str)> = vec![
            (dir.join("missing.json"), "cannot read"),
            (dir.clone(), "cannot read"),
            (file("text.json", "secret key material"), "is not JSON"),
            (file("list.json", "[\"secret\"]"), "not a JSON object"),
            (
                file(
                    "no-key-id.json",
                    r#"{"type":"serviceaccount","key":"x","userId":"u"}"#,
                ),
                "no string field `keyId`",
            ),
            (
                file(
                    "no-key.json",
                    r#"{"type":"serviceaccount","keyId":"k","userId":"u"}"#,
                ),
                "no string field `key`",
            ),
            (
                file("app.json", &key_json("application", &good.private_pem)),
                "is an application key",
            ),
            (
                file("other.json", &key_json("jwt", &good.private_pem)),
                "expected \"serviceaccount\"",
            ),
            (
                file("bad-der.json", &key_json("serviceaccount", bad_pem)),
                "not a usable RSA private key",
            ),
            (
                file("bad-pem.json", &key_json("serviceaccount", not_base64)),
                "not a usable RSA private key",
            ),
            (
                file(
                    "not-pem.json",
                    &key_json("serviceaccount", "secret key material"),
                ),
                "not a usable RSA private key",
            ),
        ];
        for (path, problem) in cases {
            let error = key_file_args(path.clone())
                .credential()
                .unwrap_err()
                .to_string();
            assert!(error.starts_with("USERMETA_SERVICE_KEY_FILE"), "{error}");
            assert!(error.contains(&path.display().to_string()), "{error}");
            assert!(error.contains(problem), "{path:?}: {error}");
            for secret in ["secret", "c2VjcmV0", "MII"] {
                assert!(!error.contains(secret), "{error}");
            }
        }

        let ok = key_file_args(file(
            "good.json",
            &key_json("serviceaccount", &good.private_pem),
        ))
        .credential()
        .unwrap();
        assert_eq!(ok.describe(), "JWT profile key k1 of service user u1");
        assert!(!format!("{ok:?}").contains("PRIVATE"));
        // A PKCS#8 key works as well as ZITADEL's PKCS#1.
        let pkcs8 = {
            use aws_lc_rs::encoding::AsDer as _;
            let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
            let der = pair.as_der().unwrap();
            zitadel_standin::keys::pem("PRIVATE KEY", der.as_ref())
        };
        assert!(
            key_file_args(file("pkcs8.json", &key_json("serviceaccount", &pkcs8)))
                .credential()
                .is_ok()
        );
    }

    #[test]
    fn client_credentials_need_an_id_and_exactly_one_non_empty_secret() {
        let dir = temp_dir("client");
        let args = |id: Option<&str>, secret: Option<&str>, file: Option<PathBuf>| CredentialArgs {
            service_client_id: id.map(str::to_owned),
            service_client_secret: secret.map(str::to_owned),
            service_client_secret_file: file,
            ..Default::default()
        };
        let fails = |args: CredentialArgs, setting: &str, problem: &str| {
            let error = args.credential().unwrap_err().to_string();
            assert!(error.starts_with(setting), "{error}");
            assert!(error.contains(problem), "{error}");
            assert!(!error.contains("s3cr3t"), "{error}");
        };
        fails(
            args(Some("svc"), None, None),
            "USERMETA_SERVICE_CLIENT_SECRET",
            "not set",
        );
        fails(
            args(None, Some("s3cr3t"), None),
            "USERMETA_SERVICE_CLIENT_ID",
            "not set or empty",
        );
        fails(
            args(Some(" "), Some("s3cr3t"), None),
            "USERMETA_SERVICE_CLIENT_ID",
            "not set or empty",
        );
        fails(
            args(Some("svc"), Some(" \n"), None),
            "USERMETA_SERVICE_CLIENT_SECRET",
            "empty",
        );
        fails(
            args(Some("svc"), Some("s3cr3t"), Some(dir.join("x"))),
            "USERMETA_SERVICE_CLIENT_SECRET",
            "both are set",
        );
        fails(
            args(Some("svc"), None, Some(dir.join("missing"))),
            "USERMETA_SERVICE_CLIENT_SECRET_FILE",
            "cannot read",
        );
        let empty = dir.join("empty");
        std::fs::write(&empty, "\n").unwrap();
        fails(
            args(Some("svc"), None, Some(empty)),
            "USERMETA_SERVICE_CLIENT_SECRET_FILE",
            "empty",
        );

        let good = dir.join("good");
        std::fs::write(&good, "s3cr3t\n").unwrap();
        let credential = args(Some("svc@acme"), None, Some(good))
            .credential()
            .unwrap();
        assert_eq!(
            credential.describe(),
            "client credentials of client svc@acme"
        );
        assert!(!format!("{credential:?}").contains("s3cr3t"));
        assert!(args(Some("svc"), Some("s3cr3t"), None).credential().is_ok());
    }
}
