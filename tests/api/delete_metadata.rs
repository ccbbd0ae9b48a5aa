use tonic::Code;
use usermeta::api::pb::DeleteMetadataRequest;

use crate::helpers::*;

fn delete(user_id: &str, keys: &[&str], allow_missing: bool) -> DeleteMetadataRequest {
    DeleteMetadataRequest {
        user_id: user_id.into(),
        keys: keys.iter().map(|k| k.to_string()).collect(),
        allow_missing,
        ..Default::default()
    }
}

#[tokio::test]
async fn deletes_one_key_through_the_single_key_endpoint() {
    let mut app = TestApp::start().await;
    let alice = app.alice.clone();
    let answer = app
        .client
        .delete_metadata(authed(
            delete(&alice, &["ContractNumber"], false),
            &app.admin_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(answer.update_time.is_some());
    assert!(
        !app.standin
            .metadata_of(&alice)
            .contains_key("ContractNumber")
    );
    let management = app.management_requests();
    assert_eq!(management.len(), 1);
    assert_eq!(management[0].method, http::Method::DELETE);
    assert!(management[0].path.ends_with("/metadata/ContractNumber"));
}

#[tokio::test]
async fn deletes_several_keys_in_one_bulk_call() {
    let mut app = TestApp::start().await;
    let alice = app.alice.clone();
    app.client
        .delete_metadata(authed(
            delete(&alice, &["ContractNumber", "profile.language"], false),
            &app.admin_token,
        ))
        .await
        .unwrap();
    assert!(app.standin.metadata_of(&alice).is_empty());
    let management = app.management_requests();
    assert_eq!(management.len(), 1);
    assert!(management[0].path.ends_with("/metadata/_bulk"));
}

#[tokio::test]
async fn a_missing_key_is_not_found_and_nothing_is_removed() {
    let mut app = TestApp::start().await;
    let alice = app.alice.clone();
    let status = app
        .client
        .delete_metadata(authed(delete(&alice, &["nope"], false), &app.admin_token))
        .await
        .unwrap_err();
    assert_status(&status, Code::NotFound, "METADATA_NOT_FOUND");
    assert!(status.message().contains("allow_missing"));

    let status = app
        .client
        .delete_metadata(authed(
            delete(&alice, &["ContractNumber", "nope"], false),
            &app.admin_token,
        ))
        .await
        .unwrap_err();
    assert_status(&status, Code::NotFound, "METADATA_NOT_FOUND");
    assert!(
        app.standin
            .metadata_of(&alice)
            .contains_key("ContractNumber"),
        "all or nothing"
    );
}

#[tokio::test]
async fn allow_missing_removes_what_exists() {
    let mut app = TestApp::start().await;
    let alice = app.alice.clone();
    let single = app
        .client
        .delete_metadata(authed(delete(&alice, &["nope"], true), &app.admin_token))
        .await
        .unwrap()
        .into_inner();
    assert!(single.update_time.is_none(), "nothing was removed");

    let answer = app
        .client
        .delete_metadata(authed(
            delete(&alice, &["ContractNumber", "nope", "gone"], true),
            &app.admin_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(answer.update_time.is_some());
    let stored = app.standin.metadata_of(&alice);
    assert!(!stored.contains_key("ContractNumber"));
    assert!(stored.contains_key("profile.language"), "untouched");

    let none_left = app
        .client
        .delete_metadata(authed(delete(&alice, &["x", "y"], true), &app.admin_token))
        .await
        .unwrap()
        .into_inner();
    assert!(none_left.update_time.is_none());
}

#[tokio::test]
async fn users_delete_their_own_self_writable_keys() {
    let mut app = TestApp::start().await;
    let answer = app
        .client
        .delete_metadata(authed(
            delete("", &["profile.language"], false),
            &app.alice_token,
        ))
        .await;
    assert!(answer.is_ok(), "{answer:?}");
    assert!(
        !app.standin
            .metadata_of(&app.alice)
            .contains_key("profile.language")
    );
}
