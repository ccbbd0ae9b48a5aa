//! Who may do what, per key. A [`Policy`] is a list of rules (who × whose × keys × actions) plus key
//! declarations (hidden keys, value rules), compiled once at start-up from [`POLICY_FILE`](crate::settings::names::POLICY_FILE) and the
//! shorthands [`ADMINS`](crate::settings::names::ADMINS) / [`SELF_WRITABLE_KEYS`](crate::settings::names::SELF_WRITABLE_KEYS). Anything no rule allows is denied; without
//! a file, users may read their own metadata and their own organisation's, and nothing else. Every decision is
//! made before any management call.
//!
//! Rules and key declarations address users' metadata or organisations' ([`Resource`]); the two never mix: a
//! rule on users' keys grants nothing on an organisation's, and a key hidden from users hides nothing of an
//! organisation. For organisations, `whose = "self"` is the caller's own organisation (as ZITADEL says) and a
//! hidden key is hidden from the organisation's members whatever the rules say.

mod file;

use std::collections::HashSet;

use std::{borrow::Cow, sync::Arc};

use compact_str::CompactString;
use regex::Regex;

pub use file::PolicyError;

use crate::{
    caller::Identity,
    sealing::{Owner, Sealer, Unopenable},
};

/// Why a sealed key's value cannot be given out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unsealed {
    /// What ZITADEL holds does not open ([`Unopenable`] says why).
    #[error(transparent)]
    Unopenable(Unopenable),
    /// The key is sealed but usermeta has no sealing keys (start-up refuses this; kept for tests that build
    /// policies by hand).
    #[error(
        "the key is sealed but no sealing keys are configured ({})",
        crate::settings::names::SEALING_KEYS_FILE
    )]
    NoKeys,
}

/// What a request wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Read a key's value (GetMyMetadata, ListMetadata, BatchGetMetadata, WatchMetadata).
    Read,
    /// Set a key (SetMetadata).
    Write,
    /// Remove a key (DeleteMetadata).
    Delete,
    /// Find users by a key's value (FindUsersByMetadata): reveals who holds a value without reading more.
    Find,
}

impl Action {
    /// Every action, in the order the policy reference lists them.
    pub const ALL: [Action; 4] = [Action::Read, Action::Write, Action::Delete, Action::Find];

    /// The action as written in a policy file and in messages.
    pub fn name(self) -> &'static str {
        match self {
            Action::Read => "read",
            Action::Write => "write",
            Action::Delete => "delete",
            Action::Find => "find",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Action::Read => 1,
            Action::Write => 2,
            Action::Delete => 4,
            Action::Find => 8,
        }
    }
}

/// Whose metadata a rule or key declaration is about.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Resource {
    /// Users' metadata (the default).
    #[default]
    User,
    /// Organisations' metadata.
    Organization,
}

impl Resource {
    /// As written in a policy file.
    pub fn name(self) -> &'static str {
        match self {
            Resource::User => "user",
            Resource::Organization => "organization",
        }
    }
}

/// The user whose metadata a request touches. `org_id` is the organisation ZITADEL will scope the call to:
/// the caller's own (from ZITADEL) for themself, else the request's `organization_id` (ZITADEL refuses the
/// management call when the user is not in it, so it cannot be used to pass an organisation rule).
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// The user's ZITADEL id.
    pub user_id: &'a str,
    /// The organisation ZITADEL scopes the call to; `None` when neither the caller's nor the request's is known.
    pub org_id: Option<&'a str>,
}

/// Why a request was refused. Carries ids and key names, never values or tokens.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    /// No rule grants the action on the key to the caller.
    #[error("no policy rule lets {caller} {action} {what}{hint}", action = .action.name(), what = describe(.key.as_deref(), .target.as_deref()), hint = rule_sources())]
    NoRule {
        /// What the request wanted to do.
        action: Action,
        /// `None` for a listing of another user the caller may read nothing of.
        key: Option<String>,
        /// `None` when the caller is the target.
        target: Option<String>,
        /// The caller, as `user <sub>` or `user <sub> (client <id>)`.
        caller: String,
    },
    /// A read by the user themself of a key the policy declares `hidden`.
    #[error("key `{key}` is hidden from the user themself (declared `hidden` in the policy)")]
    Hidden {
        /// The hidden key.
        key: String,
    },
    /// No organisation rule grants the action on the key of this organisation to the caller.
    #[error("no policy rule lets {caller} {action} {what}{hint}", action = .action.name(), what = describe_org(.key.as_deref(), .org_id, *.own), hint = rule_sources())]
    NoOrganizationRule {
        /// What the request wanted to do.
        action: Action,
        /// `None` for a listing the caller may read nothing of.
        key: Option<String>,
        /// The organisation.
        org_id: String,
        /// Whether it is the caller's own organisation.
        own: bool,
        /// The caller, as `user <sub>` or `user <sub> (client <id>)`.
        caller: String,
    },
    /// A read by a member of an organisation of a key the policy declares `hidden` for organisations.
    #[error(
        "key `{key}` of organisation {org_id} is hidden from the organisation's members (declared `hidden` with resource = \"organization\" in the policy)"
    )]
    HiddenFromMembers {
        /// The hidden key.
        key: String,
        /// The organisation.
        org_id: String,
    },
}

fn describe_org(key: Option<&str>, org_id: &str, own: bool) -> String {
    let whose = if own {
        format!("metadata of their own organisation {org_id}")
    } else {
        format!("metadata of organisation {org_id}")
    };
    match key {
        Some(key) => format!("key `{key}` of {whose}"),
        None => format!("any {whose}"),
    }
}

/// Where the rules come from, said with every refusal so an operator knows where to look.
fn rule_sources() -> String {
    use crate::settings::names::{ADMINS, POLICY_FILE, SELF_WRITABLE_KEYS};
    format!("; rules come from {POLICY_FILE}, {ADMINS} and {SELF_WRITABLE_KEYS}")
}

fn describe(key: Option<&str>, target: Option<&str>) -> String {
    let whose = match target {
        None => "their own metadata".to_owned(),
        Some(user) => format!("metadata of user {user}"),
    };
    match key {
        Some(key) => format!("key `{key}` of {whose}"),
        None => format!("any {whose}"),
    }
}

impl Denial {
    /// What the refused request wanted to do (a hidden key refuses a read).
    pub fn action(&self) -> Action {
        match self {
            Denial::NoRule { action, .. } | Denial::NoOrganizationRule { action, .. } => *action,
            Denial::Hidden { .. } | Denial::HiddenFromMembers { .. } => Action::Read,
        }
    }

    /// The key refused, when the refusal is about one key.
    pub fn key(&self) -> Option<&str> {
        match self {
            Denial::NoRule { key, .. } | Denial::NoOrganizationRule { key, .. } => key.as_deref(),
            Denial::Hidden { key } | Denial::HiddenFromMembers { key, .. } => Some(key),
        }
    }
}

/// A key name or a family of keys: `billing.*` (a prefix), `*` (every key) or an exact name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyPattern {
    /// `*`: every key.
    Any,
    /// `billing.*`: every key that starts with `billing.` (the text held is the prefix, without `*`).
    Prefix(String),
    /// Exactly this key.
    Exact(String),
}

impl KeyPattern {
    /// Parses a pattern; `*` may only end it.
    pub fn parse(text: &str) -> Result<KeyPattern, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("a key pattern must not be empty".into());
        }
        match text.strip_suffix('*') {
            Some("") => Ok(KeyPattern::Any),
            Some(prefix) if !prefix.contains('*') => Ok(KeyPattern::Prefix(prefix.to_owned())),
            Some(_) | None if text.contains('*') => Err(format!(
                "key pattern `{text}`: `*` may only end a pattern (`billing.*`) or stand alone"
            )),
            _ => Ok(KeyPattern::Exact(text.to_owned())),
        }
    }

    /// Whether `key` is one of the pattern's keys.
    pub fn matches(&self, key: &str) -> bool {
        match self {
            KeyPattern::Any => true,
            KeyPattern::Prefix(prefix) => key.starts_with(prefix.as_str()),
            KeyPattern::Exact(name) => key == name,
        }
    }
}

impl std::fmt::Display for KeyPattern {
    /// As written in a policy file.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyPattern::Any => f.write_str("*"),
            KeyPattern::Prefix(prefix) => write!(f, "{prefix}*"),
            KeyPattern::Exact(name) => f.write_str(name),
        }
    }
}

/// Who a rule is for. Each non-empty list must match (AND across lists, OR within one); all empty means
/// any authenticated caller.
#[derive(Debug, Clone, Default)]
pub struct Who {
    /// Callers' ZITADEL user ids (`sub`).
    pub subjects: HashSet<String>,
    /// OAuth clients the token was issued to.
    pub client_ids: HashSet<String>,
    /// Roles of usermeta's project.
    pub roles: HashSet<String>,
    /// The callers' organisation ids.
    pub organizations: HashSet<String>,
}

impl Who {
    fn matches(&self, caller: &Identity) -> bool {
        (self.subjects.is_empty() || self.subjects.contains(caller.sub.as_str()))
            && (self.client_ids.is_empty()
                || caller
                    .client_id
                    .as_deref()
                    .is_some_and(|c| self.client_ids.contains(c)))
            && (self.roles.is_empty() || caller.roles.iter().any(|r| self.roles.contains(r)))
            && (self.organizations.is_empty()
                || caller
                    .org_id
                    .as_deref()
                    .is_some_and(|o| self.organizations.contains(o)))
    }
}

/// Whose metadata a rule covers.
#[derive(Debug, Clone)]
pub enum Whose {
    /// The caller's own.
    Itself,
    /// Any user's, the caller's own included.
    Any,
    /// Users of these organisations (the caller's own included when they belong to one).
    Organizations(HashSet<String>),
}

impl Whose {
    /// `any_org`: as if a target whose request names no organisation were in every organisation (for a
    /// decision that holds in all of them). A named organisation is the one ZITADEL will act in (it refuses
    /// users outside it), so it alone counts, and a rule that does not name it cannot allow.
    fn matches(&self, is_self: bool, target: Subject<'_>, any_org: bool) -> bool {
        match self {
            Whose::Itself => is_self,
            Whose::Any => true,
            Whose::Organizations(orgs) => match target.org_id {
                Some(org) => orgs.contains(org),
                None => any_org,
            },
        }
    }
}

/// One compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// For logs: the rule's `name`, or where it came from.
    pub name: String,
    /// Who the rule is for.
    pub who: Who,
    /// Whose metadata it covers.
    pub whose: Whose,
    /// The keys it covers; a key matching any of them is covered.
    pub keys: Vec<KeyPattern>,
    /// Users' metadata or organisations'.
    pub resource: Resource,
    actions: u8,
}

impl Rule {
    /// A rule named `name` (for logs) that lets `who` do `actions` on `keys` of `whose` metadata.
    pub fn new(
        name: impl Into<String>,
        who: Who,
        whose: Whose,
        keys: Vec<KeyPattern>,
        actions: &[Action],
    ) -> Rule {
        Rule {
            name: name.into(),
            who,
            whose,
            keys,
            resource: Resource::User,
            actions: actions.iter().fold(0, |bits, a| bits | a.bit()),
        }
    }

    /// The same rule on `resource`'s metadata.
    pub fn on(mut self, resource: Resource) -> Rule {
        self.resource = resource;
        self
    }

    fn allows_action(&self, action: Action) -> bool {
        self.actions & action.bit() != 0
    }
}

/// A key declaration: hidden from its user (or its organisation's members), and/or what its values must look
/// like.
#[derive(Debug, Clone)]
pub struct KeyRule {
    /// The keys declared.
    pub keys: KeyPattern,
    /// Whose keys: users' or organisations'.
    pub resource: Resource,
    /// Left out of usermeta's answers to the user themself. Unless also `sealed`, ZITADEL still hands the user
    /// these keys (userinfo and tokens with the metadata scope, the auth API); see [`Policy::hidden_keys`].
    pub hidden: bool,
    /// Stored in ZITADEL only as ciphertext ([`crate::sealing`]): usermeta seals values before they go there
    /// and opens them for every caller the rules let read them.
    pub sealed: bool,
    /// Longest value, in bytes; longer writes are refused.
    pub max_bytes: Option<usize>,
    /// Compiled once at start-up; anchored as written (use `^…$` to match the whole value).
    pub pattern: Option<Regex>,
    /// Values must be valid JSON.
    pub json: bool,
}

/// The rules in force.
#[derive(Debug, Clone)]
pub struct Policy {
    rules: Vec<Rule>,
    key_rules: Vec<KeyRule>,
    /// The implicit rule "anyone may read their own metadata" (hidden keys excepted).
    self_read: bool,
    /// The keys that seal and open the `sealed` keys; set at start-up whenever a key is sealed.
    sealer: Option<Arc<Sealer>>,
    /// The implicit rule "members may read their own organisation's metadata" (hidden keys excepted).
    member_read: bool,
}

impl Default for Policy {
    /// Self-read and members' read of their own organisation allowed, everything else denied.
    fn default() -> Self {
        Policy {
            rules: Vec::new(),
            key_rules: Vec::new(),
            self_read: true,
            sealer: None,
            member_read: true,
        }
    }
}

impl Policy {
    /// The default policy plus the shorthands: `admins` (ZITADEL user ids) may do anything to anyone;
    /// `self_writable_prefixes` are key prefixes users may write and delete on themselves.
    pub fn new(
        admins: impl IntoIterator<Item = String>,
        self_writable_prefixes: Vec<String>,
    ) -> Self {
        Policy::default().with_shorthands(admins, self_writable_prefixes)
    }

    /// Adds the [`ADMINS`](crate::settings::names::ADMINS) and [`SELF_WRITABLE_KEYS`](crate::settings::names::SELF_WRITABLE_KEYS) rules.
    pub fn with_shorthands(
        mut self,
        admins: impl IntoIterator<Item = String>,
        self_writable_prefixes: Vec<String>,
    ) -> Self {
        let admins: HashSet<String> = admins.into_iter().collect();
        if !admins.is_empty() {
            self.rules.push(Rule::new(
                crate::settings::names::ADMINS,
                Who {
                    subjects: admins,
                    ..Who::default()
                },
                Whose::Any,
                vec![KeyPattern::Any],
                &Action::ALL,
            ));
        }
        if !self_writable_prefixes.is_empty() {
            self.rules.push(Rule::new(
                crate::settings::names::SELF_WRITABLE_KEYS,
                Who::default(),
                Whose::Itself,
                self_writable_prefixes
                    .into_iter()
                    .map(KeyPattern::Prefix)
                    .collect(),
                &[Action::Write, Action::Delete],
            ));
        }
        self
    }

    /// The policy with one more rule.
    pub fn with_rule(mut self, rule: Rule) -> Self {
        self.rules.push(rule);
        self
    }

    /// A policy from its parts (the file parser and tests build these).
    pub fn from_parts(rules: Vec<Rule>, key_rules: Vec<KeyRule>, self_read: bool) -> Self {
        Policy {
            rules,
            key_rules,
            self_read,
            member_read: true,
            sealer: None,
        }
    }

    /// The sealing keys for the `sealed` keys ([`crate::sealing`]).
    pub fn with_sealer(mut self, sealer: Arc<Sealer>) -> Self {
        self.sealer = Some(sealer);
        self
    }

    /// The sealing keys, when the policy has them.
    pub fn sealer(&self) -> Option<&Arc<Sealer>> {
        self.sealer.as_ref()
    }

    /// The patterns of keys declared `sealed`, as written.
    pub fn sealed_keys(&self) -> Vec<String> {
        self.key_rules
            .iter()
            .filter(|k| k.sealed)
            .map(|k| k.keys.to_string())
            .collect()
    }

    /// The patterns of users' keys declared `sealed`.
    pub fn sealed_patterns(&self) -> impl Iterator<Item = &KeyPattern> {
        self.key_rules
            .iter()
            .filter(|k| k.sealed && k.resource == Resource::User)
            .map(|k| &k.keys)
    }

    /// Whether `key` is declared sealed.
    pub fn is_sealed(&self, key: &str) -> bool {
        self.key_rules
            .iter()
            .any(|k| k.sealed && k.resource == Resource::User && k.keys.matches(key))
    }

    /// What ZITADEL stores for `value` of `owner`'s `key`: sealed when the key is, else the value itself.
    /// `Err` when the key is sealed but no sealing keys were given (start-up refuses that configuration).
    pub fn conceal<'v>(
        &self,
        owner: Owner<'_>,
        key: &str,
        value: &'v [u8],
    ) -> Result<Cow<'v, [u8]>, Unsealed> {
        if !self.is_sealed(key) {
            return Ok(Cow::Borrowed(value));
        }
        let sealer = self.sealer.as_ref().ok_or(Unsealed::NoKeys)?;
        Ok(Cow::Owned(sealer.seal(owner, key, value)))
    }

    /// The value of `owner`'s `key` as callers get it from what ZITADEL stores: opened when the key is
    /// sealed, else as stored. A sealed key's value that does not open is counted and (once per key) logged.
    pub fn reveal<'v>(
        &self,
        owner: Owner<'_>,
        key: &str,
        stored: &'v [u8],
    ) -> Result<Cow<'v, [u8]>, Unsealed> {
        if !self.is_sealed(key) {
            return Ok(Cow::Borrowed(stored));
        }
        let sealer = self.sealer.as_ref().ok_or(Unsealed::NoKeys)?;
        match sealer.open(owner, key, stored) {
            Ok(opened) => {
                if !opened.under_newest_key {
                    crate::metrics::sealed_value_read("old_key");
                }
                Ok(Cow::Owned(opened.plaintext))
            }
            Err(problem) => {
                crate::metrics::sealed_value_read(problem.label());
                if sealer.first_report(key) {
                    // Once per key and process: the metric counts every one.
                    tracing::warn!(
                        key,
                        problem = problem.label(),
                        "a value of sealed key `{key}` in ZITADEL does not open: {problem}; it is withheld until written again through usermeta (further ones of this key are only counted, in usermeta_sealed_values_read_total)"
                    );
                }
                Err(Unsealed::Unopenable(problem))
            }
        }
    }

    /// Whether members may read their own organisation's metadata without a rule (the file's
    /// `organization_member_read`, on by default).
    pub fn with_member_read(mut self, member_read: bool) -> Self {
        self.member_read = member_read;
        self
    }

    /// Parses a policy file's text; `origin` names it in errors.
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, PolicyError> {
        file::parse(text, origin)
    }

    /// Reads and parses a policy file.
    pub fn load(path: &std::path::Path) -> Result<Self, PolicyError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError {
            origin: origin.clone(),
            line: None,
            message: format!("cannot read the file: {e}"),
        })?;
        Self::from_toml(&text, &origin)
    }

    /// The rules in force, in the order they were given.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The patterns of keys declared hidden from their user but not sealed, as written. Hidden filters
    /// usermeta's answers only: the user reads the same keys from ZITADEL with the token they call usermeta
    /// with (userinfo with the scope `urn:zitadel:iam:user:metadata`, the auth API, tokens issued with that
    /// scope), in plaintext unless the key is also `sealed`. Start-up warns about these.
    pub fn hidden_keys(&self) -> Vec<String> {
        self.key_rules
            .iter()
            .filter(|k| k.hidden && !k.sealed && k.resource == Resource::User)
            .map(|k| k.keys.to_string())
            .collect()
    }

    /// Whether `key` is declared hidden from its user.
    pub fn is_hidden(&self, key: &str) -> bool {
        self.is_hidden_in(Resource::User, key)
    }

    /// Whether `key` of `resource` is declared hidden (from its user, or from its organisation's members).
    pub fn is_hidden_in(&self, resource: Resource, key: &str) -> bool {
        self.key_rules
            .iter()
            .any(|k| k.hidden && k.resource == resource && k.keys.matches(key))
    }

    /// The rules that apply to this caller, target and action; the keys are then checked against these only.
    fn grants_in<'p>(
        &'p self,
        caller: &Identity,
        target: Subject<'_>,
        action: Action,
        any_org: bool,
    ) -> Grants<'p> {
        let is_self = caller.sub == target.user_id;
        let rules = self
            .rules
            .iter()
            .filter(|r| {
                r.resource == Resource::User
                    && r.allows_action(action)
                    && r.whose.matches(is_self, target, any_org)
                    && r.who.matches(caller)
            })
            .collect();
        Grants {
            policy: self,
            resource: Resource::User,
            rules,
            is_self,
            implicit_read: is_self && action == Action::Read && self.self_read,
            // Finding a user by a key reveals its value: hidden keys stay hidden from their user here too.
            reads: matches!(action, Action::Read | Action::Find),
        }
    }

    fn no_rule(
        caller: &Identity,
        target: Subject<'_>,
        action: Action,
        key: Option<&str>,
    ) -> Denial {
        Denial::NoRule {
            action,
            key: key.map(str::to_owned),
            target: (caller.sub != target.user_id).then(|| target.user_id.to_owned()),
            caller: describe_caller(caller),
        }
    }

    /// The caller's own keys while self-read is on (unless the policy file says `self_read = false`):
    /// everything but hidden keys, whoever the caller is, so a self read needs no identity beyond the token
    /// ZITADEL reads with. `None` while it is off.
    pub fn own_scope(&self) -> Option<ReadScope<'_>> {
        self.self_read.then(|| ReadScope {
            grants: Grants {
                policy: self,
                resource: Resource::User,
                rules: Vec::new(),
                is_self: true,
                implicit_read: true,
                reads: true,
            },
            caller: None,
            target: None,
            organization: None,
        })
    }

    /// May `caller` do `action` on every one of `keys` of `target`? Names the first key refused.
    pub fn authorize<'k>(
        &self,
        caller: &Identity,
        target: Subject<'_>,
        action: Action,
        keys: impl IntoIterator<Item = &'k str>,
    ) -> Result<(), Denial> {
        self.authorize_in(caller, target, action, keys, false)
    }

    fn authorize_in<'k>(
        &self,
        caller: &Identity,
        target: Subject<'_>,
        action: Action,
        keys: impl IntoIterator<Item = &'k str>,
        any_org: bool,
    ) -> Result<(), Denial> {
        let grants = self.grants_in(caller, target, action, any_org);
        for key in keys {
            grants.check(key).map_err(|hidden| {
                hidden.unwrap_or_else(|| Self::no_rule(caller, target, action, Some(key)))
            })?;
        }
        Ok(())
    }

    /// [`Policy::authorize`] as if `target` were in whichever organisation a rule names. Rules only grant, so
    /// a denial here holds whatever the user's organisation is: the service refuses before looking it up.
    pub fn authorize_in_any_organization<'k>(
        &self,
        caller: &Identity,
        target: Subject<'_>,
        action: Action,
        keys: impl IntoIterator<Item = &'k str>,
    ) -> Result<(), Denial> {
        self.authorize_in(caller, target, action, keys, true)
    }

    /// [`Policy::read_scope`]'s refusal as if `target` were in whichever organisation a rule names.
    pub fn read_in_any_organization(
        &self,
        caller: &Identity,
        target: Subject<'_>,
    ) -> Result<(), Denial> {
        self.readable(caller, target, true).map(drop)
    }

    /// The grants to read `target`, or the refusal when no key at all could be read.
    fn readable<'p>(
        &'p self,
        caller: &Identity,
        target: Subject<'_>,
        any_org: bool,
    ) -> Result<Grants<'p>, Denial> {
        let grants = self.grants_in(caller, target, Action::Read, any_org);
        if grants.rules.is_empty() && !grants.implicit_read {
            return Err(Self::no_rule(caller, target, Action::Read, None));
        }
        Ok(grants)
    }

    /// What `caller` may read of `target`, for listings: refused outright when no key at all could be read.
    pub fn read_scope<'p>(
        &'p self,
        caller: &Identity,
        target: Subject<'_>,
    ) -> Result<ReadScope<'p>, Denial> {
        let grants = self.readable(caller, target, false)?;
        Ok(ReadScope {
            grants,
            caller: Some(CallerName::of(caller)),
            target: (caller.sub != target.user_id).then(|| target.user_id.into()),
            organization: None,
        })
    }

    /// The value rules `value` of `key` breaks, as descriptions (empty when it passes).
    pub fn value_problems(&self, key: &str, value: &[u8]) -> Vec<String> {
        self.value_problems_in(Resource::User, key, value)
    }

    /// The value rules `value` of `resource`'s `key` breaks, as descriptions (empty when it passes).
    pub fn value_problems_in(&self, resource: Resource, key: &str, value: &[u8]) -> Vec<String> {
        let mut problems = Vec::new();
        for rule in self
            .key_rules
            .iter()
            .filter(|k| k.resource == resource && k.keys.matches(key))
        {
            if let Some(max) = rule.max_bytes
                && value.len() > max
            {
                problems.push(format!(
                    "must be at most {max} bytes for key `{key}` (policy), is {}",
                    value.len()
                ));
            }
            if rule.pattern.is_some() || rule.json {
                let Ok(text) = std::str::from_utf8(value) else {
                    problems.push(format!(
                        "must be UTF-8 text for key `{key}` (policy has a pattern or json rule)"
                    ));
                    continue;
                };
                if let Some(pattern) = &rule.pattern
                    && !pattern.is_match(text)
                {
                    problems.push(format!(
                        "must match the pattern `{}` for key `{key}` (policy)",
                        pattern.as_str()
                    ));
                }
                if rule.json && serde_json::from_str::<serde::de::IgnoredAny>(text).is_err() {
                    problems.push(format!("must be JSON for key `{key}` (policy)"));
                }
            }
        }
        problems
    }
}

/// Whose users a caller's `find` rules cover for one key (FindUsersByMetadata): a search goes to ZITADEL
/// only within them, so its answers and pages cannot count users the caller may not find.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FindScope {
    /// Some rule covers users of every organisation.
    AnyOrganization,
    /// Only users of these organisations (sorted, at least one).
    Organizations(Vec<String>),
}

impl Policy {
    /// Where `caller` may find users by `key`; refused when no rule lets it find by `key` in any
    /// organisation (`whose = "self"` rules never do: finding names others).
    pub fn find_scope(&self, caller: &Identity, key: &str) -> Result<FindScope, Denial> {
        let mut orgs = std::collections::BTreeSet::new();
        for rule in self.rules.iter().filter(|r| {
            r.resource == Resource::User
                && r.allows_action(Action::Find)
                && r.who.matches(caller)
                && r.keys.iter().any(|p| p.matches(key))
        }) {
            match &rule.whose {
                Whose::Any => return Ok(FindScope::AnyOrganization),
                Whose::Organizations(named) => orgs.extend(named.iter().map(String::as_str)),
                Whose::Itself => {}
            }
        }
        if orgs.is_empty() {
            let anyone = Subject {
                user_id: "",
                org_id: None,
            };
            return Err(Self::no_rule(caller, anyone, Action::Find, Some(key)));
        }
        Ok(FindScope::Organizations(
            orgs.into_iter().map(str::to_owned).collect(),
        ))
    }
}

/// The rules granting one caller one action on one target.
struct Grants<'p> {
    policy: &'p Policy,
    /// Whose keys: hidden keys are those declared for this resource.
    resource: Resource,
    rules: Vec<&'p Rule>,
    /// The caller is the user (or, for an organisation, one of its members).
    is_self: bool,
    implicit_read: bool,
    reads: bool,
}

impl Grants<'_> {
    /// Whether every key there could be passes [`Grants::check`]: no hidden key applies and some grant
    /// covers `*`.
    fn covers_every_key(&self) -> bool {
        let hides = self.reads
            && self.is_self
            && self
                .policy
                .key_rules
                .iter()
                .any(|k| k.hidden && k.resource == self.resource);
        !hides
            && (self.implicit_read || self.rules.iter().any(|r| r.keys.contains(&KeyPattern::Any)))
    }

    /// `Err(Some(_))`: hidden from a self read; `Err(None)`: no rule.
    fn check(&self, key: &str) -> Result<(), Option<Denial>> {
        if self.reads && self.is_self && self.policy.is_hidden_in(self.resource, key) {
            return Err(Some(match self.resource {
                Resource::User => Denial::Hidden {
                    key: key.to_owned(),
                },
                Resource::Organization => Denial::HiddenFromMembers {
                    key: key.to_owned(),
                    org_id: String::new(),
                },
            }));
        }
        if self.implicit_read
            || self
                .rules
                .iter()
                .any(|r| r.keys.iter().any(|p| p.matches(key)))
        {
            Ok(())
        } else {
            Err(None)
        }
    }
}

fn describe_caller(caller: &Identity) -> String {
    CallerName::of(caller).to_string()
}

/// The caller as a denial names it. Kept as ids (inline strings: copying them allocates nothing) and
/// written out only when a denial is.
#[derive(Debug, Clone)]
struct CallerName {
    sub: CompactString,
    client_id: Option<CompactString>,
}

impl CallerName {
    fn of(caller: &Identity) -> Self {
        CallerName {
            sub: caller.sub.clone(),
            client_id: caller.client_id.clone(),
        }
    }
}

impl std::fmt::Display for CallerName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.client_id {
            Some(client) => write!(f, "user {} (client {client})", self.sub),
            None => write!(f, "user {}", self.sub),
        }
    }
}

/// Which keys of one user (or organisation) a caller may read.
pub struct ReadScope<'p> {
    grants: Grants<'p>,
    /// `None`: any caller (the open self read, which needs no identity).
    caller: Option<CallerName>,
    target: Option<CompactString>,
    /// For an organisation's keys: the organisation.
    organization: Option<CompactString>,
}

impl ReadScope<'_> {
    /// Whether the caller may read every key the user has, so ZITADEL's counts are the caller's counts.
    pub fn sees_every_key(&self) -> bool {
        self.grants.covers_every_key()
    }

    /// Whether the caller may read `key`.
    pub fn allows(&self, key: &str) -> bool {
        self.grants.check(key).is_ok()
    }

    /// Refuses a key the caller asked for by name (loudly, rather than answering as if it did not exist).
    pub fn require(&self, key: &str) -> Result<(), Denial> {
        let caller = || {
            self.caller
                .as_ref()
                .map_or_else(|| "the caller".to_owned(), ToString::to_string)
        };
        self.grants
            .check(key)
            .map_err(|hidden| match (hidden, &self.organization) {
                (Some(Denial::HiddenFromMembers { key, .. }), Some(org_id)) => {
                    Denial::HiddenFromMembers {
                        key,
                        org_id: org_id.to_string(),
                    }
                }
                (Some(hidden), _) => hidden,
                (None, Some(org_id)) => Denial::NoOrganizationRule {
                    action: Action::Read,
                    key: Some(key.to_owned()),
                    org_id: org_id.to_string(),
                    own: self.grants.is_self,
                    caller: caller(),
                },
                (None, None) => Denial::NoRule {
                    action: Action::Read,
                    key: Some(key.to_owned()),
                    target: self.target.as_deref().map(str::to_owned),
                    caller: caller(),
                },
            })
    }
}

/// Organisations' metadata: the same rules, on [`Resource::Organization`].
impl Policy {
    /// The organisation rules for this caller, organisation and action.
    fn org_grants(&self, caller: &Identity, org_id: &str, action: Action) -> Grants<'_> {
        let member = caller.org_id.as_deref() == Some(org_id);
        let rules = self
            .rules
            .iter()
            .filter(|r| {
                r.resource == Resource::Organization
                    && r.allows_action(action)
                    && match &r.whose {
                        Whose::Itself => member,
                        Whose::Any => true,
                        Whose::Organizations(orgs) => orgs.contains(org_id),
                    }
                    && r.who.matches(caller)
            })
            .collect();
        Grants {
            policy: self,
            resource: Resource::Organization,
            rules,
            is_self: member,
            implicit_read: member && action == Action::Read && self.member_read,
            reads: action == Action::Read,
        }
    }

    fn no_org_rule(caller: &Identity, org_id: &str, action: Action, key: Option<&str>) -> Denial {
        Denial::NoOrganizationRule {
            action,
            key: key.map(str::to_owned),
            org_id: org_id.to_owned(),
            own: caller.org_id.as_deref() == Some(org_id),
            caller: describe_caller(caller),
        }
    }

    /// May `caller` do `action` (write or delete; reads go through [`Policy::org_read_scope`]) on every one of
    /// `keys` of organisation `org_id`? Names the first key refused.
    pub fn authorize_organization<'k>(
        &self,
        caller: &Identity,
        org_id: &str,
        action: Action,
        keys: impl IntoIterator<Item = &'k str>,
    ) -> Result<(), Denial> {
        let grants = self.org_grants(caller, org_id, action);
        for key in keys {
            grants.check(key).map_err(|hidden| match hidden {
                Some(Denial::HiddenFromMembers { key, .. }) => Denial::HiddenFromMembers {
                    key,
                    org_id: org_id.to_owned(),
                },
                Some(other) => other,
                None => Self::no_org_rule(caller, org_id, action, Some(key)),
            })?;
        }
        Ok(())
    }

    /// What `caller` may read of organisation `org_id`: refused outright when no key at all could be read.
    /// Members never see keys declared hidden for organisations, whatever the rules.
    pub fn org_read_scope(&self, caller: &Identity, org_id: &str) -> Result<ReadScope<'_>, Denial> {
        let grants = self.org_grants(caller, org_id, Action::Read);
        if grants.rules.is_empty() && !grants.implicit_read {
            return Err(Self::no_org_rule(caller, org_id, Action::Read, None));
        }
        Ok(ReadScope {
            grants,
            caller: Some(CallerName::of(caller)),
            target: None,
            organization: Some(org_id.into()),
        })
    }
}

#[cfg(test)]
mod tests;
