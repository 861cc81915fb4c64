//! proxy-wasm glue of the fallback chain (see `fallback` and `canary_contract::fallback`):
//! the tiers' metric ids, their breakers ticked on the proxy's shared counters, and the
//! per-worker gates requests read to pick a tier.

use std::cell::Cell;

use canary_contract::fallback::{
    tier_stat_name, Fallback, TierMetric, PRIMARY_TIER, RESPONSE_TIER,
};
use canary_contract::stats::{Metric, MetricKind};
use canary_contract::{CircuitBreaker, RolloutConfig, Version};
use proxy_wasm::hostcalls;

use crate::control::{decode_ms, encode_ms};
use crate::fallback::{choose, choose_retry, State, TierBreaker, TierTick};
use crate::glue::increment;
use crate::metrics::RolloutMetrics;

/// Metric ids of one tier (0: the rollout's own service, whose requests are in
/// `canary_rq_*`; then the configured tiers; then the filter's response).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TierIds {
    pub rq_total: Option<u32>,
    pub rq_5xx: Option<u32>,
    trips: Option<u32>,
    state: Option<u32>,
}

/// One rollout's chain in one configuration.
pub(crate) struct Chain {
    /// Per tier (primary first, the response last).
    pub ids: Vec<TierIds>,
    /// Per breaker tier (primary first): its state and this worker's probes left this tick.
    gates: Vec<Cell<(State, u32)>>,
}

impl Chain {
    /// The tier that takes a request: `Some(0)` the rollout's own service, `Some(i)`
    /// `tiers[i - 1]`, `None` the filter's response.
    /// With whether the request is a half-open tier's probe.
    pub fn choose(&self) -> (Option<usize>, bool) {
        let mut tiers: Vec<(State, u32)> = self.gates.iter().map(Cell::get).collect();
        let chosen = choose(&mut tiers);
        let probe = chosen
            .and_then(|i| tiers.get(i))
            .is_some_and(|(state, _)| *state == State::HalfOpen);
        for (gate, tier) in self.gates.iter().zip(tiers) {
            gate.set(tier);
        }
        (chosen, probe)
    }

    /// The lighter tier a failed request is retried on (see [`choose_retry`]); `None`: the
    /// filter's response.
    pub fn choose_retry(&self, retryable: impl Fn(usize) -> bool) -> Option<usize> {
        let mut tiers: Vec<(State, u32)> = self.gates.iter().map(Cell::get).collect();
        let chosen = choose_retry(&mut tiers, retryable)?;
        if let (Some(gate), Some(tier)) = (self.gates.get(chosen), tiers.get(chosen)) {
            gate.set(*tier);
        }
        Some(chosen)
    }

    /// Counts a request sent to `tier` (its `rq_total`).
    pub fn count_request(&self, tier: usize) {
        if let Some(id) = self.ids.get(tier).and_then(|t| t.rq_total) {
            increment(id, 1);
        }
    }

    /// Counts a 5xx answer of `tier`, which its breaker reads.
    pub fn count_5xx(&self, tier: usize) {
        if let Some(id) = self.ids.get(tier).and_then(|t| t.rq_5xx) {
            increment(id, 1);
        }
    }

    /// Counts a request the filter answered itself (the response tier, last in `ids`).
    pub fn count_response(&self) {
        self.count_request(self.gates.len());
    }
}

/// Per root: metric ids and breakers, kept across configurations.
#[derive(Default)]
pub(crate) struct ChainRoot {
    ids: Vec<(String, Vec<TierIds>)>,
    breakers: Vec<(String, TierBreaker)>,
}

fn define(metric: TierMetric, rollout: &str, tier: &str) -> Result<Option<u32>, String> {
    let kind = match metric {
        TierMetric::BreakerState => MetricKind::Gauge,
        _ => MetricKind::Counter,
    };
    crate::glue::define_metric(kind, &tier_stat_name(metric, rollout, tier)).map(Some)
}

fn tiers(f: &Fallback) -> impl Iterator<Item = (&str, &CircuitBreaker)> {
    std::iter::once((PRIMARY_TIER, &f.circuit_breaker)).chain(
        f.tiers
            .iter()
            .map(|t| (t.name.as_str(), &t.circuit_breaker)),
    )
}

impl ChainRoot {
    pub fn chain(&mut self, r: &RolloutConfig) -> Result<Option<Chain>, String> {
        let Some(f) = &r.fallback else {
            return Ok(None);
        };
        let mut key = r.name.clone();
        for (name, _) in tiers(f) {
            key.push(' ');
            key.push_str(name);
        }
        let ids = match self.ids.iter().find(|(k, _)| *k == key) {
            Some((_, ids)) => ids.clone(),
            None => {
                let mut ids = Vec::new();
                for (i, (name, _)) in tiers(f).enumerate() {
                    let served = |m| {
                        if i == 0 {
                            Ok(None)
                        } else {
                            define(m, &r.name, name)
                        }
                    };
                    ids.push(TierIds {
                        rq_total: served(TierMetric::RqTotal)?,
                        rq_5xx: served(TierMetric::Rq5xx)?,
                        trips: define(TierMetric::BreakerTrips, &r.name, name)?,
                        state: define(TierMetric::BreakerState, &r.name, name)?,
                    });
                }
                ids.push(TierIds {
                    rq_total: define(TierMetric::RqTotal, &r.name, RESPONSE_TIER)?,
                    ..TierIds::default()
                });
                self.ids.push((key, ids.clone()));
                ids
            }
        };
        Ok(Some(Chain {
            gates: (0..=f.tiers.len())
                .map(|_| Cell::new((State::Closed, 0)))
                .collect(),
            ids,
        }))
    }

    /// Ticks every tier breaker of rollout `r` at `now`; stores a trip in shared data with
    /// the CAS token read, so it is stored and counted once per proxy.
    pub fn tick(&mut self, r: &RolloutConfig, metrics: &RolloutMetrics, chain: &Chain, now: u64) {
        let Some(f) = &r.fallback else {
            return;
        };
        let read = |id: Option<u32>| {
            id.and_then(|id| hostcalls::get_metric(id).ok())
                .unwrap_or(0)
        };
        for (t, (name, config)) in tiers(f).enumerate() {
            let ids = chain.ids.get(t).copied().unwrap_or_default();
            let (requests, errors) = if t == 0 {
                // The rollout's own service: its stable and canary answers together.
                let sum = |m| {
                    Version::ALL
                        .iter()
                        .map(|&v| read(metrics.id(v, m)))
                        .fold(0u64, u64::saturating_add)
                };
                (sum(Metric::RqTotal), sum(Metric::Rq5xx))
            } else {
                (read(ids.rq_total), read(ids.rq_5xx))
            };
            let key = format!("wasm-canary/tier/{}/{name}", r.name);
            let Some((stored, cas)) = crate::glue::shared_with_cas(&key) else {
                continue;
            };
            let local_key = format!("{}/{name} {}", r.name, config.window_s);
            let local = crate::keyed::keyed_entry(&mut self.breakers, local_key, || {
                TierBreaker::new(config)
            });
            let tick = local.tick(
                config,
                f.half_open_probes,
                now,
                requests,
                errors,
                decode_ms(stored.as_deref()).unwrap_or(0),
            );
            if let TierTick::Trip { open_until_ms } = tick {
                if hostcalls::set_shared_data(&key, Some(&encode_ms(open_until_ms)), Some(cas))
                    .is_ok()
                {
                    local.opened(open_until_ms);
                    log::warn!(
                        "wasm-canary: {}: tier {name} circuit breaker open for {}s",
                        r.name,
                        config.open_s
                    );
                    if let Some(id) = ids.trips {
                        increment(id, 1);
                    }
                }
            }
            let state = local.state(now);
            if let Some(gate) = chain.gates.get(t) {
                gate.set((state, u32::from(state == State::HalfOpen)));
            }
            if let Some(id) = ids.state {
                let _ = hostcalls::record_metric(id, state.gauge());
            }
        }
    }
}
