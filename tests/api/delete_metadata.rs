use tonic::Code;
use usermeta::api::pb::DeleteMetadataRequest;

use crate::support::*;

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
    let app = TestApp::spawn().await;
    let alice = app.alice.clone();
    let answer = app
        .delete_metadata(&app.admin_token, delete(&alice, &["ContractNumber"], false))
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
    let app = TestApp::spawn().await;
    let alice = app.alice.clone();
    app.delete_metadata(
        &app.admin_token,
        delete(&alice, &["ContractNumber", "profile.language"], false),
    )
    .await
    .unwrap();
    assert!(app.standin.metadata_of(&alice).is_empty());
    let management = app.management_requests();
    assert_eq!(management.len(), 1);
    assert!(management[0].path.ends_with("/metadata/_bulk"));
}

async fn a_missing_key_is_not_found_and_nothing_is_removed(api: ApiChoice) {
    let app = TestApp::builder().api(api).spawn().await;
    let alice = app.alice.clone();
    let status = app
        .delete_metadata(&app.admin_token, delete(&alice, &["nope"], false))
        .await
        .unwrap_err();
    assert_status(&status, Code::NotFound, "METADATA_NOT_FOUND");
    assert!(status.message().contains("allow_missing"));

    let status = app
        .delete_metadata(
            &app.admin_token,
            delete(&alice, &["ContractNumber", "nope"], false),
        )
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

async fn allow_missing_removes_what_exists(api: ApiChoice) {
    let app = TestApp::builder().api(api).spawn().await;
    let alice = app.alice.clone();
    let single = app
        .delete_metadata(&app.admin_token, delete(&alice, &["nope"], true))
        .await
        .unwrap()
        .into_inner();
    assert!(single.update_time.is_none(), "nothing was removed");

    let answer = app
        .delete_metadata(
            &app.admin_token,
            delete(&alice, &["ContractNumber", "nope", "gone"], true),
        )
        .await
        .unwrap()
        .into_inner();
    assert!(answer.update_time.is_some());
    let stored = app.standin.metadata_of(&alice);
    assert!(!stored.contains_key("ContractNumber"));
    assert!(stored.contains_key("profile.language"), "untouched");

    let none_left = app
        .delete_metadata(&app.admin_token, delete(&alice, &["x", "y"], true))
        .await
        .unwrap()
        .into_inner();
    assert!(none_left.update_time.is_none());
}

async fn users_delete_their_own_self_writable_keys(api: ApiChoice) {
    let app = TestApp::builder().api(api).spawn().await;
    let answer = app
        .delete_metadata(&app.alice_token, delete("", &["profile.language"], false))
        .await;
    assert!(answer.is_ok(), "{answer:?}");
    assert!(
        !app.standin
            .metadata_of(&app.alice)
            .contains_key("profile.language")
    );
}

on_both_apis!(
    a_missing_key_is_not_found_and_nothing_is_removed,
    allow_missing_removes_what_exists,
    users_delete_their_own_self_writable_keys,
);
