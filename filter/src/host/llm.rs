//! LLM calls on the host (LLM build): per-user rate limits and the quota throttle before a
//! call is routed, its response read for signals (tokens, cost, refusals, quality headers),
//! and the copies of it that shadow mode and eval sampling take. The worker's state these
//! share with the root context lives in [`Worker`].

use std::cell::RefCell;
use std::rc::Rc;

use canary_contract::stats::Metric;
use canary_contract::{RolloutConfig, Version};
use proxy_wasm::traits::HttpContext;

use super::active::Active;
use super::calls::{increment, now_ms, RootWake, Stream};
use super::eval::{EvalCopy, EvalShared};
use super::shadow::{ShadowCopy, ShadowShared};
use crate::llm::{quality_milli, LlmExchange};
use crate::metrics::{quality_increments, MetricOp};
use crate::ratelimit::RateLimiter;
use crate::routing::Decision;

/// A worker's state shared by its root context and HTTP contexts (one `Rc` to clone per
/// request), outliving configuration updates.
#[derive(Default)]
pub(super) struct Worker {
    /// Per-user buckets.
    limiter: RefCell<RateLimiter>,
    shadow: ShadowShared,
    eval: EvalShared,
    wake: RootWake,
}

impl Worker {
    /// Root context, once configured: the queue HTTP contexts wake it through.
    pub(super) fn register_wake(&self) {
        self.wake.register();
    }

    /// Root context, on tick: sends what is ready, gives up shadow copies past their time.
    pub(super) fn on_tick(&self) {
        self.shadow.send_ready();
        self.shadow.expire();
        self.eval.send_ready();
    }

    /// Root context, woken by an HTTP context: sends what is ready.
    pub(super) fn on_wake(&self) {
        self.wake.drain();
        self.shadow.send_ready();
        self.eval.send_ready();
    }

    /// Root context: a call's answer. `false` when `token` is neither a shadow copy's nor
    /// an evaluation's.
    pub(super) fn call_response(&self, token: u32, body_size: usize) -> bool {
        self.shadow.candidate_response(token, body_size) || self.eval.answered(token, body_size)
    }

    /// Per-user limits and the quota throttle: `Err` when the request was answered with
    /// 429; else the user key and tokens charged up front, if the answer settles them.
    pub(super) fn rate_limit(
        &self,
        active: &Active,
        decision: &Decision,
        now: u64,
    ) -> Result<Option<(String, u64)>, ()> {
        let Some(rollout) = active.router.rollouts().get(decision.rollout) else {
            return Ok(None);
        };
        let Some(limit) = &rollout.rate_limit else {
            return Ok(None);
        };
        let Ok(mut limiter) = self.limiter.try_borrow_mut() else {
            return Ok(None);
        };
        let key = decision.key.as_deref();
        let is_priority = || {
            crate::ratelimit::is_priority(limit, key, |h| Stream.get_http_request_header_bytes(h))
        };
        match limiter.check(&rollout.name, limit, key, now, is_priority) {
            Ok(admitted) => {
                if admitted.priority_passed {
                    let op = MetricOp::Increment(Metric::ThrottlePriorityPassed);
                    active.apply_op(decision.rollout, op, decision.version);
                }
                let settle = admitted.tracked && limit.tokens_per_minute.is_some();
                Ok(key
                    .filter(|_| settle)
                    .map(|k| (k.to_string(), admitted.charged_tokens)))
            }
            Err(rejection) => {
                let op = MetricOp::Increment(rejection.reason.metric());
                active.apply_op(decision.rollout, op, decision.version);
                let retry_after = rejection.retry_after_s.to_string();
                Stream.send_http_response(
                    429,
                    vec![
                        ("retry-after", retry_after.as_str()),
                        ("content-type", "application/json"),
                    ],
                    Some(rejection.body().as_bytes()),
                );
                Err(())
            }
        }
    }
}

/// The LLM side of a routed request.
pub(super) struct LlmRequest {
    /// Set when the rollout reads LLM signals and the request is an LLM call.
    call: Option<LlmExchange>,
    /// User key and tokens charged up front, to settle with the answer's token count.
    charge: Option<(String, u64)>,
    /// Set when the request is copied to the shadow candidate.
    shadow: Option<ShadowCopy>,
    /// Set when the call is sampled for evaluation.
    eval: Option<EvalCopy>,
}

impl LlmRequest {
    /// A request of `rollout` was routed as `decision` says: if it is an LLM call, starts
    /// reading it, and copies it if shadow mode or eval sampling picks it.
    pub(super) fn start(
        worker: &Worker,
        active: &Rc<Active>,
        rollout: &RolloutConfig,
        decision: &Decision,
        now: u64,
        end_of_stream: bool,
        charge: Option<(String, u64)>,
    ) -> LlmRequest {
        let mut call = rollout.llm.as_ref().and_then(|signals| {
            // `:path` is read only when the LLM calls are a subset of the rollout's requests.
            let is_call = signals.path_prefixes.is_empty()
                || Stream
                    .get_http_request_header_bytes(":path")
                    .is_some_and(|p| signals.applies_to(&p));
            is_call.then(|| LlmExchange::start(now))
        });
        // Only LLM calls are shadowed: the primary's answer is read by their reader.
        let (mut shadow, mut eval) = (None, None);
        if let Some(llm) = call.as_mut() {
            shadow = worker.shadow.start(active, decision.rollout, || {
                Stream.get_http_request_headers_bytes()
            });
            if let Some(copy) = shadow.as_mut() {
                llm.capture();
                if end_of_stream {
                    worker
                        .shadow
                        .request_body(copy, 0, true, &worker.wake, || None);
                }
            }
            eval = EvalShared::start(active, decision.rollout, decision.version, end_of_stream);
            if eval.is_some() {
                llm.capture();
            }
        }
        LlmRequest {
            call,
            charge,
            shadow,
            eval,
        }
    }

    /// A request body chunk passes (never held back): the copies take it, up to the cap.
    pub(super) fn request_body(
        &mut self,
        worker: &Worker,
        len: usize,
        end: bool,
        read: impl FnOnce() -> Option<Vec<u8>> + Copy,
    ) {
        if let Some(copy) = self.shadow.as_mut() {
            worker
                .shadow
                .request_body(copy, len, end, &worker.wake, read);
        }
        if let Some(copy) = self.eval.as_mut() {
            EvalShared::request_body(copy, len, end, read);
        }
    }

    /// Response headers of request `(rollout, version)`: the copies note the status; an LLM
    /// call sets up its body reader and counts quality headers.
    pub(super) fn response_headers(
        &mut self,
        worker: &Worker,
        active: &Rc<Active>,
        (rollout, version): (usize, Version),
        status: Option<&[u8]>,
        end_of_stream: bool,
    ) {
        if let Some(copy) = self.shadow.as_mut() {
            ShadowShared::response_status(copy, status);
        }
        if let Some(copy) = self.eval.as_mut() {
            EvalShared::response_status(copy, status);
        }
        if self.call.is_some() {
            self.call_headers(active, rollout, version);
            if end_of_stream {
                self.end(worker, active, (rollout, version));
            }
        }
    }

    /// Response headers of an LLM call: set up the body reader, count quality headers.
    fn call_headers(&mut self, active: &Active, rollout: usize, version: Version) {
        let (Some(llm), Some(signals), Some(metrics)) = (
            self.call.as_mut(),
            active.llm_signals(rollout),
            active.metrics.get(rollout),
        ) else {
            return;
        };
        let content_type = Stream.get_http_response_header_bytes("content-type");
        llm.on_response_headers(content_type.as_deref(), signals.max_body_bytes);
        for (i, q) in signals.quality_headers.iter().enumerate() {
            let value = Stream
                .get_http_response_header_bytes(&q.header)
                .and_then(|v| quality_milli(&v));
            let (Some(value), Some(ids)) = (value, metrics.quality(i, version)) else {
                continue;
            };
            for (id, delta) in ids.into_iter().zip(quality_increments(value)) {
                increment(id, delta);
            }
        }
    }

    /// A response body chunk of an LLM call passes (never held back): it is read.
    pub(super) fn response_body(
        &mut self,
        worker: &Worker,
        active: &Rc<Active>,
        (rollout, version): (usize, Version),
        len: usize,
        end_of_stream: bool,
    ) {
        let signals = active.llm_signals(rollout);
        if let (Some(llm), Some(signals)) = (self.call.as_mut(), signals) {
            // The reader asks for no more than its cap allows.
            let ops = llm.on_body(len, now_ms(), signals, |wanted| {
                Stream.get_http_response_body(0, wanted)
            });
            for op in ops {
                active.apply_op(rollout, op, version);
            }
            if end_of_stream {
                self.end(worker, active, (rollout, version));
            }
        }
    }

    /// The end of an LLM call's response (or of its stream): its signals counted, the
    /// copies given the answer, the user's token charge settled.
    pub(super) fn end(
        &mut self,
        worker: &Worker,
        active: &Rc<Active>,
        (rollout, version): (usize, Version),
    ) {
        let Some(signals) = active.llm_signals(rollout) else {
            return;
        };
        let Some(llm) = self.call.as_mut() else {
            return;
        };
        let now = now_ms();
        let end = llm.on_end(now, signals, version);
        for op in end.ops {
            active.apply_op(rollout, op, version);
        }
        let (shadow, eval) = (self.shadow.take(), self.eval.take());
        if shadow.is_some() || eval.is_some() {
            let reading = llm.take_answer().unwrap_or_default();
            if let Some(copy) = eval {
                worker
                    .eval
                    .answer_end(copy, &reading, active, rollout, version, &worker.wake);
            }
            if let Some(copy) = shadow {
                worker.shadow.primary_end(copy, reading);
            }
        }
        // Settled once, with a readable answer; otherwise the estimate stands.
        if let (Some(actual), Some((key, charged)), Some(r)) = (
            end.tokens,
            self.charge.take(),
            active.router.rollouts().get(rollout),
        ) {
            if let Ok(mut limiter) = worker.limiter.try_borrow_mut() {
                limiter.settle(&r.name, &key, charged, actual, now);
            }
        }
    }
}
