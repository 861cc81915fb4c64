//! Whether one source's reading could have been counted by a filter at all. A reading that
//! could not (a NaN or negative bucket bound, buckets going down, a `+Inf` bucket other than
//! the count, a NaN `_sum`, more 5xx than requests, more agreeing shadow answers than
//! compared ones) is refused for that source, as an unreadable one is, so it never reaches a
//! window: one `le="-NaN"` bucket made a canary 10× slower pass.

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
