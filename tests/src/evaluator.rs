//! A fake evaluator (an LLM-as-judge service) for the eval sampling tests, bench and demo:
//! scores each answer by its text, as a judge would by content, and can be slow or failing.

use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use serde_json::{json, Value};

use crate::webhook::{JsonReceiver, Responder};

/// How the evaluator scores and answers.
#[derive(Debug, Clone)]
pub struct EvaluatorSpec {
    /// `(text, score)`: an answer whose text contains `text` gets `score` (first match).
    pub scores: Vec<(String, f64)>,
    pub default_score: f64,
}

impl Default for EvaluatorSpec {
    fn default() -> Self {
        EvaluatorSpec {
            scores: Vec::new(),
            default_score: 0.9,
        }
    }
}

/// Live controls, changeable while it runs.
#[derive(Debug, Default)]
struct Controls {
    delay_ms: AtomicU64,
    /// 0: answer with the score; else answer with this status and no score.
    failing_status: AtomicU16,
}

pub struct Evaluator {
    receiver: JsonReceiver,
    controls: Arc<Controls>,
}

impl Evaluator {
    pub async fn start(spec: EvaluatorSpec) -> Result<Evaluator> {
        let controls = Arc::new(Controls::default());
        let live = controls.clone();
        let respond: Responder = Arc::new(move |request: &Value| {
            let pause = Duration::from_millis(live.delay_ms.load(Ordering::Relaxed));
            let failing = live.failing_status.load(Ordering::Relaxed);
            if failing != 0 {
                return (failing, b"{\"error\":\"overloaded\"}".to_vec(), pause);
            }
            let text = request["response"]["text"].as_str().unwrap_or("");
            let score = spec
                .scores
                .iter()
                .find(|(t, _)| text.contains(t.as_str()))
                .map_or(spec.default_score, |(_, s)| *s);
            let body = json!({"score": score, "reason": "fake judge"});
            (200, body.to_string().into_bytes(), pause)
        });
        Ok(Evaluator {
            receiver: JsonReceiver::start(respond).await?,
            controls,
        })
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.receiver.addr()
    }

    /// Every evaluation received, in arrival order.
    pub fn received(&self) -> Vec<Value> {
        self.receiver.received()
    }

    /// Evaluations received for `version`.
    pub fn received_for(&self, version: &str) -> usize {
        self.received()
            .iter()
            .filter(|v| v["version"] == version)
            .count()
    }

    pub fn set_delay(&self, delay: Duration) {
        self.controls
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::Relaxed);
    }

    /// Answer every evaluation with `status` and no score (`None`: score again).
    pub fn set_failing(&self, status: Option<u16>) {
        self.controls
            .failing_status
            .store(status.unwrap_or(0), Ordering::Relaxed);
    }
}
