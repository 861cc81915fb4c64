//! proxy-wasm glue: the root context parses and validates the plugin configuration and
//! defines the metrics; each HTTP context routes one request and records its stats.
//! Host data is only ever read as bytes, and nothing here unwraps it: a panic would kill
//! the VM and, under the default failure policy, fail every later request on the worker.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

use canary_contract::stats::{Metric, MetricKind};
use canary_contract::{ControllerSource, FilterConfig, Version};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};

use crate::breaker::{Local, Tick};
use crate::control::{
    decode_ms, decode_shared, encode_ms, encode_shared, fail_safe, interpret, is_stale,
    jittered_interval, lease_expired, raise_delay_ms, summary, sync_period_ms, PollOutcome,
    SharedKeys,
};
use crate::cookie::{anonymous_id, set_cookie_value};
use crate::keyed::{keyed_entry, metric_set_key};
#[cfg(feature = "llm")]
use crate::llm::{quality_milli, LlmExchange};
#[cfg(feature = "llm")]
use crate::metrics::quality_increments;
use crate::metrics::{Exchange, MetricHost, MetricOp, PendingCounters, RolloutMetrics};
#[cfg(feature = "llm")]
use crate::ratelimit::RateLimiter;
use crate::routing::{RequestHeaders, Router};

#[cfg(feature = "llm")]
#[path = "glue_shadow.rs"]
mod shadow;
#[cfg(feature = "llm")]
use shadow::{ShadowCopy, ShadowShared};

#[cfg(feature = "llm")]
#[path = "glue_eval.rs"]
mod eval;
#[cfg(feature = "llm")]
use eval::{EvalCopy, EvalShared};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(CanaryRoot::default()) });
}}

/// How often each VM hands its summed counters to Envoy.
const COUNTER_FLUSH_PERIOD: Duration = Duration::from_millis(250);
/// How often a worker checks its rollouts' circuit breakers (when the plugin configuration
/// has one): a trip takes up to this long, and the other workers follow within as long.
const BREAKER_TICK_PERIOD: Duration = Duration::from_millis(100);

/// A configuration that passed validation, with its metric ids.
struct Active {
    router: Router,
    metrics: Vec<RolloutMetrics>,
    pending: RefCell<PendingCounters>,
    /// Per rollout: until when its circuit breaker sends canary users to stable (ms).
    breaker_open_until: Vec<Cell<u64>>,
    /// Per rollout: its fallback chain, if configured.
    #[cfg(feature = "fallback")]
    chains: Vec<Option<crate::glue_fallback::Chain>>,
    /// Per rollout with `shadow`: its shadow counters' ids, in `ShadowMetric` order.
    #[cfg(feature = "llm")]
    shadow_ids: Vec<Option<Vec<u32>>>,
    /// Per rollout with `eval`: its eval counters' ids, per version in `EvalMetric` order.
    #[cfg(feature = "llm")]
    eval_ids: Vec<Option<EvalIds>>,
    /// Per rollout: which requests are copied to the candidate, and which calls of each
    /// version are evaluated.
    #[cfg(feature = "llm")]
    samplers: RefCell<Vec<Samplers>>,
}

#[cfg(feature = "llm")]
#[derive(Default)]
struct Samplers {
    shadow: crate::shadow::Sampler,
    eval: crate::eval::EvalSamplers,
}

#[cfg(feature = "llm")]
type EvalIds = [[u32; canary_contract::EvalMetric::ALL.len()]; 2];

impl Active {
    /// The LLM signals rollout `index` reads, if any.
    #[cfg(feature = "llm")]
    fn llm_signals(&self, index: usize) -> Option<&canary_contract::LlmSignals> {
        self.router.rollouts().get(index)?.llm.as_ref()
    }

    /// Rollout `index`'s eval sampling, if any.
    #[cfg(feature = "llm")]
    fn eval(&self, index: usize) -> Option<&canary_contract::EvalSampling> {
        self.router.rollouts().get(index)?.eval.as_ref()
    }

    /// Rollout `index`'s fallback configuration, if any.
    #[cfg(feature = "fallback")]
    fn fallback(&self, index: usize) -> Option<&canary_contract::fallback::Fallback> {
        self.router.rollouts().get(index)?.fallback.as_ref()
    }

    /// Rollout `index`'s fallback chain in this configuration, if any.
    #[cfg(feature = "fallback")]
    fn chain(&self, index: usize) -> Option<&crate::glue_fallback::Chain> {
        self.chains.get(index)?.as_ref()
    }

    fn flush_counters(&self) {
        let Ok(mut pending) = self.pending.try_borrow_mut() else {
            return;
        };
        for (rollout, version, metric, delta) in pending.drain() {
            if let Some(id) = self
                .metrics
                .get(rollout)
                .and_then(|m| m.id(version, metric))
            {
                increment(id, delta);
            }
        }
    }
}

// A configuration is dropped when it was replaced and its last request has ended, or when
// Envoy deletes the root context: hand over what was counted since the last flush.
impl Drop for Active {
    fn drop(&mut self) {
        self.flush_counters();
    }
}

/// Polling the controller (when the plugin configuration names one).
struct Controlled {
    source: ControllerSource,
    keys: SharedKeys,
    /// `source.poll_interval_ms` with this proxy's jitter.
    poll_interval_ms: u64,
    /// The plugin configuration (JSON, validated): in force until the controller answers.
    /// Kept as bytes and parsed again when needed: cloning typed configurations costs
    /// more module size than parsing, which the module has anyway.
    plugin_config: Vec<u8>,
    /// Shared-data version of the configuration this root applied last.
    applied_cas: Option<u32>,
    applied_etag: String,
    /// The controller's latest configuration (JSON, validated).
    latest: Option<Vec<u8>>,
    in_fail_safe: bool,
    poll_in_flight: Option<u32>,
    /// The last poll problem logged, so a down controller is logged once, not every poll.
    last_problem: Option<String>,
}

#[derive(Default)]
struct CanaryRoot {
    active: Option<Rc<Active>>,
    controlled: Option<Controlled>,
    /// Metric ids by rollout name and metric set, defined once per VM (a handful: a list
    /// is enough).
    metric_ids: Vec<(String, RolloutMetrics)>,
    /// Circuit breakers by rollout name and window: they outlive configurations.
    breakers: Vec<(String, Local)>,
    #[cfg(feature = "fallback")]
    chain: crate::glue_fallback::ChainRoot,
    #[cfg(feature = "llm")]
    worker: Rc<Worker>,
}

/// A worker's state shared by its root context and HTTP contexts (one `Rc` to clone per
/// request), outliving configuration updates.
#[cfg(feature = "llm")]
#[derive(Default)]
struct Worker {
    /// Per-user buckets.
    limiter: RefCell<RateLimiter>,
    shadow: ShadowShared,
    eval: EvalShared,
    wake: RootWake,
}

/// Wakes a worker's root context from its HTTP contexts, to send shadow copies and
/// evaluations while the user's request goes on: a shared queue this root registered under
/// a name only it knows, so Envoy runs `on_queue_ready` on this very root, on this worker.
#[cfg(feature = "llm")]
#[derive(Default)]
struct RootWake {
    queue: Cell<Option<u32>>,
}

#[cfg(feature = "llm")]
impl RootWake {
    /// Registers the queue (once per root).
    fn register(&self) {
        if self.queue.get().is_some() {
            return;
        }
        let mut random = [0u8; 8];
        let _ = getrandom::fill(&mut random);
        let name = format!("wasm-canary-wake-{:016x}", u64::from_le_bytes(random));
        match hostcalls::register_shared_queue(&name) {
            Ok(id) => self.queue.set(Some(id)),
            Err(status) => log::warn!(
                "wasm-canary: no wake-up queue ({status:?}): copies go out at the next tick"
            ),
        }
    }

    fn wake(&self) {
        if let Some(queue) = self.queue.get() {
            let _ = hostcalls::enqueue_shared_queue(queue, Some(b"1"));
        }
    }

    /// Empties the queue: one wake-up sends everything filed so far.
    fn drain(&self) {
        if let Some(queue) = self.queue.get() {
            while let Ok(Some(_)) = hostcalls::dequeue_shared_queue(queue) {}
        }
    }
}

struct EnvoyMetrics;

impl MetricHost for EnvoyMetrics {
    fn define(&mut self, kind: MetricKind, name: &str) -> Result<u32, String> {
        let kind = match kind {
            MetricKind::Counter => MetricType::Counter,
            MetricKind::Histogram => MetricType::Histogram,
            MetricKind::Gauge => MetricType::Gauge,
        };
        hostcalls::define_metric(kind, name).map_err(|status| format!("{status:?}"))
    }
}

/// Defines one of the metrics outside [`RolloutMetrics`] (shadow, eval, tier stats).
#[cfg(any(feature = "llm", feature = "fallback"))]
pub(crate) fn define_metric(kind: MetricKind, name: &str) -> Result<u32, String> {
    EnvoyMetrics
        .define(kind, name)
        .map_err(|e| format!("defining metric {name}: {e}"))
}

/// Carries out one metric operation of rollout `rollout` of `active`.
fn apply_op(active: &Active, rollout: usize, op: MetricOp, version: canary_contract::Version) {
    let Some(metrics) = active.metrics.get(rollout) else {
        return;
    };
    let (m, delta) = match op {
        MetricOp::Increment(m) => (m, 1),
        MetricOp::Add(m, delta) => (m, delta),
        MetricOp::Record(m, v) => {
            if let Some(id) = metrics.id(version, m) {
                // A failed metric update is not worth failing the request over.
                let _ = hostcalls::record_metric(id, v);
            }
            return;
        }
    };
    // Counters are summed in the VM and flushed on tick.
    if let Ok(mut pending) = active.pending.try_borrow_mut() {
        pending.add(rollout, version, m, delta);
    }
}

#[cfg(feature = "llm")]
fn define_counter(name: &str) -> Result<u32, String> {
    define_metric(MetricKind::Counter, name)
}

/// A shared-data entry (a time in ms) with its CAS token, for a write that only one root
/// may win. Envoy takes a write without a token as unconditional, and the workers' ticks
/// coincide (they were configured together): two that both found the entry missing would
/// both win. So a missing entry is created (0: nothing stored) and this round skipped.
pub(crate) fn shared_with_cas(key: &str) -> Option<(Option<Vec<u8>>, u32)> {
    match hostcalls::get_shared_data(key) {
        Ok((stored, Some(cas))) => Some((stored, cas)),
        Ok((_, None)) => {
            let _ = hostcalls::set_shared_data(key, Some(&encode_ms(0)), None);
            None
        }
        Err(_) => None,
    }
}

pub(crate) fn increment(metric_id: u32, delta: u64) {
    // A failed update is not worth failing anything over.
    let _ = hostcalls::increment_metric(metric_id, i64::try_from(delta).unwrap_or(i64::MAX));
}

fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        // Not `as_millis`: its u128 arithmetic is slow in wasm32, and this runs 3× a request.
        .map_or(0, |d| {
            d.as_secs()
                .saturating_mul(1_000)
                .saturating_add(u64::from(d.subsec_millis()))
        })
}

impl CanaryRoot {
    /// Makes `config` the one new requests use; with `raise_at_ms`, weights it raises over
    /// the current configuration's wait until then.
    fn activate(&mut self, config: FilterConfig, raise_at_ms: Option<u64>) -> Result<(), String> {
        let mut metrics = Vec::with_capacity(config.rollouts.len());
        for r in &config.rollouts {
            let key = metric_set_key(r);
            let ids = match self.metric_ids.iter().find(|(k, _)| *k == key) {
                Some((_, ids)) => ids.clone(),
                None => {
                    let ids = RolloutMetrics::define(&mut EnvoyMetrics, r)?;
                    self.metric_ids.push((key, ids.clone()));
                    ids
                }
            };
            metrics.push(ids);
        }
        #[cfg(feature = "fallback")]
        let chains = config
            .rollouts
            .iter()
            .map(|r| self.chain.chain(r))
            .collect::<Result<Vec<_>, _>>()?;
        #[cfg(feature = "llm")]
        let shadow_ids = config
            .rollouts
            .iter()
            .map(|r| {
                let Some(_) = r.shadow else {
                    return Ok(None);
                };
                let names = canary_contract::ShadowMetric::ALL.map(|m| m.stat_name(&r.name));
                names
                    .iter()
                    .map(|n| define_counter(n))
                    .collect::<Result<_, _>>()
                    .map(Some)
            })
            .collect::<Result<Vec<_>, String>>()?;
        #[cfg(feature = "llm")]
        let mut eval_ids = Vec::with_capacity(config.rollouts.len());
        #[cfg(feature = "llm")]
        for r in &config.rollouts {
            let Some(_) = r.eval else {
                eval_ids.push(None);
                continue;
            };
            let mut ids: EvalIds = Default::default();
            for version in Version::ALL {
                for m in canary_contract::EvalMetric::ALL {
                    ids[version.index()][m.index()] =
                        define_counter(&m.stat_name(&r.name, version))?;
                }
            }
            eval_ids.push(Some(ids));
        }
        let router = match (&self.active, raise_at_ms) {
            (Some(current), Some(at)) => Router::succeeding(config, &current.router, now_ms(), at),
            _ => Router::new(config),
        };
        self.active = Some(Rc::new(Active {
            pending: RefCell::new(PendingCounters::new(metrics.len())),
            breaker_open_until: (0..metrics.len()).map(|_| Cell::new(0)).collect(),
            #[cfg(feature = "fallback")]
            chains,
            #[cfg(feature = "llm")]
            samplers: RefCell::new((0..metrics.len()).map(|_| Samplers::default()).collect()),
            #[cfg(feature = "llm")]
            shadow_ids,
            #[cfg(feature = "llm")]
            eval_ids,
            router,
            metrics,
        }));
        // An open breaker stays open across configurations.
        self.check_breakers();
        #[cfg(feature = "fallback")]
        self.check_chains();
        Ok(())
    }

    /// Ticks the fallback chains' tier breakers (see `glue_fallback`).
    #[cfg(feature = "fallback")]
    fn check_chains(&mut self) {
        let Some(active) = self.active.clone() else {
            return;
        };
        let now = now_ms();
        for (i, r) in active.router.rollouts().iter().enumerate() {
            if let (Some(Some(chain)), Some(metrics)) =
                (active.chains.get(i), active.metrics.get(i))
            {
                self.chain.tick(r, metrics, chain, now);
            }
        }
    }

    /// Ticks every circuit breaker on the proxy's canary counters (see `breaker`); a trip
    /// is stored in shared data with the CAS token read, so it is stored and counted once.
    fn check_breakers(&mut self) {
        let Some(active) = self.active.clone() else {
            return;
        };
        let now = now_ms();
        for (i, r) in active.router.rollouts().iter().enumerate() {
            let (Some(config), Some(metrics)) = (&r.circuit_breaker, active.metrics.get(i)) else {
                continue;
            };
            let canary = |m| metrics.id(Version::Canary, m);
            let count = |m| canary(m).and_then(|id| hostcalls::get_metric(id).ok());
            let key = format!("wasm-canary/breaker/{}", r.name);
            let Some((stored, cas)) = shared_with_cas(&key) else {
                continue;
            };
            let name = format!("{} {}", r.name, config.window_s);
            let local = keyed_entry(&mut self.breakers, name, || Local::new(config));
            let tick = local.tick(
                config,
                now,
                count(Metric::RqTotal).unwrap_or(0),
                count(Metric::Rq5xx).unwrap_or(0),
                decode_ms(stored.as_deref()).unwrap_or(0),
            );
            let open = match tick {
                Tick::Steady => None,
                Tick::Closed => Some(0),
                Tick::Trip {
                    open_until_ms,
                    requests,
                    errors,
                } => hostcalls::set_shared_data(&key, Some(&encode_ms(open_until_ms)), Some(cas))
                    .ok()
                    .map(|()| {
                        local.opened(open_until_ms);
                        log::warn!(
                            "wasm-canary: {}: circuit breaker open: {errors} of {requests} canary answers failed",
                            r.name
                        );
                        if let Some(id) = canary(Metric::BreakerTrips) {
                            increment(id, 1);
                        }
                        1
                    }),
            };
            if let Some(cell) = active.breaker_open_until.get(i) {
                cell.set(local.open_until_ms());
            }
            if let (Some(value), Some(id)) = (open, canary(Metric::BreakerOpen)) {
                let _ = hostcalls::record_metric(id, value);
            }
        }
    }

    /// Applies the controller's configuration from shared data if another root (or this
    /// one) stored a newer one.
    fn sync_from_shared(&mut self) {
        let Some(c) = self.controlled.as_mut() else {
            return;
        };
        let Ok((Some(bytes), cas)) = hostcalls::get_shared_data(&c.keys.config) else {
            return;
        };
        if cas.is_some() && cas == c.applied_cas {
            return;
        }
        c.applied_cas = cas;
        let Some(shared) = decode_shared(&bytes) else {
            return;
        };
        // Stored only after validation, but shared data is host data: check again.
        let Ok(config) = FilterConfig::from_json(shared.body) else {
            return;
        };
        c.applied_etag = shared.etag;
        c.latest = Some(shared.body.to_vec());
        if !c.in_fail_safe {
            if let Err(e) = self.activate(config, Some(shared.raise_at_ms)) {
                log::error!("wasm-canary: cannot apply the controller's configuration: {e}");
            }
        }
    }

    /// Routes everyone to stable while the controller has been silent for too long.
    fn check_fail_safe(&mut self) {
        let Some(c) = self.controlled.as_mut() else {
            return;
        };
        let last_ok = hostcalls::get_shared_data(&c.keys.last_ok)
            .ok()
            .and_then(|(bytes, _)| decode_ms(bytes.as_deref()));
        let stale = is_stale(&c.source, last_ok, now_ms());
        if stale == c.in_fail_safe {
            return;
        }
        c.in_fail_safe = stale;
        let current = c.latest.as_deref().unwrap_or(&c.plugin_config);
        let Ok(current) = FilterConfig::from_json(current) else {
            return;
        };
        // Each worker notices the controller's return at its own tick: the raise back to the
        // controller's weights waits as long as a raise from a poll would.
        let raise_at_ms = now_ms() + raise_delay_ms(c.source.poll_interval_ms);
        let config = if stale {
            log::warn!(
                "wasm-canary: no answer from the controller for {}s: everyone to stable",
                c.source.fail_safe_after_s.unwrap_or(0)
            );
            fail_safe(current)
        } else {
            log::info!(
                "wasm-canary: controller reachable again: {}",
                summary(&current)
            );
            current
        };
        if let Err(e) = self.activate(config, Some(raise_at_ms)) {
            log::error!("wasm-canary: {e}");
        }
    }

    /// Polls the controller if no root in this VM did within the poll interval.
    fn maybe_poll(&mut self) {
        let Some(c) = self.controlled.as_mut() else {
            return;
        };
        if c.poll_in_flight.is_some() {
            return;
        }
        let now = now_ms();
        let Ok((last, cas)) = hostcalls::get_shared_data(&c.keys.lease) else {
            return;
        };
        if !lease_expired(decode_ms(last.as_deref()), now, c.poll_interval_ms) {
            return;
        }
        if hostcalls::set_shared_data(&c.keys.lease, Some(&encode_ms(now)), cas).is_err() {
            return; // another root took the lease
        }
        let mut headers = vec![
            (":method", "GET"),
            (":path", c.source.path.as_str()),
            (":authority", c.source.authority.as_str()),
        ];
        if !c.applied_etag.is_empty() {
            headers.push(("if-none-match", c.applied_etag.as_str()));
        }
        match hostcalls::dispatch_http_call(
            &c.source.cluster,
            headers,
            None,
            vec![],
            Duration::from_millis(c.source.timeout_ms),
        ) {
            Ok(token) => c.poll_in_flight = Some(token),
            Err(status) => {
                let problem = format!("cannot call cluster {}: {status:?}", c.source.cluster);
                if c.last_problem.as_ref() != Some(&problem) {
                    log::warn!("wasm-canary: {problem} (keeping the current configuration)");
                    c.last_problem = Some(problem);
                }
            }
        }
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
        if self.worker.shadow.candidate_response(token_id, body_size)
            || self.worker.eval.answered(token_id, body_size)
        {
            return;
        }
        let Some(c) = self.controlled.as_mut() else {
            return;
        };
        if c.poll_in_flight != Some(token_id) {
            return;
        }
        c.poll_in_flight = None;
        let header = |name: &str| {
            hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, name)
                .ok()
                .flatten()
        };
        let status = header(":status");
        let etag = header("etag");
        let body = if body_size > 0 {
            hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
                .ok()
                .flatten()
        } else {
            None
        };
        let outcome = interpret(status.as_deref(), etag.as_deref(), body.as_deref());
        let polled_ms = now_ms();
        let now = encode_ms(polled_ms);
        match outcome {
            PollOutcome::Updated { etag, body, config } => {
                log::info!(
                    "wasm-canary: configuration {etag} from the controller: {}",
                    summary(&config)
                );
                c.last_problem = None;
                let raise_at_ms = polled_ms + raise_delay_ms(c.source.poll_interval_ms);
                let _ = hostcalls::set_shared_data(
                    &c.keys.config,
                    Some(&encode_shared(&etag, raise_at_ms, &body)),
                    None,
                );
                let _ = hostcalls::set_shared_data(&c.keys.last_ok, Some(&now), None);
                self.sync_from_shared();
                self.check_fail_safe();
            }
            PollOutcome::NotModified => {
                c.last_problem = None;
                let _ = hostcalls::set_shared_data(&c.keys.last_ok, Some(&now), None);
                self.check_fail_safe();
            }
            PollOutcome::Failed(problem) => {
                if c.last_problem.as_ref() != Some(&problem) {
                    log::warn!(
                        "wasm-canary: poll failed: {problem} (keeping the current configuration)"
                    );
                    c.last_problem = Some(problem);
                }
            }
        }
    }
}

impl RootContext for CanaryRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let config = match FilterConfig::from_json(&bytes) {
            Ok(config) => config,
            Err(e) => {
                let kept = if self.active.is_some() {
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
            let mut random = [0u8; 8];
            // Without randomness the period is just not jittered.
            let _ = getrandom::fill(&mut random);
            Controlled {
                keys: SharedKeys::new(&source),
                poll_interval_ms: jittered_interval(
                    source.poll_interval_ms,
                    u64::from_le_bytes(random),
                ),
                source,
                plugin_config: bytes.clone(),
                applied_cas: None,
                applied_etag: String::new(),
                latest: None,
                in_fail_safe: false,
                poll_in_flight: None,
                last_problem: None,
            }
        });
        if let Err(e) = self.activate(config, None) {
            log::error!("wasm-canary: {e}");
            return false;
        }
        #[cfg(feature = "llm")]
        self.worker.wake.register();
        // A configuration the controller published before this plugin instance existed
        // (e.g. after a listener update) wins over the plugin's initial one.
        self.sync_from_shared();
        self.set_tick_period(tick);
        true
    }

    fn on_tick(&mut self) {
        #[cfg(feature = "llm")]
        {
            self.worker.shadow.send_ready();
            self.worker.shadow.expire();
            self.worker.eval.send_ready();
        }
        if let Some(active) = &self.active {
            active.flush_counters();
        }
        // After the flush, so the counters include this worker's answers.
        self.check_breakers();
        #[cfg(feature = "fallback")]
        self.check_chains();
        if self.controlled.is_some() {
            self.sync_from_shared();
            self.check_fail_safe();
            self.maybe_poll();
        }
    }

    #[cfg(feature = "llm")]
    fn on_queue_ready(&mut self, _queue_id: u32) {
        self.worker.wake.drain();
        self.worker.shadow.send_ready();
        self.worker.eval.send_ready();
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(CanaryHttp {
            active: self.active.clone(),
            routed: None,
            #[cfg(feature = "fallback")]
            tier: None,
            #[cfg(feature = "fallback")]
            retry: None,
            #[cfg(feature = "fallback")]
            retry_call: None,
            #[cfg(feature = "llm")]
            worker: self.worker.clone(),
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
    /// Set when the rollout reads LLM signals and the request is an LLM call.
    #[cfg(feature = "llm")]
    llm: Option<LlmExchange>,
    /// User key and tokens charged up front, to settle with the answer's token count.
    #[cfg(feature = "llm")]
    charge: Option<(String, u64)>,
    /// Set when the request is copied to the shadow candidate.
    #[cfg(feature = "llm")]
    shadow: Option<ShadowCopy>,
    /// Set when the call is sampled for evaluation.
    #[cfg(feature = "llm")]
    eval: Option<EvalCopy>,
}

struct CanaryHttp {
    active: Option<Rc<Active>>,
    routed: Option<Routed>,
    /// (rollout, tier, probe) when a lighter tier of the fallback chain serves the request,
    /// or it is a half-open tier's probe.
    #[cfg(feature = "fallback")]
    tier: Option<(usize, usize, bool)>,
    /// A copy of a request the fallback chain may retry, while the primary answers.
    #[cfg(feature = "fallback")]
    retry: Option<RetryCopy>,
    /// (rollout, tier) of the retry in flight: the answer comes to this context.
    #[cfg(feature = "fallback")]
    retry_call: Option<(usize, usize)>,
    #[cfg(feature = "llm")]
    worker: Rc<Worker>,
}

/// A request kept for a retry down the fallback chain.
#[cfg(feature = "fallback")]
struct RetryCopy {
    rollout: usize,
    headers: Vec<(String, String)>,
    body: crate::copy::BodyCopy,
}

impl RequestHeaders for CanaryHttp {
    fn header(&self, name: &str) -> Option<Vec<u8>> {
        self.get_http_request_header_bytes(name)
    }
}

impl CanaryHttp {
    /// Sends the request down the fallback chain when the rollout's own service's breaker
    /// is open: to the first lighter tier that takes it, else answers it with the
    /// configured degraded response. `None`: the rollout's own service serves it.
    #[cfg(feature = "fallback")]
    fn fall_back(
        &mut self,
        active: &Active,
        index: usize,
        rollout: &canary_contract::RolloutConfig,
    ) -> Option<Action> {
        let chain = active.chain(index)?;
        let fallback = rollout.fallback.as_ref()?;
        let (chosen, probe) = chain.choose();
        match chosen {
            Some(0) => {
                self.tier = probe.then_some((index, 0, probe));
                None
            }
            Some(tier) => {
                let value = &fallback.tier(tier)?.route_value;
                self.set_http_request_header(&rollout.route_header, Some(value));
                chain.count_request(tier);
                self.tier = Some((index, tier, probe));
                Some(Action::Continue)
            }
            None => {
                self.send_degraded(chain, &fallback.response);
                Some(Action::Pause)
            }
        }
    }

    /// The chain's last resort: the configured response, marked degraded (counted as the
    /// response tier's request).
    #[cfg(feature = "fallback")]
    fn send_degraded(
        &self,
        chain: &crate::glue_fallback::Chain,
        r: &canary_contract::fallback::FallbackResponse,
    ) {
        chain.count_response();
        let mut headers: Vec<(&str, &str)> = vec![
            (canary_contract::fallback::DEGRADED_HEADER, "1"),
            ("content-type", "application/json"),
        ];
        for (name, value) in &r.headers {
            headers.retain(|(n, _)| n != name);
            headers.push((name, value));
        }
        self.send_http_response(u32::from(r.status), headers, Some(r.body_json.as_bytes()));
    }

    /// Keeps a copy of a request the rollout's own service serves, if the chain retries its
    /// method.
    #[cfg(feature = "fallback")]
    fn keep_for_retry(
        &mut self,
        index: usize,
        rollout: &canary_contract::RolloutConfig,
        end: bool,
    ) {
        let Some(retry) = rollout.fallback.as_ref().and_then(|f| f.retry.as_ref()) else {
            return;
        };
        let method = self.get_http_request_header_bytes(":method");
        if !method.is_some_and(|m| retry.allows(&m)) {
            return;
        }
        let mut body = crate::copy::BodyCopy::new(retry.max_request_bytes as usize);
        if end {
            body.push(0, true, || None);
        }
        self.retry = Some(RetryCopy {
            rollout: index,
            headers: crate::copy::copied_headers(self.get_http_request_headers_bytes()),
            body,
        });
    }

    /// The rollout's own service answered `status`: if it failed and the request may be
    /// retried, sends it to the next tier that takes it (`true`: the answer waits for the
    /// retry's) or answers with the chain's response (`true` as well).
    #[cfg(feature = "fallback")]
    fn retry_failed(&mut self, status: Option<&[u8]>) -> bool {
        let Some(copy) = self.retry.take() else {
            return false;
        };
        if status.is_none_or(|s| s.first() != Some(&b'5')) {
            return false;
        }
        let Some(active) = self.active.clone() else {
            return false;
        };
        let rollout = active.router.rollouts().get(copy.rollout);
        let fallback = rollout.and_then(|r| r.fallback.as_ref());
        let chain = active.chain(copy.rollout);
        let (Some(rollout), Some(fallback), Some(chain)) = (rollout, fallback, chain) else {
            return false;
        };
        let Some(retry) = fallback.retry.as_ref() else {
            return false;
        };
        // Over the cap, or the request never ended: the user gets the first answer.
        let Some(body) = copy.body.take() else {
            return false;
        };
        let cluster = |tier: usize| {
            fallback
                .tier(tier)
                .and_then(|t| Some((t.cluster.as_deref()?, t.route_value.as_str())))
        };
        let Some(tier) = chain.choose_retry(|i| cluster(i).is_some()) else {
            self.send_degraded(chain, &fallback.response);
            return true;
        };
        let Some((cluster, route_value)) = cluster(tier) else {
            return false;
        };
        let headers: Vec<(&str, &str)> = copy
            .headers
            .iter()
            .map(|(k, v)| {
                let v = if *k == rollout.route_header {
                    route_value
                } else {
                    v.as_str()
                };
                (k.as_str(), v)
            })
            .collect();
        let body = (!body.is_empty()).then_some(body.as_slice());
        let timeout = Duration::from_millis(retry.timeout_ms);
        match hostcalls::dispatch_http_call(cluster, headers, body, vec![], timeout) {
            Ok(_) => {
                chain.count_request(tier);
                self.retry_call = Some((copy.rollout, tier));
                true
            }
            Err(_) => false,
        }
    }

    /// Counts a lighter tier's 5xx answer (its breaker reads it) and marks a probe's answer
    /// (`x-canary-probe: <tier>`): a probe is a user's request, and its failure reaches them.
    #[cfg(feature = "fallback")]
    fn tier_answered(&mut self) {
        let (Some(active), Some((rollout, tier, probe))) = (self.active.clone(), self.tier.take())
        else {
            return;
        };
        if probe {
            let name = active
                .fallback(rollout)
                .and_then(|f| f.tier(tier))
                .map_or(canary_contract::fallback::PRIMARY_TIER, |t| t.name.as_str());
            self.add_http_response_header("x-canary-probe", name);
        }
        if tier == 0 {
            return; // counted in `canary_rq_*`
        }
        let failed = self
            .get_http_response_header_bytes(":status")
            .is_some_and(|s| s.first() == Some(&b'5'));
        if let (true, Some(chain)) = (failed, active.chain(rollout)) {
            chain.count_5xx(tier);
        }
    }

    /// Response headers of an LLM call: set up the body reader, count quality headers.
    #[cfg(feature = "llm")]
    fn llm_response_headers(&self, active: &Active, routed: &mut Routed) {
        let (Some(llm), Some(signals), Some(metrics)) = (
            routed.llm.as_mut(),
            active.llm_signals(routed.rollout),
            active.metrics.get(routed.rollout),
        ) else {
            return;
        };
        let content_type = self.get_http_response_header_bytes("content-type");
        llm.on_response_headers(content_type.as_deref(), signals.max_body_bytes);
        for (i, q) in signals.quality_headers.iter().enumerate() {
            let value = self
                .get_http_response_header_bytes(&q.header)
                .and_then(|v| quality_milli(&v));
            let (Some(value), Some(ids)) = (value, metrics.quality(i, routed.exchange.version))
            else {
                continue;
            };
            for (id, delta) in ids.into_iter().zip(quality_increments(value)) {
                increment(id, delta);
            }
        }
    }

    /// The end of an LLM call's response (or of its stream).
    #[cfg(feature = "llm")]
    fn llm_end(&self, active: &Rc<Active>, routed: &mut Routed) {
        let Some(signals) = active.llm_signals(routed.rollout) else {
            return;
        };
        if let Some(llm) = routed.llm.as_mut() {
            let now = now_ms();
            let end = llm.on_end(now, signals, routed.exchange.version);
            for op in end.ops {
                apply_op(active, routed.rollout, op, routed.exchange.version);
            }
            let (shadow, eval) = (routed.shadow.take(), routed.eval.take());
            if shadow.is_some() || eval.is_some() {
                let reading = llm.take_answer().unwrap_or_default();
                if let Some(copy) = eval {
                    let (r, v) = (routed.rollout, routed.exchange.version);
                    self.worker
                        .eval
                        .answer_end(copy, &reading, active, r, v, &self.worker.wake);
                }
                if let Some(copy) = shadow {
                    self.worker.shadow.primary_end(copy, reading);
                }
            }
            // Settled once, with a readable answer; otherwise the estimate stands.
            if let (Some(actual), Some((key, charged)), Some(r)) = (
                end.tokens,
                routed.charge.take(),
                active.router.rollouts().get(routed.rollout),
            ) {
                if let Ok(mut limiter) = self.worker.limiter.try_borrow_mut() {
                    limiter.settle(&r.name, &key, charged, actual, now);
                }
            }
        }
    }

    /// Per-user limits and the quota throttle: `Err` when the request was answered with 429.
    #[cfg(feature = "llm")]
    fn rate_limit(
        &self,
        active: &Active,
        decision: &crate::routing::Decision,
        now: u64,
    ) -> Result<Option<(String, u64)>, ()> {
        let Some(rollout) = active.router.rollouts().get(decision.rollout) else {
            return Ok(None);
        };
        let Some(limit) = &rollout.rate_limit else {
            return Ok(None);
        };
        let Ok(mut limiter) = self.worker.limiter.try_borrow_mut() else {
            return Ok(None);
        };
        let key = decision.key.as_deref();
        let is_priority =
            || crate::ratelimit::is_priority(limit, key, |h| self.get_http_request_header_bytes(h));
        match limiter.check(&rollout.name, limit, key, now, is_priority) {
            Ok(admitted) => {
                if admitted.priority_passed {
                    let op = MetricOp::Increment(Metric::ThrottlePriorityPassed);
                    apply_op(active, decision.rollout, op, decision.version);
                }
                let settle = admitted.tracked && limit.tokens_per_minute.is_some();
                Ok(key
                    .filter(|_| settle)
                    .map(|k| (k.to_string(), admitted.charged_tokens)))
            }
            Err(rejection) => {
                let op = MetricOp::Increment(rejection.reason.metric());
                apply_op(active, decision.rollout, op, decision.version);
                let retry_after = rejection.retry_after_s.to_string();
                self.send_http_response(
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

impl Context for CanaryHttp {
    /// The answer to a retry down the fallback chain: the user gets it in place of the
    /// failed one; if the tier failed too (or did not answer in time), the first answer.
    #[cfg(feature = "fallback")]
    fn on_http_call_response(
        &mut self,
        _token: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        let Some((rollout, tier)) = self.retry_call.take() else {
            return;
        };
        let raw = self.get_http_call_response_headers_bytes();
        let status = raw
            .iter()
            .find(|(k, _)| k == ":status")
            .and_then(|(_, v)| crate::metrics::parse_status(v));
        let Some(active) = self.active.clone() else {
            self.resume_http_response();
            return;
        };
        let ok = status.is_some_and(|s| s < 500);
        if !ok {
            // Counted for the tier's breaker, as if the user had been routed there.
            if let Some(chain) = active.chain(rollout) {
                chain.count_5xx(tier);
            }
            self.resume_http_response();
            return;
        }
        let name = active
            .fallback(rollout)
            .and_then(|f| f.tier(tier))
            .map_or("", |t| t.name.as_str());
        // Hop-by-hop headers, the length and `:status` are Envoy's to set.
        let mut headers = crate::copy::copied_headers(raw);
        headers.push(("x-canary-retried".to_string(), name.to_string()));
        let headers = crate::copy::header_pairs(&headers);
        let body = self.get_http_call_response_body(0, body_size);
        self.send_http_response(u32::from(status.unwrap_or(502)), headers, body.as_deref());
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
        let Some(active) = self.active.clone() else {
            return Action::Continue;
        };
        let now = now_ms();
        let mut decision = active.router.decide(self, now, new_anonymous_id);
        if let Some(d) = decision.as_mut() {
            let open_until = active
                .breaker_open_until
                .get(d.rollout)
                .map_or(0, Cell::get);
            if d.version == Version::Canary && now < open_until {
                d.version = Version::Stable;
                apply_op(
                    &active,
                    d.rollout,
                    MetricOp::Increment(Metric::BreakerDiverted),
                    Version::Canary,
                );
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
        if let Some(action) = self.fall_back(&active, decision.rollout, rollout) {
            return action;
        }
        #[cfg(feature = "fallback")]
        self.keep_for_retry(decision.rollout, rollout, end_of_stream);
        #[cfg(feature = "llm")]
        let charge = match self.rate_limit(&active, &decision, now) {
            Ok(charge) => charge,
            // Answered locally with 429: not routed, so not in the request counts.
            Err(()) => return Action::Pause,
        };
        self.set_http_request_header(&rollout.route_header, Some(decision.version.as_str()));
        let (exchange, op) = Exchange::start(decision.version, now);
        apply_op(&active, decision.rollout, op, decision.version);
        #[cfg(feature = "llm")]
        let llm = rollout.llm.as_ref().and_then(|signals| {
            // `:path` is read only when the LLM calls are a subset of the rollout's requests.
            let is_call = signals.path_prefixes.is_empty()
                || self
                    .get_http_request_header_bytes(":path")
                    .is_some_and(|p| signals.applies_to(&p));
            is_call.then(|| LlmExchange::start(now))
        });
        // Only LLM calls are shadowed: the primary's answer is read by their reader.
        #[cfg(feature = "llm")]
        let (mut llm, mut shadow, mut eval) = (llm, None, None);
        #[cfg(feature = "llm")]
        if let Some(llm) = llm.as_mut() {
            shadow = self.worker.shadow.start(&active, decision.rollout, || {
                self.get_http_request_headers_bytes()
            });
            if let Some(copy) = shadow.as_mut() {
                llm.capture();
                if end_of_stream {
                    self.worker
                        .shadow
                        .request_body(copy, 0, true, &self.worker.wake, || None);
                }
            }
            eval = EvalShared::start(&active, decision.rollout, decision.version, end_of_stream);
            if eval.is_some() {
                llm.capture();
            }
        }
        self.routed = Some(Routed {
            #[cfg(feature = "llm")]
            llm,
            #[cfg(feature = "llm")]
            charge,
            #[cfg(feature = "llm")]
            shadow,
            #[cfg(feature = "llm")]
            eval,
            rollout: decision.rollout,
            exchange,
            set_cookie: decision
                .new_anonymous_id
                .map(|id| set_cookie_value(&rollout.anonymous_cookie, &id)),
        });
        Action::Continue
    }

    #[cfg_attr(not(feature = "llm"), allow(unused_variables))]
    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        #[cfg(feature = "fallback")]
        self.tier_answered();
        let (Some(active), Some(mut routed)) = (self.active.clone(), self.routed.take()) else {
            return Action::Continue;
        };
        let status = self.get_http_response_header_bytes(":status");
        let ops = routed
            .exchange
            .on_response_headers(status.as_deref(), now_ms(), || {
                self.get_property(vec!["response", "code_details"])
            });
        for op in ops {
            apply_op(&active, routed.rollout, op, routed.exchange.version);
        }
        if let Some(cookie) = routed.set_cookie.take() {
            self.add_http_response_header("set-cookie", &cookie);
        }
        #[cfg(feature = "llm")]
        if let Some(copy) = routed.shadow.as_mut() {
            ShadowShared::response_status(copy, status.as_deref());
        }
        #[cfg(feature = "llm")]
        if let Some(copy) = routed.eval.as_mut() {
            EvalShared::response_status(copy, status.as_deref());
        }
        #[cfg(feature = "llm")]
        if routed.llm.is_some() {
            self.llm_response_headers(&active, &mut routed);
            if end_of_stream {
                self.llm_end(&active, &mut routed);
            }
        }
        self.routed = Some(routed);
        #[cfg(feature = "fallback")]
        if self.retry_failed(status.as_deref()) {
            return Action::Pause;
        }
        Action::Continue
    }

    // The request body passes on unchanged (always `Continue`); a shadowed or evaluated
    // request's is copied, up to the cap.
    #[cfg(feature = "llm")]
    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
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
        if let Some(copy) = routed.shadow.as_mut() {
            self.worker.shadow.request_body(
                copy,
                body_size,
                end_of_stream,
                &self.worker.wake,
                read,
            );
        }
        if let Some(copy) = routed.eval.as_mut() {
            EvalShared::request_body(copy, body_size, end_of_stream, read);
        }
        #[cfg(feature = "fallback")]
        if let Some(copy) = self.retry.as_mut() {
            copy.body.push(body_size, end_of_stream, read);
        }
        Action::Continue
    }

    // Bodies pass on unchanged and unbuffered (always `Continue`); an LLM call's chunks are
    // copied, up to the cap, and read.
    #[cfg(feature = "llm")]
    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(active) = self.active.clone() else {
            return Action::Continue;
        };
        let Some(mut routed) = self.routed.take() else {
            return Action::Continue;
        };
        let signals = active.llm_signals(routed.rollout);
        if let (Some(llm), Some(signals)) = (routed.llm.as_mut(), signals) {
            let ops = llm.on_body(body_size, now_ms(), signals, || {
                self.get_http_response_body(0, body_size)
            });
            for op in ops {
                apply_op(&active, routed.rollout, op, routed.exchange.version);
            }
            if end_of_stream {
                self.llm_end(&active, &mut routed);
            }
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
        for op in routed.exchange.on_end(now_ms()) {
            apply_op(&active, routed.rollout, op, routed.exchange.version);
        }
        // A stream that ended early (reset, client gone): counted as unparsed.
        #[cfg(feature = "llm")]
        self.llm_end(&active, &mut { routed });
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
