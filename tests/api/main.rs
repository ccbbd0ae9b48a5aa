//! Black-box tests: the real usermeta server on a real port, called through a generated gRPC client, talking
//! over real HTTP to the ZITADEL stand-in (or, for malformed answers, to a scripted raw upstream).
#![allow(clippy::unwrap_used)] // a panic is how a test reports a broken expectation

#[path = "../support/mod.rs"]
mod support;

/// The backend-independent suite: each named `async fn name(api: ApiChoice)` runs as the test `v1::name`
/// against the v1 management API and as `v2::name` against the v2 user service. One suite, two backends.
macro_rules! on_both_apis {
    ($($name:ident),* $(,)?) => {
        mod v1 {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::support::ApiChoice::V1).await
                }
            )*
        }
        mod v2 {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::support::ApiChoice::V2).await
                }
            )*
        }
    };
}

mod authorization;
mod batch_get;
mod breaker;
mod cache;
mod conditional;
mod config_file;
mod credentials;
mod delete_metadata;
mod exact_target;
mod ext_authz;
mod faults;
mod find_users;
mod fleet;
mod fleet_budget;
mod fleet_writes;
mod get_my_metadata;
mod health_reflection;
mod identity;
mod in_flight;
mod list_metadata;
mod metadata_cache;
mod observability;
mod org_metadata;
mod policy_matrix;
mod sealed;
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
