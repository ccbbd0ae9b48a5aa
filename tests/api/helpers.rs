//! Spawns usermeta against a seeded stand-in and offers small helpers to call it and inspect what ZITADEL
//! received.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use axum::{Json, Router, routing::get};

use tokio::sync::oneshot;
use tonic::{Code, Request, Response, Status, transport::Channel};
use tonic_types::StatusExt;
use usermeta::{
    api::pb::{self, user_metadata_service_client::UserMetadataServiceClient},
    authz::AuthzConfig,
    policy::Policy,
};
use zitadel_standin::{ManagerRole, RecordedRequest, StandIn};

pub use crate::support::{AppBuilder, Options, Spawned};
pub use usermeta_zitadel::management::ApiChoice;

/// The backend-independent suite: each named `async fn name(api: ApiChoice)` runs as the test `v1::name`
/// against the v1 management API and as `v2::name` against the v2 user service. One suite, two backends.
macro_rules! on_both_apis {
    ($($name:ident),* $(,)?) => {
        mod v1 {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::helpers::ApiChoice::V1).await
                }
            )*
        }
        mod v2 {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::helpers::ApiChoice::V2).await
                }
            )*
        }
    };
}
pub(crate) use on_both_apis;

/// Scopes a typical caller token has: identity, metadata, organisation, and the ZITADEL audience.
pub const FULL_SCOPES: &[&str] = &[
    "openid",
    "profile",
    "urn:zitadel:iam:user:metadata",
    "urn:zitadel:iam:user:resourceowner",
    "urn:zitadel:iam:org:project:id:zitadel:aud",
];

/// Key prefix the test policy makes self-writable.
pub const SELF_WRITABLE: &str = "profile.";

/// A running usermeta with its stand-in and a cast of users.
pub struct TestApp {
    pub standin: StandIn,
    pub addr: SocketAddr,
    pub client: UserMetadataServiceClient<Channel>,
    /// Organisation of alice, the admin and the service user.
    pub org: String,
    /// A second organisation, holding bob.
    pub other_org: String,
    pub alice: String,
    pub alice_token: String,
    pub admin: String,
    pub admin_token: String,
    pub bob: String,
    pub service_pat: String,
    /// Where Envoy's Check is served, when ext_authz is on (never on `addr`).
    pub authz_addr: Option<SocketAddr>,
    _stop: oneshot::Sender<()>,
}

/// One method per RPC, each with the caller's bearer token.
impl TestApp {
    /// The usual app: [`TestApp::builder`] with nothing changed.
    pub async fn start() -> TestApp {
        TestApp::builder().start().await
    }

    /// A stand-in seeded with the cast (alice and the admin in Acme, bob in Globex, an IAM_OWNER service
    /// user whose PAT usermeta holds), and usermeta in front of it with the test policy: the admin may do
    /// anything, everyone may write their own `profile.` keys.
    pub fn builder() -> TestAppBuilder {
        TestAppBuilder {
            ext_authz: None,
            api: ApiChoice::V1,
        }
    }

    pub async fn get_my_metadata(
        &self,
        token: &str,
        request: pb::GetMyMetadataRequest,
    ) -> Result<Response<pb::GetMyMetadataResponse>, Status> {
        self.client
            .clone()
            .get_my_metadata(authed(request, token))
            .await
    }

    pub async fn list_metadata(
        &self,
        token: &str,
        request: pb::ListMetadataRequest,
    ) -> Result<Response<pb::ListMetadataResponse>, Status> {
        self.client
            .clone()
            .list_metadata(authed(request, token))
            .await
    }

    pub async fn set_metadata(
        &self,
        token: &str,
        request: pb::SetMetadataRequest,
    ) -> Result<Response<pb::SetMetadataResponse>, Status> {
        self.client
            .clone()
            .set_metadata(authed(request, token))
            .await
    }

    pub async fn delete_metadata(
        &self,
        token: &str,
        request: pb::DeleteMetadataRequest,
    ) -> Result<Response<pb::DeleteMetadataResponse>, Status> {
        self.client
            .clone()
            .delete_metadata(authed(request, token))
            .await
    }

    /// Another usermeta in front of this app's stand-in and service user (the default policy until told
    /// otherwise).
    pub fn another(&self) -> AppBuilder {
        AppBuilder::with_pat(&self.standin.url(), &self.service_pat)
    }
}

/// What a [`TestApp`] varies beside its seeded cast.
pub struct TestAppBuilder {
    ext_authz: Option<AuthzConfig>,
    api: ApiChoice,
}

impl TestAppBuilder {
    /// Also serve Envoy's external authorization API (on its own listener).
    pub fn ext_authz(mut self, config: AuthzConfig) -> Self {
        self.ext_authz = Some(config);
        self
    }

    /// Which ZITADEL API manages metadata (v1 unless told).
    pub fn api(mut self, api: ApiChoice) -> Self {
        self.api = api;
        self
    }

    pub async fn start(self) -> TestApp {
        let standin = StandIn::start().await.expect("stand-in starts");
        let org = standin.create_org("Acme");
        let other_org = standin.create_org("Globex");
        let alice = standin.create_user(&org, "alice");
        let admin = standin.create_user(&org, "admin");
        let bob = standin.create_user(&other_org, "bob");
        let service_user = standin.create_service_user(&org, "usermeta", ManagerRole::IamOwner);
        let service_pat = standin.issue_pat(&service_user);
        standin.set_metadata(&alice, "ContractNumber", b"1234");
        standin.set_metadata(&alice, "profile.language", b"en");
        standin.set_metadata(&bob, "ContractNumber", b"5678");
        let alice_token = standin.issue_token(&alice, FULL_SCOPES);
        let admin_token = standin.issue_token(&admin, FULL_SCOPES);
        let mut app = AppBuilder::with_pat(&standin.url(), &service_pat)
            .api(self.api)
            .policy(Policy::new([admin.clone()], vec![SELF_WRITABLE.into()]));
        if let Some(config) = self.ext_authz {
            app = app.ext_authz(config);
        }
        let spawned = app.spawn().await;
        standin.clear_requests();
        TestApp {
            client: connect(spawned.addr).await,
            standin,
            addr: spawned.addr,
            org,
            other_org,
            alice,
            alice_token,
            admin,
            admin_token,
            bob,
            service_pat,
            authz_addr: spawned.authz_addr,
            _stop: spawned.stop,
        }
    }
}

pub async fn connect(addr: SocketAddr) -> UserMetadataServiceClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connects");
    UserMetadataServiceClient::new(channel)
}

/// A request with `authorization: Bearer <token>`.
pub fn authed<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// Sends `id` as the caller's request id (`x-request-id`).
pub fn with_request_id<T>(mut request: Request<T>, id: &str) -> Request<T> {
    request
        .metadata_mut()
        .insert("x-request-id", id.parse().expect("an x-request-id value"));
    request
}

/// A text value.
/// Sends `timeout` as the caller's deadline (`grpc-timeout`) without a client-side timer, so a test sees
/// usermeta's own answer at the deadline (a client timer of the same length races it on a loaded machine).
pub fn with_deadline<T>(mut request: Request<T>, timeout: std::time::Duration) -> Request<T> {
    let value = format!("{}m", timeout.as_millis());
    request
        .metadata_mut()
        .insert("grpc-timeout", value.parse().expect("a grpc-timeout value"));
    request
}

pub fn text(value: &str) -> Option<pb::MetadataValue> {
    Some(pb::MetadataValue {
        kind: Some(pb::metadata_value::Kind::Text(value.into())),
    })
}

/// A binary value.
pub fn binary(value: &[u8]) -> Option<pb::MetadataValue> {
    Some(pb::MetadataValue {
        kind: Some(pb::metadata_value::Kind::Binary(value.to_vec())),
    })
}

pub fn entry(key: &str, value: Option<pb::MetadataValue>) -> pb::MetadataEntry {
    pb::MetadataEntry {
        key: key.into(),
        value,
    }
}

/// The `ErrorInfo.reason` of a status, if it has one.
pub fn reason(status: &Status) -> Option<String> {
    status.get_details_error_info().map(|info| info.reason)
}

/// Asserts code and reason, and returns the status for further checks.
#[track_caller]
pub fn assert_status(status: &Status, code: Code, expected_reason: &str) {
    assert_eq!(status.code(), code, "unexpected status: {status:?}");
    assert_eq!(
        reason(status).as_deref(),
        Some(expected_reason),
        "unexpected reason in {status:?}"
    );
}

/// The field paths of a `BadRequest`.
pub fn violated_fields(status: &Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|bad| bad.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

impl TestApp {
    /// The ext_authz listener's address (the app must have been spawned with ext_authz).
    pub fn authz_addr(&self) -> SocketAddr {
        self.authz_addr.expect("spawned with ext_authz")
    }

    pub fn management_requests(&self) -> Vec<RecordedRequest> {
        self.standin
            .requests()
            .into_iter()
            .filter(|r| r.is_management())
            .collect()
    }

    /// Asserts the stand-in received nothing at all.
    #[track_caller]
    pub fn assert_no_upstream_request(&self) {
        let seen: Vec<String> = self
            .standin
            .requests()
            .iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect();
        assert!(seen.is_empty(), "expected no ZITADEL request, saw {seen:?}");
    }

    /// The management calls that read or write metadata (without v2's lookup of a user's organisation).
    pub fn metadata_requests(&self) -> Vec<RecordedRequest> {
        self.management_requests()
            .into_iter()
            .filter(|r| r.connect_procedure() != Some("GetUserByID"))
            .collect()
    }

    #[track_caller]
    pub fn assert_no_management_request(&self) {
        let seen: Vec<String> = self
            .management_requests()
            .iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect();
        assert!(seen.is_empty(), "expected no management call, saw {seen:?}");
    }
}

/// The user a management call addressed: v1 names it in the path, v2 in the JSON body.
pub fn user_of(request: &RecordedRequest) -> String {
    match request.path.strip_prefix("/management/v1/users/") {
        Some(rest) => rest.split('/').next().unwrap_or_default().to_owned(),
        None => {
            let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
            body["userId"].as_str().unwrap_or_default().to_owned()
        }
    }
}

/// The text of a returned value.
pub fn text_of(metadata: &pb::Metadata) -> Option<&str> {
    match metadata.value.as_ref()?.kind.as_ref()? {
        pb::metadata_value::Kind::Text(text) => Some(text),
        pb::metadata_value::Kind::Binary(_) => None,
    }
}

/// Keys and text values, for compact assertions.
pub fn pairs(metadata: &[pb::Metadata]) -> Vec<(String, Option<String>)> {
    metadata
        .iter()
        .map(|m| (m.key.clone(), text_of(m).map(str::to_owned)))
        .collect()
}

/// A scripted ZITADEL that answers userinfo with fixed claims for any token, counting calls: for what the
/// real ZITADEL might send but the stand-in never does.
pub async fn raw_userinfo(claims: serde_json::Value) -> (String, Arc<AtomicUsize>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let router = Router::new().route(
        "/oidc/v1/userinfo",
        get(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            let claims = claims.clone();
            async move { Json(claims) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (url, calls)
}

/// The caller's `profile.language` as `client` serves it (GetMyMetadata), or `<none>`.
pub async fn language(client: &UserMetadataServiceClient<Channel>, token: &str) -> String {
    let answer = client
        .clone()
        .get_my_metadata(authed(
            pb::GetMyMetadataRequest {
                keys: vec!["profile.language".into()],
                ..Default::default()
            },
            token,
        ))
        .await
        .unwrap()
        .into_inner();
    answer
        .metadata
        .first()
        .and_then(text_of)
        .unwrap_or("<none>")
        .to_owned()
}

/// The value of one series of a `/metrics` scrape (`name{label="value"}` exactly as exported), 0 when absent.
/// The recorder is process-wide: compare a value with an earlier one, never with a constant.
pub async fn metric(metrics_addr: SocketAddr, series: &str) -> f64 {
    let text = reqwest::get(format!("http://{metrics_addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|value| value.trim().parse::<f64>().unwrap())
        .sum()
}
