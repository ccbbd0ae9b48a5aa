//! What the policy checked is what ZITADEL receives: over arbitrary user ids and keys, every request is either
//! refused as invalid with nothing sent, or reaches ZITADEL with exactly the user id and key the policy saw
//! (decoded from the path ZITADEL received, or read from its body), and its audit line names the same bytes.

use std::sync::atomic::{AtomicUsize, Ordering};

use percent_encoding::percent_decode_str;
use proptest::{prelude::*, test_runner::TestRunner};
use tonic::{Code, Status};
use tonic_types::StatusExt as _;
use usermeta::api::pb::{DeleteMetadataRequest, ListMetadataRequest, SetMetadataRequest};

use crate::support::{
    ApiChoice, TestApp, authed, capture, entry, text, violated_fields, with_request_id,
};

/// Characters a user id may not carry (they change on the way into a URL path).
const ID_DELIMITERS: &str = "/?#[]@!$&'()*+,;=%\\\"<>^`{|}";

fn valid_user_id(id: &str) -> bool {
    id.chars().count() <= 200
        && !matches!(id, "." | "..")
        && !id
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || ID_DELIMITERS.contains(c))
}

fn valid_key(key: &str) -> bool {
    let chars = key.chars().count();
    (1..=200).contains(&chars) && !matches!(key, "." | "..") && !key.chars().any(char::is_control)
}

/// Ids that look like alice's to a careless comparison, and arbitrary ones.
fn user_ids(alice: String) -> impl Strategy<Value = String> {
    let tricks = "[./\\t\\n\\r %?#\u{0}\u{85}\u{200b}\u{a0}]{0,3}";
    prop_oneof![
        Just(String::new()),
        Just(".".to_owned()),
        Just("..".to_owned()),
        "[0-9]{18}",
        "\\PC{0,12}",
        "[0-9a-z./%?#;\\\\ \\t\\r\\n\u{0}\u{7f}\u{85}-]{0,10}",
        (tricks, tricks).prop_map(move |(before, after)| format!("{before}{alice}{after}")),
    ]
}

fn keys() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(".".to_owned()),
        Just("..".to_owned()),
        Just("_search".to_owned()),
        Just("_bulk".to_owned()),
        "[A-Za-z0-9._~-]{1,10}",
        "profile\\.[a-z ./%\\t\\n]{0,4}",
        "\\PC{1,12}",
        "[a-z./ \\t\\n\\r%_?#\u{0}]{1,6}",
    ]
}

/// The path segments of a request ZITADEL received, decoded as ZITADEL decodes them.
fn decoded_segments(path: &str) -> Vec<String> {
    path.trim_start_matches('/')
        .split('/')
        .map(|segment| {
            percent_decode_str(segment)
                .decode_utf8()
                .expect("usermeta sends UTF-8 paths")
                .into_owned()
        })
        .collect()
}

/// Asserts that every management request since the last clear addresses `user_id` and `key` exactly, and that
/// there was at least one.
fn assert_zitadel_received(app: &TestApp, user_id: &str, key: Option<&str>, tail: &str) {
    let requests = app.management_requests();
    assert!(
        !requests.is_empty(),
        "nothing reached ZITADEL for {user_id:?}"
    );
    for request in requests {
        assert_eq!(request.query, None, "{}", request.path);
        if let Some(procedure) = request.connect_procedure() {
            assert_v2_received(&request, procedure, user_id, key, tail);
            continue;
        }
        let segments = decoded_segments(&request.path);
        assert_eq!(
            segments.len(),
            6,
            "a user id or key added a segment: {}",
            request.path
        );
        assert_eq!(
            segments[..3],
            ["management", "v1", "users"],
            "{}",
            request.path
        );
        assert_eq!(segments[3], user_id, "{}", request.path);
        assert_eq!(segments[4], "metadata", "{}", request.path);
        match (segments[5].as_str(), key) {
            ("_search", _) => assert_eq!(tail, "_search", "{}", request.path),
            ("_bulk", Some(key)) => {
                let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
                let sent: Vec<&str> = match body.get("metadata") {
                    Some(entries) => entries
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|e| e["key"].as_str().unwrap())
                        .collect(),
                    None => body["keys"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|k| k.as_str().unwrap())
                        .collect(),
                };
                assert_eq!(sent, [key], "{}", request.path);
            }
            (in_path, Some(key)) => assert_eq!(in_path, key, "{}", request.path),
            (other, None) => panic!("unexpected tail {other:?}"),
        }
    }
}

/// A v2 call (Connect JSON) names the user and the key only in its body: exactly those bytes.
fn assert_v2_received(
    request: &zitadel_standin::RecordedRequest,
    procedure: &str,
    user_id: &str,
    key: Option<&str>,
    tail: &str,
) {
    let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
    assert_eq!(body["userId"], user_id, "{procedure}: {body}");
    let keys = |list: &serde_json::Value, field: Option<&str>| -> Vec<String> {
        list.as_array()
            .unwrap()
            .iter()
            .map(|e| match field {
                Some(field) => e[field].as_str().unwrap().to_owned(),
                None => e.as_str().unwrap().to_owned(),
            })
            .collect()
    };
    match (procedure, key) {
        ("GetUserByID", _) => {}
        ("ListUserMetadata", _) => assert_eq!(tail, "_search", "{procedure}"),
        ("SetUserMetadata", Some(key)) => {
            assert_eq!(keys(&body["metadata"], Some("key")), [key], "{body}");
        }
        ("DeleteUserMetadata", Some(key)) => assert_eq!(keys(&body["keys"], None), [key], "{body}"),
        (other, _) => panic!("unexpected v2 call {other}"),
    }
}

/// The audit line of the call with `request_id`.
fn audit_line(request_id: &str) -> serde_json::Value {
    let lines = capture().lines_with(request_id);
    lines
        .into_iter()
        .find(|line| line["target"] == "usermeta::audit")
        .unwrap_or_else(|| panic!("no audit line for {request_id}"))
}

fn assert_invalid(status: &Status, user_id: &str, key: &str, field: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let fields = violated_fields(status);
    let expected_fields: Vec<String> = [
        (!valid_user_id(user_id)).then(|| "user_id".to_owned()),
        (!valid_key(key)).then(|| field.to_owned()),
    ]
    .into_iter()
    .flatten()
    .collect();
    assert_eq!(fields, expected_fields, "{status:?}");
}

static CASE: AtomicUsize = AtomicUsize::new(0);

/// One arbitrary (user id, key) through SetMetadata by an admin and by a non-admin, ListMetadata and
/// DeleteMetadata.
async fn check_case(app: &TestApp, user_id: &str, key: &str) {
    let case = CASE.fetch_add(1, Ordering::Relaxed);
    let valid = valid_user_id(user_id) && valid_key(key);
    // "No user_id" means the caller: the admin here.
    let target = if user_id.is_empty() {
        app.admin.as_str()
    } else {
        user_id
    };
    let mut client = app.client.clone();

    // An admin's write reaches ZITADEL with exactly these bytes, and the audit line names them.
    app.standin.clear_requests();
    let request_id = format!("exact-set-{case}");
    let answer = client
        .set_metadata(with_request_id(
            authed(
                SetMetadataRequest {
                    user_id: user_id.to_owned(),
                    entries: vec![entry(key, text("v"))],
                    ..Default::default()
                },
                &app.admin_token,
            ),
            &request_id,
        ))
        .await;
    if !valid {
        assert_invalid(&answer.unwrap_err(), user_id, key, "entries[0].key");
        app.assert_no_management_request();
    } else {
        assert_zitadel_received(app, target, Some(key), "");
        let audit = audit_line(&request_id);
        assert_eq!(audit["fields"]["user_id"], target, "{audit}");
        assert_eq!(audit["fields"]["keys"], format!("{:?}", [key]), "{audit}");
    }

    // A refusal names exactly what the policy checked, and nothing is sent.
    app.standin.clear_requests();
    let refused = client
        .set_metadata(authed(
            SetMetadataRequest {
                user_id: user_id.to_owned(),
                entries: vec![entry(key, text("v"))],
                ..Default::default()
            },
            &app.alice_token,
        ))
        .await;
    let is_alice = user_id.is_empty() || user_id == app.alice;
    if !valid {
        assert_invalid(&refused.unwrap_err(), user_id, key, "entries[0].key");
        app.assert_no_management_request();
    } else if is_alice && key.starts_with("profile.") {
        assert_zitadel_received(app, &app.alice, Some(key), "");
    } else {
        let status = refused.unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        let info = status.get_details_error_info().unwrap();
        let named_target = if is_alice { "self" } else { user_id };
        assert_eq!(info.metadata["target"], named_target, "{status:?}");
        assert_eq!(info.metadata["key"], key, "{status:?}");
        app.assert_no_management_request();
    }

    // A listing of that user.
    app.standin.clear_requests();
    let listed = client
        .list_metadata(authed(
            ListMetadataRequest {
                user_id: user_id.to_owned(),
                ..Default::default()
            },
            &app.admin_token,
        ))
        .await;
    if !valid_user_id(user_id) {
        assert_eq!(listed.unwrap_err().code(), Code::InvalidArgument);
        app.assert_no_management_request();
    } else if !user_id.is_empty() && user_id != app.admin {
        assert_zitadel_received(app, user_id, None, "_search");
    }

    // A delete of that key.
    app.standin.clear_requests();
    let request_id = format!("exact-delete-{case}");
    let deleted = client
        .delete_metadata(with_request_id(
            authed(
                DeleteMetadataRequest {
                    user_id: user_id.to_owned(),
                    keys: vec![key.to_owned()],
                    allow_missing: true,
                    ..Default::default()
                },
                &app.admin_token,
            ),
            &request_id,
        ))
        .await;
    if !valid {
        assert_invalid(&deleted.unwrap_err(), user_id, key, "keys[0]");
        app.assert_no_management_request();
    } else {
        assert_zitadel_received(app, target, Some(key), "");
        let audit = audit_line(&request_id);
        assert_eq!(audit["fields"]["user_id"], target, "{audit}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_audit_and_zitadel_see_the_same_user_id_and_key() {
    same_user_id_and_key_everywhere(ApiChoice::V1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_audit_and_the_v2_user_service_see_the_same_user_id_and_key() {
    same_user_id_and_key_everywhere(ApiChoice::V2).await;
}

async fn same_user_id_and_key_everywhere(api: ApiChoice) {
    capture();
    // Every case checks what ZITADEL received: reads of a user seen before must reach it too.
    let app = TestApp::builder()
        .api(api)
        .no_metadata_cache()
        .spawn()
        .await;
    let handle = tokio::runtime::Handle::current();
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 160,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = (user_ids(app.alice.clone()), keys());
    let outcome = tokio::task::block_in_place(|| {
        runner.run(&strategy, |(user_id, key)| {
            handle.block_on(check_case(&app, &user_id, &key));
            Ok(())
        })
    });
    if let Err(failure) = outcome {
        panic!("{failure}");
    }
}

#[tokio::test]
async fn a_user_id_that_differs_from_yours_only_by_what_urls_drop_is_refused() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    for disguised in [
        format!("{}\t", app.alice),
        format!("\n{}", app.alice),
        format!("{}/.", app.alice),
        format!("../{}", app.alice),
        format!("{} ", app.alice),
        ".".to_owned(),
        "..".to_owned(),
    ] {
        let status = client
            .set_metadata(authed(
                SetMetadataRequest {
                    user_id: disguised.clone(),
                    entries: vec![entry("ContractNumber", text("9999"))],
                    ..Default::default()
                },
                &app.admin_token,
            ))
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{disguised:?}: {status:?}"
        );
        assert_eq!(violated_fields(&status), ["user_id"], "{disguised:?}");
    }
    for key in [".", "..", "a\nb", "tab\there"] {
        let status = client
            .set_metadata(authed(
                SetMetadataRequest {
                    entries: vec![entry(key, text("x"))],
                    ..Default::default()
                },
                &app.alice_token,
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{key:?}: {status:?}");
        assert_eq!(violated_fields(&status), ["entries[0].key"], "{key:?}");
    }
    app.assert_no_management_request();
    assert_eq!(
        app.standin.metadata_of(&app.alice)["ContractNumber"],
        b"1234"
    );
}

#[tokio::test]
async fn keys_with_spaces_and_delimiters_arrive_exactly_as_given() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    let keys = [
        "profile.with space",
        "profile.a/b",
        "profile.100%",
        "profile.?#",
    ];
    for key in keys {
        client
            .set_metadata(authed(
                SetMetadataRequest {
                    entries: vec![entry(key, text("kept"))],
                    ..Default::default()
                },
                &app.alice_token,
            ))
            .await
            .unwrap();
    }
    let stored = app.standin.metadata_of(&app.alice);
    for key in keys {
        assert_eq!(
            stored.get(key).map(Vec::as_slice),
            Some(&b"kept"[..]),
            "{key}"
        );
    }
}

#[tokio::test]
async fn your_own_metadata_in_another_organisation_is_refused_not_half_checked() {
    let app = TestApp::spawn().await;
    let mut client = app.client.clone();
    // The policy would see alice's organisation (from ZITADEL) while ZITADEL would be asked about another.
    let status = client
        .set_metadata(authed(
            SetMetadataRequest {
                organization_id: app.other_org.clone(),
                entries: vec![entry("profile.language", text("fr"))],
                ..Default::default()
            },
            &app.alice_token,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(violated_fields(&status), ["organization_id"]);
    app.assert_no_management_request();
    // Naming her own organisation is what she gets anyway.
    client
        .set_metadata(authed(
            SetMetadataRequest {
                organization_id: app.org.clone(),
                entries: vec![entry("profile.language", text("fr"))],
                ..Default::default()
            },
            &app.alice_token,
        ))
        .await
        .unwrap();
    let sent = app.management_requests();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].header("x-zitadel-orgid"), Some(app.org.as_str()));
}
