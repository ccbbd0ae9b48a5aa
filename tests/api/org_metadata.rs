//! ListOrganizationMetadata, SetOrganizationMetadata and DeleteOrganizationMetadata on both backends (v1
//! management with `x-zitadel-orgid`, v2 `zitadel.org.v2.OrganizationService`): the caller's own organisation
//! from ZITADEL's identity, the policy's organisation rules and hidden keys, value rules, validation before any
//! call, unknown organisations, paging, the cache and its invalidation, and choosing the API on a ZITADEL
//! older than 4.7.

use tonic::Code;
use usermeta::{
    api::pb::{
        DeleteOrganizationMetadataRequest, KeyFilter, KeyMatch, ListMetadataRequest,
        ListOrganizationMetadataRequest, SetMetadataRequest, SetOrganizationMetadataRequest,
    },
    policy::Policy,
};
use usermeta_zitadel::Resilience;
use zitadel_standin::{Apis, FaultKind};

use crate::support::*;

/// The admin manages every organisation (and every user); members write their own organisation's `profile.` keys; `internal.`
/// keys are hidden from members; `plan` takes three values.
fn org_policy(admin: &str) -> Policy {
    Policy::from_toml(
        &format!(
            r#"
[[rule]]
name = "the admin manages every organisation"
resource = "organization"
who = {{ subjects = ["{admin}"] }}
whose = "any"
keys = ["*"]
actions = ["read", "write", "delete"]

[[rule]]
name = "members keep their organisation's profile"
resource = "organization"
whose = "self"
keys = ["profile.*"]
actions = ["write", "delete"]

[[key]]
name = "internal.*"
resource = "organization"
hidden = true

[[key]]
name = "plan"
resource = "organization"
pattern = '^(free|pro|enterprise)$'
"#
        ),
        "org-test.toml",
    )
    .unwrap()
    // The usual test policy for users beside it: the admin does anything to users.
    .with_shorthands([admin.to_owned()], vec![SELF_WRITABLE.into()])
}

async fn spawn(api: ApiChoice) -> TestApp {
    let app = TestApp::builder().api(api).spawn().await;
    let policy = org_policy(&app.admin);
    app.another().api(api).policy(policy).spawn().await
}

fn list(org_id: &str) -> ListOrganizationMetadataRequest {
    ListOrganizationMetadataRequest {
        organization_id: org_id.into(),
        ..Default::default()
    }
}

fn set(org_id: &str, entries: &[(&str, &str)]) -> SetOrganizationMetadataRequest {
    SetOrganizationMetadataRequest {
        organization_id: org_id.into(),
        entries: entries.iter().map(|(k, v)| entry(k, text(v))).collect(),
    }
}

fn delete(org_id: &str, keys: &[&str], allow_missing: bool) -> DeleteOrganizationMetadataRequest {
    DeleteOrganizationMetadataRequest {
        organization_id: org_id.into(),
        keys: keys.iter().map(|k| (*k).to_owned()).collect(),
        allow_missing,
    }
}

fn keys_of(listed: &usermeta::api::pb::ListOrganizationMetadataResponse) -> Vec<String> {
    let mut keys: Vec<String> = listed.metadata.iter().map(|m| m.key.clone()).collect();
    keys.sort();
    keys
}

async fn members_read_their_own_organisation_and_nothing_else_without_a_policy_file(
    api: ApiChoice,
) {
    let app = TestApp::builder().api(api).spawn().await;
    app.standin.set_org_metadata(&app.org, "plan", b"pro");
    app.standin
        .set_org_metadata(&app.other_org, "plan", b"enterprise");
    // Empty organization_id: the organisation ZITADEL says alice belongs to.
    let own = app
        .list_org_metadata(&app.alice_token, list(""))
        .await
        .unwrap();
    assert_eq!(own.organization_id, app.org);
    assert_eq!(pairs(&own.metadata), [("plan".into(), Some("pro".into()))]);
    assert_eq!(own.total_size, 1);
    // Another organisation's id: refused by the policy, ZITADEL never asked.
    app.standin.clear_requests();
    let status = app
        .list_org_metadata(&app.alice_token, list(&app.other_org))
        .await
        .unwrap_err();
    assert_status(&status, Code::PermissionDenied, "POLICY_DENIED");
    let status = app
        .set_org_metadata(&app.alice_token, set("", &[("plan", "free")]))
        .await
        .unwrap_err();
    assert_status(&status, Code::PermissionDenied, "POLICY_DENIED");
    let status = app
        .delete_org_metadata(&app.alice_token, delete("", &["plan"], false))
        .await
        .unwrap_err();
    assert_status(&status, Code::PermissionDenied, "POLICY_DENIED");
    assert!(app.org_metadata_requests().is_empty());
    assert_eq!(app.standin.org_metadata_of(&app.org)["plan"], b"pro");
}

async fn a_rule_lets_the_admin_write_and_delete_any_organisation(api: ApiChoice) {
    let app = spawn(api).await;
    let globex = app.other_org.clone();
    app.set_org_metadata(
        &app.admin_token,
        set(&globex, &[("plan", "enterprise"), ("region", "eu-1")]),
    )
    .await
    .unwrap();
    let stored = app.standin.org_metadata_of(&globex);
    assert_eq!(stored["plan"], b"enterprise");
    assert_eq!(stored["region"], b"eu-1");
    // Binary values come back as binary.
    app.set_org_metadata(
        &app.admin_token,
        SetOrganizationMetadataRequest {
            organization_id: globex.clone(),
            entries: vec![entry("logo", binary(&[0xff, 0x00, 0xfe]))],
        },
    )
    .await
    .unwrap();
    let listed = app
        .list_org_metadata(&app.admin_token, list(&globex))
        .await
        .unwrap();
    assert_eq!(keys_of(&listed), ["logo", "plan", "region"]);
    let logo = listed.metadata.iter().find(|m| m.key == "logo").unwrap();
    assert_eq!(logo.value, binary(&[0xff, 0x00, 0xfe]));
    // v1 reports when a key was set; v2's organisation metadata carries no dates.
    let dated = logo.create_time.is_some() && logo.update_time.is_some();
    assert_eq!(dated, api == ApiChoice::V1, "{api:?}");

    // All or nothing: one missing key removes nothing.
    let status = app
        .delete_org_metadata(&app.admin_token, delete(&globex, &["plan", "nope"], false))
        .await
        .unwrap_err();
    assert_status(&status, Code::NotFound, "METADATA_NOT_FOUND");
    assert!(app.standin.org_metadata_of(&globex).contains_key("plan"));
    // allow_missing removes what exists.
    app.delete_org_metadata(&app.admin_token, delete(&globex, &["plan", "nope"], true))
        .await
        .unwrap();
    let left = app.standin.org_metadata_of(&globex);
    assert!(!left.contains_key("plan"));
    assert!(left.contains_key("region"));
    // Only missing keys with allow_missing: nothing to do, no time.
    let none = app
        .delete_org_metadata(&app.admin_token, delete(&globex, &["gone"], true))
        .await
        .unwrap();
    assert!(none.update_time.is_none());

    // Every call went to the backend chosen, v1 scoped to the organisation by its header.
    let requests = app.org_metadata_requests();
    assert!(!requests.is_empty());
    for request in &requests {
        match api {
            ApiChoice::V2 => assert!(
                request
                    .path
                    .starts_with("/zitadel.org.v2.OrganizationService/"),
                "{}",
                request.path
            ),
            _ => {
                assert!(request.path.starts_with("/management/v1/metadata/"));
                assert_eq!(request.headers["x-zitadel-orgid"], globex.as_str());
            }
        }
    }

    // Members write their own organisation's profile, and nothing of another's.
    app.set_org_metadata(&app.alice_token, set("", &[("profile.name", "Acme")]))
        .await
        .unwrap();
    assert_eq!(
        app.standin.org_metadata_of(&app.org)["profile.name"],
        b"Acme"
    );
    let status = app
        .set_org_metadata(&app.alice_token, set(&globex, &[("profile.name", "x")]))
        .await
        .unwrap_err();
    assert_status(&status, Code::PermissionDenied, "POLICY_DENIED");
}

async fn hidden_keys_are_never_shown_to_the_organisations_members(api: ApiChoice) {
    let app = spawn(api).await;
    app.standin
        .set_org_metadata(&app.org, "internal.tier", b"gold");
    app.standin.set_org_metadata(&app.org, "plan", b"pro");
    app.standin
        .set_org_metadata(&app.other_org, "internal.tier", b"silver");
    // The admin's rule covers every key of every organisation, but the admin is a member of Acme.
    for token in [&app.alice_token, &app.admin_token] {
        let listed = app.list_org_metadata(token, list("")).await.unwrap();
        assert_eq!(keys_of(&listed), ["plan"]);
        assert_eq!(listed.total_size, 1, "counts leave hidden keys out");
        let status = app
            .list_org_metadata(
                token,
                ListOrganizationMetadataRequest {
                    key_filter: Some(KeyFilter {
                        key: "internal.tier".into(),
                        r#match: KeyMatch::Equals.into(),
                    }),
                    ..list("")
                },
            )
            .await
            .unwrap_err();
        assert_status(&status, Code::PermissionDenied, "KEY_HIDDEN");
    }
    // Of an organisation the admin is not a member of, the admin reads them.
    let globex = app
        .list_org_metadata(&app.admin_token, list(&app.other_org))
        .await
        .unwrap();
    assert_eq!(keys_of(&globex), ["internal.tier"]);
}

async fn values_keys_and_ids_are_checked_before_any_call(api: ApiChoice) {
    let app = spawn(api).await;
    app.standin.clear_requests();
    // The policy's value rule.
    let status = app
        .set_org_metadata(&app.admin_token, set(&app.other_org, &[("plan", "gold")]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&status), ["entries[0].value"]);
    // ZITADEL's value limit.
    let big = "x".repeat(500_001);
    let status = app
        .set_org_metadata(&app.admin_token, set(&app.other_org, &[("k", &big)]))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["entries[0].value"]);
    // Control characters and URL delimiters in ids; control characters in keys; duplicates; empty values.
    for bad in ["a/b", "o?x", "o#1", "o\u{7}", "o 1", "..", "%2e"] {
        let status = app
            .list_org_metadata(&app.admin_token, list(bad))
            .await
            .unwrap_err();
        assert_eq!(violated_fields(&status), ["organization_id"], "{bad:?}");
        let status = app
            .set_org_metadata(&app.admin_token, set(bad, &[("k", "v")]))
            .await
            .unwrap_err();
        assert_eq!(violated_fields(&status), ["organization_id"], "{bad:?}");
    }
    let status = app
        .set_org_metadata(
            &app.admin_token,
            set(&app.other_org, &[("a\nb", "v"), ("k", ""), ("k", "w")]),
        )
        .await
        .unwrap_err();
    assert_eq!(
        violated_fields(&status),
        ["entries[0].key", "entries[2].key", "entries[1].value"]
    );
    let status = app
        .delete_org_metadata(&app.admin_token, delete(&app.other_org, &[], false))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["keys"]);
    assert!(
        app.org_metadata_requests().is_empty(),
        "nothing reached ZITADEL"
    );
}

async fn an_organisation_zitadel_does_not_know_is_not_found(api: ApiChoice) {
    let app = spawn(api).await;
    let status = app
        .list_org_metadata(&app.admin_token, list("999999999999999999"))
        .await
        .unwrap_err();
    assert_status(&status, Code::NotFound, "ORGANIZATION_NOT_FOUND");
    let status = app
        .set_org_metadata(
            &app.admin_token,
            set("999999999999999999", &[("plan", "pro")]),
        )
        .await
        .unwrap_err();
    assert_status(&status, Code::NotFound, "ORGANIZATION_NOT_FOUND");
    let status = app
        .delete_org_metadata(
            &app.admin_token,
            delete("999999999999999999", &["plan"], true),
        )
        .await
        .unwrap_err();
    assert_status(&status, Code::NotFound, "ORGANIZATION_NOT_FOUND");
    // A member naming it is refused by the policy first: it learns nothing of which organisations exist.
    let status = app
        .list_org_metadata(&app.alice_token, list("999999999999999999"))
        .await
        .unwrap_err();
    assert_status(&status, Code::PermissionDenied, "POLICY_DENIED");
}

async fn pages_carry_signed_tokens_bound_to_the_organisation(api: ApiChoice) {
    let app = spawn(api).await;
    for key in ["a", "b", "c", "d", "e"] {
        app.standin.set_org_metadata(&app.other_org, key, b"v");
    }
    let mut seen = Vec::new();
    let mut request = ListOrganizationMetadataRequest {
        page_size: 2,
        ..list(&app.other_org)
    };
    loop {
        let page = app
            .list_org_metadata(&app.admin_token, request.clone())
            .await
            .unwrap();
        assert_eq!(page.total_size, 5);
        assert!(page.metadata.len() <= 2);
        seen.extend(page.metadata.iter().map(|m| m.key.clone()));
        if page.next_page_token.is_empty() {
            break;
        }
        // A token of this listing fits neither another organisation nor a user listing.
        let status = app
            .list_org_metadata(
                &app.admin_token,
                ListOrganizationMetadataRequest {
                    page_token: page.next_page_token.clone(),
                    ..list(&app.org)
                },
            )
            .await
            .unwrap_err();
        assert_eq!(violated_fields(&status), ["page_token"]);
        let status = app
            .list_metadata(
                &app.admin_token,
                ListMetadataRequest {
                    page_token: page.next_page_token.clone(),
                    ..Default::default()
                },
            )
            .await
            .unwrap_err();
        assert_eq!(violated_fields(&status), ["page_token"]);
        request.page_token = page.next_page_token;
    }
    seen.sort();
    assert_eq!(seen, ["a", "b", "c", "d", "e"]);
}

async fn reads_are_answered_from_memory_until_a_write_changes_them(api: ApiChoice) {
    let app = spawn(api).await;
    app.standin.set_org_metadata(&app.org, "plan", b"pro");
    let read = || async {
        pairs(
            &app.list_org_metadata(&app.alice_token, list(""))
                .await
                .unwrap()
                .metadata,
        )
    };
    assert_eq!(read().await, [("plan".into(), Some("pro".into()))]);
    app.standin.clear_requests();
    assert_eq!(read().await, [("plan".into(), Some("pro".into()))]);
    assert!(
        app.org_metadata_requests().is_empty(),
        "the second read came from memory"
    );
    // A write through usermeta ends it at once: the next read sees the write.
    app.set_org_metadata(&app.admin_token, set(&app.org, &[("plan", "enterprise")]))
        .await
        .unwrap();
    assert_eq!(read().await, [("plan".into(), Some("enterprise".into()))]);
}

/// Two replicas on one Redis: a write of an organisation's metadata through one ends what the other remembers
/// of that organisation (the bus carries organisation ids), well before its cache would have expired.
async fn a_write_through_one_replica_ends_what_another_remembers_of_the_organisation(
    api: ApiChoice,
) {
    let redis = Redis::start();
    let app = TestApp::builder().api(api).spawn().await;
    let replica = || {
        app.another()
            .api(api)
            .policy(org_policy(&app.admin))
            .redis(usermeta::fleet::RedisConfig::new(redis.url()))
            .spawn()
    };
    let (a, b) = (replica().await, replica().await);
    app.standin.set_org_metadata(&app.org, "plan", b"pro");
    let read_b = || async {
        pairs(
            &b.list_org_metadata(&app.alice_token, list(""))
                .await
                .unwrap()
                .metadata,
        )
    };
    assert_eq!(read_b().await, [("plan".into(), Some("pro".into()))]);
    // B answers from memory now: without the bus it would keep answering "pro" for USERMETA_ORG_CACHE_TTL.
    app.standin.clear_requests();
    assert_eq!(read_b().await, [("plan".into(), Some("pro".into()))]);
    assert!(
        b.org_metadata_requests().is_empty(),
        "B's second read came from memory"
    );
    a.set_org_metadata(&app.admin_token, set(&app.org, &[("plan", "enterprise")]))
        .await
        .unwrap();
    eventually("B sees A's write of the organisation", || async {
        (read_b().await == [("plan".to_owned(), Some("enterprise".to_owned()))]).then_some(())
    })
    .await;
}

on_both_apis!(
    members_read_their_own_organisation_and_nothing_else_without_a_policy_file,
    a_rule_lets_the_admin_write_and_delete_any_organisation,
    hidden_keys_are_never_shown_to_the_organisations_members,
    values_keys_and_ids_are_checked_before_any_call,
    an_organisation_zitadel_does_not_know_is_not_found,
    pages_carry_signed_tokens_bound_to_the_organisation,
    reads_are_answered_from_memory_until_a_write_changes_them,
    a_write_through_one_replica_ends_what_another_remembers_of_the_organisation,
);

/// ZITADEL 4.0 to 4.6 serves v2 user metadata but no v2 organisation metadata: `auto` manages users through v2
/// and organisations through v1; `v2` fixed says the organisation calls need 4.7.
#[tokio::test]
async fn auto_uses_v1_for_organisations_on_a_zitadel_before_4_7_while_users_stay_on_v2() {
    let app = TestApp::builder().api(ApiChoice::Auto).spawn().await;
    let app = app
        .another()
        .api(ApiChoice::Auto)
        .policy(org_policy(&app.admin))
        .spawn()
        .await;
    app.standin.set_apis(Apis::V4_BEFORE_ORG_METADATA);
    app.standin.clear_requests();
    app.set_org_metadata(&app.admin_token, set(&app.other_org, &[("plan", "pro")]))
        .await
        .unwrap();
    app.set_metadata(
        &app.admin_token,
        SetMetadataRequest {
            user_id: app.bob.clone(),
            entries: vec![entry("tier", text("gold"))],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let requests = app.standin.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.path == "/management/v1/metadata/plan"
                && r.headers["x-zitadel-orgid"] == app.other_org.as_str()),
        "the organisation through v1, scoped by x-zitadel-orgid"
    );
    assert!(
        !requests
            .iter()
            .any(|r| r.path.starts_with("/management/v1/users/")),
        "users stay on v2"
    );
    assert!(requests.iter().any(|r| r.is_user_v2_connect()));
    assert_eq!(app.standin.org_metadata_of(&app.other_org)["plan"], b"pro");

    // With v2 fixed, the same ZITADEL cannot serve organisations: said plainly, nothing written.
    let fixed = TestApp::builder().api(ApiChoice::V2).spawn().await;
    let fixed = fixed
        .another()
        .api(ApiChoice::V2)
        .policy(org_policy(&fixed.admin))
        .spawn()
        .await;
    fixed.standin.set_apis(Apis::V4_BEFORE_ORG_METADATA);
    let status = fixed
        .set_org_metadata(
            &fixed.admin_token,
            set(&fixed.other_org, &[("plan", "pro")]),
        )
        .await
        .unwrap_err();
    assert_status(&status, Code::FailedPrecondition, "ZITADEL_API_UNSUPPORTED");
    assert!(status.message().contains("4.7"), "{status:?}");
    assert!(fixed.standin.org_metadata_of(&fixed.other_org).is_empty());

    // A ZITADEL without v1 (as v5 may be): auto uses the v2 organisation service.
    let v2_only = TestApp::builder().api(ApiChoice::Auto).spawn().await;
    let v2_only = v2_only
        .another()
        .api(ApiChoice::Auto)
        .policy(org_policy(&v2_only.admin))
        .spawn()
        .await;
    v2_only.standin.set_apis(Apis::V2_ONLY);
    v2_only
        .set_org_metadata(
            &v2_only.admin_token,
            set(&v2_only.other_org, &[("plan", "pro")]),
        )
        .await
        .unwrap();
    assert!(
        v2_only
            .org_metadata_requests()
            .iter()
            .any(|r| r.path == "/zitadel.org.v2.OrganizationService/SetOrganizationMetadata")
    );
}

/// 429 and 5xx from the organisation endpoints: the same retries as every other call, then the same statuses.
#[tokio::test]
async fn organisation_calls_are_retried_and_fail_like_every_other_call() {
    for (api, path) in [
        (ApiChoice::V1, "/management/v1/metadata/"),
        (
            ApiChoice::V2,
            "/zitadel.org.v2.OrganizationService/SetOrganizationMetadata",
        ),
    ] {
        let app = TestApp::builder().api(api).spawn().await;
        let app = app
            .another()
            .api(api)
            .policy(org_policy(&app.admin))
            .fast_retries(Resilience::default())
            .spawn()
            .await;
        // One 503, then ZITADEL is well: the retry lands the write.
        app.standin
            .push_fault(fault(path, Some(1), FaultKind::Status(503)));
        app.set_org_metadata(&app.admin_token, set(&app.other_org, &[("plan", "pro")]))
            .await
            .unwrap_or_else(|status| panic!("{api:?}: {status:?}"));
        assert_eq!(app.standin.org_metadata_of(&app.other_org)["plan"], b"pro");
        // 429 on every attempt: RESOURCE_EXHAUSTED, ZITADEL_RATE_LIMITED.
        app.standin
            .push_fault(fault(path, None, FaultKind::Status(429)));
        let status = app
            .set_org_metadata(&app.admin_token, set(&app.other_org, &[("plan", "free")]))
            .await
            .unwrap_err();
        assert_status(&status, Code::ResourceExhausted, "ZITADEL_RATE_LIMITED");
        app.standin.clear_faults();
        app.standin
            .push_fault(fault(path, None, FaultKind::Status(500)));
        let status = app
            .set_org_metadata(&app.admin_token, set(&app.other_org, &[("plan", "free")]))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unavailable, "{api:?}: {status:?}");
        app.standin.clear_faults();
    }
}

/// ZITADEL's `org.metadata.*` events end what usermeta remembers of the organisation, with or without a payload
/// (ZITADEL 4.1 sent none).
#[tokio::test]
async fn zitadel_events_end_what_is_remembered_of_an_organisation() {
    let keys = "8lT1WbPq3yS9kd0vRzXh4mQe";
    let app = TestApp::builder().spawn().await;
    let app = app
        .another()
        .policy(org_policy(&app.admin))
        .webhook(keys)
        .spawn()
        .await;
    app.standin.set_org_metadata(&app.org, "plan", b"pro");
    let read = || async {
        pairs(
            &app.list_org_metadata(&app.alice_token, list(""))
                .await
                .unwrap()
                .metadata,
        )
    };
    assert_eq!(read().await, [("plan".into(), Some("pro".into()))]);
    for (event_type, value) in [
        ("org.metadata.set", b"enterprise".as_slice()),
        ("org.metadata.removed", b"".as_slice()),
    ] {
        // Changed in ZITADEL's Console: usermeta still remembers the old value...
        app.standin.set_org_metadata(&app.org, "plan", value);
        let remembered = read().await;
        assert_ne!(
            remembered,
            pairs_of_store(&app.standin.org_metadata_of(&app.org))
        );
        // ...until the event, whose payload is empty as ZITADEL 4.1 sent it.
        let body = serde_json::json!({
            "aggregateID": app.org, "aggregateType": "org", "resourceOwner": app.org,
            "event_type": event_type, "event_payload": {},
            "created_at": "2026-01-01T00:00:00Z",
        });
        let answer = deliver_event(&app, keys, &body).await;
        assert_eq!(answer, 200, "{event_type}");
        assert_eq!(
            read().await,
            pairs_of_store(&app.standin.org_metadata_of(&app.org)),
            "{event_type}"
        );
    }
}

fn pairs_of_store(
    store: &std::collections::BTreeMap<String, Vec<u8>>,
) -> Vec<(String, Option<String>)> {
    store
        .iter()
        .map(|(k, v)| (k.clone(), Some(String::from_utf8(v.clone()).unwrap())))
        .collect()
}
