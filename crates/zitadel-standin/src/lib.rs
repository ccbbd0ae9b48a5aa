//! An in-process stand-in for the ZITADEL HTTP endpoints usermeta calls.
//!
//! It serves, over HTTP/1 and h2c on a local port:
//! - OIDC: `GET`/`POST /oidc/v1/userinfo` and `POST /oauth/v2/token` (client credentials and the JWT-profile
//!   grant, whose assertions it verifies against the registered public key), `POST /oauth/v2/introspect` for
//!   API applications (client secret or `private_key_jwt`), and `GET /oauth/v2/keys` (the JWKS of the keys
//!   signing its JWT access tokens and its ID tokens, which userinfo and introspection refuse as ZITADEL's do);
//! - the Auth API: `/auth/v1/users/me/metadata/_search` and `/auth/v1/users/me/metadata/{key}`;
//! - the Management API v1 metadata calls under `/management/v1/users/{id}/metadata/...`;
//! - organisation metadata: the Management API v1 calls under `/management/v1/metadata/...` (scoped by
//!   `x-zitadel-orgid`) and, from ZITADEL 4.7, `zitadel.org.v2.OrganizationService`'s
//!   `SetOrganizationMetadata`, `ListOrganizationMetadata`, `DeleteOrganizationMetadata` and
//!   `ListOrganizations` (by id) over Connect, with the REST twins under `/v2/organizations/{id}/metadata`
//!   (permissions `org.read` / `org.write` in the organisation);
//! - ZITADEL v4's `zitadel.user.v2.UserService`: `SetUserMetadata`, `ListUserMetadata`, `DeleteUserMetadata`,
//!   `GetUserByID` and `ListUsers` (metadata key/value filters, `inUserIdsQuery`, `organizationIdQuery`,
//!   `userNameQuery`, `typeQuery`, `andQuery`/`orQuery`/`notQuery`), over Connect unary JSON
//!   (`POST /zitadel.user.v2.UserService/<RPC>`, `Content-Type: application/json`, Connect error bodies) and
//!   over their grpc-gateway REST twins (`POST /v2/users/{user_id}/metadata`, `POST …/metadata/search`,
//!   `DELETE …/metadata?keys=…`, `GET /v2/users/{user_id}`, `POST /v2/users`). Permissions are checked in the
//!   target user's real organisation (no `x-zitadel-orgid`, no self-management of metadata).
//!
//! Switches: [`StandIn::set_apis`] plays a ZITADEL v3 ([`Apis::V3`], no v2 metadata) or one without the
//! Management API v1 ([`Apis::V2_ONLY`]); [`StandIn::set_search_lag`] makes the v2 searches read a lagging
//! projection as ZITADEL's do; [`StandIn::set_empty_value_deletes`] switches v2 Set to the newer "an empty
//! value deletes" behaviour. `cargo run -p zitadel-standin --example serve` serves a seeded stand-in for
//! scripts.
//!
//! It behaves like the real ZITADEL described in `zitadel-api.md` (lowerCamelCase JSON with omitted defaults,
//! 64-bit integers as strings, padded standard base64 in REST answers, grpc-gateway error bodies, org scoping,
//! validation limits), records every request, and can inject faults (latency, error statuses, 429, dropped
//! connections, malformed JSON).
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use zitadel_standin::{ManagerRole, StandIn};
//! let zitadel = StandIn::start().await?;
//! let org = zitadel.create_org("acme");
//! let alice = zitadel.create_user(&org, "alice");
//! let svc = zitadel.create_service_user(&org, "usermeta", ManagerRole::OrgOwner);
//! let pat = zitadel.issue_pat(&svc);
//! zitadel.set_metadata(&alice, "plan", b"gold");
//! # let _ = pat; Ok(())
//! # }
//! ```

mod auth_api;
mod caller;
mod errors;
mod faults;
pub mod keys;
mod management_api;
mod oidc;
mod org_metadata;
mod recorder;
mod server;
mod state;
mod user_v2;
mod wire;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use faults::{Fault, FaultKind};
pub use oidc::{IdTokenSpec, JwtSpec};
pub use recorder::RecordedRequest;

use state::Shared;

/// The ZITADEL manager role of a service user, which decides what the Management API lets it do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ManagerRole {
    /// `IAM_OWNER`: may manage users of every organisation.
    IamOwner,
    /// `ORG_OWNER`: may manage users of its own organisation only.
    OrgOwner,
    /// No manager role: Management API calls are denied (403).
    None,
}

/// How a missing `urn:zitadel:iam:org:project:id:zitadel:aud` scope is reported by the Auth and Management APIs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AudienceErrorStyle {
    /// Current ZITADEL: `401 {"code":16,"message":"Token is invalid (AUTH-7fs1e)",...}`.
    #[default]
    TokenInvalid,
    /// Older ZITADEL: `401 {"code":16,"message":"invalid audience (APP-Zxfako)",...}`.
    InvalidAudience,
}

/// Which API families the stand-in serves, to play a ZITADEL of another version (set with
/// [`StandIn::set_apis`]). The default, [`Apis::V4`], serves everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Apis {
    /// The Management API v1 (`/management/v1/...`). Off, its paths answer as on a ZITADEL without them: 404
    /// with grpc-gateway's `{"code":5,"message":"Not Found"}`.
    pub management_v1: bool,
    /// The metadata RPCs of `zitadel.user.v2.UserService` (ZITADEL 4.0+) and the metadata filters of its
    /// `ListUsers` (4.1+). Off, the stand-in is a ZITADEL v3: `GetUserByID` and `ListUsers` still answer, the
    /// Connect metadata procedures answer connect-go's 404 for an unknown procedure (`404 page not found`,
    /// which Connect clients read as `unimplemented`), their REST twins grpc-gateway's 404, and a `ListUsers`
    /// query holding only a metadata filter is refused as a query with no member set (the unknown field is
    /// dropped by the JSON decoder).
    pub user_v2_metadata: bool,
    /// The metadata RPCs of `zitadel.org.v2.OrganizationService` (ZITADEL 4.7+) and their REST twins under
    /// `/v2/organizations/{organization_id}/metadata`. Off, the Connect procedures answer connect-go's 404 for
    /// an unknown procedure and the REST paths grpc-gateway's 404, as on ZITADEL 4.0 to 4.6.
    pub org_v2_metadata: bool,
}

impl Apis {
    /// ZITADEL v4 (4.7 or later): Management API v1, the v2 user service with metadata and the v2
    /// organisation service with metadata.
    pub const V4: Apis = Apis {
        management_v1: true,
        user_v2_metadata: true,
        org_v2_metadata: true,
    };
    /// ZITADEL 4.0 to 4.6: Management API v1 and the v2 user service with metadata, but no organisation
    /// metadata in v2 yet.
    pub const V4_BEFORE_ORG_METADATA: Apis = Apis {
        management_v1: true,
        user_v2_metadata: true,
        org_v2_metadata: false,
    };
    /// ZITADEL v3: Management API v1; the v2 user service without metadata.
    pub const V3: Apis = Apis {
        management_v1: true,
        user_v2_metadata: false,
        org_v2_metadata: false,
    };
    /// A ZITADEL that dropped the v1 Management API (as v5 may): only the v2 services for metadata.
    pub const V2_ONLY: Apis = Apis {
        management_v1: false,
        user_v2_metadata: true,
        org_v2_metadata: true,
    };
}

impl Default for Apis {
    fn default() -> Self {
        Apis::V4
    }
}

/// A running stand-in ZITADEL. Cheap to clone; it stops serving on [`StandIn::shutdown`] or when the last clone
/// is dropped.
#[derive(Clone)]
pub struct StandIn {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    addr: SocketAddr,
    // Dropping the sender (last `StandIn` clone gone) stops the server just like sending `true`.
    stop: watch::Sender<bool>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for StandIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StandIn")
            .field("addr", &self.inner.addr)
            .finish_non_exhaustive()
    }
}

impl StandIn {
    /// Binds `127.0.0.1:0` and serves in a spawned tokio task.
    pub async fn start() -> std::io::Result<StandIn> {
        Self::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    /// Binds `addr` and serves in a spawned tokio task.
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<StandIn> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(format!("http://{addr}")));
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(server::serve(listener, Arc::clone(&shared), stop_rx));
        Ok(StandIn {
            inner: Arc::new(Inner {
                shared,
                addr,
                stop,
                task: Mutex::new(Some(task)),
            }),
        })
    }

    /// The base URL, e.g. `http://127.0.0.1:PORT` (no trailing slash). It is also the issuer.
    pub fn url(&self) -> String {
        self.inner.shared.issuer.clone()
    }

    /// The bound socket address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// Creates an organisation and returns its id. Its primary domain is `<name>.localhost`.
    pub fn create_org(&self, name: &str) -> String {
        self.inner.shared.create_org(name)
    }

    /// Creates a human user in `org_id` and returns its id.
    ///
    /// # Panics
    /// When `org_id` is unknown (a test helper).
    pub fn create_user(&self, org_id: &str, username: &str) -> String {
        self.inner.shared.create_user(org_id, username, None)
    }

    /// Creates a machine (service) user in `org_id` with the given manager role and returns its id.
    ///
    /// # Panics
    /// When `org_id` is unknown (a test helper).
    pub fn create_service_user(&self, org_id: &str, username: &str, role: ManagerRole) -> String {
        self.inner.shared.create_user(org_id, username, Some(role))
    }

    /// Issues an opaque OAuth access token for `user_id` with `scopes`, valid for 43199 s.
    ///
    /// # Panics
    /// When `user_id` is unknown.
    pub fn issue_token(&self, user_id: &str, scopes: &[&str]) -> String {
        self.issue_token_with_lifetime(user_id, scopes, state::DEFAULT_TOKEN_LIFETIME)
    }

    /// Issues an opaque OAuth access token for `user_id` with `scopes`, valid for `lifetime`.
    ///
    /// # Panics
    /// When `user_id` is unknown.
    pub fn issue_token_with_lifetime(
        &self,
        user_id: &str,
        scopes: &[&str],
        lifetime: Duration,
    ) -> String {
        let scopes = scopes.iter().map(|s| (*s).to_owned()).collect();
        self.inner
            .shared
            .issue_token(user_id, scopes, Some(lifetime), false)
    }

    /// Issues a personal access token (no expiry) for a machine user. PATs skip the audience check.
    ///
    /// # Panics
    /// When `user_id` is unknown or not a machine user (ZITADEL only allows PATs for service users).
    pub fn issue_pat(&self, user_id: &str) -> String {
        self.inner
            .shared
            .issue_token(user_id, Vec::new(), None, true)
    }

    /// Issues a JWT access token for `user_id` with `scopes` and extra `audience` (project ids from
    /// `urn:zitadel:iam:org:project:id:{id}:aud` scopes are added), valid for 43199 s, signed by the stand-in's
    /// current key. With the scope `urn:zitadel:iam:org:projects:roles` it carries the user's roles claims.
    ///
    /// # Panics
    /// When `user_id` is unknown.
    pub fn issue_jwt(&self, user_id: &str, scopes: &[&str], audience: &[&str]) -> String {
        self.issue_jwt_with(
            user_id,
            JwtSpec {
                scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
                audience: audience.iter().map(|s| (*s).to_owned()).collect(),
                ..JwtSpec::default()
            },
        )
    }

    /// Issues a JWT access token as `spec` says (expired, another issuer, an unpublished key, a client id).
    ///
    /// # Panics
    /// When `user_id` is unknown.
    pub fn issue_jwt_with(&self, user_id: &str, spec: JwtSpec) -> String {
        oidc::issue_jwt(&self.inner.shared, user_id, spec)
    }

    /// Issues an ID token for `user_id` as `spec` says, with the claims ZITADEL sets in one (`azp`,
    /// `auth_time`, `amr`, `sid`, `at_hash` beside an access token, `nonce`), signed like access tokens. It is
    /// no access token: userinfo and introspection refuse it, as ZITADEL's do.
    ///
    /// # Panics
    /// When `user_id` is unknown.
    pub fn issue_id_token(&self, user_id: &str, spec: IdTokenSpec) -> String {
        oidc::issue_id_token(&self.inner.shared, user_id, spec)
    }

    /// Adds a new published signing key (ZITADEL rotates without notice); JWTs issued from now on use it.
    /// Returns its key id.
    pub fn rotate_signing_key(&self) -> String {
        self.inner.shared.add_signing_key(true)
    }

    /// Creates a project in `org_id` and returns its id.
    ///
    /// # Panics
    /// When `org_id` is unknown.
    pub fn create_project(&self, org_id: &str) -> String {
        self.inner.shared.create_project(org_id)
    }

    /// Adds an API application with a client secret to a project; returns `(client_id, secret)`.
    ///
    /// # Panics
    /// When `project_id` is unknown.
    pub fn add_api_app_with_secret(&self, project_id: &str) -> (String, String) {
        self.inner.shared.add_api_app(project_id, false)
    }

    /// Adds an API application with a key (`private_key_jwt`) to a project; returns `(client_id, key file)`,
    /// the key file as ZITADEL downloads it: `{"type":"application","keyId","key","clientId","appId"}`.
    ///
    /// # Panics
    /// When `project_id` is unknown.
    pub fn add_api_app_with_key(&self, project_id: &str) -> (String, String) {
        self.inner.shared.add_api_app(project_id, true)
    }

    /// Grants `user_id` the role `role` of `project_id`; it shows in the roles claims of tokens with the scope
    /// `urn:zitadel:iam:org:projects:roles`.
    ///
    /// # Panics
    /// When `user_id` is unknown.
    pub fn grant_role(&self, user_id: &str, project_id: &str, role: &str) {
        self.inner.shared.grant_role(user_id, project_id, role);
    }

    /// Removes the role `role` of `project_id` from `user_id` (ZITADEL's removal of a user grant's role); tokens
    /// answered from now on no longer carry it.
    pub fn remove_role(&self, user_id: &str, project_id: &str, role: &str) {
        self.inner.shared.remove_role(user_id, project_id, role);
    }

    /// How many introspection requests arrived (counted even with recording off).
    pub fn introspection_requests(&self) -> usize {
        self.inner.shared.introspection_requests()
    }

    /// How many JWKS requests arrived (counted even with recording off).
    pub fn jwks_requests(&self) -> usize {
        self.inner.shared.jwks_requests()
    }

    /// Revokes an access token or PAT; later requests with it are answered as with an unknown token.
    pub fn revoke_token(&self, token: &str) {
        self.inner.shared.revoke_token(token);
    }

    /// Generates a client secret for a machine user and returns `(client_id, client_secret)` for the
    /// `client_credentials` grant. As in ZITADEL, the client id is the username and a new secret replaces the old.
    ///
    /// # Panics
    /// When `user_id` is unknown or not a machine user.
    pub fn add_client_secret(&self, user_id: &str) -> (String, String) {
        self.inner.shared.add_client_secret(user_id)
    }

    /// Removes a client secret; later `client_credentials` requests with it fail with `invalid_client`.
    pub fn remove_client_secret(&self, client_id: &str) {
        self.inner.shared.remove_client_secret(client_id);
    }

    /// Adds a JWT-profile key to a machine user and returns the whole key file as ZITADEL downloads it:
    /// `{"type":"serviceaccount","keyId":"…","key":"-----BEGIN RSA PRIVATE KEY-----…","userId":"…"}`.
    /// Each call generates a new RSA 2048 key.
    ///
    /// # Panics
    /// When `user_id` is unknown or not a machine user.
    pub fn add_machine_key(&self, user_id: &str) -> String {
        self.inner.shared.add_machine_key(user_id)
    }

    /// Removes a key; assertions signed with it are then rejected (`invalid_grant`).
    pub fn remove_machine_key(&self, key_id: &str) {
        self.inner.shared.remove_machine_key(key_id);
    }

    /// Revokes every OAuth access token of a user (PATs stay valid); returns how many were revoked.
    pub fn revoke_tokens_of(&self, user_id: &str) -> usize {
        self.inner.shared.revoke_tokens_of(user_id)
    }

    /// Sets the lifetime of tokens issued by `POST /oauth/v2/token` (and their `expires_in`, in whole seconds).
    pub fn set_token_lifetime(&self, lifetime: Duration) {
        self.inner.shared.set_token_lifetime(lifetime);
    }

    /// Chooses how a missing ZITADEL audience is reported by the Auth and Management APIs.
    pub fn set_audience_error_style(&self, style: AudienceErrorStyle) {
        self.inner.shared.set_audience_error_style(style);
    }

    /// Sets a metadata value directly (as a `user.metadata.set` event). An empty value removes the key, since
    /// ZITADEL cannot store empty values.
    ///
    /// # Panics
    /// When `user_id` is unknown.
    pub fn set_metadata(&self, user_id: &str, key: &str, value: &[u8]) {
        self.inner.shared.set_metadata(user_id, key, value);
    }

    /// Sets (or, with an empty value, removes) a metadata entry of an organisation, as an `org.metadata.set`
    /// event would.
    ///
    /// # Panics
    /// When `org_id` is unknown (a test helper).
    pub fn set_org_metadata(&self, org_id: &str, key: &str, value: &[u8]) {
        self.inner.shared.set_org_metadata(org_id, key, value);
    }

    /// The current metadata of an organisation (empty for an unknown one).
    pub fn org_metadata_of(&self, org_id: &str) -> BTreeMap<String, Vec<u8>> {
        self.inner.shared.org_metadata_of(org_id)
    }

    /// Chooses which API families are served ([`Apis::V4`], [`Apis::V3`], [`Apis::V2_ONLY`] or any mix).
    pub fn set_apis(&self, apis: Apis) {
        self.inner.shared.write().apis = apis;
    }

    /// Makes the v2 searches (`ListUserMetadata`, `ListUsers`) read a projection `lag` behind, as ZITADEL's
    /// do: writes apply at once (v1, the Auth API and userinfo see them), but a v2 search does not see a write
    /// or a new user younger than `lag`, and still lists a key deleted less than `lag` ago. Zero (the default)
    /// turns it off. Applies to writes made after the call.
    pub fn set_search_lag(&self, lag: Duration) {
        self.inner.shared.write().events.search_lag = lag;
    }

    /// Answers every `/management/v1`, `/auth/v1` and `/admin/v1` call with a `Deprecation` header (RFC 9745),
    /// as ZITADEL v5 plans to (#10899).
    pub fn set_v1_deprecation(&self, on: bool) {
        self.inner
            .shared
            .deprecate_v1
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Switches v2 `SetUserMetadata` between refusing an empty value (`false`, the default: ZITADEL up to
    /// 4.11) and deleting the key for it (`true`: ZITADEL with PR #11776; no-op when the key is absent).
    pub fn set_empty_value_deletes(&self, on: bool) {
        self.inner.shared.write().empty_value_deletes = on;
    }

    /// The metadata of `user_id` (empty for an unknown user).
    pub fn metadata_of(&self, user_id: &str) -> BTreeMap<String, Vec<u8>> {
        self.inner.shared.metadata_of(user_id)
    }

    /// Every request received so far, in order (including those answered by a fault).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.inner.shared.recorder.all()
    }

    /// Forgets the recorded requests.
    pub fn clear_requests(&self) {
        self.inner.shared.recorder.clear();
    }

    /// Switches request recording on (the default) or off. Off keeps memory flat in long runs such as
    /// `usermeta dev` or benchmarks; [`StandIn::token_requests`] still counts.
    pub fn set_recording(&self, on: bool) {
        self.inner.shared.recorder.set_enabled(on);
    }

    /// How many `POST /oauth/v2/token` requests were received (whatever their outcome).
    pub fn token_requests(&self) -> usize {
        self.inner.shared.token_requests()
    }

    /// How many userinfo requests (GET or POST `/oidc/v1/userinfo`) arrived, counted even with recording off.
    pub fn userinfo_requests(&self) -> usize {
        self.inner.shared.userinfo_requests()
    }

    /// How many requests arrived, whatever their path, counted even with recording off.
    pub fn all_requests(&self) -> usize {
        self.inner.shared.all_requests()
    }

    /// How many TCP connections the stand-in accepted: how well a client pools and reuses them.
    pub fn connections_accepted(&self) -> usize {
        self.inner.shared.connections_accepted()
    }

    /// Adds a fault. Faults are tried in the order pushed; the first matching one with uses left fires.
    pub fn push_fault(&self, fault: Fault) {
        self.inner.shared.faults.push(fault);
    }

    /// Removes all faults.
    pub fn clear_faults(&self) {
        self.inner.shared.faults.clear();
    }

    /// A ZITADEL restart: stops serving (every open connection is closed), stays away for `down`, then serves
    /// the same state (users, tokens, metadata) on the same address again.
    pub async fn restart(&self, down: Duration) -> std::io::Result<()> {
        self.shutdown().await;
        tokio::time::sleep(down).await;
        let listener = tokio::net::TcpListener::bind(self.inner.addr).await?;
        self.inner.stop.send_replace(false);
        let task = tokio::spawn(server::serve(
            listener,
            Arc::clone(&self.inner.shared),
            self.inner.stop.subscribe(),
        ));
        *self
            .inner
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(task);
        Ok(())
    }

    /// Stops accepting connections, closes the open ones and waits for the server task to end.
    pub async fn shutdown(&self) {
        self.inner.stop.send_replace(true);
        let task = self
            .inner
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(task) = task {
            // The task only ends by itself; a JoinError would mean it panicked, which shutdown cannot fix.
            let _ = task.await;
        }
    }
}
