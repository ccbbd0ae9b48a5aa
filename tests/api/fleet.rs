//! A fleet that agrees: replicas share invalidation over a real `redis-server`, so a write through one replica
//! is not served stale by another; Redis going away degrades to local invalidation and the TTL, and coming
//! back restores it, with nothing but user ids and keys ever sent to Redis.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use usermeta::{
    api::pb::{
        ChangeKind, MetadataChange, SetMetadataRequest, WatchMetadataRequest,
        user_metadata_service_client::UserMetadataServiceClient,
    },
    fleet::{CHANNEL, HEALTH_SERVICE, RedisConfig},
};

use crate::support::*;
use usermeta::caller::cache::CacheConfig;

/// A replica in front of the app's stand-in with the app's policy, sharing invalidation through `redis`.
async fn replica(app: &TestApp, redis: Option<&str>) -> TestApp {
    let mut replica = app.another();
    if let Some(redis) = redis {
        replica = replica.redis(RedisConfig::new(redis));
    }
    replica.spawn().await
}

async fn redis_health(addr: SocketAddr) -> ServingStatus {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let health = HealthClient::new(channel);
    let status = |service: &str| {
        let mut health = health.clone();
        let service = service.to_owned();
        async move {
            health
                .check(HealthCheckRequest { service })
                .await
                .unwrap()
                .into_inner()
                .status()
        }
    };
    // The replica as a whole serves whatever Redis does.
    assert_eq!(status("").await, ServingStatus::Serving);
    status(HEALTH_SERVICE).await
}

async fn wait_for_redis_health(addr: SocketAddr, want: ServingStatus) {
    eventually(
        &format!("{HEALTH_SERVICE} becomes {want:?}"),
        || async move { (redis_health(addr).await == want).then_some(()) },
    )
    .await;
}

async fn set_language(
    client: &mut UserMetadataServiceClient<tonic::transport::Channel>,
    token: &str,
    value: &str,
) {
    client
        .set_metadata(authed(
            SetMetadataRequest {
                entries: vec![entry("profile.language", text(value))],
                ..Default::default()
            },
            token,
        ))
        .await
        .unwrap();
}

/// How long until `client` answers `want` for alice's language; panics after `limit`.
async fn seen_within(
    client: &mut UserMetadataServiceClient<tonic::transport::Channel>,
    token: &str,
    want: &str,
    limit: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        if language(client, token).await == want {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "not seen within {limit:?}: still {}",
            language(client, token).await
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_write_through_one_replica_is_seen_through_the_others_within_a_second() {
    let app = TestApp::spawn().await;
    let redis = Redis::start();
    let (a, b) = (
        replica(&app, Some(&redis.url())).await,
        replica(&app, Some(&redis.url())).await,
    );
    let lone = replica(&app, None).await;
    for replica in [&a, &b] {
        wait_for_redis_health(replica.addr, ServingStatus::Serving).await;
    }
    let (mut a, mut b, mut lone) = (a.client.clone(), b.client.clone(), lone.client.clone());
    // Every replica has alice's answer cached.
    for client in [&mut a, &mut b, &mut lone] {
        assert_eq!(language(client, &app.alice_token).await, "en");
    }
    set_language(&mut a, &app.alice_token, "fr").await;
    // The writer at once; the other replica through Redis, well within a second.
    assert_eq!(language(&a, &app.alice_token).await, "fr");
    let took = seen_within(&mut b, &app.alice_token, "fr", Duration::from_secs(1)).await;
    println!("replica b saw the write after {took:?}");
    // A replica without Redis serves its cached answer until the TTL: the news came through Redis.
    assert_eq!(language(&lone, &app.alice_token).await, "en");
}

#[tokio::test]
async fn only_user_ids_and_keys_go_to_redis() {
    let app = TestApp::spawn().await;
    let redis = Redis::start();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(CHANNEL).await.unwrap();
    let a = replica(&app, Some(&redis.url())).await;
    wait_for_redis_health(a.addr, ServingStatus::Serving).await;
    let mut a = a.client.clone();
    set_language(&mut a, &app.alice_token, "a-secret-value").await;
    let message = tokio::time::timeout(Duration::from_secs(5), pubsub.on_message().next())
        .await
        .expect("a change was published")
        .unwrap();
    let payload: String = message.get_payload().unwrap();
    // `<HMAC-SHA256 tag in hex>.<JSON>`.
    let (tag, json) = payload.split_once('.').unwrap();
    assert!(
        tag.len() == 64 && tag.bytes().all(|b| b.is_ascii_hexdigit()),
        "{payload}"
    );
    let change: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(change["user_id"], app.alice.as_str());
    assert_eq!(change["keys"], serde_json::json!(["profile.language"]));
    for secret in [
        app.alice_token.as_str(),
        app.service_pat.as_str(),
        "a-secret-value",
    ] {
        assert!(
            !payload.contains(secret),
            "Redis received a secret or value: {payload}"
        );
    }
    assert_eq!(change["kind"], "set", "a write that landed says how");
    assert!(
        change["time_ms"].as_u64().is_some_and(|ms| ms > 0),
        "{payload}"
    );
    assert!(
        change["seq"].as_u64().is_some_and(|seq| seq > 0),
        "{payload}"
    );
    assert!(
        change["sent_ms"].as_u64().is_some_and(|ms| ms > 0),
        "{payload}"
    );
    let fields: Vec<&String> = change.as_object().unwrap().keys().collect();
    assert_eq!(
        fields,
        [
            "keys", "kind", "origin", "sent_ms", "seq", "time_ms", "user_id"
        ],
        "{payload}"
    );
}

#[tokio::test]
async fn without_redis_replicas_serve_on_and_reconnect_by_themselves() {
    let app = TestApp::spawn().await;
    let redis = Redis::start();
    let url = redis.url();
    let (a_app, b_app) = (
        replica(&app, Some(&url)).await,
        replica(&app, Some(&url)).await,
    );
    let (a_addr, b_addr) = (a_app.addr, b_app.addr);
    for addr in [a_addr, b_addr] {
        wait_for_redis_health(addr, ServingStatus::Serving).await;
    }
    let (mut a, mut b) = (a_app.client.clone(), b_app.client.clone());
    assert_eq!(language(&b, &app.alice_token).await, "en");

    // Redis goes away: health says so, and both replicas go on reading and writing.
    let port = redis.stop();
    wait_for_redis_health(a_addr, ServingStatus::NotServing).await;
    wait_for_redis_health(b_addr, ServingStatus::NotServing).await;
    set_language(&mut a, &app.alice_token, "de").await;
    assert_eq!(language(&a, &app.alice_token).await, "de");
    // b serves what it has: staleness is bounded by the TTL, as without Redis.
    assert_eq!(language(&b, &app.alice_token).await, "en");

    // Redis comes back on the same address: both reconnect, b drops what it may have missed, and shared
    // invalidation works again.
    let _redis = Redis::start_on(port);
    wait_for_redis_health(a_addr, ServingStatus::Serving).await;
    wait_for_redis_health(b_addr, ServingStatus::Serving).await;
    assert_eq!(language(&b, &app.alice_token).await, "de");
    set_language(&mut a, &app.alice_token, "it").await;
    seen_within(&mut b, &app.alice_token, "it", Duration::from_secs(1)).await;
}

#[test]
fn a_redis_url_with_a_password_is_refused_at_start_up() {
    let fleet = usermeta::settings::FleetArgs {
        redis_url: Some("redis://:hunter2@redis:6379".into()),
        redis_password_file: None,
        ..Default::default()
    };
    let error = fleet.redis().unwrap_err().to_string();
    assert!(error.contains("USERMETA_REDIS_PASSWORD_FILE"), "{error}");
    assert!(!error.contains("hunter2"), "{error}");
    for bad in ["http://redis:6379", "redis-host:6379", "redis://"] {
        let fleet = usermeta::settings::FleetArgs {
            redis_url: Some(bad.into()),
            redis_password_file: None,
            ..Default::default()
        };
        let error = fleet.redis().unwrap_err().to_string();
        assert!(error.contains("USERMETA_REDIS_URL"), "{bad}: {error}");
    }
}

/// A replica as [`replica`] makes it, also serving ZITADEL's events and with its cache TTL set.
async fn replica_with(
    app: &TestApp,
    redis: &str,
    webhook_key: Option<&str>,
    ttl: Duration,
) -> TestApp {
    let mut builder = app
        .another()
        .redis(RedisConfig::new(redis))
        .cache(CacheConfig {
            ttl,
            ..CacheConfig::default()
        });
    if let Some(key) = webhook_key {
        builder = builder.webhook(key);
    }
    let spawned = builder.spawn().await;
    wait_for_redis_health(spawned.addr, ServingStatus::Serving).await;
    spawned
}

async fn watch_mine(
    client: &mut UserMetadataServiceClient<tonic::transport::Channel>,
    token: &str,
) -> tonic::Streaming<MetadataChange> {
    client
        .watch_metadata(authed(WatchMetadataRequest::default(), token))
        .await
        .unwrap()
        .into_inner()
}

async fn next_change(stream: &mut tonic::Streaming<MetadataChange>) -> MetadataChange {
    tokio::time::timeout(Duration::from_secs(2), stream.message())
        .await
        .expect("a change within 2 s")
        .expect("the stream goes on")
        .expect("the stream is open")
}

#[tokio::test]
async fn a_stream_on_one_replica_sees_writes_through_another_without_their_values() {
    let app = TestApp::spawn().await;
    let redis = Redis::start();
    let a = replica_with(&app, &redis.url(), None, Duration::from_secs(30)).await;
    let b = replica_with(&app, &redis.url(), None, Duration::from_secs(30)).await;
    let (mut a, mut b) = (a.client.clone(), b.client.clone());
    let mut on_b = watch_mine(&mut b, &app.alice_token).await;
    let started = Instant::now();
    set_language(&mut a, &app.alice_token, "fr").await;
    let change = next_change(&mut on_b).await;
    println!("b's stream saw a's write after {:?}", started.elapsed());
    assert_eq!(
        (change.user_id.as_str(), change.key.as_str(), change.kind()),
        (app.alice.as_str(), "profile.language", ChangeKind::Set)
    );
    assert_eq!(change.value, None, "values never travel between replicas");
    assert!(change.time.is_some());
}

#[tokio::test]
async fn an_event_posted_to_one_replica_drops_the_cached_answers_of_every_replica() {
    let app = TestApp::spawn().await;
    let redis = Redis::start();
    let key = "a-signing-key";
    let a = replica_with(&app, &redis.url(), Some(key), Duration::from_secs(30)).await;
    let b = replica_with(&app, &redis.url(), None, Duration::from_secs(30)).await;
    let events = format!("http://{}/zitadel/events", a.webhook_addr.unwrap());
    let mut b = b.client.clone();
    assert_eq!(language(&b, &app.alice_token).await, "en");
    // Changed in ZITADEL itself; ZITADEL tells replica a.
    app.standin
        .set_metadata(&app.alice, "profile.language", b"nl");
    let body = serde_json::to_vec(&serde_json::json!({
        "aggregateID": app.alice,
        "aggregateType": "user",
        "event_type": "user.metadata.set",
        "created_at": "2026-12-01T10:00:00Z",
        "event_payload": {"key": "profile.language", "value": "bmw="},
    }))
    .unwrap();
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let answer = reqwest::Client::new()
        .post(&events)
        .header("content-type", "application/json")
        .header(
            "ZITADEL-Signature",
            usermeta::fleet::webhook::sign(key, t, &body),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    seen_within(&mut b, &app.alice_token, "nl", Duration::from_secs(1)).await;
}

#[tokio::test]
async fn an_event_replayed_to_another_replica_is_refused_there() {
    let app = TestApp::spawn().await;
    let redis = Redis::start();
    let key = "a-signing-key";
    let a = replica_with(&app, &redis.url(), Some(key), Duration::from_secs(30)).await;
    let b = replica_with(&app, &redis.url(), Some(key), Duration::from_secs(30)).await;
    let body = serde_json::to_vec(&serde_json::json!({
        "aggregateID": app.alice,
        "aggregateType": "user",
        "event_type": "user.metadata.removed",
        "event_payload": {"key": "profile.language"},
    }))
    .unwrap();
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let signature = usermeta::fleet::webhook::sign(key, t, &body);
    let post = |replica: &TestApp| {
        let url = format!("http://{}/zitadel/events", replica.webhook_addr.unwrap());
        let request = reqwest::Client::new()
            .post(url)
            .header("content-type", "application/json")
            .header("ZITADEL-Signature", signature.clone())
            .body(body.clone());
        async move { request.send().await.unwrap() }
    };
    assert_eq!(post(&a).await.status().as_u16(), 200);
    let replayed = post(&b).await;
    assert_eq!(replayed.status().as_u16(), 401);
    assert!(replayed.text().await.unwrap().contains("already accepted"));
    // What Redis holds for it is a name made of the signature with the fleet's key (not the signature),
    // expiring with the tolerance.
    let mut redis_conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("usermeta.v2.webhook.seen.*")
        .query_async(&mut redis_conn)
        .await
        .unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    let hex = signature.split_once(",v1=").unwrap().1;
    assert!(!keys[0].contains(hex), "{keys:?}");
    let ttl: i64 = redis::cmd("TTL")
        .arg(&keys[0])
        .query_async(&mut redis_conn)
        .await
        .unwrap();
    assert!((590..=600).contains(&ttl), "{ttl}");
}

#[tokio::test]
async fn a_stream_outlives_redis_going_away_and_hears_the_fleet_again_when_it_returns() {
    let app = TestApp::spawn().await;
    let redis = Redis::start();
    let a = replica_with(&app, &redis.url(), None, Duration::from_secs(30)).await;
    let b = replica_with(&app, &redis.url(), None, Duration::from_secs(30)).await;
    let (a_addr, b_addr) = (a.addr, b.addr);
    let (mut a, mut b) = (connect(a_addr).await, connect(b_addr).await);
    let mut on_b = watch_mine(&mut b, &app.alice_token).await;
    let port = redis.stop();
    wait_for_redis_health(b_addr, ServingStatus::NotServing).await;
    // b's own writes still reach its stream, with their values.
    set_language(&mut b, &app.alice_token, "de").await;
    let own = next_change(&mut on_b).await;
    assert_eq!(own.value, text("de"));
    // a's writes cannot reach b now; the stream stays open meanwhile.
    set_language(&mut a, &app.alice_token, "it").await;
    let _redis = Redis::start_on(port);
    wait_for_redis_health(a_addr, ServingStatus::Serving).await;
    wait_for_redis_health(b_addr, ServingStatus::Serving).await;
    set_language(&mut a, &app.alice_token, "es").await;
    let heard = loop {
        let change = next_change(&mut on_b).await;
        // A write a made while Redis was away may still arrive, when a's queue held it.
        if change.value.is_none() {
            break change;
        }
    };
    assert_eq!(heard.key, "profile.language");
    seen_within(&mut b, &app.alice_token, "es", Duration::from_secs(1)).await;
}

#[tokio::test]
async fn a_replica_killed_during_a_burst_leaves_nothing_stale_past_the_ttl() {
    let app = TestApp::spawn().await;
    let redis = Redis::start();
    let ttl = Duration::from_secs(2);
    let a = replica_with(&app, &redis.url(), None, ttl).await;
    let b = replica_with(&app, &redis.url(), None, ttl).await;
    let mut on_b = b.client.clone();
    assert_eq!(language(&on_b, &app.alice_token).await, "en");
    // One writer through a, each write after the last was acknowledged; a dies in the middle.
    let mut writer = a.client.clone();
    let token = app.alice_token.clone();
    let burst = tokio::spawn(async move {
        let mut acknowledged = None;
        for i in 0..10_000 {
            let value = format!("v{i}");
            let written = writer
                .set_metadata(authed(
                    SetMetadataRequest {
                        entries: vec![entry("profile.language", text(&value))],
                        ..Default::default()
                    },
                    &token,
                ))
                .await;
            match written {
                Ok(_) => acknowledged = Some(value),
                Err(_) => return acknowledged,
            }
        }
        acknowledged
    });
    let before = app.management_requests().len();
    until("the burst of writes is under way", || {
        app.management_requests().len() >= before + 3
    })
    .await;
    // Killed, not stopped: its task and every connection go at once.
    a.stopped.abort();
    let last = burst
        .await
        .unwrap()
        .expect("some writes were acknowledged before the kill");
    // ZITADEL holds a value at least as new as the last acknowledged one (one more may have landed)…
    let stored = app.standin.metadata_of(&app.alice)["profile.language"].clone();
    let stored = String::from_utf8(stored).unwrap();
    let number = |v: &str| v[1..].parse::<u32>().unwrap();
    assert!(number(&last) < 9_999, "the kill cut the burst short");
    assert!(number(&stored) >= number(&last), "{stored} < {last}");
    // …and b serves it, through Redis at once or, at the latest, once its TTL has passed.
    seen_within(
        &mut on_b,
        &app.alice_token,
        &stored,
        ttl + Duration::from_secs(1),
    )
    .await;
}

/// Publishes `payload` on the replicas' channel as any client of their Redis could.
async fn publish_raw(redis: &Redis, payload: &str) {
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: i64 = redis::cmd("PUBLISH")
        .arg(CHANNEL)
        .arg(payload)
        .query_async(&mut conn)
        .await
        .unwrap();
}

/// Waits until replica `on`'s stream of the admin's own changes shows a write the admin makes through `via`:
/// `on` hears the fleet's messages in the order Redis delivers them, so whatever was published before that
/// write has been dealt with by then.
async fn barrier(
    app: &TestApp,
    via: &mut UserMetadataServiceClient<tonic::transport::Channel>,
    admin_on: &mut tonic::Streaming<MetadataChange>,
) {
    set_language(via, &app.admin_token, "barrier").await;
    let change = next_change(admin_on).await;
    assert_eq!(
        (change.user_id.as_str(), change.key.as_str()),
        (app.admin.as_str(), "profile.language")
    );
}

#[tokio::test]
async fn a_change_published_by_another_redis_client_is_not_applied() {
    let app = TestApp::spawn().await;
    let redis = Redis::start();
    let a = replica_with(&app, &redis.url(), None, Duration::from_secs(30)).await;
    let b = app
        .another()
        .redis(RedisConfig::new(redis.url()))
        .metrics()
        .spawn()
        .await;
    wait_for_redis_health(b.addr, ServingStatus::Serving).await;
    let metrics = b.metrics_addr.unwrap();
    let rejected = |reason: &str| {
        format!(r#"usermeta_shared_invalidations_rejected_total{{reason="{reason}"}}"#)
    };
    let unparsable_before = metric(metrics, &rejected("unparsable")).await;
    let bad_tag_before = metric(metrics, &rejected("bad_tag")).await;
    let (mut a, mut b) = (a.client.clone(), b.client.clone());
    // b serves alice's cached answer; ZITADEL holds another value b does not know of.
    assert_eq!(language(&b, &app.alice_token).await, "en");
    app.standin
        .set_metadata(&app.alice, "profile.language", b"nl");
    let mut alice_on_b = watch_mine(&mut b, &app.alice_token).await;
    let mut admin_on_b = watch_mine(&mut b, &app.admin_token).await;
    // Someone who can publish on the fleet's Redis, but holds no key of the fleet: a change as replicas used
    // to send them, one with a made-up tag, one claiming to end every stream with thousands of keys.
    let time_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let forged = serde_json::json!({
        "origin": "attacker",
        "user_id": app.alice,
        "keys": ["profile.forged"],
        "kind": "set",
        "time_ms": time_ms,
    })
    .to_string();
    let flood = serde_json::json!({
        "origin": "attacker",
        "user_id": app.alice,
        "keys": (0..5000).map(|i| format!("profile.forged{i}")).collect::<Vec<_>>(),
        "kind": "set",
        "time_ms": time_ms,
    })
    .to_string();
    for payload in [
        forged.clone(),
        format!("{}.{forged}", "0".repeat(64)),
        flood,
    ] {
        publish_raw(&redis, &payload).await;
    }
    barrier(&app, &mut a, &mut admin_on_b).await;
    // b dropped nothing and streamed nothing of it.
    assert_eq!(
        language(&b, &app.alice_token).await,
        "en",
        "a forged change dropped b's cached answer"
    );
    set_language(&mut a, &app.alice_token, "fr").await;
    let first = next_change(&mut alice_on_b).await;
    assert_eq!(
        first.key, "profile.language",
        "a forged change reached the stream first"
    );
    // Each was counted by why it was refused (the recorder is shared by every replica of this process).
    assert!(metric(metrics, &rejected("unparsable")).await >= unparsable_before + 2.0);
    assert!(metric(metrics, &rejected("bad_tag")).await > bad_tag_before);
}

#[tokio::test]
async fn a_replayed_message_of_a_replica_is_not_applied_again() {
    let app = TestApp::spawn().await;
    let redis = Redis::start();
    let mut sniffer = redis::Client::open(redis.url())
        .unwrap()
        .get_async_pubsub()
        .await
        .unwrap();
    sniffer.subscribe(CHANNEL).await.unwrap();
    let a = replica_with(&app, &redis.url(), None, Duration::from_secs(30)).await;
    let b = replica_with(&app, &redis.url(), None, Duration::from_secs(30)).await;
    let (mut a, mut b) = (a.client.clone(), b.client.clone());
    let mut alice_on_b = watch_mine(&mut b, &app.alice_token).await;
    let mut admin_on_b = watch_mine(&mut b, &app.admin_token).await;
    set_language(&mut a, &app.alice_token, "fr").await;
    assert_eq!(next_change(&mut alice_on_b).await.key, "profile.language");
    // Someone who can read and publish on the fleet's Redis captures a's message and sends it again.
    let mut heard = sniffer.on_message();
    let captured = loop {
        let message = tokio::time::timeout(Duration::from_secs(5), heard.next())
            .await
            .expect("a's message was published")
            .unwrap();
        let payload: String = message.get_payload().unwrap();
        if payload.contains(app.alice.as_str()) {
            break payload;
        }
    };
    drop(heard);
    publish_raw(&redis, &captured).await;
    barrier(&app, &mut a, &mut admin_on_b).await;
    // The replay reached no stream: alice's next change on b is her next write.
    set_language_key(&mut a, &app.alice_token, "profile.theme", "dark").await;
    assert_eq!(
        next_change(&mut alice_on_b).await.key,
        "profile.theme",
        "the replayed message was streamed again"
    );
}

async fn set_language_key(
    client: &mut UserMetadataServiceClient<tonic::transport::Channel>,
    token: &str,
    key: &str,
    value: &str,
) {
    client
        .set_metadata(authed(
            SetMetadataRequest {
                entries: vec![entry(key, text(value))],
                ..Default::default()
            },
            token,
        ))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_claim_planted_in_redis_does_not_refuse_a_genuine_event() {
    let app = TestApp::spawn().await;
    let redis = Redis::start();
    let key = "a-signing-key";
    let a = replica_with(&app, &redis.url(), Some(key), Duration::from_secs(30)).await;
    let body = serde_json::to_vec(&serde_json::json!({
        "aggregateID": app.alice,
        "aggregateType": "user",
        "event_type": "user.metadata.removed",
        "event_payload": {"key": "profile.language"},
    }))
    .unwrap();
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = usermeta::fleet::webhook::sign(key, t, &body);
    // Someone who can write to the fleet's Redis and learnt the signature (a log, the network) claims it
    // first, under every name a replica has used for claims.
    let hex = header.split_once(",v1=").unwrap().1;
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    for version in ["v1", "v2"] {
        let _: () = redis::cmd("SET")
            .arg(format!("usermeta.{version}.webhook.seen.{hex}"))
            .arg("1")
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let answer = reqwest::Client::new()
        .post(format!("http://{}/zitadel/events", a.webhook_addr.unwrap()))
        .header("content-type", "application/json")
        .header("ZITADEL-Signature", header)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(
        answer.status().as_u16(),
        200,
        "{}",
        answer.text().await.unwrap()
    );
}

/// A replica as [`replica_with`] makes it, sealing its Redis messages with `bus_key` (a key file's text).
async fn replica_keyed(app: &TestApp, redis: &str, bus_key: &str) -> TestApp {
    let mut config = RedisConfig::new(redis);
    config.bus_key = Some(usermeta::fleet::BusKey::from_text(bus_key).unwrap());
    let spawned = app.another().redis(config).spawn().await;
    wait_for_redis_health(spawned.addr, ServingStatus::Serving).await;
    spawned
}

#[tokio::test]
async fn replicas_hear_only_replicas_with_the_same_bus_key() {
    let app = TestApp::spawn().await;
    let redis = Redis::start();
    let ours = format!("{}\n", "1f".repeat(32));
    let theirs = format!("{}\n", "e0".repeat(32));
    let a = replica_keyed(&app, &redis.url(), &ours).await;
    let b = replica_keyed(&app, &redis.url(), &ours).await;
    let c = replica_keyed(&app, &redis.url(), &theirs).await;
    let d = replica_keyed(&app, &redis.url(), &theirs).await;
    let (mut a, mut b) = (a.client.clone(), b.client.clone());
    let (mut c, mut d) = (c.client.clone(), d.client.clone());
    for client in [&mut b, &mut c] {
        assert_eq!(language(client, &app.alice_token).await, "en");
    }
    let mut admin_on_c = watch_mine(&mut c, &app.admin_token).await;
    // a's write reaches b, which holds the same key…
    set_language(&mut a, &app.alice_token, "fr").await;
    seen_within(&mut b, &app.alice_token, "fr", Duration::from_secs(1)).await;
    // …and not c: once c has heard d (of its own key), a's earlier message has been dealt with, and refused.
    barrier(&app, &mut d, &mut admin_on_c).await;
    assert_eq!(language(&c, &app.alice_token).await, "en");
}

#[test]
fn a_bus_key_file_that_cannot_be_used_stops_start_up_naming_it_never_its_content() {
    let dir = std::env::temp_dir().join(format!("usermeta-bus-key-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let with_file = |name: &str, content: Option<&str>| {
        let path = dir.join(name);
        if let Some(content) = content {
            std::fs::write(&path, content).unwrap();
        }
        usermeta::settings::FleetArgs {
            redis_url: Some("redis://redis:6379".into()),
            redis_bus_key_file: Some(path),
            ..Default::default()
        }
    };
    for (name, content, problem) in [
        ("missing", None, "cannot read"),
        ("empty", Some("# the key goes here\n\n"), "holds no key"),
        (
            "short",
            Some("tiny-secret-1234\n"),
            "fewer than 32 characters",
        ),
    ] {
        let error = with_file(name, content).redis().unwrap_err().to_string();
        assert!(error.starts_with("USERMETA_REDIS_BUS_KEY_FILE"), "{error}");
        assert!(error.contains(name) && error.contains(problem), "{error}");
        assert!(!error.contains("tiny-secret"), "{error}");
    }
    let good = with_file("good", Some(&format!("{}\n", "ab".repeat(32))))
        .redis()
        .unwrap()
        .unwrap();
    assert!(!format!("{good:?}").contains("abab"), "{good:?}");
    assert_eq!(good.bus_key.map(|key| key.len()), Some(1));
    // Without a key file the key comes from the service credential.
    let derived = usermeta::settings::FleetArgs {
        redis_url: Some("redis://redis:6379".into()),
        ..Default::default()
    }
    .redis()
    .unwrap()
    .unwrap();
    assert!(derived.bus_key.is_none());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_fleet_works_through_a_redis_acl_user_limited_to_its_channel_and_keys() {
    let app = TestApp::spawn().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // The README's recommended ACL; nobody else may connect.
    let redis = Redis::start_with(
        port,
        &[
            "--user",
            "default",
            "off",
            "--user",
            "usermeta",
            "on",
            ">a-redis-password",
            "~usermeta.*",
            "&usermeta.*",
            "+publish",
            "+subscribe",
            "+ping",
            "+set",
        ],
    );
    let config = || {
        let mut config = RedisConfig::new(format!("redis://usermeta@127.0.0.1:{}", redis.port));
        config.password = Some("a-redis-password".to_owned());
        config
    };
    let key = "a-signing-key";
    let replica = |webhook: bool| {
        let mut builder = app.another().redis(config());
        if webhook {
            builder = builder.webhook(key);
        }
        builder.spawn()
    };
    let (a, b) = (replica(true).await, replica(true).await);
    for replica in [a.addr, b.addr] {
        wait_for_redis_health(replica, ServingStatus::Serving).await;
    }
    let (mut a_client, mut b_client) = (a.client.clone(), b.client.clone());
    assert_eq!(language(&b_client, &app.alice_token).await, "en");
    set_language(&mut a_client, &app.alice_token, "fr").await;
    seen_within(
        &mut b_client,
        &app.alice_token,
        "fr",
        Duration::from_secs(1),
    )
    .await;
    // The webhook's claims work too: an event accepted by a is refused by b.
    let body = serde_json::to_vec(&serde_json::json!({
        "aggregateID": app.alice,
        "aggregateType": "user",
        "event_type": "user.metadata.removed",
        "event_payload": {"key": "profile.language"},
    }))
    .unwrap();
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = usermeta::fleet::webhook::sign(key, t, &body);
    let mut statuses = Vec::new();
    for replica in [&a, &b] {
        let answer = reqwest::Client::new()
            .post(format!(
                "http://{}/zitadel/events",
                replica.webhook_addr.unwrap()
            ))
            .header("content-type", "application/json")
            .header("ZITADEL-Signature", header.clone())
            .body(body.clone())
            .send()
            .await
            .unwrap();
        statuses.push(answer.status().as_u16());
    }
    assert_eq!(statuses, [200, 401]);
}

/// The ids of the clients subscribed to `redis`'s channels.
async fn subscribers(redis: &Redis) -> Vec<String> {
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let list: String = redis::cmd("CLIENT")
        .arg("LIST")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut conn)
        .await
        .unwrap();
    list.lines()
        .filter_map(|line| line.split(' ').find(|field| field.starts_with("id=")))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn a_replica_keeps_its_subscription_across_pings() {
    let redis = Redis::start();
    let app = TestApp::spawn().await;
    let replica = replica(&app, Some(&redis.url())).await;
    wait_for_redis_health(replica.addr, ServingStatus::Serving).await;
    let subscribed = subscribers(&redis).await;
    assert_eq!(subscribed.len(), 1, "{subscribed:?}");
    // The replica pings its subscription every 5 s; a ping it cannot read would drop the link (and every
    // cached answer with it) and subscribe again. Nothing to wait for: nothing is what should happen.
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(subscribers(&redis).await, subscribed);
    assert_eq!(redis_health(replica.addr).await, ServingStatus::Serving);
}
