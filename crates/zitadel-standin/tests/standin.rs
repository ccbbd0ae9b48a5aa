//! Tests of the ZITADEL stand-in over real HTTP (reqwest), HTTP/1 and h2c.

use std::time::{Duration, Instant};

use base64::Engine as _;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use zitadel_standin::{AudienceErrorStyle, Fault, FaultKind, ManagerRole, StandIn};

const AUD: &str = "urn:zitadel:iam:org:project:id:zitadel:aud";
const META: &str = "urn:zitadel:iam:user:metadata";

struct Fixture {
    z: StandIn,
    http: reqwest::Client,
    org: String,
    alice: String,
    svc: String,
    pat: String,
}

async fn fixture() -> Fixture {
    let z = StandIn::start().await.expect("start");
    let org = z.create_org("Acme");
    let alice = z.create_user(&org, "alice");
    let svc = z.create_service_user(&org, "usermeta", ManagerRole::OrgOwner);
    let pat = z.issue_pat(&svc);
    Fixture {
        z,
        http: reqwest::Client::new(),
        org,
        alice,
        svc,
        pat,
    }
}

impl Fixture {
    /// Sends a request and returns the status, headers and parsed JSON body (Null if empty/not JSON).
    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
        org: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.z.url()));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(org) = org {
            request = request.header("x-zitadel-orgid", org);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_owned());
        }
        let response = request.send().await.expect("send");
        let status = response.status();
        let text = response.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn mgmt(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let body = body.map(|b| b.to_string());
        self.call(
            method,
            &format!("/management/v1/users{path}"),
            Some(&self.pat),
            body.as_deref(),
            None,
        )
        .await
    }

    async fn userinfo(&self, token: &str) -> (StatusCode, Value) {
        self.call(Method::GET, "/oidc/v1/userinfo", Some(token), None, None)
            .await
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn assert_error(actual: &(StatusCode, Value), status: u16, code: i64, id: Option<&str>) {
    assert_eq!(actual.0.as_u16(), status, "{actual:?}");
    assert_eq!(actual.1["code"], code, "{actual:?}");
    match id {
        Some(id) => {
            let message = actual.1["message"].as_str().expect("message");
            assert!(message.ends_with(&format!(" ({id})")), "{actual:?}");
            assert_eq!(actual.1["details"][0]["id"], id, "{actual:?}");
            assert_eq!(
                actual.1["details"][0]["@type"],
                "type.googleapis.com/zitadel.v1.ErrorDetail"
            );
        }
        None => assert!(actual.1.get("details").is_none(), "{actual:?}"),
    }
}

// ----------------------------------------------------------------------------------------------------------
// userinfo

#[tokio::test]
async fn userinfo_claims_follow_the_token_scopes() {
    let f = fixture().await;
    f.z.set_metadata(&f.alice, "ContractNumber", b"1234");
    f.z.set_metadata(&f.alice, "bin", &[0xfb, 0xff]);

    let token = f.z.issue_token(&f.alice, &["openid"]);
    let (status, claims) = f.userinfo(&token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(claims, json!({"sub": f.alice}));

    let token = f.z.issue_token(&f.alice, &["openid", "email", "profile"]);
    let (_, claims) = f.userinfo(&token).await;
    assert_eq!(claims["email"], "alice@acme.localhost");
    assert_eq!(claims["email_verified"], true);
    for claim in [
        "name",
        "given_name",
        "family_name",
        "preferred_username",
        "locale",
    ] {
        assert!(claims[claim].is_string(), "{claim}: {claims}");
    }
    assert!(claims["updated_at"].is_u64());
    assert!(claims.get(META).is_none());

    let token = f.z.issue_token(
        &f.alice,
        &["openid", META, "urn:zitadel:iam:user:resourceowner"],
    );
    let (_, claims) = f.userinfo(&token).await;
    // base64url without padding, unlike the REST APIs.
    assert_eq!(
        claims[META],
        json!({"ContractNumber": "MTIzNA", "bin": "-_8"})
    );
    assert_eq!(claims["urn:zitadel:iam:user:resourceowner:id"], f.org);
    assert_eq!(claims["urn:zitadel:iam:user:resourceowner:name"], "Acme");
    assert_eq!(
        claims["urn:zitadel:iam:user:resourceowner:primary_domain"],
        "acme.localhost"
    );
    assert!(claims.get("email").is_none());

    // POST and a lower-case scheme work too.
    let response = f
        .http
        .post(format!("{}/oidc/v1/userinfo", f.z.url()))
        .header("authorization", format!("bearer {token}"))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.json::<Value>().await.expect("json")["sub"],
        f.alice
    );
}

#[tokio::test]
async fn userinfo_metadata_claim_is_absent_without_metadata_and_pats_give_sub() {
    let f = fixture().await;
    let token = f.z.issue_token(&f.alice, &["openid", META]);
    let (status, claims) = f.userinfo(&token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(claims, json!({"sub": f.alice}));

    let (status, claims) = f.userinfo(&f.pat).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(claims, json!({"sub": f.svc}));
}

#[tokio::test]
async fn userinfo_rejects_missing_unknown_expired_and_revoked_tokens() {
    let f = fixture().await;
    let response = f
        .http
        .get(format!("{}/oidc/v1/userinfo", f.z.url()))
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(response.headers().get("www-authenticate").is_none());
    assert_eq!(
        response.json::<Value>().await.expect("json"),
        json!({"error":"invalid_request","error_description":"access token missing"})
    );

    let denied = json!({"error":"access_denied","error_description":"access token invalid"});
    assert_eq!(
        f.userinfo("nope").await,
        (StatusCode::UNAUTHORIZED, denied.clone())
    );

    let short =
        f.z.issue_token_with_lifetime(&f.alice, &["openid"], Duration::from_millis(30));
    assert_eq!(f.userinfo(&short).await.0, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(
        f.userinfo(&short).await,
        (StatusCode::UNAUTHORIZED, denied.clone())
    );

    let token = f.z.issue_token(&f.alice, &["openid"]);
    assert!(token.len() >= 32);
    f.z.revoke_token(&token);
    assert_eq!(f.userinfo(&token).await, (StatusCode::UNAUTHORIZED, denied));
}

// ----------------------------------------------------------------------------------------------------------
// Auth API

#[tokio::test]
async fn auth_api_requires_the_zitadel_audience_except_for_pats() {
    let f = fixture().await;
    let path = "/auth/v1/users/me/metadata/_search";
    let no_aud = f.z.issue_token(&f.alice, &["openid"]);
    let result = f
        .call(Method::POST, path, Some(&no_aud), Some("{}"), None)
        .await;
    assert_error(&result, 401, 16, Some("AUTH-7fs1e"));
    assert_eq!(result.1["message"], "Token is invalid (AUTH-7fs1e)");

    f.z.set_audience_error_style(AudienceErrorStyle::InvalidAudience);
    let result = f
        .call(Method::POST, path, Some(&no_aud), Some("{}"), None)
        .await;
    assert_error(&result, 401, 16, Some("APP-Zxfako"));
    assert_eq!(result.1["message"], "invalid audience (APP-Zxfako)");

    let with_aud = f.z.issue_token(&f.alice, &["openid", AUD]);
    let (status, body) = f
        .call(Method::POST, path, Some(&with_aud), None, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["details"]["viewTimestamp"].is_string());
    assert!(body.get("result").is_none() && body["details"].get("totalResult").is_none());

    let (status, _) = f
        .call(Method::POST, path, Some(&f.pat), Some("{}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);

    let result = f.call(Method::POST, path, None, Some("{}"), None).await;
    assert_error(&result, 401, 16, None);
    assert_eq!(result.1["message"], "auth header missing");

    let response = f
        .http
        .post(format!("{}{path}", f.z.url()))
        .header("authorization", format!("Basic {with_aud}"))
        .send()
        .await
        .expect("send");
    let result = (
        response.status(),
        response.json::<Value>().await.expect("json"),
    );
    assert_error(&result, 401, 16, Some("AUTH-7fs1e"));
    assert_eq!(result.1["message"], "invalid auth header (AUTH-7fs1e)");
}

#[tokio::test]
async fn auth_api_lists_and_gets_my_metadata() {
    let f = fixture().await;
    f.z.set_metadata(&f.alice, "ContractNumber", b"1234");
    f.z.set_metadata(&f.alice, "other", b"x");
    let token = f.z.issue_token(&f.alice, &["openid", AUD]);
    let body = r#"{"query":{"offset":"0","limit":100,"asc":true},
        "queries":[{"keyQuery":{"key":"ContractNumber","method":"TEXT_QUERY_METHOD_EQUALS"}}]}"#;
    let (status, list) = f
        .call(
            Method::POST,
            "/auth/v1/users/me/metadata/_search",
            Some(&token),
            Some(body),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["details"]["totalResult"], "1");
    assert!(
        list["details"]["processedSequence"]
            .as_str()
            .expect("seq")
            .parse::<u64>()
            .is_ok()
    );
    let item = &list["result"][0];
    assert_eq!(item["key"], "ContractNumber");
    assert_eq!(item["value"], "MTIzNA==");
    assert_eq!(item["details"]["resourceOwner"], f.org);
    assert!(item["details"]["sequence"].is_string());
    let created = item["details"]["creationDate"].as_str().expect("date");
    assert!(created.ends_with('Z') && created.contains('T'), "{created}");

    let (status, got) = f
        .call(
            Method::GET,
            "/auth/v1/users/me/metadata/ContractNumber",
            Some(&token),
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["metadata"], *item);

    let (status, missing) = f
        .call(
            Method::GET,
            "/auth/v1/users/me/metadata/nope",
            Some(&token),
            None,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        missing,
        json!({"code":5,"message":"Metadata not found (QUERY-Rgh32)","details":[
            {"@type":"type.googleapis.com/zitadel.v1.ErrorDetail","id":"QUERY-Rgh32","message":"Metadata not found"}]})
    );
}

// ----------------------------------------------------------------------------------------------------------
// Management API

#[tokio::test]
async fn management_list_pages_sorts_and_filters() {
    let f = fixture().await;
    for key in ["a", "b", "c", "d", "Ba"] {
        f.z.set_metadata(&f.alice, key, key.as_bytes());
    }
    let search = format!("/{}/metadata/_search", f.alice);
    let keys = |v: &Value| -> Vec<String> {
        v["result"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .map(|i| i["key"].as_str().unwrap_or("").to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };

    // Defaults: descending by key, everything.
    let (status, all) = f.mgmt(Method::POST, &search, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(keys(&all), ["d", "c", "b", "a", "Ba"]);
    assert_eq!(all["details"]["totalResult"], "5");

    let (_, page) = f
        .mgmt(
            Method::POST,
            &search,
            Some(json!({"query":{"offset":"1","limit":2,"asc":true}})),
        )
        .await;
    assert_eq!(keys(&page), ["a", "b"]);
    assert_eq!(page["details"]["totalResult"], "5");
    let (_, page) = f
        .mgmt(
            Method::POST,
            &search,
            Some(json!({"query":{"offset":4,"limit":"2","asc":true}})),
        )
        .await;
    assert_eq!(keys(&page), ["d"]);

    let q = |key: &str, method: Value| json!({"keyQuery": {"key": key, "method": method}});
    let cases = [
        (
            q("b", json!("TEXT_QUERY_METHOD_EQUALS_IGNORE_CASE")),
            vec!["b"],
        ),
        (q("B", json!(3)), vec!["Ba", "b"]),
        (q("B", json!("TEXT_QUERY_METHOD_STARTS_WITH")), vec!["Ba"]),
        (q("a", json!("TEXT_QUERY_METHOD_CONTAINS")), vec!["Ba", "a"]),
        (
            q("A", json!("TEXT_QUERY_METHOD_ENDS_WITH_IGNORE_CASE")),
            vec!["Ba", "a"],
        ),
        (q("a", json!(6)), vec!["Ba", "a"]),
    ];
    for (query, expected) in cases {
        let body = json!({"query": {"asc": true}, "queries": [query]});
        let (status, found) = f.mgmt(Method::POST, &search, Some(body)).await;
        assert_eq!(status, StatusCode::OK, "{query}");
        assert_eq!(keys(&found), expected, "{query}");
    }
    // Queries are ANDed.
    let body = json!({"query": {"asc": true}, "queries": [q("a", json!(4)), q("B", json!(2))]});
    assert_eq!(
        keys(&f.mgmt(Method::POST, &search, Some(body)).await.1),
        ["Ba"]
    );

    // Nothing found: no `result`, no `totalResult`.
    let body = json!({"queries": [q("zzz", json!(0))]});
    let (status, none) = f.mgmt(Method::POST, &search, Some(body)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(none.get("result").is_none());
    assert!(none["details"].get("totalResult").is_none());
    assert!(none["details"]["viewTimestamp"].is_string());

    let too_many = f
        .mgmt(Method::POST, &search, Some(json!({"query":{"limit":1001}})))
        .await;
    assert_error(&too_many, 400, 3, Some("QUERY-4M9fs"));
    let bad_method = f
        .mgmt(
            Method::POST,
            &search,
            Some(json!({"queries":[q("a", json!("NOPE"))]})),
        )
        .await;
    assert_error(&bad_method, 400, 3, None);
    let bad_number = f
        .mgmt(
            Method::POST,
            &search,
            Some(json!({"queries":[q("a", json!(8))]})),
        )
        .await;
    assert_error(&bad_number, 400, 3, None);
    let long_key = f
        .mgmt(
            Method::POST,
            &search,
            Some(json!({"queries":[q(&"k".repeat(201), json!(0))]})),
        )
        .await;
    assert_error(&long_key, 400, 3, None);
}

#[tokio::test]
async fn management_set_get_remove_round_trip() {
    let f = fixture().await;
    let path = |key: &str| format!("/{}/metadata/{key}", f.alice);

    let (status, set) = f
        .mgmt(
            Method::POST,
            &path("plan"),
            Some(json!({"value": b64(b"gold")})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let details = set["details"].as_object().expect("details");
    assert!(set.get("id").is_none());
    assert!(details["sequence"].is_string() && details["changeDate"].is_string());
    assert!(details.get("creationDate").is_none());
    assert_eq!(details["resourceOwner"], f.org);
    assert_eq!(f.z.metadata_of(&f.alice)["plan"], b"gold");

    // The same value again changes nothing.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (_, again) = f
        .mgmt(
            Method::POST,
            &path("plan"),
            Some(json!({"value": "Z29sZA"})),
        )
        .await;
    assert_eq!(again, set);

    // URL-safe / unpadded input is accepted; a new value moves the sequence.
    let (_, changed) = f
        .mgmt(Method::POST, &path("plan"), Some(json!({"value": "-_8"})))
        .await;
    assert_ne!(changed["details"]["sequence"], set["details"]["sequence"]);
    assert_eq!(f.z.metadata_of(&f.alice)["plan"], [0xfb, 0xff]);

    let (status, got) = f.mgmt(Method::GET, &path("plan"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["metadata"]["value"], "+/8=");
    assert_eq!(got["metadata"]["key"], "plan");

    // Keys in the path are percent-decoded.
    let (status, _) = f
        .mgmt(
            Method::POST,
            &path("a%2Fb%20c"),
            Some(json!({"value": b64(b"1")})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(f.z.metadata_of(&f.alice).contains_key("a/b c"));

    let (status, _) = f.mgmt(Method::DELETE, &path("plan"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!f.z.metadata_of(&f.alice).contains_key("plan"));
    assert_error(
        &f.mgmt(Method::DELETE, &path("plan"), None).await,
        404,
        5,
        Some("META-ncnw3"),
    );
    assert_error(
        &f.mgmt(Method::GET, &path("plan"), None).await,
        404,
        5,
        Some("QUERY-Rgh32"),
    );
}

#[tokio::test]
async fn management_is_scoped_to_the_context_org() {
    let f = fixture().await;
    let other_org = f.z.create_org("Other");
    let bob = f.z.create_user(&other_org, "bob");
    f.z.set_metadata(&bob, "k", b"v");
    let set_body = Some(json!({"value": b64(b"x")}));

    // The org owner of Acme, without a header: Bob is not in its context org.
    let (status, list) = f
        .mgmt(Method::POST, &format!("/{bob}/metadata/_search"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(list.get("result").is_none() && list["details"].get("totalResult").is_none());
    assert_error(
        &f.mgmt(Method::GET, &format!("/{bob}/metadata/k"), None)
            .await,
        404,
        5,
        Some("QUERY-Rgh32"),
    );
    let set = f
        .mgmt(
            Method::POST,
            &format!("/{bob}/metadata/k"),
            set_body.clone(),
        )
        .await;
    assert_error(&set, 400, 9, Some("COMMAND-uXHNj"));
    let remove = f
        .mgmt(Method::DELETE, &format!("/{bob}/metadata/k"), None)
        .await;
    assert_error(&remove, 400, 9, Some("COMMAND-uXHNj"));
    let bulk = f
        .mgmt(
            Method::DELETE,
            &format!("/{bob}/metadata/_bulk"),
            Some(json!({"keys":["k"]})),
        )
        .await;
    assert_error(&bulk, 400, 9, Some("COMMAND-uXHNj"));
    let nobody = f
        .mgmt(Method::POST, "/123/metadata/k", set_body.clone())
        .await;
    assert_error(&nobody, 400, 9, Some("COMMAND-uXHNj"));
    assert_eq!(f.z.metadata_of(&bob)["k"], b"v");

    // With the header naming Bob's org, an org owner of another org lacks permission.
    let path = format!("/management/v1/users/{bob}/metadata/k");
    let denied = f
        .call(Method::GET, &path, Some(&f.pat), None, Some(&other_org))
        .await;
    assert_error(&denied, 403, 7, Some("AUTH-5mWD2"));
    let unknown = f
        .call(Method::GET, &path, Some(&f.pat), None, Some("999"))
        .await;
    assert_error(&unknown, 403, 7, Some("AUTH-Bs7Ds"));
    assert_eq!(
        unknown.1["message"],
        "Organisation doesn't exist (AUTH-Bs7Ds)"
    );

    // An IAM owner may act in any org given the header; a user without a manager role may not.
    let admin =
        f.z.create_service_user(&f.org, "admin", ManagerRole::IamOwner);
    let admin_pat = f.z.issue_pat(&admin);
    let (status, got) = f
        .call(Method::GET, &path, Some(&admin_pat), None, Some(&other_org))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["metadata"]["details"]["resourceOwner"], other_org);
    let (status, _) = f
        .call(Method::GET, &path, Some(&admin_pat), None, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let alice_token = f.z.issue_token(&f.alice, &["openid", AUD]);
    let own = format!("/management/v1/users/{}/metadata/_search", f.alice);
    let result = f
        .call(Method::POST, &own, Some(&alice_token), None, None)
        .await;
    assert_error(&result, 403, 7, Some("AUTH-5mWD2"));

    // OAuth tokens need the audience scope on the management API too.
    let svc_no_aud = f.z.issue_token(&f.svc, &["openid"]);
    let result = f
        .call(Method::POST, &own, Some(&svc_no_aud), None, None)
        .await;
    assert_error(&result, 401, 16, Some("AUTH-7fs1e"));
    let svc_token = f.z.issue_token(&f.svc, &["openid", AUD]);
    assert_eq!(
        f.call(Method::POST, &own, Some(&svc_token), None, None)
            .await
            .0,
        StatusCode::OK
    );
    assert_error(
        &f.call(Method::POST, &own, None, None, None).await,
        401,
        16,
        None,
    );
}

#[tokio::test]
async fn management_validation_rejects_without_changing_anything() {
    let f = fixture().await;
    f.z.set_metadata(&f.alice, "keep", b"1");
    let before = f.z.metadata_of(&f.alice);
    let alice = &f.alice;
    let long_key = "k".repeat(201);
    let long_id = "1".repeat(201);
    let cases: Vec<(Method, String, Option<&str>)> = vec![
        (
            Method::POST,
            format!("/{alice}/metadata/keep"),
            Some(r#"{"value":""}"#),
        ),
        (Method::POST, format!("/{alice}/metadata/keep"), None),
        (
            Method::POST,
            format!("/{alice}/metadata/keep"),
            Some(r#"{"value":"!!not base64"}"#),
        ),
        (
            Method::POST,
            format!("/{alice}/metadata/keep"),
            Some("{not json"),
        ),
        (
            Method::POST,
            format!("/{alice}/metadata/{long_key}"),
            Some(r#"{"value":"MQ=="}"#),
        ),
        (
            Method::POST,
            format!("/{long_id}/metadata/keep"),
            Some(r#"{"value":"MQ=="}"#),
        ),
        (
            Method::POST,
            format!("/{alice}/metadata/_bulk"),
            Some(r#"{"metadata":[{"key":"x","value":"MQ=="},{"key":"","value":"MQ=="}]}"#),
        ),
        (
            Method::DELETE,
            format!("/{alice}/metadata/_bulk"),
            Some(r#"{"keys":["keep",""]}"#),
        ),
        (
            Method::DELETE,
            format!("/{alice}/metadata/{long_key}"),
            None,
        ),
    ];
    for (method, path, body) in cases {
        let result = f
            .call(
                method,
                &format!("/management/v1/users{path}"),
                Some(&f.pat),
                body,
                None,
            )
            .await;
        assert_error(&result, 400, 3, None);
    }
    let big = b64(&vec![7u8; 500_001]);
    let result = f
        .mgmt(
            Method::POST,
            &format!("/{alice}/metadata/keep"),
            Some(json!({"value": big})),
        )
        .await;
    assert_error(&result, 400, 3, None);
    assert_eq!(
        result.1["message"],
        "invalid SetUserMetadataRequest.Value: value length must be between 1 and 500000 bytes, inclusive"
    );
    let max = b64(&vec![7u8; 500_000]);
    let (status, _) = f
        .mgmt(
            Method::POST,
            &format!("/{alice}/metadata/big"),
            Some(json!({"value": max})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let mut expected = before;
    expected.insert("big".into(), vec![7u8; 500_000]);
    assert_eq!(f.z.metadata_of(&f.alice), expected);
}

#[tokio::test]
async fn management_bulk_calls_are_all_or_nothing() {
    let f = fixture().await;
    let bulk = format!("/{}/metadata/_bulk", f.alice);
    let body = json!({"metadata":[{"key":"a","value":b64(b"1")},{"key":"b","value":b64(b"2")},{"key":"c","value":b64(b"3")}]});
    let (status, set) = f.mgmt(Method::POST, &bulk, Some(body)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(set["details"]["sequence"].is_string());
    assert_eq!(f.z.metadata_of(&f.alice).len(), 3);

    let empty = f
        .mgmt(Method::POST, &bulk, Some(json!({"metadata":[]})))
        .await;
    assert_error(&empty, 400, 9, Some("META-9mm2d"));
    let empty = f.mgmt(Method::DELETE, &bulk, Some(json!({}))).await;
    assert_error(&empty, 400, 9, Some("META-9mm2d"));
    assert_eq!(empty.1["message"], "Metadata list is empty (META-9mm2d)");

    let partial = f
        .mgmt(Method::DELETE, &bulk, Some(json!({"keys":["a","missing"]})))
        .await;
    assert_error(&partial, 404, 5, Some("META-2nnds"));
    assert_eq!(f.z.metadata_of(&f.alice).len(), 3);

    let (status, _) = f
        .mgmt(Method::DELETE, &bulk, Some(json!({"keys":["a","b"]})))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(f.z.metadata_of(&f.alice).keys().collect::<Vec<_>>(), ["c"]);
}

#[tokio::test]
async fn unknown_routes_get_the_gateway_not_found() {
    let f = fixture().await;
    for path in [
        "/nope",
        "/management/v1/users/1/metadata",
        "/auth/v1/users/me/metadata/a/b",
    ] {
        let result = f.call(Method::GET, path, Some(&f.pat), None, None).await;
        assert_eq!(
            result,
            (
                StatusCode::NOT_FOUND,
                json!({"code":5,"message":"Not Found"})
            ),
            "{path}"
        );
    }
    // A known path with another method: grpc-gateway's 405, mapped to Unimplemented (501).
    let result = f
        .call(
            Method::PUT,
            "/management/v1/users/1/metadata/k",
            Some(&f.pat),
            None,
            None,
        )
        .await;
    assert_eq!(
        result,
        (
            StatusCode::NOT_IMPLEMENTED,
            json!({"code":12,"message":"Method Not Allowed"})
        )
    );
}

// ----------------------------------------------------------------------------------------------------------
// token endpoint

fn basic(id: &str, secret: &str) -> String {
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    format!(
        "Basic {}",
        b64(format!("{}:{}", enc(id), enc(secret)).as_bytes())
    )
}

async fn token_request(
    f: &Fixture,
    auth: Option<String>,
    form: &[(&str, &str)],
) -> (StatusCode, Value) {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let mut request = f
        .http
        .post(format!("{}/oauth/v2/token", f.z.url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body);
    if let Some(auth) = auth {
        request = request.header("authorization", auth);
    }
    let response = request.send().await.expect("send");
    let status = response.status();
    (status, response.json().await.expect("json"))
}

#[tokio::test]
async fn token_endpoint_issues_client_credentials_tokens() {
    let f = fixture().await;
    let svc =
        f.z.create_service_user(&f.org, "svc@acme", ManagerRole::OrgOwner);
    let (client_id, secret) = f.z.add_client_secret(&svc);
    assert_eq!(client_id, "svc@acme");
    let scope = format!("openid profile {AUD}");
    let form = [
        ("grant_type", "client_credentials"),
        ("scope", scope.as_str()),
    ];

    let (status, answer) = token_request(&f, Some(basic(&client_id, &secret)), &form).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["token_type"], "Bearer");
    assert_eq!(answer["expires_in"], 43199);
    let token = answer["access_token"].as_str().expect("token").to_owned();
    assert!(token.len() >= 32);
    assert_eq!(f.userinfo(&token).await.1["sub"], svc);
    let own = format!("/management/v1/users/{}/metadata/_search", f.alice);
    assert_eq!(
        f.call(Method::POST, &own, Some(&token), None, None).await.0,
        StatusCode::OK
    );

    // Body credentials work too; the lifetime is configurable.
    f.z.set_token_lifetime(Duration::from_millis(100));
    let with_body = [
        ("grant_type", "client_credentials"),
        ("scope", "openid"),
        ("client_id", client_id.as_str()),
        ("client_secret", secret.as_str()),
    ];
    let (status, answer) = token_request(&f, None, &with_body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["expires_in"], 0);
    let short = answer["access_token"].as_str().expect("token").to_owned();
    assert_eq!(f.userinfo(&short).await.0, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(f.userinfo(&short).await.0, StatusCode::UNAUTHORIZED);

    let (status, answer) = token_request(&f, Some(basic(&client_id, "wrong")), &form).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_client"))
    );
    let (status, answer) = token_request(&f, None, &form).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_client"))
    );
    // Raw (not form-encoded) parts work as long as they hold nothing to unescape.
    let raw = format!("Basic {}", b64(format!("{client_id}:{secret}").as_bytes()));
    assert_eq!(token_request(&f, Some(raw), &form).await.0, StatusCode::OK);
    let (status, answer) = token_request(
        &f,
        Some(basic(&client_id, &secret)),
        &[("grant_type", "client_credentials"), ("scope", "profile")],
    )
    .await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_scope"))
    );
    let (status, answer) =
        token_request(&f, None, &[("grant_type", "password"), ("scope", "openid")]).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("unsupported_grant_type"))
    );
    // A removed secret no longer authenticates.
    f.z.remove_client_secret(&client_id);
    let (status, answer) = token_request(&f, Some(basic(&client_id, &secret)), &form).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_client"))
    );
    assert_eq!(f.z.token_requests(), 8);
}

const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// A JWT-profile key of a new service user: `(user id, key id, signing key)`.
fn machine_key(f: &Fixture, username: &str) -> (String, String, jsonwebtoken::EncodingKey) {
    let user =
        f.z.create_service_user(&f.org, username, ManagerRole::OrgOwner);
    let file: Value = serde_json::from_str(&f.z.add_machine_key(&user)).expect("key file");
    assert_eq!(file["type"], "serviceaccount");
    assert_eq!(file["userId"], user.as_str());
    let pem = file["key"].as_str().expect("key");
    assert!(
        pem.starts_with("-----BEGIN RSA PRIVATE KEY-----\n"),
        "{pem:.40}"
    );
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).expect("PEM");
    (user, file["keyId"].as_str().expect("keyId").to_owned(), key)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

fn assertion(kid: &str, key: &jsonwebtoken::EncodingKey, claims: &Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, key).expect("sign")
}

async fn jwt_grant(f: &Fixture, assertion: &str, scope: &str) -> (StatusCode, Value) {
    token_request(
        f,
        None,
        &[
            ("grant_type", JWT_BEARER),
            ("scope", scope),
            ("assertion", assertion),
        ],
    )
    .await
}

#[tokio::test]
async fn token_endpoint_issues_jwt_profile_tokens_for_valid_assertions() {
    let f = fixture().await;
    let (user, kid, key) = machine_key(&f, "svc-jwt");
    let claims = |iss: &str, sub: &str| json!({"iss": iss, "sub": sub, "aud": f.z.url(), "iat": now(), "exp": now() + 3600});
    let scope = format!("openid {AUD}");
    let (status, answer) =
        jwt_grant(&f, &assertion(&kid, &key, &claims(&user, &user)), &scope).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["token_type"], "Bearer");
    assert_eq!(answer["expires_in"], 43199);
    let token = answer["access_token"].as_str().expect("token").to_owned();
    assert_eq!(f.userinfo(&token).await.1["sub"], user);
    let list = format!("/management/v1/users/{}/metadata/_search", f.alice);
    assert_eq!(
        f.call(Method::POST, &list, Some(&token), None, None)
            .await
            .0,
        StatusCode::OK
    );
    // `aud` may be a list that includes the issuer.
    let listed = json!({"iss": user, "sub": user, "aud": ["other", f.z.url()], "iat": now(), "exp": now() + 60});
    assert_eq!(
        jwt_grant(&f, &assertion(&kid, &key, &listed), &scope)
            .await
            .0,
        StatusCode::OK
    );

    // Issued tokens expire after the configured lifetime, and the management API then refuses them.
    f.z.set_token_lifetime(Duration::from_millis(300));
    let (_, answer) = jwt_grant(&f, &assertion(&kid, &key, &claims(&user, &user)), &scope).await;
    let short = answer["access_token"].as_str().expect("token").to_owned();
    assert_eq!(
        f.call(Method::POST, &list, Some(&short), None, None)
            .await
            .0,
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(
        f.call(Method::POST, &list, Some(&short), None, None)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    // A revoked token is refused too.
    f.z.set_token_lifetime(Duration::from_secs(60));
    let (_, answer) = jwt_grant(&f, &assertion(&kid, &key, &claims(&user, &user)), &scope).await;
    let revoked = answer["access_token"].as_str().expect("token").to_owned();
    assert!(f.z.revoke_tokens_of(&user) >= 1);
    assert_eq!(
        f.call(Method::POST, &list, Some(&revoked), None, None)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(f.z.token_requests(), 4);
}

#[tokio::test]
async fn token_endpoint_rejects_assertions_that_break_a_rule() {
    let f = fixture().await;
    let (user, kid, key) = machine_key(&f, "svc-jwt");
    let (other_user, other_kid, other_key) = machine_key(&f, "svc-other");
    let (n, url) = (now(), f.z.url());
    let good = json!({"iss": user, "sub": user, "aud": url, "iat": n, "exp": n + 3600});
    let with = |field: &str, value: Value| {
        let mut claims = good.clone();
        claims[field] = value;
        claims
    };
    let scope = format!("openid {AUD}");
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "signed by another key",
            assertion(&kid, &other_key, &good),
            "signature invalid",
        ),
        ("unknown kid", assertion("999", &key, &good), "no key 999"),
        (
            "iss is not sub",
            assertion(&kid, &key, &with("iss", json!(other_user))),
            "issuer and sub must be identical",
        ),
        (
            "sub is not the key's user",
            assertion(
                &kid,
                &key,
                &json!({"iss": other_user, "sub": other_user, "aud": url, "iat": n, "exp": n + 60}),
            ),
            "not the key's user",
        ),
        (
            "aud without the issuer",
            assertion(&kid, &key, &with("aud", json!("https://elsewhere"))),
            "audience",
        ),
        (
            "lifetime over 1 h",
            assertion(&kid, &key, &with("exp", json!(n + 3601))),
            "longer than 1h",
        ),
        (
            "expired",
            assertion(
                &kid,
                &key,
                &json!({"iss": user, "sub": user, "aud": url, "iat": n - 100, "exp": n - 10}),
            ),
            "expired",
        ),
        (
            "iat older than 1 h",
            assertion(
                &kid,
                &key,
                &json!({"iss": user, "sub": user, "aud": url, "iat": n - 3700, "exp": n + 60}),
            ),
            "older than 1h",
        ),
        (
            "iat in the future",
            assertion(&kid, &key, &with("iat", json!(n + 600))),
            "in the future",
        ),
        ("not a JWT", "not-a-jwt".to_owned(), "not a JWT"),
    ];
    for (case, assertion, description) in &cases {
        let (status, answer) = jwt_grant(&f, assertion, &scope).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{case}: {answer}");
        assert_eq!(answer["error"], "invalid_grant", "{case}: {answer}");
        let said = answer["error_description"].as_str().expect("description");
        assert!(said.contains(description), "{case}: {said}");
    }
    // The other key works for its own user; a removed key no longer does.
    let other = json!({"iss": other_user, "sub": other_user, "aud": url, "iat": n, "exp": n + 60});
    assert_eq!(
        jwt_grant(&f, &assertion(&other_kid, &other_key, &other), &scope)
            .await
            .0,
        StatusCode::OK
    );
    f.z.remove_machine_key(&other_kid);
    let (status, answer) = jwt_grant(&f, &assertion(&other_kid, &other_key, &other), &scope).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_grant"))
    );

    // Request-level problems: no openid scope, no assertion.
    let (status, answer) = jwt_grant(&f, &assertion(&kid, &key, &good), AUD).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_scope"))
    );
    let (status, answer) =
        token_request(&f, None, &[("grant_type", JWT_BEARER), ("scope", "openid")]).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request"))
    );
    assert_eq!(f.z.token_requests(), cases.len() + 4);
}

// ----------------------------------------------------------------------------------------------------------
// faults and recording

#[tokio::test]
async fn faults_are_seen_by_reqwest() {
    let f = fixture().await;
    let token = f.z.issue_token(&f.alice, &["openid"]);
    let url = format!("{}/oidc/v1/userinfo", f.z.url());
    let fault = |prefix: &str, times: Option<u32>, kind: FaultKind| Fault {
        path_prefix: prefix.to_owned(),
        times,
        kind,
    };

    f.z.push_fault(fault(
        "/oidc",
        Some(1),
        FaultKind::Latency(Duration::from_millis(150)),
    ));
    let started = Instant::now();
    assert_eq!(f.userinfo(&token).await.0, StatusCode::OK);
    assert!(started.elapsed() >= Duration::from_millis(150));
    let started = Instant::now();
    assert_eq!(f.userinfo(&token).await.0, StatusCode::OK);
    assert!(started.elapsed() < Duration::from_millis(150));

    f.z.push_fault(fault("", Some(1), FaultKind::Status(503)));
    assert_eq!(f.userinfo(&token).await.0, StatusCode::SERVICE_UNAVAILABLE);
    f.z.push_fault(fault("", Some(2), FaultKind::Status(500)));
    let result = f.userinfo(&token).await;
    assert_error(&result, 500, 13, None);
    assert_eq!(
        f.userinfo(&token).await.0,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    assert_eq!(f.userinfo(&token).await.0, StatusCode::OK);
    f.z.push_fault(fault("", Some(1), FaultKind::Status(503)));
    assert_error(&f.userinfo(&token).await, 503, 14, None);

    f.z.push_fault(fault(
        "",
        Some(1),
        FaultKind::TooManyRequests {
            retry_after_secs: Some(7),
        },
    ));
    let response = f
        .http
        .get(&url)
        .bearer_auth(&token)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(response.headers()["retry-after"], "7");
    assert_eq!(response.json::<Value>().await.expect("json")["code"], 8);

    f.z.push_fault(fault(
        "/oidc/v1/userinfo",
        Some(1),
        FaultKind::DropConnection,
    ));
    let error = f
        .http
        .get(&url)
        .bearer_auth(&token)
        .send()
        .await
        .expect_err("dropped");
    assert!(error.is_request() || error.is_connect(), "{error:?}");
    assert_eq!(f.userinfo(&token).await.0, StatusCode::OK);

    f.z.push_fault(fault("", Some(1), FaultKind::MalformedJson));
    let response = f
        .http
        .get(&url)
        .bearer_auth(&token)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.json::<Value>().await.is_err());

    // Prefixes select paths; unlimited faults last until cleared.
    f.z.push_fault(fault("/management/", None, FaultKind::Status(502)));
    assert_eq!(f.userinfo(&token).await.0, StatusCode::OK);
    for _ in 0..3 {
        let result = f
            .mgmt(
                Method::POST,
                &format!("/{}/metadata/_search", f.alice),
                None,
            )
            .await;
        assert_eq!(result.0, StatusCode::BAD_GATEWAY);
    }
    f.z.clear_faults();
    let result = f
        .mgmt(
            Method::POST,
            &format!("/{}/metadata/_search", f.alice),
            None,
        )
        .await;
    assert_eq!(result.0, StatusCode::OK);

    // Faulted requests are recorded too.
    let recorded = f.z.requests();
    assert_eq!(recorded.len(), 16);
    assert!(recorded.iter().filter(|r| r.is_management()).count() == 4);
}

#[tokio::test]
async fn requests_are_recorded_in_order() {
    let f = fixture().await;
    let path = format!("/management/v1/users/{}/metadata/a%2Fb?x=1", f.alice);
    let body = json!({"value": b64(b"v")}).to_string();
    let (status, _) = f
        .call(Method::POST, &path, Some(&f.pat), Some(&body), Some(&f.org))
        .await;
    assert_eq!(status, StatusCode::OK);
    f.userinfo("tok").await;

    let recorded = f.z.requests();
    assert_eq!(recorded.len(), 2);
    let first = &recorded[0];
    assert_eq!(first.method, Method::POST);
    assert_eq!(
        first.path,
        format!("/management/v1/users/{}/metadata/a%2Fb", f.alice)
    );
    assert_eq!(first.query.as_deref(), Some("x=1"));
    assert_eq!(first.bearer(), Some(f.pat.as_str()));
    assert_eq!(first.header("X-Zitadel-OrgId"), Some(f.org.as_str()));
    assert_eq!(first.body, body.as_bytes());
    assert!(
        first.is_management() && !first.is_auth_api() && !first.is_userinfo() && !first.is_token()
    );
    assert!(recorded[1].is_userinfo());
    assert_eq!(recorded[1].bearer(), Some("tok"));

    f.z.clear_requests();
    assert!(f.z.requests().is_empty());
}

// ----------------------------------------------------------------------------------------------------------
// transport and lifecycle

#[tokio::test]
async fn serves_h2c_with_prior_knowledge() {
    let f = fixture().await;
    let http2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let token = f.z.issue_token(&f.alice, &["openid"]);
    let response = http2
        .get(format!("{}/oidc/v1/userinfo", f.z.url()))
        .bearer_auth(&token)
        .send()
        .await
        .expect("send");
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(
        response.json::<Value>().await.expect("json")["sub"],
        f.alice
    );

    f.z.push_fault(Fault {
        path_prefix: String::new(),
        times: Some(1),
        kind: FaultKind::DropConnection,
    });
    let result = http2
        .get(format!("{}/oidc/v1/userinfo", f.z.url()))
        .bearer_auth(&token)
        .send()
        .await;
    assert!(result.is_err(), "{result:?}");
}

#[tokio::test]
async fn stops_on_shutdown_and_when_the_last_handle_drops() {
    let z = StandIn::start().await.expect("start");
    let url = z.url();
    assert_eq!(url, format!("http://{}", z.addr()));
    let clone = z.clone();
    let http = reqwest::Client::new();
    assert!(http.get(format!("{url}/x")).send().await.is_ok());
    clone.shutdown().await;
    assert!(
        reqwest::Client::new()
            .get(format!("{url}/x"))
            .send()
            .await
            .is_err()
    );

    let z = StandIn::start().await.expect("start");
    let url = z.url();
    drop(z);
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        if reqwest::Client::new()
            .get(format!("{url}/x"))
            .send()
            .await
            .is_err()
        {
            break;
        }
        assert!(Instant::now() < deadline, "still serving after drop");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[test]
fn handles_are_send_sync_and_clone() {
    fn check<T: Send + Sync + Clone + 'static>() {}
    check::<StandIn>();
    check::<zitadel_standin::RecordedRequest>();
    check::<Fault>();
}

#[tokio::test]
async fn recording_can_be_switched_off_and_the_auth_api_checks_the_org_header() {
    let f = fixture().await;
    let token = f.z.issue_token(&f.alice, &["openid", AUD]);
    let path = "/auth/v1/users/me/metadata/_search";
    let unknown = f
        .call(Method::POST, path, Some(&token), None, Some("42"))
        .await;
    assert_error(&unknown, 403, 7, Some("AUTH-Bs7Ds"));
    f.z.set_recording(false);
    assert_eq!(
        f.call(Method::POST, path, Some(&token), None, None).await.0,
        StatusCode::OK
    );
    assert_eq!(f.z.requests().len(), 1);
    f.z.set_recording(true);
    assert_eq!(f.userinfo(&token).await.0, StatusCode::OK);
    assert_eq!(f.z.requests().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_concurrent_writers_and_readers() {
    let f = fixture().await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..40 {
        let (http, url, pat, alice) = (f.http.clone(), f.z.url(), f.pat.clone(), f.alice.clone());
        tasks.spawn(async move {
            let base = format!("{url}/management/v1/users/{alice}/metadata");
            let set = http
                .post(format!("{base}/k{i}"))
                .bearer_auth(&pat)
                .body(json!({"value": b64(b"v")}).to_string())
                .send()
                .await
                .expect("send");
            assert_eq!(set.status(), StatusCode::OK);
            let list = http
                .post(format!("{base}/_search"))
                .bearer_auth(&pat)
                .send()
                .await
                .expect("send");
            assert_eq!(list.status(), StatusCode::OK);
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.expect("task");
    }
    assert_eq!(f.z.metadata_of(&f.alice).len(), 40);
    assert_eq!(f.z.requests().len(), 80);
}
