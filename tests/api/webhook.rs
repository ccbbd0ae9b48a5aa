//! ZITADEL's event webhook over real HTTP: a signed `user.metadata.*` event, as ZITADEL's Actions v2 send it
//! after a change in the Console, drops the cached answer and reaches WatchMetadata streams; unsigned, badly
//! signed, stale, replayed, malformed and oversized requests are refused and change nothing.

use std::{
    net::SocketAddr,
    time::{Duration, UNIX_EPOCH},
};

use base64::Engine as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use usermeta::{api::pb::ChangeKind, fleet::webhook::WebhookLimits};

use crate::support::*;

const KEY: &str = "8lT1WbPq3yS9kd0vRzXh4mQe";

/// A usermeta with the webhook on, in front of the app's stand-in.
async fn with_webhook(app: &TestApp, keys: &str) -> (Replica, tokio::sync::oneshot::Sender<()>) {
    let spawned = app.another().webhook(keys).spawn().await;
    let client = Replica {
        grpc: spawned.client.clone(),
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

#[tokio::test]
async fn a_signed_event_drops_the_cached_answer_and_reaches_streams() {
    let app = TestApp::spawn().await;
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
    let app = TestApp::spawn().await;
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
    let app = TestApp::spawn().await;
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
    let app = TestApp::spawn().await;
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
    let app = TestApp::spawn().await;
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

/// A usermeta with the webhook on and these limits, and metrics on: its gRPC client, webhook address and
/// metrics address.
async fn with_limits(
    app: &TestApp,
    limits: WebhookLimits,
) -> (
    Replica,
    SocketAddr,
    SocketAddr,
    tokio::sync::oneshot::Sender<()>,
) {
    let spawned = app
        .another()
        .metrics()
        .webhook_with(KEY, limits)
        .spawn()
        .await;
    let webhook = spawned.webhook_addr.expect("the webhook listens");
    let client = Replica {
        grpc: spawned.client.clone(),
        events: format!("http://{webhook}/zitadel/events"),
    };
    (
        client,
        webhook,
        spawned.metrics_addr.expect("metrics are on"),
        spawned.stop,
    )
}

/// One HTTP/1.1 connection written by hand, for what an HTTP client will not do: headers without their body,
/// a body that stops half-way, `Expect: 100-continue` to learn that usermeta has started on a request.
struct Raw(tokio::net::TcpStream);

impl Raw {
    async fn connect(addr: SocketAddr) -> Raw {
        Raw(tokio::net::TcpStream::connect(addr).await.unwrap())
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.0.write_all(bytes).await.unwrap();
    }

    /// The status of the next answer (an interim `100 Continue` too); its body is left unread. A guard of
    /// `within` keeps a test from hanging when no answer comes.
    async fn status_within(&mut self, within: Duration) -> u16 {
        let mut head = Vec::new();
        let read = async {
            while !head.ends_with(b"\r\n\r\n") {
                let byte = self
                    .0
                    .read_u8()
                    .await
                    .expect("an answer before the connection closed");
                head.push(byte);
            }
        };
        tokio::time::timeout(within, read)
            .await
            .unwrap_or_else(|_| panic!("no answer within {within:?}"));
        let head = String::from_utf8(head).unwrap();
        head.split(' ').nth(1).unwrap().parse().unwrap()
    }

    async fn status(&mut self) -> u16 {
        self.status_within(Duration::from_secs(30)).await
    }
}

/// The headers of a POST to the webhook; `extra` are further header lines.
fn head(extra: &[&str]) -> Vec<u8> {
    let mut head = "POST /zitadel/events HTTP/1.1\r\nhost: usermeta\r\n".to_owned();
    for line in extra {
        head.push_str(line);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    head.into_bytes()
}

/// The headers of a signed event POST of `body`, as ZITADEL sends them, plus `extra`.
fn signed_head(body: &[u8], extra: &[&str]) -> Vec<u8> {
    let signature = format!("zitadel-signature: {}", signature(KEY, now(), body));
    let length = format!("content-length: {}", body.len());
    let mut lines = vec![
        signature.as_str(),
        "content-type: application/json",
        length.as_str(),
    ];
    lines.extend_from_slice(extra);
    head(&lines)
}

#[tokio::test]
async fn a_request_is_refused_on_its_headers_without_waiting_for_its_body() {
    let app = TestApp::spawn().await;
    let (_client, webhook, _metrics, _stop) = with_limits(&app, WebhookLimits::default()).await;
    let t = now();
    let signed = format!("zitadel-signature: {}", signature(KEY, t, b"{}"));
    let stale = format!("zitadel-signature: {}", signature(KEY, t - 400, b"{}"));
    let json = "content-type: application/json";
    let length = "content-length: 1000";
    let cases: Vec<(&str, Vec<&str>, u16)> = vec![
        ("unsigned", vec![json, length], 401),
        ("stale signature", vec![stale.as_str(), json, length], 401),
        (
            "malformed signature",
            vec!["zitadel-signature: t=x", json, length],
            400,
        ),
        (
            "not JSON",
            vec![signed.as_str(), "content-type: text/plain", length],
            415,
        ),
        ("no content-type", vec![signed.as_str(), length], 415),
        (
            "no declared length",
            vec![signed.as_str(), json, "transfer-encoding: chunked"],
            411,
        ),
        (
            "declared over 1 MiB",
            vec![signed.as_str(), json, "content-length: 2000000"],
            413,
        ),
    ];
    for (case, headers, want) in cases {
        // The body never comes: the answer must not wait for it.
        let mut raw = Raw::connect(webhook).await;
        raw.send(&head(&headers)).await;
        assert_eq!(raw.status().await, want, "{case}");
    }
}

#[tokio::test]
async fn connections_beyond_the_cap_are_answered_503_at_once() {
    let app = TestApp::spawn().await;
    let limits = WebhookLimits {
        max_connections: 2,
        body_timeout: Duration::from_secs(60),
        ..WebhookLimits::default()
    };
    let (client, webhook, metrics, _stop) = with_limits(&app, limits).await;
    let refused = r#"usermeta_webhook_events_total{outcome="too_many_connections"}"#;
    let refused_before = metric(metrics, refused).await;
    // Two requests under way: usermeta has read their headers and waits for their bodies.
    let bodies = [
        set_event(&app.alice, "profile.language", b"es"),
        set_event(&app.alice, "profile.theme", b"dark"),
    ];
    let mut held = Vec::new();
    for body in &bodies {
        let mut raw = Raw::connect(webhook).await;
        raw.send(&signed_head(
            body,
            &["expect: 100-continue", "connection: close"],
        ))
        .await;
        assert_eq!(raw.status().await, 100);
        held.push(raw);
    }
    // A third connection is answered at once, whatever it sends.
    let third = set_event(&app.alice, "profile.color", b"red");
    let mut raw = Raw::connect(webhook).await;
    raw.send(&[signed_head(&third, &[]), third.clone()].concat())
        .await;
    assert_eq!(raw.status().await, 503);
    assert!(metric(metrics, refused).await > refused_before);
    // The held requests finish as usual, and their connections close.
    for (raw, body) in held.iter_mut().zip(&bodies) {
        raw.send(body).await;
        assert_eq!(raw.status().await, 200);
    }
    drop(held);
    // Once they are gone, connections are served again.
    let (status, answer) = eventually("the closed connections free their places", || async {
        let (status, answer) = post(
            &client.events,
            Some(&signature(KEY, now(), &third)),
            third.clone(),
        )
        .await;
        (status != 503).then_some((status, answer))
    })
    .await;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test]
async fn a_body_beyond_the_replica_wide_buffer_budget_is_refused_with_503() {
    let app = TestApp::spawn().await;
    let big = set_event(&app.alice, "profile.language", &[b'x'; 1000]);
    let small = set_event(&app.alice, "profile.theme", b"dark");
    let limits = WebhookLimits {
        // The big body and less than the small one besides.
        max_buffered_bytes: big.len() + small.len() / 2,
        body_timeout: Duration::from_secs(60),
        ..WebhookLimits::default()
    };
    let (_client, webhook, metrics, _stop) = with_limits(&app, limits).await;
    let refused = r#"usermeta_webhook_events_total{outcome="buffer_full"}"#;
    let refused_before = metric(metrics, refused).await;
    // The big body is on its way: its bytes are set aside once usermeta asks for it.
    let mut held = Raw::connect(webhook).await;
    held.send(&signed_head(&big, &["expect: 100-continue"]))
        .await;
    assert_eq!(held.status().await, 100);
    // Meanwhile a body that does not fit in what is left is refused before it is read.
    let mut other = Raw::connect(webhook).await;
    other.send(&signed_head(&small, &[])).await;
    assert_eq!(other.status().await, 503);
    assert!(metric(metrics, refused).await > refused_before);
    // Once the big body has been dealt with, its bytes are free again.
    held.send(&big).await;
    assert_eq!(held.status().await, 200);
    let mut again = Raw::connect(webhook).await;
    again
        .send(&[signed_head(&small, &[]), small].concat())
        .await;
    assert_eq!(again.status().await, 200);
}

#[tokio::test]
async fn a_body_that_stops_half_way_is_cut_at_the_body_timeout() {
    let app = TestApp::spawn().await;
    let limits = WebhookLimits {
        body_timeout: Duration::from_millis(500),
        ..WebhookLimits::default()
    };
    let (client, webhook, _metrics, _stop) = with_limits(&app, limits).await;
    assert_eq!(language(&client.grpc, &app.alice_token).await, "en");
    app.standin
        .set_metadata(&app.alice, "profile.language", b"es");
    let body = set_event(&app.alice, "profile.language", b"es");
    let mut raw = Raw::connect(webhook).await;
    raw.send(&signed_head(&body, &[])).await;
    raw.send(&body[..body.len() / 2]).await;
    // Answered at the body timeout (half a second), not after the 10 s it used to take; the guard is generous
    // for a slow machine.
    assert_eq!(raw.status_within(Duration::from_secs(5)).await, 408);
    assert_eq!(
        language(&client.grpc, &app.alice_token).await,
        "en",
        "the cut request changed nothing"
    );
}
