//! Sealed keys (`[[key]] sealed = true`): ZITADEL stores only ciphertext, read from the stand-in directly and
//! through every door it opens to the user (userinfo, the auth API, JWTs), while callers the policy lets read
//! a key get the plaintext through usermeta; values written around usermeta, altered or moved are withheld.

use base64::{
    Engine as _,
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
};
use tonic::Code;
use usermeta::{
    api::pb::{
        self, BatchGetMetadataRequest, FindUsersByMetadataRequest, GetMyMetadataRequest, KeyFilter,
        KeyMatch, ListMetadataRequest, MetadataSource, SetMetadataRequest,
    },
    authz::{AuthzConfig, parse_header_map, parse_rules},
    caller::{IdentityConfig, JwtConfig},
    fleet::{Need, WriteLockConfig, WriteLocks},
    policy::Policy,
    reseal::{ResealOptions, reseal},
    sealing::Sealer,
};
use usermeta_zitadel::{ServiceCredential, Zitadel, ZitadelConfig};
use zitadel_standin::JwtSpec;

use crate::support::*;

/// The first sealing key alone.
const K1: &str = "k1 AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n";
/// After a rotation: k1 still opens, k2 seals.
const K1_K2: &str = "k1 AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\nk2 HyAhIiMkJSYnKCkqKywtLi8wMTIzNDU2Nzg5Ojs8PT4=\n";
/// Once every value moved: k1 retired.
const K2: &str = "k2 HyAhIiMkJSYnKCkqKywtLi8wMTIzNDU2Nzg5Ojs8PT4=\n";

/// `routing.tier` is sealed and hidden from its user (routing on it is the point); `secret.*` is sealed,
/// readable by its user, and must be lower-case words; `blob` is sealed with no other rule.
const POLICY: &str = r#"
[[key]]
name = "routing.tier"
hidden = true
sealed = true

[[key]]
name = "secret.*"
sealed = true
pattern = "^[a-z-]+$"

[[key]]
name = "blob"
sealed = true
"#;

const TIER: &str = "gold-tier-routing";
const NOTE: &str = "blue-moon-note";

/// The test policy (the admin may do anything, `profile.` is self-writable) with the sealed keys.
fn policy(admin: &str) -> Policy {
    Policy::from_toml(POLICY, "sealed.toml")
        .unwrap()
        .with_shorthands([admin.to_owned()], vec![SELF_WRITABLE.into()])
}

async fn sealed_app(api: ApiChoice) -> TestApp {
    let cast = TestApp::seeded().await;
    TestApp::builder()
        .api(api)
        .reuse(cast.clone())
        .policy(policy(&cast.admin))
        .sealing(K1_K2)
        .metrics()
        .spawn()
        .await
}

async fn set(app: &TestApp, user_id: &str, entries: &[(&str, &str)]) -> Result<(), tonic::Status> {
    app.set_metadata(
        &app.admin_token,
        SetMetadataRequest {
            user_id: user_id.into(),
            organization_id: org_of(app, user_id),
            entries: entries.iter().map(|(k, v)| entry(k, text(v))).collect(),
        },
    )
    .await
    .map(drop)
}

async fn list_of(
    app: &TestApp,
    user_id: &str,
    key: Option<&str>,
) -> Result<Vec<pb::Metadata>, tonic::Status> {
    app.list_metadata(
        &app.admin_token,
        ListMetadataRequest {
            user_id: user_id.into(),
            organization_id: org_of(app, user_id),
            key_filter: key.map(|key| KeyFilter {
                key: key.into(),
                r#match: KeyMatch::Equals.into(),
            }),
            ..Default::default()
        },
    )
    .await
    .map(|answer| answer.into_inner().metadata)
}

/// The organisation a user of the cast is in (the v1 management API needs it named for another
/// organisation's user).
fn org_of(app: &TestApp, user_id: &str) -> String {
    if user_id == app.bob {
        app.other_org.clone()
    } else {
        app.org.clone()
    }
}

/// Nothing in `text` gives `plaintext` away: not as itself, nor base64 or base64url of it.
fn assert_no_plaintext(text: &str, plaintext: &str) {
    for shown in [
        plaintext.to_owned(),
        STANDARD.encode(plaintext),
        URL_SAFE_NO_PAD.encode(plaintext),
    ] {
        assert!(!text.contains(&shown), "`{shown}` found in {text}");
    }
}

/// What ZITADEL stores for `key` of `user_id`, as text.
fn stored(app: &TestApp, user_id: &str, key: &str) -> String {
    let value = app
        .standin
        .metadata_of(user_id)
        .remove(key)
        .expect("stored");
    String::from_utf8(value).unwrap()
}

async fn writes_are_stored_sealed_and_opened_for_authorised_callers(api: ApiChoice) {
    let app = sealed_app(api).await;
    set(
        &app,
        &app.alice,
        &[("routing.tier", TIER), ("secret.note", NOTE)],
    )
    .await
    .unwrap();

    // ZITADEL holds ciphertext under the newest key, bound to alice and the key.
    for key in ["routing.tier", "secret.note"] {
        let value = stored(&app, &app.alice, key);
        assert!(value.starts_with("usermeta:sealed:v1:k2:"), "{value}");
        assert_no_plaintext(&value, TIER);
        assert_no_plaintext(&value, NOTE);
    }
    // Two equal plaintexts seal differently: nothing in ZITADEL tells that users share a value.
    set(&app, &app.bob, &[("secret.note", NOTE)]).await.unwrap();
    set(&app, &app.admin, &[("secret.note", NOTE)])
        .await
        .unwrap();
    assert_ne!(
        stored(&app, &app.bob, "secret.note"),
        stored(&app, &app.alice, "secret.note")
    );

    // The admin reads plaintext: ListMetadata, a filtered listing, BatchGetMetadata.
    let listed = list_of(&app, &app.alice, None).await.unwrap();
    let listed_pairs = pairs(&listed);
    assert!(
        listed_pairs.contains(&("routing.tier".into(), Some(TIER.into()))),
        "{listed_pairs:?}"
    );
    assert!(
        listed_pairs.contains(&("secret.note".into(), Some(NOTE.into()))),
        "{listed_pairs:?}"
    );
    assert!(
        listed_pairs.contains(&("ContractNumber".into(), Some("1234".into()))),
        "{listed_pairs:?}"
    );
    let filtered = list_of(&app, &app.alice, Some("secret.note"))
        .await
        .unwrap();
    assert_eq!(text_of(&filtered[0]), Some(NOTE));
    let batch = app
        .client
        .clone()
        .batch_get_metadata(authed(
            BatchGetMetadataRequest {
                user_ids: vec![app.alice.clone(), app.admin.clone()],
                keys: vec!["secret.note".into()],
                ..Default::default()
            },
            &app.admin_token,
        ))
        .await
        .unwrap()
        .into_inner();
    for result in &batch.results {
        assert_eq!(result.error, None, "{result:?}");
        assert_eq!(text_of(&result.metadata[0]), Some(NOTE));
    }

    // Alice reads her readable sealed key in plaintext from each source; the hidden one not at all.
    for source in [MetadataSource::Userinfo, MetadataSource::AuthApi] {
        let mine = app
            .get_my_metadata(
                &app.alice_token,
                GetMyMetadataRequest {
                    source: source.into(),
                    ..Default::default()
                },
            )
            .await
            .unwrap()
            .into_inner();
        let pairs = pairs(&mine.metadata);
        assert!(
            pairs.contains(&("secret.note".into(), Some(NOTE.into()))),
            "{source:?} {pairs:?}"
        );
        assert!(
            !pairs.iter().any(|(key, _)| key == "routing.tier"),
            "{pairs:?}"
        );
        let hidden = app
            .get_my_metadata(
                &app.alice_token,
                GetMyMetadataRequest {
                    keys: vec!["routing.tier".into()],
                    source: source.into(),
                },
            )
            .await
            .unwrap_err();
        assert_status(&hidden, Code::PermissionDenied, "KEY_HIDDEN");
    }

    // What ZITADEL itself hands alice with her own token: ciphertext only.
    let http = reqwest::Client::new();
    let userinfo = http
        .get(format!("{}/oidc/v1/userinfo", app.standin.url()))
        .bearer_auth(&app.alice_token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        userinfo.contains("routing.tier") && userinfo.contains("secret.note"),
        "{userinfo}"
    );
    assert!(
        userinfo.contains(&URL_SAFE_NO_PAD.encode("usermeta:sealed:v1")),
        "{userinfo}"
    );
    let auth_api = http
        .post(format!(
            "{}/auth/v1/users/me/metadata/_search",
            app.standin.url()
        ))
        .bearer_auth(&app.alice_token)
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(auth_api.contains("secret.note"), "{auth_api}");
    for (plaintext, seen) in [
        (TIER, &userinfo),
        (NOTE, &userinfo),
        (TIER, &auth_api),
        (NOTE, &auth_api),
    ] {
        assert_no_plaintext(seen, plaintext);
    }
}

async fn a_sealed_key_cannot_be_searched_by_value(api: ApiChoice) {
    let app = sealed_app(api).await;
    set(&app, &app.alice, &[("secret.note", NOTE)])
        .await
        .unwrap();
    app.standin.clear_requests();
    let refused = app
        .client
        .clone()
        .find_users_by_metadata(authed(
            FindUsersByMetadataRequest {
                key: "secret.note".into(),
                value: text(NOTE),
                ..Default::default()
            },
            &app.admin_token,
        ))
        .await
        .unwrap_err();
    assert_status(&refused, Code::FailedPrecondition, "KEY_SEALED");
    assert!(
        refused.message().contains("secret.note") && refused.message().contains("sealed"),
        "{refused:?}"
    );
    app.assert_no_management_request();
}

async fn value_rules_check_the_plaintext_and_the_limit_counts_after_sealing(api: ApiChoice) {
    let app = sealed_app(api).await;
    // The pattern holds for the plaintext (the ciphertext never would).
    set(&app, &app.alice, &[("secret.note", NOTE)])
        .await
        .unwrap();
    let refused = set(&app, &app.alice, &[("secret.note", "Blue Moon")])
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&refused), ["entries[0].value"]);
    // 400,000 bytes fit ZITADEL's 500,000 as plaintext but not sealed: refused before anything is sent.
    app.standin.clear_requests();
    let big = "x".repeat(400_000);
    let refused = set(&app, &app.alice, &[("blob", &big)]).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&refused), ["entries[0].value"]);
    let described = format!("{refused:?}");
    assert!(
        described.contains("500000") && described.contains("sealed"),
        "{described}"
    );
    app.assert_no_management_request();
    // The largest plaintext that fits, sealed, is stored.
    let most = Sealer::from_text(K1_K2, "x")
        .unwrap()
        .max_plaintext(500_000);
    set(&app, &app.alice, &[("blob", &"y".repeat(most))])
        .await
        .unwrap();
    assert!(stored(&app, &app.alice, "blob").len() <= 500_000);
}

async fn values_written_around_usermeta_altered_or_moved_are_withheld(api: ApiChoice) {
    let app = sealed_app(api).await;
    set(&app, &app.alice, &[("secret.note", NOTE)])
        .await
        .unwrap();
    let sealed = stored(&app, &app.alice, "secret.note");
    let (alice, bob) = (&app.alice, &app.admin);
    let payload_end = sealed.len() - 1;
    let altered = format!(
        "{}{}",
        &sealed[..payload_end],
        if sealed.ends_with('A') { 'B' } else { 'A' }
    );
    // Written in the Console (the management API, directly): plaintext, copies, damage.
    for (user, key, value) in [
        (alice, "secret.plain", "typed-in-the-console".to_owned()),
        (alice, "secret.moved", sealed.clone()),
        (bob, "secret.note", sealed.clone()),
        (alice, "secret.altered", altered),
        (alice, "secret.cut", sealed[..sealed.len() - 20].to_owned()),
        (alice, "secret.unknown", sealed.replace(":k2:", ":k9:")),
    ] {
        app.standin.set_metadata(user, key, value.as_bytes());
    }
    let before = metric(
        app.metrics_addr(),
        r#"usermeta_sealed_values_read_total{outcome="not_sealed"}"#,
    )
    .await;

    // Named, each is refused with VALUE_NOT_SEALED (never passed on, never a crash).
    for (user, key) in [
        (alice, "secret.plain"),
        (alice, "secret.moved"),
        (bob, "secret.note"),
        (alice, "secret.altered"),
        (alice, "secret.cut"),
        (alice, "secret.unknown"),
    ] {
        let refused = list_of(&app, user, Some(key)).await.unwrap_err();
        assert_status(&refused, Code::FailedPrecondition, "VALUE_NOT_SEALED");
        assert!(refused.message().contains(key), "{refused:?}");
        assert_no_plaintext(refused.message(), NOTE);
    }
    // In a listing the good value opens and the bad keys come without a value.
    let listed = pairs(&list_of(&app, alice, None).await.unwrap());
    assert!(
        listed.contains(&("secret.note".into(), Some(NOTE.into()))),
        "{listed:?}"
    );
    for key in [
        "secret.plain",
        "secret.moved",
        "secret.altered",
        "secret.cut",
        "secret.unknown",
    ] {
        assert!(
            listed.contains(&(key.to_owned(), None)),
            "{key}: {listed:?}"
        );
    }
    // Alice's own read: the same rule.
    let mine = app
        .get_my_metadata(
            &app.alice_token,
            GetMyMetadataRequest {
                keys: vec!["secret.plain".into()],
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_status(&mine, Code::FailedPrecondition, "VALUE_NOT_SEALED");
    // A batch names the keys: bob's result fails alone.
    let batch = app
        .client
        .clone()
        .batch_get_metadata(authed(
            BatchGetMetadataRequest {
                user_ids: vec![alice.clone(), bob.clone()],
                keys: vec!["secret.note".into()],
                ..Default::default()
            },
            &app.admin_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(text_of(&batch.results[0].metadata[0]), Some(NOTE));
    assert_eq!(
        batch.results[1].error.as_ref().unwrap().code,
        Code::FailedPrecondition as i32
    );
    // Counted.
    assert!(
        metric(
            app.metrics_addr(),
            r#"usermeta_sealed_values_read_total{outcome="not_sealed"}"#
        )
        .await
            > before
    );

    // The next write through usermeta seals it.
    set(&app, alice, &[("secret.plain", "now-sealed")])
        .await
        .unwrap();
    assert!(stored(&app, alice, "secret.plain").starts_with("usermeta:sealed:v1:k2:"));
    let opened = list_of(&app, alice, Some("secret.plain")).await.unwrap();
    assert_eq!(text_of(&opened[0]), Some("now-sealed"));

    // Another ZITADEL instance's usermeta (same keys) cannot open them either.
    let elsewhere = app
        .another()
        .api(api)
        .policy(policy(&app.admin))
        .sealing_for(K1_K2, Some("https://other-instance.example"))
        .spawn()
        .await;
    let refused = list_of(&elsewhere, alice, Some("secret.note"))
        .await
        .unwrap_err();
    assert_status(&refused, Code::FailedPrecondition, "VALUE_NOT_SEALED");
}

async fn watchers_get_the_plaintext_they_may_read(api: ApiChoice) {
    let app = sealed_app(api).await;
    let mut stream = watch(&app.client, &app.admin_token, &app.alice, "secret.")
        .await
        .unwrap();
    set(&app, &app.alice, &[("secret.note", NOTE)])
        .await
        .unwrap();
    let change = promptly("the sealed change", stream.message())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(change.key, "secret.note");
    assert_eq!(
        change.value.and_then(|v| v.kind),
        Some(pb::metadata_value::Kind::Text(NOTE.into()))
    );
}

on_both_apis!(
    writes_are_stored_sealed_and_opened_for_authorised_callers,
    a_sealed_key_cannot_be_searched_by_value,
    value_rules_check_the_plaintext_and_the_limit_counts_after_sealing,
    values_written_around_usermeta_altered_or_moved_are_withheld,
    watchers_get_the_plaintext_they_may_read,
    conditions_and_merge_patches_work_on_sealed_keys,
);

/// METADATA_SOURCE_TOKEN: the JWT carries ciphertext (read it), usermeta opens it for the user.
#[tokio::test]
async fn a_jwt_carries_ciphertext_and_the_token_source_opens_it() {
    let app = sealed_app(ApiChoice::V1).await;
    set(
        &app,
        &app.alice,
        &[("routing.tier", TIER), ("secret.note", NOTE)],
    )
    .await
    .unwrap();
    let project = app.standin.create_project(&app.org);
    let mut scopes: Vec<String> = FULL_SCOPES.iter().map(|s| (*s).to_owned()).collect();
    scopes.push(format!("urn:zitadel:iam:org:project:id:{project}:aud"));
    let jwt = app.standin.issue_jwt_with(
        &app.alice,
        JwtSpec {
            scopes,
            ..JwtSpec::default()
        },
    );
    let claims = String::from_utf8(
        URL_SAFE_NO_PAD
            .decode(jwt.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert!(claims.contains("secret.note"), "{claims}");
    assert_no_plaintext(&claims, NOTE);
    assert_no_plaintext(&claims, TIER);

    let validating = app
        .another()
        .policy(policy(&app.admin))
        .sealing(K1_K2)
        .identity(IdentityConfig {
            introspection: None,
            jwt: Some(JwtConfig {
                audience: vec![project],
                min_refresh_interval: std::time::Duration::from_secs(60),
            }),
        })
        .spawn()
        .await;
    let mine = validating
        .get_my_metadata(
            &jwt,
            GetMyMetadataRequest {
                source: MetadataSource::Token.into(),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .into_inner();
    let pairs = pairs(&mine.metadata);
    assert!(
        pairs.contains(&("secret.note".into(), Some(NOTE.into()))),
        "{pairs:?}"
    );
    assert!(
        !pairs.iter().any(|(key, _)| key == "routing.tier"),
        "{pairs:?}"
    );
}

/// ext_authz: a rule routes on a sealed key hidden from its user, and a header carries a sealed key opened.
#[tokio::test]
async fn ext_authz_routes_on_a_sealed_hidden_key_and_sends_opened_headers() {
    let cast = TestApp::seeded().await;
    let app = TestApp::builder()
        .reuse(cast.clone())
        .policy(policy(&cast.admin))
        .sealing(K1_K2)
        .ext_authz(AuthzConfig {
            rules: parse_rules(&format!("path=/gold metadata.routing.tier={TIER}"), "test")
                .unwrap(),
            headers: parse_header_map("secret.note=x-note").unwrap(),
            ..AuthzConfig::default()
        })
        .spawn()
        .await;
    set(
        &app,
        &app.alice,
        &[("routing.tier", TIER), ("secret.note", NOTE)],
    )
    .await
    .unwrap();
    set(&app, &app.bob, &[("routing.tier", "silver")])
        .await
        .unwrap();
    let bob_token = app.standin.issue_token(&app.bob, FULL_SCOPES);
    let mut client = authz_client(app.authz_addr()).await;
    let gold = |token: &str| {
        let mut request = check_request(token);
        if let Some(http) = request
            .attributes
            .as_mut()
            .and_then(|a| a.request.as_mut())
            .and_then(|r| r.http.as_mut())
        {
            http.path = "/gold".into();
        }
        request
    };
    let allowed = client
        .check(gold(&app.alice_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        allowed.status.as_ref().unwrap().code,
        Code::Ok as i32,
        "{allowed:?}"
    );
    let headers = format!("{allowed:?}");
    assert!(
        headers.contains("x-note") && headers.contains(NOTE),
        "{headers}"
    );
    assert_no_plaintext(&headers, TIER);
    let denied = client.check(gold(&bob_token)).await.unwrap().into_inner();
    assert_eq!(
        denied.status.as_ref().unwrap().code,
        Code::PermissionDenied as i32,
        "{denied:?}"
    );
    assert_no_plaintext(&format!("{denied:?}"), TIER);
}

/// A policy that seals keys without sealing keys does not start, naming both settings.
#[tokio::test]
async fn a_sealed_key_without_sealing_keys_stops_start_up() {
    let cast = TestApp::seeded().await;
    let error = TestApp::builder()
        .reuse(cast.clone())
        .policy(policy(&cast.admin))
        .build()
        .await
        .err()
        .expect("start-up refused")
        .to_string();
    assert!(
        error.contains("USERMETA_POLICY_FILE")
            && error.contains("USERMETA_SEALING_KEYS_FILE")
            && error.contains("routing.tier"),
        "{error}"
    );
}

/// Rotation: add k2, re-seal in two runs (the first cut short), then retire k1: every value still opens, and
/// the second run writes nothing for the users the first one did.
#[tokio::test]
async fn a_rotation_cut_short_is_finished_by_running_it_again() {
    let cast = TestApp::seeded().await;
    let before = TestApp::builder()
        .reuse(cast.clone())
        .api(ApiChoice::V2)
        .policy(policy(&cast.admin))
        .sealing(K1)
        .spawn()
        .await;
    for user in [&cast.alice, &cast.bob, &cast.admin] {
        set(
            &before,
            user,
            &[("secret.note", NOTE), ("routing.tier", TIER)],
        )
        .await
        .unwrap();
        assert!(stored(&before, user, "secret.note").starts_with("usermeta:sealed:v1:k1:"));
    }
    // A value typed into the Console under a sealed key.
    cast.standin
        .set_metadata(&cast.bob, "secret.console", b"typed");

    let instance = cast.standin.url();
    let rotated = policy(&cast.admin).with_sealer(std::sync::Arc::new(
        Sealer::from_text(K1_K2, instance.trim_end_matches('/')).unwrap(),
    ));
    let zitadel = {
        let mut config = ZitadelConfig::new(
            instance.parse().unwrap(),
            ServiceCredential::Pat(cast.service_pat.clone().into()),
        );
        config.management_api = ApiChoice::V2;
        Zitadel::new(config).unwrap()
    };
    // No Redis here: the locks of this process alone, as the replicas' would be without Redis.
    let locks = std::sync::Arc::new(WriteLocks::local(WriteLockConfig::default()));
    // The dry run counts and writes nothing.
    cast.standin.clear_requests();
    let dry = reseal(
        &zitadel,
        &rotated,
        &locks,
        ResealOptions {
            dry_run: true,
            ..ResealOptions::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(
        (dry.users_written, dry.resealed, dry.plaintext_left),
        (3, 6, 1),
        "{dry}"
    );
    assert_eq!(
        calls_about(&cast, "SetUserMetadata", None),
        0,
        "a dry run writes nothing"
    );

    // Cut short after one user.
    let first = reseal(
        &zitadel,
        &rotated,
        &locks,
        ResealOptions {
            max_users: Some(1),
            ..ResealOptions::default()
        },
    )
    .await
    .unwrap();
    assert!(first.stopped_early && first.users_written == 1, "{first}");
    let k2_users: Vec<&String> = [&cast.alice, &cast.bob, &cast.admin]
        .into_iter()
        .filter(|user| stored(&before, user, "secret.note").starts_with("usermeta:sealed:v1:k2:"))
        .collect();
    assert_eq!(k2_users.len(), 1);
    let done_first = k2_users[0].clone();

    // Halfway, both keys open everything.
    let halfway = before
        .another()
        .api(ApiChoice::V2)
        .policy(policy(&cast.admin))
        .sealing(K1_K2)
        .metrics()
        .spawn()
        .await;
    let old_key = r#"usermeta_sealed_values_read_total{outcome="old_key"}"#;
    let old_before = metric(halfway.metrics_addr(), old_key).await;
    for user in [&cast.alice, &cast.bob, &cast.admin] {
        let read = list_of(&halfway, user, Some("secret.note")).await.unwrap();
        assert_eq!(text_of(&read[0]), Some(NOTE));
    }
    // The two users not done yet were read under the old key, and counted.
    assert!(metric(halfway.metrics_addr(), old_key).await >= old_before + 2.0);

    // Run again, sealing the Console's plaintext too: the rest moves, the first user is not written again.
    // While another writer holds the write locks of the users left, the run reads them but writes nothing.
    let left: Vec<String> = [&cast.alice, &cast.bob, &cast.admin]
        .into_iter()
        .filter(|user| **user != done_first)
        .cloned()
        .collect();
    let mut held = Vec::new();
    for user in &left {
        held.push(locks.lock(user, &[], Need::Guarantee).await.unwrap());
    }
    cast.standin.clear_requests();
    let run = reseal(
        &zitadel,
        &rotated,
        &locks,
        ResealOptions {
            seal_plaintext: true,
            ..ResealOptions::default()
        },
    );
    let other_writer = async {
        until("the run reads a user whose write lock is held", || {
            left.iter()
                .any(|user| calls_about(&cast, "ListUserMetadata", Some(user)) > 0)
        })
        .await;
        for user in &left {
            assert_eq!(
                calls_about(&cast, "SetUserMetadata", Some(user)),
                0,
                "written while another writer held the lock"
            );
        }
        drop(held);
    };
    let (second, ()) = tokio::join!(run, other_writer);
    let second = second.unwrap();
    for user in &left {
        assert_eq!(
            calls_about(&cast, "SetUserMetadata", Some(user)),
            1,
            "one write per user, once its lock was free"
        );
    }
    assert_eq!(
        (
            second.users_written,
            second.resealed,
            second.current,
            second.plaintext_sealed
        ),
        (2, 4, 2, 1),
        "{second}"
    );
    assert_eq!(
        calls_about(&cast, "SetUserMetadata", Some(&done_first)),
        0,
        "the user done first is not written again"
    );

    // k1 retired: everything opens under k2 alone.
    let after = before
        .another()
        .api(ApiChoice::V2)
        .policy(policy(&cast.admin))
        .sealing(K2)
        .spawn()
        .await;
    for user in [&cast.alice, &cast.bob, &cast.admin] {
        let read = list_of(&after, user, Some("secret.note")).await.unwrap();
        assert_eq!(text_of(&read[0]), Some(NOTE));
        assert!(stored(&after, user, "routing.tier").starts_with("usermeta:sealed:v1:k2:"));
    }
    let console = list_of(&after, &cast.bob, Some("secret.console"))
        .await
        .unwrap();
    assert_eq!(text_of(&console[0]), Some("typed"));
}

/// Conditional writes and merge patches on a sealed key: the etag is of what ZITADEL stores (the same from
/// every read path), a patch applies to the opened value and the result is sealed again; a value that does
/// not open cannot be patched.
async fn conditions_and_merge_patches_work_on_sealed_keys(api: ApiChoice) {
    // The test writes plaintext into the stand-in behind usermeta's back, as the Console would, and reads it
    // at once: no listing from memory in between.
    let cast = TestApp::seeded().await;
    let app = TestApp::builder()
        .api(api)
        .reuse(cast.clone())
        .policy(policy(&cast.admin))
        .sealing(K1_K2)
        .metrics()
        .no_metadata_cache()
        .spawn()
        .await;
    set(&app, &app.alice, &[("blob", r#"{"a":1}"#)])
        .await
        .unwrap();
    let listed = list_of(&app, &app.alice, Some("blob")).await.unwrap();
    let etag = listed[0].etag.clone();
    assert!(!etag.is_empty());
    // Every read path gives the same etag.
    for source in [MetadataSource::Userinfo, MetadataSource::AuthApi] {
        let mine = app
            .get_my_metadata(
                &app.alice_token,
                GetMyMetadataRequest {
                    keys: vec!["blob".into()],
                    source: source.into(),
                },
            )
            .await
            .unwrap()
            .into_inner();
        assert_eq!(mine.metadata[0].etag, etag, "{source:?}");
        assert_eq!(text_of(&mine.metadata[0]), Some(r#"{"a":1}"#));
    }
    let patch = |if_match: &str| SetMetadataRequest {
        user_id: app.alice.clone(),
        organization_id: app.org.clone(),
        entries: vec![pb::MetadataEntry {
            key: "blob".into(),
            if_match: if_match.into(),
            json_merge_patch: r#"{"b":2}"#.into(),
            ..Default::default()
        }],
    };
    app.set_metadata(&app.admin_token, patch(&etag))
        .await
        .unwrap();
    let stored_now = stored(&app, &app.alice, "blob");
    assert!(
        stored_now.starts_with("usermeta:sealed:v1:k2:"),
        "{stored_now}"
    );
    assert_no_plaintext(&stored_now, r#"{"a":1,"b":2}"#);
    let after = list_of(&app, &app.alice, Some("blob")).await.unwrap();
    assert_eq!(text_of(&after[0]), Some(r#"{"a":1,"b":2}"#));
    assert_ne!(after[0].etag, etag);
    // The old etag no longer holds; neither does if_absent.
    let stale = app
        .set_metadata(&app.admin_token, patch(&etag))
        .await
        .unwrap_err();
    assert_status(&stale, Code::Aborted, "ETAG_MISMATCH");
    let absent = app
        .set_metadata(
            &app.admin_token,
            SetMetadataRequest {
                user_id: app.alice.clone(),
                organization_id: app.org.clone(),
                entries: vec![pb::MetadataEntry {
                    key: "blob".into(),
                    value: text("x"),
                    if_absent: true,
                    ..Default::default()
                }],
            },
        )
        .await
        .unwrap_err();
    assert_status(&absent, Code::Aborted, "ETAG_MISMATCH");
    // Plaintext written in the Console: its etag still guards, but a patch cannot apply to it.
    app.standin
        .set_metadata(&app.alice, "blob", br#"{"typed":true}"#);
    let console = list_of(&app, &app.alice, None).await.unwrap();
    let console_etag = console
        .iter()
        .find(|m| m.key == "blob")
        .map(|m| m.etag.clone())
        .unwrap();
    let refused = app
        .set_metadata(&app.admin_token, patch(&console_etag))
        .await
        .unwrap_err();
    assert_status(&refused, Code::FailedPrecondition, "VALUE_NOT_SEALED");
    assert_eq!(
        app.standin.metadata_of(&app.alice)["blob"],
        br#"{"typed":true}"#.to_vec(),
        "nothing written"
    );
}

/// How many calls of the v2 user service's `procedure` the stand-in received (about `user`, when named).
fn calls_about(cast: &Cast, procedure: &str, user: Option<&str>) -> usize {
    cast.standin
        .requests()
        .iter()
        .filter(|r| r.path.ends_with(&format!("/{procedure}")))
        .filter(|r| user.is_none_or(|user| String::from_utf8_lossy(&r.body).contains(user)))
        .count()
}
