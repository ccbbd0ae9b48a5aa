//! Benchmark (not a test): what a fleet costs ZITADEL. Five usermeta replicas in this process share one
//! `redis-server` (a child process) and one request budget toward the stand-in ZITADEL (also in this process),
//! which counts every request it receives. Measured:
//!
//! 1. a cold start: `--tokens` new tokens (default 5,000) spread round robin over the replicas, each asked once
//!    (GetMyMetadata), `--concurrency` at once; then a burst of admin reads of `--users` users (default 200:
//!    ListMetadata of each, and BatchGetMetadata of them 100 at a time) through every replica, retried after
//!    the RetryInfo delay until all are answered. The stand-in's request count is sampled every 50 ms; the
//!    most requests in any 1 s and any 60 s window are reported against the fleet budget (`--rate`, `--burst`).
//! 2. upstream calls per 1,000 warm requests (admin ListMetadata and BatchGetMetadata of those users, and
//!    GetMyMetadata of tokens already identified) through one replica and through all five.
//! 3. warm ListMetadata of another user, and warm BatchGetMetadata of 100 users, against a bare tonic server
//!    answering the same messages (the ceiling), with the same in-process load: `--connections` HTTP/2
//!    connections with `--streams` calls in flight each (default 16 x 8), for `--seconds` each, alternating.
//!
//! Prints one JSON object. Usage: `bench_fleet [--tokens N] [--users N] [--rate R] [--burst B] [--seconds S]
//! [--connections C] [--streams M] [--concurrency K]`.

use std::{
    collections::HashMap,
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use futures::{StreamExt as _, stream};
use tonic::{Code, Request, Response, Status, transport::Channel};
use tonic_types::StatusExt as _;
use usermeta::{
    api::pb::{
        self, BatchGetMetadataRequest, GetMyMetadataRequest, ListMetadataRequest,
        user_metadata_service_client::UserMetadataServiceClient,
        user_metadata_service_server::{UserMetadataService, UserMetadataServiceServer},
    },
    fleet::{FleetBudgetConfig, RedisConfig},
    policy::Policy,
    server::{Application, Config},
};
use usermeta_zitadel::{ServiceCredential, UpstreamBudget, management::ApiChoice};
use zitadel_standin::{ManagerRole, StandIn};

type Client = UserMetadataServiceClient<Channel>;

struct Options {
    tokens: usize,
    users: usize,
    rate: f64,
    burst: u32,
    seconds: f64,
    connections: usize,
    streams: usize,
    concurrency: usize,
}

fn options() -> Result<Options, String> {
    let mut options = Options {
        tokens: 5000,
        users: 200,
        rate: 40.0,
        burst: 40,
        seconds: 5.0,
        connections: 16,
        streams: 8,
        concurrency: 64,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let [flag, value] = pair else {
            return Err(format!("{} needs a value", pair[0]));
        };
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--tokens" => options.tokens = value.parse().map_err(|e| bad(&e))?,
            "--users" => options.users = value.parse().map_err(|e| bad(&e))?,
            "--rate" => options.rate = value.parse().map_err(|e| bad(&e))?,
            "--burst" => options.burst = value.parse().map_err(|e| bad(&e))?,
            "--seconds" => options.seconds = value.parse().map_err(|e| bad(&e))?,
            "--connections" => options.connections = value.parse().map_err(|e| bad(&e))?,
            "--streams" => options.streams = value.parse().map_err(|e| bad(&e))?,
            "--concurrency" => options.concurrency = value.parse().map_err(|e| bad(&e))?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(options)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

/// A `redis-server` child, killed on drop.
struct Redis(Child, u16);

impl Redis {
    fn start() -> Redis {
        let port = free_port();
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (Debian: apt-get install redis-server)");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not listen"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis(child, port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn authed<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("a header value"),
    );
    request
}

async fn connect(addr: SocketAddr) -> Client {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("a URI")
        .connect()
        .await
        .expect("connects");
    UserMetadataServiceClient::new(channel)
}

/// Starts a replica in this process; returns its address.
async fn replica(
    standin: &StandIn,
    pat: &str,
    policy: Policy,
    redis: Option<&Redis>,
    fleet: Option<FleetBudgetConfig>,
) -> SocketAddr {
    let credential = ServiceCredential::Pat(pat.to_owned().into());
    let mut config = Config::new(standin.url().parse().expect("a URL"), credential);
    config.zitadel.management_api = ApiChoice::V1;
    config.policy = policy;
    // The whole run (cold start, the admins' burst at the fleet's rate, the warm phases) within one TTL, so
    // "warm" means what it says.
    config.cache.ttl = Duration::from_secs(600);
    if redis.is_none() {
        // The throughput replica: warmed once with every user, then measured from memory; no budget delays
        // its warm-up (a BatchGetMetadata of 100 users would otherwise leave users unread, so not warm).
        config.zitadel.upstream_budget = None;
    }
    if let Some(redis) = redis {
        config.options.redis = Some(RedisConfig::new(format!("redis://127.0.0.1:{}", redis.1)));
        config.options.upstream_fleet = fleet;
    }
    let app = Application::build(config).await.expect("usermeta builds");
    let addr = app.local_addr();
    tokio::spawn(app.run_until(std::future::pending()));
    addr
}

/// Calls `call` until it is answered, waiting the RetryInfo delay after each UPSTREAM_BUDGET_EXHAUSTED.
async fn until_answered<T, F, Fut>(mut call: F) -> (T, u32)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    let mut refusals = 0;
    loop {
        match call().await {
            Ok(answer) => return (answer, refusals),
            Err(status) if status.code() == Code::ResourceExhausted => {
                refusals += 1;
                let delay = status
                    .get_details_retry_info()
                    .and_then(|retry| retry.retry_delay)
                    .unwrap_or(Duration::from_millis(100));
                tokio::time::sleep(delay).await;
            }
            Err(status) => panic!("unexpected failure: {status:?}"),
        }
    }
}

/// The stand-in's request count every 50 ms, until told to stop.
fn sample(
    standin: StandIn,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<(Instant, usize)>> {
    tokio::spawn(async move {
        let mut samples = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            samples.push((Instant::now(), standin.requests().len()));
        }
        samples
    })
}

/// The most requests between two samples at most `window` apart (at the samples' 50 ms resolution).
fn most_within(samples: &[(Instant, usize)], window: Duration) -> usize {
    let mut most = 0;
    let mut start = 0;
    for end in 0..samples.len() {
        while samples[end].0.duration_since(samples[start].0) > window {
            start += 1;
        }
        most = most.max(samples[end].1 - samples[start].1);
    }
    most
}

/// Calls per second `call` sustains with `connections` channels and `streams` calls in flight on each.
async fn throughput<F, Fut>(clients: &[Client], streams: usize, seconds: f64, call: F) -> f64
where
    F: Fn(Client) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let workers: Vec<_> = clients
        .iter()
        .flat_map(|client| std::iter::repeat_n(client.clone(), streams))
        .map(|client| {
            let (done, failed, call) = (Arc::clone(&done), Arc::clone(&failed), call.clone());
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    if call(client.clone()).await {
                        done.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let started = Instant::now();
    for worker in workers {
        worker.await.expect("a worker");
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "calls failed under load");
    done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// A bare tonic server answering ListMetadata and BatchGetMetadata with fixed messages: the ceiling.
struct Ceiling {
    list: pb::ListMetadataResponse,
    batch: pb::BatchGetMetadataResponse,
}

#[tonic::async_trait]
impl UserMetadataService for Ceiling {
    async fn get_my_metadata(
        &self,
        _: Request<pb::GetMyMetadataRequest>,
    ) -> Result<Response<pb::GetMyMetadataResponse>, Status> {
        Err(Status::unimplemented(
            "the ceiling serves ListMetadata and BatchGetMetadata",
        ))
    }

    async fn list_metadata(
        &self,
        _: Request<pb::ListMetadataRequest>,
    ) -> Result<Response<pb::ListMetadataResponse>, Status> {
        Ok(Response::new(self.list.clone()))
    }

    async fn set_metadata(
        &self,
        _: Request<pb::SetMetadataRequest>,
    ) -> Result<Response<pb::SetMetadataResponse>, Status> {
        Err(Status::unimplemented(
            "the ceiling serves ListMetadata and BatchGetMetadata",
        ))
    }

    async fn delete_metadata(
        &self,
        _: Request<pb::DeleteMetadataRequest>,
    ) -> Result<Response<pb::DeleteMetadataResponse>, Status> {
        Err(Status::unimplemented(
            "the ceiling serves ListMetadata and BatchGetMetadata",
        ))
    }

    async fn find_users_by_metadata(
        &self,
        _: Request<pb::FindUsersByMetadataRequest>,
    ) -> Result<Response<pb::FindUsersByMetadataResponse>, Status> {
        Err(Status::unimplemented(
            "the ceiling serves ListMetadata and BatchGetMetadata",
        ))
    }

    async fn batch_get_metadata(
        &self,
        _: Request<pb::BatchGetMetadataRequest>,
    ) -> Result<Response<pb::BatchGetMetadataResponse>, Status> {
        Ok(Response::new(self.batch.clone()))
    }

    async fn list_organization_metadata(
        &self,
        _: Request<pb::ListOrganizationMetadataRequest>,
    ) -> Result<Response<pb::ListOrganizationMetadataResponse>, Status> {
        Err(Status::unimplemented(
            "the ceiling serves ListMetadata and BatchGetMetadata",
        ))
    }

    async fn set_organization_metadata(
        &self,
        _: Request<pb::SetOrganizationMetadataRequest>,
    ) -> Result<Response<pb::SetOrganizationMetadataResponse>, Status> {
        Err(Status::unimplemented(
            "the ceiling serves ListMetadata and BatchGetMetadata",
        ))
    }

    async fn delete_organization_metadata(
        &self,
        _: Request<pb::DeleteOrganizationMetadataRequest>,
    ) -> Result<Response<pb::DeleteOrganizationMetadataResponse>, Status> {
        Err(Status::unimplemented(
            "the ceiling serves ListMetadata and BatchGetMetadata",
        ))
    }

    type WatchMetadataStream = usermeta::api::ChangeStream;

    async fn watch_metadata(
        &self,
        _: Request<pb::WatchMetadataRequest>,
    ) -> Result<Response<Self::WatchMetadataStream>, Status> {
        Err(Status::unimplemented(
            "the ceiling serves ListMetadata and BatchGetMetadata",
        ))
    }
}

async fn serve_ceiling(ceiling: Ceiling) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binds");
    let addr = listener.local_addr().expect("an address");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(UserMetadataServiceServer::new(ceiling))
            .serve_with_incoming(tokio_stream_listener(listener)),
    );
    addr
}

fn tokio_stream_listener(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(socket, _)| {
            let _ = socket.set_nodelay(true);
            socket
        });
        Some((accepted, listener))
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let options = options()?;
    let standin = StandIn::start().await?;
    let org = standin.create_org("Acme");
    let service_user = standin.create_service_user(&org, "usermeta", ManagerRole::IamOwner);
    let pat = standin.issue_pat(&service_user);
    let admin = standin.create_user(&org, "admin");
    let admin_token = standin.issue_token(&admin, common_scopes());
    let users: Vec<String> = (0..options.users)
        .map(|i| {
            let user = standin.create_user(&org, &format!("user{i}"));
            standin.set_metadata(&user, "ContractNumber", format!("{i:06}").as_bytes());
            standin.set_metadata(&user, "profile.language", b"en");
            standin.set_metadata(&user, "routing.tier", b"gold");
            user
        })
        .collect();
    let tokens: Vec<String> = (0..options.tokens)
        .map(|i| standin.issue_token(&users[i % users.len()], common_scopes()))
        .collect();
    let policy = || Policy::new([admin.clone()], Vec::<String>::new());
    let redis = Redis::start();
    let fleet = FleetBudgetConfig {
        budget: UpstreamBudget {
            rate: options.rate,
            burst: options.burst,
            ..UpstreamBudget::default()
        },
        fallback: UpstreamBudget {
            rate: options.rate / 5.0,
            burst: options.burst.div_ceil(5),
            ..UpstreamBudget::default()
        },
    };
    let mut replicas = Vec::new();
    for _ in 0..5 {
        let addr = replica(&standin, &pat, policy(), Some(&redis), Some(fleet)).await;
        replicas.push(connect(addr).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    standin.clear_requests();

    // 1. The cold start, then the admins' burst, sampled.
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = sample(standin.clone(), Arc::clone(&stop));
    let started = Instant::now();
    let outcomes: Vec<(usize, Result<(), Code>)> = stream::iter(tokens.iter().enumerate())
        .map(|(i, token)| {
            let mut client = replicas[i % replicas.len()].clone();
            async move {
                let answer = client
                    .get_my_metadata(authed(GetMyMetadataRequest::default(), token))
                    .await
                    .map(|_| ())
                    .map_err(|status| status.code());
                (i, answer)
            }
        })
        .buffer_unordered(options.concurrency)
        .collect()
        .await;
    let cold_seconds = started.elapsed().as_secs_f64();
    let mut cold: HashMap<String, usize> = HashMap::new();
    // Tokens identified during the cold start, by the replica that identified them (token i went to i % 5).
    let mut identified: Vec<Vec<usize>> = vec![Vec::new(); replicas.len()];
    for (i, outcome) in &outcomes {
        if outcome.is_ok() {
            identified[i % replicas.len()].push(*i);
        }
    }
    for (_, outcome) in &outcomes {
        let name = match outcome {
            Ok(()) => "answered".to_owned(),
            Err(code) => format!("{code:?}"),
        };
        *cold.entry(name).or_default() += 1;
    }
    let burst_started = Instant::now();
    let mut admin_refusals = 0;
    let admin_reads = stream::iter(
        replicas
            .iter()
            .flat_map(|client| users.iter().map(move |user| (client.clone(), user.clone()))),
    )
    .map(|(client, user)| {
        let token = admin_token.clone();
        async move {
            until_answered(|| {
                let mut client = client.clone();
                let request = ListMetadataRequest {
                    user_id: user.clone(),
                    ..Default::default()
                };
                let token = token.clone();
                async move { client.list_metadata(authed(request, &token)).await }
            })
            .await
            .1
        }
    })
    .buffer_unordered(options.concurrency)
    .collect::<Vec<u32>>()
    .await;
    admin_refusals += admin_reads.iter().sum::<u32>();
    let burst_seconds = burst_started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let samples = sampler.await?;
    let cold_requests = standin.requests().len();

    // 2. Warm requests: upstream calls per 1,000, through one replica and through five.
    let batch_of = |from: usize| BatchGetMetadataRequest {
        user_ids: users
            .iter()
            .cycle()
            .skip(from)
            .take(users.len().min(100))
            .cloned()
            .collect(),
        ..Default::default()
    };
    let mut warm_calls = HashMap::new();
    for (label, fleet_size) in [("one_replica", 1usize), ("five_replicas", 5)] {
        standin.clear_requests();
        for i in 0..1000usize {
            let mut client = replicas[i % fleet_size].clone();
            match i % 3 {
                0 => {
                    let request = ListMetadataRequest {
                        user_id: users[i % users.len()].clone(),
                        ..Default::default()
                    };
                    client.list_metadata(authed(request, &admin_token)).await?;
                }
                1 => {
                    client
                        .batch_get_metadata(authed(batch_of(i % users.len()), &admin_token))
                        .await?;
                }
                _ => {
                    // A token already identified, on the replica that identified it.
                    let on = i % fleet_size;
                    let known = &identified[on];
                    if !known.is_empty() {
                        let token = &tokens[known[i % known.len()]];
                        client
                            .get_my_metadata(authed(GetMyMetadataRequest::default(), token))
                            .await?;
                    }
                }
            }
        }
        warm_calls.insert(label, standin.requests().len());
    }

    // 3. Warm reads against the ceiling, alternating, same load.
    let one_user = users[0].clone();
    let list_request = ListMetadataRequest {
        user_id: one_user.clone(),
        ..Default::default()
    };
    let batch_request = batch_of(0);
    let usermeta_client = replicas[0].clone();
    let list_answer = usermeta_client
        .clone()
        .list_metadata(authed(list_request.clone(), &admin_token))
        .await?
        .into_inner();
    let batch_answer = usermeta_client
        .clone()
        .batch_get_metadata(authed(batch_request.clone(), &admin_token))
        .await?
        .into_inner();
    let ceiling_addr = serve_ceiling(Ceiling {
        list: list_answer,
        batch: batch_answer,
    })
    .await;
    let usermeta_addr = replica(&standin, &pat, policy(), None, None).await;
    // Warm this replica's caches (one ZITADEL call each), then measure.
    let warm = connect(usermeta_addr).await;
    warm.clone()
        .list_metadata(authed(list_request.clone(), &admin_token))
        .await?;
    warm.clone()
        .batch_get_metadata(authed(batch_request.clone(), &admin_token))
        .await?;
    let mut usermeta_clients = Vec::new();
    let mut ceiling_clients = Vec::new();
    for _ in 0..options.connections {
        usermeta_clients.push(connect(usermeta_addr).await);
        ceiling_clients.push(connect(ceiling_addr).await);
    }
    let list_call = {
        let (request, token) = (list_request.clone(), admin_token.clone());
        move |mut client: Client| {
            let (request, token) = (request.clone(), token.clone());
            async move { client.list_metadata(authed(request, &token)).await.is_ok() }
        }
    };
    let batch_call = {
        let (request, token) = (batch_request.clone(), admin_token.clone());
        move |mut client: Client| {
            let (request, token) = (request.clone(), token.clone());
            async move {
                client
                    .batch_get_metadata(authed(request, &token))
                    .await
                    .is_ok()
            }
        }
    };
    standin.clear_requests();
    let mut rounds = serde_json::Map::new();
    for (name, is_list) in [
        ("list_metadata_of_another_user", true),
        ("batch_get_100_users", false),
    ] {
        let (mut ours, mut ceiling) = (Vec::new(), Vec::new());
        for _ in 0..3 {
            let (a, b) = if is_list {
                (
                    throughput(
                        &usermeta_clients,
                        options.streams,
                        options.seconds,
                        list_call.clone(),
                    )
                    .await,
                    throughput(
                        &ceiling_clients,
                        options.streams,
                        options.seconds,
                        list_call.clone(),
                    )
                    .await,
                )
            } else {
                (
                    throughput(
                        &usermeta_clients,
                        options.streams,
                        options.seconds,
                        batch_call.clone(),
                    )
                    .await,
                    throughput(
                        &ceiling_clients,
                        options.streams,
                        options.seconds,
                        batch_call.clone(),
                    )
                    .await,
                )
            };
            ours.push(a);
            ceiling.push(b);
        }
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (ours, ceiling) = (median(ours), median(ceiling));
        rounds.insert(
            name.to_owned(),
            serde_json::json!({
                "usermeta_per_s": ours.round(),
                "ceiling_per_s": ceiling.round(),
                "ratio": (ours / ceiling * 1000.0).round() / 1000.0,
            }),
        );
    }
    let zitadel_calls_under_load = standin.requests().len();

    let budget_1s = options.burst as f64 + options.rate;
    let budget_60s = options.burst as f64 + options.rate * 60.0;
    let report = serde_json::json!({
        "fleet_budget": { "rate": options.rate, "burst": options.burst },
        "cold_start": {
            "tokens": options.tokens,
            "replicas": 5,
            "seconds": (cold_seconds * 10.0).round() / 10.0,
            "outcomes": cold,
            "admin_reads": options.users * 5,
            "admin_refusals_retried": admin_refusals,
            "admin_burst_seconds": (burst_seconds * 10.0).round() / 10.0,
            "zitadel_requests": cold_requests,
            "most_in_any_1s": most_within(&samples, Duration::from_secs(1)),
            "allowed_in_1s": budget_1s,
            "most_in_any_60s": most_within(&samples, Duration::from_secs(60)),
            "allowed_in_60s": budget_60s,
            "window_resolution_ms": 50,
        },
        "warm_upstream_calls_per_1000": warm_calls,
        "warm_throughput": {
            "connections": options.connections,
            "streams_per_connection": options.streams,
            "seconds_per_round": options.seconds,
            "rounds": 3,
            "zitadel_calls_during_load": zitadel_calls_under_load,
            "results": rounds,
        },
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

fn common_scopes() -> &'static [&'static str] {
    &[
        "openid",
        "urn:zitadel:iam:user:metadata",
        "urn:zitadel:iam:user:resourceowner",
    ]
}
