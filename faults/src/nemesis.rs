//! The nemesis: faults injected on a seeded schedule while the workload runs.
//!
//! Each cycle picks one fault from the enabled families (and, one cycle in three, a second
//! one from another family to combine with it: a partition during packet loss, a pause while
//! a node is down), holds them for a while, heals them and lets the cluster recover before
//! the next. Every fault window is recorded so the report can shade it behind the latencies.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;
use serde::Serialize;

use crate::cluster::Clock;
use crate::cluster::Cluster;
use crate::net::Network;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    KillLeader,
    KillOne,
    KillMajority,
    PauseLeader,
    PauseOne,
    PartitionLeader,
    PartitionHalves,
    PartitionBridge,
    PacketLoss,
    Delay,
    ClockSkew,
    ClockDrift,
    Membership,
}

/// The fault families `--nemesis` accepts, and what each enables.
pub const FAMILIES: [(&str, &[Fault]); 7] = [
    (
        "kill",
        &[Fault::KillLeader, Fault::KillOne, Fault::KillMajority],
    ),
    ("pause", &[Fault::PauseLeader, Fault::PauseOne]),
    (
        "partition",
        &[
            Fault::PartitionLeader,
            Fault::PartitionHalves,
            Fault::PartitionBridge,
        ],
    ),
    ("loss", &[Fault::PacketLoss]),
    ("delay", &[Fault::Delay]),
    ("clock", &[Fault::ClockSkew, Fault::ClockDrift]),
    ("membership", &[Fault::Membership]),
];

pub fn parse_families(names: &[String]) -> Result<Vec<Fault>, String> {
    let mut faults = Vec::new();
    for name in names {
        if name == "all" {
            // Delay needs the proxy network; it is asked for by name.
            faults.extend(
                FAMILIES
                    .iter()
                    .filter(|(family, _)| *family != "delay")
                    .flat_map(|(_, f)| f.iter().copied()),
            );
            continue;
        }
        let (_, family) = FAMILIES
            .iter()
            .find(|(family, _)| family == name)
            .ok_or_else(|| format!("unknown nemesis {name:?}; known: all, kill, pause, partition, loss, delay, clock, membership"))?;
        faults.extend(family.iter().copied());
    }
    faults.dedup();
    Ok(faults)
}

fn family(fault: Fault) -> &'static str {
    FAMILIES
        .iter()
        .find(|(_, faults)| faults.contains(&fault))
        .map_or("", |(family, _)| family)
}

/// Membership changes wait for the cluster to accept the node back, so they run alone.
fn combinable(fault: Fault) -> bool {
    fault != Fault::Membership
}

/// One fault (or combination) as it happened.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    pub faults: Vec<Fault>,
    pub detail: String,
    pub start_s: f64,
    pub end_s: f64,
}

/// What healing a fault takes.
enum Undo {
    Restart(Vec<usize>),
    Resume(Vec<usize>),
    Heal,
    ResetClock(usize),
    Nothing,
}

pub struct Nemesis {
    faults: Vec<Fault>,
    rng: StdRng,
}

impl Nemesis {
    pub fn new(faults: Vec<Fault>, rng: StdRng) -> Self {
        Self { faults, rng }
    }

    fn random_node(&mut self, cluster: &Cluster) -> usize {
        self.rng.gen_range(0..cluster.nodes.len())
    }

    async fn leader_or_random(&mut self, cluster: &Cluster) -> usize {
        match cluster.leader().await {
            Some(leader) => leader,
            None => self.random_node(cluster),
        }
    }

    /// The node a fault hits: the leader (or any node while there is none), or any node.
    async fn victim(&mut self, cluster: &Cluster, leader: bool) -> usize {
        if leader {
            self.leader_or_random(cluster).await
        } else {
            self.random_node(cluster)
        }
    }

    /// Injects one random fault and returns how to undo it, with a description.
    async fn inject(
        &mut self,
        fault: Fault,
        cluster: &mut Cluster,
        net: &Network,
    ) -> Result<(Undo, String), String> {
        let size = cluster.nodes.len();
        Ok(match fault {
            Fault::KillLeader | Fault::KillOne => {
                let victim = self.victim(cluster, fault == Fault::KillLeader).await;
                cluster.kill(victim);
                (
                    Undo::Restart(vec![victim]),
                    format!("kill -9 node {}", victim + 1),
                )
            }
            Fault::KillMajority => {
                let mut nodes: Vec<usize> = (0..size).collect();
                nodes.shuffle(&mut self.rng);
                nodes.truncate(size / 2 + 1);
                for &n in &nodes {
                    cluster.kill(n);
                }
                let names: Vec<String> = nodes.iter().map(|n| (n + 1).to_string()).collect();
                (
                    Undo::Restart(nodes),
                    format!("kill -9 nodes {}", names.join(",")),
                )
            }
            Fault::PauseLeader | Fault::PauseOne => {
                let victim = self.victim(cluster, fault == Fault::PauseLeader).await;
                cluster.pause(victim);
                (
                    Undo::Resume(vec![victim]),
                    format!("SIGSTOP node {}", victim + 1),
                )
            }
            Fault::PartitionLeader => {
                let leader = self.leader_or_random(cluster).await;
                let others: Vec<usize> = (1..=size).filter(|n| *n != leader + 1).collect();
                net.partition(&[leader + 1], &others)?;
                (Undo::Heal, format!("isolate leader node {}", leader + 1))
            }
            Fault::PartitionHalves => {
                let mut nodes: Vec<usize> = (1..=size).collect();
                nodes.shuffle(&mut self.rng);
                let (minority, majority) = nodes.split_at(size / 2);
                net.partition(minority, majority)?;
                (Undo::Heal, format!("partition {minority:?} | {majority:?}"))
            }
            Fault::PartitionBridge => {
                // Two halves that each still see the middle node, but not each other.
                let mut nodes: Vec<usize> = (1..=size).collect();
                nodes.shuffle(&mut self.rng);
                let bridge = nodes[0];
                let rest = &nodes[1..];
                let (left, right) = rest.split_at(rest.len() / 2);
                net.partition(left, right)?;
                (
                    Undo::Heal,
                    format!("bridge through node {bridge}: {left:?} | {right:?}"),
                )
            }
            Fault::PacketLoss => {
                let percent = self.rng.gen_range(10..40);
                net.lose_packets(percent)?;
                (Undo::Heal, format!("{percent}% packet loss between nodes"))
            }
            Fault::Delay => {
                let latency = Duration::from_millis(self.rng.gen_range(20..200));
                let jitter = Duration::from_millis(self.rng.gen_range(0..100));
                net.delay(latency, jitter)?;
                (
                    Undo::Heal,
                    format!("{latency:?} delay with {jitter:?} jitter between nodes"),
                )
            }
            Fault::ClockSkew | Fault::ClockDrift => {
                let victim = self.random_node(cluster);
                let clock = if fault == Fault::ClockSkew {
                    let secs =
                        self.rng.gen_range(5..120) * if self.rng.gen_bool(0.5) { 1 } else { -1 };
                    Clock::Skew(secs)
                } else {
                    Clock::Drift(*[0.5, 0.8, 1.25, 2.0].choose(&mut self.rng).expect("rates"))
                };
                let detail = format!("node {} restarted with clock {clock:?}", victim + 1);
                cluster.kill(victim);
                cluster.nodes[victim].clock = Some(clock);
                cluster.start(victim)?;
                (Undo::ResetClock(victim), detail)
            }
            Fault::Membership => {
                let leader = cluster.leader().await;
                let candidates: Vec<usize> = (0..size)
                    .filter(|n| Some(*n) != leader && cluster.nodes[*n].is_up())
                    .collect();
                let Some(&victim) = candidates.choose(&mut self.rng) else {
                    return Ok((
                        Undo::Nothing,
                        "membership change skipped: no follower up".into(),
                    ));
                };
                cluster.remove(victim).await?;
                cluster.kill(victim);
                cluster.wipe(victim);
                cluster.start(victim)?;
                cluster.wait_http(victim, Duration::from_secs(30)).await?;
                cluster.join(victim).await?;
                (
                    Undo::Nothing,
                    format!(
                        "removed node {} and added it back as a new member",
                        victim + 1
                    ),
                )
            }
        })
    }

    async fn undo(undo: Undo, cluster: &mut Cluster, net: &Network) -> Result<(), String> {
        match undo {
            Undo::Restart(nodes) => {
                for n in nodes {
                    cluster.start(n)?;
                }
            }
            Undo::Resume(nodes) => {
                for n in nodes {
                    cluster.resume(n);
                }
            }
            Undo::Heal => net.heal()?,
            Undo::ResetClock(n) => {
                cluster.kill(n);
                cluster.nodes[n].clock = None;
                cluster.start(n)?;
            }
            Undo::Nothing => {}
        }
        Ok(())
    }

    /// Runs fault cycles until `until` (seconds since `started`).
    pub async fn run(
        &mut self,
        cluster: &mut Cluster,
        net: &Network,
        started: std::time::Instant,
        until: Duration,
        fault_for: Duration,
        quiet_for: Duration,
    ) -> Vec<Window> {
        let mut windows = Vec::new();
        tokio::time::sleep(quiet_for).await;
        while started.elapsed() + fault_for < until {
            let first = *self
                .faults
                .choose(&mut self.rng)
                .expect("at least one fault");
            let mut chosen = vec![first];
            if combinable(first) && self.rng.gen_bool(1.0 / 3.0) {
                let partners: Vec<Fault> = self
                    .faults
                    .iter()
                    .copied()
                    .filter(|f| combinable(*f) && family(*f) != family(first))
                    .collect();
                chosen.extend(partners.choose(&mut self.rng));
            }
            let start_s = started.elapsed().as_secs_f64();
            let mut undos = Vec::new();
            let mut details = Vec::new();
            for &fault in &chosen {
                let (undo, detail) = match self.inject(fault, cluster, net).await {
                    Ok(done) => done,
                    Err(err) => (Undo::Heal, format!("{fault:?} failed to inject: {err}")),
                };
                undos.push(undo);
                details.push(detail);
            }
            let detail = details.join(" + ");
            eprintln!("[{start_s:6.1}s] nemesis: {detail}");
            tokio::time::sleep(fault_for).await;
            for undo in undos.into_iter().rev() {
                if let Err(err) = Self::undo(undo, cluster, net).await {
                    eprintln!("nemesis: healing failed: {err}");
                }
            }
            let end_s = started.elapsed().as_secs_f64();
            eprintln!("[{end_s:6.1}s] nemesis: healed");
            windows.push(Window {
                faults: chosen,
                detail,
                start_s,
                end_s,
            });
            tokio::time::sleep(quiet_for).await;
        }
        windows
    }
}
