//! The names of the settings that layers below settings mention: in error messages, log lines, metric help and
//! doc comments, so an operator reading one knows what to change. A leaf: it imports nothing of usermeta, so
//! every layer may use it without an import cycle, and the flags' definitions take their variables from here,
//! so a message cannot name a variable that does not exist. Messages of settings itself name a setting as
//! `VARIABLE (--flag)` through [`super::Setting`].

use usermeta_zitadel::SettingNames;

/// The gRPC listener's address.
pub const LISTEN: &str = "USERMETA_LISTEN";
/// The `--config` file.
pub const CONFIG: &str = "USERMETA_CONFIG";

/// The ZITADEL instance's URL.
pub const ZITADEL_URL: &str = "USERMETA_ZITADEL_URL";
/// The file holding the service user's personal access token.
pub const SERVICE_PAT_FILE: &str = "USERMETA_SERVICE_PAT_FILE";
/// Which ZITADEL API manages metadata.
pub const ZITADEL_API: &str = "USERMETA_ZITADEL_API";
/// When usermeta speaks HTTP/2 to ZITADEL.
pub const ZITADEL_HTTP2: &str = "USERMETA_ZITADEL_HTTP2";
/// The CA trusted toward ZITADEL.
pub const ZITADEL_CA_FILE: &str = "USERMETA_ZITADEL_CA_FILE";
/// The request budget toward ZITADEL.
pub const UPSTREAM_RATE_LIMIT: &str = "USERMETA_UPSTREAM_RATE_LIMIT";
/// One caller's share of that budget.
pub const UPSTREAM_CALLER_SHARE: &str = "USERMETA_UPSTREAM_CALLER_SHARE";
/// The fleet's request budget toward ZITADEL, in Redis.
pub const UPSTREAM_FLEET_RATE_LIMIT: &str = "USERMETA_UPSTREAM_FLEET_RATE_LIMIT";
/// Its burst.
pub const UPSTREAM_FLEET_BURST: &str = "USERMETA_UPSTREAM_FLEET_BURST";
/// The replicas the fleet's budget is divided by for each replica's fallback.
pub const UPSTREAM_FLEET_REPLICAS: &str = "USERMETA_UPSTREAM_FLEET_REPLICAS";
/// One replica's budget while Redis is out of reach.
pub const UPSTREAM_FLEET_FALLBACK_RATE_LIMIT: &str = "USERMETA_UPSTREAM_FLEET_FALLBACK_RATE_LIMIT";
/// How the ZITADEL client names its settings in hints.
pub const ZITADEL_CLIENT: SettingNames = SettingNames {
    http2: Some(ZITADEL_HTTP2),
};

/// The settings of usermeta's introspection client, as a family (client id, secret or key file).
pub const INTROSPECTION_ALL: &str = "USERMETA_INTROSPECTION_*";
/// The audiences of JWTs validated locally.
pub const JWT_AUDIENCE: &str = "USERMETA_JWT_AUDIENCE";
/// usermeta's ZITADEL project.
pub const PROJECT_ID: &str = "USERMETA_PROJECT_ID";
/// The policy file.
pub const POLICY_FILE: &str = "USERMETA_POLICY_FILE";
/// The file of keys that seal and open `sealed` keys.
pub const SEALING_KEYS_FILE: &str = "USERMETA_SEALING_KEYS_FILE";
/// The name of the ZITADEL instance sealed values are bound to.
pub const SEALING_INSTANCE: &str = "USERMETA_SEALING_INSTANCE";
/// The shorthand rule naming admins.
pub const ADMINS: &str = "USERMETA_ADMINS";
/// The shorthand rule naming key prefixes users may write on themselves.
pub const SELF_WRITABLE_KEYS: &str = "USERMETA_SELF_WRITABLE_KEYS";
/// How long an answer about a token is cached.
pub const CACHE_TTL: &str = "USERMETA_CACHE_TTL";
/// How long an organisation's metadata is remembered.
pub const ORG_CACHE_TTL: &str = "USERMETA_ORG_CACHE_TTL";
/// Most organisations whose metadata is remembered at once.
pub const ORG_CACHE_CAPACITY: &str = "USERMETA_ORG_CACHE_CAPACITY";
/// How much of users' listings is cached.
pub const METADATA_CACHE_BYTES: &str = "USERMETA_METADATA_CACHE_BYTES";

/// Most calls waiting on ZITADEL at once.
pub const MAX_IN_FLIGHT: &str = "USERMETA_MAX_IN_FLIGHT";
/// Most of those with one caller token.
pub const MAX_IN_FLIGHT_PER_CALLER: &str = "USERMETA_MAX_IN_FLIGHT_PER_CALLER";
/// Most WatchMetadata streams on a replica.
pub const WATCH_MAX_STREAMS: &str = "USERMETA_WATCH_MAX_STREAMS";
/// Most WatchMetadata streams of one caller.
pub const WATCH_MAX_STREAMS_PER_CALLER: &str = "USERMETA_WATCH_MAX_STREAMS_PER_CALLER";
/// Longest life of a WatchMetadata stream.
pub const WATCH_MAX_DURATION: &str = "USERMETA_WATCH_MAX_DURATION";
/// One stream's buffer.
pub const WATCH_BUFFER_BYTES: &str = "USERMETA_WATCH_BUFFER_BYTES";
/// All streams' buffers together.
pub const WATCH_BUFFER_MEMORY: &str = "USERMETA_WATCH_BUFFER_MEMORY";

/// Redis, for the fleet.
pub const REDIS_URL: &str = "USERMETA_REDIS_URL";
/// Redis, as `VARIABLE (--flag)`.
pub const REDIS_URL_SETTING: &str = "USERMETA_REDIS_URL (--redis-url)";
/// The Redis password's file.
pub const REDIS_PASSWORD_FILE: &str = "USERMETA_REDIS_PASSWORD_FILE";
/// The keys the fleet's messages are sealed with.
pub const REDIS_BUS_KEY_FILE: &str = "USERMETA_REDIS_BUS_KEY_FILE";
/// The deployment runs a single replica.
pub const SINGLE_REPLICA: &str = "USERMETA_SINGLE_REPLICA";
/// The lifetime of the fleet's per-user write lock.
pub const WRITE_LOCK_TTL: &str = "USERMETA_WRITE_LOCK_TTL";
/// The webhook's signing keys.
pub const WEBHOOK_SIGNING_KEY_FILE: &str = "USERMETA_WEBHOOK_SIGNING_KEY_FILE";

/// Metadata keys Check passes on as headers, as `VARIABLE (--flag)`.
pub const EXT_AUTHZ_HEADERS_SETTING: &str = "USERMETA_EXT_AUTHZ_HEADERS (--ext-authz-headers)";

/// The gRPC port's TLS certificate, as `VARIABLE (--flag)`.
pub const TLS_CERT_FILE_SETTING: &str = "USERMETA_TLS_CERT_FILE (--tls-cert-file)";
/// Its key.
pub const TLS_KEY_FILE_SETTING: &str = "USERMETA_TLS_KEY_FILE (--tls-key-file)";
/// Its client CA.
pub const TLS_CLIENT_CA_FILE_SETTING: &str = "USERMETA_TLS_CLIENT_CA_FILE (--tls-client-ca-file)";
/// The ext_authz listener's TLS certificate, as `VARIABLE (--flag)`.
pub const EXT_AUTHZ_TLS_CERT_FILE_SETTING: &str =
    "USERMETA_EXT_AUTHZ_TLS_CERT_FILE (--ext-authz-tls-cert-file)";
/// Its key.
pub const EXT_AUTHZ_TLS_KEY_FILE_SETTING: &str =
    "USERMETA_EXT_AUTHZ_TLS_KEY_FILE (--ext-authz-tls-key-file)";
/// Its client CA.
pub const EXT_AUTHZ_TLS_CLIENT_CA_FILE_SETTING: &str =
    "USERMETA_EXT_AUTHZ_TLS_CLIENT_CA_FILE (--ext-authz-tls-client-ca-file)";

#[cfg(test)]
mod tests {
    use super::super::Setting;

    #[test]
    fn names_with_their_flag_read_as_settings_prints_them() {
        for (name, id) in [
            (super::REDIS_URL_SETTING, "redis_url"),
            (super::EXT_AUTHZ_HEADERS_SETTING, "ext_authz_headers"),
            (super::TLS_CERT_FILE_SETTING, "tls_cert_file"),
            (super::TLS_KEY_FILE_SETTING, "tls_key_file"),
            (super::TLS_CLIENT_CA_FILE_SETTING, "tls_client_ca_file"),
            (
                super::EXT_AUTHZ_TLS_CERT_FILE_SETTING,
                "ext_authz_tls_cert_file",
            ),
            (
                super::EXT_AUTHZ_TLS_KEY_FILE_SETTING,
                "ext_authz_tls_key_file",
            ),
            (
                super::EXT_AUTHZ_TLS_CLIENT_CA_FILE_SETTING,
                "ext_authz_tls_client_ca_file",
            ),
        ] {
            assert_eq!(name, Setting::new(id).to_string());
        }
    }

    #[test]
    fn the_introspection_family_names_its_variables() {
        let prefix = super::INTROSPECTION_ALL.trim_end_matches('*');
        for id in [
            "introspection_client_id",
            "introspection_secret",
            "introspection_key_file",
        ] {
            assert!(Setting::new(id).to_string().starts_with(prefix), "{id}");
        }
    }
}
