use tonic::Code;
use usermeta::api::pb::SetMetadataRequest;

use crate::support::*;

fn set(
    user_id: &str,
    org: &str,
    entries: Vec<usermeta::api::pb::MetadataEntry>,
) -> SetMetadataRequest {
    SetMetadataRequest {
        user_id: user_id.into(),
        organization_id: org.into(),
        entries,
    }
}

#[tokio::test]
async fn one_entry_uses_the_single_key_endpoint_with_padded_base64() {
    let app = TestApp::spawn().await;
    let alice = app.alice.clone();
    let answer = app
        .set_metadata(
            &app.admin_token,
            set(&alice, "", vec![entry("ContractNumber", text("99"))]),
        )
        .await
        .unwrap()
        .into_inner();
    assert!(answer.update_time.is_some());
    assert_eq!(app.standin.metadata_of(&alice)["ContractNumber"], b"99");

    let management = app.management_requests();
    assert_eq!(management.len(), 1);
    assert_eq!(management[0].method, http::Method::POST);
    assert!(
        management[0]
            .path
            .ends_with(&format!("/users/{alice}/metadata/ContractNumber")),
        "{}",
        management[0].path
    );
    let body: serde_json::Value = serde_json::from_slice(&management[0].body).unwrap();
    assert_eq!(body["value"], "OTk=");
    assert_eq!(management[0].bearer(), Some(app.service_pat.as_str()));
}

#[tokio::test]
async fn several_entries_go_in_one_bulk_call() {
    let app = TestApp::spawn().await;
    let alice = app.alice.clone();
    let entries = vec![entry("a", text("1")), entry("b", binary(&[0xfb, 0xff]))];
    app.set_metadata(&app.admin_token, set(&alice, "", entries))
        .await
        .unwrap();
    let stored = app.standin.metadata_of(&alice);
    assert_eq!(stored["a"], b"1");
    assert_eq!(stored["b"], [0xfb, 0xff]);
    let management = app.management_requests();
    assert_eq!(management.len(), 1);
    assert!(management[0].path.ends_with("/metadata/_bulk"));
    let body: serde_json::Value = serde_json::from_slice(&management[0].body).unwrap();
    assert_eq!(body["metadata"][1]["value"], "+/8=");
}

async fn keys_that_cannot_travel_in_a_path_go_in_a_body(api: ApiChoice) {
    let app = TestApp::builder().api(api).spawn().await;
    let alice = app.alice.clone();
    for key in ["_search", "a/b", "with space", "ümlaut"] {
        app.set_metadata(
            &app.admin_token,
            set(&alice, "", vec![entry(key, text("x"))]),
        )
        .await
        .unwrap();
        assert_eq!(app.standin.metadata_of(&alice)[key], b"x", "{key}");
    }
    // v1 takes such keys only in its bulk call's body; v2 takes every key in a body.
    let calls = app.metadata_requests();
    assert_eq!(calls.len(), 4);
    match api {
        ApiChoice::V1 => assert!(calls.iter().all(|r| r.path.ends_with("/metadata/_bulk"))),
        _ => assert!(
            calls
                .iter()
                .all(|r| r.connect_procedure() == Some("SetUserMetadata"))
        ),
    }
}

async fn users_write_their_own_self_writable_keys_without_naming_themselves(api: ApiChoice) {
    let app = TestApp::builder().api(api).spawn().await;
    let key = format!("{SELF_WRITABLE}language");
    app.set_metadata(&app.alice_token, set("", "", vec![entry(&key, text("de"))]))
        .await
        .unwrap();
    assert_eq!(app.standin.metadata_of(&app.alice)[&key], b"de");
    // The target came from userinfo, never from the request; the write used the service credential.
    let management = app.metadata_requests();
    assert_eq!(user_of(&management[0]), app.alice);
    assert_eq!(management[0].bearer(), Some(app.service_pat.as_str()));
    match api {
        // ZITADEL told us alice's organisation; the write was scoped to it.
        ApiChoice::V1 => assert_eq!(
            management[0].header("x-zitadel-orgid"),
            Some(app.org.as_str())
        ),
        // v2 takes no organisation: ZITADEL acts in the user's own.
        _ => assert_eq!(management[0].header("x-zitadel-orgid"), None),
    }
}

#[tokio::test]
async fn users_in_another_organisation_need_organization_id() {
    let app = TestApp::spawn().await;
    let bob = app.bob.clone();
    let status = app
        .set_metadata(&app.admin_token, set(&bob, "", vec![entry("k", text("v"))]))
        .await
        .unwrap_err();
    assert_status(
        &status,
        Code::FailedPrecondition,
        "USER_NOT_FOUND_IN_ORGANIZATION",
    );
    assert!(
        status.message().contains("organization_id"),
        "{}",
        status.message()
    );
    assert!(!app.standin.metadata_of(&bob).contains_key("k"));

    let other_org = app.other_org.clone();
    app.set_metadata(
        &app.admin_token,
        set(&bob, &other_org, vec![entry("k", text("v"))]),
    )
    .await
    .unwrap();
    assert_eq!(app.standin.metadata_of(&bob)["k"], b"v");
}

async fn writes_are_visible_to_the_next_read(api: ApiChoice) {
    let app = TestApp::builder().api(api).spawn().await;
    let key = format!("{SELF_WRITABLE}theme");
    app.set_metadata(
        &app.alice_token,
        set("", "", vec![entry(&key, text("dark"))]),
    )
    .await
    .unwrap();
    let answer = app
        .get_my_metadata(
            &app.alice_token,
            usermeta::api::pb::GetMyMetadataRequest {
                keys: vec![key.clone()],
                source: 0,
            },
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!(pairs(&answer.metadata), [(key, Some("dark".into()))]);
}

on_both_apis!(
    keys_that_cannot_travel_in_a_path_go_in_a_body,
    users_write_their_own_self_writable_keys_without_naming_themselves,
    writes_are_visible_to_the_next_read,
);
