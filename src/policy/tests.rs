use super::*;

fn caller(sub: &str) -> Identity {
    Identity {
        sub: sub.into(),
        ..Identity::default()
    }
}

fn client(sub: &str, client_id: &str) -> Identity {
    Identity {
        sub: sub.into(),
        client_id: Some(client_id.into()),
        ..Identity::default()
    }
}

fn user(id: &str) -> Subject<'_> {
    Subject {
        user_id: id,
        org_id: None,
    }
}

fn in_org<'a>(id: &'a str, org: &'a str) -> Subject<'a> {
    Subject {
        user_id: id,
        org_id: Some(org),
    }
}

const FILE: &str = r#"
[[rule]]
name = "billing links the customer id"
who = { client_ids = ["billing"] }
whose = "any"
keys = ["internal.customer_id"]
actions = ["read", "write", "delete"]

[[rule]]
name = "users keep their profile"
whose = "self"
keys = ["profile.*"]
actions = ["write", "delete"]

[[rule]]
name = "gateway routes"
who = { client_ids = ["gateway"] }
whose = "any"
keys = ["routing.*"]
actions = ["read"]

[[rule]]
name = "support reads acme users"
who = { roles = ["support"] }
whose = ["acme"]
keys = ["*"]
actions = ["read"]

[[key]]
name = "routing.*"
hidden = true

[[key]]
name = "profile.age"
max_bytes = 3
pattern = '^[0-9]+$'

[[key]]
name = "profile.prefs"
json = true
"#;

fn file_policy() -> Policy {
    Policy::from_toml(FILE, "test.toml").unwrap()
}

#[test]
fn default_allows_self_read_only() {
    let policy = Policy::default();
    let me = caller("u1");
    assert!(
        policy
            .authorize(&me, user("u1"), Action::Read, ["k"])
            .is_ok()
    );
    assert!(policy.read_scope(&me, user("u1")).is_ok());
    for action in [Action::Write, Action::Delete] {
        assert!(policy.authorize(&me, user("u1"), action, ["k"]).is_err());
    }
    for action in Action::ALL {
        assert!(policy.authorize(&me, user("u2"), action, ["k"]).is_err());
    }
    assert!(matches!(
        policy.read_scope(&me, user("u2")),
        Err(Denial::NoRule { key: None, .. })
    ));
}

#[test]
fn shorthands_are_rules() {
    let policy = Policy::new(
        ["admin".to_string()],
        vec!["profile.".into(), "pref.".into()],
    );
    let me = caller("u1");
    assert!(
        policy
            .authorize(
                &me,
                user("u1"),
                Action::Write,
                ["profile.name", "pref.lang"]
            )
            .is_ok()
    );
    let denied = policy
        .authorize(
            &me,
            user("u1"),
            Action::Delete,
            ["profile.name", "billing.plan"],
        )
        .unwrap_err();
    assert_eq!(denied.key(), Some("billing.plan"));
    assert_eq!(denied.action(), Action::Delete);
    assert!(
        policy
            .authorize(&me, user("u2"), Action::Write, ["profile.name"])
            .is_err()
    );
    for action in Action::ALL {
        assert!(
            policy
                .authorize(&caller("admin"), user("u2"), action, ["anything"])
                .is_ok()
        );
    }
}

#[test]
fn file_rules_match_who_whose_keys_and_actions() {
    let policy = file_policy();
    let billing = client("svc-billing", "billing");
    assert!(
        policy
            .authorize(
                &billing,
                user("u1"),
                Action::Write,
                ["internal.customer_id"]
            )
            .is_ok()
    );
    assert!(
        policy
            .authorize(&billing, user("u1"), Action::Write, ["internal.other"])
            .is_err()
    );
    // The same user without the client id is not the billing service.
    assert!(
        policy
            .authorize(
                &caller("svc-billing"),
                user("u1"),
                Action::Write,
                ["internal.customer_id"]
            )
            .is_err()
    );
    let me = caller("u1");
    assert!(
        policy
            .authorize(&me, user("u1"), Action::Write, ["profile.x"])
            .is_ok()
    );
    assert!(
        policy
            .authorize(&me, user("u2"), Action::Write, ["profile.x"])
            .is_err()
    );
    assert!(
        policy
            .authorize(&me, user("u1"), Action::Write, ["internal.customer_id"])
            .is_err()
    );

    let support = Identity {
        roles: ["support".to_string()].into(),
        ..caller("s1")
    };
    assert!(policy.read_scope(&support, in_org("u1", "acme")).is_ok());
    assert!(policy.read_scope(&support, in_org("u1", "globex")).is_err());
    assert!(policy.read_scope(&support, user("u1")).is_err());
    assert!(
        policy
            .authorize(&support, in_org("u1", "acme"), Action::Write, ["a"])
            .is_err()
    );
}

#[test]
fn hidden_keys_are_never_read_by_their_user() {
    let policy = file_policy();
    let me = caller("u1");
    let scope = policy.read_scope(&me, user("u1")).unwrap();
    assert!(scope.allows("profile.x"));
    assert!(!scope.allows("routing.tier"));
    assert_eq!(
        scope.require("routing.tier"),
        Err(Denial::Hidden {
            key: "routing.tier".into()
        })
    );
    let gateway = client("gw", "gateway");
    let scope = policy.read_scope(&gateway, user("u1")).unwrap();
    assert!(scope.allows("routing.tier"));
    assert!(!scope.allows("profile.x"));
    assert_eq!(
        scope.require("profile.x"),
        Err(Denial::NoRule {
            action: Action::Read,
            key: Some("profile.x".into()),
            target: Some("u1".into()),
            caller: "user gw (client gateway)".into(),
        })
    );
    let own = policy.own_scope().unwrap();
    assert!(own.allows("anything") && !own.allows("routing.x"));
}

#[test]
fn value_rules() {
    let policy = file_policy();
    assert!(policy.value_problems("profile.age", b"42").is_empty());
    assert_eq!(policy.value_problems("profile.age", b"4200").len(), 1);
    assert_eq!(policy.value_problems("profile.age", b"x").len(), 1);
    assert_eq!(policy.value_problems("profile.age", b"xxxx").len(), 2);
    assert_eq!(policy.value_problems("profile.age", &[0xff]).len(), 1);
    assert!(
        policy
            .value_problems("profile.prefs", br#"{"a":1}"#)
            .is_empty()
    );
    assert_eq!(policy.value_problems("profile.prefs", b"{").len(), 1);
    assert!(policy.value_problems("other", b"anything").is_empty());
}

#[test]
fn self_read_can_be_switched_off() {
    let policy = Policy::from_toml("self_read = false", "t").unwrap();
    assert!(policy.read_scope(&caller("u1"), user("u1")).is_err());
}

#[test]
fn key_patterns() {
    assert_eq!(KeyPattern::parse("*"), Ok(KeyPattern::Any));
    assert_eq!(
        KeyPattern::parse("billing.*"),
        Ok(KeyPattern::Prefix("billing.".into()))
    );
    assert_eq!(KeyPattern::parse("a"), Ok(KeyPattern::Exact("a".into())));
    assert!(KeyPattern::parse("a*b").is_err());
    assert!(KeyPattern::parse("**").is_err());
    assert!(KeyPattern::parse("").is_err());
}

#[track_caller]
fn error_of(text: &str) -> PolicyError {
    Policy::from_toml(text, "p.toml").unwrap_err()
}

#[test]
fn file_errors_name_the_line() {
    let cases: &[(&str, usize, &str)] = &[
        (
            "[[rule]]\nwhose = \"self\"\nkeys = [\"a\"]\nactions = [\"read\", \"fly\"]\n",
            4,
            "fly",
        ),
        (
            "[[rule]]\nwhose = \"self\"\nkeys = [\"a\"]\nactions = [\"read\"]\ncolour = \"red\"\n",
            5,
            "colour",
        ),
        (
            "[[rule]]\nwhose = \"mine\"\nkeys = [\"a\"]\nactions = [\"read\"]\n",
            2,
            "whose",
        ),
        (
            "[[rule]]\nwho = { team = [\"x\"] }\nwhose = \"self\"\nkeys = [\"a\"]\nactions = [\"read\"]\n",
            2,
            "team",
        ),
        (
            "\n[[key]]\nname = \"a\"\npattern = \"(unclosed\"\n",
            4,
            "regular expression",
        ),
        (
            "[[rule]]\nwhose = \"self\"\nkeys = [\"a*b\"]\nactions = [\"read\"]\n",
            3,
            "`*`",
        ),
        (
            "[[rule]]\nwhose = \"self\"\nkeys = [\"a\"]\nactions = []\n",
            4,
            "actions",
        ),
        ("[[key]]\nname = \"a\"\n", 2, "declares nothing"),
        (
            "[[rule]]\nwho = { client_ids = [\"\"] }\nwhose = \"any\"\nkeys = [\"a\"]\nactions = [\"read\"]\n",
            2,
            "`who.client_ids` has an empty entry",
        ),
        (
            "[[rule]]\nwhose = \"any\"\nkeys = [\"a\"]\nactions = [\"read\"]\nwho = { subjects = [] }\n",
            5,
            "`who.subjects` is an empty list",
        ),
        (
            "[[rule]]\nwho = { roles = [\"support\", \"  \"] }\nwhose = \"any\"\nkeys = [\"a\"]\nactions = [\"read\"]\n",
            2,
            "`who.roles` has an empty entry",
        ),
        (
            "[[rule]]\nwho = { organizations = [] }\nwhose = \"any\"\nkeys = [\"a\"]\nactions = [\"read\"]\n",
            2,
            "`who.organizations` is an empty list",
        ),
        (
            "[[rule]]\nwhose = [\"\"]\nkeys = [\"a\"]\nactions = [\"read\"]\n",
            2,
            "`whose` has an empty entry",
        ),
        (
            "[[rule]]\nwhose = []\nkeys = [\"a\"]\nactions = [\"read\"]\n",
            2,
            "`whose` is an empty list",
        ),
        ("[[rule]\n", 1, ""),
    ];
    for (text, line, needle) in cases {
        let error = error_of(text);
        assert_eq!(
            error.line.map(|(l, _)| l),
            Some(*line),
            "{error} for\n{text}"
        );
        let shown = error.to_string();
        assert!(shown.contains(needle), "{shown}");
        assert!(shown.starts_with("policy file p.toml, line "), "{shown}");
    }
}

#[test]
fn denials_name_key_action_and_caller_but_no_values() {
    let policy = Policy::default();
    let denial = policy
        .authorize(&client("u1", "app"), user("u2"), Action::Write, ["k"])
        .unwrap_err();
    let text = denial.to_string();
    assert!(text.contains("key `k`"), "{text}");
    assert!(text.contains("user u2"), "{text}");
    assert!(text.contains("client app"), "{text}");
    assert!(text.contains("write"), "{text}");
}

mod fuzz {
    //! The policy file from hostile or careless hands (256 cases under `cargo test`, more with
    //! `PROPTEST_CASES`): any text, and documents with the file's own fields holding anything, load or are
    //! refused with a message, never a panic; an error's line is inside the file.

    use proptest::prelude::*;

    use super::*;

    fn toml_value() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            "\"\\PC{0,16}\"".prop_map(|s| s),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<bool>().prop_map(|b| b.to_string()),
            Just("\"*\"".to_owned()),
            Just("\"prefix.*\"".to_owned()),
            Just("\"^[a-z]+$\"".to_owned()),
            Just("\"(unclosed\"".to_owned()),
        ];
        prop_oneof![
            leaf.clone(),
            prop::collection::vec(leaf.clone(), 0..3)
                .prop_map(|items| format!("[{}]", items.join(", "))),
            prop::collection::vec(
                (
                    prop::sample::select(
                        &["subjects", "client_ids", "roles", "organizations", "x"][..]
                    ),
                    prop::collection::vec(leaf, 0..3)
                ),
                0..3
            )
            .prop_map(|pairs| format!(
                "{{ {} }}",
                pairs
                    .iter()
                    .map(|(k, v)| format!("{k} = [{}]", v.join(", ")))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        ]
    }

    fn table(name: &'static str, fields: &'static [&'static str]) -> impl Strategy<Value = String> {
        prop::collection::vec((prop::sample::select(fields), toml_value()), 0..6).prop_map(
            move |pairs| {
                let mut text = format!("[[{name}]]\n");
                for (field, value) in pairs {
                    text.push_str(&format!("{field} = {value}\n"));
                }
                text
            },
        )
    }

    proptest! {
        #[test]
        fn no_text_panics_the_policy_loader(text in "\\PC{0,300}") {
            if let Err(error) = Policy::from_toml(&text, "fuzz.toml")
                && let Some((line, _)) = error.line
            {
                prop_assert!(line <= text.lines().count().max(1), "{error}");
            }
        }

        #[test]
        fn no_document_of_the_files_fields_panics_the_loader(
            self_read in prop::option::of(toml_value()),
            rules in prop::collection::vec(table("rule", &["name", "who", "whose", "keys", "actions", "extra"]), 0..3),
            keys in prop::collection::vec(table("key", &["name", "hidden", "max_bytes", "pattern", "json", "extra"]), 0..3),
        ) {
            let mut text = self_read.map(|v| format!("self_read = {v}\n")).unwrap_or_default();
            for table in rules.iter().chain(&keys) {
                text.push_str(table);
            }
            match Policy::from_toml(&text, "fuzz.toml") {
                Ok(policy) => {
                    // A loaded policy decides without panicking.
                    let caller = caller("u1");
                    let _ = policy.read_scope(&caller, user("u2")).map(|scope| scope.allows("k"));
                    let _ = policy.authorize(&caller, user("u1"), Action::Write, ["profile.x"]);
                }
                Err(error) => prop_assert!(!error.message.is_empty()),
            }
        }
    }
}

/// Refusing before ZITADEL is asked: without an organisation in the request, an organisation rule may still
/// apply once ZITADEL says where the user is; a named organisation is the one ZITADEL acts in, so only it counts.
#[test]
fn the_early_check_counts_only_a_named_organisation() {
    let policy = file_policy();
    let support = Identity {
        roles: ["support".to_owned()].into(),
        ..caller("sam")
    };
    assert!(
        policy
            .read_in_any_organization(&support, user("u1"))
            .is_ok()
    );
    assert!(
        policy
            .read_in_any_organization(&support, in_org("u1", "acme"))
            .is_ok()
    );
    assert!(
        policy
            .read_in_any_organization(&support, in_org("u1", "globex"))
            .is_err()
    );
    assert!(
        policy
            .authorize_in_any_organization(&support, in_org("u1", "globex"), Action::Read, ["k"])
            .is_err()
    );
    // A rule for any organisation is not narrowed by naming one.
    let billing = client("b", "billing");
    assert!(
        policy
            .authorize_in_any_organization(
                &billing,
                in_org("u1", "globex"),
                Action::Write,
                ["internal.customer_id"]
            )
            .is_ok()
    );
}

#[test]
fn the_find_scope_is_the_organisations_the_find_rules_name() {
    let policy = Policy::from_toml(
        r#"
[[rule]]
who = { subjects = ["finder"] }
whose = ["o2", "o1"]
keys = ["contract"]
actions = ["find"]

[[rule]]
who = { subjects = ["finder"] }
whose = ["o3"]
keys = ["contract", "other"]
actions = ["find", "read"]

[[rule]]
who = { subjects = ["finder"] }
whose = "any"
keys = ["public.*"]
actions = ["find"]

[[rule]]
who = { subjects = ["finder"] }
whose = "self"
keys = ["mine"]
actions = ["find"]

[[rule]]
who = { subjects = ["finder"] }
whose = "any"
keys = ["read.only"]
actions = ["read"]
"#,
        "find.toml",
    )
    .unwrap();
    let finder = caller("finder");
    assert_eq!(
        policy.find_scope(&finder, "contract"),
        Ok(FindScope::Organizations(vec![
            "o1".into(),
            "o2".into(),
            "o3".into()
        ]))
    );
    assert_eq!(
        policy.find_scope(&finder, "other"),
        Ok(FindScope::Organizations(vec!["o3".into()]))
    );
    assert_eq!(
        policy.find_scope(&finder, "public.id"),
        Ok(FindScope::AnyOrganization)
    );
    for key in ["mine", "read.only", "unknown"] {
        assert!(policy.find_scope(&finder, key).is_err(), "{key}");
    }
    assert!(policy.find_scope(&caller("someone"), "contract").is_err());
}

#[test]
fn hidden_keys_are_listed_as_written() {
    assert!(Policy::default().hidden_keys().is_empty());
    assert_eq!(file_policy().hidden_keys(), ["routing.*"]);
}

const ORG_FILE: &str = r#"
[[rule]]
name = "platform admins manage every organisation"
resource = "organization"
who = { roles = ["platform-admin"] }
whose = "any"
keys = ["*"]
actions = ["read", "write", "delete"]

[[rule]]
name = "tenant admins keep their own organisation's profile"
resource = "organization"
who = { roles = ["tenant-admin"] }
whose = "self"
keys = ["profile.*"]
actions = ["write", "delete"]

[[rule]]
name = "billing reads acme's plan"
resource = "organization"
who = { client_ids = ["billing"] }
whose = ["acme"]
keys = ["plan"]
actions = ["read"]

[[rule]]
name = "users keep their profile"
whose = "self"
keys = ["profile.*"]
actions = ["write"]

[[key]]
name = "internal.*"
resource = "organization"
hidden = true

[[key]]
name = "plan"
resource = "organization"
pattern = '^(free|pro|enterprise)$'
"#;

fn member(sub: &str, org: &str, roles: &[&str]) -> Identity {
    Identity {
        sub: sub.into(),
        org_id: Some(org.into()),
        roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        ..Identity::default()
    }
}

#[test]
fn without_a_file_members_read_their_own_organisation_and_nothing_else() {
    let policy = Policy::default();
    let alice = member("alice", "acme", &[]);
    let own = policy.org_read_scope(&alice, "acme").unwrap();
    assert!(own.allows("plan"));
    assert!(matches!(
        policy.org_read_scope(&alice, "globex"),
        Err(Denial::NoOrganizationRule {
            own: false,
            key: None,
            ..
        })
    ));
    for action in [Action::Write, Action::Delete] {
        assert!(matches!(
            policy.authorize_organization(&alice, "acme", action, ["plan"]),
            Err(Denial::NoOrganizationRule { own: true, .. })
        ));
    }
    // Users' rules grant nothing on organisations, and the other way round.
    let users = Policy::new(["alice".to_owned()], vec!["profile.".into()]);
    assert!(
        users
            .authorize_organization(&alice, "acme", Action::Write, ["profile.x"])
            .is_err()
    );
    let off = Policy::default().with_member_read(false);
    assert!(off.org_read_scope(&alice, "acme").is_err());
}

#[test]
fn organisation_rules_match_who_whose_keys_and_actions() {
    let policy = Policy::from_toml(ORG_FILE, "orgs.toml").unwrap();
    let platform = member("p", "platform", &["platform-admin"]);
    for org in ["acme", "globex"] {
        assert!(
            policy
                .authorize_organization(&platform, org, Action::Write, ["plan", "x"])
                .is_ok()
        );
        assert!(
            policy
                .org_read_scope(&platform, org)
                .unwrap()
                .allows("internal.tier")
        );
    }
    let tenant = member("t", "acme", &["tenant-admin"]);
    assert!(
        policy
            .authorize_organization(&tenant, "acme", Action::Delete, ["profile.logo"])
            .is_ok()
    );
    let denied = policy
        .authorize_organization(&tenant, "globex", Action::Write, ["profile.logo"])
        .unwrap_err();
    assert_eq!(denied.key(), Some("profile.logo"));
    assert!(
        policy
            .authorize_organization(&tenant, "acme", Action::Write, ["plan"])
            .is_err()
    );
    // A user rule on the same keys does not reach organisations.
    let user = member("u", "acme", &[]);
    assert!(
        policy
            .authorize_organization(&user, "acme", Action::Write, ["profile.logo"])
            .is_err()
    );
    let billing = Identity {
        client_id: Some("billing".into()),
        ..member("b", "billing-org", &[])
    };
    let acme = policy.org_read_scope(&billing, "acme").unwrap();
    assert!(acme.allows("plan"));
    assert!(acme.require("profile.logo").is_err());
    assert!(policy.org_read_scope(&billing, "globex").is_err());
}

#[test]
fn hidden_organisation_keys_are_never_shown_to_members_whatever_the_rules() {
    let policy = Policy::from_toml(ORG_FILE, "orgs.toml").unwrap();
    // A platform admin who is a member of acme: the `any` rule covers every key, yet not acme's hidden ones.
    let inside = member("p", "acme", &["platform-admin"]);
    let scope = policy.org_read_scope(&inside, "acme").unwrap();
    assert!(!scope.allows("internal.tier"));
    assert!(!scope.sees_every_key());
    assert!(matches!(
        scope.require("internal.tier"),
        Err(Denial::HiddenFromMembers { ref org_id, .. }) if org_id == "acme"
    ));
    assert!(
        policy
            .org_read_scope(&inside, "globex")
            .unwrap()
            .allows("internal.tier")
    );
    // Hidden hides reads only: writing it is the rules' business.
    assert!(
        policy
            .authorize_organization(&inside, "acme", Action::Write, ["internal.tier"])
            .is_ok()
    );
    // Declared for organisations, it hides nothing of users.
    assert!(!policy.is_hidden("internal.tier"));
    assert!(policy.is_hidden_in(Resource::Organization, "internal.tier"));
}

#[test]
fn organisation_value_rules_apply_to_organisation_keys_only() {
    let policy = Policy::from_toml(ORG_FILE, "orgs.toml").unwrap();
    assert!(
        policy
            .value_problems_in(Resource::Organization, "plan", b"pro")
            .is_empty()
    );
    assert_eq!(
        policy
            .value_problems_in(Resource::Organization, "plan", b"gold")
            .len(),
        1
    );
    assert!(policy.value_problems("plan", b"gold").is_empty());
}

#[test]
fn find_on_organisations_and_unknown_resources_are_refused_with_the_line() {
    let find = r#"
[[rule]]
resource = "organization"
whose = "any"
keys = ["*"]
actions = ["find"]
"#;
    let error = Policy::from_toml(find, "f.toml").unwrap_err();
    assert!(
        error.message.contains("`find` applies to users only"),
        "{error}"
    );
    assert_eq!(error.line.map(|(line, _)| line), Some(6));
    let unknown = r#"
[[rule]]
resource = "tenant"
whose = "any"
keys = ["*"]
actions = ["read"]
"#;
    let error = Policy::from_toml(unknown, "u.toml").unwrap_err();
    assert!(error.message.contains("unknown variant"), "{error}");
}

#[test]
fn a_sealed_organisation_key_is_refused_rather_than_left_in_plaintext() {
    let sealed = r#"
[[key]]
name = "contract"
resource = "organization"
sealed = true
"#;
    let error = Policy::from_toml(sealed, "f.toml").unwrap_err();
    assert!(
        error
            .message
            .contains("`sealed` applies to users' keys only"),
        "{error}"
    );
    assert_eq!(error.line.map(|(line, _)| line), Some(3));
    // The same declaration of a user's key stands.
    let user = sealed.replace("resource = \"organization\"\n", "");
    let policy = Policy::from_toml(&user, "f.toml").unwrap();
    assert!(policy.is_sealed("contract"));
}
