//! How usermeta's calls reach ZITADEL: over one pooled client whose connections are kept open and reused
//! by every endpoint, in HTTP/1.1 or (with `Http2::Always`) HTTP/2 multiplexed over one connection.

use std::time::Duration;

use http::Version;
use usermeta::{
    api::pb::{GetMyMetadataRequest, ListMetadataRequest, SetMetadataRequest},
    policy::Policy,
};
use usermeta_zitadel::Http2;
use zitadel_standin::{Fault, FaultKind};

use crate::support::*;

/// Options with the caller cache off, so that every call asks ZITADEL.
#[tokio::test]
async fn calls_to_every_zitadel_endpoint_reuse_one_kept_alive_connection() {
    let app = TestApp::spawn().await;
    let other = app
        .another()
        .no_cache()
        .http2(Http2::Negotiate)
        .spawn()
        .await;
    let mut client = other.client.clone();
    let before = app.standin.connections_accepted();
    for round in 0..10 {
        // userinfo (the caller's token) and the management API (the service credential), in turn.
        client
            .get_my_metadata(authed(GetMyMetadataRequest::default(), &app.alice_token))
            .await
            .unwrap();
        client
            .list_metadata(authed(
                ListMetadataRequest {
                    user_id: app.bob.clone(),
                    organization_id: app.other_org.clone(),
                    ..Default::default()
                },
                &app.admin_token,
            ))
            .await
            .unwrap();
        client
            .set_metadata(authed(
                SetMetadataRequest {
                    user_id: app.bob.clone(),
                    organization_id: app.other_org.clone(),
                    entries: vec![entry("notes.round", text(&round.to_string()))],
                },
                &app.admin_token,
            ))
            .await
            .unwrap();
    }
    let requests = app.standin.requests();
    assert!(
        requests.iter().any(|r| r.is_userinfo()) && requests.iter().any(|r| r.is_management()),
        "both the caller's and the service's endpoints were called"
    );
    assert!(requests.len() >= 40, "{} upstream requests", requests.len());
    assert_eq!(
        app.standin.connections_accepted() - before,
        1,
        "{} sequential upstream requests should share one connection",
        requests.len()
    );
    assert!(
        requests.iter().all(|r| r.version == Version::HTTP_11),
        "plain HTTP is HTTP/1.1 unless HTTP/2 is asked for"
    );
}

#[tokio::test]
async fn http2_always_multiplexes_concurrent_lookups_over_one_connection() {
    let app = TestApp::spawn().await;
    let other = app
        .another()
        .policy(Policy::default())
        .no_cache()
        .http2(Http2::Always)
        .spawn()
        .await;
    let client = other.client.clone();
    // Slow userinfo down so that all the lookups are in flight at once.
    app.standin.push_fault(Fault {
        path_prefix: "/oidc/v1/userinfo".into(),
        times: None,
        kind: FaultKind::Latency(Duration::from_millis(200)),
    });
    let tokens: Vec<String> = (0..30)
        .map(|_| app.standin.issue_token(&app.alice, FULL_SCOPES))
        .collect();
    let before = app.standin.connections_accepted();
    let calls = tokens.into_iter().map(|token| {
        let mut client = client.clone();
        tokio::spawn(async move {
            client
                .get_my_metadata(authed(GetMyMetadataRequest::default(), &token))
                .await
        })
    });
    for call in futures::future::join_all(calls).await {
        assert_eq!(call.unwrap().unwrap().into_inner().user_id, app.alice);
    }
    let userinfo: Vec<_> = app
        .standin
        .requests()
        .into_iter()
        .filter(|r| r.is_userinfo())
        .collect();
    assert_eq!(userinfo.len(), 30);
    assert!(userinfo.iter().all(|r| r.version == Version::HTTP_2));
    assert_eq!(
        app.standin.connections_accepted() - before,
        1,
        "30 concurrent lookups over HTTP/2 need one connection"
    );
}

/// An upstream that speaks HTTP/1.1 only (as some proxies do), answering anything with 200 `{}`.
async fn http1_only_upstream() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let answer = hyper::service::service_fn(|_| async {
                Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
                    bytes::Bytes::from_static(b"{}"),
                )))
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), answer),
            );
        }
    });
    url
}

#[tokio::test]
async fn http2_always_fails_clearly_against_a_server_that_speaks_only_http1() {
    let url = http1_only_upstream().await;
    let other = TestApp::builder()
        .zitadel_url(&url)
        .pat("service-pat")
        .policy(Policy::default())
        .no_cache()
        .http2(Http2::Always)
        .spawn()
        .await;
    let mut client = other.client.clone();
    let status = client
        .get_my_metadata(authed(GetMyMetadataRequest::default(), "caller-token"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert_eq!(reason(&status).as_deref(), Some("ZITADEL_UNREACHABLE"));
    assert!(
        status.message().contains("USERMETA_ZITADEL_HTTP2"),
        "the message names the setting to change: {status:?}"
    );
    assert!(!status.message().contains("caller-token"), "{status:?}");
}
