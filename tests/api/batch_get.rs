//! BatchGetMetadata: a page of users in one call, one result per user in request order, the policy checked per
//! user and key, and a refused or missing user failing only its own result.

use std::time::Duration;

use prost::Message as _;
use tonic::Code;
use usermeta::{
    api::pb::{BatchGetMetadataRequest, BatchGetMetadataResponse, UserMetadataResult},
    policy::Policy,
};
use zitadel_standin::{Fault, FaultKind};

use crate::support::*;
use usermeta::{api::RequestLimits, server::Limits};

fn batch(user_ids: &[&str], keys: &[&str]) -> BatchGetMetadataRequest {
    BatchGetMetadataRequest {
        user_ids: user_ids.iter().map(|id| id.to_string()).collect(),
        keys: keys.iter().map(|key| key.to_string()).collect(),
        ..Default::default()
    }
}

async fn batch_get(
    app: &TestApp,
    token: &str,
    request: BatchGetMetadataRequest,
) -> Result<BatchGetMetadataResponse, tonic::Status> {
    app.client
        .clone()
        .batch_get_metadata(authed(request, token))
        .await
        .map(tonic::Response::into_inner)
}

/// The result's error code and its ErrorInfo reason, or OK.
fn outcome(result: &UserMetadataResult) -> (Code, Option<String>) {
    match &result.error {
        None => (Code::Ok, None),
        Some(status) => {
            let reason = status.details.iter().find_map(|any| {
                any.type_url
                    .ends_with("google.rpc.ErrorInfo")
                    .then(|| tonic_types::pb::ErrorInfo::decode(any.value.as_slice()).ok())
                    .flatten()
                    .map(|info| info.reason)
            });
            (Code::from_i32(status.code), reason)
        }
    }
}

async fn an_admin_reads_many_users_in_request_order(api: ApiChoice) {
    let app = TestApp::builder().api(api).spawn().await;
    app.standin
        .set_metadata(&app.admin, "profile.language", b"de");
    let answer = batch_get(
        &app,
        &app.admin_token,
        batch(&[&app.admin, &app.alice], &[]),
    )
    .await
    .unwrap();
    let ids: Vec<&str> = answer.results.iter().map(|r| r.user_id.as_str()).collect();
    assert_eq!(ids, [app.admin.as_str(), app.alice.as_str()]);
    assert_eq!(
        pairs(&answer.results[0].metadata),
        [("profile.language".to_owned(), Some("de".to_owned()))]
    );
    assert_eq!(
        pairs(&answer.results[1].metadata),
        [
            ("ContractNumber".to_owned(), Some("1234".to_owned())),
            ("profile.language".to_owned(), Some("en".to_owned())),
        ]
    );
    assert!(answer.results.iter().all(|r| r.error.is_none()));
    // The admin's own entry was read with the admin's token; alice's with the service credential.
    let alice_reads: Vec<_> = app
        .metadata_requests()
        .into_iter()
        .filter(|r| r.bearer() == Some(app.service_pat.as_str()))
        .collect();
    assert!(!alice_reads.is_empty());
    assert!(alice_reads.iter().all(|r| user_of(r) == app.alice));
    assert!(
        app.standin
            .requests()
            .iter()
            .filter(|r| r.bearer() == Some(app.admin_token.as_str()))
            .all(|r| !r.path.contains("/management/") && !r.path.contains("user.v2")),
        "the caller's token went to the management API"
    );
}

async fn named_keys_are_returned_and_others_left_out(api: ApiChoice) {
    let app = TestApp::builder().api(api).spawn().await;
    let answer = batch_get(
        &app,
        &app.admin_token,
        batch(&[&app.alice], &["ContractNumber", "missing.key"]),
    )
    .await
    .unwrap();
    assert_eq!(
        pairs(&answer.results[0].metadata),
        [("ContractNumber".to_owned(), Some("1234".to_owned()))]
    );
    // Other keys of the same user come from the listing in memory: ZITADEL is not asked again.
    app.standin.clear_requests();
    let answer = batch_get(
        &app,
        &app.admin_token,
        batch(&[&app.alice], &["profile.language"]),
    )
    .await
    .unwrap();
    assert_eq!(
        pairs(&answer.results[0].metadata),
        [("profile.language".to_owned(), Some("en".to_owned()))]
    );
    assert!(app.metadata_requests().is_empty());
}

async fn a_refused_user_fails_only_its_own_result(api: ApiChoice) {
    let app = TestApp::builder().api(api).spawn().await;
    let carol = app.standin.create_user(&app.org, "carol");
    app.standin.set_metadata(&carol, "profile.language", b"fr");
    // Alice reads herself, but not carol: carol's result is refused, without ZITADEL being asked about her.
    let answer = batch_get(&app, &app.alice_token, batch(&[&carol, &app.alice], &[]))
        .await
        .unwrap();
    assert_eq!(
        outcome(&answer.results[0]),
        (Code::PermissionDenied, Some("POLICY_DENIED".to_owned()))
    );
    assert!(answer.results[0].metadata.is_empty());
    let message = &answer.results[0].error.as_ref().unwrap().message;
    assert!(message.contains(&carol), "{message}");
    assert_eq!(outcome(&answer.results[1]), (Code::Ok, None));
    assert_eq!(answer.results[1].metadata.len(), 2);
    assert!(
        app.metadata_requests()
            .iter()
            .all(|r| !String::from_utf8_lossy(&r.body).contains(&carol) && !r.path.contains(&carol)),
        "ZITADEL was asked about a user the caller may not read"
    );
}

async fn a_named_key_the_caller_may_not_read_refuses_that_user(api: ApiChoice) {
    let app = TestApp::builder().api(api).spawn().await;
    let policy = Policy::from_toml(
        &format!(
            r#"
[[key]]
name = "secret"
hidden = true

[[rule]]
name = "alice reads contract numbers of anyone"
who = {{ subjects = ["{alice}"] }}
whose = "any"
keys = ["ContractNumber"]
actions = ["read"]
"#,
            alice = app.alice
        ),
        "batch.toml",
    )
    .unwrap();
    let other = app.another().api(api).policy(policy).spawn().await;
    let mut reader = other.client.clone();
    // Carol is in alice's organisation, where v1 looks without organization_id.
    let carol = app.standin.create_user(&app.org, "carol");
    app.standin.set_metadata(&carol, "ContractNumber", b"5678");
    app.standin.set_metadata(&carol, "profile.language", b"nl");
    app.standin.set_metadata(&app.alice, "secret", b"s3");
    let read = |keys: &[&str]| authed(batch(&[&app.alice, &carol], keys), &app.alice_token);
    // All keys: carol shows only ContractNumber; alice never sees her hidden key.
    let answer = reader
        .batch_get_metadata(read(&[]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        pairs(&answer.results[0].metadata),
        [
            ("ContractNumber".to_owned(), Some("1234".to_owned())),
            ("profile.language".to_owned(), Some("en".to_owned())),
        ]
    );
    assert_eq!(
        pairs(&answer.results[1].metadata),
        [("ContractNumber".to_owned(), Some("5678".to_owned()))]
    );
    // Naming a key a user's result may not show refuses that result, loudly.
    let answer = reader
        .batch_get_metadata(read(&["profile.language"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(outcome(&answer.results[0]), (Code::Ok, None));
    assert_eq!(
        outcome(&answer.results[1]),
        (Code::PermissionDenied, Some("POLICY_DENIED".to_owned()))
    );
    let answer = reader
        .batch_get_metadata(read(&["secret"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(outcome(&answer.results[0]).0, Code::PermissionDenied);
}

#[tokio::test]
async fn a_user_zitadel_does_not_know_is_not_found_on_v2() {
    let app = TestApp::builder().api(ApiChoice::V2).spawn().await;
    let answer = batch_get(
        &app,
        &app.admin_token,
        batch(&["31415926535", &app.alice], &[]),
    )
    .await
    .unwrap();
    assert_eq!(
        outcome(&answer.results[0]),
        (Code::NotFound, Some("USER_NOT_FOUND".to_owned()))
    );
    assert_eq!(outcome(&answer.results[1]), (Code::Ok, None));
}

#[tokio::test]
async fn a_user_outside_the_named_organisation_fails_its_result_on_v2() {
    let app = TestApp::builder().api(ApiChoice::V2).spawn().await;
    let mut request = batch(&[&app.bob, &app.alice], &[]);
    request.organization_id = app.org.clone();
    let answer = batch_get(&app, &app.admin_token, request).await.unwrap();
    assert_eq!(
        outcome(&answer.results[0]),
        (
            Code::FailedPrecondition,
            Some("USER_NOT_FOUND_IN_ORGANIZATION".to_owned())
        )
    );
    assert_eq!(outcome(&answer.results[1]), (Code::Ok, None));
}

async fn bad_batches_are_refused_whole_before_zitadel_is_asked(api: ApiChoice) {
    let app = TestApp::builder().api(api).spawn().await;
    app.standin.clear_requests();
    let too_many: Vec<String> = (0..101).map(|i| format!("user{i}")).collect();
    let too_many: Vec<&str> = too_many.iter().map(String::as_str).collect();
    for (request, field) in [
        (batch(&[], &[]), "user_ids"),
        (batch(&too_many, &[]), "user_ids"),
        (batch(&[&app.alice, &app.alice], &[]), "user_ids[1]"),
        (batch(&[""], &[]), "user_ids[0]"),
        (batch(&["a/b"], &[]), "user_ids[0]"),
        (batch(&[&app.alice], &["k", "k"]), "keys[1]"),
        (batch(&[&app.alice], &[""]), "keys[0]"),
    ] {
        let status = batch_get(&app, &app.admin_token, request)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert!(
            violated_fields(&status).contains(&field.to_owned()),
            "{field}: {:?}",
            violated_fields(&status)
        );
    }
    // A hundred distinct users are fine.
    let hundred: Vec<String> = (0..100).map(|i| format!("user{i}")).collect();
    let hundred: Vec<&str> = hundred.iter().map(String::as_str).collect();
    assert_eq!(
        batch_get(&app, &app.admin_token, batch(&hundred, &[]))
            .await
            .unwrap()
            .results
            .len(),
        100
    );
    // Without a valid token the whole call is refused.
    let status = batch_get(&app, "not-a-token", batch(&[&app.alice], &[]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
}

on_both_apis!(
    an_admin_reads_many_users_in_request_order,
    named_keys_are_returned_and_others_left_out,
    a_refused_user_fails_only_its_own_result,
    a_named_key_the_caller_may_not_read_refuses_that_user,
    bad_batches_are_refused_whole_before_zitadel_is_asked,
);

#[tokio::test]
async fn zitadel_failing_for_one_user_fails_only_that_result() {
    let app = TestApp::spawn().await;
    let carol = app.standin.create_user(&app.org, "carol");
    let dave = app.standin.create_user(&app.org, "dave");
    // Every listing of carol's metadata fails, dave's is rate limited; alice's goes through.
    app.standin.push_fault(Fault {
        path_prefix: format!("/management/v1/users/{carol}/metadata"),
        times: None,
        kind: FaultKind::Status(503),
    });
    app.standin.push_fault(Fault {
        path_prefix: format!("/management/v1/users/{dave}/metadata"),
        times: None,
        kind: FaultKind::TooManyRequests {
            retry_after_secs: Some(7),
        },
    });
    let answer = batch_get(
        &app,
        &app.admin_token,
        batch(&[&app.alice, &carol, &dave], &[]),
    )
    .await
    .unwrap();
    assert_eq!(outcome(&answer.results[0]), (Code::Ok, None));
    assert_eq!(outcome(&answer.results[1]).0, Code::Unavailable);
    assert_eq!(outcome(&answer.results[2]).0, Code::ResourceExhausted);
    // The result carries RetryInfo as a single call's status would.
    let retry = answer.results[2]
        .error
        .as_ref()
        .unwrap()
        .details
        .iter()
        .find(|any| any.type_url.ends_with("google.rpc.RetryInfo"))
        .map(|any| tonic_types::pb::RetryInfo::decode(any.value.as_slice()).unwrap())
        .expect("RetryInfo");
    assert_eq!(retry.retry_delay.map(|d| d.seconds), Some(7));
}

#[tokio::test]
async fn the_deadline_fails_the_whole_call() {
    let app = TestApp::spawn().await;
    app.standin.push_fault(Fault {
        path_prefix: "/management/v1/users/".to_owned(),
        times: None,
        kind: FaultKind::Latency(Duration::from_secs(3)),
    });
    let request = with_deadline(
        authed(batch(&[&app.alice], &[]), &app.admin_token),
        Duration::from_millis(300),
    );
    let status = app
        .client
        .clone()
        .batch_get_metadata(request)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded);
}

#[tokio::test]
async fn users_are_read_concurrently_within_the_bound() {
    let app = TestApp::spawn().await;
    let users: Vec<String> = (0..8)
        .map(|i| app.standin.create_user(&app.org, &format!("u{i}")))
        .collect();
    // Every listing takes 500 ms: eight users, two at a time, take four rounds.
    app.standin.push_fault(Fault {
        path_prefix: "/management/v1/users/".to_owned(),
        times: None,
        kind: FaultKind::Latency(Duration::from_millis(500)),
    });
    let other = app
        .another()
        .policy(Policy::new([app.admin.clone()], vec![]))
        .limits(Limits {
            requests: RequestLimits {
                batch_concurrency: 2,
                ..RequestLimits::default()
            },
            ..Limits::default()
        })
        .spawn()
        .await;
    let mut client = other.client.clone();
    let ids: Vec<&str> = users.iter().map(String::as_str).collect();
    let started = std::time::Instant::now();
    let answer = client
        .batch_get_metadata(authed(batch(&ids, &[]), &app.admin_token))
        .await
        .unwrap()
        .into_inner();
    let took = started.elapsed();
    assert!(answer.results.iter().all(|r| r.error.is_none()));
    // At most two at a time: four rounds at least. Sequentially it would be eight (4 s); unbounded, one.
    assert!(
        took >= Duration::from_millis(1950) && took < Duration::from_millis(3800),
        "8 reads of 500 ms, 2 at a time, took {took:?}"
    );
}
