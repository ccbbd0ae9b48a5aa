//! Benchmark load: calls GetMyMetadata once with each of many distinct tokens, to fill usermeta's cache.
//! Usage: `bench_fill <addr> <fixture.json> <tokens|distinct_tokens> <count> <concurrency>`: the bench user's
//! tokens, or one token each of distinct users. Prints how many calls failed.

use futures::{StreamExt, stream};
use tonic::{Request, transport::Channel};
use usermeta::api::pb::{
    GetMyMetadataRequest, user_metadata_service_client::UserMetadataServiceClient,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    const USAGE: &str =
        "usage: bench_fill <addr> <fixture.json> <tokens|distinct_tokens> <count> <concurrency>";
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, fixture, list, count, concurrency] = args.as_slice() else {
        return Err(USAGE.into());
    };
    let fixture: serde_json::Value = serde_json::from_slice(&std::fs::read(fixture)?)?;
    let tokens: Vec<String> = fixture[list.as_str()]
        .as_array()
        .ok_or(format!("fixture has no {list}"))?
        .iter()
        .filter_map(|t| t.as_str().map(str::to_owned))
        .take(count.parse()?)
        .collect();
    let channel = Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let client = UserMetadataServiceClient::new(channel);
    let failures = stream::iter(tokens)
        .map(|token| {
            let mut client = client.clone();
            async move {
                let mut request = Request::new(GetMyMetadataRequest::default());
                request
                    .metadata_mut()
                    .insert("authorization", format!("Bearer {token}").parse().ok()?);
                client.get_my_metadata(request).await.err()
            }
        })
        .buffer_unordered(concurrency.parse()?)
        .filter_map(|failure| async move { failure })
        .count()
        .await;
    println!("{failures}");
    Ok(())
}
