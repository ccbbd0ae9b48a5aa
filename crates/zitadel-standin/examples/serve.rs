//! Serves a seeded stand-in ZITADEL for scripts (the Python SDK proof in `interop/zitadel-sdk/`, the Envoy
//! gateway test `scripts/envoy-gateway.sh`): binds `127.0.0.1:0`, creates an organisation, a human user
//! (alice, no metadata), a second one with `ContractNumber=1234` and an IAM_OWNER service user with a PAT,
//! prints one JSON line `{"url","pat","user_id","org_id","user_token","contract_user_id",
//! "contract_user_token"}` on stdout and serves until the process is killed (the user tokens carry the scopes
//! usermeta needs from a caller's token).
//!
//! `STANDIN_TOKENS=N` adds `"tokens"`: N more tokens of alice, each one ZITADEL has never been asked about.
//! `STANDIN_COUNTS_FILE=path` keeps the request log and writes `{"userinfo","total"}` (the requests received
//! so far) to `path` on every SIGUSR1, for scripts that count what ZITADEL was sent (`scripts/envoy-fleet.sh`).
//!
//!     cargo run -p zitadel-standin --example serve

use std::io::Write as _;

use zitadel_standin::{ManagerRole, StandIn};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let zitadel = StandIn::start().await?;
    // A long-running helper: no request log growing in memory, unless a script counts requests.
    let counts_file = std::env::var_os("STANDIN_COUNTS_FILE");
    zitadel.set_recording(counts_file.is_some());
    let extra_tokens: usize = match std::env::var("STANDIN_TOKENS") {
        Ok(n) => n.parse().map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("STANDIN_TOKENS={n} is not a number of tokens ({e})"),
            )
        })?,
        Err(_) => 0,
    };
    let org_id = zitadel.create_org("Acme");
    let user_id = zitadel.create_user(&org_id, "alice");
    let admin = zitadel.create_service_user(&org_id, "admin", ManagerRole::IamOwner);
    let pat = zitadel.issue_pat(&admin);
    let contract_user_id = zitadel.create_user(&org_id, "road.runner");
    zitadel.set_metadata(&contract_user_id, "ContractNumber", b"1234");
    let scopes = [
        "openid",
        "urn:zitadel:iam:user:metadata",
        "urn:zitadel:iam:user:resourceowner",
    ];
    let tokens: Vec<String> = (0..extra_tokens)
        .map(|_| zitadel.issue_token(&user_id, &scopes))
        .collect();
    let line = serde_json::json!({
        "url": zitadel.url(),
        "pat": pat,
        "user_id": user_id,
        "org_id": org_id,
        "user_token": zitadel.issue_token(&user_id, &scopes),
        "contract_user_id": contract_user_id,
        "contract_user_token": zitadel.issue_token(&contract_user_id, &scopes),
        "tokens": tokens,
    });
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")?;
    stdout.flush()?;
    drop(stdout);
    let Some(path) = counts_file else {
        std::future::pending::<()>().await;
        return Ok(());
    };
    let mut asked = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1())?;
    while asked.recv().await.is_some() {
        let requests = zitadel.requests();
        let counts = serde_json::json!({
            "userinfo": requests.iter().filter(|r| r.is_userinfo()).count(),
            "total": requests.len(),
        });
        // Written whole, then renamed: a reader never sees half a file.
        let partial = std::path::PathBuf::from(format!("{}.partial", path.to_string_lossy()));
        std::fs::write(&partial, counts.to_string())?;
        std::fs::rename(&partial, &path)?;
    }
    Ok(())
}
