use tonic::Code;
use usermeta::api::pb::{KeyFilter, KeyMatch, ListMetadataRequest};

use crate::support::*;

fn list(user_id: &str, page_size: i32, page_token: &str) -> ListMetadataRequest {
    ListMetadataRequest {
        user_id: user_id.into(),
        page_size,
        page_token: page_token.into(),
        ..Default::default()
    }
}

async fn own_listing_uses_the_auth_api_with_the_callers_token(api: ApiChoice) {
    let app = TestApp::builder().api(api).spawn().await;
    let answer = app
        .list_metadata(&app.alice_token, list("", 0, ""))
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

async fn naming_yourself_is_still_your_own_listing(api: ApiChoice) {
    let app = TestApp::builder().api(api).spawn().await;
    let alice = app.alice.clone();
    let answer = app
        .list_metadata(&app.alice_token, list(&alice, 0, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.total_size, 2);
    app.assert_no_management_request();
}

async fn admins_list_other_users_through_the_management_api(api: ApiChoice) {
    let app = TestApp::builder().api(api).spawn().await;
    let alice = app.alice.clone();
    let answer = app
        .list_metadata(&app.admin_token, list(&alice, 0, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.total_size, 2);
    let management = app.metadata_requests();
    assert_eq!(management.len(), 1);
    assert_eq!(
        management[0].bearer(),
        Some(app.service_pat.as_str()),
        "service credential, not the caller's token"
    );
    assert_eq!(user_of(&management[0]), alice);
    match api {
        ApiChoice::V1 => assert!(management[0].path.ends_with("/metadata/_search")),
        _ => assert_eq!(management[0].connect_procedure(), Some("ListUserMetadata")),
    }
}

async fn pages_through_everything_with_opaque_tokens(api: ApiChoice) {
    let app = TestApp::builder().api(api).spawn().await;
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
            .list_metadata(&app.admin_token, request)
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
    // Another user's listing is read whole once (v1 `query`, v2 `pagination`), and paged from memory.
    let bodies: Vec<serde_json::Value> = app
        .management_requests()
        .iter()
        .filter(|r| r.connect_procedure() != Some("GetUserByID"))
        .map(|r| serde_json::from_slice(&r.body).unwrap())
        .collect();
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    let query = match api {
        ApiChoice::V1 => &bodies[0]["query"],
        _ => &bodies[0]["pagination"],
    };
    assert_eq!(query["offset"], "0");
    assert_eq!(query["limit"], 1000);
    assert_eq!(query["asc"], true);
}

async fn a_page_token_cannot_be_replayed_against_another_user(api: ApiChoice) {
    let app = TestApp::builder().api(api).spawn().await;
    for i in 0..3 {
        app.standin.set_metadata(&app.alice, &format!("k{i}"), b"v");
    }
    let alice = app.alice.clone();
    let first = app
        .list_metadata(&app.admin_token, list(&alice, 1, ""))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.next_page_token.is_empty());
    app.standin.clear_requests();
    let bob = app.bob.clone();
    let status = app
        .list_metadata(&app.admin_token, list(&bob, 1, &first.next_page_token))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&status), ["page_token"]);
    app.assert_no_upstream_request();
}

async fn key_filters_map_onto_zitadel_text_queries(api: ApiChoice) {
    let app = TestApp::builder().api(api).spawn().await;
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
            .list_metadata(&app.alice_token, request)
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
    let app = TestApp::spawn().await;
    let bob = app.bob.clone();
    // Without organization_id ZITADEL looks in the service user's organisation, where bob is not.
    let unscoped = app
        .list_metadata(&app.admin_token, list(&bob, 0, ""))
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
        .list_metadata(&app.admin_token, request)
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
        .list_metadata(&app.admin_token, request)
        .await
        .unwrap_err();
    assert_status(&status, Code::PermissionDenied, "ORGANIZATION_NOT_FOUND");
}

/// A policy that hides `routing.*` from users and lets `admin` read only `routing.*` of others.
fn hiding_policy(app: &TestApp) -> usermeta::policy::Policy {
    usermeta::policy::Policy::from_toml(
        &format!(
            r#"
[[rule]]
name = "the gateway reads routing attributes"
who = {{ subjects = ["{admin}"] }}
whose = "any"
keys = ["routing.*"]
actions = ["read"]

[[key]]
name = "routing.*"
hidden = true
"#,
            admin = app.admin
        ),
        "hiding.toml",
    )
    .unwrap()
}

fn filtered(user_id: &str, prefix: &str) -> ListMetadataRequest {
    ListMetadataRequest {
        user_id: user_id.into(),
        key_filter: Some(KeyFilter {
            key: prefix.into(),
            r#match: KeyMatch::StartsWith as i32,
        }),
        ..Default::default()
    }
}

async fn counts_and_page_tokens_account_only_for_what_the_caller_may_see(api: ApiChoice) {
    let app = TestApp::builder().api(api).spawn().await;
    for key in ["routing.tier", "routing.zone", "routing.zz-secret"] {
        app.standin.set_metadata(&app.alice, key, b"x");
    }
    let other = app.another().policy(hiding_policy(&app)).spawn().await;
    let mut client = other.client.clone();

    // alice sees ContractNumber and profile.language; the three routing keys are hidden from her.
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let answer = client
            .list_metadata(authed(list("", 1, &token), &app.alice_token))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.total_size, 2, "{answer:?}");
        seen.extend(answer.metadata.iter().map(|m| m.key.clone()));
        token = answer.next_page_token;
        if token.is_empty() {
            break;
        }
    }
    assert_eq!(seen, ["ContractNumber", "profile.language"]);

    // Prefix filters tell nothing about hidden names: a prefix that matches three hidden keys answers as one
    // that matches nothing.
    for prefix in ["routing.", "routing.t", "routing.zz", "nothing-here."] {
        let answer = client
            .list_metadata(authed(filtered("", prefix), &app.alice_token))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.total_size, 0, "{prefix}: {answer:?}");
        assert!(answer.next_page_token.is_empty(), "{prefix}");
        assert!(answer.metadata.is_empty(), "{prefix}");
    }

    // The admin of this policy reads only routing.* of alice: the count is of those, not of all five.
    let alice = app.alice.clone();
    let answer = client
        .list_metadata(authed(list(&alice, 2, ""), &app.admin_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.total_size, 3, "{answer:?}");
    assert_eq!(pairs(&answer.metadata).len(), 2);
    let rest = client
        .list_metadata(authed(
            list(&alice, 2, &answer.next_page_token),
            &app.admin_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(rest.total_size, 3);
    assert_eq!(rest.metadata.len(), 1);
    assert!(rest.next_page_token.is_empty());
}

async fn altered_or_foreign_page_tokens_are_refused_before_any_zitadel_call(api: ApiChoice) {
    let app = TestApp::builder().api(api).spawn().await;
    for i in 0..5 {
        app.standin.set_metadata(&app.alice, &format!("k{i}"), b"v");
    }
    let alice = app.alice.clone();
    let mut client = app.client.clone();
    let first = client
        .list_metadata(authed(list(&alice, 2, ""), &app.admin_token))
        .await
        .unwrap()
        .into_inner();
    let genuine = first.next_page_token.clone();
    assert!(!genuine.is_empty());

    // Every single-character change of the genuine token, and a made-up one with an absurd offset.
    use base64::Engine as _;
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut bytes = engine.decode(&genuine).unwrap();
    let mut forged = Vec::new();
    for i in 0..bytes.len() {
        bytes[i] ^= 0x55;
        forged.push(engine.encode(&bytes));
        bytes[i] ^= 0x55;
    }
    let mut absurd = vec![1u8];
    absurd.extend(u64::MAX.to_be_bytes());
    absurd.extend([0u8; 16]);
    forged.push(engine.encode(&absurd));
    app.standin.clear_requests();
    for token in &forged {
        let status = client
            .list_metadata(authed(list(&alice, 2, token), &app.admin_token))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{token}: {status:?}");
        assert_eq!(violated_fields(&status), ["page_token"]);
    }
    app.assert_no_upstream_request();

    // Another replica with the same service credential continues the listing ...
    let other = app
        .another()
        .policy(usermeta::policy::Policy::new([app.admin.clone()], vec![]))
        .spawn()
        .await;
    let next = other
        .client
        .clone()
        .list_metadata(authed(list(&alice, 2, &genuine), &app.admin_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next.metadata.len(), 2);
    // ... but not for another user, and not as a listing of one's own under another policy view.
    let status = client
        .list_metadata(authed(list(&app.bob, 2, &genuine), &app.admin_token))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}

async fn a_token_from_a_view_of_every_key_does_not_continue_a_view_with_hidden_keys(
    api: ApiChoice,
) {
    let app = TestApp::builder().api(api).spawn().await;
    for i in 0..3 {
        app.standin
            .set_metadata(&app.alice, &format!("routing.k{i}"), b"v");
    }
    // alice lists herself naming her own id; under the default policy she sees every key ...
    let alice = app.alice.clone();
    let open = app
        .client
        .clone()
        .list_metadata(authed(list(&alice, 1, ""), &app.alice_token))
        .await
        .unwrap()
        .into_inner();
    assert!(!open.next_page_token.is_empty());
    // ... a replica that hides routing.* refuses that token rather than paging by ZITADEL's offsets.
    let other = app.another().policy(hiding_policy(&app)).spawn().await;
    let status = other
        .client
        .clone()
        .list_metadata(authed(
            list(&alice, 1, &open.next_page_token),
            &app.alice_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(violated_fields(&status), ["page_token"]);
}

on_both_apis!(
    own_listing_uses_the_auth_api_with_the_callers_token,
    naming_yourself_is_still_your_own_listing,
    admins_list_other_users_through_the_management_api,
    pages_through_everything_with_opaque_tokens,
    a_page_token_cannot_be_replayed_against_another_user,
    key_filters_map_onto_zitadel_text_queries,
    counts_and_page_tokens_account_only_for_what_the_caller_may_see,
    altered_or_foreign_page_tokens_are_refused_before_any_zitadel_call,
    a_token_from_a_view_of_every_key_does_not_continue_a_view_with_hidden_keys,
);
