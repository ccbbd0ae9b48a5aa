use tonic::Code;
use usermeta::api::pb::{self, GetMyMetadataRequest, MetadataSource};

use crate::support::*;

fn get(keys: &[&str], source: MetadataSource) -> GetMyMetadataRequest {
    GetMyMetadataRequest {
        keys: keys.iter().map(|k| k.to_string()).collect(),
        source: source as i32,
    }
}

async fn userinfo_is_the_default_source_and_values_come_back_decoded(api: ApiChoice) {
    let app = TestApp::builder().api(api).spawn().await;
    let answer = app
        .get_my_metadata(&app.alice_token, get(&[], MetadataSource::Unspecified))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.user_id, app.alice);
    assert_eq!(
        pairs(&answer.metadata),
        [
            ("ContractNumber".into(), Some("1234".into())),
            ("profile.language".into(), Some("en".into()))
        ]
    );
    assert!(
        answer.metadata[0].update_time.is_none(),
        "userinfo carries no timestamps"
    );

    let requests = app.standin.requests();
    assert_eq!(requests.len(), 1, "one userinfo call: {requests:?}");
    assert!(requests[0].is_userinfo());
    assert_eq!(requests[0].bearer(), Some(app.alice_token.as_str()));
}

async fn auth_api_source_gives_timestamps_and_the_user_from_userinfo(api: ApiChoice) {
    let app = TestApp::builder().api(api).spawn().await;
    let answer = app
        .get_my_metadata(&app.alice_token, get(&[], MetadataSource::AuthApi))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.user_id, app.alice);
    assert_eq!(
        pairs(&answer.metadata)[0],
        ("ContractNumber".into(), Some("1234".into()))
    );
    assert!(
        answer
            .metadata
            .iter()
            .all(|m| m.create_time.is_some() && m.update_time.is_some())
    );

    let requests = app.standin.requests();
    assert!(requests.iter().any(|r| r.is_auth_api()), "auth API called");
    assert!(
        requests
            .iter()
            .all(|r| r.bearer() == Some(app.alice_token.as_str())),
        "only the caller's token used"
    );
    app.assert_no_management_request();
}

async fn binary_values_survive_both_base64_flavours(api: ApiChoice) {
    let app = TestApp::builder().api(api).spawn().await;
    // 0xfb 0xff differs between the alphabets: "+/8=" standard, "-_8" URL-safe unpadded.
    let bytes = [0xfb, 0xff, 0x00, 0x80];
    app.standin.set_metadata(&app.alice, "blob", &bytes);
    for source in [MetadataSource::Userinfo, MetadataSource::AuthApi] {
        let answer = app
            .get_my_metadata(&app.alice_token, get(&["blob"], source))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(answer.metadata.len(), 1, "{source:?}");
        assert_eq!(
            answer.metadata[0].value.as_ref().unwrap().kind,
            Some(pb::metadata_value::Kind::Binary(bytes.to_vec())),
            "{source:?}"
        );
    }
}

async fn keys_filter_exactly_in_both_sources(api: ApiChoice) {
    let app = TestApp::builder().api(api).spawn().await;
    app.standin
        .set_metadata(&app.alice, "contractnumber", b"lower");
    for source in [MetadataSource::Userinfo, MetadataSource::AuthApi] {
        let one = app
            .get_my_metadata(&app.alice_token, get(&["ContractNumber"], source))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            pairs(&one.metadata),
            [("ContractNumber".into(), Some("1234".into()))],
            "{source:?}"
        );

        let two = app
            .get_my_metadata(
                &app.alice_token,
                get(&["profile.language", "ContractNumber", "absent"], source),
            )
            .await
            .unwrap()
            .into_inner();
        let keys: Vec<_> = two.metadata.iter().map(|m| m.key.as_str()).collect();
        assert_eq!(keys, ["ContractNumber", "profile.language"], "{source:?}");
    }
}

async fn a_token_without_the_metadata_scope_sees_no_metadata_in_userinfo(api: ApiChoice) {
    let app = TestApp::builder().api(api).spawn().await;
    let token = app.standin.issue_token(&app.alice, &["openid"]);
    let answer = app
        .get_my_metadata(&token, get(&[], MetadataSource::Userinfo))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.user_id, app.alice);
    assert!(answer.metadata.is_empty());
}

async fn auth_api_without_the_zitadel_audience_scope_says_which_scope_is_missing(api: ApiChoice) {
    let app = TestApp::builder().api(api).spawn().await;
    let token = app
        .standin
        .issue_token(&app.alice, &["openid", "urn:zitadel:iam:user:metadata"]);
    let status = app
        .get_my_metadata(&token, get(&[], MetadataSource::AuthApi))
        .await
        .unwrap_err();
    assert_status(&status, Code::Unauthenticated, "TOKEN_REJECTED_BY_AUTH_API");
    assert!(
        status
            .message()
            .contains("urn:zitadel:iam:org:project:id:zitadel:aud"),
        "{}",
        status.message()
    );

    app.standin
        .set_audience_error_style(zitadel_standin::AudienceErrorStyle::InvalidAudience);
    let status = app
        .get_my_metadata(&token, get(&[], MetadataSource::AuthApi))
        .await
        .unwrap_err();
    assert_status(
        &status,
        Code::Unauthenticated,
        "TOKEN_LACKS_ZITADEL_AUDIENCE",
    );
    assert!(
        status
            .message()
            .contains("urn:zitadel:iam:org:project:id:zitadel:aud"),
        "{}",
        status.message()
    );
}

async fn a_token_without_openid_names_no_user_and_is_refused(api: ApiChoice) {
    let app = TestApp::builder().api(api).spawn().await;
    let token = app
        .standin
        .issue_token(&app.alice, &["urn:zitadel:iam:user:metadata"]);
    let status = app
        .get_my_metadata(&token, get(&[], MetadataSource::Userinfo))
        .await
        .unwrap_err();
    assert_status(&status, Code::Unauthenticated, "TOKEN_WITHOUT_SUBJECT");
    assert!(status.message().contains("openid"));
}

async fn the_user_comes_from_zitadel_not_from_the_request(api: ApiChoice) {
    let mut app = TestApp::builder().api(api).spawn().await;
    // Whatever the caller puts in metadata, only its token decides whose metadata it reads.
    let mut request = authed(get(&[], MetadataSource::Unspecified), &app.alice_token);
    request
        .metadata_mut()
        .insert("x-zitadel-orgid", app.other_org.parse().unwrap());
    request
        .metadata_mut()
        .insert("user_id", app.bob.parse().unwrap());
    let answer = app
        .client
        .get_my_metadata(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(answer.user_id, app.alice);
    assert!(pairs(&answer.metadata).contains(&("ContractNumber".into(), Some("1234".into()))));
}

on_both_apis!(
    userinfo_is_the_default_source_and_values_come_back_decoded,
    auth_api_source_gives_timestamps_and_the_user_from_userinfo,
    binary_values_survive_both_base64_flavours,
    keys_filter_exactly_in_both_sources,
    a_token_without_the_metadata_scope_sees_no_metadata_in_userinfo,
    auth_api_without_the_zitadel_audience_scope_says_which_scope_is_missing,
    a_token_without_openid_names_no_user_and_is_refused,
    the_user_comes_from_zitadel_not_from_the_request,
);
