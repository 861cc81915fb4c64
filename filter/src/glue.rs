//! proxy-wasm glue: the root context parses and validates the plugin configuration and
//! defines the metrics; each HTTP context routes one request and records its stats.
//! Host data is only ever read as bytes, and nothing here unwraps it: a panic would kill
//! the VM and, under the default failure policy, fail every later request on the worker.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use canary_contract::stats::MetricKind;
use canary_contract::FilterConfig;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};

use crate::cookie::{anonymous_id, set_cookie_value};
use crate::metrics::{Exchange, MetricHost, MetricOp, PendingCounters, RolloutMetrics};
use crate::routing::{RequestHeaders, Router};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(CanaryRoot::default()) });
}}

/// How often each VM hands its summed counters to Envoy.
const COUNTER_FLUSH_PERIOD: Duration = Duration::from_millis(250);

/// A configuration that passed validation, with its metric ids.
struct Active {
    router: Router,
    metrics: Vec<RolloutMetrics>,
    pending: RefCell<PendingCounters>,
}

impl Active {
    fn flush_counters(&self) {
        let Ok(mut pending) = self.pending.try_borrow_mut() else {
            return;
        };
        for (rollout, version, metric, delta) in pending.drain() {
            if let Some(metrics) = self.metrics.get(rollout) {
                let delta = i64::try_from(delta).unwrap_or(i64::MAX);
                // A failed update is not worth failing anything over.
                let _ = hostcalls::increment_metric(metrics.id(version, metric), delta);
            }
        }
    }
}

#[derive(Default)]
struct CanaryRoot {
    active: Option<Rc<Active>>,
}

struct EnvoyMetrics;

impl MetricHost for EnvoyMetrics {
    fn define(&mut self, kind: MetricKind, name: &str) -> Result<u32, String> {
        let kind = match kind {
            MetricKind::Counter => MetricType::Counter,
            MetricKind::Histogram => MetricType::Histogram,
        };
        hostcalls::define_metric(kind, name).map_err(|status| format!("{status:?}"))
    }
}

impl CanaryRoot {
    fn load(bytes: &[u8]) -> Result<Active, String> {
        let config = FilterConfig::from_json(bytes)
            .map_err(|e| format!("invalid plugin configuration: {e}"))?;
        let metrics = config
            .rollouts
            .iter()
            .map(|r| RolloutMetrics::define(&mut EnvoyMetrics, &r.name))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Active {
            pending: RefCell::new(PendingCounters::new(metrics.len())),
            router: Router::new(config),
            metrics,
        })
    }
}

impl Context for CanaryRoot {}

impl Drop for CanaryRoot {
    // Envoy deletes the root context when its configuration is replaced or removed: hand
    // over what the last timer period counted.
    fn drop(&mut self) {
        if let Some(active) = &self.active {
            active.flush_counters();
        }
    }
}

impl RootContext for CanaryRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        match Self::load(&bytes) {
            Ok(active) => {
                let summary: Vec<String> = active
                    .router
                    .rollouts()
                    .iter()
                    .map(|r| format!("{}={}bp", r.name, r.weight_bp))
                    .collect();
                log::info!("wasm-canary: configured rollouts [{}]", summary.join(", "));
                self.active = Some(Rc::new(active));
                self.set_tick_period(COUNTER_FLUSH_PERIOD);
                true
            }
            Err(e) => {
                let kept = if self.active.is_some() {
                    "keeping the previous configuration"
                } else {
                    "no previous configuration"
                };
                log::error!("wasm-canary: {e} ({kept})");
                false
            }
        }
    }

    fn on_tick(&mut self) {
        if let Some(active) = &self.active {
            active.flush_counters();
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(CanaryHttp {
            active: self.active.clone(),
            routed: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Routed {
    rollout: usize,
    exchange: Exchange,
    set_cookie: Option<String>,
}

struct CanaryHttp {
    active: Option<Rc<Active>>,
    routed: Option<Routed>,
}

impl RequestHeaders for CanaryHttp {
    fn header(&self, name: &str) -> Option<Vec<u8>> {
        self.get_http_request_header_bytes(name)
    }
}

impl CanaryHttp {
    fn now_ms(&self) -> u64 {
        self.get_current_time()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }

    fn apply(
        &self,
        active: &Active,
        rollout: usize,
        version_op: MetricOp,
        version: canary_contract::Version,
    ) {
        let Some(metrics) = active.metrics.get(rollout) else {
            return;
        };
        match version_op {
            MetricOp::Increment(m) => {
                if let Ok(mut pending) = active.pending.try_borrow_mut() {
                    pending.add(rollout, version, m);
                }
            }
            MetricOp::Record(m, v) => {
                // A failed metric update is not worth failing the request over.
                let _ = hostcalls::record_metric(metrics.id(version, m), v);
            }
        }
    }
}

impl Context for CanaryHttp {}

impl HttpContext for CanaryHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        #[cfg(feature = "fault-injection")]
        if self
            .get_http_request_header_bytes("x-canary-fault")
            .as_deref()
            == Some(b"panic")
        {
            panic!("fault injected by x-canary-fault");
        }
        let Some(active) = self.active.clone() else {
            return Action::Continue;
        };
        let decision = active.router.decide(self, new_anonymous_id);
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
        self.set_http_request_header(&rollout.route_header, Some(decision.version.as_str()));
        let (exchange, op) = Exchange::start(decision.version, self.now_ms());
        self.apply(&active, decision.rollout, op, decision.version);
        self.routed = Some(Routed {
            rollout: decision.rollout,
            exchange,
            set_cookie: decision
                .new_anonymous_id
                .map(|id| set_cookie_value(&rollout.anonymous_cookie, &id)),
        });
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let (Some(active), Some(mut routed)) = (self.active.clone(), self.routed.take()) else {
            return Action::Continue;
        };
        let status = self.get_http_response_header_bytes(":status");
        let ops = routed
            .exchange
            .on_response_headers(status.as_deref(), self.now_ms(), || {
                self.get_property(vec!["response", "code_details"])
            });
        for op in ops {
            self.apply(&active, routed.rollout, op, routed.exchange.version);
        }
        if let Some(cookie) = routed.set_cookie.take() {
            self.add_http_response_header("set-cookie", &cookie);
        }
        self.routed = Some(routed);
        Action::Continue
    }
}

// The end of a request is accounted for when the SDK drops the context (in Envoy's
// `proxy_on_delete`), not in `on_log`: the module does not export `proxy_on_log`, which
// saves one entry into the VM per request. The host context is still valid here.
impl Drop for CanaryHttp {
    fn drop(&mut self) {
        let (Some(active), Some(routed)) = (self.active.clone(), self.routed.take()) else {
            return;
        };
        for op in routed.exchange.on_end(self.now_ms()) {
            self.apply(&active, routed.rollout, op, routed.exchange.version);
        }
    }
}

/// 128 random bits from the host (WASI `random_get`). If the host cannot provide them,
/// fall back to the clock and a counter: ids must stay unique-ish, never panic.
fn new_anonymous_id() -> String {
    let mut random = [0u8; 16];
    if getrandom::fill(&mut random).is_err() {
        use std::cell::Cell;
        use std::hash::Hasher;
        thread_local!(static COUNTER: Cell<u64> = const { Cell::new(0) });
        let n = COUNTER.with(|c| {
            c.set(c.get().wrapping_add(1));
            c.get()
        });
        let nanos = hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as u64);
        for (i, chunk) in random.chunks_mut(8).enumerate() {
            let mut h = fnv::FnvHasher::default();
            h.write_u64(nanos);
            h.write_u64(n);
            h.write_usize(i);
            chunk.copy_from_slice(&h.finish().to_le_bytes());
        }
    }
    anonymous_id(random)
}
