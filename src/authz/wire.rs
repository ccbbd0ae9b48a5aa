//! What Check reads of Envoy's `CheckRequest`, and the server that decodes into it.
//!
//! Envoy sends every request header, both peers' addresses and certificates, route metadata and more;
//! decoding all of it into envoy-types' messages (a `HashMap` of owned strings per request) cost more than
//! the rest of a cached Check. These messages carry the same field numbers as envoy-types' for the few fields
//! Check uses; protobuf skips every other field unread, and a map is on the wire a repeated entry message, so
//! headers arrive as [`HeaderEntry`] values that borrow the request's buffer instead of allocating.
//! The answer stays envoy-types' `CheckResponse`.

use bytes::Bytes;

use crate::caller::AUTHORIZATION;

// The generated server: `authorization_server::{Authorization, AuthorizationServer}` (see build.rs).
include!(concat!(
    env!("OUT_DIR"),
    "/envoy.service.auth.v3.Authorization.rs"
));

/// `envoy.service.auth.v3.CheckRequest`, as far as Check reads it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CheckRequest {
    /// What Envoy knows of the request; Check reads only `request`.
    #[prost(message, optional, tag = "1")]
    pub attributes: Option<AttributeContext>,
}

/// `envoy.service.auth.v3.AttributeContext`: only `request`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AttributeContext {
    /// The request Envoy asks about.
    #[prost(message, optional, tag = "4")]
    pub request: Option<RequestContext>,
}

/// `AttributeContext.Request`: only `http`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RequestContext {
    /// Its HTTP attributes.
    #[prost(message, optional, tag = "2")]
    pub http: Option<HttpRequest>,
}

/// `AttributeContext.HttpRequest`: the path, the host and the headers.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HttpRequest {
    /// The `map<string, string> headers` field, entry by entry (a later duplicate key wins, as in a map).
    #[prost(message, repeated, tag = "3")]
    pub headers: Vec<HeaderEntry>,
    /// The request target as in the request line: the path and the query.
    #[prost(string, tag = "4")]
    pub path: String,
    /// The `Host` header (HTTP/1.1) or `:authority` (HTTP/2).
    #[prost(string, tag = "5")]
    pub host: String,
    /// Set instead of `headers` when Envoy's `encode_raw_headers` is on.
    #[prost(message, optional, tag = "13")]
    pub header_map: Option<HeaderMap>,
}

/// One entry of `HttpRequest.headers`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HeaderEntry {
    /// The header name, lower-case as Envoy sends it.
    #[prost(bytes = "bytes", tag = "1")]
    pub key: Bytes,
    /// The header value.
    #[prost(bytes = "bytes", tag = "2")]
    pub value: Bytes,
}

/// `envoy.config.core.v3.HeaderMap`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HeaderMap {
    /// Every header, one entry each.
    #[prost(message, repeated, tag = "1")]
    pub headers: Vec<HeaderValue>,
}

/// `envoy.config.core.v3.HeaderValue`: `raw_value` holds the bytes when Envoy encodes raw headers.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HeaderValue {
    /// The header name.
    #[prost(bytes = "bytes", tag = "1")]
    pub key: Bytes,
    /// The value as text; empty when Envoy sends `raw_value` instead.
    #[prost(bytes = "bytes", tag = "2")]
    pub value: Bytes,
    /// The value's bytes, when Envoy encodes raw headers.
    #[prost(bytes = "bytes", tag = "3")]
    pub raw_value: Bytes,
}

impl HttpRequest {
    /// The request's `authorization` value. Envoy sends lower-case names, in `headers` or (with
    /// `encode_raw_headers`) in `header_map`; another sender's capitalisation is accepted too.
    pub fn authorization(&self) -> Option<&Bytes> {
        let exact = self
            .headers
            .iter()
            .rfind(|h| h.key.as_ref() == AUTHORIZATION.as_bytes());
        if let Some(entry) = exact.or_else(|| {
            self.headers
                .iter()
                .rfind(|h| h.key.eq_ignore_ascii_case(AUTHORIZATION.as_bytes()))
        }) {
            return Some(&entry.value);
        }
        let header = self
            .header_map
            .as_ref()?
            .headers
            .iter()
            .find(|h| h.key.eq_ignore_ascii_case(AUTHORIZATION.as_bytes()))?;
        Some(if header.raw_value.is_empty() {
            &header.value
        } else {
            &header.raw_value
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3 as core;
    use envoy_types::pb::envoy::service::auth::v3 as full;
    use prost::Message as _;

    /// A request as Envoy sends it, with much Check does not read around what it does.
    fn full_request(
        headers: &[(&str, &str)],
        header_map: Option<core::HeaderMap>,
    ) -> full::CheckRequest {
        let peer = full::attribute_context::Peer {
            address: Some(core::Address::default()),
            principal: "spiffe://cluster.local/ns/default/sa/gateway".to_owned(),
            certificate: "-----BEGIN CERTIFICATE-----".to_owned(),
            ..Default::default()
        };
        full::CheckRequest {
            attributes: Some(full::AttributeContext {
                source: Some(peer.clone()),
                destination: Some(peer),
                request: Some(full::attribute_context::Request {
                    time: Some(Default::default()),
                    http: Some(full::attribute_context::HttpRequest {
                        id: "12345".to_owned(),
                        method: "GET".to_owned(),
                        headers: headers
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect(),
                        header_map,
                        path: "/orders/7?debug=1".to_owned(),
                        host: "shop.example.com:8443".to_owned(),
                        scheme: "https".to_owned(),
                        protocol: "HTTP/2".to_owned(),
                        body: "{\"a\":1}".to_owned(),
                        size: 7,
                        ..Default::default()
                    }),
                }),
                context_extensions: [("route".to_owned(), "orders".to_owned())].into(),
                ..Default::default()
            }),
        }
    }

    fn slim(full: &full::CheckRequest) -> HttpRequest {
        let decoded = CheckRequest::decode(full.encode_to_vec().as_slice()).expect("decodes");
        decoded.attributes.unwrap().request.unwrap().http.unwrap()
    }

    #[test]
    fn reads_what_envoy_types_encodes() {
        let http = slim(&full_request(
            &[
                (":method", "GET"),
                ("authorization", "Bearer abc"),
                ("x-request-id", "r-1"),
                ("user-agent", "curl/8"),
            ],
            None,
        ));
        assert_eq!(http.path, "/orders/7?debug=1");
        assert_eq!(http.host, "shop.example.com:8443");
        assert_eq!(http.headers.len(), 4);
        assert_eq!(
            http.authorization().map(|v| &v[..]),
            Some(&b"Bearer abc"[..])
        );
    }

    #[test]
    fn finds_authorization_in_any_capitalisation_and_in_the_header_map() {
        let http = slim(&full_request(&[("Authorization", "Bearer mixed")], None));
        assert_eq!(
            http.authorization().map(|v| &v[..]),
            Some(&b"Bearer mixed"[..])
        );

        let none = slim(&full_request(&[("x-other", "1")], None));
        assert_eq!(none.authorization(), None);

        let raw = |value: &str, raw_value: &[u8]| {
            Some(core::HeaderMap {
                headers: vec![
                    core::HeaderValue {
                        key: "accept".to_owned(),
                        value: "*/*".to_owned(),
                        raw_value: b"*/*".to_vec(),
                    },
                    core::HeaderValue {
                        key: "authorization".to_owned(),
                        value: value.to_owned(),
                        raw_value: raw_value.to_vec(),
                    },
                ],
            })
        };
        let http = slim(&full_request(&[], raw("", b"Bearer raw")));
        assert_eq!(
            http.authorization().map(|v| &v[..]),
            Some(&b"Bearer raw"[..])
        );
        let http = slim(&full_request(&[], raw("Bearer text", b"")));
        assert_eq!(
            http.authorization().map(|v| &v[..]),
            Some(&b"Bearer text"[..])
        );
        // `headers` wins over `header_map` (Envoy fills only one of them).
        let http = slim(&full_request(
            &[("authorization", "Bearer map")],
            raw("", b"Bearer raw"),
        ));
        assert_eq!(
            http.authorization().map(|v| &v[..]),
            Some(&b"Bearer map"[..])
        );
    }

    #[test]
    fn an_empty_request_has_no_http_attributes() {
        let decoded = CheckRequest::decode(&[][..]).expect("decodes");
        assert!(decoded.attributes.is_none());
    }
}
