//! Black-box tests: the real usermeta server on a real port, called through a generated gRPC client, talking
//! over real HTTP to the ZITADEL stand-in (or, for malformed answers, to a scripted raw upstream).
#![allow(clippy::unwrap_used)] // a panic is how a test reports a broken expectation

mod helpers;
mod logs;
#[path = "../support/mod.rs"]
mod support;

mod authorization;
mod batch_get;
mod breaker;
mod cache;
mod config_file;
mod credentials;
mod delete_metadata;
mod exact_target;
mod ext_authz;
mod faults;
mod find_users;
mod fleet;
mod get_my_metadata;
mod health_reflection;
mod identity;
mod in_flight;
mod list_metadata;
mod observability;
mod policy_matrix;
mod set_metadata;
mod start_up;
mod tls;
mod upstream_budget;
mod upstream_errors;
mod upstream_http;
mod validation;
mod watch;
mod webhook;
mod zitadel_v2;
