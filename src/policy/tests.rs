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
