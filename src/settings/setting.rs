//! How messages name a setting: `USERMETA_X (--x)`, read from clap's own definition of the flag, so a
//! message can never name a variable or flag that does not exist.

use std::{collections::HashMap, fmt, sync::OnceLock};

use clap::CommandFactory as _;

/// A setting, by the id clap knows its flag by (the field name, e.g. `service_pat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting(&'static str);

impl Setting {
    /// The setting whose clap id (its field name) is `id`.
    pub const fn new(id: &'static str) -> Self {
        Setting(id)
    }
}

impl fmt::Display for Setting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match names().get(self.0) {
            Some(name) => f.write_str(name),
            // Not a flag (a bug the test below catches): the id is still the best name there is.
            None => f.write_str(self.0),
        }
    }
}

/// `id` → `ENV (--long)` for every flag of every subcommand that has both.
fn names() -> &'static HashMap<&'static str, String> {
    static NAMES: OnceLock<HashMap<&'static str, String>> = OnceLock::new();
    NAMES.get_or_init(|| {
        let mut names = HashMap::new();
        let mut pending = vec![super::Cli::command()];
        while let Some(command) = pending.pop() {
            for arg in command.get_arguments() {
                if let (Some(env), Some(long)) = (arg.get_env(), arg.get_long()) {
                    let id: &'static str =
                        Box::leak(arg.get_id().as_str().to_owned().into_boxed_str());
                    names
                        .entry(id)
                        .or_insert_with(|| format!("{} (--{long})", env.to_string_lossy()));
                }
            }
            pending.extend(command.get_subcommands().cloned());
        }
        names
    })
}

#[cfg(test)]
pub(super) fn is_known(setting: Setting) -> bool {
    names().contains_key(setting.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_setting_is_named_by_its_variable_and_flag() {
        assert_eq!(
            Setting::new("service_pat").to_string(),
            "USERMETA_SERVICE_PAT (--service-pat)"
        );
        assert_eq!(
            Setting::new("ext_authz_rules_file").to_string(),
            "USERMETA_EXT_AUTHZ_RULES_FILE (--ext-authz-rules-file)"
        );
    }
}
