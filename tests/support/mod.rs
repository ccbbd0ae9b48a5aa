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
mod webhook;

pub(crate) use app::{
    Cast, FULL_SCOPES, SELF_WRITABLE, TestApp, TestAppBuilder, shipped_upstream_budget,
};
pub(crate) use binary::{Served, run_usermeta, stderr, write_config};
pub(crate) use calls::*;
pub(crate) use logs::{Captured, capture};
pub(crate) use observe::{check_request, eventually_health, health_of, metric, scrape};
pub(crate) use redis::Redis;
pub(crate) use upstreams::{fault, raw_userinfo, serve_upstream};
pub(crate) use usermeta_zitadel::management::ApiChoice;
pub(crate) use wait::{HANG, eventually, promptly, until};
pub(crate) use webhook::{deliver_event, event, now, post, set_event, signature};
