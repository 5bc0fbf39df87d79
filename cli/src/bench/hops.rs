//! Where a run's time went, from the stamps every hop puts on a task (DESIGN.md "Who
//! stamps what"): for each hop, the median and the slowest task's time in it, so a
//! benchmark says which hop to look at next.

use serde::Deserialize;
use serde_json::{json, Value};

/// One task's stamps, in microseconds since the epoch (0 where a hop did not stamp).
#[derive(Clone, Copy, Debug, Default)]
struct Stamps {
    /// When the client sent the request and had the answer (synchronous calls only).
    client_sent: i64,
    client_answered: i64,
    received: i64,
    accepted: i64,
    dispatched: i64,
    exec_start: i64,
    exec_end: i64,
    manager_sent: i64,
    agent_sent: i64,
    completed: i64,
}

/// A transition of a task view, borrowed from the page that holds it.
#[derive(Deserialize)]
pub struct StateAt<'a> {
    pub state: &'a str,
    pub at: i64,
}

/// The stamps of a task view (`GET /v1/tasks/{id}`), borrowed from its body.
#[derive(Deserialize)]
pub struct TaskStamps<'a> {
    #[serde(borrow, default)]
    pub transitions: Vec<StateAt<'a>>,
    #[serde(default)]
    pub timing: Timing,
}

/// The `timing` of a task view.
#[derive(Deserialize, Default)]
#[serde(default)]
pub struct Timing {
    exec_start: Option<i64>,
    exec_end: Option<i64>,
    manager_sent: Option<i64>,
    agent_sent: Option<i64>,
    completed: Option<i64>,
}

impl Stamps {
    fn from_parts(transitions: &[StateAt<'_>], timing: &Timing) -> Stamps {
        let at = |state: &str| {
            transitions
                .iter()
                .find(|t| t.state == state)
                .map_or(0, |t| t.at)
        };
        Stamps {
            client_sent: 0,
            client_answered: 0,
            received: at("received"),
            accepted: at("waiting-for-nodes"),
            dispatched: at("waiting-for-launch"),
            exec_start: timing.exec_start.unwrap_or(0),
            exec_end: timing.exec_end.unwrap_or(0),
            manager_sent: timing.manager_sent.unwrap_or(0),
            agent_sent: timing.agent_sent.unwrap_or(0),
            completed: timing.completed.unwrap_or(0),
        }
    }
}

/// A hop's span in a task's stamps: (from, to).
type Span = fn(&Stamps) -> (i64, i64);
/// A point a task passes: its stamp.
type Point = fn(&Stamps) -> i64;

/// The hops, each as (name, from, to).
const HOPS: &[(&str, Span)] = &[
    ("client_to_service", |s| (s.client_sent, s.received)),
    ("service_to_agent", |s| (s.received, s.accepted)),
    ("interchange_queue", |s| (s.accepted, s.dispatched)),
    ("manager_to_worker", |s| (s.dispatched, s.exec_start)),
    ("function", |s| (s.exec_start, s.exec_end)),
    ("worker_to_manager", |s| (s.exec_end, s.manager_sent)),
    ("manager_to_agent", |s| (s.manager_sent, s.agent_sent)),
    ("agent_to_service", |s| (s.agent_sent, s.completed)),
    // The result's commit, the caller's wake-up and the HTTP answer.
    ("service_to_client", |s| (s.completed, s.client_answered)),
];

/// The points a task passes, in order.
const POINTS: &[(&str, Point)] = &[
    ("received", |s| s.received),
    ("accepted", |s| s.accepted),
    ("dispatched", |s| s.dispatched),
    ("exec_end", |s| s.exec_end),
    ("agent_sent", |s| s.agent_sent),
    ("completed", |s| s.completed),
];

/// Collects task views and summarizes them.
#[derive(Default)]
pub struct Hops {
    tasks: Vec<Stamps>,
}

impl Hops {
    /// Notes a synchronous call's task view with when the client sent it and had the
    /// answer (microseconds since the epoch, the clock the other stamps use).
    pub fn add_call(&mut self, task: &TaskStamps<'_>, sent: i64, answered: i64) {
        let mut stamps = Stamps::from_parts(&task.transitions, &task.timing);
        stamps.client_sent = sent;
        stamps.client_answered = answered;
        self.tasks.push(stamps);
    }

    /// Notes one finished task's transitions and timing, decoded without a value tree.
    pub fn add_parts(&mut self, transitions: &[StateAt<'_>], timing: &Timing) {
        self.tasks.push(Stamps::from_parts(transitions, timing));
    }

    /// `{hop: {p50_ms, max_ms}}` over the tasks every hop stamped, plus `span_ms`: from
    /// the first task received to the last one completed.
    pub fn summary(&self) -> Value {
        let mut out = serde_json::Map::new();
        for (name, span) in HOPS {
            let mut ms: Vec<f64> = self
                .tasks
                .iter()
                .map(span)
                .filter(|(from, to)| *from > 0 && *to > 0)
                .map(|(from, to)| (to - from) as f64 / 1e3)
                .collect();
            if ms.is_empty() {
                continue;
            }
            ms.sort_by(f64::total_cmp);
            out.insert(
                (*name).to_owned(),
                json!({"p50_ms": ms[ms.len() / 2], "max_ms": ms[ms.len() - 1]}),
            );
        }
        let first = self
            .tasks
            .iter()
            .map(|s| s.received)
            .filter(|&t| t > 0)
            .min();
        let last = self.tasks.iter().map(|s| s.completed).max();
        if let (Some(first), Some(last)) = (first, last) {
            out.insert("span_ms".into(), json!((last - first) as f64 / 1e3));
            // When the last task passed each point: the point where the run's time
            // grows is the stage that could not keep up.
            let mut last_at = serde_json::Map::new();
            for (name, stamp) in POINTS {
                if let Some(at) = self.tasks.iter().map(stamp).filter(|&t| t > 0).max() {
                    last_at.insert((*name).to_owned(), json!((at - first) as f64 / 1e3));
                }
            }
            out.insert("last_at_ms".into(), Value::Object(last_at));
        }
        Value::Object(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hops_are_the_differences_of_the_stamps() {
        let view = |base: i64| {
            json!({
                "transitions": [
                    {"state": "received", "at": base},
                    {"state": "waiting-for-endpoint", "at": base + 5},
                    {"state": "waiting-for-nodes", "at": base + 10},
                    {"state": "waiting-for-launch", "at": base + 30},
                ],
                "timing": {"exec_start": base + 60, "exec_end": base + 1060,
                           "manager_sent": base + 1070, "agent_sent": base + 1100,
                           "completed": base + 2100},
            })
        };
        let mut hops = Hops::default();
        for base in [1_000_000, 1_003_000] {
            let text = view(base).to_string();
            let stamps: TaskStamps<'_> = serde_json::from_str(&text).unwrap();
            hops.add_call(&stamps, base - 70, base + 2300);
        }
        let summary = hops.summary();
        assert_eq!(summary["client_to_service"]["p50_ms"], 0.07);
        assert_eq!(summary["service_to_client"]["max_ms"], 0.2);
        assert_eq!(summary["service_to_agent"]["p50_ms"], 0.01);
        assert_eq!(summary["function"]["max_ms"], 1.0);
        assert_eq!(summary["agent_to_service"]["p50_ms"], 1.0);
        assert_eq!(summary["span_ms"], 5.1);
        assert_eq!(summary["last_at_ms"]["accepted"], 3.01);
    }
}
