//! Any user's metadata from memory: another user's listing, read with the service credential, is kept per user
//! and organisation scope, so warm admin reads (ListMetadata, BatchGetMetadata) cost ZITADEL nothing, while
//! every write through usermeta, another replica's write (Redis) and ZITADEL's event (the webhook) drop it, a
//! read after a write never sees an older value, and concurrent misses share one read.

use usermeta::{
    api::pb::{
        BatchGetMetadataRequest, ListMetadataRequest, SetMetadataRequest,
        user_metadata_service_client::UserMetadataServiceClient,
    },
    fleet::RedisConfig,
};

use crate::support::*;

const KEY: &str = "8lT1WbPq3yS9kd0vRzXh4mQe";

type Client = UserMetadataServiceClient<tonic::transport::Channel>;

fn list(user_id: &str, org_id: Option<&str>) -> ListMetadataRequest {
    ListMetadataRequest {
        user_id: user_id.to_owned(),
        organization_id: org_id.unwrap_or_default().to_owned(),
        ..Default::default()
    }
}

/// The value of `key` in `user_id`'s listing as the admin reads it through `client`.
async fn value_of(
    client: &Client,
    token: &str,
    request: ListMetadataRequest,
    key: &str,
) -> Option<String> {
    let answer = client
        .clone()
        .list_metadata(authed(request, token))
        .await
        .unwrap()
        .into_inner();
    pairs(&answer.metadata)
        .into_iter()
        .find(|(k, _)| k == key)
        .and_then(|(_, value)| value)
}

async fn set(client: &Client, token: &str, user_id: &str, org_id: &str, key: &str, value: &str) {
    client
        .clone()
        .set_metadata(authed(
            SetMetadataRequest {
                user_id: user_id.to_owned(),
                organization_id: org_id.to_owned(),
                entries: vec![entry(key, text(value))],
            },
            token,
        ))
        .await
        .unwrap();
}

#[tokio::test]
async fn warm_admin_reads_cost_zitadel_nothing() {
    for api in [ApiChoice::V1, ApiChoice::V2] {
        let app = TestApp::builder().api(api).spawn().await;
        let bob = || list(&app.bob, Some(&app.other_org));
        assert!(
            value_of(&app.client, &app.admin_token, bob(), "ContractNumber")
                .await
                .is_some()
        );
        let batch = || BatchGetMetadataRequest {
            user_ids: vec![app.alice.clone(), app.bob.clone()],
            ..Default::default()
        };
        app.client
            .clone()
            .batch_get_metadata(authed(batch(), &app.admin_token))
            .await
            .unwrap();
        app.standin.clear_requests();
        for _ in 0..5 {
            value_of(&app.client, &app.admin_token, bob(), "ContractNumber").await;
            let answer = app
                .client
                .clone()
                .batch_get_metadata(authed(batch(), &app.admin_token))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(answer.results.len(), 2);
            assert!(answer.results.iter().all(|result| result.error.is_none()));
        }
        assert!(
            app.standin.requests().is_empty(),
            "{api:?}: {:?}",
            app.standin.requests()
        );
    }
}

#[tokio::test]
async fn concurrent_misses_for_one_user_share_one_read() {
    let app = TestApp::spawn().await;
    let reads = (0..16).map(|_| {
        let client = app.client.clone();
        let request = list(&app.bob, Some(&app.other_org));
        let token = app.admin_token.clone();
        async move { value_of(&client, &token, request, "ContractNumber").await }
    });
    // The admin is identified first, so only the listing's reads are counted.
    value_of(
        &app.client,
        &app.admin_token,
        list(&app.alice, None),
        "ContractNumber",
    )
    .await;
    app.standin.clear_requests();
    let values = futures::future::join_all(reads).await;
    assert!(
        values
            .iter()
            .all(|value| value == &values[0] && value.is_some())
    );
    assert_eq!(app.metadata_requests().len(), 1);
}

#[tokio::test]
async fn a_read_after_a_write_never_sees_an_older_value_while_reads_race_it() {
    let app = TestApp::spawn().await;
    let bob = || list(&app.bob, Some(&app.other_org));
    // Readers keep the listing warm (and refill it) all along.
    let stop = tokio::sync::watch::Sender::new(false);
    let readers: Vec<_> = (0..4)
        .map(|_| {
            let (client, token, request) = (app.client.clone(), app.admin_token.clone(), bob());
            let mut stopped = stop.subscribe();
            tokio::spawn(async move {
                while !*stopped.borrow_and_update() {
                    value_of(&client, &token, request.clone(), "tier").await;
                }
            })
        })
        .collect();
    for i in 0..20 {
        let value = format!("v{i}");
        set(
            &app.client,
            &app.admin_token,
            &app.bob,
            &app.other_org,
            "tier",
            &value,
        )
        .await;
        assert_eq!(
            value_of(&app.client, &app.admin_token, bob(), "tier")
                .await
                .as_deref(),
            Some(value.as_str()),
            "read after write {i}"
        );
    }
    stop.send_replace(true);
    for reader in readers {
        reader.await.unwrap();
    }
}

#[tokio::test]
async fn another_replicas_write_drops_the_listing_through_redis() {
    let app = TestApp::spawn().await;
    let redis = Redis::start();
    let replica = || app.another().redis(RedisConfig::new(redis.url())).spawn();
    let (a, b) = (replica().await, replica().await);
    for replica in [&a, &b] {
        eventually_health(
            replica.addr,
            usermeta::fleet::HEALTH_SERVICE,
            tonic_health::pb::health_check_response::ServingStatus::Serving,
        )
        .await;
    }
    let bob = || list(&app.bob, Some(&app.other_org));
    assert_eq!(
        value_of(&a.client, &app.admin_token, bob(), "tier").await,
        None
    );
    set(
        &b.client,
        &app.admin_token,
        &app.bob,
        &app.other_org,
        "tier",
        "gold",
    )
    .await;
    eventually("replica a sees b's write", || async {
        (value_of(&a.client, &app.admin_token, bob(), "tier")
            .await
            .as_deref()
            == Some("gold"))
        .then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_event_drops_the_users_listings_under_every_organisation_scope() {
    let app = TestApp::spawn().await;
    let replica = app.another().webhook(KEY).spawn().await;
    let events = format!("http://{}/zitadel/events", replica.webhook_addr.unwrap());
    // Alice's listing, read under two scopes: the service user's own organisation (none named) and hers named.
    let scopes = [None, Some(app.org.as_str())];
    for org in scopes {
        assert_eq!(
            value_of(
                &replica.client,
                &app.admin_token,
                list(&app.alice, org),
                "tier"
            )
            .await,
            None
        );
    }
    // Changed in ZITADEL itself: the listings in memory still answer, without asking ZITADEL.
    app.standin.set_metadata(&app.alice, "tier", b"gold");
    app.standin.clear_requests();
    for org in scopes {
        assert_eq!(
            value_of(
                &replica.client,
                &app.admin_token,
                list(&app.alice, org),
                "tier"
            )
            .await,
            None
        );
    }
    assert!(app.metadata_requests().is_empty());
    // ZITADEL's event drops both.
    let body = set_event(&app.alice, "tier", b"gold");
    let (status, answer) = post(&events, Some(&signature(KEY, now(), &body)), body).await;
    assert_eq!(status, 200, "{answer}");
    for org in scopes {
        assert_eq!(
            value_of(
                &replica.client,
                &app.admin_token,
                list(&app.alice, org),
                "tier"
            )
            .await
            .as_deref(),
            Some("gold"),
            "{org:?}"
        );
    }
    assert_eq!(app.metadata_requests().len(), 2, "one read per scope");
}

#[tokio::test]
async fn without_the_cache_every_read_reaches_zitadel() {
    let app = TestApp::builder().no_metadata_cache().spawn().await;
    let bob = || list(&app.bob, Some(&app.other_org));
    value_of(&app.client, &app.admin_token, bob(), "ContractNumber").await;
    app.standin.clear_requests();
    for _ in 0..3 {
        value_of(&app.client, &app.admin_token, bob(), "ContractNumber").await;
    }
    assert_eq!(app.metadata_requests().len(), 3);
}
