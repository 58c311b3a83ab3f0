//! The network the cluster under test runs on.
//!
//! With root, [`Namespaces`]: one Linux network namespace per node, each with its own address
//! on a private bridge, so that partitions and packet loss cut real links. The harness (the
//! clients) sits on the bridge in the host namespace at [`HARNESS_IP`]; faults never touch
//! its traffic, only node-to-node links. Faults are iptables rules inside the node
//! namespaces (this kernel has no netem, so there is no delay or jitter). Everything is
//! removed by [`Namespaces::teardown`], which also runs on drop, and before every run.
//!
//! Without root, the userspace proxies of [`crate::proxy`], which also give delay and jitter.

use std::process::Command;
use std::time::Duration;

use crate::proxy;
use crate::proxy::Proxies;

/// Where the cluster's nodes live and how faults reach their links.
pub enum Network {
    Namespaces(Namespaces),
    Proxies(Proxies),
}

impl Network {
    /// Namespaces when running as root, proxies otherwise (or as `mode` says).
    pub async fn create(nodes: usize, mode: &str) -> Result<Self, String> {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        match mode {
            "netns" if !root => Err("--net netns needs root".into()),
            "netns" => Ok(Self::Namespaces(Namespaces::create(nodes)?)),
            "auto" if root => Ok(Self::Namespaces(Namespaces::create(nodes)?)),
            "auto" | "proxy" => Ok(Self::Proxies(Proxies::start(nodes).await?)),
            other => Err(format!("--net {other:?}: use auto, netns or proxy")),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Network::Namespaces(_) => "network namespaces + iptables",
            Network::Proxies(_) => "userspace TCP proxies",
        }
    }

    /// The address node `n` (1-based) serves on, as clients and peers reach it.
    pub fn advertised_addr(&self, n: usize) -> String {
        match self {
            Network::Namespaces(_) => format!("{}:7799", node_ip(n)),
            Network::Proxies(_) => proxy::advertised_addr(n),
        }
    }

    /// The command that starts `keel serve` for node `n`, with its addresses.
    pub fn keel_command(&self, n: usize, keel_bin: &std::path::Path) -> Command {
        match self {
            Network::Namespaces(_) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", &namespace(n)]).arg(keel_bin);
                command.args(["serve", "--listen", &self.advertised_addr(n)]);
                command
            }
            Network::Proxies(_) => {
                let mut command = Command::new(keel_bin);
                command.args(["serve", "--listen", &proxy::listen_addr(n)]);
                command.args(["--advertise", &self.advertised_addr(n)]);
                command.args(["--peer-source-ip", &proxy::source_ip(n).to_string()]);
                command
            }
        }
    }

    pub fn partition(&self, a: &[usize], b: &[usize]) -> Result<(), String> {
        match self {
            Network::Namespaces(ns) => ns.partition(a, b),
            Network::Proxies(p) => {
                p.partition(a, b);
                Ok(())
            }
        }
    }

    pub fn lose_packets(&self, percent: u32) -> Result<(), String> {
        match self {
            Network::Namespaces(ns) => ns.lose_packets(percent),
            Network::Proxies(p) => {
                p.lose_packets(percent);
                Ok(())
            }
        }
    }

    pub fn delay(&self, latency: Duration, jitter: Duration) -> Result<(), String> {
        match self {
            Network::Namespaces(_) => {
                Err("this kernel has no netem: delay needs --net proxy".into())
            }
            Network::Proxies(p) => {
                p.delay(latency, jitter);
                Ok(())
            }
        }
    }

    pub fn heal(&self) -> Result<(), String> {
        match self {
            Network::Namespaces(ns) => ns.heal(),
            Network::Proxies(p) => {
                p.heal();
                Ok(())
            }
        }
    }
}

/// The harness's address on the bridge.
pub const HARNESS_IP: &str = "10.77.0.254";
const SUBNET: &str = "10.77.0";
const BRIDGE: &str = "kf-br0";

fn run(args: &[&str]) -> Result<(), String> {
    let output = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Node `n`'s (1-based) namespace, address and interface names.
pub fn namespace(n: usize) -> String {
    format!("kf-n{n}")
}

pub fn node_ip(n: usize) -> String {
    format!("{SUBNET}.{n}")
}

pub struct Namespaces {
    nodes: usize,
}

impl Namespaces {
    /// Removes whatever an earlier run left behind.
    pub fn teardown_leftovers(max_nodes: usize) {
        for n in 1..=max_nodes {
            let _ = run(&["ip", "netns", "del", &namespace(n)]);
            let _ = run(&["ip", "link", "del", &format!("kf-v{n}")]);
        }
        let _ = run(&["ip", "link", "del", BRIDGE]);
    }

    pub fn create(nodes: usize) -> Result<Self, String> {
        Self::teardown_leftovers(nodes.max(5));
        run(&["ip", "link", "add", BRIDGE, "type", "bridge"])?;
        run(&[
            "ip",
            "addr",
            "add",
            &format!("{HARNESS_IP}/24"),
            "dev",
            BRIDGE,
        ])?;
        run(&["ip", "link", "set", BRIDGE, "up"])?;
        let network = Self { nodes };
        for n in 1..=nodes {
            let ns = namespace(n);
            let host_side = format!("kf-v{n}");
            let node_side = format!("kf-e{n}");
            run(&["ip", "netns", "add", &ns])?;
            run(&[
                "ip", "link", "add", &host_side, "type", "veth", "peer", "name", &node_side,
            ])?;
            run(&["ip", "link", "set", &node_side, "netns", &ns])?;
            run(&["ip", "link", "set", &host_side, "master", BRIDGE])?;
            run(&["ip", "link", "set", &host_side, "up"])?;
            run(&[
                "ip",
                "netns",
                "exec",
                &ns,
                "ip",
                "addr",
                "add",
                &format!("{}/24", node_ip(n)),
                "dev",
                &node_side,
            ])?;
            run(&[
                "ip", "netns", "exec", &ns, "ip", "link", "set", &node_side, "up",
            ])?;
            run(&["ip", "netns", "exec", &ns, "ip", "link", "set", "lo", "up"])?;
        }
        Ok(network)
    }

    fn iptables(&self, n: usize, rule: &[&str]) -> Result<(), String> {
        let ns = namespace(n);
        let mut args = vec!["ip", "netns", "exec", &ns, "iptables", "-w"];
        args.extend_from_slice(rule);
        run(&args)
    }

    /// Cuts every link between a node of `a` and a node of `b` (both directions).
    pub fn partition(&self, a: &[usize], b: &[usize]) -> Result<(), String> {
        for &x in a {
            for &y in b {
                self.iptables(x, &["-A", "INPUT", "-s", &node_ip(y), "-j", "DROP"])?;
                self.iptables(y, &["-A", "INPUT", "-s", &node_ip(x), "-j", "DROP"])?;
            }
        }
        Ok(())
    }

    /// Drops `percent` of the packets between nodes (not those of the harness).
    pub fn lose_packets(&self, percent: u32) -> Result<(), String> {
        let probability = format!("{:.2}", f64::from(percent) / 100.0);
        let subnet = format!("{SUBNET}.0/24");
        for n in 1..=self.nodes {
            // The harness's own traffic is accepted first, so only node links lose packets.
            self.iptables(n, &["-A", "INPUT", "-s", HARNESS_IP, "-j", "ACCEPT"])?;
            let drop = [
                "-m",
                "statistic",
                "--mode",
                "random",
                "--probability",
                &probability,
                "-j",
                "DROP",
            ];
            let rule: Vec<&str> = ["-A", "INPUT", "-s", &subnet]
                .into_iter()
                .chain(drop)
                .collect();
            self.iptables(n, &rule)?;
        }
        Ok(())
    }

    /// Removes every fault rule.
    pub fn heal(&self) -> Result<(), String> {
        for n in 1..=self.nodes {
            self.iptables(n, &["-F", "INPUT"])?;
        }
        Ok(())
    }

    pub fn teardown(&self) {
        Self::teardown_leftovers(self.nodes);
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        self.teardown();
    }
}
