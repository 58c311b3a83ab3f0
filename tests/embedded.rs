//! `keel serve` with no flags: a ready single-node cluster on 127.0.0.1:7799 with its data in
//! ./keel-data, open without credentials because it listens on loopback only.

mod common;

use std::process::Command;
use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use serde_json::Value;

#[tokio::test(flavor = "multi_thread")]
async fn keel_serve_without_flags_is_a_ready_single_node_cluster_that_keeps_its_data() {
    let cwd = tempfile::tempdir().unwrap();
    let client = common::client();
    let base = "http://127.0.0.1:7799";
    for round in 0..2 {
        let log_path = cwd.path().join(format!("keel-{round}.log"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
            .arg("serve")
            .current_dir(cwd.path())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .spawn()
            .unwrap();
        common::wait_until(
            "the embedded node to serve writes",
            Duration::from_secs(30),
            || {
                let client = client.clone();
                async move {
                    let Ok(response) = client.get(format!("{base}/v1/bootstrap")).send().await
                    else {
                        return false;
                    };
                    let status: Value = response.json().await.unwrap();
                    status["bootstrap_status"]["state"] == "completed"
                }
            },
        )
        .await;
        if round == 0 {
            let put = client
                .put(format!("{base}/v1/kv/greeting"))
                .json(&json!({"value": "hello"}));
            assert_eq!(common::send_json(put).await.0, 200);
            // A single node is its own quorum: it grants and keeps leases alive.
            let grant = client
                .post(format!("{base}/v1/leases"))
                .json(&json!({"ttl": 30}));
            let (_, lease) = common::send_json(grant).await;
            let keepalive = client.post(format!("{base}/v1/leases/{}/keepalive", lease["id"]));
            assert_eq!(common::send_json(keepalive).await.0, 200);
            // Open without credentials, it takes no other members: a joiner would get its
            // secret whatever credentials it sent, and could serve it anywhere.
            let join = client
                .post(format!("{base}/v1/cluster/join"))
                .json(&json!({"addr": "127.0.0.1:1"}));
            let (status, refusal) = common::send_json(join).await;
            assert_eq!(
                (status, &refusal["error_code"]),
                (409, &json!("membership_change_refused")),
                "{refusal}"
            );
            // Nor does it remove its last voter, and it says so.
            let remove = client.post(format!("{base}/v1/nodes/1/actions/remove"));
            let (status, refusal) = common::send_json(remove).await;
            assert_eq!(status, 409, "{refusal}");
            let message = refusal["message"].as_str().unwrap();
            assert!(message.contains("last voter"), "{refusal}");
        }
        let (_, kv) = common::send_json(client.get(format!("{base}/v1/kv/greeting"))).await;
        assert_eq!(kv["value"], "hello", "round {round}");
        let (_, cluster) = common::send_json(client.get(format!("{base}/v1/cluster"))).await;
        assert_eq!(cluster["this_node"]["role"], "leader");
        child.kill().unwrap();
        child.wait().unwrap();
        // A log written to a file is plain text: no terminal colour codes around its fields.
        let log = std::fs::read_to_string(&log_path).unwrap();
        assert!(
            log.contains("keel is serving listen=127.0.0.1:7799"),
            "{log}"
        );
        assert!(!log.contains('\x1b'), "colour codes in a log file: {log:?}");
    }
    assert!(cwd.path().join("keel-data/identity.json").exists());
    // Open without credentials, the cluster must not be moved to where others reach it.
    let exposed = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args([
            "serve",
            "--listen",
            "0.0.0.0:7799",
            "--advertise",
            "127.0.0.1:7799",
        ])
        .current_dir(cwd.path())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&exposed.stderr);
    assert!(!exposed.status.success(), "{said}");
    assert!(
        said.contains("created on loopback without credentials"),
        "{said}"
    );
}
