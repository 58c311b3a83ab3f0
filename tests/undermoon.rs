//! The undermoon broker API end to end: a 3-node keel cluster of real processes, driven the
//! way undermoon's coordinator drives its broker — round-robin over every node, no
//! credentials, a 409 or a refused connection means "try again" — through proxy
//! registration, cluster creation, failover, expansion with a leader killed mid-way, and
//! checks that every node serves the same metadata and that epochs only grew.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use common::send_json;
use common::Cluster;
use serde_json::json;
use serde_json::Value;

/// A broker client like undermoon's coordinator: every call goes to the next node.
struct Coordinator {
    urls: Vec<String>,
    next: AtomicUsize,
    client: reqwest::Client,
}

impl Coordinator {
    fn new(cluster: &Cluster) -> Self {
        Self {
            urls: cluster.nodes.iter().map(|n| n.url("/api/v3")).collect(),
            next: AtomicUsize::new(0),
            client: common::client(),
        }
    }

    /// One call on the next node; `None` when the node did not answer.
    async fn try_call(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Option<(u16, Value)> {
        let url = &self.urls[self.next.fetch_add(1, Ordering::Relaxed) % self.urls.len()];
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self.client.request(method, format!("{url}{path}"));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.ok()?;
        let status = response.status().as_u16();
        let text = response.text().await.ok()?;
        Some((
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        ))
    }

    /// Calls until a node answers with something other than 409 RETRY.
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match self.try_call(method, path, body.clone()).await {
                Some((409, answer)) if answer["error"] == "RETRY" => {}
                Some(answer) => return answer,
                None => {}
            }
            assert!(Instant::now() < deadline, "{method} {path}: no answer");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, answer) = self.call(method, path, body).await;
        assert_eq!(status, 200, "{method} {path}: {answer}");
        answer
    }

    /// Pages through a listing the way the coordinator does, until an empty page.
    async fn all(&self, path: &str, field: &str) -> Vec<String> {
        let mut all = Vec::new();
        loop {
            let page = self
                .ok("GET", &format!("{path}?offset={}&limit=5", all.len()), None)
                .await;
            let items = page[field].as_array().unwrap().clone();
            if items.is_empty() {
                return all;
            }
            all.extend(items.iter().map(|v| v.as_str().unwrap().to_string()));
        }
    }

    async fn cluster(&self, name: &str) -> Value {
        self.ok("GET", &format!("/clusters/meta/{name}"), None)
            .await["cluster"]
            .clone()
    }
}

fn host(address: &str) -> &str {
    address.split(':').next().unwrap()
}

/// Checks a cluster's layout: chunks on two hosts each, crosswise replication, the slots of
/// its masters (stable and migrating out) covering every slot exactly once, and every range
/// migrating out of one node importing into another with the same task.
fn check_layout(cluster: &Value) {
    let nodes = cluster["nodes"].as_array().unwrap();
    assert_eq!(nodes.len() % 4, 0);
    let mut covered = vec![0u8; 16384];
    let mut tasks: [Vec<String>; 2] = [Vec::new(), Vec::new()];
    for chunk in nodes.chunks(4) {
        assert_ne!(
            host(chunk[0]["proxy_address"].as_str().unwrap()),
            host(chunk[2]["proxy_address"].as_str().unwrap()),
            "a chunk on one host"
        );
        for (i, node) in chunk.iter().enumerate() {
            let peer = &node["repl"]["peers"][0]["node_address"];
            assert_eq!(peer, &chunk[3 - i]["address"], "replication is crosswise");
            for slots in node["slots"].as_array().unwrap() {
                for (side, tag) in ["Migrating", "Importing"].iter().enumerate() {
                    if let Some(task) = slots["tag"].get(tag) {
                        tasks[side].push(format!("{} {task}", slots["range_list"]));
                    }
                }
                if slots["tag"].get("Importing").is_some() {
                    continue;
                }
                for range in slots["range_list"].as_array().unwrap() {
                    for slot in range[0].as_u64().unwrap()..=range[1].as_u64().unwrap() {
                        covered[slot as usize] += 1;
                    }
                }
            }
        }
    }
    assert!(
        covered.iter().all(|c| *c == 1),
        "slots not covered exactly once"
    );
    let [mut migrating, mut importing] = tasks;
    migrating.sort();
    importing.sort();
    assert_eq!(migrating, importing, "each migration has both ends");
}

fn migrating_tasks(cluster: &Value) -> Vec<Value> {
    cluster["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|n| n["slots"].as_array().unwrap().clone())
        .filter(|s| s["tag"].get("Migrating").is_some())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_coordinator_round_robin_over_all_nodes_sees_one_broker() {
    // Frequent snapshots: the restarted leader may catch up from one holding the broker.
    let mut cluster =
        Cluster::start(3, &["--open-routes", "undermoon", "--snapshot-every", "10"]).await;
    let coordinator = Coordinator::new(&cluster);
    let mut epochs = Vec::new();

    // 12 proxies on 6 hosts, registered through every node in turn.
    for h in 1..=6 {
        for i in 1..=2 {
            let body = json!({
                "proxy_address": format!("10.9.0.{h}:70{i:02}"),
                "nodes": [format!("10.9.0.{h}:60{:02}", 2 * i), format!("10.9.0.{h}:60{:02}", 2 * i + 1)],
            });
            coordinator.ok("POST", "/proxies/meta", Some(body)).await;
        }
    }
    let addresses = coordinator.all("/proxies/addresses", "addresses").await;
    assert_eq!(addresses.len(), 12);
    assert!(addresses.windows(2).all(|w| w[0] < w[1]), "stable order");

    coordinator
        .ok(
            "POST",
            "/clusters/meta/shop",
            Some(json!({ "node_number": 16 })),
        )
        .await;
    let shop = coordinator.cluster("shop").await;
    assert_eq!(shop["nodes"].as_array().unwrap().len(), 16);
    check_layout(&shop);
    epochs.push(shop["epoch"].as_u64().unwrap());
    assert_eq!(coordinator.all("/clusters/names", "names").await, ["shop"]);

    // A client waiting for the next epoch of shop, on one node.
    let watch = {
        let url = cluster.nodes[2].url(&format!(
            "/api/v3/clusters/meta/shop?epoch_gt={}&timeout=30",
            epochs[0]
        ));
        let client = common::client();
        tokio::spawn(async move { send_json(client.get(url)).await })
    };

    // A coordinator reports a proxy of shop and fails it over.
    let failed = shop["nodes"][0]["proxy_address"]
        .as_str()
        .unwrap()
        .to_string();
    coordinator
        .ok("POST", &format!("/failures/{failed}/coordinator-1"), None)
        .await;
    let failures = coordinator.ok("GET", "/failures", None).await;
    assert_eq!(failures["addresses"], json!([failed]));
    let replaced = coordinator
        .ok("POST", &format!("/proxies/failover/{failed}"), None)
        .await;
    let new_proxy = replaced["proxy"]["address"].as_str().unwrap().to_string();
    assert_ne!(new_proxy, failed);
    assert_eq!(replaced["proxy"]["cluster_name"], "shop");
    let shop = coordinator.cluster("shop").await;
    check_layout(&shop);
    epochs.push(shop["epoch"].as_u64().unwrap());
    let proxies_in_shop: BTreeSet<&str> = shop["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["proxy_address"].as_str().unwrap())
        .collect();
    assert!(!proxies_in_shop.contains(failed.as_str()));
    assert!(proxies_in_shop.contains(new_proxy.as_str()));
    let failed_list = coordinator
        .ok("GET", "/proxies/failed/addresses", None)
        .await;
    assert_eq!(failed_list["addresses"], json!([failed]));
    // Repeating the failover (reports live on) changes nothing.
    let again = coordinator
        .ok("POST", &format!("/proxies/failover/{failed}"), None)
        .await;
    assert_eq!(again["proxy"], Value::Null);

    let (status, watched) = watch.await.unwrap();
    assert_eq!(status, 200);
    assert!(
        watched["cluster"]["epoch"].as_u64().unwrap() > epochs[0],
        "{watched}"
    );

    // Expand by 4 nodes, then kill the leader while the migrations are being committed.
    let added = coordinator
        .ok(
            "PATCH",
            "/clusters/nodes/shop",
            Some(json!({ "node_number": 4 })),
        )
        .await;
    assert_eq!(added.as_array().unwrap().len(), 4);
    coordinator
        .ok("POST", "/clusters/migrations/expand/shop", None)
        .await;
    let shop = coordinator.cluster("shop").await;
    check_layout(&shop);
    epochs.push(shop["epoch"].as_u64().unwrap());
    let tasks = migrating_tasks(&shop);
    assert!(tasks.len() >= 2, "{shop}");

    let leader = cluster.leader().await;
    for (i, task) in tasks.iter().enumerate() {
        if i == 1 {
            cluster.nodes[leader].kill();
        }
        let commit = json!({ "cluster_name": "shop", "slot_range": task });
        coordinator
            .ok("PUT", "/clusters/migrations", Some(commit.clone()))
            .await;
        // The coordinator may commit twice; the second time it is already done.
        let (status, answer) = coordinator
            .call("PUT", "/clusters/migrations", Some(commit))
            .await;
        assert_eq!(
            (status, &answer["error"]),
            (404, &json!("MIGRATION_TASK_NOT_FOUND"))
        );
        epochs.push(coordinator.cluster("shop").await["epoch"].as_u64().unwrap());
    }
    cluster.nodes[leader].start();
    cluster.wait_http(leader).await;

    // Every node serves the same metadata, and epochs only grew.
    let info = coordinator.ok("GET", "/clusters/info/shop", None).await;
    assert_eq!(
        info,
        json!({ "name": "shop", "node_number": 20, "node_number_with_slots": 20, "is_migrating": false })
    );
    let shop = coordinator.cluster("shop").await;
    check_layout(&shop);
    // Every change above stamped shop with a greater epoch; this read changed nothing.
    assert!(epochs.windows(2).all(|w| w[0] < w[1]), "epochs {epochs:?}");
    assert_eq!(shop["epoch"].as_u64(), epochs.last().copied());
    let global = coordinator.ok("GET", "/epoch", None).await;
    assert!(global.as_u64().unwrap() >= *epochs.last().unwrap());
    let mut dumps = Vec::new();
    for i in 0..3 {
        let deadline = Instant::now() + Duration::from_secs(30);
        let dump = loop {
            let request = cluster.client.get(cluster.nodes[i].url("/api/v3/metadata"));
            let (status, dump) = send_json(request).await;
            if status == 200 {
                break dump;
            }
            assert!(Instant::now() < deadline, "node {i}: {status} {dump}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        dumps.push(dump);
    }
    assert_eq!(dumps[0], dumps[1]);
    assert_eq!(dumps[1], dumps[2]);
    assert_eq!(dumps[0]["version"], "mem-broker-0.2");

    let metrics = cluster.metrics(leader).await;
    for line in [
        "keel_broker_clusters 1",
        "keel_broker_proxies 12",
        "keel_broker_failed_proxies 1",
        "keel_broker_migrating_clusters 0",
    ] {
        assert!(metrics.contains(line), "{line} missing from {metrics}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn broker_errors_are_in_undermoons_format_and_change_nothing() {
    let mut cluster = Cluster::start(3, &[]).await;
    let coordinator = Coordinator::new(&cluster);

    // The family is closed by default once the cluster has credentials.
    let (status, _) = coordinator.call("GET", "/epoch", None).await;
    assert_eq!(status, 401);
    let urls: Vec<String> = cluster.nodes.iter().map(|n| n.url("/api/v3")).collect();
    let client = cluster.client.clone();
    let api = |i: usize, method: reqwest::Method, path: &str| {
        client
            .request(method, format!("{}{path}", urls[i]))
            .basic_auth(common::USER, Some(common::PASSWORD))
    };
    use reqwest::Method;

    for (h, i) in [(1, 1), (2, 1), (2, 2)] {
        let body = json!({
            "proxy_address": format!("10.8.0.{h}:70{i:02}"),
            "nodes": [format!("10.8.0.{h}:60{i:02}"), format!("10.8.0.{h}:61{i:02}")],
            "host": null,
        });
        let (status, answer) = send_json(api(h, Method::POST, "/proxies/meta").json(&body)).await;
        assert_eq!(status, 200, "{answer}");
    }
    let cases: Vec<(Method, &str, Value, u16, &str)> = vec![
        (
            Method::POST,
            "/proxies/meta",
            json!({"proxy_address": "10.8.0.1", "nodes": ["a:1", "b:2"]}),
            400,
            "INVALID_PROXY_ADDRESS",
        ),
        (
            Method::POST,
            "/proxies/meta",
            json!({"proxy_address": "10.8.0.1:7001", "nodes": ["10.8.0.1:6001", "10.8.0.1:6101"]}),
            409,
            "ALREADY_EXISTED",
        ),
        // An address too long to be a host name could be registered but never removed (its
        // DELETE path would be too long for the server).
        (
            Method::POST,
            "/proxies/meta",
            json!({"proxy_address": format!("{}:7001", "a".repeat(254)), "nodes": ["10.8.0.5:6001", "10.8.0.5:6101"]}),
            400,
            "INVALID_PROXY_ADDRESS",
        ),
        (
            Method::POST,
            "/proxies/meta",
            json!({"proxy_address": "10.8.0.5:7001", "nodes": ["10.8.0.5:6001", "10.8.0.5:6001"]}),
            400,
            "INVALID_PROXY_ADDRESS",
        ),
        (
            Method::POST,
            "/proxies/meta",
            json!({"proxy_address": "10.8.0.1:7009", "nodes": ["10.8.0.1:6001"]}),
            400,
            "INVALID_REQUEST",
        ),
        (
            Method::POST,
            "/clusters/meta/bad!name",
            json!({"node_number": 4}),
            400,
            "INVALID_CLUSTER_NAME",
        ),
        (
            Method::POST,
            "/clusters/meta/c1",
            json!({"node_number": 6}),
            400,
            "INVALID_NODE_NUMBER",
        ),
        (
            Method::POST,
            "/clusters/meta/c1",
            json!({"node_number": 8}),
            409,
            "NO_AVAILABLE_RESOURCE",
        ),
        (
            Method::POST,
            "/clusters/meta/c1",
            json!({"nodes": 8}),
            400,
            "INVALID_REQUEST",
        ),
        (
            Method::DELETE,
            "/clusters/meta/c9",
            Value::Null,
            404,
            "CLUSTER_NOT_FOUND",
        ),
        (
            Method::GET,
            "/clusters/info/c9",
            Value::Null,
            404,
            "CLUSTER_NOT_FOUND",
        ),
        (
            Method::DELETE,
            "/proxies/meta/10.8.0.9:7001",
            Value::Null,
            404,
            "PROXY_NOT_FOUND",
        ),
        (
            Method::POST,
            "/proxies/failover/10.8.0.9:7001",
            Value::Null,
            404,
            "PROXY_NOT_FOUND",
        ),
        (
            Method::PUT,
            "/epoch/1",
            Value::Null,
            409,
            "EPOCH_SMALLER_THAN_CURRENT",
        ),
        (
            Method::PUT,
            "/config",
            json!({"failure_ttl": 18446744073709551615u64}),
            400,
            "INVALID_REQUEST",
        ),
        (
            Method::PUT,
            "/epoch/soon",
            Value::Null,
            400,
            "INVALID_REQUEST",
        ),
        (
            Method::PUT,
            "/epoch/18446744073709551615",
            Value::Null,
            400,
            "INVALID_EPOCH",
        ),
        (
            Method::POST,
            "/clusters/meta/c1",
            json!({"node_number": 800000000000000000u64}),
            400,
            "INVALID_NODE_NUMBER",
        ),
        (
            Method::PUT,
            "/metadata",
            json!({"version": "mem-broker-0.1", "global_epoch": 1000, "clusters": {}, "all_proxies": {}, "failed_proxies": [], "failures": {}}),
            409,
            "INVALID_META_VERSION",
        ),
        (
            Method::PUT,
            "/clusters/migrations",
            json!({"cluster_name": "c9", "slot_range": {"range_list": [[0, 1]], "tag": "None"}}),
            400,
            "INVALID_MIGRATION_TASK",
        ),
    ];
    let epoch_before = send_json(api(0, Method::GET, "/epoch")).await.1;
    for (i, (method, path, body, status, code)) in cases.into_iter().enumerate() {
        let mut request = api(i % 3, method.clone(), path);
        if !body.is_null() {
            request = request.json(&body);
        }
        let (got, answer) = send_json(request).await;
        assert_eq!(
            (got, answer["error"].as_str()),
            (status, Some(code)),
            "{method} {path}: {answer}"
        );
    }
    assert_eq!(
        send_json(api(1, Method::GET, "/epoch")).await.1,
        epoch_before,
        "errors changed the epoch"
    );

    // What the HTTP layer answers by itself is in the dialect's format too.
    let (status, answer) = send_json(api(0, Method::GET, "/epoch/")).await;
    assert_eq!((status, answer["error"].as_str()), (404, Some("NOT_FOUND")));
    let (status, answer) = send_json(api(0, Method::DELETE, "/epoch")).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (405, Some("INVALID_REQUEST")),
        "{answer}"
    );

    // Absent things read as null, as the coordinator expects.
    let (status, answer) = send_json(api(2, Method::GET, "/clusters/meta/c9")).await;
    assert_eq!((status, answer), (200, json!({ "cluster": null })));
    let (_, answer) = send_json(api(2, Method::GET, "/proxies/meta/10.8.0.9:1")).await;
    assert_eq!(answer, json!({ "proxy": null }));

    // INVALID_CONFIG names the key and value.
    let create = api(0, Method::POST, "/clusters/meta/c1").json(&json!({ "node_number": 4 }));
    assert_eq!(send_json(create).await.0, 200);
    let change = api(1, Method::PATCH, "/clusters/config/c1")
        .json(&json!({ "compression_strategy": "zip" }));
    let (status, answer) = send_json(change).await;
    assert_eq!(status, 400);
    assert_eq!(
        (answer["key"].as_str(), answer["value"].as_str()),
        (Some("compression_strategy"), Some("zip"))
    );
    let change = api(2, Method::PATCH, "/clusters/config/c1")
        .json(&json!({ "compression_strategy": "set_get_only" }));
    assert_eq!(send_json(change).await.0, 200);

    // A dump restores on another node and moves every epoch forward.
    let (_, dump) = send_json(api(0, Method::GET, "/metadata")).await;
    let (status, answer) = send_json(api(1, Method::PUT, "/metadata").json(&dump)).await;
    assert_eq!(status, 200, "{answer}");
    let (_, restored) = send_json(api(2, Method::GET, "/metadata")).await;
    assert!(restored["global_epoch"].as_u64() > dump["global_epoch"].as_u64());
    assert_eq!(
        restored["clusters"]["c1"]["config"]["compression_strategy"],
        "set_get_only"
    );

    // The operator endpoints: version, grow, expand, shrink, free nodes, balance, resource
    // check, epoch bump and recovery, proxy removal and a proxy's metadata.
    let (status, version) = send_json(api(0, Method::GET, "/version")).await;
    assert_eq!((status, version), (200, json!(env!("CARGO_PKG_VERSION"))));
    for h in [5, 6] {
        let body = json!({ "proxy_address": format!("10.8.0.{h}:7001"), "nodes": [format!("10.8.0.{h}:6001"), format!("10.8.0.{h}:6101")] });
        assert_eq!(
            send_json(api(h % 3, Method::POST, "/proxies/meta").json(&body))
                .await
                .0,
            200
        );
    }
    let grow = api(1, Method::PUT, "/clusters/nodes/c1").json(&json!({ "cluster_node_number": 8 }));
    let (status, added) = send_json(grow).await;
    assert_eq!(
        (status, added.as_array().map(Vec::len)),
        (200, Some(4)),
        "{added}"
    );
    let commit_all = |i: usize| {
        let api = &api;
        async move {
            let (_, cluster) = send_json(api(i, Method::GET, "/clusters/meta/c1")).await;
            check_layout(&cluster["cluster"]);
            for task in migrating_tasks(&cluster["cluster"]) {
                let commit = json!({ "cluster_name": "c1", "slot_range": task });
                let (status, _) =
                    send_json(api(i, Method::PUT, "/clusters/migrations").json(&commit)).await;
                assert_eq!(status, 200);
            }
        }
    };
    assert_eq!(
        send_json(api(2, Method::POST, "/clusters/migrations/expand/c1"))
            .await
            .0,
        200
    );
    commit_all(0).await;
    assert_eq!(
        send_json(api(1, Method::POST, "/clusters/migrations/shrink/c1/4"))
            .await
            .0,
        200
    );
    commit_all(2).await;
    assert_eq!(
        send_json(api(0, Method::DELETE, "/clusters/free_nodes/c1"))
            .await
            .0,
        200
    );
    let (_, info) = send_json(api(1, Method::GET, "/clusters/info/c1")).await;
    assert_eq!(
        (info["node_number"].as_u64(), info["is_migrating"].as_bool()),
        (Some(4), Some(false))
    );
    assert_eq!(
        send_json(api(2, Method::PUT, "/clusters/balance/c1"))
            .await
            .0,
        200
    );
    let (status, check) = send_json(api(0, Method::POST, "/resources/failures/check")).await;
    assert_eq!(status, 200);
    assert!(check["hosts_cannot_fail"].is_array(), "{check}");
    let (_, epoch) = send_json(api(1, Method::GET, "/epoch")).await;
    let bumped = epoch.as_u64().unwrap() + 10;
    assert_eq!(
        send_json(api(2, Method::PUT, &format!("/epoch/{bumped}")))
            .await
            .0,
        200
    );
    let (_, c1) = send_json(api(0, Method::GET, "/clusters/meta/c1")).await;
    assert_eq!(c1["cluster"]["epoch"].as_u64(), Some(bumped));
    // No proxy is listening: recovery moves past the epoch anyway and names them all.
    let (status, recovery) = send_json(api(1, Method::PUT, "/epoch/recovery")).await;
    assert_eq!(status, 200, "{recovery}");
    assert_eq!(
        recovery["failed_addresses"].as_array().map(Vec::len),
        Some(5)
    );
    assert_eq!(
        send_json(api(2, Method::GET, "/epoch")).await.1.as_u64(),
        Some(bumped + 1)
    );
    let in_cluster = c1["cluster"]["nodes"][0]["proxy_address"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, proxy) = send_json(api(0, Method::GET, &format!("/proxies/meta/{in_cluster}"))).await;
    assert_eq!(proxy["proxy"]["cluster_name"], "c1");
    assert_eq!(proxy["proxy"]["epoch"].as_u64(), Some(bumped + 1));
    assert_eq!(proxy["proxy"]["nodes"].as_array().map(Vec::len), Some(2));
    let (_, addresses) = send_json(api(1, Method::GET, "/proxies/addresses")).await;
    let free = addresses["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .find(|a| !c1.to_string().contains(a.as_str()))
        .expect("a free proxy");
    let remove = api(2, Method::DELETE, &format!("/proxies/meta/{free}"));
    assert_eq!(send_json(remove).await.0, 200);
    let (status, answer) = send_json(api(
        0,
        Method::DELETE,
        &format!("/proxies/meta/{in_cluster}"),
    ))
    .await;
    assert_eq!((status, answer["error"].as_str()), (409, Some("IN_USE")));

    // Settings are replicated; unknown fields are refused.
    let set = api(0, Method::PUT, "/config")
        .json(&json!({ "replica_addresses": ["10.0.0.1:7799"], "failure_quorum": 2 }));
    assert_eq!(send_json(set).await.0, 200);
    let (_, config) = send_json(api(2, Method::GET, "/config")).await;
    assert_eq!(
        config,
        json!({ "replica_addresses": ["10.0.0.1:7799"], "failure_ttl": 60, "failure_quorum": 2 })
    );
    let set = api(0, Method::PUT, "/config").json(&json!({ "failure_quorum": 0 }));
    assert_eq!(send_json(set).await.0, 400);

    // Without a quorum a write answers 409 RETRY, which the coordinator retries.
    let leader = cluster.leader().await;
    let survivor = (leader + 1) % 3;
    for i in 0..3 {
        if i != survivor {
            cluster.nodes[i].kill();
        }
    }
    let body =
        json!({ "proxy_address": "10.8.0.3:7001", "nodes": ["10.8.0.3:6001", "10.8.0.3:6101"] });
    let (status, answer) =
        send_json(api(survivor, Method::POST, "/proxies/meta").json(&body)).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (409, Some("RETRY")),
        "{answer}"
    );
}
