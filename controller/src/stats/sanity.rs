//! Whether one source's reading could have been counted by a filter at all. A reading that
//! could not (a NaN or negative bucket bound, two buckets of one bound, buckets going down, a
//! `+Inf` bucket other than the count, a NaN `_sum`, a duration sum below what its buckets
//! hold, more 5xx than requests, more agreeing shadow answers than compared ones) is refused
//! for that source, as an unreadable one is, so it never reaches a window: one `le="-NaN"`
//! bucket made a canary 10× slower pass. The duration's bucket counters are made cumulative
//! by the parser (so they cannot go down, and their total is the count); Envoy's histograms
//! (the LLM time to first token) come cumulative and are checked as they come.

use canary_contract::stats::Metric;
use canary_contract::Version;

use super::{Histogram, RolloutStats, StatsError};

/// `Ok` if `stats` (one source, cumulative) is consistent; else what is wrong with it.
pub(crate) fn check(stats: &RolloutStats, rollout: &str) -> Result<(), StatsError> {
    inconsistency(stats).map_or(Ok(()), |reason| {
        Err(StatsError::Inconsistent {
            rollout: rollout.to_string(),
            reason,
        })
    })
}

fn inconsistency(stats: &RolloutStats) -> Option<String> {
    for version in Version::ALL {
        let v = stats.version(version);
        let at = version.as_str();
        if v.rq_5xx > v.requests {
            return Some(format!(
                "{at}: {} 5xx answers of {} requests",
                v.rq_5xx, v.requests
            ));
        }
        for (name, h) in [
            (Metric::RqTimeMs.name(), &v.duration),
            (Metric::LlmTtftMs.name(), &v.llm.ttft),
        ] {
            if let Some(why) = histogram(h) {
                return Some(format!("{at}: {name}: {why}"));
            }
        }
        if let Some(why) = sum_below_buckets(&v.duration) {
            return Some(format!("{at}: {}: {why}", Metric::RqTimeMs.name()));
        }
    }
    let s = &stats.shadow;
    for (name, agree) in [
        ("agree", s.agree),
        ("agree_status", s.agree_status),
        ("agree_structure", s.agree_structure),
        ("agree_text", s.agree_text),
    ] {
        if agree > s.compared {
            return Some(format!(
                "shadow: {agree} answers {name} of {} compared (over 100%)",
                s.compared
            ));
        }
    }
    for (tier, t) in &stats.tiers {
        if t.rq_5xx > t.requests {
            return Some(format!(
                "tier {tier}: {} 5xx answers of {} requests",
                t.rq_5xx, t.requests
            ));
        }
    }
    None
}

/// A sum of samples below the least its buckets allow (each sample above the bound below
/// its bucket). Only for the filter's own bucket counters, which count exact samples: the
/// filter adds a sample to the sum before its bucket, and Envoy prints the buckets before
/// the sum, so a reading taken mid-update has the sum ahead, never behind. (Envoy's
/// histograms place samples in approximate bins.)
fn sum_below_buckets(h: &Histogram) -> Option<String> {
    let mut least = 0.0;
    let mut lower = (0.0, 0u64);
    for &(bound, cumulative) in &h.buckets {
        least += lower.0 * cumulative.saturating_sub(lower.1) as f64;
        lower = (bound, cumulative);
    }
    (h.sum_ms < least * (1.0 - 1e-9)).then(|| {
        format!(
            "_sum is {} ms, its buckets hold at least {least} ms",
            h.sum_ms
        )
    })
}

/// What is wrong with a cumulative histogram whose buckets are sorted by bound, if anything.
fn histogram(h: &Histogram) -> Option<String> {
    if !(h.sum_ms.is_finite() && h.sum_ms >= 0.0) {
        return Some(format!("_sum is {}", h.sum_ms));
    }
    let mut previous: Option<(f64, u64)> = None;
    for &(bound, cumulative) in &h.buckets {
        if bound.is_nan() || bound < 0.0 {
            return Some(format!("a bucket bound le=\"{bound}\""));
        }
        if let Some((before, below)) = previous {
            if bound == before {
                return Some(format!("two buckets le=\"{bound}\""));
            }
            if cumulative < below {
                return Some(format!(
                    "buckets go down: le=\"{before}\" holds {below}, le=\"{bound}\" {cumulative}"
                ));
            }
        }
        if cumulative > h.count {
            return Some(format!(
                "bucket le=\"{bound}\" holds {cumulative} of {} samples",
                h.count
            ));
        }
        previous = Some((bound, cumulative));
    }
    match h.buckets.last() {
        Some(&(bound, all)) if bound == f64::INFINITY && all != h.count => Some(format!(
            "the +Inf bucket holds {all}, the count is {}",
            h.count
        )),
        _ => None,
    }
}
