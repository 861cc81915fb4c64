//! Unit tests of the LLM checks ([`super::llm_evidence`], [`super::score_evidence`]), in
//! their own file for the size of their tables.

use super::{CheckResult, Outcome, Worse};
use crate::judge::{judge, Evidence, Verdict};
use crate::spec::RolloutSpec;
use crate::stats::{Histogram, VersionStats};
use crate::stats::{LlmStats, QualityStats, RolloutStats};
use canary_contract::stats::cost_sumsq_micro_usd2;

/// ((canary bad, n), (stable bad, n), expected)
type ProportionRow = ((u64, u64), (u64, u64), Option<Outcome>);
/// (canary ms, n, stable ms, n, windows, expected)
type TtftRow = (f64, u64, f64, u64, usize, Option<Outcome>);

/// A repeatable PRNG (xorshift) giving values in 0..1.
pub(super) struct Rng(pub(super) u64);
impl Rng {
    pub(super) fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// `n` answers of about `output_tokens` (±40%) at $15/Mtok output, $3/Mtok input
/// (100 input tokens), of which `refusals` refused: the counters as the filter keeps them.
fn answers(rng: &mut Rng, n: u64, output_tokens: f64, refusals: u64) -> LlmStats {
    let mut l = LlmStats {
        responses: n,
        refusals,
        ..LlmStats::default()
    };
    for _ in 0..n {
        let out = (output_tokens * (0.6 + 0.8 * rng.next())).round() as u64;
        let cost = 100 * 3_000 + out * 15_000;
        l.input_tokens += 100;
        l.output_tokens += out;
        l.cost_nanousd += cost;
        l.cost_sumsq_microusd2 += cost_sumsq_micro_usd2(cost);
    }
    l
}

/// `n` quality samples, each 1 with probability `mean` (or the score itself if `score`).
pub(super) fn quality(rng: &mut Rng, n: u64, mean: f64, score: bool) -> QualityStats {
    let mut q = QualityStats::default();
    for _ in 0..n {
        let v = if score {
            (mean + 0.2 * (rng.next() - 0.5)).clamp(0.0, 1.0)
        } else if rng.next() < mean {
            1.0
        } else {
            0.0
        };
        let milli = (v * 1_000.0).round() as u64;
        q.count += 1;
        q.sum_milli += milli;
        q.sumsq_micro += milli * milli;
    }
    q
}

pub(super) fn window(canary: LlmStats, stable: LlmStats) -> RolloutStats {
    let version = |llm: LlmStats| VersionStats {
        requests: 1_000,
        rq_2xx: 1_000,
        duration: ttft(20.0, 1_000),
        llm,
        ..VersionStats::default()
    };
    RolloutStats {
        canary: version(canary),
        stable: version(stable),
        ..RolloutStats::default()
    }
}

/// A spec whose filter reads LLM answers, every check at its default.
fn llm_spec() -> RolloutSpec {
    RolloutSpec::from_yaml(
        "name: t\nsources: {envoy_admin: [\"http://127.0.0.1:1\"]}\nfilter: {llm: {}}\n",
    )
    .expect("a valid spec")
}

/// A spec whose filter reads LLM answers with two quality headers (`helpful` and task
/// success) and samples evals: every score check judged.
pub(super) fn score_spec() -> RolloutSpec {
    RolloutSpec::from_yaml(
        "name: t\nsources: {envoy_admin: [\"http://127.0.0.1:1\"]}\nfilter:\n  llm:\n    \
         quality_headers:\n      - {header: x-helpful, signal: helpful}\n      - {header: x-task, \
         signal: task_success}\n  eval: {cluster: evaluator, sample_bp: 100}\n",
    )
    .expect("a valid spec")
}

/// The verdict on the last of `windows` windows of one stage, each from `next`.
pub(super) fn stage_with(
    spec: &RolloutSpec,
    windows: usize,
    mut next: impl FnMut() -> RolloutStats,
) -> Verdict {
    let mut evidence = Evidence::default();
    let mut last = None;
    for _ in 0..windows {
        let v = judge(&next(), &evidence, spec);
        evidence = Evidence::clone(&v.evidence);
        last = Some(v);
    }
    last.expect("at least one window")
}

fn stage(windows: usize, next: impl FnMut() -> RolloutStats) -> Verdict {
    stage_with(&llm_spec(), windows, next)
}

/// The LLM checks of a stage of one window, and whether the verdict is critical.
fn run(w: &RolloutStats) -> (Vec<CheckResult>, bool) {
    let v = stage(1, || w.clone());
    (v.checks.into_iter().skip(4).collect(), v.critical)
}

fn outcome_of(w: &RolloutStats, check: &str) -> Option<Outcome> {
    run(w)
        .0
        .iter()
        .find(|c| c.check == check)
        .map(|c| c.outcome)
}

/// A check's result in the verdict.
pub(super) fn find<'a>(v: &'a Verdict, check: &str) -> Option<&'a CheckResult> {
    v.checks.iter().find(|c| c.check == check)
}

#[test]
fn cost_table() {
    use Outcome::*;
    // (canary output tokens, canary n, stable n per window, windows, expected)
    let table: &[(f64, u64, u64, usize, Option<Outcome>)] = &[
        (400.0, 200, 1_800, 20, Some(Pass)),       // equal
        (460.0, 200, 1_800, 20, Some(Pass)),       // +14%: under the null's 1.25×
        (800.0, 200, 1_800, 20, Some(Fail)),       // 2× tokens ≈ 1.9× cost
        (800.0, 60, 540, 30, Some(Fail)),          // also with less traffic
        (1_400.0, 200, 1_800, 6, Some(Fail)),      // ≈ 3.3×, a runaway: within minutes
        (800.0, 20, 1_800, 2, Some(Inconclusive)), // 40 canary responses < 50
    ];
    for (i, &(tokens, nc, ns, windows, want)) in table.iter().enumerate() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 + i as u64);
        let v = stage(windows, || {
            window(
                answers(&mut rng, nc, tokens, 0),
                answers(&mut rng, ns, 400.0, 0),
            )
        });
        let c = find(&v, "cost_per_response").expect("cost checked");
        assert_eq!(Some(c.outcome), want, "row {i}: {}", c.reason);
        assert_eq!(v.critical, want == Some(Fail), "row {i}: {}", c.reason);
        let n = windows as u64;
        assert_eq!((c.canary_n, c.stable_n), (Some(nc * n), Some(ns * n)));
        assert_eq!(c.worse, Some(Worse::Higher));
        assert!(c.sequential.is_some(), "row {i}");
        if want == Some(Fail) {
            assert!(c.reason.contains("worse than stable"), "{}", c.reason);
        }
    }
    // No prices: no cost check at all.
    let mut free = LlmStats {
        responses: 500,
        ..LlmStats::default()
    };
    free.output_tokens = 1_000;
    assert_eq!(
        outcome_of(&window(free.clone(), free), "cost_per_response"),
        None
    );
    // Nor without `filter.llm`: the filter reads no answers, and no budget is spent.
    let mut rng = Rng(3);
    let w = window(
        answers(&mut rng, 200, 1_400.0, 0),
        answers(&mut rng, 1_800, 400.0, 0),
    );
    let plain = stage_with(&super::test_support::default_spec(), 3, || w.clone());
    assert!(find(&plain, "cost_per_response").is_none());
}

#[test]
fn identical_costs_pass_a_whole_stage() {
    // 100 stages of 48 windows (a day at 30 minutes... or 24 minutes at 30 s): identical
    // costs never reach the bar, however often they are looked at.
    let mut rng = Rng(42);
    let mut failures = 0;
    for _ in 0..100 {
        let v = stage(48, || {
            window(
                answers(&mut rng, 100, 400.0, 0),
                answers(&mut rng, 900, 400.0, 0),
            )
        });
        if find(&v, "cost_per_response").map(|c| c.outcome) == Some(Outcome::Fail) {
            failures += 1;
        }
    }
    assert_eq!(failures, 0);
}

#[test]
fn refusal_table() {
    use Outcome::*;
    // (canary refused/answers, stable refused/answers per window, windows, expected)
    let table: &[(ProportionRow, usize)] = &[
        (((40, 200), (18, 1_800), Some(Fail)), 4),   // 20% vs 1%
        (((2, 200), (18, 1_800), Some(Pass)), 30),   // equal
        (((3, 200), (18, 1_800), Some(Pass)), 30),   // 1.5%: under the null's 1.5×
        (((5, 200), (18, 1_800), Some(Fail)), 30),   // 2.5%: over 2×, over a stage
        (((60, 1_000), (90, 9_000), Some(Fail)), 4), // 6% vs 1% with more data
        (((10, 20), (18, 1_800), Some(Inconclusive)), 2),
        (((0, 0), (0, 0), None), 2), // no LLM answers: not checked
    ];
    for (i, &((c, s, want), windows)) in table.iter().enumerate() {
        let mut rng = Rng(7 + i as u64);
        let v = stage(windows, || {
            window(
                answers(&mut rng, c.1, 400.0, c.0),
                answers(&mut rng, s.1, 400.0, s.0),
            )
        });
        let got = find(&v, "refusal_rate");
        assert_eq!(got.map(|r| r.outcome), want, "row {i}: {got:?}");
        if let Some(r) = got.filter(|r| r.outcome != Inconclusive) {
            let n = windows as u64;
            let totals = format!("({}/{})", c.0 * n, c.1 * n);
            assert!(r.reason.contains(&totals), "{}", r.reason);
        }
    }
}

#[test]
fn thumbs_down_table() {
    use Outcome::*;
    // ((canary up, down), (stable up, down) per window, windows, expected)
    let table: &[(ProportionRow, usize)] = &[
        (((70, 30), (950, 50), Some(Fail)), 4), // 30% vs 5%
        (((95, 5), (950, 50), Some(Pass)), 20), // equal
        (((10, 5), (950, 50), Some(Inconclusive)), 1),
        (((0, 0), (0, 0), None), 2), // no feedback: not checked
    ];
    let fb = |(up, down): (u64, u64)| LlmStats {
        feedback_up: up,
        feedback_down: down,
        ..LlmStats::default()
    };
    for (i, &((c, s, want), windows)) in table.iter().enumerate() {
        // Ratings reach `/feedback` for any service: no `filter.llm` needed.
        let spec = super::test_support::default_spec();
        let v = stage_with(&spec, windows, || window(fb(c), fb(s)));
        let got = find(&v, "thumbs_down_rate");
        assert_eq!(got.map(|r| r.outcome), want, "row {i}: {got:?}");
    }
    // The absolute ceiling (seed 002's 5%) when configured: the canary alone past it.
    let mut spec = llm_spec();
    spec.checks.llm.thumbs_down.max_absolute = Some(0.05);
    let v = stage_with(&spec, 6, || window(fb((880, 120)), fb((9_700, 300))));
    let r = find(&v, "thumbs_down_rate_absolute").expect("the ceiling is checked");
    assert_eq!(r.outcome, Outcome::Fail, "{}", r.reason);
    assert!(
        r.reason.contains("above the absolute limit"),
        "{}",
        r.reason
    );
    // Stable as far past it: an incident, not the canary's doing.
    let v = stage_with(&spec, 10, || window(fb((880, 120)), fb((8_800, 1_200))));
    let r = find(&v, "thumbs_down_rate_absolute").expect("the ceiling is checked");
    assert_eq!(r.outcome, Outcome::Pass, "{}", r.reason);
}

/// `n` first-token times of `ms` each, in Envoy's default buckets.
fn ttft(ms: f64, n: u64) -> Histogram {
    crate::judge::test_support::all_at(ms, n)
}

#[test]
fn ttft_p95_table() {
    use Outcome::*;
    // (canary ms, n, stable ms, n per window, windows, expected): the first window places
    // the bound.
    let table: &[TtftRow] = &[
        (800.0, 200, 200.0, 1_800, 3, Some(Fail)),
        (200.0, 200, 200.0, 1_800, 20, Some(Pass)),
        (800.0, 10, 200.0, 1_800, 2, Some(Inconclusive)),
    ];
    for (i, &(cms, cn, sms, sn, windows, want)) in table.iter().enumerate() {
        let w = window(
            LlmStats {
                ttft: ttft(cms, cn),
                ..LlmStats::default()
            },
            LlmStats {
                ttft: ttft(sms, sn),
                ..LlmStats::default()
            },
        );
        let v = stage(windows, || w.clone());
        let got = find(&v, "ttft_p95");
        assert_eq!(got.map(|r| r.outcome), want, "row {i}: {got:?}");
        assert!(got.is_some_and(|r| r.reason.contains("time to first token")));
    }
}

#[test]
fn the_verdict_names_the_llm_check_that_failed() {
    let mut rng = Rng(5);
    let v = stage(20, || {
        window(
            answers(&mut rng, 200, 800.0, 2),
            answers(&mut rng, 1_800, 400.0, 18),
        )
    });
    assert_eq!(v.outcome, Outcome::Fail, "{}", v.summary());
    // A sequential test's rejection is decisive, as for the request checks.
    assert!(v.critical);
    assert!(
        v.summary().contains("cost per response canary $0.0"),
        "{}",
        v.summary()
    );
    // Equal signals pass, and the plain checks are all still there.
    let w = window(
        answers(&mut rng, 200, 400.0, 2),
        answers(&mut rng, 1_800, 400.0, 18),
    );
    let v = stage(2, || w.clone());
    let names: Vec<&str> = v.checks.iter().map(|c| c.check.as_str()).collect();
    assert_eq!(
        names,
        [
            "error_rate",
            "error_rate_absolute",
            "latency_p99",
            "latency_p95",
            "cost_per_response",
            "refusal_rate"
        ]
    );
    // A few ratings do not hold the stage (thumbs-down is not required by default)...
    let mut w = window(
        answers(&mut rng, 200, 400.0, 2),
        answers(&mut rng, 1_800, 400.0, 18),
    );
    w.canary.llm.feedback_down = 3;
    w.stable.llm.feedback_up = 10;
    let v = stage(2, || w.clone());
    assert_eq!(v.outcome, Outcome::Pass, "{}", v.summary());
    let thumbs = find(&v, "thumbs_down_rate");
    assert_eq!(thumbs.map(|c| c.outcome), Some(Outcome::Inconclusive));
    // ...but a required quality signal with too few samples does.
    let spec = score_spec();
    w.canary
        .llm
        .quality
        .insert("helpful".into(), quality(&mut rng, 5, 0.9, true));
    w.stable
        .llm
        .quality
        .insert("helpful".into(), quality(&mut rng, 500, 0.9, true));
    assert_eq!(
        stage_with(&spec, 2, || w.clone()).outcome,
        Outcome::Inconclusive
    );
    // A plain rollout gets no LLM checks at all.
    let plain = window(LlmStats::default(), LlmStats::default());
    assert_eq!(stage(2, || plain.clone()).checks.len(), 4);
}
