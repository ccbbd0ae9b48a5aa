//! Property tests of the webhook's hostile input (256 cases under `cargo test`, more with `PROPTEST_CASES`):
//! no body or signature header panics the parsers, no header is accepted without the key, and well-formed
//! events read back as sent.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use proptest::prelude::*;

use super::{
    event::{self, Event},
    signature::{SigningKeys, Verifier, sign},
};
use crate::fleet::ChangeKind;

fn json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        "\\PC{0,24}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(serde_json::Value::from),
            prop::collection::btree_map("\\PC{0,10}", inner, 0..3)
                .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
        ]
    })
}

/// Event bodies with ZITADEL's field names and event types holding anything.
fn event_body() -> impl Strategy<Value = serde_json::Value> {
    let event_type = prop_oneof![
        Just(serde_json::json!(event::SET)),
        Just(serde_json::json!(event::REMOVED)),
        Just(serde_json::json!(event::REMOVED_ALL)),
        json(),
    ];
    let fields = prop::collection::vec(
        (
            prop::sample::select(
                &[
                    "aggregateID",
                    "aggregateType",
                    "created_at",
                    "event_payload",
                    "userID",
                ][..],
            ),
            json(),
        ),
        0..5,
    );
    (event_type, fields, prop::option::of(json())).prop_map(|(event_type, fields, payload)| {
        let mut body: serde_json::Map<String, serde_json::Value> =
            fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        body.insert("event_type".into(), event_type);
        if let Some(payload) = payload {
            body.insert("event_payload".into(), payload);
        }
        serde_json::Value::Object(body)
    })
}

fn now() -> (SystemTime, u64) {
    let now = SystemTime::now();
    (
        now,
        now.duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_secs(),
    )
}

proptest! {
    #[test]
    fn no_body_panics_the_event_parser(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
        shaped in event_body(),
    ) {
        let _ = event::parse(&bytes);
        let _ = event::parse(shaped.to_string().as_bytes());
    }

    #[test]
    fn well_formed_events_read_back(
        user_id in "[0-9]{1,20}",
        key in "[A-Za-z0-9._-]{1,40}",
        value in prop::collection::vec(any::<u8>(), 0..200),
        payload_as_base64 in any::<bool>(),
    ) {
        let payload = serde_json::json!({
            "key": key,
            "value": base64::engine::general_purpose::STANDARD.encode(&value),
        });
        let payload = if payload_as_base64 {
            serde_json::json!(base64::engine::general_purpose::STANDARD.encode(payload.to_string()))
        } else {
            payload
        };
        let body = serde_json::json!({
            "aggregateID": user_id, "aggregateType": "user", "event_type": event::SET,
            "created_at": "2026-01-02T03:04:05.678Z", "event_payload": payload,
        });
        match event::parse(body.to_string().as_bytes()) {
            Ok(Event::Metadata(change)) => {
                prop_assert_eq!(change.user_id, user_id);
                prop_assert_eq!(change.key, key);
                prop_assert_eq!(change.kind, ChangeKind::Set);
                prop_assert_eq!(change.value, Some(value));
            }
            other => prop_assert!(false, "{other:?}"),
        }
    }

    #[test]
    fn no_header_is_accepted_without_the_key(
        header in "\\PC{0,120}",
        t_offset in -400i64..400,
        v1 in prop::collection::vec("[0-9a-f]{0,70}", 0..4),
        body in prop::collection::vec(any::<u8>(), 0..128),
    ) {
        let (now, t) = now();
        let verifier = Verifier::new(SigningKeys::from_text("the-key").expect("a key"));
        let t = t.saturating_add_signed(t_offset);
        let built = format!("t={t},{}", v1.iter().map(|v| format!("v1={v}")).collect::<Vec<_>>().join(","));
        for candidate in [header, built] {
            prop_assert!(verifier.accept(Some(&candidate), &body, now).is_err(), "{candidate}");
        }
        // The genuine signature of the same body passes (once), when fresh.
        let genuine = sign("the-key", t, &body);
        prop_assert_eq!(verifier.accept(Some(&genuine), &body, now).is_ok(), t_offset.abs() <= 300);
    }
}
