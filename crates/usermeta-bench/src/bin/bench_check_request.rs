//! Benchmark helper for Envoy external authorization: writes a gRPC-framed `CheckRequest` (as Envoy sends it,
//! with the bench token in the `authorization` header) for h2load's `-d`, and with an address, checks once
//! that usermeta answers OK with the contract header.
//! Usage: `bench_check_request <token> <out-file> [<usermeta host:port>]`.

use std::{collections::HashMap, process::ExitCode};

use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, attribute_context, authorization_client::AuthorizationClient,
    check_response::HttpResponse,
};
use prost::Message;

fn request(token: &str) -> CheckRequest {
    let headers = HashMap::from([
        (":authority".to_owned(), "api.example.com".to_owned()),
        (":method".to_owned(), "GET".to_owned()),
        (":path".to_owned(), "/v1/contracts".to_owned()),
        ("authorization".to_owned(), format!("Bearer {token}")),
        ("user-agent".to_owned(), "h2load".to_owned()),
    ]);
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    method: "GET".into(),
                    path: "/v1/contracts".into(),
                    host: "api.example.com".into(),
                    scheme: "https".into(),
                    protocol: "HTTP/2".into(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(token), Some(out)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: bench_check_request <token> <out-file> [<usermeta host:port>]");
        return ExitCode::from(2);
    };
    let message = request(token).encode_to_vec();
    // gRPC length-prefixed message: uncompressed flag, big-endian length, bytes.
    let mut frame = vec![0u8];
    frame.extend_from_slice(
        &u32::try_from(message.len())
            .unwrap_or(u32::MAX)
            .to_be_bytes(),
    );
    frame.extend_from_slice(&message);
    if let Err(error) = std::fs::write(out, frame) {
        eprintln!("cannot write {out}: {error}");
        return ExitCode::FAILURE;
    }
    let Some(addr) = args.get(3) else {
        return ExitCode::SUCCESS;
    };
    let answer = match AuthorizationClient::connect(format!("http://{addr}")).await {
        Ok(mut client) => client.check(request(token)).await,
        Err(error) => {
            eprintln!("cannot connect to {addr}: {error}");
            return ExitCode::FAILURE;
        }
    };
    match answer.map(tonic::Response::into_inner) {
        Ok(response)
            if response.status.as_ref().is_some_and(|s| s.code == 0)
                && matches!(&response.http_response, Some(HttpResponse::OkResponse(ok))
                    if ok.headers.iter().any(|h| h.header.as_ref().is_some_and(|h| h.value == "1234"))) =>
        {
            ExitCode::SUCCESS
        }
        other => {
            eprintln!("Check did not allow with the contract header: {other:?}");
            ExitCode::FAILURE
        }
    }
}
