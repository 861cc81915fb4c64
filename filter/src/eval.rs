//! Continuous eval sampling: which calls are evaluated, the evaluator's request and how its
//! score is read, and the per-worker book of evaluations waiting or in flight. Plain Rust,
//! unit-tested natively; `host::eval` only moves host data in and out.
//!
//! Nothing here can hold up a user: a sampled call's request body is copied as it passes,
//! the evaluation is filed when the user's answer is complete, and the worker's root
//! context sends it later. A full book drops the sample instead of queueing it.

use serde_json::{json, Value};

pub use crate::copy::BodyCopy;
use crate::shadow::{Sampler, VecMap};

/// Per version: which calls are evaluated (evenly spread, per worker and version).
#[derive(Debug, Default)]
pub struct EvalSamplers {
    per_version: [Sampler; 2],
}

impl EvalSamplers {
    pub fn sample(&mut self, version: canary_contract::Version, sample_bp: u32) -> bool {
        self.per_version[version.index()].sample(sample_bp)
    }
}

/// One evaluation, filed when the user's answer is complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EvalCall {
    pub rollout: String,
    pub version: canary_contract::Version,
    pub request_body: Vec<u8>,
    pub status: u16,
    pub text: String,
}

impl EvalCall {
    /// The evaluator's request body: `{"rollout", "version", "request", "response":
    /// {"status", "text"}}`; `request` is the user's body as JSON, or as a string if it is
    /// not JSON.
    pub fn body(&self) -> Vec<u8> {
        let request = serde_json::from_slice::<Value>(&self.request_body).unwrap_or_else(|_| {
            Value::String(String::from_utf8_lossy(&self.request_body).into_owned())
        });
        let body = json!({
            "rollout": self.rollout,
            "version": self.version.as_str(),
            "request": request,
            "response": {"status": self.status, "text": self.text},
        });
        serde_json::to_vec(&body).unwrap_or_default()
    }
}

/// The evaluator's score in thousandths: a 2xx answer with `{"score": <0..1>}`.
pub fn parse_score(status: Option<u16>, body: &[u8]) -> Option<u64> {
    if !status.is_some_and(|s| (200..300).contains(&s)) {
        return None;
    }
    let value: Value = serde_json::from_slice(body).ok()?;
    let score = value.get("score")?.as_f64()?;
    (0.0..=1.0)
        .contains(&score)
        .then_some((score * 1000.0 + 0.5) as u64)
}

/// A worker's evaluations: filed by HTTP contexts, sent and answered in its root context.
/// `T` is what the glue needs to record a score (the configuration, rollout and version).
pub struct EvalBook<T> {
    ready: Vec<(T, EvalCall)>,
    in_flight: VecMap<u32, T>,
}

impl<T> Default for EvalBook<T> {
    fn default() -> Self {
        EvalBook {
            ready: Vec::new(),
            in_flight: VecMap::default(),
        }
    }
}

impl<T> EvalBook<T> {
    /// Evaluations waiting to be sent or in flight.
    pub fn outstanding(&self) -> usize {
        self.ready.len() + self.in_flight.len()
    }

    /// Files an evaluation, unless `max_in_flight` are outstanding: then it is handed back
    /// to be counted as dropped.
    pub fn file(&mut self, ctx: T, call: EvalCall, max_in_flight: u32) -> Result<(), T> {
        if self.outstanding() >= max_in_flight as usize {
            return Err(ctx);
        }
        self.ready.push((ctx, call));
        Ok(())
    }

    /// The evaluations to send now (each handed out once).
    pub fn take_ready(&mut self) -> Vec<(T, EvalCall)> {
        std::mem::take(&mut self.ready)
    }

    /// An evaluation is on its way; its answer will come with `token`.
    pub fn sent(&mut self, token: u32, ctx: T) {
        self.in_flight.insert(token, ctx);
    }

    /// The answer to `token`, if it is an evaluation's.
    pub fn answered(&mut self, token: u32) -> Option<T> {
        self.in_flight.remove(&token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use canary_contract::Version;

    fn call() -> EvalCall {
        EvalCall {
            rollout: "chat".into(),
            version: Version::Canary,
            request_body: br#"{"messages":[{"role":"user","content":"hi"}]}"#.to_vec(),
            status: 200,
            text: "Sure.".into(),
        }
    }

    #[test]
    fn each_version_is_sampled_at_its_share() {
        let mut s = EvalSamplers::default();
        let mut picked = [0u32; 2];
        for i in 0..20_000 {
            let v = if i % 4 == 0 {
                Version::Canary
            } else {
                Version::Stable
            };
            if s.sample(v, 100) {
                picked[v.index()] += 1;
            }
        }
        // 15,000 stable and 5,000 canary calls at 1%: exactly 150 and 50.
        assert_eq!(picked, [150, 50]);
    }

    #[test]
    fn evaluator_body_carries_request_and_answer() {
        let body: Value = serde_json::from_slice(&call().body()).expect("json");
        assert_eq!(
            body,
            json!({"rollout": "chat", "version": "canary",
                   "request": {"messages": [{"role": "user", "content": "hi"}]},
                   "response": {"status": 200, "text": "Sure."}})
        );
        let mut plain = call();
        plain.request_body = b"not \"json\"".to_vec();
        let body: Value = serde_json::from_slice(&plain.body()).expect("json");
        assert_eq!(body["request"], json!("not \"json\""));
    }

    #[test]
    fn scores_are_read_in_thousandths() {
        let table: &[(Option<u16>, &[u8], Option<u64>)] = &[
            (Some(200), br#"{"score":0.87}"#, Some(870)),
            (Some(200), br#"{"score":1}"#, Some(1000)),
            (Some(200), br#"{"score":0,"reason":"off topic"}"#, Some(0)),
            (Some(200), br#"{"score":0.0005}"#, Some(1)),
            (Some(200), br#"{"score":1.5}"#, None),
            (Some(200), br#"{"score":-0.1}"#, None),
            (Some(200), br#"{"score":"high"}"#, None),
            (Some(200), br#"{"grade":0.9}"#, None),
            (Some(200), b"0.9", None),
            (Some(200), b"", None),
            (Some(503), br#"{"score":0.9}"#, None),
            (None, br#"{"score":0.9}"#, None),
        ];
        for (status, body, want) in table {
            assert_eq!(
                parse_score(*status, body),
                *want,
                "{status:?} {:?}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn the_book_drops_beyond_its_bound_and_hands_out_once() {
        let mut book = EvalBook::default();
        assert!(book.file(1, call(), 2).is_ok());
        assert!(book.file(2, call(), 2).is_ok());
        assert_eq!(book.file(3, call(), 2), Err(3), "full: dropped, not queued");
        let ready = book.take_ready();
        assert_eq!(ready.len(), 2);
        assert!(book.take_ready().is_empty());
        book.sent(7, 1);
        book.sent(8, 2);
        assert_eq!(book.file(4, call(), 2), Err(4), "both still in flight");
        assert_eq!(book.answered(7), Some(1));
        assert_eq!(book.answered(7), None, "answered once");
        assert_eq!(book.answered(99), None, "not an evaluation");
        assert!(book.file(5, call(), 2).is_ok());
        assert_eq!(book.outstanding(), 2);
    }
}
