//! FindUsersByMetadata: from an internal identifier back to the user, through v2 `ListUsers`, guarded by the
//! policy action `find`.

use tonic::Code;
use usermeta::{
    api::pb::{FindUsersByMetadataRequest, FindUsersByMetadataResponse, UserRef},
    policy::Policy,
};

use crate::support::*;

fn find(key: &str, value: &str) -> FindUsersByMetadataRequest {
    FindUsersByMetadataRequest {
        key: key.into(),
        value: text(value),
        ..Default::default()
    }
}

async fn found(
    client: &mut usermeta::api::pb::user_metadata_service_client::UserMetadataServiceClient<
        tonic::transport::Channel,
    >,
    token: &str,
    request: FindUsersByMetadataRequest,
) -> Result<FindUsersByMetadataResponse, tonic::Status> {
    client
        .find_users_by_metadata(authed(request, token))
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn an_admin_finds_the_user_holding_a_contract_number() {
    let app = TestApp::builder().api(ApiChoice::V2).spawn().await;
    let mut client = app.client.clone();
    let answer = found(
        &mut client,
        &app.admin_token,
        find("ContractNumber", "1234"),
    )
    .await
    .unwrap();
    assert_eq!(
        answer.users,
        [UserRef {
            user_id: app.alice.clone(),
            organization_id: app.org.clone(),
        }]
    );
    assert!(answer.next_page_token.is_empty());
    // Bob's number finds bob, in his own organisation; a number nobody holds finds nobody.
    let bob = found(
        &mut client,
        &app.admin_token,
        find("ContractNumber", "5678"),
    )
    .await
    .unwrap();
    assert_eq!(bob.users[0].user_id, app.bob);
    assert_eq!(bob.users[0].organization_id, app.other_org);
    let nobody = found(
        &mut client,
        &app.admin_token,
        find("ContractNumber", "0000"),
    )
    .await
    .unwrap();
    assert!(nobody.users.is_empty());
    // It went to ListUsers with both filters, with the service credential.
    let search = app
        .standin
        .requests()
        .into_iter()
        .find(|r| r.connect_procedure() == Some("ListUsers"))
        .expect("a ListUsers call");
    assert_eq!(search.bearer(), Some(app.service_pat.as_str()));
    let body: serde_json::Value = serde_json::from_slice(&search.body).unwrap();
    assert_eq!(
        body["queries"][0]["metadataKeyFilter"]["key"],
        "ContractNumber"
    );
    assert_eq!(
        body["queries"][1]["metadataValueFilter"]["value"],
        "MTIzNA=="
    );
}

#[tokio::test]
async fn only_users_whose_key_holds_the_value_are_found() {
    let app = TestApp::builder().api(ApiChoice::V2).spawn().await;
    // Carol has ContractNumber, but another value, and 1234 under another key: both filters match her.
    let carol = app.standin.create_user(&app.org, "carol");
    app.standin.set_metadata(&carol, "ContractNumber", b"9");
    app.standin.set_metadata(&carol, "OldContract", b"1234");
    let mut client = app.client.clone();
    let answer = found(
        &mut client,
        &app.admin_token,
        find("ContractNumber", "1234"),
    )
    .await
    .unwrap();
    let ids: Vec<&str> = answer.users.iter().map(|u| u.user_id.as_str()).collect();
    assert_eq!(ids, [app.alice.as_str()]);
}

#[tokio::test]
async fn an_organisation_narrows_the_search() {
    let app = TestApp::builder().api(ApiChoice::V2).spawn().await;
    let mut client = app.client.clone();
    let mut request = find("ContractNumber", "5678");
    request.organization_id = app.org.clone();
    let answer = found(&mut client, &app.admin_token, request).await.unwrap();
    assert!(answer.users.is_empty(), "bob is in Globex: {answer:?}");
}

#[tokio::test]
async fn finding_needs_the_find_action_and_hidden_keys_stay_hidden() {
    let app = TestApp::builder().api(ApiChoice::V2).spawn().await;
    let mut client = app.client.clone();
    // Alice may read her own metadata, but not look up who holds a value.
    app.standin.clear_requests();
    let status = found(
        &mut client,
        &app.alice_token,
        find("ContractNumber", "1234"),
    )
    .await
    .unwrap_err();
    assert_status(&status, Code::PermissionDenied, "POLICY_DENIED");
    assert!(app.metadata_requests().is_empty());

    // A rule that lets alice find by ContractNumber, in a policy that hides `secret` from its own user.
    let policy = Policy::from_toml(
        &format!(
            r#"
[[key]]
name = "secret"
hidden = true

[[rule]]
name = "alice looks up contracts and secrets"
who = {{ subjects = ["{alice}"] }}
whose = "any"
keys = ["ContractNumber", "secret"]
actions = ["find"]
"#,
            alice = app.alice
        ),
        "find.toml",
    )
    .unwrap();
    // Set before the replica starts, which then reads the users' listings (and keeps them) once.
    app.standin.set_metadata(&app.alice, "secret", b"s3");
    app.standin.set_metadata(&app.bob, "secret", b"s3");
    let other = app
        .another()
        .api(ApiChoice::V2)
        .policy(policy)
        .spawn()
        .await;
    let mut finder = other.client.clone();
    let answer = found(
        &mut finder,
        &app.alice_token,
        find("ContractNumber", "5678"),
    )
    .await
    .unwrap();
    assert_eq!(answer.users[0].user_id, app.bob);
    // Finding reads nothing else: ListMetadata of bob stays refused.
    let status = finder
        .list_metadata(authed(
            usermeta::api::pb::ListMetadataRequest {
                user_id: app.bob.clone(),
                ..Default::default()
            },
            &app.alice_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    // A hidden key finds others, but never its own user.
    let answer = found(&mut finder, &app.alice_token, find("secret", "s3"))
        .await
        .unwrap();
    let ids: Vec<&str> = answer.users.iter().map(|u| u.user_id.as_str()).collect();
    assert_eq!(ids, [app.bob.as_str()]);
}

#[tokio::test]
async fn bad_searches_are_refused_before_zitadel_is_asked() {
    let app = TestApp::builder().api(ApiChoice::V2).spawn().await;
    let mut client = app.client.clone();
    app.standin.clear_requests();
    for (request, field) in [
        (find("ContractNumber", &"x".repeat(201)), "value"),
        (find("", "1"), "key"),
        (
            FindUsersByMetadataRequest {
                key: "k".into(),
                ..Default::default()
            },
            "value",
        ),
        (
            FindUsersByMetadataRequest {
                page_size: 1001,
                ..find("k", "v")
            },
            "page_size",
        ),
        (
            FindUsersByMetadataRequest {
                page_token: "forged".into(),
                ..find("k", "v")
            },
            "page_token",
        ),
    ] {
        let status = found(&mut client, &app.admin_token, request)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(violated_fields(&status), [field], "{status:?}");
    }
    assert!(app.metadata_requests().is_empty());
}

#[tokio::test]
async fn pages_through_many_holders() {
    let app = TestApp::builder().api(ApiChoice::V2).spawn().await;
    let mut expected = vec![app.alice.clone()];
    for i in 0..4 {
        let user = app.standin.create_user(&app.org, &format!("holder{i}"));
        app.standin.set_metadata(&user, "ContractNumber", b"1234");
        expected.push(user);
    }
    let mut client = app.client.clone();
    let mut seen = Vec::new();
    let mut token = String::new();
    for _ in 0..10 {
        let answer = found(
            &mut client,
            &app.admin_token,
            FindUsersByMetadataRequest {
                page_size: 2,
                page_token: token.clone(),
                ..find("ContractNumber", "1234")
            },
        )
        .await
        .unwrap();
        seen.extend(answer.users.into_iter().map(|u| u.user_id));
        if answer.next_page_token.is_empty() {
            break;
        }
        token = answer.next_page_token;
    }
    seen.sort();
    expected.sort();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn without_the_v2_user_service_finding_says_what_is_needed() {
    let app = TestApp::builder().api(ApiChoice::V1).spawn().await;
    let mut client = app.client.clone();
    let status = found(
        &mut client,
        &app.admin_token,
        find("ContractNumber", "1234"),
    )
    .await
    .unwrap_err();
    assert_status(&status, Code::FailedPrecondition, "ZITADEL_API_UNSUPPORTED");
    assert!(
        status.message().contains("USERMETA_ZITADEL_API"),
        "{status:?}"
    );
    assert!(status.message().contains("4.1"), "{status:?}");
    app.assert_no_management_request();

    // A ZITADEL 4.0 (v2 without the metadata filters) says so too.
    let app = TestApp::builder().api(ApiChoice::V2).spawn().await;
    app.standin.set_apis(zitadel_standin::Apis::V3);
    let mut client = app.client.clone();
    let status = found(
        &mut client,
        &app.admin_token,
        find("ContractNumber", "1234"),
    )
    .await
    .unwrap_err();
    assert_status(&status, Code::FailedPrecondition, "ZITADEL_API_UNSUPPORTED");
}

/// A finder whose `find` rule names organisations, run beside `app` (v2).
async fn finder(
    app: &TestApp,
    orgs: &[&str],
    keys: &[&str],
) -> (
    usermeta::api::pb::user_metadata_service_client::UserMetadataServiceClient<
        tonic::transport::Channel,
    >,
    tokio::sync::oneshot::Sender<()>,
) {
    let quoted = |items: &[&str]| {
        items
            .iter()
            .map(|item| format!("{item:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let whose = if orgs.is_empty() {
        "\"any\"".to_owned()
    } else {
        format!("[{}]", quoted(orgs))
    };
    let policy = Policy::from_toml(
        &format!(
            r#"
[[key]]
name = "secret"
hidden = true

[[rule]]
name = "alice finds"
who = {{ subjects = ["{alice}"] }}
whose = {whose}
keys = [{keys}]
actions = ["find"]
"#,
            alice = app.alice,
            keys = quoted(keys),
        ),
        "find.toml",
    )
    .unwrap();
    let other = app
        .another()
        .api(ApiChoice::V2)
        .policy(policy)
        .spawn()
        .await;
    (other.client.clone(), other.stop)
}

/// Every page of a search with `page_size`, as the list of users of each page.
async fn pages(
    client: &mut usermeta::api::pb::user_metadata_service_client::UserMetadataServiceClient<
        tonic::transport::Channel,
    >,
    token: &str,
    request: FindUsersByMetadataRequest,
    page_size: i32,
) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut page_token = String::new();
    for _ in 0..20 {
        let answer = found(
            client,
            token,
            FindUsersByMetadataRequest {
                page_size,
                page_token: page_token.clone(),
                ..request.clone()
            },
        )
        .await
        .unwrap();
        pages.push(answer.users.into_iter().map(|u| u.user_id).collect());
        if answer.next_page_token.is_empty() {
            return pages;
        }
        page_token = answer.next_page_token;
    }
    panic!("no last page after 20: {pages:?}");
}

/// Issue 31, class 7: a finder bound to Acme learns nothing of who else holds a value: the search goes to
/// ZITADEL scoped to Acme, and pages (their number, size and tokens) count only users the finder may see.
#[tokio::test]
async fn a_finder_bound_to_one_organisation_learns_nothing_of_other_tenants() {
    let app = TestApp::builder().api(ApiChoice::V2).spawn().await;
    for i in 0..3 {
        let user = app
            .standin
            .create_user(&app.other_org, &format!("globex{i}"));
        app.standin.set_metadata(&user, "ContractNumber", b"7777");
    }
    let (mut client, _stop) = finder(&app, &[&app.org], &["ContractNumber"]).await;
    app.standin.clear_requests();
    // Only Globex holds 7777: one empty page, exactly as for a value nobody holds.
    let held_elsewhere = pages(
        &mut client,
        &app.alice_token,
        find("ContractNumber", "7777"),
        1,
    )
    .await;
    let held_by_nobody = pages(
        &mut client,
        &app.alice_token,
        find("ContractNumber", "0000"),
        1,
    )
    .await;
    assert_eq!(held_elsewhere, [Vec::<String>::new()]);
    assert_eq!(held_elsewhere, held_by_nobody);
    // ZITADEL was asked within Acme only.
    let searches: Vec<serde_json::Value> = app
        .standin
        .requests()
        .into_iter()
        .filter(|r| r.connect_procedure() == Some("ListUsers"))
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    assert!(!searches.is_empty());
    for search in &searches {
        let orgs: Vec<&str> = search["queries"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|q| q["organizationIdQuery"]["organizationId"].as_str())
            .collect();
        assert_eq!(orgs, [app.org.as_str()], "{search}");
    }
    // An Acme holder is found, alone, on one page.
    let carol = app.standin.create_user(&app.org, "carol");
    app.standin.set_metadata(&carol, "ContractNumber", b"7777");
    let pages_found = pages(
        &mut client,
        &app.alice_token,
        find("ContractNumber", "7777"),
        1,
    )
    .await;
    assert_eq!(pages_found, [vec![carol]]);
}

/// A finder whose rules name several organisations names the one to search; one its rules do not name is
/// refused before ZITADEL is asked.
#[tokio::test]
async fn a_finder_of_several_organisations_names_one() {
    let app = TestApp::builder().api(ApiChoice::V2).spawn().await;
    let (mut client, _stop) = finder(&app, &[&app.org, &app.other_org], &["ContractNumber"]).await;
    app.standin.clear_requests();
    let status = found(
        &mut client,
        &app.alice_token,
        find("ContractNumber", "5678"),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(violated_fields(&status), ["organization_id"]);
    for org in [&app.org, &app.other_org] {
        assert!(status.message().contains(org.as_str()), "{status:?}");
    }
    let third = app.standin.create_org("Initech");
    let mut elsewhere = find("ContractNumber", "5678");
    elsewhere.organization_id = third;
    let status = found(&mut client, &app.alice_token, elsewhere)
        .await
        .unwrap_err();
    assert_status(&status, Code::PermissionDenied, "POLICY_DENIED");
    assert!(
        app.metadata_requests().is_empty(),
        "{:?}",
        app.metadata_requests()
    );
    let mut in_globex = find("ContractNumber", "5678");
    in_globex.organization_id = app.other_org.clone();
    let answer = found(&mut client, &app.alice_token, in_globex)
        .await
        .unwrap();
    assert_eq!(answer.users.len(), 1);
    assert_eq!(answer.users[0].user_id, app.bob);
}

/// Pages hold only users the finder may see: the finder itself for a key hidden from it, and users ZITADEL
/// matched without holding the value under the key, leave neither an empty page nor a short one.
#[tokio::test]
async fn pages_count_only_users_the_finder_may_see() {
    let app = TestApp::builder().api(ApiChoice::V2).spawn().await;
    let carol = app.standin.create_user(&app.org, "carol");
    let dave = app.standin.create_user(&app.org, "dave");
    for user in [&app.alice, &app.bob, &carol] {
        app.standin.set_metadata(user, "secret", b"s3");
    }
    // dave matches both of ZITADEL's filters without holding s3 under `secret`.
    app.standin.set_metadata(&dave, "secret", b"other");
    app.standin.set_metadata(&dave, "note", b"s3");
    let (mut client, _stop) = finder(&app, &[], &["secret"]).await;
    let found_pages = pages(&mut client, &app.alice_token, find("secret", "s3"), 1).await;
    assert_eq!(found_pages.len(), 2, "{found_pages:?}");
    assert!(
        found_pages.iter().all(|page| page.len() == 1),
        "{found_pages:?}"
    );
    let mut ids: Vec<String> = found_pages.concat();
    ids.sort();
    let mut expected = vec![app.bob.clone(), carol];
    expected.sort();
    assert_eq!(ids, expected);
}
