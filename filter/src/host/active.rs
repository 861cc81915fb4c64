//! The active configuration: a configuration that passed validation with its metric ids,
//! the counters summed since the last flush, and the per-rollout state requests read
//! (breakers, fallback chains, samplers). [`Current`] is a root's slot for it, with what
//! the root keeps across configurations.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use canary_contract::stats::Metric;
#[cfg(feature = "llm")]
use canary_contract::stats::MetricKind;
use canary_contract::{FilterConfig, Version};
use proxy_wasm::hostcalls;

#[cfg(not(feature = "lean"))]
use super::calls::EnvoyMetrics;
use super::calls::{increment, now_ms, shared_with_cas};
#[cfg(feature = "fallback")]
use super::fallback::{ChainRoot, ChainView, Chains};
use crate::breaker::{Local, Tick};
use crate::control::{decode_ms, encode_ms};
use crate::keyed::keyed_entry;
#[cfg(not(feature = "lean"))]
use crate::keyed::metric_set_key;
#[cfg(not(feature = "lean"))]
use crate::metrics::MetricOp;
use crate::metrics::{PendingCounters, RolloutMetrics};
use crate::routing::Router;

/// A configuration that passed validation, with its metric ids.
pub(super) struct Active {
    pub(super) router: Router,
    pub(super) metrics: Vec<RolloutMetrics>,
    pending: RefCell<PendingCounters>,
    /// The lean build's request path reads the clock only while a raise waits (see
    /// [`Active::routing_time`]): set once none does any more.
    #[cfg(feature = "lean")]
    raises_done: Cell<bool>,
    /// Per rollout: until when its circuit breaker sends canary users to stable (ms).
    pub(super) breaker_open_until: Vec<Cell<u64>>,
    /// Per rollout: its fallback chain, if configured.
    #[cfg(feature = "fallback")]
    pub(super) fallback: Chains,
    #[cfg(feature = "llm")]
    pub(super) llm: LlmParts,
}

/// What the LLM features (shadow mode, eval sampling) keep per configuration.
#[cfg(feature = "llm")]
pub(super) struct LlmParts {
    /// Per rollout with `shadow`: its shadow counters' ids, in `ShadowMetric` order.
    pub(super) shadow_ids: Vec<Option<Vec<u32>>>,
    /// Per rollout with `eval`: its eval counters' ids, per version in `EvalMetric` order.
    pub(super) eval_ids: Vec<Option<EvalIds>>,
    /// Per rollout: which requests are copied to the candidate, and which calls of each
    /// version are evaluated.
    pub(super) samplers: RefCell<Vec<Samplers>>,
}

#[cfg(feature = "llm")]
#[derive(Default)]
pub(super) struct Samplers {
    pub(super) shadow: crate::shadow::Sampler,
    pub(super) eval: crate::eval::EvalSamplers,
}

#[cfg(feature = "llm")]
pub(super) type EvalIds = [[u32; canary_contract::EvalMetric::ALL.len()]; 2];

#[cfg(feature = "llm")]
impl LlmParts {
    /// Defines the shadow and eval counters of the rollouts that have them.
    fn define(config: &FilterConfig) -> Result<LlmParts, String> {
        use super::calls::define_counter;
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
        let mut eval_ids = Vec::with_capacity(config.rollouts.len());
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
        Ok(LlmParts {
            samplers: RefCell::new(
                (0..config.rollouts.len())
                    .map(|_| Samplers::default())
                    .collect(),
            ),
            shadow_ids,
            eval_ids,
        })
    }
}

impl Active {
    /// The LLM signals rollout `index` reads, if any.
    #[cfg(feature = "llm")]
    pub(super) fn llm_signals(&self, index: usize) -> Option<&canary_contract::LlmSignals> {
        self.router.rollouts().get(index)?.llm.as_ref()
    }

    /// Rollout `index`'s eval sampling, if any.
    #[cfg(feature = "llm")]
    pub(super) fn eval(&self, index: usize) -> Option<&canary_contract::EvalSampling> {
        self.router.rollouts().get(index)?.eval.as_ref()
    }

    /// The rollouts with their fallback chains, as the request path reads them.
    #[cfg(feature = "fallback")]
    pub(super) fn chains(&self) -> ChainView<'_> {
        ChainView {
            rollouts: self.router.rollouts(),
            chains: &self.fallback,
        }
    }

    /// The time a request is routed at. Routing reads it only for a raise that waits, and
    /// the lean build for nothing else: once no raise waits, any time routes the same, and
    /// `u64::MAX` saves a clock read (1.2k instructions) per request.
    #[cfg(feature = "lean")]
    pub(super) fn routing_time(&self) -> u64 {
        if self.raises_done.get() {
            return u64::MAX;
        }
        let now = now_ms();
        if self
            .router
            .raises_until_ms()
            .is_none_or(|until| now >= until)
        {
            self.raises_done.set(true);
        }
        now
    }

    /// Carries out one metric operation of rollout `rollout`.
    #[cfg(not(feature = "lean"))]
    pub(super) fn apply_op(&self, rollout: usize, op: MetricOp, version: Version) {
        self.apply_ops(rollout, [op], version);
    }

    /// Carries out rollout `rollout`'s metric operations `ops` (one borrow of the pending
    /// counts for all of them: a request's end has two).
    #[cfg(not(feature = "lean"))]
    pub(super) fn apply_ops(
        &self,
        rollout: usize,
        ops: impl IntoIterator<Item = MetricOp>,
        version: Version,
    ) {
        // Counters and latency are summed in the VM and flushed on tick.
        let Ok(mut pending) = self.pending.try_borrow_mut() else {
            return;
        };
        for op in ops {
            self.apply_pending(&mut pending, rollout, op, version);
        }
    }

    #[cfg(not(feature = "lean"))]
    fn apply_pending(
        &self,
        pending: &mut PendingCounters,
        rollout: usize,
        op: MetricOp,
        version: Version,
    ) {
        match op {
            MetricOp::Increment(m) => pending.add(rollout, version, m, 1),
            MetricOp::Add(m, delta) => pending.add(rollout, version, m, delta),
            // The LLM build's histograms: Envoy needs each sample.
            #[cfg(feature = "llm")]
            MetricOp::Record(m, v) if m.kind() != MetricKind::Buckets => {
                if let Some(id) = self.metrics.get(rollout).and_then(|ids| ids.id(version, m)) {
                    // A failed metric update is not worth failing the request over.
                    let _ = hostcalls::record_metric(id, v);
                }
            }
            MetricOp::Record(m, ms) => pending.record(rollout, version, m, ms),
        }
    }

    pub(super) fn flush_counters(&self) {
        let Ok(mut pending) = self.pending.try_borrow_mut() else {
            return;
        };
        pending.drain(|rollout, version, slot, delta| {
            if let Some(id) = (self.metrics.get(rollout)).and_then(|m| m.pending_id(version, slot))
            {
                increment(id, delta);
            }
        });
    }
}

// A configuration is dropped when it was replaced and its last request has ended, or when
// Envoy deletes the root context: hand over what was counted since the last flush.
impl Drop for Active {
    fn drop(&mut self) {
        self.flush_counters();
    }
}

/// A root's active configuration, and what the root keeps across configurations.
#[derive(Default)]
pub(super) struct Current {
    pub(super) active: Option<Rc<Active>>,
    /// Metric ids by rollout name and metric set, defined once per VM (a handful: a list
    /// is enough).
    #[cfg(not(feature = "lean"))]
    metric_ids: Vec<(String, RolloutMetrics)>,
    /// Circuit breakers by rollout name and window: they outlive configurations.
    breakers: Vec<(String, Local)>,
    #[cfg(feature = "fallback")]
    chains: ChainRoot,
}

impl Current {
    /// Makes `config` the one new requests use; with `raise_at_ms`, weights it raises over
    /// the current configuration's wait until then.
    pub(super) fn activate(
        &mut self,
        config: FilterConfig,
        raise_at_ms: Option<u64>,
    ) -> Result<(), String> {
        let rollouts = config.rollouts.len();
        #[cfg_attr(feature = "lean", allow(unused_mut))]
        let mut metrics = Vec::with_capacity(rollouts);
        // The lean build defines no stats of its own (its rollouts read the clusters').
        #[cfg(not(feature = "lean"))]
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
        let fallback = self.chains.chains(&config.rollouts)?;
        #[cfg(feature = "llm")]
        let llm = LlmParts::define(&config)?;
        let router = match (&self.active, raise_at_ms) {
            (Some(current), Some(at)) => Router::succeeding(config, &current.router, now_ms(), at),
            _ => Router::new(config),
        };
        self.active = Some(Rc::new(Active {
            pending: RefCell::new(PendingCounters::new(rollouts)),
            breaker_open_until: (0..rollouts).map(|_| Cell::new(0)).collect(),
            #[cfg(feature = "lean")]
            raises_done: Cell::new(false),
            #[cfg(feature = "fallback")]
            fallback,
            #[cfg(feature = "llm")]
            llm,
            router,
            metrics,
        }));
        // An open breaker stays open across configurations.
        self.check_breakers();
        #[cfg(feature = "fallback")]
        self.check_chains();
        Ok(())
    }

    /// Ticks the fallback chains' tier breakers (see `host::fallback`).
    #[cfg(feature = "fallback")]
    pub(super) fn check_chains(&mut self) {
        let Some(active) = self.active.clone() else {
            return;
        };
        self.chains.tick(active.chains(), &active.metrics);
    }

    /// Ticks every circuit breaker on the proxy's canary counters (see `breaker`); a trip
    /// is stored in shared data with the CAS token read, so it is stored and counted once.
    pub(super) fn check_breakers(&mut self) {
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
}
