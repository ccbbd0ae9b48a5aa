//! Compiles the usermeta contract with protox (no system `protoc` needed) and embeds its descriptor set
//! for gRPC server reflection.

use std::{env, path::PathBuf};

const PROTO_ROOT: &str = "proto";
const CONTRACT: &str = "proto/usermeta/v1/usermeta.proto";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={CONTRACT}");
    println!("cargo:rerun-if-changed=build.rs");

    let descriptors = protox::compile([CONTRACT], [PROTO_ROOT])?;
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let descriptor_path = out_dir.join("usermeta_descriptor.bin");
    std::fs::write(
        &descriptor_path,
        prost::Message::encode_to_vec(&descriptors),
    )?;

    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
