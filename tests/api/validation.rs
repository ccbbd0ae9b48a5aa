//! Every validation rule: INVALID_ARGUMENT with the field named, and not one request to ZITADEL.

use tonic::Code;
use usermeta::api::pb::{
    BatchGetMetadataRequest, DeleteMetadataRequest, GetMyMetadataRequest, KeyFilter,
    ListMetadataRequest, MetadataEntry, MetadataValue, SetMetadataRequest,
};

use crate::support::*;

fn long(chars: usize) -> String {
    "k".repeat(chars)
}

async fn set_requests_are_checked_before_anything_is_sent(api: ApiChoice) {
    let app = TestApp::builder().api(api).spawn().await;
    let cases: Vec<(SetMetadataRequest, Vec<&str>)> = vec![
        (SetMetadataRequest::default(), vec!["entries"]),
        (
            SetMetadataRequest {
                entries: vec![entry("", text("v"))],
                ..Default::default()
            },
            vec!["entries[0].key"],
        ),
        (
            SetMetadataRequest {
                entries: vec![entry(&long(201), text("v"))],
                ..Default::default()
            },
            vec!["entries[0].key"],
        ),
        (
            SetMetadataRequest {
                entries: vec![entry("k", None)],
                ..Default::default()
            },
            vec!["entries[0].value"],
        ),
        (
            SetMetadataRequest {
                entries: vec![entry("k", Some(MetadataValue { kind: None }))],
                ..Default::default()
            },
            vec!["entries[0].value"],
        ),
        (
            SetMetadataRequest {
                entries: vec![entry("k", text(""))],
                ..Default::default()
            },
            vec!["entries[0].value"],
        ),
        (
            SetMetadataRequest {
                entries: vec![entry("k", binary(&vec![1; 500_001]))],
                ..Default::default()
            },
            vec!["entries[0].value"],
        ),
        (
            SetMetadataRequest {
                entries: vec![entry("k", text("1")), entry("k", text("2"))],
                ..Default::default()
            },
            vec!["entries[1].key"],
        ),
        (
            SetMetadataRequest {
                user_id: long(201),
                entries: vec![entry("k", text("v"))],
                ..Default::default()
            },
            vec!["user_id"],
        ),
        (
            SetMetadataRequest {
                organization_id: "a b".into(),
                entries: vec![entry("k", text("v"))],
                ..Default::default()
            },
            vec!["organization_id"],
        ),
        (
            SetMetadataRequest {
                user_id: long(201),
                entries: vec![entry("", text(""))],
                ..Default::default()
            },
            vec!["user_id", "entries[0].key", "entries[0].value"],
        ),
    ];
    for (request, fields) in cases {
        let status = app
            .set_metadata(&app.admin_token, request)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(violated_fields(&status), fields, "{}", status.message());
    }
    app.assert_no_upstream_request();
}

async fn the_largest_values_and_keys_are_accepted(api: ApiChoice) {
    let app = TestApp::builder().api(api).spawn().await;
    let alice = app.alice.clone();
    let key = "k".repeat(200);
    let request = SetMetadataRequest {
        user_id: alice.clone(),
        entries: vec![MetadataEntry {
            key: key.clone(),
            value: binary(&vec![7; 500_000]),
            ..Default::default()
        }],
        ..Default::default()
    };
    app.set_metadata(&app.admin_token, request).await.unwrap();
    assert_eq!(app.standin.metadata_of(&alice)[&key].len(), 500_000);
}

async fn delete_requests_are_checked_before_anything_is_sent(api: ApiChoice) {
    let app = TestApp::builder().api(api).spawn().await;
    let keys = |ks: &[&str]| ks.iter().map(|k| k.to_string()).collect::<Vec<_>>();
    let cases: Vec<(DeleteMetadataRequest, Vec<&str>)> = vec![
        (DeleteMetadataRequest::default(), vec!["keys"]),
        (
            DeleteMetadataRequest {
                keys: keys(&[""]),
                ..Default::default()
            },
            vec!["keys[0]"],
        ),
        (
            DeleteMetadataRequest {
                keys: vec![long(201)],
                ..Default::default()
            },
            vec!["keys[0]"],
        ),
        (
            DeleteMetadataRequest {
                keys: keys(&["a", "b", "a"]),
                ..Default::default()
            },
            vec!["keys[2]"],
        ),
        (
            DeleteMetadataRequest {
                user_id: long(201),
                keys: keys(&["a"]),
                ..Default::default()
            },
            vec!["user_id"],
        ),
    ];
    for (request, fields) in cases {
        let status = app
            .delete_metadata(&app.admin_token, request)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(violated_fields(&status), fields, "{}", status.message());
    }
    app.assert_no_upstream_request();
}

async fn list_and_get_requests_are_checked_before_anything_is_sent(api: ApiChoice) {
    let app = TestApp::builder().api(api).spawn().await;
    let list_cases: Vec<(ListMetadataRequest, Vec<&str>)> = vec![
        (
            ListMetadataRequest {
                page_size: -1,
                ..Default::default()
            },
            vec!["page_size"],
        ),
        (
            ListMetadataRequest {
                page_size: 1001,
                ..Default::default()
            },
            vec!["page_size"],
        ),
        (
            ListMetadataRequest {
                page_token: "garbage".into(),
                ..Default::default()
            },
            vec!["page_token"],
        ),
        (
            ListMetadataRequest {
                user_id: long(201),
                ..Default::default()
            },
            vec!["user_id"],
        ),
        (
            ListMetadataRequest {
                key_filter: Some(KeyFilter {
                    key: long(201),
                    r#match: 0,
                }),
                ..Default::default()
            },
            vec!["key_filter.key"],
        ),
        (
            ListMetadataRequest {
                key_filter: Some(KeyFilter {
                    key: "k".into(),
                    r#match: 42,
                }),
                ..Default::default()
            },
            vec!["key_filter.match"],
        ),
    ];
    for (request, fields) in list_cases {
        let status = app
            .list_metadata(&app.alice_token, request)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(violated_fields(&status), fields, "{}", status.message());
    }
    let get_cases: Vec<(GetMyMetadataRequest, Vec<&str>)> = vec![
        (
            GetMyMetadataRequest {
                keys: vec!["".into()],
                source: 0,
            },
            vec!["keys[0]"],
        ),
        (
            GetMyMetadataRequest {
                keys: vec!["ok".into(), long(201)],
                source: 0,
            },
            vec!["keys[1]"],
        ),
        (
            GetMyMetadataRequest {
                keys: vec![],
                source: 9,
            },
            vec!["source"],
        ),
    ];
    for (request, fields) in get_cases {
        let status = app
            .get_my_metadata(&app.alice_token, request)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(violated_fields(&status), fields, "{}", status.message());
    }
    app.assert_no_upstream_request();
}

async fn missing_or_malformed_tokens_are_refused_before_anything_is_sent(api: ApiChoice) {
    let mut app = TestApp::builder().api(api).spawn().await;
    let status = app
        .client
        .get_my_metadata(GetMyMetadataRequest::default())
        .await
        .unwrap_err();
    assert_status(&status, Code::Unauthenticated, "TOKEN_MISSING");
    assert!(
        status.message().contains("authorization: Bearer"),
        "{}",
        status.message()
    );

    for value in [
        "Basic dXNlcjpwYXNz",
        "Bearer",
        "Bearer two words",
        "token-without-scheme",
    ] {
        let mut request = tonic::Request::new(SetMetadataRequest::default());
        request
            .metadata_mut()
            .insert("authorization", value.parse().unwrap());
        let status = app.client.set_metadata(request).await.unwrap_err();
        assert_status(&status, Code::Unauthenticated, "TOKEN_MALFORMED");
        assert!(
            !status.message().contains("dXNlcjpwYXNz"),
            "the credential is not echoed"
        );
    }
    app.assert_no_upstream_request();
}

on_both_apis!(
    set_requests_are_checked_before_anything_is_sent,
    the_largest_values_and_keys_are_accepted,
    delete_requests_are_checked_before_anything_is_sent,
    list_and_get_requests_are_checked_before_anything_is_sent,
    missing_or_malformed_tokens_are_refused_before_anything_is_sent,
    oversized_repeated_fields_are_refused_by_their_count,
    an_answer_lists_ten_violations_and_counts_the_rest,
);

/// A request that names more keys or entries than one call may is refused by its count alone, with any bearer
/// string, before anyone is identified or anything is sent; the answer stays small whatever the request holds.
async fn oversized_repeated_fields_are_refused_by_their_count(api: ApiChoice) {
    let mut app = TestApp::builder().api(api).spawn().await;
    let any_bearer = "whatever-the-caller-sends";
    // Each element is also wrong in itself (an empty key): none of them is looked at.
    let many_keys = vec![String::new(); 20_000];
    let many_entries = vec![entry("", text("")); 20_000];
    let refusals = vec![
        app.client
            .set_metadata(authed(
                SetMetadataRequest {
                    entries: many_entries,
                    ..Default::default()
                },
                any_bearer,
            ))
            .await
            .map(drop),
        app.client
            .delete_metadata(authed(
                DeleteMetadataRequest {
                    keys: many_keys.clone(),
                    ..Default::default()
                },
                any_bearer,
            ))
            .await
            .map(drop),
        app.client
            .get_my_metadata(authed(
                GetMyMetadataRequest {
                    keys: many_keys.clone(),
                    source: 0,
                },
                any_bearer,
            ))
            .await
            .map(drop),
        app.client
            .batch_get_metadata(authed(
                BatchGetMetadataRequest {
                    user_ids: vec!["1".into()],
                    keys: many_keys,
                    ..Default::default()
                },
                any_bearer,
            ))
            .await
            .map(drop),
    ];
    for refusal in refusals {
        let status = refusal.expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        let fields = violated_fields(&status);
        assert_eq!(fields.len(), 1, "one violation: the count ({fields:?})");
        assert!(
            status.message().contains("20000") && status.message().contains("at most 100"),
            "{}",
            status.message()
        );
        assert!(
            status.message().len() < 1024 && status.details().len() < 1024,
            "the answer does not grow with the request: message {} bytes, details {} bytes",
            status.message().len(),
            status.details().len()
        );
    }
    app.assert_no_upstream_request();
}

/// Within the count, every element is checked, but an answer lists at most ten violations and counts the rest.
async fn an_answer_lists_ten_violations_and_counts_the_rest(api: ApiChoice) {
    let app = TestApp::builder().api(api).spawn().await;
    let entries: Vec<_> = (0..100).map(|_| entry("", text(""))).collect();
    let status = app
        .set_metadata(
            &app.alice_token,
            SetMetadataRequest {
                entries,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(violated_fields(&status).len(), 10, "{}", status.message());
    assert!(
        status.message().contains("more not listed"),
        "{}",
        status.message()
    );
    app.assert_no_upstream_request();
}
