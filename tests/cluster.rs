//! The replicated core end to end: real `keel` processes, real RocksDB, real HTTP.

mod common;

use std::time::Duration;

use common::Cluster;
use common::PASSWORD;
use common::USER;
use serde_json::json;
use serde_json::Value;

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
    assert_eq!(info["members"].as_array().unwrap().len(), 3);
    assert!(info["members"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["voter"] == true));
    assert_eq!(info["name"], "test.cluster");

    let listing: Value = cluster
        .get(2, "/v1/kv?prefix=from-node-&limit=2")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listing["kvs"].as_array().unwrap().len(), 2);
    assert_eq!(listing["more"], true);
    assert_eq!(listing["kvs"][0]["key"], "from-node-0");
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
    for node in &mut cluster.nodes {
        node.kill();
    }
    for node in &mut cluster.nodes {
        node.start();
    }
    for i in 0..3 {
        cluster.wait_http(i).await;
    }
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
    let mut cluster = Cluster::start(3, &["--snapshot-every", "100"]).await;
    let leader = cluster.leader().await;
    let follower = (leader + 1) % 3;
    cluster.nodes[follower].kill();
    let writes = 600;
    let mut handles = Vec::new();
    for worker in 0..8 {
        let client = cluster.client.clone();
        let url = cluster.nodes[leader].url("");
        handles.push(tokio::spawn(async move {
            for n in (worker..writes).step_by(8) {
                let response = client
                    .put(format!("{url}/v1/kv/bulk/{n:05}"))
                    .basic_auth(USER, Some(PASSWORD))
                    .json(&json!({ "value": format!("v{n}") }))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
            }
        }));
    }
    for handle in handles {
        handle.await.unwrap();
    }
    let leader_info = cluster.cluster_info(leader).await.unwrap();
    assert!(
        leader_info["snapshot_index"].as_u64().unwrap_or(0) > 0,
        "the leader must have snapshotted: {leader_info}"
    );
    cluster.nodes[follower].start();
    cluster.wait_http(follower).await;
    let target = leader_info["commit_index"].as_u64().unwrap();
    common::wait_until("the follower to catch up", Duration::from_secs(60), || {
        let info = cluster.cluster_info(follower);
        async move {
            info.await
                .and_then(|i| i["applied_index"].as_u64())
                .is_some_and(|applied| applied >= target)
        }
    })
    .await;
    let info = cluster.cluster_info(follower).await.unwrap();
    assert!(
        info["snapshot_index"].as_u64().unwrap_or(0) > 0,
        "the follower must hold a snapshot: {info}"
    );
    // Its own state (a stale read, no help from the leader) has every write.
    let listing: Value = cluster
        .get(
            follower,
            "/v1/kv?prefix=bulk/&limit=10000&consistency=stale",
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listing["kvs"].as_array().unwrap().len(), writes);
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

    let response = cluster
        .post(1, &format!("/v1/nodes/{uid}/actions/remove"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
    let info = cluster.cluster_info(0).await.unwrap();
    let members = info["members"].as_array().unwrap();
    assert_eq!(members.len(), 3, "{info}");
    assert!(members.iter().all(|m| m["uid"] != uid));
    cluster.put_kv(2, "after-remove", "1").await;

    let response = cluster
        .post(0, "/v1/nodes/999/actions/remove")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 409);
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_are_required_and_bad_requests_get_clear_errors() {
    let cluster = Cluster::start(1, &[]).await;
    let url = cluster.nodes[0].url("/v1/kv/secret");
    let anonymous = cluster.client.get(&url).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let wrong = cluster
        .client
        .get(&url)
        .basic_auth(USER, Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let body: Value = wrong.json().await.unwrap();
    assert_eq!(body["error_code"], "access_denied");
    // The bootstrap status stays readable, and a second bootstrap is refused.
    assert_eq!(
        cluster
            .client
            .get(cluster.nodes[0].url("/v1/bootstrap"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let again = cluster
        .post(0, "/v1/bootstrap/create_cluster")
        .json(&json!({"cluster": {"name": "x"}, "credentials": {"username": "a", "password": "b"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);

    for (body, status, code) in [
        ("not json", 400, "config_error"),
        ("{\"value\": 5}", 400, "config_error"),
        ("{\"other\": \"x\"}", 400, "config_error"),
    ] {
        let response = cluster.put(0, "/v1/kv/k").body(body).send().await.unwrap();
        assert_eq!(response.status(), status, "{body}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["error_code"], code, "{body}");
        assert!(error["message"].as_str().unwrap().len() > 10);
    }
    let huge = "x".repeat(3 << 20);
    let response = cluster
        .put(0, "/v1/kv/k")
        .json(&json!({ "value": huge }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
    let long_key = "k".repeat(2000);
    let response = cluster
        .put(0, &format!("/v1/kv/{long_key}"))
        .json(&json!({"value": "v"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let response = cluster
        .get(0, "/v1/kv/k?consistency=eventual")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let response = cluster.get(0, "/v1/kv/missing").send().await.unwrap();
    assert_eq!(response.status(), 404);
    assert_eq!(
        response.json::<Value>().await.unwrap()["error_code"],
        "key_not_found"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn compare_and_set_and_idempotent_retries() {
    let cluster = Cluster::start(3, &[]).await;
    let created = cluster
        .put(0, "/v1/kv/cas?prev_revision=0")
        .json(&json!({"value": "a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 200);
    let revision = created.json::<Value>().await.unwrap()["revision"]
        .as_u64()
        .unwrap();
    let again = cluster
        .put(1, "/v1/kv/cas?prev_revision=0")
        .json(&json!({"value": "b"}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 409);
    assert_eq!(
        again.json::<Value>().await.unwrap()["current_revision"],
        revision
    );
    let swapped = cluster
        .put(2, &format!("/v1/kv/cas?prev_revision={revision}"))
        .json(&json!({"value": "c"}))
        .send()
        .await
        .unwrap();
    assert_eq!(swapped.status(), 200);
    assert_eq!(
        cluster.get_kv(0, "cas", "linearizable").await.as_deref(),
        Some("c")
    );

    // The same Idempotency-Key through two different nodes applies once.
    let first: Value = cluster
        .put(1, "/v1/kv/counter")
        .header("Idempotency-Key", "req-42")
        .json(&json!({"value": "1"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let retry: Value = cluster
        .put(2, "/v1/kv/counter")
        .header("Idempotency-Key", "req-42")
        .json(&json!({"value": "1"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(first, retry);
    let kv: Value = cluster
        .get(0, "/v1/kv/counter")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(kv["version"], 1);

    let deleted = cluster.delete(0, "/v1/kv/cas").send().await.unwrap();
    assert_eq!(deleted.status(), 200);
    assert_eq!(cluster.get_kv(1, "cas", "linearizable").await, None);
    let stale = cluster
        .get(1, "/v1/kv/counter?consistency=stale")
        .send()
        .await
        .unwrap();
    assert_eq!(stale.headers()["x-keel-consistency"], "stale");
}
