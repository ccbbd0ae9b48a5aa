//! Metrics, trace propagation, request ids and graceful shutdown, observed from outside: a `/metrics` scrape,
//! the headers ZITADEL received, response metadata, log lines, and health during a shutdown under traffic.

use std::{net::SocketAddr, time::Duration};

use secrecy::SecretString;
use tonic::{Code, transport::Channel};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use usermeta::api::pb::{GetMyMetadataRequest, SetMetadataRequest};
use usermeta_zitadel::ServiceCredential;
use zitadel_standin::{Fault, FaultKind, ManagerRole};

use crate::support::*;

async fn scrape(addr: SocketAddr) -> String {
    let response = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    response.text().await.unwrap()
}

#[track_caller]
fn assert_series(text: &str, series: &str) {
    assert!(
        text.lines().any(|line| line.starts_with(series)),
        "no series `{series}` in:\n{text}"
    );
}

#[tokio::test]
async fn a_scrape_after_traffic_shows_calls_upstream_cache_and_latency() {
    let app = TestApp::spawn().await;
    let observed = app.another().metrics().spawn().await;
    let mut client = observed.client.clone();
    // A miss, then a hit.
    for _ in 0..2 {
        client
            .get_my_metadata(authed(GetMyMetadataRequest::default(), &app.alice_token))
            .await
            .unwrap();
    }
    // No token: refused before any upstream call (a trailers-only response).
    let refused = client
        .get_my_metadata(tonic::Request::new(GetMyMetadataRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    // A token ZITADEL rejects: a 401 upstream, then remembered.
    for _ in 0..2 {
        let status = client
            .get_my_metadata(authed(GetMyMetadataRequest::default(), "not-a-token"))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
    }
    // A management call.
    client
        .set_metadata(authed(
            SetMetadataRequest {
                user_id: app.alice.clone(),
                entries: vec![entry("profile.theme", text("dark"))],
                ..Default::default()
            },
            &app.admin_token,
        ))
        .await
        .unwrap();

    // A management call with client credentials: the token request is counted as a refresh.
    let service_user =
        app.standin
            .create_service_user(&app.org, "usermeta-cc", ManagerRole::IamOwner);
    let (client_id, secret) = app.standin.add_client_secret(&service_user);
    let cc = app
        .another()
        .credential(ServiceCredential::ClientCredentials {
            client_id,
            secret: SecretString::from(secret),
        })
        .spawn()
        .await;
    cc.client
        .clone()
        .set_metadata(authed(
            SetMetadataRequest {
                user_id: app.alice.clone(),
                entries: vec![entry("profile.theme", text("light"))],
                ..Default::default()
            },
            &app.admin_token,
        ))
        .await
        .unwrap();

    let text = scrape(observed.metrics_addr.expect("metrics are on")).await;
    let get = "method=\"usermeta.v1.UserMetadataService/GetMyMetadata\"";
    for series in [
        format!("usermeta_grpc_requests_total{{{get},code=\"OK\"}}"),
        format!("usermeta_grpc_requests_total{{{get},code=\"UNAUTHENTICATED\"}}"),
        "usermeta_grpc_requests_total{method=\"usermeta.v1.UserMetadataService/SetMetadata\",code=\"OK\"}".into(),
        format!("usermeta_grpc_request_duration_seconds_bucket{{{get},le=\"0.005\"}}"),
        format!("usermeta_grpc_request_duration_seconds_count{{{get}}}"),
        "usermeta_grpc_requests_in_flight ".into(),
        "usermeta_upstream_requests_total{endpoint=\"userinfo\",status=\"200\"}".into(),
        "usermeta_upstream_requests_total{endpoint=\"userinfo\",status=\"401\"}".into(),
        "usermeta_upstream_requests_total{endpoint=\"management.".into(),
        "usermeta_upstream_request_duration_seconds_bucket{endpoint=\"userinfo\",le=\"0.1\"}"
            .into(),
        "usermeta_cache_lookups_total{result=\"hit\"}".into(),
        "usermeta_cache_lookups_total{result=\"miss\"}".into(),
        "usermeta_cache_lookups_total{result=\"negative_hit\"}".into(),
        "usermeta_service_token_refreshes_total{outcome=\"ok\"}".into(),
        "usermeta_upstream_requests_total{endpoint=\"oauth.Token\",status=\"200\"}".into(),
        "# TYPE usermeta_grpc_request_duration_seconds histogram".into(),
        "# HELP usermeta_grpc_requests_total ".into(),
    ] {
        assert_series(&text, &series);
    }
    // Counts are process-wide (other tests share the recorder), so check they count at all.
    let ok_count: f64 = text
        .lines()
        .find(|l| {
            l.starts_with(&format!(
                "usermeta_grpc_requests_total{{{get},code=\"OK\"}}"
            ))
        })
        .and_then(|l| l.rsplit(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(ok_count >= 2.0, "{ok_count}");
}

#[tokio::test]
async fn metrics_are_off_without_a_listen_address() {
    let app = TestApp::spawn().await;
    let observed = app.another().spawn().await;
    assert_eq!(observed.metrics_addr, None);
}

#[tokio::test]
async fn traceparent_and_tracestate_continue_to_zitadel_with_a_new_parent_span() {
    capture();
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let mut request = authed(GetMyMetadataRequest::default(), &app.alice_token);
    let metadata = request.metadata_mut();
    metadata.insert(
        "traceparent",
        format!("00-{trace_id}-{client_span}-01").parse().unwrap(),
    );
    metadata.insert("tracestate", "vendor=opaque".parse().unwrap());
    metadata.insert("x-request-id", "trace-test-1".parse().unwrap());
    let response = client.get_my_metadata(request).await.unwrap();
    assert_eq!(
        response.metadata().get("x-request-id").unwrap(),
        "trace-test-1"
    );

    let seen = app.standin.requests();
    assert!(!seen.is_empty());
    let mut parents = Vec::new();
    for request in &seen {
        let traceparent = request.header("traceparent").expect("traceparent sent");
        let parts: Vec<&str> = traceparent.split('-').collect();
        assert_eq!(parts.len(), 4, "{traceparent}");
        assert_eq!(parts[0], "00");
        assert_eq!(parts[1], trace_id, "same trace: {traceparent}");
        assert_ne!(parts[2], client_span, "a span of usermeta's: {traceparent}");
        assert_ne!(parts[2], "0000000000000000");
        assert_eq!(parts[3], "01", "sampled as the caller decided");
        assert_eq!(request.header("tracestate"), Some("vendor=opaque"));
        parents.push(parts[2].to_owned());
    }

    // Without a traceparent, usermeta starts a trace of its own: still one per call, never a shared id.
    app.standin.clear_requests();
    let other = app.standin.issue_token(&app.alice, FULL_SCOPES);
    client
        .get_my_metadata(authed(GetMyMetadataRequest::default(), &other))
        .await
        .unwrap();
    let seen = app.standin.requests();
    let traceparent = seen[0].header("traceparent").expect("traceparent sent");
    assert!(!traceparent.contains(trace_id), "{traceparent}");
}

#[tokio::test]
async fn request_ids_are_echoed_or_generated_and_on_every_log_line() {
    let logs = capture();
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();

    // A read that writes no line has nothing a generated id could lead to: none comes back.
    let response = client
        .get_my_metadata(authed(GetMyMetadataRequest::default(), &app.alice_token))
        .await
        .unwrap();
    assert!(
        response.metadata().get("x-request-id").is_none(),
        "{:?}",
        response.metadata()
    );
    // The caller's own id always comes back.
    let request = with_request_id(
        authed(GetMyMetadataRequest::default(), &app.alice_token),
        "req-read-1",
    );
    let response = client.get_my_metadata(request).await.unwrap();
    assert_eq!(
        response.metadata().get("x-request-id").unwrap(),
        "req-read-1"
    );

    // A refusal is logged: the generated id comes back and leads to that line. An unusable id is replaced,
    // not logged.
    let request = with_request_id(
        tonic::Request::new(GetMyMetadataRequest::default()),
        "has spaces in it",
    );
    let status = client.get_my_metadata(request).await.unwrap_err();
    let generated = status
        .metadata()
        .get("x-request-id")
        .expect("a logged refusal names its request id")
        .to_str()
        .unwrap();
    assert_eq!(generated.len(), 32, "{generated}");
    assert!(generated.bytes().all(|b| b.is_ascii_hexdigit()));
    let lines = logs.lines_with(generated);
    assert!(
        lines
            .iter()
            .any(|line| line["target"] == "usermeta::api::error"
                && line["fields"]["code"] == "Unauthenticated"),
        "{lines:?}"
    );
    assert!(logs.lines_with("has spaces in it").is_empty());

    // Errors carry it too (trailers-only responses).
    let request = with_request_id(
        tonic::Request::new(GetMyMetadataRequest::default()),
        "req-refused-1",
    );
    let status = client.get_my_metadata(request).await.unwrap_err();
    assert_eq!(
        status.metadata().get("x-request-id").unwrap(),
        "req-refused-1"
    );

    // The audit line of a write names the request.
    let request = authed(
        SetMetadataRequest {
            entries: vec![entry("profile.theme", text("dark"))],
            ..Default::default()
        },
        &app.alice_token,
    );
    let request = with_request_id(request, "req-audit-7f3a");
    client.set_metadata(request).await.unwrap();
    let lines = logs.lines_with("req-audit-7f3a");
    let audit = lines
        .iter()
        .find(|line| line["target"] == "usermeta::audit")
        .unwrap_or_else(|| panic!("no audit line with the request id: {lines:?}"));
    assert_eq!(audit["fields"]["caller"], app.alice.as_str());
    let spans = audit["spans"].as_array().unwrap();
    assert!(
        spans
            .iter()
            .any(|span| span["name"] == "grpc" && span["request_id"] == "req-audit-7f3a"),
        "{audit}"
    );
}

#[tokio::test]
async fn internal_errors_name_the_request_id() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    app.standin.push_fault(Fault {
        path_prefix: "/oidc/v1/userinfo".into(),
        times: None,
        kind: FaultKind::Status(503),
    });
    let request = with_request_id(
        authed(GetMyMetadataRequest::default(), &app.alice_token),
        "req-down-42",
    );
    let status = client.get_my_metadata(request).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert!(
        status.message().ends_with("(request id req-down-42)"),
        "{status:?}"
    );
    // The structured details survive the rewrite.
    assert!(reason(&status).is_some(), "{status:?}");
}

async fn health_of(channel: Channel) -> HealthClient<Channel> {
    HealthClient::new(channel)
}

#[tokio::test]
async fn shutdown_turns_health_not_serving_and_finishes_every_accepted_call() {
    let app = TestApp::spawn().await;
    let observed = app
        .another()
        .shutdown_grace(Duration::from_secs(10))
        .spawn()
        .await;
    let channel = Channel::from_shared(format!("http://{}", observed.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = health_of(channel.clone()).await;
    let mut watch = health
        .watch(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    // Slow ZITADEL: every call is still in flight when the signal comes.
    app.standin.push_fault(Fault {
        path_prefix: "/oidc/v1/userinfo".into(),
        times: None,
        kind: FaultKind::Latency(Duration::from_millis(600)),
    });
    let client = usermeta::api::pb::user_metadata_service_client::UserMetadataServiceClient::new(
        channel.clone(),
    );
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let mut client = client.clone();
            let token = app.standin.issue_token(&app.alice, FULL_SCOPES);
            tokio::spawn(async move {
                client
                    .get_my_metadata(authed(GetMyMetadataRequest::default(), &token))
                    .await
            })
        })
        .collect();
    // Wait until ZITADEL has seen every call: they are accepted and in flight.
    until("all calls reach ZITADEL", || app.userinfo_requests() >= 20).await;
    let signalled = std::time::Instant::now();
    observed.stop.send(()).unwrap();

    assert_eq!(
        watch.message().await.unwrap().unwrap().status(),
        tonic_health::pb::health_check_response::ServingStatus::NotServing,
        "health turns NOT_SERVING first"
    );
    drop(watch);
    for call in futures::future::join_all(calls).await {
        let answer = call
            .unwrap()
            .expect("an accepted call succeeds")
            .into_inner();
        assert_eq!(answer.user_id, app.alice);
    }
    tokio::time::timeout(Duration::from_secs(5), observed.stopped)
        .await
        .expect("the server stops once the calls are done")
        .unwrap();
    assert!(signalled.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn shutdown_stops_after_the_grace_period_even_with_calls_in_flight() {
    let app = TestApp::spawn().await;
    let observed = app
        .another()
        .shutdown_grace(Duration::from_millis(300))
        .spawn()
        .await;
    app.standin.push_fault(Fault {
        path_prefix: "/oidc/v1/userinfo".into(),
        times: None,
        kind: FaultKind::Latency(Duration::from_secs(4)),
    });
    let mut client = observed.client.clone();
    let token = app.alice_token.clone();
    let call = tokio::spawn(async move {
        client
            .get_my_metadata(authed(GetMyMetadataRequest::default(), &token))
            .await
    });
    until("the call reaches ZITADEL", || {
        !app.standin.requests().is_empty()
    })
    .await;
    let signalled = std::time::Instant::now();
    observed.stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(2), observed.stopped)
        .await
        .expect("the grace period bounds the wait")
        .unwrap();
    assert!(signalled.elapsed() >= Duration::from_millis(300));
    drop(call);
}

/// Issue 31, class 13: `hidden` filters usermeta's answers, while ZITADEL hands users those keys with the very
/// token they call usermeta with. Start-up says so once, naming the hidden patterns (never a value), and that
/// they are not sealed.
#[tokio::test]
async fn a_policy_hiding_user_keys_warns_at_start_up_that_they_are_not_sealed() {
    let logs = capture();
    let app = TestApp::spawn().await;
    let policy = usermeta::policy::Policy::from_toml(
        r#"
[[key]]
name = "sealcheck.*"
hidden = true

[[key]]
name = "sealcheck_pin"
hidden = true

[[key]]
name = "sealcheck_shown"
max_bytes = 3
"#,
        "sealcheck.toml",
    )
    .unwrap();
    let _spawned = app.another().policy(policy).spawn().await;
    let warnings: Vec<serde_json::Value> = logs
        .lines_with("sealcheck_pin")
        .into_iter()
        .filter(|line| line["level"] == "WARN")
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    let warning = &warnings[0];
    assert_eq!(
        warning["fields"]["keys"], "sealcheck.*, sealcheck_pin",
        "{warning}"
    );
    let message = warning["fields"]["message"].as_str().unwrap();
    for needed in [
        "not sealed",
        "userinfo",
        "urn:zitadel:iam:user:metadata",
        "auth API",
    ] {
        assert!(message.contains(needed), "{needed}: {message}");
    }
    assert!(
        !warning.to_string().contains("sealcheck_shown"),
        "{warning}"
    );
}
