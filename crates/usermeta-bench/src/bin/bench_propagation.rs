//! How long a write through one replica takes to be served by the others: for each of `count` writes of
//! `profile.bench` (through `--write-via`, e.g. a load balancer, or else through each replica in turn), every
//! replica is polled with GetMyMetadata (its cached path) from the moment the write returned until it serves
//! the new value. Each replica has the old value cached when the write starts, so what is measured is the
//! invalidation reaching it, not a cold read.
//!
//! Samples are the replicas that did not take the write (through a balancer: all of them, as which one took
//! it is not known).
//!
//! Usage: `bench_propagation <token> <count> <replica,replica,...> [--write-via ADDR]`. Prints one JSON line:
//! `{"samples","p50_ms","p99_ms","max_ms","over_1s"}`; exits 1 when a replica never serves a value within 5 s.

use std::time::{Duration, Instant};

use tonic::{Request, transport::Channel};
use usermeta::api::pb::{
    GetMyMetadataRequest, MetadataEntry, MetadataValue, SetMetadataRequest, metadata_value::Kind,
    user_metadata_service_client::UserMetadataServiceClient,
};

const KEY: &str = "profile.bench";
/// Longer than this and the write counts as lost to that replica.
const GIVE_UP: Duration = Duration::from_secs(5);
/// Between two polls of one replica: short beside the times measured, long beside a cached read.
const POLL_EVERY: Duration = Duration::from_micros(500);

type Client = UserMetadataServiceClient<Channel>;

fn authed<T>(
    message: T,
    token: &str,
) -> Result<Request<T>, Box<dyn std::error::Error + Send + Sync>> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(request)
}

async fn connect(addr: &str) -> Result<Client, Box<dyn std::error::Error + Send + Sync>> {
    let channel = Channel::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await?;
    Ok(UserMetadataServiceClient::new(channel))
}

async fn value(
    client: &mut Client,
    token: &str,
) -> Result<Option<String>, Box<dyn std::error::Error + Send + Sync>> {
    let answer = client
        .get_my_metadata(authed(
            GetMyMetadataRequest {
                keys: vec![KEY.to_owned()],
                ..Default::default()
            },
            token,
        )?)
        .await?
        .into_inner();
    Ok(answer
        .metadata
        .into_iter()
        .next()
        .and_then(|m| match m.value?.kind? {
            Kind::Text(text) => Some(text),
            Kind::Binary(_) => None,
        }))
}

async fn write(
    client: &mut Client,
    token: &str,
    value: &str,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    client
        .set_metadata(authed(
            SetMetadataRequest {
                entries: vec![MetadataEntry {
                    key: KEY.to_owned(),
                    value: Some(MetadataValue {
                        kind: Some(Kind::Text(value.to_owned())),
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            },
            token,
        )?)
        .await?;
    Ok(())
}

/// How long after `since` `client` first serves `want`.
async fn seen_after(
    mut client: Client,
    token: String,
    want: String,
    since: Instant,
) -> Result<Duration, String> {
    loop {
        let served = value(&mut client, &token)
            .await
            .map_err(|e| e.to_string())?;
        if served.as_deref() == Some(want.as_str()) {
            return Ok(since.elapsed());
        }
        if since.elapsed() > GIVE_UP {
            return Err(format!("still {served:?} after {GIVE_UP:?}, want {want}"));
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank].as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    const USAGE: &str =
        "usage: bench_propagation <token> <count> <replica,replica,...> [--write-via ADDR]";
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (token, count, replicas) = match args.as_slice() {
        [token, count, replicas, ..] => (token.clone(), count.parse::<usize>()?, replicas.clone()),
        _ => return Err(USAGE.into()),
    };
    let write_via = match &args[3..] {
        [] => None,
        [flag, addr] if flag == "--write-via" => Some(addr.clone()),
        _ => return Err(USAGE.into()),
    };
    let mut readers = Vec::new();
    for addr in replicas.split(',') {
        readers.push(connect(addr).await?);
    }
    let mut writers = match &write_via {
        Some(addr) => vec![connect(addr).await?],
        None => readers.clone(),
    };
    let run = std::process::id();
    let mut samples = Vec::with_capacity(count * readers.len());
    for i in 0..count {
        // Every replica holds the current value in its cache before the write.
        for reader in &mut readers {
            value(reader, &token).await?;
        }
        let want = format!("{run}-{i}");
        let writer = i % writers.len();
        write(&mut writers[writer], &token, &want).await?;
        let written = Instant::now();
        // Written through a replica directly: the others (the writer invalidates synchronously). Through a
        // balancer: every replica, one of which wrote.
        let polls: Vec<_> = readers
            .iter()
            .enumerate()
            .filter(|(replica, _)| write_via.is_some() || *replica != writer)
            .map(|(replica, reader)| {
                (
                    replica,
                    tokio::spawn(seen_after(
                        reader.clone(),
                        token.clone(),
                        want.clone(),
                        written,
                    )),
                )
            })
            .collect();
        for (replica, poll) in polls {
            match poll.await? {
                Ok(took) => samples.push(took),
                Err(problem) => {
                    return Err(format!(
                        "write {i}: replica {replica} ({}): {problem}",
                        replicas.split(',').nth(replica).unwrap_or("?")
                    )
                    .into());
                }
            }
        }
    }
    samples.sort();
    let over_1s = samples
        .iter()
        .filter(|took| **took > Duration::from_secs(1))
        .count();
    println!(
        "{}",
        serde_json::json!({
            "samples": samples.len(),
            "p50_ms": percentile(&samples, 0.50),
            "p99_ms": percentile(&samples, 0.99),
            "max_ms": percentile(&samples, 1.0),
            "over_1s": over_1s,
        })
    );
    Ok(())
}
