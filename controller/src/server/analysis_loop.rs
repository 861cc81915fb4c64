//! The analysis loop: scrape → window → judge → step, once per `analysis.interval`, with the
//! quota sentinel, pending user feedback and the `/status` and `/metrics` tallies on the way.

use crate::judge::{judge, Outcome};
use crate::machine::Input;
use crate::sources::StatsSource;
use crate::spec::RolloutSpec;
use crate::stats::window::Windower;

use super::{now_ms, Shared};

/// Every `analysis.interval`: read the sources, close the window, judge it, step the machine.
pub(super) async fn run(
    controller: Shared,
    spec: RolloutSpec,
    http: reqwest::Client,
    source: Box<dyn StatsSource>,
) {
    let mut windower = Windower::default();
    let mut last_close = std::time::Instant::now();
    let mut ticker = tokio::time::interval(spec.analysis.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let readings = source.read(&http, &spec.name).await;
        let mut c = controller.lock().await;
        let readable = readings.iter().filter(|r| r.result.is_ok()).count();
        if readable > 0 {
            c.proxies = readable;
        }
        for r in &readings {
            if r.result.is_err() {
                *c.source_errors.entry(r.source.clone()).or_default() += 1;
            }
        }
        let mut window = windower.close(readings);
        let window_ms = last_close.elapsed().as_millis() as u64;
        last_close = std::time::Instant::now();
        for note in &window.notes {
            eprintln!("canaryctl: {note}");
        }
        if window.sources_counted == 0 {
            // Nothing measured: no verdict at all rather than an empty one.
            continue;
        }
        if let Some(quota) = &spec.quota {
            let s = &window.stats;
            let tokens = [&s.stable.llm, &s.canary.llm]
                .iter()
                .map(|l| l.input_tokens + l.output_tokens)
                .sum();
            if let Some(change) = c.quota.observe(quota, tokens, window_ms, now_ms()) {
                eprintln!(
                    "canaryctl: {}: quota sentinel: {change:?} (quota {} tokens/min)",
                    spec.name, quota.tokens_per_minute
                );
            }
        }
        let stats = &mut window.stats;
        c.feedback
            .drain_into(&mut stats.canary.llm, &mut stats.stable.llm);
        let canary = &window.stats.canary;
        c.breaker.trips += canary.breaker_trips;
        c.breaker.diverted += canary.breaker_diverted;
        c.breaker.open = canary.breaker_open;
        for (name, t) in &window.stats.tiers {
            let seen = c.tiers.entry(name.clone()).or_default();
            seen.requests += t.requests;
            seen.rq_5xx += t.rq_5xx;
            seen.trips += t.trips;
            (seen.open, seen.half_open) = (t.open, t.half_open);
        }
        let verdict = judge(&window.stats, &c.state.evidence, &spec);
        c.last_checks = verdict.checks.clone();
        *c.verdict_counts
            .entry(match verdict.outcome {
                Outcome::Pass => "pass",
                Outcome::Fail => "fail",
                Outcome::Inconclusive => "inconclusive",
            })
            .or_default() += 1;
        let input = match spec.shadow {
            Some(_) => Input::ShadowWindow(verdict, window.stats.shadow.clone()),
            None => Input::Analysis(verdict),
        };
        let step = c.state.step(&spec, input, now_ms());
        if let Ok((next, effects)) = step {
            if let Err(e) = c.apply(next, effects, &http) {
                eprintln!("canaryctl: could not save state, transition dropped: {e}");
            }
        }
    }
}
