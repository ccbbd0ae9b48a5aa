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

    let mut files = ChainFileResolver::new();
    files.add(IncludeFileResolver::new(PROTO_ROOT.into()));
    files.add(GoogleFileResolver::new());
    files.add(DescriptorSetFileResolver::new(google_rpc()?));
    let mut compiler = protox::Compiler::with_file_resolver(files);
    // Imports included, so reflection clients (grpcurl) resolve google.rpc.Status without proto files.
    compiler.include_imports(true).include_source_info(true);
    compiler.open_file("usermeta/v1/usermeta.proto")?;
    let descriptors = compiler.file_descriptor_set();

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let descriptor_path = out_dir.join("usermeta_descriptor.bin");
    std::fs::write(&descriptor_path, descriptors.encode_to_vec())?;

    tonic_prost_build::configure()
        .extern_path(".google.rpc", "::tonic_types")
        .compile_fds(descriptors)?;
    Ok(())
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
