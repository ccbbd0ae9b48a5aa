//! WatchMetadata through a real gRPC client: a caller's own changes with their values, another user's only
//! with the policy's `read`, hidden keys never streamed to their user, a reader that falls behind told so,
//! and streams ended cleanly when the replica stops.

use std::time::Duration;

use tonic::{Code, Streaming};
use usermeta::{
    api::pb::{self, ChangeKind, MetadataChange},
    caller::{IdentityConfig, JwtConfig, cache::CacheConfig},
    fleet::WatchLimits,
    policy::Policy,
    server::Limits,
};
use zitadel_standin::JwtSpec;

use crate::support::*;

/// The next change of `stream`, failing the test after two seconds.
async fn next_change(stream: &mut Streaming<MetadataChange>) -> MetadataChange {
    tokio::time::timeout(Duration::from_secs(2), stream.message())
        .await
        .expect("a change within 2 s")
        .expect("the stream goes on")
        .expect("the stream is open")
}

/// Asserts nothing more arrives for a moment.
async fn nothing_more(stream: &mut Streaming<MetadataChange>) {
    if let Ok(next) = tokio::time::timeout(Duration::from_millis(300), stream.message()).await {
        panic!("expected nothing more, got {next:?}");
    }
}

fn set(key: &str, value: &str) -> pb::SetMetadataRequest {
    pb::SetMetadataRequest {
        entries: vec![entry(key, text(value))],
        ..Default::default()
    }
}

fn set_for(user_id: &str, org_id: &str, key: &str, value: &str) -> pb::SetMetadataRequest {
    pb::SetMetadataRequest {
        user_id: user_id.to_owned(),
        organization_id: org_id.to_owned(),
        ..set(key, value)
    }
}

#[tokio::test]
async fn a_caller_sees_their_own_changes_with_the_values_written() {
    let app = TestApp::spawn().await;
    let mut stream = watch(&app.client, &app.alice_token, "", "").await.unwrap();
    let written = app
        .set_metadata(&app.alice_token, set("profile.language", "fr"))
        .await
        .unwrap()
        .into_inner();
    let change = next_change(&mut stream).await;
    assert_eq!(change.user_id, app.alice);
    assert_eq!(
        (change.key.as_str(), change.kind()),
        ("profile.language", ChangeKind::Set)
    );
    assert_eq!(change.value, text("fr"));
    assert_eq!(
        change.time, written.update_time,
        "the time ZITADEL reported for the write"
    );
    app.delete_metadata(
        &app.alice_token,
        pb::DeleteMetadataRequest {
            keys: vec!["profile.language".into()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let change = next_change(&mut stream).await;
    assert_eq!(
        (change.key.as_str(), change.kind(), change.value),
        ("profile.language", ChangeKind::Delete, None)
    );
    // Another user's change is not alice's.
    app.set_metadata(
        &app.admin_token,
        set_for(&app.bob, &app.other_org, "tier", "gold"),
    )
    .await
    .unwrap();
    nothing_more(&mut stream).await;
}

#[tokio::test]
async fn a_prefix_narrows_the_stream() {
    let app = TestApp::spawn().await;
    let mut stream = watch(&app.client, &app.alice_token, "", "profile.theme")
        .await
        .unwrap();
    app.set_metadata(&app.alice_token, set("profile.language", "fr"))
        .await
        .unwrap();
    app.set_metadata(&app.alice_token, set("profile.theme", "dark"))
        .await
        .unwrap();
    let change = next_change(&mut stream).await;
    assert_eq!(change.key, "profile.theme");
    nothing_more(&mut stream).await;
}

#[tokio::test]
async fn another_user_needs_the_policys_read_and_sees_only_readable_keys() {
    let app = TestApp::spawn().await;
    // alice may read only her own metadata.
    let denied = watch(&app.client, &app.alice_token, &app.bob, "")
        .await
        .unwrap_err();
    assert_status(&denied, Code::PermissionDenied, "POLICY_DENIED");
    // ZITADEL says which organisation the user is in, whatever the request names.
    let unknown = watch(&app.client, &app.admin_token, "no-such-user", "")
        .await
        .unwrap_err();
    assert_status(&unknown, Code::NotFound, "USER_NOT_FOUND");
    let elsewhere = watch_in(&app.client, &app.admin_token, &app.bob, &app.org, "")
        .await
        .unwrap_err();
    assert_eq!(elsewhere.code(), Code::FailedPrecondition, "{elsewhere:?}");
    // The admin may read anyone's.
    let mut stream = watch_in(&app.client, &app.admin_token, &app.bob, &app.other_org, "")
        .await
        .unwrap();
    app.set_metadata(
        &app.admin_token,
        set_for(&app.bob, &app.other_org, "tier", "gold"),
    )
    .await
    .unwrap();
    let change = next_change(&mut stream).await;
    assert_eq!(
        (change.user_id.as_str(), change.key.as_str(), change.value),
        (app.bob.as_str(), "tier", text("gold"))
    );
}

#[tokio::test]
async fn the_policy_decides_on_the_organisation_zitadel_places_the_user_in() {
    let app = TestApp::spawn().await;
    let policy = Policy::from_toml(
        &format!(
            "[[rule]]\nwho = {{ subjects = [\"{}\"] }}\nwhose = [\"{}\"]\nactions = [\"read\"]\nkeys = [\"*\"]\n",
            app.alice, app.org
        ),
        "test",
    )
    .unwrap();
    let other = app.another().policy(policy).spawn().await;
    let client = other.client.clone();
    // bob is in the other organisation: naming alice's organisation for him changes nothing.
    for org_id in ["", app.org.as_str()] {
        let refused = watch_in(&client, &app.alice_token, &app.bob, org_id, "")
            .await
            .unwrap_err();
        assert!(
            matches!(
                refused.code(),
                Code::PermissionDenied | Code::FailedPrecondition
            ),
            "{org_id:?}: {refused:?}"
        );
    }
    // The admin is in alice's organisation.
    watch(&client, &app.alice_token, &app.admin, "")
        .await
        .unwrap();
}

#[tokio::test]
async fn hidden_keys_are_never_streamed_to_their_user() {
    let app = TestApp::spawn().await;
    let policy = Policy::from_toml(
        &format!(
            "[[rule]]\nwho = {{ subjects = [\"{}\"] }}\nwhose = \"any\"\nactions = [\"read\", \"write\"]\nkeys = [\"*\"]\n\n[[key]]\nname = \"internal.*\"\nhidden = true\n",
            app.admin
        ),
        "test",
    )
    .unwrap();
    let other = app.another().policy(policy).spawn().await;
    let client = other.client.clone();
    let mut own = watch(&client, &app.alice_token, "", "").await.unwrap();
    let mut admins = watch(&client, &app.admin_token, &app.alice, "")
        .await
        .unwrap();
    for (key, value) in [("internal.score", "7"), ("tier", "gold")] {
        client
            .clone()
            .set_metadata(authed(
                set_for(&app.alice, "", key, value),
                &app.admin_token,
            ))
            .await
            .unwrap();
    }
    let change = next_change(&mut own).await;
    assert_eq!(
        change.key, "tier",
        "the hidden key is not streamed to alice"
    );
    nothing_more(&mut own).await;
    // Whoever may read it sees it.
    assert_eq!(next_change(&mut admins).await.key, "internal.score");
    assert_eq!(next_change(&mut admins).await.key, "tier");
}

#[tokio::test]
async fn bad_requests_and_tokens_are_refused_before_a_stream_opens() {
    let app = TestApp::spawn().await;
    let bad = watch(&app.client, &app.alice_token, "", &"k".repeat(201))
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&bad), ["key_prefix"]);
    let bad = watch(&app.client, &app.alice_token, "../x", "")
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&bad), ["user_id"]);
    let no_token = watch(&app.client, "not-a-token", "", "").await.unwrap_err();
    assert_eq!(no_token.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn a_reader_that_falls_behind_gets_resource_exhausted() {
    let app = TestApp::spawn().await;
    // A client that takes little at a time: HTTP/2 windows of 64 KiB, as a slow reader's would fill.
    let slow = tonic::transport::Endpoint::from_shared(format!("http://{}", app.addr))
        .unwrap()
        .initial_stream_window_size(65_535)
        .initial_connection_window_size(65_535)
        .connect()
        .await
        .unwrap();
    let slow = pb::user_metadata_service_client::UserMetadataServiceClient::new(slow);
    let mut stream = watch(&slow, &app.alice_token, "", "").await.unwrap();
    // Far more than the stream's buffer (1 MiB) and those windows hold, none read meanwhile.
    let value = "v".repeat(200);
    for round in 0..80 {
        let entries = (0..100)
            .map(|i| entry(&format!("profile.k{round}-{i}"), text(&value)))
            .collect();
        app.set_metadata(
            &app.alice_token,
            pb::SetMetadataRequest {
                entries,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    }
    let mut read = 0;
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.message())
            .await
            .unwrap_or_else(|_| panic!("the stream answers (after {read} changes)"))
        {
            Ok(Some(_)) => read += 1,
            Ok(None) => panic!("the stream ended without saying why"),
            Err(status) => break status,
        }
    };
    assert_status(&ended, Code::ResourceExhausted, "WATCH_LAGGED");
    assert!(ended.message().contains("reopen"), "{}", ended.message());
    // The service goes on, and a new stream works.
    let mut again = watch(&app.client, &app.alice_token, "", "").await.unwrap();
    app.set_metadata(&app.alice_token, set("profile.language", "fr"))
        .await
        .unwrap();
    assert_eq!(next_change(&mut again).await.key, "profile.language");
}

#[tokio::test]
async fn streams_end_with_unavailable_when_the_replica_stops() {
    let app = TestApp::spawn().await;
    let spawned = app
        .another()
        .shutdown_grace(Duration::from_secs(30))
        .spawn()
        .await;
    let client = spawned.client.clone();
    let mut stream = watch(&client, &app.alice_token, "", "").await.unwrap();
    let started = std::time::Instant::now();
    drop(spawned.stop);
    let ended = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("the stream ends at once")
        .unwrap_err();
    assert_status(&ended, Code::Unavailable, "SHUTTING_DOWN");
    // Open streams do not hold the shutdown for the grace period.
    tokio::time::timeout(Duration::from_secs(5), spawned.stopped)
        .await
        .expect("the replica stops well before its 30 s grace")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// The status a stream ends with, within `within`; a change instead fails the test.
async fn end_of(stream: &mut Streaming<MetadataChange>, within: Duration) -> tonic::Status {
    match tokio::time::timeout(within, stream.message())
        .await
        .expect("the stream ends in time")
    {
        Ok(Some(change)) => panic!("expected the end, got {change:?}"),
        Ok(None) => panic!("the stream ended without saying why"),
        Err(status) => status,
    }
}

/// Another usermeta in front of `app`'s stand-in, with these stream limits; its client and its stop.
async fn with_watch_limits(
    app: &TestApp,
    watch: WatchLimits,
) -> (
    pb::user_metadata_service_client::UserMetadataServiceClient<tonic::transport::Channel>,
    tokio::sync::oneshot::Sender<()>,
) {
    let limits = Limits {
        watch,
        ..Limits::default()
    };
    let other = app.another().limits(limits).spawn().await;
    (other.client.clone(), other.stop)
}

/// An app whose cache keeps answers for a second, so a stream asks about its token again every second.
fn one_second_cache() -> CacheConfig {
    CacheConfig {
        ttl: Duration::from_secs(1),
        negative_ttl: Duration::from_secs(1),
        ..CacheConfig::default()
    }
}

#[tokio::test]
async fn a_stream_ends_when_zitadel_no_longer_accepts_its_token() {
    let app = TestApp::spawn().await;
    let other = app.another().cache(one_second_cache()).spawn().await;
    let client = other.client.clone();
    let token = app.standin.issue_token(&app.alice, FULL_SCOPES);
    let mut stream = watch(&client, &token, "", "").await.unwrap();
    app.standin.revoke_token(&token);
    let ended = end_of(&mut stream, Duration::from_secs(15)).await;
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    // Nothing of alice's reaches the revoked token's stream after that: it is over.
    assert!(stream.message().await.unwrap_or(None).is_none());
}

#[tokio::test]
async fn a_stream_ends_when_the_policy_no_longer_lets_the_caller_read() {
    let app = TestApp::spawn().await;
    let project = app.standin.create_project(&app.org);
    let policy = Policy::from_toml(
        "[[rule]]\nwho = { roles = [\"watcher\"] }\nwhose = \"any\"\nactions = [\"read\"]\nkeys = [\"*\"]\n",
        "test",
    )
    .unwrap();
    let other = app
        .another()
        .policy(policy)
        .project_id(&project)
        .cache(one_second_cache())
        .spawn()
        .await;
    let client = other.client.clone();
    app.standin.grant_role(&app.alice, &project, "watcher");
    let mut scopes = FULL_SCOPES.to_vec();
    scopes.push("urn:zitadel:iam:org:projects:roles");
    let token = app.standin.issue_token(&app.alice, &scopes);
    let mut stream = watch_in(&client, &token, &app.bob, &app.other_org, "")
        .await
        .unwrap();
    app.standin.remove_role(&app.alice, &project, "watcher");
    let ended = end_of(&mut stream, Duration::from_secs(15)).await;
    assert_status(&ended, Code::PermissionDenied, "POLICY_DENIED");
}

#[tokio::test]
async fn a_stream_ends_when_its_jwt_expires() {
    let app = TestApp::spawn().await;
    let project = app.standin.create_project(&app.org);
    let other = app
        .another()
        .identity(IdentityConfig {
            introspection: None,
            jwt: Some(JwtConfig {
                audience: vec![project.clone()],
                min_refresh_interval: Duration::from_secs(60),
            }),
        })
        .spawn()
        .await;
    let client = other.client.clone();
    let mut scopes: Vec<String> = FULL_SCOPES.iter().map(|s| (*s).to_owned()).collect();
    scopes.push(format!("urn:zitadel:iam:org:project:id:{project}:aud"));
    let jwt = app.standin.issue_jwt_with(
        &app.alice,
        JwtSpec {
            scopes,
            expires_in: 2,
            ..JwtSpec::default()
        },
    );
    let mut stream = watch(&client, &jwt, "", "").await.unwrap();
    let ended = end_of(&mut stream, Duration::from_secs(15)).await;
    assert_status(&ended, Code::Unauthenticated, "TOKEN_EXPIRED");
}

#[tokio::test]
async fn a_stream_lives_at_most_its_longest_life() {
    let app = TestApp::spawn().await;
    let (client, _stop) = with_watch_limits(
        &app,
        WatchLimits {
            max_duration: Duration::from_secs(1),
            ..WatchLimits::default()
        },
    )
    .await;
    let mut stream = watch(&client, &app.alice_token, "", "").await.unwrap();
    let ended = end_of(&mut stream, Duration::from_secs(15)).await;
    assert_status(&ended, Code::Unavailable, "WATCH_MAX_DURATION");
    assert!(ended.message().contains("reopen"), "{}", ended.message());
}

#[tokio::test]
async fn streams_are_limited_per_caller_and_per_replica() {
    let app = TestApp::spawn().await;
    let (client, _stop) = with_watch_limits(
        &app,
        WatchLimits {
            max_streams: 3,
            max_streams_per_caller: 2,
            ..WatchLimits::default()
        },
    )
    .await;
    let first = watch(&client, &app.alice_token, "", "").await.unwrap();
    let _second = watch(&client, &app.alice_token, "", "").await.unwrap();
    // Another token of the same user is the same caller.
    let other_token = app.standin.issue_token(&app.alice, FULL_SCOPES);
    let refused = watch(&client, &other_token, "", "").await.unwrap_err();
    assert_status(&refused, Code::ResourceExhausted, "WATCH_STREAMS_EXHAUSTED");
    assert!(
        refused
            .message()
            .contains("USERMETA_WATCH_MAX_STREAMS_PER_CALLER"),
        "{}",
        refused.message()
    );
    let _third = watch(&client, &app.admin_token, "", "").await.unwrap();
    let bob_token = app.standin.issue_token(&app.bob, FULL_SCOPES);
    let full = watch(&client, &bob_token, "", "").await.unwrap_err();
    assert_status(&full, Code::ResourceExhausted, "WATCH_STREAMS_EXHAUSTED");
    // A closed stream frees its place.
    drop(first);
    eventually("a place is freed when a stream closes", || async {
        watch(&client, &other_token, "", "").await.ok()
    })
    .await;
}

#[tokio::test]
async fn another_users_writes_never_end_a_stream() {
    let app = TestApp::spawn().await;
    let bob_token = app.standin.issue_token(&app.bob, FULL_SCOPES);
    // alice's stream is open and not read while bob writes far more keys than any one buffer holds.
    let mut stream = watch(&app.client, &app.alice_token, "", "").await.unwrap();
    for round in 0..30 {
        let entries = (0..100)
            .map(|i| entry(&format!("profile.k{round}-{i}"), text("v")))
            .collect();
        app.set_metadata(
            &bob_token,
            pb::SetMetadataRequest {
                entries,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    }
    app.set_metadata(&app.alice_token, set("profile.language", "fr"))
        .await
        .unwrap();
    let change = next_change(&mut stream).await;
    assert_eq!(
        (change.user_id.as_str(), change.key.as_str()),
        (app.alice.as_str(), "profile.language")
    );
}

#[tokio::test]
async fn a_delete_announces_only_the_keys_it_removed() {
    let app = TestApp::spawn().await;
    let mut stream = watch(&app.client, &app.alice_token, "", "").await.unwrap();
    app.delete_metadata(
        &app.alice_token,
        pb::DeleteMetadataRequest {
            keys: vec!["profile.language".into(), "profile.never-set".into()],
            allow_missing: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let change = next_change(&mut stream).await;
    assert_eq!(
        (change.key.as_str(), change.kind()),
        ("profile.language", ChangeKind::Delete)
    );
    nothing_more(&mut stream).await;
}

#[tokio::test]
async fn a_stream_rides_out_a_short_outage_of_zitadel_but_not_a_long_one() {
    let app = TestApp::spawn().await;
    let other = app
        .another()
        .cache(CacheConfig {
            ttl: Duration::from_secs(2),
            negative_ttl: Duration::from_secs(1),
            ..CacheConfig::default()
        })
        // No retries: one injected 503 is one failed check.
        .resilience(usermeta_zitadel::Resilience {
            max_attempts: 1,
            ..usermeta_zitadel::Resilience::default()
        })
        .spawn()
        .await;
    let client = other.client.clone();
    let token = app.standin.issue_token(&app.alice, FULL_SCOPES);
    let mut stream = watch(&client, &token, "", "").await.unwrap();
    // Userinfo answers 503 once: the stream cannot check its token, and goes on.
    app.standin.clear_requests();
    app.standin.push_fault(zitadel_standin::Fault {
        path_prefix: "/oidc/v1/userinfo".into(),
        times: Some(1),
        kind: zitadel_standin::FaultKind::Status(503),
    });
    let checks = || {
        app.standin
            .requests()
            .iter()
            .filter(|request| request.path == "/oidc/v1/userinfo")
            .count()
    };
    // The failed check, then the one after it that succeeds.
    tokio::time::timeout(Duration::from_secs(20), async {
        while checks() < 2 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the stream checks its token again");
    client
        .clone()
        .set_metadata(authed(set("profile.language", "fr"), &app.alice_token))
        .await
        .unwrap();
    assert_eq!(next_change(&mut stream).await.key, "profile.language");
    // Down for good: the stream ends once its credential has gone unconfirmed for a whole interval.
    app.standin.push_fault(zitadel_standin::Fault {
        path_prefix: "/oidc/v1/userinfo".into(),
        times: None,
        kind: zitadel_standin::FaultKind::Status(503),
    });
    let ended = end_of(&mut stream, Duration::from_secs(20)).await;
    assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");
}
