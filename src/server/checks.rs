//! What start-up says about the configuration, and what it refuses, beyond what settings validate: facts
//! that need the built ZITADEL client or two configurations together.

use std::sync::Arc;

use super::StartError;
use crate::{
    authz::AuthzConfig,
    fleet::{WriteLockConfig, WriteLocks},
    policy::Policy,
    settings::names,
};
use usermeta_zitadel::{
    Zitadel,
    management::{ApiChoice, ManagementApi},
};

/// Says at start-up which ZITADEL API manages metadata; for `auto`, asks ZITADEL in the background (a ZITADEL
/// that is not up yet is asked again on the first call).
pub(super) fn announce_management_api(zitadel: &Arc<Zitadel>) {
    let fixed = match zitadel.management_api_choice() {
        ApiChoice::V1 => ManagementApi::V1,
        ApiChoice::V2 => ManagementApi::V2,
        ApiChoice::Auto => {
            let zitadel = Arc::clone(zitadel);
            tokio::spawn(async move {
                if let Err(error) = zitadel.management_api().await {
                    tracing::warn!(%error, "could not yet learn which management API ZITADEL serves ({}=auto); asking again on the first call", names::ZITADEL_API);
                }
            });
            return;
        }
    };
    tracing::info!(
        api = fixed.name(),
        "managing metadata through ZITADEL's {} API ({}={})",
        fixed.name(),
        names::ZITADEL_API,
        fixed.name()
    );
    crate::metrics::management_api(fixed.name());
}

/// A policy that seals keys needs the keys that seal them: without them no sealed value could be written or
/// read, so start-up stops naming both settings.
pub(super) fn check_sealing(policy: &Policy) -> Result<(), StartError> {
    let sealed = policy.sealed_keys();
    if sealed.is_empty() || policy.sealer().is_some() {
        return Ok(());
    }
    Err(StartError::Sealing(format!(
        "{} declares sealed keys ({}), but {} is not set: set it to a file of sealing keys (see the book's chapter on sealed keys), or drop `sealed = true`",
        names::POLICY_FILE,
        sealed.join(", "),
        names::SEALING_KEYS_FILE
    )))
}

/// Warns that `hidden = true` without `sealed = true` filters usermeta's answers only: the user reads the same
/// keys from ZITADEL with the token they call usermeta with. Said once at start-up, naming the patterns (never
/// values), so nobody takes hidden keys for a place to keep secrets; sealed keys are not named.
pub(super) fn warn_hidden_keys_are_not_sealed(policy: &Policy) {
    let hidden = policy.hidden_keys();
    if hidden.is_empty() {
        return;
    }
    tracing::warn!(
        keys = %hidden.join(", "),
        "the policy hides these keys from their users in usermeta's answers only; they are not sealed: ZITADEL still gives each user their own values (userinfo and tokens with the scope urn:zitadel:iam:user:metadata, the auth API), so keep nothing secret in them, or declare them `sealed = true` too"
    );
}

/// A header mapping of a key the policy hides from its user would never be sent (Check passes on only what
/// the caller may read of themself): refused at start-up rather than silently never sent.
pub(super) fn check_ext_authz_headers(
    config: &AuthzConfig,
    policy: &Policy,
) -> Result<(), StartError> {
    match config.headers.iter().find(|m| policy.is_hidden(&m.key)) {
        Some(mapping) => Err(StartError::ExtAuthz(format!(
            "{}: `{}` is declared hidden in the policy, and Check passes on only what the caller may read of themself; remove it, or route on it with a rule (metadata.{}=VALUE) instead",
            names::EXT_AUTHZ_HEADERS_SETTING,
            mapping.key,
            mapping.key
        ))),
        None => Ok(()),
    }
}

/// Says at start-up how far conditional writes and merge patches are atomic: across the fleet with Redis;
/// otherwise within this replica, which a deployment of several replicas sharing one ZITADEL must know.
pub(super) fn announce_write_locks(locks: &WriteLocks, config: WriteLockConfig) {
    if locks.across_fleet() {
        tracing::info!(
            lock_ttl = %humantime::format_duration(config.ttl),
            "conditional writes and merge patches are serialised per user across the fleet through Redis"
        );
    } else if !config.single_replica {
        tracing::warn!(
            "conditional writes and merge patches are atomic within this replica only: with several replicas sharing one ZITADEL, set {} so they serialise across the fleet, or {}=true if this is the only replica",
            names::REDIS_URL,
            names::SINGLE_REPLICA
        );
    }
}
