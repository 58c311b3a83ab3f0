//! Command-line interface and settings.
//!
//! Every setting can come from a flag, a `KEEL_*` environment variable or a TOML file given
//! with `--config` (in that order of precedence), and has a default that makes
//! `keel serve` with no flags a ready single-node cluster on loopback.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use clap::Subcommand;
use clap::ValueEnum;
use serde::Deserialize;

#[derive(Debug, Parser)]
#[command(
    name = "keel",
    version,
    about = "A Raft-replicated control plane for fleets of database clusters"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a keel control node.
    Serve(Box<ServeArgs>),
    /// Drive a keel or etcd cluster with a key-value load and print throughput and latency.
    Bench(crate::bench::BenchArgs),
}

/// How a node that has no cluster yet gets one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootstrapMode {
    /// Create a single-node cluster at once (or join the `--join` targets, if given).
    Auto,
    /// Wait for `POST /v1/bootstrap/create_cluster` or `join_cluster`.
    Api,
}

#[derive(Debug, Clone, Default, clap::Args, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServeArgs {
    /// TOML file with any of these settings (flag names as keys, e.g. `data-dir = "/var/lib/keel"`).
    #[arg(long, env = "KEEL_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Address the HTTP server (REST API and Raft peer traffic) listens on. [default: 127.0.0.1:7799]
    #[arg(long, env = "KEEL_LISTEN")]
    pub listen: Option<SocketAddr>,

    /// Address other nodes and clients reach this node at (host:port). [default: the listen address]
    #[arg(long, env = "KEEL_ADVERTISE")]
    pub advertise: Option<String>,

    /// Directory for the RocksDB store, snapshots and the node's identity. [default: ./keel-data]
    #[arg(long, env = "KEEL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// How a node without a cluster gets one. [default: auto]
    #[arg(long, env = "KEEL_BOOTSTRAP", value_enum)]
    pub bootstrap: Option<BootstrapMode>,

    /// Members (host:port) to join on first start, comma separated; implies --bootstrap auto.
    #[arg(long, env = "KEEL_JOIN", value_delimiter = ',')]
    pub join: Option<Vec<String>>,

    /// Name of the cluster auto-bootstrap creates. [default: keel]
    #[arg(long, env = "KEEL_CLUSTER_NAME")]
    pub cluster_name: Option<String>,

    /// Cluster username for auto-bootstrap (create or join).
    #[arg(long, env = "KEEL_USER")]
    pub user: Option<String>,

    /// Cluster password for auto-bootstrap (create or join).
    #[arg(long, env = "KEEL_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,

    /// Route families served without credentials, comma separated (kv, cluster, metrics,
    /// clusterflux, undermoon).
    #[arg(long, env = "KEEL_OPEN_ROUTES", value_delimiter = ',')]
    pub open_routes: Option<Vec<String>>,

    /// Raft heartbeat interval in milliseconds. [default: 50]
    #[arg(long, env = "KEEL_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u64>,

    /// Minimum election timeout in milliseconds; the maximum is twice this. [default: 150]
    #[arg(long, env = "KEEL_ELECTION_TIMEOUT_MS")]
    pub election_timeout_ms: Option<u64>,

    /// Take a snapshot and purge the log after this many writes (a log entry may carry
    /// several; openraft's count of entries stays as a backstop). [default: 100000]
    #[arg(long, env = "KEEL_SNAPSHOT_EVERY")]
    pub snapshot_every: Option<u64>,

    /// Log entries kept below the latest snapshot, so that a follower that was away for
    /// fewer writes than this catches up from the log instead of by a snapshot. [default: 5000]
    #[arg(long, env = "KEEL_KEEP_LOG_ENTRIES")]
    pub keep_log_entries: Option<u64>,

    /// How long a request may wait for a leader, in milliseconds. [default: 5000]
    #[arg(long, env = "KEEL_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<u64>,

    /// Threads that serve requests and drive Raft. Fewer than the cores suits several nodes
    /// sharing one machine (tests, benchmarks): less switching between threads. With 1,
    /// everything runs on the main thread. [default: the number of cores]
    #[arg(long, env = "KEEL_WORKER_THREADS")]
    pub worker_threads: Option<usize>,

    /// Local IP address for connections to other nodes (multi-homed hosts; the fault suite's
    /// proxies tell nodes apart by it). [default: chosen by the system]
    #[arg(long, env = "KEEL_PEER_SOURCE_IP")]
    pub peer_source_ip: Option<std::net::IpAddr>,
}

/// Settings after flags, environment, file and defaults are merged.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub advertise: String,
    pub data_dir: PathBuf,
    pub bootstrap: BootstrapMode,
    pub join: Vec<String>,
    pub cluster_name: String,
    pub user: Option<String>,
    pub password: Option<String>,
    pub open_routes: Vec<String>,
    pub worker_threads: usize,
    pub raft: keel_raft::RaftConfig,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:7799";

/// Route families `--open-routes` accepts.
pub const ROUTE_FAMILIES: [&str; 5] = ["kv", "cluster", "metrics", "clusterflux", "undermoon"];

impl ServeArgs {
    /// Merges flags and environment (`self`) over the `--config` file over the defaults.
    pub fn resolve(self) -> Result<Settings, String> {
        let file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
                toml::from_str::<ServeArgs>(&text)
                    .map_err(|e| format!("config file {}: {e}", path.display()))?
            }
            None => ServeArgs::default(),
        };
        macro_rules! pick {
            ($field:ident) => {
                self.$field.or(file.$field)
            };
        }
        let listen =
            pick!(listen).unwrap_or_else(|| DEFAULT_LISTEN.parse().expect("default address"));
        let join = pick!(join).unwrap_or_default();
        let open_routes = pick!(open_routes).unwrap_or_default();
        if let Some(bad) = open_routes
            .iter()
            .find(|r| !ROUTE_FAMILIES.contains(&r.as_str()))
        {
            return Err(format!(
                "--open-routes: unknown route family {bad:?}; known: {}",
                ROUTE_FAMILIES.join(", ")
            ));
        }
        let defaults = keel_raft::RaftConfig::default();
        let election = pick!(election_timeout_ms).map(Duration::from_millis);
        let raft = keel_raft::RaftConfig {
            heartbeat: pick!(heartbeat_ms).map_or(defaults.heartbeat, Duration::from_millis),
            election_timeout_min: election.unwrap_or(defaults.election_timeout_min),
            election_timeout_max: election.map_or(defaults.election_timeout_max, |e| e * 2),
            snapshot_every: pick!(snapshot_every).unwrap_or(defaults.snapshot_every),
            keep_logs_after_snapshot: pick!(keep_log_entries)
                .unwrap_or(defaults.keep_logs_after_snapshot),
            request_timeout: pick!(request_timeout_ms)
                .map_or(defaults.request_timeout, Duration::from_millis),
            peer_source_ip: pick!(peer_source_ip),
        };
        let worker_threads = pick!(worker_threads).unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        });
        if worker_threads == 0 {
            return Err("--worker-threads must be at least 1".into());
        }
        if raft.snapshot_every == 0 {
            return Err("--snapshot-every must be at least 1".into());
        }
        if raft.heartbeat >= raft.election_timeout_min {
            return Err("--heartbeat-ms must be smaller than --election-timeout-ms".into());
        }
        Ok(Settings {
            advertise: pick!(advertise).unwrap_or_else(|| listen.to_string()),
            listen,
            data_dir: pick!(data_dir).unwrap_or_else(|| PathBuf::from("keel-data")),
            bootstrap: if join.is_empty() {
                pick!(bootstrap).unwrap_or(BootstrapMode::Auto)
            } else {
                BootstrapMode::Auto
            },
            join,
            cluster_name: pick!(cluster_name).unwrap_or_else(|| "keel".into()),
            user: pick!(user),
            password: pick!(password),
            open_routes,
            worker_threads,
            raft,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> ServeArgs {
        let Command::Serve(args) = Cli::parse_from(["keel", "serve"].iter().chain(args)).command
        else {
            panic!("not serve");
        };
        *args
    }

    #[test]
    fn defaults_make_the_embedded_single_node_cluster() {
        let settings = parse(&[]).resolve().unwrap();
        assert_eq!(settings.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(settings.advertise, DEFAULT_LISTEN);
        assert_eq!(settings.data_dir, PathBuf::from("keel-data"));
        assert_eq!(settings.bootstrap, BootstrapMode::Auto);
        assert!(settings.raft.heartbeat < settings.raft.election_timeout_min);
    }

    #[test]
    fn flags_win_over_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keel.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:7000\"\ndata-dir = \"/var/lib/keel\"\nbootstrap = \"api\"\nelection-timeout-ms = 400\n",
        )
        .unwrap();
        let config = file.to_str().unwrap();
        let settings = parse(&["--config", config, "--listen", "127.0.0.1:7001"])
            .resolve()
            .unwrap();
        assert_eq!(settings.listen.to_string(), "127.0.0.1:7001");
        assert_eq!(settings.data_dir, PathBuf::from("/var/lib/keel"));
        assert_eq!(settings.bootstrap, BootstrapMode::Api);
        assert_eq!(
            settings.raft.election_timeout_max,
            Duration::from_millis(800)
        );
    }

    #[test]
    fn bad_settings_are_refused_with_a_reason() {
        let err = parse(&["--open-routes", "everything"])
            .resolve()
            .unwrap_err();
        assert!(err.contains("unknown route family"), "{err}");
        let err = parse(&["--heartbeat-ms", "500", "--election-timeout-ms", "400"])
            .resolve()
            .unwrap_err();
        assert!(err.contains("smaller"), "{err}");
        let err = parse(&["--worker-threads", "0"]).resolve().unwrap_err();
        assert!(err.contains("at least 1"), "{err}");
        let err = parse(&["--snapshot-every", "0"]).resolve().unwrap_err();
        assert!(err.contains("--snapshot-every must be at least 1"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "listen-address = \"x\"\n").unwrap();
        let err = parse(&["--config", file.to_str().unwrap()])
            .resolve()
            .unwrap_err();
        assert!(err.contains("bad.toml"), "{err}");
    }
}
