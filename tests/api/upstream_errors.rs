//! How ZITADEL's failures reach callers: each mapped to a gRPC code with a reason, none leaking a token.

use std::time::Duration;

use tonic::Code;
use tonic_types::StatusExt;
use usermeta::{
    api::pb::{GetMyMetadataRequest, ListMetadataRequest, MetadataSource, SetMetadataRequest},
    policy::Policy,
};
use zitadel_standin::{Fault, FaultKind, ManagerRole};

use crate::support::*;

fn get_mine() -> GetMyMetadataRequest {
    GetMyMetadataRequest::default()
}

fn set_alice(app: &TestApp) -> SetMetadataRequest {
    SetMetadataRequest {
        user_id: app.alice.clone(),
        entries: vec![entry("k", text("v"))],
        ..Default::default()
    }
}

#[tokio::test]
async fn a_token_zitadel_rejects_is_unauthenticated() {
    let app = TestApp::spawn().await;
    app.standin.revoke_token(&app.alice_token);
    let status = app
        .get_my_metadata(&app.alice_token, get_mine())
        .await
        .unwrap_err();
    assert_status(&status, Code::Unauthenticated, "TOKEN_REJECTED");
    assert!(!status.message().contains(&app.alice_token));
    let status = app
        .get_my_metadata("made-up-token", get_mine())
        .await
        .unwrap_err();
    assert_status(&status, Code::Unauthenticated, "TOKEN_REJECTED");
}

#[tokio::test]
async fn zitadel_unreachable_is_unavailable() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let other = TestApp::builder()
        .zitadel_url(&url)
        .pat("pat")
        .policy(Policy::default())
        .spawn()
        .await;
    let status = other
        .client
        .clone()
        .get_my_metadata(authed(get_mine(), "some-token"))
        .await
        .unwrap_err();
    assert_status(&status, Code::Unavailable, "ZITADEL_UNREACHABLE");
    assert!(!status.message().contains("some-token"));
}

#[tokio::test]
async fn zitadel_5xx_is_unavailable() {
    let app = TestApp::spawn().await;
    // Three 503s: the first try and both retries.
    app.standin.push_fault(Fault {
        path_prefix: "/oidc/v1/userinfo".into(),
        times: Some(3),
        kind: FaultKind::Status(503),
    });
    let status = app
        .get_my_metadata(&app.alice_token, get_mine())
        .await
        .unwrap_err();
    assert_status(&status, Code::Unavailable, "ZITADEL_UNAVAILABLE");
    // The fault is spent: the next call works without restarting anything.
    assert!(
        app.get_my_metadata(&app.alice_token, get_mine())
            .await
            .is_ok()
    );
}

async fn zitadel_429_is_resource_exhausted_with_retry_info(api: ApiChoice) {
    let app = TestApp::builder().api(api).spawn().await;
    app.standin.push_fault(Fault {
        path_prefix: management_prefix(api).into(),
        times: Some(1),
        kind: FaultKind::TooManyRequests {
            retry_after_secs: Some(7),
        },
    });
    let status = app
        .set_metadata(&app.admin_token, set_alice(&app))
        .await
        .unwrap_err();
    assert_status(&status, Code::ResourceExhausted, "ZITADEL_RATE_LIMITED");
    let retry = status.get_details_retry_info().expect("RetryInfo");
    assert_eq!(retry.retry_delay, Some(Duration::from_secs(7)));
}

#[tokio::test]
async fn dropped_connections_and_malformed_answers_are_unavailable() {
    let app = TestApp::spawn().await;
    // Dropped on the first try and both retries.
    app.standin.push_fault(Fault {
        path_prefix: "/oidc/".into(),
        times: Some(3),
        kind: FaultKind::DropConnection,
    });
    let status = app
        .get_my_metadata(&app.alice_token, get_mine())
        .await
        .unwrap_err();
    assert_status(&status, Code::Unavailable, "ZITADEL_UNREACHABLE");

    app.standin.push_fault(Fault {
        path_prefix: "/oidc/".into(),
        times: Some(1),
        kind: FaultKind::MalformedJson,
    });
    let status = app
        .get_my_metadata(&app.alice_token, get_mine())
        .await
        .unwrap_err();
    assert_status(&status, Code::Unavailable, "ZITADEL_BAD_RESPONSE");
}

#[tokio::test]
async fn a_slow_zitadel_hits_the_upstream_timeout() {
    let app = TestApp::spawn().await;
    app.standin.push_fault(Fault {
        path_prefix: "".into(),
        times: None,
        kind: FaultKind::Latency(HANG),
    });
    let other = app
        .another()
        .policy(Policy::default())
        .timeout(Duration::from_millis(200))
        .spawn()
        .await;
    let status = promptly(
        "answered after the timeout, not after ZITADEL",
        other
            .client
            .clone()
            .get_my_metadata(authed(get_mine(), &app.alice_token)),
    )
    .await
    .unwrap_err();
    assert_status(&status, Code::Unavailable, "ZITADEL_UNREACHABLE");
}

async fn a_rejected_service_credential_is_unavailable_and_reads_keep_working(api: ApiChoice) {
    let app = TestApp::builder().api(api).spawn().await;
    app.standin.revoke_token(&app.service_pat);
    let status = app
        .set_metadata(&app.admin_token, set_alice(&app))
        .await
        .unwrap_err();
    assert_status(&status, Code::Unavailable, "SERVICE_CREDENTIAL_REJECTED");
    assert!(!status.message().contains(&app.service_pat));
    // Reading your own metadata needs no service credential.
    let mine = app.get_my_metadata(&app.alice_token, get_mine()).await;
    assert!(mine.is_ok(), "{mine:?}");
}

async fn a_service_user_without_a_manager_role_is_permission_denied(api: ApiChoice) {
    let app = TestApp::builder().api(api).spawn().await;
    let weak = app
        .standin
        .create_service_user(&app.org, "weak", ManagerRole::None);
    let weak_pat = app.standin.issue_pat(&weak);
    let other = app
        .another()
        .pat(&weak_pat)
        .api(api)
        .policy(Policy::new([app.admin.clone()], vec![]))
        .spawn()
        .await;
    let status = other
        .client
        .clone()
        .set_metadata(authed(set_alice(&app), &app.admin_token))
        .await
        .unwrap_err();
    assert_status(
        &status,
        Code::PermissionDenied,
        "SERVICE_USER_LACKS_PERMISSION",
    );
}

#[tokio::test]
async fn one_undecodable_value_does_not_fail_the_answer() {
    let (url, _calls) = raw_userinfo(serde_json::json!({
        "sub": "170848145649959169",
        "urn:zitadel:iam:user:metadata": {"good": "MTIzNA", "bad": "%%%not base64%%%", "odd": 42}
    }))
    .await;
    let other = TestApp::builder()
        .zitadel_url(&url)
        .pat("pat")
        .policy(Policy::default())
        .spawn()
        .await;
    let answer = other
        .client
        .clone()
        .get_my_metadata(authed(get_mine(), "t"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.user_id, "170848145649959169");
    assert_eq!(
        pairs(&answer.metadata),
        [
            ("bad".into(), None),
            ("good".into(), Some("1234".into())),
            ("odd".into(), None)
        ]
    );
    assert!(answer.metadata[0].value.is_none());
}

#[tokio::test]
async fn auth_api_source_failures_map_like_the_rest() {
    let app = TestApp::spawn().await;
    app.standin.push_fault(Fault {
        path_prefix: "/auth/".into(),
        times: Some(1),
        kind: FaultKind::Status(500),
    });
    let request = GetMyMetadataRequest {
        source: MetadataSource::AuthApi as i32,
        ..Default::default()
    };
    let status = app
        .get_my_metadata(&app.alice_token, request)
        .await
        .unwrap_err();
    assert_status(&status, Code::Unavailable, "ZITADEL_UNAVAILABLE");
    let info = status.get_details_error_info().unwrap();
    assert_eq!(info.metadata["endpoint"], "auth.ListMyMetadata");
    assert_eq!(info.domain, "usermeta");
}

#[tokio::test]
async fn listing_another_users_missing_organisation_is_reported() {
    let app = TestApp::spawn().await;
    let request = ListMetadataRequest {
        user_id: app.bob.clone(),
        organization_id: "1".into(),
        ..Default::default()
    };
    let status = app
        .list_metadata(&app.admin_token, request)
        .await
        .unwrap_err();
    assert_status(&status, Code::PermissionDenied, "ORGANIZATION_NOT_FOUND");
}

async fn an_error_body_that_claims_code_0_is_a_bad_response_not_ok(api: ApiChoice) {
    let app = TestApp::builder().api(api).spawn().await;
    app.standin.push_fault(Fault {
        path_prefix: management_prefix(api).into(),
        times: None,
        kind: FaultKind::Body {
            status: 400,
            json: r#"{"code":0,"message":"all good"}"#.into(),
        },
    });
    let status = app
        .set_metadata(&app.admin_token, set_alice(&app))
        .await
        .unwrap_err();
    assert_status(&status, Code::Unavailable, "ZITADEL_BAD_RESPONSE");
    assert!(status.message().contains("code is 0"), "{status:?}");
}

async fn copied_error_ids_are_capped(api: ApiChoice) {
    let app = TestApp::builder().api(api).spawn().await;
    let huge = "X".repeat(10_000);
    app.standin.push_fault(Fault {
        path_prefix: management_prefix(api).into(),
        times: None,
        kind: FaultKind::Body {
            status: 400,
            json: format!(r#"{{"code":3,"message":"no","details":[{{"id":"{huge}"}}]}}"#),
        },
    });
    let status = app
        .set_metadata(&app.admin_token, set_alice(&app))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let info = status.get_details_error_info().unwrap();
    assert!(!info.metadata.contains_key("zitadel_error_id"), "{info:?}");
    assert!(status.message().len() < 1000, "{}", status.message().len());
    assert!(status.details().len() < 1000, "{}", status.details().len());
}

/// Where a fault hits every management call of `api`.
fn management_prefix(api: ApiChoice) -> &'static str {
    match api {
        ApiChoice::V1 => "/management/",
        _ => "/zitadel.user.v2.UserService/",
    }
}

on_both_apis!(
    zitadel_429_is_resource_exhausted_with_retry_info,
    a_rejected_service_credential_is_unavailable_and_reads_keep_working,
    a_service_user_without_a_manager_role_is_permission_denied,
    an_error_body_that_claims_code_0_is_a_bad_response_not_ok,
    copied_error_ids_are_capped,
);
