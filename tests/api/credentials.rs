//! The service credential toward the management API: a PAT, a JWT-profile key or client credentials, and the
//! lifecycle of the tokens the latter two are exchanged for.

use std::time::{Duration, Instant};

use base64::Engine as _;
use secrecy::SecretString;
use tonic::{Code, transport::Channel};
use usermeta::{
    api::pb::{
        GetMyMetadataRequest, SetMetadataRequest,
        user_metadata_service_client::UserMetadataServiceClient,
    },
    policy::Policy,
};
use usermeta_zitadel::{ServiceCredential, ServiceKey};
use zitadel_standin::{Fault, FaultKind, ManagerRole, StandIn};

use crate::support::*;

const SCOPE: &str = "openid urn:zitadel:iam:org:project:id:zitadel:aud";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Pat,
    JwtProfile,
    ClientCredentials,
}

/// A usermeta serving with a service credential of one kind, and what a test needs to poke at it.
struct CredApp {
    standin: StandIn,
    client: UserMetadataServiceClient<Channel>,
    alice: String,
    alice_token: String,
    admin_token: String,
    service_user: String,
    /// The JWT-profile key id, or the client id.
    credential_id: String,
    /// The PAT, the key file or the client secret: what must never show up in a message.
    secret: String,
    /// Stops usermeta when sent or dropped; `stopped` ends after.
    stop: tokio::sync::oneshot::Sender<()>,
    stopped: tokio::task::JoinHandle<()>,
}

/// The stand-in, seeded; `prepare` runs before usermeta starts (e.g. to set the token lifetime or a fault).
async fn spawn_with(kind: Kind, prepare: impl FnOnce(&StandIn)) -> CredApp {
    let standin = StandIn::start().await.unwrap();
    let org = standin.create_org("Acme");
    let alice = standin.create_user(&org, "alice");
    let admin = standin.create_user(&org, "admin");
    let service_user = standin.create_service_user(&org, "usermeta", ManagerRole::IamOwner);
    standin.set_metadata(&alice, "ContractNumber", b"1234");
    let alice_token = standin.issue_token(&alice, FULL_SCOPES);
    let admin_token = standin.issue_token(&admin, FULL_SCOPES);
    let (credential, credential_id, secret) = match kind {
        Kind::Pat => {
            let pat = standin.issue_pat(&service_user);
            (
                ServiceCredential::Pat(SecretString::from(pat.clone())),
                String::new(),
                pat,
            )
        }
        Kind::JwtProfile => {
            let file = standin.add_machine_key(&service_user);
            let key = ServiceKey::from_json(file.as_bytes()).unwrap();
            let key_id = key.key_id().to_owned();
            let pem: serde_json::Value = serde_json::from_str(&file).unwrap();
            let pem = pem["key"].as_str().unwrap().to_owned();
            (ServiceCredential::JwtProfile(key), key_id, pem)
        }
        Kind::ClientCredentials => {
            let (client_id, secret) = standin.add_client_secret(&service_user);
            (
                ServiceCredential::ClientCredentials {
                    client_id: client_id.clone(),
                    secret: SecretString::from(secret.clone()),
                },
                client_id,
                secret,
            )
        }
    };
    prepare(&standin);
    let other = TestApp::builder()
        .zitadel_url(&standin.url())
        .credential(credential)
        .policy(Policy::new([admin.clone()], vec![SELF_WRITABLE.into()]))
        .spawn()
        .await;
    CredApp {
        client: other.client.clone(),
        standin,
        alice,
        alice_token,
        admin_token,
        service_user,
        credential_id,
        secret,
        stop: other.stop,
        stopped: other.stopped,
    }
}

impl CredApp {
    fn set(&self, key: &str, value: &str) -> tonic::Request<SetMetadataRequest> {
        authed(
            SetMetadataRequest {
                user_id: self.alice.clone(),
                entries: vec![entry(key, text(value))],
                ..Default::default()
            },
            &self.admin_token,
        )
    }

    /// The `Authorization` headers of the management calls, in order.
    fn management_authorizations(&self) -> Vec<String> {
        self.standin
            .requests()
            .into_iter()
            .filter(|r| r.is_management())
            .map(|r| {
                r.headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    }

    /// Each token request's form fields and `Authorization` header.
    fn token_request_forms(&self) -> Vec<TokenRequest> {
        self.standin
            .requests()
            .into_iter()
            .filter(|r| r.path == "/oauth/v2/token")
            .map(|r| {
                let form = url::form_urlencoded::parse(&r.body)
                    .map(|(k, v)| (k.into_owned(), v.into_owned()))
                    .collect();
                let auth = r
                    .headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                (form, auth)
            })
            .collect()
    }
}

type TokenRequest = (Vec<(String, String)>, Option<String>);

fn field<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn each_credential_kind_drives_set_metadata() {
    for kind in [Kind::Pat, Kind::JwtProfile, Kind::ClientCredentials] {
        let mut app = spawn_with(kind, |_| {}).await;
        let request = app.set("plan", "gold");
        app.client.set_metadata(request).await.unwrap();
        assert_eq!(
            app.standin.metadata_of(&app.alice).get("plan").unwrap(),
            b"gold",
            "{kind:?}"
        );
        let authorizations = app.management_authorizations();
        assert_eq!(authorizations.len(), 1, "{kind:?}");
        let forms = app.token_request_forms();
        match kind {
            Kind::Pat => {
                assert_eq!(authorizations[0], format!("Bearer {}", app.secret));
                assert!(forms.is_empty(), "a PAT needs no token request");
            }
            Kind::JwtProfile => {
                assert_eq!(forms.len(), 1);
                let (form, auth) = &forms[0];
                assert_eq!(
                    field(form, "grant_type"),
                    Some("urn:ietf:params:oauth:grant-type:jwt-bearer")
                );
                assert_eq!(field(form, "scope"), Some(SCOPE));
                assert!(auth.is_none(), "the assertion authenticates");
                // Header kid = keyId; iss = sub = userId; aud = the issuer exactly; exp - iat <= 1 h.
                let assertion = field(form, "assertion").unwrap();
                let header = jsonwebtoken::decode_header(assertion).unwrap();
                assert_eq!(header.kid.as_deref(), Some(app.credential_id.as_str()));
                let payload = assertion.split('.').nth(1).unwrap();
                let claims: serde_json::Value = serde_json::from_slice(
                    &base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .decode(payload)
                        .unwrap(),
                )
                .unwrap();
                assert_eq!(claims["iss"], app.service_user.as_str());
                assert_eq!(claims["sub"], app.service_user.as_str());
                assert_eq!(claims["aud"], app.standin.url().as_str());
                let lifetime = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
                assert!(lifetime > 0 && lifetime <= 3600, "{claims}");
            }
            Kind::ClientCredentials => {
                assert_eq!(forms.len(), 1);
                let (form, auth) = &forms[0];
                assert_eq!(field(form, "grant_type"), Some("client_credentials"));
                assert_eq!(field(form, "scope"), Some(SCOPE));
                assert!(field(form, "client_secret").is_none());
                assert!(auth.as_deref().unwrap().starts_with("Basic "));
            }
        }
        if kind != Kind::Pat {
            assert!(authorizations[0].starts_with("Bearer "));
            assert_ne!(authorizations[0], format!("Bearer {}", app.secret));
        }
    }
}

/// Sends `count` SetMetadata calls, `parallel` at a time, and returns the failures.
async fn burst(app: &CredApp, count: usize, parallel: usize) -> Vec<tonic::Status> {
    let mut failures = Vec::new();
    for round in 0..count.div_ceil(parallel) {
        let calls = (0..parallel).map(|i| {
            let mut client = app.client.clone();
            let request = app.set(&format!("k{}", round * parallel + i), "v");
            async move { client.set_metadata(request).await }
        });
        for result in futures::future::join_all(calls).await {
            if let Err(status) = result {
                failures.push(status);
            }
        }
    }
    failures
}

#[tokio::test]
async fn calls_within_one_token_lifetime_share_one_token_request() {
    for kind in [Kind::JwtProfile, Kind::ClientCredentials] {
        // A slow token endpoint: the first 20 calls all arrive while the first token is being fetched, and
        // must share that one request rather than start their own.
        let app = spawn_with(kind, |z| {
            z.push_fault(Fault {
                path_prefix: "/oauth/v2/token".into(),
                times: Some(1),
                kind: FaultKind::Latency(Duration::from_millis(300)),
            });
        })
        .await;
        let failures = burst(&app, 200, 20).await;
        assert!(failures.is_empty(), "{kind:?}: {failures:?}");
        assert_eq!(app.standin.token_requests(), 1, "{kind:?}");
        assert_eq!(app.management_authorizations().len(), 200);
    }
}

#[tokio::test]
async fn a_call_does_not_wait_for_a_refresh_under_way() {
    // Refreshed after half the lifetime: the current token stays good for five seconds after that.
    const LIFETIME: Duration = Duration::from_secs(10);
    let app = spawn_with(Kind::JwtProfile, |z| z.set_token_lifetime(LIFETIME)).await;
    let mut client = app.client.clone();
    client.set_metadata(app.set("warm", "up")).await.unwrap();
    let before = app.standin.token_requests();
    // The next refresh never comes back while the test runs.
    app.standin.push_fault(Fault {
        path_prefix: "/oauth/v2/token".into(),
        times: Some(1),
        kind: FaultKind::Latency(HANG),
    });
    until("a refresh is under way ahead of expiry", || {
        app.standin.token_requests() > before
    })
    .await;
    for n in 0..5 {
        promptly(
            "a call while the refresh hangs",
            client.set_metadata(app.set(&format!("r{n}"), "v")),
        )
        .await
        .unwrap();
    }
    assert_eq!(
        app.standin.token_requests(),
        before + 1,
        "the calls asked for no token of their own"
    );
}

#[tokio::test]
async fn short_lived_tokens_are_refreshed_ahead_of_expiry() {
    const LIFETIME: Duration = Duration::from_secs(2);
    const TOKEN_LATENCY: Duration = Duration::from_millis(600);
    let app = spawn_with(Kind::JwtProfile, |z| z.set_token_lifetime(LIFETIME)).await;
    app.client
        .clone()
        .set_metadata(app.set("warm", "up"))
        .await
        .unwrap();
    // From now on every refresh takes 600 ms (calls go on meanwhile:
    // `a_call_does_not_wait_for_a_refresh_under_way`).
    app.standin.push_fault(Fault {
        path_prefix: "/oauth/v2/token".into(),
        times: None,
        kind: FaultKind::Latency(TOKEN_LATENCY),
    });
    let before = app.standin.token_requests();

    // Steady traffic over three lifetimes and a bit, two callers at a time.
    let start = Instant::now();
    let run_for = LIFETIME * 3 + Duration::from_millis(500);
    let caller = |n: usize| {
        let mut client = app.client.clone();
        let app = &app;
        async move {
            let (mut calls, mut failures) = (0, Vec::new());
            while start.elapsed() < run_for {
                if let Err(status) = client.set_metadata(app.set(&format!("c{n}"), "v")).await {
                    failures.push(status);
                }
                calls += 1;
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
            (calls, failures)
        }
    };
    let results = futures::future::join_all((0..2).map(caller)).await;
    let refreshes = app.standin.token_requests() - before;
    for (calls, failures) in results {
        assert!(failures.is_empty(), "{failures:?}");
        assert!(calls > 50, "only {calls} calls");
    }
    // At least one refresh per lifetime, ahead of expiry, and no storm.
    assert!((3..=10).contains(&refreshes), "{refreshes} token requests");
}

#[tokio::test]
async fn a_token_rejected_once_is_refreshed_and_the_call_retried() {
    for kind in [Kind::JwtProfile, Kind::ClientCredentials] {
        let mut app = spawn_with(kind, |_| {}).await;
        app.client.set_metadata(app.set("a", "1")).await.unwrap();
        assert_eq!(app.standin.token_requests(), 1);
        // ZITADEL forgets the token (revoked, or expired earlier than announced).
        assert_eq!(app.standin.revoke_tokens_of(&app.service_user), 1);
        app.client.set_metadata(app.set("b", "2")).await.unwrap();
        assert_eq!(app.standin.metadata_of(&app.alice).get("b").unwrap(), b"2");
        assert_eq!(app.standin.token_requests(), 2, "{kind:?}: one refresh");
        let auths = app.management_authorizations();
        // The first token, its rejected reuse, then the retry with the new token.
        assert_eq!(auths.len(), 3, "{kind:?}");
        assert_eq!(auths[0], auths[1]);
        assert_ne!(auths[1], auths[2]);
        // Later calls use the new token without another refresh.
        app.client.set_metadata(app.set("c", "3")).await.unwrap();
        assert_eq!(app.standin.token_requests(), 2);
    }
}

#[tokio::test]
async fn a_token_the_management_api_keeps_rejecting_is_retried_once_only() {
    let mut app = spawn_with(Kind::ClientCredentials, |_| {}).await;
    app.client.set_metadata(app.set("a", "1")).await.unwrap();
    app.standin.push_fault(Fault {
        path_prefix: "/management/".into(),
        times: None,
        kind: FaultKind::Status(401),
    });
    let before = app.management_authorizations().len();
    let status = app
        .client
        .set_metadata(app.set("b", "2"))
        .await
        .unwrap_err();
    assert_status(&status, Code::Unavailable, "SERVICE_CREDENTIAL_REJECTED");
    assert_eq!(
        app.management_authorizations().len() - before,
        2,
        "one retry"
    );
    assert_eq!(app.standin.token_requests(), 2, "one refresh");
}

#[tokio::test]
async fn a_credential_zitadel_keeps_rejecting_is_unavailable_and_reads_still_work() {
    for kind in [Kind::JwtProfile, Kind::ClientCredentials] {
        let mut app = spawn_with(kind, |_| {}).await;
        app.client.set_metadata(app.set("a", "1")).await.unwrap();
        // The operator deleted the key or secret in ZITADEL; the current token is gone too.
        match kind {
            Kind::JwtProfile => app.standin.remove_machine_key(&app.credential_id),
            _ => app.standin.remove_client_secret(&app.credential_id),
        }
        app.standin.revoke_tokens_of(&app.service_user);

        let status = app
            .client
            .set_metadata(app.set("b", "2"))
            .await
            .unwrap_err();
        assert_status(
            &status,
            Code::Unavailable,
            "SERVICE_CREDENTIAL_REFRESH_FAILED",
        );
        let message = status.message();
        let (names, oauth_error) = match kind {
            Kind::JwtProfile => (
                format!(
                    "JWT profile key {} of service user {}",
                    app.credential_id, app.service_user
                ),
                "invalid_grant",
            ),
            _ => (
                format!("client credentials of client {}", app.credential_id),
                "invalid_client",
            ),
        };
        assert!(message.contains(&names), "{message}");
        assert!(message.contains(oauth_error), "{message}");
        assert!(!message.contains(&app.secret), "{message}");
        assert!(!message.contains("PRIVATE KEY"), "{message}");
        assert!(!app.standin.metadata_of(&app.alice).contains_key("b"));

        // Reads with the caller's own token need no service credential.
        let mine = app
            .client
            .get_my_metadata(authed(GetMyMetadataRequest::default(), &app.alice_token))
            .await
            .unwrap()
            .into_inner();
        assert!(pairs(&mine.metadata).contains(&("ContractNumber".into(), Some("1234".into()))));

        // A burst of failing calls does not become a burst of token requests.
        let before = app.standin.token_requests();
        let failures = burst(&app, 20, 10).await;
        assert_eq!(failures.len(), 20);
        assert!(app.standin.token_requests() - before <= 2);
    }
}

#[tokio::test]
async fn the_server_starts_and_serves_reads_when_the_first_token_request_fails() {
    let mut app = spawn_with(Kind::JwtProfile, |z| {
        z.push_fault(Fault {
            path_prefix: "/oauth/v2/token".into(),
            times: None,
            kind: FaultKind::Status(503),
        });
    })
    .await;
    let mine = app
        .client
        .get_my_metadata(authed(GetMyMetadataRequest::default(), &app.alice_token))
        .await
        .unwrap();
    assert!(!mine.into_inner().metadata.is_empty());
    let status = app
        .client
        .set_metadata(app.set("b", "2"))
        .await
        .unwrap_err();
    assert_status(
        &status,
        Code::Unavailable,
        "SERVICE_CREDENTIAL_REFRESH_FAILED",
    );
    // ZITADEL recovers: the next call after the failure hold gets a token and succeeds.
    app.standin.clear_faults();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    app.client.set_metadata(app.set("b", "2")).await.unwrap();
}

#[tokio::test]
async fn the_background_refresh_stops_with_the_server() {
    let mut app = spawn_with(Kind::ClientCredentials, |z| {
        z.set_token_lifetime(Duration::from_secs(1))
    })
    .await;
    app.client.set_metadata(app.set("a", "1")).await.unwrap();
    app.stop.send(()).unwrap();
    app.stopped.await.unwrap();
    // Stopped: let more than one token lifetime pass, and no refresh may follow.
    let after_stop = app.standin.token_requests();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(app.standin.token_requests(), after_stop);
}
