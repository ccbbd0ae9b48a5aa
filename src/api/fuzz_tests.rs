//! Property tests (256 cases under `cargo test`, more with `PROPTEST_CASES`): request validation (WatchMetadata's
//! too) and page tokens never panic on arbitrary input, valid input passes, and page tokens round-trip.

use proptest::prelude::*;
use prost::Message as _;

use super::{
    page_token::{self, Offsets, PageTokenKey, Position, Query},
    pb, validate,
};
use usermeta_zitadel::metadata::{KeyFilter, KeyMatch};

/// 256 cases by default; `PROPTEST_CASES=100000 cargo test fuzz` fuzzes for longer.
fn config() -> ProptestConfig {
    ProptestConfig::default()
}

/// Keys as callers use them (never the path segments `.` and `..`, which are refused).
fn key() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_-][A-Za-z0-9._-]{0,39}"
}

proptest! {
    #![proptest_config(config())]

    /// Whatever bytes arrive as a request message, decoding then validating never panics.
    #[test]
    fn arbitrary_messages_never_panic_validation(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(request) = pb::SetMetadataRequest::decode(bytes.as_slice()) {
            let _ = validate::set(request);
        }
        if let Ok(request) = pb::DeleteMetadataRequest::decode(bytes.as_slice()) {
            let _ = validate::delete(request);
        }
        if let Ok(request) = pb::ListMetadataRequest::decode(bytes.as_slice()) {
            let _ = validate::list(request, &PageTokenKey::random());
        }
        if let Ok(request) = pb::GetMyMetadataRequest::decode(bytes.as_slice()) {
            let _ = validate::get_mine(request);
        }
        if let Ok(request) = pb::WatchMetadataRequest::decode(bytes.as_slice()) {
            let _ = validate::watch(request);
        }
        if let Ok(request) = pb::BatchGetMetadataRequest::decode(bytes.as_slice()) {
            let _ = validate::batch_get(request);
        }
        if let Ok(request) = pb::FindUsersByMetadataRequest::decode(bytes.as_slice()) {
            let _ = validate::find(request, &PageTokenKey::random());
        }
    }

    #[test]
    fn arbitrary_fields_never_panic_validation(
        user_id in "\\PC{0,250}",
        org_id in "\\PC{0,40}",
        keys in prop::collection::vec("\\PC{0,210}", 0..5),
        page_token in "\\PC{0,60}",
        page_size in any::<i32>(),
    ) {
        let _ = validate::delete(pb::DeleteMetadataRequest {
            user_id: user_id.clone(),
            organization_id: org_id.clone(),
            keys: keys.clone(),
            allow_missing: false,
            ..Default::default()
        });
        let _ = validate::set(pb::SetMetadataRequest {
            user_id: user_id.clone(),
            organization_id: org_id.clone(),
            entries: keys.iter().map(|k| pb::MetadataEntry {
                key: k.clone(),
                value: Some(pb::MetadataValue { kind: Some(pb::metadata_value::Kind::Text(k.clone())) }),
                ..Default::default()
            }).collect(),
        });
        let _ = validate::list(pb::ListMetadataRequest {
            user_id,
            organization_id: org_id,
            page_size,
            page_token,
            ..Default::default()
        }, &PageTokenKey::random());
    }

    #[test]
    fn valid_writes_and_deletes_pass(
        user_id in "[0-9]{0,20}",
        org_id in "[0-9]{0,20}",
        entries in prop::collection::btree_map(key(), prop::collection::vec(any::<u8>(), 1..64), 1..8),
    ) {
        let set = pb::SetMetadataRequest {
            user_id: user_id.clone(),
            organization_id: org_id.clone(),
            entries: entries.iter().map(|(k, v)| pb::MetadataEntry {
                key: k.clone(),
                value: Some(pb::MetadataValue { kind: Some(pb::metadata_value::Kind::Binary(v.clone())) }),
                ..Default::default()
            }).collect(),
        };
        prop_assert!(validate::set(set).is_ok());
        let delete = pb::DeleteMetadataRequest {
            user_id,
            organization_id: org_id,
            keys: entries.keys().cloned().collect(),
            allow_missing: true,
            ..Default::default()
        };
        prop_assert!(validate::delete(delete).is_ok());
    }

    #[test]
    fn page_tokens_never_panic_on_arbitrary_text(token in "\\PC{0,80}", user_id in "[0-9]{0,20}") {
        let query = Query { user_id: &user_id, org_id: "", filter: None, find: None, organization: false };
        let _ = page_token::decode(&PageTokenKey::random(), &token, query);
    }

    #[test]
    fn page_tokens_round_trip_and_stay_bound_to_their_query(
        offset in 1..=page_token::MAX_OFFSET,
        visible in any::<bool>(),
        user_id in "[0-9]{1,20}",
        org_id in "[0-9]{0,20}",
        filter_key in prop::option::of(key()),
    ) {
        let filter = filter_key.map(|key| KeyFilter { key, matching: KeyMatch::StartsWith });
        let query = Query { user_id: &user_id, org_id: &org_id, filter: filter.as_ref(), find: None, organization: false };
        let key = PageTokenKey::random();
        let position = Position { offset, offsets: if visible { Offsets::Visible } else { Offsets::Zitadel } };
        let token = page_token::encode(&key, position, query);
        prop_assert_eq!(page_token::decode(&key, &token, query), Ok(position));
        let other_user = format!("{user_id}0");
        let other = Query { user_id: &other_user, ..query };
        prop_assert_eq!(page_token::decode(&key, &token, other), Err(page_token::PageTokenError::NotIssued));
    }
}
