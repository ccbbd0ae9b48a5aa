//! Benchmark load with a token per request, which h2load cannot send (it sends one set of headers): GetMyMetadata
//! over `connections` HTTP/2 connections with `streams` calls in flight on each, request `i` carrying token `i`
//! of the fixture's list (`jwts` for source TOKEN, a new JWT each time; `tokens` for USERINFO). With `same`,
//! every request carries the list's first token: the cached userinfo path through the same tool, so the two
//! compare. Usage:
//! `bench_load <addr> <fixture.json> <userinfo|token> <first-token> <count> <connections> <streams> <out> <log> [same]`.
//! Writes a summary to `<out>` and per-request latencies to `<log>` in h2load's formats, as `bench_cold` does.

use std::{
    fmt::Write as _,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use tonic::{Request, metadata::MetadataValue, transport::Channel};
use usermeta::api::pb::{
    GetMyMetadataRequest, MetadataSource, user_metadata_service_client::UserMetadataServiceClient,
};

/// One call's outcome: when it was sent (since the run began), whether it succeeded, how long it took.
struct Sample {
    sent: Duration,
    ok: bool,
    took: Duration,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    const USAGE: &str = "usage: bench_load <addr> <fixture.json> <userinfo|token> <first-token> <count> <connections> <streams> <out> <log> [same]";
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (args, same) = match args.split_last() {
        Some((last, rest)) if last == "same" => (rest, true),
        _ => (args.as_slice(), false),
    };
    let [
        addr,
        fixture,
        source,
        first,
        count,
        connections,
        streams,
        out,
        log,
    ] = args
    else {
        return Err(USAGE.into());
    };
    let (list, source) = match source.as_str() {
        "userinfo" => ("tokens", MetadataSource::Userinfo),
        "token" => ("jwts", MetadataSource::Token),
        _ => return Err(USAGE.into()),
    };
    let fixture: serde_json::Value = serde_json::from_slice(&std::fs::read(fixture)?)?;
    let (first, count): (usize, usize) = (first.parse()?, count.parse()?);
    let (connections, streams): (usize, usize) = (connections.parse()?, streams.parse()?);
    // Header values made before the run, so the load measures the calls, not the tool.
    let bearers: Vec<MetadataValue<_>> = fixture[list]
        .as_array()
        .ok_or("the fixture has no such token list")?
        .iter()
        .filter_map(|t| t.as_str())
        .skip(first)
        .take(if same { 1 } else { count })
        .map(|token| format!("Bearer {token}").parse())
        .collect::<Result<_, _>>()?;
    if bearers.is_empty() || (!same && bearers.len() < count) {
        return Err(format!(
            "the fixture has {} {list} from {first}, not {count}",
            bearers.len()
        )
        .into());
    }
    let bearers = Arc::new(bearers);

    let mut channels = Vec::with_capacity(connections);
    for _ in 0..connections {
        // One channel, one HTTP/2 connection.
        channels.push(
            Channel::from_shared(format!("http://{addr}"))?
                .connect()
                .await?,
        );
    }
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::with_capacity(connections * streams);
    for channel in &channels {
        for _ in 0..streams {
            let mut client = UserMetadataServiceClient::new(channel.clone());
            let (next, bearers) = (Arc::clone(&next), Arc::clone(&bearers));
            workers.push(tokio::spawn(async move {
                let mut samples = Vec::new();
                let mut first_failure = None;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        return (samples, first_failure);
                    }
                    let mut request = Request::new(GetMyMetadataRequest {
                        source: source.into(),
                        ..GetMyMetadataRequest::default()
                    });
                    let bearer = &bearers[if same { 0 } else { i }];
                    request
                        .metadata_mut()
                        .insert("authorization", bearer.clone());
                    let sent = Instant::now();
                    let answer = client.get_my_metadata(request).await;
                    let took = sent.elapsed();
                    let ok = match answer {
                        Ok(answer) if !answer.get_ref().metadata.is_empty() => true,
                        Ok(_) => {
                            first_failure.get_or_insert_with(|| {
                                "GetMyMetadata answered without metadata".to_owned()
                            });
                            false
                        }
                        Err(status) => {
                            first_failure.get_or_insert_with(|| {
                                format!("{:?}: {}", status.code(), status.message())
                            });
                            false
                        }
                    };
                    samples.push(Sample {
                        sent: sent.duration_since(started),
                        ok,
                        took,
                    });
                }
            }));
        }
    }
    let mut samples = Vec::with_capacity(count);
    for worker in workers {
        let (done, failure) = worker.await?;
        if let Some(why) = failure {
            eprintln!("bench_load: a failure: {why}");
        }
        samples.extend(done);
    }
    let elapsed = started.elapsed().as_secs_f64();

    samples.sort_by_key(|s| s.sent);
    let failed = samples.iter().filter(|s| !s.ok).count();
    let mut latencies = String::with_capacity(count * 24);
    for sample in &samples {
        // h2load's log: start (µs since the run began), status, duration (µs).
        let status = if sample.ok { 200 } else { 500 };
        writeln!(
            latencies,
            "{}\t{status}\t{}",
            sample.sent.as_micros(),
            sample.took.as_micros()
        )?;
    }
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
