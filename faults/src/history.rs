//! What the clients did: one record per operation with its invocation, its completion and
//! its outcome. `ok` and `fail` are definite; `info` means the outcome is unknown (a timeout,
//! a 503 after the request may have been proposed), and the checker must allow both.

use serde::Deserialize;
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum F {
    Read,
    Write,
    Cas,
    Add,
    /// Raise the undermoon broker's global epoch to `value` if it is below it.
    Raise,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Fail,
    Info,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    pub id: usize,
    pub process: usize,
    /// The node (1-based) the request went to.
    pub node: usize,
    pub f: F,
    pub key: String,
    /// Written value, CAS target, or the value a read returned (`None`: absent).
    pub value: Option<i64>,
    /// The value a CAS expected.
    pub expected: Option<i64>,
    pub invoke_ns: u64,
    pub complete_ns: u64,
    pub outcome: Outcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Operation {
    pub fn latency_ms(&self) -> f64 {
        (self.complete_ns - self.invoke_ns) as f64 / 1e6
    }
}

/// The history as Jepsen-style events: an `invoke` and a completion (`ok`/`fail`/`info`)
/// per operation, in time order.
pub fn events(operations: &[Operation]) -> Vec<serde_json::Value> {
    let mut events: Vec<(u64, serde_json::Value)> = Vec::with_capacity(operations.len() * 2);
    for op in operations {
        let base = serde_json::json!({
            "process": op.process, "node": op.node, "f": op.f, "key": op.key,
            "expected": op.expected,
        });
        let mut invoke = base.clone();
        invoke["type"] = "invoke".into();
        invoke["time_ns"] = op.invoke_ns.into();
        invoke["value"] = match op.f {
            F::Read => serde_json::Value::Null,
            _ => op.value.into(),
        };
        let mut complete = base;
        complete["type"] = serde_json::to_value(op.outcome).expect("outcome");
        complete["time_ns"] = op.complete_ns.into();
        complete["value"] = op.value.into();
        if let Some(error) = &op.error {
            complete["error"] = error.clone().into();
        }
        events.push((op.invoke_ns, invoke));
        events.push((op.complete_ns, complete));
    }
    events.sort_by_key(|(time, _)| *time);
    events.into_iter().map(|(_, event)| event).collect()
}
