//! The gRPC surface: generated types, the service and its door ([`MetadataService`]), one handler file per RPC
//! or family of RPCs (`rpc/`), request validation, proto⇄domain conversion, and the one mapping from errors
//! to gRPC statuses.

mod convert;
mod error;
pub mod etag;
#[cfg(test)]
mod fuzz_tests;
mod page_token;
mod reason;
mod rpc;
mod service;
mod validate;

pub use error::{ApiError, ERROR_DOMAIN};
pub use page_token::PageTokenKey;
pub use reason::Reason;
pub use rpc::watch::ChangeStream;
pub use service::{Dependencies, MetadataService, RequestLimits};

/// Code generated from `proto/usermeta/v1/usermeta.proto`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("usermeta.v1");

    /// The contract's encoded descriptor set, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/usermeta_descriptor.bin"));
}
