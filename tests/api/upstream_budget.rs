//! The request budget toward ZITADEL (`USERMETA_UPSTREAM_RATE_LIMIT`): every HTTP request sent takes a token,
//! retries included; when it is spent nothing is sent, cached callers keep working, new tokens are refused
//! with RESOURCE_EXHAUSTED `UPSTREAM_BUDGET_EXHAUSTED` and `RetryInfo`, and calls of callers already
//! identified get the reserve that identification must leave.

use std::time::Duration;

use envoy_types::pb::envoy::service::auth::v3::{CheckResponse, check_response::HttpResponse};
use prost::Message as _;
use tonic::Code;
use tonic_types::StatusExt;
use usermeta::{
    api::pb::{BatchGetMetadataRequest, GetMyMetadataRequest, ListMetadataRequest},
    caller::cache::CacheConfig,
};
use usermeta_zitadel::{Resilience, UpstreamBudget};
use zitadel_standin::FaultKind;

use crate::support::*;

/// A usermeta with `budget` (and fast retries) in front of `app`'s stand-in, with metrics on.
async fn with_budget(app: &TestApp, budget: UpstreamBudget) -> (Client, TestApp) {
    let spawned = app
        .another()
        .resilience(Resilience {
            backoff_base: Duration::from_millis(1),
            ..Resilience::default()
        })
        .cache(CacheConfig::default())
        // Management reads reach ZITADEL each time, so they spend the budget these tests watch.
        .no_metadata_cache()
        .upstream_budget(budget)
        .metrics()
        .spawn()
        .await;
    (spawned.client.clone(), spawned)
}

type Client = usermeta::api::pb::user_metadata_service_client::UserMetadataServiceClient<
    tonic::transport::Channel,
>;

/// A budget that refills too slowly to matter within a test (one token per 100 s), without a caller's share
/// (the replica's bucket alone).
fn slow(burst: u32, reserve: f64) -> UpstreamBudget {
    UpstreamBudget {
        rate: 0.01,
        burst,
        reserve,
        caller_share: 1.0,
    }
}

fn mine(token: &str) -> tonic::Request<GetMyMetadataRequest> {
    authed(GetMyMetadataRequest::default(), token)
}

#[tokio::test]
async fn new_tokens_are_refused_first_while_cached_and_identified_callers_keep_working() {
    let app = TestApp::spawn().await;
    // Five requests, two of them kept for identified callers.
    let (mut client, spawned) = with_budget(&app, slow(5, 0.4)).await;
    let list_bob = || ListMetadataRequest {
        user_id: app.bob.clone(),
        organization_id: app.other_org.clone(),
        ..Default::default()
    };
    app.standin.clear_requests();
    // Alice is identified (one userinfo), the admin too (one userinfo) and lists bob's metadata (one
    // management call): two tokens left, the reserve.
    client
        .get_my_metadata(mine(&app.alice_token))
        .await
        .unwrap();
    client
        .list_metadata(authed(list_bob(), &app.admin_token))
        .await
        .unwrap();
    assert_eq!(app.standin.requests().len(), 3);

    // A token usermeta does not know: refused, nothing sent, with when to retry.
    let fresh = app.standin.issue_token(&app.alice, FULL_SCOPES);
    let status = client.get_my_metadata(mine(&fresh)).await.unwrap_err();
    assert_status(
        &status,
        Code::ResourceExhausted,
        "UPSTREAM_BUDGET_EXHAUSTED",
    );
    let retry = status.get_details_retry_info().expect("RetryInfo");
    let delay = retry.retry_delay.expect("a delay");
    assert!(
        delay > Duration::ZERO && delay <= Duration::from_secs(100),
        "{delay:?}"
    );
    let info = status.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.metadata["class"], "identify");
    assert!(
        status.message().contains("USERMETA_UPSTREAM_RATE_LIMIT"),
        "{}",
        status.message()
    );
    assert!(!status.message().contains(&fresh), "no token in messages");
    assert_eq!(app.standin.requests().len(), 3, "nothing sent when refused");

    // Cached callers keep working, without ZITADEL.
    for _ in 0..5 {
        client
            .get_my_metadata(mine(&app.alice_token))
            .await
            .unwrap();
    }
    assert_eq!(app.standin.requests().len(), 3);

    // The identified admin's management call still goes through: it may use the reserve.
    let answer = client
        .list_metadata(authed(list_bob(), &app.admin_token))
        .await;
    assert!(answer.is_ok(), "{answer:?}");
    assert_eq!(app.management_requests().len(), 2);
    // New tokens stay refused, for every RPC.
    let another = app.standin.issue_token(&app.admin, FULL_SCOPES);
    let status = client
        .list_metadata(authed(list_bob(), &another))
        .await
        .unwrap_err();
    assert_status(
        &status,
        Code::ResourceExhausted,
        "UPSTREAM_BUDGET_EXHAUSTED",
    );
    assert_eq!(app.standin.requests().len(), 4);

    // The last token goes to the identified caller too; then the budget is spent for everyone.
    client
        .list_metadata(authed(list_bob(), &app.admin_token))
        .await
        .unwrap();
    let status = client
        .list_metadata(authed(list_bob(), &app.admin_token))
        .await
        .unwrap_err();
    assert_status(
        &status,
        Code::ResourceExhausted,
        "UPSTREAM_BUDGET_EXHAUSTED",
    );
    let info = status.get_details_error_info().expect("ErrorInfo");
    assert_eq!(info.metadata["class"], "manage");
    assert!(status.get_details_retry_info().is_some());
    assert_eq!(app.standin.requests().len(), 5, "never more than the burst");

    // The metric shows the budget's use.
    let metrics = spawned.metrics_addr.expect("metrics are on");
    let scraped = reqwest::get(format!("http://{metrics}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for series in [
        r#"usermeta_upstream_budget_requests_total{class="identify",outcome="granted"}"#,
        r#"usermeta_upstream_budget_requests_total{class="identify",outcome="refused"}"#,
        r#"usermeta_upstream_budget_requests_total{class="manage",outcome="granted"}"#,
        r#"usermeta_upstream_budget_requests_total{class="manage",outcome="refused"}"#,
        "usermeta_upstream_budget_tokens",
    ] {
        assert!(
            scraped.lines().any(|line| line.starts_with(series)),
            "no {series} in:\n{scraped}"
        );
    }
}

#[tokio::test]
async fn retries_take_from_the_budget_and_a_storm_of_new_tokens_never_exceeds_it() {
    let app = TestApp::spawn().await;
    let (mut client, _spawned) = with_budget(&app, slow(10, 0.2)).await;
    app.standin.clear_requests();
    // Three attempts of one request are three requests to ZITADEL.
    app.standin
        .push_fault(fault("/oidc/v1/userinfo", Some(2), FaultKind::Status(503)));
    client
        .get_my_metadata(mine(&app.alice_token))
        .await
        .unwrap();
    assert_eq!(app.userinfo_requests(), 3);

    // Forty callers with tokens usermeta has never seen, at once: identification may use what the reserve
    // leaves (10 - 3 - 2 = 5), the rest is refused without reaching ZITADEL.
    let calls = (0..40).map(|_| {
        let mut client = client.clone();
        let token = app.standin.issue_token(&app.alice, FULL_SCOPES);
        async move { client.get_my_metadata(mine(&token)).await }
    });
    let answers = futures::future::join_all(calls).await;
    let refused = answers
        .iter()
        .filter(|answer| {
            answer.as_ref().is_err_and(|status| {
                reason(status).as_deref() == Some("UPSTREAM_BUDGET_EXHAUSTED")
                    && status.code() == Code::ResourceExhausted
                    && status.get_details_retry_info().is_some()
            })
        })
        .count();
    let answered = answers.iter().filter(|answer| answer.is_ok()).count();
    assert_eq!(answered, 5, "{answers:?}");
    assert_eq!(refused, 35);
    assert_eq!(app.userinfo_requests(), 3 + 5);

    // Alice, identified before, reads from memory; ZITADEL sees nothing more.
    client
        .get_my_metadata(mine(&app.alice_token))
        .await
        .unwrap();
    assert_eq!(app.standin.requests().len(), 8);
}

#[tokio::test]
async fn the_budget_refills_at_its_rate() {
    let app = TestApp::spawn().await;
    // Twenty per second, a burst of one: a refused caller that waits its RetryInfo gets through.
    let (mut client, _spawned) = with_budget(
        &app,
        UpstreamBudget {
            rate: 20.0,
            burst: 1,
            reserve: 0.0,
            caller_share: 1.0,
        },
    )
    .await;
    let first = app.standin.issue_token(&app.alice, FULL_SCOPES);
    client.get_my_metadata(mine(&first)).await.unwrap();
    let second = app.standin.issue_token(&app.alice, FULL_SCOPES);
    let status = match client.get_my_metadata(mine(&second)).await {
        // A slow machine may have refilled the token already.
        Ok(_) => return,
        Err(status) => status,
    };
    assert_status(
        &status,
        Code::ResourceExhausted,
        "UPSTREAM_BUDGET_EXHAUSTED",
    );
    let delay = status
        .get_details_retry_info()
        .and_then(|retry| retry.retry_delay)
        .expect("a delay");
    assert!(delay <= Duration::from_millis(50), "{delay:?}");
    tokio::time::sleep(delay).await;
    client.get_my_metadata(mine(&second)).await.unwrap();
}

#[tokio::test]
async fn without_a_budget_nothing_is_refused() {
    let app = TestApp::spawn().await;
    for _ in 0..60 {
        let token = app.standin.issue_token(&app.alice, FULL_SCOPES);
        app.get_my_metadata(&token, GetMyMetadataRequest::default())
            .await
            .unwrap();
    }
    assert_eq!(app.userinfo_requests(), 60);
}

/// The ErrorInfo and RetryInfo a failed batch result carries.
fn error_details(
    status: &tonic_types::Status,
) -> (
    Option<tonic_types::pb::ErrorInfo>,
    Option<tonic_types::pb::RetryInfo>,
) {
    let decode = |suffix: &str| {
        status
            .details
            .iter()
            .find(|any| any.type_url.ends_with(suffix))
            .map(|any| any.value.clone())
    };
    (
        decode("google.rpc.ErrorInfo")
            .and_then(|bytes| tonic_types::pb::ErrorInfo::decode(bytes.as_slice()).ok()),
        decode("google.rpc.RetryInfo")
            .and_then(|bytes| tonic_types::pb::RetryInfo::decode(bytes.as_slice()).ok()),
    )
}

#[tokio::test]
async fn one_callers_batch_spends_only_its_share_of_the_upstream_budget() {
    let app = TestApp::spawn().await;
    // Twenty requests, refilling too slowly to matter; the default reserve and share of one caller.
    let (mut client, _spawned) = with_budget(
        &app,
        UpstreamBudget {
            rate: 0.01,
            burst: 20,
            ..UpstreamBudget::per_second(0.01)
        },
    )
    .await;
    let users: Vec<String> = (0..30)
        .map(|i| app.standin.create_user(&app.org, &format!("user{i}")))
        .collect();
    // The admin is identified, then asks for thirty users at once: more than the whole budget.
    client
        .get_my_metadata(mine(&app.admin_token))
        .await
        .unwrap();
    app.standin.clear_requests();
    let results = client
        .batch_get_metadata(authed(
            BatchGetMetadataRequest {
                user_ids: users,
                ..Default::default()
            },
            &app.admin_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .results;
    let read = results
        .iter()
        .filter(|result| result.error.is_none())
        .count();
    assert_eq!(
        read,
        app.management_requests().len(),
        "one request per user read"
    );
    assert!(
        (1..=10).contains(&read),
        "the admin's share is at most half the burst: {read} users read"
    );
    for status in results.iter().filter_map(|result| result.error.as_ref()) {
        assert_eq!(status.code, Code::ResourceExhausted as i32, "{status:?}");
        let (info, retry) = error_details(status);
        let info = info.expect("ErrorInfo");
        assert_eq!(info.reason, "CALLER_UPSTREAM_SHARE_EXHAUSTED", "{status:?}");
        assert_eq!(info.metadata["setting"], "USERMETA_UPSTREAM_CALLER_SHARE");
        assert!(
            retry.and_then(|retry| retry.retry_delay).is_some(),
            "{status:?}"
        );
        assert!(status.message.contains("USERMETA_UPSTREAM_CALLER_SHARE"));
        assert!(!status.message.contains(&app.admin_token));
    }

    // What the admin could not spend is left for everyone else: a new caller is identified and served.
    let fresh = app.standin.issue_token(&app.alice, FULL_SCOPES);
    let answer = client.get_my_metadata(mine(&fresh)).await;
    assert!(answer.is_ok(), "another caller was refused: {answer:?}");
}

#[tokio::test]
async fn the_shipped_budget_is_on_and_keeps_one_callers_batch_to_its_share() {
    let app = TestApp::spawn().await;
    // What `usermeta serve` and `usermeta dev` run with unless told otherwise.
    let shipped = shipped_upstream_budget().expect("a request budget toward ZITADEL by default");
    assert_eq!(shipped, UpstreamBudget::default());
    let (mut client, _spawned) = with_budget(&app, shipped).await;
    let users: Vec<String> = (0..100)
        .map(|i| app.standin.create_user(&app.org, &format!("user{i}")))
        .collect();
    app.standin.clear_requests();
    let started = std::time::Instant::now();
    client
        .get_my_metadata(mine(&app.admin_token))
        .await
        .unwrap();
    let results = client
        .batch_get_metadata(authed(
            BatchGetMetadataRequest {
                user_ids: users,
                ..Default::default()
            },
            &app.admin_token,
        ))
        .await
        .unwrap()
        .into_inner()
        .results;
    let elapsed = started.elapsed().as_secs_f64();
    let read = results
        .iter()
        .filter(|result| result.error.is_none())
        .count();
    assert_eq!(read, app.management_requests().len());
    // The admin's share: half the burst at once, half the rate after (its identification included).
    let share = shipped.rate * shipped.caller_share;
    let most = (f64::from(shipped.burst) * shipped.caller_share + share * elapsed).floor();
    assert!(
        read as f64 + 1.0 <= most,
        "{read} users read in {elapsed:.2} s"
    );
    for status in results.iter().filter_map(|result| result.error.as_ref()) {
        let (info, _) = error_details(status);
        assert_eq!(
            info.map(|info| info.reason).as_deref(),
            Some("CALLER_UPSTREAM_SHARE_EXHAUSTED"),
            "{status:?}"
        );
    }
    // Unless the machine took seconds for it, most of the hundred were refused, each naming the share.
    if elapsed < 2.0 {
        assert!(read < 100 / 2, "{read} users read in {elapsed:.2} s");
    }
    // The rest of the replica's budget is there for others.
    let fresh = app.standin.issue_token(&app.alice, FULL_SCOPES);
    let answer = client.get_my_metadata(mine(&fresh)).await;
    assert!(answer.is_ok(), "another caller was refused: {answer:?}");
}

#[tokio::test]
async fn check_denies_a_caller_past_its_share_with_429_and_nothing_sent() {
    let app = TestApp::spawn().await;
    // Four requests, two of them one caller's; nothing cached, so every Check asks userinfo.
    let spawned = app
        .another()
        .cache(CacheConfig {
            ttl: Duration::ZERO,
            ..CacheConfig::default()
        })
        .ext_authz(usermeta::authz::AuthzConfig::default())
        .upstream_budget(UpstreamBudget {
            caller_share: 0.5,
            ..slow(4, 0.0)
        })
        .spawn()
        .await;
    let mut authz = authz_client(spawned.authz_addr()).await;
    app.standin.clear_requests();
    let code = |response: &CheckResponse| response.status.as_ref().map(|status| status.code);
    for _ in 0..2 {
        let response = authz
            .check(check_request(&app.alice_token))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(code(&response), Some(Code::Ok as i32), "{response:?}");
    }
    let response = authz
        .check(check_request(&app.alice_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&response), Some(Code::ResourceExhausted as i32));
    let Some(HttpResponse::DeniedResponse(denial)) = &response.http_response else {
        panic!("expected a denial: {response:?}");
    };
    assert_eq!(denial.status.as_ref().map(|status| status.code), Some(429));
    assert!(
        denial.body.contains("USERMETA_UPSTREAM_CALLER_SHARE"),
        "{}",
        denial.body
    );
    assert!(
        denial
            .headers
            .iter()
            .filter_map(|option| option.header.as_ref())
            .any(|header| header.key == "retry-after" && header.value.parse::<u64>().is_ok()),
        "{denial:?}"
    );
    assert_eq!(
        app.userinfo_requests(),
        2,
        "nothing sent for the refused Check"
    );
    // Another caller finds the rest of the budget.
    let response = authz
        .check(check_request(&app.admin_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(&response), Some(Code::Ok as i32), "{response:?}");
}
