//! Test harness: keel clusters of real `keel` processes on loopback, each with its own
//! RocksDB data directory, bootstrapped through the REST API exactly as an operator would.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::sync::atomic::AtomicU32;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use serde_json::json;
use serde_json::Value;

pub const USER: &str = "admin";
pub const PASSWORD: &str = "test-password";

/// Ports for test nodes come from below Linux's ephemeral range (32768 and up), where no
/// outgoing connection takes them, and each is handed out once per test process, so a node
/// killed in one test keeps its port free for its restart while other tests start nodes.
/// Asking the kernel for a free port (binding port 0) gave both away: two tests once got the
/// same port, and a node's join was answered by another test's cluster.
const TEST_PORTS: std::ops::Range<u16> = 12000..32000;

pub fn unused_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Test binaries of other processes start elsewhere in the range.
    let span = u32::from(TEST_PORTS.end - TEST_PORTS.start);
    let start = std::process::id().wrapping_mul(7919) % span;
    loop {
        let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let port = TEST_PORTS.start + offset as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

pub struct KeelProcess {
    pub port: u16,
    pub dir: PathBuf,
    pub extra_args: Vec<String>,
    child: Option<Child>,
}

impl KeelProcess {
    pub fn new(dir: PathBuf, extra_args: &[&str]) -> Self {
        Self {
            port: unused_port(),
            dir,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            child: None,
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn start(&mut self) {
        assert!(self.child.is_none(), "node already running");
        std::fs::create_dir_all(&self.dir).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.with_extension("log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_keel"))
            .arg("serve")
            .arg("--listen")
            .arg(self.addr())
            .arg("--data-dir")
            .arg(&self.dir)
            .arg("--bootstrap")
            .arg("api")
            .args(&self.extra_args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawning keel");
        self.child = Some(child);
    }

    /// kill -9.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGTERM, as a service manager stops a node; waits for the process to exit (at most
    /// `patience`) and answers how long that took, or None if it was still running then (it
    /// is killed).
    pub fn terminate(&mut self, patience: Duration) -> Option<Duration> {
        self.child.as_ref()?;
        let sent = Instant::now();
        self.signal("TERM");
        self.wait_exit(patience).map(|_| sent.elapsed())
    }

    /// Sends `signal` (STOP, CONT...) to the process.
    pub fn signal(&self, signal: &str) {
        let child = self.child.as_ref().expect("node not running");
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    }

    /// Waits (at most `patience`) for the process to exit by itself and answers how it did,
    /// or None if it was still running then (it is killed).
    pub fn wait_exit(&mut self, patience: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let started = Instant::now();
        while started.elapsed() < patience {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        None
    }

    /// Waits for the process to stop by itself with a failure, and for its log to say `why`.
    pub fn fails_saying(&mut self, why: &str) {
        let status = self
            .wait_exit(Duration::from_secs(30))
            .unwrap_or_else(|| panic!("keel kept running; expected it to stop saying {why:?}"));
        assert!(!status.success());
        let log = self.log();
        assert!(log.contains(why), "{log}");
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.with_extension("log")).unwrap_or_default()
    }
}

impl Drop for KeelProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

pub struct Cluster {
    pub nodes: Vec<KeelProcess>,
    pub client: reqwest::Client,
    _dir: tempfile::TempDir,
}

/// The value of series `name` (with its labels, if any) in `/metrics` text.
pub fn metric_value(metrics: &str, name: &str) -> Option<u64> {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// The body of a `join_cluster` bootstrap through `members`, with the test credentials.
pub fn join_body(members: &[String]) -> Value {
    json!({
        "action": "join_cluster",
        "cluster": { "nodes": members },
        "credentials": { "username": USER, "password": PASSWORD }
    })
}

/// Sends `request` and returns the status and the JSON body.
pub async fn send_json(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.expect("request failed");
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl Cluster {
    /// Starts `size` nodes, creates the cluster on the first and joins the others.
    pub async fn start(size: usize, extra_args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut nodes: Vec<KeelProcess> = (1..=size)
            .map(|i| KeelProcess::new(dir.path().join(format!("node{i}")), extra_args))
            .collect();
        for node in &mut nodes {
            node.start();
        }
        let cluster = Self {
            nodes,
            client: client(),
            _dir: dir,
        };
        for i in 0..size {
            cluster.wait_http(i).await;
        }
        let create = json!({
            "action": "create_cluster",
            "cluster": { "name": "test.cluster" },
            "credentials": { "username": USER, "password": PASSWORD }
        });
        cluster.bootstrap(0, "create_cluster", create).await;
        for i in 1..size {
            cluster.join(i).await;
        }
        cluster
    }

    /// Waits until node `i` answers, and checks that the answer is its own: another process on
    /// its port would make every later failure of the test a puzzle.
    pub async fn wait_http(&self, i: usize) {
        let url = self.nodes[i].url("/v1/bootstrap");
        let client = self.client.clone();
        wait_until("the node's HTTP server", Duration::from_secs(20), || {
            let (client, url) = (client.clone(), url.clone());
            async move { client.get(&url).send().await.is_ok() }
        })
        .await;
        // A member shows its paths only to credentials; an idle node takes them all the same.
        let request = self.client.get(&url).basic_auth(USER, Some(PASSWORD));
        let (_, status) = send_json(request).await;
        let own_dir = std::fs::canonicalize(&self.nodes[i].dir).unwrap();
        assert_eq!(
            status["local_node_info"]["persistent_storage_path"],
            json!(own_dir),
            "another process answers on node {i}'s port {}; its log: {}",
            self.nodes[i].port,
            self.nodes[i].log()
        );
    }

    pub async fn bootstrap(&self, i: usize, action: &str, body: Value) {
        let request = self
            .client
            .post(self.nodes[i].url(&format!("/v1/bootstrap/{action}")));
        let (status, answer) = send_json(request.json(&body)).await;
        assert_eq!(status, 200, "{answer}");
        self.wait_bootstrap_completed(i).await;
    }

    pub async fn wait_bootstrap_completed(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (_, status) = send_json(self.client.get(self.nodes[i].url("/v1/bootstrap"))).await;
            match status["bootstrap_status"]["state"].as_str().unwrap() {
                "completed" => return,
                "error" => panic!("bootstrap of node {i} failed: {status}"),
                _ => {}
            }
            assert!(
                Instant::now() < deadline,
                "bootstrap of node {i} did not finish: {status}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Joins node `i` through node 0 (or whichever node is up).
    pub async fn join(&self, i: usize) {
        let members: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(j, n)| *j != i && n.is_running())
            .map(|(_, n)| n.addr())
            .collect();
        self.bootstrap(i, "join_cluster", join_body(&members)).await;
    }

    pub fn get(&self, i: usize, path: &str) -> reqwest::RequestBuilder {
        self.client
            .get(self.nodes[i].url(path))
            .basic_auth(USER, Some(PASSWORD))
    }

    pub fn put(&self, i: usize, path: &str) -> reqwest::RequestBuilder {
        self.client
            .put(self.nodes[i].url(path))
            .basic_auth(USER, Some(PASSWORD))
    }

    pub fn post(&self, i: usize, path: &str) -> reqwest::RequestBuilder {
        self.client
            .post(self.nodes[i].url(path))
            .basic_auth(USER, Some(PASSWORD))
    }

    pub fn delete(&self, i: usize, path: &str) -> reqwest::RequestBuilder {
        self.client
            .delete(self.nodes[i].url(path))
            .basic_auth(USER, Some(PASSWORD))
    }

    pub async fn cluster_info(&self, i: usize) -> Option<Value> {
        let response = self.get(i, "/v1/cluster").send().await.ok()?;
        response.json().await.ok()
    }

    /// Waits until node `i` has applied the log up to `index`.
    pub async fn wait_applied(&self, i: usize, index: u64) {
        wait_until(
            &format!("node {i} to apply up to {index}"),
            Duration::from_secs(60),
            || {
                let info = self.cluster_info(i);
                async move {
                    info.await
                        .and_then(|info| info["applied_index"].as_u64())
                        .is_some_and(|applied| applied >= index)
                }
            },
        )
        .await;
    }

    /// Waits until node `i` has logged `text`.
    pub async fn wait_logged(&self, i: usize, text: &str) {
        let what = format!("node {i} to log {text:?}");
        wait_until(&what, Duration::from_secs(10), || async {
            self.nodes[i].log().contains(text)
        })
        .await;
    }

    /// Node `i`'s `/metrics` text.
    pub async fn metrics(&self, i: usize) -> String {
        let response = self.get(i, "/metrics").send().await.unwrap();
        response.text().await.unwrap()
    }

    /// Kills every node (kill -9) and starts them all again.
    pub async fn kill_and_restart_all(&mut self) {
        for node in &mut self.nodes {
            node.kill();
        }
        for node in &mut self.nodes {
            node.start();
        }
        for i in 0..self.nodes.len() {
            self.wait_http(i).await;
        }
    }

    /// Index (into `nodes`) of the leader, waiting for one.
    pub async fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for (i, node) in self.nodes.iter().enumerate() {
                if !node.is_running() {
                    continue;
                }
                if let Some(info) = self.cluster_info(i).await {
                    if info["this_node"]["role"] == "leader" {
                        return i;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no leader");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// PUTs `key = value` on node `i` and returns the new revision.
    pub async fn put_kv(&self, i: usize, key: &str, value: &str) -> u64 {
        let request = self
            .put(i, &format!("/v1/kv/{key}"))
            .json(&json!({ "value": value }));
        let (status, body) = send_json(request).await;
        assert_eq!(status, 200, "put {key} on node {i}: {body}");
        // The domain's reply leaves a put's value out; the answer must still show it.
        assert_eq!(body["kv"]["key"], key, "{body}");
        assert_eq!(body["kv"]["value"], value, "{body}");
        assert_eq!(body["kv"]["mod_revision"], body["revision"], "{body}");
        body["revision"].as_u64().unwrap()
    }

    /// GETs `key` from node `i` with `consistency`; `None` if absent.
    pub async fn get_kv(&self, i: usize, key: &str, consistency: &str) -> Option<String> {
        let response = self
            .get(i, &format!("/v1/kv/{key}?consistency={consistency}"))
            .send()
            .await
            .unwrap();
        match response.status().as_u16() {
            200 => Some(
                response.json::<Value>().await.unwrap()["value"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            ),
            404 => None,
            status => panic!(
                "get {key} on node {i}: {status} {}",
                response.text().await.unwrap()
            ),
        }
    }
}
