//! The filter on the proxy-wasm host (wasm32 only). This file holds the SDK's entry point
//! and the root context (`CanaryRoot`: configuration, ticks, the controller's answers),
//! which hands each callback to the modules beside it: `calls` (host calls: clock,
//! metrics, shared data with CAS, randomness, the wake-up queue), `active` (the active
//! configuration, and a root's slot for it), `poll` (polling the controller; until its
//! first answer requests wait, see `crate::hold`), `stream` (one request: `CanaryHttp`),
//! `direct` (the plain and lean builds' own entries into the VM and slot table of requests,
//! in place of the SDK's per-request dispatch), and one module per feature, each mounted
//! under its cargo feature: `fallback`, `shadow`, `eval`, `llm`. Every decision is made in
//! the plain modules (`crate::routing`, `crate::metrics`, ...), which never import `host`.
//! Inside, imports go one way, each module only from those before it in `calls`,
//! `fallback`, `active`, `poll`/`shadow`/`eval`, `llm`, `stream`, `direct`, and nothing
//! imports this file. Host data is only ever read as bytes, and nothing here unwraps it: a
//! panic would kill the VM and, under the default failure policy, fail every later request
//! on the worker.

use std::rc::Rc;
use std::time::Duration;

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

use crate::control::{parse_config, summary, sync_period_ms};
use crate::hold::Hold;

mod active;
mod calls;
// Every build without the fallback chain (the LLM build has it: its retries' answers come
// to the request's own context, through the SDK's dispatch).
#[cfg(not(feature = "fallback"))]
mod direct;
#[cfg(feature = "llm")]
mod eval;
#[cfg(feature = "fallback")]
mod fallback;
#[cfg(feature = "llm")]
mod llm;
mod poll;
#[cfg(feature = "llm")]
mod shadow;
mod stream;

use active::Current;
use calls::now_ms;
use poll::Controlled;
use stream::CanaryHttp;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|context_id| -> Box<dyn RootContext> {
        Box::new(CanaryRoot { context_id, ..Default::default() })
    });
}}
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
        #[cfg(not(feature = "fallback"))]
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
        let active = self.current.active.clone();
        #[cfg(feature = "llm")]
        return CanaryHttp::new(active, context_id, hold, self.worker.clone());
        #[cfg(not(feature = "llm"))]
        CanaryHttp::new(active, context_id, hold)
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
        #[cfg(not(feature = "fallback"))]
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
        #[cfg(not(feature = "fallback"))]
        self.serve(false);
    }

    #[cfg(feature = "llm")]
    fn on_queue_ready(&mut self, _queue_id: u32) {
        self.worker.on_wake();
    }

    #[cfg(feature = "fallback")]
    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let hold = self.hold.active().then(|| self.hold.clone());
        Some(Box::new(self.new_http(context_id, hold)))
    }

    // The direct builds create no context in the SDK per request (see `direct`), so the
    // SDK never asks; without a boxed `CanaryHttp` here, its callbacks are compiled once.
    #[cfg(not(feature = "fallback"))]
    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        None
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// The request path of the builds without the SDK's per-request dispatch (see `direct`):
/// Envoy's request headers come to the root that serves the VM's requests, and a request
/// that has something left to account for is kept for its response and end.
#[cfg(not(feature = "fallback"))]
impl CanaryRoot {
    fn serve(&self, takes_over: bool) {
        let active = self.current.active.clone();
        direct::serve(self.context_id, takes_over, active, self.hold.clone());
    }
}
