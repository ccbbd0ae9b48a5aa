//! The soak (run by `scripts/soak.sh`; a benchmark-style run, not a test): usermeta (the release binary, as a
//! process of its own) under mixed load from many users and tokens against an in-process stand-in ZITADEL,
//! while a schedule injects latency, 5xx, 429, dropped connections and a ZITADEL restart (same address, same
//! state), each followed by a calm stretch.
//!
//! Every worker is one user with tokens of its own; it writes increasing values of its key and remembers
//! which writes were acknowledged, reads its own metadata (userinfo, the auth API, fresh tokens) and, as an
//! admin, batches of other users'. At the end it reports: acknowledged writes lost (ZITADEL holds an older
//! value than the last acknowledged one), answers naming the wrong user or a value the user never had, reads
//! older than an acknowledged write (one replica invalidates synchronously), the status codes per phase,
//! how long errors went on after each fault ended, and usermeta's RSS at the start and the end. Exits 1 when
//! anything was lost or wrong.
//!
//! Usage: `bench_soak <usermeta-binary> <duration-secs> <workers> <usermeta-log>`.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::Mutex;
use tonic::{Code, Request, transport::Channel};
use usermeta::api::pb::{
    self, metadata_value::Kind, user_metadata_service_client::UserMetadataServiceClient,
};
use usermeta::settings::names;
use zitadel_standin::{Fault, FaultKind, ManagerRole, StandIn};

const KEY: &str = "soak.value";
const SCOPES: &[&str] = &[
    "openid",
    "profile",
    "urn:zitadel:iam:user:metadata",
    "urn:zitadel:iam:user:resourceowner",
    "urn:zitadel:iam:org:project:id:zitadel:aud",
];
const CALL_DEADLINE: Duration = Duration::from_secs(3);

type Client = UserMetadataServiceClient<Channel>;
type Error = Box<dyn std::error::Error + Send + Sync>;

/// One stretch of the schedule: a fault (or none) for `fault`, then calm until `end`.
#[derive(Debug, Clone)]
struct Phase {
    name: &'static str,
    start: Duration,
    fault_end: Duration,
    end: Duration,
}

/// What one worker saw.
#[derive(Default)]
struct Seen {
    /// (time since start, status code) of every call.
    calls: Vec<(Duration, Code)>,
    wrong: Vec<String>,
    stale: u64,
    acknowledged: Option<u64>,
}

struct Worker {
    index: usize,
    user_id: String,
    tokens: Vec<String>,
    /// The next worker's user and index, which this worker reads as an admin.
    neighbour: String,
    neighbour_index: usize,
    admin_token: String,
    standin: StandIn,
    client: Client,
}

fn authed<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(CALL_DEADLINE);
    if let Ok(value) = format!("Bearer {token}").parse() {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

fn text_of(value: Option<&pb::MetadataValue>) -> Option<&str> {
    match value?.kind.as_ref()? {
        Kind::Text(text) => Some(text),
        Kind::Binary(_) => None,
    }
}

/// The worker and counter a stored value names: `<worker>-<n>`.
fn parse_value(text: &str) -> Option<(usize, u64)> {
    let (worker, n) = text.split_once('-')?;
    Some((worker.parse().ok()?, n.parse().ok()?))
}

impl Worker {
    /// Checks a value read for `user_index`'s user: it must be one that user wrote, and (for the worker itself)
    /// not older than what was acknowledged before the read began.
    fn check_value(
        &self,
        seen: &mut Seen,
        user_index: usize,
        text: Option<&str>,
        attempted: u64,
        acked: Option<u64>,
    ) {
        let Some(text) = text else { return };
        match parse_value(text) {
            Some((worker, n)) if worker == user_index => {
                if user_index == self.index {
                    if n > attempted {
                        seen.wrong.push(format!(
                            "worker {}: read {text}, never written (last attempt {attempted})",
                            self.index
                        ));
                    } else if acked.is_some_and(|acked| n < acked) {
                        seen.stale += 1;
                    }
                }
            }
            _ => seen.wrong.push(format!(
                "worker {}: read {text:?} for the user of worker {user_index}",
                self.index
            )),
        }
    }

    async fn run(mut self, started: Instant, until: Instant) -> Seen {
        let mut seen = Seen::default();
        let mut attempted = 0u64;
        let mut i = 0usize;
        while Instant::now() < until {
            i += 1;
            let acked = seen.acknowledged;
            let token = self.tokens[i % self.tokens.len()].clone();
            let code = match i % 10 {
                0..=2 => {
                    attempted += 1;
                    let entry = pb::MetadataEntry {
                        key: KEY.to_owned(),
                        value: Some(pb::MetadataValue {
                            kind: Some(Kind::Text(format!("{}-{attempted}", self.index))),
                        }),
                        ..Default::default()
                    };
                    let answer = self
                        .client
                        .set_metadata(authed(
                            pb::SetMetadataRequest {
                                entries: vec![entry],
                                ..Default::default()
                            },
                            &token,
                        ))
                        .await;
                    if answer.is_ok() {
                        seen.acknowledged = Some(attempted);
                    }
                    answer.err().map_or(Code::Ok, |status| status.code())
                }
                3..=6 => {
                    // Mostly cached tokens; every fourth read a token usermeta has never seen (the cold path).
                    let token = if i.is_multiple_of(4) {
                        self.standin.issue_token(&self.user_id, SCOPES)
                    } else {
                        token
                    };
                    let source = if i.is_multiple_of(3) {
                        pb::MetadataSource::AuthApi
                    } else {
                        pb::MetadataSource::Userinfo
                    };
                    let request = pb::GetMyMetadataRequest {
                        keys: vec![KEY.to_owned()],
                        source: source.into(),
                    };
                    match self.client.get_my_metadata(authed(request, &token)).await {
                        Ok(answer) => {
                            let answer = answer.into_inner();
                            if answer.user_id != self.user_id {
                                seen.wrong.push(format!(
                                    "worker {}: GetMyMetadata named user {}",
                                    self.index, answer.user_id
                                ));
                            }
                            let value = answer
                                .metadata
                                .first()
                                .and_then(|m| text_of(m.value.as_ref()));
                            self.check_value(&mut seen, self.index, value, attempted, acked);
                            Code::Ok
                        }
                        Err(status) => status.code(),
                    }
                }
                7 => {
                    let request = pb::ListMetadataRequest::default();
                    match self.client.list_metadata(authed(request, &token)).await {
                        Ok(answer) => {
                            let answer = answer.into_inner();
                            let value = answer
                                .metadata
                                .iter()
                                .find(|m| m.key == KEY)
                                .and_then(|m| text_of(m.value.as_ref()));
                            self.check_value(&mut seen, self.index, value, attempted, acked);
                            Code::Ok
                        }
                        Err(status) => status.code(),
                    }
                }
                _ => {
                    let request = pb::BatchGetMetadataRequest {
                        user_ids: vec![self.user_id.clone(), self.neighbour.clone()],
                        keys: vec![KEY.to_owned()],
                        ..Default::default()
                    };
                    match self
                        .client
                        .batch_get_metadata(authed(request, &self.admin_token))
                        .await
                    {
                        Ok(answer) => {
                            let results = answer.into_inner().results;
                            let users: Vec<&str> =
                                results.iter().map(|r| r.user_id.as_str()).collect();
                            if users != [self.user_id.as_str(), self.neighbour.as_str()] {
                                seen.wrong.push(format!(
                                    "worker {}: BatchGetMetadata answered for {users:?}",
                                    self.index
                                ));
                            }
                            for (position, result) in results.iter().enumerate() {
                                let value = result
                                    .metadata
                                    .first()
                                    .and_then(|m| text_of(m.value.as_ref()));
                                if position == 0 {
                                    self.check_value(
                                        &mut seen, self.index, value, attempted, acked,
                                    );
                                } else if let Some(text) = value
                                    && parse_value(text)
                                        .is_none_or(|(worker, _)| worker != self.neighbour_index)
                                {
                                    seen.wrong.push(format!(
                                        "worker {}: the neighbour's value is {text:?}",
                                        self.index
                                    ));
                                }
                            }
                            Code::Ok
                        }
                        Err(status) => status.code(),
                    }
                }
            };
            seen.calls.push((started.elapsed(), code));
            if code != Code::Ok {
                // A failing call is retried by a real client with backoff, not in a tight loop.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        seen
    }
}

/// Runs the schedule: each fault for its stretch, then calm.
async fn inject(standin: StandIn, phases: Vec<Phase>, started: Instant) -> Result<(), Error> {
    let at = |offset: Duration| tokio::time::sleep_until((started + offset).into());
    for phase in phases {
        at(phase.start).await;
        let fault_for = phase.fault_end - phase.start;
        let fault = |kind: FaultKind, times: Option<u32>| Fault {
            path_prefix: String::new(),
            times,
            kind,
        };
        match phase.name {
            "latency 300 ms" => {
                standin.push_fault(fault(FaultKind::Latency(Duration::from_millis(300)), None));
                at(phase.fault_end).await;
            }
            "429 with Retry-After" => {
                standin.push_fault(fault(
                    FaultKind::TooManyRequests {
                        retry_after_secs: Some(1),
                    },
                    None,
                ));
                at(phase.fault_end).await;
            }
            "5xx blips" | "dropped connections" => {
                let kind = if phase.name == "5xx blips" {
                    FaultKind::Status(503)
                } else {
                    FaultKind::DropConnection
                };
                while started.elapsed() < phase.fault_end {
                    standin.push_fault(fault(kind.clone(), Some(4)));
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
            "ZITADEL restart" => standin.restart(fault_for).await?,
            _ => {}
        }
        standin.clear_faults();
    }
    Ok(())
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or_default()
}

fn start_usermeta(
    binary: &str,
    standin: &StandIn,
    pat_file: &std::path::Path,
    admin: &str,
    log: &str,
) -> Result<(Child, SocketAddr), Error> {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let child = Command::new(binary)
        .arg("serve")
        .env_remove("RUST_LOG")
        .env(names::LISTEN, addr.to_string())
        .env(names::ZITADEL_URL, standin.url())
        .env(names::SERVICE_PAT_FILE, pat_file)
        .env(names::ADMINS, admin)
        .env(names::SELF_WRITABLE_KEYS, "soak.")
        .env(names::ZITADEL_API, "v1")
        // No request budget toward ZITADEL (the stand-in has no rate limit): its refusals would read as errors
        // that outlast the injected faults.
        .env(names::UPSTREAM_RATE_LIMIT, "0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()?;
    let started = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        if started.elapsed() > Duration::from_secs(10) {
            return Err(format!("usermeta did not listen on {addr}; see {log}").into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((child, addr))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    const USAGE: &str =
        "usage: bench_soak <usermeta-binary> <duration-secs> <workers> <usermeta-log>";
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [binary, duration, workers, log] = args.as_slice() else {
        return Err(USAGE.into());
    };
    let duration = Duration::from_secs(duration.parse()?);
    let workers: usize = workers.parse()?;

    let standin = StandIn::start().await?;
    standin.set_recording(false);
    let org = standin.create_org("Soak");
    let admin = standin.create_user(&org, "soak.admin");
    let admin_token = standin.issue_token(&admin, SCOPES);
    let service_user = standin.create_service_user(&org, "usermeta", ManagerRole::IamOwner);
    let pat_file = std::env::temp_dir().join(format!("usermeta-soak-{}.pat", std::process::id()));
    std::fs::write(&pat_file, standin.issue_pat(&service_user))?;
    let users: Vec<String> = (0..workers)
        .map(|i| standin.create_user(&org, &format!("soak.user{i}")))
        .collect();
    let (mut child, addr) = start_usermeta(binary, &standin, &pat_file, &admin, log)?;
    let channel = Channel::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;
    let client = UserMetadataServiceClient::new(channel);

    // The schedule: 10 % calm, then each fault for 8 % of the run followed by 6 % of calm, then calm.
    let share = move |percent: u32| duration * percent / 100;
    let mut phases = vec![Phase {
        name: "calm",
        start: Duration::ZERO,
        fault_end: Duration::ZERO,
        end: share(10),
    }];
    for name in [
        "latency 300 ms",
        "5xx blips",
        "429 with Retry-After",
        "dropped connections",
        "ZITADEL restart",
    ] {
        let start = phases.last().map_or(Duration::ZERO, |p| p.end);
        phases.push(Phase {
            name,
            start,
            fault_end: start + share(8),
            end: start + share(14),
        });
    }
    let last = phases.last().map_or(Duration::ZERO, |p| p.end);
    phases.push(Phase {
        name: "calm (end)",
        start: last,
        fault_end: last,
        end: duration,
    });

    let started = Instant::now();
    let until = started + duration;
    let injector = tokio::spawn(inject(standin.clone(), phases.clone(), started));
    // usermeta's RSS once a second, to see whether it levels off once its cache is full.
    let rss_samples = Arc::new(Mutex::new(Vec::new()));
    let rss_probe = {
        let rss_samples = Arc::clone(&rss_samples);
        let pid = child.id();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            while Instant::now() < until {
                tick.tick().await;
                rss_samples
                    .lock()
                    .await
                    .push((started.elapsed(), rss_kib(pid)));
            }
        })
    };
    let tasks: Vec<_> = (0..workers)
        .map(|index| {
            let tokens = (0..3)
                .map(|_| standin.issue_token(&users[index], SCOPES))
                .collect();
            let worker = Worker {
                index,
                user_id: users[index].clone(),
                tokens,
                neighbour: users[(index + 1) % workers].clone(),
                neighbour_index: (index + 1) % workers,
                admin_token: admin_token.clone(),
                standin: standin.clone(),
                client: client.clone(),
            };
            tokio::spawn(worker.run(started, until))
        })
        .collect();
    let mut seen = Vec::new();
    for task in tasks {
        seen.push(task.await?);
    }
    injector.await??;
    rss_probe.await?;
    let rss_end = rss_kib(child.id());
    let rss_samples = rss_samples.lock().await.clone();
    let rss_at = |until: Duration| {
        rss_samples
            .iter()
            .take_while(|(t, _)| *t <= until)
            .last()
            .map_or(0, |(_, kib)| *kib)
    };

    let mut lost = Vec::new();
    for (index, worker) in seen.iter().enumerate() {
        let stored = standin
            .metadata_of(&users[index])
            .get(KEY)
            .map(|v| String::from_utf8_lossy(v).into_owned());
        let stored_n = stored.as_deref().and_then(parse_value).map(|(_, n)| n);
        if let Some(acked) = worker.acknowledged
            && stored_n.is_none_or(|n| n < acked)
        {
            lost.push(format!(
                "worker {index}: acknowledged {acked}, ZITADEL holds {stored:?}"
            ));
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&pat_file);

    let calls: Vec<(Duration, Code)> = seen.iter().flat_map(|s| s.calls.iter().copied()).collect();
    let wrong: Vec<&String> = seen.iter().flat_map(|s| &s.wrong).collect();
    let stale: u64 = seen.iter().map(|s| s.stale).sum();
    println!(
        "Soak: {} s, {workers} workers (one user and 3 tokens each, a fresh token every 4th read), {} calls; usermeta in its default configuration (no request budget toward ZITADEL) against the stand-in (v1).",
        duration.as_secs(),
        calls.len()
    );
    println!();
    println!(
        "| phase | window s | calls | status codes | errors went on after the fault ended | usermeta RSS at its end |"
    );
    println!("|---|---|---:|---|---:|---:|");
    for phase in &phases {
        let within: Vec<&(Duration, Code)> = calls
            .iter()
            .filter(|(t, _)| *t >= phase.start && *t < phase.end)
            .collect();
        let mut mix: BTreeMap<&str, usize> = BTreeMap::new();
        for (_, code) in &within {
            *mix.entry(usermeta::metrics::code_name(*code)).or_default() += 1;
        }
        let mix: Vec<String> = mix.iter().map(|(code, n)| format!("{code} {n}")).collect();
        let recovery = if phase.fault_end > phase.start {
            let last_error = within
                .iter()
                .filter(|(t, code)| *t >= phase.fault_end && *code != Code::Ok)
                .map(|(t, _)| *t)
                .max();
            format!(
                "{:.2} s",
                last_error.map_or(0.0, |t| (t - phase.fault_end).as_secs_f64())
            )
        } else {
            String::new()
        };
        println!(
            "| {} | {:.0}–{:.0} | {} | {} | {recovery} | {:.1} MiB |",
            phase.name,
            phase.start.as_secs_f64(),
            phase.end.as_secs_f64(),
            within.len(),
            mix.join(", "),
            rss_at(phase.end) as f64 / 1024.0
        );
    }
    println!();
    println!("| measure | value | must be |");
    println!("|---|---:|---|");
    println!("| acknowledged writes lost | {} | 0 |", lost.len());
    println!(
        "| answers naming the wrong user or a value the user never had | {} | 0 |",
        wrong.len()
    );
    println!("| reads older than an acknowledged write of the same user | {stale} | 0 |");
    println!(
        "| usermeta RSS at 5 % of the run / at the end | {:.1} / {:.1} MiB | |",
        rss_at(duration / 20) as f64 / 1024.0,
        rss_end as f64 / 1024.0
    );
    for problem in lost.iter().chain(wrong.iter().copied()).take(20) {
        eprintln!("{problem}");
    }
    if !lost.is_empty() || !wrong.is_empty() || stale > 0 {
        std::process::exit(1);
    }
    Ok(())
}
