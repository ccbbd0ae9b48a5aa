//! Benchmark load for the cold path: one request at a time, each with a token not used before, so usermeta
//! must ask ZITADEL every time; or the same against the stand-in's userinfo called directly.
//! Usage: `bench_cold <usermeta|userinfo> <addr|url> <fixture.json> <first-token> <count> <out> <log> [same]`;
//! with `same`, every request carries the first token (usermeta's cached path, one request at a time).
//! Writes a summary to `<out>` and per-request latencies to `<log>` in h2load's formats, so the benchmark
//! reads both kinds of run the same way.

use std::{fmt::Write as _, time::Instant};

use tonic::{Request, transport::Channel};
use usermeta::api::pb::{
    GetMyMetadataRequest, user_metadata_service_client::UserMetadataServiceClient,
};

enum Target {
    Usermeta(UserMetadataServiceClient<Channel>),
    Userinfo(reqwest::Client, String),
}

impl Target {
    /// One call with `token`; an error says what went wrong.
    async fn call(&mut self, token: &str) -> Result<(), String> {
        let bearer = format!("Bearer {token}");
        match self {
            Target::Usermeta(client) => {
                let mut request = Request::new(GetMyMetadataRequest::default());
                request.metadata_mut().insert(
                    "authorization",
                    bearer.parse().map_err(|_| "token is no header value")?,
                );
                let answer = client
                    .get_my_metadata(request)
                    .await
                    .map_err(|status| format!("{:?}: {}", status.code(), status.message()))?;
                if answer.get_ref().metadata.is_empty() {
                    return Err("GetMyMetadata answered without metadata".into());
                }
                Ok(())
            }
            Target::Userinfo(http, url) => {
                let response = http
                    .get(url.as_str())
                    .header("authorization", bearer)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                let status = response.status();
                response.bytes().await.map_err(|e| e.to_string())?;
                if !status.is_success() {
                    return Err(format!("userinfo answered {status}"));
                }
                Ok(())
            }
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    const USAGE: &str = "usage: bench_cold <usermeta|userinfo> <addr|url> <fixture.json> <first-token> <count> <out> <log> [same]";
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (args, same) = match args.split_last() {
        Some((last, rest)) if last == "same" => (rest, true),
        _ => (args.as_slice(), false),
    };
    let [kind, target, fixture, first, count, out, log] = args else {
        return Err(USAGE.into());
    };
    let fixture: serde_json::Value = serde_json::from_slice(&std::fs::read(fixture)?)?;
    let (first, count): (usize, usize) = (first.parse()?, count.parse()?);
    let tokens: Vec<&str> = fixture["tokens"]
        .as_array()
        .ok_or("fixture has no tokens")?
        .iter()
        .filter_map(|t| t.as_str())
        .skip(first)
        .take(if same { 1 } else { count })
        .collect();
    let tokens = if same { tokens.repeat(count) } else { tokens };
    if tokens.len() < count {
        return Err(format!(
            "the fixture has {} tokens from {first}, not {count}",
            tokens.len()
        )
        .into());
    }
    let mut target = match kind.as_str() {
        "usermeta" => Target::Usermeta(UserMetadataServiceClient::new(
            Channel::from_shared(format!("http://{target}"))?
                .connect()
                .await?,
        )),
        "userinfo" => Target::Userinfo(reqwest::Client::new(), target.clone()),
        _ => return Err(USAGE.into()),
    };

    let mut latencies = String::with_capacity(count * 24);
    let mut failed = 0usize;
    let started = Instant::now();
    for token in tokens {
        let sent = Instant::now();
        let result = target.call(token).await;
        let took = sent.elapsed();
        if let Err(why) = &result {
            if failed == 0 {
                eprintln!("bench_cold: first failure: {why}");
            }
            failed += 1;
        }
        // h2load's log: start (µs since the run began), status, duration (µs).
        let status = if result.is_ok() { 200 } else { 500 };
        let start = sent.duration_since(started).as_micros();
        writeln!(latencies, "{start}\t{status}\t{}", took.as_micros())?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    std::fs::write(log, latencies)?;
    std::fs::write(
        out,
        format!(
            "finished in {elapsed:.2}s, {:.2} req/s\nrequests: {count} total, {} succeeded, {failed} failed, 0 errored\n",
            count as f64 / elapsed,
            count - failed,
        ),
    )?;
    Ok(())
}
