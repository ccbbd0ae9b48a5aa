//! Benchmark helper for the management loads: writes gRPC-framed requests for h2load's `-d`: `list.bin` (an
//! admin's ListMetadata of the target user) and `set.bin` (a SetMetadata of one key on them).
//! Usage: `bench_frames <target-user-id> <out-dir>`.

use std::process::ExitCode;

use prost::Message;
use usermeta::api::pb;

/// A gRPC length-prefixed message: uncompressed flag, big-endian length, bytes.
fn frame(message: &impl Message) -> Vec<u8> {
    let bytes = message.encode_to_vec();
    let mut frame = vec![0u8];
    frame.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
    frame.extend_from_slice(&bytes);
    frame
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(target), Some(dir)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: bench_frames <target-user-id> <out-dir>");
        return ExitCode::from(2);
    };
    let list = pb::ListMetadataRequest {
        user_id: target.clone(),
        ..Default::default()
    };
    let set = pb::SetMetadataRequest {
        user_id: target.clone(),
        entries: vec![pb::MetadataEntry {
            key: "bench.counter".into(),
            value: Some(pb::MetadataValue {
                kind: Some(pb::metadata_value::Kind::Text("1".into())),
            }),
            ..Default::default()
        }],
        ..Default::default()
    };
    for (name, bytes) in [("list.bin", frame(&list)), ("set.bin", frame(&set))] {
        let path = format!("{dir}/{name}");
        if let Err(error) = std::fs::write(&path, bytes) {
            eprintln!("cannot write {path}: {error}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
