//! Conditional writes and merge patches across replicas: two replicas share a real `redis-server`, and writes
//! of one user that read first are serialised across them; a stalled lock holder is fenced, a waiting caller's
//! deadline ends its wait, and Redis going away refuses them rather than lose their guarantee.

use std::time::Duration;

use tonic::Code;
use tonic::transport::Channel;
use usermeta::{
    api::pb::{
        MetadataEntry, SetMetadataRequest, user_metadata_service_client::UserMetadataServiceClient,
    },
    fleet::{RedisConfig, WriteLockConfig},
};
use zitadel_standin::FaultKind;

use crate::support::*;

/// A replica in front of `app`'s stand-in sharing `redis`, with the write lock living `ttl`.
async fn replica(app: &TestApp, api: ApiChoice, redis: &str, ttl: Duration) -> TestApp {
    app.another()
        .api(api)
        .redis(RedisConfig::new(redis))
        .write_locks(WriteLockConfig {
            single_replica: false,
            ttl,
        })
        .spawn()
        .await
}

fn patch(user_id: &str, key: &str, json: &str) -> SetMetadataRequest {
    SetMetadataRequest {
        user_id: user_id.into(),
        entries: vec![MetadataEntry {
            key: key.into(),
            json_merge_patch: json.into(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The path prefix of a read of `user_id`'s metadata through `api`.
fn listing_of(api: ApiChoice, user_id: &str) -> String {
    match api {
        ApiChoice::V2 => "/v2/users/".to_owned() + user_id + "/metadata/search",
        _ => format!("/management/v1/users/{user_id}/metadata/_search"),
    }
}

async fn a_hundred_merge_patches_through_two_replicas_leave_a_hundred_fields(api: ApiChoice) {
    let app = TestApp::builder().api(api).spawn().await;
    let redis = Redis::start();
    let a = replica(&app, api, &redis.url(), Duration::from_secs(10)).await;
    let b = replica(&app, api, &redis.url(), Duration::from_secs(10)).await;
    let token = &app.admin_token;
    let patches = (0..100).map(|i| {
        let replica = if i % 2 == 0 { &a } else { &b };
        let request = patch(
            &app.alice,
            "profile.prefs",
            &format!(r#"{{"field{i}":{i}}}"#),
        );
        async move { replica.set_metadata(token, request).await }
    });
    for outcome in futures::future::join_all(patches).await {
        outcome.unwrap();
    }
    let stored: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&app.standin.metadata_of(&app.alice)["profile.prefs"]).unwrap();
    assert_eq!(stored.len(), 100, "{stored:?}");
    for i in 0..100 {
        assert_eq!(stored[&format!("field{i}")], i, "field{i}");
    }
}

async fn fifty_conditional_increments_through_two_replicas_count_exactly(api: ApiChoice) {
    let app = TestApp::builder().api(api).spawn().await;
    app.standin.set_metadata(&app.alice, "counter", b"0");
    let redis = Redis::start();
    let a = replica(&app, api, &redis.url(), Duration::from_secs(10)).await;
    let b = replica(&app, api, &redis.url(), Duration::from_secs(10)).await;
    let (written, aborted) = increments(&[&a, &b], &app.admin_token, &app.alice, 50).await;
    assert_eq!(written + aborted, 50);
    assert!(written >= 1);
    assert_eq!(
        app.standin.metadata_of(&app.alice)["counter"],
        written.to_string().as_bytes(),
        "{written} written, {aborted} aborted"
    );
}

#[tokio::test]
async fn increments_through_two_replicas_survive_v2_search_lag() {
    let app = TestApp::builder().api(ApiChoice::V2).spawn().await;
    app.standin.set_metadata(&app.alice, "counter", b"0");
    // Each replica's listing trails ZITADEL's writes: one replica's write is not in the other's listing yet.
    app.standin.set_search_lag(Duration::from_millis(300));
    let redis = Redis::start();
    let a = replica(&app, ApiChoice::V2, &redis.url(), Duration::from_secs(10)).await;
    let b = replica(&app, ApiChoice::V2, &redis.url(), Duration::from_secs(10)).await;
    let mut written = 0;
    // Rounds of writers, so later ones read right after another replica's write.
    for _ in 0..4 {
        let (ok, _) = increments(&[&a, &b], &app.admin_token, &app.alice, 6).await;
        written += ok;
    }
    assert_eq!(
        app.standin.metadata_of(&app.alice)["counter"],
        written.to_string().as_bytes()
    );
    // Patches through both replicas, one after the other, each right after the other replica's.
    for i in 0..6 {
        let replica = if i % 2 == 0 { &a } else { &b };
        replica
            .set_metadata(
                &app.admin_token,
                patch(&app.alice, "profile.prefs", &format!(r#"{{"f{i}":{i}}}"#)),
            )
            .await
            .unwrap();
    }
    let stored: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&app.standin.metadata_of(&app.alice)["profile.prefs"]).unwrap();
    assert_eq!(stored.len(), 6, "{stored:?}");
}

/// Starts a patch `{"a":1}` of alice's `profile.prefs` through `replica`, and returns once it holds the
/// user's lock and its read inside it (through v1) stalls for `stall`.
async fn stall_holding_the_lock(
    app: &TestApp,
    replica: &UserMetadataServiceClient<Channel>,
    stall: Duration,
) -> tokio::task::JoinHandle<
    Result<tonic::Response<usermeta::api::pb::SetMetadataResponse>, tonic::Status>,
> {
    app.standin.push_fault(fault(
        &listing_of(ApiChoice::V1, &app.alice),
        Some(1),
        FaultKind::Latency(stall),
    ));
    let before = app.management_requests().len();
    let holder = tokio::spawn({
        let mut client = replica.clone();
        let request = authed(
            patch(&app.alice, "profile.prefs", r#"{"a":1}"#),
            &app.admin_token,
        );
        async move { client.set_metadata(request).await }
    });
    until("the holder reads inside its lock", || {
        app.management_requests().len() > before
    })
    .await;
    holder
}

on_both_apis!(
    a_hundred_merge_patches_through_two_replicas_leave_a_hundred_fields,
    fifty_conditional_increments_through_two_replicas_count_exactly,
);

#[tokio::test]
async fn a_holder_stalled_past_the_lock_lifetime_is_fenced_and_writes_nothing() {
    let app = TestApp::spawn().await;
    let redis = Redis::start();
    let a = replica(&app, ApiChoice::V1, &redis.url(), Duration::from_secs(1)).await;
    let b = replica(&app, ApiChoice::V1, &redis.url(), Duration::from_secs(1)).await;
    // A's read inside its lock stalls longer than the lock lives; B's read after it does not.
    let stalled = stall_holding_the_lock(&app, &a.client, Duration::from_millis(2500)).await;
    // B waits for A's lock to expire, then writes.
    b.set_metadata(
        &app.admin_token,
        patch(&app.alice, "profile.prefs", r#"{"b":2}"#),
    )
    .await
    .unwrap();
    // A comes back after its lock expired: fenced, it writes nothing.
    let status = stalled.await.unwrap().unwrap_err();
    assert_status(&status, Code::Unavailable, "WRITE_LOCK_LOST");
    let stored: serde_json::Value =
        serde_json::from_slice(&app.standin.metadata_of(&app.alice)["profile.prefs"]).unwrap();
    assert_eq!(stored, serde_json::json!({"b": 2}));
}

#[tokio::test]
async fn a_plain_write_never_lands_between_another_replicas_read_and_write() {
    let app = TestApp::spawn().await;
    let redis = Redis::start();
    let a = replica(&app, ApiChoice::V1, &redis.url(), Duration::from_secs(10)).await;
    let b = replica(&app, ApiChoice::V1, &redis.url(), Duration::from_secs(10)).await;
    let holder = stall_holding_the_lock(&app, &a.client, Duration::from_millis(800)).await;
    // Without the lock this plain write would land during A's read, and A's patch (computed from a key that
    // was absent when read) would silently overwrite it.
    b.set_metadata(
        &app.admin_token,
        SetMetadataRequest {
            user_id: app.alice.clone(),
            entries: vec![entry("profile.prefs", text(r#"{"plain":true}"#))],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    holder.await.unwrap().unwrap();
    let stored: serde_json::Value =
        serde_json::from_slice(&app.standin.metadata_of(&app.alice)["profile.prefs"]).unwrap();
    assert_eq!(
        stored,
        serde_json::json!({"plain": true}),
        "the plain write came last"
    );
}

#[tokio::test]
async fn a_holder_killed_mid_write_leaves_its_lock_to_expire_and_writes_nothing() {
    let app = TestApp::spawn().await;
    let redis = Redis::start();
    let pat = write_config("killed-holder.pat", &app.service_pat);
    let standin = app.standin.url();
    let redis_url = redis.url();
    // A replica of its own process, so that it can die as a crash kills it: no release, no drop.
    let mut doomed = Served::start(&[
        ("USERMETA_ZITADEL_URL", &standin),
        ("USERMETA_SERVICE_PAT_FILE", &pat),
        ("USERMETA_REDIS_URL", &redis_url),
        ("USERMETA_ZITADEL_API", "v1"),
        ("USERMETA_ADMINS", &app.admin),
        ("USERMETA_WRITE_LOCK_TTL", "2s"),
        ("USERMETA_UPSTREAM_RATE_LIMIT", "0"),
    ]);
    let survivor = replica(&app, ApiChoice::V1, &redis_url, Duration::from_secs(2)).await;
    let holder =
        stall_holding_the_lock(&app, &connect(doomed.addr).await, Duration::from_secs(30)).await;
    doomed.kill();
    // The killed holder's call ends without an answer, and its write never went out.
    assert!(holder.await.unwrap().is_err());
    let waited = std::time::Instant::now();
    survivor
        .set_metadata(
            &app.admin_token,
            patch(&app.alice, "profile.prefs", r#"{"b":2}"#),
        )
        .await
        .unwrap();
    // The survivor waited for the dead holder's lock to expire (it was never released), then read and wrote.
    assert!(
        waited.elapsed() > Duration::from_millis(500),
        "the lock of a killed holder was free at once: {:?}",
        waited.elapsed()
    );
    let stored: serde_json::Value =
        serde_json::from_slice(&app.standin.metadata_of(&app.alice)["profile.prefs"]).unwrap();
    assert_eq!(
        stored,
        serde_json::json!({"b": 2}),
        "nothing of the killed holder's patch"
    );
}

#[tokio::test]
async fn a_deadline_ends_the_wait_for_the_lock_and_nothing_is_written() {
    let app = TestApp::spawn().await;
    let redis = Redis::start();
    let a = replica(&app, ApiChoice::V1, &redis.url(), Duration::from_secs(10)).await;
    let b = replica(&app, ApiChoice::V1, &redis.url(), Duration::from_secs(10)).await;
    let holder = stall_holding_the_lock(&app, &a.client, Duration::from_millis(1500)).await;
    let status = b
        .client
        .clone()
        .set_metadata(with_deadline(
            authed(
                patch(&app.alice, "profile.prefs", r#"{"b":2}"#),
                &app.admin_token,
            ),
            Duration::from_millis(300),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    holder.await.unwrap().unwrap();
    let stored: serde_json::Value =
        serde_json::from_slice(&app.standin.metadata_of(&app.alice)["profile.prefs"]).unwrap();
    assert_eq!(stored, serde_json::json!({"a": 1}));
}

#[tokio::test]
async fn without_redis_conditional_writes_are_refused_and_plain_ones_go_on() {
    let app = TestApp::spawn().await;
    let redis = Redis::start();
    let url = redis.url();
    let a = replica(&app, ApiChoice::V1, &url, Duration::from_secs(10)).await;
    let single = app
        .another()
        .redis(RedisConfig::new(&url))
        .write_locks(WriteLockConfig {
            single_replica: true,
            ..WriteLockConfig::default()
        })
        .spawn()
        .await;
    redis.stop();
    let status = a
        .set_metadata(
            &app.admin_token,
            patch(&app.alice, "profile.prefs", r#"{"a":1}"#),
        )
        .await
        .unwrap_err();
    assert_status(&status, Code::Unavailable, "WRITE_LOCK_UNAVAILABLE");
    assert!(
        !app.standin
            .metadata_of(&app.alice)
            .contains_key("profile.prefs")
    );
    a.set_metadata(
        &app.admin_token,
        SetMetadataRequest {
            user_id: app.alice.clone(),
            entries: vec![entry("plain", text("1"))],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // A deployment of one replica serialises within the replica while Redis is away.
    single
        .set_metadata(
            &app.admin_token,
            patch(&app.alice, "profile.prefs", r#"{"a":1}"#),
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn a_replica_without_redis_says_its_guarantee_is_its_own() {
    let logs = capture();
    let _app = TestApp::spawn().await;
    assert!(
        logs.text()
            .contains("conditional writes and merge patches are atomic within this replica only"),
        "no start-up warning"
    );
}
