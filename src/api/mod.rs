//! The gRPC surface: generated types, thin handlers, request validation, proto⇄domain conversion, and the
//! one mapping from errors to gRPC statuses.

mod convert;
pub mod deadline;
mod error;
#[cfg(test)]
mod fuzz_tests;
mod page_token;
pub mod rate_limit;
mod reason;
mod service;
pub mod shed;
mod validate;
mod watch;

pub use error::{ApiError, ERROR_DOMAIN};
pub use page_token::PageTokenKey;
pub use reason::Reason;
pub use service::{MetadataService, RequestLimits};
pub use watch::ChangeStream;

/// Code generated from `proto/usermeta/v1/usermeta.proto`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("usermeta.v1");

    /// The contract's encoded descriptor set, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/usermeta_descriptor.bin"));
}
