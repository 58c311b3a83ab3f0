//! The cluster under test: real `keel` processes, one per network namespace, each with its
//! own RocksDB data directory, bootstrapped through the REST API as an operator would.

use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::time::Duration;
use std::time::Instant;

use serde_json::json;
use serde_json::Value;

use crate::net::Network;

pub const USER: &str = "jepsen";
pub const PASSWORD: &str = "jepsen-password";

/// A clock fault applied to a node when it (re)starts, through libfaketime.
#[derive(Debug, Clone)]
pub enum Clock {
    Skew(i64),
    Drift(f64),
}

pub struct NodeProcess {
    pub n: usize,
    pub uid: u64,
    addr: String,
    dir: PathBuf,
    child: Option<Child>,
    paused: bool,
    pub clock: Option<Clock>,
}

impl NodeProcess {
    pub fn addr(&self) -> String {
        self.addr.clone()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }

    pub fn is_up(&self) -> bool {
        self.child.is_some()
    }

    fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }
}

pub struct Cluster {
    pub nodes: Vec<NodeProcess>,
    /// Per node, the program and arguments that start it on the network under test.
    commands: Vec<(std::ffi::OsString, Vec<std::ffi::OsString>)>,
    pub http: reqwest::Client,
}

impl Cluster {
    pub fn new(size: usize, keel_bin: PathBuf, data: PathBuf, network: &Network) -> Self {
        let nodes = (1..=size)
            .map(|n| NodeProcess {
                n,
                uid: 0,
                addr: network.advertised_addr(n),
                dir: data.join(format!("node{n}")),
                child: None,
                paused: false,
                clock: None,
            })
            .collect();
        Self {
            nodes,
            commands: (1..=size)
                .map(|n| {
                    let command = network.keel_command(n, &keel_bin);
                    let args = command.get_args().map(|a| a.to_os_string()).collect();
                    (command.get_program().to_os_string(), args)
                })
                .collect(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("HTTP client"),
        }
    }

    pub fn start(&mut self, i: usize) -> Result<(), String> {
        let node = &mut self.nodes[i];
        if node.child.is_some() {
            return Ok(());
        }
        std::fs::create_dir_all(&node.dir).map_err(|e| e.to_string())?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(node.dir.with_extension("log"))
            .map_err(|e| e.to_string())?;
        let (program, args) = &self.commands[i];
        let mut command = Command::new(program);
        command
            .args(args)
            .args(["--bootstrap", "api"])
            // Snapshots (and installs on lagging nodes) every few thousand entries, so a short
            // run still takes them under faults.
            .args(["--snapshot-every", "2000"])
            .arg("--data-dir")
            .arg(&node.dir)
            .env("KEEL_LOG", "info,openraft=warn")
            .stdout(Stdio::null())
            .stderr(log);
        if let Some(clock) = &node.clock {
            command
                .env(
                    "LD_PRELOAD",
                    "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1",
                )
                .env("FAKETIME_NO_CACHE", "1")
                .env(
                    "FAKETIME",
                    match clock {
                        Clock::Skew(secs) => format!("{secs:+}s"),
                        Clock::Drift(rate) => format!("+0 x{rate}"),
                    },
                );
        }
        node.child = Some(
            command
                .spawn()
                .map_err(|e| format!("starting node {}: {e}", node.n))?,
        );
        node.paused = false;
        Ok(())
    }

    /// kill -9.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.nodes[i].paused = false;
    }

    pub fn pause(&mut self, i: usize) {
        if let Some(pid) = self.nodes[i].pid() {
            // SAFETY: plain signal to our own child process.
            unsafe { libc::kill(pid, libc::SIGSTOP) };
            self.nodes[i].paused = true;
        }
    }

    pub fn resume(&mut self, i: usize) {
        if let Some(pid) = self.nodes[i].pid() {
            // SAFETY: plain signal to our own child process.
            unsafe { libc::kill(pid, libc::SIGCONT) };
        }
        self.nodes[i].paused = false;
    }

    pub fn resume_all(&mut self) {
        for i in 0..self.nodes.len() {
            if self.nodes[i].paused {
                self.resume(i);
            }
        }
    }

    pub fn stop_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.resume(i);
            self.kill(i);
        }
    }

    pub fn wipe(&mut self, i: usize) {
        let _ = std::fs::remove_dir_all(&self.nodes[i].dir);
    }

    pub fn request(
        &self,
        method: reqwest::Method,
        i: usize,
        path: &str,
    ) -> reqwest::RequestBuilder {
        self.http
            .request(method, self.nodes[i].url(path))
            .basic_auth(USER, Some(PASSWORD))
    }

    async fn bootstrap_state(&self, i: usize) -> Option<Value> {
        let response = self
            .http
            .get(self.nodes[i].url("/v1/bootstrap"))
            .send()
            .await
            .ok()?;
        response.json().await.ok()
    }

    pub async fn wait_http(&self, i: usize, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        while self.bootstrap_state(i).await.is_none() {
            if Instant::now() > deadline {
                return Err(format!("node {} did not start serving", i + 1));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    async fn bootstrap(&mut self, i: usize, action: &str, body: Value) -> Result<(), String> {
        let response = self
            .http
            .post(self.nodes[i].url(&format!("/v1/bootstrap/{action}")))
            .json(&body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!(
                "{action} on node {}: {}",
                i + 1,
                response.text().await.unwrap_or_default()
            ));
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let status = self.bootstrap_state(i).await.unwrap_or(Value::Null);
            match status["bootstrap_status"]["state"].as_str() {
                Some("completed") => {
                    self.nodes[i].uid = status["local_node_info"]["uid"].as_u64().unwrap_or(0);
                    return Ok(());
                }
                Some("error") => {
                    return Err(format!("{action} on node {} failed: {status}", i + 1))
                }
                _ if Instant::now() > deadline => {
                    return Err(format!("{action} on node {} timed out", i + 1))
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Starts every node and forms the cluster.
    pub async fn form(&mut self) -> Result<(), String> {
        for i in 0..self.nodes.len() {
            self.start(i)?;
        }
        for i in 0..self.nodes.len() {
            self.wait_http(i, Duration::from_secs(30)).await?;
        }
        let create = json!({
            "cluster": { "name": "jepsen" },
            "credentials": { "username": USER, "password": PASSWORD }
        });
        self.bootstrap(0, "create_cluster", create).await?;
        for i in 1..self.nodes.len() {
            self.join(i).await?;
        }
        Ok(())
    }

    /// Joins node `i` (with a fresh data directory) through the other running nodes.
    pub async fn join(&mut self, i: usize) -> Result<(), String> {
        let members: Vec<String> = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(j, n)| *j != i && n.is_up())
            .map(|(_, n)| n.addr())
            .collect();
        let join = json!({
            "cluster": { "nodes": members },
            "credentials": { "username": USER, "password": PASSWORD }
        });
        self.bootstrap(i, "join_cluster", join).await
    }

    /// Index of the node that currently leads, as any running node reports it.
    pub async fn leader(&self) -> Option<usize> {
        for (i, node) in self.nodes.iter().enumerate() {
            if !node.is_up() || node.paused {
                continue;
            }
            let Ok(response) = self
                .request(reqwest::Method::GET, i, "/v1/cluster")
                .send()
                .await
            else {
                continue;
            };
            let Ok(info) = response.json::<Value>().await else {
                continue;
            };
            if let Some(uid) = info["leader"].as_u64() {
                return self.nodes.iter().position(|n| n.uid == uid);
            }
        }
        None
    }

    /// Removes node `i` from the membership through another node.
    pub async fn remove(&self, i: usize) -> Result<(), String> {
        let uid = self.nodes[i].uid;
        for (j, node) in self.nodes.iter().enumerate() {
            if j == i || !node.is_up() || node.paused {
                continue;
            }
            let response = self
                .request(
                    reqwest::Method::POST,
                    j,
                    &format!("/v1/nodes/{uid}/actions/remove"),
                )
                .timeout(Duration::from_secs(30))
                .send()
                .await;
            if let Ok(response) = response {
                if response.status().is_success() {
                    return Ok(());
                }
            }
        }
        Err(format!("could not remove node {}", i + 1))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}
