//! `usermeta healthcheck`, run as the real binary (as a container's HEALTHCHECK runs it) against a usermeta
//! served in-process on port 0 against the ZITADEL stand-in, against a closed port, and against a peer that
//! accepts connections but never answers.
#![allow(clippy::unwrap_used)] // a panic is how a test reports a broken expectation

#[path = "support/mod.rs"]
mod support;
use support::TestApp;

use std::{process::Output, time::Duration};

use tokio::{net::TcpListener, process::Command};
use usermeta::policy::Policy;

/// A usermeta serving on 127.0.0.1:0 that lets nobody read or write; it stops when dropped.
async fn spawn_usermeta() -> TestApp {
    TestApp::builder()
        .policy(Policy::new(Vec::<String>::new(), Vec::new()))
        .spawn()
        .await
}

/// Runs `usermeta healthcheck <args>` with a clean environment for the settings it reads.
async fn healthcheck(args: &[&str], listen_env: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_usermeta"));
    command
        .arg("healthcheck")
        .args(args)
        .env_remove("USERMETA_HEALTHCHECK_ADDR")
        .env_remove("USERMETA_LISTEN")
        .kill_on_drop(true);
    if let Some(listen) = listen_env {
        command.env("USERMETA_LISTEN", listen);
    }
    // Generous: the check itself gives up after its --timeout; this only keeps a hang from stalling the suite.
    tokio::time::timeout(Duration::from_secs(30), command.output())
        .await
        .expect("usermeta healthcheck finished")
        .unwrap()
}

fn describe(output: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[tokio::test]
async fn exits_0_and_says_serving_when_the_server_is_serving() {
    let app = spawn_usermeta().await;
    let addr = app.addr;
    let addr = addr.to_string();
    for args in [
        vec!["--addr", addr.as_str()],
        vec![
            "--addr",
            &addr,
            "--service",
            "usermeta.v1.UserMetadataService",
        ],
    ] {
        let output = healthcheck(&args, None).await;
        assert_eq!(
            output.status.code(),
            Some(0),
            "{args:?}: {}",
            describe(&output)
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(stdout.lines().count(), 1, "one line: {}", describe(&output));
        assert!(stdout.contains("SERVING"), "{}", describe(&output));
    }
}

#[tokio::test]
async fn without_addr_it_checks_the_port_of_usermeta_listen_over_loopback() {
    let app = spawn_usermeta().await;
    let addr = app.addr;
    // As in a container: the server listens on every interface, the check inherits that setting.
    let listen = format!("0.0.0.0:{}", addr.port());
    let output = healthcheck(&[], Some(&listen)).await;
    assert_eq!(output.status.code(), Some(0), "{}", describe(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains(&format!("127.0.0.1:{}", addr.port())),
        "{}",
        describe(&output)
    );
}

#[tokio::test]
async fn exits_1_for_a_service_the_server_does_not_know() {
    let app = spawn_usermeta().await;
    let addr = app.addr;
    let output = healthcheck(
        &["--addr", &addr.to_string(), "--service", "no.such.Service"],
        None,
    )
    .await;
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("does not know the service"),
        "{}",
        describe(&output)
    );
}

#[tokio::test]
async fn exits_1_against_a_closed_port() {
    // Bind to learn a free port, then close it: nothing listens there any more.
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().port()
    };
    let output = healthcheck(&["--addr", &format!("127.0.0.1:{port}")], None).await;
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line: {}", describe(&output));
    assert!(stderr.contains("cannot connect"), "{}", describe(&output));
    assert!(output.stdout.is_empty(), "{}", describe(&output));
}

#[tokio::test]
async fn exits_1_when_the_peer_never_answers() {
    // The kernel completes the TCP handshake for a listener nobody accepts from; HTTP/2 then never starts.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap().to_string();
    let output = healthcheck(&["--addr", &addr, "--timeout", "300ms"], None).await;
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no answer within") || stderr.contains("cannot connect"),
        "{}",
        describe(&output)
    );
}

#[tokio::test]
async fn exits_1_for_an_address_that_is_not_one() {
    let output = healthcheck(&["--addr", "not a host"], None).await;
    assert_eq!(output.status.code(), Some(1), "{}", describe(&output));
}
