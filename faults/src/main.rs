//! keel's Jepsen-style fault suite.
//!
//! Runs a cluster of real `keel` processes, each in its own network namespace (as root) or
//! behind userspace proxies (otherwise, or with `--net proxy`), drives it with
//! concurrent clients (registers with read/write/compare-and-set, a grow-only set, a watcher
//! that follows every change across reconnects, the undermoon broker's global epoch) while a
//! nemesis kills, pauses, partitions, drops packets, skews clocks and changes membership; then
//! heals everything, checks the history (linearizability per register key and of the epoch,
//! no lost set element, every watched revision exactly once) and writes a report. Exit code
//! 0: valid; 1: invalid; 2: unknown or the harness failed. Run it through `scripts/faults.sh`.

mod checker;
mod cluster;
mod history;
mod nemesis;
mod net;
mod proxy;
mod report;
mod workload;

use std::path::PathBuf;
use std::sync::atomic::AtomicI64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use rand::rngs::StdRng;
use rand::SeedableRng;
use serde_json::json;

use checker::Verdict;

#[derive(Debug, Parser)]
#[command(name = "keel-faults", about = "Jepsen-style fault tests for keel")]
struct Args {
    /// Cluster size (3 or 5).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Seconds of workload under faults.
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Fault families, comma separated: all, kill, pause, partition, loss, clock, membership.
    #[arg(long, value_delimiter = ',', default_value = "all")]
    nemesis: Vec<String>,
    /// Seed for the schedule and the clients' choices (default: random, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Concurrent register clients.
    #[arg(long, default_value_t = 6)]
    clients: usize,
    /// Seconds each fault is held.
    #[arg(long, default_value_t = 8)]
    fault_secs: u64,
    /// Seconds of calm after each fault.
    #[arg(long, default_value_t = 5)]
    quiet_secs: u64,
    /// The keel binary to test.
    #[arg(long)]
    keel_bin: PathBuf,
    /// The network: auto (namespaces as root, proxies otherwise), netns or proxy.
    #[arg(long, default_value = "auto")]
    net: String,
    /// Where runs are written (one folder per run).
    #[arg(long, default_value = "fault-results")]
    out: PathBuf,
}

fn overall(verdicts: impl IntoIterator<Item = Verdict>) -> Verdict {
    verdicts
        .into_iter()
        .fold(Verdict::Valid, |acc, v| match (acc, v) {
            (Verdict::Invalid, _) | (_, Verdict::Invalid) => Verdict::Invalid,
            (Verdict::Unknown, _) | (_, Verdict::Unknown) => Verdict::Unknown,
            _ => Verdict::Valid,
        })
}

async fn run(args: Args) -> Result<Verdict, String> {
    if !(3..=5).contains(&args.nodes) {
        return Err("--nodes must be 3, 4 or 5".into());
    }
    let faults = nemesis::parse_families(&args.nemesis)?;
    let seed = args.seed.unwrap_or_else(rand::random);
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let out = args.out.join(format!("run-{stamp}-seed-{seed}"));
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    eprintln!(
        "keel-faults: seed {seed}, {} nodes, {} s, nemesis {:?}, output {}",
        args.nodes,
        args.duration,
        args.nemesis,
        out.display()
    );

    let network = net::Network::create(args.nodes, &args.net).await?;
    eprintln!("keel-faults: network: {}", network.name());
    let mut cluster = cluster::Cluster::new(
        args.nodes,
        args.keel_bin.clone(),
        out.join("data"),
        &network,
    );
    cluster.form().await?;
    let addrs: Vec<String> = cluster.nodes.iter().map(|n| n.addr()).collect();

    let workload = workload::Workload::new(addrs, Duration::from_secs(args.duration));
    let first_revision = workload.store_revision().await?;
    let watch_target = Arc::new(AtomicI64::new(-1));
    let watcher = tokio::spawn(workload.clone().watcher(
        first_revision,
        seed ^ 0xabc,
        watch_target.clone(),
    ));
    let mut clients = Vec::new();
    for process in 0..args.clients {
        clients.push(tokio::spawn(
            workload
                .clone()
                .register_client(process, seed.wrapping_add(process as u64)),
        ));
    }
    for process in args.clients..args.clients + 2 {
        clients.push(tokio::spawn(
            workload
                .clone()
                .set_client(process, seed.wrapping_add(process as u64)),
        ));
    }
    for process in args.clients + 2..args.clients + 4 {
        clients.push(tokio::spawn(
            workload
                .clone()
                .epoch_client(process, seed.wrapping_add(process as u64)),
        ));
    }

    let mut nemesis = nemesis::Nemesis::new(faults, StdRng::seed_from_u64(seed));
    let windows = nemesis
        .run(
            &mut cluster,
            &network,
            workload.started,
            Duration::from_secs(args.duration),
            Duration::from_secs(args.fault_secs),
            Duration::from_secs(args.quiet_secs),
        )
        .await;
    for client in clients {
        client.await.map_err(|e| e.to_string())?;
    }

    // Heal everything and let the cluster settle before the final reads.
    network.heal()?;
    cluster.resume_all();
    for i in 0..cluster.nodes.len() {
        if cluster.nodes[i].clock.take().is_some() {
            cluster.kill(i);
        }
        cluster.start(i)?;
    }
    let final_set = workload.read_set().await?;
    let last_revision = workload.store_revision().await?;
    watch_target.store(last_revision as i64, Ordering::Relaxed);
    let watched = watcher.await.map_err(|e| e.to_string())?;
    let duration_s = workload.started.elapsed().as_secs_f64();
    cluster.stop_all();

    let history = workload.history.lock().expect("history").clone();
    let (epoch, registers): (Vec<_>, Vec<_>) =
        checker::check_registers(&history, Duration::from_secs(60))
            .into_iter()
            .partition(|result| result.key == workload::EPOCH_KEY);
    let set = checker::check_set(&history, &final_set);
    let watch = checker::check_watch(&watched, first_revision + 1, last_revision);
    let register_verdict = overall(registers.iter().map(|r| r.verdict));
    let epoch_verdict = overall(epoch.iter().map(|r| r.verdict));
    let checks = [register_verdict, epoch_verdict, set.verdict, watch.verdict];
    let verdict = overall(checks);
    let count = |f: history::F, o: history::Outcome| {
        history
            .iter()
            .filter(|op| op.f == f && op.outcome == o)
            .count()
    };
    let results = json!({
        "verdict": verdict,
        "seed": seed,
        "nodes": args.nodes,
        "duration_s": duration_s,
        "nemesis": args.nemesis.join(","),
        "network": network.name(),
        "operations": history.len(),
        "faults": windows,
        "checks": {
            "linearizable registers": { "verdict": register_verdict, "detail": registers },
            "broker epoch (linearizable, only grows)": { "verdict": epoch_verdict, "detail": epoch },
            "set (no lost acknowledged add)": { "verdict": set.verdict, "detail": set },
            "watch (every revision once, in order)": { "verdict": watch.verdict, "detail": watch },
        },
        "counts": {
            "read": { "ok": count(history::F::Read, history::Outcome::Ok), "fail": count(history::F::Read, history::Outcome::Fail) },
            "write": { "ok": count(history::F::Write, history::Outcome::Ok), "fail": count(history::F::Write, history::Outcome::Fail), "info": count(history::F::Write, history::Outcome::Info) },
            "cas": { "ok": count(history::F::Cas, history::Outcome::Ok), "fail": count(history::F::Cas, history::Outcome::Fail), "info": count(history::F::Cas, history::Outcome::Info) },
            "add": { "ok": count(history::F::Add, history::Outcome::Ok), "fail": count(history::F::Add, history::Outcome::Fail), "info": count(history::F::Add, history::Outcome::Info) },
            "raise": { "ok": count(history::F::Raise, history::Outcome::Ok), "fail": count(history::F::Raise, history::Outcome::Fail), "info": count(history::F::Raise, history::Outcome::Info) },
        },
    });
    let write_json = |name: &str, value: &serde_json::Value| {
        std::fs::write(
            out.join(name),
            serde_json::to_vec_pretty(value).expect("json"),
        )
        .map_err(|e| format!("{name}: {e}"))
    };
    write_json("history.json", &json!(history::events(&history)))?;
    write_json("results.json", &results)?;
    report::plot(&out.join("latency.svg"), &history, &windows, duration_s)?;
    report::html(&out.join("index.html"), &results, &windows)?;

    println!("{}", serde_json::to_string_pretty(&json!({ "verdict": verdict, "counts": results["counts"], "faults": windows.len(), "report": out.join("index.html") })).expect("json"));
    let passed = checks.iter().filter(|v| **v == Verdict::Valid).count();
    println!("faults: {passed} passed, {} failed", checks.len() - passed);
    Ok(verdict)
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(args)) {
        Ok(Verdict::Valid) => std::process::ExitCode::SUCCESS,
        Ok(Verdict::Invalid) => std::process::ExitCode::from(1),
        Ok(Verdict::Unknown) => std::process::ExitCode::from(2),
        Err(err) => {
            eprintln!("keel-faults: {err}");
            std::process::ExitCode::from(2)
        }
    }
}
