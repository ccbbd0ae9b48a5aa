//! Caller identity verified with ZITADEL: introspection as an API application (client secret or key file),
//! and local validation of JWT access tokens against the JWKS.

use std::time::Duration;

use tonic::Code;
use tonic_types::StatusExt as _;
use usermeta::{
    api::pb::{GetMyMetadataRequest, GetMyMetadataResponse, MetadataSource, SetMetadataRequest},
    caller::{ApplicationKey, IdentityConfig, IntrospectionAuth, JwtConfig},
    policy::Policy,
};
use zitadel_standin::{IdTokenSpec, JwtSpec, ManagerRole, StandIn};

use crate::support::*;

struct World {
    standin: StandIn,
    org: String,
    project: String,
    alice: String,
    pat: String,
    /// Scopes of a token meant for usermeta: the usual ones plus usermeta's project audience and roles.
    scopes: Vec<String>,
}

async fn world() -> World {
    let standin = StandIn::start().await.unwrap();
    let org = standin.create_org("Acme");
    let project = standin.create_project(&org);
    let alice = standin.create_user(&org, "alice");
    standin.set_metadata(&alice, "profile.name", b"Alice");
    let service = standin.create_service_user(&org, "usermeta", ManagerRole::IamOwner);
    let pat = standin.issue_pat(&service);
    let mut scopes: Vec<String> = FULL_SCOPES.iter().map(|s| (*s).to_owned()).collect();
    scopes.push(format!("urn:zitadel:iam:org:project:id:{project}:aud"));
    scopes.push("urn:zitadel:iam:org:projects:roles".into());
    World {
        standin,
        org,
        project,
        alice,
        pat,
        scopes,
    }
}

impl World {
    fn scopes(&self) -> Vec<&str> {
        self.scopes.iter().map(String::as_str).collect()
    }

    fn secret_auth(&self) -> IntrospectionAuth {
        let (client_id, secret) = self.standin.add_api_app_with_secret(&self.project);
        IntrospectionAuth::ClientSecret {
            client_id,
            secret: secret.into(),
        }
    }

    fn jwt(&self, min_refresh_interval: Duration) -> JwtConfig {
        JwtConfig {
            audience: vec![self.project.clone()],
            min_refresh_interval,
        }
    }

    /// [`World::serve`] validating JWTs locally (keys refetched at most once a minute), without introspection.
    async fn serve_validating_jwts(&self) -> (Client, tokio::sync::oneshot::Sender<()>) {
        self.serve(IdentityConfig {
            introspection: None,
            jwt: Some(self.jwt(Duration::from_secs(60))),
        })
        .await
    }

    /// [`World::serve`] identifying callers by introspection with a client secret.
    async fn serve_introspecting(&self) -> (Client, tokio::sync::oneshot::Sender<()>) {
        self.serve(IdentityConfig {
            introspection: Some(self.secret_auth()),
            jwt: None,
        })
        .await
    }

    async fn serve(&self, identity: IdentityConfig) -> (Client, tokio::sync::oneshot::Sender<()>) {
        // alice may write profile.* on herself; the policy must see the roles to let `editor`s write `notes.*`.
        let policy = Policy::from_toml(
            r#"
[[rule]]
who = { roles = ["editor"] }
whose = "self"
keys = ["notes.*"]
actions = ["write"]
"#,
            "identity.toml",
        )
        .unwrap()
        .with_shorthands([], vec!["profile.".into()]);
        let other = TestApp::builder()
            .zitadel_url(&self.standin.url())
            .pat(&self.pat)
            .policy(policy)
            .identity(identity)
            .project_id(&self.project)
            .spawn()
            .await;
        (other.client.clone(), other.stop)
    }
}

type Client = usermeta::api::pb::user_metadata_service_client::UserMetadataServiceClient<
    tonic::transport::Channel,
>;

async fn whoami(client: &mut Client, token: &str) -> Result<String, tonic::Status> {
    client
        .get_my_metadata(authed(GetMyMetadataRequest::default(), token))
        .await
        .map(|r| r.into_inner().user_id)
}

async fn write_note(client: &mut Client, token: &str) -> Result<(), tonic::Status> {
    client
        .set_metadata(authed(
            SetMetadataRequest {
                entries: vec![entry("notes.today", text("hi"))],
                ..Default::default()
            },
            token,
        ))
        .await
        .map(|_| ())
}

#[tokio::test]
async fn introspection_with_a_client_secret_identifies_active_tokens_and_caches_them() {
    let world = world().await;
    let (mut client, _stop) = world.serve_introspecting().await;
    let token = world.standin.issue_token(&world.alice, &world.scopes());
    assert_eq!(whoami(&mut client, &token).await.unwrap(), world.alice);
    assert_eq!(whoami(&mut client, &token).await.unwrap(), world.alice);
    assert_eq!(
        world.standin.introspection_requests(),
        1,
        "the identity is cached by token"
    );
    let introspect = world
        .standin
        .requests()
        .into_iter()
        .find(|r| r.path == "/oauth/v2/introspect")
        .unwrap();
    let auth = introspect.headers["authorization"].to_str().unwrap();
    assert!(auth.starts_with("Basic "), "client_secret_basic: {auth}");

    // Roles come from the introspection answer: without the grant, writing notes is refused.
    let status = write_note(&mut client, &token).await.unwrap_err();
    assert_status(&status, Code::PermissionDenied, "POLICY_DENIED");
    world
        .standin
        .grant_role(&world.alice, &world.project, "editor");
    let fresh = world.standin.issue_token(&world.alice, &world.scopes());
    write_note(&mut client, &fresh).await.unwrap();
    assert_eq!(
        world.standin.metadata_of(&world.alice)["notes.today"],
        b"hi"
    );
}

#[tokio::test]
async fn introspection_with_an_application_key_uses_private_key_jwt() {
    let world = world().await;
    let (client_id, key_file) = world.standin.add_api_app_with_key(&world.project);
    let key = ApplicationKey::from_json(key_file.as_bytes()).unwrap();
    assert_eq!(key.client_id(), client_id);
    let (mut client, _stop) = world
        .serve(IdentityConfig {
            introspection: Some(IntrospectionAuth::PrivateKeyJwt(key)),
            jwt: None,
        })
        .await;
    let token = world.standin.issue_token(&world.alice, &world.scopes());
    assert_eq!(whoami(&mut client, &token).await.unwrap(), world.alice);
    let introspect = world
        .standin
        .requests()
        .into_iter()
        .find(|r| r.path == "/oauth/v2/introspect")
        .unwrap();
    let body = String::from_utf8_lossy(&introspect.body).into_owned();
    assert!(body.contains("client_assertion_type=urn"), "{body}");
    assert!(!introspect.headers.contains_key("authorization"));
}

#[tokio::test]
async fn introspection_and_userinfo_share_one_pooled_connection() {
    let world = world().await;
    let (mut client, _stop) = world.serve_introspecting().await;
    let before = world.standin.connections_accepted();
    for _ in 0..5 {
        // A new token each time: introspection for the identity, then userinfo for the caller's metadata.
        let token = world.standin.issue_token(&world.alice, &world.scopes());
        assert_eq!(whoami(&mut client, &token).await.unwrap(), world.alice);
    }
    assert_eq!(world.standin.introspection_requests(), 5);
    assert!(world.standin.requests().iter().any(|r| r.is_userinfo()));
    assert_eq!(
        world.standin.connections_accepted() - before,
        1,
        "one pooled client serves introspection and userinfo"
    );
}

#[tokio::test]
async fn inactive_tokens_are_unauthenticated_and_remembered_briefly() {
    let world = world().await;
    let (mut client, _stop) = world.serve_introspecting().await;
    // Revoked, and a token whose audience lacks usermeta's project: both `{"active":false}`.
    let revoked = world.standin.issue_token(&world.alice, &world.scopes());
    world.standin.revoke_token(&revoked);
    let other_audience = world.standin.issue_token(&world.alice, FULL_SCOPES);
    for token in [&revoked, &other_audience] {
        let status = whoami(&mut client, token).await.unwrap_err();
        assert_status(&status, Code::Unauthenticated, "TOKEN_INACTIVE");
    }
    let before = world.standin.introspection_requests();
    let status = whoami(&mut client, &revoked).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(
        world.standin.introspection_requests(),
        before,
        "negative entry"
    );
}

#[tokio::test]
async fn a_refused_introspection_client_is_usermeta_s_problem_not_the_caller_s() {
    let world = world().await;
    let (client_id, _) = world.standin.add_api_app_with_secret(&world.project);
    let (mut client, _stop) = world
        .serve(IdentityConfig {
            introspection: Some(IntrospectionAuth::ClientSecret {
                client_id: client_id.clone(),
                secret: "wrong-secret".to_owned().into(),
            }),
            jwt: None,
        })
        .await;
    let token = world.standin.issue_token(&world.alice, &world.scopes());
    let status = whoami(&mut client, &token).await.unwrap_err();
    assert_status(&status, Code::Unavailable, "INTROSPECTION_CLIENT_REJECTED");
    assert!(
        status.message().contains("usermeta's introspection client")
            && status.message().contains(&client_id),
        "{}",
        status.message()
    );
    assert!(!status.message().contains("wrong-secret"));
    assert!(!status.message().contains(&token));
    let info = status.get_details_error_info().unwrap();
    assert_eq!(info.metadata["client_id"], client_id);
    app_made_no_management_call(&world.standin);
}

fn app_made_no_management_call(standin: &StandIn) {
    assert!(standin.requests().iter().all(|r| !r.is_management()));
}

#[tokio::test]
async fn jwts_are_validated_locally_against_the_jwks() {
    let world = world().await;
    let (mut client, _stop) = world.serve_validating_jwts().await;
    let spec = || JwtSpec {
        scopes: world.scopes.clone(),
        client_id: Some("webapp".into()),
        ..JwtSpec::default()
    };
    let good = world.standin.issue_jwt_with(&world.alice, spec());
    assert_eq!(whoami(&mut client, &good).await.unwrap(), world.alice);
    assert_eq!(world.standin.jwks_requests(), 1);
    assert_eq!(world.standin.introspection_requests(), 0);

    // A flipped signature byte.
    let mut tampered = good.clone().into_bytes();
    let last = tampered.len() - 3;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let cases = [
        (tampered, "signature"),
        (
            world.standin.issue_jwt_with(
                &world.alice,
                JwtSpec {
                    scopes: FULL_SCOPES.iter().map(|s| (*s).to_owned()).collect(),
                    audience: vec!["some-other-project".into()],
                    ..spec()
                },
            ),
            "audience",
        ),
        (
            world.standin.issue_jwt_with(
                &world.alice,
                JwtSpec {
                    issuer: Some("https://evil.example".into()),
                    ..spec()
                },
            ),
            "issuer",
        ),
        (
            world.standin.issue_jwt_with(
                &world.alice,
                JwtSpec {
                    expires_in: -120,
                    ..spec()
                },
            ),
            "expired",
        ),
    ];
    for (token, why) in cases {
        let status = whoami(&mut client, &token).await.unwrap_err();
        assert_status(&status, Code::Unauthenticated, "TOKEN_INVALID");
        assert!(
            status.message().contains(why),
            "{why}: {}",
            status.message()
        );
    }
    assert_eq!(
        world.standin.jwks_requests(),
        1,
        "known kids need no refresh"
    );
    assert_eq!(
        world.standin.userinfo_requests(),
        1,
        "only GetMyMetadata's own read"
    );
}

#[tokio::test]
async fn an_unknown_kid_refreshes_the_keys_once_and_garbage_kids_cannot_hammer_zitadel() {
    let world = world().await;
    let (mut client, _stop) = world
        .serve(IdentityConfig {
            introspection: None,
            jwt: Some(world.jwt(Duration::ZERO)),
        })
        .await;
    let scopes = world.scopes();
    let first = world.standin.issue_jwt(&world.alice, &scopes, &[]);
    whoami(&mut client, &first).await.unwrap();
    assert_eq!(world.standin.jwks_requests(), 1);
    // ZITADEL rotates its key: the new kid is unknown, so usermeta fetches the keys once more.
    world.standin.rotate_signing_key();
    let rotated = world.standin.issue_jwt(&world.alice, &scopes, &[]);
    assert_eq!(whoami(&mut client, &rotated).await.unwrap(), world.alice);
    assert_eq!(world.standin.jwks_requests(), 2);
    // The old key is still published and known: no fetch.
    whoami(&mut client, &first).await.unwrap();
    assert_eq!(world.standin.jwks_requests(), 2);

    // With a minimum interval, tokens signed by unpublished keys cause at most one fetch.
    let (mut guarded, _stop2) = world.serve_validating_jwts().await;
    whoami(&mut guarded, &first).await.unwrap();
    let before = world.standin.jwks_requests();
    for _ in 0..5 {
        let garbage = world.standin.issue_jwt_with(
            &world.alice,
            JwtSpec {
                scopes: world.scopes.clone(),
                unpublished_key: true,
                ..JwtSpec::default()
            },
        );
        let status = whoami(&mut guarded, &garbage).await.unwrap_err();
        assert_status(&status, Code::Unauthenticated, "TOKEN_INVALID");
        assert!(
            status.message().contains("does not publish"),
            "{}",
            status.message()
        );
    }
    assert!(
        world.standin.jwks_requests() - before <= 1,
        "garbage kids fetched the keys {} times",
        world.standin.jwks_requests() - before
    );
}

#[tokio::test]
async fn a_cached_identity_never_outlives_the_token_s_exp() {
    let world = world().await;
    let (mut client, _stop) = world.serve_validating_jwts().await;
    let short = world.standin.issue_jwt_with(
        &world.alice,
        JwtSpec {
            scopes: world.scopes.clone(),
            expires_in: 2,
            ..JwtSpec::default()
        },
    );
    assert_eq!(whoami(&mut client, &short).await.unwrap(), world.alice);
    // The cache TTL is 30 s; the token's own exp ends the cached identity first.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let status = whoami(&mut client, &short).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("expired"), "{}", status.message());
}

#[tokio::test]
async fn opaque_tokens_go_to_introspection_when_both_are_configured() {
    let world = world().await;
    let (mut client, _stop) = world
        .serve(IdentityConfig {
            introspection: Some(world.secret_auth()),
            jwt: Some(world.jwt(Duration::from_secs(60))),
        })
        .await;
    let opaque = world.standin.issue_token(&world.alice, &world.scopes());
    let jwt = world.standin.issue_jwt(&world.alice, &world.scopes(), &[]);
    assert_eq!(whoami(&mut client, &opaque).await.unwrap(), world.alice);
    assert_eq!(whoami(&mut client, &jwt).await.unwrap(), world.alice);
    assert_eq!(world.standin.introspection_requests(), 1);
    assert_eq!(world.standin.jwks_requests(), 1);
}

/// A project anyone can create, with a role of the same name, grants nothing: only roles of usermeta's own
/// project count, whichever way the caller is identified and whatever project the token was requested for.
#[tokio::test]
async fn a_role_of_the_same_name_in_another_project_grants_nothing() {
    let world = world().await;
    let org = world.standin.create_org("Attackers");
    let other_project = world.standin.create_project(&org);
    world
        .standin
        .grant_role(&world.alice, &other_project, "editor");
    let (other_client, _) = world.standin.add_api_app_with_secret(&other_project);
    // Requested for the other project (it fills the generic roles claim), with usermeta's audience too.
    let mut scopes = world.scopes.clone();
    scopes.insert(
        0,
        format!("urn:zitadel:iam:org:project:id:{other_project}:aud"),
    );
    let scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
    let opaque = world.standin.issue_token(&world.alice, &scopes);
    let jwt = world.standin.issue_jwt_with(
        &world.alice,
        JwtSpec {
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            client_id: Some(other_client),
            ..JwtSpec::default()
        },
    );
    let modes = [
        (IdentityConfig::default(), &opaque),
        (
            IdentityConfig {
                introspection: Some(world.secret_auth()),
                jwt: None,
            },
            &opaque,
        ),
        (
            IdentityConfig {
                introspection: None,
                jwt: Some(world.jwt(Duration::from_secs(30))),
            },
            &jwt,
        ),
    ];
    for (identity, token) in modes {
        let (mut client, _stop) = world.serve(identity).await;
        let status = write_note(&mut client, token).await.unwrap_err();
        assert_status(&status, Code::PermissionDenied, "POLICY_DENIED");
    }
    assert!(
        !world
            .standin
            .metadata_of(&world.alice)
            .contains_key("notes.today")
    );
    // The same role in usermeta's project does count.
    world
        .standin
        .grant_role(&world.alice, &world.project, "editor");
    let (mut client, _stop) = world
        .serve(IdentityConfig {
            introspection: None,
            jwt: Some(world.jwt(Duration::from_secs(30))),
        })
        .await;
    let token = world.standin.issue_jwt_with(
        &world.alice,
        JwtSpec {
            scopes: world.scopes.clone(),
            ..JwtSpec::default()
        },
    );
    write_note(&mut client, &token).await.unwrap();
}

#[tokio::test]
async fn a_jwt_that_is_not_valid_yet_is_refused() {
    let world = world().await;
    let (mut client, _stop) = world
        .serve(IdentityConfig {
            introspection: None,
            jwt: Some(world.jwt(Duration::from_secs(30))),
        })
        .await;
    let early = world.standin.issue_jwt_with(
        &world.alice,
        JwtSpec {
            scopes: world.scopes.clone(),
            not_before_in: 3600,
            ..JwtSpec::default()
        },
    );
    let status = whoami(&mut client, &early).await.unwrap_err();
    assert_status(&status, Code::Unauthenticated, "TOKEN_INVALID");
    assert!(status.message().contains("nbf"), "{status:?}");
    // A clock a little ahead of usermeta's is tolerated.
    let skewed = world.standin.issue_jwt_with(
        &world.alice,
        JwtSpec {
            scopes: world.scopes.clone(),
            not_before_in: 2,
            ..JwtSpec::default()
        },
    );
    assert_eq!(whoami(&mut client, &skewed).await.unwrap(), world.alice);
}

/// A usermeta identifying callers by introspection (opaque tokens) and by JWTs, with metrics on; its
/// breaker opens after `breaker_failures` failed calls and stays open for a minute.
async fn serve_observed(
    world: &World,
    breaker_failures: u32,
) -> (
    Client,
    std::net::SocketAddr,
    tokio::sync::oneshot::Sender<()>,
) {
    let spawned = TestApp::builder()
        .zitadel_url(&world.standin.url())
        .pat(&world.pat)
        .resilience(usermeta_zitadel::Resilience {
            max_attempts: 1,
            breaker_failures,
            breaker_cooldown: Duration::from_secs(60),
            ..Default::default()
        })
        .project_id(&world.project)
        .identity(IdentityConfig {
            introspection: Some(world.secret_auth()),
            jwt: Some(world.jwt(Duration::from_secs(30))),
        })
        .metrics()
        .spawn()
        .await;
    let metrics = spawned.metrics_addr.unwrap();
    (spawned.client.clone(), metrics, spawned.stop)
}

fn traced(token: &str, trace_id: &str) -> tonic::Request<GetMyMetadataRequest> {
    let mut request = authed(GetMyMetadataRequest::default(), token);
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );
    request
}

/// Introspection and key fetches go through the one door to ZITADEL: the caller's trace, upstream metrics,
/// the deadline and the circuit breaker apply to them as to every other call.
#[tokio::test]
async fn introspection_and_key_fetches_carry_the_trace_are_counted_and_bounded_by_the_deadline() {
    let world = world().await;
    let (mut client, metrics, _stop) = serve_observed(&world, 5).await;
    let opaque = world.standin.issue_token(&world.alice, &world.scopes());
    let jwt = world.standin.issue_jwt_with(
        &world.alice,
        JwtSpec {
            scopes: world.scopes.clone(),
            ..JwtSpec::default()
        },
    );
    let introspect_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let keys_trace = "5cf92f3577b34da6a3ce929d0e0e4737";
    client
        .get_my_metadata(traced(&opaque, introspect_trace))
        .await
        .unwrap();
    client
        .get_my_metadata(traced(&jwt, keys_trace))
        .await
        .unwrap();
    let requests = world.standin.requests();
    let trace_of = |path: &str| {
        requests
            .iter()
            .find(|r| r.path == path)
            .and_then(|r| r.header("traceparent"))
            .map(|t| t.split('-').nth(1).unwrap_or_default().to_owned())
    };
    assert_eq!(
        trace_of("/oauth/v2/introspect").as_deref(),
        Some(introspect_trace)
    );
    assert_eq!(trace_of("/oauth/v2/keys").as_deref(), Some(keys_trace));

    let scraped = reqwest::get(format!("http://{metrics}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for endpoint in ["oauth.Introspect", "oauth.Keys"] {
        let series =
            format!("usermeta_upstream_requests_total{{endpoint=\"{endpoint}\",status=\"200\"}}");
        assert!(
            scraped.lines().any(|line| line.starts_with(&series)),
            "no {series} in:\n{scraped}"
        );
    }

    // A slow introspection is cut off at the caller's deadline.
    world.standin.push_fault(zitadel_standin::Fault {
        path_prefix: "/oauth/v2/introspect".into(),
        times: None,
        kind: zitadel_standin::FaultKind::Latency(HANG),
    });
    let slow = world.standin.issue_token(&world.alice, &world.scopes());
    let request = with_deadline(
        authed(GetMyMetadataRequest::default(), &slow),
        Duration::from_millis(300),
    );
    let status = promptly(
        "the deadline ends the call",
        client.get_my_metadata(request),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
}

#[tokio::test]
async fn an_open_breaker_stops_introspection_calls() {
    let world = world().await;
    let (mut client, _metrics, _stop) = serve_observed(&world, 2).await;
    world.standin.push_fault(zitadel_standin::Fault {
        path_prefix: "/oauth/v2/introspect".into(),
        times: None,
        kind: zitadel_standin::FaultKind::Status(503),
    });
    for _ in 0..2 {
        let token = world.standin.issue_token(&world.alice, &world.scopes());
        let status = whoami(&mut client, &token).await.unwrap_err();
        assert_status(&status, Code::Unavailable, "ZITADEL_UNAVAILABLE");
    }
    let sent = world.standin.introspection_requests();
    let token = world.standin.issue_token(&world.alice, &world.scopes());
    let status = whoami(&mut client, &token).await.unwrap_err();
    assert_status(&status, Code::Unavailable, "ZITADEL_CIRCUIT_OPEN");
    assert_eq!(
        world.standin.introspection_requests(),
        sent,
        "nothing sent while open"
    );
}

async fn from_token(
    client: &mut Client,
    token: &str,
) -> Result<GetMyMetadataResponse, tonic::Status> {
    client
        .get_my_metadata(authed(
            GetMyMetadataRequest {
                source: MetadataSource::Token as i32,
                ..Default::default()
            },
            token,
        ))
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test]
async fn the_token_source_reads_the_jwts_own_metadata_claim_without_asking_zitadel() {
    let world = world().await;
    world
        .standin
        .set_metadata(&world.alice, "bin", &[0xff, 0x00]);
    let (mut client, _stop) = world.serve_validating_jwts().await;
    let spec = || JwtSpec {
        scopes: world.scopes.clone(),
        ..JwtSpec::default()
    };
    // Warm the key cache, then every new token costs ZITADEL nothing.
    from_token(
        &mut client,
        &world.standin.issue_jwt_with(&world.alice, spec()),
    )
    .await
    .unwrap();
    let before = (
        world.standin.userinfo_requests(),
        world.standin.jwks_requests(),
    );
    for _ in 0..3 {
        let token = world.standin.issue_jwt_with(&world.alice, spec());
        let answer = from_token(&mut client, &token).await.unwrap();
        assert_eq!(answer.user_id, world.alice);
        let keys: Vec<&str> = answer.metadata.iter().map(|m| m.key.as_str()).collect();
        assert_eq!(keys, ["bin", "profile.name"]);
        assert_eq!(text_of(&answer.metadata[1]), Some("Alice"));
        assert_eq!(
            answer.metadata[0].value,
            binary(&[0xff, 0x00]),
            "values decode as userinfo's do"
        );
    }
    assert_eq!(
        (
            world.standin.userinfo_requests(),
            world.standin.jwks_requests()
        ),
        before
    );
    assert!(world.standin.requests().iter().all(|r| !r.is_management()));

    // A JWT asked without the metadata scope carries no claim: an empty answer.
    let without: Vec<String> = world
        .scopes
        .iter()
        .filter(|s| *s != "urn:zitadel:iam:user:metadata")
        .cloned()
        .collect();
    let bare = world.standin.issue_jwt_with(
        &world.alice,
        JwtSpec {
            scopes: without,
            ..JwtSpec::default()
        },
    );
    assert!(
        from_token(&mut client, &bare)
            .await
            .unwrap()
            .metadata
            .is_empty()
    );

    // Expired, not yet valid, or for another audience: UNAUTHENTICATED, saying why.
    for (spec, why) in [
        (
            JwtSpec {
                expires_in: -600,
                ..spec()
            },
            "expired",
        ),
        (
            JwtSpec {
                not_before_in: 600,
                ..spec()
            },
            "not valid yet",
        ),
        (
            JwtSpec {
                scopes: FULL_SCOPES.iter().map(|s| (*s).to_owned()).collect(),
                audience: vec!["some-other-project".into()],
                ..spec()
            },
            "audience",
        ),
        (
            JwtSpec {
                unpublished_key: true,
                ..spec()
            },
            "key ZITADEL does not publish",
        ),
    ] {
        let token = world.standin.issue_jwt_with(&world.alice, spec);
        let status = from_token(&mut client, &token).await.unwrap_err();
        assert_status(&status, Code::Unauthenticated, "TOKEN_INVALID");
        assert!(status.message().contains(why), "{why}: {status:?}");
    }

    // An opaque token has nothing to read.
    let opaque = world.standin.issue_token(&world.alice, &world.scopes());
    let status = from_token(&mut client, &opaque).await.unwrap_err();
    assert_status(&status, Code::FailedPrecondition, "TOKEN_NOT_JWT");
    assert!(
        status.message().contains("METADATA_SOURCE_USERINFO"),
        "{status:?}"
    );
}

#[tokio::test]
async fn the_token_source_needs_jwt_validation_configured() {
    let world = world().await;
    let (mut client, _stop) = world
        .serve(IdentityConfig {
            introspection: None,
            jwt: None,
        })
        .await;
    let token = world.standin.issue_jwt_with(
        &world.alice,
        JwtSpec {
            scopes: world.scopes.clone(),
            ..JwtSpec::default()
        },
    );
    let status = from_token(&mut client, &token).await.unwrap_err();
    assert_status(
        &status,
        Code::FailedPrecondition,
        "TOKEN_SOURCE_UNAVAILABLE",
    );
    assert!(
        status.message().contains("USERMETA_JWT_AUDIENCE"),
        "{status:?}"
    );
}

/// An ID token as ZITADEL issues one beside `access_token` (code flow: `at_hash`, `nonce`), for usermeta's
/// project too: same keys, same issuer, the project in `aud`.
fn id_token_of(world: &World, access_token: Option<&str>) -> String {
    world.standin.issue_id_token(
        &world.alice,
        IdTokenSpec {
            client_id: "webapp".into(),
            scopes: world.scopes.clone(),
            access_token: access_token.map(str::to_owned),
            nonce: access_token.map(|_| "n-0S6_WzA2Mj".to_owned()),
            ..IdTokenSpec::default()
        },
    )
}

#[track_caller]
fn assert_not_access_token(status: &tonic::Status, token: &str) {
    assert_status(status, Code::Unauthenticated, "TOKEN_NOT_ACCESS_TOKEN");
    assert!(
        status.message().contains("send the access token"),
        "{status:?}"
    );
    assert!(!status.message().contains(token), "{status:?}");
}

/// Every RPC that acts as the caller, with `token`: each must refuse it the same way.
async fn every_caller_rpc(client: &mut Client, token: &str, other: &str) -> Vec<tonic::Status> {
    use usermeta::api::pb::{
        BatchGetMetadataRequest, DeleteMetadataRequest, FindUsersByMetadataRequest,
        ListMetadataRequest, MetadataSource, WatchMetadataRequest,
    };
    let mut refusals = Vec::new();
    for source in [MetadataSource::Userinfo, MetadataSource::AuthApi] {
        let request = GetMyMetadataRequest {
            source: source as i32,
            ..Default::default()
        };
        refusals.push(
            client
                .get_my_metadata(authed(request, token))
                .await
                .unwrap_err(),
        );
    }
    refusals.push(write_note(client, token).await.unwrap_err());
    for user_id in [String::new(), other.to_owned()] {
        let list = ListMetadataRequest {
            user_id,
            ..Default::default()
        };
        refusals.push(client.list_metadata(authed(list, token)).await.unwrap_err());
    }
    let delete = DeleteMetadataRequest {
        keys: vec!["profile.name".into()],
        ..Default::default()
    };
    refusals.push(
        client
            .delete_metadata(authed(delete, token))
            .await
            .unwrap_err(),
    );
    let batch = BatchGetMetadataRequest {
        user_ids: vec![other.to_owned()],
        ..Default::default()
    };
    refusals.push(
        client
            .batch_get_metadata(authed(batch, token))
            .await
            .unwrap_err(),
    );
    let find = FindUsersByMetadataRequest {
        key: "profile.name".into(),
        value: text("Alice"),
        ..Default::default()
    };
    refusals.push(
        client
            .find_users_by_metadata(authed(find, token))
            .await
            .unwrap_err(),
    );
    let watch = WatchMetadataRequest::default();
    refusals.push(
        client
            .watch_metadata(authed(watch, token))
            .await
            .unwrap_err(),
    );
    refusals
}

/// Issue 31, class 3: ZITADEL signs ID tokens with the keys and issuer of its access tokens, and an ID
/// token's `aud` holds usermeta's project. Handed to browsers and put in logout URLs, it must not work as a
/// bearer: every RPC refuses it, and only METADATA_SOURCE_TOKEN reads its own claims, for its own subject.
#[tokio::test]
async fn an_id_token_is_no_access_token_for_local_jwt_validation() {
    let world = world().await;
    let (mut client, _stop) = world.serve_validating_jwts().await;
    let access = world.standin.issue_jwt_with(
        &world.alice,
        JwtSpec {
            scopes: world.scopes.clone(),
            client_id: Some("webapp".into()),
            ..JwtSpec::default()
        },
    );
    // The code flow's pair: the access token works, the ID token beside it does not; nor does one issued
    // alone (implicit `id_token`: no `at_hash`, no `nonce`, still `azp` and no `jti`).
    assert_eq!(whoami(&mut client, &access).await.unwrap(), world.alice);
    let bob = world.standin.create_user(&world.org, "bob");
    for id_token in [
        id_token_of(&world, Some(&access)),
        id_token_of(&world, None),
    ] {
        world.standin.clear_requests();
        for status in every_caller_rpc(&mut client, &id_token, &bob).await {
            assert_not_access_token(&status, &id_token);
        }
        assert!(
            world
                .standin
                .requests()
                .iter()
                .all(|r| !r.is_management() && !r.is_userinfo()),
            "an ID token reached ZITADEL as a caller's credential: {:?}",
            world.standin.requests()
        );
        // METADATA_SOURCE_TOKEN reads the token's own claims, for its own subject…
        let mine = from_token(&mut client, &id_token).await.unwrap();
        assert_eq!(mine.user_id, world.alice);
        assert_eq!(
            pairs(&mine.metadata),
            [("profile.name".to_owned(), Some("Alice".to_owned()))]
        );
        // …and that read is no identity the other RPCs reuse from the cache.
        let status = write_note(&mut client, &id_token).await.unwrap_err();
        assert_not_access_token(&status, &id_token);
    }
    // Read for the token source first, then used as a bearer: still refused.
    let fresh = id_token_of(&world, None);
    from_token(&mut client, &fresh).await.unwrap();
    let status = whoami(&mut client, &fresh).await.unwrap_err();
    assert_not_access_token(&status, &fresh);
    assert!(
        !world
            .standin
            .metadata_of(&world.alice)
            .contains_key("notes.today")
    );
}

/// With introspection or userinfo, ZITADEL itself answers for the token and refuses an ID token (it finds no
/// access token by the ID token's missing `jti`); usermeta refuses it before asking, with the same reason.
#[tokio::test]
async fn an_id_token_is_refused_whichever_way_callers_are_identified() {
    let world = world().await;
    let bob = world.standin.create_user(&world.org, "bob");
    let access = world.standin.issue_token(&world.alice, &world.scopes());
    let id_token = id_token_of(&world, Some(&access));
    let modes = [
        IdentityConfig::default(),
        IdentityConfig {
            introspection: Some(world.secret_auth()),
            jwt: None,
        },
        IdentityConfig {
            introspection: Some(world.secret_auth()),
            jwt: Some(world.jwt(Duration::from_secs(60))),
        },
    ];
    for identity in modes {
        let (mut client, _stop) = world.serve(identity).await;
        assert_eq!(whoami(&mut client, &access).await.unwrap(), world.alice);
        world.standin.clear_requests();
        for status in every_caller_rpc(&mut client, &id_token, &bob).await {
            assert_not_access_token(&status, &id_token);
        }
        let sent: Vec<String> = world
            .standin
            .requests()
            .iter()
            .filter(|r| r.bearer() == Some(id_token.as_str()) || r.path == "/oauth/v2/introspect")
            .map(|r| r.path.clone())
            .collect();
        assert!(sent.is_empty(), "the ID token was sent to {sent:?}");
    }
}
