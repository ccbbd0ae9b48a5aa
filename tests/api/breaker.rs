//! The circuit breaker counts requests (after their retries) over a rolling window: a few failed requests
//! never stop the next caller from reaching ZITADEL, and a 429 that follows them is seen; a sustained outage
//! opens it after `USERMETA_BREAKER_FAILURES` failed requests, ZITADEL then sees nothing until one probe
//! closes it again.

use std::time::Duration;

use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_types::StatusExt;
use usermeta::api::pb::ListMetadataRequest;
use usermeta_zitadel::Resilience;
use zitadel_standin::FaultKind;

use crate::support::*;

#[tokio::test]
async fn two_or_three_failed_requests_do_not_stop_the_next_caller_from_reaching_zitadel() {
    let app = TestApp::spawn().await;
    let other = app
        .another()
        .no_cache()
        .fast_retries(Resilience::default())
        .spawn()
        .await;
    let mut client = other.client.clone();
    let addr = other.addr;
    let attempts = Resilience::default().max_attempts;
    for failed in [2, 3] {
        app.standin.clear_requests();
        // Every attempt of `failed` requests fails; the request after them finds ZITADEL well again.
        app.standin.push_fault(fault(
            "/oidc/v1/userinfo",
            Some(failed * attempts),
            FaultKind::Status(503),
        ));
        for _ in 0..failed {
            let status = client.get_my_metadata(app.get_mine()).await.unwrap_err();
            assert_status(&status, Code::Unavailable, "ZITADEL_UNAVAILABLE");
        }
        let answer = client.get_my_metadata(app.get_mine()).await;
        assert!(answer.is_ok(), "after {failed} failed requests: {answer:?}");
        assert_eq!(
            app.userinfo_requests(),
            (failed * attempts + 1) as usize,
            "each failed request was tried {attempts} times, the next one reached ZITADEL"
        );
        assert_eq!(
            health_of(addr, "usermeta.zitadel.caller").await,
            ServingStatus::Serving
        );
    }

    // The management group alike.
    let list = || ListMetadataRequest {
        user_id: app.bob.clone(),
        organization_id: app.other_org.clone(),
        ..Default::default()
    };
    app.standin.clear_requests();
    app.standin.push_fault(fault(
        "/management/",
        Some(3 * attempts),
        FaultKind::Status(503),
    ));
    for _ in 0..3 {
        let status = client
            .list_metadata(authed(list(), &app.admin_token))
            .await
            .unwrap_err();
        assert_status(&status, Code::Unavailable, "ZITADEL_UNAVAILABLE");
    }
    let answer = client.list_metadata(authed(list(), &app.admin_token)).await;
    assert!(answer.is_ok(), "{answer:?}");
    assert_eq!(app.management_requests().len(), (3 * attempts + 1) as usize);
}

#[tokio::test]
async fn a_429_right_after_failed_requests_is_resource_exhausted_with_retry_info() {
    // The defaults, as deployed.
    let mut app = TestApp::spawn().await;
    let attempts = Resilience::default().max_attempts;
    app.standin.push_fault(fault(
        "/oidc/v1/userinfo",
        Some(3 * attempts),
        FaultKind::Status(503),
    ));
    app.standin.push_fault(fault(
        "/oidc/v1/userinfo",
        None,
        FaultKind::TooManyRequests {
            retry_after_secs: Some(7),
        },
    ));
    for _ in 0..3 {
        let status = app
            .client
            .get_my_metadata(app.get_mine())
            .await
            .unwrap_err();
        assert_status(&status, Code::Unavailable, "ZITADEL_UNAVAILABLE");
    }
    // ZITADEL's 429 reaches the caller, with its Retry-After; being answered, it is no breaker failure.
    for _ in 0..10 {
        let status = app
            .client
            .get_my_metadata(app.get_mine())
            .await
            .unwrap_err();
        assert_status(&status, Code::ResourceExhausted, "ZITADEL_RATE_LIMITED");
        let retry = status.get_details_retry_info().expect("RetryInfo");
        assert_eq!(retry.retry_delay, Some(Duration::from_secs(7)));
    }
    assert_eq!(
        app.userinfo_requests(),
        (3 * attempts + 10) as usize,
        "every request reached ZITADEL; 429s are not retried"
    );
}

#[tokio::test]
async fn a_sustained_outage_opens_the_breaker_quickly_and_a_probe_closes_it() {
    let app = TestApp::spawn().await;
    let cooldown = Duration::from_secs(1);
    let other = app
        .another()
        .no_cache()
        .fast_retries(Resilience {
            breaker_cooldown: cooldown,
            ..Resilience::default()
        })
        .spawn()
        .await;
    let mut client = other.client.clone();
    let addr = other.addr;
    app.standin
        .push_fault(fault("/oidc/v1/userinfo", None, FaultKind::Status(503)));
    app.standin.clear_requests();

    // ZITADEL fails everything: after USERMETA_BREAKER_FAILURES failed requests the breaker is open.
    let failures = Resilience::default().breaker_failures as usize;
    let mut failed = 0;
    let open = loop {
        let status = client.get_my_metadata(app.get_mine()).await.unwrap_err();
        if reason(&status).as_deref() == Some("ZITADEL_CIRCUIT_OPEN") {
            break status;
        }
        assert_status(&status, Code::Unavailable, "ZITADEL_UNAVAILABLE");
        failed += 1;
        assert!(
            failed <= failures,
            "still closed after {failed} failed requests"
        );
    };
    assert_eq!(failed, failures);
    assert_eq!(open.code(), Code::Unavailable);
    let retry = open.get_details_retry_info().expect("RetryInfo");
    assert!(retry.retry_delay.unwrap() <= cooldown);
    eventually_health(addr, "usermeta.zitadel.caller", ServingStatus::NotServing).await;

    // Open: answered without asking ZITADEL.
    let sent = app.userinfo_requests();
    for _ in 0..5 {
        let status = client.get_my_metadata(app.get_mine()).await.unwrap_err();
        assert_status(&status, Code::Unavailable, "ZITADEL_CIRCUIT_OPEN");
    }
    assert_eq!(app.userinfo_requests(), sent, "nothing sent while open");

    // Half-open while ZITADEL is still down: one probe, one attempt, and open again.
    tokio::time::sleep(retry.retry_delay.unwrap()).await;
    let status = client.get_my_metadata(app.get_mine()).await.unwrap_err();
    assert_status(&status, Code::Unavailable, "ZITADEL_UNAVAILABLE");
    assert_eq!(
        app.userinfo_requests(),
        sent + 1,
        "the probe is one attempt"
    );
    let status = client.get_my_metadata(app.get_mine()).await.unwrap_err();
    assert_status(&status, Code::Unavailable, "ZITADEL_CIRCUIT_OPEN");
    let retry = status.get_details_retry_info().expect("RetryInfo");

    // ZITADEL is back: after the cool-down the probe succeeds and closes the breaker.
    app.standin.clear_faults();
    tokio::time::sleep(retry.retry_delay.unwrap()).await;
    let answer = client.get_my_metadata(app.get_mine()).await;
    assert!(answer.is_ok(), "{answer:?}");
    eventually_health(addr, "usermeta.zitadel.caller", ServingStatus::Serving).await;
    for _ in 0..3 {
        assert!(client.get_my_metadata(app.get_mine()).await.is_ok());
    }
}

#[tokio::test]
async fn failures_among_good_requests_open_the_breaker_only_past_the_failure_ratio() {
    let app = TestApp::spawn().await;
    // A long window, so a slow machine cannot age the good requests out mid-test; one attempt per request,
    // so the retry budget does not decide how many of the injected faults a request meets.
    let other = app
        .another()
        .no_cache()
        .fast_retries(Resilience {
            max_attempts: 1,
            breaker_window: Duration::from_secs(120),
            ..Resilience::default()
        })
        .spawn()
        .await;
    let mut client = other.client.clone();
    let good = 30;
    for _ in 0..good {
        assert!(client.get_my_metadata(app.get_mine()).await.is_ok());
    }
    // Ten failed requests among thirty good ones: more than USERMETA_BREAKER_FAILURES, below half.
    app.standin
        .push_fault(fault("/oidc/v1/userinfo", Some(10), FaultKind::Status(503)));
    for _ in 0..10 {
        let status = client.get_my_metadata(app.get_mine()).await.unwrap_err();
        assert_status(&status, Code::Unavailable, "ZITADEL_UNAVAILABLE");
    }
    let answer = client.get_my_metadata(app.get_mine()).await;
    assert!(answer.is_ok(), "{answer:?}");

    // An outage that goes on: open once half the window's requests failed (31 good, so the 31st failure).
    app.standin
        .push_fault(fault("/oidc/v1/userinfo", None, FaultKind::Status(503)));
    let mut failed = 10;
    loop {
        let status = client.get_my_metadata(app.get_mine()).await.unwrap_err();
        if reason(&status).as_deref() == Some("ZITADEL_CIRCUIT_OPEN") {
            break;
        }
        assert_status(&status, Code::Unavailable, "ZITADEL_UNAVAILABLE");
        failed += 1;
        assert!(
            failed <= good + 1,
            "still closed after {failed} failed requests"
        );
    }
    assert_eq!(failed, good + 1);
}
