//! Leases, the ClusterFlux registry, versioned metadata and watches, end to end on clusters of
//! real `keel` processes.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;
use std::time::Instant;

use common::metric_value;
use common::send_json;
use common::Cluster;
use futures::StreamExt;
use serde_json::json;
use serde_json::Value;

async fn register(cluster: &Cluster, i: usize, name: &str, ttl: u64) -> u64 {
    let body = json!({
        "ip": "10.0.0.7",
        "hostname": name,
        "bind-address": "10.0.0.7:8086",
        "metadata": { "role": "data" },
        "ttl": ttl
    });
    let (status, node) = send_json(cluster.post(i, "/nodes/metrics").json(&body)).await;
    assert_eq!(status, 200, "{node}");
    assert_eq!(node["hostname"], name);
    assert_eq!(node["alive"], true);
    node["id"].as_u64().unwrap()
}

async fn registered_ids(cluster: &Cluster, i: usize) -> BTreeSet<u64> {
    let (status, nodes) = send_json(cluster.get(i, "/nodes/metrics")).await;
    assert_eq!(status, 200, "{nodes}");
    nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_that_stops_refreshing_disappears_after_its_ttl_on_every_node() {
    let cluster = Cluster::start(3, &[]).await;
    // Registrations are bounded: every listing carries them.
    let long = "h".repeat(1025);
    let big = "m".repeat((1 << 20) + 1);
    for (body, status, code) in [
        (
            json!({"hostname": long, "bind-address": "10.0.0.7:8086"}),
            400,
            "config_error",
        ),
        (
            json!({"hostname": "   ", "bind-address": "10.0.0.7:8086"}),
            400,
            "config_error",
        ),
        (
            json!({"hostname": "h", "bind-address": "10.0.0.7:8086", "metadata": big}),
            413,
            "payload_too_large",
        ),
    ] {
        let (got, error) = send_json(cluster.post(0, "/nodes/metrics").json(&body)).await;
        assert_eq!((got, error["error_code"].as_str()), (status, Some(code)));
    }
    let registered = Instant::now();
    let id = register(&cluster, 1, "influx-a", 2).await;
    for i in 0..3 {
        assert!(registered_ids(&cluster, i).await.contains(&id));
    }
    // Gone everywhere once the TTL has passed (and not before it).
    let mut gone_at = Vec::new();
    for i in 0..3 {
        while registered_ids(&cluster, i).await.contains(&id) {
            assert!(
                registered.elapsed() < Duration::from_secs(10),
                "node {id} never expired"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        gone_at.push(registered.elapsed());
    }
    let first = gone_at.iter().min().unwrap();
    assert!(
        *first >= Duration::from_secs(2),
        "expired early: {gone_at:?}"
    );
    assert!(*first < Duration::from_secs(4), "expired late: {gone_at:?}");
    eprintln!("ttl 2 s: gone after {gone_at:?} on the three nodes");

    let (status, error) = send_json(cluster.put(0, &format!("/nodes/metrics/{id}"))).await;
    assert_eq!(
        (status, error["error_code"].as_str()),
        (404, Some("node_not_found"))
    );
    let (_, all) = send_json(cluster.get(2, "/nodes")).await;
    assert_eq!(all["cflux"].as_array().unwrap().len(), 3, "{all}");
    assert!(
        all["cflux"]
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["alive"] == true),
        "{all}"
    );
    assert_eq!(all["influx"].as_array().unwrap().len(), 0, "{all}");
}

#[tokio::test(flavor = "multi_thread")]
async fn refreshes_keep_a_node_alive_across_a_leader_kill() {
    let mut cluster = Cluster::start(3, &[]).await;
    let id = register(&cluster, 0, "influx-b", 3).await;
    let doomed = register(&cluster, 0, "influx-c", 3).await;
    let refresh = |cluster: &Cluster, i: usize| cluster.put(i, &format!("/nodes/metrics/{id}"));
    // Refresh through a follower: relayed to the leader.
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let (status, body) = send_json(refresh(&cluster, follower)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body,
        json!({ "id": id, "ttl": 3 }),
        "the node's id, not its lease's"
    );

    cluster.nodes[leader].kill();
    let survivors: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(7) {
        let (status, body) = send_json(refresh(&cluster, survivors[0])).await;
        assert_eq!(status, 200, "refresh during failover: {body}");
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    let ids = registered_ids(&cluster, survivors[1]).await;
    assert!(
        ids.contains(&id),
        "the refreshed node must survive the leader change: {ids:?}"
    );
    assert!(
        !ids.contains(&doomed),
        "the unrefreshed node must expire: {ids:?}"
    );

    let (status, _) =
        send_json(cluster.delete(survivors[1], &format!("/nodes/metrics/{id}"))).await;
    assert_eq!(status, 200);
    assert!(!registered_ids(&cluster, survivors[0]).await.contains(&id));
}

/// The time lease `lease` (60 s, attached to `session/a`) has left, asked of node `node`.
async fn remaining_ms(cluster: &Cluster, node: usize, lease: u64) -> u64 {
    let (status, answer) = send_json(cluster.get(node, &format!("/v1/leases/{lease}"))).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(
        (&answer["id"], &answer["ttl"], &answer["keys"]),
        (&json!(lease), &json!(60), &json!(["session/a"]))
    );
    answer["remaining_ms"].as_u64().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn keys_die_with_their_lease() {
    let cluster = Cluster::start(3, &[]).await;
    let (status, lease) = send_json(cluster.post(0, "/v1/leases").json(&json!({"ttl": 60}))).await;
    assert_eq!(status, 200, "{lease}");
    let lease = lease["id"].as_u64().unwrap();
    let put = cluster
        .put(1, &format!("/v1/kv/session/a?lease={lease}"))
        .json(&json!({"value": "1"}));
    assert_eq!(send_json(put).await.0, 200);
    let (_, kv) = send_json(cluster.get(2, "/v1/kv/session/a")).await;
    assert_eq!(kv["lease"], lease);
    // Its time to live counts down on the leader's clock, asked of any node, and a keep-alive
    // starts it again. A new leader starts every deadline afresh, so the countdown is checked
    // only if the term stayed the same.
    let term = || async { cluster.cluster_info(0).await.unwrap()["term"].clone() };
    let term_before = term().await;
    let first = remaining_ms(&cluster, 0, lease).await;
    assert!((50_000..=60_000).contains(&first), "{first}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let later = [
        remaining_ms(&cluster, 1, lease).await,
        remaining_ms(&cluster, 2, lease).await,
    ];
    if term().await == term_before {
        // The deadline was set by the time of the first answer (to that time + TTL at the
        // latest), and the later questions came 1.5 s after it.
        assert!(later.iter().all(|left| *left <= 58_500), "{later:?}");
    }
    // A keep-alive a follower relays is counted once, where the client sent it.
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    let kv_ok = r#"keel_http_requests_total{family="kv",code="200"}"#;
    let counted = || async {
        let mut counts = Vec::new();
        for node in [leader, follower] {
            counts.push(metric_value(&cluster.metrics(node).await, kv_ok).unwrap_or(0));
        }
        counts
    };
    let before = counted().await;
    let keepalive_sent = Instant::now();
    let keepalive = cluster.post(follower, &format!("/v1/leases/{lease}/keepalive"));
    assert_eq!(send_json(keepalive).await.0, 200);
    assert_eq!(counted().await, [before[0], before[1] + 1]);
    let refreshed = remaining_ms(&cluster, 1, lease).await;
    let since_keepalive = keepalive_sent.elapsed().as_millis() as u64;
    assert!(
        refreshed + since_keepalive + 2 >= 60_000,
        "{refreshed} ms left {since_keepalive} ms after the keep-alive"
    );
    let (status, revoked) = send_json(cluster.delete(1, &format!("/v1/leases/{lease}"))).await;
    assert_eq!(status, 200);
    assert_eq!(revoked["keys"], json!(["session/a"]));
    assert_eq!(cluster.get_kv(0, "session/a", "linearizable").await, None);
    for node in 0..3 {
        let (status, error) = send_json(cluster.get(node, &format!("/v1/leases/{lease}"))).await;
        assert_eq!(
            (status, &error["error_code"]),
            (404, &json!("lease_not_found"))
        );
    }
    let (status, error) = send_json(cluster.get(0, "/v1/leases/x")).await;
    assert_eq!(
        (status, &error["error_code"]),
        (400, &json!("invalid_lease"))
    );
    let put = cluster
        .put(0, &format!("/v1/kv/session/b?lease={lease}"))
        .json(&json!({"value": "1"}));
    let (status, error) = send_json(put).await;
    assert_eq!(
        (status, error["error_code"].as_str()),
        (404, Some("lease_not_found"))
    );
    let (status, _) = send_json(cluster.post(0, "/v1/leases").json(&json!({"ttl": 0}))).await;
    assert_eq!(status, 400);
    // A parameter the lease routes (and others) do not take is refused, not ignored.
    let misplaced = cluster
        .post(0, "/v1/leases?ttl=5")
        .json(&json!({"ttl": 60}));
    let keepalive = cluster.post(0, &format!("/v1/leases/{lease}/keepalive?ttl=5"));
    let time_to_live = cluster.get(2, &format!("/v1/leases/{lease}?keys=true"));
    for request in [
        misplaced,
        keepalive,
        time_to_live,
        cluster.get(1, "/v1/leases?limit=1"),
        cluster.get(1, "/v1/cluster?verbose=1"),
    ] {
        let (status, error) = send_json(request).await;
        assert_eq!(
            (status, &error["error_code"]),
            (400, &json!("invalid_query"))
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_metadata_writers_win_each_version_exactly_once() {
    let cluster = Cluster::start(3, &[]).await;
    let writers = 6;
    let rounds = 8;
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let client = cluster.client.clone();
        let urls: Vec<String> = (0..3).map(|i| cluster.nodes[i].url("")).collect();
        tasks.push(tokio::spawn(async move {
            let mut wins = Vec::new();
            let mut version = 0;
            for attempt in 0..rounds * writers {
                let url = &urls[(writer + attempt) % 3];
                let body = json!({ "writer": writer, "attempt": attempt });
                let request = client
                    .post(format!("{url}/clusters/c1/versions/{version}"))
                    .basic_auth(common::USER, Some(common::PASSWORD))
                    .json(&body);
                let (status, answer) = send_json(request).await;
                match status {
                    200 => {
                        assert_eq!(answer["version"], version + 1);
                        wins.push((version + 1, body));
                        version += 1;
                    }
                    409 => version = answer["version"].as_u64().unwrap(),
                    _ => panic!("unexpected {status}: {answer}"),
                }
                if wins.len() >= rounds {
                    break;
                }
            }
            wins
        }));
    }
    let mut winners = std::collections::BTreeMap::new();
    for task in tasks {
        for (version, body) in task.await.unwrap() {
            assert!(
                winners.insert(version, body).is_none(),
                "two writers won version {version}"
            );
        }
    }
    let last = *winners.keys().last().unwrap();
    assert_eq!(
        winners.len() as u64,
        last,
        "every version from 1 to {last} has exactly one winner"
    );
    let (_, current) = send_json(cluster.get(2, "/clusters/c1/versions/0")).await;
    assert_eq!(current["version"], last);
    assert_eq!(
        current["metadata"], winners[&last],
        "the stored metadata is the last winner's"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn long_poll_readers_on_followers_wake_on_a_write_through_the_leader() {
    let cluster = Cluster::start(3, &[]).await;
    let leader = cluster.leader().await;
    let write = |version: u64, body: Value| {
        cluster
            .post(leader, &format!("/clusters/c2/versions/{version}"))
            .json(&body)
    };
    assert_eq!(send_json(write(0, json!({"shards": 1}))).await.0, 200);
    let waiters: Vec<_> = (0..3)
        .filter(|i| *i != leader)
        .map(|i| {
            let request = cluster.get(i, "/clusters/c2/versions/1?timeout=20");
            tokio::spawn(async move {
                let started = Instant::now();
                (send_json(request).await, started.elapsed())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(send_json(write(1, json!({"shards": 2}))).await.0, 200);
    for waiter in waiters {
        let ((status, answer), waited) = waiter.await.unwrap();
        assert_eq!(status, 200);
        assert_eq!(answer["version"], 2, "{answer}");
        assert_eq!(answer["metadata"]["shards"], 2);
        assert!(
            waited >= Duration::from_millis(400),
            "it must have waited for the write"
        );
        assert!(
            waited < Duration::from_secs(10),
            "it must wake on the write, not the timeout"
        );
    }
    // A reader behind the stored version gets it at once; a short timeout answers unchanged.
    let (_, answer) = send_json(cluster.get(0, "/clusters/c2/versions/0")).await;
    assert_eq!(answer["version"], 2);
    let (_, answer) = send_json(cluster.get(1, "/clusters/c2/versions/2?timeout=1")).await;
    assert_eq!(answer["version"], 2);
    let (status, answer) = send_json(write(1, json!({"stale": true}))).await;
    assert_eq!(
        (status, &answer["version"], &answer["error_code"]),
        (409, &json!(2), &json!("version_conflict")),
        "{answer}"
    );
}

/// Reads watch lines from `node` until `count` events arrived or the node dies; returns them.
async fn watch_events(cluster: &Cluster, node: usize, after: u64, count: usize) -> Vec<Value> {
    let response = cluster
        .get(
            node,
            &format!("/v1/kv?prefix=watched/&watch=true&revision={after}"),
        )
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.bytes_stream();
    let mut buffer = Vec::new();
    let mut events = Vec::new();
    while events.len() < count {
        let Some(Ok(chunk)) = body.next().await else {
            break;
        };
        buffer.extend_from_slice(&chunk);
        while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            let line: Value = serde_json::from_slice(&buffer[..end]).unwrap();
            buffer.drain(..=end);
            if line.get("revision").is_some() {
                events.push(line);
            }
        }
    }
    events
}

#[tokio::test(flavor = "multi_thread")]
async fn watchers_see_every_change_once_in_order_across_a_node_restart() {
    let mut cluster = Cluster::start(3, &[]).await;
    let start = cluster.put_kv(0, "unwatched", "x").await;
    let writes = 40;
    let writer = {
        let client = cluster.client.clone();
        let url = cluster.nodes[0].url("");
        tokio::spawn(async move {
            for n in 0..writes {
                let key = format!("watched/{}", n % 7);
                let request = if n % 5 == 4 {
                    client.delete(format!("{url}/v1/kv/{key}"))
                } else {
                    client
                        .put(format!("{url}/v1/kv/{key}"))
                        .json(&json!({ "value": n.to_string() }))
                };
                let (status, _) =
                    send_json(request.basic_auth(common::USER, Some(common::PASSWORD))).await;
                assert!(status == 200 || status == 404);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    // Watch through node 1 for a while, then kill it and resume through node 2.
    let mut seen = watch_events(&cluster, 1, start, 10).await;
    cluster.nodes[1].kill();
    let resume_from = seen.last().unwrap()["revision"].as_u64().unwrap();
    writer.await.unwrap();
    let (_, listing) = send_json(cluster.get(2, "/v1/kv?prefix=zzz")).await;
    let end = listing["revision"].as_u64().unwrap();
    let expected_remaining = (resume_from + 1..=end).count();
    let rest = watch_events(&cluster, 2, resume_from, expected_remaining).await;
    seen.extend(rest);

    let revisions: Vec<u64> = seen
        .iter()
        .map(|e| e["revision"].as_u64().unwrap())
        .collect();
    let expected: Vec<u64> = (start + 1..=end).collect();
    assert_eq!(revisions, expected, "every change exactly once, in order");
    assert!(seen
        .iter()
        .all(|e| e["kv"]["key"].as_str().unwrap().starts_with("watched/")));
    assert!(seen.iter().any(|e| e["type"] == "delete"));

    cluster.nodes[1].start();
    cluster.wait_http(1).await;
    let replay = watch_events(&cluster, 1, start, expected.len()).await;
    assert_eq!(replay, seen, "the restarted node replays the same history");
}

/// A watch with nothing to report says how far it has seen every few seconds, on a follower
/// too: Raft's heartbeats used to wake it so often that its progress deadline never came.
#[tokio::test(flavor = "multi_thread")]
async fn an_idle_watch_reports_its_progress() {
    let cluster = Cluster::start(3, &[]).await;
    let revision = cluster.put_kv(0, "idle/a", "1").await;
    let follower = (cluster.leader().await + 1) % 3;
    let response = cluster
        .get(
            follower,
            &format!("/v1/kv?prefix=idle/&watch=true&revision={revision}"),
        )
        // Longer than the client's usual 20 s: the stream lives through two waits below.
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .unwrap();
    let mut body = response.bytes_stream();
    // One from a revision the store has not reached reports the store's, not a future one.
    let ahead = cluster
        .get(
            follower,
            &format!(
                "/v1/kv?prefix=idle/&watch=true&revision={}",
                revision + 1000
            ),
        )
        .send()
        .await
        .unwrap();
    let mut ahead = ahead.bytes_stream();
    for stream in [&mut body, &mut ahead] {
        let line = next_line(stream, 15, "an idle watch").await;
        assert_eq!(line, json!({ "progress_revision": revision }));
    }
    // Cut off from the quorum, the node cannot vouch for progress: the stream ends saying why.
    let others = [(follower + 1) % 3, (follower + 2) % 3];
    for i in others {
        cluster.nodes[i].signal("STOP");
    }
    let line = next_line(&mut body, 20, "a watch cut off from the quorum").await;
    for i in others {
        cluster.nodes[i].signal("CONT");
    }
    assert!(line["error_code"].is_string(), "{line}");
    let ended = tokio::time::timeout(Duration::from_secs(5), body.next()).await;
    assert!(matches!(ended, Ok(None)), "the stream went on: {ended:?}");
}

/// The next line of a watch `stream` (each chunk is one line), within `secs` seconds.
async fn next_line(
    stream: &mut (impl futures::Stream<Item = reqwest::Result<axum::body::Bytes>> + Unpin),
    secs: u64,
    what: &str,
) -> Value {
    let chunk = tokio::time::timeout(Duration::from_secs(secs), stream.next())
        .await
        .unwrap_or_else(|_| panic!("no line in {secs} s on {what}"))
        .expect("the stream ended")
        .expect("the stream broke");
    serde_json::from_slice(&chunk).unwrap()
}
