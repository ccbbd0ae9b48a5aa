//! ZITADEL's event webhook over real HTTP: a signed `user.metadata.*` event, as ZITADEL's Actions v2 send it
//! after a change in the Console, drops the cached answer and reaches WatchMetadata streams; unsigned, badly
//! signed, stale, replayed, malformed and oversized requests are refused and change nothing.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::hmac;
use base64::Engine as _;
use usermeta::{api::pb::ChangeKind, policy::Policy};

use crate::{helpers::*, watch::watch};

const KEY: &str = "8lT1WbPq3yS9kd0vRzXh4mQe";

/// `ZITADEL-Signature` as ZITADEL computes it: `t=<unix>,v1=<hex HMAC-SHA256(key, "<t>.<body>")>`.
fn signature(key: &str, t: u64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key.as_bytes());
    let mut signed = format!("{t}.").into_bytes();
    signed.extend_from_slice(body);
    let tag = hmac::sign(&key, &signed);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("t={t},v1={hex}")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A `ContextInfoEvent` body for `user_id`.
fn event(user_id: &str, event_type: &str, payload: serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "aggregateID": user_id,
        "aggregateType": "user",
        "resourceOwner": "312909075211878808",
        "instanceID": "312909075211813272",
        "version": "v2",
        "sequence": 13,
        "event_type": event_type,
        "created_at": "2026-09-05T08:55:36.156333Z",
        "userID": "312909075212010000",
        "event_payload": payload,
    }))
    .unwrap()
}

fn set_event(user_id: &str, key: &str, value: &[u8]) -> Vec<u8> {
    event(
        user_id,
        "user.metadata.set",
        serde_json::json!({
            "key": key,
            "value": base64::engine::general_purpose::STANDARD.encode(value),
        }),
    )
}

/// A usermeta with the webhook on, in front of the app's stand-in.
async fn with_webhook(app: &TestApp, keys: &str) -> (Replica, tokio::sync::oneshot::Sender<()>) {
    let spawned = app
        .another()
        .policy(Policy::new([app.admin.clone()], vec![SELF_WRITABLE.into()]))
        .webhook(keys)
        .spawn()
        .await;
    let client = Replica {
        grpc: connect(spawned.addr).await,
        events: format!(
            "http://{}/zitadel/events",
            spawned.webhook_addr.expect("the webhook listens")
        ),
    };
    (client, spawned.stop)
}

/// The gRPC client of one replica and the URL of its webhook.
struct Replica {
    grpc: usermeta::api::pb::user_metadata_service_client::UserMetadataServiceClient<
        tonic::transport::Channel,
    >,
    events: String,
}

async fn post(url: &str, signature: Option<&str>, body: Vec<u8>) -> (u16, String) {
    let mut request = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body);
    if let Some(signature) = signature {
        request = request.header("ZITADEL-Signature", signature);
    }
    let answer = request.send().await.expect("the webhook answers");
    (answer.status().as_u16(), answer.text().await.unwrap())
}

#[tokio::test]
async fn a_signed_event_drops_the_cached_answer_and_reaches_streams() {
    let app = TestApp::start().await;
    let (client, _stop) = with_webhook(&app, KEY).await;
    assert_eq!(language(&client.grpc, &app.alice_token).await, "en");
    let mut stream = watch(&client.grpc, &app.alice_token, "", "").await.unwrap();
    // A change made in ZITADEL itself (the Console): usermeta still serves its cached answer.
    app.standin
        .set_metadata(&app.alice, "profile.language", b"es");
    assert_eq!(language(&client.grpc, &app.alice_token).await, "en");

    let body = set_event(&app.alice, "profile.language", b"es");
    let (status, answer) = post(&client.events, Some(&signature(KEY, now(), &body)), body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(language(&client.grpc, &app.alice_token).await, "es");
    let change = tokio::time::timeout(Duration::from_secs(2), stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        (change.user_id.as_str(), change.key.as_str(), change.kind()),
        (app.alice.as_str(), "profile.language", ChangeKind::Set)
    );
    assert_eq!(change.value, text("es"), "the value the event carried");
    assert_eq!(
        change.time.map(|t| t.seconds),
        Some(
            humantime::parse_rfc3339("2026-09-05T08:55:36Z")
                .unwrap()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_secs() as i64
        ),
        "the event's created_at"
    );
}

#[tokio::test]
async fn both_payload_forms_and_every_metadata_event_type_apply() {
    let app = TestApp::start().await;
    let (client, _stop) = with_webhook(&app, &format!("old-key\n{KEY}\n")).await;
    let mut stream = watch(&client.grpc, &app.alice_token, "", "").await.unwrap();
    let encoded =
        base64::engine::general_purpose::STANDARD.encode(br#"{"key":"profile.language"}"#);
    for body in [
        event(
            &app.alice,
            "user.metadata.removed",
            serde_json::json!(encoded),
        ),
        event(
            &app.alice,
            "user.metadata.removed.all",
            serde_json::Value::Null,
        ),
    ] {
        // Signed with the second key of the file (a rotation).
        let (status, answer) =
            post(&client.events, Some(&signature(KEY, now(), &body)), body).await;
        assert_eq!(status, 200, "{answer}");
    }
    let removed = stream.message().await.unwrap().unwrap();
    assert_eq!(
        (removed.key.as_str(), removed.kind(), removed.value),
        ("profile.language", ChangeKind::Delete, None)
    );
    let all = stream.message().await.unwrap().unwrap();
    assert_eq!((all.key.as_str(), all.kind()), ("", ChangeKind::DeleteAll));
}

#[tokio::test]
async fn unsigned_badly_signed_stale_and_replayed_events_change_nothing() {
    let app = TestApp::start().await;
    let (client, _stop) = with_webhook(&app, KEY).await;
    assert_eq!(language(&client.grpc, &app.alice_token).await, "en");
    app.standin
        .set_metadata(&app.alice, "profile.language", b"es");
    let body = set_event(&app.alice, "profile.language", b"es");
    let t = now();
    let cases: Vec<(&str, Option<String>, Vec<u8>, u16)> = vec![
        ("unsigned", None, body.clone(), 401),
        (
            "wrong key",
            Some(signature("not-the-key", t, &body)),
            body.clone(),
            401,
        ),
        (
            "another body",
            Some(signature(KEY, t, b"{}")),
            body.clone(),
            401,
        ),
        (
            "stale",
            Some(signature(KEY, t - 310, &body)),
            body.clone(),
            401,
        ),
        (
            "from the future",
            Some(signature(KEY, t + 310, &body)),
            body.clone(),
            401,
        ),
        (
            "malformed header",
            Some("v1=abc".to_owned()),
            body.clone(),
            400,
        ),
        ("not hex", Some(format!("t={t},v1=xyz")), body.clone(), 400),
    ];
    for (case, header, body, want) in cases {
        let (status, answer) = post(&client.events, header.as_deref(), body).await;
        assert_eq!(status, want, "{case}: {answer}");
        assert!(!answer.contains(KEY), "{case}: the key is never echoed");
        assert_eq!(
            language(&client.grpc, &app.alice_token).await,
            "en",
            "{case} changed what usermeta serves"
        );
    }
    // The same signed event twice: applied once, the replay refused.
    let header = signature(KEY, t, &body);
    let (status, _) = post(&client.events, Some(&header), body.clone()).await;
    assert_eq!(status, 200);
    assert_eq!(language(&client.grpc, &app.alice_token).await, "es");
    app.standin
        .set_metadata(&app.alice, "profile.language", b"pt");
    let (status, answer) = post(&client.events, Some(&header), body).await;
    assert_eq!(status, 401, "{answer}");
    assert!(answer.contains("already"), "{answer}");
    assert_eq!(
        language(&client.grpc, &app.alice_token).await,
        "es",
        "the replay dropped nothing"
    );
}

#[tokio::test]
async fn other_event_types_are_ignored_and_malformed_or_huge_bodies_refused() {
    let app = TestApp::start().await;
    let (client, _stop) = with_webhook(&app, KEY).await;
    let mut stream = watch(&client.grpc, &app.alice_token, "", "").await.unwrap();
    let other = event(&app.alice, "user.human.added", serde_json::Value::Null);
    let (status, answer) = post(&client.events, Some(&signature(KEY, now(), &other)), other).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("ignored"), "{answer}");
    for (case, body) in [
        ("not JSON", b"{\"event_type\": ".to_vec()),
        (
            "no user",
            br#"{"event_type":"user.metadata.set","event_payload":{"key":"k"}}"#.to_vec(),
        ),
        (
            "no key",
            event(&app.alice, "user.metadata.set", serde_json::json!({})),
        ),
        (
            "value not base64",
            event(
                &app.alice,
                "user.metadata.set",
                serde_json::json!({"key": "k", "value": "!!"}),
            ),
        ),
    ] {
        let (status, answer) =
            post(&client.events, Some(&signature(KEY, now(), &body)), body).await;
        assert_eq!(status, 400, "{case}: {answer}");
        assert!(answer.contains("not a ZITADEL event"), "{case}: {answer}");
    }
    // Over the cap (1 MiB): refused before it is read, signed or not.
    let huge = vec![b' '; 2 * 1024 * 1024];
    let (status, _) = post(&client.events, Some(&signature(KEY, now(), &huge)), huge).await;
    assert_eq!(status, 413);
    // Only POST on the one path.
    let answer = reqwest::get(&client.events).await.unwrap();
    assert_eq!(answer.status().as_u16(), 405);
    let elsewhere = client.events.replace("/zitadel/events", "/other");
    let (status, _) = post(&elsewhere, None, Vec::new()).await;
    assert_eq!(status, 404);
    // Nothing of that reached the stream; usermeta still serves.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), stream.message())
            .await
            .is_err()
    );
    assert_eq!(language(&client.grpc, &app.alice_token).await, "en");
}

#[tokio::test]
async fn the_largest_value_zitadel_stores_fits_in_an_event() {
    let app = TestApp::start().await;
    let (client, _stop) = with_webhook(&app, KEY).await;
    let body = set_event(&app.alice, "big", &vec![b'x'; 500_000]);
    let (status, answer) = post(&client.events, Some(&signature(KEY, now(), &body)), body).await;
    assert_eq!(status, 200, "{answer}");
}

#[test]
fn an_empty_signing_key_file_is_refused_at_start_up() {
    let dir = std::env::temp_dir().join(format!("usermeta-webhook-keys-{}", std::process::id()));
    std::fs::write(&dir, "# no key yet\n\n").unwrap();
    let fleet = usermeta::settings::FleetArgs {
        webhook_listen: Some("127.0.0.1:0".parse().unwrap()),
        webhook_signing_key_file: Some(dir.clone()),
        ..Default::default()
    };
    let error = fleet.webhook().unwrap_err().to_string();
    let _ = std::fs::remove_file(&dir);
    assert!(
        error.contains("USERMETA_WEBHOOK_SIGNING_KEY_FILE"),
        "{error}"
    );
    assert!(error.contains("signingKey"), "{error}");
}
