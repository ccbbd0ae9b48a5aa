//! Serves a seeded stand-in ZITADEL for scripts (the Python SDK proof in `interop/zitadel-sdk/`, the Envoy
//! gateway test `scripts/envoy-gateway.sh`): binds `127.0.0.1:0`, creates an organisation, a human user
//! (alice, no metadata), a second one with `ContractNumber=1234` and an IAM_OWNER service user with a PAT,
//! prints one JSON line `{"url","pat","user_id","org_id","user_token","contract_user_id",
//! "contract_user_token"}` on stdout and serves until the process is killed (the user tokens carry the scopes
//! usermeta needs from a caller's token).
//!
//!     cargo run -p zitadel-standin --example serve

use std::io::Write as _;

use zitadel_standin::{ManagerRole, StandIn};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let zitadel = StandIn::start().await?;
    // A long-running helper: no request log growing in memory.
    zitadel.set_recording(false);
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
    let line = serde_json::json!({
        "url": zitadel.url(),
        "pat": pat,
        "user_id": user_id,
        "org_id": org_id,
        "user_token": zitadel.issue_token(&user_id, &scopes),
        "contract_user_id": contract_user_id,
        "contract_user_token": zitadel.issue_token(&contract_user_id, &scopes),
    });
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")?;
    stdout.flush()?;
    drop(stdout);
    std::future::pending::<()>().await;
    Ok(())
}
