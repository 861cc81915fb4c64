//! The analysis loop: scrape → window → judge → step, once per `analysis.interval`, with the
//! quota sentinel, pending user feedback and the `/status` and `/metrics` tallies on the way.
//! The controller's mutex is held only to read and write its tallies and state, never while
//! scraping or judging (the judge runs on a blocking thread): `/status`, commands and
//! `/feedback` never wait behind a slow test, and `/filter-config` does not take the mutex
//! at all.

use std::sync::Arc;

use crate::judge::evidence::COARSE_BUCKETS;
use crate::judge::{judge, Outcome};
use crate::machine::Input;
use crate::sources::StatsSource;
use crate::spec::RolloutSpec;
use crate::stats::window::{Window, Windower};

use super::{now_ms, Controller, Shared};

/// Every `analysis.interval`: read the sources, close the window, judge it, step the machine.
pub(super) async fn run(
    controller: Shared,
    spec: RolloutSpec,
    http: reqwest::Client,
    source: Box<dyn StatsSource>,
) {
    let spec = Arc::new(spec);
    let mut windower = Windower::default();
    // Coarse latency buckets are said once in the log (and in every verdict in /status).
    let mut said_coarse = false;
    let mut last_close = std::time::Instant::now();
    let mut ticker = tokio::time::interval(spec.analysis.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let readings = source.read(&http, &spec.name).await;
        let readable = readings.iter().filter(|r| r.result.is_ok()).count();
        let failures: Vec<(String, &'static str)> = readings
            .iter()
            .filter_map(|r| Some((r.source.clone(), r.result.as_ref().err()?.reason)))
            .collect();
        let mut window = windower.close(readings);
        let window_ms = u64::try_from(last_close.elapsed().as_millis()).unwrap_or(u64::MAX);
        last_close = std::time::Instant::now();
        for note in &window.notes {
            eprintln!("canaryctl: {note}");
        }
        let (evidence, judged_stage, judged_run) = {
            let mut c = controller.lock().await;
            if readable > 0 {
                c.proxies = readable;
            }
            for failure in failures {
                *c.source_errors.entry(failure).or_default() += 1;
            }
            if window.sources_counted > 0 {
                tally(&mut c, &spec, &mut window, window_ms);
            }
            // The proxy count and the throttle are part of the served configuration.
            c.publish();
            (c.state.evidence.clone(), c.state.stage, c.state.run)
        };
        if window.sources_counted == 0 {
            // Nothing measured: no verdict at all rather than an empty one.
            continue;
        }
        let judged = {
            let spec = spec.clone();
            tokio::task::spawn_blocking(move || {
                let verdict = judge(&window.stats, &evidence, &spec);
                (verdict, window)
            })
            .await
        };
        let (verdict, window) = match judged {
            Ok(judged) => judged,
            Err(e) => {
                eprintln!("canaryctl: the judge failed, window dropped: {e}");
                continue;
            }
        };
        if !said_coarse {
            if let Some(check) = verdict
                .checks
                .iter()
                .find(|c| c.reason.contains(COARSE_BUCKETS))
            {
                eprintln!("canaryctl: {}: {}", spec.name, check.reason);
                said_coarse = true;
            }
        }
        let mut c = controller.lock().await;
        if c.state.stage != judged_stage || c.state.run != judged_run {
            // An operator moved the rollout on (or retried it) while the judge ran: this
            // window's evidence belongs to the stage or run it left.
            continue;
        }
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

/// A measured window's share of the controller's tallies: the quota sentinel, pending
/// feedback (drained into the window), the breaker and fallback tier counts.
fn tally(c: &mut Controller, spec: &RolloutSpec, window: &mut Window, window_ms: u64) {
    if let Some(quota) = &spec.quota {
        let s = &window.stats;
        let tokens = [&s.stable.llm, &s.canary.llm]
            .iter()
            .map(|l| l.input_tokens.saturating_add(l.output_tokens))
            .fold(0u64, u64::saturating_add);
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
    c.breaker.trips = c.breaker.trips.saturating_add(canary.breaker_trips);
    c.breaker.diverted = c.breaker.diverted.saturating_add(canary.breaker_diverted);
    c.breaker.open = canary.breaker_open;
    for (name, t) in &window.stats.tiers {
        let seen = c.tiers.entry(name.clone()).or_default();
        seen.requests = seen.requests.saturating_add(t.requests);
        seen.rq_5xx = seen.rq_5xx.saturating_add(t.rq_5xx);
        seen.trips = seen.trips.saturating_add(t.trips);
        (seen.open, seen.half_open) = (t.open, t.half_open);
    }
}
