//! ZITADEL's Actions v2 events, signed as ZITADEL signs them, for the webhook's tests.

use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::hmac;
use base64::Engine as _;

/// `ZITADEL-Signature` as ZITADEL computes it: `t=<unix>,v1=<hex HMAC-SHA256(key, "<t>.<body>")>`.
pub(crate) fn signature(key: &str, t: u64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key.as_bytes());
    let mut signed = format!("{t}.").into_bytes();
    signed.extend_from_slice(body);
    let tag = hmac::sign(&key, &signed);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("t={t},v1={hex}")
}

pub(crate) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A `ContextInfoEvent` body for `user_id`.
pub(crate) fn event(user_id: &str, event_type: &str, payload: serde_json::Value) -> Vec<u8> {
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

pub(crate) fn set_event(user_id: &str, key: &str, value: &[u8]) -> Vec<u8> {
    event(
        user_id,
        "user.metadata.set",
        serde_json::json!({
            "key": key,
            "value": base64::engine::general_purpose::STANDARD.encode(value),
        }),
    )
}

pub(crate) async fn post(url: &str, signature: Option<&str>, body: Vec<u8>) -> (u16, String) {
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

/// Delivers `body` to the app's webhook signed with `key`, now; the answer's status.
pub(crate) async fn deliver_event(
    app: &super::TestApp,
    key: &str,
    body: &serde_json::Value,
) -> u16 {
    let url = format!(
        "http://{}/zitadel/events",
        app.webhook_addr.expect("the webhook listens")
    );
    let body = serde_json::to_vec(body).unwrap();
    let signed = signature(key, now(), &body);
    post(&url, Some(&signed), body).await.0
}
