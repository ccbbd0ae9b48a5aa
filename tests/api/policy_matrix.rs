//! The authorisation matrix: every caller × target user × key × action through the real server, against an
//! independent oracle of what the worked policy (`examples/policy.toml`, the book's policy cookbook) means.
//! Every outcome is asserted; denied requests must reach no management endpoint; the bar is zero unexpected
//! allows.

use std::fmt;

use tonic::Code;
use usermeta::{
    api::pb::{
        BatchGetMetadataRequest, DeleteMetadataRequest, DeleteOrganizationMetadataRequest,
        FindUsersByMetadataRequest, GetMyMetadataRequest, KeyFilter, KeyMatch, ListMetadataRequest,
        ListOrganizationMetadataRequest, SetMetadataRequest, SetOrganizationMetadataRequest,
        WatchMetadataRequest,
    },
    caller::{IdentityConfig, JwtConfig},
    policy::Policy,
};
use zitadel_standin::{JwtSpec, ManagerRole, StandIn};

use crate::support::*;

/// The worked example of the book's policy cookbook, `examples/policy.toml`, with the test's organisation in
/// place of the one the file names.
pub(crate) fn example_policy(acme_org: &str) -> String {
    const FILE: &str = include_str!("../../examples/policy.toml");
    const ORG_IN_FILE: &str = "170848145649959169";
    assert_eq!(
        FILE.matches(ORG_IN_FILE).count(),
        1,
        "examples/policy.toml names the organisation {ORG_IN_FILE} once, in the support rule"
    );
    FILE.replace(ORG_IN_FILE, acme_org)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Alice,
    Bob,
    Admin,
    Billing,
    Gateway,
    Support,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Act {
    Read,
    Write,
    WriteInvalid,
    Delete,
    /// FindUsersByMetadata for the value the target holds: is the target found?
    Find,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Ok,
    Denied(&'static str),
    Invalid,
    /// Find allowed, but the search left the target out (the rule for that user refused it).
    NotFound,
    /// Find allowed, but the v1 API cannot search (FAILED_PRECONDITION `ZITADEL_API_UNSUPPORTED`).
    Unsupported,
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Ok => f.write_str("OK"),
            Outcome::Denied(reason) => write!(f, "PERMISSION_DENIED/{reason}"),
            Outcome::Invalid => f.write_str("INVALID_ARGUMENT"),
            Outcome::NotFound => f.write_str("OK without the target"),
            Outcome::Unsupported => f.write_str("FAILED_PRECONDITION/ZITADEL_API_UNSUPPORTED"),
        }
    }
}

const KEYS: [&str; 6] = [
    "internal.customer_id",
    "profile.name",
    "profile.age",
    "profile.prefs",
    "routing.tier",
    "ContractNumber",
];

fn has_value_rule(key: &str) -> bool {
    matches!(key, "profile.age" | "profile.prefs")
}

fn valid_value(key: &str) -> &'static str {
    match key {
        "profile.age" => "42",
        "profile.prefs" => r#"{"theme":"dark"}"#,
        _ => "v2",
    }
}

fn invalid_value(key: &str) -> &'static str {
    match key {
        "profile.age" => "old!",
        _ => "{not json",
    }
}

/// What the worked policy means, written out independently of usermeta's evaluator.
fn oracle(
    api: ApiChoice,
    caller: Who,
    is_self: bool,
    target_in_acme: bool,
    key: &str,
    act: Act,
) -> Outcome {
    let hidden = key.starts_with("routing.");
    if act == Act::Find {
        // Only the admin finds by any key, billing by the internal id; nobody else by anything.
        if !(caller == Who::Admin || (caller == Who::Billing && key == "internal.customer_id")) {
            return Outcome::Denied("POLICY_DENIED");
        }
        return match api {
            ApiChoice::V2 if is_self && hidden => Outcome::NotFound,
            ApiChoice::V2 => Outcome::Ok,
            _ => Outcome::Unsupported,
        };
    }
    let allowed = match act {
        Act::Read if is_self => {
            if hidden {
                return Outcome::Denied("KEY_HIDDEN");
            }
            true
        }
        Act::Read => match caller {
            Who::Admin => true,
            Who::Billing => key == "internal.customer_id",
            Who::Gateway => hidden,
            Who::Support => target_in_acme,
            Who::Alice | Who::Bob => false,
        },
        Act::Find => unreachable!("answered above"),
        Act::Write | Act::WriteInvalid | Act::Delete => {
            caller == Who::Admin
                || (caller == Who::Billing && key == "internal.customer_id")
                || (is_self && key.starts_with("profile."))
        }
    };
    match (allowed, act) {
        (false, _) => Outcome::Denied("POLICY_DENIED"),
        (true, Act::WriteInvalid) => Outcome::Invalid,
        (true, _) => Outcome::Ok,
    }
}

struct Cast {
    standin: StandIn,
    acme: String,
    globex: String,
    users: Vec<(Who, String, String)>,
}

impl Cast {
    fn id(&self, who: Who) -> &str {
        &self.users.iter().find(|(w, ..)| *w == who).unwrap().1
    }

    fn token(&self, who: Who) -> &str {
        &self.users.iter().find(|(w, ..)| *w == who).unwrap().2
    }
}

async fn cast() -> (Cast, Policy, JwtConfig, String) {
    let standin = StandIn::start().await.unwrap();
    let acme = standin.create_org("Acme");
    let globex = standin.create_org("Globex");
    let project = standin.create_project(&acme);
    let service_user = standin.create_service_user(&acme, "usermeta", ManagerRole::IamOwner);
    let pat = standin.issue_pat(&service_user);
    let people = [
        (Who::Alice, "alice", &acme, "webapp", None),
        (Who::Bob, "bob", &globex, "webapp", None),
        (Who::Admin, "admin", &acme, "console", None),
        (Who::Billing, "billing-svc", &acme, "billing", None),
        (Who::Gateway, "gateway-svc", &acme, "gateway", None),
        (Who::Support, "sam", &acme, "console", Some("support")),
    ];
    let aud_scope = format!("urn:zitadel:iam:org:project:id:{project}:aud");
    let mut users = Vec::new();
    for (who, name, org, client, role) in people {
        let id = standin.create_user(org, name);
        if let Some(role) = role {
            standin.grant_role(&id, &project, role);
        }
        let mut scopes: Vec<String> = FULL_SCOPES.iter().map(|s| (*s).to_owned()).collect();
        scopes.push("urn:zitadel:iam:org:projects:roles".into());
        scopes.push(aud_scope.clone());
        let token = standin.issue_jwt_with(
            &id,
            JwtSpec {
                scopes,
                client_id: Some(client.into()),
                ..JwtSpec::default()
            },
        );
        users.push((who, id, token));
    }
    let cast = Cast {
        standin,
        acme: acme.clone(),
        globex,
        users,
    };
    let policy = Policy::from_toml(&example_policy(&acme), "example.toml")
        .unwrap()
        .with_shorthands([cast.id(Who::Admin).to_owned()], vec![]);
    let jwt = JwtConfig {
        audience: vec![project],
        min_refresh_interval: std::time::Duration::from_secs(30),
    };
    (cast, policy, jwt, pat)
}

fn outcome_of<T>(result: &Result<T, tonic::Status>) -> Outcome {
    match result {
        Ok(_) => Outcome::Ok,
        Err(status) if status.code() == Code::PermissionDenied => match reason(status).as_deref() {
            Some("POLICY_DENIED") => Outcome::Denied("POLICY_DENIED"),
            Some("KEY_HIDDEN") => Outcome::Denied("KEY_HIDDEN"),
            other => panic!("unexpected denial reason {other:?}: {status:?}"),
        },
        Err(status) if status.code() == Code::FailedPrecondition => {
            assert_eq!(
                reason(status).as_deref(),
                Some("ZITADEL_API_UNSUPPORTED"),
                "{status:?}"
            );
            Outcome::Unsupported
        }
        Err(status) if status.code() == Code::InvalidArgument => {
            let fields = violated_fields(status);
            assert!(
                !fields.is_empty() && fields.iter().all(|f| f == "entries[0].value"),
                "{status:?}"
            );
            Outcome::Invalid
        }
        Err(status) => panic!("unexpected status {status:?}"),
    }
}

async fn the_authorisation_matrix_holds_with_zero_unexpected_allows(api: ApiChoice) {
    let (cast, policy, jwt, pat) = cast().await;
    let project = jwt.audience[0].clone();
    let other = TestApp::builder()
        .zitadel_url(&cast.standin.url())
        .pat(&pat)
        .api(api)
        .policy(policy)
        .identity(IdentityConfig {
            introspection: None,
            jwt: Some(jwt),
        })
        .project_id(&project)
        // Every case resets the stand-in's data behind usermeta's back.
        .no_metadata_cache()
        .spawn()
        .await;
    let mut client = other.client.clone();
    let callers = [
        Who::Alice,
        Who::Bob,
        Who::Admin,
        Who::Billing,
        Who::Gateway,
        Who::Support,
    ];
    let targets = [Who::Alice, Who::Bob];
    let (mut cases, mut unexpected_allows, mut denials) = (0usize, 0usize, 0usize);
    let mut failures = Vec::new();
    for caller in callers {
        for target in targets {
            let target_id = cast.id(target).to_owned();
            let target_org = if target == Who::Bob {
                cast.globex.clone()
            } else {
                cast.acme.clone()
            };
            let is_self = caller == target;
            for key in KEYS {
                let mut acts = vec![Act::Read, Act::Write, Act::Delete, Act::Find];
                if has_value_rule(key) {
                    acts.push(Act::WriteInvalid);
                }
                for act in acts {
                    // Every case starts from the same data and an empty request log; a search looks for a
                    // value only the target holds.
                    let find_value = format!("find-{target_id}");
                    let seed: &[u8] = if act == Act::Find {
                        find_value.as_bytes()
                    } else {
                        b"seed"
                    };
                    cast.standin.set_metadata(&target_id, key, seed);
                    cast.standin.clear_requests();
                    let token = cast.token(caller);
                    let mut found = None;
                    let result = match act {
                        Act::Find => client
                            .find_users_by_metadata(authed(
                                FindUsersByMetadataRequest {
                                    key: key.into(),
                                    value: text(&find_value),
                                    ..Default::default()
                                },
                                token,
                            ))
                            .await
                            .map(|r| {
                                let users = &r.get_ref().users;
                                assert!(
                                    users.iter().all(|u| u.user_id == target_id),
                                    "{caller:?} found others than {target:?} by {key}: {users:?}"
                                );
                                found = Some(!users.is_empty());
                            }),
                        Act::Read => client
                            .list_metadata(authed(
                                ListMetadataRequest {
                                    user_id: target_id.clone(),
                                    organization_id: target_org.clone(),
                                    key_filter: Some(KeyFilter {
                                        key: key.into(),
                                        r#match: KeyMatch::Equals as i32,
                                    }),
                                    ..Default::default()
                                },
                                token,
                            ))
                            .await
                            .map(|r| {
                                assert_eq!(
                                    pairs(&r.get_ref().metadata),
                                    [(key.to_owned(), Some("seed".to_owned()))],
                                    "{caller:?} read {key} of {target:?}"
                                );
                            }),
                        Act::Write | Act::WriteInvalid => {
                            let value = if act == Act::Write {
                                valid_value(key)
                            } else {
                                invalid_value(key)
                            };
                            client
                                .set_metadata(authed(
                                    SetMetadataRequest {
                                        user_id: target_id.clone(),
                                        organization_id: target_org.clone(),
                                        entries: vec![entry(key, text(value))],
                                    },
                                    token,
                                ))
                                .await
                                .map(|_| ())
                        }
                        Act::Delete => client
                            .delete_metadata(authed(
                                DeleteMetadataRequest {
                                    user_id: target_id.clone(),
                                    organization_id: target_org.clone(),
                                    keys: vec![key.into()],
                                    allow_missing: false,
                                    ..Default::default()
                                },
                                token,
                            ))
                            .await
                            .map(|_| ()),
                    };
                    let mut got = outcome_of(&result);
                    if found == Some(false) {
                        got = Outcome::NotFound;
                    }
                    // Reads must agree between ListMetadata and BatchGetMetadata's result for the user.
                    if act == Act::Read {
                        let batch = client
                            .batch_get_metadata(authed(
                                BatchGetMetadataRequest {
                                    user_ids: vec![target_id.clone()],
                                    keys: vec![key.into()],
                                    organization_id: target_org.clone(),
                                },
                                token,
                            ))
                            .await
                            .unwrap()
                            .into_inner();
                        let result = &batch.results[0];
                        let batch_outcome = match &result.error {
                            None => {
                                assert_eq!(
                                    pairs(&result.metadata),
                                    [(key.to_owned(), Some("seed".to_owned()))],
                                    "{caller:?} batch read {key} of {target:?}"
                                );
                                Outcome::Ok
                            }
                            Some(status) => {
                                let status = tonic::Status::with_details(
                                    Code::from_i32(status.code),
                                    status.message.clone(),
                                    prost::Message::encode_to_vec(status).into(),
                                );
                                outcome_of::<()>(&Err(status))
                            }
                        };
                        assert_eq!(
                            batch_outcome, got,
                            "{caller:?} BatchGetMetadata {key} of {target:?}"
                        );
                    }
                    // Self reads must agree between GetMyMetadata and ListMetadata.
                    if is_self && act == Act::Read {
                        let mine = client
                            .get_my_metadata(authed(
                                GetMyMetadataRequest {
                                    keys: vec![key.into()],
                                    ..Default::default()
                                },
                                token,
                            ))
                            .await;
                        assert_eq!(outcome_of(&mine), got, "{caller:?} GetMyMetadata {key}");
                    }
                    let want = oracle(api, caller, is_self, target != Who::Bob, key, act);
                    cases += 1;
                    let management = cast
                        .standin
                        .requests()
                        .into_iter()
                        .filter(|r| r.is_management())
                        .count();
                    let stored = cast.standin.metadata_of(&target_id).get(key).cloned();
                    match &got {
                        // A search changes nothing; what it may reach is the v2 user service.
                        _ if act == Act::Find => {
                            if got == Outcome::Ok && want != Outcome::Ok {
                                unexpected_allows += 1;
                            }
                            if matches!(got, Outcome::Denied(_) | Outcome::Unsupported) {
                                denials += 1;
                                if got != Outcome::Unsupported {
                                    assert_eq!(
                                        management, 0,
                                        "{caller:?} find {key} was refused but reached ZITADEL"
                                    );
                                }
                            }
                            assert_eq!(stored, Some(seed.to_vec()), "a search changed data");
                        }
                        Outcome::Ok => {
                            if want != Outcome::Ok {
                                unexpected_allows += 1;
                            }
                            // Another user's data always goes through the management API.
                            if !is_self {
                                assert!(management > 0, "{caller:?} {act:?} {key} of {target:?}");
                            }
                            let expected_value = match act {
                                Act::Read => Some(b"seed".to_vec()),
                                Act::Write => Some(valid_value(key).as_bytes().to_vec()),
                                Act::Delete => None,
                                Act::WriteInvalid | Act::Find => unreachable!(),
                            };
                            assert_eq!(stored, expected_value, "{caller:?} {act:?} {key}");
                        }
                        Outcome::Denied(_)
                        | Outcome::Invalid
                        | Outcome::NotFound
                        | Outcome::Unsupported => {
                            denials += 1;
                            assert_eq!(
                                management, 0,
                                "{caller:?} {act:?} {key} of {target:?} was refused but reached the management API"
                            );
                            assert_eq!(stored, Some(b"seed".to_vec()), "refused, yet changed");
                        }
                    }
                    if got != want {
                        failures.push(format!(
                            "{caller:?} {act:?} {key} of {target:?}: want {want}, got {got}"
                        ));
                    }
                }
            }
        }
    }
    println!(
        "authorisation matrix: {} callers x {} targets x {} keys x actions = {cases} cases ({denials} refused, {} allowed); unexpected allows: {unexpected_allows}",
        callers.len(),
        targets.len(),
        KEYS.len(),
        cases - denials
    );
    assert!(
        failures.is_empty(),
        "matrix mismatches:\n{}",
        failures.join("\n")
    );
    assert_eq!(unexpected_allows, 0);
    assert_eq!(cases, 312);
}

/// Nothing in a GetMyMetadata or self ListMetadata request points it at another user: the user is whoever
/// ZITADEL says owns the token, and hidden keys stay hidden.
async fn my_metadata_cannot_be_pointed_at_another_user(api: ApiChoice) {
    let (cast, policy, jwt, pat) = cast().await;
    let project = jwt.audience[0].clone();
    let other = TestApp::builder()
        .zitadel_url(&cast.standin.url())
        .pat(&pat)
        .api(api)
        .policy(policy)
        .identity(IdentityConfig {
            introspection: None,
            jwt: Some(jwt),
        })
        .project_id(&project)
        .spawn()
        .await;
    let mut client = other.client.clone();
    let (alice, bob) = (cast.id(Who::Alice).to_owned(), cast.id(Who::Bob).to_owned());
    for user in [&alice, &bob] {
        cast.standin
            .set_metadata(user, "profile.name", user.as_bytes());
        cast.standin.set_metadata(user, "routing.tier", b"gold");
    }
    let token = cast.token(Who::Alice);
    let mut request = authed(GetMyMetadataRequest::default(), token);
    // Headers that name another user or organisation change nothing.
    for (name, value) in [
        ("x-zitadel-orgid", cast.globex.as_str()),
        ("x-user-id", bob.as_str()),
        ("user_id", bob.as_str()),
        ("x-forwarded-user", bob.as_str()),
    ] {
        request.metadata_mut().insert(name, value.parse().unwrap());
    }
    let mine = client.get_my_metadata(request).await.unwrap().into_inner();
    assert_eq!(mine.user_id, alice);
    assert_eq!(
        pairs(&mine.metadata),
        [("profile.name".to_owned(), Some(alice.clone()))],
        "hidden keys are left out and only alice's data is returned"
    );
    for source in [1, 2] {
        let mine = client
            .get_my_metadata(authed(
                GetMyMetadataRequest {
                    source,
                    ..Default::default()
                },
                token,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(mine.user_id, alice);
        assert!(mine.metadata.iter().all(|m| m.key != "routing.tier"));
    }
    // Self listings: no user id, or alice's own id with bob's organisation, list alice only.
    for (user_id, org) in [
        (String::new(), String::new()),
        (alice.clone(), cast.globex.clone()),
    ] {
        cast.standin.clear_requests();
        let listed = client
            .list_metadata(authed(
                ListMetadataRequest {
                    user_id,
                    organization_id: org,
                    ..Default::default()
                },
                token,
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            pairs(&listed.metadata),
            [("profile.name".to_owned(), Some(alice.clone()))]
        );
        assert_eq!(listed.total_size, 1);
        assert!(
            cast.standin.requests().iter().all(|r| !r.is_management()),
            "a self listing reads with the caller's own token"
        );
    }
    // Naming bob is another user, and alice may not read him.
    let status = client
        .list_metadata(authed(
            ListMetadataRequest {
                user_id: bob,
                ..Default::default()
            },
            token,
        ))
        .await
        .unwrap_err();
    assert_status(&status, Code::PermissionDenied, "POLICY_DENIED");
}

/// An answer with the user it names written as `<user>`: what must not differ between users the caller may
/// not act on. Code, reason, message and every ErrorInfo fact; for a success, how many entries.
fn shape<T>(
    result: &Result<T, tonic::Status>,
    user: &str,
    entries: impl Fn(&T) -> usize,
) -> String {
    match result {
        Ok(answer) => format!("OK with {} entries", entries(answer)),
        Err(status) => {
            use tonic_types::StatusExt as _;
            let mut facts: Vec<(String, String)> = status
                .get_details_error_info()
                .map(|info| info.metadata.into_iter().collect())
                .unwrap_or_default();
            facts.sort();
            format!(
                "{:?} {:?} {:?} {facts:?}",
                status.code(),
                reason(status),
                status.message()
            )
            .replace(user, "<user>")
        }
    }
}

/// A BatchGetMetadata result as the status a single call would carry.
fn result_status(result: &usermeta::api::pb::UserMetadataResult) -> Result<usize, tonic::Status> {
    match &result.error {
        None => Ok(result.metadata.len()),
        Some(status) => Err(tonic::Status::with_details(
            Code::from_i32(status.code),
            status.message.clone(),
            prost::Message::encode_to_vec(status).into(),
        )),
    }
}

/// Issue 31, class 11: a caller whose rules name organisations (support reads, and notes on, Acme's users)
/// gets the same answer for a user ZITADEL does not know and for a user of another organisation, on every
/// RPC that names another user; an organisation no rule names is refused before ZITADEL is asked; a caller
/// whose rules cover every organisation (the admin) still learns that a user is unknown.
async fn an_organisation_bound_caller_cannot_tell_unknown_users_from_other_tenants(api: ApiChoice) {
    let (cast, _, jwt, pat) = cast().await;
    let project = jwt.audience[0].clone();
    let policy = Policy::from_toml(
        &format!(
            r#"{}
[[rule]]
name = "support notes on acme users"
who = {{ roles = ["support"] }}
whose = ["{acme}"]
keys = ["support.*"]
actions = ["write", "delete"]
"#,
            example_policy(&cast.acme),
            acme = cast.acme
        ),
        "class11.toml",
    )
    .unwrap()
    .with_shorthands([cast.id(Who::Admin).to_owned()], vec![]);
    let other = TestApp::builder()
        .zitadel_url(&cast.standin.url())
        .pat(&pat)
        .api(api)
        .policy(policy)
        .identity(IdentityConfig {
            introspection: None,
            jwt: Some(jwt),
        })
        .project_id(&project)
        .spawn()
        .await;
    let mut client = other.client.clone();
    let token = cast.token(Who::Support);
    let (bob, unknown) = (
        cast.id(Who::Bob).to_owned(),
        "170848145649900001".to_owned(),
    );
    cast.standin.set_metadata(&bob, "support.note", b"seed");

    // Every RPC naming `user`, with `org` as organization_id: each answer's shape.
    let answers = |user: String, org: String| {
        let mut client = client.clone();
        async move {
            let list = client
                .list_metadata(authed(
                    ListMetadataRequest {
                        user_id: user.clone(),
                        organization_id: org.clone(),
                        ..Default::default()
                    },
                    token,
                ))
                .await
                .map(tonic::Response::into_inner);
            let batch = client
                .batch_get_metadata(authed(
                    BatchGetMetadataRequest {
                        user_ids: vec![user.clone()],
                        organization_id: org.clone(),
                        ..Default::default()
                    },
                    token,
                ))
                .await
                .unwrap()
                .into_inner();
            let watch = client
                .watch_metadata(authed(
                    WatchMetadataRequest {
                        user_id: user.clone(),
                        organization_id: org.clone(),
                        ..Default::default()
                    },
                    token,
                ))
                .await
                .map(|_| ());
            let set = client
                .set_metadata(authed(
                    SetMetadataRequest {
                        user_id: user.clone(),
                        organization_id: org.clone(),
                        entries: vec![entry("support.note", text("probe"))],
                    },
                    token,
                ))
                .await
                .map(|_| ());
            let delete = client
                .delete_metadata(authed(
                    DeleteMetadataRequest {
                        user_id: user.clone(),
                        organization_id: org.clone(),
                        keys: vec!["support.note".into()],
                        allow_missing: true,
                        ..Default::default()
                    },
                    token,
                ))
                .await
                .map(|_| ());
            vec![
                ("ListMetadata", shape(&list, &user, |l| l.metadata.len())),
                (
                    "BatchGetMetadata",
                    shape(&result_status(&batch.results[0]), &user, |n| *n),
                ),
                ("WatchMetadata", shape(&watch, &user, |_| 0)),
                ("SetMetadata", shape(&set, &user, |_| 0)),
                ("DeleteMetadata", shape(&delete, &user, |_| 0)),
            ]
        }
    };
    for org in [String::new(), cast.acme.clone()] {
        let of_unknown = answers(unknown.clone(), org.clone()).await;
        let of_bob = answers(bob.clone(), org.clone()).await;
        for ((rpc, unknown_shape), (_, bob_shape)) in of_unknown.iter().zip(&of_bob) {
            assert_eq!(
                unknown_shape, bob_shape,
                "{rpc} (organization_id {org:?}) tells an unknown user from a user of another organisation"
            );
            // v1 lists only within the named organisation: empty for both, as for an Acme user without data.
            let listed_empty = api == ApiChoice::V1
                && !org.is_empty()
                && matches!(*rpc, "ListMetadata" | "BatchGetMetadata");
            if listed_empty {
                assert_eq!(unknown_shape, "OK with 0 entries", "{rpc}");
            } else {
                assert!(
                    unknown_shape.starts_with("PermissionDenied Some(\"POLICY_DENIED\")"),
                    "{rpc} (organization_id {org:?}): {unknown_shape}"
                );
            }
        }
    }
    assert_eq!(
        cast.standin.metadata_of(&bob).get("support.note").cloned(),
        Some(b"seed".to_vec()),
        "nothing was written to another organisation's user"
    );
    // An organisation none of the caller's rules names: refused before ZITADEL is asked anything.
    for user in [&unknown, &bob] {
        cast.standin.clear_requests();
        for (rpc, answer) in answers(user.clone(), cast.globex.clone()).await {
            assert!(
                answer.starts_with("PermissionDenied Some(\"POLICY_DENIED\")"),
                "{rpc}: {answer}"
            );
        }
        let asked: Vec<String> = cast
            .standin
            .requests()
            .iter()
            .filter(|r| r.is_management())
            .map(|r| format!("{} {}", r.path, String::from_utf8_lossy(&r.body)))
            .collect();
        assert!(asked.is_empty(), "ZITADEL was asked: {asked:?}");
    }
    // The admin may act on any user of any organisation: an unknown user is no secret from them.
    if api == ApiChoice::V2 {
        let status = client
            .list_metadata(authed(
                ListMetadataRequest {
                    user_id: unknown.clone(),
                    ..Default::default()
                },
                cast.token(Who::Admin),
            ))
            .await
            .unwrap_err();
        assert_status(&status, Code::NotFound, "USER_NOT_FOUND");
    }
}

/// What the worked policy's organisation rules mean, written out independently of usermeta's evaluator.
fn org_oracle(caller: Who, member: bool, key: &str, act: Act) -> Outcome {
    let hidden = key.starts_with("internal.");
    let kept_by_support = matches!(key, "plan" | "region") || hidden;
    match act {
        Act::Read if member && hidden => Outcome::Denied("KEY_HIDDEN"),
        // Members read their own organisation's metadata without a rule.
        Act::Read if member => Outcome::Ok,
        Act::Read => match caller {
            Who::Gateway if matches!(key, "plan" | "region") => Outcome::Ok,
            Who::Support if kept_by_support => Outcome::Ok,
            _ => Outcome::Denied("POLICY_DENIED"),
        },
        Act::Write | Act::WriteInvalid | Act::Delete => {
            match (caller == Who::Support && kept_by_support, act) {
                (false, _) => Outcome::Denied("POLICY_DENIED"),
                (true, Act::WriteInvalid) => Outcome::Invalid,
                (true, _) => Outcome::Ok,
            }
        }
        Act::Find => unreachable!("no find on organisations"),
    }
}

/// The matrix for organisations' own metadata: every caller × organisation (its own, another) × key × action,
/// through ListOrganizationMetadata, SetOrganizationMetadata and DeleteOrganizationMetadata with the
/// organisation named, and again with it left empty for the caller's own. Zero unexpected allows; nothing
/// refused reaches ZITADEL or changes anything.
async fn the_organisation_matrix_holds_with_zero_unexpected_allows(api: ApiChoice) {
    let (cast, policy, jwt, pat) = cast().await;
    let project = jwt.audience[0].clone();
    let other = TestApp::builder()
        .zitadel_url(&cast.standin.url())
        .pat(&pat)
        .api(api)
        .policy(policy)
        .identity(IdentityConfig {
            introspection: None,
            jwt: Some(jwt),
        })
        .project_id(&project)
        // Each case seeds the stand-in behind usermeta's back.
        .no_org_cache()
        .spawn()
        .await;
    let mut client = other.client.clone();
    let callers = [
        Who::Alice,
        Who::Bob,
        Who::Admin,
        Who::Billing,
        Who::Gateway,
        Who::Support,
    ];
    let keys = ["plan", "region", "internal.notes", "profile.name"];
    let (mut cases, mut unexpected_allows, mut failures) = (0usize, 0usize, Vec::new());
    for caller in callers {
        let own = if caller == Who::Bob {
            &cast.globex
        } else {
            &cast.acme
        };
        for org in [&cast.acme, &cast.globex] {
            let member = org == own;
            for key in keys {
                let mut acts = vec![Act::Read, Act::Write, Act::Delete];
                if key == "plan" {
                    acts.push(Act::WriteInvalid);
                }
                for act in acts {
                    // Named, and (for the caller's own) left empty: the same decision.
                    let names: &[&str] = if member {
                        &["named", "own"]
                    } else {
                        &["named"]
                    };
                    for how in names {
                        let org_id = if *how == "own" { "" } else { org.as_str() };
                        cast.standin.set_org_metadata(org, key, b"seed");
                        cast.standin.clear_requests();
                        let token = cast.token(caller);
                        let result = match act {
                            Act::Read => client
                                .list_organization_metadata(authed(
                                    ListOrganizationMetadataRequest {
                                        organization_id: org_id.into(),
                                        key_filter: Some(KeyFilter {
                                            key: key.into(),
                                            r#match: KeyMatch::Equals as i32,
                                        }),
                                        ..Default::default()
                                    },
                                    token,
                                ))
                                .await
                                .map(|r| {
                                    assert_eq!(r.get_ref().organization_id, org.as_str());
                                    assert_eq!(
                                        pairs(&r.get_ref().metadata),
                                        [(key.to_owned(), Some("seed".to_owned()))],
                                        "{caller:?} read {key} of {org}"
                                    );
                                }),
                            Act::Write | Act::WriteInvalid => {
                                let value = match (act, key) {
                                    (Act::WriteInvalid, _) => "gold",
                                    (_, "plan") => "pro",
                                    _ => "v2",
                                };
                                client
                                    .set_organization_metadata(authed(
                                        SetOrganizationMetadataRequest {
                                            organization_id: org_id.into(),
                                            entries: vec![entry(key, text(value))],
                                        },
                                        token,
                                    ))
                                    .await
                                    .map(|_| ())
                            }
                            Act::Delete => client
                                .delete_organization_metadata(authed(
                                    DeleteOrganizationMetadataRequest {
                                        organization_id: org_id.into(),
                                        keys: vec![key.into()],
                                        allow_missing: false,
                                    },
                                    token,
                                ))
                                .await
                                .map(|_| ()),
                            Act::Find => unreachable!(),
                        };
                        let got = outcome_of(&result);
                        let want = org_oracle(caller, member, key, act);
                        cases += 1;
                        let reached = cast
                            .standin
                            .requests()
                            .into_iter()
                            .filter(|r| {
                                r.path.starts_with("/management/v1/metadata/")
                                    || r.path.starts_with("/zitadel.org.v2.")
                            })
                            .count();
                        let stored = cast.standin.org_metadata_of(org).get(key).cloned();
                        if got == Outcome::Ok {
                            if want != Outcome::Ok {
                                unexpected_allows += 1;
                            }
                            assert!(reached > 0, "{caller:?} {act:?} {key} of {org}");
                            let expected = match act {
                                Act::Read => Some(b"seed".to_vec()),
                                Act::Write => Some(if key == "plan" {
                                    b"pro".to_vec()
                                } else {
                                    b"v2".to_vec()
                                }),
                                _ => None,
                            };
                            assert_eq!(stored, expected, "{caller:?} {act:?} {key} of {org}");
                        } else {
                            assert_eq!(
                                reached, 0,
                                "{caller:?} {act:?} {key} of {org} was refused but reached ZITADEL"
                            );
                            assert_eq!(stored, Some(b"seed".to_vec()), "refused, yet changed");
                        }
                        if got != want {
                            failures.push(format!(
                                "{caller:?} {act:?} {key} of {org} ({how}): want {want}, got {got}"
                            ));
                        }
                    }
                }
            }
        }
    }
    println!("organisation matrix: {cases} cases; unexpected allows: {unexpected_allows}");
    assert!(
        failures.is_empty(),
        "organisation matrix mismatches:\n{}",
        failures.join("\n")
    );
    assert_eq!(unexpected_allows, 0);
    // 6 callers × (own org: 2 ways, other: 1) × (4 keys × 3 actions + 1 invalid write).
    assert_eq!(cases, 6 * 3 * 13);
}

on_both_apis!(
    the_organisation_matrix_holds_with_zero_unexpected_allows,
    the_authorisation_matrix_holds_with_zero_unexpected_allows,
    my_metadata_cannot_be_pointed_at_another_user,
    an_organisation_bound_caller_cannot_tell_unknown_users_from_other_tenants,
);
