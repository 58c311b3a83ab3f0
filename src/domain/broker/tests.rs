//! Data-driven tests of the broker: each file in `testdata/` is a script of operations and
//! queries, each followed by its expected output (`> ` lines). After every operation the
//! runner also checks the invariants the broker promises: the store is consistent, no chunk
//! has both proxies on one host, the epoch never goes down and no cluster is ahead of it, and
//! a refused operation changed nothing.
//!
//! `KEEL_UPDATE_GOLDEN=1 cargo test -p keel broker` rewrites the expected output; review the
//! diff before committing it.

use std::fmt::Write as _;
use std::path::Path;

use super::consistency::check_consistency;
use super::consistency::check_dump;
use super::model::MetaStore;
use super::model::DUMP_VERSION;
use super::slots::MigrationMeta;
use super::slots::SlotRange;
use super::slots::SlotRangeTag;
use super::state::Answer;
use super::state::Broker;
use super::state::Op;
use super::view;
use super::view::Node;
use super::view::Role;

struct Runner {
    broker: Broker,
    now: i64,
    last_commit: Option<(String, SlotRange)>,
}

fn ranges(slot_range: &SlotRange) -> String {
    slot_range
        .range_list
        .0
        .iter()
        .map(|r| {
            if r.0 == r.1 {
                r.0.to_string()
            } else {
                format!("{}-{}", r.0, r.1)
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn render_slots(slots: &[SlotRange]) -> String {
    slots
        .iter()
        .map(|s| match &s.tag {
            SlotRangeTag::None => ranges(s),
            SlotRangeTag::Migrating(m) => {
                format!("{}>{}@{}", ranges(s), m.dst_node_address, m.epoch)
            }
            SlotRangeTag::Importing(m) => {
                format!("{}<{}@{}", ranges(s), m.src_node_address, m.epoch)
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn render_node(node: &Node) -> String {
    match node.repl.role {
        Role::Master => format!(
            "{} {} master {}",
            node.proxy_address,
            node.address,
            render_slots(&node.slots)
        )
        .trim_end()
        .to_string(),
        Role::Replica => format!(
            "{} {} replica of {}",
            node.proxy_address,
            node.address,
            node.repl
                .peers
                .iter()
                .map(|p| p.node_address.as_str())
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}

fn arg<'a>(args: &'a [&str], i: usize) -> &'a str {
    args.get(i)
        .copied()
        .unwrap_or_else(|| panic!("missing argument {i}"))
}

fn number(text: &str) -> u64 {
    text.parse()
        .unwrap_or_else(|_| panic!("{text:?} is not a number"))
}

fn option<'a>(args: &'a [&str], key: &str) -> Option<&'a str> {
    args.iter()
        .find_map(|a| a.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
}

impl Runner {
    fn op(&mut self, op: Op) -> String {
        let before = self.broker.clone();
        match self.broker.execute(self.now, op) {
            Ok(answer) => {
                self.check_invariants(&before);
                match answer {
                    Answer::Done => "ok".into(),
                    Answer::Nodes(nodes) => {
                        let mut out = String::from("added:");
                        for node in nodes {
                            write!(out, "\n{}", render_node(&node)).unwrap();
                        }
                        out
                    }
                    Answer::Proxy(Some(proxy)) => format!("replaced by {}", proxy.address),
                    Answer::Proxy(None) => "no replacement".into(),
                    Answer::ScaledOut { proxies, epoch } => {
                        format!(
                            "scaled out; wait for {} proxies at epoch {epoch}",
                            proxies.len()
                        )
                    }
                }
            }
            Err(error) => {
                assert_eq!(before, self.broker, "a refused operation changed the state");
                format!("error {}", error.code())
            }
        }
    }

    fn check_invariants(&self, before: &Broker) {
        let store = &self.broker.store;
        check_consistency(store).unwrap_or_else(|e| panic!("inconsistent: {e}"));
        assert!(
            store.global_epoch >= before.store.global_epoch,
            "epoch went down"
        );
        for cluster in store.clusters.values() {
            assert!(
                cluster.epoch <= store.global_epoch,
                "{} ahead",
                cluster.name
            );
            if let Some(old) = before.store.clusters.get(&cluster.name) {
                assert!(
                    cluster.epoch >= old.epoch,
                    "{} epoch went down",
                    cluster.name
                );
                if old != cluster {
                    assert!(
                        cluster.epoch > old.epoch,
                        "{} changed unstamped",
                        cluster.name
                    );
                }
            }
            for chunk in &cluster.chunks {
                assert_ne!(chunk.hosts[0], chunk.hosts[1], "a chunk on one host");
            }
        }
    }

    fn cluster_node(&self, name: &str, index: &str) -> String {
        let cluster = &self.broker.store.clusters[name];
        view::cluster(cluster).nodes[number(index) as usize]
            .proxy_address
            .clone()
    }

    fn commit(&mut self, name: &str, all: bool) -> String {
        let Some(cluster) = self.broker.store.clusters.get(name) else {
            return "error CLUSTER_NOT_FOUND".into();
        };
        let tasks: Vec<SlotRange> = view::cluster(cluster)
            .nodes
            .into_iter()
            .flat_map(|n| n.slots)
            .filter(|s| matches!(s.tag, SlotRangeTag::Migrating(_)))
            .collect();
        let count = if all { tasks.len() } else { tasks.len().min(1) };
        let mut out = Vec::new();
        for slot_range in tasks.into_iter().take(count) {
            self.last_commit = Some((name.to_string(), slot_range.clone()));
            out.push(self.op(Op::CommitMigration {
                name: name.to_string(),
                slot_range,
            }));
        }
        format!("committed {count}: {}", out.join(", "))
    }

    fn run(&mut self, line: &str) -> String {
        let words: Vec<&str> = line.split_whitespace().collect();
        let (verb, args) = (words[0], &words[1..]);
        let name = || arg(args, 0).to_string();
        let count = |i| number(arg(args, i)) as usize;
        match verb {
            "time" => {
                self.now = number(arg(args, 0)) as i64;
                "ok".into()
            }
            "settings" => self.op(Op::Configure {
                replica_addresses: None,
                failure_ttl: option(args, "failure_ttl").map(number),
                failure_quorum: option(args, "failure_quorum").map(number),
            }),
            "proxies" => {
                let hosts = number(option(args, "hosts").expect("hosts=")) as usize;
                let per_host = number(option(args, "per_host").expect("per_host=")) as usize;
                let mut results = Vec::new();
                for host in 1..=hosts {
                    for i in 1..=per_host {
                        results.push(self.op(Op::AddProxy {
                            address: format!("127.0.0.{host}:7{i:03}"),
                            nodes: [
                                format!("127.0.0.{host}:6{:03}", 2 * i),
                                format!("127.0.0.{host}:6{:03}", 2 * i + 1),
                            ],
                            host: None,
                        }));
                    }
                }
                results.dedup();
                results.join(", ")
            }
            "add_proxy" => self.op(Op::AddProxy {
                address: name(),
                nodes: [arg(args, 1).to_string(), arg(args, 2).to_string()],
                host: option(args, "host").map(str::to_string),
            }),
            "remove_proxy" => self.op(Op::RemoveProxy { address: name() }),
            "create" => self.op(Op::CreateCluster {
                name: name(),
                node_number: count(1),
            }),
            "remove" => self.op(Op::RemoveCluster { name: name() }),
            "add_nodes" => self.op(Op::AddNodes {
                name: name(),
                node_number: count(1),
            }),
            "grow" => self.op(Op::GrowTo {
                name: name(),
                node_number: count(1),
            }),
            "remove_free" => self.op(Op::RemoveFreeNodes { name: name() }),
            "expand" => self.op(Op::Expand { name: name() }),
            "shrink" => self.op(Op::Shrink {
                name: name(),
                node_number: count(1),
            }),
            "auto" => self.op(Op::AutoScale {
                name: name(),
                node_number: count(1),
            }),
            "commit" => self.commit(arg(args, 0), true),
            "commit_one" => self.commit(arg(args, 0), false),
            "commit_again" => {
                let (name, slot_range) = self.last_commit.clone().expect("an earlier commit");
                self.op(Op::CommitMigration { name, slot_range })
            }
            "config" => self.op(Op::ChangeConfig {
                name: name(),
                changes: args[1..]
                    .iter()
                    .map(|kv| {
                        let (k, v) = kv.split_once('=').expect("key=value");
                        (k.to_string(), v.to_string())
                    })
                    .collect(),
            }),
            "balance" => self.op(Op::BalanceMasters { name: name() }),
            "report" => self.op(Op::ReportFailure {
                address: name(),
                reporter: arg(args, 1).to_string(),
            }),
            "failover" => self.op(Op::Failover { address: name() }),
            "failover_node" => {
                let address = self.cluster_node(arg(args, 0), arg(args, 1));
                format!(
                    "{address}: {}",
                    self.op(Op::Failover {
                        address: address.clone()
                    })
                )
            }
            "bump" => self.op(Op::BumpEpoch {
                epoch: number(arg(args, 0)),
            }),
            "recover" => self.op(Op::RecoverEpoch {
                at_least: number(arg(args, 0)),
            }),
            "restore_dump" => {
                // A dump through JSON, as `GET /metadata` then `PUT /metadata` would move it.
                let json = serde_json::to_string(&self.broker.store).unwrap();
                let mut store: MetaStore = serde_json::from_str(&json).unwrap();
                if let Some(version) = option(args, "version") {
                    store.version = version.to_string();
                }
                if let Some(epoch) = option(args, "epoch") {
                    store.global_epoch = number(epoch);
                }
                check_dump(&store).unwrap_or_else(|e| panic!("keel's own dump refused: {e}"));
                self.op(Op::Restore {
                    store: Box::new(store),
                })
            }
            "epoch" => self.broker.store.global_epoch.to_string(),
            "cluster" => match self.broker.store.clusters.get(arg(args, 0)) {
                None => "null".into(),
                Some(cluster) => {
                    let cluster = view::cluster(cluster);
                    let mut out = format!("epoch {}", cluster.epoch);
                    for node in &cluster.nodes {
                        write!(out, "\n{}", render_node(node)).unwrap();
                    }
                    out
                }
            },
            "info" => match self.broker.store.clusters.get(arg(args, 0)) {
                None => "null".into(),
                Some(cluster) => serde_json::to_string(&view::cluster_info(cluster)).unwrap(),
            },
            "proxy" => match view::proxy(&self.broker.store, arg(args, 0)) {
                None => "null".into(),
                Some(proxy) => {
                    let mut out = format!(
                        "cluster {} epoch {}",
                        proxy.cluster_name.as_deref().unwrap_or("-"),
                        proxy.epoch
                    );
                    for node in &proxy.nodes {
                        write!(out, "\n{}", render_node(node)).unwrap();
                    }
                    for peer in &proxy.peers {
                        write!(
                            out,
                            "\npeer {} {}",
                            peer.proxy_address,
                            render_slots(&peer.slots)
                        )
                        .unwrap();
                    }
                    out
                }
            },
            "failures" => format!("{:?}", self.broker.failures(self.broker.now(self.now))),
            "failed" => format!("{:?}", self.broker.store.failed_proxies),
            "hosts_cannot_fail" => format!(
                "{:?}",
                self.broker.hosts_cannot_fail(self.broker.now(self.now))
            ),
            "links" => {
                let mut links = std::collections::BTreeMap::new();
                for chunk in self.broker.store.clusters.values().flat_map(|c| &c.chunks) {
                    let mut pair = chunk.hosts.clone();
                    pair.sort();
                    *links.entry(pair.join("-")).or_insert(0) += 1;
                }
                links
                    .iter()
                    .map(|(pair, n)| format!("{pair}:{n}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            }
            other => panic!("unknown command {other:?}"),
        }
    }
}

fn run_script(path: &Path) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut runner = Runner {
        broker: Broker::default(),
        now: 1_000_000,
        last_commit: None,
    };
    let mut rendered = String::new();
    for line in text.lines() {
        if line.starts_with('>') {
            continue;
        }
        rendered.push_str(line);
        rendered.push('\n');
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        for out in runner.run(trimmed).lines() {
            writeln!(rendered, "> {out}").unwrap();
        }
    }
    if std::env::var_os("KEEL_UPDATE_GOLDEN").is_some() {
        std::fs::write(path, &rendered).unwrap();
    } else {
        assert_eq!(
            text,
            rendered,
            "{} differs from its expected output (KEEL_UPDATE_GOLDEN=1 rewrites it)",
            path.display()
        );
    }
}

#[test]
fn scripts() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/domain/broker/testdata");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "test"))
        .collect();
    paths.sort();
    assert!(!paths.is_empty());
    for path in paths {
        run_script(&path);
    }
}

#[test]
fn dump_has_undermoon_shape() {
    let mut broker = Broker::default();
    broker
        .execute(
            0,
            Op::AddProxy {
                address: "127.0.0.1:7000".into(),
                nodes: ["127.0.0.1:6000".into(), "127.0.0.1:6001".into()],
                host: None,
            },
        )
        .unwrap();
    let dump = serde_json::to_value(&broker.store).unwrap();
    assert_eq!(dump["version"], DUMP_VERSION);
    assert_eq!(dump["global_epoch"], 1);
    assert_eq!(
        dump["all_proxies"]["127.0.0.1:7000"]["node_addresses"][1],
        "127.0.0.1:6001"
    );
    assert_eq!(dump["failed_proxies"], serde_json::json!([]));
}

/// A dump as undermoon's memory broker writes it (field for field from its `MetaStore`), with
/// a failed proxy and a report of one that are not registered, as undermoon keeps them.
const UNDERMOON_DUMP: &str = r#"{
        "version": "mem-broker-0.2",
        "global_epoch": 9,
        "clusters": {"c1": {"epoch": 9, "name": "c1", "config": {"compression_strategy": "disabled",
            "migration_config": {"max_migration_time": 10800, "max_blocking_time": 10000, "scan_interval": 500, "scan_count": 16}},
            "chunks": [{"role_position": "Normal",
                "stable_slots": [{"range_list": [[0, 8191]], "tag": "None"}, {"range_list": [[8192, 16383]], "tag": "None"}],
                "migrating_slots": [[], []],
                "proxy_addresses": ["127.0.0.1:7001", "127.0.0.2:7001"],
                "hosts": ["127.0.0.1", "127.0.0.2"],
                "node_addresses": ["127.0.0.1:6001", "127.0.0.1:6002", "127.0.0.2:6001", "127.0.0.2:6002"]}]}},
        "all_proxies": {
            "127.0.0.1:7001": {"proxy_address": "127.0.0.1:7001", "node_addresses": ["127.0.0.1:6001", "127.0.0.1:6002"], "host": "127.0.0.1", "index": 0, "cluster": "c1"},
            "127.0.0.2:7001": {"proxy_address": "127.0.0.2:7001", "node_addresses": ["127.0.0.2:6001", "127.0.0.2:6002"], "host": "127.0.0.2", "index": 0, "cluster": "c1"},
            "127.0.0.3:7001": {"proxy_address": "127.0.0.3:7001", "node_addresses": ["127.0.0.3:6001", "127.0.0.3:6002"], "host": "127.0.0.3", "index": 0, "cluster": null}},
        "failed_proxies": ["127.0.0.3:7001", "10.9.9.9:7001"],
        "failures": {"127.0.0.3:7001": {"coordinator": 1700000000}, "10.8.8.8:7001": {"coordinator": 1700000000}},
        "enable_ordered_proxy": false
    }"#;

/// undermoon's dump restores.
#[test]
fn an_undermoon_dump_restores() {
    let store: MetaStore = serde_json::from_str(UNDERMOON_DUMP).unwrap();
    let mut broker = Broker::default();
    broker
        .execute(
            0,
            Op::Restore {
                store: Box::new(store),
            },
        )
        .unwrap();
    assert_eq!(broker.store.global_epoch, 10);
    let cluster = view::cluster(&broker.store.clusters["c1"]);
    assert_eq!(cluster.epoch, 10);
    assert_eq!(cluster.nodes[2].address, "127.0.0.2:6001");
    assert_eq!(cluster.nodes[2].repl.role, Role::Master);
    assert!(broker.store.failed_proxies.contains("127.0.0.3:7001"));
    // Reports of proxies that are not registered are dropped, as keel drops such reports.
    assert_eq!(
        broker.store.failed_proxies,
        ["127.0.0.3:7001".to_string()].into()
    );
    assert_eq!(
        broker.store.failures.keys().collect::<Vec<_>>(),
        ["127.0.0.3:7001"]
    );
}

/// What a client's dump must hold beyond the store's invariants is checked before it is
/// proposed: undermoon's own dump passes, and each rule refuses a dump that breaks it.
#[test]
fn a_dump_is_checked_before_it_is_proposed() {
    let undermoon: MetaStore = serde_json::from_str(UNDERMOON_DUMP).unwrap();
    check_dump(&undermoon).unwrap();
    let broken = |change: fn(&mut MetaStore)| {
        let mut store = undermoon.clone();
        change(&mut store);
        check_dump(&store).unwrap_err()
    };
    let why = broken(|s| {
        let chunk = &mut s.clusters.get_mut("c1").unwrap().chunks[0];
        chunk.stable_slots[0].as_mut().unwrap().tag = SlotRangeTag::Migrating(MigrationMeta {
            epoch: 1,
            src_proxy_address: "127.0.0.1:7001".into(),
            src_node_address: "127.0.0.1:6001".into(),
            dst_proxy_address: "127.0.0.2:7001".into(),
            dst_node_address: "127.0.0.2:6001".into(),
        });
    });
    assert!(why.contains("stable slots tagged"), "{why}");
    let why = broken(|s| s.all_proxies.get_mut("127.0.0.3:7001").unwrap().host = "no host".into());
    assert!(why.contains("127.0.0.3:7001"), "{why}");
}
