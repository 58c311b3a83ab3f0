//! The replicated core end to end: real `keel` processes, real RocksDB, real HTTP.

mod common;

use std::process::Command;
use std::time::Duration;
use std::time::Instant;

use common::metric_value;
use common::send_json;
use common::Cluster;
use common::PASSWORD;
use common::USER;
use futures::future::join_all;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn writes_on_any_node_are_read_linearizably_on_every_node() {
    let cluster = Cluster::start(3, &[]).await;
    for writer in 0..3 {
        let key = format!("from-node-{writer}");
        cluster
            .put_kv(writer, &key, &format!("value-{writer}"))
            .await;
        // Linearizable: visible on every node the moment the write is acknowledged.
        for reader in 0..3 {
            assert_eq!(
                cluster
                    .get_kv(reader, &key, "linearizable")
                    .await
                    .as_deref(),
                Some(format!("value-{writer}").as_str()),
                "node {reader} must see the write acknowledged by node {writer}"
            );
        }
    }
    let info = cluster.cluster_info(1).await.unwrap();
    let members = info["members"].as_array().unwrap();
    assert_eq!(members.len(), 3, "{info}");
    assert!(members.iter().all(|m| m["voter"] == true), "{info}");
    assert_eq!(info["name"], "test.cluster");

    let (status, listing) = send_json(cluster.get(2, "/v1/kv?prefix=from-node-&limit=2")).await;
    assert_eq!(status, 200);
    assert_eq!(listing["kvs"].as_array().unwrap().len(), 2);
    assert_eq!(listing["more"], true);
    assert_eq!(listing["kvs"][0]["key"], "from-node-0");
    let (_, rest) = send_json(cluster.get(0, "/v1/kv?prefix=from-node-&start=from-node-2")).await;
    assert_eq!(rest["kvs"].as_array().unwrap().len(), 1);
    assert_eq!(rest["more"], false);

    // The state is open to probes; the machine's details need the cluster's credentials.
    let (_, status) = send_json(cluster.client.get(cluster.nodes[2].url("/v1/bootstrap"))).await;
    assert_eq!(status["bootstrap_status"]["state"], "completed");
    assert_eq!(
        status["local_node_info"],
        json!({"uid": status["local_node_info"]["uid"]}),
        "{status}"
    );
    let (_, status) = send_json(cluster.get(2, "/v1/bootstrap")).await;
    let info = &status["local_node_info"];
    assert!(info["uid"].as_u64().unwrap() >= 1, "{info}");
    assert!(info["cores"].as_u64().unwrap() >= 1, "{info}");
    assert!(info["total_memory"].as_u64().unwrap() > 0, "{info}");
    assert!(
        info["persistent_storage_size"].as_f64().unwrap() > 0.0,
        "{info}"
    );

    let (status, _) = send_json(cluster.get(0, "/v1/no-such-route")).await;
    assert_eq!(status, 404);
    let metrics = cluster.metrics(0).await;
    assert!(metrics.contains("keel_raft_voters 3"), "{metrics}");
    let metric = |name: &str| metric_value(&metrics, name);
    // Answers are counted by route family and status, a path no route serves too.
    let unknown_route = r#"keel_http_requests_total{family="none",code="404"}"#;
    assert_eq!(metric(unknown_route), Some(1), "{metrics}");
    // The joins went through the log with request ids, so the exactly-once mirror holds some.
    let remembered = metric("keel_request_ids_remembered");
    assert!(remembered.is_some_and(|ids| ids > 0), "{metrics}");
    // One header was ever sent to this node, so argon2 ran once; the rest hit the cache.
    assert_eq!(
        metric("keel_auth_password_checks_total"),
        Some(1),
        "{metrics}"
    );
    // A node with RocksDB open and a runtime going holds megabytes, not bytes or terabytes.
    let resident = metric("process_resident_memory_bytes");
    assert!(
        resident.is_some_and(|bytes| (1 << 20..1 << 40).contains(&bytes)),
        "{metrics}"
    );

    // The leader replicates over a few kept connections (entries and heartbeats to each
    // follower, again when a membership change restarts replication), not one per request;
    // each follower forwarded its writes and reads to the leader over one connection.
    let mut leaders = Vec::new();
    let mut followers = Vec::new();
    for node in 0..3 {
        let metrics = cluster.metrics(node).await;
        if metric_value(&metrics, "keel_raft_is_leader") == Some(1) {
            leaders.push(metric_value(
                &metrics,
                "keel_raft_append_streams_opened_total",
            ));
        } else {
            followers.push(metric_value(
                &metrics,
                "keel_raft_forward_streams_opened_total",
            ));
        }
    }
    assert!(
        matches!(leaders[..], [Some(opened)] if (2..=12).contains(&opened)),
        "append streams opened by the leader: {leaders:?}"
    );
    assert!(
        followers.len() == 2 && followers.iter().all(|o| matches!(o, Some(1..=2))),
        "forward streams opened by the followers: {followers:?}"
    );
}

/// Writes keys `{prefix}00000` up to `writes` from `workers` concurrent clients, worker `w`
/// on node `node_of(w)`; every write must succeed.
async fn put_concurrently(
    cluster: &Cluster,
    prefix: &str,
    writes: usize,
    workers: usize,
    node_of: impl Fn(usize) -> usize,
) {
    let mut handles = Vec::new();
    for worker in 0..workers {
        let client = cluster.client.clone();
        let url = format!("{}/v1/kv/{prefix}", cluster.nodes[node_of(worker)].url(""));
        handles.push(tokio::spawn(async move {
            for n in (worker..writes).step_by(workers) {
                let request = client
                    .put(format!("{url}{n:05}"))
                    .basic_auth(USER, Some(PASSWORD))
                    .json(&json!({ "value": format!("v{n}") }));
                assert_eq!(send_json(request).await.0, 200);
            }
        }));
    }
    for handle in handles {
        handle.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_writes_share_log_entries_once_every_member_reads_them() {
    // Snapshots count writes, not entries: 256 writes in fewer than 200 entries still make one.
    let cluster = Cluster::start(3, &["--snapshot-every", "200"]).await;
    let leader = cluster.leader().await;
    // The leader hears each follower's entry format when it opens its append stream.
    common::wait_until(
        "the leader to write entries of several writes",
        Duration::from_secs(10),
        || {
            let metrics = cluster.metrics(leader);
            async move { metric_value(&metrics.await, "keel_raft_entry_format") == Some(2) }
        },
    )
    .await;
    let applied =
        |info: Option<serde_json::Value>| info.unwrap()["applied_index"].as_u64().unwrap();
    let before = applied(cluster.cluster_info(leader).await);
    let writes = 256;
    put_concurrently(&cluster, "shared/", writes, 32, |worker| worker % 3).await;
    let writes = writes as u64;
    let entries = applied(cluster.cluster_info(leader).await) - before;
    assert!(entries < 200, "{writes} writes took {entries} entries");
    common::wait_until(
        "a snapshot after 200 writes",
        Duration::from_secs(10),
        || {
            let info = cluster.cluster_info(leader);
            async move { info.await.unwrap()["snapshot_index"].as_u64().unwrap_or(0) > 0 }
        },
    )
    .await;
    for node in 0..3 {
        let (_, listing) = send_json(cluster.get(node, "/v1/kv?prefix=shared/&limit=1000")).await;
        assert_eq!(listing["kvs"].as_array().unwrap().len() as u64, writes);
        let revisions: std::collections::BTreeSet<u64> = listing["kvs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|kv| kv["mod_revision"].as_u64().unwrap())
            .collect();
        assert_eq!(
            revisions.len() as u64,
            writes,
            "each write has a revision of its own"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_leader_loses_no_acknowledged_write_and_it_catches_up() {
    let mut cluster = Cluster::start(3, &[]).await;
    let mut acknowledged = Vec::new();
    for n in 0..20 {
        cluster
            .put_kv(n % 3, &format!("k{n}"), &format!("v{n}"))
            .await;
        acknowledged.push(n);
    }
    let old_leader = cluster.leader().await;
    cluster.nodes[old_leader].kill();
    let survivor = (old_leader + 1) % 3;
    // Writes resume on the survivors (the request waits out the election).
    for n in 20..40 {
        cluster
            .put_kv(survivor, &format!("k{n}"), &format!("v{n}"))
            .await;
        acknowledged.push(n);
    }
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, old_leader);
    for &n in &acknowledged {
        assert_eq!(
            cluster
                .get_kv(survivor, &format!("k{n}"), "linearizable")
                .await,
            Some(format!("v{n}"))
        );
    }
    cluster.nodes[old_leader].start();
    cluster.wait_http(old_leader).await;
    for &n in &acknowledged {
        assert_eq!(
            cluster
                .get_kv(old_leader, &format!("k{n}"), "linearizable")
                .await,
            Some(format!("v{n}"))
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_every_node_and_restarting_loses_no_acknowledged_write() {
    let mut cluster = Cluster::start(3, &[]).await;
    let mut revisions = Vec::new();
    for n in 0..30 {
        revisions.push(
            cluster
                .put_kv(n % 3, &format!("durable/{n}"), &format!("v{n}"))
                .await,
        );
    }
    assert!(
        revisions.windows(2).all(|w| w[0] < w[1]),
        "revisions must grow: {revisions:?}"
    );
    cluster.kill_and_restart_all().await;
    for n in 0..30 {
        assert_eq!(
            cluster
                .get_kv(n % 3, &format!("durable/{n}"), "linearizable")
                .await,
            Some(format!("v{n}"))
        );
    }
    // The store revision survived too: the next write continues after the last one.
    let next = cluster.put_kv(0, "durable/after-restart", "x").await;
    assert_eq!(next, revisions.last().unwrap() + 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_follower_down_for_many_writes_catches_up_by_snapshot() {
    // Only 10 entries kept below a snapshot: the follower misses far more, so only a
    // snapshot can bring it back.
    let mut cluster =
        Cluster::start(3, &["--snapshot-every", "100", "--keep-log-entries", "10"]).await;
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    cluster.nodes[follower].kill();
    let writes = 600;
    put_concurrently(&cluster, "bulk/", writes, 8, |_| leader).await;
    let leader_info = cluster.cluster_info(leader).await.unwrap();
    assert!(
        leader_info["snapshot_index"].as_u64().unwrap_or(0) > 0,
        "the leader must have snapshotted: {leader_info}"
    );
    cluster.nodes[follower].start();
    cluster.wait_http(follower).await;
    let target = leader_info["commit_index"].as_u64().unwrap();
    cluster.wait_applied(follower, target).await;
    // Its log says it follows the leader again: a restarted node names the leader its vote
    // kept before it hears from it, and a last word of "not heard from yet" reads as trouble.
    common::wait_until(
        "the restarted follower to say it follows",
        Duration::from_secs(10),
        || {
            let log = cluster.nodes[follower].log();
            let since_restart = &log[log.rfind("keel is serving").unwrap()..];
            std::future::ready(since_restart.contains("following the leader"))
        },
    )
    .await;
    // Its own snapshots (every 100 entries) would hold a snapshot too: what proves the
    // catch-up is the install it counts.
    let metrics = cluster.metrics(follower).await;
    assert!(
        metric_value(&metrics, "keel_raft_snapshots_installed_total").is_some_and(|n| n >= 1),
        "the follower must have installed the leader's snapshot: {metrics}"
    );
    // Its own state (a stale read, no help from the leader) has every write.
    let stale_listing = "/v1/kv?prefix=bulk/&limit=10000&consistency=stale";
    let (_, listing) = send_json(cluster.get(follower, stale_listing)).await;
    assert_eq!(listing["kvs"].as_array().unwrap().len(), writes);

    // kill -9 of every node after snapshots purged their logs: a snapshot is the state
    // frozen in RocksDB, not a file, so each node must come back from its own flushed state
    // and the log above it, with every write.
    cluster.kill_and_restart_all().await;
    for node in 0..3 {
        cluster.wait_applied(node, target).await;
        let (_, listing) = send_json(cluster.get(node, stale_listing)).await;
        assert_eq!(
            listing["kvs"].as_array().unwrap().len(),
            writes,
            "node {node}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fourth_node_joins_and_is_removed_online() {
    let mut cluster = Cluster::start(3, &[]).await;
    cluster.put_kv(0, "before-join", "1").await;
    let dir = cluster.nodes[0].dir.parent().unwrap().join("node4");
    let mut fourth = common::KeelProcess::new(dir, &[]);
    fourth.start();
    cluster.nodes.push(fourth);
    cluster.wait_http(3).await;

    // Wrong credentials: the join fails with the seed's access_denied and the node stays out.
    let bad_join = json!({
        "cluster": { "nodes": [cluster.nodes[0].addr()] },
        "credentials": { "username": USER, "password": "wrong" }
    });
    let request = cluster
        .client
        .post(cluster.nodes[3].url("/v1/bootstrap/join_cluster"));
    assert_eq!(send_json(request.json(&bad_join)).await.0, 200);
    common::wait_until(
        "the failed join to be reported",
        Duration::from_secs(20),
        || {
            let request = cluster.client.get(cluster.nodes[3].url("/v1/bootstrap"));
            async move {
                send_json(request).await.1["bootstrap_status"]["error_code"] == "access_denied"
            }
        },
    )
    .await;

    cluster.join(3).await;
    let info = cluster.cluster_info(3).await.unwrap();
    assert_eq!(info["members"].as_array().unwrap().len(), 4, "{info}");
    let uid = info["this_node"]["uid"].as_u64().unwrap();
    assert_eq!(
        cluster
            .get_kv(3, "before-join", "linearizable")
            .await
            .as_deref(),
        Some("1")
    );

    let (status, body) =
        send_json(cluster.post(1, &format!("/v1/nodes/{uid}/actions/remove"))).await;
    assert_eq!(status, 200, "{body}");
    let info = cluster.cluster_info(0).await.unwrap();
    let members = info["members"].as_array().unwrap();
    assert_eq!(members.len(), 3, "{info}");
    assert!(members.iter().all(|m| m["uid"] != uid));
    cluster.put_kv(2, "after-remove", "1").await;
    // The removed node, still running, is told so instead of serving as a member.
    let write = cluster
        .put(3, "/v1/kv/through-removed")
        .json(&json!({"value": "x"}));
    let (status, refusal) = send_json(write).await;
    assert_eq!(
        (status, &refusal["error_code"]),
        (503, &json!("not_a_member")),
        "{refusal}"
    );
    assert_eq!(
        cluster.get_kv(0, "through-removed", "linearizable").await,
        None
    );
    // Told by the leader, it knows, says so and serves no reads, not even stale ones; and it
    // remembers across a restart.
    assert!(cluster.nodes[3].log().contains("was removed"));
    for restarted in [false, true] {
        if restarted {
            cluster.nodes[3].kill();
            cluster.nodes[3].start();
            cluster.wait_http(3).await;
        }
        let info = cluster.cluster_info(3).await.unwrap();
        assert_eq!(
            (&info["this_node"]["role"], &info["leader"]),
            (&json!("removed"), &json!(null)),
            "{info}"
        );
        let stale = cluster.get(3, "/v1/kv/after-remove?consistency=stale");
        let (status, refusal) = send_json(stale).await;
        assert_eq!(
            (status, &refusal["error_code"]),
            (503, &json!("not_a_member")),
            "{refusal}"
        );
    }

    let (status, refusal) = send_json(cluster.post(0, "/v1/nodes/999/actions/remove")).await;
    assert_eq!(
        (status, &refusal["error_code"]),
        (404, &json!("node_not_found")),
        "{refusal}"
    );
    let forced = cluster.post(0, &format!("/v1/nodes/{uid}/actions/remove?force=true"));
    let (status, refusal) = send_json(forced).await;
    assert_eq!(
        (status, &refusal["error_code"]),
        (400, &json!("invalid_query")),
        "{refusal}"
    );
    // The removed node says so in its metrics too, for the alert that has it stopped.
    let metrics = cluster.metrics(3).await;
    assert_eq!(
        metric_value(&metrics, "keel_raft_removed"),
        Some(1),
        "{metrics}"
    );
    let metrics = cluster.metrics(0).await;
    assert_eq!(
        metric_value(&metrics, "keel_raft_removed"),
        Some(0),
        "{metrics}"
    );
    assert_eq!(
        send_json(cluster.post(0, "/v1/nodes/abc/actions/remove"))
            .await
            .0,
        400
    );
}

/// The voters of the cluster as node `i` sees it, by uid.
async fn voters(cluster: &Cluster, i: usize) -> Vec<u64> {
    let info = cluster.cluster_info(i).await.unwrap_or_default();
    let mut voters: Vec<u64> = info["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m["voter"] == true)
        .filter_map(|m| m["uid"].as_u64())
        .collect();
    voters.sort_unstable();
    voters
}

/// Waits until node `i` sees `count` voters (it may apply the last change after the joiner
/// reported it done).
async fn wait_for_voters(cluster: &Cluster, i: usize, count: usize) {
    let what = format!("{count} voters");
    common::wait_until(&what, Duration::from_secs(20), || async {
        voters(cluster, i).await.len() == count
    })
    .await;
}

/// Waits until node `i`'s bootstrap has failed and returns its status.
async fn failed_bootstrap(cluster: &Cluster, i: usize) -> serde_json::Value {
    let url = cluster.nodes[i].url("/v1/bootstrap");
    common::wait_until("the bootstrap to fail", Duration::from_secs(30), || async {
        let status = send_json(cluster.client.get(&url)).await.1;
        status["bootstrap_status"]["state"] == "error"
    })
    .await;
    send_json(cluster.client.get(&url)).await.1["bootstrap_status"].clone()
}

/// Starts a node at `dir` with `extra_args` as the cluster's last, asks it to join through
/// `member` (itself if none) and waits for the join to fail; returns its error code and message.
async fn failed_join(
    cluster: &mut Cluster,
    dir: &std::path::Path,
    extra_args: &[&str],
    member: Option<String>,
) -> (String, String) {
    let mut node = common::KeelProcess::new(dir.to_path_buf(), extra_args);
    node.start();
    cluster.nodes.push(node);
    let i = cluster.nodes.len() - 1;
    cluster.wait_http(i).await;
    let member = member.unwrap_or_else(|| cluster.nodes[i].addr());
    start_join(cluster, i, member).await;
    let status = failed_bootstrap(cluster, i).await;
    let text = |field: &serde_json::Value| field.as_str().unwrap_or_default().to_string();
    (
        text(&status["error_code"]),
        text(&status["error_details"]["message"]),
    )
}

/// Asks node `i` to join through `member` and returns at once.
async fn start_join(cluster: &Cluster, i: usize, member: String) {
    let (status, answer) = send_join(cluster, i, member).await;
    assert_eq!(status, 200, "{answer}");
}

/// Sends node `i` a `join_cluster` through `member`; returns the status and the answer.
async fn send_join(cluster: &Cluster, i: usize, member: String) -> (u16, serde_json::Value) {
    let request = cluster
        .client
        .post(cluster.nodes[i].url("/v1/bootstrap/join_cluster"));
    send_json(request.json(&common::join_body(&[member]))).await
}

/// Starts node `i` of `cluster` anew with `extra_args` (its port and directory kept).
fn restart_with(cluster: &mut Cluster, i: usize, extra_args: &[&str]) {
    let node = &mut cluster.nodes[i];
    node.kill();
    node.extra_args = extra_args.iter().map(|s| s.to_string()).collect();
    node.start();
}

#[tokio::test(flavor = "multi_thread")]
async fn nodes_started_together_all_join() {
    // Two nodes asked to join at the same moment: the leader adds them one after the other
    // (before, one of them failed with 409 "already undergoing a configuration change").
    let mut cluster = Cluster::start(3, &[]).await;
    let dir = cluster.nodes[0].dir.parent().unwrap().to_path_buf();
    for n in 4..=5 {
        let mut node = common::KeelProcess::new(dir.join(format!("node{n}")), &[]);
        node.start();
        cluster.nodes.push(node);
    }
    for i in 3..5 {
        cluster.wait_http(i).await;
    }
    let member = cluster.nodes[0].addr();
    tokio::join!(
        start_join(&cluster, 3, member.clone()),
        start_join(&cluster, 4, member)
    );
    for i in 3..5 {
        cluster.wait_bootstrap_completed(i).await;
    }
    wait_for_voters(&cluster, 0, 5).await;

    // Nodes started with --join before the cluster they join exists: they keep asking until
    // it does, then are added. Every node starts afresh; node 0 is started, and creates the
    // cluster, once the joiners are already waiting for it.
    for node in &mut cluster.nodes {
        node.kill();
        std::fs::remove_dir_all(&node.dir).unwrap();
    }
    let founder = cluster.nodes[0].addr();
    let joining = ["--join", &founder, "--user", USER, "--password", PASSWORD];
    for i in 1..3 {
        restart_with(&mut cluster, i, &joining);
        cluster.wait_http(i).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    restart_with(&mut cluster, 0, &[]);
    cluster.wait_http(0).await;
    let create = json!({
        "cluster": { "name": "late.founder" },
        "credentials": { "username": USER, "password": PASSWORD }
    });
    cluster.bootstrap(0, "create_cluster", create).await;
    for i in 1..3 {
        cluster.wait_bootstrap_completed(i).await;
    }
    wait_for_voters(&cluster, 0, 3).await;
    cluster.put_kv(2, "joined-early", "1").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_join_cut_short_is_finished_on_restart() {
    // The state a crash right after join_cluster got its uid leaves behind: the uid reserved
    // in the cluster, the identity written with the join pending, and no member added.
    let mut cluster = Cluster::start(1, &[]).await;
    let node_dir = cluster.nodes[0].dir.parent().unwrap().join("node2");
    let mut node = common::KeelProcess::new(node_dir.clone(), &[]);
    let (status, grant) = send_json(
        cluster
            .post(0, "/v1/cluster/join")
            .json(&json!({ "addr": node.addr() })),
    )
    .await;
    assert_eq!(status, 200, "{grant}");
    let mut identity = grant.clone();
    identity["pending_join"] = json!({ "members": [cluster.nodes[0].addr()] });
    std::fs::create_dir_all(&node_dir).unwrap();
    std::fs::write(node_dir.join("identity.json"), identity.to_string()).unwrap();

    node.start();
    cluster.nodes.push(node);
    cluster.wait_http(1).await;
    cluster.wait_bootstrap_completed(1).await;
    wait_for_voters(&cluster, 0, 2).await;
    let uid = grant["uid"].as_u64().unwrap();
    assert_eq!(voters(&cluster, 0).await, vec![1, uid]);
    let stored = std::fs::read_to_string(node_dir.join("identity.json")).unwrap();
    assert!(!stored.contains("pending_join"), "{stored}");
    cluster.put_kv(1, "after-join", "1").await;
    assert_eq!(
        cluster
            .get_kv(0, "after-join", "linearizable")
            .await
            .as_deref(),
        Some("1")
    );

    // The answer to the join lost: the node, already a voter, asks again on restart, and
    // nothing changes.
    cluster.nodes[1].kill();
    std::fs::write(node_dir.join("identity.json"), identity.to_string()).unwrap();
    cluster.nodes[1].start();
    cluster.wait_http(1).await;
    cluster.wait_bootstrap_completed(1).await;
    assert_eq!(voters(&cluster, 0).await, vec![1, uid]);
    let stored = std::fs::read_to_string(node_dir.join("identity.json")).unwrap();
    assert!(!stored.contains("pending_join"), "{stored}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_joiner_the_leader_cannot_reach_is_told_why_and_joins_once_restarted_right() {
    let mut cluster = Cluster::start(1, &[]).await;
    let dir = cluster.nodes[0].dir.parent().unwrap().join("node2");

    // Told to join through itself: refused at once, not after the join's patience.
    let (_, message) = failed_join(&mut cluster, &dir, &[], None).await;
    assert!(message.contains("this node itself"), "{message}");
    cluster.nodes.pop();

    // (An unspecified --advertise such as 0.0.0.0 is refused before the node starts: see the
    // settings' unit tests.)
    let through = Some(cluster.nodes[0].addr());
    let nowhere = format!("127.0.0.1:{}", common::unused_port());
    let args = ["--advertise", nowhere.as_str()];
    let (code, message) = failed_join(&mut cluster, &dir, &args, through).await;
    assert_eq!(code, "config_error", "{message}");
    assert!(
        message.contains(&nowhere) && message.contains("advertised address"),
        "{message}"
    );
    assert_eq!(voters(&cluster, 0).await, vec![1]);
    // Asked to join again (or anything else), it says what it holds and how to go on.
    let (code, refusal) = send_join(&cluster, 1, cluster.nodes[0].addr()).await;
    assert_eq!(code, 503, "{refusal}");
    // Restarted, it asks the members it was given again: the operator is told which.
    let message = refusal["message"].as_str().unwrap();
    let asks = format!(
        "restart it to finish (a join asks {} again)",
        cluster.nodes[0].addr()
    );
    assert!(message.contains(&asks), "{refusal}");

    // Restarted with the right address, it finishes its join.
    restart_with(&mut cluster, 1, &[]);
    cluster.wait_http(1).await;
    cluster.wait_bootstrap_completed(1).await;
    wait_for_voters(&cluster, 0, 2).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_restarted_at_another_address_is_told_where_the_cluster_knows_it() {
    let mut cluster = Cluster::start(1, &[]).await;
    let known_at = cluster.nodes[0].addr();
    let elsewhere = format!("127.0.0.1:{}", common::unused_port());
    restart_with(&mut cluster, 0, &["--advertise", &elsewhere]);
    cluster.wait_http(0).await;
    let log = cluster.nodes[0].log();
    assert!(
        log.contains(&format!(
            "the cluster knows this node (uid 1) at {known_at}, not at {elsewhere}"
        )),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_are_required_and_bad_requests_get_clear_errors() {
    let cluster = Cluster::start(1, &[]).await;
    let url = cluster.nodes[0].url("/v1/kv/secret");
    assert_eq!(send_json(cluster.client.get(&url)).await.0, 401);
    let (status, body) = send_json(cluster.client.get(&url).basic_auth(USER, Some("wrong"))).await;
    assert_eq!(status, 401);
    assert_eq!(body["error_code"], "access_denied");
    let metrics = cluster.metrics(0).await;
    assert_eq!(
        metric_value(&metrics, "keel_auth_refusals_total"),
        Some(2),
        "{metrics}"
    );
    // In the undermoon dialect's format on its routes.
    let (status, body) = send_json(cluster.client.get(cluster.nodes[0].url("/api/v3/epoch"))).await;
    assert_eq!(
        (status, &body["error"]),
        (401, &json!("UNAUTHORIZED")),
        "{body}"
    );
    // Raft peer routes refuse a caller without the cluster secret.
    let stranger = cluster
        .client
        .post(cluster.nodes[0].url("/raft/vote"))
        .body(vec![0u8; 16]);
    assert_eq!(send_json(stranger).await.0, 401);
    // The bootstrap status stays readable, and a second bootstrap is refused.
    assert_eq!(
        send_json(cluster.client.get(cluster.nodes[0].url("/v1/bootstrap")))
            .await
            .0,
        200
    );
    let again =
        json!({"cluster": {"name": "x"}, "credentials": {"username": "a", "password": "b"}});
    // Whatever the body: the node is a member, so that is the answer.
    for body in [again, json!({})] {
        let (status, refusal) =
            send_json(cluster.post(0, "/v1/bootstrap/create_cluster").json(&body)).await;
        assert_eq!(
            (status, &refusal["error_code"]),
            (409, &json!("already_bootstrapped")),
            "{refusal}"
        );
        assert_eq!(refusal["state"], "completed", "{refusal}");
        let message = refusal["message"].as_str().unwrap();
        assert!(
            message.contains("already belongs to a cluster"),
            "{refusal}"
        );
    }
    // An action that does not exist is refused as such, member or not.
    let (status, error) = send_json(
        cluster
            .post(0, "/v1/bootstrap/create_clustr")
            .json(&json!({})),
    )
    .await;
    assert_eq!(
        (status, &error["error_code"]),
        (400, &json!("config_error")),
        "{error}"
    );

    for body in ["not json", "{\"value\": 5}", "{\"other\": \"x\"}"] {
        let (status, error) = send_json(cluster.put(0, "/v1/kv/k").body(body)).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(error["error_code"], "invalid_body", "{body}");
        assert!(error["message"].as_str().unwrap().len() > 10);
    }
    // The server answers 413 before reading the whole body and closes the connection, so the
    // client can lose the race and see a reset while still sending: retry for the answer.
    // Its own client, so the closed connection never goes back to the shared pool.
    let huge = "x".repeat(3 << 20);
    for (method, path) in [
        (reqwest::Method::PUT, "/v1/kv/k"),
        (reqwest::Method::POST, "/clusters/big/versions/0"),
    ] {
        let mut answer = None;
        for _ in 0..5 {
            let request = common::client()
                .request(method.clone(), cluster.nodes[0].url(path))
                .basic_auth(USER, Some(PASSWORD))
                .json(&json!({ "value": huge }));
            if let Ok(response) = request.send().await {
                let status = response.status().as_u16();
                let error: serde_json::Value = response.json().await.unwrap_or_default();
                answer = Some((status, error["error_code"].clone()));
                break;
            }
        }
        assert_eq!(answer, Some((413, json!("payload_too_large"))), "{path}");
    }
    let long_key = "k".repeat(2000);
    let request = cluster
        .put(0, &format!("/v1/kv/{long_key}"))
        .json(&json!({"value": "v"}));
    assert_eq!(send_json(request).await.0, 400);
    let (status, error) = send_json(cluster.get(0, "/v1/kv/k?consistency=eventual")).await;
    assert_eq!(
        (status, error["error_code"].as_str()),
        (400, Some("invalid_consistency"))
    );
    let (status, error) = send_json(
        cluster
            .put(0, "/v1/kv/k?prev_revision=abc")
            .json(&json!({"value": "v"})),
    )
    .await;
    assert_eq!(
        (status, error["error_code"].as_str()),
        (400, Some("invalid_query"))
    );
    let (status, error) = send_json(cluster.get(0, "/v1/kv/missing")).await;
    assert_eq!(
        (status, error["error_code"].as_str()),
        (404, Some("key_not_found"))
    );
    // What the HTTP layer answers by itself is in the same format.
    for (request, status, code, said) in [
        (
            cluster.get(0, "/v1/nowhere"),
            404,
            "not_found",
            "no such endpoint",
        ),
        (cluster.get(0, "/v1/kv/%FF"), 400, "bad_request", "UTF-8"),
        (
            cluster.post(0, "/v1/kv/k"),
            405,
            "method_not_allowed",
            "POST",
        ),
        (
            cluster.delete(0, "/v1/bootstrap"),
            405,
            "method_not_allowed",
            "DELETE",
        ),
        // A misspelt condition must not make a blind write, nor a past read a present one.
        (
            cluster
                .put(0, "/v1/kv/k?prevRevision=0")
                .json(&json!({"value": "v"})),
            400,
            "invalid_query",
            "prevRevision",
        ),
        (
            cluster.get(0, "/v1/kv/k?revision=1"),
            400,
            "invalid_query",
            "watches",
        ),
        (
            cluster.get(0, "/v1/kv?prefix=k&revison=1&watch=true"),
            400,
            "invalid_query",
            "revison",
        ),
        (
            cluster.delete(0, "/v1/kv/k?lease=5"),
            400,
            "invalid_query",
            "lease",
        ),
    ] {
        let (got, error) = send_json(request).await;
        assert_eq!((got, error["error_code"].as_str()), (status, Some(code)));
        assert!(error["message"].as_str().unwrap().contains(said), "{error}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_whose_identity_or_store_is_lost_refuses_to_start() {
    let mut cluster = Cluster::start(1, &[]).await;
    cluster.put_kv(0, "kept", "1").await;
    cluster.nodes[0].kill();
    let dir = cluster.nodes[0].dir.clone();
    let identity = std::fs::read(dir.join("identity.json")).unwrap();
    std::fs::remove_file(dir.join("identity.json")).unwrap();
    cluster.nodes[0].start();
    cluster.nodes[0].fails_saying("holds a member's Raft log and state but no identity.json");
    // Nor an identity whose store is gone: the node would have forgotten its log and vote.
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("identity.json"), identity).unwrap();
    cluster.nodes[0].start();
    cluster.nodes[0].fails_saying("but its store is empty");
}

/// Values that do not compress, so that they fill a disk as fast as their size says.
fn incompressible(len: usize, seed: u64) -> String {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            char::from(b'a' + (state % 26) as u8)
        })
        .collect()
}

/// Needs root (it mounts a small tmpfs); says so and passes elsewhere.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_whose_disk_fills_exits_and_recovers_once_there_is_room() {
    let mut cluster = Cluster::start(1, &[]).await;
    cluster.put_kv(0, "before", "1").await;
    cluster.nodes[0].kill();
    // The node's data moves to a small disk of its own; its log stays beside it.
    let base = tempfile::tempdir().unwrap();
    let small = base.path().join("node");
    std::fs::create_dir(&small).unwrap();
    let mount = |options: &str| {
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(&small)
            .status()
            .is_ok_and(|status| status.success())
    };
    if !mount("size=40m") {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(small.clone());
    let copied = Command::new("cp")
        .arg("-a")
        .arg(cluster.nodes[0].dir.join("."))
        .arg(&small)
        .status()
        .unwrap();
    assert!(copied.success());
    cluster.nodes[0].dir = small.clone();
    cluster.nodes[0].start();
    cluster.wait_http(0).await;
    let mut acknowledged = Vec::new();
    for i in 0..1000 {
        let key = format!("fill-{i}");
        let value = incompressible(150_000, i);
        let request = cluster
            .put(0, &format!("/v1/kv/{key}"))
            .json(&json!({ "value": value }));
        let Ok(response) = request.send().await else {
            break;
        };
        if !response.status().is_success() {
            break;
        }
        acknowledged.push(key);
    }
    assert!(
        !acknowledged.is_empty() && acknowledged.len() < 1000,
        "{} writes",
        acknowledged.len()
    );
    // It stops rather than answer errors for ever.
    cluster.nodes[0].fails_saying("No space left on device");
    // With room again it recovers from its log and has every acknowledged write.
    assert!(mount("remount,size=200m"));
    cluster.nodes[0].start();
    cluster.wait_http(0).await;
    for key in ["before"]
        .into_iter()
        .chain(acknowledged.iter().map(String::as_str))
    {
        assert!(
            cluster.get_kv(0, key, "linearizable").await.is_some(),
            "{key} was acknowledged and is gone"
        );
    }
    cluster.nodes[0].kill();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_node_neither_disrupts_the_leader_nor_goes_unreported() {
    let cluster = Cluster::start(3, &[]).await;
    let leader = cluster.leader().await;
    let term = |info: serde_json::Value| info["term"].as_u64().unwrap();
    let before = term(cluster.cluster_info(leader).await.unwrap());
    // A follower that missed the leader for several election timeouts asks whether it could
    // win before it raises its term; its peers, hearing from the leader, say no.
    let follower = (leader + 1) % 3;
    let follower_uid = uid_of(&cluster, follower).await;
    cluster.nodes[follower].signal("STOP");
    // The leader tells of the silent follower at once, not at the next write (none comes).
    let silent = format!("follower {follower_uid} has not answered this leader");
    cluster.wait_logged(leader, &silent).await;
    let metrics = cluster.metrics(leader).await;
    let series = format!("keel_raft_follower_unheard_milliseconds{{follower=\"{follower_uid}\"}}");
    assert!(
        metric_value(&metrics, &series).is_some_and(|ms| ms > 900),
        "{metrics}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.nodes[follower].signal("CONT");
    let back = format!("follower {follower_uid} answers again");
    cluster.wait_logged(leader, &back).await;
    cluster.put_kv(follower, "after-pause", "1").await;
    let info = cluster.cluster_info(leader).await.unwrap();
    assert_eq!(
        (&info["this_node"]["role"], term(info.clone())),
        (&json!("leader"), before),
        "{info}"
    );
    // The paused node knows it was the one that stopped, and blames no leader for it.
    cluster
        .wait_logged(follower, "this process did not run for")
        .await;
    let log = cluster.nodes[follower].log();
    assert!(!log.contains("has not been heard from"), "{log}");
    // A leader whose quorum went silent says so, in its log and metrics.
    let others = [(leader + 1) % 3, (leader + 2) % 3];
    pause_until_reported(
        &cluster,
        others,
        leader,
        "no quorum has answered",
        "keel_raft_quorum_unheard_milliseconds",
    )
    .await;
    for i in others {
        cluster.nodes[i].signal("CONT");
    }
    cluster.put_kv(leader, "after-silence", "1").await;
    let metrics = cluster.metrics(0).await;
    assert!(
        metric_value(&metrics, "keel_raft_leader_changes_total").is_some_and(|n| n >= 1),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_follower_that_no_longer_hears_its_leader_says_so() {
    let cluster = Cluster::start(3, &[]).await;
    let leader = cluster.leader().await;
    let (follower, other) = ((leader + 1) % 3, (leader + 2) % 3);
    let unheard_ms = |info: &serde_json::Value| info["this_node"]["leader_unheard_ms"].as_u64();
    let info = cluster.cluster_info(leader).await.unwrap();
    assert_eq!(unheard_ms(&info), None, "a leader follows nobody: {info}");
    let leader_uid = uid_of(&cluster, leader).await;
    // With the leader and the other voter paused, no election can succeed (pre-vote), so the
    // follower keeps naming the leader it last heard of, and says how long ago that was.
    pause_until_reported(
        &cluster,
        [leader, other],
        follower,
        "the leader has not been heard from",
        "keel_raft_leader_unheard_milliseconds",
    )
    .await;
    let info = cluster.cluster_info(follower).await.unwrap();
    assert_eq!(info["leader"], json!(leader_uid), "{info}");
    assert!(unheard_ms(&info).is_some_and(|ms| ms > 900), "{info}");
    // Once a leader is heard again (the old one, or one elected now), the figure drops.
    cluster.nodes[leader].signal("CONT");
    cluster.nodes[other].signal("CONT");
    common::wait_until(
        "the follower to hear a leader again",
        Duration::from_secs(10),
        || async {
            let info = cluster.cluster_info(follower).await.unwrap();
            unheard_ms(&info).is_some_and(|ms| ms < 900)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_request_pending_on_a_paused_leader_goes_to_the_next_one() {
    let cluster = Cluster::start(3, &[]).await;
    let leader = cluster.leader().await;
    let (follower, other) = ((leader + 1) % 3, (leader + 2) % 3);
    // The follower's forward connection to the leader is open, so the next write is sent on
    // it at once and waits there for an answer the paused leader never gives.
    cluster.put_kv(follower, "before", "1").await;
    let (status, lease) =
        send_json(cluster.post(other, "/v1/leases").json(&json!({"ttl": 60}))).await;
    assert_eq!(status, 200, "{lease}");
    let lease = lease["id"].as_u64().unwrap();
    cluster.nodes[leader].signal("STOP");
    // The request timeout (5 s) is ten times an election: the write succeeds through the new
    // leader instead of timing out on the old one, and so do a keep-alive and a time to live,
    // which the other follower relays over HTTP.
    let keepalive = send_json(cluster.post(other, &format!("/v1/leases/{lease}/keepalive")));
    let time_to_live = send_json(cluster.get(other, &format!("/v1/leases/{lease}")));
    let (revision, keepalive, time_to_live) = tokio::join!(
        cluster.put_kv(follower, "while-paused", "1"),
        keepalive,
        time_to_live
    );
    assert_eq!(keepalive.0, 200, "{}", keepalive.1);
    assert_eq!(time_to_live.0, 200, "{}", time_to_live.1);
    assert_eq!(
        cluster.get_kv(other, "while-paused", "linearizable").await,
        Some("1".into())
    );
    // The old leader follows again, and the write applied once: the revision the client was
    // told is the key's revision everywhere.
    cluster.nodes[leader].signal("CONT");
    for i in 0..3 {
        let (status, kv) = send_json(cluster.get(i, "/v1/kv/while-paused")).await;
        assert_eq!(
            (status, &kv["mod_revision"], &kv["version"]),
            (200, &json!(revision), &json!(1)),
            "node {i}: {kv}"
        );
    }
    // The old leader, following now, counts its new leader's silence from when it learnt of
    // it, not from when it last followed anyone (never: it led since the start).
    let info = cluster.cluster_info(leader).await.unwrap();
    let unheard = info["this_node"]["leader_unheard_ms"].as_u64();
    assert!(unheard.is_some_and(|ms| ms < 900), "{info}");
    let log = cluster.nodes[leader].log();
    assert!(!log.contains("has not been heard from"), "{log}");
}

/// Pauses the nodes `paused` until node `reporter` logs `said`, and checks that its `metric`
/// counts past the reporting threshold (three election timeouts of 300 ms).
async fn pause_until_reported(
    cluster: &Cluster,
    paused: [usize; 2],
    reporter: usize,
    said: &str,
    metric: &str,
) {
    for i in paused {
        cluster.nodes[i].signal("STOP");
    }
    cluster.wait_logged(reporter, said).await;
    let metrics = cluster.metrics(reporter).await;
    let unheard = metric_value(&metrics, metric);
    assert!(unheard.is_some_and(|ms| ms > 900), "{metrics}");
}

/// uid of node `i`, as it says.
async fn uid_of(cluster: &Cluster, i: usize) -> u64 {
    let info = cluster.cluster_info(i).await.expect("cluster info");
    info["this_node"]["uid"].as_u64().expect("uid")
}

/// Sends `request` and checks that the membership change is refused, saying `said`.
async fn refused_membership_change(request: reqwest::RequestBuilder, said: &str) {
    let (status, refusal) = send_json(request).await;
    assert_eq!(
        (status, &refusal["error_code"]),
        (409, &json!("membership_change_refused")),
        "{refusal}"
    );
    let message = refusal["message"].as_str().unwrap();
    assert!(message.contains(said), "{refusal}");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_process_never_counts_as_two_voters() {
    let cluster = Cluster::start(3, &[]).await;
    // A member's address is not given to another node.
    let taken = cluster.nodes[1].addr();
    let request = cluster
        .post(0, "/v1/cluster/members")
        .json(&json!({"uid": 99, "addr": taken}));
    refused_membership_change(request, "is the address of member").await;
    // Peer requests meant for another uid are refused by the process that gets them.
    let identity: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cluster.nodes[1].dir.join("identity.json")).unwrap())
            .unwrap();
    let secret = identity["secret"].as_str().unwrap();
    let uid = uid_of(&cluster, 1).await;
    for (meant_for, refused) in [(uid + 100, true), (uid, false)] {
        let response = cluster
            .client
            .post(cluster.nodes[1].url("/raft/vote"))
            .header("x-keel-cluster-secret", secret)
            .header("x-keel-target-uid", meant_for.to_string())
            .body(vec![0u8; 4])
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        // The one meant for this node passes to decoding, which the junk body fails.
        let expected = if refused { 421 } else { 400 };
        assert_eq!(status, expected, "{text}");
    }
    assert_eq!(voters(&cluster, 0).await.len(), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_removal_that_would_leave_no_quorum_up_is_refused() {
    let mut cluster = Cluster::start(3, &[]).await;
    let leader = cluster.leader().await;
    let down = (leader + 1) % 3;
    let live_follower = (leader + 2) % 3;
    let (down_uid, live_uid) = (
        uid_of(&cluster, down).await,
        uid_of(&cluster, live_follower).await,
    );
    cluster.nodes[down].kill();
    // Past two election timeouts, the leader no longer counts it as up.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Removing a live voter would pass through a joint membership that needs the dead one.
    let remove = |uid: u64| cluster.post(leader, &format!("/v1/nodes/{uid}/actions/remove"));
    refused_membership_change(remove(live_uid), "do not answer").await;
    cluster.put_kv(leader, "still-writable", "1").await;
    // Removing the one that is down leaves two that are up; asked of a follower, the leader
    // judges it.
    let through_follower = cluster.post(
        live_follower,
        &format!("/v1/nodes/{down_uid}/actions/remove"),
    );
    let (status, done) = send_json(through_follower).await;
    assert_eq!(status, 200, "{done}");
    wait_for_voters(&cluster, leader, 2).await;
    cluster.put_kv(live_follower, "after-removal", "1").await;
    // Down when it was removed, it is told once it is back.
    cluster.nodes[down].start();
    cluster.wait_http(down).await;
    common::wait_until(
        "the removed node to be told",
        Duration::from_secs(15),
        || async {
            let info = cluster.cluster_info(down).await.unwrap_or_default();
            info["this_node"]["role"] == "removed"
        },
    )
    .await;
    let stale = cluster.get(down, "/v1/kv/after-removal?consistency=stale");
    assert_eq!(send_json(stale).await.0, 503);
}

#[tokio::test(flavor = "multi_thread")]
async fn open_routes_never_open_membership_changes() {
    let cluster = Cluster::start(1, &["--open-routes", "cluster"]).await;
    let anonymous = |request: &str| cluster.nodes[0].url(request);
    let (status, info) = send_json(cluster.client.get(anonymous("/v1/cluster"))).await;
    assert_eq!(status, 200, "{info}");
    // Joining hands out the cluster secret; removing takes a voter away.
    for path in [
        "/v1/cluster/join",
        "/v1/cluster/members",
        "/v1/nodes/1/actions/remove",
    ] {
        let request = cluster
            .client
            .post(anonymous(path))
            .json(&json!({"addr": "127.0.0.1:1", "uid": 7}));
        let (status, refusal) = send_json(request).await;
        assert_eq!(
            (status, &refusal["error_code"]),
            (401, &json!("access_denied")),
            "{path}: {refusal}"
        );
    }
    assert_eq!(voters(&cluster, 0).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn compare_and_set_and_idempotent_retries() {
    let cluster = Cluster::start(3, &[]).await;
    let create = |i: usize, value: &str| {
        cluster
            .put(i, "/v1/kv/cas?prev_revision=0")
            .json(&json!({ "value": value }))
    };
    let (status, created) = send_json(create(0, "a")).await;
    assert_eq!(status, 200);
    let revision = created["revision"].as_u64().unwrap();
    let (status, conflict) = send_json(create(1, "b")).await;
    assert_eq!(status, 409);
    assert_eq!(conflict["current_revision"], revision);
    let swap = cluster
        .put(2, &format!("/v1/kv/cas?prev_revision={revision}"))
        .json(&json!({"value": "c"}));
    assert_eq!(send_json(swap).await.0, 200);
    assert_eq!(
        cluster.get_kv(0, "cas", "linearizable").await.as_deref(),
        Some("c")
    );

    // The same Idempotency-Key through two different nodes applies once.
    let keyed_put = |i: usize| {
        cluster
            .put(i, "/v1/kv/counter")
            .header("Idempotency-Key", "req-42")
            .json(&json!({"value": "1"}))
    };
    let first = send_json(keyed_put(1)).await;
    let retry = send_json(keyed_put(2)).await;
    assert_eq!(first, retry);
    assert_eq!(
        send_json(cluster.get(0, "/v1/kv/counter")).await.1["version"],
        1
    );
    // The same key with another command is another request, not a retry.
    let other = cluster
        .put(0, "/v1/kv/counter")
        .header("Idempotency-Key", "req-42")
        .json(&json!({"value": "2"}));
    assert_eq!(send_json(other).await.1["kv"]["version"], 2);
    for (key, status) in [
        ("k".repeat(122), 400),
        ("a b".into(), 400),
        ("k".repeat(121), 200),
    ] {
        let put = cluster
            .put(0, "/v1/kv/keyed")
            .header("Idempotency-Key", key.as_str())
            .json(&json!({"value": "v"}));
        let (got, answer) = send_json(put).await;
        assert_eq!(got, status, "{key:?}: {answer}");
    }

    assert_eq!(send_json(cluster.delete(0, "/v1/kv/cas")).await.0, 200);
    assert_eq!(cluster.get_kv(1, "cas", "linearizable").await, None);
    assert_eq!(send_json(cluster.delete(0, "/v1/kv/cas")).await.0, 404);
    let stale = cluster
        .get(1, "/v1/kv/counter?consistency=stale")
        .send()
        .await
        .unwrap();
    assert_eq!(stale.headers()["x-keel-consistency"], "stale");
    let lease = cluster
        .get(2, "/v1/kv/counter?consistency=lease")
        .send()
        .await
        .unwrap();
    assert_eq!(lease.headers()["x-keel-consistency"], "lease");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_a_quorum_requests_wait_a_bounded_time_then_get_503() {
    let mut cluster = Cluster::start(3, &["--request-timeout-ms", "1500"]).await;
    cluster.put_kv(0, "k", "v").await;
    let survivor = cluster.leader().await;
    for i in (0..3).filter(|i| *i != survivor) {
        cluster.nodes[i].kill();
    }
    let started = Instant::now();
    let response = cluster
        .put(survivor, "/v1/kv/k")
        .json(&json!({"value": "lost?"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 503);
    assert!(response.headers().contains_key("retry-after"));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the wait must be bounded"
    );
    // The log names the request that failed, not only why.
    cluster
        .wait_logged(
            survivor,
            "request failed method=PUT uri=/v1/kv/k status=503",
        )
        .await;
    // Each request gets its answer within its own timeout, however many wait together: one
    // queued behind batches that wait out their time must not then wait out its own.
    let timed = |request: reqwest::RequestBuilder| async move {
        let started = Instant::now();
        let response = request.send().await.unwrap();
        (response.status(), started.elapsed())
    };
    // Three writes, one after the other, each take one of the node's three batches for their
    // whole time; the writes and reads after them queue.
    let writes = (0..9).map(|i| {
        let write = cluster.put(survivor, &format!("/v1/kv/k{i}"));
        let write = write.json(&json!({"value": "lost?"}));
        async move {
            tokio::time::sleep(Duration::from_millis(100) * i.min(4)).await;
            timed(write).await
        }
    });
    let reads = (0..6).map(|_| async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        timed(cluster.get(survivor, "/v1/kv/k")).await
    });
    let (writes, reads) = tokio::join!(join_all(writes), join_all(reads));
    for (status, took) in writes.into_iter().chain(reads) {
        assert_eq!(status, 503);
        assert!(took < Duration::from_millis(2800), "{took:?}");
    }
    // ... and counts them by route family and status, with a client that gave up first as
    // 499 (nginx's "client closed request").
    let metrics = cluster.metrics(survivor).await;
    let failed = r#"keel_http_requests_total{family="kv",code="503"}"#;
    assert_eq!(metric_value(&metrics, failed), Some(16), "{metrics}");
    let impatient = cluster
        .put(survivor, "/v1/kv/k")
        .json(&json!({"value": "lost?"}));
    let gave_up = impatient.timeout(Duration::from_millis(200)).send().await;
    assert!(gave_up.is_err_and(|err| err.is_timeout()));
    let closed = r#"keel_http_requests_total{family="kv",code="499"}"#;
    common::wait_until(
        "the abandoned request counted",
        Duration::from_secs(5),
        || async { metric_value(&cluster.metrics(survivor).await, closed) == Some(1) },
    )
    .await;
    let (status, _) = send_json(cluster.get(survivor, "/v1/kv/k")).await;
    assert_eq!(
        status, 503,
        "a linearizable read without a quorum must not answer"
    );
    let (status, body) = send_json(cluster.get(survivor, "/v1/kv/k?consistency=stale")).await;
    assert_eq!((status, body["value"].as_str()), (200, Some("v")));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_creation_cut_short_is_finished_on_restart() {
    use argon2::password_hash::SaltString;
    use argon2::PasswordHasher;
    // The state a crash right after create_cluster wrote the node's identity leaves behind.
    let dir = tempfile::tempdir().unwrap();
    let node_dir = dir.path().join("node1");
    std::fs::create_dir_all(&node_dir).unwrap();
    let salt = SaltString::encode_b64(b"fixed-test-salt!").unwrap();
    let hash = argon2::Argon2::default()
        .hash_password(PASSWORD.as_bytes(), &salt)
        .unwrap()
        .to_string();
    let identity = json!({
        "uid": 1, "cluster_name": "resumed", "secret": "s3cret",
        "pending_init": { "credentials": { "username": USER, "password_hash": hash } }
    });
    std::fs::write(node_dir.join("identity.json"), identity.to_string()).unwrap();

    let mut node = common::KeelProcess::new(node_dir.clone(), &[]);
    node.start();
    let client = common::client();
    common::wait_until("the creation to finish", Duration::from_secs(30), || {
        let request = client.get(node.url("/v1/bootstrap"));
        async move {
            let Ok(response) = request.send().await else {
                return false;
            };
            let status: serde_json::Value = response.json().await.unwrap_or_default();
            status["bootstrap_status"]["state"] == "completed"
        }
    })
    .await;
    // The credentials from the interrupted creation are in force, and it is recorded as done.
    assert_eq!(send_json(client.get(node.url("/v1/kv/k"))).await.0, 401);
    let (status, info) = send_json(
        client
            .get(node.url("/v1/cluster"))
            .basic_auth(USER, Some(PASSWORD)),
    )
    .await;
    assert_eq!((status, info["name"].as_str()), (200, Some("resumed")));
    let stored = std::fs::read_to_string(node_dir.join("identity.json")).unwrap();
    assert!(!stored.contains("pending_init"), "{stored}");
}

/// Runs `keel bench` against `cluster` and returns its JSON result.
async fn bench(cluster: &Cluster, password: &str, args: &[&str]) -> serde_json::Value {
    let endpoints: Vec<_> = cluster.nodes.iter().map(|n| n.addr()).collect();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["bench", "--endpoints", &endpoints.join(",")])
        .args(["--user", USER, "--password", password])
        .args(
            ["--seconds", "30"]
                .iter()
                .filter(|_| !args.contains(&"--seconds")),
        )
        .args(args)
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    serde_json::from_slice(&output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_load_generator_counts_what_it_did() {
    let cluster = Cluster::start(3, &["--worker-threads", "1"]).await;
    let put = bench(&cluster, PASSWORD, &["--clients", "4", "--ops", "200"]).await;
    assert_eq!(
        (put["ops"].as_u64(), put["errors"].as_u64()),
        (Some(200), Some(0))
    );
    // Keys are numbered from 0 and written to every node in turn.
    let last = cluster.get_kv(1, "bench/000000c7", "linearizable").await;
    assert_eq!(last.as_deref(), Some("v".repeat(256).as_str()));

    let mixed = bench(
        &cluster,
        PASSWORD,
        &["--workload", "mixed", "--clients", "8", "--ops", "100"],
    )
    .await;
    assert_eq!(
        (mixed["ops"].as_u64(), mixed["errors"].as_u64()),
        (Some(100), Some(0))
    );
    assert!(mixed["p50_ms"].as_f64().unwrap() > 0.0, "{mixed}");

    // Requests of the warm-up are made (here the next keys are written) but not measured.
    let warmed = bench(
        &cluster,
        PASSWORD,
        &[
            "--clients",
            "4",
            "--warmup",
            "1",
            "--seconds",
            "1",
            "--first-key",
            "200",
        ],
    )
    .await;
    let (ops, warmup_ops) = (warmed["ops"].as_u64(), warmed["warmup_ops"].as_u64());
    assert!(ops > Some(0) && warmup_ops > Some(0), "{warmed}");
    assert_eq!(warmed["errors"], 0, "{warmed}");
    // The measured time leaves the warm-up out.
    let measured = warmed["seconds"].as_f64().unwrap();
    assert!((1.0..1.9).contains(&measured), "{warmed}");
    let next_key = 200 + ops.unwrap() + warmup_ops.unwrap();
    let key = |n: u64| format!("bench/{n:08x}");
    let last = cluster.get_kv(2, &key(next_key - 1), "linearizable").await;
    let beyond = cluster.get_kv(2, &key(next_key), "linearizable").await;
    assert!(last.is_some() && beyond.is_none(), "{warmed}");

    let refused = bench(&cluster, "wrong", &["--clients", "2", "--ops", "10"]).await;
    assert_eq!(
        (refused["ops"].as_u64(), refused["errors"].as_u64()),
        (Some(0), Some(10))
    );
}

/// A node told to stop (SIGTERM) ends its watches and long polls at once, telling each client
/// to ask another node, and exits: before, it waited for them (30 s for a ClusterFlux poll by
/// default, for ever for a watch stream) and meanwhile, no longer taking connections, stayed
/// the leader, so that the leases it could not hear refreshed expired.
#[tokio::test(flavor = "multi_thread")]
async fn a_node_told_to_stop_ends_its_watches_and_exits() {
    let mut cluster = Cluster::start(1, &[]).await;
    let revision = cluster.put_kv(0, "watched/a", "1").await;
    let watch = cluster
        .get(
            0,
            &format!("/v1/kv?prefix=watched/&watch=true&revision={revision}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(watch.status(), 200);
    let poll = tokio::spawn(send_json(
        cluster.get(0, "/clusters/polled/versions/0?timeout=120"),
    ));
    // The poll is waiting (no metadata was written) when the signal comes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!poll.is_finished(), "{:?}", poll.await);
    let node = &mut cluster.nodes[0];
    let exited = tokio::task::block_in_place(|| node.terminate(Duration::from_secs(20)));
    let (status, answer) = poll.await.unwrap();
    assert_eq!(
        (status, answer["error_code"].as_str()),
        (503, Some("shutting_down")),
        "{answer}"
    );
    let lines = watch.text().await.unwrap();
    let last: serde_json::Value = serde_json::from_str(lines.lines().last().unwrap()).unwrap();
    assert_eq!(last["error_code"], "shutting_down", "{lines}");
    let exited = exited.expect("the node was still running 20 s after SIGTERM");
    assert!(exited < Duration::from_secs(10), "{exited:?}");
}

/// A leader told to stop hands leadership to a follower before it goes, so the cluster does
/// not wait out an election timeout without a leader (a rolling restart's usual case).
#[tokio::test(flavor = "multi_thread")]
async fn a_write_pending_when_its_node_stops_is_told_so() {
    let mut cluster = Cluster::start(3, &["--request-timeout-ms", "20000"]).await;
    let leader = cluster.leader().await;
    for i in (0..3).filter(|i| *i != leader) {
        cluster.nodes[i].kill();
    }
    // Without a quorum the write waits; the node stops before it is answered.
    let write = cluster
        .put(leader, "/v1/kv/pending")
        .json(&json!({"value": "?"}));
    let pending = tokio::spawn(send_json(write));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let node = &mut cluster.nodes[leader];
    let exited = tokio::task::block_in_place(|| node.terminate(Duration::from_secs(30)));
    assert!(exited.is_some(), "the node did not exit");
    let (status, answer) = pending.await.unwrap();
    assert_eq!(
        (status, &answer["error_code"]),
        (503, &json!("shutting_down")),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_told_to_stop_hands_leadership_over() {
    let mut cluster = Cluster::start(3, &[]).await;
    cluster.put_kv(0, "before", "1").await;
    let leader = cluster.leader().await;
    let node = &mut cluster.nodes[leader];
    let exited = tokio::task::block_in_place(|| node.terminate(Duration::from_secs(20)));
    assert!(exited.is_some(), "the leader did not exit");
    let log = cluster.nodes[leader].log();
    assert!(log.contains("handed leadership over"), "{log}");
    let survivor = (leader + 1) % 3;
    cluster.put_kv(survivor, "after", "2").await;
    assert_eq!(
        cluster
            .get_kv(survivor, "before", "linearizable")
            .await
            .as_deref(),
        Some("1")
    );
    // The rest stop one after the other while writes go on, the last one without a quorum.
    // A stop is routine: no node logs an error (the new leader's appends reaching a stopped
    // Raft core, and the lessor's read waiting for a quorum, each logged one).
    let writes = {
        let client = cluster.client.clone();
        let urls: Vec<String> = (0..3).map(|i| cluster.nodes[i].url("/v1/kv/")).collect();
        tokio::spawn(async move {
            for n in 0u64.. {
                let url = format!("{}during-stop-{n}", urls[n as usize % 3]);
                let request = client
                    .put(url)
                    .basic_auth(common::USER, Some(common::PASSWORD));
                let _ = request.json(&json!({"value": "x"})).send().await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in (1..3).map(|step| (leader + step) % 3) {
        let node = &mut cluster.nodes[i];
        let exited = tokio::task::block_in_place(|| node.terminate(Duration::from_secs(20)));
        assert!(exited.is_some(), "node {i} did not exit");
    }
    writes.abort();
    for (i, node) in cluster.nodes.iter().enumerate() {
        let log = node.log();
        assert!(!log.contains("ERROR"), "node {i}: {log}");
    }
}
