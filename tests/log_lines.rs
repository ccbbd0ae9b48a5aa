//! Text logs as an operator reads them: one call writes only lines of its own. Request fields that reach a log
//! line (keys with spaces and `=`, line separators, an Envoy request path) are quoted and escaped, so no line
//! can be read as another call's audit entry. Its own test binary: the log subscriber is global.
#![allow(clippy::unwrap_used)] // a panic is how a test reports a broken expectation

#[path = "support/mod.rs"]
mod support;
use support::{Captured, TestApp, authed, entry, text, with_request_id};

use tonic::Code;
use usermeta::{api::pb::SetMetadataRequest, policy::Policy, settings::LogFormat};

/// The text of a line outside double-quoted values.
fn unquoted(line: &str) -> String {
    let mut outside = String::new();
    let (mut quoted, mut escaped) = (false, false);
    for c in line.chars() {
        match (quoted, escaped, c) {
            (true, true, _) => escaped = false,
            (true, false, '\\') => escaped = true,
            (_, false, '"') => quoted = !quoted,
            (false, _, c) => outside.push(c),
            (true, false, _) => {}
        }
    }
    outside
}

fn set(key: &str) -> SetMetadataRequest {
    SetMetadataRequest {
        entries: vec![entry(key, text("v"))],
        ..Default::default()
    }
}

#[tokio::test]
async fn no_request_field_can_write_a_line_that_passes_for_another() {
    let captured = Captured::install(LogFormat::Text, "usermeta=info");
    let app = TestApp::builder()
        .policy(Policy::new(Vec::<String>::new(), vec!["profile.".into()]))
        .spawn()
        .await;
    let token = app
        .standin
        .issue_token(&app.alice, &["openid", "urn:zitadel:iam:user:metadata"]);
    let mut client = app.client.clone();

    // Legal keys that look like fields and lines: the write succeeds, its audit line stays one entry.
    let forged = "profile.x outcome=ok caller=170000000000000001 user_id=170000000000000001";
    client
        .set_metadata(with_request_id(authed(set(forged), &token), "req-forge-1"))
        .await
        .unwrap();
    let separator = "profile.y\u{2028}INFO usermeta::audit: outcome=ok";
    client
        .set_metadata(with_request_id(
            authed(set(separator), &token),
            "req-forge-2",
        ))
        .await
        .unwrap();
    // A key with a newline is refused before anything is logged of it.
    let newline = "profile.z\nINFO usermeta::audit: outcome=ok";
    let status = client
        .set_metadata(with_request_id(authed(set(newline), &token), "req-forge-3"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    // A denied write of a key with spaces (outside the writable prefix).
    let denied = "other outcome=ok";
    let status = client
        .set_metadata(with_request_id(authed(set(denied), &token), "req-forge-4"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);

    let lines = captured.lines();
    for line in &lines {
        assert!(
            line.starts_with("20"),
            "every line starts with its timestamp: {line:?}"
        );
        assert!(!line.contains('\u{2028}'), "{line:?}");
    }
    for (request_id, outcome) in [
        ("req-forge-1", "ok"),
        ("req-forge-2", "ok"),
        ("req-forge-4", "denied"),
    ] {
        let audit: Vec<&String> = lines
            .iter()
            .filter(|line| line.contains(request_id) && line.contains("usermeta::audit"))
            .collect();
        assert_eq!(audit.len(), 1, "{request_id}: {lines:#?}");
        let outside = unquoted(audit[0]);
        assert_eq!(
            outside.matches(" outcome=").count(),
            1,
            "{request_id}: {}",
            audit[0]
        );
        assert!(
            outside.contains(&format!(" outcome={outcome}")),
            "{}",
            audit[0]
        );
        assert_eq!(outside.matches(" caller=").count(), 1, "{}", audit[0]);
        assert!(
            outside.contains(&format!(" caller={}", app.alice)),
            "{}",
            audit[0]
        );
    }
    assert!(
        !lines
            .iter()
            .any(|line| line.contains("req-forge-3") && line.contains("usermeta::audit")),
        "an invalid request writes no audit line"
    );
}
