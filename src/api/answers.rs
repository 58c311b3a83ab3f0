//! What the node's route families answered: a count per family and status for `/metrics`
//! (`keel_http_requests_total`), and a log line for each failure (5xx) naming the request it
//! answers.
//!
//! The log keeps to a budget of [`FAILURES_LOGGED_PER_SECOND`]: a client looping on a route
//! that fails (a node removed from its cluster, a lost quorum) would otherwise write one line
//! per request, burying the lines that say why. The lines held back are counted in the next
//! one logged (`held_back`), and every answer in the counts.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use axum::http::Method;
use axum::http::Uri;
use axum::response::Response;

use crate::error::Failure;

/// Failed requests logged in any one second; more are counted, not logged.
pub const FAILURES_LOGGED_PER_SECOND: u32 = 10;

#[derive(Default)]
pub struct Answers {
    /// Answers by route family and status code.
    counts: Mutex<BTreeMap<(&'static str, u16), u64>>,
    failure_log: Mutex<LogBudget>,
}

impl Answers {
    /// Counts `response` to a request of `family`, and logs it if it is a failure the budget
    /// has room for.
    pub fn record(&self, family: &'static str, method: &Method, uri: &Uri, response: &Response) {
        let status = response.status();
        *self
            .counts
            .lock()
            .expect("answer counts")
            .entry((family, status.as_u16()))
            .or_default() += 1;
        if !status.is_server_error() {
            return;
        }
        let admitted = self
            .failure_log
            .lock()
            .expect("failure log")
            .admit(Instant::now());
        if let Some(held_back) = admitted {
            let error = response.extensions().get::<Failure>().map(|f| f.0.as_str());
            let status = status.as_u16();
            tracing::warn!(%method, %uri, status, error, held_back, "request failed");
        }
    }

    /// The counts so far, by family and status.
    pub fn counts(&self) -> Vec<((&'static str, u16), u64)> {
        let counts = self.counts.lock().expect("answer counts");
        counts.iter().map(|(key, count)| (*key, *count)).collect()
    }
}

/// How many lines the current second has logged, and how many were held back since the last
/// line logged.
#[derive(Default)]
struct LogBudget {
    second_began: Option<Instant>,
    logged: u32,
    held_back: u64,
}

impl LogBudget {
    /// Whether a line may be logged `now`; if so, how many were held back before it.
    fn admit(&mut self, now: Instant) -> Option<u64> {
        let in_this_second = self
            .second_began
            .is_some_and(|began| now.duration_since(began) < Duration::from_secs(1));
        if !in_this_second {
            self.second_began = Some(now);
            self.logged = 0;
        }
        if self.logged == FAILURES_LOGGED_PER_SECOND {
            self.held_back += 1;
            return None;
        }
        self.logged += 1;
        Some(std::mem::take(&mut self.held_back))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_failures_logs_the_budget_and_counts_the_rest_in_the_next_line() {
        let start = Instant::now();
        let mut budget = LogBudget::default();
        let at = |ms: u64| start + Duration::from_millis(ms);
        // (time of the failure in ms, what admit answers)
        let mut expected: Vec<(u64, Option<u64>)> = Vec::new();
        expected.extend((0..10).map(|i| (i * 10, Some(0))));
        expected.extend((0..5).map(|i| (500 + i, None)));
        expected.extend([
            (999, None),
            (1000, Some(6)),
            (1001, Some(0)),
            (5000, Some(0)),
        ]);
        for (ms, answer) in expected {
            assert_eq!(budget.admit(at(ms)), answer, "at {ms} ms");
        }
    }
}
