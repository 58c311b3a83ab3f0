//! `keel bench`: the load generator behind `scripts/bench*`.
//!
//! It drives keel's `/v1/kv` or etcd's `/v3/kv/*` JSON gateway with the same request mix, the
//! same concurrency and the same HTTP client, so the two systems are compared like for like.
//! Each client is a task that sends one request at a time (closed loop) to the endpoints in
//! turn; latencies go to an HDR histogram. The result is one JSON line on stdout.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use base64::Engine;
use clap::ValueEnum;
use hdrhistogram::Histogram;
use serde_json::json;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    Keel,
    Etcd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Writes of unique keys.
    Put,
    /// Linearizable reads of one key.
    Get,
    /// Serializable (etcd) / stale (keel) reads of one key.
    StaleGet,
    /// 90% linearizable reads of one key, 10% writes of unique keys.
    Mixed,
    /// Lease keep-alives (keel only): what one heartbeat of a registered agent costs.
    Keepalive,
    /// The undermoon broker (keel only): each client cycles through create cluster, read it,
    /// fail a proxy over, register that proxy again, delete the cluster; every call counts.
    Broker,
}

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Endpoints (host:port), comma separated; clients spread over them.
    #[arg(long, value_delimiter = ',', required = true)]
    pub endpoints: Vec<String>,
    #[arg(long, value_enum, default_value = "keel")]
    pub target: Target,
    #[arg(long, value_enum, default_value = "put")]
    pub workload: Workload,
    /// Concurrent clients, each with one request in flight.
    #[arg(long, default_value_t = 1)]
    pub clients: usize,
    /// How long to run, in seconds.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Stop after this many requests in all (0: no limit), e.g. to load a number of keys.
    #[arg(long, default_value_t = 0)]
    pub ops: u64,
    /// Bytes per value (keys are 8 bytes).
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    #[arg(long, env = "KEEL_USER")]
    pub user: Option<String>,
    #[arg(long, env = "KEEL_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
}

struct Shared {
    args: BenchArgs,
    /// The lease the keepalive workload refreshes.
    lease: u64,
    http: reqwest::Client,
    value: String,
    next_key: AtomicU64,
    issued: AtomicU64,
    errors: AtomicU64,
}

impl Shared {
    /// Claims the next request; false once `--ops` requests were issued.
    fn claim(&self) -> bool {
        self.args.ops == 0 || self.issued.fetch_add(1, Ordering::Relaxed) < self.args.ops
    }
}

impl Shared {
    fn write_request(&self, endpoint: &str, key: &str) -> reqwest::RequestBuilder {
        let request = match self.args.target {
            Target::Keel => self
                .http
                .put(format!("http://{endpoint}/v1/kv/bench/{key}"))
                .json(&json!({ "value": self.value })),
            Target::Etcd => self
                .http
                .post(format!("http://{endpoint}/v3/kv/put"))
                .json(&json!({ "key": b64(&format!("bench/{key}")), "value": b64(&self.value) })),
        };
        self.authenticated(request)
    }

    fn read_request(&self, endpoint: &str) -> reqwest::RequestBuilder {
        let stale = self.args.workload == Workload::StaleGet;
        let request = match self.args.target {
            Target::Keel => {
                let consistency = if stale { "stale" } else { "linearizable" };
                self.http.get(format!(
                    "http://{endpoint}/v1/kv/bench/hot?consistency={consistency}"
                ))
            }
            Target::Etcd => self
                .http
                .post(format!("http://{endpoint}/v3/kv/range"))
                .json(&json!({ "key": b64("bench/hot"), "serializable": stale })),
        };
        self.authenticated(request)
    }

    fn authenticated(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.args.user {
            Some(user) if self.args.target == Target::Keel => {
                request.basic_auth(user, self.args.password.as_ref())
            }
            _ => request,
        }
    }

    fn request(&self, endpoint: &str, write: bool) -> reqwest::RequestBuilder {
        if self.args.workload == Workload::Keepalive {
            let url = format!("http://{endpoint}/v1/leases/{}/keepalive", self.lease);
            return self.authenticated(self.http.post(url));
        }
        if write {
            let key = format!("{:08x}", self.next_key.fetch_add(1, Ordering::Relaxed));
            self.write_request(endpoint, &key)
        } else {
            self.read_request(endpoint)
        }
    }

    fn is_write(&self, n: u64) -> bool {
        match self.args.workload {
            Workload::Put => true,
            Workload::Get | Workload::StaleGet | Workload::Keepalive | Workload::Broker => false,
            Workload::Mixed => n % 10 == 0,
        }
    }
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

async fn client(shared: Arc<Shared>, id: usize, until: Instant) -> Histogram<u64> {
    let mut histogram =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
    let endpoints = &shared.args.endpoints;
    let mut n = id as u64;
    while Instant::now() < until && shared.claim() {
        let endpoint = &endpoints[n as usize % endpoints.len()];
        let request = shared.request(endpoint, shared.is_write(n));
        let sent = Instant::now();
        let ok = match request.send().await {
            Ok(response) => response.status().is_success() && response.bytes().await.is_ok(),
            Err(_) => false,
        };
        if ok {
            histogram.saturating_record(sent.elapsed().as_micros() as u64);
        } else {
            shared.errors.fetch_add(1, Ordering::Relaxed);
        }
        n += 1;
    }
    histogram
}

/// Proxies the broker workload registers: three per client are in use at a time (two in a
/// cluster, one replacement), spread over eight hosts.
fn broker_proxies(clients: usize) -> Vec<(String, [String; 2])> {
    (0..4 * clients + 8)
        .map(|p| {
            let host = format!("10.66.{}.1", p % 8);
            let nodes = [
                format!("{host}:{}", 20000 + 2 * p),
                format!("{host}:{}", 20001 + 2 * p),
            ];
            (format!("{host}:{}", 10000 + p), nodes)
        })
        .collect()
}

async fn register_proxies(shared: &Shared) -> Result<(), String> {
    let endpoint = &shared.args.endpoints[0];
    for (address, nodes) in broker_proxies(shared.args.clients) {
        let body = json!({ "proxy_address": address, "nodes": nodes });
        let request = shared
            .http
            .post(format!("http://{endpoint}/api/v3/proxies/meta"))
            .json(&body);
        let status = shared
            .authenticated(request)
            .send()
            .await
            .map_err(|e| format!("registering proxies: {e}"))?
            .status();
        // 409: registered by an earlier run.
        if !status.is_success() && status.as_u16() != 409 {
            return Err(format!("registering proxy {address}: {status}"));
        }
    }
    Ok(())
}

/// One broker cycle of client `id`; every call's latency goes to `histogram`.
async fn broker_cycle(
    shared: &Shared,
    endpoint: &str,
    name: &str,
    histogram: &mut Histogram<u64>,
) -> Result<(), String> {
    let api = format!("http://{endpoint}/api/v3");
    let mut call = async |request: reqwest::RequestBuilder| -> Result<serde_json::Value, String> {
        let sent = Instant::now();
        let response = shared
            .authenticated(request)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = response.bytes().await.map_err(|e| e.to_string())?;
        if !status.is_success() {
            return Err(format!("{status}: {}", String::from_utf8_lossy(&body)));
        }
        histogram.saturating_record(sent.elapsed().as_micros() as u64);
        Ok(serde_json::from_slice(&body).unwrap_or_default())
    };
    let http = &shared.http;
    call(
        http.post(format!("{api}/clusters/meta/{name}"))
            .json(&json!({ "node_number": 4 })),
    )
    .await?;
    let cluster = call(http.get(format!("{api}/clusters/meta/{name}"))).await?;
    let node = |i: usize| cluster["cluster"]["nodes"][i].clone();
    let failed = node(0)["proxy_address"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    call(http.post(format!("{api}/proxies/failover/{failed}"))).await?;
    let again =
        json!({ "proxy_address": failed, "nodes": [node(0)["address"], node(1)["address"]] });
    call(http.post(format!("{api}/proxies/meta")).json(&again)).await?;
    call(http.delete(format!("{api}/clusters/meta/{name}"))).await?;
    Ok(())
}

async fn broker_client(shared: Arc<Shared>, id: usize, until: Instant) -> Histogram<u64> {
    let mut histogram =
        Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
    let endpoints = &shared.args.endpoints;
    let mut n = 0;
    while Instant::now() < until {
        let endpoint = &endpoints[(id + n) % endpoints.len()];
        let name = format!("bench-{id}-{n}");
        if let Err(e) = broker_cycle(&shared, endpoint, &name, &mut histogram).await {
            tracing::debug!(%e, "broker cycle failed");
            shared.errors.fetch_add(1, Ordering::Relaxed);
        }
        n += 1;
    }
    histogram
}

async fn grant_lease(http: &reqwest::Client, args: &BenchArgs) -> Result<u64, String> {
    if args.target != Target::Keel {
        return Err("the keepalive workload is keel's".into());
    }
    let mut request = http
        .post(format!("http://{}/v1/leases", args.endpoints[0]))
        .json(&json!({ "ttl": 600 }));
    if let Some(user) = &args.user {
        request = request.basic_auth(user, args.password.as_ref());
    }
    let response = request
        .send()
        .await
        .map_err(|e| format!("granting a lease: {e}"))?;
    let body: serde_json::Value = response
        .json()
        .await
        .map_err(|e| format!("granting a lease: {e}"))?;
    body["id"]
        .as_u64()
        .ok_or_else(|| format!("granting a lease: {body}"))
}

pub async fn run(args: BenchArgs) -> Result<(), String> {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(args.clients.max(1))
        .tcp_nodelay(true)
        .build()
        .map_err(|e| e.to_string())?;
    let lease = if args.workload == Workload::Keepalive {
        grant_lease(&http, &args).await?
    } else {
        0
    };
    let shared = Arc::new(Shared {
        value: "v".repeat(args.value_size),
        lease,
        args,
        http,
        next_key: AtomicU64::new(0),
        issued: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    if matches!(
        shared.args.workload,
        Workload::Get | Workload::StaleGet | Workload::Mixed
    ) {
        let response = shared
            .write_request(&shared.args.endpoints[0], "hot")
            .send()
            .await
            .map_err(|e| format!("seeding the hot key: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("seeding the hot key: {}", response.status()));
        }
    }
    if shared.args.workload == Workload::Broker {
        if shared.args.target != Target::Keel {
            return Err("the broker workload is keel's".into());
        }
        register_proxies(&shared).await?;
    }
    let started = Instant::now();
    let until = started + Duration::from_secs(shared.args.seconds);
    let tasks: Vec<_> = (0..shared.args.clients)
        .map(|id| {
            if shared.args.workload == Workload::Broker {
                tokio::spawn(broker_client(shared.clone(), id, until))
            } else {
                tokio::spawn(client(shared.clone(), id, until))
            }
        })
        .collect();
    let mut total = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
    for task in tasks {
        total
            .add(task.await.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let ms = |q: f64| total.value_at_quantile(q) as f64 / 1000.0;
    let result = json!({
        "target": format!("{:?}", shared.args.target).to_lowercase(),
        "workload": format!("{:?}", shared.args.workload).to_lowercase(),
        "clients": shared.args.clients,
        "ops": total.len(),
        "errors": shared.errors.load(Ordering::Relaxed),
        "seconds": elapsed,
        "throughput": total.len() as f64 / elapsed,
        "p50_ms": ms(0.5),
        "p99_ms": ms(0.99),
        "p999_ms": ms(0.999),
    });
    println!("{result}");
    Ok(())
}
