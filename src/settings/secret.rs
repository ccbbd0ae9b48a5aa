//! Secrets given as a value or as a file holding it (the `_FILE` twin), read so that no message shows them.

use std::path::Path;

use secrecy::SecretString;

use super::{Setting, SettingsError, invalid};

/// A secret file's content; a file that cannot be read is an error naming `setting` and the path.
pub(super) fn read_secret_file(setting: Setting, path: &Path) -> Result<String, SettingsError> {
    std::fs::read_to_string(path)
        .map_err(|e| invalid(setting, format!("cannot read {}: {e}", path.display())))
}

/// A client secret, trimmed; empty is an error naming `setting`.
pub(super) fn secret_from(setting: Setting, text: &str) -> Result<SecretString, SettingsError> {
    let secret = text.trim();
    if secret.is_empty() {
        return Err(invalid(setting, "the client secret is empty"));
    }
    Ok(SecretString::from(secret))
}

/// A secret set either as itself or in a file (its `_FILE` twin), never both.
#[derive(Debug, Clone, Copy)]
pub(super) struct SecretSetting {
    /// The setting holding the secret itself (shown in `ps` when given as a flag).
    pub value: Setting,
    /// The setting naming a file that holds it.
    pub file: Setting,
}

impl SecretSetting {
    /// The secret's text and the setting it came from (so a later problem names that one); `None` when
    /// neither is set. Both set, or a file that cannot be read, is an error naming the setting, never the text.
    pub(super) fn read(
        self,
        value: Option<&str>,
        file: Option<&Path>,
    ) -> Result<Option<(Setting, String)>, SettingsError> {
        match (value, file) {
            (Some(_), Some(_)) => Err(invalid(
                format!("{} and {}", self.value, self.file),
                "both are set; set exactly one",
            )),
            (Some(value), None) => Ok(Some((self.value, value.to_owned()))),
            (None, Some(path)) => Ok(Some((self.file, read_secret_file(self.file, path)?))),
            (None, None) => Ok(None),
        }
    }
}
