//! Who may do what. The default is safe: anyone may read their own metadata; reading another user and every
//! write or delete on another user needs an admin; callers may write or delete their own keys only under the
//! configured self-writable prefixes. Every decision is made before any management call.

use std::collections::HashSet;

use crate::caller::Identity;

/// What a request wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Read,
    Write,
    Delete,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Write => "write",
            Action::Delete => "delete",
        }
    }

    fn gerund(self) -> &'static str {
        match self {
            Action::Read => "reading",
            Action::Write => "writing",
            Action::Delete => "deleting",
        }
    }
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    #[error("{action} metadata of another user requires a usermeta admin (USERMETA_ADMINS); caller {caller} is not one", action = .action.gerund())]
    NotAdmin { action: Action, caller: String },
    #[error("key `{key}` is not writable by the user themself: only keys starting with one of [{prefixes}] are (USERMETA_SELF_WRITABLE_KEYS)", prefixes = .prefixes.join(", "))]
    KeyNotSelfWritable {
        action: Action,
        key: String,
        prefixes: Vec<String>,
    },
}

/// The authorisation rules in force.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    admins: HashSet<String>,
    self_writable_prefixes: Vec<String>,
}

impl Policy {
    /// `admins` are ZITADEL user ids; `self_writable_prefixes` are key prefixes users may change on themselves.
    pub fn new(
        admins: impl IntoIterator<Item = String>,
        self_writable_prefixes: Vec<String>,
    ) -> Self {
        Policy {
            admins: admins.into_iter().collect(),
            self_writable_prefixes,
        }
    }

    fn is_admin(&self, caller: &Identity) -> bool {
        self.admins.contains(&caller.sub)
    }

    /// May `caller` do `action` on `keys` of user `target`? Reads of another user pass no keys.
    pub fn authorize<'k>(
        &self,
        caller: &Identity,
        target_user_id: &str,
        action: Action,
        keys: impl IntoIterator<Item = &'k str>,
    ) -> Result<(), Denial> {
        if self.is_admin(caller) {
            return Ok(());
        }
        if caller.sub != target_user_id {
            return Err(Denial::NotAdmin {
                action,
                caller: caller.sub.clone(),
            });
        }
        if action == Action::Read {
            return Ok(());
        }
        for key in keys {
            if !self
                .self_writable_prefixes
                .iter()
                .any(|prefix| key.starts_with(prefix.as_str()))
            {
                return Err(Denial::KeyNotSelfWritable {
                    action,
                    key: key.to_owned(),
                    prefixes: self.self_writable_prefixes.clone(),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(sub: &str) -> Identity {
        Identity {
            sub: sub.into(),
            org_id: None,
            client_cert: None,
        }
    }

    #[test]
    fn self_read_is_allowed_and_other_read_needs_admin() {
        let policy = Policy::new(["admin".to_string()], vec![]);
        assert!(
            policy
                .authorize(&caller("u1"), "u1", Action::Read, [])
                .is_ok()
        );
        assert!(matches!(
            policy.authorize(&caller("u1"), "u2", Action::Read, []),
            Err(Denial::NotAdmin { .. })
        ));
        assert!(
            policy
                .authorize(&caller("admin"), "u2", Action::Read, [])
                .is_ok()
        );
    }

    #[test]
    fn self_writes_are_limited_to_prefixes() {
        let policy = Policy::new([], vec!["profile.".into(), "pref.".into()]);
        let me = caller("u1");
        assert!(
            policy
                .authorize(&me, "u1", Action::Write, ["profile.name", "pref.lang"])
                .is_ok()
        );
        let denied = policy
            .authorize(&me, "u1", Action::Delete, ["profile.name", "billing.plan"])
            .unwrap_err();
        assert_eq!(
            denied,
            Denial::KeyNotSelfWritable {
                action: Action::Delete,
                key: "billing.plan".into(),
                prefixes: vec!["profile.".into(), "pref.".into()]
            }
        );
        assert!(
            policy
                .authorize(&me, "u2", Action::Write, ["profile.name"])
                .is_err()
        );
    }

    #[test]
    fn nothing_is_self_writable_by_default() {
        let policy = Policy::default();
        assert!(
            policy
                .authorize(&caller("u1"), "u1", Action::Write, ["anything"])
                .is_err()
        );
    }
}
