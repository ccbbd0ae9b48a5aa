//! Property tests of what usermeta reads from ZITADEL: error bodies, metadata values, the v1 and v2 list
//! answers and userinfo answers never panic the parser, whatever bytes or JSON shapes arrive, and what is
//! well formed reads back as sent. `cargo test` runs 256 cases each; `PROPTEST_CASES=100000 cargo test -p
//! usermeta-zitadel fuzz` runs a long fuzzing session.

use std::time::Duration;

use proptest::prelude::*;

use super::{Endpoint, Rejection, management::v2, parse_json, userinfo, value, wire};

/// Any JSON value, a few levels deep.
fn json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        "\\PC{0,24}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map("\\PC{0,12}", inner, 0..4)
                .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
        ]
    })
}

/// An object with ZITADEL's field names (so parsing gets past the first field) holding any JSON.
fn shaped(fields: &'static [&'static str]) -> impl Strategy<Value = serde_json::Value> {
    prop::collection::vec((prop::sample::select(fields), json()), 0..6).prop_map(|pairs| {
        serde_json::Value::Object(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    })
}

fn v1_entry() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![shaped(&["key", "value", "details"]), json()]
}

fn v2_entry() -> impl Strategy<Value = serde_json::Value> {
    prop_oneof![
        shaped(&["key", "value", "creationDate", "changeDate"]),
        json()
    ]
}

proptest! {
    /// v1 `ListUserMetadata` / `ListMyMetadata` answers of any shape: an error or a page, never a panic.
    #[test]
    fn v1_list_answers_never_panic(
        details in prop_oneof![shaped(&["totalResult", "processedSequence", "viewTimestamp"]), json()],
        result in prop::collection::vec(v1_entry(), 0..4),
        bytes in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let answer = serde_json::json!({"details": details, "result": result});
        if let Ok(parsed) = parse_json::<wire::ListMetadataResponse>(Endpoint::ManagementListMetadata, answer.to_string().as_bytes()) {
            let page = wire::into_page(Endpoint::ManagementListMetadata, parsed);
            prop_assert_eq!(page.items.len(), result.len());
        }
        if let Ok(parsed) = parse_json::<wire::ListMetadataResponse>(Endpoint::ManagementListMetadata, &bytes) {
            let _ = wire::into_page(Endpoint::ManagementListMetadata, parsed);
        }
    }

    /// v2 `ListUserMetadata` answers of any shape: an error or a page, never a panic.
    #[test]
    fn v2_list_answers_never_panic(
        pagination in prop_oneof![shaped(&["totalResult", "appliedLimit"]), json()],
        metadata in prop::collection::vec(v2_entry(), 0..4),
        bytes in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let answer = serde_json::json!({"pagination": pagination, "metadata": metadata});
        if let Ok(parsed) = parse_json::<v2::ListResponse>(Endpoint::UserV2ListMetadata, answer.to_string().as_bytes()) {
            let page = v2::page_of(parsed);
            prop_assert_eq!(page.items.len(), metadata.len());
        }
        if let Ok(parsed) = parse_json::<v2::ListResponse>(Endpoint::UserV2ListMetadata, &bytes) {
            let _ = v2::page_of(parsed);
        }
    }

    /// Well-formed list answers read back as sent: every key, every value decoded from standard base64.
    #[test]
    fn well_formed_list_answers_read_back(
        entries in prop::collection::btree_map("[A-Za-z0-9._-]{1,20}", prop::collection::vec(any::<u8>(), 1..40), 0..6),
        total in 0u64..10_000,
    ) {
        let v1 = serde_json::json!({
            "details": {"totalResult": total.to_string()},
            "result": entries.iter().map(|(k, v)| serde_json::json!({"key": k, "value": value::encode(v)})).collect::<Vec<_>>(),
        });
        let v2_answer = serde_json::json!({
            "pagination": {"totalResult": total.to_string()},
            "metadata": entries.iter().map(|(k, v)| serde_json::json!({"key": k, "value": value::encode(v)})).collect::<Vec<_>>(),
        });
        let v1_page = wire::into_page(Endpoint::ManagementListMetadata, parse_json(Endpoint::ManagementListMetadata, v1.to_string().as_bytes()).unwrap());
        let v2_page = v2::page_of(parse_json(Endpoint::UserV2ListMetadata, v2_answer.to_string().as_bytes()).unwrap());
        for page in [v1_page, v2_page] {
            prop_assert_eq!(page.total, total);
            let read: Vec<(String, Vec<u8>)> = page.items.into_iter().map(|item| (item.key, item.value.unwrap())).collect();
            let sent: Vec<(String, Vec<u8>)> = entries.clone().into_iter().collect();
            prop_assert_eq!(read, sent);
        }
    }

    /// userinfo answers of any shape (claims, the metadata claim, role claims): an error or an answer.
    #[test]
    fn userinfo_answers_never_panic(
        claims in shaped(&["sub", "urn:zitadel:iam:user:resourceowner:id", "urn:zitadel:iam:user:metadata",
            "urn:zitadel:iam:org:project:roles", "urn:zitadel:iam:org:project:42:roles", "email"]),
        metadata in prop::collection::btree_map("\\PC{0,12}", json(), 0..4),
        bytes in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let mut with_claim = claims.clone();
        with_claim["urn:zitadel:iam:user:metadata"] = serde_json::Value::Object(metadata.clone().into_iter().collect());
        for answer in [claims.to_string().into_bytes(), with_claim.to_string().into_bytes(), bytes] {
            if let Ok(parsed) = parse_json::<userinfo::Claims>(Endpoint::Userinfo, &answer) {
                let _ = userinfo::user_info(parsed, Some("42"));
            }
        }
    }
}

proptest! {

    #[test]
    fn error_bodies_of_any_bytes_never_panic(
        status in 100u16..600,
        retry_after in prop::option::of(0u64..100_000),
        body in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let rejection = Rejection::parse(status, retry_after.map(Duration::from_secs), &body);
        prop_assert!(rejection.message.chars().count() <= 301);
    }

    #[test]
    fn error_bodies_of_any_json_shape_never_panic(
        code in prop_oneof![
            any::<i64>().prop_map(|n| serde_json::json!(n)),
            "\\PC{0,20}".prop_map(|s| serde_json::json!(s)),
            any::<f64>().prop_map(|f| serde_json::json!(f)),
            Just(serde_json::json!(null)),
            Just(serde_json::json!([1, 2])),
        ],
        message in "\\PC{0,400}",
        id in prop::option::of("\\PC{0,30}"),
    ) {
        let body = serde_json::json!({"code": code, "message": message, "details": [{"id": id}]});
        let rejection = Rejection::parse(400, None, body.to_string().as_bytes());
        prop_assert!(rejection.message.chars().count() <= 301);
    }

    #[test]
    fn values_round_trip(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        prop_assert_eq!(value::decode(&value::encode(&bytes)).unwrap(), bytes.clone());
        // The userinfo flavour: URL-safe without padding.
        use base64::Engine as _;
        let url_safe = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes);
        prop_assert_eq!(value::decode(&url_safe).unwrap(), bytes);
    }

    #[test]
    fn decoding_any_text_never_panics(text in "\\PC{0,200}") {
        let _ = value::decode(&text);
    }
}
