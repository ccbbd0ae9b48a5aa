//! ZITADEL's JSON shapes, as its grpc-gateway writes them: lowerCamelCase names, fields that hold default
//! values omitted (so every field here is optional or defaulted), 64-bit integers as strings.

use serde::{Deserialize, Deserializer, Serialize};

/// `zitadel.v1.ListQuery`.
#[derive(Debug, Serialize)]
pub(crate) struct ListQuery {
    /// uint64, sent as a string as proto3 JSON does.
    pub(crate) offset: String,
    pub(crate) limit: u32,
    /// ZITADEL's default is descending; usermeta always lists ascending by key.
    pub(crate) asc: bool,
}

/// `ListMyMetadataRequest` / `ListUserMetadataRequest` bodies.
#[derive(Debug, Serialize)]
pub(crate) struct ListMetadataBody<'a> {
    pub(crate) query: ListQuery,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) queries: Vec<MetadataQuery<'a>>,
}

/// `zitadel.metadata.v1.MetadataQuery`: a oneof with one member.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct MetadataQuery<'a> {
    pub(crate) key_query: KeyQuery<'a>,
}

/// `zitadel.metadata.v1.MetadataKeyQuery`.
#[derive(Debug, Serialize)]
pub(crate) struct KeyQuery<'a> {
    pub(crate) key: &'a str,
    pub(crate) method: &'static str,
}

/// `ListMyMetadataResponse` / `ListUserMetadataResponse`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ListMetadataResponse {
    pub(crate) details: Option<ListDetails>,
    pub(crate) result: Vec<WireMetadata>,
}

/// `zitadel.v1.ListDetails`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub(crate) struct ListDetails {
    #[serde(deserialize_with = "lenient_u64")]
    pub(crate) total_result: u64,
}

/// `zitadel.metadata.v1.Metadata`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct WireMetadata {
    pub(crate) details: Option<ObjectDetails>,
    pub(crate) key: String,
    /// Base64; absent when ZITADEL omitted it.
    pub(crate) value: Option<String>,
}

/// `zitadel.v1.ObjectDetails`.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub(crate) struct ObjectDetails {
    pub(crate) creation_date: Option<String>,
    pub(crate) change_date: Option<String>,
    pub(crate) resource_owner: Option<String>,
}

/// The answer of every management write: `{"details": ObjectDetails}` (SetUserMetadata may add `id`).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct WriteResponse {
    pub(crate) details: Option<ObjectDetails>,
}

/// `SetUserMetadataRequest` body (the key travels in the path).
#[derive(Debug, Serialize)]
pub(crate) struct SetValueBody {
    pub(crate) value: String,
}

/// `BulkSetUserMetadataRequest` body.
#[derive(Debug, Serialize)]
pub(crate) struct BulkSetBody<'a> {
    pub(crate) metadata: Vec<BulkSetEntry<'a>>,
}

/// One entry of [`BulkSetBody`].
#[derive(Debug, Serialize)]
pub(crate) struct BulkSetEntry<'a> {
    pub(crate) key: &'a str,
    pub(crate) value: String,
}

/// `BulkRemoveUserMetadataRequest` body.
#[derive(Debug, Serialize)]
pub(crate) struct BulkRemoveBody<'a> {
    pub(crate) keys: &'a [String],
}

/// Accepts a uint64 as a JSON string (what ZITADEL sends) or a number.
pub(crate) fn lenient_u64<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum StringOrNumber {
        String(String),
        Number(u64),
    }
    match StringOrNumber::deserialize(deserializer)? {
        StringOrNumber::Number(n) => Ok(n),
        StringOrNumber::String(s) => s.parse().map_err(serde::de::Error::custom),
    }
}

/// The list request body for a filter and a page, ascending by key.
pub(crate) fn list_body(
    filter: Option<&crate::metadata::KeyFilter>,
    page: crate::metadata::PageRequest,
) -> ListMetadataBody<'_> {
    ListMetadataBody {
        query: ListQuery {
            offset: page.offset.to_string(),
            limit: page.limit,
            asc: true,
        },
        queries: filter
            .map(|f| MetadataQuery {
                key_query: KeyQuery {
                    key: &f.key,
                    method: f.matching.zitadel_method(),
                },
            })
            .into_iter()
            .collect(),
    }
}

/// A list answer as a domain page.
pub(crate) fn into_page(
    endpoint: super::Endpoint,
    answer: ListMetadataResponse,
) -> crate::metadata::Page {
    crate::metadata::Page {
        total: answer.details.map(|d| d.total_result).unwrap_or_default(),
        items: answer
            .result
            .into_iter()
            .map(|m| super::decode_item(endpoint, m.key, m.value.as_deref(), m.details))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_list_answer_with_omitted_defaults() {
        let empty: ListMetadataResponse = serde_json::from_str(r#"{"details":{}}"#).unwrap();
        assert!(empty.result.is_empty());
        assert_eq!(empty.details.unwrap().total_result, 0);

        let full: ListMetadataResponse = serde_json::from_str(
            r#"{"details":{"totalResult":"1","processedSequence":"2935"},
                "result":[{"details":{"sequence":"409","creationDate":"2022-08-04T09:09:06.259324Z",
                "changeDate":"2022-08-04T09:09:06.259324Z","resourceOwner":"170086363054473473"},
                "key":"ContractNumber","value":"MTIzNA=="}]}"#,
        )
        .unwrap();
        assert_eq!(full.details.unwrap().total_result, 1);
        assert_eq!(full.result[0].key, "ContractNumber");
        assert_eq!(full.result[0].value.as_deref(), Some("MTIzNA=="));
    }

    #[test]
    fn accepts_total_as_number_too() {
        let list: ListMetadataResponse =
            serde_json::from_str(r#"{"details":{"totalResult":7}}"#).unwrap();
        assert_eq!(list.details.unwrap().total_result, 7);
    }

    #[test]
    fn writes_lower_camel_case_queries() {
        let body = ListMetadataBody {
            query: ListQuery {
                offset: "20".into(),
                limit: 10,
                asc: true,
            },
            queries: vec![MetadataQuery {
                key_query: KeyQuery {
                    key: "a",
                    method: "TEXT_QUERY_METHOD_STARTS_WITH",
                },
            }],
        };
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r#"{"query":{"offset":"20","limit":10,"asc":true},"queries":[{"keyQuery":{"key":"a","method":"TEXT_QUERY_METHOD_STARTS_WITH"}}]}"#
        );
    }
}
