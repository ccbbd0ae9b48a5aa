//! One request budget toward ZITADEL for the fleet (`USERMETA_UPSTREAM_FLEET_RATE_LIMIT`), in a real
//! `redis-server`: replicas together never send more than it, scaling out does not raise it, Redis going away
//! means each replica's fallback budget (said in health and metrics) and coming back means the shared one
//! again, a replica stopped with leased tokens leaves the fleet inside it, and Redis holds nothing but the
//! bucket's two counters.

use std::time::{Duration, Instant};

use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_types::StatusExt;
use usermeta::{
    api::pb::GetMyMetadataRequest,
    fleet::{BUDGET_HEALTH_SERVICE, FleetBudgetConfig},
};
use usermeta_zitadel::UpstreamBudget;

use crate::support::*;

/// A budget of `burst` requests at `rate` per second, without reserve or caller share.
fn budget(rate: f64, burst: u32) -> UpstreamBudget {
    UpstreamBudget {
        rate,
        burst,
        reserve: 0.0,
        caller_share: 1.0,
    }
}

/// The fleet's `burst` refilling too slowly to matter within a test (one token per 100 s); `fallback` requests
/// per replica while Redis is away.
fn slow_fleet(burst: u32, fallback: u32) -> FleetBudgetConfig {
    FleetBudgetConfig {
        budget: budget(0.01, burst),
        fallback: budget(0.01, fallback),
    }
}

async fn replica(app: &TestApp, redis: &Redis, fleet: FleetBudgetConfig) -> TestApp {
    app.another()
        .fleet_budget(&redis.url(), fleet)
        .metrics()
        .spawn()
        .await
}

/// Asks `replica` for the metadata of a token it has never seen (one userinfo call when granted): `true` when
/// answered, `false` when the budget refused it (RESOURCE_EXHAUSTED UPSTREAM_BUDGET_EXHAUSTED with RetryInfo).
async fn new_token_answered(app: &TestApp, replica: &TestApp) -> bool {
    let token = app.standin.issue_token(&app.alice, FULL_SCOPES);
    let answer = replica
        .client
        .clone()
        .get_my_metadata(authed(GetMyMetadataRequest::default(), &token))
        .await;
    match answer {
        Ok(_) => true,
        Err(status) => {
            assert_status(
                &status,
                Code::ResourceExhausted,
                "UPSTREAM_BUDGET_EXHAUSTED",
            );
            assert!(status.get_details_retry_info().is_some(), "RetryInfo");
            assert!(!status.message().contains(&token), "no token in messages");
            false
        }
    }
}

#[tokio::test]
async fn replicas_share_one_budget_and_scaling_out_does_not_raise_it() {
    let app = TestApp::spawn().await;
    let redis = Redis::start();
    let fleet = slow_fleet(6, 6);
    let (a, b) = (
        replica(&app, &redis, fleet).await,
        replica(&app, &redis, fleet).await,
    );
    app.standin.clear_requests();
    let mut answered = [0; 3];
    for round in 0..5 {
        answered[0] += usize::from(new_token_answered(&app, &a).await);
        answered[1] += usize::from(new_token_answered(&app, &b).await);
        let _ = round;
    }
    // Each replica alone could have spent the six; together they did.
    assert_eq!(answered[0] + answered[1], 6, "{answered:?}");
    assert!(
        answered[0] >= 1 && answered[1] >= 1,
        "both shared it: {answered:?}"
    );
    assert_eq!(app.standin.requests().len(), 6);
    // A third replica finds nothing left either.
    let c = replica(&app, &redis, fleet).await;
    for _ in 0..3 {
        assert!(!new_token_answered(&app, &c).await);
    }
    assert_eq!(app.standin.requests().len(), 6, "nothing sent when refused");

    // Redis holds the bucket's two counters, under a name that says nothing of ZITADEL, and nothing else of
    // the budget: no token, no user.
    let mut redis_client = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut redis_client)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(keys[0].starts_with("usermeta.budget."), "{keys:?}");
    let fields: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg(&keys[0])
        .query_async(&mut redis_client)
        .await
        .unwrap();
    let mut names: Vec<&str> = fields.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["at", "tokens"]);
    for value in fields.values() {
        value.parse::<f64>().expect("a number");
    }
}

#[tokio::test]
async fn without_redis_each_replica_keeps_to_its_fallback_and_shares_again_when_it_is_back() {
    let app = TestApp::spawn().await;
    let redis = Redis::start();
    let port = redis.port;
    let fleet = slow_fleet(100, 2);
    let a = replica(&app, &redis, fleet).await;
    let metrics = a.metrics_addr.expect("metrics on");
    // The cold start begins on the shared budget.
    for _ in 0..3 {
        assert!(new_token_answered(&app, &a).await);
    }
    assert_eq!(
        health_of(a.addr, BUDGET_HEALTH_SERVICE).await,
        ServingStatus::Serving
    );
    assert_eq!(
        metric(metrics, "usermeta_upstream_budget_fallback").await,
        0.0
    );

    // Redis dies mid-way: the replica serves on, within its own fallback budget (two requests), no more.
    redis.stop();
    app.standin.clear_requests();
    let mut answered = 0;
    for _ in 0..10 {
        answered += usize::from(new_token_answered(&app, &a).await);
    }
    assert_eq!(answered, 2);
    assert_eq!(app.standin.requests().len(), 2);
    assert_eq!(
        health_of(a.addr, BUDGET_HEALTH_SERVICE).await,
        ServingStatus::NotServing
    );
    assert_eq!(health_of(a.addr, "").await, ServingStatus::Serving);
    assert_eq!(
        metric(metrics, "usermeta_upstream_budget_fallback").await,
        1.0
    );

    // Redis is back (empty: a full bucket): the replica shares it again by itself.
    let _redis = Redis::start_on(port);
    eventually_health(a.addr, BUDGET_HEALTH_SERVICE, ServingStatus::Serving).await;
    assert_eq!(
        metric(metrics, "usermeta_upstream_budget_fallback").await,
        0.0
    );
    for _ in 0..5 {
        assert!(new_token_answered(&app, &a).await);
    }
}

#[tokio::test]
async fn a_replica_stopped_with_leased_tokens_leaves_the_fleet_inside_its_budget() {
    let app = TestApp::spawn().await;
    let redis = Redis::start();
    // Fast enough that replicas lease two tokens at a time.
    let fleet = FleetBudgetConfig {
        budget: budget(20.0, 10),
        fallback: budget(1.0, 1),
    };
    let started = Instant::now();
    let a = replica(&app, &redis, fleet).await;
    let b = replica(&app, &redis, fleet).await;
    app.standin.clear_requests();
    for _ in 0..3 {
        new_token_answered(&app, &a).await;
    }
    // Stopped, whatever it still held of its lease.
    let TestApp { stop, stopped, .. } = a;
    let _ = stop.send(());
    stopped.await.unwrap();
    // The other replica asks as fast as it can for a second.
    while started.elapsed() < Duration::from_secs(1) {
        new_token_answered(&app, &b).await;
    }
    let sent = app.standin.requests().len() as f64;
    let allowed = 10.0 + 20.0 * started.elapsed().as_secs_f64();
    assert!(sent <= allowed, "{sent} requests, {allowed} allowed");
    assert!(sent >= 10.0, "the burst was used: {sent}");
}
