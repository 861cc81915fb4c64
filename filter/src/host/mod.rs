//! The filter on the proxy-wasm host (wasm32 only). This file holds the SDK's entry point
//! and the root and HTTP contexts' trait impls, which hand each callback to the modules
//! beside it: `calls` (host calls: clock, metrics, shared data with CAS, randomness, the
//! wake-up queue), `active` (the active configuration, and a root's slot for it), `poll`
//! (polling the controller; until its first answer requests wait, see `crate::hold`), and one module per feature, each mounted under its cargo
//! feature: `fallback`, `shadow`, `eval`, `llm`, and `lean` (the lean build's own entries
//! into the VM, which import nothing of `host`). Every decision is made in the plain
//! modules (`crate::routing`, `crate::metrics`, ...), which never import `host`. Inside,
//! imports go one way, each module only from those before it in `calls`, `fallback`,
//! `active`, `poll`/`shadow`/`eval`, `llm`, and nothing imports this file. Host data is only
//! ever read as bytes, and nothing here unwraps it: a panic would kill the VM and, under the
//! default failure policy, fail every later request on the worker.

#[cfg(not(feature = "lean"))]
use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

#[cfg(not(feature = "lean"))]
use canary_contract::{stats::Metric, Version};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
#[cfg(feature = "llm")]
use proxy_wasm::types::BufferType;
use proxy_wasm::types::{Action, ContextType, LogLevel};

use crate::control::{parse_config, summary, sync_period_ms};
#[cfg(not(feature = "lean"))]
use crate::cookie::set_cookie_value;
use crate::hold::{Hold, Slot};
#[cfg(not(feature = "lean"))]
use crate::metrics::{Exchange, MetricOp};
use crate::routing::RequestHeaders;

mod active;
mod calls;
#[cfg(feature = "llm")]
mod eval;
#[cfg(feature = "fallback")]
mod fallback;
#[cfg(feature = "lean")]
mod lean;
#[cfg(feature = "llm")]
mod llm;
mod poll;
#[cfg(feature = "llm")]
mod shadow;

use active::{Active, Current};
use calls::{new_anonymous_id, now_ms};
use poll::Controlled;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> {
        Box::new(CanaryRoot { context_id, ..Default::default() })
    });
}}

/// The gRPC status of an answer, in trailers-only response headers or in trailers.
#[cfg(not(feature = "lean"))]
const GRPC_STATUS: &str = "grpc-status";
/// How often each VM hands its summed counters to Envoy.
const COUNTER_FLUSH_PERIOD: Duration = Duration::from_millis(250);
/// How often a worker checks its rollouts' circuit breakers (when the plugin configuration
/// has one): a trip takes up to this long, and the other workers follow within as long.
const BREAKER_TICK_PERIOD: Duration = Duration::from_millis(100);

#[derive(Default)]
struct CanaryRoot {
    context_id: u32,
    current: Current,
    controlled: Option<Controlled>,
    /// Requests waiting for the controller's first answer (see `crate::hold`).
    hold: Rc<Hold<CanaryHttp>>,
    #[cfg(feature = "llm")]
    worker: Rc<llm::Worker>,
}

struct CanaryHttp {
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

impl Context for CanaryRoot {
    fn on_http_call_response(
        &mut self,
        token_id: u32,
        _num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        #[cfg(feature = "llm")]
        if self.worker.call_response(token_id, body_size) {
            return;
        }
        if let Some(c) = self.controlled.as_mut() {
            // Any answer to this root's poll, good or not, ends its hold.
            if c.answered(token_id, body_size, &mut self.current, self.hold.active()) {
                self.release_held();
            }
        }
        #[cfg(feature = "lean")]
        self.serve(false);
    }
}

impl CanaryRoot {
    /// Routes and resumes the requests the start-up hold kept waiting, with the configuration
    /// in force now (see `crate::hold`).
    fn release_held(&mut self) {
        let waiting = self.hold.release();
        if waiting.is_empty() {
            return;
        }
        for w in waiting {
            // (The lean build keeps no context per request to tell: an ended request's
            // context is gone from Envoy, and `set_effective_context` fails for it.)
            if !cfg!(feature = "lean") && !w.waiting() {
                continue; // ended while waiting
            }
            // Host calls now act on that request's stream, as in its own callbacks.
            if hostcalls::set_effective_context(w.context_id).is_err() {
                continue;
            }
            let mut stand_in = self.new_http(w.context_id, None);
            let action = stand_in.on_http_request_headers(0, w.end_of_stream);
            if let Ok(mut s) = w.slot.try_borrow_mut() {
                *s = Some(stand_in);
            }
            // `Pause` means the request was answered locally (a 429, the fallback response).
            if action == Action::Continue {
                let _ = hostcalls::resume_http_request();
            }
        }
        let _ = hostcalls::set_effective_context(self.context_id);
    }

    fn new_http(&self, context_id: u32, hold: Option<Rc<Hold<CanaryHttp>>>) -> CanaryHttp {
        CanaryHttp {
            active: self.current.active.clone(),
            #[cfg(not(feature = "lean"))]
            routed: None,
            context_id,
            hold,
            held: None,
            #[cfg(feature = "fallback")]
            fallback: Default::default(),
            #[cfg(feature = "llm")]
            worker: self.worker.clone(),
        }
    }
}

impl RootContext for CanaryRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let config = match parse_config(&bytes) {
            Ok(config) => config,
            Err(e) => {
                let kept = if self.current.active.is_some() {
                    "keeping the previous configuration"
                } else {
                    "no previous configuration"
                };
                log::error!("wasm-canary: invalid plugin configuration: {e} ({kept})");
                return false;
            }
        };
        log::info!("wasm-canary: configured rollouts {}", summary(&config));
        let mut tick = COUNTER_FLUSH_PERIOD;
        if config.rollouts.iter().any(|r| r.circuit_breaker.is_some()) {
            tick = BREAKER_TICK_PERIOD;
        }
        #[cfg(feature = "fallback")]
        if config.rollouts.iter().any(|r| r.fallback.is_some()) {
            tick = BREAKER_TICK_PERIOD;
        }
        self.controlled = config.controller.clone().map(|source| {
            // Ticks both flush counters and pick up new configurations: often enough that
            // every worker has a raise before it takes effect.
            tick = tick.min(Duration::from_millis(sync_period_ms(
                source.poll_interval_ms,
            )));
            Controlled::new(source, bytes.clone())
        });
        if let Err(e) = self.current.activate(config, None) {
            log::error!("wasm-canary: {e}");
            return false;
        }
        #[cfg(feature = "llm")]
        self.worker.register_wake();
        // A configuration the controller published before this plugin instance existed
        // (e.g. after a listener update) wins over the plugin's initial one.
        if let Some(c) = self.controlled.as_mut() {
            c.sync_from_shared(&mut self.current, false);
            // Nothing from the controller yet: the plugin's weight may be stale, so requests
            // wait for the first answer (bounded by the poll's timeout).
            if !c.heard() {
                self.hold.start(now_ms() + c.hold_ms());
            }
        }
        // The lean build has no counters to flush or breakers to check: it ticks only to
        // poll the controller.
        #[cfg(feature = "lean")]
        if self.controlled.is_none() {
            tick = Duration::ZERO;
        }
        self.set_tick_period(tick);
        #[cfg(feature = "lean")]
        self.serve(true);
        true
    }

    fn on_tick(&mut self) {
        #[cfg(feature = "llm")]
        self.worker.on_tick();
        if let Some(active) = &self.current.active {
            active.flush_counters();
        }
        // After the flush, so the counters include this worker's answers.
        self.current.check_breakers();
        #[cfg(feature = "fallback")]
        self.current.check_chains();
        if let Some(c) = self.controlled.as_mut() {
            c.sync_from_shared(&mut self.current, self.hold.active());
            c.check_fail_safe(&mut self.current);
            c.maybe_poll();
            let heard = c.heard();
            if self.hold.active() && (heard || self.hold.expired(now_ms())) {
                self.release_held();
            }
        }
        #[cfg(feature = "lean")]
        self.serve(false);
    }

    #[cfg(feature = "llm")]
    fn on_queue_ready(&mut self, _queue_id: u32) {
        self.worker.on_wake();
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let hold = self.hold.active().then(|| self.hold.clone());
        Some(Box::new(self.new_http(context_id, hold)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

impl CanaryHttp {
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

impl RequestHeaders for CanaryHttp {
    fn header(&self, name: &str) -> Option<Vec<u8>> {
        self.get_http_request_header_bytes(name)
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
        if let Some(hold) = self.hold.take() {
            if let Some(slot) = hold.wait(self.context_id, end_of_stream) {
                self.held = Some(slot);
                return Action::Pause;
            }
        }
        let Some(active) = self.active.clone() else {
            return Action::Continue;
        };
        #[cfg(not(feature = "lean"))]
        let now = now_ms();
        #[cfg(feature = "lean")]
        let now = active.routing_time();
        #[cfg_attr(feature = "lean", allow(unused_mut))]
        let mut decision = active.router.decide(self, now, new_anonymous_id);
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
        // rollout sets is left to `set_http_request_header`, which replaces every value
        // (one call into the host fewer on the hot path; the spoofing tests cover it).
        let rollout = decision
            .as_ref()
            .and_then(|d| active.router.rollouts().get(d.rollout));
        for header in active.router.route_headers() {
            if rollout.is_none_or(|r| r.route_header != *header) {
                self.remove_http_request_header(header);
            }
        }
        let (Some(decision), Some(rollout)) = (decision, rollout) else {
            return Action::Continue;
        };
        if let Some(force) = &rollout.force_header {
            self.remove_http_request_header(force);
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
        let charge = match self.worker.rate_limit(&active, &decision, now) {
            Ok(charge) => charge,
            // Answered locally with 429: not routed, so not in the request counts.
            Err(()) => return Action::Pause,
        };
        self.set_http_request_header(&rollout.route_header, Some(decision.version.as_str()));
        // The lean build only routes: the clusters count the answers.
        #[cfg(not(feature = "lean"))]
        {
            let (exchange, op) = Exchange::start(decision.version, now);
            active.apply_op(decision.rollout, op, decision.version);
            #[cfg(feature = "llm")]
            let llm = llm::LlmRequest::start(
                &self.worker,
                &active,
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
        self.adopt();
        #[cfg(feature = "fallback")]
        if let Some(active) = &self.active {
            self.fallback.tier_answered(active.chains());
        }
        let (Some(active), Some(mut routed)) = (self.active.clone(), self.routed.take()) else {
            return Action::Continue;
        };
        let status = self.get_http_response_header_bytes(":status");
        let ops = routed.exchange.on_response_headers(
            status.as_deref(),
            end_of_stream,
            || self.get_http_response_header_bytes(GRPC_STATUS),
            || self.get_property(vec!["response", "code_details"]),
        );
        for op in ops {
            active.apply_op(routed.rollout, op, routed.exchange.version);
        }
        if let Some(cookie) = routed.set_cookie.take() {
            self.add_http_response_header("set-cookie", &cookie);
        }
        #[cfg(feature = "llm")]
        {
            let route = routed.route();
            let status = status.as_deref();
            (routed.llm).response_headers(&self.worker, &active, route, status, end_of_stream);
        }
        self.routed = Some(routed);
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
        let (Some(active), Some(routed)) = (self.active.clone(), self.routed.take()) else {
            return;
        };
        for op in routed.exchange.on_end(now_ms()) {
            active.apply_op(routed.rollout, op, routed.exchange.version);
        }
        // A stream that ended early (reset, client gone): counted as unparsed.
        #[cfg(feature = "llm")]
        {
            let route = routed.route();
            let mut llm = routed.llm;
            llm.end(&self.worker, &active, route);
        }
    }
}

/// The lean build's request path (see `lean`): with no context per request in the SDK,
/// Envoy's request headers come to the root that serves the VM's requests.
#[cfg(feature = "lean")]
impl CanaryRoot {
    fn serve(&self, takes_over: bool) {
        let active = self.current.active.clone();
        let hold = self.hold.clone();
        let on_request_headers = move |context_id, num_headers, end_of_stream| {
            let hold = hold.active().then(|| hold.clone());
            let (active, held) = (active.clone(), None);
            let mut http = CanaryHttp {
                active,
                context_id,
                hold,
                held,
            };
            http.on_http_request_headers(num_headers, end_of_stream)
        };
        lean::serve(self.context_id, takes_over, on_request_headers);
    }
}
