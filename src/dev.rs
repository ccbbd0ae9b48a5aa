//! `usermeta dev`: the embedded ZITADEL stand-in with demo data, and usermeta serving against it, so a
//! newcomer sees the service work with one command.

use secrecy::SecretString;

use zitadel_standin::{ManagerRole, StandIn};

use usermeta_zitadel::management::ApiChoice;

use crate::{
    RunError,
    policy::{Action, KeyPattern, Policy, Resource, Rule, Who, Whose},
    server::{self, Application, Config},
    settings::{self, DevArgs},
};
use usermeta_zitadel::ServiceCredential;

/// Scopes of the demo tokens: identity, metadata in userinfo, and the audience the auth API needs.
const DEMO_SCOPES: &[&str] = &[
    "openid",
    "profile",
    "email",
    "urn:zitadel:iam:user:metadata",
    "urn:zitadel:iam:user:resourceowner",
    "urn:zitadel:iam:org:project:id:zitadel:aud",
];

/// Demo data the stand-in starts with.
pub struct Demo {
    /// The running stand-in, serving the demo data.
    pub standin: StandIn,
    /// The demo user, with `ContractNumber=1234` and `profile.language=en`.
    pub user_id: String,
    /// An access token of the demo user.
    pub user_token: String,
    /// A second user of the organisation (no metadata).
    pub admin_id: String,
    /// An access token of that user.
    pub admin_token: String,
    /// The personal access token of the service user (an IAM owner) that usermeta calls the management API with.
    pub service_pat: String,
}

/// Starts the stand-in and fills it: one organisation (metadata `plan=pro`), a demo user with `ContractNumber=1234`, an admin
/// user, and a service user whose PAT usermeta uses.
pub async fn seed_demo(standin: StandIn) -> Demo {
    let org = standin.create_org("Demo");
    let user_id = standin.create_user(&org, "road.runner");
    standin.set_metadata(&user_id, "ContractNumber", b"1234");
    standin.set_metadata(&user_id, "profile.language", b"en");
    standin.set_org_metadata(&org, "plan", b"pro");
    let admin_id = standin.create_user(&org, "wile.e.coyote");
    let service_user = standin.create_service_user(&org, "usermeta", ManagerRole::IamOwner);
    Demo {
        user_token: standin.issue_token(&user_id, DEMO_SCOPES),
        admin_token: standin.issue_token(&admin_id, DEMO_SCOPES),
        service_pat: standin.issue_pat(&service_user),
        standin,
        user_id,
        admin_id,
    }
}

/// Runs `usermeta dev` until SIGINT or SIGTERM.
pub async fn run(args: DevArgs) -> Result<(), RunError> {
    let standin = StandIn::start_on(args.zitadel_listen)
        .await
        .map_err(RunError::StandIn)?;
    // A long-running demo must not grow memory with every request it serves.
    standin.set_recording(false);
    let demo = seed_demo(standin).await;
    let mut config = Config {
        listen: args.listen,
        policy: Policy::new(
            [demo.admin_id.clone()],
            settings::self_writable_prefixes(&args.self_writable_keys),
        )
        .with_rule(
            Rule::new(
                "the demo admin manages every organisation",
                Who {
                    subjects: [demo.admin_id.clone()].into(),
                    ..Who::default()
                },
                Whose::Any,
                vec![KeyPattern::Any],
                &[Action::Read, Action::Write, Action::Delete],
            )
            .on(Resource::Organization),
        ),
        ..Config::new(
            settings::zitadel_url(&demo.standin.url())?,
            ServiceCredential::Pat(SecretString::from(demo.service_pat.clone())),
        )
    };
    // The stand-in is a ZITADEL v4: new installations manage metadata through the v2 user service.
    config.zitadel.management_api = ApiChoice::V2;
    let app = Application::build(config).await?;
    print_banner(&demo, &app);
    app.run_until(server::shutdown_signal()).await?;
    demo.standin.shutdown().await;
    Ok(())
}

/// What a newcomer needs: the demo tokens and commands to paste. These are throw-away tokens of the
/// in-process stand-in, printed on purpose; they are worthless anywhere else.
fn print_banner(demo: &Demo, app: &Application) {
    let addr = app.local_addr();
    let user = &demo.user_token;
    let admin = &demo.admin_token;
    println!(
        r#"
usermeta dev is running.
  gRPC (plaintext):  {addr}
  ZITADEL stand-in:  {zitadel}

Demo user  {user_id} (road.runner), metadata ContractNumber=1234, profile.language=en
Demo admin {admin_id} (wile.e.coyote), listed as a usermeta admin (users and organisations)
Demo organisation metadata plan=pro (ListOrganizationMetadata)

  export USER_TOKEN={user}
  export ADMIN_TOKEN={admin}

Read your own metadata (ready to paste):
  grpcurl -plaintext -H "authorization: Bearer {user}" {addr} usermeta.v1.UserMetadataService/GetMyMetadata

Write one of your own keys (self-writable prefixes: see --self-writable-keys):
  grpcurl -plaintext -H "authorization: Bearer $USER_TOKEN" -d '{{"entries":[{{"key":"profile.language","value":{{"text":"de"}}}}]}}' {addr} usermeta.v1.UserMetadataService/SetMetadata

As the admin, list another user's metadata:
  grpcurl -plaintext -H "authorization: Bearer $ADMIN_TOKEN" -d '{{"user_id":"{user_id}"}}' {addr} usermeta.v1.UserMetadataService/ListMetadata

Health and reflection:
  grpcurl -plaintext {addr} grpc.health.v1.Health/Check
  grpcurl -plaintext {addr} describe usermeta.v1.UserMetadataService

Stop with Ctrl-C.
"#,
        zitadel = demo.standin.url(),
        user_id = demo.user_id,
        admin_id = demo.admin_id,
    );
}
