//! Unit tests of the LLM score checks ([`super::score_evidence`]): quality, eval and task
//! success over a stage, on the helpers of [`super::llm_tests`].

use super::llm_tests::{find, quality, score_spec, stage_with, window, Rng};
use super::{CheckResult, Outcome, Worse};
use crate::judge::{judge, Evidence};
use crate::spec::RolloutSpec;
use crate::stats::{LlmStats, QualityStats, RolloutStats};

/// (signal, canary mean, canary n, stable mean, stable n, score?, check, windows, expected)
type QualityRow<'a> = (
    &'a str,
    f64,
    u64,
    f64,
    u64,
    bool,
    &'a str,
    usize,
    Option<Outcome>,
);

/// A score check over up to `windows` windows of one stage: its first failure, or its
/// result after the last window.
fn score_over_stage(
    spec: &RolloutSpec,
    windows: usize,
    check: &str,
    mut next: impl FnMut() -> RolloutStats,
) -> Option<CheckResult> {
    let mut evidence = Evidence::default();
    let mut last = None;
    for _ in 0..windows {
        let v = judge(&next(), &evidence, spec);
        evidence = Evidence::clone(&v.evidence);
        last = find(&v, check).cloned();
        if last.as_ref().is_some_and(|c| c.outcome == Outcome::Fail) {
            break;
        }
    }
    last
}

#[test]
fn quality_and_task_success_table() {
    use Outcome::*;
    let spec = score_spec();
    // (signal, canary mean, canary n, stable mean, stable n, score?, check, windows, expected)
    let table: &[QualityRow] = &[
        // Quality: 5% below stable fails; halfway (2.5%) or better passes.
        (
            "helpful",
            0.80,
            300,
            0.90,
            2_700,
            true,
            "quality_helpful",
            40,
            Some(Fail),
        ),
        (
            "helpful",
            0.89,
            300,
            0.90,
            2_700,
            true,
            "quality_helpful",
            40,
            Some(Pass),
        ),
        (
            "helpful",
            0.80,
            10,
            0.90,
            2_700,
            true,
            "quality_helpful",
            2,
            Some(Inconclusive),
        ),
        (
            "helpful",
            0.95,
            300,
            0.90,
            2_700,
            true,
            "quality_helpful",
            40,
            Some(Pass),
        ),
        // Task success: absolute minimum 0.90, confidently below fails.
        (
            "task_success",
            0.75,
            300,
            0.95,
            2_700,
            false,
            "task_success_rate",
            40,
            Some(Fail),
        ),
        (
            "task_success",
            0.97,
            300,
            0.97,
            2_700,
            false,
            "task_success_rate",
            40,
            Some(Pass),
        ),
        (
            "task_success",
            0.80,
            10,
            0.95,
            2_700,
            false,
            "task_success_rate",
            2,
            Some(Inconclusive),
        ),
        // Task success is not judged as a relative score.
        (
            "task_success",
            0.75,
            300,
            0.95,
            2_700,
            false,
            "quality_task_success",
            40,
            None,
        ),
        // Eval scores: 10% below stable fails (seed 002), not the quality check's 5%.
        (
            "eval",
            0.60,
            60,
            0.90,
            500,
            true,
            "eval_score",
            40,
            Some(Fail),
        ),
        (
            "eval",
            0.78,
            200,
            0.90,
            2_000,
            true,
            "eval_score",
            40,
            Some(Fail),
        ),
        (
            "eval",
            0.87,
            200,
            0.90,
            2_000,
            true,
            "eval_score",
            40,
            Some(Pass),
        ),
        (
            "eval",
            0.60,
            10,
            0.90,
            500,
            true,
            "eval_score",
            1,
            Some(Inconclusive),
        ),
        ("eval", 0.60, 60, 0.90, 500, true, "quality_eval", 40, None),
        // A signal no quality header records is not judged.
        (
            "other",
            0.10,
            300,
            0.90,
            2_700,
            true,
            "quality_other",
            40,
            None,
        ),
    ];
    for (i, &(signal, cm, cn, sm, sn, score, check, windows, want)) in table.iter().enumerate() {
        let mut rng = Rng(99 + i as u64);
        let got = score_over_stage(&spec, windows, check, || {
            let mut c = LlmStats::default();
            let mut s = LlmStats::default();
            c.quality
                .insert(signal.into(), quality(&mut rng, cn, cm, score));
            s.quality
                .insert(signal.into(), quality(&mut rng, sn, sm, score));
            window(c, s)
        });
        assert_eq!(got.as_ref().map(|r| r.outcome), want, "row {i}: {got:?}");
        if let Some(r) = got {
            assert_eq!(r.worse, Some(Worse::Lower));
            assert!(r.canary_n.is_some_and(|n| n >= cn && n % cn == 0), "{r:?}");
            if r.outcome != Inconclusive {
                // Sequential, like the request checks: a failure is decisive.
                let s = r.sequential.expect("a sequential test");
                assert_eq!(
                    r.outcome == Fail,
                    s.e_value >= s.threshold,
                    "row {i}: {s:?}"
                );
            }
        }
    }
    // Too few eval scores is reported, but does not hold the stage (not required).
    let mut c = LlmStats::default();
    let mut s = LlmStats::default();
    let mut rng = Rng(7);
    c.quality
        .insert("eval".into(), quality(&mut rng, 5, 0.5, true));
    s.quality
        .insert("eval".into(), quality(&mut rng, 50, 0.9, true));
    let v = stage_with(&spec, 1, || window(c.clone(), s.clone()));
    let eval = find(&v, "eval_score").expect("eval_score reported");
    assert_eq!(eval.outcome, Outcome::Inconclusive);
    assert!(eval.reason.contains("not required"), "{}", eval.reason);
    // A canary at 0.88 success with only 40 samples is not confidently below 0.90.
    let mut c = LlmStats::default();
    c.quality.insert(
        "task_success".into(),
        QualityStats {
            count: 40,
            sum_milli: 35_000,
            sumsq_micro: 35_000_000,
        },
    );
    let v = stage_with(&spec, 1, || window(c.clone(), LlmStats::default()));
    let ts = find(&v, "task_success_rate").map(|c| c.outcome);
    assert_eq!(ts, Some(Outcome::Pass), "{}", v.summary());
}

/// The score checks' error budget: over long stages of identical scores, no check comes
/// near its threshold (they are sequential, so looking every window costs nothing).
#[test]
fn identical_scores_pass_long_stages() {
    let spec = score_spec();
    let mut rng = Rng(42);
    let mut evidence = Evidence::default();
    let mut most = 0f64;
    for _ in 0..500 {
        let mut c = LlmStats::default();
        let mut s = LlmStats::default();
        for (signal, mean, score) in [
            ("helpful", 0.8, true),
            ("task_success", 0.95, false),
            ("eval", 0.7, true),
        ] {
            c.quality
                .insert(signal.into(), quality(&mut rng, 40, mean, score));
            s.quality
                .insert(signal.into(), quality(&mut rng, 360, mean, score));
        }
        let v = judge(&window(c, s), &evidence, &spec);
        for name in ["quality_helpful", "task_success_rate", "eval_score"] {
            let check = find(&v, name).unwrap_or_else(|| panic!("{name} judged"));
            assert_ne!(check.outcome, Outcome::Fail, "{}", check.reason);
            let t = check.sequential.as_ref().expect("sequential");
            most = most.max(t.e_value / t.threshold);
        }
        evidence = Evidence::clone(&v.evidence);
    }
    assert!(most < 0.05, "an e-value reached {most} of its threshold");
}
