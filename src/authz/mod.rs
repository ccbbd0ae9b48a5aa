//! Envoy external authorization (`envoy.service.auth.v3.Authorization/Check`): Envoy or Istio asks usermeta
//! before forwarding a request; usermeta resolves the caller's bearer token through the same cached userinfo
//! path as GetMyMetadata and answers with allow-listed metadata as upstream headers, so routes can match on
//! user attributes.
//!
//! This module holds the validated configuration and its parsers; [`check`] serves the API and decides,
//! `answer` turns a decision into Envoy's answer, and `settings::ext_authz` reads the configuration from flags
//! and environment.

mod answer;
pub mod check;
pub mod wire;

pub use check::AuthzService;

/// The gRPC service name, for health reporting.
pub const SERVICE_NAME: &str = "envoy.service.auth.v3.Authorization";

/// Marks a binary (non UTF-8) value encoded as standard base64 in a header.
pub const BASE64_MARKER: &str = "base64:";

/// Longest header value usermeta injects; longer values are skipped (Envoy limits all headers to 60 KiB).
pub const MAX_HEADER_VALUE_BYTES: usize = 8 * 1024;

/// Envoy's external authorization API as served: how Check behaves, and where. Check answers with callers'
/// metadata for the upstream, so it is served only on a listener of its own, for Envoy alone (a sidecar's
/// loopback, or a port a NetworkPolicy opens to the gateway); the public gRPC port answers UNIMPLEMENTED.
#[derive(Debug, Clone)]
pub struct ExtAuthz {
    /// How Check behaves.
    pub config: AuthzConfig,
    /// Where Check is served.
    pub listen: std::net::SocketAddr,
    /// TLS (and mTLS, to admit only Envoy's certificate) on that listener; plaintext when `None`.
    pub tls: Option<crate::tls::TlsFiles>,
}

/// How Check behaves, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthzConfig {
    /// Metadata keys passed upstream, each under its header name.
    pub headers: Vec<HeaderMapping>,
    /// Header carrying the caller's user id; `None` sends none.
    pub user_id_header: Option<String>,
    /// What happens to a value that is not UTF-8 text.
    pub binary: BinaryValues,
    /// Requests without a bearer token pass without identity headers instead of being denied.
    pub allow_anonymous: bool,
    /// When ZITADEL cannot answer, requests pass without identity headers instead of being denied (503).
    pub fail_open: bool,
    /// Also return the user id and injected values as `dynamic_metadata`.
    pub dynamic_metadata: bool,
    /// Requirements by path and host; a request that a rule applies to is denied unless the caller meets it.
    pub rules: Vec<Rule>,
}

impl Default for AuthzConfig {
    fn default() -> Self {
        AuthzConfig {
            headers: Vec::new(),
            user_id_header: Some("x-user-id".to_owned()),
            binary: BinaryValues::Base64,
            allow_anonymous: false,
            fail_open: false,
            dynamic_metadata: false,
            rules: Vec::new(),
        }
    }
}

impl AuthzConfig {
    /// Every header name usermeta may set; each answer sets or removes all of them, so none can be forged.
    pub fn managed_headers(&self) -> impl Iterator<Item = &str> {
        self.user_id_header
            .as_deref()
            .into_iter()
            .chain(self.headers.iter().map(|m| m.header.as_str()))
    }

    /// The first route rule that requires a role (roles need usermeta's project id to mean anything).
    pub fn first_role_rule(&self) -> Option<&Rule> {
        self.rules.iter().find(|rule| {
            rule.requirements
                .iter()
                .any(|r| matches!(r, Requirement::Role(_)))
        })
    }

    /// Whether any header or rule needs the caller's organisation's metadata.
    pub fn needs_organization(&self) -> bool {
        self.headers.iter().any(|m| m.organization)
            || self.rules.iter().any(|rule| {
                rule.requirements
                    .iter()
                    .any(|r| matches!(r, Requirement::OrgMetadata { .. }))
            })
    }

    /// Checks what single settings cannot: no header name used twice.
    pub fn validate(&self) -> Result<(), String> {
        let mut seen = std::collections::HashSet::new();
        for name in self.managed_headers() {
            if !seen.insert(name) {
                return Err(format!(
                    "header `{name}` is configured more than once (metadata headers and the user id header must differ)"
                ));
            }
        }
        Ok(())
    }
}

/// One allow-listed metadata key and the upstream header that carries its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderMapping {
    /// The metadata key whose value is sent.
    pub key: String,
    /// The key is one of the caller's organisation's own metadata (written `org:KEY=header`), not the
    /// caller's.
    pub organization: bool,
    /// Lower-case, valid, not reserved.
    pub header: String,
}

/// What happens to a value that is not UTF-8 text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryValues {
    /// Standard base64 after the marker `base64:`.
    Base64,
    /// Not sent (the header is removed).
    Drop,
}

/// A requirement for requests whose path and host match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Applies to this path and the paths below it, compared by whole segments; `None` to all paths.
    pub path_prefix: Option<String>,
    /// Applies to this host (lower-case, without a trailing dot; compared without port); `None` to all hosts.
    pub host: Option<String>,
    /// All must hold.
    pub requirements: Vec<Requirement>,
    /// Where the rule was written, for logs and denial bodies.
    pub origin: String,
}

/// One condition of a [`Rule`] that the caller must meet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// The metadata key holds exactly this (UTF-8) value.
    Metadata {
        /// The metadata key.
        key: String,
        /// The value the caller's key must hold.
        value: String,
    },
    /// The caller's organisation's own metadata key holds exactly this (UTF-8) value (`org.KEY=VALUE`).
    OrgMetadata {
        /// The organisation's metadata key.
        key: String,
        /// The value it must hold.
        value: String,
    },
    /// The caller has this project role.
    Role(String),
}

impl Rule {
    /// Whether the rule applies to a request for `path` (may carry a query) on `host` (may carry a port and a
    /// trailing dot). Paths are compared as [`path_segments`]: whole segments, so `/admin` covers `/admin`
    /// and `/admin/x` but not `/administrator`, after the normalisations an upstream might apply itself.
    pub fn applies_to(&self, path: &str, host: &str) -> bool {
        let path_ok = self.path_prefix.as_deref().is_none_or(|prefix| {
            let wanted = path_segments(prefix);
            let segments = path_segments(path);
            segments.len() >= wanted.len() && segments[..wanted.len()] == wanted[..]
        });
        let host_ok = self
            .host
            .as_deref()
            .is_none_or(|wanted| bare_host(host).eq_ignore_ascii_case(wanted));
        path_ok && host_ok
    }
}

/// A request path as rules compare it: the query and fragment cut off; `%XX` escapes decoded (an upstream
/// may decode them); `\` taken as `/`; empty, `.` and `..` segments resolved; a segment's `;parameters`
/// dropped; ASCII lower case. Each of these can only make a rule cover more requests (the safe direction for
/// a rule that requires something): an upstream that reads `/%61dmin`, `//admin`, `/x/../admin`,
/// `/admin;v=1` or `/ADMIN` as `/admin` still meets the rule for `/admin`.
pub fn path_segments(raw: &str) -> Vec<String> {
    let raw = raw.split(['?', '#']).next().unwrap_or_default();
    let decoded = percent_encoding::percent_decode_str(raw)
        .decode_utf8_lossy()
        .replace('\\', "/");
    let mut segments: Vec<String> = Vec::new();
    for segment in decoded.split('/') {
        let name = segment.split(';').next().unwrap_or_default();
        match name {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            name => segments.push(name.to_ascii_lowercase()),
        }
    }
    segments
}

/// `example.com:8443` → `example.com`; `[::1]:80` → `[::1]`.
fn strip_port(host: &str) -> &str {
    match host.rfind(':') {
        Some(i)
            if !host[i..].contains(']') && host[i + 1..].bytes().all(|b| b.is_ascii_digit()) =>
        {
            &host[..i]
        }
        _ => host,
    }
}

/// The host as rules compare it: without port and without the trailing dot of a fully qualified name.
fn bare_host(host: &str) -> &str {
    let host = strip_port(host);
    host.strip_suffix('.').unwrap_or(host)
}

/// Parses `key=header-name` pairs, comma separated (whitespace around items ignored); `org:key=header-name`
/// names a key of the caller's organisation's own metadata.
pub fn parse_header_map(raw: &str) -> Result<Vec<HeaderMapping>, String> {
    let mut mappings = Vec::new();
    for item in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (key, header) = item.split_once('=').ok_or_else(|| {
            format!("`{item}` is not `metadata-key=header-name` (e.g. ContractNumber=x-user-contract-number, or org:plan=x-tenant-plan for the organisation's)")
        })?;
        let key = key.trim();
        let (organization, key) = match key.strip_prefix("org:") {
            Some(key) => (true, key.trim()),
            None => (false, key),
        };
        if key.is_empty() {
            return Err(format!("`{item}` names no metadata key"));
        }
        if mappings
            .iter()
            .any(|m: &HeaderMapping| m.key == key && m.organization == organization)
        {
            return Err(format!("metadata key `{key}` is listed twice"));
        }
        mappings.push(HeaderMapping {
            key: key.to_owned(),
            organization,
            header: header_name(header.trim())?,
        });
    }
    Ok(mappings)
}

/// Checks a header name usermeta will set: a lower-case HTTP token (Envoy matches lower-case names), not a
/// pseudo header, and not one that carries credentials or framing.
pub fn header_name(raw: &str) -> Result<String, String> {
    const RESERVED: &[&str] = &[
        "authorization",
        "proxy-authorization",
        "cookie",
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "te",
        "upgrade",
    ];
    if raw.is_empty() {
        return Err("a header name is empty".to_owned());
    }
    if raw.starts_with(':') {
        return Err(format!(
            "`{raw}` is a pseudo header; pick an ordinary name such as x-user-id"
        ));
    }
    if http::HeaderName::from_bytes(raw.as_bytes()).is_err() {
        return Err(format!("`{raw}` is not a valid HTTP header name"));
    }
    if raw.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!(
            "`{raw}` has upper-case letters; write header names in lower case (`{}`)",
            raw.to_ascii_lowercase()
        ));
    }
    if RESERVED.contains(&raw) {
        return Err(format!("`{raw}` is reserved; usermeta will not set it"));
    }
    Ok(raw.to_owned())
}

/// Parses rules, one a line (`#` starts a comment line; blank lines are skipped). Errors name the line
/// as `origin:line`. A rule is space-separated terms:
/// `path=/prefix`, `host=name`, `role=name`, `metadata.KEY=VALUE`; at least one `role` or `metadata.` term.
pub fn parse_rules(text: &str, origin: &str) -> Result<Vec<Rule>, String> {
    let mut rules = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = format!("{origin}:{}", index + 1);
        rules.push(parse_rule(line, at)?);
    }
    Ok(rules)
}

fn parse_rule(line: &str, origin: String) -> Result<Rule, String> {
    let mut rule = Rule {
        path_prefix: None,
        host: None,
        requirements: Vec::new(),
        origin,
    };
    let fail = |rule: &Rule, problem: String| Err(format!("{}: {problem}", rule.origin));
    for term in line.split_whitespace() {
        let Some((name, value)) = term.split_once('=') else {
            return fail(&rule, format!("`{term}` is not `name=value`"));
        };
        if value.is_empty() {
            return fail(&rule, format!("`{term}` has no value"));
        }
        match name {
            "path" if rule.path_prefix.is_some() => return fail(&rule, "two `path` terms".into()),
            "path" if !value.starts_with('/') => {
                return fail(&rule, format!("path `{value}` must start with `/`"));
            }
            "path" => rule.path_prefix = Some(value.to_owned()),
            "host" if rule.host.is_some() => return fail(&rule, "two `host` terms".into()),
            "host" => {
                let host = value.to_ascii_lowercase();
                rule.host = Some(host.strip_suffix('.').unwrap_or(&host).to_owned());
            }
            "role" => rule.requirements.push(Requirement::Role(value.to_owned())),
            _ => match (name.strip_prefix("metadata."), name.strip_prefix("org.")) {
                (Some(key), _) if !key.is_empty() => {
                    rule.requirements.push(Requirement::Metadata {
                        key: key.to_owned(),
                        value: value.to_owned(),
                    });
                }
                (_, Some(key)) if !key.is_empty() => {
                    rule.requirements.push(Requirement::OrgMetadata {
                        key: key.to_owned(),
                        value: value.to_owned(),
                    });
                }
                _ => {
                    return fail(
                        &rule,
                        format!(
                            "unknown term `{name}`; use path=, host=, role=, metadata.KEY= or org.KEY="
                        ),
                    );
                }
            },
        }
    }
    if rule.requirements.is_empty() {
        return fail(
            &rule,
            "requires nothing; add role=NAME, metadata.KEY=VALUE or org.KEY=VALUE".into(),
        );
    }
    Ok(rule)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_maps_parse_and_validate_names() {
        let map =
            parse_header_map(" ContractNumber=x-user-contract-number , profile.language=x-lang,")
                .unwrap();
        assert_eq!(
            map,
            vec![
                HeaderMapping {
                    key: "ContractNumber".into(),
                    organization: false,
                    header: "x-user-contract-number".into()
                },
                HeaderMapping {
                    key: "profile.language".into(),
                    organization: false,
                    header: "x-lang".into()
                },
            ]
        );
        for bad in [
            "ContractNumber",
            "=x-a",
            "a=",
            "a=X-Upper",
            "a=:path",
            "a=authorization",
            "a=bad header",
            "a=x-a,a=x-b",
        ] {
            assert!(parse_header_map(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn organisation_keys_parse_as_headers_and_rule_terms() {
        let mappings = parse_header_map("plan=x-user-plan, org:plan=x-tenant-plan").unwrap();
        assert_eq!(
            mappings
                .iter()
                .map(|m| (m.key.as_str(), m.organization, m.header.as_str()))
                .collect::<Vec<_>>(),
            [
                ("plan", false, "x-user-plan"),
                ("plan", true, "x-tenant-plan")
            ]
        );
        assert!(parse_header_map("org:=x-a").is_err());
        assert!(parse_header_map("org:plan=x-a,org:plan=x-b").is_err());
        let rules = parse_rules("path=/enterprise org.plan=enterprise", "t").unwrap();
        assert_eq!(
            rules[0].requirements,
            [Requirement::OrgMetadata {
                key: "plan".into(),
                value: "enterprise".into()
            }]
        );
        assert!(parse_rules("path=/x org.=y", "t").is_err());
        let config = AuthzConfig {
            headers: mappings,
            ..AuthzConfig::default()
        };
        assert!(config.needs_organization());
        assert!(!AuthzConfig::default().needs_organization());
    }

    #[test]
    fn duplicate_header_names_are_refused() {
        let config = AuthzConfig {
            headers: parse_header_map("a=x-user-id").unwrap(),
            ..AuthzConfig::default()
        };
        assert!(config.validate().unwrap_err().contains("x-user-id"));
        let config = AuthzConfig {
            headers: parse_header_map("a=x-a,b=x-a").unwrap(),
            user_id_header: None,
            ..AuthzConfig::default()
        };
        assert!(config.validate().is_err());
    }

    #[test]
    fn rules_parse_with_line_numbers() {
        let rules = parse_rules(
            "# comment\n\npath=/admin role=admin\nhost=API.example.com path=/c metadata.ContractNumber=12=34\n",
            "rules.txt",
        )
        .unwrap();
        assert_eq!(rules.len(), 2);
        assert_eq!(rules[0].origin, "rules.txt:3");
        assert_eq!(
            rules[0].requirements,
            vec![Requirement::Role("admin".into())]
        );
        assert_eq!(rules[1].host.as_deref(), Some("api.example.com"));
        assert_eq!(
            rules[1].requirements,
            vec![Requirement::Metadata {
                key: "ContractNumber".into(),
                value: "12=34".into()
            }]
        );
        let error = parse_rules("path=/a role=x\npath=/b\n", "f").unwrap_err();
        assert!(error.starts_with("f:2: "), "{error}");
        for bad in [
            "path=a role=x",
            "colour=red role=x",
            "role=",
            "metadata.=x",
            "path=/a path=/b role=x",
        ] {
            assert!(parse_rules(bad, "f").is_err(), "{bad}");
        }
    }

    #[test]
    fn rules_match_path_prefix_and_host_without_port() {
        let rule = parse_rules("path=/admin host=api.example.com role=r", "f")
            .unwrap()
            .remove(0);
        assert!(rule.applies_to("/admin/users?x=1", "api.example.com:8443"));
        assert!(rule.applies_to("/admin", "API.example.com"));
        assert!(!rule.applies_to("/public/admin", "api.example.com"));
        assert!(!rule.applies_to("/admin", "other.example.com"));
        assert!(!rule.applies_to("/?/admin", "api.example.com"));
        // A fully qualified host name with its trailing dot is the same host.
        assert!(rule.applies_to("/admin", "api.example.com."));
        assert!(rule.applies_to("/admin", "api.example.com.:443"));
        let dotted = parse_rules("host=api.example.com. role=r", "f")
            .unwrap()
            .remove(0);
        assert!(dotted.applies_to("/", "api.example.com"));
        // Whole segments only.
        assert!(!rule.applies_to("/administrator", "api.example.com"));
        assert!(!rule.applies_to("/admin-tools", "api.example.com"));
        assert!(rule.applies_to("/admin/", "api.example.com"));
        // What an upstream might read as /admin is covered.
        for disguised in [
            "//admin",
            "/./admin",
            "/x/../admin",
            "/%61dmin",
            "/%2Fadmin",
            "/admin;jsessionid=1",
            "/ADMIN",
            "\\admin",
            "/public/..%2Fadmin",
        ] {
            assert!(rule.applies_to(disguised, "api.example.com"), "{disguised}");
        }
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }
}
