//! usermeta: one gRPC contract over ZITADEL user metadata.
//!
//! A request enters through [`api`] (the tonic service, request validation and the one mapping of errors to
//! gRPC statuses), learns who is calling from [`caller`], is checked by [`policy`], and reaches ZITADEL through
//! [`zitadel`] (userinfo and the auth API with the caller's token, the management API with the service
//! credential). [`server`] binds and serves it with health and reflection; [`standin`] is an in-process
//! ZITADEL used by the tests and by `usermeta dev`.
#![forbid(unsafe_code)]

pub mod standin;
