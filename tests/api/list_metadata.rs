use tonic::Code;
use usermeta::api::pb::{KeyFilter, KeyMatch, ListMetadataRequest};

use crate::helpers::*;

fn list(user_id: &str, page_size: i32, page_token: &str) -> ListMetadataRequest {
    ListMetadataRequest {
        user_id: user_id.into(),
        page_size,
        page_token: page_token.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn own_listing_uses_the_auth_api_with_the_callers_token() {
    let mut app = spawn_app().await;
    let answer = app
        .client
        .list_metadata(authed(list("", 0, ""), &app.alice_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.total_size, 2);
    assert!(answer.next_page_token.is_empty());
    assert_eq!(
        pairs(&answer.metadata)[0],
        ("ContractNumber".into(), Some("1234".into()))
    );
    let requests = app.standin.requests();
    assert!(
        requests
            .iter()
            .all(|r| r.is_auth_api() && r.bearer() == Some(app.alice_token.as_str())),
        "{requests:?}"
    );
}

#[tokio::test]
async fn naming_yourself_is_still_your_own_listing() {
    let mut app = spawn_app().await;
    let alice = app.alice.clone();
    let answer = app
        .client
        .list_metadata(authed(list(&alice, 0, ""), &app.alice_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.total_size, 2);
    app.assert_no_management_request();
}

#[tokio::test]
async fn admins_list_other_users_through_the_management_api() {
    let mut app = spawn_app().await;
    let alice = app.alice.clone();
    let answer = app
        .client
        .list_metadata(authed(list(&alice, 0, ""), &app.admin_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.total_size, 2);
    let management = app.management_requests();
    assert_eq!(management.len(), 1);
    assert_eq!(
        management[0].bearer(),
        Some(app.service_pat.as_str()),
        "service credential, not the caller's token"
    );
    assert!(
        management[0]
            .path
            .ends_with(&format!("/users/{alice}/metadata/_search"))
    );
}

#[tokio::test]
async fn pages_through_everything_with_opaque_tokens() {
    let mut app = spawn_app().await;
    for i in 0..5 {
        app.standin
            .set_metadata(&app.bob, &format!("k{i}"), format!("v{i}").as_bytes());
    }
    let bob = app.bob.clone();
    let other_org = app.other_org.clone();
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let request = ListMetadataRequest {
            user_id: bob.clone(),
            organization_id: other_org.clone(),
            page_size: 2,
            page_token: token.clone(),
            ..Default::default()
        };
        let answer = app
            .client
            .list_metadata(authed(request, &app.admin_token))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.total_size, 6);
        assert!(answer.metadata.len() <= 2);
        seen.extend(answer.metadata.iter().map(|m| m.key.clone()));
        pages += 1;
        if answer.next_page_token.is_empty() {
            break;
        }
        assert!(
            answer.next_page_token.parse::<u64>().is_err(),
            "the token is not a raw offset"
        );
        token = answer.next_page_token;
    }
    assert_eq!(pages, 3);
    seen.sort();
    assert_eq!(seen, ["ContractNumber", "k0", "k1", "k2", "k3", "k4"]);
    // Offsets and limits reached ZITADEL as its ListQuery.
    let bodies: Vec<serde_json::Value> = app
        .management_requests()
        .iter()
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    assert_eq!(bodies[1]["query"]["offset"], "2");
    assert_eq!(bodies[1]["query"]["limit"], 2);
    assert_eq!(bodies[1]["query"]["asc"], true);
}

#[tokio::test]
async fn a_page_token_cannot_be_replayed_against_another_user() {
    let mut app = spawn_app().await;
    for i in 0..3 {
        app.standin.set_metadata(&app.alice, &format!("k{i}"), b"v");
    }
    let alice = app.alice.clone();
    let first = app
        .client
        .list_metadata(authed(list(&alice, 1, ""), &app.admin_token))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.next_page_token.is_empty());
    app.standin.clear_requests();
    let bob = app.bob.clone();
    let status = app
        .client
        .list_metadata(authed(
            list(&bob, 1, &first.next_page_token),
            &app.admin_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&status), ["page_token"]);
    app.assert_no_upstream_request();
}

#[tokio::test]
async fn key_filters_map_onto_zitadel_text_queries() {
    let mut app = spawn_app().await;
    app.standin
        .set_metadata(&app.alice, "billing.plan", b"gold");
    app.standin.set_metadata(&app.alice, "Billing.Seats", b"3");
    let cases = [
        (
            KeyMatch::Unspecified,
            "billing.plan",
            vec!["billing.plan"],
            "TEXT_QUERY_METHOD_EQUALS",
        ),
        (
            KeyMatch::StartsWith,
            "billing.",
            vec!["billing.plan"],
            "TEXT_QUERY_METHOD_STARTS_WITH",
        ),
        (
            KeyMatch::StartsWithIgnoreCase,
            "billing.",
            vec!["Billing.Seats", "billing.plan"],
            "TEXT_QUERY_METHOD_STARTS_WITH_IGNORE_CASE",
        ),
        (
            KeyMatch::ContainsIgnoreCase,
            "LANG",
            vec!["profile.language"],
            "TEXT_QUERY_METHOD_CONTAINS_IGNORE_CASE",
        ),
        (
            KeyMatch::EndsWith,
            "Number",
            vec!["ContractNumber"],
            "TEXT_QUERY_METHOD_ENDS_WITH",
        ),
    ];
    for (matching, key, expected, method) in cases {
        app.standin.clear_requests();
        let request = ListMetadataRequest {
            key_filter: Some(KeyFilter {
                key: key.into(),
                r#match: matching as i32,
            }),
            ..Default::default()
        };
        let answer = app
            .client
            .list_metadata(authed(request, &app.alice_token))
            .await
            .unwrap()
            .into_inner();
        let mut keys: Vec<_> = answer.metadata.iter().map(|m| m.key.as_str()).collect();
        keys.sort();
        assert_eq!(keys, expected, "{matching:?}");
        let body: serde_json::Value =
            serde_json::from_slice(&app.standin.requests()[0].body).unwrap();
        assert_eq!(body["queries"][0]["keyQuery"]["method"], method);
        assert_eq!(body["queries"][0]["keyQuery"]["key"], key);
    }
}

#[tokio::test]
async fn organisation_scoping_follows_zitadel() {
    let mut app = spawn_app().await;
    let bob = app.bob.clone();
    // Without organization_id ZITADEL looks in the service user's organisation, where bob is not.
    let unscoped = app
        .client
        .list_metadata(authed(list(&bob, 0, ""), &app.admin_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(unscoped.total_size, 0);
    assert!(unscoped.metadata.is_empty());

    let request = ListMetadataRequest {
        user_id: bob.clone(),
        organization_id: app.other_org.clone(),
        ..Default::default()
    };
    let scoped = app
        .client
        .list_metadata(authed(request, &app.admin_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        pairs(&scoped.metadata),
        [("ContractNumber".into(), Some("5678".into()))]
    );
    let last = app.management_requests().pop().unwrap();
    assert_eq!(last.header("x-zitadel-orgid"), Some(app.other_org.as_str()));

    let request = ListMetadataRequest {
        user_id: bob,
        organization_id: "999999".into(),
        ..Default::default()
    };
    let status = app
        .client
        .list_metadata(authed(request, &app.admin_token))
        .await
        .unwrap_err();
    assert_status(&status, Code::PermissionDenied, "ORGANIZATION_NOT_FOUND");
}
