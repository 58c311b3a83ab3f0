//! keel: a Raft-replicated control plane for fleets of database clusters.
//!
//! The binary wires the parts together: [`config`] reads flags, environment and file;
//! [`node`] owns the store, the node's identity and bootstrap, and its Raft; [`domain`] is the
//! deterministic state machine; [`api`] serves the REST dialects and the Raft peer routes on
//! one address.

mod api;
mod auth;
mod bench;
mod config;
mod domain;
mod error;
mod lessor;
mod machine_info;
mod memory;
mod node;
mod proxy_probe;

/// jemalloc for everything keel allocates in Rust (RocksDB's C++ keeps glibc's malloc).
/// A batch of proposals allocates and frees its requests, entries and replies in bursts of
/// the same sizes, more than glibc's per-thread cache holds (seven chunks per size), so most
/// of them went to its shared bins: glibc's malloc and free were 13-16 % of a node's samples
/// under put (64). Against glibc, alternating put (64) runs on a fresh 3-node cluster each:
/// +10.4 % summed over 6 pairs (5 better), 64.6 against 71.9 µs of the nodes' CPU per write.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::io::IsTerminal;

use axum::serve::ListenerExt;
use clap::Parser;
use tracing_subscriber::EnvFilter;

pub use error::Error;
pub use keel_raft::service::constant_time_eq;

/// The log filter unless `KEEL_LOG` sets one. openraft warns at every failed replication
/// attempt and heartbeat, about 20 times a second for a peer that is down, and at every vote
/// request a peer did not answer, twice an election round while a quorum is lost; keel's peer
/// network logs when an outage starts, lasts and ends instead, and keel logs who leads and a
/// leader's silent quorum, so those sources only show errors.
const DEFAULT_LOG: &str = "info,openraft=warn,openraft::replication=error,\
                           openraft::engine::handler::replication_handler=error,\
                           openraft::core::heartbeat=error,openraft::core::raft_core=error";

fn main() -> std::process::ExitCode {
    // An empty KEEL_LOG= is unset, not "log nothing".
    let filter = match std::env::var("KEEL_LOG")
        .ok()
        .filter(|f| !f.trim().is_empty())
    {
        Some(filter) => match EnvFilter::try_new(&filter) {
            Ok(filter) => filter,
            Err(err) => {
                eprintln!("keel: KEEL_LOG={filter:?} is not a log filter ({err}); e.g. info or info,openraft=warn");
                return std::process::ExitCode::from(2);
            }
        },
        None => EnvFilter::new(DEFAULT_LOG),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal: logs that go to a file or a collector stay plain
        // text that grep and log shippers read as written.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = |workers: usize| {
        // One worker: tokio's current-thread scheduler, which runs the accept loop and every
        // task on the thread that calls `block_on` (the multi-thread one kept that thread
        // and a worker busy) and wakes tasks without cross-thread queues. Three nodes on two
        // cores, paired runs against a one-worker multi-thread runtime: put (64) 5 of 5
        // pairs better, 6 % less CPU per write; linearizable get (64) 3 of 3 on a quiet host.
        let mut builder = if workers == 1 {
            tokio::runtime::Builder::new_current_thread()
        } else {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(workers);
            builder
        };
        builder
            .enable_all()
            .build()
            .expect("starting the tokio runtime")
    };
    let result = match config::Cli::parse().command {
        config::Command::Serve(args) => match (*args).resolve() {
            Ok(settings) => runtime(settings.worker_threads).block_on(serve(settings)),
            Err(message) => {
                eprintln!("keel: {message}");
                return std::process::ExitCode::from(2);
            }
        },
        config::Command::Bench(args) => {
            runtime(usize::from(args.threads)).block_on(bench::run(args))
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => {
            // Logged once: the log goes to stderr too.
            tracing::error!("{message}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(mut settings: config::Settings) -> Result<(), String> {
    // Every file keel writes (RocksDB's, snapshots, the identity) holds the cluster's data or
    // secrets: none is for other users to read.
    // SAFETY: umask only sets the process's file-creation mask; it cannot fail.
    unsafe { libc::umask(0o077) };
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", settings.listen))?;
    if settings.listen.port() == 0 {
        // The port the system picked is the one to advertise, unless another was given.
        let bound = listener.local_addr().map_err(|e| e.to_string())?;
        if settings.advertise == settings.listen.to_string() {
            settings.advertise = bound.to_string();
        }
        settings.listen = bound;
    }
    // Without TCP_NODELAY, an answer written in more than one piece can wait for the peer's
    // delayed ACK (40 ms on Linux) before its second piece leaves.
    let listener = listener.tap_io(|connection| {
        if let Err(err) = connection.set_nodelay(true) {
            tracing::debug!(%err, "cannot set TCP_NODELAY on a connection");
        }
    });
    let bootstrap = settings.bootstrap;
    let node = node::Node::open(settings).await?;
    node.check_settings_fit_cluster().await?;
    if bootstrap == config::BootstrapMode::Auto {
        node.auto_bootstrap()?;
    }
    tokio::spawn(node.lessor.clone().run(node.clone()));
    tokio::spawn(memory::release_freed_periodically());
    tracing::info!(
        listen = %node.settings.listen,
        advertise = %node.settings.advertise,
        data_dir = %node.settings.data_dir.display(),
        member = node.is_member(),
        "keel is serving"
    );
    let app = api::router(node.clone());
    // Set once the node stops taking connections.
    let (closing, closed) = tokio::sync::watch::channel(false);
    let stopping = node.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        stopping.stop();
        // Still taking connections meanwhile: the successor's vote must reach this node for it
        // to see the handover.
        if let Ok(raft) = stopping.raft() {
            // Bounded: a Raft core that no longer answers must not keep the node from stopping.
            let handover = raft.hand_over_leadership();
            if tokio::time::timeout(HANDOVER_LIMIT, handover)
                .await
                .is_err()
            {
                tracing::warn!(
                    "Raft did not hand leadership over in {HANDOVER_LIMIT:?}; stopping anyway"
                );
            }
        }
        closing.send_replace(true);
    });
    let when_closed = || {
        let mut closed = closed.clone();
        async move {
            // An error means the sender is gone, which happens only once it sent.
            let _ = closed.wait_for(|closed| *closed).await;
        }
    };
    let server = axum::serve(listener, app).with_graceful_shutdown(when_closed());
    // Requests in flight get a moment to finish once the node closes; watches and long polls
    // ended when it began to stop (see `Node::stop`). A request that outlasts the moment must
    // not keep the node running.
    let drained = async {
        when_closed().await;
        tokio::time::sleep(DRAIN).await;
    };
    // A node whose Raft core stopped on a storage failure serves nothing but errors: it exits,
    // so that its supervisor sees it down and the operator finds the cause at the end of its
    // log. The other nodes serve meanwhile.
    let raft_failure = async {
        loop {
            if let Ok(raft) = node.raft() {
                break raft.failure().await;
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    };
    tokio::select! {
        served = server => served.map_err(|e| format!("HTTP server failed: {e}"))?,
        failure = raft_failure => return Err(format!(
            "Raft stopped on a failure it cannot go on from: {failure}. Check this node's disk \
             (full? failing? read-only?), then start keel again: it recovers from its log"
        )),
        () = drained => tracing::warn!(
            "requests still open {DRAIN:?} after the signal to stop; stopping without them"
        ),
    }
    if let Ok(raft) = node.raft() {
        raft.shutdown().await;
    }
    Ok(())
}

/// The longest a stopping leader spends handing leadership over (it waits 2 s for its
/// successor itself).
const HANDOVER_LIMIT: std::time::Duration = std::time::Duration::from_secs(3);

/// How long a stopping node waits for the requests in flight.
const DRAIN: std::time::Duration = std::time::Duration::from_secs(5);

async fn shutdown_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
    tracing::info!("shutting down");
}
