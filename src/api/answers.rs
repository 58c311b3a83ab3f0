//! What the node's route families answered: a count per family and status for `/metrics`
//! (`keel_http_requests_total`), and a log line for each failure (5xx) naming the request it
//! answers.
//!
//! A request a follower relays to the leader (a lease keep-alive, a registry or broker call)
//! is counted where the client sent it, not again on the leader, so that the counts of all
//! nodes add up to the requests clients made; the leader still logs a failure, with the reason
//! the follower's line lacks. Each family counts in atomics of its own: the count is taken on
//! every request, writes included.
//!
//! The log keeps to a budget of [`FAILURES_LOGGED_PER_SECOND`] for the whole node: a client
//! looping on a route that fails (a node removed from its cluster, a lost quorum) would
//! otherwise write one line per request, burying the lines that say why. The next line logged
//! says how many were held back (of any route); a burst's last held-back lines are counted
//! only in the metric.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use axum::http::Method;
use axum::http::Uri;
use axum::response::Response;

use crate::error::Failure;

/// Failed requests logged in any one second; more are counted, not logged.
pub const FAILURES_LOGGED_PER_SECOND: u32 = 10;

/// Status codes as `http` has them: 100 to 999.
const STATUS_CODES: std::ops::RangeInclusive<u16> = 100..=999;

/// The answers of every route family of a node.
#[derive(Default)]
pub struct Answers {
    families: Mutex<Vec<Arc<FamilyAnswers>>>,
    failure_log: Arc<Mutex<LogBudget>>,
}

impl Answers {
    /// The counts of route family `family`, to record its answers in.
    pub fn family(&self, family: &'static str) -> Arc<FamilyAnswers> {
        let answers = Arc::new(FamilyAnswers {
            family,
            by_status: STATUS_CODES.map(|_| AtomicU64::new(0)).collect(),
            failure_log: self.failure_log.clone(),
        });
        self.families
            .lock()
            .expect("answer families")
            .push(answers.clone());
        answers
    }

    /// The counts so far: family, status code and count, for every status answered.
    pub fn counts(&self) -> Vec<(&'static str, u16, u64)> {
        let families = self.families.lock().expect("answer families");
        let mut counts = Vec::new();
        for answers in families.iter() {
            let answered = STATUS_CODES.zip(answers.by_status.iter());
            counts.extend(answered.filter_map(|(code, count)| {
                let count = count.load(Ordering::Relaxed);
                (count > 0).then_some((answers.family, code, count))
            }));
        }
        counts
    }
}

/// What a request whose client went away before the answer counts as: nginx's "client closed
/// request". A client that gives up sooner than the node (a timeout shorter than
/// `--request-timeout-ms` during a quorum outage) leaves no other trace.
pub const CLIENT_CLOSED_REQUEST: u16 = 499;

/// One route family's answers.
pub struct FamilyAnswers {
    family: &'static str,
    /// By status code, from the first of [`STATUS_CODES`].
    by_status: Box<[AtomicU64]>,
    failure_log: Arc<Mutex<LogBudget>>,
}

impl FamilyAnswers {
    /// Counts `response` unless the request was `relayed` here by a follower, and logs it if
    /// it is a failure the budget has room for.
    pub fn record(&self, relayed: bool, method: &Method, uri: &Uri, response: &Response) {
        let status = response.status();
        if !relayed {
            self.count(status.as_u16());
        }
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
            tracing::warn!(%method, %uri, status, error, relayed, held_back, "request failed");
        }
    }

    /// Counts a request as [`CLIENT_CLOSED_REQUEST`] unless it is answered (recorded) first:
    /// hyper drops a request's future when its client closes the connection.
    pub fn until_answered(&self, relayed: bool) -> Unanswered<'_> {
        Unanswered {
            answers: self,
            counts: !relayed,
        }
    }

    fn count(&self, status: u16) {
        let slot = usize::from(status - STATUS_CODES.start());
        self.by_status[slot].fetch_add(1, Ordering::Relaxed);
    }
}

/// A request not answered yet; see [`FamilyAnswers::until_answered`].
pub struct Unanswered<'a> {
    answers: &'a FamilyAnswers,
    counts: bool,
}

impl Unanswered<'_> {
    /// The request was answered: it is counted with its status instead.
    pub fn answered(mut self) {
        self.counts = false;
    }
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if self.counts {
            self.answers.count(CLIENT_CLOSED_REQUEST);
        }
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
