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
        // An empty KEEL_JOIN= says "no join", as an unset one does.
        let join: Vec<String> = pick!(join)
            .unwrap_or_default()
            .into_iter()
            .filter(|member| !member.trim().is_empty())
            .collect();
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
            election_timeout_max: election
                .map_or(defaults.election_timeout_max, |e| e.saturating_mul(2)),
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
        check_range(
            "--worker-threads",
            worker_threads as u64,
            1,
            MAX_WORKER_THREADS,
        )?;
        if raft.snapshot_every == 0 {
            return Err("--snapshot-every must be at least 1".into());
        }
        check_timing(&raft)?;
        let user = pick!(user);
        let password = pick!(password);
        if user.is_some() != password.is_some() {
            return Err("--user and --password go together: set both or neither".into());
        }
        if user.as_deref() == Some("") || password.as_deref() == Some("") {
            return Err(
                "--user and --password must not be empty (an empty KEEL_USER= or \
                        KEEL_PASSWORD= counts as given)"
                    .into(),
            );
        }
        let cluster_name = pick!(cluster_name).unwrap_or_else(|| "keel".into());
        if !crate::domain::cluster::is_valid_name(&cluster_name) {
            return Err("--cluster-name must be 1 to 253 bytes without spaces".into());
        }
        let advertise = match pick!(advertise) {
            Some(advertise) => {
                check_address(&advertise)?;
                advertise
            }
            None if listen.ip().is_unspecified() => {
                return Err(format!(
                    "--listen {listen} is every interface, which other nodes cannot dial: set \
                     --advertise to the host:port they reach this node at"
                ))
            }
            None => listen.to_string(),
        };
        Ok(Settings {
            advertise,
            listen,
            data_dir: pick!(data_dir).unwrap_or_else(|| PathBuf::from("keel-data")),
            bootstrap: if join.is_empty() {
                pick!(bootstrap).unwrap_or(BootstrapMode::Auto)
            } else {
                BootstrapMode::Auto
            },
            join,
            cluster_name,
            user,
            password,
            open_routes,
            worker_threads,
            raft,
        })
    }
}

/// More threads than this is a typo: each costs a stack, and a node needs a handful.
const MAX_WORKER_THREADS: u64 = 1024;

fn check_range(flag: &str, value: u64, min: u64, max: u64) -> Result<(), String> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(format!(
            "{flag} must be between {min} and {max}, not {value}"
        ))
    }
}

/// Raft timings a cluster can run on: below 10 ms a heartbeat is mostly scheduling noise; an
/// election timeout under two heartbeats elects at every late one; above a minute a dead
/// leader goes unnoticed for that long (and the maximum, twice the minimum, must not wrap);
/// a request timeout under 100 ms answers 503 to writes that commit a moment later.
fn check_timing(raft: &keel_raft::RaftConfig) -> Result<(), String> {
    let ms = |d: Duration| d.as_millis().min(u64::MAX as u128) as u64;
    check_range("--heartbeat-ms", ms(raft.heartbeat), 10, 10_000)?;
    check_range(
        "--election-timeout-ms",
        ms(raft.election_timeout_min),
        20,
        60_000,
    )?;
    if raft.election_timeout_min < raft.heartbeat * 2 {
        return Err(format!(
            "--election-timeout-ms ({} ms) must be at least twice --heartbeat-ms ({} ms); three \
             times or more is usual (the defaults are 150 and 50)",
            ms(raft.election_timeout_min),
            ms(raft.heartbeat)
        ));
    }
    check_range(
        "--request-timeout-ms",
        ms(raft.request_timeout),
        100,
        3_600_000,
    )
}

/// An address other nodes dial: host:port with a port other than 0.
fn check_address(addr: &str) -> Result<(), String> {
    let valid = addr.rsplit_once(':').is_some_and(|(host, port)| {
        let ip = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host)
            .parse::<std::net::IpAddr>();
        !host.is_empty()
            && !host.contains(|c: char| c.is_whitespace() || c == '/')
            // IPv6 goes in brackets: [::1]:7799.
            && (!host.contains(':') || host.starts_with('['))
            && ip.map_or(!host.starts_with('['), |ip| !ip.is_unspecified())
            && port.parse::<u16>().is_ok_and(|port| port != 0)
    });
    if valid {
        Ok(())
    } else {
        Err(format!(
            "--advertise {addr:?} is not an address other nodes can dial: give host:port"
        ))
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
        let cases: &[(&[&str], &str)] = &[
            (&["--open-routes", "everything"], "unknown route family"),
            (
                &["--heartbeat-ms", "500", "--election-timeout-ms", "400"],
                "at least twice --heartbeat-ms",
            ),
            (
                &["--heartbeat-ms", "1", "--election-timeout-ms", "2"],
                "--heartbeat-ms must be between 10 and 10000, not 1",
            ),
            (&["--heartbeat-ms", "0"], "--heartbeat-ms must be between"),
            (
                &["--election-timeout-ms", "18446744073709551615"],
                "--election-timeout-ms must be between 20 and 60000",
            ),
            (
                &["--request-timeout-ms", "0"],
                "--request-timeout-ms must be",
            ),
            (
                &["--worker-threads", "0"],
                "--worker-threads must be between 1",
            ),
            (&["--worker-threads", "100000"], "and 1024, not 100000"),
            (
                &["--snapshot-every", "0"],
                "--snapshot-every must be at least 1",
            ),
            (&["--user", "admin"], "--user and --password go together"),
            (&["--password", "pw"], "--user and --password go together"),
            (&["--user", "", "--password", ""], "must not be empty"),
            (&["--advertise", "0.0.0.0:7799"], "not an address"),
            (&["--advertise", "::1:7799"], "not an address"),
            (&["--cluster-name", " "], "--cluster-name must be"),
            (&["--cluster-name", "my cluster"], "without spaces"),
            (&["--advertise", "not an address"], "not an address"),
            (&["--advertise", ""], "not an address"),
            (&["--advertise", "host:0"], "not an address"),
            (&["--listen", "0.0.0.0:7799"], "set --advertise"),
        ];
        for (args, expected) in cases {
            let err = parse(args).resolve().unwrap_err();
            assert!(err.contains(expected), "{args:?}: {err}");
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "listen-address = \"x\"\n").unwrap();
        let err = parse(&["--config", file.to_str().unwrap()])
            .resolve()
            .unwrap_err();
        assert!(err.contains("bad.toml"), "{err}");
    }

    #[test]
    fn an_empty_join_list_is_no_join() {
        let settings = parse(&["--join", ""]).resolve().unwrap();
        assert!(settings.join.is_empty());
        let settings = parse(&["--advertise", "[::1]:7799"]).resolve().unwrap();
        assert_eq!(settings.advertise, "[::1]:7799");
    }

    #[test]
    fn every_interface_serves_with_an_advertised_address() {
        let settings = parse(&[
            "--listen",
            "0.0.0.0:7799",
            "--advertise",
            "node1.example:7799",
        ])
        .resolve()
        .unwrap();
        assert_eq!(settings.advertise, "node1.example:7799");
    }
}
