//! The clients: concurrent processes that read, write and compare-and-set a few registers,
//! add elements to a set, read and raise the undermoon broker's global epoch, and watch every
//! change, through randomly chosen nodes.
//!
//! Each operation is recorded with its invocation and completion time and an outcome: `ok`
//! and `fail` only when the answer proves what happened (a 2xx, a 409 compare failure, a
//! refused connection), `info` otherwise (timeouts, 503s: a write may still be committed).
//! Writes carry a fresh `Idempotency-Key`, so keel's own internal retries apply them once.

use std::sync::atomic::AtomicI64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use futures::StreamExt;
use rand::rngs::StdRng;
use rand::Rng;
use rand::SeedableRng;
use serde_json::json;
use serde_json::Value;

use crate::cluster;
use crate::history::Operation;
use crate::history::Outcome;
use crate::history::F;

/// Registers the register workload spreads over.
pub const KEYS: usize = 3;

/// The history key of the broker's global epoch, checked like a register that only grows.
pub const EPOCH_KEY: &str = "broker-epoch";

/// How long a client waits for one answer before calling it indeterminate.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(6);

pub struct Workload {
    pub started: Instant,
    pub until: Instant,
    pub node_addrs: Vec<String>,
    http: reqwest::Client,
    next_value: AtomicI64,
    next_op: std::sync::atomic::AtomicUsize,
    pub history: Mutex<Vec<Operation>>,
}

enum Answer {
    Ok(Value, u16),
    /// Definitely not applied.
    Fail(String),
    /// Maybe applied.
    Unknown(String),
}

/// Records what a write's answer proves: done, not done, or unknown.
fn settle_write(op: &mut Operation, answer: Answer) {
    match answer {
        Answer::Ok(..) => {}
        Answer::Fail(e) => {
            op.outcome = Outcome::Fail;
            op.error = Some(e);
        }
        Answer::Unknown(e) => {
            op.outcome = Outcome::Info;
            op.error = Some(e);
        }
    }
}

impl Workload {
    pub fn new(node_addrs: Vec<String>, duration: Duration) -> Arc<Self> {
        let started = Instant::now();
        Arc::new(Self {
            started,
            until: started + duration,
            node_addrs,
            http: reqwest::Client::builder()
                .timeout(CLIENT_TIMEOUT)
                .connect_timeout(Duration::from_secs(1))
                .build()
                .expect("HTTP client"),
            next_value: AtomicI64::new(1),
            next_op: Default::default(),
            history: Mutex::new(Vec::new()),
        })
    }

    fn now_ns(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }

    /// Sends `request`; 2xx and `also_ok` answers are `Ok`, other 4xx are definite failures.
    async fn send(&self, request: reqwest::RequestBuilder, also_ok: &[u16]) -> Answer {
        match request
            .basic_auth(cluster::USER, Some(cluster::PASSWORD))
            .send()
            .await
        {
            Ok(response) => {
                let status = response.status().as_u16();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                // keel's dialects name the error `error_code`, undermoon's `error`.
                let error = body["error_code"].as_str().or(body["error"].as_str());
                let error = format!("{status} {}", error.unwrap_or(""));
                if (200..300).contains(&status) || also_ok.contains(&status) {
                    Answer::Ok(body, status)
                } else if (400..500).contains(&status) {
                    Answer::Fail(error)
                } else {
                    Answer::Unknown(error)
                }
            }
            // Refused: the request never reached a server.
            Err(e) if e.is_connect() => Answer::Fail("connection refused".into()),
            Err(e) => Answer::Unknown(if e.is_timeout() {
                "timeout".into()
            } else {
                e.to_string()
            }),
        }
    }

    /// An operation of `process` on node index `node`, invoked now; its answer fills the rest.
    fn invoke(&self, process: usize, node: usize, f: F, key: String) -> Operation {
        Operation {
            id: 0,
            process,
            node: node + 1,
            f,
            key,
            value: None,
            expected: None,
            invoke_ns: self.now_ns(),
            complete_ns: 0,
            outcome: Outcome::Ok,
            error: None,
        }
    }

    fn record(&self, mut op: Operation) {
        op.id = self.next_op.fetch_add(1, Ordering::Relaxed);
        op.complete_ns = self.now_ns();
        self.history.lock().expect("history").push(op);
    }

    fn fresh_value(&self) -> i64 {
        self.next_value.fetch_add(1, Ordering::Relaxed)
    }

    /// One register client: reads, writes and CASes until the end of the run.
    pub async fn register_client(self: Arc<Self>, process: usize, seed: u64) {
        let mut rng = StdRng::seed_from_u64(seed);
        // The last (value, mod_revision) this client read per key, for its next CAS.
        let mut last_read: Vec<Option<(i64, u64)>> = vec![None; KEYS];
        while Instant::now() < self.until {
            let node = rng.gen_range(0..self.node_addrs.len());
            let base = format!("http://{}", self.node_addrs[node]);
            let k = rng.gen_range(0..KEYS);
            let key = format!("r{k}");
            let url = format!("{base}/v1/kv/reg/{key}");
            let roll = rng.gen_range(0..10);
            let mut op = self.invoke(process, node, F::Read, key);
            let cas_from = last_read[k].filter(|_| roll >= 8);
            if roll < 5 || (roll >= 8 && cas_from.is_none()) {
                match self.send(self.http.get(&url), &[404]).await {
                    Answer::Ok(body, 200) => {
                        op.value = body["value"].as_str().and_then(|v| v.parse().ok());
                        last_read[k] = op.value.zip(body["mod_revision"].as_u64());
                    }
                    Answer::Ok(_, _) => last_read[k] = None,
                    Answer::Fail(e) | Answer::Unknown(e) => {
                        op.outcome = Outcome::Fail;
                        op.error = Some(e);
                    }
                }
            } else {
                let value = self.fresh_value();
                op.value = Some(value);
                let target = match cas_from {
                    Some((from, revision)) => {
                        op.f = F::Cas;
                        op.expected = Some(from);
                        format!("{url}?prev_revision={revision}")
                    }
                    None => {
                        op.f = F::Write;
                        url
                    }
                };
                let request = self
                    .http
                    .put(target)
                    .header("Idempotency-Key", format!("p{process}-{value}"))
                    .json(&json!({ "value": value.to_string() }));
                settle_write(&mut op, self.send(request, &[]).await);
                last_read[k] = None;
            }
            self.record(op);
        }
    }

    /// One set client: adds unique elements until the end of the run.
    pub async fn set_client(self: Arc<Self>, process: usize, seed: u64) {
        let mut rng = StdRng::seed_from_u64(seed);
        while Instant::now() < self.until {
            let node = rng.gen_range(0..self.node_addrs.len());
            let value = self.fresh_value();
            let url = format!("http://{}/v1/kv/set/{value:012}", self.node_addrs[node]);
            let mut op = self.invoke(process, node, F::Add, "set".into());
            op.value = Some(value);
            let request = self
                .http
                .put(url)
                .header("Idempotency-Key", format!("add-{value}"))
                .json(&json!({ "value": "1" }));
            settle_write(&mut op, self.send(request, &[]).await);
            self.record(op);
        }
    }

    /// One broker client: reads the undermoon broker's global epoch (`GET /api/v3/epoch`) and
    /// raises it to fresh values (`PUT /api/v3/epoch/{n}`, refused unless `n` is greater)
    /// until the end of the run. Coordinators order metadata by this epoch, so it must only
    /// grow, and reads must see every acknowledged raise.
    pub async fn epoch_client(self: Arc<Self>, process: usize, seed: u64) {
        let mut rng = StdRng::seed_from_u64(seed);
        while Instant::now() < self.until {
            let node = rng.gen_range(0..self.node_addrs.len());
            let base = format!("http://{}/api/v3/epoch", self.node_addrs[node]);
            let mut op = self.invoke(process, node, F::Read, EPOCH_KEY.into());
            if rng.gen_bool(0.5) {
                match self.send(self.http.get(&base), &[]).await {
                    // Epoch 0 is the register's initial (absent) state.
                    Answer::Ok(body, _) => op.value = body.as_i64().filter(|epoch| *epoch != 0),
                    Answer::Fail(e) | Answer::Unknown(e) => {
                        op.outcome = Outcome::Fail;
                        op.error = Some(e);
                    }
                }
            } else {
                let epoch = self.fresh_value();
                op.f = F::Raise;
                op.value = Some(epoch);
                let answer = match self
                    .send(self.http.put(format!("{base}/{epoch}")), &[])
                    .await
                {
                    // undermoon's "try again": the raise may still have been committed.
                    Answer::Fail(e) if e.ends_with("RETRY") => Answer::Unknown(e),
                    answer => answer,
                };
                settle_write(&mut op, answer);
            }
            self.record(op);
        }
    }

    /// The set's final content, read linearizably (page by page) once the cluster has healed.
    pub async fn read_set(&self) -> Result<Vec<i64>, String> {
        let mut elements = Vec::new();
        let mut start = String::from("set/");
        let mut attempt = 0;
        loop {
            let node = &self.node_addrs[attempt % self.node_addrs.len()];
            let mut url =
                reqwest::Url::parse(&format!("http://{node}/v1/kv")).map_err(|e| e.to_string())?;
            url.query_pairs_mut()
                .append_pair("prefix", "set/")
                .append_pair("start", &start)
                .append_pair("limit", "5000");
            let request = self
                .http
                .get(url)
                .basic_auth(cluster::USER, Some(cluster::PASSWORD));
            let page = match request.send().await {
                Ok(response) if response.status().is_success() => {
                    response.json::<Value>().await.map_err(|e| e.to_string())?
                }
                _ => {
                    attempt += 1;
                    if attempt > 60 {
                        return Err("the final read of the set never succeeded".into());
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            let keys: Vec<&str> = page["kvs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|kv| kv["key"].as_str())
                .collect();
            elements.extend(
                keys.iter()
                    .filter_map(|key| key.strip_prefix("set/")?.parse::<i64>().ok()),
            );
            match keys.last() {
                Some(last) if page["more"] == true => start = format!("{last}\0"),
                _ => return Ok(elements),
            }
        }
    }

    /// The store revision, read linearizably.
    pub async fn store_revision(&self) -> Result<u64, String> {
        for attempt in 0..60 {
            let node = &self.node_addrs[attempt % self.node_addrs.len()];
            let request = self
                .http
                .get(format!("http://{node}/v1/kv?prefix=none/&limit=1"))
                .basic_auth(cluster::USER, Some(cluster::PASSWORD));
            if let Ok(response) = request.send().await {
                if response.status().is_success() {
                    let body: Value = response.json().await.map_err(|e| e.to_string())?;
                    return body["revision"]
                        .as_u64()
                        .ok_or("no revision in the answer".into());
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Err("no node answered a linearizable read after the run".into())
    }

    /// Watches every key from `after`, reconnecting to random nodes, until `stop` says so and
    /// the watcher has seen `stop`'s target revision. Returns the revisions seen, in order.
    pub async fn watcher(
        self: Arc<Self>,
        after: u64,
        seed: u64,
        target: Arc<AtomicI64>,
    ) -> Vec<u64> {
        let mut rng = StdRng::seed_from_u64(seed);
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(1))
            .build()
            .expect("HTTP client");
        let mut seen: Vec<u64> = Vec::new();
        let deadline_after_target = Duration::from_secs(60);
        let mut target_set_at: Option<Instant> = None;
        loop {
            let last = seen.last().copied().unwrap_or(after);
            let wanted = target.load(Ordering::Relaxed);
            if wanted >= 0 {
                let set_at = *target_set_at.get_or_insert_with(Instant::now);
                if last >= wanted as u64 || set_at.elapsed() > deadline_after_target {
                    return seen;
                }
            }
            let node = &self.node_addrs[rng.gen_range(0..self.node_addrs.len())];
            let request = http
                .get(format!(
                    "http://{node}/v1/kv?prefix=&watch=true&revision={last}"
                ))
                .basic_auth(cluster::USER, Some(cluster::PASSWORD));
            let Ok(response) = request.send().await else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            if !response.status().is_success() {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            let mut body = response.bytes_stream();
            let mut buffer = Vec::new();
            // Reconnect now and then (and when the node goes quiet) to exercise resumption.
            let session_end = Instant::now() + Duration::from_secs(rng.gen_range(2..8));
            loop {
                let chunk = tokio::time::timeout(Duration::from_secs(3), body.next()).await;
                let Ok(Some(Ok(chunk))) = chunk else {
                    break;
                };
                buffer.extend_from_slice(&chunk);
                while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
                    if let Ok(line) = serde_json::from_slice::<Value>(&buffer[..end]) {
                        if let Some(revision) = line["revision"].as_u64() {
                            seen.push(revision);
                        }
                    }
                    buffer.drain(..=end);
                }
                let wanted = target.load(Ordering::Relaxed);
                if Instant::now() > session_end
                    || (wanted >= 0 && seen.last().copied().unwrap_or(after) >= wanted as u64)
                {
                    break;
                }
            }
        }
    }
}
