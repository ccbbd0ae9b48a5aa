//! Calling usermeta: a client, requests with a bearer token, a request id or a deadline, metadata values, and
//! what the answers and ZITADEL's recorded requests say.

use std::{net::SocketAddr, time::Duration};

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use tonic::{Code, Request, Status, Streaming, transport::Channel};
use tonic_types::StatusExt;
use usermeta::api::pb::{self, user_metadata_service_client::UserMetadataServiceClient};
use zitadel_standin::RecordedRequest;

pub(crate) async fn connect(addr: SocketAddr) -> UserMetadataServiceClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connects");
    UserMetadataServiceClient::new(channel)
}

/// A client of Envoy's Check on the ext_authz listener at `addr`.
pub(crate) async fn authz_client(addr: SocketAddr) -> AuthorizationClient<Channel> {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .expect("connects");
    AuthorizationClient::new(channel)
}

/// A request with `authorization: Bearer <token>`.
pub(crate) fn authed<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// Sends `id` as the caller's request id (`x-request-id`).
pub(crate) fn with_request_id<T>(mut request: Request<T>, id: &str) -> Request<T> {
    request
        .metadata_mut()
        .insert("x-request-id", id.parse().expect("an x-request-id value"));
    request
}

/// Sends `timeout` as the caller's deadline (`grpc-timeout`) without a client-side timer, so a test sees
/// usermeta's own answer at the deadline (a client timer of the same length races it on a loaded machine).
pub(crate) fn with_deadline<T>(mut request: Request<T>, timeout: Duration) -> Request<T> {
    let value = format!("{}m", timeout.as_millis());
    request
        .metadata_mut()
        .insert("grpc-timeout", value.parse().expect("a grpc-timeout value"));
    request
}

/// A text value.
pub(crate) fn text(value: &str) -> Option<pb::MetadataValue> {
    Some(pb::MetadataValue {
        kind: Some(pb::metadata_value::Kind::Text(value.into())),
    })
}

/// A binary value.
pub(crate) fn binary(value: &[u8]) -> Option<pb::MetadataValue> {
    Some(pb::MetadataValue {
        kind: Some(pb::metadata_value::Kind::Binary(value.to_vec())),
    })
}

pub(crate) fn entry(key: &str, value: Option<pb::MetadataValue>) -> pb::MetadataEntry {
    pb::MetadataEntry {
        key: key.into(),
        value,
        ..Default::default()
    }
}

/// The `ErrorInfo.reason` of a status, if it has one.
pub(crate) fn reason(status: &Status) -> Option<String> {
    status.get_details_error_info().map(|info| info.reason)
}

/// Asserts code and reason, and returns the status for further checks.
#[track_caller]
pub(crate) fn assert_status(status: &Status, code: Code, expected_reason: &str) {
    assert_eq!(status.code(), code, "unexpected status: {status:?}");
    assert_eq!(
        reason(status).as_deref(),
        Some(expected_reason),
        "unexpected reason in {status:?}"
    );
}

/// The field paths of a `BadRequest`.
pub(crate) fn violated_fields(status: &Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|bad| bad.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// The user a management call addressed: v1 names it in the path, v2 in the JSON body.
pub(crate) fn user_of(request: &RecordedRequest) -> String {
    match request.path.strip_prefix("/management/v1/users/") {
        Some(rest) => rest.split('/').next().unwrap_or_default().to_owned(),
        None => {
            let body: serde_json::Value = serde_json::from_slice(&request.body).unwrap();
            body["userId"].as_str().unwrap_or_default().to_owned()
        }
    }
}

/// The text of a returned value.
pub(crate) fn text_of(metadata: &pb::Metadata) -> Option<&str> {
    match metadata.value.as_ref()?.kind.as_ref()? {
        pb::metadata_value::Kind::Text(text) => Some(text),
        pb::metadata_value::Kind::Binary(_) => None,
    }
}

/// Keys and text values, for compact assertions.
pub(crate) fn pairs(metadata: &[pb::Metadata]) -> Vec<(String, Option<String>)> {
    metadata
        .iter()
        .map(|m| (m.key.clone(), text_of(m).map(str::to_owned)))
        .collect()
}

/// The caller's `profile.language` as `client` serves it (GetMyMetadata), or `<none>`.
pub(crate) async fn language(client: &UserMetadataServiceClient<Channel>, token: &str) -> String {
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

/// Opens a WatchMetadata stream for `user_id` (the caller when empty) and keys under `key_prefix`.
pub(crate) async fn watch(
    client: &UserMetadataServiceClient<Channel>,
    token: &str,
    user_id: &str,
    key_prefix: &str,
) -> Result<Streaming<pb::MetadataChange>, Status> {
    watch_in(client, token, user_id, "", key_prefix).await
}

/// [`watch`] naming the user's organisation.
pub(crate) async fn watch_in(
    client: &UserMetadataServiceClient<Channel>,
    token: &str,
    user_id: &str,
    org_id: &str,
    key_prefix: &str,
) -> Result<Streaming<pb::MetadataChange>, Status> {
    client
        .clone()
        .watch_metadata(authed(
            pb::WatchMetadataRequest {
                user_id: user_id.to_owned(),
                key_prefix: key_prefix.to_owned(),
                organization_id: org_id.to_owned(),
            },
            token,
        ))
        .await
        .map(tonic::Response::into_inner)
}

/// `writers` read-then-conditional-write increments of `key` (a decimal counter) of `user_id`, all at once,
/// spread over `apps` in turn: each reads the counter and its etag (ListMetadata) and writes it plus one under
/// `if_match`. Returns how many were written and how many ABORTED; any other outcome fails the test.
pub(crate) async fn increments(
    apps: &[&super::TestApp],
    token: &str,
    user_id: &str,
    writers: usize,
) -> (usize, usize) {
    let key = "counter";
    let tries = (0..writers).map(|i| {
        let mut client = apps[i % apps.len()].client.clone();
        async move {
            let listed = client
                .list_metadata(authed(
                    pb::ListMetadataRequest {
                        user_id: user_id.into(),
                        key_filter: Some(pb::KeyFilter {
                            key: key.into(),
                            r#match: pb::KeyMatch::Equals as i32,
                        }),
                        ..Default::default()
                    },
                    token,
                ))
                .await
                .unwrap()
                .into_inner();
            let read = &listed.metadata[0];
            let count: u64 = text_of(read).unwrap().parse().unwrap();
            client
                .set_metadata(authed(
                    pb::SetMetadataRequest {
                        user_id: user_id.into(),
                        entries: vec![pb::MetadataEntry {
                            if_match: read.etag.clone(),
                            ..entry(key, text(&(count + 1).to_string()))
                        }],
                        ..Default::default()
                    },
                    token,
                ))
                .await
        }
    });
    let outcomes = futures::future::join_all(tries).await;
    let mut written = 0;
    let mut aborted = 0;
    for outcome in outcomes {
        match outcome {
            Ok(_) => written += 1,
            Err(status) if status.code() == Code::Aborted => {
                assert_eq!(
                    reason(&status).as_deref(),
                    Some("ETAG_MISMATCH"),
                    "{status:?}"
                );
                aborted += 1;
            }
            Err(status) => panic!("an increment failed otherwise: {status:?}"),
        }
    }
    (written, aborted)
}
