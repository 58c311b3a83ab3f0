//! `keel bench`: the load generator behind `scripts/bench*`.
//!
//! It drives keel's `/v1/kv` or etcd's `/v3/kv/*` JSON gateway with the same request mix, the
//! same concurrency and the same HTTP client, so the two systems are compared like for like.
//! Each client is a task that sends one request at a time (closed loop) to the endpoints in
//! turn; latencies go to an HDR histogram. Requests that finish within the `--warmup` are made
//! but not measured: a run's first requests open connections and may wait for a node's first
//! password check (tens of milliseconds), which says nothing of the steady state and set the
//! p999 of short runs. The result is one JSON line on stdout.

use std::borrow::Cow;
use std::io::Write;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use base64::Engine;
use clap::ValueEnum;
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

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
    /// How long to measure, in seconds, after the warm-up.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Seconds of requests before the measurement starts; counted as `warmup_ops`.
    #[arg(long, default_value_t = 0)]
    pub warmup: u64,
    /// Stop after this many requests in all (0: no limit), e.g. to load a number of keys.
    #[arg(long, default_value_t = 0)]
    pub ops: u64,
    /// Bytes per value (keys are 8 bytes).
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,
    /// The first key written (keys count up from it). Runs against one cluster pass the
    /// requests made so far, so that each run writes new keys rather than overwriting the
    /// last run's.
    #[arg(long, default_value_t = 0)]
    pub first_key: u64,
    #[arg(long, env = "KEEL_USER")]
    pub user: Option<String>,
    #[arg(long, env = "KEEL_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    // One thread by default: on a small machine the generator shares the cores with the nodes
    // it drives, and one thread spends nothing on waking and parking idle workers (12 % of its
    // CPU with two). keel put (64), three nodes on two cores, one thread against two in
    // alternating pairs: +11 % over 4 pairs, +9 % over 6 more; etcd's put (64) the same within
    // 0.1 %.
    /// Threads the load generator runs on; raise it when the nodes run on other machines.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: u16,
}

struct Shared {
    args: BenchArgs,
    /// The lease the keepalive workload refreshes.
    lease: u64,
    /// For the broker workload's JSON calls; the key-value workloads use [`Connection`].
    http: reqwest::Client,
    /// `Basic ...` for keel, encoded once.
    authorization: Option<String>,
    /// The write body for keel, or the base64 value for etcd, encoded once.
    value: String,
    next_key: AtomicU64,
    issued: AtomicU64,
    errors: AtomicU64,
}

/// What one key-value request is, before it becomes HTTP: method, path and body.
type Call<'a> = (&'static str, String, Cow<'a, [u8]>);

impl Shared {
    /// Claims the next request; false once `--ops` requests were issued.
    fn claim(&self) -> bool {
        self.args.ops == 0 || self.issued.fetch_add(1, Ordering::Relaxed) < self.args.ops
    }

    fn write_call(&self, key: &str) -> Call<'_> {
        match self.args.target {
            Target::Keel => (
                "PUT",
                format!("/v1/kv/bench/{key}"),
                Cow::Borrowed(self.value.as_bytes()),
            ),
            Target::Etcd => {
                let body = json!({ "key": b64(format!("bench/{key}")), "value": self.value });
                (
                    "POST",
                    "/v3/kv/put".into(),
                    body.to_string().into_bytes().into(),
                )
            }
        }
    }

    fn read_call(&self) -> Call<'_> {
        let stale = self.args.workload == Workload::StaleGet;
        match self.args.target {
            Target::Keel => {
                let consistency = if stale { "stale" } else { "linearizable" };
                let path = format!("/v1/kv/bench/hot?consistency={consistency}");
                ("GET", path, Cow::Borrowed(&[]))
            }
            Target::Etcd => {
                let body = json!({ "key": b64("bench/hot"), "serializable": stale });
                (
                    "POST",
                    "/v3/kv/range".into(),
                    body.to_string().into_bytes().into(),
                )
            }
        }
    }

    fn call(&self, n: u64) -> Call<'_> {
        if self.args.workload == Workload::Keepalive {
            let path = format!("/v1/leases/{}/keepalive", self.lease);
            return ("POST", path, Cow::Borrowed(&[]));
        }
        if self.is_write(n) {
            self.write_call(&format!(
                "{:08x}",
                self.next_key.fetch_add(1, Ordering::Relaxed)
            ))
        } else {
            self.read_call()
        }
    }

    /// Writes `call` to `endpoint` as an HTTP/1.1 request into `out`.
    fn render(&self, endpoint: &str, (method, path, body): Call<'_>, out: &mut Vec<u8>) {
        out.clear();
        let _ = write!(
            out,
            "{method} {path} HTTP/1.1\r\nhost: {endpoint}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n",
            body.len()
        );
        if let Some(authorization) = &self.authorization {
            let _ = write!(out, "authorization: {authorization}\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&body);
    }

    fn authenticated(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.args.user {
            Some(user) if self.args.target == Target::Keel => {
                request.basic_auth(user, self.args.password.as_ref())
            }
            _ => request,
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

fn b64(text: impl AsRef<[u8]>) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// A keep-alive HTTP/1.1 connection to one endpoint, opened on first use and again after a
/// failure. The key-value workloads write their requests on it and parse the answers
/// themselves, rather than through an HTTP client library: the generator shares the machine's
/// cores with the cluster it measures, so every microsecond it spends per request is taken
/// from the system under test, and the faster that system, the larger the share.
struct Connection {
    endpoint: String,
    stream: Option<TcpStream>,
    /// The answer read so far; a client has one request in flight, so it is one answer.
    received: Vec<u8>,
}

impl Connection {
    fn new(endpoint: &str) -> Self {
        Self {
            endpoint: endpoint.to_string(),
            stream: None,
            received: Vec::with_capacity(4096),
        }
    }

    /// Sends `request` and reads the whole answer; an error says why it was not a success.
    async fn send(&mut self, request: &[u8]) -> Result<(), String> {
        let exchange = async {
            let stream = match &mut self.stream {
                Some(stream) => stream,
                None => self.stream.insert(connect(&self.endpoint).await?),
            };
            stream.write_all(request).await.map_err(|e| e.to_string())?;
            self.received.clear();
            loop {
                if let Some(response) = parse_response(&self.received)? {
                    // Nothing was asked for what follows: the framing went wrong somewhere.
                    if response.len < self.received.len() {
                        return Err("bytes after the answer".to_string());
                    }
                    return Ok(response);
                }
                self.received.reserve(4096);
                let read = stream.read_buf(&mut self.received).await;
                match read.map_err(|e| e.to_string())? {
                    0 if self.received.is_empty() => {
                        return Err("the server closed the connection".to_string())
                    }
                    0 => return Err("the server closed the connection mid-answer".to_string()),
                    _ => {}
                }
            }
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
            Ok(Ok(response)) => {
                if response.close {
                    self.stream = None;
                }
                if is_success(response.status) {
                    Ok(())
                } else {
                    let body = String::from_utf8_lossy(&response.body);
                    Err(format!("{}: {body}", response.status))
                }
            }
            Ok(Err(err)) => {
                self.stream = None;
                Err(err)
            }
            Err(_) => {
                self.stream = None;
                Err(format!("no answer within {REQUEST_TIMEOUT:?}"))
            }
        }
    }
}

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

async fn connect(endpoint: &str) -> Result<TcpStream, String> {
    let stream = TcpStream::connect(endpoint)
        .await
        .map_err(|e| format!("connecting to {endpoint}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    Ok(stream)
}

fn is_success(status: u16) -> bool {
    (200..300).contains(&status)
}

/// One HTTP/1.1 answer.
#[derive(Debug, PartialEq, Eq)]
struct Response {
    status: u16,
    /// The body, kept only when the status is not a success (for the error message).
    body: Vec<u8>,
    /// The server closes the connection after this answer.
    close: bool,
    /// Bytes the answer took, interim (1xx) answers before it included.
    len: usize,
}

/// Parses the answer at the start of `bytes`, or returns `None` while part of it is still to
/// come. Interim (1xx) answers before it are skipped.
fn parse_response(bytes: &[u8]) -> Result<Option<Response>, String> {
    let mut start = 0;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut head = httparse::Response::new(&mut headers);
        let head_len = match head.parse(&bytes[start..]) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(err) => return Err(format!("a malformed answer: {err}")),
        };
        let status = head.code.unwrap_or_default();
        let body_start = start + head_len;
        if (100..200).contains(&status) {
            start = body_start;
            continue;
        }
        let framing = Framing::of(&head)?;
        let rest = &bytes[body_start..];
        // A success's body is not copied: nothing reads it.
        let keep = !is_success(status);
        let (body, body_len) = if status == 204 || status == 304 {
            (Vec::new(), 0)
        } else if framing.chunked {
            match dechunk(rest, keep)? {
                Some(decoded) => decoded,
                None => return Ok(None),
            }
        } else {
            match framing.length {
                Some(length) if rest.len() >= length => {
                    let body = if keep {
                        rest[..length].to_vec()
                    } else {
                        Vec::new()
                    };
                    (body, length)
                }
                Some(_) => return Ok(None),
                None => return Err(format!("an answer ({status}) without a length")),
            }
        };
        return Ok(Some(Response {
            status,
            body,
            close: framing.close,
            len: body_start + body_len,
        }));
    }
}

/// How an answer's head says its body ends, and whether the connection ends with it.
struct Framing {
    length: Option<usize>,
    chunked: bool,
    close: bool,
}

impl Framing {
    fn of(head: &httparse::Response<'_, '_>) -> Result<Self, String> {
        // HTTP/1.0 closes after each answer unless asked to keep the connection.
        let mut framing = Self {
            length: None,
            chunked: false,
            close: head.version == Some(0),
        };
        for header in head.headers.iter() {
            let value = std::str::from_utf8(header.value).unwrap_or_default().trim();
            let tokens = || value.split(',').map(str::trim);
            if header.name.eq_ignore_ascii_case("content-length") {
                let length = Some(value)
                    .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|v| v.parse::<usize>().ok())
                    .ok_or_else(|| format!("a bad content-length {value:?}"))?;
                if framing.length.is_some_and(|earlier| earlier != length) {
                    return Err("two different content-lengths".into());
                }
                framing.length = Some(length);
            } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                framing.chunked = tokens().any(|t| t.eq_ignore_ascii_case("chunked"));
            } else if header.name.eq_ignore_ascii_case("connection") {
                if tokens().any(|t| t.eq_ignore_ascii_case("close")) {
                    framing.close = true;
                } else if tokens().any(|t| t.eq_ignore_ascii_case("keep-alive")) {
                    framing.close = false;
                }
            }
        }
        Ok(framing)
    }
}

/// Decodes a chunked body into the body (if `keep`, else nothing) and the bytes it took, or
/// returns `None` while part of it is still to come.
fn dechunk(bytes: &[u8], keep: bool) -> Result<Option<(Vec<u8>, usize)>, String> {
    let line_end = |from: usize| {
        bytes[from..]
            .windows(2)
            .position(|pair| pair == b"\r\n")
            .map(|at| from + at)
    };
    let mut body = Vec::new();
    let mut at = 0;
    loop {
        let Some(end) = line_end(at) else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&bytes[at..end]).unwrap_or_default();
        let digits = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(digits, 16)
            .ok()
            .filter(|size| size.checked_add(end + 4).is_some())
            .ok_or_else(|| format!("a bad chunk size line {line:?}"))?;
        at = end + 2;
        if size == 0 {
            // Trailer lines, if any, end with an empty one.
            loop {
                let Some(end) = line_end(at) else {
                    return Ok(None);
                };
                if end == at {
                    return Ok(Some((body, end + 2)));
                }
                at = end + 2;
            }
        }
        if bytes.len() < at + size + 2 {
            return Ok(None);
        }
        if &bytes[at + size..at + size + 2] != b"\r\n" {
            return Err("a chunk longer than its size line says".into());
        }
        if keep {
            body.extend_from_slice(&bytes[at..at + size]);
        }
        at += size + 2;
    }
}

/// One client's measurements: the latency of each request that finished after the warm-up, and
/// how many finished before it.
struct Recorder {
    histogram: Histogram<u64>,
    measure_from: Instant,
    warmup_ops: u64,
}

impl Recorder {
    fn new(measure_from: Instant) -> Self {
        Self {
            histogram: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
            measure_from,
            warmup_ops: 0,
        }
    }

    /// Takes in another client's measurements.
    fn add(&mut self, other: Recorder) -> Result<(), String> {
        self.warmup_ops += other.warmup_ops;
        self.histogram
            .add(other.histogram)
            .map_err(|e| e.to_string())
    }

    /// Records a request sent at `sent` that has just finished.
    fn record(&mut self, sent: Instant) {
        let done = Instant::now();
        if done < self.measure_from {
            self.warmup_ops += 1;
        } else {
            let micros = done.duration_since(sent).as_micros() as u64;
            self.histogram.saturating_record(micros);
        }
    }
}

async fn client(
    shared: Arc<Shared>,
    id: usize,
    mut recorder: Recorder,
    until: Instant,
) -> Recorder {
    let endpoints = &shared.args.endpoints;
    let mut connections: Vec<_> = endpoints.iter().map(|e| Connection::new(e)).collect();
    let mut request = Vec::with_capacity(1024);
    let mut n = id as u64;
    while Instant::now() < until && shared.claim() {
        let at = n as usize % endpoints.len();
        shared.render(&endpoints[at], shared.call(n), &mut request);
        let sent = Instant::now();
        match connections[at].send(&request).await {
            Ok(()) => recorder.record(sent),
            Err(err) => {
                tracing::debug!(%err, "request failed");
                shared.errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        n += 1;
    }
    recorder
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
    recorder: &mut Recorder,
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
        recorder.record(sent);
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

async fn broker_client(
    shared: Arc<Shared>,
    id: usize,
    mut recorder: Recorder,
    until: Instant,
) -> Recorder {
    let endpoints = &shared.args.endpoints;
    let mut n = 0;
    while Instant::now() < until {
        let endpoint = &endpoints[(id + n) % endpoints.len()];
        let name = format!("bench-{id}-{n}");
        if let Err(e) = broker_cycle(&shared, endpoint, &name, &mut recorder).await {
            tracing::debug!(%e, "broker cycle failed");
            shared.errors.fetch_add(1, Ordering::Relaxed);
        }
        n += 1;
    }
    recorder
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
    let value = "v".repeat(args.value_size);
    let value = match args.target {
        Target::Keel => json!({ "value": value }).to_string(),
        Target::Etcd => b64(value),
    };
    let authorization = match (&args.user, args.target) {
        (Some(user), Target::Keel) => {
            let credentials = format!("{user}:{}", args.password.as_deref().unwrap_or(""));
            Some(format!("Basic {}", b64(credentials)))
        }
        _ => None,
    };
    let first_key = args.first_key;
    let shared = Arc::new(Shared {
        value,
        authorization,
        lease,
        args,
        http,
        next_key: AtomicU64::new(first_key),
        issued: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    });
    if matches!(
        shared.args.workload,
        Workload::Get | Workload::StaleGet | Workload::Mixed
    ) {
        let endpoint = &shared.args.endpoints[0];
        let mut seed = Vec::new();
        shared.render(endpoint, shared.write_call("hot"), &mut seed);
        Connection::new(endpoint)
            .send(&seed)
            .await
            .map_err(|e| format!("seeding the hot key: {e}"))?;
    }
    if shared.args.workload == Workload::Broker {
        if shared.args.target != Target::Keel {
            return Err("the broker workload is keel's".into());
        }
        register_proxies(&shared).await?;
    }
    let measure_from = Instant::now() + Duration::from_secs(shared.args.warmup);
    let until = measure_from + Duration::from_secs(shared.args.seconds);
    let tasks: Vec<_> = (0..shared.args.clients)
        .map(|id| {
            let recorder = Recorder::new(measure_from);
            if shared.args.workload == Workload::Broker {
                tokio::spawn(broker_client(shared.clone(), id, recorder, until))
            } else {
                tokio::spawn(client(shared.clone(), id, recorder, until))
            }
        })
        .collect();
    let mut total = Recorder::new(measure_from);
    for task in tasks {
        total.add(task.await.map_err(|e| e.to_string())?)?;
    }
    let elapsed = measure_from.elapsed().as_secs_f64();
    let Recorder {
        histogram: total,
        warmup_ops,
        ..
    } = total;
    let ms = |q: f64| total.value_at_quantile(q) as f64 / 1000.0;
    let result = json!({
        "target": format!("{:?}", shared.args.target).to_lowercase(),
        "workload": format!("{:?}", shared.args.workload).to_lowercase(),
        "clients": shared.args.clients,
        "ops": total.len(),
        "warmup_ops": warmup_ops,
        "errors": shared.errors.load(Ordering::Relaxed),
        "seconds": elapsed,
        "throughput": if elapsed > 0.0 { total.len() as f64 / elapsed } else { 0.0 },
        "p50_ms": ms(0.5),
        "p99_ms": ms(0.99),
        "p999_ms": ms(0.999),
    });
    println!("{result}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a server sent, and what the generator makes of it: status, the body it keeps (only
    /// a failure's) and whether the connection closes; or the start of the error.
    type Case = (
        &'static str,
        Result<(u16, &'static str, bool), &'static str>,
    );

    const CASES: &[Case] = &[
        (
            "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
            Ok((200, "", false)),
        ),
        (
            "HTTP/1.1 409 Conflict\r\nContent-Length: 9\r\nConnection: close\r\n\r\nconflict!",
            Ok((409, "conflict!", true)),
        ),
        (
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: keep-alive, close\r\n\r\nok",
            Ok((200, "", true)),
        ),
        (
            "HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok",
            Ok((200, "", true)),
        ),
        (
            "HTTP/1.0 200 OK\r\ncontent-length: 2\r\nconnection: Keep-Alive\r\n\r\nok",
            Ok((200, "", false)),
        ),
        (
            "HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nboom\r\n3;x=y\r\n!!!\r\n0\r\n\r\n",
            Ok((500, "boom!!!", false)),
        ),
        (
            "HTTP/1.1 503 Busy\r\ntransfer-encoding: chunked\r\n\r\n2\r\nno\r\n0\r\nx-trailer: 1\r\n\r\n",
            Ok((503, "no", false)),
        ),
        (
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\n{}",
            Ok((201, "", false)),
        ),
        ("HTTP/1.1 204 No Content\r\n\r\n", Ok((204, "", false))),
        (
            "HTTP/1.1 304 Not Modified\r\ncontent-length: 5\r\n\r\n",
            Ok((304, "", false)),
        ),
        ("HTTP/1.1 200 OK\r\n\r\n", Err("an answer (200) without a length")),
        (
            "HTTP/1.1 200 OK\r\ncontent-length: five\r\n\r\n",
            Err("a bad content-length"),
        ),
        (
            "HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\nok",
            Err("a bad content-length"),
        ),
        (
            "HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok!",
            Err("two different content-lengths"),
        ),
        ("SSH-2.0-OpenSSH\r\n\r\n", Err("a malformed answer")),
        (
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
            Err("a bad chunk size line"),
        ),
        (
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nffffffffffffffff\r\nab",
            Err("a bad chunk size line"),
        ),
        (
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabcd\r\n0\r\n\r\n",
            Err("a chunk longer than its size line says"),
        ),
    ];

    #[test]
    fn answers_parse_once_complete_and_not_before() {
        for (sent, expected) in CASES {
            let parsed = parse_response(sent.as_bytes());
            match expected {
                Ok((status, body, close)) => {
                    let expected = Response {
                        status: *status,
                        body: body.as_bytes().to_vec(),
                        close: *close,
                        len: sent.len(),
                    };
                    assert_eq!(parsed, Ok(Some(expected)), "{sent:?}");
                    for cut in 0..sent.len() {
                        let prefix = &sent.as_bytes()[..cut];
                        assert_eq!(parse_response(prefix), Ok(None), "{sent:?} cut at {cut}");
                    }
                    // What follows an answer is not part of it.
                    let followed = format!("{sent}HTTP/1.1 200 OK");
                    let parsed = parse_response(followed.as_bytes()).unwrap().unwrap();
                    assert_eq!(parsed.len, sent.len(), "{sent:?} followed by more");
                }
                Err(start) => {
                    let err = parsed.expect_err(sent);
                    assert!(err.starts_with(start), "{sent:?}: {err}");
                }
            }
        }
    }

    /// A server on loopback that answers each connection's requests with `answers`, one per
    /// request, then closes it.
    async fn scripted_server(answers: &'static [&'static str]) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut received = Vec::new();
                    for answer in answers {
                        while !received.windows(4).any(|w| w == b"\r\n\r\n") {
                            if stream.read_buf(&mut received).await.unwrap_or(0) == 0 {
                                return;
                            }
                        }
                        received.clear();
                        stream.write_all(answer.as_bytes()).await.unwrap();
                    }
                });
            }
        });
        address
    }

    #[tokio::test]
    async fn a_connection_is_dropped_after_close_or_a_bad_answer_and_opened_again() {
        const OK: &str = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
        const CLOSING: &str = "HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
        const TOO_LONG: &str = "HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nab";
        /// The server's answers on each connection, and what each request sent meets: success
        /// or an error starting so.
        type Script = (&'static [&'static str], &'static [Result<(), &'static str>]);
        let cases: [Script; 3] = [
            // Kept open, then closed by the server when it said so: every request succeeds.
            (&[OK, CLOSING], &[Ok(()), Ok(()), Ok(()), Ok(())]),
            // Closed without a word: that request fails (as an end of stream or a reset,
            // whichever the kernel reports first), the next one connects again.
            (&[OK], &[Ok(()), Err(""), Ok(())]),
            // An answer longer than it said: refused, and the connection is not used again.
            (
                &[TOO_LONG, OK],
                &[Err("bytes after the answer"), Err("bytes after the answer")],
            ),
        ];
        for (answers, expected) in cases {
            let address = scripted_server(answers).await;
            let mut connection = Connection::new(&address);
            let request = b"GET / HTTP/1.1\r\nhost: test\r\n\r\n";
            for (n, expected) in expected.iter().enumerate() {
                let result = connection.send(request).await;
                let case = format!("{answers:?} request {n}: {result:?}");
                match expected {
                    Ok(()) => assert!(result.is_ok(), "{case}"),
                    Err(start) => assert!(result.is_err_and(|e| e.starts_with(start)), "{case}"),
                }
            }
        }
    }

    #[test]
    fn a_request_is_rendered_as_http_1_1_with_its_length_and_credentials() {
        let args = BenchArgs {
            endpoints: vec!["127.0.0.1:7701".into()],
            target: Target::Keel,
            workload: Workload::Put,
            clients: 1,
            seconds: 1,
            warmup: 0,
            ops: 0,
            value_size: 3,
            first_key: 0,
            user: None,
            password: None,
            threads: 1,
        };
        let shared = Shared {
            args,
            lease: 0,
            http: reqwest::Client::new(),
            authorization: Some("Basic YTpi".into()),
            value: r#"{"value":"vvv"}"#.into(),
            next_key: AtomicU64::new(10),
            issued: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        };
        let mut request = Vec::new();
        shared.render("127.0.0.1:7701", shared.call(0), &mut request);
        assert_eq!(
            String::from_utf8(request).unwrap(),
            "PUT /v1/kv/bench/0000000a HTTP/1.1\r\nhost: 127.0.0.1:7701\r\n\
             content-type: application/json\r\ncontent-length: 15\r\n\
             authorization: Basic YTpi\r\n\r\n{\"value\":\"vvv\"}"
        );
    }
}
