//! The stand-in's data: organisations, users with their metadata, tokens and client secrets.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::Method;
use rand::Rng as _;

use super::faults::Faults;
use super::recorder::{RecordedRequest, Recorder};
use super::wire;
use super::{Apis, AudienceErrorStyle, ManagerRole};

/// ZITADEL's usual access-token lifetime as seen in `expires_in` (12 h minus a second).
pub(super) const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(43199);

/// The scope that puts the ZITADEL project into a token's audience; required by the Auth and Management APIs.
pub(super) const ZITADEL_AUDIENCE_SCOPE: &str = "urn:zitadel:iam:org:project:id:zitadel:aud";

/// Where generated ids start: ZITADEL ids are large decimal numbers.
const FIRST_ID: u64 = 170_848_145_649_959_169;

/// State shared by the server task and every `StandIn` handle.
pub(super) struct Shared {
    pub(super) issuer: String,
    pub(super) data: RwLock<Data>,
    pub(super) recorder: Recorder,
    pub(super) faults: Faults,
    token_requests: AtomicUsize,
    userinfo_requests: AtomicUsize,
    introspection_requests: AtomicUsize,
    jwks_requests: AtomicUsize,
    /// Every request, whatever its path.
    all_requests: AtomicUsize,
    connections_accepted: AtomicUsize,
    token_lifetime_ms: AtomicU64,
    audience_style: AtomicU8,
    next_id: AtomicU64,
    /// Answer v1 calls with a `Deprecation` header, as ZITADEL v5 plans to.
    pub(super) deprecate_v1: std::sync::atomic::AtomicBool,
}

/// Everything behind the data lock.
#[derive(Default)]
pub(super) struct Data {
    pub(super) orgs: HashMap<String, Org>,
    pub(super) users: HashMap<String, User>,
    pub(super) tokens: HashMap<String, Token>,
    /// By client id (the machine user's username).
    pub(super) clients: HashMap<String, Client>,
    /// JWT-profile keys by key id.
    pub(super) machine_keys: HashMap<String, MachineKey>,
    pub(super) projects: HashMap<String, Project>,
    /// API applications (introspection clients) by client id.
    pub(super) apps: HashMap<String, ApiApp>,
    /// API application keys by key id: the client id and the public key.
    pub(super) app_keys: HashMap<String, (String, Vec<u8>)>,
    /// Project roles granted to users: user id → project id → role names.
    pub(super) grants: HashMap<String, BTreeMap<String, BTreeSet<String>>>,
    /// Keys that sign JWT access tokens; the last published one signs new tokens.
    pub(super) signing_keys: Vec<SigningKey>,
    /// The instance-wide event counter and the projection lag metadata writes are journaled for.
    pub(super) events: Events,
    /// Which API families this stand-in serves (a ZITADEL v4 by default).
    pub(super) apis: Apis,
    /// Whether an empty value in v2 `SetUserMetadata` deletes the key (ZITADEL after PR #11776) instead of
    /// being refused.
    pub(super) empty_value_deletes: bool,
}

/// What every metadata write needs besides the user: the instance-wide event counter, and how long the v2
/// search projection lags behind (so how long a write's undo record must be kept).
#[derive(Default)]
pub(super) struct Events {
    /// Shown as `processedSequence`.
    pub(super) processed_sequence: u64,
    /// v2 `ListUserMetadata` and `ListUsers` see the state as it was this long ago.
    pub(super) search_lag: Duration,
}

pub(super) struct Org {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) primary_domain: String,
    /// The sequence of the org aggregate (its last event).
    pub(super) sequence: u64,
    /// When the last event on the org happened.
    pub(super) changed: SystemTime,
    /// The organisation's own metadata (`org.metadata.set` / `org.metadata.removed`).
    pub(super) metadata: BTreeMap<String, Entry>,
}

impl Org {
    fn push_event(&mut self, events: &mut Events, now: SystemTime) -> u64 {
        self.sequence += 1;
        self.changed = now;
        events.processed_sequence += 1;
        self.sequence
    }

    /// An `org.metadata.set` event.
    pub(super) fn set_metadata(
        &mut self,
        key: &str,
        value: Vec<u8>,
        now: SystemTime,
        events: &mut Events,
    ) -> u64 {
        let sequence = self.push_event(events, now);
        match self.metadata.get_mut(key) {
            Some(entry) => {
                entry.value = value;
                entry.sequence = sequence;
                entry.change_date = now;
            }
            None => {
                self.metadata.insert(
                    key.to_owned(),
                    Entry {
                        value,
                        sequence,
                        created_sequence: sequence,
                        creation_date: now,
                        change_date: now,
                    },
                );
            }
        }
        sequence
    }

    /// An `org.metadata.removed` event.
    pub(super) fn remove_metadata(&mut self, key: &str, events: &mut Events) -> u64 {
        self.metadata.remove(key);
        self.push_event(events, wire::now())
    }
}

pub(super) struct User {
    pub(super) id: String,
    pub(super) org_id: String,
    pub(super) username: String,
    /// `Some(role)` for machine (service) users, `None` for humans.
    pub(super) machine_role: Option<ManagerRole>,
    pub(super) given_name: String,
    pub(super) family_name: String,
    pub(super) created: SystemTime,
    /// When the user was created on the stand-in's monotonic clock, if searches lagged then: lagged searches
    /// do not see it before.
    pub(super) created_at: Option<Instant>,
    /// The sequence of the user aggregate (its last event).
    pub(super) sequence: u64,
    /// When the last event on the user happened (its `changeDate`).
    pub(super) changed: SystemTime,
    pub(super) metadata: BTreeMap<String, Entry>,
    /// Undo records of recent metadata writes, newest last, kept for as long as the search lag so that a lagged
    /// read can roll the current state back (empty while the lag is zero).
    pub(super) changes: Vec<Change>,
}

/// One metadata write, as a lagged search must undo it: the entry the key held before (`None`: absent).
pub(super) struct Change {
    pub(super) at: Instant,
    pub(super) key: String,
    pub(super) previous: Option<Entry>,
}

impl User {
    pub(super) fn role(&self) -> ManagerRole {
        self.machine_role.unwrap_or(ManagerRole::None)
    }

    /// Records an event on the user aggregate and returns its sequence.
    fn push_event(&mut self, events: &mut Events, now: SystemTime) -> u64 {
        self.sequence += 1;
        self.changed = now;
        events.processed_sequence += 1;
        self.sequence
    }

    /// Keeps an undo record of a write to `key` while searches lag, and forgets records older than the lag.
    fn journal(&mut self, key: &str, events: &Events) {
        let now = Instant::now();
        if let Some(horizon) = now.checked_sub(events.search_lag) {
            self.changes.retain(|change| change.at >= horizon);
        }
        if events.search_lag.is_zero() {
            return;
        }
        self.changes.push(Change {
            at: now,
            key: key.to_owned(),
            previous: self.metadata.get(key).cloned(),
        });
    }

    /// The metadata as a search projection `lag` behind sees it: the current state with every write younger
    /// than `lag` undone, newest first.
    pub(super) fn metadata_as_of(&self, lag: Duration) -> BTreeMap<String, Entry> {
        let mut view = self.metadata.clone();
        let Some(cutoff) = Instant::now().checked_sub(lag) else {
            return BTreeMap::new();
        };
        for change in self.changes.iter().rev().filter(|c| c.at > cutoff) {
            match &change.previous {
                Some(entry) => view.insert(change.key.clone(), entry.clone()),
                None => view.remove(&change.key),
            };
        }
        view
    }

    /// Whether a search projection `lag` behind has seen the user yet.
    pub(super) fn visible_with_lag(&self, lag: Duration) -> bool {
        let Some(created_at) = self.created_at else {
            return true;
        };
        Instant::now()
            .checked_sub(lag)
            .is_some_and(|cutoff| created_at <= cutoff)
    }

    /// A `user.metadata.set` event.
    pub(super) fn set_metadata(
        &mut self,
        key: &str,
        value: Vec<u8>,
        now: SystemTime,
        events: &mut Events,
    ) -> u64 {
        self.journal(key, events);
        let sequence = self.push_event(events, now);
        match self.metadata.get_mut(key) {
            Some(entry) => {
                entry.value = value;
                entry.sequence = sequence;
                entry.change_date = now;
            }
            None => {
                self.metadata.insert(
                    key.to_owned(),
                    Entry {
                        value,
                        sequence,
                        created_sequence: sequence,
                        creation_date: now,
                        change_date: now,
                    },
                );
            }
        }
        sequence
    }

    /// A `user.metadata.removed` event.
    pub(super) fn remove_metadata(&mut self, key: &str, events: &mut Events) -> u64 {
        self.journal(key, events);
        self.metadata.remove(key);
        self.push_event(events, wire::now())
    }
}

#[derive(Clone)]
pub(super) struct Entry {
    pub(super) value: Vec<u8>,
    pub(super) sequence: u64,
    /// The sequence of the event that created the entry: orders entries created at the same instant.
    pub(super) created_sequence: u64,
    pub(super) creation_date: SystemTime,
    pub(super) change_date: SystemTime,
}

pub(super) struct Token {
    pub(super) user_id: String,
    pub(super) scopes: Vec<String>,
    pub(super) expires_at: Option<Instant>,
    pub(super) pat: bool,
    /// Audience beyond the projects named by `…:project:id:{id}:aud` scopes.
    pub(super) audience: Vec<String>,
    /// The OAuth client the token was issued to, if any.
    pub(super) client_id: Option<String>,
    /// `exp` as seconds since the epoch (also for already expired JWTs).
    pub(super) exp: Option<u64>,
    pub(super) iat: u64,
}

/// A project: the audience of tokens for its API applications, and the holder of roles.
pub(super) struct Project {
    pub(super) org_id: String,
}

/// An API application: usermeta's introspection client.
pub(super) struct ApiApp {
    pub(super) project_id: String,
    pub(super) secret: Option<String>,
}

/// A key signing JWT access tokens.
pub(super) struct SigningKey {
    pub(super) kid: String,
    pub(super) private_pem: String,
    pub(super) public_der: Vec<u8>,
    /// Listed at `/oauth/v2/keys`; unpublished keys sign tokens no verifier should accept.
    pub(super) published: bool,
}

/// The scope that asks for the roles claims (roles of every project the user has grants in, in the stand-in).
pub(super) const ROLES_SCOPE: &str = "urn:zitadel:iam:org:projects:roles";

impl Token {
    /// The token's audience: project ids from `urn:zitadel:iam:org:project:id:{id}:aud` scopes, plus extras.
    pub(super) fn audience(&self) -> Vec<String> {
        let mut audience: Vec<String> = self
            .scopes
            .iter()
            .filter_map(|s| {
                s.strip_prefix("urn:zitadel:iam:org:project:id:")?
                    .strip_suffix(":aud")
                    .map(str::to_owned)
            })
            .collect();
        for extra in &self.audience {
            if !audience.contains(extra) {
                audience.push(extra.clone());
            }
        }
        audience
    }
}

impl Token {
    /// The project the token was requested for, whose roles ZITADEL repeats in the generic roles claim: the
    /// project of its client, else (a user token requested through some app) the first project named by an
    /// `…:project:id:{id}:aud` scope (`zitadel` excepted).
    pub(super) fn request_project(&self, data: &Data) -> Option<String> {
        if let Some(app) = self.client_id.as_ref().and_then(|c| data.apps.get(c)) {
            return Some(app.project_id.clone());
        }
        self.audience().into_iter().find(|id| id != "zitadel")
    }

    pub(super) fn is_valid(&self) -> bool {
        self.expires_at.is_none_or(|at| Instant::now() < at)
    }

    pub(super) fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}

pub(super) struct Client {
    pub(super) user_id: String,
    pub(super) secret: String,
}

/// The public half of a service user's JWT-profile key.
pub(super) struct MachineKey {
    pub(super) user_id: String,
    /// DER `RSAPublicKey`.
    pub(super) public_der: Vec<u8>,
}

impl Data {
    /// The token if it exists and has not expired.
    pub(super) fn valid_token(&self, token: &str) -> Option<&Token> {
        self.tokens.get(token).filter(|t| t.is_valid())
    }
}

/// A random opaque token of 43 alphanumeric characters (about 256 bits); alphanumeric so that a token
/// pasted into a shell never starts with `-` or needs quoting.
fn random_token() -> String {
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(43)
        .map(char::from)
        .collect()
}

/// A primary domain as ZITADEL derives it from an org name: `<lowercase name>.localhost`.
fn primary_domain(name: &str) -> String {
    let label: String = name
        .trim()
        .chars()
        .filter_map(|c| match c {
            'a'..='z' | '0'..='9' | '-' => Some(c),
            'A'..='Z' => Some(c.to_ascii_lowercase()),
            ' ' | '_' | '.' => Some('-'),
            _ => None,
        })
        .collect();
    format!("{label}.localhost")
}

impl Shared {
    pub(super) fn new(issuer: String) -> Shared {
        Shared {
            issuer,
            data: RwLock::new(Data {
                events: Events {
                    processed_sequence: 1000,
                    search_lag: Duration::ZERO,
                },
                ..Data::default()
            }),
            recorder: Recorder::default(),
            faults: Faults::default(),
            token_requests: AtomicUsize::new(0),
            userinfo_requests: AtomicUsize::new(0),
            connections_accepted: AtomicUsize::new(0),
            introspection_requests: AtomicUsize::new(0),
            jwks_requests: AtomicUsize::new(0),
            all_requests: AtomicUsize::new(0),
            token_lifetime_ms: AtomicU64::new(duration_ms(DEFAULT_TOKEN_LIFETIME)),
            audience_style: AtomicU8::new(0),
            next_id: AtomicU64::new(FIRST_ID),
            deprecate_v1: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub(super) fn read(&self) -> RwLockReadGuard<'_, Data> {
        self.data.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn write(&self) -> RwLockWriteGuard<'_, Data> {
        self.data.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn next_id(&self) -> String {
        self.next_id.fetch_add(1, Ordering::Relaxed).to_string()
    }

    /// Records a request (and counts token requests).
    pub(super) fn record(&self, parts: &http::request::Parts, body: &Bytes) {
        let path = parts.uri.path();
        self.all_requests.fetch_add(1, Ordering::Relaxed);
        if parts.method == Method::POST && path == "/oauth/v2/token" {
            self.token_requests.fetch_add(1, Ordering::Relaxed);
        }
        if path == "/oidc/v1/userinfo" {
            self.userinfo_requests.fetch_add(1, Ordering::Relaxed);
        }
        if path == "/oauth/v2/introspect" {
            self.introspection_requests.fetch_add(1, Ordering::Relaxed);
        }
        if path == "/oauth/v2/keys" {
            self.jwks_requests.fetch_add(1, Ordering::Relaxed);
        }
        if !self.recorder.enabled() {
            return;
        }
        self.recorder.push(RecordedRequest {
            method: parts.method.clone(),
            version: parts.version,
            path: path.to_owned(),
            query: parts.uri.query().map(str::to_owned),
            headers: parts.headers.clone(),
            body: body.clone(),
        });
    }

    pub(super) fn token_requests(&self) -> usize {
        self.token_requests.load(Ordering::Relaxed)
    }

    pub(super) fn userinfo_requests(&self) -> usize {
        self.userinfo_requests.load(Ordering::Relaxed)
    }

    pub(super) fn all_requests(&self) -> usize {
        self.all_requests.load(Ordering::Relaxed)
    }

    pub(super) fn connection_accepted(&self) {
        self.connections_accepted.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn connections_accepted(&self) -> usize {
        self.connections_accepted.load(Ordering::Relaxed)
    }

    pub(super) fn introspection_requests(&self) -> usize {
        self.introspection_requests.load(Ordering::Relaxed)
    }

    pub(super) fn jwks_requests(&self) -> usize {
        self.jwks_requests.load(Ordering::Relaxed)
    }

    pub(super) fn token_lifetime(&self) -> Duration {
        Duration::from_millis(self.token_lifetime_ms.load(Ordering::Relaxed))
    }

    pub(super) fn set_token_lifetime(&self, lifetime: Duration) {
        self.token_lifetime_ms
            .store(duration_ms(lifetime), Ordering::Relaxed);
    }

    pub(super) fn audience_style(&self) -> AudienceErrorStyle {
        match self.audience_style.load(Ordering::Relaxed) {
            1 => AudienceErrorStyle::InvalidAudience,
            _ => AudienceErrorStyle::TokenInvalid,
        }
    }

    pub(super) fn set_audience_error_style(&self, style: AudienceErrorStyle) {
        let value = match style {
            AudienceErrorStyle::TokenInvalid => 0,
            AudienceErrorStyle::InvalidAudience => 1,
        };
        self.audience_style.store(value, Ordering::Relaxed);
    }

    pub(super) fn create_org(&self, name: &str) -> String {
        let id = self.next_id();
        let mut data = self.write();
        data.events.processed_sequence += 1;
        data.orgs.insert(
            id.clone(),
            Org {
                id: id.clone(),
                name: name.to_owned(),
                primary_domain: primary_domain(name),
                sequence: 1,
                changed: wire::now(),
                metadata: BTreeMap::new(),
            },
        );
        id
    }

    pub(super) fn create_user(
        &self,
        org_id: &str,
        username: &str,
        machine_role: Option<ManagerRole>,
    ) -> String {
        let id = self.next_id();
        let mut data = self.write();
        assert!(
            data.orgs.contains_key(org_id),
            "stand-in: unknown org {org_id:?}"
        );
        let now = wire::now();
        let created_at = (!data.events.search_lag.is_zero()).then(Instant::now);
        // "user added" plus the initial profile/email events.
        data.events.processed_sequence += 2;
        data.users.insert(
            id.clone(),
            User {
                id: id.clone(),
                org_id: org_id.to_owned(),
                username: username.to_owned(),
                machine_role,
                given_name: username.to_owned(),
                family_name: "Tester".to_owned(),
                created: now,
                created_at,
                sequence: 2,
                changed: now,
                metadata: BTreeMap::new(),
                changes: Vec::new(),
            },
        );
        id
    }

    pub(super) fn issue_token(
        &self,
        user_id: &str,
        scopes: Vec<String>,
        lifetime: Option<Duration>,
        pat: bool,
    ) -> String {
        let token = random_token();
        let mut data = self.write();
        let Some(user) = data.users.get(user_id) else {
            panic!("stand-in: unknown user {user_id:?}");
        };
        assert!(
            !pat || user.machine_role.is_some(),
            "stand-in: PATs exist only for machine users; {user_id:?} is human"
        );
        let iat = wire::unix_secs(wire::now());
        data.tokens.insert(
            token.clone(),
            Token {
                user_id: user_id.to_owned(),
                scopes,
                // A lifetime too long to represent never expires.
                expires_at: lifetime.and_then(|l| Instant::now().checked_add(l)),
                pat,
                audience: Vec::new(),
                client_id: None,
                exp: lifetime.map(|l| iat.saturating_add(l.as_secs())),
                iat,
            },
        );
        token
    }

    pub(super) fn create_project(&self, org_id: &str) -> String {
        let id = self.next_id();
        let mut data = self.write();
        assert!(
            data.orgs.contains_key(org_id),
            "stand-in: unknown org {org_id:?}"
        );
        data.projects.insert(
            id.clone(),
            Project {
                org_id: org_id.to_owned(),
            },
        );
        id
    }

    /// Registers an API application; with `key`, returns its key file instead of a secret.
    pub(super) fn add_api_app(&self, project_id: &str, key: bool) -> (String, String) {
        let app_id = self.next_id();
        let mut data = self.write();
        assert!(
            data.projects.contains_key(project_id),
            "stand-in: unknown project {project_id:?}"
        );
        let client_id = format!("{app_id}@{project_id}");
        if key {
            drop(data);
            let generated = super::keys::generate_rsa_key();
            let key_id = self.next_id();
            let mut data = self.write();
            data.app_keys
                .insert(key_id.clone(), (client_id.clone(), generated.public_der));
            data.apps.insert(
                client_id.clone(),
                ApiApp {
                    project_id: project_id.to_owned(),
                    secret: None,
                },
            );
            let file = serde_json::json!({
                "type": "application",
                "keyId": key_id,
                "key": generated.private_pem,
                "clientId": client_id,
                "appId": app_id,
            })
            .to_string();
            return (client_id, file);
        }
        let secret: String = rand::rng()
            .sample_iter(rand::distr::Alphanumeric)
            .take(64)
            .map(char::from)
            .collect();
        data.apps.insert(
            client_id.clone(),
            ApiApp {
                project_id: project_id.to_owned(),
                secret: Some(secret.clone()),
            },
        );
        (client_id, secret)
    }

    pub(super) fn grant_role(&self, user_id: &str, project_id: &str, role: &str) {
        let mut data = self.write();
        assert!(
            data.users.contains_key(user_id),
            "stand-in: unknown user {user_id:?}"
        );
        data.grants
            .entry(user_id.to_owned())
            .or_default()
            .entry(project_id.to_owned())
            .or_default()
            .insert(role.to_owned());
    }

    pub(super) fn remove_role(&self, user_id: &str, project_id: &str, role: &str) {
        let mut data = self.write();
        if let Some(roles) = data
            .grants
            .get_mut(user_id)
            .and_then(|projects| projects.get_mut(project_id))
        {
            roles.remove(role);
        }
    }

    /// Adds a signing key; a published one signs the JWTs issued from now on. Returns its key id.
    pub(super) fn add_signing_key(&self, published: bool) -> String {
        let generated = super::keys::generate_rsa_key();
        let kid = self.next_id();
        self.write().signing_keys.push(SigningKey {
            kid: kid.clone(),
            private_pem: generated.private_pem,
            public_der: generated.public_der,
            published,
        });
        kid
    }

    /// Stores a JWT access token so that userinfo, the APIs and introspection know it too.
    pub(super) fn store_token(&self, token: String, entry: Token) {
        self.write().tokens.insert(token, entry);
    }

    pub(super) fn revoke_token(&self, token: &str) {
        self.write().tokens.remove(token);
    }

    pub(super) fn add_client_secret(&self, user_id: &str) -> (String, String) {
        let secret: String = rand::rng()
            .sample_iter(rand::distr::Alphanumeric)
            .take(64)
            .map(char::from)
            .collect();
        let mut data = self.write();
        let client_id = match data.users.get(user_id) {
            Some(user) if user.machine_role.is_some() => user.username.clone(),
            Some(_) => panic!(
                "stand-in: client secrets exist only for machine users; {user_id:?} is human"
            ),
            None => panic!("stand-in: unknown user {user_id:?}"),
        };
        data.clients.insert(
            client_id.clone(),
            Client {
                user_id: user_id.to_owned(),
                secret: secret.clone(),
            },
        );
        (client_id, secret)
    }

    pub(super) fn remove_client_secret(&self, client_id: &str) {
        self.write().clients.remove(client_id);
    }

    /// Registers a new key for a machine user and returns the key file ZITADEL would hand out.
    pub(super) fn add_machine_key(&self, user_id: &str) -> String {
        let key = super::keys::generate_rsa_key();
        let key_id = self.next_id();
        let mut data = self.write();
        match data.users.get(user_id) {
            Some(user) if user.machine_role.is_some() => {}
            Some(_) => {
                panic!("stand-in: keys exist only for machine users; {user_id:?} is human")
            }
            None => panic!("stand-in: unknown user {user_id:?}"),
        }
        data.machine_keys.insert(
            key_id.clone(),
            MachineKey {
                user_id: user_id.to_owned(),
                public_der: key.public_der,
            },
        );
        serde_json::json!({
            "type": "serviceaccount",
            "keyId": key_id,
            "key": key.private_pem,
            "userId": user_id,
        })
        .to_string()
    }

    pub(super) fn remove_machine_key(&self, key_id: &str) {
        self.write().machine_keys.remove(key_id);
    }

    /// Revokes every OAuth access token (not PATs) of a user; returns how many.
    pub(super) fn revoke_tokens_of(&self, user_id: &str) -> usize {
        let mut data = self.write();
        let before = data.tokens.len();
        data.tokens.retain(|_, t| t.pat || t.user_id != user_id);
        before - data.tokens.len()
    }

    pub(super) fn set_metadata(&self, user_id: &str, key: &str, value: &[u8]) {
        let mut guard = self.write();
        let data = &mut *guard;
        let Some(user) = data.users.get_mut(user_id) else {
            panic!("stand-in: unknown user {user_id:?}");
        };
        if value.is_empty() {
            if user.metadata.contains_key(key) {
                user.remove_metadata(key, &mut data.events);
            }
        } else {
            user.set_metadata(key, value.to_vec(), wire::now(), &mut data.events);
        }
    }

    pub(super) fn set_org_metadata(&self, org_id: &str, key: &str, value: &[u8]) {
        let mut guard = self.write();
        let data = &mut *guard;
        let Some(org) = data.orgs.get_mut(org_id) else {
            panic!("stand-in: unknown org {org_id:?}");
        };
        if value.is_empty() {
            if org.metadata.contains_key(key) {
                org.remove_metadata(key, &mut data.events);
            }
        } else {
            org.set_metadata(key, value.to_vec(), wire::now(), &mut data.events);
        }
    }

    pub(super) fn org_metadata_of(&self, org_id: &str) -> BTreeMap<String, Vec<u8>> {
        self.read()
            .orgs
            .get(org_id)
            .map(|org| {
                org.metadata
                    .iter()
                    .map(|(key, entry)| (key.clone(), entry.value.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub(super) fn metadata_of(&self, user_id: &str) -> BTreeMap<String, Vec<u8>> {
        self.read()
            .users
            .get(user_id)
            .map(|user| {
                user.metadata
                    .iter()
                    .map(|(key, entry)| (key.clone(), entry.value.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }
}

fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
