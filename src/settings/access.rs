//! Access: who callers are (introspection, local JWT validation, or userinfo) and what they may do (the
//! policy, and usermeta's project whose roles it means), validated into [`IdentityConfig`] and [`Policy`].

use std::{path::PathBuf, time::Duration};

use clap::Args;

use super::{
    Setting, SettingsError, clean_list, invalid, names,
    secret::{SecretSetting, secret_from},
    self_writable_prefixes,
};
use crate::{
    caller::{ApplicationKey, IdentityConfig, IntrospectionAuth, JwtConfig},
    policy::Policy,
    sealing::Sealer,
};

/// The instance name sealed values are bound to by default: the ZITADEL URL without a trailing slash (so
/// `https://id.example.com` and `https://id.example.com/` are one instance).
pub(crate) fn sealing_instance_of(zitadel_url: &url::Url) -> String {
    zitadel_url.as_str().trim_end_matches('/').to_owned()
}

/// Who callers are (introspection, local JWT validation, or userinfo) and what they may do (the policy).
#[derive(Debug, Default, Args)]
pub struct AccessArgs {
    /// TOML file of authorisation rules and key declarations; without it, users may read their own metadata
    /// and only USERMETA_ADMINS / USERMETA_SELF_WRITABLE_KEYS grant more.
    #[arg(long, env = names::POLICY_FILE)]
    pub policy_file: Option<PathBuf>,
    /// File of the keys that seal the policy's `sealed` keys: one `<key-id> <base64 of 32 random bytes>` a
    /// line, oldest first; the last seals, all open. Must not be readable by others (chmod 0400). Required
    /// when the policy seals a key; back it up: values sealed under a lost key are lost.
    #[arg(long, env = names::SEALING_KEYS_FILE)]
    pub sealing_keys_file: Option<PathBuf>,
    /// The ZITADEL instance sealed values are bound to (in each value's associated data); default:
    /// USERMETA_ZITADEL_URL as given. Set it to the old URL when ZITADEL moves to a new URL, so values
    /// sealed before still open.
    #[arg(long, env = names::SEALING_INSTANCE)]
    pub sealing_instance: Option<String>,
    /// Client id of usermeta's ZITADEL API application, to introspect callers' tokens (with a client secret).
    #[arg(long, env = "USERMETA_INTROSPECTION_CLIENT_ID")]
    pub introspection_client_id: Option<String>,
    /// Client secret of that API application (prefer the _FILE form: flags show up in `ps`).
    #[arg(long, env = "USERMETA_INTROSPECTION_SECRET", hide_env_values = true)]
    pub introspection_secret: Option<String>,
    /// File holding that API application's client secret.
    #[arg(long, env = "USERMETA_INTROSPECTION_SECRET_FILE")]
    pub introspection_secret_file: Option<PathBuf>,
    /// Key file of usermeta's API application (private_key_jwt): {"type":"application",...}.
    #[arg(long, env = "USERMETA_INTROSPECTION_KEY_FILE")]
    pub introspection_key_file: Option<PathBuf>,
    /// Validate JWT access tokens locally against ZITADEL's keys; the accepted audiences (usermeta's project
    /// id or client id, comma-separated).
    #[arg(long, env = names::JWT_AUDIENCE, value_delimiter = ',')]
    pub jwt_audience: Vec<String>,
    /// Shortest time between two fetches of ZITADEL's keys caused by an unknown key id.
    #[arg(long, env = "USERMETA_JWKS_MIN_REFRESH", default_value = "30s", value_parser = humantime::parse_duration)]
    pub jwks_min_refresh: Duration,
    /// usermeta's ZITADEL project id: only the roles ZITADEL asserts for this project (the claim
    /// `urn:zitadel:iam:org:project:{id}:roles`) are callers' roles. Required when a policy or ext_authz rule
    /// names roles.
    #[arg(long, env = names::PROJECT_ID)]
    pub project_id: Option<String>,
    /// ZITADEL user ids allowed to read other users and to write or delete any user's metadata (comma-separated).
    #[arg(long, env = names::ADMINS, value_delimiter = ',')]
    pub admins: Vec<String>,
    /// Key prefixes users may write and delete on themselves (comma-separated); none by default.
    #[arg(long, env = names::SELF_WRITABLE_KEYS, value_delimiter = ',')]
    pub self_writable_keys: Vec<String>,
}

const INTROSPECTION_ID: Setting = Setting::new("introspection_client_id");
const INTROSPECTION_SECRET: SecretSetting = SecretSetting {
    value: Setting::new("introspection_secret"),
    file: Setting::new("introspection_secret_file"),
};
const INTROSPECTION_KEY_FILE: Setting = Setting::new("introspection_key_file");
const POLICY_FILE: Setting = Setting::new("policy_file");
const SEALING_KEYS_FILE: Setting = Setting::new("sealing_keys_file");
const SEALING_INSTANCE: Setting = Setting::new("sealing_instance");
/// The setting that names usermeta's project, for messages of rules that need it.
pub const PROJECT_ID: Setting = Setting::new("project_id");

/// Every setting this module's messages name.
#[cfg(test)]
pub(super) const SETTINGS: [Setting; 8] = [
    INTROSPECTION_ID,
    INTROSPECTION_SECRET.value,
    INTROSPECTION_SECRET.file,
    INTROSPECTION_KEY_FILE,
    POLICY_FILE,
    SEALING_KEYS_FILE,
    SEALING_INSTANCE,
    PROJECT_ID,
];

impl AccessArgs {
    /// How callers are identified. Secrets and keys are named by setting and file, never shown.
    pub fn identity(&self) -> Result<IdentityConfig, SettingsError> {
        let audience = clean_list(&self.jwt_audience);
        let jwt = (!audience.is_empty()).then_some(JwtConfig {
            audience,
            min_refresh_interval: self.jwks_min_refresh,
        });
        Ok(IdentityConfig {
            introspection: self.introspection()?,
            jwt,
        })
    }

    fn introspection(&self) -> Result<Option<IntrospectionAuth>, SettingsError> {
        let client_id = self
            .introspection_client_id
            .as_deref()
            .map(str::trim)
            .filter(|id| !id.is_empty());
        let secret = INTROSPECTION_SECRET
            .read(
                self.introspection_secret.as_deref(),
                self.introspection_secret_file.as_deref(),
            )?
            .map(|(setting, text)| secret_from(setting, &text))
            .transpose()?;
        match (client_id, secret, &self.introspection_key_file) {
            (None, None, None) => Ok(None),
            (_, Some(_), Some(_)) => Err(invalid(
                INTROSPECTION_KEY_FILE,
                "both a client secret and a key file are set for introspection; set exactly one",
            )),
            (Some(client_id), Some(secret), None) => Ok(Some(IntrospectionAuth::ClientSecret {
                client_id: client_id.to_owned(),
                secret,
            })),
            (None, Some(_), None) => Err(invalid(
                INTROSPECTION_ID,
                "not set, but an introspection secret is: set the API application's client id",
            )),
            (Some(_), None, None) => Err(invalid(
                INTROSPECTION_SECRET.value,
                "not set, but USERMETA_INTROSPECTION_CLIENT_ID is: set the API application's client secret (or USERMETA_INTROSPECTION_SECRET_FILE), or its key file (USERMETA_INTROSPECTION_KEY_FILE)",
            )),
            (client_id, None, Some(path)) => {
                let text = std::fs::read(path).map_err(|e| {
                    invalid(
                        INTROSPECTION_KEY_FILE,
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                let key = ApplicationKey::from_json(&text).map_err(|e| {
                    invalid(INTROSPECTION_KEY_FILE, format!("{} {e}", path.display()))
                })?;
                if let Some(id) = client_id
                    && id != key.client_id()
                {
                    return Err(invalid(
                        INTROSPECTION_ID,
                        format!(
                            "is {id}, but the key file {} belongs to client {}",
                            path.display(),
                            key.client_id()
                        ),
                    ));
                }
                Ok(Some(IntrospectionAuth::PrivateKeyJwt(key)))
            }
        }
    }

    /// usermeta's project id, trimmed; `None` when unset.
    pub fn project_id(&self) -> Result<Option<String>, SettingsError> {
        let Some(id) = self.project_id.as_deref().map(str::trim) else {
            return Ok(None);
        };
        if id.is_empty()
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b))
        {
            return Err(invalid(
                PROJECT_ID,
                format!(
                    "`{id}` is not a ZITADEL project id (letters, digits, `-`, `_`); copy it from the project's page in ZITADEL Console"
                ),
            ));
        }
        Ok(Some(id.to_owned()))
    }

    /// The policy with its sealing keys ([`AccessArgs::policy`], [`AccessArgs::sealer`]): a policy that seals
    /// a key without a key file stops start-up naming both settings.
    pub fn sealed_policy(&self, zitadel_url: &url::Url) -> Result<Policy, SettingsError> {
        let policy = self.policy()?;
        let sealed = policy.sealed_keys();
        match self.sealer(zitadel_url)? {
            Some(sealer) => Ok(policy.with_sealer(std::sync::Arc::new(sealer))),
            None if sealed.is_empty() => Ok(policy),
            None => Err(invalid(
                SEALING_KEYS_FILE,
                format!(
                    "not set, but {POLICY_FILE} declares sealed keys ({}); set it to a file of sealing keys (`<key-id> <base64 of 32 random bytes>` a line; see the book's chapter on sealed keys), or drop `sealed = true`",
                    sealed.join(", ")
                ),
            )),
        }
    }

    /// The sealing keys, when a key file is set, bound to the instance ([`names::SEALING_INSTANCE`], else the
    /// ZITADEL URL as given). A file others may read, that is malformed or holds a short key stops start-up.
    pub fn sealer(&self, zitadel_url: &url::Url) -> Result<Option<Sealer>, SettingsError> {
        let Some(path) = &self.sealing_keys_file else {
            return Ok(None);
        };
        let instance = match self.sealing_instance.as_deref().map(str::trim) {
            Some("") => {
                return Err(invalid(
                    SEALING_INSTANCE,
                    "is empty; leave it unset to bind sealed values to the ZITADEL URL",
                ));
            }
            Some(named) => named.to_owned(),
            None => sealing_instance_of(zitadel_url),
        };
        Sealer::load(path, &instance)
            .map(Some)
            .map_err(|problem| invalid(SEALING_KEYS_FILE, problem))
    }

    /// The policy file (when set) plus the shorthand rules. A rule that names roles needs
    /// USERMETA_PROJECT_ID: roles mean nothing without the project that defines them.
    pub fn policy(&self) -> Result<Policy, SettingsError> {
        let policy = match &self.policy_file {
            Some(path) => Policy::load(path).map_err(|e| invalid(POLICY_FILE, e.to_string()))?,
            None => Policy::default(),
        };
        if self.project_id()?.is_none()
            && let Some(rule) = policy
                .rules()
                .iter()
                .find(|rule| !rule.who.roles.is_empty())
        {
            return Err(invalid(
                PROJECT_ID,
                format!(
                    "not set, but rule `{}` of USERMETA_POLICY_FILE names roles; set it to usermeta's ZITADEL project id, whose roles the rules mean (roles of other projects never count)",
                    rule.name
                ),
            ));
        }
        Ok(policy.with_shorthands(
            clean_list(&self.admins),
            self_writable_prefixes(&self.self_writable_keys),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::tests::temp_dir;

    /// A policy file sealing `secret.*`, and (when `keys` is given) a key file with that text and `mode`.
    fn sealing_args(name: &str, keys: Option<(&str, u32)>) -> AccessArgs {
        let dir = temp_dir(name);
        let policy = dir.join("policy.toml");
        std::fs::write(&policy, "[[key]]\nname = \"secret.*\"\nsealed = true\n").unwrap();
        let sealing_keys_file = keys.map(|(text, mode)| {
            let path = dir.join("sealing-keys");
            std::fs::write(&path, text).unwrap();
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt as _;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            }
            path
        });
        AccessArgs {
            policy_file: Some(policy),
            sealing_keys_file,
            ..Default::default()
        }
    }

    const GOOD_KEY: &str = "k1 AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n";

    #[test]
    fn sealed_keys_need_a_sound_key_file_and_errors_never_show_a_key() {
        let url: url::Url = "https://acme.zitadel.cloud/".parse().unwrap();
        let missing = sealing_args("seal-missing", None)
            .sealed_policy(&url)
            .unwrap_err()
            .to_string();
        assert!(
            missing.starts_with("USERMETA_SEALING_KEYS_FILE")
                && missing.contains("USERMETA_POLICY_FILE")
                && missing.contains("secret.*"),
            "{missing}"
        );
        for (name, text, mode, wanted) in [
            ("seal-open", GOOD_KEY, 0o644, "mode 0644"),
            (
                "seal-short",
                "k1 AAECAwQFBgcICQoLDA0ODw==\n",
                0o400,
                "too short: 16 bytes",
            ),
            ("seal-malformed", "k1\n", 0o400, "line 1: expected"),
            ("seal-empty", "# nothing\n", 0o400, "holds no key"),
        ] {
            let error = sealing_args(name, Some((text, mode)))
                .sealed_policy(&url)
                .unwrap_err()
                .to_string();
            assert!(
                error.starts_with("USERMETA_SEALING_KEYS_FILE") && error.contains(wanted),
                "{name}: {error}"
            );
            assert!(!error.contains("AAECAwQF"), "{error}");
        }
        let policy = sealing_args("seal-good", Some((GOOD_KEY, 0o400)))
            .sealed_policy(&url)
            .unwrap();
        let sealer = policy.sealer().expect("sealing keys");
        assert_eq!(sealer.newest_key_id(), "k1");
        // Bound to the URL without its trailing slash, as ZITADEL names itself.
        assert!(
            format!("{sealer:?}").contains("\"https://acme.zitadel.cloud\""),
            "{sealer:?}"
        );
    }

    #[test]
    fn a_bad_policy_file_stops_start_up_naming_setting_file_and_line() {
        let dir = temp_dir("policy");
        let path = dir.join("policy.toml");
        std::fs::write(
            &path,
            "# comment\n[[rule]]\nwhose = \"self\"\nkeys = [\"a\"]\nactions = [\"read\", \"fly\"]\n",
        )
        .unwrap();
        let args = AccessArgs {
            policy_file: Some(path.clone()),
            ..Default::default()
        };
        let error = args.policy().unwrap_err().to_string();
        assert!(error.starts_with("USERMETA_POLICY_FILE"), "{error}");
        assert!(
            error.contains(&format!("{}, line 5", path.display())),
            "{error}"
        );
        assert!(error.contains("fly"), "{error}");
    }

    #[test]
    fn introspection_needs_a_client_id_with_exactly_one_credential() {
        let only_id = AccessArgs {
            introspection_client_id: Some("app@project".into()),
            ..Default::default()
        };
        assert!(
            only_id
                .identity()
                .unwrap_err()
                .to_string()
                .starts_with("USERMETA_INTROSPECTION_SECRET")
        );
        let only_secret = AccessArgs {
            introspection_secret: Some("s3cr3t".into()),
            ..Default::default()
        };
        let error = only_secret.identity().unwrap_err().to_string();
        assert!(
            error.starts_with("USERMETA_INTROSPECTION_CLIENT_ID"),
            "{error}"
        );
        assert!(!error.contains("s3cr3t"), "{error}");
        let both = AccessArgs {
            introspection_client_id: Some("app@project".into()),
            introspection_secret: Some("s3cr3t".into()),
            introspection_key_file: Some("/k.json".into()),
            ..Default::default()
        };
        assert!(
            both.identity()
                .unwrap_err()
                .to_string()
                .contains("exactly one")
        );
        let none = AccessArgs::default().identity().unwrap();
        assert!(none.introspection.is_none() && none.jwt.is_none());
    }
}
