#![allow(dead_code)] // each benchmark binary uses part of what is shared here
//! What the benchmark binaries share: the demo user's metadata, so the ceiling server answers with a message of
//! the same size as usermeta's.

/// The bench user's metadata, as stored in the stand-in.
pub(crate) const METADATA: &[(&str, &[u8])] =
    &[("ContractNumber", b"1234"), ("profile.language", b"en")];

/// Scopes of the bench tokens.
pub(crate) const SCOPES: &[&str] = &[
    "openid",
    "profile",
    "urn:zitadel:iam:user:metadata",
    "urn:zitadel:iam:org:project:id:zitadel:aud",
];
