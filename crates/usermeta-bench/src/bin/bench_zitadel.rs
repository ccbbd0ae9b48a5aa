//! Benchmark fixture: the ZITADEL stand-in on a given address, seeded with the bench user, a service user and
//! many caller tokens, plus one token each for many other users with the same metadata; writes them to a JSON
//! file and serves upstream call counts on a control address. With a JWT count and audience, it also mints that
//! many JWT access tokens of the bench user carrying the metadata claim (`jwts`), signed by the key it
//! publishes at `/oauth/v2/keys`: every GetMyMetadata with source TOKEN can then carry a token not seen before.
//! Usage: `bench_zitadel <listen> <control-listen> <token-count> <distinct-users> <fixture.json> [<jwt-count> <jwt-audience>]`.

#[path = "../common.rs"]
mod common;

use std::sync::Arc;

use axum::{Router, routing::get};
use zitadel_standin::{ManagerRole, StandIn};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    const USAGE: &str = "usage: bench_zitadel <listen> <control-listen> <token-count> <distinct-users> <fixture.json> [<jwt-count> <jwt-audience>]";
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (args, jwts) = match args.as_slice() {
        [rest @ .., jwt_count, audience] if rest.len() == 5 => (rest, Some((jwt_count, audience))),
        all => (all, None),
    };
    let [listen, control, count, distinct, fixture] = args else {
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
    let jwts = match jwts {
        None => Vec::new(),
        Some((count, audience)) => mint_jwts(&standin, &user, count.parse()?, audience),
    };
    let json = serde_json::json!({
        "url": standin.url(),
        "user_id": user,
        "target_user_id": target,
        "service_pat": standin.issue_pat(&service_user),
        "tokens": tokens,
        "distinct_tokens": distinct_tokens,
        "jwts": jwts,
    });
    std::fs::write(fixture, serde_json::to_vec(&json)?)?;

    let standin = Arc::new(standin);
    let standin_all = Arc::clone(&standin);
    let counts = Router::new().route(
        "/userinfo_requests",
        get(move || {
            let standin = Arc::clone(&standin);
            async move { standin.userinfo_requests().to_string() }
        }),
    );
    let counts = counts.route(
        "/all_requests",
        get(move || {
            let standin = Arc::clone(&standin_all);
            async move { standin.all_requests().to_string() }
        }),
    );
    let listener = tokio::net::TcpListener::bind(control).await?;
    axum::serve(listener, counts).await?;
    Ok(())
}

/// `count` JWT access tokens of `user` for `audience`, with the metadata scope (so the claim), each one new;
/// signed on every core, as RSA signatures take a while.
fn mint_jwts(standin: &StandIn, user: &str, count: usize, audience: &str) -> Vec<String> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per_thread = count.div_ceil(threads);
    std::thread::scope(|scope| {
        let minting: Vec<_> = (0..threads)
            .map(|i| {
                let n = per_thread.min(count.saturating_sub(i * per_thread));
                scope.spawn(move || {
                    (0..n)
                        .map(|_| standin.issue_jwt(user, common::SCOPES, &[audience]))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        minting
            .into_iter()
            .flat_map(|thread| thread.join().unwrap_or_default())
            .collect()
    })
}
