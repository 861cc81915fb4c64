//! Shadow mode on the host (LLM build): copy sampled requests, send the copies from
//! the root context, meet the candidate's answer with the primary's in the worker's book.
//!
//! Lifetime: Envoy cancels a context's outstanding calls when the context goes away, and the
//! SDK hands a call's answer to the context that made it. A copy sent by the user's HTTP
//! context would be lost whenever the candidate answers after the user's stream ended. So
//! the HTTP context only files the copy in the worker's book and wakes its root context
//! ([`RootWake`]); the root sends the copy and gets the answer in its own
//! `on_http_call_response`. The tick sends anything left over.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use canary_contract::stats::Metric;
use canary_contract::{ShadowMetric, Version};
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType};

use super::active::Active;
use super::calls::{increment, now_ms, RootWake};
use crate::copy::{copied_headers, header_pairs, BodyCopy};
use crate::llm::{LlmExchange, Reading};
use crate::metrics::MetricOp;
use crate::shadow::{Answer, Outcome, ShadowBook, ShadowRequest};

/// Which configuration and rollout a sampled request belongs to.
#[derive(Clone)]
pub(super) struct ShadowCtx {
    active: Rc<Active>,
    rollout: usize,
}

/// A worker's shadow state, shared by its root context and HTTP contexts.
#[derive(Default)]
pub(super) struct ShadowShared {
    book: RefCell<ShadowBook<ShadowCtx>>,
    /// When each outstanding copy was sent, by call token (the candidate's latency).
    sent_ms: RefCell<crate::shadow::VecMap<u32, u64>>,
}

/// The copy of one sampled request while it passes.
pub(super) struct ShadowCopy {
    id: u64,
    ctx: ShadowCtx,
    /// Headers and where to send them; the body is copied in `body` as it passes.
    request: Option<ShadowRequest>,
    body: BodyCopy,
    status: Option<u16>,
}

fn count(active: &Active, rollout: usize, metric: ShadowMetric) {
    if let Some(id) = active
        .llm
        .shadow_ids
        .get(rollout)
        .and_then(|ids| ids.as_ref())
        .map(|ids| ids[metric.index()])
    {
        increment(id, 1);
    }
}

fn count_outcome(ctx: &ShadowCtx, outcome: Outcome) {
    let (active, r) = (&ctx.active, ctx.rollout);
    match outcome {
        Outcome::Compared(agreement) => {
            count(active, r, ShadowMetric::Compared);
            for (ok, metric) in [
                (agreement.all(), ShadowMetric::Agree),
                (agreement.status, ShadowMetric::AgreeStatus),
                (agreement.structure, ShadowMetric::AgreeStructure),
                (agreement.text, ShadowMetric::AgreeText),
            ] {
                if ok {
                    count(active, r, metric);
                }
            }
        }
        Outcome::Failed => count(active, r, ShadowMetric::Failed),
        Outcome::Dropped => count(active, r, ShadowMetric::Dropped),
    }
}

impl ShadowShared {
    /// A request of `rollout` begins: if it is sampled, returns its copy (headers read now).
    pub(super) fn start(
        &self,
        active: &Rc<Active>,
        rollout: usize,
        request_headers: impl FnOnce() -> Vec<(String, Vec<u8>)>,
    ) -> Option<ShadowCopy> {
        let shadow = active.router.rollouts().get(rollout)?.shadow.as_ref()?;
        let sampled = active
            .llm
            .samplers
            .try_borrow_mut()
            .ok()?
            .get_mut(rollout)
            .is_some_and(|s| s.shadow.sample(shadow.sample_bp));
        if !sampled {
            return None;
        }
        let ctx = ShadowCtx {
            active: active.clone(),
            rollout,
        };
        let opened = self.book.try_borrow_mut().ok().and_then(|mut book| {
            book.open(
                ctx.clone(),
                now_ms(),
                shadow.timeout_ms,
                shadow.max_in_flight,
                shadow.text_normalisation,
            )
        });
        let Some(id) = opened else {
            count(active, rollout, ShadowMetric::Dropped);
            return None;
        };
        let mut headers = copied_headers(request_headers());
        if let Some(authority) = &shadow.authority {
            for (name, value) in headers.iter_mut() {
                if name == ":authority" {
                    value.clone_from(authority);
                }
            }
        }
        headers.push(("x-canary-shadow".to_string(), "1".to_string()));
        Some(ShadowCopy {
            id,
            ctx,
            request: Some(ShadowRequest {
                cluster: shadow.cluster.clone(),
                headers,
                body: Vec::new(),
                timeout_ms: shadow.timeout_ms,
            }),
            body: BodyCopy::new(shadow.max_request_bytes as usize),
            status: None,
        })
    }

    /// A request body chunk passes (never held back); with `end`, the copy is complete.
    pub(super) fn request_body(
        &self,
        copy: &mut ShadowCopy,
        len: usize,
        end: bool,
        wake: &RootWake,
        read: impl FnOnce() -> Option<Vec<u8>>,
    ) {
        copy.body.push(len, end, read);
        if end {
            self.request_end(copy, wake);
        }
    }

    /// The user's request is complete (`body` has seen its end): file the copy and wake the
    /// root to send it, or drop it if its body was over the cap.
    pub(super) fn request_end(&self, copy: &mut ShadowCopy, wake: &RootWake) {
        let Some(mut request) = copy.request.take() else {
            return;
        };
        let Ok(mut book) = self.book.try_borrow_mut() else {
            return;
        };
        match std::mem::take(&mut copy.body).take() {
            Some(body) => {
                request.body = body;
                book.ready(copy.id, request);
                wake.wake();
            }
            None => {
                book.abandon(copy.id);
                count(&copy.ctx.active, copy.ctx.rollout, ShadowMetric::Dropped);
            }
        }
    }

    pub(super) fn response_status(copy: &mut ShadowCopy, status: Option<&[u8]>) {
        copy.status = status.and_then(crate::metrics::parse_status);
    }

    /// The primary's answer is over (or its stream went away).
    pub(super) fn primary_end(&self, copy: ShadowCopy, reading: Reading) {
        let answer = Answer {
            status: copy.status,
            readable: reading.is_readable(),
            capture: reading.capture.unwrap_or_default(),
        };
        let settled = self
            .book
            .try_borrow_mut()
            .ok()
            .and_then(|mut book| book.primary(copy.id, answer));
        if let Some((ctx, outcome)) = settled {
            count_outcome(&ctx, outcome);
        }
    }

    /// Root context: sends the copies that are ready. Runs on wake-up and on tick.
    pub(super) fn send_ready(&self) {
        let ready = match self.book.try_borrow_mut() {
            Ok(mut book) => book.take_ready(),
            Err(_) => return,
        };
        for (id, request) in ready {
            let headers = header_pairs(&request.headers);
            let body = (!request.body.is_empty()).then_some(request.body.as_slice());
            let sent = hostcalls::dispatch_http_call(
                &request.cluster,
                headers,
                body,
                vec![],
                Duration::from_millis(request.timeout_ms),
            );
            let Ok(mut book) = self.book.try_borrow_mut() else {
                return;
            };
            match sent {
                Ok(token) => {
                    book.sent(id, token);
                    if let Ok(mut sent_ms) = self.sent_ms.try_borrow_mut() {
                        sent_ms.insert(token, now_ms());
                    }
                }
                Err(_) => {
                    if let Some((ctx, outcome)) = book.send_failed(id) {
                        count(&ctx.active, ctx.rollout, ShadowMetric::Requests);
                        count_outcome(&ctx, outcome);
                    }
                }
            }
        }
    }

    /// Root context: a call's answer. `false` when `token` is not a shadow copy's.
    pub(super) fn candidate_response(&self, token: u32, body_size: usize) -> bool {
        let known = self
            .book
            .try_borrow()
            .is_ok_and(|book| book.is_candidate_token(token));
        if !known {
            return false;
        }
        let now = now_ms();
        let sent = self
            .sent_ms
            .try_borrow_mut()
            .ok()
            .and_then(|mut m| m.remove(&token))
            .unwrap_or(now);
        let header = |name: &str| {
            hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, name)
                .ok()
                .flatten()
        };
        let mut status = header(":status")
            .as_deref()
            .and_then(crate::metrics::parse_status);
        let content_type = header("content-type");
        let mut ops = Vec::new();
        let settled = {
            let Ok(mut book) = self.book.try_borrow_mut() else {
                return true;
            };
            let rollout = book
                .context(token)
                .and_then(|ctx| ctx.active.router.rollouts().get(ctx.rollout));
            let signals = rollout.and_then(|r| r.llm.clone());
            let timeout_ms = rollout
                .and_then(|r| r.shadow.as_ref())
                .map_or(u64::MAX, |s| s.timeout_ms);
            // At the timeout Envoy answers the call itself with a 504: that is no answer.
            // (A reset or refused connection comes as Envoy's 503 and is compared as one.)
            if status == Some(504) && now.saturating_sub(sent).saturating_add(50) >= timeout_ms {
                status = None;
            }
            let mut answer = Answer {
                status,
                ..Answer::default()
            };
            if let (Some(signals), Some(_)) = (signals.as_ref(), status) {
                let mut llm = LlmExchange::start(sent);
                llm.capture();
                llm.on_response_headers(content_type.as_deref(), signals.max_body_bytes);
                ops = llm.on_body(body_size, now, signals, |len| {
                    hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, len)
                        .ok()
                        .flatten()
                });
                ops.extend(llm.on_end(now, signals, Version::Canary).ops);
                let reading = llm.take_answer().unwrap_or_default();
                answer.readable = reading.is_readable();
                answer.capture = reading.capture.unwrap_or_default();
            }
            book.candidate(token, answer)
        };
        let Some((ctx, outcome)) = settled else {
            return true;
        };
        // The candidate's own signals, as the canary's (its weight is 0 while shadowing):
        // requests, status classes, latency, LLM tokens, cost, refusals.
        let (active, r) = (&ctx.active, ctx.rollout);
        count(active, r, ShadowMetric::Requests);
        let mut canary = vec![
            MetricOp::Increment(Metric::RqTotal),
            MetricOp::Record(Metric::RqTimeMs, now.saturating_sub(sent)),
        ];
        match status.and_then(Metric::for_status) {
            Some(class) => canary.push(MetricOp::Increment(class)),
            None => {
                canary.push(MetricOp::Increment(Metric::Rq5xx));
                canary.push(MetricOp::Increment(Metric::RqReset));
            }
        }
        // A whole answer arrives at once: no time to first token or stream time.
        canary.extend(ops.into_iter().filter(|op| {
            !matches!(
                op,
                MetricOp::Record(Metric::LlmTtftMs | Metric::LlmStreamMs, _)
            )
        }));
        for op in canary {
            active.apply_op(r, op, Version::Canary);
        }
        if let Some(outcome) = outcome {
            count_outcome(&ctx, outcome);
        }
        true
    }

    /// Root context, on tick: gives up entries past their time.
    pub(super) fn expire(&self) {
        let expired = match self.book.try_borrow_mut() {
            Ok(mut book) if !book.is_empty() => book.expire(now_ms()),
            _ => return,
        };
        for (ctx, outcome) in expired {
            count_outcome(&ctx, outcome);
        }
    }
}
