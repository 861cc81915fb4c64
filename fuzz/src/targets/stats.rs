//! The controller's stats path: both parsers (Envoy's `/stats/prometheus` text, a
//! Prometheus `/api/v1/query` answer), the window over successive readings, the judge and
//! the state machine behind them.

use std::sync::OnceLock;

use canary_contract::Version;
use canary_controller::judge::{judge, Verdict};
use canary_controller::machine::{Input as MachineInput, RolloutState};
use canary_controller::spec::RolloutSpec;
use canary_controller::stats::window::{ReadError, Reading, Window, Windower};
use canary_controller::stats::{
    parse_envoy_prometheus, parse_prometheus_query, parse_prometheus_query_per_instance, Histogram,
    RolloutStats, StatsError,
};

use super::published::assert_effects;
use crate::input::Input;
use crate::Target;

pub const TARGET: Target = Target {
    name: "stats",
    about: "two fuzzed readings (Envoy text or a Prometheus query answer) through the \
            parser, the windower (later minus earlier, counter resets included), the judge \
            and RolloutState::step: a refusal says why; an accepted reading has finite \
            sums and errors within requests; a window is the readings' difference; every \
            verdict gives reasons and p-values in [0, 1]; what the machine publishes is valid",
    run,
    // Two readings of a Prometheus answer for two Envoys take ~24 KiB.
    max_len: 32 * 1024,
    dict: DICT,
};

const DICT: &[&str] = &[
    "# TYPE canary_rq_total counter\n",
    "# TYPE canary_rq_time_ms_in_bucket counter\n",
    "canary_rq_total",
    "canary_rq_2xx",
    "canary_rq_5xx",
    "canary_rq_reset",
    "canary_rq_time_ms_in_bucket",
    "canary_rq_time_ms_sum",
    "canary_breaker_trips",
    "canary_breaker_open",
    "canary_llm_responses",
    "canary_llm_cost_nanousd",
    "canary_llm_ttft_ms_bucket",
    "canary_llm_ttft_ms_count",
    "canary_quality_helpful_count",
    "canary_shadow_compared",
    "canary_shadow_agree",
    "canary_tier_rq_total",
    "canary_tier_breaker_state",
    "{rollout=\"shop\",version=\"canary\"}",
    "{rollout=\"shop\",version=\"stable\"}",
    "{rollout=\"chat\",version=\"canary\"}",
    "{rollout=\"chat\",version=\"stable\"}",
    ",le=\"+Inf\"",
    ",le=\"-NaN\"",
    ",le=\"10\"",
    ",upper_us=\"550\"",
    ",upper_us=\"inf\"",
    ",upper_us=\"1.5\"",
    "\"upper_us\":\"10000\"",
    ",tier=\"lite\"",
    "\"__name__\":",
    "\"instance\":\"e1\"",
    "\"value\":[1,\"",
    "{\"status\":\"success\",\"data\":{\"result\":[",
    "\"le\":\"+Inf\"",
    " 18446744073709551616",
    " 18446744073709551615",
    " NaN",
    " -1",
    " 1e308",
    " 0",
    "\n",
    "\u{0}",
];

/// The specs the readings are judged under (chosen by the input's first byte): the
/// defaults, an LLM rollout with odd latency quantiles, one with a shadow phase.
const SPECS: [&str; 3] = [
    "name: shop\nsources: {envoy_admin: [\"http://127.0.0.1:9901\"]}\n",
    "name: chat\nsources: {envoy_admin: [\"http://127.0.0.1:9901\"]}\n\
     stages: [{weight_pct: 1, min_requests: 10}, {weight_pct: 50, hold: 1s}, {weight_pct: 100}]\n\
     analysis: {interval: 1s, failure_limit: 2, min_window_requests: 1}\n\
     checks: {latency: [{quantile: 0.5, max_relative_increase: 1.1}, \
                        {quantile: 0.999, max_relative_increase: 100}]}\n\
     filter: {llm: {}}\n",
    "name: chat\nsources: {envoy_admin: [\"http://127.0.0.1:9901\"]}\n\
     filter: {llm: {}}\n\
     shadow: {copy: {cluster: candidate, sample_bp: 5000}, hold: 1s, min_compared: 10, \
              failure_limit: 2}\n",
];

fn specs() -> &'static [RolloutSpec] {
    static SPECS_PARSED: OnceLock<Vec<RolloutSpec>> = OnceLock::new();
    SPECS_PARSED.get_or_init(|| super::published::parse_specs(&SPECS))
}

/// Input: a flags byte (bit 0: Prometheus query answers, else Envoy text; bits 1–2: the
/// spec), then the earlier reading, a NUL, the later one. The rounds read them in the order
/// earlier, later, earlier, later: two windows of the difference, one of a counter reset.
fn run(data: &[u8]) {
    let mut input = Input::new(data);
    let flags = input.byte();
    let spec = &specs()[usize::from(flags >> 1) % SPECS.len()];
    let prometheus = flags & 1 != 0;
    let earlier = input.field(0).unwrap_or_default();
    let later = input.rest();

    let read = |body: &[u8]| {
        if prometheus {
            read_prometheus(body, &spec.name)
        } else {
            read_envoy(body, &spec.name)
        }
    };
    let (first, second) = (read(earlier), read(later));
    let mut windower = Windower::default();
    let (mut state, effects) = RolloutState::start(spec, 0);
    assert_effects(spec, &state, &effects);
    let mut previous: Option<&[Reading]> = None;
    for (round, readings) in [&first, &second, &first, &second].into_iter().enumerate() {
        let window = windower.close(readings.clone());
        assert_window(&window, previous, readings);
        previous = Some(readings);

        let verdict = judge(&window.stats, &state.evidence, spec);
        assert_verdict(&verdict, &window.stats);
        let now = (round as u64 + 1) * 60_000;
        let step = match spec.shadow {
            Some(_) => MachineInput::ShadowWindow(verdict, window.stats.shadow.clone()),
            None => MachineInput::Analysis(verdict),
        };
        let (next, effects) = state
            .step(spec, step, now)
            .unwrap_or_else(|e| panic!("a window refused by the machine: {e}"));
        assert_effects(spec, &next, &effects);
        state = next;
    }
}

/// One Envoy's text, as `sources/envoy_admin.rs` reads it (the body decoded lossily).
fn read_envoy(body: &[u8], rollout: &str) -> Vec<Reading> {
    let text = String::from_utf8_lossy(body);
    let result = parse_envoy_prometheus(&text, rollout);
    if let Ok(stats) = &result {
        assert_reading(stats);
    }
    vec![Reading {
        source: "envoy".into(),
        result: result.map_err(refusal),
    }]
}

/// One query answer, as `sources/prometheus.rs` reads it: a reading per instance, or one
/// error for the whole answer.
fn read_prometheus(body: &[u8], rollout: &str) -> Vec<Reading> {
    let all = parse_prometheus_query(body, rollout);
    match parse_prometheus_query_per_instance(body, rollout) {
        Ok(per_instance) => {
            // The all-or-nothing form agrees with the per-instance one.
            match &all {
                Ok(map) => {
                    assert_eq!(map.len(), per_instance.len());
                    for (instance, stats) in map {
                        assert_eq!(per_instance.get(instance), Some(&Ok(stats.clone())));
                    }
                }
                Err(_) => assert!(per_instance.values().any(Result::is_err)),
            }
            per_instance
                .into_iter()
                .map(|(instance, result)| {
                    if let Ok(stats) = &result {
                        assert_reading(stats);
                    }
                    Reading {
                        source: format!("prometheus/{instance}"),
                        result: result.map_err(refusal),
                    }
                })
                .collect()
        }
        Err(e) => {
            assert_eq!(all, Err(e.clone()), "the two forms refuse differently");
            vec![Reading {
                source: "prometheus".into(),
                result: Err(refusal(e)),
            }]
        }
    }
}

/// A refused reading says why: a known reason for the source error metric, and a message.
fn refusal(e: StatsError) -> ReadError {
    let error = ReadError::from(e);
    assert!(
        ["unparsable", "missing_series", "invalid"].contains(&error.reason),
        "unknown reason {}",
        error.reason
    );
    assert!(!error.message.is_empty(), "a refusal without a message");
    error
}

/// An accepted reading (one source, cumulative) is one a filter could have counted.
fn assert_reading(stats: &RolloutStats) {
    for version in Version::ALL {
        let v = stats.version(version);
        assert!(
            v.rq_5xx <= v.requests,
            "{version:?}: {} 5xx of {} requests accepted",
            v.rq_5xx,
            v.requests
        );
        assert_histogram(&v.duration);
        assert_histogram(&v.llm.ttft);
    }
    let s = &stats.shadow;
    for agree in [s.agree, s.agree_status, s.agree_structure, s.agree_text] {
        assert!(agree <= s.compared, "shadow agreement over 100% accepted");
    }
    for (tier, t) in &stats.tiers {
        assert!(
            t.rq_5xx <= t.requests,
            "tier {tier}: more 5xx than requests"
        );
    }
}

fn assert_histogram(h: &Histogram) {
    assert!(
        h.sum_ms.is_finite() && h.sum_ms >= 0.0,
        "_sum {} accepted",
        h.sum_ms
    );
    let mut below = 0;
    for &(bound, cumulative) in &h.buckets {
        assert!(!bound.is_nan() && bound >= 0.0, "bound {bound} accepted");
        assert!(cumulative >= below, "buckets going down accepted");
        assert!(cumulative <= h.count, "a bucket over the count accepted");
        below = cumulative;
    }
}

/// A window counts each source that was read twice in a row without a reset, as the
/// difference of its readings, and says why about every other.
fn assert_window(window: &Window, previous: Option<&[Reading]>, readings: &[Reading]) {
    assert_eq!(window.sources_total, readings.len());
    assert!(window.sources_counted <= window.sources_total);
    let mut expected = RolloutStats::default();
    let mut counted = 0;
    for now in readings {
        let before = previous
            .and_then(|p| p.iter().find(|r| r.source == now.source))
            .and_then(|r| r.result.as_ref().ok());
        if let (Ok(now), Some(before)) = (&now.result, before) {
            if let Some(delta) = now.minus(before) {
                expected = expected.plus(&delta);
                counted += 1;
            }
        }
    }
    assert_eq!(window.sources_counted, counted, "{:?}", window.notes);
    assert_eq!(
        window.stats, expected,
        "the window is not the readings' difference"
    );
    assert!(
        window.notes.len() >= window.sources_total - window.sources_counted,
        "a source left out without a note: {:?}",
        window.notes
    );
}

fn assert_verdict(verdict: &Verdict, window: &RolloutStats) {
    assert_eq!(verdict.canary_requests, window.canary.requests);
    assert_eq!(verdict.stable_requests, window.stable.requests);
    assert!(!verdict.checks.is_empty(), "a verdict without checks");
    for check in &verdict.checks {
        assert!(!check.reason.is_empty(), "{}: no reason", check.check);
        if let Some(p) = check.p_value {
            assert!((0.0..=1.0).contains(&p), "{}: p = {p}", check.check);
        }
        if let Some(test) = &check.sequential {
            assert!(
                test.e_value >= 0.0 && test.threshold > 0.0,
                "{}: e = {}, threshold {}",
                check.check,
                test.e_value,
                test.threshold
            );
        }
    }
    // The verdict's reason: the checks that decided it.
    assert!(
        verdict.checks.iter().any(|c| c.outcome == verdict.outcome),
        "no check gives the outcome: {}",
        verdict.summary()
    );
}
