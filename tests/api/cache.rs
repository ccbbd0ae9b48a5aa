//! The caller cache: repeated lookups from memory, one upstream call for concurrent identical lookups,
//! lifetimes bounded by the TTL and by a JWT's own expiry, brief memory of rejections, and invalidation by
//! writes through usermeta.

use std::{
    sync::atomic::Ordering,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use tonic::Code;
use usermeta::{
    api::pb::{DeleteMetadataRequest, GetMyMetadataRequest, SetMetadataRequest},
    caller::cache::CacheConfig,
    policy::Policy,
};
use zitadel_standin::{Fault, FaultKind};

use crate::support::*;

fn with_cache(ttl: Duration, negative_ttl: Duration) -> CacheConfig {
    CacheConfig {
        ttl,
        negative_ttl,
        capacity: 1000,
    }
}

#[tokio::test]
async fn one_hundred_concurrent_first_requests_send_one_userinfo_call() {
    let app = TestApp::spawn().await;
    let token = app.standin.issue_token(&app.alice, FULL_SCOPES);
    // Slow userinfo down so every request arrives while the first lookup is still under way.
    app.standin.push_fault(Fault {
        path_prefix: "/oidc/v1/userinfo".into(),
        times: None,
        kind: FaultKind::Latency(Duration::from_millis(300)),
    });
    let calls = (0..100).map(|_| {
        let mut client = app.client.clone();
        let token = token.clone();
        tokio::spawn(async move {
            client
                .get_my_metadata(authed(GetMyMetadataRequest::default(), &token))
                .await
        })
    });
    for call in futures::future::join_all(calls).await {
        let answer = call.unwrap().unwrap().into_inner();
        assert_eq!(answer.user_id, app.alice);
    }
    assert_eq!(app.userinfo_requests(), 1);
}

#[tokio::test]
async fn repeated_lookups_come_from_memory_one_call_per_token() {
    let app = TestApp::spawn().await;
    let tokens: Vec<String> = (0..5)
        .map(|_| app.standin.issue_token(&app.alice, FULL_SCOPES))
        .collect();
    for _ in 0..10 {
        for token in &tokens {
            app.get_my_metadata(token, GetMyMetadataRequest::default())
                .await
                .unwrap();
        }
    }
    assert_eq!(app.userinfo_requests(), tokens.len());
}

#[tokio::test]
async fn steady_concurrent_traffic_sends_one_userinfo_call_per_token() {
    let app = TestApp::spawn().await;
    let tokens: Vec<String> = (0..20)
        .map(|_| app.standin.issue_token(&app.alice, FULL_SCOPES))
        .collect();
    // Per token, 16 callers each sending requests back to back: requests keep arriving while the first
    // lookup runs, as it finishes, and after, which is where a second lookup could slip in.
    let callers = tokens.iter().flat_map(|token| {
        (0..16).map(|_| {
            let mut client = app.client.clone();
            let token = token.clone();
            tokio::spawn(async move {
                for _ in 0..8 {
                    client
                        .get_my_metadata(authed(GetMyMetadataRequest::default(), &token))
                        .await?;
                }
                Ok::<_, tonic::Status>(())
            })
        })
    });
    for caller in futures::future::join_all(callers.collect::<Vec<_>>()).await {
        caller.unwrap().unwrap();
    }
    assert_eq!(app.userinfo_requests(), tokens.len());
}

#[tokio::test]
async fn entries_live_no_longer_than_the_ttl() {
    let app = TestApp::spawn().await;
    let other = app
        .another()
        .policy(Policy::default())
        .cache(with_cache(
            Duration::from_millis(300),
            Duration::from_secs(5),
        ))
        .spawn()
        .await;
    let mut client = other.client.clone();
    client
        .get_my_metadata(authed(GetMyMetadataRequest::default(), &app.alice_token))
        .await
        .unwrap();
    client
        .get_my_metadata(authed(GetMyMetadataRequest::default(), &app.alice_token))
        .await
        .unwrap();
    assert_eq!(app.userinfo_requests(), 1);
    tokio::time::sleep(Duration::from_millis(400)).await;
    client
        .get_my_metadata(authed(GetMyMetadataRequest::default(), &app.alice_token))
        .await
        .unwrap();
    assert_eq!(app.userinfo_requests(), 2, "the entry expired with the TTL");
}

#[tokio::test]
async fn a_zero_ttl_turns_the_cache_off() {
    let app = TestApp::spawn().await;
    let other = app
        .another()
        .policy(Policy::default())
        .cache(with_cache(Duration::ZERO, Duration::ZERO))
        .spawn()
        .await;
    let mut client = other.client.clone();
    for _ in 0..3 {
        client
            .get_my_metadata(authed(GetMyMetadataRequest::default(), &app.alice_token))
            .await
            .unwrap();
    }
    assert_eq!(app.userinfo_requests(), 3);
}

fn jwt_expiring_in(seconds: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","kid":"1"}"#);
    // As ZITADEL's JWT access tokens, with a token id (`jti`): without one it would be no access token.
    let claims = URL_SAFE_NO_PAD.encode(format!(
        r#"{{"sub":"170848145649959169","exp":{},"jti":"V2_{seconds}"}}"#,
        now + seconds
    ));
    format!("{header}.{claims}.c2lnbmF0dXJl")
}

#[tokio::test]
async fn entries_never_outlive_a_jwt_tokens_own_expiry() {
    let (url, calls) = raw_userinfo(serde_json::json!({"sub": "170848145649959169"})).await;
    let other = TestApp::builder()
        .zitadel_url(&url)
        .pat("pat")
        .policy(Policy::default())
        .cache(with_cache(Duration::from_secs(60), Duration::from_secs(5)))
        .spawn()
        .await;
    let mut client = other.client.clone();

    let long_lived = jwt_expiring_in(3600);
    for _ in 0..3 {
        client
            .get_my_metadata(authed(GetMyMetadataRequest::default(), &long_lived))
            .await
            .unwrap();
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "a long-lived JWT is cached for the TTL"
    );

    // exp is in whole seconds: this token expires within the next 1 s, far before the 60 s TTL.
    let short_lived = jwt_expiring_in(1);
    client
        .get_my_metadata(authed(GetMyMetadataRequest::default(), &short_lived))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    client
        .get_my_metadata(authed(GetMyMetadataRequest::default(), &short_lived))
        .await
        .unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "the short-lived JWT was looked up again after its exp"
    );
}

#[tokio::test]
async fn rejected_tokens_are_remembered_briefly() {
    let app = TestApp::spawn().await;
    let other = app
        .another()
        .policy(Policy::default())
        .cache(with_cache(
            Duration::from_secs(30),
            Duration::from_millis(300),
        ))
        .spawn()
        .await;
    let mut client = other.client.clone();
    for _ in 0..5 {
        let status = client
            .get_my_metadata(authed(
                GetMyMetadataRequest::default(),
                "revoked-or-made-up",
            ))
            .await
            .unwrap_err();
        assert_status(&status, Code::Unauthenticated, "TOKEN_REJECTED");
    }
    assert_eq!(
        app.userinfo_requests(),
        1,
        "one lookup, then the remembered rejection"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let status = client
        .get_my_metadata(authed(
            GetMyMetadataRequest::default(),
            "revoked-or-made-up",
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(
        app.userinfo_requests(),
        2,
        "asked again after the negative TTL"
    );
}

#[tokio::test]
async fn zitadel_outages_are_not_remembered() {
    let app = TestApp::spawn().await;
    app.standin.push_fault(Fault {
        path_prefix: "/oidc/".into(),
        times: Some(1),
        // A 500 is not retried (a 503 would be, and succeed).
        kind: FaultKind::Status(500),
    });
    let status = app
        .get_my_metadata(&app.alice_token, GetMyMetadataRequest::default())
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    app.get_my_metadata(&app.alice_token, GetMyMetadataRequest::default())
        .await
        .unwrap();
    assert_eq!(app.userinfo_requests(), 2);
}

/// What the owner of `token` reads of their own `ContractNumber` through usermeta.
async fn contract_number(app: &TestApp, token: &str) -> Vec<(String, Option<String>)> {
    let request = GetMyMetadataRequest {
        keys: vec!["ContractNumber".into()],
        source: 0,
    };
    let answer = app
        .client
        .clone()
        .get_my_metadata(authed(request, token))
        .await
        .unwrap()
        .into_inner();
    pairs(&answer.metadata)
}

#[tokio::test]
async fn writes_through_usermeta_invalidate_the_target_users_entries_at_once() {
    let app = TestApp::spawn().await;
    assert_eq!(
        contract_number(&app, &app.alice_token).await,
        [("ContractNumber".into(), Some("1234".into()))]
    );

    // An admin changes alice's metadata through usermeta: alice's next read sees it, without waiting for the TTL.
    let set = SetMetadataRequest {
        user_id: app.alice.clone(),
        entries: vec![entry("ContractNumber", text("4321"))],
        ..Default::default()
    };
    app.set_metadata(&app.admin_token, set).await.unwrap();
    assert_eq!(
        contract_number(&app, &app.alice_token).await,
        [("ContractNumber".into(), Some("4321".into()))]
    );

    // Other users' entries stay cached.
    let calls_before = app.userinfo_requests();
    contract_number(&app, &app.admin_token).await;
    assert_eq!(
        app.userinfo_requests(),
        calls_before,
        "the admin's own entry was not invalidated"
    );
}

#[tokio::test]
async fn deletes_through_usermeta_invalidate_the_target_users_entries_at_once() {
    let app = TestApp::spawn().await;
    assert_eq!(
        contract_number(&app, &app.alice_token).await,
        [("ContractNumber".into(), Some("1234".into()))]
    );

    let delete = DeleteMetadataRequest {
        user_id: app.alice.clone(),
        keys: vec!["ContractNumber".into()],
        ..Default::default()
    };
    app.delete_metadata(&app.admin_token, delete).await.unwrap();
    let calls_before = app.userinfo_requests();
    assert_eq!(
        contract_number(&app, &app.alice_token).await,
        [],
        "alice still reads the deleted key"
    );
    assert_eq!(
        app.userinfo_requests(),
        calls_before + 1,
        "the read after the delete asks ZITADEL again, once"
    );
}

#[tokio::test]
async fn changes_made_outside_usermeta_show_after_the_ttl() {
    let app = TestApp::spawn().await;
    let other = app
        .another()
        .policy(Policy::default())
        .cache(with_cache(
            Duration::from_millis(300),
            Duration::from_secs(5),
        ))
        .spawn()
        .await;
    let mut client = other.client.clone();
    let read = || {
        authed(
            GetMyMetadataRequest {
                keys: vec!["ContractNumber".into()],
                source: 0,
            },
            &app.alice_token,
        )
    };
    client.get_my_metadata(read()).await.unwrap();
    app.standin
        .set_metadata(&app.alice, "ContractNumber", b"changed-in-console");
    let cached = client.get_my_metadata(read()).await.unwrap().into_inner();
    assert_eq!(
        text_of(&cached.metadata[0]),
        Some("1234"),
        "served from memory within the TTL"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let fresh = client.get_my_metadata(read()).await.unwrap().into_inner();
    assert_eq!(text_of(&fresh.metadata[0]), Some("changed-in-console"));
}
