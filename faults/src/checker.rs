//! Checking a history.
//!
//! Linearizability of the register workload is decided per key (a register history is
//! linearizable iff each key's is) with the Wing–Gong search as Porcupine and Knossos run
//! it: walk the history in time order, try to linearize each pending call at the point it
//! is reached, backtrack on a return that nothing can explain, and remember every
//! (linearized set, state) pair already explored so no configuration is searched twice.
//! Operations whose outcome is unknown (`info`) may take effect at any point after their
//! invocation, or never; failed operations never took effect and are left out.
//!
//! On an invalid key the checker shrinks the history to a minimal failing sub-history
//! (dropping operations while it stays invalid) so a person can read why.

use std::collections::BTreeMap;
use std::collections::HashSet;
use std::time::Duration;
use std::time::Instant;

use serde::Serialize;

use crate::history::Operation;
use crate::history::Outcome;
use crate::history::F;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Valid,
    Invalid,
    /// The search ran out of time.
    Unknown,
}

/// The register model's step: may `op` take effect in `state`, and what state follows?
fn step(state: Option<i64>, op: &Operation) -> Option<Option<i64>> {
    match (op.f, op.outcome) {
        (F::Read, _) => (op.value == state).then_some(state),
        (F::Write, _) => Some(op.value),
        (F::Cas, Outcome::Ok) => (state == op.expected).then_some(op.value),
        // An unknown CAS either applied (state matched) or had no effect.
        (F::Cas, _) => Some(if state == op.expected {
            op.value
        } else {
            state
        }),
        (F::Add, _) => Some(state),
        // The broker's epoch starts at 0 (absent) and a raise only moves it up.
        (F::Raise, Outcome::Ok) => (state.unwrap_or(0) < op.value?).then_some(op.value),
        (F::Raise, _) => Some(if state.unwrap_or(0) < op.value? {
            op.value
        } else {
            state
        }),
    }
}

struct Entry {
    op: usize,
    is_call: bool,
    /// For a call: the index of its return entry.
    partner: usize,
}

/// Decides whether one key's operations are linearizable, within `budget`.
pub fn linearizable(ops: &[&Operation], budget: Duration) -> Verdict {
    let started = Instant::now();
    // Calls first on equal times: operations that touch in time count as concurrent.
    let mut times: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
    for (i, op) in ops.iter().enumerate() {
        let complete = if op.outcome == Outcome::Info {
            u64::MAX
        } else {
            op.complete_ns
        };
        times.push((op.invoke_ns, false, i));
        times.push((complete, true, i));
    }
    times.sort_by_key(|(t, is_return, i)| (*t, *is_return, *i));
    let mut entries: Vec<Entry> = times
        .iter()
        .map(|(_, is_return, op)| Entry {
            op: *op,
            is_call: !is_return,
            partner: usize::MAX,
        })
        .collect();
    let mut return_of = vec![usize::MAX; ops.len()];
    for (index, entry) in entries.iter().enumerate() {
        if !entry.is_call {
            return_of[entry.op] = index;
        }
    }
    for entry in entries.iter_mut().filter(|e| e.is_call) {
        entry.partner = return_of[entry.op];
    }

    // A doubly linked list over the entries, with a sentinel head at index n.
    let n = entries.len();
    let head = n;
    let mut next = vec![usize::MAX; n + 1];
    let mut prev = vec![head; n + 1];
    for i in 0..n {
        next[i] = if i + 1 < n { i + 1 } else { usize::MAX };
        prev[i] = if i == 0 { head } else { i - 1 };
    }
    next[head] = if n == 0 { usize::MAX } else { 0 };

    let unlink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, i: usize| {
        let (p, x) = (prev[i], next[i]);
        next[p] = x;
        if x != usize::MAX {
            prev[x] = p;
        }
    };
    let relink = |next: &mut Vec<usize>, prev: &mut Vec<usize>, i: usize| {
        let (p, x) = (prev[i], next[i]);
        next[p] = i;
        if x != usize::MAX {
            prev[x] = i;
        }
    };

    let words = ops.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut cache: HashSet<(Vec<u64>, Option<i64>)> = HashSet::new();
    let mut stack: Vec<(usize, Option<i64>)> = Vec::new();
    let mut state: Option<i64> = None;
    let mut cursor = next[head];
    let mut steps = 0u64;
    while next[head] != usize::MAX {
        steps += 1;
        if steps.is_multiple_of(4096) && started.elapsed() > budget {
            return Verdict::Unknown;
        }
        if cursor == usize::MAX {
            // Nothing left to try at this level: backtrack.
            let Some((call, previous)) = stack.pop() else {
                return Verdict::Invalid;
            };
            let op = entries[call].op;
            linearized[op / 64] &= !(1 << (op % 64));
            state = previous;
            relink(&mut next, &mut prev, entries[call].partner);
            relink(&mut next, &mut prev, call);
            cursor = next[call];
            continue;
        }
        let entry = &entries[cursor];
        if entry.is_call {
            let op = entry.op;
            if let Some(new_state) = step(state, ops[op]) {
                let mut candidate = linearized.clone();
                candidate[op / 64] |= 1 << (op % 64);
                if cache.insert((candidate.clone(), new_state)) {
                    stack.push((cursor, state));
                    state = new_state;
                    linearized = candidate;
                    let partner = entry.partner;
                    unlink(&mut next, &mut prev, cursor);
                    unlink(&mut next, &mut prev, partner);
                    cursor = next[head];
                    continue;
                }
            }
            cursor = next[cursor];
        } else {
            // A return whose call could not be linearized yet: undo the last choice.
            cursor = usize::MAX;
        }
    }
    Verdict::Valid
}

/// The per-key result of the register check.
#[derive(Debug, Serialize)]
pub struct KeyResult {
    pub key: String,
    pub verdict: Verdict,
    pub operations: usize,
    /// For an invalid key: a smallest sub-history that is still not linearizable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub minimal_failing: Option<Vec<Operation>>,
}

/// Drops operations one at a time while the rest stays invalid.
fn shrink(ops: Vec<&Operation>, budget: Duration) -> Vec<Operation> {
    let started = Instant::now();
    let mut kept = ops;
    let mut i = 0;
    while i < kept.len() && started.elapsed() < budget {
        let mut candidate = kept.clone();
        candidate.remove(i);
        if linearizable(&candidate, Duration::from_secs(1)) == Verdict::Invalid {
            kept = candidate;
        } else {
            i += 1;
        }
    }
    kept.into_iter().cloned().collect()
}

/// Checks the register operations of a history, key by key.
pub fn check_registers(history: &[Operation], budget: Duration) -> Vec<KeyResult> {
    let mut by_key: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for op in history.iter().filter(|op| op.f != F::Add) {
        // A failed operation had no effect; an unfinished read has none either.
        let counts = match op.outcome {
            Outcome::Fail => false,
            Outcome::Info => op.f != F::Read,
            Outcome::Ok => true,
        };
        if counts {
            by_key.entry(&op.key).or_default().push(op);
        }
    }
    by_key
        .into_iter()
        .map(|(key, ops)| {
            let verdict = linearizable(&ops, budget);
            let minimal_failing =
                (verdict == Verdict::Invalid).then(|| shrink(ops.clone(), budget));
            KeyResult {
                key: key.to_string(),
                verdict,
                operations: ops.len(),
                minimal_failing,
            }
        })
        .collect()
}

/// The set workload's result: every acknowledged add must be in the final read.
#[derive(Debug, Serialize)]
pub struct SetResult {
    pub verdict: Verdict,
    pub acknowledged: usize,
    pub lost_count: usize,
    /// The first lost elements (at most [`SHOWN`]).
    pub lost: Vec<i64>,
    /// Adds whose outcome was unknown and that did land.
    pub recovered: usize,
    /// Elements present that no client ever tried to add.
    pub unexpected: Vec<i64>,
}

/// How many lost or unexpected elements a result lists.
const SHOWN: usize = 100;

pub fn check_set(history: &[Operation], final_read: &[i64]) -> SetResult {
    let present: HashSet<i64> = final_read.iter().copied().collect();
    let adds: Vec<&Operation> = history.iter().filter(|op| op.f == F::Add).collect();
    let attempted: HashSet<i64> = adds.iter().filter_map(|op| op.value).collect();
    let acknowledged: Vec<i64> = adds
        .iter()
        .filter(|op| op.outcome == Outcome::Ok)
        .filter_map(|op| op.value)
        .collect();
    let lost: Vec<i64> = acknowledged
        .iter()
        .copied()
        .filter(|v| !present.contains(v))
        .collect();
    let unexpected: Vec<i64> = final_read
        .iter()
        .copied()
        .filter(|v| !attempted.contains(v))
        .collect();
    let recovered = adds
        .iter()
        .filter(|op| op.outcome == Outcome::Info)
        .filter_map(|op| op.value)
        .filter(|v| present.contains(v))
        .count();
    SetResult {
        verdict: if lost.is_empty() && unexpected.is_empty() {
            Verdict::Valid
        } else {
            Verdict::Invalid
        },
        acknowledged: acknowledged.len(),
        lost_count: lost.len(),
        lost: lost.into_iter().take(SHOWN).collect(),
        recovered,
        unexpected: unexpected.into_iter().take(SHOWN).collect(),
    }
}

/// The watch check: the revisions a watcher saw, across reconnects, must be exactly
/// `first..=last`, each once, in order.
#[derive(Debug, Serialize)]
pub struct WatchResult {
    pub verdict: Verdict,
    pub events: usize,
    pub first_problem: Option<String>,
}

pub fn check_watch(seen: &[u64], first: u64, last: u64) -> WatchResult {
    let expected = first..=last;
    let problem = seen
        .iter()
        .zip(expected.clone())
        .find(|(got, want)| got != &want)
        .map(|(got, want)| format!("expected revision {want}, saw {got}"))
        .or_else(|| {
            (seen.len() as u64 != expected.clone().count() as u64).then(|| {
                format!(
                    "saw {} events, expected {} (revisions {first}..={last})",
                    seen.len(),
                    last + 1 - first
                )
            })
        });
    WatchResult {
        verdict: if problem.is_none() {
            Verdict::Valid
        } else {
            Verdict::Invalid
        },
        events: seen.len(),
        first_problem: problem,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds an operation from a compact row: process, f, value, expected, invoke, complete, outcome.
    fn op(
        id: usize,
        f: F,
        value: Option<i64>,
        expected: Option<i64>,
        span: (u64, u64),
        outcome: Outcome,
    ) -> Operation {
        Operation {
            id,
            process: id,
            node: 1,
            f,
            key: "k".into(),
            value,
            expected,
            invoke_ns: span.0,
            complete_ns: span.1,
            outcome,
            error: None,
        }
    }

    fn check(ops: &[Operation]) -> Verdict {
        check_registers(ops, Duration::from_secs(5))[0].verdict
    }

    #[test]
    fn data_driven_register_histories() {
        use Outcome::*;
        use F::*;
        let cases: Vec<(&str, Vec<Operation>, Verdict)> = vec![
            (
                "sequential write then read",
                vec![
                    op(0, Write, Some(1), None, (0, 10), Ok),
                    op(1, Read, Some(1), None, (20, 30), Ok),
                ],
                Verdict::Valid,
            ),
            (
                "stale read after an acknowledged write",
                vec![
                    op(0, Write, Some(1), None, (0, 10), Ok),
                    op(1, Write, Some(2), None, (20, 30), Ok),
                    op(2, Read, Some(1), None, (40, 50), Ok),
                ],
                Verdict::Invalid,
            ),
            (
                "lost write: a later read sees the older value",
                vec![
                    op(0, Write, Some(1), None, (0, 10), Ok),
                    op(1, Read, Some(1), None, (15, 18), Ok),
                    op(2, Write, Some(2), None, (20, 30), Ok),
                    op(3, Read, Some(2), None, (35, 38), Ok),
                    op(4, Read, Some(1), None, (40, 45), Ok),
                ],
                Verdict::Invalid,
            ),
            (
                "concurrent write may be seen either way",
                vec![
                    op(0, Write, Some(1), None, (0, 10), Ok),
                    op(1, Write, Some(2), None, (5, 30), Ok),
                    op(2, Read, Some(1), None, (12, 14), Ok),
                    op(3, Read, Some(2), None, (31, 32), Ok),
                ],
                Verdict::Valid,
            ),
            (
                "read of a value nobody wrote",
                vec![op(0, Read, Some(7), None, (0, 10), Ok)],
                Verdict::Invalid,
            ),
            (
                "an unknown write may have applied late",
                vec![
                    op(0, Write, Some(1), None, (0, 10), Ok),
                    op(1, Write, Some(2), None, (20, 25), Info),
                    op(2, Read, Some(1), None, (30, 35), Ok),
                    op(3, Read, Some(2), None, (40, 45), Ok),
                ],
                Verdict::Valid,
            ),
            (
                "an unknown write may never have applied",
                vec![
                    op(0, Write, Some(1), None, (0, 10), Ok),
                    op(1, Write, Some(2), None, (20, 25), Info),
                    op(2, Read, Some(1), None, (30, 35), Ok),
                ],
                Verdict::Valid,
            ),
            (
                "cas that succeeded on a value that was not there",
                vec![
                    op(0, Write, Some(1), None, (0, 10), Ok),
                    op(1, Cas, Some(3), Some(2), (20, 30), Ok),
                ],
                Verdict::Invalid,
            ),
            (
                "cas chain",
                vec![
                    op(0, Write, Some(1), None, (0, 10), Ok),
                    op(1, Cas, Some(2), Some(1), (20, 30), Ok),
                    op(2, Cas, Some(3), Some(2), (40, 50), Ok),
                    op(3, Read, Some(3), None, (60, 70), Ok),
                ],
                Verdict::Valid,
            ),
            (
                "raises in order, seen by reads",
                vec![
                    op(0, Raise, Some(3), None, (0, 10), Ok),
                    op(1, Read, Some(3), None, (15, 18), Ok),
                    op(2, Raise, Some(5), None, (20, 30), Ok),
                    op(3, Read, Some(5), None, (35, 38), Ok),
                ],
                Verdict::Valid,
            ),
            (
                "the epoch went back: a raise to less than an acknowledged one succeeded",
                vec![
                    op(0, Raise, Some(5), None, (0, 10), Ok),
                    op(1, Raise, Some(3), None, (20, 30), Ok),
                ],
                Verdict::Invalid,
            ),
            (
                "concurrent raises both succeed only lower first",
                vec![
                    op(0, Raise, Some(3), None, (0, 30), Ok),
                    op(1, Raise, Some(5), None, (5, 25), Ok),
                    op(2, Read, Some(5), None, (35, 38), Ok),
                ],
                Verdict::Valid,
            ),
            (
                "a read below an acknowledged raise",
                vec![
                    op(0, Raise, Some(5), None, (0, 10), Ok),
                    op(1, Read, Some(4), None, (20, 30), Ok),
                ],
                Verdict::Invalid,
            ),
            (
                "an unknown raise below the epoch changes nothing",
                vec![
                    op(0, Raise, Some(5), None, (0, 10), Ok),
                    op(1, Raise, Some(3), None, (20, 25), Info),
                    op(2, Read, Some(5), None, (30, 35), Ok),
                ],
                Verdict::Valid,
            ),
            (
                "a failed write has no effect",
                vec![
                    op(0, Write, Some(1), None, (0, 10), Ok),
                    op(1, Write, Some(2), None, (20, 25), Fail),
                    op(2, Read, Some(1), None, (30, 35), Ok),
                ],
                Verdict::Valid,
            ),
        ];
        for (name, ops, expected) in cases {
            assert_eq!(check(&ops), expected, "{name}");
        }
    }

    #[test]
    fn shrinks_a_failure_to_the_operations_that_explain_it() {
        use Outcome::*;
        use F::*;
        let mut ops = vec![
            op(0, Write, Some(1), None, (0, 10), Ok),
            op(1, Write, Some(2), None, (20, 30), Ok),
            op(2, Read, Some(1), None, (40, 50), Ok),
        ];
        for i in 0..20 {
            let t = 100 + i * 10;
            ops.push(op(
                3 + i as usize,
                Write,
                Some(10 + i as i64),
                None,
                (t, t + 5),
                Ok,
            ));
        }
        let result = &check_registers(&ops, Duration::from_secs(5))[0];
        assert_eq!(result.verdict, Verdict::Invalid);
        let minimal = result.minimal_failing.as_ref().unwrap();
        assert!(minimal.len() <= 3, "{minimal:?}");
        assert!(minimal.iter().any(|o| o.f == Read));
    }

    #[test]
    fn set_check_finds_lost_adds() {
        let add = |id: usize, v: i64, outcome| op(id, F::Add, Some(v), None, (0, 1), outcome);
        let history = vec![
            add(0, 1, Outcome::Ok),
            add(1, 2, Outcome::Ok),
            add(2, 3, Outcome::Info),
        ];
        let result = check_set(&history, &[1, 3]);
        assert_eq!(result.verdict, Verdict::Invalid);
        assert_eq!(result.lost, vec![2]);
        assert_eq!(result.recovered, 1);
        assert_eq!(check_set(&history, &[1, 2]).verdict, Verdict::Valid);
    }

    #[test]
    fn watch_check_finds_gaps_and_duplicates() {
        assert_eq!(check_watch(&[3, 4, 5], 3, 5).verdict, Verdict::Valid);
        assert_eq!(check_watch(&[3, 5], 3, 5).verdict, Verdict::Invalid);
        assert_eq!(check_watch(&[3, 4, 4, 5], 3, 5).verdict, Verdict::Invalid);
        assert_eq!(check_watch(&[3, 4], 3, 5).verdict, Verdict::Invalid);
    }
}
