//! Benchmark fixture: the ZITADEL stand-in on a given address, seeded with the bench user, a service user and
//! many caller tokens, plus one token each for many other users with the same metadata; writes them to a JSON
//! file and serves upstream call counts on a control address.
//! Usage: `bench_zitadel <listen> <control-listen> <token-count> <distinct-users> <fixture.json>`.

#[path = "../common.rs"]
mod common;

use std::sync::Arc;

use axum::{Router, routing::get};
use zitadel_standin::{ManagerRole, StandIn};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    const USAGE: &str = "usage: bench_zitadel <listen> <control-listen> <token-count> <distinct-users> <fixture.json>";
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, control, count, distinct, fixture] = args.as_slice() else {
        return Err(USAGE.into());
    };
    let count: usize = count.parse()?;
    let distinct: usize = distinct.parse()?;

    let standin = StandIn::start_on(listen.parse()?).await?;
    standin.set_recording(false);
    let org = standin.create_org("Bench");
    let user = standin.create_user(&org, "bench.user");
    for (key, value) in common::METADATA {
        standin.set_metadata(&user, key, value);
    }
    // Whose metadata the management loads read and write (the bench user is an admin there).
    let target = standin.create_user(&org, "bench.target");
    for (key, value) in common::METADATA {
        standin.set_metadata(&target, key, value);
    }
    let service_user = standin.create_service_user(&org, "usermeta", ManagerRole::IamOwner);
    let tokens: Vec<String> = (0..count)
        .map(|_| standin.issue_token(&user, common::SCOPES))
        .collect();
    let distinct_tokens: Vec<String> = (0..distinct)
        .map(|i| {
            let other = standin.create_user(&org, &format!("bench.user{i}"));
            for (key, value) in common::METADATA {
                standin.set_metadata(&other, key, value);
            }
            standin.issue_token(&other, common::SCOPES)
        })
        .collect();
    let json = serde_json::json!({
        "url": standin.url(),
        "user_id": user,
        "target_user_id": target,
        "service_pat": standin.issue_pat(&service_user),
        "tokens": tokens,
        "distinct_tokens": distinct_tokens,
    });
    std::fs::write(fixture, serde_json::to_vec(&json)?)?;

    let standin = Arc::new(standin);
    let counts = Router::new().route(
        "/userinfo_requests",
        get(move || {
            let standin = Arc::clone(&standin);
            async move { standin.userinfo_requests().to_string() }
        }),
    );
    let listener = tokio::net::TcpListener::bind(control).await?;
    axum::serve(listener, counts).await?;
    Ok(())
}
