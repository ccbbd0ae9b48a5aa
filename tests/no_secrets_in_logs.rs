//! Captures every log line of a run that goes through every path (reads, writes, deletes, rejected tokens,
//! retries, the breaker, deadlines, rate limits, in-flight limits, a caller's share of the request budget,
//! service credentials that work and that fail) and checks
//! that none of the tokens, PATs or secrets used appears. Its own test binary: the subscriber is global.
#![allow(clippy::unwrap_used)] // a panic is how a test reports a broken expectation

#[path = "support/mod.rs"]
mod support;
use support::{Captured, TestApp, authed, text, until};

use std::time::Duration;

use secrecy::SecretString;
use usermeta::{
    api::pb::{
        self, DeleteMetadataRequest, GetMyMetadataRequest, ListMetadataRequest, MetadataSource,
        SetMetadataRequest,
    },
    policy::Policy,
    server::Limits,
};
use usermeta_zitadel::{Resilience, ServiceCredential, UpstreamBudget};
use zitadel_standin::{Fault, FaultKind, ManagerRole, StandIn};

/// A sealing key (base64 of 32 bytes) and a plaintext only a sealed key holds.
const SEALING_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const SEALED_PLAINTEXT: &str = "sealed-plaintext-value";

const SCOPES: &[&str] = &[
    "openid",
    "urn:zitadel:iam:user:metadata",
    "urn:zitadel:iam:user:resourceowner",
    "urn:zitadel:iam:org:project:id:zitadel:aud",
];

async fn serve(
    standin: &StandIn,
    credential: ServiceCredential,
    admin: &str,
    limits: Limits,
) -> TestApp {
    TestApp::builder()
        .zitadel_url(&standin.url())
        .credential(credential)
        .policy(Policy::new([admin.to_owned()], vec!["profile.".into()]))
        .timeout(Duration::from_secs(2))
        .fast_retries(Resilience {
            breaker_failures: 3,
            breaker_window: Duration::from_millis(500),
            breaker_cooldown: Duration::from_millis(100),
            ..Resilience::default()
        })
        .no_cache()
        .limits(limits)
        .spawn()
        .await
}

#[tokio::test]
async fn no_token_pat_or_secret_is_ever_logged() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_env_filter("usermeta=trace,info")
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let standin = StandIn::start().await.unwrap();
    let org = standin.create_org("Acme");
    let alice = standin.create_user(&org, "alice");
    let admin = standin.create_user(&org, "admin");
    let service_user = standin.create_service_user(&org, "usermeta", ManagerRole::IamOwner);
    let pat = standin.issue_pat(&service_user);
    let (client_id, client_secret) = standin.add_client_secret(&service_user);
    let alice_token = standin.issue_token(&alice, SCOPES);
    let admin_token = standin.issue_token(&admin, SCOPES);
    let revoked_token = standin.issue_token(&alice, SCOPES);
    standin.revoke_token(&revoked_token);
    standin.set_metadata(&alice, "ContractNumber", b"1234");

    let rate_limited = Limits {
        requests: usermeta::api::RequestLimits {
            caller_rate: 1,
            caller_burst: 30,
            ..Default::default()
        },
        ..Limits::default()
    };
    let pat_app = serve(
        &standin,
        ServiceCredential::Pat(SecretString::from(pat.clone())),
        &admin,
        rate_limited,
    )
    .await;
    let secret_app = serve(
        &standin,
        ServiceCredential::ClientCredentials {
            client_id: client_id.clone(),
            secret: SecretString::from(client_secret.clone()),
        },
        &admin,
        Limits::default(),
    )
    .await;
    let (mut with_pat, mut with_secret) = (pat_app.client.clone(), secret_app.client.clone());

    for client in [&mut with_pat, &mut with_secret] {
        // Reads, both sources; writes and deletes on self and on another user.
        let _ = client
            .get_my_metadata(authed(GetMyMetadataRequest::default(), &alice_token))
            .await;
        let _ = client
            .get_my_metadata(authed(
                GetMyMetadataRequest {
                    source: MetadataSource::AuthApi as i32,
                    ..Default::default()
                },
                &alice_token,
            ))
            .await;
        let _ = client
            .list_metadata(authed(
                ListMetadataRequest {
                    user_id: alice.clone(),
                    ..Default::default()
                },
                &admin_token,
            ))
            .await;
        for token in [&alice_token, &admin_token] {
            let _ = client
                .set_metadata(authed(
                    SetMetadataRequest {
                        user_id: alice.clone(),
                        entries: vec![pb::MetadataEntry {
                            key: "profile.x".into(),
                            value: text("secret-value"),
                            ..Default::default()
                        }],
                        ..Default::default()
                    },
                    token,
                ))
                .await;
            let _ = client
                .delete_metadata(authed(
                    DeleteMetadataRequest {
                        user_id: alice.clone(),
                        keys: vec!["profile.x".into(), "missing".into()],
                        ..Default::default()
                    },
                    token,
                ))
                .await;
        }
        // Rejected and malformed tokens.
        let _ = client
            .get_my_metadata(authed(GetMyMetadataRequest::default(), &revoked_token))
            .await;
        let _ = client
            .get_my_metadata(authed(GetMyMetadataRequest::default(), "not a token"))
            .await;
        // Retries, 429, malformed answers, the breaker, a deadline.
        for kind in [
            FaultKind::Status(503),
            FaultKind::DropConnection,
            FaultKind::MalformedJson,
            FaultKind::TooManyRequests {
                retry_after_secs: Some(1),
            },
        ] {
            standin.push_fault(Fault {
                path_prefix: "".into(),
                times: Some(4),
                kind,
            });
            for _ in 0..2 {
                let _ = client
                    .set_metadata(authed(
                        SetMetadataRequest {
                            entries: vec![pb::MetadataEntry {
                                key: "profile.y".into(),
                                value: text("v"),
                                ..Default::default()
                            }],
                            ..Default::default()
                        },
                        &alice_token,
                    ))
                    .await;
            }
            standin.clear_faults();
        }
        // A sustained outage opens the breaker: once the window has forgotten the successes above, three
        // failed requests and nothing else.
        tokio::time::sleep(Duration::from_millis(600)).await;
        standin.push_fault(Fault {
            path_prefix: "".into(),
            times: None,
            kind: FaultKind::Status(503),
        });
        for _ in 0..4 {
            let _ = client
                .get_my_metadata(authed(GetMyMetadataRequest::default(), &alice_token))
                .await;
        }
        standin.clear_faults();
        tokio::time::sleep(Duration::from_millis(150)).await;
        standin.push_fault(Fault {
            path_prefix: "".into(),
            times: Some(1),
            kind: FaultKind::Latency(Duration::from_secs(1)),
        });
        let mut request = authed(GetMyMetadataRequest::default(), &alice_token);
        request.set_timeout(Duration::from_millis(300));
        let _ = client.get_my_metadata(request).await;
        standin.clear_faults();
    }
    // The per-caller rate limit.
    for _ in 0..40 {
        let _ = with_pat
            .get_my_metadata(authed(GetMyMetadataRequest::default(), &admin_token))
            .await;
    }
    // The in-flight limits and a caller's share of the request budget: their refusals name limits, not tokens.
    let limited_app = TestApp::builder()
        .zitadel_url(&standin.url())
        .pat(&pat)
        .no_cache()
        .limits(Limits {
            max_in_flight: 8,
            max_in_flight_per_caller: Some(1),
            ..Limits::default()
        })
        .upstream_budget(UpstreamBudget {
            rate: 0.01,
            burst: 4,
            reserve: 0.0,
            caller_share: 0.5,
        })
        .spawn()
        .await;
    let limited = limited_app.client.clone();
    let asked = standin.userinfo_requests();
    standin.push_fault(Fault {
        path_prefix: "/oidc/v1/userinfo".into(),
        times: Some(1),
        kind: FaultKind::Latency(Duration::from_millis(500)),
    });
    let held = {
        let mut limited = limited.clone();
        let request = authed(GetMyMetadataRequest::default(), &alice_token);
        tokio::spawn(async move { limited.get_my_metadata(request).await })
    };
    until("the first call is held at userinfo", || {
        standin.userinfo_requests() > asked
    })
    .await;
    let _ = limited
        .clone()
        .get_my_metadata(authed(GetMyMetadataRequest::default(), &alice_token))
        .await;
    let _ = held.await;
    standin.clear_faults();
    for _ in 0..3 {
        let _ = limited
            .clone()
            .get_my_metadata(authed(GetMyMetadataRequest::default(), &admin_token))
            .await;
    }
    limited_app.stop.send(()).unwrap();
    limited_app.stopped.await.unwrap();
    // Service credentials ZITADEL rejects.
    standin.revoke_token(&pat);
    standin.remove_client_secret(&client_id);
    standin.revoke_tokens_of(&service_user);
    for client in [&mut with_pat, &mut with_secret] {
        let _ = client
            .list_metadata(authed(
                ListMetadataRequest {
                    user_id: alice.clone(),
                    ..Default::default()
                },
                &alice_token,
            ))
            .await;
        let _ = client
            .set_metadata(authed(
                SetMetadataRequest {
                    user_id: alice.clone(),
                    entries: vec![pb::MetadataEntry {
                        key: "k".into(),
                        value: text("v"),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                &admin_token,
            ))
            .await;
    }
    // Sealed keys: a value sealed, one typed in the Console, one altered; read named and listed.
    standin.clear_faults();
    let sealing_pat = standin.issue_pat(&service_user);
    let sealing_app = TestApp::builder()
        .zitadel_url(&standin.url())
        .credential(ServiceCredential::Pat(SecretString::from(
            sealing_pat.clone(),
        )))
        .policy(
            Policy::from_toml(
                "[[key]]\nname = \"sealed.*\"\nsealed = true\n",
                "sealed.toml",
            )
            .unwrap()
            .with_shorthands([admin.clone()], Vec::new()),
        )
        .sealing(&format!("k1 {SEALING_KEY}\n"))
        .no_cache()
        .spawn()
        .await;
    let mut sealing = sealing_app.client.clone();
    sealing
        .set_metadata(authed(
            SetMetadataRequest {
                user_id: alice.clone(),
                entries: vec![pb::MetadataEntry {
                    key: "sealed.note".into(),
                    value: text(SEALED_PLAINTEXT),
                    ..Default::default()
                }],
                ..Default::default()
            },
            &admin_token,
        ))
        .await
        .expect("a sealed write");
    let envelope = standin.metadata_of(&alice)["sealed.note"].clone();
    let mut altered = envelope.clone();
    *altered.last_mut().unwrap() ^= 1;
    standin.set_metadata(&alice, "sealed.typed", SEALED_PLAINTEXT.as_bytes());
    standin.set_metadata(&alice, "sealed.altered", &altered);
    for key in ["", "sealed.typed", "sealed.altered", "sealed.note"] {
        let _ = sealing
            .list_metadata(authed(
                ListMetadataRequest {
                    user_id: alice.clone(),
                    key_filter: (!key.is_empty()).then(|| pb::KeyFilter {
                        key: key.into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                &admin_token,
            ))
            .await;
    }
    // Stopped and gone: whatever they log on the way out is in `captured`.
    for app in [pat_app, secret_app, sealing_app] {
        app.stop.send(()).unwrap();
        app.stopped.await.unwrap();
    }

    let logs = captured.text();
    for expected in [
        "request failed",
        "retrying a failed ZITADEL call",
        "circuit open",
        "USERMETA_MAX_IN_FLIGHT_PER_CALLER",
        "this caller's share of its request budget",
        "does not open",
    ] {
        assert!(
            logs.contains(expected),
            "the run did not log {expected:?}:\n{logs}"
        );
    }
    for (name, secret) in [
        ("alice's token", alice_token.as_str()),
        ("admin's token", admin_token.as_str()),
        ("a revoked token", revoked_token.as_str()),
        ("the service PAT", pat.as_str()),
        ("the client secret", client_secret.as_str()),
        ("the sealing app's PAT", sealing_pat.as_str()),
        ("the sealing key", SEALING_KEY),
        ("a sealed value's plaintext", SEALED_PLAINTEXT),
    ] {
        assert!(!logs.contains(secret), "{name} appears in the logs");
    }
}
