//! The in-flight limits (`USERMETA_MAX_IN_FLIGHT`, `USERMETA_MAX_IN_FLIGHT_PER_CALLER`) against a ZITADEL that
//! hangs: one caller cannot take every slot, and a caller answered from memory is never refused because calls
//! waiting on ZITADEL hold the slots. Slow calls are held by a long latency fault and released by aborting
//! them; every wait is on what the stand-in received, never on the clock.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use envoy_types::pb::envoy::service::auth::v3::{
    authorization_client::AuthorizationClient, check_response::HttpResponse,
};
use tonic::{Code, Status};
use tonic_types::StatusExt;
use usermeta::{
    api::pb::{GetMyMetadataRequest, ListMetadataRequest},
    authz::AuthzConfig,
    server::Limits,
};
use zitadel_standin::FaultKind;

use crate::support::*;

/// ListMetadata of bob, as `token` (an admin's).
fn list_bob(app: &TestApp, token: &str) -> tonic::Request<ListMetadataRequest> {
    authed(
        ListMetadataRequest {
            user_id: app.bob.clone(),
            organization_id: app.other_org.clone(),
            ..Default::default()
        },
        token,
    )
}

fn mine(token: &str) -> tonic::Request<GetMyMetadataRequest> {
    authed(GetMyMetadataRequest::default(), token)
}

/// `request` with the longest deadline usermeta allows, so a call held by [`HANG`] stays held however slow the
/// machine (the default request timeout would end it after 10 s).
fn held<T>(request: tonic::Request<T>) -> tonic::Request<T> {
    with_deadline(request, Duration::from_secs(60))
}

/// A usermeta with `max_in_flight` slots in front of `app`'s stand-in, serving Envoy's Check and metrics too.
async fn with_check(
    app: &TestApp,
    max_in_flight: usize,
) -> (
    usermeta::api::pb::user_metadata_service_client::UserMetadataServiceClient<
        tonic::transport::Channel,
    >,
    AuthorizationClient<tonic::transport::Channel>,
    TestApp,
) {
    let spawned = app
        .another()
        .limits(Limits {
            max_in_flight,
            ..Limits::default()
        })
        .ext_authz(AuthzConfig::default())
        .metrics()
        .spawn()
        .await;
    (
        spawned.client.clone(),
        authz_client(spawned.authz_addr()).await,
        spawned,
    )
}

#[tokio::test]
async fn one_caller_cannot_take_every_in_flight_slot() {
    let app = TestApp::spawn().await;
    // Eight slots; a caller's share is by default an eighth of them: one.
    let other = app
        .another()
        .limits(Limits {
            max_in_flight: 8,
            ..Limits::default()
        })
        .spawn()
        .await;
    let client = other.client.clone();
    // The admin is identified (in memory); then ZITADEL's management API hangs.
    client
        .clone()
        .get_my_metadata(mine(&app.admin_token))
        .await
        .unwrap();
    app.standin
        .push_fault(fault("/management/", None, FaultKind::Latency(HANG)));
    app.standin.clear_requests();

    // The admin sends eight slow calls at once.
    let refused: Arc<Mutex<Vec<Status>>> = Arc::default();
    let hog: Vec<_> = (0..8)
        .map(|_| {
            let mut client = client.clone();
            let request = held(list_bob(&app, &app.admin_token));
            let refused = Arc::clone(&refused);
            tokio::spawn(async move {
                if let Err(status) = client.list_metadata(request).await {
                    refused.lock().unwrap().push(status);
                }
            })
        })
        .collect();
    // Each one either reached ZITADEL (and hangs there) or was refused.
    until("eight calls reached ZITADEL or were refused", || {
        app.management_requests().len() + refused.lock().unwrap().len() == 8
    })
    .await;

    // Another caller, not in memory (its token needs userinfo, which answers), is served.
    let answer = client.clone().get_my_metadata(mine(&app.alice_token)).await;
    assert!(answer.is_ok(), "another caller was refused: {answer:?}");

    // The admin holds its share (one slot); its other calls were refused at once, naming the limit.
    assert_eq!(app.management_requests().len(), 1);
    let refused = refused.lock().unwrap().clone();
    assert_eq!(refused.len(), 7);
    for status in &refused {
        assert_status(status, Code::ResourceExhausted, "CALLER_OVERLOADED");
        let info = status.get_details_error_info().expect("ErrorInfo");
        assert_eq!(info.metadata["max_in_flight_per_caller"], "1");
        assert_eq!(
            info.metadata["setting"],
            "USERMETA_MAX_IN_FLIGHT_PER_CALLER"
        );
        assert!(status.get_details_retry_info().is_some(), "{status:?}");
        assert!(
            status
                .message()
                .contains("USERMETA_MAX_IN_FLIGHT_PER_CALLER"),
            "{}",
            status.message()
        );
        assert!(!status.message().contains(&app.admin_token));
    }
    // Every RPC passes the door (token, rate limit, validation) before it is counted: an invalid request of
    // the admin's is refused for what it is, not for the slot its other call holds.
    let invalid = client
        .clone()
        .list_metadata(authed(
            ListMetadataRequest {
                user_id: "not a user id".to_owned(),
                ..Default::default()
            },
            &app.admin_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(invalid.code(), Code::InvalidArgument, "{invalid:?}");
    assert_eq!(violated_fields(&invalid), ["user_id"]);
    assert_eq!(app.management_requests().len(), 1);

    // The held call, once given up by its client, frees the admin's slot.
    for call in hog {
        call.abort();
    }
    app.standin.clear_faults();
    eventually("the slot is freed", || {
        let mut client = client.clone();
        let app = &app;
        async move {
            match client.list_metadata(list_bob(app, &app.admin_token)).await {
                Ok(_) => Some(()),
                Err(status) if reason(&status).as_deref() == Some("CALLER_OVERLOADED") => None,
                Err(status) => panic!("{status:?}"),
            }
        }
    })
    .await;
}

#[tokio::test]
async fn callers_answered_from_memory_are_never_shed() {
    let app = TestApp::spawn().await;
    // Two slots, shared by the metadata API and Envoy's Check.
    let (client, authz, spawned) = with_check(&app, 2).await;

    // Alice and two admin tokens are identified (in memory).
    let second_admin = app.standin.issue_token(&app.admin, FULL_SCOPES);
    for token in [&app.alice_token, &app.admin_token, &second_admin] {
        client.clone().get_my_metadata(mine(token)).await.unwrap();
    }
    // ZITADEL's management API hangs; one slow call per admin token takes both slots.
    app.standin
        .push_fault(fault("/management/", None, FaultKind::Latency(HANG)));
    app.standin.clear_requests();
    let slow: Vec<_> = [&app.admin_token, &second_admin]
        .into_iter()
        .map(|token| {
            let mut client = client.clone();
            let request = held(list_bob(&app, token));
            tokio::spawn(async move { client.list_metadata(request).await })
        })
        .collect();
    until("two management calls are held", || {
        app.management_requests().len() == 2
    })
    .await;

    // Alice is answered from memory, by the metadata API and by Check.
    let answer = client.clone().get_my_metadata(mine(&app.alice_token)).await;
    assert!(answer.is_ok(), "a cached caller was shed: {answer:?}");
    let check = authz.clone().check(check_request(&app.alice_token)).await;
    let check = check.expect("a cached Check is answered").into_inner();
    assert_eq!(
        check.status.map(|status| status.code),
        Some(Code::Ok as i32)
    );
    assert_eq!(
        app.standin.requests().len(),
        2,
        "nothing more reached ZITADEL"
    );

    // A caller that would wait on ZITADEL is still refused at the global limit, on both listeners.
    let fresh = app.standin.issue_token(&app.bob, FULL_SCOPES);
    let status = client
        .clone()
        .get_my_metadata(mine(&fresh))
        .await
        .unwrap_err();
    assert_status(&status, Code::ResourceExhausted, "OVERLOADED");
    let info = status.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.metadata["max_in_flight"], "2");
    assert_eq!(info.metadata["setting"], "USERMETA_MAX_IN_FLIGHT");
    assert!(status.get_details_retry_info().is_some());
    let status = authz
        .clone()
        .check(check_request(&fresh))
        .await
        .unwrap_err();
    assert_status(&status, Code::ResourceExhausted, "OVERLOADED");
    assert_eq!(
        app.standin.requests().len(),
        2,
        "a shed call reaches nobody"
    );

    let scraped = scrape(spawned.metrics_addr()).await;
    for series in [
        r#"usermeta_calls_shed_total{limit="max_in_flight"}"#,
        "usermeta_calls_waiting_on_zitadel",
    ] {
        assert!(
            scraped.lines().any(|line| line.starts_with(series)),
            "no {series} in:\n{scraped}"
        );
    }
    for call in slow {
        call.abort();
    }
}

#[tokio::test]
async fn check_and_the_metadata_api_share_each_callers_limit() {
    let app = TestApp::spawn().await;
    // Eight slots; a caller's share is one.
    let (client, authz, spawned) = with_check(&app, 8).await;
    client
        .clone()
        .get_my_metadata(mine(&app.alice_token))
        .await
        .unwrap();
    // A token usermeta has not seen, while userinfo hangs: its first Check waits on ZITADEL.
    app.standin
        .push_fault(fault("/oidc/v1/userinfo", None, FaultKind::Latency(HANG)));
    app.standin.clear_requests();
    let fresh = app.standin.issue_token(&app.bob, FULL_SCOPES);
    let waiting = {
        let mut authz = authz.clone();
        let request = held(tonic::Request::new(check_request(&fresh)));
        tokio::spawn(async move { authz.check(request).await })
    };
    until("the userinfo call is held", || app.userinfo_requests() == 1).await;

    // Its next Check is denied with 429 and a Retry-After, its next metadata call refused: one share for both.
    let response = authz
        .clone()
        .check(check_request(&fresh))
        .await
        .expect("a denial, not a failed call")
        .into_inner();
    assert_eq!(
        response.status.as_ref().map(|status| status.code),
        Some(Code::ResourceExhausted as i32)
    );
    let Some(HttpResponse::DeniedResponse(denial)) = &response.http_response else {
        panic!("expected a denial: {response:?}");
    };
    assert_eq!(denial.status.as_ref().map(|status| status.code), Some(429));
    assert!(denial.body.contains("USERMETA_MAX_IN_FLIGHT_PER_CALLER"));
    assert!(
        denial
            .headers
            .iter()
            .filter_map(|option| option.header.as_ref())
            .any(|header| header.key == "retry-after" && header.value == "1"),
        "{denial:?}"
    );
    let status = client
        .clone()
        .get_my_metadata(mine(&fresh))
        .await
        .unwrap_err();
    assert_status(&status, Code::ResourceExhausted, "CALLER_OVERLOADED");
    assert_eq!(app.userinfo_requests(), 1, "a refused call reaches nobody");

    // A caller in memory is answered by Check as ever.
    let check = authz
        .clone()
        .check(check_request(&app.alice_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        check.status.map(|status| status.code),
        Some(Code::Ok as i32)
    );
    let scraped = scrape(spawned.metrics_addr()).await;
    let series = r#"usermeta_calls_shed_total{limit="max_in_flight_per_caller"}"#;
    assert!(
        scraped.lines().any(|line| line.starts_with(series)),
        "no {series} in:\n{scraped}"
    );
    waiting.abort();
}
