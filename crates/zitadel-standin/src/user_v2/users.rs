//! `GetUserByID` and `ListUsers` (with the metadata filters of ZITADEL 4.1+, PR #10415), as
//! `internal/query/user.go` behaves: reads by id are fresh (the projection is triggered), searches read the
//! (possibly lagging) projection and drop the users the caller may not read.

use http::HeaderMap;
use serde_json::{Map, Value, json};

use super::super::errors::{Code, Failure};
use super::super::state::{Data, Shared, User};
use super::super::wire;
use super::json;
use super::metadata::KeyFilter;
use super::{Outcome, applied_limit, authenticate, check_runes, may_read, put, put_u64};

/// `object.v2.Details` of a user.
fn details(user: &User) -> Value {
    let mut map = Map::new();
    put_u64(&mut map, "sequence", user.sequence);
    map.insert(
        "creationDate".into(),
        Value::String(wire::rfc3339(user.created)),
    );
    map.insert(
        "changeDate".into(),
        Value::String(wire::rfc3339(user.changed)),
    );
    put(
        &mut map,
        "resourceOwner",
        Value::String(user.org_id.clone()),
    );
    Value::Object(map)
}

/// `user.v2.User`: human or machine, one login name `<username>@<org primary domain>`.
fn user_json(data: &Data, user: &User) -> Value {
    let domain = data
        .orgs
        .get(&user.org_id)
        .map(|org| org.primary_domain.as_str())
        .unwrap_or_default();
    let login_name = format!("{}@{domain}", user.username);
    let mut map = Map::new();
    map.insert("userId".into(), Value::String(user.id.clone()));
    map.insert("details".into(), details(user));
    map.insert("state".into(), Value::from("USER_STATE_ACTIVE"));
    put(&mut map, "username", Value::String(user.username.clone()));
    map.insert("loginNames".into(), json!([login_name]));
    map.insert(
        "preferredLoginName".into(),
        Value::String(login_name.clone()),
    );
    if user.machine_role.is_some() {
        let mut machine = Map::new();
        put(&mut machine, "name", Value::String(user.username.clone()));
        let has_secret = data
            .clients
            .values()
            .any(|client| client.user_id == user.id);
        put(&mut machine, "hasSecret", Value::Bool(has_secret));
        map.insert("machine".into(), Value::Object(machine));
    } else {
        map.insert(
            "human".into(),
            json!({
                "profile": {
                    "givenName": user.given_name,
                    "familyName": user.family_name,
                    "displayName": format!("{} {}", user.given_name, user.family_name),
                    "preferredLanguage": "en",
                },
                "email": {"email": login_name, "isVerified": true},
            }),
        );
    }
    Value::Object(map)
}

/// `GetUserByID`: `{"userId"}` → `{"details","user"}`. Only authentication at the interceptor; then the user
/// must exist (`QUERY-Dfbg2`) and the caller be the user or hold `user.read` in its organisation.
pub(super) fn get(shared: &Shared, headers: &HeaderMap, request: &Map<String, Value>) -> Outcome {
    let user_id = json::string(json::field(request, "userId", "user_id"), "user_id")?;
    let data = shared.read();
    let caller = authenticate(shared, &data, headers)?;
    check_runes(&user_id, "GetUserByIDRequest.UserId")?;
    let user = data.users.get(&user_id).ok_or_else(|| {
        Failure::zitadel(Code::NotFound, "QUERY-Dfbg2", "User could not be found")
    })?;
    if !may_read(caller, user) {
        return Err(super::membership_not_found());
    }
    Ok(json!({"details": details(user), "user": user_json(&data, user)}))
}

/// The names of `zitadel.object.v2.TextQueryMethod`, by number.
const TEXT_QUERY_METHODS: [&str; 8] = [
    "TEXT_QUERY_METHOD_EQUALS",
    "TEXT_QUERY_METHOD_EQUALS_IGNORE_CASE",
    "TEXT_QUERY_METHOD_STARTS_WITH",
    "TEXT_QUERY_METHOD_STARTS_WITH_IGNORE_CASE",
    "TEXT_QUERY_METHOD_CONTAINS",
    "TEXT_QUERY_METHOD_CONTAINS_IGNORE_CASE",
    "TEXT_QUERY_METHOD_ENDS_WITH",
    "TEXT_QUERY_METHOD_ENDS_WITH_IGNORE_CASE",
];

/// The names of `zitadel.filter.v2.ByteFilterMethod`, by number.
const BYTE_FILTER_METHODS: [&str; 2] =
    ["BYTE_FILTER_METHOD_EQUALS", "BYTE_FILTER_METHOD_NOT_EQUALS"];

/// The names of `zitadel.user.v2.Type`, by number.
const TYPES: [&str; 3] = ["TYPE_UNSPECIFIED", "TYPE_HUMAN", "TYPE_MACHINE"];

/// The names of `zitadel.user.v2.UserFieldName`, by number.
const FIELD_NAMES: [&str; 10] = [
    "USER_FIELD_NAME_UNSPECIFIED",
    "USER_FIELD_NAME_USER_NAME",
    "USER_FIELD_NAME_FIRST_NAME",
    "USER_FIELD_NAME_LAST_NAME",
    "USER_FIELD_NAME_NICK_NAME",
    "USER_FIELD_NAME_DISPLAY_NAME",
    "USER_FIELD_NAME_EMAIL",
    "USER_FIELD_NAME_STATE",
    "USER_FIELD_NAME_TYPE",
    "USER_FIELD_NAME_CREATION_DATE",
];

/// A decoded `SearchQuery` (the members the stand-in supports).
enum Query {
    InUserIds(Vec<String>),
    OrganizationId(String),
    UserName { name: String, method: i64 },
    Type(i64),
    MetadataKey(KeyFilter),
    MetadataValue { value: Vec<u8>, not_equals: bool },
    And(Vec<Query>),
    Or(Vec<Query>),
    Not(Box<Query>),
}

/// Decodes and validates one `SearchQuery`; `path` names it for protoc-gen-validate's messages.
fn decode_query(
    map: Option<&Map<String, Value>>,
    metadata_on: bool,
    path: &str,
) -> Result<Query, Failure> {
    let empty = Map::new();
    let map = map.unwrap_or(&empty);
    let invalid = |cause: &str| {
        Failure::plain(
            Code::InvalidArgument,
            format!("invalid {path}: embedded message failed validation | caused by: {cause}"),
        )
    };
    let member = |json_name: &str, proto_name: &str| {
        json::message(json::field(map, json_name, proto_name), json_name)
    };
    let nested = |items: Option<&Value>, name: &str| -> Result<Vec<Query>, Failure> {
        json::messages(items, name)?
            .into_iter()
            .enumerate()
            .map(|(i, item)| decode_query(item, metadata_on, &format!("{name}[{i}]")))
            .collect()
    };
    if let Some(q) = member("inUserIdsQuery", "in_user_ids_query")? {
        return Ok(Query::InUserIds(json::strings(
            json::field(q, "userIds", "user_ids"),
            "user_ids",
        )?));
    }
    if let Some(q) = member("organizationIdQuery", "organization_id_query")? {
        let id = json::string(
            json::field(q, "organizationId", "organization_id"),
            "organization_id",
        )?;
        if super::super::wire::rune_error(&id, "x").is_some() {
            return Err(invalid(
                "invalid OrganizationIdQuery.OrganizationId: value length must be between 1 and 200 runes, inclusive",
            ));
        }
        return Ok(Query::OrganizationId(id));
    }
    if let Some(q) = member("userNameQuery", "user_name_query")? {
        let name = json::string(json::field(q, "userName", "user_name"), "user_name")?;
        let method = json::enumeration(
            json::field(q, "method", "method"),
            &TEXT_QUERY_METHODS,
            "method",
        )?;
        if super::super::wire::rune_error(&name, "x").is_some() {
            return Err(invalid(
                "invalid UserNameQuery.UserName: value length must be between 1 and 200 runes, inclusive",
            ));
        }
        return Ok(Query::UserName { name, method });
    }
    if let Some(q) = member("typeQuery", "type_query")? {
        return Ok(Query::Type(json::enumeration(
            json::field(q, "type", "type"),
            &TYPES,
            "type",
        )?));
    }
    // On a ZITADEL v3 these members do not exist: the decoder drops them and the query has no member set.
    if metadata_on {
        if let Some(q) = member("metadataKeyFilter", "metadata_key_filter")? {
            let filter = KeyFilter::decode(q)?;
            filter.validate(&format!(
                "invalid {path}: embedded message failed validation | caused by: invalid SearchQuery.MetadataKeyFilter: embedded message failed validation | caused by: "
            ))?;
            return Ok(Query::MetadataKey(filter));
        }
        if let Some(q) = member("metadataValueFilter", "metadata_value_filter")? {
            let value = json::bytes(json::field(q, "value", "value"), "value")?;
            let method = json::enumeration(
                json::field(q, "method", "method"),
                &BYTE_FILTER_METHODS,
                "method",
            )?;
            if value.len() > 200 {
                return Err(invalid(
                    "invalid SearchQuery.MetadataValueFilter: embedded message failed validation | caused by: invalid MetadataValueFilter.Value: value length must be at most 200 bytes",
                ));
            }
            if !(0..2).contains(&method) {
                return Err(invalid(
                    "invalid SearchQuery.MetadataValueFilter: embedded message failed validation | caused by: invalid MetadataValueFilter.Method: value must be one of the defined enum values",
                ));
            }
            return Ok(Query::MetadataValue {
                value,
                not_equals: method == 1,
            });
        }
    }
    if let Some(q) = member("andQuery", "and_query")? {
        return Ok(Query::And(nested(
            json::field(q, "queries", "queries"),
            "AndQuery.Queries",
        )?));
    }
    if let Some(q) = member("orQuery", "or_query")? {
        return Ok(Query::Or(nested(
            json::field(q, "queries", "queries"),
            "OrQuery.Queries",
        )?));
    }
    if let Some(q) = member("notQuery", "not_query")? {
        let inner = json::message(json::field(q, "query", "query"), "query")?;
        return Ok(Query::Not(Box::new(decode_query(
            inner,
            metadata_on,
            "NotQuery.Query",
        )?)));
    }
    let known = [
        "displayNameQuery",
        "emailQuery",
        "firstNameQuery",
        "inUserEmailsQuery",
        "lastNameQuery",
        "loginNameQuery",
        "nickNameQuery",
        "phoneQuery",
        "stateQuery",
    ];
    if let Some(name) = known.iter().find(|name| map.contains_key(**name)) {
        return Err(Failure::plain(
            Code::Unimplemented,
            format!("the ZITADEL stand-in does not implement the ListUsers query member {name}"),
        ));
    }
    Err(invalid("invalid SearchQuery.Query: value is required"))
}

impl Query {
    /// Whether `user`, whose metadata the (lagged) projection shows as `metadata`, matches.
    fn matches(
        &self,
        user: &User,
        metadata: &std::collections::BTreeMap<String, super::super::state::Entry>,
    ) -> bool {
        match self {
            Query::InUserIds(ids) => ids.contains(&user.id),
            Query::OrganizationId(id) => &user.org_id == id,
            Query::UserName { name, method } => wire::text_matches(*method, name, &user.username),
            Query::Type(kind) => match kind {
                1 => user.machine_role.is_none(),
                2 => user.machine_role.is_some(),
                _ => true,
            },
            Query::MetadataKey(filter) => metadata.keys().any(|key| filter.matches(key)),
            Query::MetadataValue { value, not_equals } => metadata
                .values()
                .any(|entry| (&entry.value == value) != *not_equals),
            Query::And(all) => all.iter().all(|q| q.matches(user, metadata)),
            Query::Or(any) => any.iter().any(|q| q.matches(user, metadata)),
            Query::Not(inner) => !inner.matches(user, metadata),
        }
    }
}

/// `ListUsers`: `{"query":{"offset","limit","asc"},"sortingColumn","queries":[…]}` →
/// `{"details":{"totalResult","processedSequence","timestamp"},"sortingColumn","result":[users]}`.
pub(super) fn list(shared: &Shared, headers: &HeaderMap, request: &Map<String, Value>) -> Outcome {
    let (mut offset, mut limit, mut asc) = (0, 0, false);
    if let Some(page) = json::message(json::field(request, "query", "query"), "query")? {
        offset = json::uint(json::field(page, "offset", "offset"), "uint64", "offset")?;
        limit = json::uint(json::field(page, "limit", "limit"), "uint32", "limit")?;
        asc = json::boolean(json::field(page, "asc", "asc"), "asc")?;
    }
    let sorting = json::enumeration(
        json::field(request, "sortingColumn", "sorting_column"),
        &FIELD_NAMES,
        "sorting_column",
    )?;
    let items = json::messages(json::field(request, "queries", "queries"), "queries")?;
    let data = shared.read();
    let caller = authenticate(shared, &data, headers)?;
    let metadata_on = data.apis.user_v2_metadata;
    let queries: Vec<Query> = items
        .into_iter()
        .enumerate()
        .map(|(i, item)| decode_query(item, metadata_on, &format!("ListUsersRequest.Queries[{i}]")))
        .collect::<Result<_, _>>()?;
    let applied = applied_limit(limit)?;
    let lag = data.events.search_lag;
    let mut found: Vec<&User> = data
        .users
        .values()
        .filter(|user| user.visible_with_lag(lag))
        .filter(|user| {
            let metadata = user.metadata_as_of(lag);
            queries.iter().all(|q| q.matches(user, &metadata))
        })
        .collect();
    found.sort_by(|a, b| {
        let by_column = match sorting {
            1 => a.username.cmp(&b.username),
            2 | 5 => a.given_name.cmp(&b.given_name),
            3 => a.family_name.cmp(&b.family_name),
            8 => a.machine_role.is_some().cmp(&b.machine_role.is_some()),
            9 => a.created.cmp(&b.created),
            _ => std::cmp::Ordering::Equal,
        };
        // Ids are equally long decimal numbers: as strings they sort like the numbers.
        by_column.then_with(|| a.id.cmp(&b.id))
    });
    if !asc {
        found.reverse();
    }
    // As in the metadata list, the count is taken before the permission filter drops rows.
    let total = found.len() as u64;
    let result: Vec<Value> = found
        .into_iter()
        .skip(usize::try_from(offset).unwrap_or(usize::MAX))
        .take(usize::try_from(applied).unwrap_or(usize::MAX))
        .filter(|user| may_read(caller, user))
        .map(|user| user_json(&data, user))
        .collect();
    let mut list_details = Map::new();
    put_u64(&mut list_details, "totalResult", total);
    put_u64(
        &mut list_details,
        "processedSequence",
        data.events.processed_sequence,
    );
    list_details.insert(
        "timestamp".into(),
        Value::String(wire::rfc3339(wire::now())),
    );
    let mut answer = Map::new();
    answer.insert("details".into(), Value::Object(list_details));
    if let Some(name) = usize::try_from(sorting)
        .ok()
        .filter(|i| *i > 0)
        .and_then(|i| FIELD_NAMES.get(i))
    {
        answer.insert("sortingColumn".into(), Value::from(*name));
    }
    put(&mut answer, "result", Value::Array(result));
    Ok(Value::Object(answer))
}
