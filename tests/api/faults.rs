//! Fault injection through the stand-in: each fault's status code, how long the caller waited, and what
//! reached ZITADEL (retry counts within the budget, nothing sent while the breaker is open).

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    http::StatusCode,
    response::IntoResponse,
    routing::{delete, get, post},
};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_types::StatusExt;
use usermeta::{
    api::{
        RequestLimits,
        pb::{
            DeleteMetadataRequest, GetMyMetadataRequest, ListMetadataRequest, SetMetadataRequest,
        },
    },
    policy::Policy,
    server::Limits,
};
use usermeta_zitadel::Resilience;
use zitadel_standin::FaultKind;

use crate::support::*;

#[tokio::test]
async fn latency_past_the_callers_deadline_is_deadline_exceeded_in_time() {
    let mut app = TestApp::spawn().await;
    app.standin.push_fault(fault(
        "/oidc/v1/userinfo",
        None,
        FaultKind::Latency(Duration::from_secs(3)),
    ));
    // usermeta keeps a tenth of the caller's timeout to get its answer back before the caller gives up.
    let mut request = app.get_mine();
    request.set_timeout(Duration::from_secs(1));
    let started = Instant::now();
    let status = app.client.get_my_metadata(request).await.unwrap_err();
    let waited = started.elapsed();
    assert_status(&status, Code::DeadlineExceeded, "DEADLINE_EXCEEDED");
    assert!(waited < Duration::from_secs(1), "answered after {waited:?}");
    assert!(
        waited >= Duration::from_millis(850),
        "answered after {waited:?}"
    );
    assert_eq!(app.userinfo_requests(), 1, "no retry past the deadline");

    // A management call gets only what is left of the deadline, and is not retried after it.
    app.standin.clear_faults();
    app.standin.push_fault(fault(
        "/management/",
        None,
        FaultKind::Latency(Duration::from_secs(3)),
    ));
    app.standin.clear_requests();
    let mut request = authed(
        SetMetadataRequest {
            user_id: app.bob.clone(),
            organization_id: app.other_org.clone(),
            entries: vec![entry("plan", text("gold"))],
        },
        &app.admin_token,
    );
    request.set_timeout(Duration::from_secs(1));
    let started = Instant::now();
    let status = app.client.set_metadata(request).await.unwrap_err();
    let waited = started.elapsed();
    assert_status(&status, Code::DeadlineExceeded, "DEADLINE_EXCEEDED");
    assert!(waited < Duration::from_secs(1), "answered after {waited:?}");
    assert_eq!(app.management_requests().len(), 1);
}

#[tokio::test]
async fn without_a_caller_deadline_the_request_timeout_applies() {
    let app = TestApp::spawn().await;
    app.standin.push_fault(fault(
        "/oidc/v1/userinfo",
        None,
        FaultKind::Latency(Duration::from_secs(3)),
    ));
    let other = app
        .another()
        .limits(Limits {
            requests: RequestLimits {
                request_timeout: Duration::from_millis(200),
                ..RequestLimits::default()
            },
            ..Limits::default()
        })
        .spawn()
        .await;
    let mut client = other.client.clone();
    let started = Instant::now();
    let status = client.get_my_metadata(app.get_mine()).await.unwrap_err();
    assert_status(&status, Code::DeadlineExceeded, "DEADLINE_EXCEEDED");
    assert!(started.elapsed() < Duration::from_millis(400));
}

#[tokio::test]
async fn a_caller_deadline_beyond_the_maximum_is_cut_to_it() {
    let app = TestApp::spawn().await;
    app.standin.push_fault(fault(
        "/oidc/v1/userinfo",
        None,
        FaultKind::Latency(Duration::from_secs(3)),
    ));
    let other = app
        .another()
        .limits(Limits {
            requests: RequestLimits {
                max_request_timeout: Duration::from_millis(300),
                ..RequestLimits::default()
            },
            ..Limits::default()
        })
        .spawn()
        .await;
    let mut client = other.client.clone();
    let mut request = app.get_mine();
    // Hours, as a hostile or careless caller might ask.
    request
        .metadata_mut()
        .insert("grpc-timeout", "99999999H".parse().unwrap());
    let started = Instant::now();
    let status = client.get_my_metadata(request).await.unwrap_err();
    assert_status(&status, Code::DeadlineExceeded, "DEADLINE_EXCEEDED");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(250) && waited < Duration::from_millis(1500),
        "answered after {waited:?}"
    );
}

#[tokio::test]
async fn a_5xx_burst_on_userinfo_is_retried() {
    let mut app = TestApp::spawn().await;
    app.standin
        .push_fault(fault("/oidc/v1/userinfo", Some(2), FaultKind::Status(503)));
    let answer = app.client.get_my_metadata(app.get_mine()).await;
    assert!(answer.is_ok(), "{answer:?}");
    assert_eq!(app.userinfo_requests(), 3);
}

#[tokio::test]
async fn a_500_is_not_retried() {
    let mut app = TestApp::spawn().await;
    app.standin
        .push_fault(fault("/oidc/v1/userinfo", None, FaultKind::Status(500)));
    let status = app
        .client
        .get_my_metadata(app.get_mine())
        .await
        .unwrap_err();
    assert_status(&status, Code::Unavailable, "ZITADEL_UNAVAILABLE");
    assert_eq!(app.userinfo_requests(), 1);
}

#[tokio::test]
async fn a_5xx_storm_stays_within_the_retry_budget() {
    let app = TestApp::spawn().await;
    let other = app
        .another()
        .no_cache()
        .fast_retries(Resilience {
            breaker_failures: 0,
            ..Resilience::default()
        })
        .spawn()
        .await;
    let mut client = other.client.clone();
    app.standin
        .push_fault(fault("/oidc/v1/userinfo", None, FaultKind::Status(503)));
    app.standin.clear_requests();
    let requests = 100;
    for _ in 0..requests {
        let status = client.get_my_metadata(app.get_mine()).await.unwrap_err();
        assert_status(&status, Code::Unavailable, "ZITADEL_UNAVAILABLE");
    }
    let upstream = app.userinfo_requests();
    let defaults = Resilience::default();
    let bound = requests as f64 * (1.0 + defaults.retry_budget_ratio)
        + f64::from(defaults.retry_budget_floor);
    assert!(
        upstream as f64 <= bound,
        "{upstream} upstream calls for {requests} requests"
    );
    assert!(upstream >= requests, "every request tried once");
}

#[tokio::test]
async fn the_breaker_opens_under_a_storm_fails_fast_and_recovers_without_restart() {
    let app = TestApp::spawn().await;
    let cooldown = Duration::from_millis(300);
    let other = app
        .another()
        .no_cache()
        .fast_retries(Resilience {
            max_attempts: 1,
            breaker_failures: 3,
            breaker_cooldown: cooldown,
            ..Resilience::default()
        })
        .spawn()
        .await;
    let mut client = other.client.clone();
    let addr = other.addr;
    assert_eq!(
        health_of(addr, "usermeta.zitadel.caller").await,
        ServingStatus::Serving
    );
    app.standin
        .push_fault(fault("/oidc/v1/userinfo", None, FaultKind::Status(503)));
    app.standin.clear_requests();
    for _ in 0..3 {
        let status = client.get_my_metadata(app.get_mine()).await.unwrap_err();
        assert_status(&status, Code::Unavailable, "ZITADEL_UNAVAILABLE");
    }
    assert_eq!(app.userinfo_requests(), 3);

    // Open: answered without asking ZITADEL (nothing sent), with a hint when to retry.
    let status = client.get_my_metadata(app.get_mine()).await.unwrap_err();
    assert_status(&status, Code::Unavailable, "ZITADEL_CIRCUIT_OPEN");
    let retry = status.get_details_retry_info().expect("RetryInfo");
    assert!(retry.retry_delay.unwrap() <= cooldown);
    assert_eq!(app.userinfo_requests(), 3, "nothing sent while open");
    eventually_health(addr, "usermeta.zitadel.caller", ServingStatus::NotServing).await;
    assert_eq!(health_of(addr, "").await, ServingStatus::Serving);
    assert_eq!(
        health_of(addr, "usermeta.zitadel.management").await,
        ServingStatus::Serving
    );

    // ZITADEL is back; after the cool-down a probe closes the breaker.
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
async fn zitadel_down_then_back_recovers_without_restart() {
    let app = TestApp::spawn().await;
    let other = app
        .another()
        .no_cache()
        .fast_retries(Resilience {
            breaker_failures: 2,
            breaker_cooldown: Duration::from_millis(200),
            ..Resilience::default()
        })
        .spawn()
        .await;
    let mut client = other.client.clone();
    app.standin
        .push_fault(fault("", None, FaultKind::DropConnection));
    for _ in 0..3 {
        let status = client.get_my_metadata(app.get_mine()).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    }
    app.standin.clear_faults();
    tokio::time::sleep(Duration::from_millis(250)).await;
    let answer = client.get_my_metadata(app.get_mine()).await;
    assert!(answer.is_ok(), "{answer:?}");
}

#[tokio::test]
async fn zitadel_429_is_resource_exhausted_with_retry_info_and_not_retried() {
    let mut app = TestApp::spawn().await;
    app.standin.push_fault(fault(
        "/oidc/v1/userinfo",
        None,
        FaultKind::TooManyRequests {
            retry_after_secs: Some(7),
        },
    ));
    let status = app
        .client
        .get_my_metadata(app.get_mine())
        .await
        .unwrap_err();
    assert_status(&status, Code::ResourceExhausted, "ZITADEL_RATE_LIMITED");
    let retry = status.get_details_retry_info().expect("RetryInfo");
    assert_eq!(retry.retry_delay, Some(Duration::from_secs(7)));
    assert_eq!(app.userinfo_requests(), 1);
}

#[tokio::test]
async fn dropped_connections_are_retried_for_reads_and_idempotent_writes() {
    let mut app = TestApp::spawn().await;
    app.standin
        .push_fault(fault("/oidc/", Some(1), FaultKind::DropConnection));
    let answer = app.client.get_my_metadata(app.get_mine()).await;
    assert!(answer.is_ok(), "{answer:?}");
    assert_eq!(app.userinfo_requests(), 2);

    // Management list.
    app.standin
        .push_fault(fault("/management/", Some(1), FaultKind::DropConnection));
    let list = ListMetadataRequest {
        user_id: app.bob.clone(),
        organization_id: app.other_org.clone(),
        ..Default::default()
    };
    let answer = app.list_metadata(&app.admin_token, list).await;
    assert!(answer.is_ok(), "{answer:?}");
    assert_eq!(app.management_requests().len(), 2);

    // A set of the same value may be repeated.
    app.standin.clear_requests();
    app.standin
        .push_fault(fault("/management/", Some(1), FaultKind::DropConnection));
    let set = SetMetadataRequest {
        user_id: app.bob.clone(),
        organization_id: app.other_org.clone(),
        entries: vec![entry("plan", text("gold"))],
    };
    let answer = app.set_metadata(&app.admin_token, set).await;
    assert!(answer.is_ok(), "{answer:?}");
    assert_eq!(app.management_requests().len(), 2);
    assert_eq!(app.standin.metadata_of(&app.bob)["plan"], b"gold");
}

#[tokio::test]
async fn a_malformed_body_is_unavailable_and_not_retried() {
    let mut app = TestApp::spawn().await;
    app.standin
        .push_fault(fault("/oidc/", None, FaultKind::MalformedJson));
    let status = app
        .client
        .get_my_metadata(app.get_mine())
        .await
        .unwrap_err();
    assert_status(&status, Code::Unavailable, "ZITADEL_BAD_RESPONSE");
    assert_eq!(app.userinfo_requests(), 1);
}

/// A scripted management API: userinfo names `admin`; a remove first fails with 503 (it "may have landed"),
/// then answers NOT_FOUND; listing shows `left` keys.
async fn flaky_remove(left: &'static [&'static str]) -> (String, Arc<AtomicUsize>) {
    let removes = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&removes);
    let listed = serde_json::json!({
        "details": {"totalResult": left.len().to_string()},
        "result": left.iter().map(|k| serde_json::json!({"key": k, "value": "MQ=="})).collect::<Vec<_>>(),
    });
    let router = Router::new()
        .route(
            "/oidc/v1/userinfo",
            get(|| async { Json(serde_json::json!({"sub": "admin"})) }),
        )
        .route(
            "/management/v1/users/{user}/metadata/_search",
            post(move || {
                let listed = listed.clone();
                async move { Json(listed) }
            }),
        )
        .route(
            "/management/v1/users/{user}/metadata/{key}",
            delete(move || {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                async move {
                    if n == 0 {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            Json(serde_json::json!({"code": 14, "message": "unavailable"})),
                        )
                            .into_response()
                    } else {
                        (
                            StatusCode::NOT_FOUND,
                            Json(serde_json::json!({"code": 5, "message": "Metadata not found (META-u3k4t)"})),
                        )
                            .into_response()
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (url, removes)
}

#[tokio::test]
async fn a_retried_delete_that_finds_the_key_gone_counts_as_done() {
    let (url, removes) = flaky_remove(&[]).await;
    let other = TestApp::builder()
        .zitadel_url(&url)
        .pat("pat")
        .policy(Policy::new(["admin".to_owned()], vec![]))
        .spawn()
        .await;
    let delete = DeleteMetadataRequest {
        user_id: "170848145649959169".into(),
        keys: vec!["plan".into()],
        ..Default::default()
    };
    let answer = other
        .client
        .clone()
        .delete_metadata(authed(delete, "t"))
        .await;
    assert!(answer.is_ok(), "{answer:?}");
    assert_eq!(removes.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_retried_delete_whose_key_is_still_there_did_not_land() {
    // NOT_FOUND yet the key is listed: the 503 attempt did not remove it; the NOT_FOUND stands.
    let (url, _removes) = flaky_remove(&["plan"]).await;
    let other = TestApp::builder()
        .zitadel_url(&url)
        .pat("pat")
        .policy(Policy::new(["admin".to_owned()], vec![]))
        .spawn()
        .await;
    let delete = DeleteMetadataRequest {
        user_id: "170848145649959169".into(),
        keys: vec!["plan".into()],
        ..Default::default()
    };
    let status = other
        .client
        .clone()
        .delete_metadata(authed(delete, "t"))
        .await
        .unwrap_err();
    assert_status(&status, Code::NotFound, "METADATA_NOT_FOUND");
}

#[tokio::test]
async fn over_the_in_flight_limit_calls_are_shed_with_resource_exhausted() {
    let app = TestApp::spawn().await;
    let other = app
        .another()
        .no_cache()
        .fast_retries(Resilience::default())
        .limits(Limits {
            max_in_flight: 2,
            ..Limits::default()
        })
        .spawn()
        .await;
    let client = other.client.clone();
    let addr = other.addr;
    app.standin.push_fault(fault(
        "/oidc/v1/userinfo",
        None,
        FaultKind::Latency(Duration::from_millis(400)),
    ));
    // Two callers (one caller's share of two slots is one).
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let mut client = client.clone();
            let token = app.standin.issue_token(&app.alice, FULL_SCOPES);
            let request = authed(GetMyMetadataRequest::default(), &token);
            tokio::spawn(async move { client.get_my_metadata(request).await })
        })
        .collect();
    until("two userinfo calls are under way", || {
        app.userinfo_requests() >= 2
    })
    .await;
    let status = client
        .clone()
        .get_my_metadata(app.get_mine())
        .await
        .unwrap_err();
    // Not queued behind them: refused while both still wait on ZITADEL.
    assert!(slow.iter().all(|call| !call.is_finished()), "not queued");
    assert_status(&status, Code::ResourceExhausted, "OVERLOADED");
    assert_eq!(app.userinfo_requests(), 2, "a shed call reaches nobody");
    assert_eq!(health_of(addr, "").await, ServingStatus::Serving);
    for call in slow {
        assert!(call.await.unwrap().is_ok());
    }
    assert!(client.clone().get_my_metadata(app.get_mine()).await.is_ok());
}

#[tokio::test]
async fn a_caller_over_its_rate_limit_gets_resource_exhausted_with_retry_info() {
    let app = TestApp::spawn().await;
    let other = app
        .another()
        .limits(Limits {
            requests: RequestLimits {
                caller_rate: 1,
                caller_burst: 2,
                ..RequestLimits::default()
            },
            ..Limits::default()
        })
        .spawn()
        .await;
    let mut client = other.client.clone();
    for _ in 0..2 {
        assert!(client.get_my_metadata(app.get_mine()).await.is_ok());
    }
    let status = client.get_my_metadata(app.get_mine()).await.unwrap_err();
    assert_status(&status, Code::ResourceExhausted, "CALLER_RATE_LIMITED");
    let retry = status.get_details_retry_info().expect("RetryInfo");
    assert!(retry.retry_delay.unwrap() <= Duration::from_secs(1));
    assert!(!status.message().contains(&app.alice_token));
    // Another caller is not affected.
    let other = authed(GetMyMetadataRequest::default(), &app.admin_token);
    assert!(client.get_my_metadata(other).await.is_ok());
}

#[tokio::test]
async fn shutdown_under_load_lets_accepted_calls_finish() {
    let app = TestApp::spawn().await;
    let other = app
        .another()
        .no_cache()
        .fast_retries(Resilience::default())
        .spawn()
        .await;
    let client = other.client.clone();
    let stop = other.stop;
    app.standin.push_fault(fault(
        "/oidc/v1/userinfo",
        None,
        FaultKind::Latency(Duration::from_millis(300)),
    ));
    let calls: Vec<_> = (0..5)
        .map(|_| {
            let mut client = client.clone();
            let request = app.get_mine();
            tokio::spawn(async move { client.get_my_metadata(request).await })
        })
        .collect();
    until("five userinfo calls are under way", || {
        app.userinfo_requests() >= 5
    })
    .await;
    stop.send(()).unwrap();
    for call in calls {
        let answer = call.await.unwrap();
        assert!(answer.is_ok(), "{answer:?}");
    }
}

#[tokio::test]
async fn messages_over_the_size_limit_are_refused_before_any_upstream_call() {
    let app = TestApp::spawn().await;
    let other = app
        .another()
        .limits(Limits {
            max_message_bytes: 64 * 1024,
            ..Limits::default()
        })
        .spawn()
        .await;
    let mut client = other.client.clone();
    app.standin.clear_requests();
    let big = SetMetadataRequest {
        entries: vec![entry("profile.big", binary(&[7; 100_000]))],
        ..Default::default()
    };
    let status = client
        .set_metadata(authed(big, &app.alice_token))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    app.assert_no_upstream_request();

    // The default limit fits several maximal values (two here: the stand-in takes bodies up to 2 MB).
    let app = app;
    let large = SetMetadataRequest {
        entries: (0..2)
            .map(|i| entry(&format!("profile.v{i}"), binary(&[i; 500_000])))
            .collect(),
        ..Default::default()
    };
    let answer = app.set_metadata(&app.alice_token, large).await;
    assert!(answer.is_ok(), "{answer:?}");
}

#[tokio::test]
async fn bad_upstream_input_gives_clear_errors() {
    // The metadata claim is not an object: a clear UNAVAILABLE, no panic.
    let (url, _calls) = raw_userinfo(serde_json::json!({
        "sub": "1",
        "urn:zitadel:iam:user:metadata": "not an object"
    }))
    .await;
    let other = TestApp::builder()
        .zitadel_url(&url)
        .pat("pat")
        .policy(Policy::default())
        .spawn()
        .await;
    let status = other
        .client
        .clone()
        .get_my_metadata(authed(GetMyMetadataRequest::default(), "t"))
        .await
        .unwrap_err();
    assert_status(&status, Code::Unavailable, "ZITADEL_BAD_RESPONSE");

    // Missing fields: no claims at all means no user, not a crash.
    let (url, _calls) = raw_userinfo(serde_json::json!({})).await;
    let other = TestApp::builder()
        .zitadel_url(&url)
        .pat("pat")
        .policy(Policy::default())
        .spawn()
        .await;
    let status = other
        .client
        .clone()
        .get_my_metadata(authed(GetMyMetadataRequest::default(), "t"))
        .await
        .unwrap_err();
    assert_status(&status, Code::Unauthenticated, "TOKEN_WITHOUT_SUBJECT");
}

#[tokio::test]
async fn a_huge_upstream_body_is_refused_not_buffered_without_bound() {
    let router = Router::new().route(
        "/oidc/v1/userinfo",
        get(|| async {
            // 65 MiB of JSON whitespace: over usermeta's 64 MiB cap.
            let chunk = bytes::Bytes::from(vec![b' '; 1024 * 1024]);
            let stream =
                futures::stream::iter((0..65).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
            axum::body::Body::from_stream(stream)
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    let other = TestApp::builder()
        .zitadel_url(&url)
        .pat("pat")
        .policy(Policy::default())
        .spawn()
        .await;
    let status = other
        .client
        .clone()
        .get_my_metadata(authed(GetMyMetadataRequest::default(), "t"))
        .await
        .unwrap_err();
    assert_status(&status, Code::Unavailable, "ZITADEL_BAD_RESPONSE");
    assert!(status.message().contains("larger than"), "{status:?}");
}
