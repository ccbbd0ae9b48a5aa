//! Sealed keys: values usermeta encrypts before they go to ZITADEL and opens for the callers the policy lets
//! read them, so ZITADEL (its Console, userinfo, the auth API, the tokens it issues) holds only ciphertext.
//!
//! A [`Sealer`] holds the keys of [`SEALING_KEYS_FILE`](crate::settings::names::SEALING_KEYS_FILE) (the newest
//! seals, all open) and the instance it seals for. The cipher is AES-256-GCM-SIV (aws-lc-rs) with a random
//! 96-bit nonce: nonce-misuse resistant, so even a repeated nonce reveals no more than that two values are
//! equal. The associated data binds each ciphertext to its ZITADEL instance, its owner (a user, or an
//! organisation) and its key name, and to the envelope's version and key id: a value copied to another user,
//! key or instance does not open. The stored form is described in [`envelope`].
//!
//! Sealing is a transformation at the boundary: a value is sealed right before it goes to ZITADEL and opened
//! right after it comes back; everything between (the policy's value rules, conditional writes) sees the
//! plaintext.

pub mod envelope;
mod keys;

use std::{collections::HashSet, sync::Mutex};

use aws_lc_rs::aead::{AES_256_GCM_SIV, Aad, Nonce, RandomizedNonceKey};

pub use envelope::Malformed;
pub use keys::{KEY_BYTES, MAX_KEY_ID};

/// Whose value a sealed value is: the associated data names the kind and the id, so a user's value never
/// opens as an organisation's with the same id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner<'a> {
    /// A user's metadata (its ZITADEL user id).
    User(&'a str),
    /// An organisation's metadata (its ZITADEL organisation id).
    Organization(&'a str),
}

impl Owner<'_> {
    fn kind(self) -> &'static str {
        match self {
            Owner::User(_) => "user",
            Owner::Organization(_) => "organization",
        }
    }
}

/// Why a stored value of a sealed key does not open. Carries no part of the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unopenable {
    /// Plaintext, or an envelope that is damaged or of an unknown version.
    #[error("{}", malformed_text(.0))]
    Malformed(Malformed),
    /// Sealed under a key id the key file does not hold.
    #[error(
        "it is sealed under key `{0}`, which {file} does not hold (a key removed too early, or a value from another deployment)",
        file = crate::settings::names::SEALING_KEYS_FILE
    )]
    UnknownKey(String),
    /// The envelope does not open: altered, or copied from another user, key or ZITADEL instance.
    #[error(
        "it does not open: the envelope was altered, or copied from another user, key or ZITADEL instance"
    )]
    DoesNotOpen,
}

fn malformed_text(malformed: &Malformed) -> &'static str {
    match malformed {
        Malformed::NotSealed => {
            "it is not sealed (plaintext written around usermeta, e.g. in the ZITADEL Console, or before the key was sealed)"
        }
        Malformed::UnknownVersion => "it is an envelope of a version this usermeta does not know",
        Malformed::Damaged => "the envelope is damaged (cut short, or not base64url)",
    }
}

impl Unopenable {
    /// A short label for metrics and the status's `ErrorInfo`.
    pub fn label(&self) -> &'static str {
        match self {
            Unopenable::Malformed(Malformed::NotSealed) => "not_sealed",
            Unopenable::Malformed(Malformed::UnknownVersion) => "unknown_version",
            Unopenable::Malformed(Malformed::Damaged) => "damaged",
            Unopenable::UnknownKey(_) => "unknown_key",
            Unopenable::DoesNotOpen => "does_not_open",
        }
    }
}

/// A value opened, and whether its sealing key is the newest (else a re-seal would move it).
#[derive(Debug)]
pub struct Opened {
    /// The plaintext.
    pub plaintext: Vec<u8>,
    /// Whether the key that sealed it is the one that seals now.
    pub under_newest_key: bool,
}

struct SealingKey {
    id: String,
    cipher: RandomizedNonceKey,
}

/// The sealing keys and the instance they seal for. `Debug` names key ids only.
pub struct Sealer {
    instance: String,
    /// Oldest first; the last one seals.
    keys: Vec<SealingKey>,
    /// Keys whose unopenable values were logged already (logged once per key).
    reported: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("instance", &self.instance)
            .field(
                "key_ids",
                &self.keys.iter().map(|k| k.id.as_str()).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl Sealer {
    /// Reads the key file at `path` and seals for `instance` (the ZITADEL instance, as configured). Errors
    /// describe the file's problem without any key.
    pub fn load(path: &std::path::Path, instance: &str) -> Result<Sealer, String> {
        Sealer::from_lines(keys::read(path)?, instance)
    }

    /// A sealer from the text of a key file (tests, and tools that hold the text already).
    pub fn from_text(text: &str, instance: &str) -> Result<Sealer, String> {
        Sealer::from_lines(keys::parse(text)?, instance)
    }

    fn from_lines(lines: Vec<keys::KeyLine>, instance: &str) -> Result<Sealer, String> {
        let keys = lines
            .into_iter()
            .map(|line| {
                // The line's bytes are zeroed when it drops, right after the cipher took them.
                let cipher = RandomizedNonceKey::new(&AES_256_GCM_SIV, &line.secret)
                    .map_err(|_| format!("key `{}` cannot be used for AES-256-GCM-SIV", line.id))?;
                Ok(SealingKey {
                    id: line.id,
                    cipher,
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Sealer {
            instance: instance.to_owned(),
            keys,
            reported: Mutex::new(HashSet::new()),
        })
    }

    /// The id of the key that seals.
    pub fn newest_key_id(&self) -> &str {
        self.newest().id.as_str()
    }

    fn newest(&self) -> &SealingKey {
        // `from_lines` refuses a file without keys.
        &self.keys[self.keys.len() - 1]
    }

    /// The bytes ZITADEL stores for `plaintext` of `owner`'s `key`.
    pub fn seal(&self, owner: Owner<'_>, key: &str, plaintext: &[u8]) -> Vec<u8> {
        let newest = self.newest();
        let aad = self.associated_data(&newest.id, owner, key);
        let mut in_out = plaintext.to_vec();
        // Sealing fails only on inputs far beyond ZITADEL's limits (or a broken random source): not a value
        // ever seen here. Refusing to go on is the only safe answer then.
        #[allow(clippy::expect_used)]
        let nonce = newest
            .cipher
            .seal_in_place_append_tag(Aad::from(aad.as_slice()), &mut in_out)
            .expect("AES-256-GCM-SIV sealing of a value within ZITADEL's limits");
        let mut sealed = Vec::with_capacity(envelope::NONCE_BYTES + in_out.len());
        sealed.extend_from_slice(nonce.as_ref());
        sealed.extend_from_slice(&in_out);
        envelope::write(&newest.id, &sealed)
    }

    /// How many bytes ZITADEL stores for a plaintext of `plaintext_len` bytes sealed now.
    pub fn sealed_len(&self, plaintext_len: usize) -> usize {
        envelope::sealed_len(
            self.newest_key_id().len(),
            envelope::NONCE_BYTES + plaintext_len + envelope::TAG_BYTES,
        )
    }

    /// The largest plaintext whose sealed form fits in `stored_limit` bytes.
    pub fn max_plaintext(&self, stored_limit: usize) -> usize {
        // Base64 makes 4 bytes of 3: start from the inverse and step down to the exact bound.
        let mut len =
            (stored_limit * 3 / 4).saturating_sub(envelope::NONCE_BYTES + envelope::TAG_BYTES);
        while len > 0 && self.sealed_len(len) > stored_limit {
            len -= 1;
        }
        len
    }

    /// Opens what ZITADEL stores for `owner`'s `key`.
    pub fn open(&self, owner: Owner<'_>, key: &str, stored: &[u8]) -> Result<Opened, Unopenable> {
        let parsed = envelope::parse(stored).map_err(Unopenable::Malformed)?;
        let position = self
            .keys
            .iter()
            .position(|k| k.id == parsed.key_id)
            .ok_or_else(|| Unopenable::UnknownKey(parsed.key_id.to_owned()))?;
        let sealing_key = &self.keys[position];
        let aad = self.associated_data(&sealing_key.id, owner, key);
        let (nonce, ciphertext) = parsed.sealed.split_at(envelope::NONCE_BYTES);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| Unopenable::DoesNotOpen)?;
        let mut in_out = ciphertext.to_vec();
        let plaintext_len = sealing_key
            .cipher
            .open_in_place(nonce, Aad::from(aad.as_slice()), &mut in_out)
            .map_err(|_| Unopenable::DoesNotOpen)?
            .len();
        in_out.truncate(plaintext_len);
        Ok(Opened {
            plaintext: in_out,
            under_newest_key: position == self.keys.len() - 1,
        })
    }

    /// Whether `key`'s unopenable values are being reported for the first time (each key is logged once).
    pub fn first_report(&self, key: &str) -> bool {
        match self.reported.lock() {
            Ok(mut reported) => reported.insert(key.to_owned()),
            Err(_) => false,
        }
    }

    /// Version, key id, instance, owner kind and id, key name: each length-prefixed, so no two differ only in
    /// where one field ends.
    fn associated_data(&self, key_id: &str, owner: Owner<'_>, key: &str) -> Vec<u8> {
        let owner_id = match owner {
            Owner::User(id) | Owner::Organization(id) => id,
        };
        let fields: [&[u8]; 6] = [
            envelope::VERSION.as_bytes(),
            key_id.as_bytes(),
            self.instance.as_bytes(),
            owner.kind().as_bytes(),
            owner_id.as_bytes(),
            key.as_bytes(),
        ];
        let mut aad = Vec::with_capacity(
            envelope::PREFIX.len() + fields.iter().map(|f| f.len() + 4).sum::<usize>(),
        );
        aad.extend_from_slice(envelope::PREFIX.as_bytes());
        for field in fields {
            aad.extend_from_slice(&u32::try_from(field.len()).unwrap_or(u32::MAX).to_be_bytes());
            aad.extend_from_slice(field);
        }
        aad
    }
}

#[cfg(test)]
mod tests;
