//! Property tests (bounded, run by `cargo test`) of what usermeta reads from ZITADEL: error bodies and
//! metadata values never panic the parser, and values round-trip.

use std::time::Duration;

use proptest::prelude::*;

use super::{Rejection, value};

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

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
