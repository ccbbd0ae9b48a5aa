//! Envoy external authorization: Check called with Envoy's request shape through a client generated from the
//! same protos, against the real server and the stand-in.

use std::{collections::HashMap, net::SocketAddr};

use envoy_types::pb::envoy::{
    config::core::v3::{HeaderValueOption, header_value_option::HeaderAppendAction},
    service::auth::v3::{
        AttributeContext, CheckRequest, CheckResponse, attribute_context,
        authorization_client::AuthorizationClient, check_response::HttpResponse,
    },
};
use secrecy::SecretString;
use tonic::{Code, transport::Channel};
use usermeta::{
    api::pb::GetMyMetadataRequest,
    authz::{AuthzConfig, BinaryValues, parse_header_map, parse_rules},
    policy::Policy,
};
use usermeta_zitadel::ServiceCredential;
use zitadel_standin::{Fault, FaultKind};

use crate::support::*;

const CONTRACT_HEADER: &str = "x-user-contract-number";

/// Passes ContractNumber and (absent for alice) Nickname; profile.language is not allow-listed.
fn config() -> AuthzConfig {
    AuthzConfig {
        headers: parse_header_map(
            "ContractNumber=x-user-contract-number,Nickname=x-user-nickname,Blob=x-user-blob,Note=x-user-note",
        )
        .unwrap(),
        ..AuthzConfig::default()
    }
}

/// A CheckRequest as Envoy sends it: lower-case header names, path with query, host with port.
fn envoy_request(path: &str, host: &str, token: Option<&str>) -> CheckRequest {
    let mut headers = HashMap::from([
        (":method".to_owned(), "GET".to_owned()),
        (":path".to_owned(), path.to_owned()),
        // A client trying to forge an identity header.
        (CONTRACT_HEADER.to_owned(), "forged".to_owned()),
        ("x-user-id".to_owned(), "forged".to_owned()),
    ]);
    if let Some(token) = token {
        headers.insert("authorization".to_owned(), format!("Bearer {token}"));
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    method: "GET".into(),
                    path: path.into(),
                    host: host.into(),
                    scheme: "https".into(),
                    protocol: "HTTP/2".into(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

async fn check(
    client: &mut AuthorizationClient<Channel>,
    path: &str,
    token: Option<&str>,
) -> CheckResponse {
    client
        .check(envoy_request(path, "api.example.com:443", token))
        .await
        .expect("Check answers with a CheckResponse, never a gRPC error")
        .into_inner()
}

/// What an OK answer does to the upstream request.
#[derive(Debug)]
struct Allowed {
    set: Vec<(String, String)>,
    removed: Vec<String>,
}

impl Allowed {
    fn get(&self, name: &str) -> Option<&str> {
        self.set
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

#[track_caller]
fn allowed(response: &CheckResponse) -> Allowed {
    assert_eq!(
        response.status.as_ref().map(|s| s.code),
        Some(Code::Ok as i32),
        "{response:?}"
    );
    let Some(HttpResponse::OkResponse(ok)) = &response.http_response else {
        panic!("expected an OK response: {response:?}");
    };
    let set = ok.headers.iter().map(overwriting).collect();
    Allowed {
        set,
        removed: ok.headers_to_remove.clone(),
    }
}

/// Each set header must overwrite a client's value, for old and new Envoys alike.
#[track_caller]
#[allow(deprecated)]
fn overwriting(option: &HeaderValueOption) -> (String, String) {
    assert_eq!(option.append.as_ref().map(|a| a.value), Some(false));
    assert_eq!(
        option.append_action,
        HeaderAppendAction::OverwriteIfExistsOrAdd as i32
    );
    let header = option.header.as_ref().unwrap();
    (header.key.clone(), header.value.clone())
}

/// Every managed header is either overwritten or removed (never both: Envoy removes after setting).
#[track_caller]
fn assert_no_forgery(allowed: &Allowed, config: &AuthzConfig) {
    for name in config.managed_headers() {
        let set = allowed.get(name).is_some();
        let removed = allowed.removed.iter().any(|r| r == name);
        assert!(set != removed, "{name}: set={set} removed={removed}");
    }
}

/// HTTP status, `www-authenticate` and body of a denial.
#[track_caller]
fn denied(response: &CheckResponse, grpc: Code) -> (i32, Option<String>, String) {
    assert_eq!(
        response.status.as_ref().map(|s| s.code),
        Some(grpc as i32),
        "{response:?}"
    );
    let Some(HttpResponse::DeniedResponse(denied)) = &response.http_response else {
        panic!("expected a denied response: {response:?}");
    };
    let challenge = denied
        .headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .find(|h| h.key == "www-authenticate")
        .map(|h| h.value.clone());
    (
        denied.status.as_ref().unwrap().code,
        challenge,
        denied.body.clone(),
    )
}

#[tokio::test]
async fn allow_listed_keys_and_the_user_id_become_upstream_headers() {
    let app = TestApp::builder().ext_authz(config()).spawn().await;
    let mut client = authz_client(app.authz_addr()).await;
    let answer = allowed(&check(&mut client, "/contracts", Some(&app.alice_token)).await);
    assert_eq!(answer.get("x-user-id"), Some(app.alice.as_str()));
    assert_eq!(answer.get(CONTRACT_HEADER), Some("1234"));
    assert_eq!(answer.set.len(), 2, "only allow-listed keys: {answer:?}");
    assert_eq!(
        answer.removed,
        vec!["x-user-nickname", "x-user-blob", "x-user-note"]
    );
    assert_no_forgery(&answer, &config());
}

#[tokio::test]
async fn binary_values_are_base64_with_a_marker_or_dropped() {
    let app = TestApp::builder().ext_authz(config()).spawn().await;
    app.standin
        .set_metadata(&app.alice, "Blob", &[0xff, 0x00, 0x10]);
    let mut client = authz_client(app.authz_addr()).await;
    let answer = allowed(&check(&mut client, "/", Some(&app.alice_token)).await);
    assert_eq!(answer.get("x-user-blob"), Some("base64:/wAQ"));

    let dropping = AuthzConfig {
        binary: BinaryValues::Drop,
        ..config()
    };
    let app = TestApp::builder().ext_authz(dropping.clone()).spawn().await;
    app.standin
        .set_metadata(&app.alice, "Blob", &[0xff, 0x00, 0x10]);
    let mut client = authz_client(app.authz_addr()).await;
    let answer = allowed(&check(&mut client, "/", Some(&app.alice_token)).await);
    assert_eq!(answer.get("x-user-blob"), None);
    assert!(answer.removed.contains(&"x-user-blob".to_owned()));
    assert_no_forgery(&answer, &dropping);
}

#[tokio::test]
async fn a_value_that_is_not_header_safe_is_not_injected() {
    let app = TestApp::builder().ext_authz(config()).spawn().await;
    app.standin
        .set_metadata(&app.alice, "Note", b"ok\r\nx-user-id: admin");
    let mut client = authz_client(app.authz_addr()).await;
    let answer = allowed(&check(&mut client, "/", Some(&app.alice_token)).await);
    assert_eq!(answer.get("x-user-note"), None);
    assert!(answer.removed.contains(&"x-user-note".to_owned()));
    assert!(
        answer
            .set
            .iter()
            .all(|(_, v)| !v.contains('\n') && !v.contains('\r'))
    );
    assert_eq!(answer.get("x-user-id"), Some(app.alice.as_str()));
}

#[tokio::test]
async fn a_missing_token_is_denied_with_a_bearer_challenge() {
    let app = TestApp::builder().ext_authz(config()).spawn().await;
    let mut client = authz_client(app.authz_addr()).await;
    let (status, challenge, body) =
        denied(&check(&mut client, "/", None).await, Code::Unauthenticated);
    assert_eq!(status, 401);
    assert_eq!(challenge.as_deref(), Some("Bearer"));
    assert!(body.contains("no bearer token"), "{body}");
    assert_eq!(app.standin.userinfo_requests(), 0);
}

#[tokio::test]
async fn invalid_and_malformed_tokens_are_denied_as_invalid_token() {
    let app = TestApp::builder().ext_authz(config()).spawn().await;
    let mut client = authz_client(app.authz_addr()).await;
    let (status, challenge, _) = denied(
        &check(&mut client, "/", Some("not-a-real-token")).await,
        Code::Unauthenticated,
    );
    assert_eq!(status, 401);
    assert_eq!(
        challenge.as_deref(),
        Some(r#"Bearer error="invalid_token""#)
    );

    let revoked = app.standin.issue_token(&app.alice, FULL_SCOPES);
    app.standin.revoke_token(&revoked);
    let (status, _, _) = denied(
        &check(&mut client, "/", Some(&revoked)).await,
        Code::Unauthenticated,
    );
    assert_eq!(status, 401);

    let before = app.standin.userinfo_requests();
    let (status, challenge, body) = denied(
        &check(&mut client, "/", Some("abc\"def")).await,
        Code::Unauthenticated,
    );
    assert_eq!(status, 401);
    assert_eq!(
        challenge.as_deref(),
        Some(r#"Bearer error="invalid_token""#)
    );
    assert!(!body.contains("abc"), "the token is never echoed: {body}");
    assert_eq!(
        app.standin.userinfo_requests(),
        before,
        "malformed tokens never leave"
    );
}

#[tokio::test]
async fn anonymous_requests_pass_without_identity_but_with_the_removal_list() {
    let config = AuthzConfig {
        allow_anonymous: true,
        ..config()
    };
    let app = TestApp::builder().ext_authz(config.clone()).spawn().await;
    let mut client = authz_client(app.authz_addr()).await;
    let answer = allowed(&check(&mut client, "/", None).await);
    assert!(answer.set.is_empty(), "{answer:?}");
    let mut removed = answer.removed.clone();
    removed.sort();
    let mut managed: Vec<String> = config.managed_headers().map(str::to_owned).collect();
    managed.sort();
    assert_eq!(removed, managed);

    // A token that is present but bad is not anonymous.
    let (status, _, _) = denied(
        &check(&mut client, "/", Some("not-a-real-token")).await,
        Code::Unauthenticated,
    );
    assert_eq!(status, 401);
    // With a good token, identity is still passed.
    let answer = allowed(&check(&mut client, "/", Some(&app.alice_token)).await);
    assert_eq!(answer.get("x-user-id"), Some(app.alice.as_str()));
}

fn userinfo_unavailable() -> Fault {
    Fault {
        path_prefix: "/oidc/v1/userinfo".into(),
        times: None,
        kind: FaultKind::Status(503),
    }
}

#[tokio::test]
async fn zitadel_failures_fail_closed_with_503_by_default() {
    let app = TestApp::builder().ext_authz(config()).spawn().await;
    app.standin.push_fault(userinfo_unavailable());
    let mut client = authz_client(app.authz_addr()).await;
    let (status, challenge, body) = denied(
        &check(&mut client, "/", Some(&app.alice_token)).await,
        Code::Unavailable,
    );
    assert_eq!(status, 503);
    assert_eq!(challenge, None);
    assert!(body.contains("unavailable"), "{body}");
}

#[tokio::test]
async fn zitadel_failures_fail_open_when_configured() {
    let config = AuthzConfig {
        fail_open: true,
        ..config()
    };
    let app = TestApp::builder().ext_authz(config.clone()).spawn().await;
    app.standin.push_fault(userinfo_unavailable());
    let mut client = authz_client(app.authz_addr()).await;
    let answer = allowed(&check(&mut client, "/", Some(&app.alice_token)).await);
    assert!(answer.set.is_empty(), "no identity headers: {answer:?}");
    assert_eq!(answer.removed.len(), config.managed_headers().count());
    assert_no_forgery(&answer, &config);

    // A route rule cannot be checked without ZITADEL: such routes stay closed.
    let guarded = AuthzConfig {
        fail_open: true,
        rules: parse_rules("path=/admin role=admin", "test").unwrap(),
        ..self::config()
    };
    let app = TestApp::builder().ext_authz(guarded).spawn().await;
    app.standin.push_fault(userinfo_unavailable());
    let mut client = authz_client(app.authz_addr()).await;
    let (status, _, _) = denied(
        &check(&mut client, "/admin", Some(&app.alice_token)).await,
        Code::Unavailable,
    );
    assert_eq!(status, 503);
    allowed(&check(&mut client, "/public", Some(&app.alice_token)).await);
}

#[tokio::test]
async fn route_rules_require_a_metadata_value_on_their_paths_only() {
    let config = AuthzConfig {
        rules: parse_rules(
            "path=/contracts metadata.ContractNumber=1234\nhost=other.example.com role=admin",
            "test",
        )
        .unwrap(),
        ..config()
    };
    let app = TestApp::builder().ext_authz(config).spawn().await;
    let bob_token = app.standin.issue_token(&app.bob, FULL_SCOPES);
    let mut client = authz_client(app.authz_addr()).await;

    let answer = allowed(&check(&mut client, "/contracts/7?x=1", Some(&app.alice_token)).await);
    assert_eq!(answer.get(CONTRACT_HEADER), Some("1234"));

    let (status, challenge, body) = denied(
        &check(&mut client, "/contracts/7", Some(&bob_token)).await,
        Code::PermissionDenied,
    );
    assert_eq!(status, 403);
    assert_eq!(challenge, None);
    assert!(
        body.contains("ContractNumber") && !body.contains("1234"),
        "{body}"
    );

    // Not applied on other paths or hosts.
    let answer = allowed(&check(&mut client, "/profile", Some(&bob_token)).await);
    assert_eq!(answer.get(CONTRACT_HEADER), Some("5678"));
    // The host rule applies to its host only.
    let response = client
        .check(envoy_request(
            "/profile",
            "other.example.com",
            Some(&bob_token),
        ))
        .await
        .unwrap()
        .into_inner();
    let (status, _, body) = denied(&response, Code::PermissionDenied);
    assert_eq!(status, 403);
    assert!(body.contains("role `admin`"), "{body}");
}

#[tokio::test]
async fn role_rules_read_only_the_roles_of_usermetas_project() {
    let (url, _calls) = raw_userinfo(serde_json::json!({
        "sub": "u-1",
        // The generic claim and another project's claim both say `admin`: neither counts.
        "urn:zitadel:iam:org:project:roles": {"admin": {"org-1": "acme.example.com"}},
        "urn:zitadel:iam:org:project:p-attacker:roles": {"admin": {"org-1": "acme.example.com"}},
        "urn:zitadel:iam:org:project:p-usermeta:roles": {"billing": {"org-1": "acme.example.com"}},
        "urn:zitadel:iam:user:metadata": {"ContractNumber": "MTIzNA"},
    }))
    .await;
    let config = AuthzConfig {
        rules: parse_rules("path=/admin role=admin\npath=/billing role=billing", "test").unwrap(),
        ..config()
    };
    let spawned = TestApp::builder()
        .zitadel_url(&url)
        .credential(ServiceCredential::Pat(SecretString::from("unused")))
        .policy(Policy::new(Vec::<String>::new(), Vec::new()))
        .ext_authz(config)
        .project_id("p-usermeta")
        .spawn()
        .await;
    let mut client = authz_client(spawned.authz_addr.unwrap()).await;
    let answer = allowed(&check(&mut client, "/billing/invoices", Some("any-token")).await);
    assert_eq!(answer.get("x-user-id"), Some("u-1"));
    assert_eq!(answer.get(CONTRACT_HEADER), Some("1234"));
    let (status, _, body) = denied(
        &check(&mut client, "/admin", Some("any-token")).await,
        Code::PermissionDenied,
    );
    assert_eq!(status, 403);
    assert!(body.contains("role `admin`"), "{body}");
}

#[tokio::test]
async fn anonymous_requests_to_a_ruled_route_need_a_token() {
    let config = AuthzConfig {
        allow_anonymous: true,
        rules: parse_rules("path=/admin role=admin", "test").unwrap(),
        ..config()
    };
    let app = TestApp::builder().ext_authz(config).spawn().await;
    let mut client = authz_client(app.authz_addr()).await;
    let (status, challenge, _) = denied(
        &check(&mut client, "/admin", None).await,
        Code::Unauthenticated,
    );
    assert_eq!(status, 401);
    assert_eq!(challenge.as_deref(), Some("Bearer"));
    allowed(&check(&mut client, "/public", None).await);
}

#[tokio::test]
async fn repeated_checks_with_one_token_ask_zitadel_once() {
    let app = TestApp::builder().ext_authz(config()).spawn().await;
    let mut client = authz_client(app.authz_addr()).await;
    let before = app.standin.userinfo_requests();
    for _ in 0..10 {
        let answer = allowed(&check(&mut client, "/", Some(&app.alice_token)).await);
        assert_eq!(answer.get(CONTRACT_HEADER), Some("1234"));
    }
    // The metadata API shares the cache.
    app.client
        .clone()
        .get_my_metadata(authed(GetMyMetadataRequest::default(), &app.alice_token))
        .await
        .unwrap();
    assert_eq!(app.standin.userinfo_requests() - before, 1);
}

#[tokio::test]
async fn dynamic_metadata_carries_the_same_identity_when_enabled() {
    let app = TestApp::builder()
        .ext_authz(AuthzConfig {
            dynamic_metadata: true,
            ..config()
        })
        .spawn()
        .await;
    let mut client = authz_client(app.authz_addr()).await;
    let response = check(&mut client, "/", Some(&app.alice_token)).await;
    let fields = &response.dynamic_metadata.as_ref().unwrap().fields;
    let text = |v: &envoy_types::pb::google::protobuf::Value| match &v.kind {
        Some(envoy_types::pb::google::protobuf::value::Kind::StringValue(s)) => s.clone(),
        other => panic!("not a string: {other:?}"),
    };
    assert_eq!(text(&fields["user_id"]), app.alice);
    let Some(envoy_types::pb::google::protobuf::value::Kind::StructValue(metadata)) =
        &fields["metadata"].kind
    else {
        panic!("metadata is not a struct: {fields:?}");
    };
    assert_eq!(text(&metadata.fields["ContractNumber"]), "1234");
    assert_eq!(metadata.fields.len(), 1, "allow-listed keys only");

    // Off by default.
    let app = TestApp::builder().ext_authz(config()).spawn().await;
    let mut client = authz_client(app.authz_addr()).await;
    assert_eq!(
        check(&mut client, "/", Some(&app.alice_token))
            .await
            .dynamic_metadata,
        None
    );
}

#[tokio::test]
async fn check_is_never_served_on_the_public_port_and_reports_health_on_its_own() {
    let app = TestApp::spawn().await;
    let mut client = authz_client(app.addr).await;
    let error = client
        .check(envoy_request("/", "h", Some(&app.alice_token)))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Unimplemented);

    // With ext_authz on, the public port still does not answer Check: no caller can read the headers it would
    // inject (hidden keys included) by calling it directly.
    let app = TestApp::builder().ext_authz(config()).spawn().await;
    let error = authz_client(app.addr)
        .await
        .check(envoy_request("/", "h", Some(&app.alice_token)))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Code::Unimplemented);
    app.assert_no_upstream_request();
    assert_ne!(app.authz_addr(), app.addr);
    let answer = allowed(
        &check(
            &mut authz_client(app.authz_addr()).await,
            "/",
            Some(&app.alice_token),
        )
        .await,
    );
    assert_eq!(answer.get("x-user-id"), Some(app.alice.as_str()));

    let health_of = |addr: SocketAddr| async move {
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest {
                service: "envoy.service.auth.v3.Authorization".into(),
            })
            .await
    };
    let health = health_of(app.authz_addr()).await.unwrap().into_inner();
    assert_eq!(
        health.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    assert_eq!(
        health_of(app.addr).await.unwrap_err().code(),
        Code::NotFound,
        "the public port does not claim to serve Check"
    );
}

#[tokio::test]
async fn a_roles_claim_of_another_shape_means_no_roles_not_a_broken_answer() {
    let (url, _calls) = raw_userinfo(serde_json::json!({
        "sub": "u-1",
        "urn:zitadel:iam:org:project:roles": "admin",
    }))
    .await;
    let config = AuthzConfig {
        rules: parse_rules("path=/admin role=admin", "test").unwrap(),
        ..config()
    };
    let spawned = TestApp::builder()
        .zitadel_url(&url)
        .credential(ServiceCredential::Pat(SecretString::from("unused")))
        .policy(Policy::new(Vec::<String>::new(), Vec::new()))
        .ext_authz(config)
        .spawn()
        .await;
    let mut client = authz_client(spawned.authz_addr.unwrap()).await;
    let answer = allowed(&check(&mut client, "/public", Some("any-token")).await);
    assert_eq!(answer.get("x-user-id"), Some("u-1"));
    let (status, _, _) = denied(
        &check(&mut client, "/admin", Some("any-token")).await,
        Code::PermissionDenied,
    );
    assert_eq!(status, 403);
}

/// A stand-in with usermeta's project and API application, alice in it, and usermeta's service user.
struct Introspected {
    standin: zitadel_standin::StandIn,
    project: String,
    alice: String,
    pat: String,
    token: String,
}

impl Introspected {
    /// A usermeta in front of this stand-in, identifying callers by `identity`, serving Check with `authz`.
    fn usermeta(
        &self,
        identity: usermeta::caller::IdentityConfig,
        authz: AuthzConfig,
    ) -> TestAppBuilder {
        TestApp::builder()
            .zitadel_url(&self.standin.url())
            .pat(&self.pat)
            .policy(Policy::default())
            .identity(identity)
            .ext_authz(authz)
            .project_id(&self.project)
    }
}

async fn introspected() -> Introspected {
    let standin = zitadel_standin::StandIn::start().await.unwrap();
    let org = standin.create_org("Acme");
    let project = standin.create_project(&org);
    let alice = standin.create_user(&org, "alice");
    standin.set_metadata(&alice, "ContractNumber", b"1234");
    let service =
        standin.create_service_user(&org, "usermeta", zitadel_standin::ManagerRole::IamOwner);
    let pat = standin.issue_pat(&service);
    let aud = format!("urn:zitadel:iam:org:project:id:{project}:aud");
    let mut scopes = FULL_SCOPES.to_vec();
    scopes.push(&aud);
    let token = standin.issue_token(&alice, &scopes);
    Introspected {
        standin,
        project,
        alice,
        pat,
        token,
    }
}

#[tokio::test]
async fn check_identifies_callers_as_the_rpcs_do() {
    let world = introspected().await;
    let (client_id, secret) = world.standin.add_api_app_with_secret(&world.project);
    let identity = usermeta::caller::IdentityConfig {
        introspection: Some(usermeta::caller::IntrospectionAuth::ClientSecret {
            client_id,
            secret: secret.into(),
        }),
        jwt: None,
    };
    let spawned = world.usermeta(identity, config()).spawn().await;
    let mut client = authz_client(spawned.authz_addr.unwrap()).await;
    let answer = allowed(&check(&mut client, "/", Some(&world.token)).await);
    assert_eq!(answer.get("x-user-id"), Some(world.alice.as_str()));
    assert_eq!(answer.get(CONTRACT_HEADER), Some("1234"));
    assert_eq!(
        world.standin.introspection_requests(),
        1,
        "introspection is the configured way"
    );

    // A token without usermeta's project in its audience is inactive for introspection, though userinfo
    // would still answer for it: Check refuses it, as the RPCs do.
    let userinfo_only = world.standin.issue_token(&world.alice, FULL_SCOPES);
    let (status, _, _) = denied(
        &check(&mut client, "/", Some(&userinfo_only)).await,
        Code::Unauthenticated,
    );
    assert_eq!(status, 401);
    // The refusal is remembered (negative cache): asking again reaches no ZITADEL endpoint.
    world.standin.clear_requests();
    denied(
        &check(&mut client, "/", Some(&userinfo_only)).await,
        Code::Unauthenticated,
    );
    assert!(
        world.standin.requests().is_empty(),
        "{:?}",
        world.standin.requests()
    );
}

#[tokio::test]
async fn a_forged_jwt_is_refused_by_local_validation_without_asking_userinfo() {
    let world = introspected().await;
    let identity = usermeta::caller::IdentityConfig {
        introspection: None,
        jwt: Some(usermeta::caller::JwtConfig {
            audience: vec![world.project.clone()],
            min_refresh_interval: std::time::Duration::from_secs(30),
        }),
    };
    let spawned = world.usermeta(identity, config()).spawn().await;
    let mut client = authz_client(spawned.authz_addr.unwrap()).await;
    let forged = world.standin.issue_jwt_with(
        &world.alice,
        zitadel_standin::JwtSpec {
            scopes: vec!["openid".into()],
            audience: vec![world.project.clone()],
            unpublished_key: true,
            ..Default::default()
        },
    );
    let (status, _, _) = denied(
        &check(&mut client, "/", Some(&forged)).await,
        Code::Unauthenticated,
    );
    assert_eq!(status, 401);
    assert_eq!(world.standin.userinfo_requests(), 0);
}

/// Issue 31, class 3: Check resolves tokens as the RPCs do, so an ID token (same keys, issuer and project
/// audience as access tokens) is refused there too, whichever way callers are identified, and its metadata
/// never goes upstream.
#[tokio::test]
async fn an_id_token_is_refused_by_check() {
    let world = introspected().await;
    let aud = format!("urn:zitadel:iam:org:project:id:{}:aud", world.project);
    let mut scopes: Vec<String> = FULL_SCOPES.iter().map(|s| (*s).to_owned()).collect();
    scopes.push(aud);
    // A JWT access token: every mode below accepts it (userinfo and introspection know it too).
    let access = world.standin.issue_jwt_with(
        &world.alice,
        zitadel_standin::JwtSpec {
            scopes: scopes.clone(),
            client_id: Some("webapp".into()),
            ..Default::default()
        },
    );
    let id_token = world.standin.issue_id_token(
        &world.alice,
        zitadel_standin::IdTokenSpec {
            client_id: "webapp".into(),
            scopes,
            access_token: Some(access.clone()),
            ..Default::default()
        },
    );
    let (client_id, secret) = world.standin.add_api_app_with_secret(&world.project);
    let modes = [
        usermeta::caller::IdentityConfig {
            introspection: None,
            jwt: Some(usermeta::caller::JwtConfig {
                audience: vec![world.project.clone()],
                min_refresh_interval: std::time::Duration::from_secs(30),
            }),
        },
        usermeta::caller::IdentityConfig {
            introspection: Some(usermeta::caller::IntrospectionAuth::ClientSecret {
                client_id,
                secret: secret.into(),
            }),
            jwt: None,
        },
        usermeta::caller::IdentityConfig::default(),
    ];
    for identity in modes {
        // No metadata headers: Check needs nothing but the caller's identity.
        let spawned = world
            .usermeta(identity, AuthzConfig::default())
            .spawn()
            .await;
        let mut client = authz_client(spawned.authz_addr.unwrap()).await;
        // The access token issued with it is allowed.
        allowed(&check(&mut client, "/", Some(&access)).await);
        let (status, _, body) = denied(
            &check(&mut client, "/", Some(&id_token)).await,
            Code::Unauthenticated,
        );
        assert_eq!(status, 401);
        assert!(body.contains("access token"), "{body}");
        assert!(!body.contains(&id_token), "{body}");
    }
}

#[tokio::test]
async fn the_per_caller_rate_limit_applies_to_check_too() {
    let app = TestApp::spawn().await;
    let spawned = app
        .another()
        .policy(Policy::default())
        .limits(usermeta::server::Limits {
            requests: usermeta::api::RequestLimits {
                caller_rate: 1,
                caller_burst: 2,
                ..Default::default()
            },
            ..Default::default()
        })
        .ext_authz(config())
        .spawn()
        .await;
    let mut client = authz_client(spawned.authz_addr.unwrap()).await;
    allowed(&check(&mut client, "/", Some(&app.alice_token)).await);
    allowed(&check(&mut client, "/", Some(&app.alice_token)).await);
    let response = check(&mut client, "/", Some(&app.alice_token)).await;
    let (status, _, _) = denied(&response, Code::ResourceExhausted);
    assert_eq!(status, 429);
    let Some(HttpResponse::DeniedResponse(denial)) = &response.http_response else {
        unreachable!()
    };
    assert!(
        denial
            .headers
            .iter()
            .filter_map(|h| h.header.as_ref())
            .any(|h| h.key == "retry-after" && h.value.parse::<u64>().is_ok_and(|s| s >= 1)),
        "{denial:?}"
    );
    // The RPCs share the same budget: the caller's next GetMyMetadata is refused too.
    let status = spawned
        .client
        .clone()
        .get_my_metadata(authed(GetMyMetadataRequest::default(), &app.alice_token))
        .await
        .unwrap_err();
    assert_status(&status, Code::ResourceExhausted, "CALLER_RATE_LIMITED");
}

#[tokio::test]
async fn a_spent_upstream_budget_is_429_with_retry_after_and_nothing_sent() {
    let app = TestApp::spawn().await;
    let spawned = app
        .another()
        .policy(Policy::default())
        .ext_authz(config())
        // Two requests, none kept back, refilled once a minute; no caller's share of its own.
        .upstream_budget(usermeta_zitadel::UpstreamBudget {
            rate: 1.0 / 60.0,
            burst: 2,
            reserve: 0.0,
            caller_share: 1.0,
        })
        .spawn()
        .await;
    let mut client = authz_client(spawned.authz_addr.unwrap()).await;
    app.standin.clear_requests();
    allowed(&check(&mut client, "/", Some(&app.alice_token)).await);
    allowed(&check(&mut client, "/", Some(&app.admin_token)).await);
    let fresh = app.standin.issue_token(&app.alice, FULL_SCOPES);
    let response = check(&mut client, "/", Some(&fresh)).await;
    let (status, _, _) = denied(&response, Code::ResourceExhausted);
    assert_eq!(status, 429);
    let Some(HttpResponse::DeniedResponse(denial)) = &response.http_response else {
        unreachable!()
    };
    assert!(
        denial
            .headers
            .iter()
            .filter_map(|h| h.header.as_ref())
            .any(|h| h.key == "retry-after" && h.value.parse::<u64>().is_ok_and(|s| s >= 1)),
        "{denial:?}"
    );
    assert_eq!(app.standin.requests().len(), 2, "nothing sent when refused");
    // Callers already known are answered from memory.
    allowed(&check(&mut client, "/", Some(&app.alice_token)).await);
}

#[tokio::test]
async fn only_what_the_caller_may_read_of_themself_goes_upstream() {
    let app = TestApp::spawn().await;
    // With the self-read rule off, alice may read nothing of herself: her user id passes, no metadata does.
    let closed = Policy::from_toml("self_read = false\n", "closed.toml").unwrap();
    let spawned = app
        .another()
        .policy(closed)
        .ext_authz(config())
        .spawn()
        .await;
    let answer = allowed(
        &check(
            &mut authz_client(spawned.authz_addr.unwrap()).await,
            "/",
            Some(&app.alice_token),
        )
        .await,
    );
    assert_eq!(answer.get("x-user-id"), Some(app.alice.as_str()));
    assert_eq!(answer.get(CONTRACT_HEADER), None);
    assert!(answer.removed.iter().any(|h| h == CONTRACT_HEADER));
}

#[tokio::test]
async fn a_header_for_a_hidden_key_stops_start_up() {
    let app = TestApp::spawn().await;
    let hiding = Policy::from_toml(
        "[[key]]\nname = \"Contract*\"\nhidden = true\n",
        "hiding.toml",
    )
    .unwrap();
    let Err(error) = app
        .another()
        .pat("p")
        .policy(hiding)
        .ext_authz(super::ext_authz::config())
        .build()
        .await
    else {
        panic!("started with a header for a hidden key");
    };
    let error = error.to_string();
    assert!(
        error.contains("USERMETA_EXT_AUTHZ_HEADERS") && error.contains("ContractNumber"),
        "{error}"
    );
}

#[tokio::test]
async fn path_rules_match_whole_segments_and_hosts_ignore_a_trailing_dot() {
    let config = AuthzConfig {
        rules: parse_rules(
            "path=/admin role=admin\nhost=api.example.com path=/billing metadata.ContractNumber=9999",
            "test",
        )
        .unwrap(),
        ..config()
    };
    let app = TestApp::builder().ext_authz(config).spawn().await;
    let mut client = authz_client(app.authz_addr()).await;
    // Not under /admin: no role needed.
    allowed(&check(&mut client, "/administrator", Some(&app.alice_token)).await);
    // Ways of writing /admin that an upstream may read as /admin all need the role.
    for disguised in [
        "/admin",
        "//admin/x",
        "/./admin",
        "/%61dmin",
        "/public/../admin",
        "/ADMIN;x=1",
    ] {
        denied(
            &check(&mut client, disguised, Some(&app.alice_token)).await,
            Code::PermissionDenied,
        );
    }
    // A fully qualified host name with its trailing dot is the same host.
    for host in [
        "api.example.com",
        "api.example.com.",
        "API.example.com.:443",
    ] {
        let response = client
            .check(envoy_request("/billing", host, Some(&app.alice_token)))
            .await
            .unwrap()
            .into_inner();
        denied(&response, Code::PermissionDenied);
    }
}

#[tokio::test]
async fn check_answers_within_the_callers_deadline() {
    let app = TestApp::builder().ext_authz(config()).spawn().await;
    app.standin.push_fault(Fault {
        path_prefix: "/oidc/v1/userinfo".into(),
        times: None,
        kind: FaultKind::Latency(HANG),
    });
    let mut client = authz_client(app.authz_addr()).await;
    let request = with_deadline(
        tonic::Request::new(envoy_request("/", "h", Some(&app.alice_token))),
        std::time::Duration::from_millis(300),
    );
    let response = promptly("the deadline ends the check", client.check(request))
        .await
        .unwrap()
        .into_inner();
    let (status, _, _) = denied(&response, Code::Unavailable);
    assert_eq!(status, 503);
}

#[tokio::test]
async fn a_denial_by_a_rule_on_a_hidden_key_does_not_name_the_key() {
    let app = TestApp::spawn().await;
    app.standin
        .set_metadata(&app.alice, "routing.tier", b"silver");
    let hiding = Policy::from_toml(
        "[[key]]\nname = \"routing.*\"\nhidden = true\n",
        "hiding.toml",
    )
    .unwrap();
    let spawned = app
        .another()
        .policy(hiding)
        .ext_authz(AuthzConfig {
            rules: parse_rules("path=/gold metadata.routing.tier=gold", "test").unwrap(),
            ..config()
        })
        .spawn()
        .await;
    let mut client = authz_client(spawned.authz_addr.unwrap()).await;
    let (status, _, body) = denied(
        &check(&mut client, "/gold", Some(&app.alice_token)).await,
        Code::PermissionDenied,
    );
    assert_eq!(status, 403);
    assert!(
        body.contains("test:1") && !body.contains("routing"),
        "{body}"
    );
}

/// `org:KEY=header` passes the caller's organisation's own metadata upstream and `org.KEY=VALUE` routes on it,
/// with the same allow-list and anti-forgery as user metadata; keys hidden from the organisation's members never
/// go upstream; a warm Check is answered from memory.
#[tokio::test]
async fn organisation_metadata_becomes_headers_and_route_rules() {
    let config = AuthzConfig {
        headers: parse_header_map(
            "ContractNumber=x-user-contract-number,org:plan=x-tenant-plan,org:internal.tier=x-tenant-tier,org:region=x-tenant-region",
        )
        .unwrap(),
        rules: parse_rules("path=/enterprise org.plan=enterprise", "test").unwrap(),
        ..AuthzConfig::default()
    };
    let policy = usermeta::policy::Policy::from_toml(
        "[[key]]\nname = \"internal.*\"\nresource = \"organization\"\nhidden = true\n",
        "test.toml",
    )
    .unwrap();
    let app = TestApp::builder()
        .ext_authz(config.clone())
        .policy(policy)
        .spawn()
        .await;
    app.standin
        .set_org_metadata(&app.org, "plan", b"enterprise");
    app.standin
        .set_org_metadata(&app.org, "internal.tier", b"gold");
    app.standin
        .set_org_metadata(&app.other_org, "plan", b"free");
    let bob_token = app.standin.issue_token(&app.bob, FULL_SCOPES);
    let mut client = authz_client(app.authz_addr()).await;

    // The client's own x-tenant-plan is overwritten; the hidden key and the absent one are removed.
    let mut request = envoy_request("/enterprise/x", "api.example.com", Some(&app.alice_token));
    if let Some(http) = request
        .attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
    {
        http.headers.insert("x-tenant-plan".into(), "forged".into());
        http.headers.insert("x-tenant-tier".into(), "forged".into());
    }
    let answer = allowed(&client.check(request).await.unwrap().into_inner());
    assert_eq!(answer.get("x-tenant-plan"), Some("enterprise"));
    assert_eq!(answer.get("x-user-contract-number"), Some("1234"));
    assert_eq!(answer.get("x-tenant-tier"), None, "hidden from members");
    assert!(answer.removed.iter().any(|h| h == "x-tenant-tier"));
    assert!(answer.removed.iter().any(|h| h == "x-tenant-region"));
    assert_no_forgery(&answer, &config);

    // Warm: answered from memory, nothing asked of ZITADEL.
    app.standin.clear_requests();
    let answer = allowed(&check(&mut client, "/enterprise/y", Some(&app.alice_token)).await);
    assert_eq!(answer.get("x-tenant-plan"), Some("enterprise"));
    assert!(
        app.standin.requests().is_empty(),
        "{:?}",
        app.standin.requests()
    );

    // Bob's organisation is on the free plan: the route is refused, the body names the key, not the value.
    let (status, _, body) = denied(
        &check(&mut client, "/enterprise/x", Some(&bob_token)).await,
        Code::PermissionDenied,
    );
    assert_eq!(status, 403);
    assert!(body.contains("plan") && !body.contains("free"), "{body}");
    let answer = allowed(&check(&mut client, "/profile", Some(&bob_token)).await);
    assert_eq!(answer.get("x-tenant-plan"), Some("free"));
}
