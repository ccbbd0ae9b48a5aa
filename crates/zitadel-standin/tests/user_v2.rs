//! Tests of the stand-in's v2 user service over real HTTP (reqwest): Connect JSON and the REST twins.

use std::time::Duration;

use base64::Engine as _;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use zitadel_standin::{Apis, Fault, FaultKind, ManagerRole, StandIn};

const SVC: &str = "/zitadel.user.v2.UserService/";

struct Fixture {
    z: StandIn,
    http: reqwest::Client,
    org: String,
    other_org: String,
    alice: String,
    bob: String,
    /// IAM_OWNER service user's PAT (org "Acme").
    iam: String,
    /// ORG_OWNER of "Acme".
    acme_owner: String,
    /// A service user with no role.
    nobody: String,
}

async fn fixture() -> Fixture {
    let z = StandIn::start().await.expect("start");
    let org = z.create_org("Acme");
    let other_org = z.create_org("Globex");
    let alice = z.create_user(&org, "alice");
    let bob = z.create_user(&other_org, "bob");
    let iam = z.issue_pat(&z.create_service_user(&org, "admin", ManagerRole::IamOwner));
    let acme_owner = z.issue_pat(&z.create_service_user(&org, "usermeta", ManagerRole::OrgOwner));
    let nobody = z.issue_pat(&z.create_service_user(&org, "nobody", ManagerRole::None));
    Fixture {
        z,
        http: reqwest::Client::new(),
        org,
        other_org,
        alice,
        bob,
        iam,
        acme_owner,
        nobody,
    }
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

impl Fixture {
    async fn send(&self, request: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let response = request.send().await.expect("send");
        let status = response.status();
        let text = response.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// A Connect unary call as the official SDKs make it.
    async fn connect(&self, procedure: &str, token: &str, body: Value) -> (StatusCode, Value) {
        let request = self
            .http
            .post(format!("{}{SVC}{procedure}", self.z.url()))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_string());
        self.send(request).await
    }

    async fn rest(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.z.url()))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        self.send(request).await
    }

    async fn set(&self, token: &str, user: &str, entries: &[(&str, &[u8])]) -> (StatusCode, Value) {
        let metadata: Vec<Value> = entries
            .iter()
            .map(|(k, v)| json!({"key": k, "value": b64(v)}))
            .collect();
        self.connect(
            "SetUserMetadata",
            token,
            json!({"userId": user, "metadata": metadata}),
        )
        .await
    }

    async fn list(&self, token: &str, body: Value) -> (StatusCode, Value) {
        self.connect("ListUserMetadata", token, body).await
    }

    /// The listed keys in answer order.
    async fn keys(&self, token: &str, body: Value) -> Vec<String> {
        let (status, answer) = self.list(token, body).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        answer["metadata"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .map(|m| m["key"].as_str().expect("key").to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A Connect error: status, snake_case code, message ending in `(<id>)` and a decodable `ErrorDetail`.
fn assert_connect_error(actual: &(StatusCode, Value), status: u16, code: &str, id: Option<&str>) {
    assert_eq!(actual.0.as_u16(), status, "{actual:?}");
    assert_eq!(actual.1["code"], code, "{actual:?}");
    let message = actual.1["message"].as_str().expect("message");
    match id {
        Some(id) => {
            assert!(message.ends_with(&format!(" ({id})")), "{actual:?}");
            let detail = &actual.1["details"][0];
            assert_eq!(detail["type"], "zitadel.v1.ErrorDetail", "{actual:?}");
            let value = detail["value"].as_str().expect("value");
            assert!(
                !value.ends_with('='),
                "connect emits unpadded base64: {value}"
            );
            let bytes = base64::engine::general_purpose::STANDARD_NO_PAD
                .decode(value)
                .expect("base64");
            // field 1 (id), length-delimited
            assert_eq!(bytes[0], 0x0a);
            assert_eq!(&bytes[2..2 + usize::from(bytes[1])], id.as_bytes());
        }
        None => assert!(actual.1.get("details").is_none(), "{actual:?}"),
    }
}

/// A grpc-gateway error: status, numeric code, and the ZITADEL error id in the details.
fn assert_gateway_error(actual: &(StatusCode, Value), status: u16, code: i64, id: Option<&str>) {
    assert_eq!(actual.0.as_u16(), status, "{actual:?}");
    assert_eq!(actual.1["code"], code, "{actual:?}");
    match id {
        Some(id) => {
            assert_eq!(actual.1["details"][0]["id"], id, "{actual:?}");
            assert_eq!(
                actual.1["details"][0]["@type"],
                "type.googleapis.com/zitadel.v1.ErrorDetail"
            );
        }
        None => assert!(actual.1.get("details").is_none(), "{actual:?}"),
    }
}

#[tokio::test]
async fn connect_set_list_delete_round_trip_with_exact_shapes() {
    let f = fixture().await;
    let (status, answer) = f
        .set(
            &f.iam,
            &f.alice,
            &[("plan", b"gold"), ("bin", &[0xfb, 0xff, 0x00])],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let set_date = answer["setDate"].as_str().expect("setDate").to_owned();
    assert!(
        set_date.ends_with('Z') && set_date.contains('T'),
        "{set_date}"
    );
    assert_eq!(answer.as_object().map(|m| m.len()), Some(1), "{answer}");
    // v1 and the test helper see the write at once.
    assert_eq!(f.z.metadata_of(&f.alice)["bin"], vec![0xfb, 0xff, 0x00]);

    let (status, answer) = f.list(&f.iam, json!({"userId": f.alice})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        answer["pagination"],
        json!({"totalResult": "2", "appliedLimit": "100"})
    );
    let items = answer["metadata"].as_array().expect("metadata");
    // Newest first by default; padded standard base64.
    assert_eq!(items[0]["key"], "bin");
    assert_eq!(items[0]["value"], "+/8A");
    assert_eq!(items[1]["key"], "plan");
    assert_eq!(items[1]["value"], "Z29sZA==");
    assert_eq!(items[1]["creationDate"], set_date);
    assert_eq!(items[1]["changeDate"], set_date);
    assert_eq!(items[0].as_object().map(|m| m.len()), Some(4));

    let (status, answer) = f
        .connect(
            "DeleteUserMetadata",
            &f.iam,
            json!({"userId": f.alice, "keys": ["bin"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert!(
        answer["deletionDate"]
            .as_str()
            .is_some_and(|d| d.ends_with('Z'))
    );
    assert_eq!(f.keys(&f.iam, json!({"userId": f.alice})).await, ["plan"]);

    // Every v2 request was recorded with method, path, headers and body.
    let recorded: Vec<_> =
        f.z.requests()
            .into_iter()
            .filter(|r| r.is_user_v2_connect())
            .collect();
    assert_eq!(recorded.len(), 4);
    assert_eq!(recorded[0].connect_procedure(), Some("SetUserMetadata"));
    assert_eq!(recorded[0].method, Method::POST);
    assert_eq!(recorded[0].header("content-type"), Some("application/json"));
    assert_eq!(recorded[0].bearer(), Some(f.iam.as_str()));
    let body: Value = serde_json::from_slice(&recorded[0].body).expect("json");
    assert_eq!(body["metadata"][1]["value"], "+/8A");
}

#[tokio::test]
async fn set_of_an_unchanged_value_succeeds_without_a_new_change_date() {
    let f = fixture().await;
    let (_, first) = f.set(&f.iam, &f.alice, &[("plan", b"gold")]).await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (status, again) = f.set(&f.iam, &f.alice, &[("plan", b"gold")]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["setDate"], first["setDate"]);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let (_, changed) = f.set(&f.iam, &f.alice, &[("plan", b"platinum")]).await;
    assert_ne!(changed["setDate"], first["setDate"]);
    let (_, answer) = f.list(&f.iam, json!({"userId": f.alice})).await;
    // The creation date stays, the change date moves.
    assert_eq!(answer["metadata"][0]["creationDate"], first["setDate"]);
    assert_eq!(answer["metadata"][0]["changeDate"], changed["setDate"]);
}

#[tokio::test]
async fn list_pages_sorts_by_creation_and_filters_keys() {
    let f = fixture().await;
    for key in ["a1", "B2", "a3", "c4"] {
        f.set(&f.iam, &f.alice, &[(key, b"v")]).await;
    }
    let id = f.alice.clone();
    assert_eq!(
        f.keys(&f.iam, json!({"userId": id})).await,
        ["c4", "a3", "B2", "a1"]
    );
    assert_eq!(
        f.keys(&f.iam, json!({"userId": id, "pagination": {"asc": true}}))
            .await,
        ["a1", "B2", "a3", "c4"]
    );
    let (_, answer) = f
        .list(
            &f.iam,
            json!({"userId": id, "pagination": {"offset": "1", "limit": 2, "asc": true}}),
        )
        .await;
    assert_eq!(
        answer["pagination"],
        json!({"totalResult": "4", "appliedLimit": "2"})
    );
    assert_eq!(answer["metadata"][0]["key"], "B2");
    assert_eq!(answer["metadata"].as_array().map(Vec::len), Some(2));
    let filter = |key: &str, method: &str| json!({"userId": id, "pagination": {"asc": true}, "filters": [{"keyFilter": {"key": key, "method": method}}]});
    assert_eq!(
        f.keys(&f.iam, filter("a3", "TEXT_FILTER_METHOD_EQUALS"))
            .await,
        ["a3"]
    );
    assert_eq!(
        f.keys(&f.iam, filter("b2", "TEXT_FILTER_METHOD_EQUALS"))
            .await,
        Vec::<String>::new()
    );
    assert_eq!(
        f.keys(
            &f.iam,
            filter("b2", "TEXT_FILTER_METHOD_EQUALS_IGNORE_CASE")
        )
        .await,
        ["B2"]
    );
    assert_eq!(
        f.keys(&f.iam, filter("a", "TEXT_FILTER_METHOD_STARTS_WITH"))
            .await,
        ["a1", "a3"]
    );
    assert_eq!(
        f.keys(&f.iam, filter("4", "TEXT_FILTER_METHOD_ENDS_WITH"))
            .await,
        ["c4"]
    );
    assert_eq!(
        f.keys(&f.iam, filter("2", "TEXT_FILTER_METHOD_CONTAINS"))
            .await,
        ["B2"]
    );
    // The method defaults to EQUALS.
    assert_eq!(
        f.keys(
            &f.iam,
            json!({"userId": id, "filters": [{"keyFilter": {"key": "c4"}}]})
        )
        .await,
        ["c4"]
    );
    // Limits: 1000 is fine, 1001 is refused (not clamped).
    let (status, answer) = f
        .list(&f.iam, json!({"userId": id, "pagination": {"limit": 1000}}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["pagination"]["appliedLimit"], "1000");
    let refused = f
        .list(&f.iam, json!({"userId": id, "pagination": {"limit": 1001}}))
        .await;
    assert_connect_error(&refused, 400, "invalid_argument", Some("QUERY-4M0fs"));
    // A missing user has no rows: an empty answer, not an error.
    let (status, answer) = f.list(&f.iam, json!({"userId": "404"})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer, json!({"pagination": {"appliedLimit": "100"}}));
}

#[tokio::test]
async fn validation_and_command_errors_over_connect() {
    let f = fixture().await;
    let empty_value = f.set(&f.iam, &f.alice, &[("k", b"")]).await;
    assert_connect_error(&empty_value, 400, "invalid_argument", None);
    assert!(
        empty_value.1["message"]
            .as_str()
            .unwrap_or_default()
            .contains("Metadata.Value")
    );
    let long_key = "k".repeat(201);
    assert_connect_error(
        &f.set(&f.iam, &f.alice, &[(&long_key, b"v")]).await,
        400,
        "invalid_argument",
        None,
    );
    assert_connect_error(
        &f.set(&f.iam, &f.alice, &[]).await,
        400,
        "failed_precondition",
        Some("META-9mm2d"),
    );
    assert_connect_error(
        &f.set(&f.iam, "404", &[("k", b"v")]).await,
        400,
        "failed_precondition",
        Some("COMMAND-uXHNj"),
    );
    assert_connect_error(
        &f.set(&f.iam, "", &[("k", b"v")]).await,
        400,
        "invalid_argument",
        None,
    );
    let too_big = vec![7u8; 500_001];
    assert_connect_error(
        &f.set(&f.iam, &f.alice, &[("k", &too_big)]).await,
        400,
        "invalid_argument",
        None,
    );
    assert!(
        f.set(&f.iam, &f.alice, &[("k", &too_big[..500_000])])
            .await
            .0
            .is_success()
    );

    let delete = |user: &str, keys: Value| {
        f.connect(
            "DeleteUserMetadata",
            &f.iam,
            json!({"userId": user, "keys": keys}),
        )
    };
    assert_connect_error(
        &delete(&f.alice, json!([])).await,
        400,
        "failed_precondition",
        Some("META-9mm2d"),
    );
    assert_connect_error(
        &delete(&f.alice, json!(["k", "nope"])).await,
        404,
        "not_found",
        Some("META-2nnds"),
    );
    assert!(
        f.z.metadata_of(&f.alice).contains_key("k"),
        "all or nothing"
    );
    assert_connect_error(
        &delete("404", json!(["k"])).await,
        400,
        "failed_precondition",
        Some("COMMAND-uXHNj"),
    );
    assert!(delete(&f.alice, json!(["k"])).await.0.is_success());
    assert_connect_error(
        &delete(&f.alice, json!(["k"])).await,
        404,
        "not_found",
        Some("META-2nnds"),
    );

    // Decoding errors: invalid_argument without details.
    let (status, answer) = f
        .send(
            f.http
                .post(format!("{}{SVC}SetUserMetadata", f.z.url()))
                .bearer_auth(&f.iam)
                .header("content-type", "application/json")
                .body("{\"metadata\": 5}"),
        )
        .await;
    assert_eq!(
        (status.as_u16(), answer["code"].as_str()),
        (400, Some("invalid_argument"))
    );
    assert!(
        answer["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("unmarshal into *user.SetUserMetadataRequest")
    );

    // Authentication: missing header, unknown token, token without the ZITADEL audience.
    let (status, answer) = f
        .send(
            f.http
                .post(format!("{}{SVC}ListUserMetadata", f.z.url()))
                .header("content-type", "application/json")
                .body("{}"),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        answer,
        json!({"code": "unauthenticated", "message": "auth header missing"})
    );
    assert_connect_error(
        &f.list("nope", json!({"userId": f.alice})).await,
        401,
        "unauthenticated",
        Some("AUTH-7fs1e"),
    );
    let no_aud = f.z.issue_token(
        &f.z.create_service_user(&f.org, "x", ManagerRole::IamOwner),
        &["openid"],
    );
    assert_connect_error(
        &f.list(&no_aud, json!({"userId": f.alice})).await,
        401,
        "unauthenticated",
        Some("AUTH-7fs1e"),
    );
    let with_aud = f.z.issue_token(
        &f.z.create_service_user(&f.org, "y", ManagerRole::IamOwner),
        &["openid", "urn:zitadel:iam:org:project:id:zitadel:aud"],
    );
    assert_eq!(
        f.list(&with_aud, json!({"userId": f.alice})).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn empty_value_deletes_when_switched_on() {
    let f = fixture().await;
    f.z.set_empty_value_deletes(true);
    f.set(&f.iam, &f.alice, &[("k", b"v")]).await;
    assert_eq!(
        f.set(&f.iam, &f.alice, &[("k", b""), ("absent", b"")])
            .await
            .0,
        StatusCode::OK
    );
    assert!(f.z.metadata_of(&f.alice).is_empty());
}

#[tokio::test]
async fn permissions_follow_the_target_users_real_organisation() {
    let f = fixture().await;
    // IAM_OWNER: any organisation; x-zitadel-orgid plays no part.
    assert_eq!(
        f.set(&f.iam, &f.bob, &[("k", b"v")]).await.0,
        StatusCode::OK
    );
    // ORG_OWNER: its own organisation only.
    assert_eq!(
        f.set(&f.acme_owner, &f.alice, &[("k", b"v")]).await.0,
        StatusCode::OK
    );
    let denied = f.set(&f.acme_owner, &f.bob, &[("k", b"other")]).await;
    assert_connect_error(&denied, 404, "not_found", Some("AUTHZ-cdgFk"));
    let request = f
        .http
        .post(format!("{}{SVC}SetUserMetadata", f.z.url()))
        .bearer_auth(&f.acme_owner)
        .header("content-type", "application/json")
        .header("x-zitadel-orgid", &f.other_org)
        .body(json!({"userId": f.bob, "metadata": [{"key": "k", "value": "eA=="}]}).to_string());
    assert_connect_error(
        &f.send(request).await,
        404,
        "not_found",
        Some("AUTHZ-cdgFk"),
    );
    let delete = f
        .connect(
            "DeleteUserMetadata",
            &f.acme_owner,
            json!({"userId": f.bob, "keys": ["k"]}),
        )
        .await;
    assert_connect_error(&delete, 404, "not_found", Some("AUTHZ-cdgFk"));
    assert_eq!(f.z.metadata_of(&f.bob)["k"], b"v");
    // Reads elsewhere are filtered out of the list (the count stays, as ZITADEL's query computes it first).
    let (status, answer) = f.list(&f.acme_owner, json!({"userId": f.bob})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        answer,
        json!({"pagination": {"totalResult": "1", "appliedLimit": "100"}})
    );
    // No role at all: refused.
    assert_connect_error(
        &f.set(&f.nobody, &f.alice, &[("k", b"v")]).await,
        404,
        "not_found",
        Some("AUTHZ-cdgFk"),
    );
    assert_connect_error(
        &f.list(&f.nobody, json!({"userId": f.alice})).await,
        404,
        "not_found",
        Some("AUTHZ-cdgFk"),
    );
    // Humans get no self-management.
    let own = f.z.issue_token(
        &f.alice,
        &["openid", "urn:zitadel:iam:org:project:id:zitadel:aud"],
    );
    assert_connect_error(
        &f.set(&own, &f.alice, &[("k", b"mine")]).await,
        404,
        "not_found",
        Some("AUTHZ-cdgFk"),
    );
    assert_eq!(f.z.metadata_of(&f.alice)["k"], b"v");
    // But a user may read itself by id.
    let (status, answer) = f
        .connect("GetUserByID", &own, json!({"userId": f.alice}))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["user"]["userId"], f.alice);
    let denied = f
        .connect("GetUserByID", &f.acme_owner, json!({"userId": f.bob}))
        .await;
    assert_connect_error(&denied, 404, "not_found", Some("AUTHZ-cdgFk"));
}

#[tokio::test]
async fn get_user_by_id_answers_the_v2_user_shape() {
    let f = fixture().await;
    let (status, answer) = f
        .connect("GetUserByID", &f.iam, json!({"userId": f.alice}))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let user = &answer["user"];
    assert_eq!(user["userId"], f.alice);
    assert_eq!(user["state"], "USER_STATE_ACTIVE");
    assert_eq!(user["username"], "alice");
    assert_eq!(user["loginNames"], json!(["alice@acme.localhost"]));
    assert_eq!(user["preferredLoginName"], "alice@acme.localhost");
    assert_eq!(user["details"]["resourceOwner"], f.org);
    assert_eq!(user["details"]["sequence"], "2");
    assert_eq!(answer["details"], user["details"]);
    assert_eq!(user["human"]["profile"]["givenName"], "alice");
    assert_eq!(
        user["human"]["email"],
        json!({"email": "alice@acme.localhost", "isVerified": true})
    );
    assert!(user.get("machine").is_none());

    let missing = f
        .connect("GetUserByID", &f.iam, json!({"userId": "404"}))
        .await;
    assert_connect_error(&missing, 404, "not_found", Some("QUERY-Dfbg2"));
    let rest = f.rest(Method::GET, "/v2/users/404", &f.iam, None).await;
    assert_gateway_error(&rest, 404, 5, Some("QUERY-Dfbg2"));
    let (status, by_rest) = f
        .rest(Method::GET, &format!("/v2/users/{}", f.alice), &f.iam, None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(by_rest["user"], answer["user"]);
}

#[tokio::test]
async fn list_users_filters_by_metadata_and_permission() {
    let f = fixture().await;
    let carol = f.z.create_user(&f.org, "carol");
    f.z.set_metadata(&f.alice, "tier", b"gold");
    f.z.set_metadata(&carol, "tier", b"silver");
    f.z.set_metadata(&f.bob, "tier", b"gold");
    let ids = |answer: &Value| -> Vec<String> {
        answer["result"]
            .as_array()
            .map(|r| {
                r.iter()
                    .map(|u| u["userId"].as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let query = |queries: Value| json!({"query": {"asc": true}, "queries": queries});
    let key_gold = json!([{"metadataKeyFilter": {"key": "tier", "method": "TEXT_FILTER_METHOD_EQUALS"}},
                          {"metadataValueFilter": {"value": b64(b"gold"), "method": "BYTE_FILTER_METHOD_EQUALS"}}]);
    let (status, answer) = f
        .connect("ListUsers", &f.iam, query(key_gold.clone()))
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(ids(&answer), vec![f.alice.clone(), f.bob.clone()]);
    assert_eq!(answer["details"]["totalResult"], "2");
    assert!(answer["details"]["timestamp"].is_string());
    assert!(answer["result"][0].get("metadata").is_none());
    // An ORG_OWNER does not see Globex's bob (the count is taken before that filter, as in ZITADEL).
    let (_, answer) = f.connect("ListUsers", &f.acme_owner, query(key_gold)).await;
    assert_eq!(ids(&answer), vec![f.alice.clone()]);
    let not_gold = json!([{"metadataValueFilter": {"value": b64(b"gold"), "method": "BYTE_FILTER_METHOD_NOT_EQUALS"}}]);
    assert_eq!(
        ids(&f.connect("ListUsers", &f.iam, query(not_gold)).await.1),
        vec![carol.clone()]
    );
    let combined = json!([{"organizationIdQuery": {"organizationId": f.org}},
        {"orQuery": {"queries": [{"userNameQuery": {"userName": "carol"}}, {"inUserIdsQuery": {"userIds": [f.alice]}}]}},
        {"notQuery": {"query": {"userNameQuery": {"userName": "ALICE", "method": "TEXT_QUERY_METHOD_EQUALS_IGNORE_CASE"}}}}]);
    assert_eq!(
        ids(&f.connect("ListUsers", &f.iam, query(combined)).await.1),
        vec![carol.clone()]
    );
    // Defaults: newest id first, limit 100; over 1000 refused; value filter at most 200 bytes.
    let (_, all) = f.connect("ListUsers", &f.iam, json!({})).await;
    assert_eq!(all["result"][0]["userId"], carol);
    let refused = f
        .connect("ListUsers", &f.iam, json!({"query": {"limit": 1001}}))
        .await;
    assert_connect_error(&refused, 400, "invalid_argument", Some("QUERY-4M0fs"));
    let long = json!({"queries": [{"metadataValueFilter": {"value": b64(&[1; 201])}}]});
    assert_connect_error(
        &f.connect("ListUsers", &f.iam, long).await,
        400,
        "invalid_argument",
        None,
    );
    // The REST twin answers the same.
    let (status, rest) = f
        .rest(
            Method::POST,
            "/v2/users",
            &f.iam,
            Some(json!({"queries": [{"inUserIdsQuery": {"userIds": [f.bob]}}]})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&rest), vec![f.bob.clone()]);
}

#[tokio::test]
async fn rest_twins_use_grpc_gateway_bodies() {
    let f = fixture().await;
    let path = format!("/v2/users/{}/metadata", f.alice);
    let body =
        json!({"metadata": [{"key": "a", "value": b64(b"1")}, {"key": "b", "value": b64(b"2")}]});
    let (status, answer) = f.rest(Method::POST, &path, &f.iam, Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert!(answer["setDate"].is_string());
    let (status, answer) = f
        .rest(
            Method::POST,
            &format!("{path}/search"),
            &f.iam,
            Some(json!({"pagination": {"asc": true}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answer["metadata"][0]["key"], "a");
    assert_eq!(answer["metadata"][1]["value"], "Mg==");
    let (status, _) = f
        .rest(
            Method::DELETE,
            &format!("{path}?keys=a&keys=b"),
            &f.iam,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(f.z.metadata_of(&f.alice).is_empty());
    assert_gateway_error(
        &f.rest(Method::DELETE, &path, &f.iam, None).await,
        400,
        9,
        Some("META-9mm2d"),
    );
    assert_gateway_error(
        &f.rest(Method::DELETE, &format!("{path}?keys=a"), &f.iam, None)
            .await,
        404,
        5,
        Some("META-2nnds"),
    );
    let denied = f
        .rest(
            Method::POST,
            &format!("/v2/users/{}/metadata", f.bob),
            &f.acme_owner,
            Some(json!({"metadata": [{"key": "a", "value": "eA=="}]})),
        )
        .await;
    assert_gateway_error(&denied, 404, 5, Some("AUTHZ-cdgFk"));
    let unauthenticated = f
        .rest(
            Method::POST,
            &format!("{path}/search"),
            "nope",
            Some(json!({})),
        )
        .await;
    assert_gateway_error(&unauthenticated, 401, 16, Some("AUTH-7fs1e"));
    let bad = f
        .rest(
            Method::POST,
            &path,
            &f.iam,
            Some(json!({"metadata": [{"key": "", "value": "eA=="}]})),
        )
        .await;
    assert_gateway_error(&bad, 400, 3, None);
    let recorded = f.z.requests();
    assert!(recorded.iter().any(|r| r.is_user_v2_rest()
        && r.method == Method::DELETE
        && r.query.as_deref() == Some("keys=a&keys=b")));
}

#[tokio::test]
async fn connect_refuses_other_content_types_methods_and_unknown_procedures() {
    let f = fixture().await;
    let url = format!("{}{SVC}ListUserMetadata", f.z.url());
    let response = f
        .http
        .post(&url)
        .bearer_auth(&f.iam)
        .header("content-type", "application/proto")
        .body("")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let response = f
        .http
        .post(&url)
        .bearer_auth(&f.iam)
        .body("{}")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let response = f
        .http
        .post(&url)
        .bearer_auth(&f.iam)
        .header("content-type", "application/json; charset=utf-8")
        .body(json!({"userId": f.alice}).to_string())
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::OK);
    let response = f
        .http
        .get(&url)
        .bearer_auth(&f.iam)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(response.headers()["allow"], "POST");
    let response = f
        .http
        .post(format!("{}{SVC}NoSuchProcedure", f.z.url()))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(response.text().await.expect("body"), "404 page not found\n");
}

#[tokio::test]
async fn search_lag_hides_young_writes_from_v2_searches_only() {
    let f = fixture().await;
    f.z.set_metadata(&f.alice, "old", b"1");
    f.z.set_search_lag(Duration::from_millis(400));
    f.set(&f.iam, &f.alice, &[("new", b"2")]).await;
    f.connect(
        "DeleteUserMetadata",
        &f.iam,
        json!({"userId": f.alice, "keys": ["old"]}),
    )
    .await;
    // v2 List still sees the state of 400 ms ago: "old" present, "new" absent.
    assert_eq!(f.keys(&f.iam, json!({"userId": f.alice})).await, ["old"]);
    let (_, users) = f
        .connect(
            "ListUsers",
            &f.iam,
            json!({"queries": [{"metadataKeyFilter": {"key": "new"}}]}),
        )
        .await;
    assert!(users.get("result").is_none(), "{users}");
    // v1 reads current state.
    let (_, v1) = f
        .rest(
            Method::POST,
            &format!("/management/v1/users/{}/metadata/_search", f.alice),
            &f.iam,
            Some(json!({})),
        )
        .await;
    assert_eq!(v1["result"].as_array().map(Vec::len), Some(1));
    assert_eq!(v1["result"][0]["key"], "new");
    // A user created within the lag is not listed yet; GetUserByID finds it.
    let dave = f.z.create_user(&f.org, "dave");
    let (_, users) = f
        .connect(
            "ListUsers",
            &f.iam,
            json!({"queries": [{"inUserIdsQuery": {"userIds": [dave]}}]}),
        )
        .await;
    assert!(users.get("result").is_none());
    assert_eq!(
        f.connect("GetUserByID", &f.iam, json!({"userId": dave}))
            .await
            .0,
        StatusCode::OK
    );
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(f.keys(&f.iam, json!({"userId": f.alice})).await, ["new"]);
    let (_, users) = f
        .connect(
            "ListUsers",
            &f.iam,
            json!({"queries": [{"inUserIdsQuery": {"userIds": [dave]}}]}),
        )
        .await;
    assert_eq!(users["result"][0]["userId"], dave);
}

#[tokio::test]
async fn api_switches_play_other_zitadel_versions() {
    let f = fixture().await;
    f.z.set_apis(Apis::V3);
    let response = f
        .http
        .post(format!("{}{SVC}SetUserMetadata", f.z.url()))
        .bearer_auth(&f.iam)
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    assert_eq!(response.text().await.expect("body"), "404 page not found\n");
    let rest = f
        .rest(
            Method::POST,
            &format!("/v2/users/{}/metadata/search", f.alice),
            &f.iam,
            Some(json!({})),
        )
        .await;
    assert_eq!(
        rest,
        (
            StatusCode::NOT_FOUND,
            json!({"code": 5, "message": "Not Found"})
        )
    );
    // v3 still has GetUserByID and ListUsers, but no metadata filters.
    assert_eq!(
        f.connect("GetUserByID", &f.iam, json!({"userId": f.alice}))
            .await
            .0,
        StatusCode::OK
    );
    let filtered = f
        .connect(
            "ListUsers",
            &f.iam,
            json!({"queries": [{"metadataKeyFilter": {"key": "k"}}]}),
        )
        .await;
    assert_connect_error(&filtered, 400, "invalid_argument", None);
    assert_eq!(
        f.rest(
            Method::POST,
            &format!("/management/v1/users/{}/metadata/_search", f.alice),
            &f.iam,
            Some(json!({}))
        )
        .await
        .0,
        StatusCode::OK
    );

    f.z.set_apis(Apis::V2_ONLY);
    let v1 = f
        .rest(
            Method::POST,
            &format!("/management/v1/users/{}/metadata/_search", f.alice),
            &f.iam,
            Some(json!({})),
        )
        .await;
    assert_eq!(
        v1,
        (
            StatusCode::NOT_FOUND,
            json!({"code": 5, "message": "Not Found"})
        )
    );
    assert_eq!(
        f.set(&f.iam, &f.alice, &[("k", b"v")]).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn faults_apply_to_v2_paths_with_connect_bodies() {
    let f = fixture().await;
    f.z.push_fault(Fault {
        path_prefix: SVC.to_owned(),
        times: Some(1),
        kind: FaultKind::Status(503),
    });
    let failed = f.list(&f.iam, json!({"userId": f.alice})).await;
    assert_eq!(failed.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(failed.1["code"], "unavailable");
    f.z.push_fault(Fault {
        path_prefix: format!("{SVC}SetUserMetadata"),
        times: Some(1),
        kind: FaultKind::TooManyRequests {
            retry_after_secs: Some(2),
        },
    });
    let limited = f.set(&f.iam, &f.alice, &[("k", b"v")]).await;
    assert_eq!(
        (limited.0.as_u16(), limited.1["code"].as_str()),
        (429, Some("resource_exhausted"))
    );
    assert!(f.z.metadata_of(&f.alice).is_empty());
    f.z.push_fault(Fault {
        path_prefix: "/v2/users".to_owned(),
        times: Some(1),
        kind: FaultKind::Status(500),
    });
    assert_eq!(
        f.rest(Method::GET, &format!("/v2/users/{}", f.alice), &f.iam, None)
            .await
            .1["code"],
        13
    );
    f.z.push_fault(Fault {
        path_prefix: SVC.to_owned(),
        times: Some(1),
        kind: FaultKind::MalformedJson,
    });
    let (status, body) = f.list(&f.iam, json!({"userId": f.alice})).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.is_string(), "not JSON: {body}");
    f.z.push_fault(Fault {
        path_prefix: SVC.to_owned(),
        times: Some(1),
        kind: FaultKind::DropConnection,
    });
    let dropped = f
        .http
        .post(format!("{}{SVC}ListUserMetadata", f.z.url()))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await;
    assert!(dropped.is_err());
    f.z.push_fault(Fault {
        path_prefix: SVC.to_owned(),
        times: Some(1),
        kind: FaultKind::Latency(Duration::from_millis(120)),
    });
    let started = std::time::Instant::now();
    assert_eq!(
        f.list(&f.iam, json!({"userId": f.alice})).await.0,
        StatusCode::OK
    );
    assert!(started.elapsed() >= Duration::from_millis(120));
}
