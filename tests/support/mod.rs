//! What every test binary shares (`#[path = ".../support/mod.rs"] mod support;`): the one way to start
//! usermeta ([`TestApp::builder`]), calls and assertions, scripted ZITADEL faults, health and metrics, captured
//! logs, and waiting for an event instead of sleeping. Test files import from here, never from each other.
#![allow(dead_code, unused_imports)] // each test binary uses part of it

mod app;
mod binary;
mod calls;
mod logs;
mod observe;
mod redis;
mod upstreams;
mod wait;

pub use app::{Cast, FULL_SCOPES, SELF_WRITABLE, TestApp, TestAppBuilder, shipped_upstream_budget};
pub use binary::{run_usermeta, stderr, write_config};
pub use calls::*;
pub use logs::{Captured, capture};
pub use observe::{check_request, eventually_health, health_of, metric, scrape};
pub use redis::Redis;
pub use upstreams::{fault, raw_userinfo, serve_upstream};
pub use usermeta_zitadel::management::ApiChoice;
pub use wait::{HANG, eventually, promptly, until};
