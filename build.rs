//! Compiles the usermeta contract with protox (no system `protoc` needed) and embeds its descriptor set
//! for gRPC server reflection. `google/rpc/status.proto` (BatchGetMetadata's per-user errors) comes from
//! tonic-types' descriptor set, and the generated code uses tonic-types' `Status` for it.

use std::{env, path::PathBuf};

use prost::Message as _;
use protox::file::{
    ChainFileResolver, DescriptorSetFileResolver, GoogleFileResolver, IncludeFileResolver,
};

const PROTO_ROOT: &str = "proto";
const CONTRACT: &str = "proto/usermeta/v1/usermeta.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={CONTRACT}");
    println!("cargo:rerun-if-changed=build.rs");

    // The contract, for the generated code.
    let descriptors = compile(&["usermeta/v1/usermeta.proto"])?;
    // What reflection serves: also google.rpc's error details, so grpcurl decodes the ErrorInfo, BadRequest
    // and RetryInfo inside BatchGetMetadata's per-user `google.rpc.Status` results without proto files.
    let served = compile(&[
        "usermeta/v1/usermeta.proto",
        "google/rpc/error_details.proto",
    ])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("usermeta_descriptor.bin"),
        served.encode_to_vec(),
    )?;

    tonic_prost_build::configure()
        .extern_path(".google.rpc", "::tonic_types")
        .compile_fds(descriptors)?;
    envoy_check_server();
    Ok(())
}

/// The server side of Envoy's `envoy.service.auth.v3.Authorization`, decoding `CheckRequest` into
/// `crate::authz::wire`'s slim view of it (only the fields Check reads) instead of envoy-types' full message,
/// and answering with envoy-types' `CheckResponse`. Same service, method and wire format as envoy-types'
/// generated server.
fn envoy_check_server() {
    let check = tonic_build::manual::Method::builder()
        .name("check")
        .route_name("Check")
        .input_type("crate::authz::wire::CheckRequest")
        .output_type("::envoy_types::pb::envoy::service::auth::v3::CheckResponse")
        .codec_path("::tonic_prost::ProstCodec")
        .build();
    let service = tonic_build::manual::Service::builder()
        .name("Authorization")
        .package("envoy.service.auth.v3")
        .method(check)
        .build();
    tonic_build::manual::Builder::new()
        .build_client(false)
        .compile(&[service]);
}

/// `files` and everything they import (so reflection clients resolve every type), with source info (comments).
fn compile(files: &[&str]) -> Result<prost_types::FileDescriptorSet, Box<dyn std::error::Error>> {
    let mut resolver = ChainFileResolver::new();
    resolver.add(IncludeFileResolver::new(PROTO_ROOT.into()));
    resolver.add(GoogleFileResolver::new());
    resolver.add(DescriptorSetFileResolver::new(google_rpc()?));
    let mut compiler = protox::Compiler::with_file_resolver(resolver);
    compiler.include_imports(true).include_source_info(true);
    for file in files {
        compiler.open_file(file)?;
    }
    Ok(compiler.file_descriptor_set())
}

/// tonic-types' google.rpc files under the names googleapis publishes them at (it names them `status.proto`
/// and `error_details.proto`), so the contract imports `google/rpc/status.proto` as every other client does.
fn google_rpc() -> Result<prost_types::FileDescriptorSet, prost::DecodeError> {
    let mut set = prost_types::FileDescriptorSet::decode(tonic_types::pb::FILE_DESCRIPTOR_SET)?;
    for file in &mut set.file {
        let name = file.name();
        if file.package() == "google.rpc" && !name.contains('/') {
            file.name = Some(format!("google/rpc/{name}"));
        }
        for dependency in &mut file.dependency {
            if !dependency.contains('/') {
                *dependency = format!("google/rpc/{dependency}");
            }
        }
    }
    Ok(set)
}
