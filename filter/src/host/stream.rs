//! One request's state and callbacks (`CanaryHttp`): routing at the request headers,
//! accounting for the answer at the response headers and trailers, the end when it is
//! dropped. The LLM build's SDK dispatch owns each request's `CanaryHttp`; the plain and
//! lean builds keep theirs in `direct`'s slot table.

use std::borrow::Cow;
#[cfg(not(feature = "lean"))]
use std::cell::Cell;
use std::rc::Rc;

#[cfg(not(feature = "lean"))]
use canary_contract::{stats::Metric, Version};
#[cfg(not(feature = "lean"))]
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;
#[cfg(feature = "llm")]
use proxy_wasm::types::BufferType;

#[cfg(not(feature = "lean"))]
use crate::cookie::set_cookie_value;
use crate::header_map::HeaderMap;
use crate::hold::{Hold, Slot};
#[cfg(not(feature = "lean"))]
use crate::metrics::{Exchange, MetricOp};
use crate::routing::RequestHeaders;

use super::active::Active;
#[cfg(not(feature = "lean"))]
use super::calls::headers::RESPONSE_HEADERS;
use super::calls::headers::{self, REQUEST_HEADERS};
use super::calls::new_anonymous_id;
#[cfg(not(feature = "lean"))]
use super::calls::now_ms;
#[cfg(feature = "fallback")]
use super::fallback;
#[cfg(feature = "llm")]
use super::llm;

/// The gRPC status of an answer, in trailers-only response headers or in trailers.
#[cfg(not(feature = "lean"))]
const GRPC_STATUS: &str = "grpc-status";

pub(super) struct CanaryHttp {
    active: Option<Rc<Active>>,
    /// What the response callbacks and the end account for (none in the lean build, which
    /// has neither: its stats are the clusters').
    #[cfg(not(feature = "lean"))]
    routed: Option<Routed>,
    context_id: u32,
    /// The start-up hold, while it is on.
    hold: Option<Rc<Hold<CanaryHttp>>>,
    /// Where the root leaves this request's state when it routes it after a hold.
    held: Option<Slot<CanaryHttp>>,
    #[cfg(feature = "fallback")]
    fallback: fallback::FallbackRequest,
    #[cfg(feature = "llm")]
    worker: Rc<llm::Worker>,
}

#[cfg(not(feature = "lean"))]
struct Routed {
    rollout: usize,
    exchange: Exchange,
    set_cookie: Option<String>,
    #[cfg(feature = "llm")]
    llm: llm::LlmRequest,
}

#[cfg(feature = "llm")]
impl Routed {
    /// Which rollout and version the request went to.
    fn route(&self) -> (usize, Version) {
        (self.rollout, self.exchange.version)
    }
}

impl CanaryHttp {
    pub(super) fn new(
        active: Option<Rc<Active>>,
        context_id: u32,
        hold: Option<Rc<Hold<CanaryHttp>>>,
        #[cfg(feature = "llm")] worker: Rc<llm::Worker>,
    ) -> CanaryHttp {
        CanaryHttp {
            active,
            #[cfg(not(feature = "lean"))]
            routed: None,
            context_id,
            hold,
            held: None,
            #[cfg(feature = "fallback")]
            fallback: Default::default(),
            #[cfg(feature = "llm")]
            worker,
        }
    }

    /// Whether the response callbacks or the end have anything to do for this request: it
    /// was routed, or it waits in the start-up hold.
    #[cfg(not(any(feature = "fallback", feature = "lean")))]
    pub(super) fn keeps_state(&self) -> bool {
        self.routed.is_some() || self.held.is_some()
    }

    /// Takes over what the root decided for this request after a hold (see `crate::hold`).
    /// (The lean build keeps nothing past the request headers, so it has nothing to adopt.)
    #[cfg(not(feature = "lean"))]
    fn adopt(&mut self) {
        let Some(slot) = self.held.take() else {
            return;
        };
        let Some(mut decided) = slot.try_borrow_mut().ok().and_then(|mut s| s.take()) else {
            return;
        };
        self.active = decided.active.take();
        #[cfg(not(feature = "lean"))]
        {
            self.routed = decided.routed.take();
        }
        #[cfg(feature = "fallback")]
        {
            self.fallback = std::mem::take(&mut decided.fallback);
        }
    }
}

/// A request's headers as routing reads them: all at once when it may read several (see
/// `Router::reads_several_headers`), else one by one from the host.
struct RequestView<'a> {
    all: Option<HeaderMap<'a>>,
}

impl RequestHeaders for RequestView<'_> {
    fn header(&self, name: &str) -> Option<Cow<'_, [u8]>> {
        match self.all {
            Some(map) => map.get(name).map(Cow::Borrowed),
            None => headers::get(REQUEST_HEADERS, name),
        }
    }
}

impl Context for CanaryHttp {
    /// The answer to a retry down the fallback chain (see `fallback`).
    #[cfg(feature = "fallback")]
    fn on_http_call_response(
        &mut self,
        _token: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        self.adopt();
        let view = self.active.as_deref().map(Active::chains);
        self.fallback.retry_answered(body_size, view);
    }
}

impl HttpContext for CanaryHttp {
    #[cfg_attr(not(feature = "llm"), allow(unused_variables))]
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        #[cfg(feature = "fault-injection")]
        if self
            .get_http_request_header_bytes("x-canary-fault")
            .as_deref()
            == Some(b"panic")
        {
            panic!("fault injected by x-canary-fault");
        }
        headers::start_callback();
        if let Some(hold) = self.hold.take() {
            if let Some(slot) = hold.wait(self.context_id, end_of_stream) {
                self.held = Some(slot);
                return Action::Pause;
            }
        }
        let Some(active) = self.active.as_ref() else {
            return Action::Continue;
        };
        #[cfg(not(feature = "lean"))]
        let now = now_ms();
        #[cfg(feature = "lean")]
        let now = active.routing_time();
        let all = (active.router.reads_several_headers())
            .then(|| headers::get_all(REQUEST_HEADERS))
            .flatten();
        let view = RequestView {
            all: all.as_deref().map(HeaderMap),
        };
        #[cfg_attr(feature = "lean", allow(unused_mut))]
        let mut decision = active.router.decide(&view, now, new_anonymous_id);
        // The lean build takes no configuration with a breaker.
        #[cfg(not(feature = "lean"))]
        if let Some(d) = decision.as_mut() {
            let open_until = active
                .breaker_open_until
                .get(d.rollout)
                .map_or(0, Cell::get);
            if d.version == Version::Canary && now < open_until {
                d.version = Version::Stable;
                let op = MetricOp::Increment(Metric::BreakerDiverted);
                active.apply_op(d.rollout, op, Version::Canary);
            }
        }
        // Strip client-sent routing headers on every request, routed or not, so nobody
        // picks a version by sending the header themselves. The header this request's
        // rollout sets is left to `headers::replace`, which replaces every value
        // (one call into the host fewer on the hot path; the spoofing tests cover it).
        let rollout = decision
            .as_ref()
            .and_then(|d| active.router.rollouts().get(d.rollout));
        let routed_by = rollout.and(decision.as_ref().map(|d| d.rollout));
        for header in active.router.headers_to_strip(routed_by) {
            headers::remove(REQUEST_HEADERS, header);
        }
        let (Some(decision), Some(rollout)) = (decision, rollout) else {
            return Action::Continue;
        };
        if let Some(force) = &rollout.force_header {
            headers::remove(REQUEST_HEADERS, force);
        }
        #[cfg(feature = "fallback")]
        {
            let chains = active.chains();
            if let Some(action) = self.fallback.fall_back(chains, decision.rollout, rollout) {
                return action;
            }
            self.fallback
                .keep_for_retry(decision.rollout, rollout, end_of_stream);
        }
        #[cfg(feature = "llm")]
        let charge = match self.worker.rate_limit(active, &decision, now) {
            Ok(charge) => charge,
            // Answered locally with 429: not routed, so not in the request counts.
            Err(()) => return Action::Pause,
        };
        headers::replace(
            REQUEST_HEADERS,
            &rollout.route_header,
            decision.version.as_str(),
        );
        // The lean build only routes: the clusters count the answers.
        #[cfg(not(feature = "lean"))]
        {
            let (exchange, op) = Exchange::start(decision.version, now);
            active.apply_op(decision.rollout, op, decision.version);
            #[cfg(feature = "llm")]
            let llm = llm::LlmRequest::start(
                &self.worker,
                active,
                rollout,
                &decision,
                now,
                end_of_stream,
                charge,
            );
            self.routed = Some(Routed {
                #[cfg(feature = "llm")]
                llm,
                rollout: decision.rollout,
                exchange,
                set_cookie: decision
                    .new_anonymous_id
                    .map(|id| set_cookie_value(&rollout.anonymous_cookie, &id)),
            });
        }
        Action::Continue
    }

    // The lean module does not export the response callbacks: Envoy never enters it for a
    // response (filter/wasm-exports-lean.json).
    #[cfg(not(feature = "lean"))]
    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        headers::start_callback();
        self.adopt();
        #[cfg(feature = "fallback")]
        if let Some(active) = &self.active {
            self.fallback.tier_answered(active.chains());
        }
        let (Some(active), Some(routed)) = (self.active.as_ref(), self.routed.as_mut()) else {
            return Action::Continue;
        };
        let status = headers::get(RESPONSE_HEADERS, ":status");
        let ops = routed.exchange.on_response_headers(
            status.as_deref(),
            end_of_stream,
            || headers::get(RESPONSE_HEADERS, GRPC_STATUS).map(Cow::into_owned),
            || {
                hostcalls::get_property(vec!["response", "code_details"])
                    .ok()
                    .flatten()
            },
        );
        active.apply_ops(routed.rollout, ops, routed.exchange.version);
        if let Some(cookie) = routed.set_cookie.take() {
            headers::add(RESPONSE_HEADERS, "set-cookie", &cookie);
        }
        #[cfg(feature = "llm")]
        {
            let route = routed.route();
            let status = status.as_deref();
            (routed.llm).response_headers(&self.worker, active, route, status, end_of_stream);
        }
        #[cfg(feature = "fallback")]
        if self
            .fallback
            .retry_failed(status.as_deref(), active.chains())
        {
            return Action::Pause;
        }
        Action::Continue
    }

    // Envoy enters here only for a response with trailers (gRPC, HTTP/2): its gRPC status
    // decides the class of a 200 (see `Exchange`).
    #[cfg(not(feature = "lean"))]
    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        let (Some(active), Some(mut routed)) = (self.active.clone(), self.routed.take()) else {
            return Action::Continue;
        };
        let op = (routed.exchange)
            .on_response_trailers(|| self.get_http_response_trailer_bytes(GRPC_STATUS));
        if let Some(op) = op {
            active.apply_op(routed.rollout, op, routed.exchange.version);
        }
        self.routed = Some(routed);
        Action::Continue
    }

    // The request body passes on unchanged (always `Continue`); a shadowed, evaluated or
    // retryable request's is copied, up to the cap.
    #[cfg(feature = "llm")]
    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.adopt();
        let Some(routed) = self.routed.as_mut() else {
            return Action::Continue;
        };
        // One read from the host per chunk, however many copies take it.
        let chunk = std::cell::OnceCell::new();
        let read = || {
            chunk
                .get_or_init(|| {
                    hostcalls::get_buffer(BufferType::HttpRequestBody, 0, body_size)
                        .ok()
                        .flatten()
                })
                .clone()
        };
        (routed.llm).request_body(&self.worker, body_size, end_of_stream, read);
        #[cfg(feature = "fallback")]
        self.fallback.request_body(body_size, end_of_stream, read);
        Action::Continue
    }

    // Bodies pass on unchanged and unbuffered (always `Continue`); an LLM call's chunks are
    // copied, up to the cap, and read.
    #[cfg(feature = "llm")]
    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        self.adopt();
        let (Some(active), Some(routed)) = (&self.active, self.routed.as_mut()) else {
            return Action::Continue;
        };
        let route = routed.route();
        (routed.llm).response_body(&self.worker, active, route, body_size, end_of_stream);
        Action::Continue
    }
}

// The end of a request is accounted for when the SDK drops the context (in Envoy's
// `proxy_on_delete`), not in `on_log`: the module does not export `proxy_on_log`, which
// saves one entry into the VM per request. The host context is still valid here.
// A request released from the start-up hold that ends before adopting its state: the
// stand-in in its slot is dropped with it and accounts for the end itself.
#[cfg(not(feature = "lean"))]
impl Drop for CanaryHttp {
    fn drop(&mut self) {
        let (Some(active), Some(routed)) = (self.active.as_ref(), self.routed.take()) else {
            return;
        };
        let ops = routed.exchange.on_end(now_ms());
        active.apply_ops(routed.rollout, ops, routed.exchange.version);
        // A stream that ended early (reset, client gone): counted as unparsed.
        #[cfg(feature = "llm")]
        {
            let route = routed.route();
            let mut llm = routed.llm;
            llm.end(&self.worker, active, route);
        }
    }
}
