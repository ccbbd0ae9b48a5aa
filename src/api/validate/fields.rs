//! The checks of single request fields (ids, keys, counts), each adding what is wrong to the one list
//! ([`Violations`]).

use std::collections::HashMap;

use super::{MAX_ID_CHARS, MAX_KEY_CHARS};
use crate::api::{ApiError, error::Violations};

/// The checks of request fields, on the one list of what is wrong ([`Violations`]).
impl Violations {
    pub(super) fn finish<T>(self, valid: T) -> Result<T, ApiError> {
        self.into_result(valid)
    }

    /// The request's error, for a check that stops early (nothing valid to return).
    pub(super) fn finish_invalid<T>(self) -> Result<T, ApiError> {
        debug_assert!(!self.is_empty());
        Err(ApiError::InvalidRequest(self))
    }

    /// Whether a repeated field names at most `max` items; says how to split the call when it does not.
    /// Checked before the items are, so an oversized request costs no work per item.
    pub(super) fn within(&mut self, field: &str, count: usize, max: usize, what: &str) -> bool {
        if count <= max {
            return true;
        }
        self.add(
            field,
            format!("names {count} {what}, at most {max} are allowed in one call; split it into calls of at most {max}"),
        );
        false
    }

    pub(super) fn key(&mut self, field: impl FnOnce() -> String, key: &str) {
        let chars = key.chars().count();
        if chars == 0 {
            self.add(field(), "must not be empty");
        } else if chars > MAX_KEY_CHARS {
            self.add(
                field(),
                format!("must be at most {MAX_KEY_CHARS} characters, is {chars}"),
            );
        } else if let Some(problem) = key_problem(key) {
            self.add(field(), problem);
        }
    }

    /// Text keys are compared with (a filter, a prefix): empty or up to a key's length, printable.
    pub(super) fn key_pattern(&mut self, field: &str, text: &str) {
        let chars = text.chars().count();
        if chars > MAX_KEY_CHARS {
            self.add(
                field,
                format!("must be at most {MAX_KEY_CHARS} characters, is {chars}"),
            );
        } else if let Some(found) = text.chars().find(|c| c.is_control()) {
            self.add(
                field,
                format!(
                    "must not contain control characters (found {})",
                    described(found)
                ),
            );
        }
    }

    /// Empty means "the caller"; anything else must be an id ZITADEL could have issued.
    pub(super) fn user_id(&mut self, user_id: String) -> Option<String> {
        self.id_of_user(|| "user_id".to_owned(), &user_id);
        Some(user_id).filter(|id| !id.is_empty())
    }

    /// An id ZITADEL could have issued, or empty.
    pub(super) fn id_of_user(&mut self, field: impl FnOnce() -> String, user_id: &str) {
        let chars = user_id.chars().count();
        if chars > MAX_ID_CHARS {
            self.add(
                field(),
                format!("must be at most {MAX_ID_CHARS} characters, is {chars}"),
            );
        } else if let Some(problem) = user_id_problem(user_id) {
            self.add(field(), problem);
        }
    }

    /// The organisation id travels in an HTTP header, so it must be printable ASCII.
    pub(super) fn org_id(&mut self, org_id: String) -> Option<String> {
        let chars = org_id.chars().count();
        if chars > MAX_ID_CHARS {
            self.add(
                "organization_id",
                format!("must be at most {MAX_ID_CHARS} characters, is {chars}"),
            );
        } else if !org_id.bytes().all(|b| b.is_ascii_graphic()) {
            self.add(
                "organization_id",
                "must be a ZITADEL organisation id: printable ASCII without spaces",
            );
        }
        Some(org_id).filter(|id| !id.is_empty())
    }

    /// The organisation whose own metadata a request addresses (empty: the caller's). It travels in a header
    /// (v1) or a body (v2), and into the policy, the audit line and the cache as given: besides the header's
    /// printable ASCII, what would change on the way into a URL is refused as for user ids.
    pub(super) fn organization(&mut self, org_id: String) -> Option<String> {
        let chars = org_id.chars().count();
        if chars > MAX_ID_CHARS {
            self.add(
                "organization_id",
                format!("must be at most {MAX_ID_CHARS} characters, is {chars}"),
            );
        } else if let Some(problem) = user_id_problem(&org_id) {
            self.add(
                "organization_id",
                problem.replace("user id", "organisation id"),
            );
        } else if !org_id.bytes().all(|b| b.is_ascii_graphic()) {
            self.add(
                "organization_id",
                "must be a ZITADEL organisation id: printable ASCII without spaces",
            );
        }
        Some(org_id).filter(|id| !id.is_empty())
    }

    /// Keys of a write or delete: at least one, each valid, none twice.
    pub(super) fn distinct_keys<'a>(
        &mut self,
        field: &str,
        keys: impl Iterator<Item = (String, &'a str)>,
    ) {
        let mut seen: HashMap<&str, String> = HashMap::new();
        let mut any = false;
        for (path, key) in keys {
            any = true;
            self.key(|| path.clone(), key);
            if let Some(first) = seen.get(key) {
                self.add(
                    path,
                    format!("repeats the key of {first}; name each key once"),
                );
            } else {
                seen.insert(key, path);
            }
        }
        if !any {
            self.add(field, "must name at least one key");
        }
    }
}

/// Characters a user id may not hold: they would be changed or read differently on the way into ZITADEL's
/// URL paths (grpc-gateway leaves reserved characters percent-encoded, `%` starts an escape, `\\` is a
/// separator to some proxies). ZITADEL's own ids are digits; custom ids with letters, `-`, `_`, `.`, `~` or
/// non-ASCII letters pass.
const ID_DELIMITERS: &str = "/?#[]@!$&'()*+,;=%\\\"<>^`{|}";

/// Why `user_id` cannot be sent as given, if it cannot.
fn user_id_problem(user_id: &str) -> Option<String> {
    if let Some(dots) = dot_segment(user_id) {
        return Some(dots);
    }
    if let Some(found) = user_id
        .chars()
        .find(|c| c.is_control() || c.is_whitespace())
    {
        return Some(format!(
            "must be a ZITADEL user id, without control characters or whitespace (found {})",
            described(found)
        ));
    }
    user_id.chars().find(|c| ID_DELIMITERS.contains(*c)).map(|found| {
        format!(
            "must be a ZITADEL user id: letters, digits, `-`, `_`, `.` and `~`, without URL delimiters (found `{found}`)"
        )
    })
}

/// Why `key` cannot be sent as given, if it cannot. Spaces and any printable character are legal in ZITADEL
/// keys and travel in a request body when a URL path would change them.
fn key_problem(key: &str) -> Option<String> {
    if let Some(dots) = dot_segment(key) {
        return Some(dots);
    }
    key.chars().find(|c| c.is_control()).map(|found| {
        format!(
            "must not contain control characters (found {})",
            described(found)
        )
    })
}

/// `.` and `..` are path segments that URL handling removes or resolves, never names.
fn dot_segment(text: &str) -> Option<String> {
    matches!(text, "." | "..").then(|| {
        format!("must not be `{text}`: URL paths treat it as a relative segment, not a name")
    })
}

/// A character for a message: its code point, since it may not print.
fn described(c: char) -> String {
    format!("U+{:04X}", u32::from(c))
}
