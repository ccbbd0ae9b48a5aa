//! The sealing key file ([`SEALING_KEYS_FILE`](crate::settings::names::SEALING_KEYS_FILE)): one key a line,
//! `<key-id> <32 random bytes, base64>`, oldest first. The last line's key seals; every key opens. Blank lines
//! and lines starting with `#` are skipped.
//!
//! ```text
//! # usermeta sealing keys: the last one seals, all of them open
//! 2026-01 8Qm0tC7m0YV0b1m1hQf9dZc0lY9rV2o8Q1xk3b4n5s8=
//! 2026-07 q1y5oZb0mM5l5bU8bq3x0kY2m7Q2mYV8Zr6e1r0n2s4=
//! ```
//!
//! The file must not be readable by others (`chmod 0400` or `0440`), and every key is exactly 32 bytes
//! (AES-256). The bytes never reach a log, an error or `Debug`: they are zeroed once the cipher holds them.

use base64::{
    Engine as _,
    engine::general_purpose::{STANDARD, URL_SAFE},
};
use zeroize::Zeroizing;

/// Bytes of a sealing key.
pub const KEY_BYTES: usize = 32;
/// Longest key id.
pub const MAX_KEY_ID: usize = 64;

/// A named key as read from the file, before it becomes a cipher. Its `Debug` shows the id only.
pub(super) struct KeyLine {
    pub(super) id: String,
    pub(super) secret: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for KeyLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyLine")
            .field("id", &self.id)
            .field("secret", &"[redacted]")
            .finish()
    }
}

/// Whether a key id can stand in an envelope: letters, digits, `.`, `_` and `-`, at most [`MAX_KEY_ID`].
pub(super) fn valid_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_KEY_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Reads and checks the file: not readable by others, at least one key, well-formed lines, distinct ids,
/// 32-byte keys. Errors name the line, never its secret.
pub(super) fn read(path: &std::path::Path) -> Result<Vec<KeyLine>, String> {
    check_permissions(path)?;
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
    );
    parse(&text).map_err(|problem| format!("{}: {problem}", path.display()))
}

#[cfg(unix)]
fn check_permissions(path: &std::path::Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o007 != 0 {
        return Err(format!(
            "{} is open to every user of the machine (mode {mode:04o}); whoever reads it opens every sealed value: `chmod 0400` it (0440 for a group, e.g. Kubernetes `defaultMode: 0440` with `fsGroup`)",
            path.display()
        ));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_permissions(_: &std::path::Path) -> Result<(), String> {
    Ok(())
}

pub(super) fn parse(text: &str) -> Result<Vec<KeyLine>, String> {
    let mut keys: Vec<KeyLine> = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let (Some(id), Some(encoded), None) = (fields.next(), fields.next(), fields.next()) else {
            return Err(format!(
                "line {number}: expected `<key-id> <base64 of {KEY_BYTES} random bytes>`"
            ));
        };
        if !valid_key_id(id) {
            return Err(format!(
                "line {number}: key id `{}` must be 1 to {MAX_KEY_ID} letters, digits, `.`, `_` or `-`",
                id.chars().take(MAX_KEY_ID).collect::<String>()
            ));
        }
        if keys.iter().any(|key| key.id == id) {
            return Err(format!(
                "line {number}: key id `{id}` is given twice; every key needs its own id"
            ));
        }
        let secret = Zeroizing::new(
            STANDARD
                .decode(encoded)
                .or_else(|_| URL_SAFE.decode(encoded))
                .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(encoded))
                .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(encoded))
                .map_err(|_| {
                    format!("line {number}: the key of `{id}` is not base64 (`openssl rand -base64 {KEY_BYTES}` makes one)")
                })?,
        );
        if secret.len() != KEY_BYTES {
            let what = if secret.len() < KEY_BYTES {
                "too short"
            } else {
                "too long"
            };
            return Err(format!(
                "line {number}: the key of `{id}` is {what}: {} bytes, needs exactly {KEY_BYTES} (`openssl rand -base64 {KEY_BYTES}` makes one)",
                secret.len()
            ));
        }
        keys.push(KeyLine {
            id: id.to_owned(),
            secret,
        });
    }
    if keys.is_empty() {
        return Err(format!(
            "holds no key; add a line `<key-id> <base64 of {KEY_BYTES} random bytes>`"
        ));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

    #[test]
    fn keys_are_read_oldest_first_and_comments_skipped() {
        let keys = parse(&format!("# keys\n\nold {K1}\n  new {K1}  \n")).unwrap();
        let ids: Vec<&str> = keys.iter().map(|k| k.id.as_str()).collect();
        assert_eq!(ids, ["old", "new"]);
        assert_eq!(keys[0].secret.len(), KEY_BYTES);
    }

    #[test]
    fn bad_files_are_refused_naming_the_line_and_never_the_secret() {
        let short = STANDARD.encode([9u8; 16]);
        for (text, wanted) in [
            (String::new(), "holds no key"),
            ("# only a comment\n".to_owned(), "holds no key"),
            (
                format!("k1 {short}\n"),
                "line 1: the key of `k1` is too short: 16 bytes",
            ),
            (
                format!("k1 {K1}\nk1 {K1}\n"),
                "line 2: key id `k1` is given twice",
            ),
            (format!("k:1 {K1}\n"), "line 1: key id `k:1` must be"),
            (
                "k1 not*base64\n".to_owned(),
                "line 1: the key of `k1` is not base64",
            ),
            (format!("k1 {K1} extra\n"), "line 1: expected"),
            ("k1\n".to_owned(), "line 1: expected"),
        ] {
            let error = parse(&text).unwrap_err();
            assert!(error.contains(wanted), "{text:?}: {error}");
            assert!(!error.contains(&short) && !error.contains(K1), "{error}");
        }
    }

    #[test]
    fn debug_shows_the_id_only() {
        let keys = parse(&format!("k1 {K1}\n")).unwrap();
        let shown = format!("{keys:?}");
        assert!(
            shown.contains("k1") && shown.contains("redacted"),
            "{shown}"
        );
        assert!(!shown.contains("[0, 1, 2"), "{shown}");
    }

    #[cfg(unix)]
    #[test]
    fn a_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("usermeta-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys");
        std::fs::write(&path, format!("k1 {K1}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = read(&path).unwrap_err();
        assert!(
            error.contains("mode 0644") && error.contains("chmod 0400"),
            "{error}"
        );
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o440)).unwrap();
        assert_eq!(read(&path).unwrap().len(), 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
