//! Continuous eval sampling on the host (LLM build): copy a sampled call's request
//! body as it passes, file the evaluation when the user's answer is complete, send it from
//! the root context (which also gets the evaluator's answer: a call's answer goes to the
//! context that made it, and the user's context may be gone by then), and record the score
//! as the version's quality signal.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use canary_contract::{EvalMetric, Version};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType};

use super::active::Active;
use super::calls::{increment, RootWake};
use crate::eval::{parse_score, BodyCopy, EvalBook, EvalCall};
use crate::llm::Reading;
use crate::metrics::quality_increments;

/// Which configuration, rollout and version an evaluation belongs to.
pub(super) struct EvalCtx {
    active: Rc<Active>,
    rollout: usize,
    version: Version,
}

/// A worker's evaluations, shared by its root context and HTTP contexts.
#[derive(Default)]
pub(super) struct EvalShared {
    book: RefCell<EvalBook<EvalCtx>>,
}

/// A sampled call while it passes.
pub(super) struct EvalCopy {
    body: BodyCopy,
    status: Option<u16>,
}

fn count(active: &Active, rollout: usize, version: Version, metric: EvalMetric) {
    let id = active
        .llm
        .eval_ids
        .get(rollout)
        .and_then(Option::as_ref)
        .map(|ids| ids[version.index()][metric.index()]);
    if let Some(id) = id {
        increment(id, 1);
    }
}

impl EvalShared {
    /// An LLM call of `rollout` answered by `version` begins: its copy, if it is sampled.
    pub(super) fn start(
        active: &Active,
        rollout: usize,
        version: Version,
        end_of_stream: bool,
    ) -> Option<EvalCopy> {
        let eval = active.eval(rollout)?;
        let sampled = active
            .llm
            .samplers
            .try_borrow_mut()
            .ok()?
            .get_mut(rollout)
            .is_some_and(|s| s.eval.sample(version, eval.sample_bp));
        if !sampled {
            return None;
        }
        count(active, rollout, version, EvalMetric::Sampled);
        let mut body = BodyCopy::new(eval.max_request_bytes as usize);
        if end_of_stream {
            body.push(0, true, || None);
        }
        Some(EvalCopy { body, status: None })
    }

    /// A request body chunk passes (never held back).
    pub(super) fn request_body(
        copy: &mut EvalCopy,
        len: usize,
        end: bool,
        read: impl FnOnce() -> Option<Vec<u8>>,
    ) {
        copy.body.push(len, end, read);
    }

    pub(super) fn response_status(copy: &mut EvalCopy, status: Option<&[u8]>) {
        copy.status = status.and_then(crate::metrics::parse_status);
    }

    /// The user's answer is complete (or its stream went away): file the evaluation, or
    /// count it dropped (the answer unreadable or not 2xx, the request over the cap, the
    /// book full).
    pub(super) fn answer_end(
        &self,
        copy: EvalCopy,
        reading: &Reading,
        active: &Rc<Active>,
        rollout: usize,
        version: Version,
        wake: &RootWake,
    ) {
        let Some(r) = active.router.rollouts().get(rollout) else {
            return;
        };
        let Some(eval) = r.eval.as_ref() else {
            return;
        };
        let call = match (copy.body.take(), copy.status) {
            (Some(request_body), Some(status))
                if reading.is_readable() && (200..300).contains(&status) =>
            {
                EvalCall {
                    rollout: r.name.clone(),
                    version,
                    request_body,
                    status,
                    text: reading
                        .capture
                        .as_ref()
                        .map(|c| c.text.clone())
                        .unwrap_or_default(),
                }
            }
            _ => return count(active, rollout, version, EvalMetric::Dropped),
        };
        let ctx = EvalCtx {
            active: active.clone(),
            rollout,
            version,
        };
        let filed = self
            .book
            .try_borrow_mut()
            .is_ok_and(|mut book| book.file(ctx, call, eval.max_in_flight).is_ok());
        if filed {
            wake.wake();
        } else {
            count(active, rollout, version, EvalMetric::Dropped);
        }
    }

    /// Root context: sends the evaluations filed since. Runs on wake-up and on tick.
    pub(super) fn send_ready(&self) {
        let ready = match self.book.try_borrow_mut() {
            Ok(mut book) => book.take_ready(),
            Err(_) => return,
        };
        for (ctx, call) in ready {
            let (active, r, v) = (&ctx.active, ctx.rollout, ctx.version);
            let Some(eval) = active.eval(r) else {
                continue;
            };
            let body = call.body();
            let headers = vec![
                (":method", "POST"),
                (":path", eval.path.as_str()),
                (":authority", eval.authority()),
                ("content-type", "application/json"),
            ];
            let sent = hostcalls::dispatch_http_call(
                &eval.cluster,
                headers,
                Some(&body),
                vec![],
                Duration::from_millis(eval.timeout_ms),
            );
            match sent {
                Ok(token) => {
                    count(active, r, v, EvalMetric::Sent);
                    if let Ok(mut book) = self.book.try_borrow_mut() {
                        book.sent(token, ctx);
                    }
                }
                // No such cluster, or Envoy would not take the call.
                Err(_) => count(active, r, v, EvalMetric::Failed),
            }
        }
    }

    /// Root context: a call's answer. `false` when `token` is not an evaluation's.
    pub(super) fn answered(&self, token: u32, body_size: usize) -> bool {
        let Some(ctx) = self
            .book
            .try_borrow_mut()
            .ok()
            .and_then(|mut book| book.answered(token))
        else {
            return false;
        };
        let (active, r, v) = (&ctx.active, ctx.rollout, ctx.version);
        let status = hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, ":status")
            .ok()
            .flatten();
        let body = if body_size > 0 {
            hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
                .ok()
                .flatten()
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let score = parse_score(
            status.as_deref().and_then(crate::metrics::parse_status),
            &body,
        );
        // The eval signal comes after the quality headers' (see `RolloutMetrics::define`).
        let signal = active.llm_signals(r).map_or(0, |s| s.quality_headers.len());
        let ids = active.metrics.get(r).and_then(|m| m.quality(signal, v));
        match (score, ids) {
            (Some(milli), Some(ids)) => {
                for (id, delta) in ids.into_iter().zip(quality_increments(milli)) {
                    increment(id, delta);
                }
                count(active, r, v, EvalMetric::Scored);
            }
            _ => count(active, r, v, EvalMetric::Failed),
        }
        true
    }
}
