//! What only the v2 backend has: choosing the API (`auto`), organisations ZITADEL does not take, reading
//! your writes over a lagging search, Connect's errors, and v1's deprecation. The backend-independent suite
//! runs against v2 through `on_both_apis!` in the other files.

use std::time::Duration;

use tonic::Code;
use usermeta::{
    api::pb::{DeleteMetadataRequest, ListMetadataRequest, SetMetadataRequest},
    policy::Policy,
};
use zitadel_standin::{Apis, Fault, FaultKind, ManagerRole};

use crate::support::*;

fn set(user_id: &str, org_id: &str, key: &str, value: &str) -> SetMetadataRequest {
    SetMetadataRequest {
        user_id: user_id.into(),
        organization_id: org_id.into(),
        entries: vec![entry(key, text(value))],
    }
}

fn list(user_id: &str) -> ListMetadataRequest {
    ListMetadataRequest {
        user_id: user_id.into(),
        ..Default::default()
    }
}

fn delete(user_id: &str, keys: &[&str]) -> DeleteMetadataRequest {
    DeleteMetadataRequest {
        user_id: user_id.into(),
        keys: keys.iter().map(|k| (*k).to_owned()).collect(),
        ..Default::default()
    }
}

fn keys(app_list: &usermeta::api::pb::ListMetadataResponse) -> Vec<String> {
    let mut keys: Vec<String> = app_list.metadata.iter().map(|m| m.key.clone()).collect();
    keys.sort();
    keys
}

fn apis_called(app: &TestApp) -> (usize, usize) {
    let requests = app.standin.requests();
    (
        requests
            .iter()
            .filter(|r| r.path.starts_with("/management/v1/"))
            .count(),
        requests.iter().filter(|r| r.is_user_v2_connect()).count(),
    )
}

#[tokio::test]
async fn auto_uses_v2_where_zitadel_serves_it_and_v1_where_it_does_not() {
    for (apis, expect_v2) in [(Apis::V2_ONLY, true), (Apis::V3, false), (Apis::V4, true)] {
        let app = TestApp::builder().api(ApiChoice::Auto).spawn().await;
        app.standin.set_apis(apis);
        app.standin.clear_requests();
        let alice = app.alice.clone();
        app.set_metadata(&app.admin_token, set(&alice, "", "plan", "gold"))
            .await
            .unwrap_or_else(|status| panic!("{apis:?}: {status:?}"));
        let listed = app
            .list_metadata(&app.admin_token, list(&alice))
            .await
            .unwrap()
            .into_inner();
        assert!(keys(&listed).contains(&"plan".to_owned()), "{apis:?}");
        assert_eq!(app.standin.metadata_of(&alice)["plan"], b"gold");
        let (v1, v2) = apis_called(&app);
        if expect_v2 {
            assert_eq!(v1, 0, "{apis:?}: no v1 call once v2 is found");
            assert!(v2 >= 2, "{apis:?}");
        } else {
            assert!(v1 >= 2, "{apis:?}");
        }
    }
}

#[tokio::test]
async fn auto_switches_when_a_call_says_the_api_is_gone() {
    let app = TestApp::builder().api(ApiChoice::Auto).spawn().await;
    let alice = app.alice.clone();
    app.set_metadata(&app.admin_token, set(&alice, "", "a", "1"))
        .await
        .unwrap();
    assert!(apis_called(&app).1 > 0, "v2 first");
    // A rollback to a ZITADEL without v2 metadata: the next call meets "not served" and goes to v1.
    app.standin.set_apis(Apis::V3);
    app.standin.clear_requests();
    app.set_metadata(&app.admin_token, set(&alice, "", "b", "2"))
        .await
        .unwrap();
    assert_eq!(app.standin.metadata_of(&alice)["b"], b"2");
    let (v1, _) = apis_called(&app);
    assert!(v1 >= 1);
    // And back: v1 switched off, v2 on again.
    app.standin.set_apis(Apis::V2_ONLY);
    app.set_metadata(&app.admin_token, set(&alice, "", "c", "3"))
        .await
        .unwrap();
    assert_eq!(app.standin.metadata_of(&alice)["c"], b"3");
}

/// A policy where Acme's support staff (alice, by subject) may write any Acme user's `support.` keys.
fn org_policy(acme: &str, alice: &str) -> Policy {
    Policy::from_toml(
        &format!(
            r#"
[[rule]]
name = "alice supports acme users"
who = {{ subjects = ["{alice}"] }}
whose = ["{acme}"]
keys = ["support.*"]
actions = ["read", "write"]
"#
        ),
        "org.toml",
    )
    .unwrap()
}

#[tokio::test]
async fn under_v2_organisation_rules_use_the_users_real_organisation() {
    let app = TestApp::builder().api(ApiChoice::V2).spawn().await;
    let other = app
        .another()
        .api(ApiChoice::V2)
        .policy(org_policy(&app.org, &app.alice))
        .spawn()
        .await;
    let client = other.client.clone();
    let admin = app.admin.clone();
    let bob = app.bob.clone();

    // The admin is in Acme: the rule applies without anyone naming the organisation.
    client
        .clone()
        .set_metadata(authed(
            set(&admin, "", "support.ticket", "42"),
            &app.alice_token,
        ))
        .await
        .unwrap();
    assert_eq!(app.standin.metadata_of(&admin)["support.ticket"], b"42");

    // Bob is in Globex: naming Acme does not make him an Acme user, and nothing is written. Alice's rules name
    // only Acme, so she gets the refusal any non-Acme user gets, as for a user ZITADEL does not know: the
    // answer does not tell "not in Acme" from "no such user" (issue 31, class 11).
    app.standin.clear_requests();
    let status = client
        .clone()
        .set_metadata(authed(
            set(&bob, &app.org, "support.ticket", "1"),
            &app.alice_token,
        ))
        .await
        .unwrap_err();
    assert_status(&status, Code::PermissionDenied, "POLICY_DENIED");
    assert!(
        !status.message().contains(&app.other_org),
        "the user's real organisation is not told: {}",
        status.message()
    );
    let writes: Vec<_> = app
        .standin
        .requests()
        .into_iter()
        .filter(|r| r.connect_procedure() == Some("SetUserMetadata"))
        .collect();
    assert!(writes.is_empty(), "no write was sent");
    assert!(!app.standin.metadata_of(&bob).contains_key("support.ticket"));

    // Without naming one, the rule sees Globex and denies.
    let status = client
        .clone()
        .set_metadata(authed(
            set(&bob, "", "support.ticket", "1"),
            &app.alice_token,
        ))
        .await
        .unwrap_err();
    assert_status(&status, Code::PermissionDenied, "POLICY_DENIED");
    assert!(!app.standin.metadata_of(&bob).contains_key("support.ticket"));
}

#[tokio::test]
async fn under_v2_a_request_naming_the_wrong_organisation_is_refused_before_the_write() {
    let app = TestApp::builder().api(ApiChoice::V2).spawn().await;
    let alice = app.alice.clone();
    let status = app
        .set_metadata(&app.admin_token, set(&alice, &app.other_org, "k", "v"))
        .await
        .unwrap_err();
    assert_status(
        &status,
        Code::FailedPrecondition,
        "USER_NOT_FOUND_IN_ORGANIZATION",
    );
    assert!(
        app.metadata_requests().is_empty(),
        "{:?}",
        app.metadata_requests()
    );
    // The right one, or none, works.
    app.set_metadata(&app.admin_token, set(&alice, &app.org, "k", "v"))
        .await
        .unwrap();
    app.set_metadata(&app.admin_token, set(&alice, "", "k2", "v"))
        .await
        .unwrap();
    assert_eq!(app.standin.metadata_of(&alice)["k2"], b"v");
}

#[tokio::test]
async fn writes_through_usermeta_are_read_back_over_a_lagging_search() {
    let app = TestApp::builder().api(ApiChoice::V2).spawn().await;
    app.standin.set_search_lag(Duration::from_secs(30));
    let alice = app.alice.clone();
    app.set_metadata(&app.admin_token, set(&alice, "", "fresh", "1"))
        .await
        .unwrap();
    app.set_metadata(&app.admin_token, set(&alice, "", "ContractNumber", "9999"))
        .await
        .unwrap();
    app.delete_metadata(&app.admin_token, delete(&alice, &["profile.language"]))
        .await
        .unwrap();
    let listed = app
        .list_metadata(&app.admin_token, list(&alice))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(keys(&listed), ["ContractNumber", "fresh"]);
    assert_eq!(listed.total_size, 2);
    let contract = listed
        .metadata
        .iter()
        .find(|m| m.key == "ContractNumber")
        .unwrap();
    assert_eq!(text_of(contract), Some("9999"));

    // The same listing through a usermeta that did not make the writes shows the lag is real.
    let elsewhere = app
        .another()
        .api(ApiChoice::V2)
        .policy(Policy::new([app.admin.clone()], vec![]))
        .spawn()
        .await;
    let stale = elsewhere
        .client
        .clone()
        .list_metadata(authed(list(&alice), &app.admin_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(keys(&stale), ["ContractNumber", "profile.language"]);
}

#[tokio::test]
async fn connect_errors_map_to_the_same_reasons_as_v1() {
    let app = TestApp::builder().api(ApiChoice::V2).spawn().await;
    let alice = app.alice.clone();

    // A key that is not set: NOT_FOUND from ZITADEL, METADATA_NOT_FOUND here.
    let status = app
        .delete_metadata(&app.admin_token, delete(&alice, &["never-set"]))
        .await
        .unwrap_err();
    assert_status(&status, Code::NotFound, "METADATA_NOT_FOUND");

    // A user ZITADEL does not know.
    let status = app
        .set_metadata(&app.admin_token, set("170000000000000001", "", "k", "v"))
        .await
        .unwrap_err();
    assert_status(
        &status,
        Code::FailedPrecondition,
        "USER_NOT_FOUND_IN_ORGANIZATION",
    );

    // Rate limiting, with Retry-After.
    app.standin.push_fault(Fault {
        path_prefix: "/zitadel.user.v2.UserService/".into(),
        times: Some(1),
        kind: FaultKind::TooManyRequests {
            retry_after_secs: Some(7),
        },
    });
    let status = app
        .list_metadata(&app.admin_token, list(&alice))
        .await
        .unwrap_err();
    assert_status(&status, Code::ResourceExhausted, "ZITADEL_RATE_LIMITED");

    // An outage.
    app.standin.push_fault(Fault {
        path_prefix: "/zitadel.user.v2.UserService/ListUserMetadata".into(),
        times: Some(3),
        kind: FaultKind::Status(503),
    });
    let status = app
        .list_metadata(&app.admin_token, list(&alice))
        .await
        .unwrap_err();
    assert_status(&status, Code::Unavailable, "ZITADEL_UNAVAILABLE");
}

#[tokio::test]
async fn a_service_user_without_rights_in_the_users_organisation_is_reported_as_such() {
    let app = TestApp::spawn().await;
    // An ORG_OWNER of Acme, asked about Globex's bob: v2 says "membership not found" (NOT_FOUND).
    let acme_owner = app
        .standin
        .create_service_user(&app.org, "acme-owner", ManagerRole::OrgOwner);
    let pat = app.standin.issue_pat(&acme_owner);
    let other = app
        .another()
        .pat(&pat)
        .api(ApiChoice::V2)
        .policy(Policy::new([app.admin.clone()], vec![]))
        .spawn()
        .await;
    let status = other
        .client
        .clone()
        .list_metadata(authed(list(&app.bob), &app.admin_token))
        .await
        .unwrap_err();
    assert_status(
        &status,
        Code::PermissionDenied,
        "SERVICE_USER_LACKS_PERMISSION",
    );
}

#[tokio::test]
async fn a_deprecated_v1_endpoint_is_warned_about_once_naming_the_setting() {
    let logs = capture();
    let app = TestApp::spawn().await;
    app.standin.set_v1_deprecation(true);
    let alice = app.alice.clone();
    for _ in 0..3 {
        app.list_metadata(&app.admin_token, list(&alice))
            .await
            .unwrap();
    }
    let warnings: Vec<_> = logs
        .lines_with("management.ListUserMetadata")
        .into_iter()
        .filter(|line| {
            line["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("deprecated") && m.contains("USERMETA_ZITADEL_API=v2"))
        })
        .collect();
    // Once per endpoint, not once per call; only this test's ZITADEL sends the header.
    assert_eq!(warnings.len(), 1, "{warnings:?}");
}

#[tokio::test]
async fn v2_calls_are_retried_after_a_dropped_connection() {
    let app = TestApp::builder().api(ApiChoice::V2).spawn().await;
    let alice = app.alice.clone();
    for procedure in ["SetUserMetadata", "ListUserMetadata", "DeleteUserMetadata"] {
        app.standin.push_fault(Fault {
            path_prefix: format!("/zitadel.user.v2.UserService/{procedure}"),
            times: Some(1),
            kind: FaultKind::DropConnection,
        });
    }
    app.set_metadata(&app.admin_token, set(&alice, "", "k", "v"))
        .await
        .unwrap();
    let listed = app
        .list_metadata(&app.admin_token, list(&alice))
        .await
        .unwrap()
        .into_inner();
    assert!(keys(&listed).contains(&"k".to_owned()));
    app.delete_metadata(&app.admin_token, delete(&alice, &["k"]))
        .await
        .unwrap();
    assert!(!app.standin.metadata_of(&alice).contains_key("k"));
    let calls = |procedure: &str| {
        app.standin
            .requests()
            .iter()
            .filter(|r| r.connect_procedure() == Some(procedure))
            .count()
    };
    assert_eq!(calls("SetUserMetadata"), 2);
    assert_eq!(calls("DeleteUserMetadata"), 2);
}

#[tokio::test]
async fn v2_outages_open_the_breaker_and_slow_answers_meet_the_deadline() {
    let app = TestApp::builder().api(ApiChoice::V2).spawn().await;
    let other = app
        .another()
        .api(ApiChoice::V2)
        .policy(Policy::new([app.admin.clone()], vec![]))
        .resilience(usermeta_zitadel::Resilience {
            max_attempts: 1,
            breaker_failures: 2,
            breaker_cooldown: Duration::from_secs(60),
            ..Default::default()
        })
        .spawn()
        .await;
    let mut client = other.client.clone();

    // Slower than the caller's deadline: DEADLINE_EXCEEDED without waiting for ZITADEL.
    app.standin.push_fault(Fault {
        path_prefix: "/zitadel.user.v2.UserService/".into(),
        times: Some(1),
        kind: FaultKind::Latency(HANG),
    });
    let request = with_deadline(
        authed(list(&app.alice), &app.admin_token),
        Duration::from_millis(300),
    );
    let status = promptly("the deadline ends the call", client.list_metadata(request))
        .await
        .unwrap_err();
    assert_status(&status, Code::DeadlineExceeded, "DEADLINE_EXCEEDED");

    // Two failed calls open the management breaker; the next caller is told at once.
    app.standin.push_fault(Fault {
        path_prefix: "/zitadel.user.v2.UserService/".into(),
        times: None,
        kind: FaultKind::Status(503),
    });
    for _ in 0..2 {
        let status = client
            .list_metadata(authed(list(&app.bob), &app.admin_token))
            .await
            .unwrap_err();
        assert_status(&status, Code::Unavailable, "ZITADEL_UNAVAILABLE");
    }
    let status = client
        .list_metadata(authed(list(&app.bob), &app.admin_token))
        .await
        .unwrap_err();
    assert_status(&status, Code::Unavailable, "ZITADEL_CIRCUIT_OPEN");
}
