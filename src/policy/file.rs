//! The policy file (TOML). Unknown fields, unknown actions, bad key patterns and bad regular expressions
//! stop start-up with the line they are on.
//!
//! ```toml
//! self_read = true            # optional; the implicit "users may read their own metadata" rule
//! organization_member_read = true   # optional; the implicit "members may read their organisation's" rule
//!
//! [[rule]]
//! name = "billing links the customer id"
//! who = { client_ids = ["billing@acme"] }   # subjects, client_ids, roles, organizations; empty = anyone
//! whose = "any"                              # "self", "any", or a list of organisation ids
//! keys = ["internal.customer_id"]            # exact names, `prefix.*`, or `*`
//! actions = ["write", "delete"]              # read, write, delete, find
//!
//! [[rule]]
//! name = "tenant admins keep their organisation's plan"
//! resource = "organization"                  # "user" (the default) or "organization"
//! who = { roles = ["tenant-admin"] }
//! whose = "self"                             # for organisations: the caller's own, "any", or org ids
//! keys = ["plan"]
//! actions = ["read", "write"]                # read, write, delete (no find on organisations)
//!
//! [[key]]
//! name = "profile.*"
//! hidden = false              # true: usermeta never returns it to its user; ZITADEL still does, unless sealed
//! sealed = false              # true: ZITADEL stores only ciphertext (needs USERMETA_SEALING_KEYS_FILE)
//! max_bytes = 256
//! pattern = "^[^<>]*$"
//! json = false
//!
//! [[key]]
//! name = "internal.*"
//! resource = "organization"   # declares organisations' keys; hidden = never shown to the org's members
//! hidden = true
//! ```

use std::{collections::HashSet, fmt, ops::Range};

use regex::Regex;
use serde::{Deserialize, Deserializer, de};
use toml::Spanned;

use super::{Action, KeyPattern, KeyRule, Policy, Resource, Rule, Who, Whose};

/// A policy file that cannot be used, with the line of the problem when there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// The file (or other origin) of the policy.
    pub origin: String,
    /// 1-based line and column.
    pub line: Option<(usize, usize)>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some((line, column)) => write!(
                f,
                "policy file {}, line {line}, column {column}: {}",
                self.origin, self.message
            ),
            None => write!(f, "policy file {}: {}", self.origin, self.message),
        }
    }
}

impl std::error::Error for PolicyError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDoc {
    #[serde(default = "yes")]
    self_read: bool,
    #[serde(default = "yes")]
    organization_member_read: bool,
    #[serde(default, rename = "rule")]
    rules: Vec<RuleDoc>,
    #[serde(default, rename = "key")]
    keys: Vec<KeyDoc>,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleDoc {
    name: Option<String>,
    #[serde(default)]
    resource: Resource,
    #[serde(default)]
    who: WhoDoc,
    whose: Spanned<WhoseDoc>,
    keys: Spanned<Vec<Spanned<String>>>,
    actions: Spanned<Vec<Action>>,
}

/// Each list is optional; one that is given must name someone (an empty list or entry would otherwise
/// quietly mean "anyone").
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WhoDoc {
    subjects: Option<Spanned<Vec<Spanned<String>>>>,
    client_ids: Option<Spanned<Vec<Spanned<String>>>>,
    roles: Option<Spanned<Vec<Spanned<String>>>>,
    organizations: Option<Spanned<Vec<Spanned<String>>>>,
}

enum WhoseDoc {
    Itself,
    Any,
    Organizations(Vec<Spanned<String>>),
}

impl<'de> Deserialize<'de> for WhoseDoc {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = WhoseDoc;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("\"self\", \"any\", or a list of organisation ids")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<WhoseDoc, E> {
                match v {
                    "self" => Ok(WhoseDoc::Itself),
                    "any" => Ok(WhoseDoc::Any),
                    other => Err(E::custom(format!(
                        "whose = {other:?}: expected \"self\", \"any\", or a list of organisation ids"
                    ))),
                }
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<WhoseDoc, A::Error> {
                let mut orgs = Vec::new();
                while let Some(org) = seq.next_element::<Spanned<String>>()? {
                    orgs.push(org);
                }
                Ok(WhoseDoc::Organizations(orgs))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyDoc {
    name: Spanned<String>,
    #[serde(default)]
    resource: Resource,
    #[serde(default)]
    hidden: bool,
    #[serde(default)]
    sealed: bool,
    max_bytes: Option<usize>,
    pattern: Option<Spanned<String>>,
    #[serde(default)]
    json: bool,
}

/// 1-based line and column of a byte offset.
fn line_of(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before
        .rsplit('\n')
        .next()
        .map_or(0, |last| last.chars().count())
        + 1;
    (line, column)
}

pub(super) fn parse(text: &str, origin: &str) -> Result<Policy, PolicyError> {
    let at = |span: Option<Range<usize>>, message: String| PolicyError {
        origin: origin.to_owned(),
        line: span.map(|s| line_of(text, s.start)),
        message,
    };
    let doc: FileDoc =
        toml::from_str(text).map_err(|e| at(e.span(), e.message().trim().to_owned()))?;

    let mut rules = Vec::with_capacity(doc.rules.len());
    for (index, rule) in doc.rules.into_iter().enumerate() {
        let name = rule
            .name
            .clone()
            .unwrap_or_else(|| format!("rule #{} of {origin}", index + 1));
        if rule.keys.get_ref().is_empty() {
            return Err(at(
                Some(rule.keys.span()),
                format!("{name}: `keys` is empty; name keys, `prefix.*` patterns, or `*`"),
            ));
        }
        if rule.actions.get_ref().is_empty() {
            return Err(at(
                Some(rule.actions.span()),
                format!("{name}: `actions` is empty; list read, write and/or delete"),
            ));
        }
        if rule.resource == Resource::Organization && rule.actions.get_ref().contains(&Action::Find)
        {
            return Err(at(
                Some(rule.actions.span()),
                format!(
                    "{name}: `find` applies to users only (finding users by a key's value); an organisation rule may read, write and delete"
                ),
            ));
        }
        let mut keys = Vec::new();
        for key in rule.keys.into_inner() {
            let span = key.span();
            keys.push(KeyPattern::parse(key.get_ref()).map_err(|m| at(Some(span), m))?);
        }
        // Entries are trimmed; an empty list or an entry that is empty (a template variable that was not
        // filled in) is an error, never "anyone".
        let entries = |field: &str,
                       span: std::ops::Range<usize>,
                       list: Vec<Spanned<String>>|
         -> Result<HashSet<String>, PolicyError> {
            if list.is_empty() {
                return Err(at(
                    Some(span),
                    format!(
                        "{name}: `{field}` is an empty list; name at least one, or leave `{field}` out"
                    ),
                ));
            }
            list.into_iter()
                .map(|entry| {
                    let span = entry.span();
                    let text = entry.into_inner().trim().to_owned();
                    if text.is_empty() {
                        Err(at(
                            Some(span),
                            format!(
                                "{name}: `{field}` has an empty entry; every entry must name one"
                            ),
                        ))
                    } else {
                        Ok(text)
                    }
                })
                .collect()
        };
        let who_list = |field: &str, list: Option<Spanned<Vec<Spanned<String>>>>| match list {
            None => Ok(HashSet::new()),
            Some(list) => {
                let span = list.span();
                entries(field, span, list.into_inner())
            }
        };
        let who = Who {
            subjects: who_list("who.subjects", rule.who.subjects)?,
            client_ids: who_list("who.client_ids", rule.who.client_ids)?,
            roles: who_list("who.roles", rule.who.roles)?,
            organizations: who_list("who.organizations", rule.who.organizations)?,
        };
        let whose_span = rule.whose.span();
        let whose = match rule.whose.into_inner() {
            WhoseDoc::Itself => Whose::Itself,
            WhoseDoc::Any => Whose::Any,
            WhoseDoc::Organizations(orgs) => {
                Whose::Organizations(entries("whose", whose_span, orgs)?)
            }
        };
        rules.push(Rule::new(name, who, whose, keys, rule.actions.get_ref()).on(rule.resource));
    }

    let mut key_rules = Vec::with_capacity(doc.keys.len());
    for key in doc.keys {
        let keys =
            KeyPattern::parse(key.name.get_ref()).map_err(|m| at(Some(key.name.span()), m))?;
        let pattern = match key.pattern {
            Some(pattern) => Some(Regex::new(pattern.get_ref()).map_err(|e| {
                at(
                    Some(pattern.span()),
                    format!("`pattern` is not a valid regular expression: {e}"),
                )
            })?),
            None => None,
        };
        // Organisation metadata is not sealed yet: a declaration that would leave the values in plaintext while
        // the operator believes them sealed is refused rather than ignored.
        if key.sealed && key.resource == Resource::Organization {
            return Err(at(
                Some(key.name.span()),
                format!(
                    "key declaration `{}`: `sealed` applies to users' keys only; organisations' values cannot be sealed yet (drop sealed, or keep the value on a user)",
                    key.name.get_ref()
                ),
            ));
        }
        if !key.hidden && !key.sealed && key.max_bytes.is_none() && pattern.is_none() && !key.json {
            return Err(at(
                Some(key.name.span()),
                format!(
                    "key declaration `{}` declares nothing; set hidden, sealed, max_bytes, pattern or json",
                    key.name.get_ref()
                ),
            ));
        }
        key_rules.push(KeyRule {
            keys,
            resource: key.resource,
            hidden: key.hidden,
            sealed: key.sealed,
            max_bytes: key.max_bytes,
            pattern,
            json: key.json,
        });
    }
    Ok(Policy::from_parts(rules, key_rules, doc.self_read)
        .with_member_read(doc.organization_member_read))
}
