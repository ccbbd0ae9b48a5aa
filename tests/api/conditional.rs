//! Versions and conditional writes: the etag every read carries, `if_match` / `if_absent` on SetMetadata,
//! `if_match` on DeleteMetadata, JSON merge patches, and what the policy makes of them, on one replica.
//! Across replicas through Redis: `fleet_writes.rs`.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::StatusExt as _;
use usermeta::{
    api::pb::{
        BatchGetMetadataRequest, DeleteMetadataRequest, GetMyMetadataRequest, ListMetadataRequest,
        MetadataEntry, MetadataSource, SetMetadataRequest,
    },
    policy::Policy,
};

use crate::support::*;

fn set(user_id: &str, entries: Vec<MetadataEntry>) -> SetMetadataRequest {
    SetMetadataRequest {
        user_id: user_id.into(),
        entries,
        ..Default::default()
    }
}

fn if_match(key: &str, value: &str, etag: &str) -> MetadataEntry {
    MetadataEntry {
        if_match: etag.into(),
        ..entry(key, text(value))
    }
}

fn if_absent(key: &str, value: &str) -> MetadataEntry {
    MetadataEntry {
        if_absent: true,
        ..entry(key, text(value))
    }
}

fn patch(key: &str, json: &str) -> MetadataEntry {
    MetadataEntry {
        key: key.into(),
        json_merge_patch: json.into(),
        ..Default::default()
    }
}

/// `ErrorInfo.metadata` of a status.
fn facts(status: &Status) -> HashMap<String, String> {
    status
        .get_details_error_info()
        .map(|info| info.metadata)
        .unwrap_or_default()
}

/// The etag of `key` of `user_id` as the admin's ListMetadata reads it; empty when absent.
async fn etag_of(app: &TestApp, user_id: &str, key: &str) -> String {
    let listed = app
        .list_metadata(
            &app.admin_token,
            ListMetadataRequest {
                user_id: user_id.into(),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .into_inner();
    listed
        .metadata
        .into_iter()
        .find(|m| m.key == key)
        .map(|m| m.etag)
        .unwrap_or_default()
}

/// Admin does anything; everyone writes (and deletes) their own `profile.` keys and their hidden `secret`;
/// `profile.small` holds JSON of at most 40 bytes.
fn policy(app: &TestApp) -> Policy {
    Policy::from_toml(
        &format!(
            r#"
[[rule]]
name = "the admin does anything"
who = {{ subjects = ["{admin}"] }}
whose = "any"
keys = ["*"]
actions = ["read", "write", "delete"]

[[rule]]
name = "everyone writes their own profile and secret"
whose = "self"
keys = ["profile.*", "secret"]
actions = ["write", "delete"]

[[key]]
name = "secret"
hidden = true

[[key]]
name = "profile.small"
max_bytes = 40
json = true
"#,
            admin = app.admin
        ),
        "conditional.toml",
    )
    .unwrap()
}

async fn the_etag_is_one_for_one_value_from_every_source(api: ApiChoice) {
    let app = TestApp::builder().api(api).no_cache().spawn().await;
    let mut etags = Vec::new();
    for source in [MetadataSource::Userinfo, MetadataSource::AuthApi] {
        let mine = app
            .get_my_metadata(
                &app.alice_token,
                GetMyMetadataRequest {
                    keys: vec!["profile.language".into()],
                    source: source as i32,
                },
            )
            .await
            .unwrap()
            .into_inner();
        etags.push(mine.metadata[0].etag.clone());
    }
    etags.push(etag_of(&app, &app.alice, "profile.language").await);
    etags.push(etag_of(&app, "", "profile.language").await.clone());
    let batch = app
        .client
        .clone()
        .batch_get_metadata(authed(
            BatchGetMetadataRequest {
                user_ids: vec![app.alice.clone()],
                keys: vec!["profile.language".into()],
                ..Default::default()
            },
            &app.admin_token,
        ))
        .await
        .unwrap()
        .into_inner();
    etags.push(batch.results[0].metadata[0].etag.clone());
    // The admin's own listing has no profile.language: the last-but-one is empty then; compare the others.
    etags.retain(|etag| !etag.is_empty());
    assert_eq!(etags.len(), 4, "{etags:?}");
    assert!(etags.iter().all(|etag| *etag == etags[0]), "{etags:?}");

    app.set_metadata(
        &app.admin_token,
        set(&app.alice, vec![entry("profile.language", text("de"))]),
    )
    .await
    .unwrap();
    let changed = etag_of(&app, &app.alice, "profile.language").await;
    assert_ne!(changed, etags[0], "the etag changes with the value");
    // Another key holding the same value has another etag.
    app.set_metadata(
        &app.admin_token,
        set(&app.alice, vec![entry("profile.other", text("de"))]),
    )
    .await
    .unwrap();
    assert_ne!(etag_of(&app, &app.alice, "profile.other").await, changed);
}

async fn if_match_writes_only_over_the_etag_read(api: ApiChoice) {
    let app = TestApp::builder().api(api).spawn().await;
    let read = etag_of(&app, &app.alice, "ContractNumber").await;
    app.set_metadata(
        &app.admin_token,
        set(&app.alice, vec![if_match("ContractNumber", "1", &read)]),
    )
    .await
    .unwrap();
    let now = etag_of(&app, &app.alice, "ContractNumber").await;
    // A second writer that read the same version loses, and learns the current one.
    let status = app
        .set_metadata(
            &app.admin_token,
            set(&app.alice, vec![if_match("ContractNumber", "2", &read)]),
        )
        .await
        .unwrap_err();
    assert_status(&status, Code::Aborted, "ETAG_MISMATCH");
    let facts = facts(&status);
    assert_eq!(facts["key"], "ContractNumber");
    assert_eq!(facts["current_etag"], now);
    assert_eq!(app.standin.metadata_of(&app.alice)["ContractNumber"], b"1");
}

async fn a_condition_that_fails_writes_nothing_of_the_request(api: ApiChoice) {
    let app = TestApp::builder().api(api).spawn().await;
    let status = app
        .set_metadata(
            &app.admin_token,
            set(
                &app.alice,
                vec![
                    entry("plain", text("x")),
                    if_absent("ContractNumber", "9"),
                    patch("profile.prefs", r#"{"a":1}"#),
                ],
            ),
        )
        .await
        .unwrap_err();
    assert_status(&status, Code::Aborted, "ETAG_MISMATCH");
    assert_eq!(facts(&status)["key"], "ContractNumber");
    let stored = app.standin.metadata_of(&app.alice);
    assert!(!stored.contains_key("plain") && !stored.contains_key("profile.prefs"));
    assert_eq!(stored["ContractNumber"], b"1234");
}

async fn if_absent_writes_only_a_key_that_does_not_exist(api: ApiChoice) {
    let app = TestApp::builder().api(api).spawn().await;
    app.set_metadata(
        &app.admin_token,
        set(&app.alice, vec![if_absent("fresh", "1")]),
    )
    .await
    .unwrap();
    let status = app
        .set_metadata(
            &app.admin_token,
            set(&app.alice, vec![if_absent("fresh", "2")]),
        )
        .await
        .unwrap_err();
    assert_status(&status, Code::Aborted, "ETAG_MISMATCH");
    assert_eq!(
        facts(&status)["current_etag"],
        etag_of(&app, &app.alice, "fresh").await
    );
    assert_eq!(app.standin.metadata_of(&app.alice)["fresh"], b"1");
}

#[tokio::test]
async fn etags_of_another_key_or_user_or_made_up_do_not_match() {
    let app = TestApp::spawn().await;
    let other_key = etag_of(&app, &app.alice, "profile.language").await;
    app.standin
        .set_metadata(&app.admin, "ContractNumber", b"5678");
    let other_user = etag_of(&app, &app.admin, "ContractNumber").await;
    assert!(!other_key.is_empty() && !other_user.is_empty());
    for etag in [
        other_key.as_str(),
        other_user.as_str(),
        "1.made-up",
        "\"W/xyz\"",
    ] {
        let status = app
            .set_metadata(
                &app.admin_token,
                set(&app.alice, vec![if_match("ContractNumber", "0", etag)]),
            )
            .await
            .unwrap_err();
        assert_status(&status, Code::Aborted, "ETAG_MISMATCH");
    }
    // An etag of a key that does not exist.
    let status = app
        .set_metadata(
            &app.admin_token,
            set(&app.alice, vec![if_match("nothing", "0", &other_key)]),
        )
        .await
        .unwrap_err();
    assert_status(&status, Code::Aborted, "ETAG_MISMATCH");
    assert_eq!(facts(&status)["current"], "absent");
    assert_eq!(
        app.standin.metadata_of(&app.alice)["ContractNumber"],
        b"1234"
    );
}

async fn delete_removes_only_over_the_etag_read(api: ApiChoice) {
    let app = TestApp::builder().api(api).spawn().await;
    let read = etag_of(&app, &app.alice, "ContractNumber").await;
    let delete = |etag: &str, key: &str| DeleteMetadataRequest {
        user_id: app.alice.clone(),
        keys: vec![key.into(), "profile.language".into()],
        if_match: [(key.to_owned(), etag.to_owned())].into(),
        ..Default::default()
    };
    let status = app
        .delete_metadata(&app.admin_token, delete("1.stale", "ContractNumber"))
        .await
        .unwrap_err();
    assert_status(&status, Code::Aborted, "ETAG_MISMATCH");
    assert_eq!(facts(&status)["current_etag"], read);
    assert!(
        app.standin
            .metadata_of(&app.alice)
            .contains_key("profile.language"),
        "nothing of the request went"
    );
    app.delete_metadata(&app.admin_token, delete(&read, "ContractNumber"))
        .await
        .unwrap();
    assert!(app.standin.metadata_of(&app.alice).is_empty());
    // A key that is gone no longer has the etag.
    let status = app
        .delete_metadata(
            &app.admin_token,
            DeleteMetadataRequest {
                user_id: app.alice.clone(),
                keys: vec!["ContractNumber".into()],
                if_match: [("ContractNumber".to_owned(), read)].into(),
                allow_missing: true,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_status(&status, Code::Aborted, "ETAG_MISMATCH");
    assert_eq!(facts(&status)["current"], "absent");
}

async fn a_merge_patch_merges_into_the_current_object(api: ApiChoice) {
    let app = TestApp::builder().api(api).spawn().await;
    // An absent key starts from {}.
    app.set_metadata(
        &app.alice_token,
        set(
            "",
            vec![patch("profile.prefs", r#"{"a":1,"b":{"c":2,"x":[1]}}"#)],
        ),
    )
    .await
    .unwrap();
    app.set_metadata(
        &app.alice_token,
        set(
            "",
            vec![patch("profile.prefs", r#"{"b":{"c":null,"d":3},"e":"4"}"#)],
        ),
    )
    .await
    .unwrap();
    let stored: serde_json::Value =
        serde_json::from_slice(&app.standin.metadata_of(&app.alice)["profile.prefs"]).unwrap();
    assert_eq!(
        stored,
        serde_json::json!({"a":1,"b":{"x":[1],"d":3},"e":"4"})
    );
}

async fn bad_patches_are_invalid_arguments(api: ApiChoice) {
    let app = TestApp::builder().api(api).spawn().await;
    let app = app.another().api(api).policy(policy(&app)).spawn().await;
    for (entry, field) in [
        (
            patch("profile.x", "{not json"),
            "entries[0].json_merge_patch",
        ),
        (patch("profile.x", "[1,2]"), "entries[0].json_merge_patch"),
        (
            MetadataEntry {
                value: text("v"),
                ..patch("profile.x", "{}")
            },
            "entries[0].json_merge_patch",
        ),
        (
            MetadataEntry {
                if_absent: true,
                ..if_match("profile.x", "v", "1.x")
            },
            "entries[0].if_absent",
        ),
        // The current value "en" is no JSON object.
        (
            patch("profile.language", r#"{"a":1}"#),
            "entries[0].json_merge_patch",
        ),
    ] {
        let status = app
            .set_metadata(&app.alice_token, set("", vec![entry]))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(violated_fields(&status), [field], "{status:?}");
    }
    // The patched value meets the key's rules: profile.small holds at most 40 bytes.
    app.set_metadata(
        &app.alice_token,
        set("", vec![patch("profile.small", r#"{"a":"0123456789"}"#)]),
    )
    .await
    .unwrap();
    let status = app
        .set_metadata(
            &app.alice_token,
            set(
                "",
                vec![patch("profile.small", r#"{"b":"0123456789abcdef"}"#)],
            ),
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(
        app.standin.metadata_of(&app.alice)["profile.small"],
        br#"{"a":"0123456789"}"#
    );
}

#[tokio::test]
async fn the_policy_checks_a_patch_as_a_write_of_its_key() {
    let app = TestApp::spawn().await;
    let status = app
        .set_metadata(
            &app.alice_token,
            set("", vec![patch("ContractNumber", r#"{"a":1}"#)]),
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    app.assert_no_management_request();
}

#[tokio::test]
async fn a_mismatch_on_a_hidden_key_does_not_show_its_etag_to_its_user() {
    let app = TestApp::spawn().await;
    let app = app.another().policy(policy(&app)).spawn().await;
    app.standin.set_metadata(&app.alice, "secret", b"s3");
    let status = app
        .set_metadata(
            &app.alice_token,
            set("", vec![if_match("secret", "x", "1.guess")]),
        )
        .await
        .unwrap_err();
    assert_status(&status, Code::Aborted, "ETAG_MISMATCH");
    assert_eq!(facts(&status)["current"], "exists");
    assert!(!status.message().contains("1."), "{}", status.message());
    let status = app
        .set_metadata(&app.alice_token, set("", vec![if_absent("secret", "x")]))
        .await
        .unwrap_err();
    assert!(!facts(&status).contains_key("current_etag"), "{status:?}");
    // The admin, who may read it, learns it.
    let status = app
        .set_metadata(
            &app.admin_token,
            set(&app.alice, vec![if_match("secret", "x", "1.guess")]),
        )
        .await
        .unwrap_err();
    assert_eq!(
        facts(&status)["current_etag"],
        etag_of(&app, &app.alice, "secret").await
    );
}

#[tokio::test]
async fn concurrent_increments_through_one_replica_lose_nothing() {
    let app = TestApp::spawn().await;
    app.standin.set_metadata(&app.alice, "counter", b"0");
    let (ok, aborted) = increments(&[&app, &app], &app.admin_token, &app.alice, 20).await;
    assert_eq!(ok + aborted, 20);
    assert!(ok >= 1);
    assert_eq!(
        app.standin.metadata_of(&app.alice)["counter"],
        ok.to_string().as_bytes()
    );
}

on_both_apis!(
    the_etag_is_one_for_one_value_from_every_source,
    if_match_writes_only_over_the_etag_read,
    a_condition_that_fails_writes_nothing_of_the_request,
    if_absent_writes_only_a_key_that_does_not_exist,
    delete_removes_only_over_the_etag_read,
    a_merge_patch_merges_into_the_current_object,
    bad_patches_are_invalid_arguments,
);
