//! What a conditional write costs beside a plain one, and what an etag costs a read. Starts the ZITADEL stand-in
//! and one usermeta in this process (with Redis when `--redis URL` is given, so conditional writes take the
//! fleet's lock), then times `count` sequential calls of each kind through a real gRPC client:
//!
//! - `plain`: SetMetadata of one key;
//! - `if_match`: SetMetadata of the same key with `if_match` (the etag read beforehand, outside the timing);
//! - `merge_patch`: SetMetadata of a JSON merge patch of one field;
//!
//! and the etag of one value of 100 bytes, 10 KiB and 500 kB (what each entry of a read adds).
//!
//! Usage: `bench_conditional [count] [--redis redis://127.0.0.1:6379]`. Prints one JSON line per kind:
//! `{"kind","count","p50_us","p99_us","mean_us"}`.

use std::time::{Duration, Instant};

use secrecy::SecretString;
use tonic::{Request, transport::Channel};
use usermeta::{
    api::{pb, pb::user_metadata_service_client::UserMetadataServiceClient},
    fleet::RedisConfig,
    policy::Policy,
    server::{Application, Config},
};
use usermeta_zitadel::{ServiceCredential, etag::etag, management::ApiChoice};
use zitadel_standin::{ManagerRole, StandIn};

const KEY: &str = "bench.prefs";

fn authed<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    if let Ok(value) = format!("Bearer {token}").parse() {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

fn report(kind: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q) as usize].as_secs_f64() * 1e6;
    let mean = samples.iter().map(Duration::as_secs_f64).sum::<f64>() / samples.len() as f64 * 1e6;
    println!(
        "{}",
        serde_json::json!({
            "kind": kind,
            "count": samples.len(),
            "p50_us": at(0.5).round(),
            "p99_us": at(0.99).round(),
            "mean_us": mean.round(),
        })
    );
}

fn set(user_id: &str, entry: pb::MetadataEntry) -> pb::SetMetadataRequest {
    pb::SetMetadataRequest {
        user_id: user_id.into(),
        entries: vec![entry],
        ..Default::default()
    }
}

fn text(value: String) -> Option<pb::MetadataValue> {
    Some(pb::MetadataValue {
        kind: Some(pb::metadata_value::Kind::Text(value)),
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let count: usize = args
        .first()
        .filter(|arg| !arg.starts_with("--"))
        .map_or(Ok(500), |arg| arg.parse())?;
    let redis = args
        .iter()
        .position(|arg| arg == "--redis")
        .and_then(|i| args.get(i + 1).cloned());

    let standin = StandIn::start().await?;
    let org = standin.create_org("Bench");
    let admin = standin.create_user(&org, "admin");
    let user = standin.create_user(&org, "user");
    let service = standin.create_service_user(&org, "usermeta", ManagerRole::IamOwner);
    let pat = standin.issue_pat(&service);
    let token = standin.issue_token(
        &admin,
        &["openid", "urn:zitadel:iam:org:project:id:zitadel:aud"],
    );
    let mut config = Config::new(
        standin.url().parse()?,
        ServiceCredential::Pat(SecretString::from(pat)),
    );
    config.zitadel.management_api = ApiChoice::V1;
    config.zitadel.upstream_budget = None;
    config.policy = Policy::new([admin.clone()], Vec::new());
    config.options.redis = redis.map(RedisConfig::new);
    let app = Application::build(config).await?;
    let addr = app.local_addr();
    tokio::spawn(app.run_until(std::future::pending()));
    let channel = Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let mut client = UserMetadataServiceClient::new(channel);

    let plain = |i: usize| pb::MetadataEntry {
        key: KEY.into(),
        value: text(format!(r#"{{"n":{i}}}"#)),
        ..Default::default()
    };
    // Warm up: the connection, the caller cache, ZITADEL's organisation lookups.
    for i in 0..50 {
        client
            .set_metadata(authed(set(&user, plain(i)), &token))
            .await?;
    }

    let mut samples = Vec::with_capacity(count);
    for i in 0..count {
        let request = authed(set(&user, plain(i)), &token);
        let started = Instant::now();
        client.set_metadata(request).await?;
        samples.push(started.elapsed());
    }
    report("plain", samples);

    let mut samples = Vec::with_capacity(count);
    for i in 0..count {
        let listed = client
            .list_metadata(authed(
                pb::ListMetadataRequest {
                    user_id: user.clone(),
                    ..Default::default()
                },
                &token,
            ))
            .await?
            .into_inner();
        let read = listed
            .metadata
            .iter()
            .find(|m| m.key == KEY)
            .map(|m| m.etag.clone());
        let request = authed(
            set(
                &user,
                pb::MetadataEntry {
                    if_match: read.unwrap_or_default(),
                    ..plain(i)
                },
            ),
            &token,
        );
        let started = Instant::now();
        client.set_metadata(request).await?;
        samples.push(started.elapsed());
    }
    report("if_match", samples);

    let mut samples = Vec::with_capacity(count);
    for i in 0..count {
        let request = authed(
            set(
                &user,
                pb::MetadataEntry {
                    key: KEY.into(),
                    json_merge_patch: format!(r#"{{"m":{i}}}"#),
                    ..Default::default()
                },
            ),
            &token,
        );
        let started = Instant::now();
        client.set_metadata(request).await?;
        samples.push(started.elapsed());
    }
    report("merge_patch", samples);

    for (kind, size) in [
        ("etag_100B", 100),
        ("etag_10KiB", 10 * 1024),
        ("etag_500kB", 500_000),
    ] {
        let value = vec![b'x'; size];
        let rounds = 2000;
        let mut samples = Vec::with_capacity(rounds);
        for _ in 0..rounds {
            let started = Instant::now();
            std::hint::black_box(etag(KEY, std::hint::black_box(&value)));
            samples.push(started.elapsed());
        }
        report(kind, samples);
    }
    Ok(())
}
