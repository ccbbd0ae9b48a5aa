//! Every `google.rpc.ErrorInfo.reason` usermeta returns, named in one place. The statuses of [`super::ApiError`]
//! take a [`Reason`], never a string, and the book's troubleshooting chapter lists each (a test checks): a reason
//! added here without its entry there fails the build's tests.

/// Declares the reasons, their wire names and the list of all of them from one table.
macro_rules! reasons {
    ($($(#[$doc:meta])* $name:ident = $text:literal,)*) => {
        /// A stable `ErrorInfo.reason` (domain `usermeta`): what went wrong, for programs to branch on.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Reason {
            $($(#[$doc])* $name,)*
        }

        impl Reason {
            /// Every reason, in the order declared.
            pub const ALL: &'static [Reason] = &[$(Reason::$name,)*];

            /// The reason as it goes on the wire.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$name => $text,)*
                }
            }
        }
    };
}

reasons! {
    /// No `authorization` metadata.
    TokenMissing = "TOKEN_MISSING",
    /// The `authorization` metadata is not `Bearer <token>`.
    TokenMalformed = "TOKEN_MALFORMED",
    /// ZITADEL names no user for the token (it lacks `openid`).
    TokenWithoutSubject = "TOKEN_WITHOUT_SUBJECT",
    /// Introspection says the token is not active.
    TokenInactive = "TOKEN_INACTIVE",
    /// A JWT fails local validation.
    TokenInvalid = "TOKEN_INVALID",
    /// The token's `exp` passed.
    TokenExpired = "TOKEN_EXPIRED",
    /// The bearer is an ID token (or another JWT that is no access token).
    TokenNotAccessToken = "TOKEN_NOT_ACCESS_TOKEN",
    /// ZITADEL rejected the token.
    TokenRejected = "TOKEN_REJECTED",
    /// The auth API rejected the token.
    TokenRejectedByAuthApi = "TOKEN_REJECTED_BY_AUTH_API",
    /// The token lacks ZITADEL's API audience scope.
    TokenLacksZitadelAudience = "TOKEN_LACKS_ZITADEL_AUDIENCE",
    /// METADATA_SOURCE_TOKEN with an opaque token.
    TokenNotJwt = "TOKEN_NOT_JWT",
    /// METADATA_SOURCE_TOKEN while no JWT validation is configured.
    TokenSourceUnavailable = "TOKEN_SOURCE_UNAVAILABLE",
    /// No policy rule allows the action.
    PolicyDenied = "POLICY_DENIED",
    /// The key is hidden from this caller.
    KeyHidden = "KEY_HIDDEN",
    /// A sealed key's value in ZITADEL does not open (plaintext written around usermeta, altered, moved, or
    /// under an unknown sealing key).
    ValueNotSealed = "VALUE_NOT_SEALED",
    /// FindUsersByMetadata by a sealed key.
    KeySealed = "KEY_SEALED",
    /// `organization_id` names no organisation.
    OrganizationNotFound = "ORGANIZATION_NOT_FOUND",
    /// An organisation call left organization_id empty, and ZITADEL did not say which organisation the caller
    /// belongs to.
    CallerOrganizationUnknown = "CALLER_ORGANIZATION_UNKNOWN",
    /// ZITADEL denies usermeta's service user.
    ServiceUserLacksPermission = "SERVICE_USER_LACKS_PERMISSION",
    /// A key to delete does not exist.
    MetadataNotFound = "METADATA_NOT_FOUND",
    /// ZITADEL knows no such user.
    UserNotFound = "USER_NOT_FOUND",
    /// ZITADEL found no such user in the organisation it searched.
    UserNotFoundInOrganization = "USER_NOT_FOUND_IN_ORGANIZATION",
    /// A value would change on its way into a ZITADEL URL path.
    UnsafePathSegment = "UNSAFE_PATH_SEGMENT",
    /// The request's deadline passed.
    DeadlineExceeded = "DEADLINE_EXCEEDED",
    /// The caller is over its per-caller rate limit.
    CallerRateLimited = "CALLER_RATE_LIMITED",
    /// The replica is at its in-flight limit.
    Overloaded = "OVERLOADED",
    /// The caller is at its share of the in-flight limit.
    CallerOverloaded = "CALLER_OVERLOADED",
    /// The request budget toward ZITADEL is spent.
    UpstreamBudgetExhausted = "UPSTREAM_BUDGET_EXHAUSTED",
    /// The caller spent its share of the request budget toward ZITADEL.
    CallerUpstreamShareExhausted = "CALLER_UPSTREAM_SHARE_EXHAUSTED",
    /// A WatchMetadata reader fell behind its buffer.
    WatchLagged = "WATCH_LAGGED",
    /// The caller or the replica holds as many streams as it may.
    WatchStreamsExhausted = "WATCH_STREAMS_EXHAUSTED",
    /// A WatchMetadata stream reached its longest life.
    WatchMaxDuration = "WATCH_MAX_DURATION",
    /// The replica is shutting down.
    ShuttingDown = "SHUTTING_DOWN",
    /// The ZITADEL API in use cannot do this (FindUsersByMetadata on v1).
    ZitadelApiUnsupported = "ZITADEL_API_UNSUPPORTED",
    /// ZITADEL answered 429.
    ZitadelRateLimited = "ZITADEL_RATE_LIMITED",
    /// ZITADEL failed repeatedly; the breaker is open.
    ZitadelCircuitOpen = "ZITADEL_CIRCUIT_OPEN",
    /// ZITADEL could not be reached.
    ZitadelUnreachable = "ZITADEL_UNREACHABLE",
    /// ZITADEL answered 5xx.
    ZitadelUnavailable = "ZITADEL_UNAVAILABLE",
    /// ZITADEL answered something unreadable.
    ZitadelBadResponse = "ZITADEL_BAD_RESPONSE",
    /// Any other ZITADEL error, mapped to its gRPC twin.
    ZitadelRejected = "ZITADEL_REJECTED",
    /// ZITADEL rejected usermeta's service credential.
    ServiceCredentialRejected = "SERVICE_CREDENTIAL_REJECTED",
    /// usermeta could not get a management API token with its credential.
    ServiceCredentialRefreshFailed = "SERVICE_CREDENTIAL_REFRESH_FAILED",
    /// ZITADEL refused usermeta's introspection client.
    IntrospectionClientRejected = "INTROSPECTION_CLIENT_REJECTED",
    /// A write's condition (`if_match`, `if_absent`) does not hold.
    EtagMismatch = "ETAG_MISMATCH",
    /// The per-user write lock of a conditional write or merge patch could not be taken (Redis unreachable).
    WriteLockUnavailable = "WRITE_LOCK_UNAVAILABLE",
    /// The per-user write lock expired before the write.
    WriteLockLost = "WRITE_LOCK_LOST",
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The troubleshooting chapter names every reason, so a user who meets one finds what to do.
    #[test]
    fn the_troubleshooting_chapter_lists_every_reason() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/src/troubleshooting.md");
        let chapter = std::fs::read_to_string(path).expect("docs/src/troubleshooting.md");
        let missing: Vec<&str> = Reason::ALL
            .iter()
            .map(|reason| reason.as_str())
            .filter(|reason| !chapter.contains(&format!("`{reason}`")))
            .collect();
        assert!(
            missing.is_empty(),
            "{path} does not list these reasons (add a row each: code, meaning, what to do): {missing:?}"
        );
    }

    #[test]
    fn wire_names_are_distinct_and_upper_snake_case() {
        let mut seen = std::collections::HashSet::new();
        for reason in Reason::ALL {
            let text = reason.as_str();
            assert!(seen.insert(text), "{text} twice");
            assert!(
                text.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'),
                "{text}"
            );
        }
    }
}
