//! `GET /metrics` in Prometheus text format: the node's Raft state, for dashboards and
//! alerts (leader changes, apply lag, snapshot progress), the requests it answered by route
//! family and status, and the undermoon broker's size and health as this node has applied it
//! (failed proxies, running migrations).

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use keel_raft::machine::MAX_REMEMBERED_REQUESTS;
use keel_raft::machine::REQUEST_ID_WINDOW;
use openraft::ServerState;

use super::answers::Answers;
use crate::node::Node;

pub fn routes(node: Arc<Node>, answers: Arc<Answers>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state((node, answers))
}

async fn metrics(State((node, answers)): State<(Arc<Node>, Arc<Answers>)>) -> impl IntoResponse {
    let mut out = String::new();
    // Series with labels, written after the others.
    let mut labelled = String::new();
    // Prometheus' naming convention: a `_total` only ever grows.
    let mut metric = |name: &str, help: &str, value: u64| {
        let kind = if name.ends_with("_total") {
            "counter"
        } else {
            "gauge"
        };
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    metric(
        "keel_up_seconds",
        "Seconds since this process started.",
        node.started.elapsed().as_secs(),
    );
    if let Some(resident) = crate::memory::resident_bytes() {
        metric(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            resident,
        );
    }
    metric(
        "keel_data_bytes",
        "Bytes of the node's data directory.",
        node.store_size(),
    );
    metric(
        "keel_auth_password_checks_total",
        "argon2 password checks run (credentials not yet remembered by this node).",
        node.verifier.checks(),
    );
    metric(
        "keel_auth_refusals_total",
        "Requests refused for missing or wrong credentials.",
        node.verifier.refusals(),
    );
    if let Ok(raft) = node.raft() {
        let m = raft.metrics();
        metric("keel_raft_node_id", "This node's uid.", m.id);
        metric("keel_raft_term", "Current Raft term.", m.current_term);
        metric(
            "keel_raft_is_leader",
            "1 if this node leads.",
            u64::from(m.state == ServerState::Leader),
        );
        metric(
            "keel_raft_leader_id",
            "uid of the known leader, 0 if none.",
            m.current_leader.unwrap_or(0),
        );
        metric(
            "keel_raft_leader_changes_total",
            "Times this node saw a new leader since it started.",
            raft.leader_changes(),
        );
        if let Some(unheard) = raft.quorum_unheard_for(&m) {
            metric(
                "keel_raft_quorum_unheard_milliseconds",
                "While this node leads: how long ago a quorum last answered it. Growing past a few election timeouts means the leader lost its quorum and serves nothing that needs the cluster.",
                unheard.as_millis() as u64,
            );
        }
        if let Some(unheard) = raft.leader_unheard_for(&m) {
            metric(
                "keel_raft_leader_unheard_milliseconds",
                "While this node follows: how long ago its leader was last heard. Growing past a few election timeouts means this node is cut off, or fewer than a quorum of voters are up, and it serves nothing that needs the cluster.",
                unheard.as_millis() as u64,
            );
        }
        metric(
            "keel_raft_last_log_index",
            "Index of the last log entry.",
            m.last_log_index.unwrap_or(0),
        );
        metric(
            "keel_raft_commit_index",
            "Index of the last committed entry.",
            m.local_committed.map_or(0, |id| id.index),
        );
        metric(
            "keel_raft_applied_index",
            "Index of the last applied entry.",
            m.last_applied.map_or(0, |id| id.index),
        );
        metric(
            "keel_raft_snapshot_index",
            "Index covered by the latest snapshot.",
            m.snapshot.map_or(0, |id| id.index),
        );
        metric(
            "keel_raft_snapshots_installed_total",
            "Snapshots installed from a leader since this node started: each means this node fell behind by more than the leader keeps of its log.",
            raft.snapshots_installed(),
        );
        metric(
            "keel_raft_purged_index",
            "Index up to which the log is purged.",
            m.purged.map_or(0, |id| id.index),
        );
        metric(
            "keel_raft_voters",
            "Number of voters.",
            m.membership_config.membership().voter_ids().count() as u64,
        );
        metric(
            "keel_raft_removed",
            "1 if this node was removed from its cluster: it serves nothing and should be stopped (its other Raft figures are as they were at its removal).",
            raft.is_removed().into(),
        );
        metric(
            "keel_raft_append_streams_opened_total",
            "Replication connections this node opened to followers while leading; a steady climb means they keep breaking.",
            raft.append_streams_opened(),
        );
        metric(
            "keel_raft_entry_format",
            "Log entry format this node writes while it leads: 2 (several writes to an entry) once every other member has announced that it reads it, 1 (one write to an entry) until then; a leader stuck at 1 has a member it cannot reach or one of an earlier build.",
            raft.entry_format().into(),
        );
        metric(
            "keel_raft_forward_streams_opened_total",
            "Connections this node opened to leaders to forward writes and reads while following; a steady climb means they keep breaking.",
            raft.forward_streams_opened(),
        );
        let lags = raft.follower_lags(&m);
        per_follower(
            &mut labelled,
            "keel_raft_follower_lag_entries",
            "While this node leads: log entries each follower has not yet stored.",
            lags,
        );
        let unheard = raft.followers_unheard_for(&m).into_iter();
        per_follower(
            &mut labelled,
            "keel_raft_follower_unheard_milliseconds",
            "While this node leads: how long ago each follower last answered it. Growing past a few election timeouts means that follower is down, paused or cut off.",
            unheard.map(|(follower, ago)| (follower, ago.as_millis() as u64)).collect(),
        );
        let requests = raft.remembered_requests();
        metric(
            "keel_request_ids_remembered",
            &format!(
                "Request ids on record for exactly-once retries (of the last {REQUEST_ID_WINDOW} log entries, at most about {MAX_REMEMBERED_REQUESTS})."
            ),
            requests.ids as u64,
        );
        metric(
            "keel_request_ids_memory_bytes",
            "Estimated memory of the in-memory index of those request ids.",
            requests.bytes as u64,
        );
        if let Ok(broker) = node.domain.broker.current(&raft.reader()) {
            let store = &broker.store;
            metric(
                "keel_broker_epoch",
                "The undermoon broker's global epoch.",
                store.global_epoch,
            );
            metric(
                "keel_broker_clusters",
                "Redis clusters in the broker.",
                store.clusters.len() as u64,
            );
            metric(
                "keel_broker_migrating_clusters",
                "Clusters with a migration running.",
                store.clusters.values().filter(|c| c.is_migrating()).count() as u64,
            );
            metric(
                "keel_broker_proxies",
                "Registered server proxies.",
                store.all_proxies.len() as u64,
            );
            metric(
                "keel_broker_free_proxies",
                "Registered server proxies in no cluster.",
                store
                    .all_proxies
                    .values()
                    .filter(|p| p.cluster.is_none())
                    .count() as u64,
            );
            metric(
                "keel_broker_failed_proxies",
                "Server proxies failed over and not registered again.",
                store.failed_proxies.len() as u64,
            );
        }
    }
    requests_answered(&mut labelled, &answers);
    out.push_str(&labelled);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
}

/// The counter of answers, one series per route family and status code.
fn requests_answered(out: &mut String, answers: &Answers) {
    let name = "keel_http_requests_total";
    let _ = writeln!(
        out,
        "# HELP {name} Requests from clients this node answered, by route family (none: an unknown path) and status code. A request a follower relays to the leader is counted on the follower only.\n# TYPE {name} counter"
    );
    for (family, code, count) in answers.counts() {
        let _ = writeln!(out, "{name}{{family=\"{family}\",code=\"{code}\"}} {count}");
    }
}

/// A gauge with one series per follower (`follower="uid"`), written only if there are any.
fn per_follower(out: &mut String, name: &str, help: &str, values: Vec<(u64, u64)>) {
    if values.is_empty() {
        return;
    }
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
    for (follower, value) in values {
        let _ = writeln!(out, "{name}{{follower=\"{follower}\"}} {value}");
    }
}
