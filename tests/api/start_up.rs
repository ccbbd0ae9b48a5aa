//! Settings that would widen the policy or open a side door stop start-up, with a message naming the setting,
//! the file and the line: the real binary, as an operator starts it.

use crate::support::{run_usermeta, stderr, write_config};

fn serve_with_policy(name: &str, policy: &str, extra_env: &[(&str, &str)]) -> String {
    let path = write_config(name, policy);
    let mut env = vec![
        ("USERMETA_ZITADEL_URL", "http://127.0.0.1:9"),
        ("USERMETA_SERVICE_PAT", "p"),
        ("USERMETA_LISTEN", "127.0.0.1:0"),
        ("USERMETA_POLICY_FILE", path.as_str()),
    ];
    env.extend_from_slice(extra_env);
    let output = run_usermeta(&["serve"], &env);
    assert!(!output.status.success(), "usermeta started with {policy}");
    stderr(&output)
}

#[test]
fn an_empty_who_entry_stops_start_up_naming_the_file_and_line() {
    let error = serve_with_policy(
        "empty-client.toml",
        "[[rule]]\nname = \"billing\"\nwho = { client_ids = [\"\"] }\nwhose = \"any\"\nkeys = [\"*\"]\nactions = [\"write\"]\n",
        &[],
    );
    assert!(
        error.contains("USERMETA_POLICY_FILE")
            && error.contains("empty-client.toml, line 3")
            && error.contains("`who.client_ids` has an empty entry"),
        "{error}"
    );
    let error = serve_with_policy(
        "empty-subjects.toml",
        "[[rule]]\nwho = { subjects = [] }\nwhose = \"any\"\nkeys = [\"*\"]\nactions = [\"write\"]\n",
        &[],
    );
    assert!(
        error.contains("empty-subjects.toml, line 2")
            && error.contains("`who.subjects` is an empty list"),
        "{error}"
    );
}

#[test]
fn a_rule_naming_roles_needs_usermetas_project_id() {
    let policy = "[[rule]]\nname = \"support reads\"\nwho = { roles = [\"support\"] }\nwhose = \"any\"\nkeys = [\"*\"]\nactions = [\"read\"]\n";
    let error = serve_with_policy("roles.toml", policy, &[]);
    assert!(
        error.contains("USERMETA_PROJECT_ID") && error.contains("support reads"),
        "{error}"
    );
    // An empty value is no project id either.
    let error = serve_with_policy("roles-empty.toml", policy, &[("USERMETA_PROJECT_ID", " ")]);
    assert!(error.contains("USERMETA_PROJECT_ID"), "{error}");
}

#[test]
fn an_ext_authz_rule_requiring_a_role_needs_usermetas_project_id() {
    let output = run_usermeta(
        &["serve"],
        &[
            ("USERMETA_ZITADEL_URL", "http://127.0.0.1:9"),
            ("USERMETA_SERVICE_PAT", "p"),
            ("USERMETA_LISTEN", "127.0.0.1:0"),
            ("USERMETA_EXT_AUTHZ", "true"),
            ("USERMETA_EXT_AUTHZ_LISTEN", "127.0.0.1:0"),
            ("USERMETA_EXT_AUTHZ_RULES", "path=/admin role=admin"),
        ],
    );
    assert!(!output.status.success());
    let error = stderr(&output);
    assert!(
        error.contains("USERMETA_PROJECT_ID") && error.contains("rule:1"),
        "{error}"
    );
}
