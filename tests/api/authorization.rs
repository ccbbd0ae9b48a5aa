//! The default policy: self-read for everyone, admins for other users, self-writes only under the
//! self-writable prefixes. A denied request never reaches the management API.

use tonic::Code;
use usermeta::api::pb::{DeleteMetadataRequest, ListMetadataRequest, SetMetadataRequest};

use crate::support::*;

async fn reading_another_user_needs_an_admin(api: ApiChoice) {
    let app = TestApp::builder().api(api).spawn().await;
    let bob = app.bob.clone();
    let status = app
        .list_metadata(
            &app.alice_token,
            ListMetadataRequest {
                user_id: bob,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_status(&status, Code::PermissionDenied, "POLICY_DENIED");
    app.assert_no_management_request();
}

async fn writing_or_deleting_another_user_needs_an_admin(api: ApiChoice) {
    let app = TestApp::builder().api(api).spawn().await;
    let bob = app.bob.clone();
    let other_org = app.other_org.clone();
    let set = SetMetadataRequest {
        user_id: bob.clone(),
        organization_id: other_org.clone(),
        entries: vec![entry(&format!("{SELF_WRITABLE}x"), text("v"))],
    };
    let status = app.set_metadata(&app.alice_token, set).await.unwrap_err();
    assert_status(&status, Code::PermissionDenied, "POLICY_DENIED");
    let delete = DeleteMetadataRequest {
        user_id: bob.clone(),
        organization_id: other_org,
        keys: vec!["ContractNumber".into()],
        ..Default::default()
    };
    let status = app
        .delete_metadata(&app.alice_token, delete)
        .await
        .unwrap_err();
    assert_status(&status, Code::PermissionDenied, "POLICY_DENIED");
    app.assert_no_management_request();
    assert_eq!(app.standin.metadata_of(&bob).len(), 1);
}

async fn self_writes_outside_the_writable_prefixes_are_denied_naming_the_key(api: ApiChoice) {
    let app = TestApp::builder().api(api).spawn().await;
    let set = SetMetadataRequest {
        entries: vec![
            entry(&format!("{SELF_WRITABLE}ok"), text("v")),
            entry("ContractNumber", text("0")),
        ],
        ..Default::default()
    };
    let status = app.set_metadata(&app.alice_token, set).await.unwrap_err();
    assert_status(&status, Code::PermissionDenied, "POLICY_DENIED");
    let info = tonic_types::StatusExt::get_details_error_info(&status).unwrap();
    assert_eq!(info.metadata["key"], "ContractNumber");
    assert_eq!(info.metadata["action"], "write");

    let delete = DeleteMetadataRequest {
        keys: vec!["ContractNumber".into()],
        ..Default::default()
    };
    let status = app
        .delete_metadata(&app.alice_token, delete)
        .await
        .unwrap_err();
    assert_status(&status, Code::PermissionDenied, "POLICY_DENIED");

    app.assert_no_management_request();
    assert_eq!(
        app.standin.metadata_of(&app.alice)["ContractNumber"],
        b"1234",
        "nothing changed"
    );
}

async fn naming_yourself_does_not_widen_self_writes(api: ApiChoice) {
    let app = TestApp::builder().api(api).spawn().await;
    let alice = app.alice.clone();
    let set = SetMetadataRequest {
        user_id: alice,
        entries: vec![entry("ContractNumber", text("0"))],
        ..Default::default()
    };
    let status = app.set_metadata(&app.alice_token, set).await.unwrap_err();
    assert_status(&status, Code::PermissionDenied, "POLICY_DENIED");
    app.assert_no_management_request();
}

async fn admins_write_any_key_of_any_user(api: ApiChoice) {
    let app = TestApp::builder().api(api).spawn().await;
    let bob = app.bob.clone();
    let set = SetMetadataRequest {
        user_id: bob.clone(),
        organization_id: app.other_org.clone(),
        entries: vec![entry("ContractNumber", text("42"))],
    };
    app.set_metadata(&app.admin_token, set).await.unwrap();
    assert_eq!(app.standin.metadata_of(&bob)["ContractNumber"], b"42");
}

async fn tokens_never_cross_over(api: ApiChoice) {
    let app = TestApp::builder().api(api).spawn().await;
    let alice = app.alice.clone();
    app.set_metadata(
        &app.admin_token,
        SetMetadataRequest {
            user_id: alice.clone(),
            entries: vec![entry("k", text("v"))],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    app.list_metadata(
        &app.admin_token,
        ListMetadataRequest {
            user_id: alice,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    app.list_metadata(&app.admin_token, ListMetadataRequest::default())
        .await
        .unwrap();
    for request in app.standin.requests() {
        if request.is_management() {
            assert_eq!(
                request.bearer(),
                Some(app.service_pat.as_str()),
                "{} {}",
                request.method,
                request.path
            );
        } else {
            assert_eq!(
                request.bearer(),
                Some(app.admin_token.as_str()),
                "{} {}",
                request.method,
                request.path
            );
        }
    }
}

on_both_apis!(
    reading_another_user_needs_an_admin,
    writing_or_deleting_another_user_needs_an_admin,
    self_writes_outside_the_writable_prefixes_are_denied_naming_the_key,
    naming_yourself_does_not_widen_self_writes,
    admins_write_any_key_of_any_user,
    tokens_never_cross_over,
);
