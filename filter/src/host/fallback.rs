//! The fallback chain on the host (see `crate::fallback` and `canary_contract::fallback`):
//! the tiers' metric ids, their breakers ticked on the proxy's shared counters, the
//! per-worker gates requests read to pick a tier, and a request's way down the chain
//! (a lighter tier, a retry of a failed answer, the configured degraded response).

use std::cell::Cell;
use std::time::Duration;

use canary_contract::fallback::{
    tier_stat_name, Fallback, FallbackResponse, TierMetric, DEGRADED_HEADER, PRIMARY_TIER,
    RESPONSE_TIER,
};
use canary_contract::stats::{Metric, MetricKind};
use canary_contract::{CircuitBreaker, RolloutConfig, Version};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::Action;

use super::calls::{define_metric, increment, now_ms, shared_with_cas, Stream};
use crate::control::{decode_ms, encode_ms};
use crate::copy::{copied_headers, header_pairs, BodyCopy};
use crate::fallback::{choose, choose_retry, State, TierBreaker, TierTick};
use crate::keyed::keyed_entry;
use crate::metrics::RolloutMetrics;

/// Metric ids of one tier (0: the rollout's own service, whose requests are in
/// `canary_rq_*`; then the configured tiers; then the filter's response).
#[derive(Debug, Clone, Copy, Default)]
struct TierIds {
    rq_total: Option<u32>,
    rq_5xx: Option<u32>,
    trips: Option<u32>,
    state: Option<u32>,
}

/// One rollout's chain in one configuration.
pub(super) struct Chain {
    /// Per tier (primary first, the response last).
    ids: Vec<TierIds>,
    /// Per breaker tier (primary first): its state and this worker's probes left this tick.
    gates: Vec<Cell<(State, u32)>>,
}

impl Chain {
    /// The tier that takes a request: `Some(0)` the rollout's own service, `Some(i)`
    /// `tiers[i - 1]`, `None` the filter's response.
    /// With whether the request is a half-open tier's probe.
    fn choose(&self) -> (Option<usize>, bool) {
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
    fn choose_retry(&self, retryable: impl Fn(usize) -> bool) -> Option<usize> {
        let mut tiers: Vec<(State, u32)> = self.gates.iter().map(Cell::get).collect();
        let chosen = choose_retry(&mut tiers, retryable)?;
        if let (Some(gate), Some(tier)) = (self.gates.get(chosen), tiers.get(chosen)) {
            gate.set(*tier);
        }
        Some(chosen)
    }

    /// Counts a request sent to `tier` (its `rq_total`).
    fn count_request(&self, tier: usize) {
        if let Some(id) = self.ids.get(tier).and_then(|t| t.rq_total) {
            increment(id, 1);
        }
    }

    /// Counts a 5xx answer of `tier`, which its breaker reads.
    fn count_5xx(&self, tier: usize) {
        if let Some(id) = self.ids.get(tier).and_then(|t| t.rq_5xx) {
            increment(id, 1);
        }
    }

    /// Counts a request the filter answered itself (the response tier, last in `ids`).
    fn count_response(&self) {
        self.count_request(self.gates.len());
    }
}

/// Per rollout of one configuration: its chain, if it has one.
pub(super) struct Chains(Vec<Option<Chain>>);

/// A configuration as the request path of its chains reads it.
#[derive(Clone, Copy)]
pub(super) struct ChainView<'a> {
    pub(super) rollouts: &'a [RolloutConfig],
    pub(super) chains: &'a Chains,
}

impl<'a> ChainView<'a> {
    /// Rollout `index`'s chain in this configuration, if any.
    fn chain(self, index: usize) -> Option<&'a Chain> {
        self.chains.0.get(index)?.as_ref()
    }

    /// Rollout `index`'s fallback configuration, if any.
    fn fallback(self, index: usize) -> Option<&'a Fallback> {
        self.rollouts.get(index)?.fallback.as_ref()
    }
}

/// Per root: metric ids and breakers, kept across configurations.
#[derive(Default)]
pub(super) struct ChainRoot {
    ids: Vec<(String, Vec<TierIds>)>,
    breakers: Vec<(String, TierBreaker)>,
}

fn define(metric: TierMetric, rollout: &str, tier: &str) -> Result<Option<u32>, String> {
    let kind = match metric {
        TierMetric::BreakerState => MetricKind::Gauge,
        _ => MetricKind::Counter,
    };
    define_metric(kind, &tier_stat_name(metric, rollout, tier)).map(Some)
}

fn tiers(f: &Fallback) -> impl Iterator<Item = (&str, &CircuitBreaker)> {
    std::iter::once((PRIMARY_TIER, &f.circuit_breaker)).chain(
        f.tiers
            .iter()
            .map(|t| (t.name.as_str(), &t.circuit_breaker)),
    )
}

impl ChainRoot {
    /// The chains of a configuration's rollouts, their metrics defined once per VM.
    pub(super) fn chains(&mut self, rollouts: &[RolloutConfig]) -> Result<Chains, String> {
        rollouts
            .iter()
            .map(|r| self.chain(r))
            .collect::<Result<Vec<_>, _>>()
            .map(Chains)
    }

    fn chain(&mut self, r: &RolloutConfig) -> Result<Option<Chain>, String> {
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

    /// Ticks the tier breakers of every rollout with a chain in `view`.
    pub(super) fn tick(&mut self, view: ChainView<'_>, metrics: &[RolloutMetrics]) {
        let now = now_ms();
        for (i, r) in view.rollouts.iter().enumerate() {
            if let (Some(chain), Some(metrics)) = (view.chain(i), metrics.get(i)) {
                self.tick_rollout(r, metrics, chain, now);
            }
        }
    }

    /// Ticks every tier breaker of rollout `r` at `now`; stores a trip in shared data with
    /// the CAS token read, so it is stored and counted once per proxy.
    fn tick_rollout(
        &mut self,
        r: &RolloutConfig,
        metrics: &RolloutMetrics,
        chain: &Chain,
        now: u64,
    ) {
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
            let Some((stored, cas)) = shared_with_cas(&key) else {
                continue;
            };
            let local_key = format!("{}/{name} {}", r.name, config.window_s);
            let local = keyed_entry(&mut self.breakers, local_key, || TierBreaker::new(config));
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

/// An HTTP context's part of the chain.
#[derive(Default)]
pub(super) struct FallbackRequest {
    /// (rollout, tier, probe) when a lighter tier of the fallback chain serves the request,
    /// or it is a half-open tier's probe.
    tier: Option<(usize, usize, bool)>,
    /// A copy of a request the fallback chain may retry, while the primary answers.
    retry: Option<RetryCopy>,
    /// (rollout, tier) of the retry in flight: the answer comes to this context.
    retry_call: Option<(usize, usize)>,
}

/// A request kept for a retry down the fallback chain.
struct RetryCopy {
    rollout: usize,
    headers: Vec<(String, String)>,
    body: BodyCopy,
}

/// The chain's last resort: the configured response, marked degraded (counted as the
/// response tier's request).
fn send_degraded(chain: &Chain, r: &FallbackResponse) {
    chain.count_response();
    let mut headers: Vec<(&str, &str)> =
        vec![(DEGRADED_HEADER, "1"), ("content-type", "application/json")];
    for (name, value) in &r.headers {
        headers.retain(|(n, _)| n != name);
        headers.push((name, value));
    }
    Stream.send_http_response(u32::from(r.status), headers, Some(r.body_json.as_bytes()));
}

fn is_5xx(status: &[u8]) -> bool {
    status.first() == Some(&b'5')
}

impl FallbackRequest {
    /// Sends the request down the fallback chain when the rollout's own service's breaker
    /// is open: to the first lighter tier that takes it, else answers it with the
    /// configured degraded response. `None`: the rollout's own service serves it.
    pub(super) fn fall_back(
        &mut self,
        view: ChainView<'_>,
        index: usize,
        rollout: &RolloutConfig,
    ) -> Option<Action> {
        let chain = view.chain(index)?;
        let fallback = rollout.fallback.as_ref()?;
        let (chosen, probe) = chain.choose();
        match chosen {
            Some(0) => {
                self.tier = probe.then_some((index, 0, probe));
                None
            }
            Some(tier) => {
                let value = &fallback.tier(tier)?.route_value;
                Stream.set_http_request_header(&rollout.route_header, Some(value));
                chain.count_request(tier);
                self.tier = Some((index, tier, probe));
                Some(Action::Continue)
            }
            None => {
                send_degraded(chain, &fallback.response);
                Some(Action::Pause)
            }
        }
    }

    /// Keeps a copy of a request the rollout's own service serves, if the chain retries its
    /// method.
    pub(super) fn keep_for_retry(&mut self, index: usize, rollout: &RolloutConfig, end: bool) {
        let Some(retry) = rollout.fallback.as_ref().and_then(|f| f.retry.as_ref()) else {
            return;
        };
        let method = Stream.get_http_request_header_bytes(":method");
        if !method.is_some_and(|m| retry.allows(&m)) {
            return;
        }
        let mut body = BodyCopy::new(retry.max_request_bytes as usize);
        if end {
            body.push(0, true, || None);
        }
        self.retry = Some(RetryCopy {
            rollout: index,
            headers: copied_headers(Stream.get_http_request_headers_bytes()),
            body,
        });
    }

    /// A request body chunk passes: the retry copy takes it, up to the cap.
    #[cfg_attr(not(feature = "llm"), allow(dead_code))]
    pub(super) fn request_body(
        &mut self,
        len: usize,
        end: bool,
        read: impl FnOnce() -> Option<Vec<u8>>,
    ) {
        if let Some(copy) = self.retry.as_mut() {
            copy.body.push(len, end, read);
        }
    }

    /// The rollout's own service answered `status`: if it failed and the request may be
    /// retried, sends it to the next tier that takes it (`true`: the answer waits for the
    /// retry's) or answers with the chain's response (`true` as well).
    pub(super) fn retry_failed(&mut self, status: Option<&[u8]>, view: ChainView<'_>) -> bool {
        let Some(copy) = self.retry.take() else {
            return false;
        };
        if !status.is_some_and(is_5xx) {
            return false;
        }
        let rollout = view.rollouts.get(copy.rollout);
        let fallback = rollout.and_then(|r| r.fallback.as_ref());
        let chain = view.chain(copy.rollout);
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
            send_degraded(chain, &fallback.response);
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
    pub(super) fn tier_answered(&mut self, view: ChainView<'_>) {
        let Some((rollout, tier, probe)) = self.tier.take() else {
            return;
        };
        if probe {
            let name = view
                .fallback(rollout)
                .and_then(|f| f.tier(tier))
                .map_or(PRIMARY_TIER, |t| t.name.as_str());
            Stream.add_http_response_header("x-canary-probe", name);
        }
        if tier == 0 {
            return; // counted in `canary_rq_*`
        }
        let failed = Stream
            .get_http_response_header_bytes(":status")
            .is_some_and(|s| is_5xx(&s));
        if let (true, Some(chain)) = (failed, view.chain(rollout)) {
            chain.count_5xx(tier);
        }
    }

    /// The answer to a retry down the fallback chain: the user gets it in place of the
    /// failed one; if the tier failed too (or did not answer in time), the first answer.
    pub(super) fn retry_answered(&mut self, body_size: usize, view: Option<ChainView<'_>>) {
        let Some((rollout, tier)) = self.retry_call.take() else {
            return;
        };
        let raw = Stream.get_http_call_response_headers_bytes();
        let status = raw
            .iter()
            .find(|(k, _)| k == ":status")
            .and_then(|(_, v)| crate::metrics::parse_status(v));
        let Some(view) = view else {
            Stream.resume_http_response();
            return;
        };
        let ok = status.is_some_and(|s| s < 500);
        if !ok {
            // Counted for the tier's breaker, as if the user had been routed there.
            if let Some(chain) = view.chain(rollout) {
                chain.count_5xx(tier);
            }
            Stream.resume_http_response();
            return;
        }
        let name = view
            .fallback(rollout)
            .and_then(|f| f.tier(tier))
            .map_or("", |t| t.name.as_str());
        // Hop-by-hop headers, the length and `:status` are Envoy's to set.
        let mut headers = copied_headers(raw);
        headers.push(("x-canary-retried".to_string(), name.to_string()));
        let headers = header_pairs(&headers);
        let body = Stream.get_http_call_response_body(0, body_size);
        Stream.send_http_response(u32::from(status.unwrap_or(502)), headers, body.as_deref());
    }
}
