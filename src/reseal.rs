//! `usermeta reseal`: moves every value of a sealed key under the newest sealing key, run by an operator with
//! `serve`'s settings (the service credential, the policy, the key file) after adding a key to
//! [`SEALING_KEYS_FILE`](crate::settings::names::SEALING_KEYS_FILE).
//!
//! It walks the users holding a sealed key (ZITADEL's v2 `ListUsers` with a metadata key filter, one pattern
//! after another), reads each one's metadata, opens each sealed value and writes back, in one call per user,
//! those sealed under an older key, sealed under the newest. A user with something to write is read again and
//! written under the user's write lock, the one the replicas' writes take (across the fleet through Redis when
//! `serve`'s settings name it), so a write through usermeta never lands between that read and the write.
//! Values already under the newest key are left alone: a run cut short is resumed by running it again, which
//! writes nothing for the users already done.
//! Every call goes through the request budget toward ZITADEL ([`UPSTREAM_RATE_LIMIT`](crate::settings::names::UPSTREAM_RATE_LIMIT));
//! a call the budget has no room for waits until it has.

use std::{collections::HashSet, sync::Arc, time::Duration};

use crate::{
    RunError,
    fleet::{LockError, Need, WriteLocks, shows_recorded},
    policy::{KeyPattern, Policy},
    sealing::{Malformed, Owner, Sealer, Unopenable},
    settings::{ResealArgs, SettingsError, names},
};
use usermeta_zitadel::{
    UpstreamError, Zitadel,
    etag::etag,
    management::Target,
    metadata::{KeyFilter, KeyMatch, MetadataItem, PageRequest},
};

/// Users asked of ZITADEL per page.
const USER_PAGE: u32 = 100;
/// Metadata entries asked per page of one user's listing.
const METADATA_PAGE: u32 = 1000;
/// Longest wait for room in the budget before asking again.
const MAX_BUDGET_WAIT: Duration = Duration::from_secs(30);

/// What a run may do.
#[derive(Debug, Clone, Copy, Default)]
pub struct ResealOptions {
    /// Count what would change; write nothing.
    pub dry_run: bool,
    /// Also seal plaintext values found under sealed keys (written around usermeta, or before the key was
    /// sealed); without it they are counted and left.
    pub seal_plaintext: bool,
    /// Stop after writing this many users (spreads a large rotation over several runs).
    pub max_users: Option<u64>,
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResealReport {
    /// Users whose metadata was read.
    pub users: u64,
    /// Users written (or, in a dry run, that would be).
    pub users_written: u64,
    /// Values moved to the newest key (or that would be).
    pub resealed: u64,
    /// Values already under the newest key.
    pub current: u64,
    /// Plaintext values under sealed keys that were sealed (`seal_plaintext`).
    pub plaintext_sealed: u64,
    /// Plaintext values under sealed keys left as they are.
    pub plaintext_left: u64,
    /// Values that do not open (altered, moved, unknown key): left, and logged with their user and key.
    pub unopenable: u64,
    /// Users whose read or write failed (logged); a later run retries them.
    pub failed_users: u64,
    /// Whether the run stopped at `max_users` before reaching every user.
    pub stopped_early: bool,
}

impl std::fmt::Display for ResealReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "users={} users_written={} resealed={} current={} plaintext_sealed={} plaintext_left={} unopenable={} failed_users={} stopped_early={}",
            self.users,
            self.users_written,
            self.resealed,
            self.current,
            self.plaintext_sealed,
            self.plaintext_left,
            self.unopenable,
            self.failed_users,
            self.stopped_early
        )
    }
}

/// `usermeta reseal`: the run with `serve`'s settings; the report goes to stdout. Fails (exit 1) when a user
/// failed, so a job runner retries; a re-run finishes the rest.
pub async fn run(args: ResealArgs) -> Result<(), RunError> {
    let options = ResealOptions {
        dry_run: args.dry_run,
        seal_plaintext: args.seal_plaintext,
        max_users: args.max_users,
    };
    let mut config = crate::serve_config(*args.serve)?;
    if config.policy.sealed_keys().is_empty() {
        return Err(SettingsError::Invalid {
            setting: names::POLICY_FILE.to_owned(),
            problem: "declares no sealed keys: there is nothing to re-seal".to_owned(),
        }
        .into());
    }
    let write_locks = crate::server::write_locks(&mut config)?;
    let zitadel = Zitadel::build(
        config.zitadel,
        config.options.zitadel_roots,
        crate::instrumentation::upstream(),
    )
    .map_err(crate::server::StartError::from)?;
    let report = reseal(&zitadel, &config.policy, &write_locks, options)
        .await
        .map_err(|error| RunError::Reseal(error.to_string()))?;
    println!("{report}");
    if report.failed_users > 0 {
        return Err(RunError::Reseal(format!(
            "{} users could not be re-sealed (see the log); run `usermeta reseal` again to retry them",
            report.failed_users
        )));
    }
    Ok(())
}

/// Re-seals every sealed key's values under the newest key. An error means ZITADEL could not list the users
/// (nothing more was done after it; a re-run resumes).
pub async fn reseal(
    zitadel: &Zitadel,
    policy: &Policy,
    write_locks: &Arc<WriteLocks>,
    options: ResealOptions,
) -> Result<ResealReport, UpstreamError> {
    let mut report = ResealReport::default();
    let Some(sealer) = policy.sealer() else {
        return Ok(report);
    };
    let mut seen = HashSet::new();
    for pattern in policy.sealed_patterns() {
        let filter = key_filter(pattern);
        let mut offset = 0;
        loop {
            let page = PageRequest {
                offset,
                limit: USER_PAGE,
            };
            let found = within_budget(|| zitadel.users_with_key(filter.as_ref(), page)).await?;
            for user in found.users {
                if !seen.insert(user.user_id.clone()) {
                    continue;
                }
                if options
                    .max_users
                    .is_some_and(|max| report.users_written >= max)
                {
                    report.stopped_early = true;
                    return Ok(report);
                }
                let target = Target {
                    user_id: &user.user_id,
                    org_id: Some(&user.org_id),
                };
                if let Err(error) = reseal_user(
                    zitadel,
                    policy,
                    sealer,
                    write_locks,
                    target,
                    options,
                    &mut report,
                )
                .await
                {
                    report.failed_users += 1;
                    tracing::warn!(user_id = %user.user_id, %error, "could not re-seal this user's values; a later run retries");
                }
            }
            offset += found.fetched;
            if found.fetched == 0 || offset >= found.total {
                break;
            }
        }
    }
    tracing::info!(%report, "re-sealing done");
    Ok(report)
}

/// The key filter that finds the users holding keys of `pattern`.
fn key_filter(pattern: &KeyPattern) -> Option<KeyFilter> {
    match pattern {
        KeyPattern::Any => None,
        KeyPattern::Prefix(prefix) => Some(KeyFilter {
            key: prefix.clone(),
            matching: KeyMatch::StartsWith,
        }),
        KeyPattern::Exact(key) => Some(KeyFilter {
            key: key.clone(),
            matching: KeyMatch::Equals,
        }),
    }
}

/// Why one user could not be re-sealed.
#[derive(Debug, thiserror::Error)]
enum UserFailed {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("the user's write lock: {0}")]
    Lock(#[from] LockError),
    #[error(
        "ZITADEL's listing did not show the fleet's last write of this user in time; a later run retries"
    )]
    Lagging,
}

/// What one user's values need.
#[derive(Default)]
struct Plan {
    writes: Vec<(String, Vec<u8>)>,
    resealed: u64,
    current: u64,
    plaintext_sealed: u64,
    plaintext_left: u64,
    unopenable: u64,
}

/// Sorts one user's sealed values: those to write (re-sealed under the newest key, or plaintext sealed with
/// `seal_plaintext`), and those left.
fn plan(
    policy: &Policy,
    sealer: &Sealer,
    target: Target<'_>,
    items: Vec<MetadataItem>,
    options: ResealOptions,
) -> Plan {
    let owner = Owner::User(target.user_id);
    let mut plan = Plan::default();
    for MetadataItem { key, value, .. } in items {
        let Some(stored) = value.filter(|_| policy.is_sealed(&key)) else {
            continue;
        };
        match sealer.open(owner, &key, &stored) {
            Ok(opened) if opened.under_newest_key => plan.current += 1,
            Ok(opened) => {
                plan.resealed += 1;
                let sealed = sealer.seal(owner, &key, &opened.plaintext);
                plan.writes.push((key, sealed));
            }
            Err(Unopenable::Malformed(Malformed::NotSealed)) if options.seal_plaintext => {
                plan.plaintext_sealed += 1;
                let sealed = sealer.seal(owner, &key, &stored);
                plan.writes.push((key, sealed));
            }
            Err(Unopenable::Malformed(Malformed::NotSealed)) => {
                plan.plaintext_left += 1;
                tracing::warn!(
                    user_id = target.user_id,
                    key,
                    "plaintext under a sealed key, left as it is (--seal-plaintext seals it)"
                );
            }
            Err(problem) => {
                plan.unopenable += 1;
                tracing::warn!(
                    user_id = target.user_id,
                    key,
                    problem = problem.label(),
                    "a sealed value does not open, left as it is: {problem}"
                );
            }
        }
    }
    plan
}

/// How long a holder waits, in all, for a lagging listing to show the fleet's last write of the user.
const LAG_WAIT: Duration = Duration::from_secs(10);

/// One user: every sealed value not under the newest key, re-sealed and written back in one call. A user with
/// nothing to write costs one read; one with something is read again and written under its write lock.
async fn reseal_user(
    zitadel: &Zitadel,
    policy: &Policy,
    sealer: &Sealer,
    write_locks: &Arc<WriteLocks>,
    target: Target<'_>,
    options: ResealOptions,
    report: &mut ResealReport,
) -> Result<(), UserFailed> {
    report.users += 1;
    let first = plan(
        policy,
        sealer,
        target,
        read_user(zitadel, target).await?,
        options,
    );
    if first.writes.is_empty() || options.dry_run {
        tally(report, &first);
        return Ok(());
    }
    // Under the lock, from a listing that shows the fleet's last locked write of the user: what is written
    // is what the user holds now, and no write through usermeta comes between.
    let keys: Vec<&str> = first.writes.iter().map(|(key, _)| key.as_str()).collect();
    let mut lock = write_locks
        .lock(target.user_id, &keys, Need::Guarantee)
        .await?;
    let waited = tokio::time::Instant::now();
    let mut pause = Duration::from_millis(10);
    let items = loop {
        let items = read_user(zitadel, target).await?;
        if shows_recorded(&items, &lock.recorded) {
            break items;
        }
        if waited.elapsed() > LAG_WAIT {
            return Err(UserFailed::Lagging);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    };
    let planned = plan(policy, sealer, target, items, options);
    tally(report, &planned);
    if planned.writes.is_empty() {
        return Ok(());
    }
    lock.fence().await?;
    let update_time = within_budget(|| zitadel.set_user_metadata(target, &planned.writes)).await?;
    let at_ms = update_time.map_or_else(now_ms, |time| {
        time.seconds
            .saturating_mul(1000)
            .saturating_add(i64::from(time.nanos / 1_000_000))
    });
    lock.landed(
        planned
            .writes
            .iter()
            .map(|(key, value)| (key.as_str(), Some(etag(key, value)))),
        at_ms,
    );
    crate::metrics::sealed_values_written(planned.writes.len() as u64);
    Ok(())
}

/// Adds one user's plan to the report.
fn tally(report: &mut ResealReport, plan: &Plan) {
    report.users_written += u64::from(!plan.writes.is_empty());
    report.resealed += plan.resealed;
    report.current += plan.current;
    report.plaintext_sealed += plan.plaintext_sealed;
    report.plaintext_left += plan.plaintext_left;
    report.unopenable += plan.unopenable;
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
        })
}

/// Every page of one user's metadata.
async fn read_user(
    zitadel: &Zitadel,
    target: Target<'_>,
) -> Result<Vec<MetadataItem>, UpstreamError> {
    let mut items = Vec::new();
    loop {
        let page = PageRequest {
            offset: items.len() as u64,
            limit: METADATA_PAGE,
        };
        let page = within_budget(|| zitadel.list_user_metadata(target, None, page)).await?;
        let done =
            page.items.is_empty() || items.len() as u64 + page.items.len() as u64 >= page.total;
        items.extend(page.items);
        if done {
            return Ok(items);
        }
    }
}

/// A call made when the request budget toward ZITADEL has room: one it refuses waits as long as it says
/// (at most [`MAX_BUDGET_WAIT`] at a time) and is asked again.
async fn within_budget<T, F, Fut>(mut call: F) -> Result<T, UpstreamError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, UpstreamError>>,
{
    loop {
        match call().await {
            Err(UpstreamError::BudgetExhausted { retry_after, .. }) => {
                tokio::time::sleep(retry_after.clamp(Duration::from_millis(10), MAX_BUDGET_WAIT))
                    .await;
            }
            other => return other,
        }
    }
}
