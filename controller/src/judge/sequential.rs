//! Anytime-valid sequential tests: the evidence that the canary is worse accumulates over
//! the windows of a stage, and its error guarantee holds however often it is looked at.
//!
//! **Where events fall.** In a window with `n_c` canary and `n_s` stable requests and `E`
//! events between them (errors, or requests slower than a bound), each event falls on the
//! canary with probability `π = ρ·s / (ρ·s + 1 − s)`, where `s = n_c / (n_c + n_s)` and `ρ`
//! is the canary's event rate over stable's (the count-data design of Lindon & Malek's
//! anytime-valid tests). The null hypothesis is `ρ ≤ ρ0` ("no worse", up to a tolerance
//! `ρ0 ≥ 1` the check sets). An incident that raises both rates alike leaves `π` where it
//! was, so shared bursts cancel out by construction.
//!
//! **E-process.** For each alternative `ρ_k` of a grid, the likelihood ratio of `ρ_k`
//! against `ρ0` over the stage's windows is a nonnegative supermartingale while
//! `ρ ≤ ρ0`; so is any fixed weighted average of them, and Ville's inequality bounds the
//! chance that it ever reaches `1/α` by `α`, however many windows are looked at. The grid
//! starts at the smallest regression the check is meant to catch, and weighs the `j`th
//! alternative up by `1/(j+1)`: a small regression gathers evidence slowly and needs the
//! weight, a gross one gathers so much so fast that a smaller share costs it little.
//!
//! **Extra-binomial noise.** Requests are not independent trials: each version's rate
//! moves from window to window. Given `E`, the canary's count then varies more than a
//! binomial by `φ = 1 + E·π0(1−π0)·(v_c + v_s)`, where `v` is the relative variance of a
//! version's rate between windows, estimated from that version's own successive windows
//! ([`RateDrift`]) before the window is added. Each window's log-likelihood ratio is
//! divided by `φ`: in the Gaussian limit this is exactly the likelihood ratio under the
//! wider variance, and where `φ` overstates the noise it only makes the test cautious
//! (`E[LR^(1/φ)] ≤ E[LR]^(1/φ) ≤ 1`).
//!
//! **Over the stage and over the rollout.** Each test keeps two e-processes side by side:
//! one over the current stage (started anew with each stage, so a regression that shows
//! only at a higher weight is judged on that weight's data alone) and one over every
//! judged window of the rollout ([`EventTest::next_stage`] keeps it). Both are products
//! of the same windows' likelihood ratios, each valid on its own: the canary's share `s`
//! changes between stages, but it is known before each window, and a product of
//! conditionally fair bets stays a supermartingale. A canary that is 2× stable's errors at
//! 10 req/s shows too little in any one stage, but enough over the rollout. The checks
//! split their error budget between the two ([`super::evidence::e_thresholds`]).
//!
//! Every update is O(1) in the counts (a fixed grid of alternatives).

use serde::{Deserialize, Serialize};

/// Alternatives in each mixture.
pub(super) const GRID: usize = 16;

/// What a test works out from its own fields and keeps so as not to work it out again
/// every window (the judge runs for every rollout every interval, a simulation millions of
/// times): not state. It is left out of the state file (an empty one is worked out anew)
/// and out of comparisons, since it always follows from what is compared.
#[derive(Debug, Clone, Default)]
pub struct Derived<T>(pub(super) Option<T>);

impl<T> PartialEq for Derived<T> {
    fn eq(&self, _: &Derived<T>) -> bool {
        true
    }
}

impl<T> Derived<T> {
    pub(super) fn get_or(&mut self, work_out: impl FnOnce() -> T) -> &T {
        self.0.get_or_insert_with(work_out)
    }
}

/// Before any data, a version's rate is taken to vary by this relative variance between
/// windows (a 45% standard deviation: cautious until the data says otherwise), weighted
/// as this many windows at first; the prior fades with the data's own older windows, but
/// never below `DRIFT_PRIOR_FLOOR` windows' weight.
const DRIFT_PRIOR: f64 = 0.2;
/// The same for a mean value per request (a cost per answer, [`Drift::add_mean`]): an
/// average over a window's many answers moves far less than a rate of rare events (a 14%
/// standard deviation), and with thousands of nano-USD per answer the prior, not the
/// counts, would otherwise set the evidence a window can give.
const MEAN_DRIFT_PRIOR: f64 = 0.02;
/// The same for a mean score (a quality signal, the eval score: [`Drift::add_score`]):
/// scores are bounded and an answer's score varies far less than its cost, so a 5%
/// standard deviation between windows; at 14% a gross drop (0.6 against 0.9) would take
/// several windows to show.
const SCORE_DRIFT_PRIOR: f64 = 0.0025;
const DRIFT_PRIOR_WINDOWS: f64 = 3.0;
const DRIFT_PRIOR_FLOOR: f64 = 1.0;
/// Older windows count less: the estimate follows the last ~20 windows.
const DRIFT_DECAY: f64 = 0.95;

/// Events and requests of one version in one window (or summed over a stage).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub events: u64,
    pub requests: u64,
}

impl Counts {
    pub fn new(events: u64, requests: u64) -> Counts {
        Counts {
            events: events.min(requests),
            requests,
        }
    }

    pub fn rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.events as f64 / self.requests as f64)
    }

    pub(super) fn add(&mut self, other: Counts) {
        self.events = self.events.saturating_add(other.events);
        self.requests = self.requests.saturating_add(other.requests);
    }
}

/// How much a version's event rate varies between windows beyond binomial noise, from its
/// own successive windows: for rates `r_t`, `r_{t−1}` of one true rate `p`,
/// `E[(r_t − r_{t−1})²] = p(1−p)(1/n_t + 1/n_{t−1}) + 2·v·p²`, so each pair gives an
/// unbiased estimate of the relative variance `v`. Successive differences leave out slow
/// trends and a constant regression alike.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RateDrift {
    last: Option<Counts>,
    /// For a mean ([`RateDrift::observe_mean`]): the variance of one request's value in
    /// the last window.
    #[serde(default)]
    last_variance: f64,
    sum: f64,
    windows: f64,
}

impl RateDrift {
    /// The relative variance of the rate between windows (never below 0).
    pub fn relative_variance(&self) -> f64 {
        self.relative_variance_from(DRIFT_PRIOR)
    }

    /// The estimate from a given prior relative variance.
    fn relative_variance_from(&self, prior_variance: f64) -> f64 {
        // `windows` is Σ DECAY^k over the pairs seen, so 1 − windows·(1 − DECAY) is
        // DECAY^pairs: how much of its first weight the prior keeps.
        let kept = (1.0 - self.windows * (1.0 - DRIFT_DECAY)).max(0.0);
        let prior = (DRIFT_PRIOR_WINDOWS * kept).max(DRIFT_PRIOR_FLOOR);
        ((prior * prior_variance + self.sum) / (prior + self.windows)).max(0.0)
    }

    pub fn observe(&mut self, now: Counts) {
        if now.requests == 0 {
            return;
        }
        if let Some(before) = self.last {
            // In f64: two windows' counts may pass 2^64 together.
            let events = before.events as f64 + now.events as f64;
            let p = events / (before.requests as f64 + now.requests as f64);
            if p > 0.0 && p < 1.0 {
                let d = now.events as f64 / now.requests as f64
                    - before.events as f64 / before.requests as f64;
                let binomial =
                    p * (1.0 - p) * (1.0 / now.requests as f64 + 1.0 / before.requests as f64);
                self.record((d * d - binomial) / (2.0 * p * p));
            }
        }
        self.last = Some(now);
    }

    /// Counts one pair's estimate of the relative variance in, older pairs decaying.
    fn record(&mut self, estimate: f64) {
        self.sum = DRIFT_DECAY * self.sum + estimate;
        self.windows = DRIFT_DECAY * self.windows + 1.0;
    }

    /// The same for a mean value per request (a cost per response: `events` is the sum of
    /// the values), with `variance` one request's variance in this window:
    /// `E[(m_t − m_{t−1})²] = σ_t²/n_t + σ_{t−1}²/n_{t−1} + 2·v·μ²`.
    pub fn observe_mean(&mut self, now: Counts, variance: f64) {
        if now.requests == 0 {
            return;
        }
        if let Some(before) = self.last {
            let mean = |c: Counts| c.events as f64 / c.requests as f64;
            let pooled = (before.events as f64 + now.events as f64)
                / (before.requests as f64 + now.requests as f64);
            if pooled > 0.0 {
                let d = mean(now) - mean(before);
                let within =
                    variance / now.requests as f64 + self.last_variance / before.requests as f64;
                self.record((d * d - within) / (2.0 * pooled * pooled));
            }
        }
        self.last = Some(now);
        self.last_variance = variance;
    }
}

/// Both versions' drift for one kind of event. It describes the service, not a stage, so
/// it is kept from stage to stage: a new stage must not start from the prior again.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Drift {
    canary: RateDrift,
    stable: RateDrift,
}

impl Drift {
    /// The relative variances to judge this window with (from the windows before it: the
    /// canary's never taken below stable's), then counts the window in.
    pub fn add(&mut self, canary: Counts, stable: Counts) -> (f64, f64) {
        let v_stable = self.stable.relative_variance();
        let v_canary = self.canary.relative_variance().max(v_stable);
        self.canary.observe(canary);
        self.stable.observe(stable);
        (v_canary, v_stable)
    }

    /// As [`Drift::add`] for a mean value per request, with each version's variance of
    /// one request's value in this window.
    pub fn add_mean(&mut self, canary: (Counts, f64), stable: (Counts, f64)) -> (f64, f64) {
        self.add_mean_from(MEAN_DRIFT_PRIOR, canary, stable)
    }

    /// As [`Drift::add_mean`] for a mean score (0..1), from [`SCORE_DRIFT_PRIOR`].
    pub fn add_score(&mut self, canary: (Counts, f64), stable: (Counts, f64)) -> (f64, f64) {
        self.add_mean_from(SCORE_DRIFT_PRIOR, canary, stable)
    }

    fn add_mean_from(
        &mut self,
        prior: f64,
        (canary, canary_variance): (Counts, f64),
        (stable, stable_variance): (Counts, f64),
    ) -> (f64, f64) {
        let v_stable = self.stable.relative_variance_from(prior);
        let v_canary = (self.canary).relative_variance_from(prior).max(v_stable);
        self.canary.observe_mean(canary, canary_variance);
        self.stable.observe_mean(stable, stable_variance);
        (v_canary, v_stable)
    }
}

/// The grid of alternatives, log-spaced from `min` to `max` (one `powf` per window, not one
/// per alternative: the judge runs for every rollout every interval).
pub(super) fn alternatives(min: f64, max: f64) -> impl Iterator<Item = f64> {
    let step = (max / min).powf(1.0 / (GRID - 1) as f64);
    std::iter::successors(Some(min), move |a| Some(a * step)).take(GRID)
}

/// A grid of alternatives (or what each of them gives) in an array.
pub(super) fn grid(values: impl Iterator<Item = f64>) -> [f64; GRID] {
    let mut grid = [0.0; GRID];
    for (g, v) in grid.iter_mut().zip(values) {
        *g = v;
    }
    grid
}

/// Each alternative's weight in the mixture: `1/(j+1)`, normalised (the grid runs from the
/// smallest ratio up).
const WEIGHTS: [f64; GRID] = harmonic_weights();

const fn harmonic_weights() -> [f64; GRID] {
    let mut w = [0.0; GRID];
    let mut total = 0.0;
    let mut j = 0;
    while j < GRID {
        w[j] = 1.0 / (j + 1) as f64;
        total += w[j];
        j += 1;
    }
    let mut j = 0;
    while j < GRID {
        w[j] /= total;
        j += 1;
    }
    w
}

/// `ln(Σ w_j·exp(x_j))` over the alternatives' log-likelihood ratios `x`, with the
/// mixture's [`WEIGHTS`], without overflow.
pub(super) fn log_mixture(x: &[f64]) -> f64 {
    let top = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if !top.is_finite() {
        return top;
    }
    // Terms below e^-746 are 0 in f64 anyway: skipping them spares `exp` its slow underflow
    // path (the sum is the same to the bit).
    let sum: f64 = x
        .iter()
        .zip(WEIGHTS)
        .map(|(v, w)| (v - top, w))
        .filter(|(d, _)| *d > -746.0)
        .map(|(d, w)| w * d.exp())
        .sum();
    top + sum.ln()
}

/// A test's evidence over every window of the rollout so far: the same likelihood ratios as
/// the stage's, kept from stage to stage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OverRollout {
    /// Empty until the first window with data (then one per alternative).
    log_lr: Vec<f64>,
    /// The rollout's totals (for a [`RateTest`], the canary's in `canary`).
    pub canary: Counts,
    pub stable: Counts,
    pub windows: u64,
    pub max_log_e: f64,
    /// `log_e` as of the last window.
    #[serde(skip)]
    log_e: Derived<f64>,
}

impl OverRollout {
    /// `ln` of the e-value over the rollout (0 before any data: e = 1).
    pub fn log_e(&self) -> f64 {
        if self.log_lr.is_empty() {
            0.0
        } else {
            self.log_e.0.unwrap_or_else(|| log_mixture(&self.log_lr))
        }
    }

    /// The alternatives' log-likelihood ratios, ready to add a window to.
    pub(super) fn log_lr_mut(&mut self) -> &mut [f64] {
        if self.log_lr.len() != GRID {
            self.log_lr = vec![0.0; GRID];
        }
        &mut self.log_lr
    }

    pub(super) fn counted(&mut self) {
        self.windows = self.windows.saturating_add(1);
        let log_e = log_mixture(&self.log_lr);
        self.log_e = Derived(Some(log_e));
        self.max_log_e = self.max_log_e.max(log_e);
    }
}

/// The evidence that an event (an error, a slow request) is more frequent on the canary
/// than on stable: the two-sample test above, over one stage and over the rollout.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventTest {
    /// "No worse": the canary's event rate is at most this multiple of stable's.
    pub null_ratio: f64,
    /// The smallest and largest ratio of event rates the mixture looks for.
    pub min_ratio: f64,
    pub max_ratio: f64,
    log_lr: Vec<f64>,
    /// The stage's totals.
    pub canary: Counts,
    pub stable: Counts,
    /// Windows that held events.
    pub windows: u64,
    /// `φ` of the last window with events.
    pub dispersion: f64,
    /// The largest `ln e` so far: the stage's anytime-valid p-value is `exp(−max_log_e)`.
    pub max_log_e: f64,
    /// The same test over the rollout's windows so far.
    #[serde(default)]
    pub rollout: OverRollout,
    /// `log_e` as of the last window, and the alternatives' ratios with their `ln(ρ/ρ0)`
    /// (boxed: the evidence moves from the state to the judge and back every window).
    #[serde(skip)]
    log_e: Derived<f64>,
    #[serde(skip)]
    grid: Derived<Box<([f64; GRID], [f64; GRID])>>,
}

impl EventTest {
    pub fn new(null_ratio: f64, min_ratio: f64, max_ratio: f64) -> EventTest {
        let null_ratio = null_ratio.max(1.0);
        let min_ratio = min_ratio.max(null_ratio * (1.0 + 1e-6));
        EventTest {
            null_ratio,
            min_ratio,
            max_ratio: max_ratio.max(min_ratio * 1.01),
            log_lr: vec![0.0; GRID],
            canary: Counts::default(),
            stable: Counts::default(),
            windows: 0,
            dispersion: 1.0,
            max_log_e: 0.0,
            rollout: OverRollout::default(),
            log_e: Derived::default(),
            grid: Derived::default(),
        }
    }

    /// The test a new stage starts with: no evidence over the stage, the rollout's kept.
    pub fn next_stage(&self) -> EventTest {
        EventTest {
            rollout: self.rollout.clone(),
            ..EventTest::new(self.null_ratio, self.min_ratio, self.max_ratio)
        }
    }

    /// Adds one window's events and requests of each version, with each version's
    /// relative rate variance between windows (from the windows before this one: see
    /// [`Drift::add`]).
    pub fn add(&mut self, canary: Counts, stable: Counts, noise: (f64, f64)) {
        let canary = Counts::new(canary.events, canary.requests);
        let stable = Counts::new(stable.events, stable.requests);
        self.add_weighted(canary, stable, 1.0, noise);
    }

    /// The same where an "event" is a unit of an amount that each request carries some of
    /// (a cost in nano-USD: `events` may exceed `requests`). Given the window's total, the
    /// canary's share varies by `unit_dispersion` = Σ value² / Σ value times a binomial's
    /// (a compound Poisson count, in the Gaussian limit), and its drift adds to that.
    pub fn add_weighted(
        &mut self,
        canary: Counts,
        stable: Counts,
        unit_dispersion: f64,
        (v_canary, v_stable): (f64, f64),
    ) {
        self.canary.add(canary);
        self.stable.add(stable);
        self.rollout.canary.add(canary);
        self.rollout.stable.add(stable);
        // Saturating and in f64: each version's counts may be near 2^64 (a window is the
        // difference of two u64 counters), and their sums must not wrap.
        let events = canary.events.saturating_add(stable.events);
        if canary.requests == 0 || stable.requests == 0 || events == 0 {
            return;
        }
        // Each version's share of the requests, and of the events under a ratio `rho`,
        // computed apart: `1 − share` cancels to 0 or below in f64 when one version has
        // ~10^15 times the other's requests, and `ln` of that was NaN (which compares false
        // with every threshold: the check passed whatever the canary did).
        let total = canary.requests as f64 + stable.requests as f64;
        let (s, q) = (
            canary.requests as f64 / total,
            stable.requests as f64 / total,
        );
        let (pi0, rest0) = {
            let rho = self.null_ratio;
            (rho * s / (rho * s + q), q / (rho * s + q))
        };
        let (x, y) = (canary.events as f64, stable.events as f64);
        let phi = unit_dispersion.max(1.0) + events as f64 * pi0 * rest0 * (v_canary + v_stable);
        if !phi.is_finite() {
            return;
        }
        self.windows = self.windows.saturating_add(1);
        self.dispersion = phi;
        // The log-likelihood ratio of an event on stable is `ln(rest/rest0)` =
        // `ln((ρ0·s + q) / (ρ·s + q))`, and of one on the canary `ln(ρ/ρ0)` more (a constant
        // of the alternative): one `ln` per alternative and window. `0 · ln 0 = 0`: a version
        // without events says nothing about where they fall.
        let term = |n: f64, log_ratio: f64| if n == 0.0 { 0.0 } else { n * log_ratio };
        let (null, min, max) = (self.null_ratio, self.min_ratio, self.max_ratio);
        let (rhos, log_rhos) = &**self.grid.get_or(|| {
            let rhos = grid(alternatives(min, max));
            Box::new((rhos, grid(rhos.iter().map(|rho| (rho / null).ln()))))
        });
        let stable_null = null * s + q;
        let mut on_stable = rhos.map(|rho| stable_null / (rho * s + q));
        super::ln_batch::ln_each(&mut on_stable);
        for ((l, r), (on_stable, log_rho)) in self
            .log_lr
            .iter_mut()
            .zip(self.rollout.log_lr_mut())
            .zip(on_stable.into_iter().zip(log_rhos))
        {
            let step = (term(x, log_rho + on_stable) + term(y, on_stable)) / phi;
            *l += step;
            *r += step;
        }
        let log_e = log_mixture(&self.log_lr);
        self.log_e = Derived(Some(log_e));
        self.max_log_e = self.max_log_e.max(log_e);
        self.rollout.counted();
    }

    /// `ln` of the e-value: the mixture's likelihood ratio against "no worse".
    pub fn log_e(&self) -> f64 {
        self.log_e.0.unwrap_or_else(|| log_mixture(&self.log_lr))
    }

    /// The stage's ratio of canary over stable event rates (`None` without data).
    pub fn ratio(&self) -> Option<f64> {
        let (c, s) = (self.canary.rate()?, self.stable.rate()?);
        if s > 0.0 {
            Some(c / s)
        } else if c > 0.0 {
            Some(f64::INFINITY)
        } else {
            Some(1.0)
        }
    }
}

/// The evidence that the canary's event rate is above a fixed limit (an absolute error
/// rate): a one-sample mixture test of `p ≤ limit` over one stage, with the same
/// allowance for the rate's variation between windows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RateTest {
    pub limit: f64,
    log_lr: Vec<f64>,
    pub totals: Counts,
    /// Windows with requests, and `φ` of the last one.
    pub windows: u64,
    pub dispersion: f64,
    pub max_log_e: f64,
    /// The same test over the rollout's windows so far.
    #[serde(default)]
    pub rollout: OverRollout,
    /// `log_e` as of the last window, and each alternative's log-likelihood ratio of one
    /// event and of one request without (they depend on the limit alone).
    #[serde(skip)]
    log_e: Derived<f64>,
    #[serde(skip)]
    steps: Derived<Box<([f64; GRID], [f64; GRID])>>,
}

impl RateTest {
    pub fn new(limit: f64) -> RateTest {
        RateTest {
            limit: limit.clamp(1e-9, 1.0 - 1e-9),
            log_lr: vec![0.0; GRID],
            totals: Counts::default(),
            windows: 0,
            dispersion: 1.0,
            max_log_e: 0.0,
            rollout: OverRollout::default(),
            log_e: Derived::default(),
            steps: Derived::default(),
        }
    }

    /// The test a new stage starts with: no evidence over the stage, the rollout's kept.
    pub fn next_stage(&self) -> RateTest {
        RateTest {
            rollout: self.rollout.clone(),
            ..RateTest::new(self.limit)
        }
    }

    /// Adds one window, with the rate's relative variance between windows `v`.
    pub fn add(&mut self, counts: Counts, v: f64) {
        let counts = Counts::new(counts.events, counts.requests);
        self.totals.add(counts);
        self.rollout.canary.add(counts);
        if counts.requests == 0 {
            return;
        }
        let p0 = self.limit;
        let n = counts.requests as f64;
        let (x, y) = (counts.events as f64, n - counts.events as f64);
        let phi = 1.0 + n * p0 * v / (1.0 - p0);
        self.windows = self.windows.saturating_add(1);
        self.dispersion = phi;
        // Alternatives from 1.2× the limit to (nearly) every request.
        let (event, no_event) = &**self.steps.get_or(|| {
            let top = (0.999 / p0).max(1.2 * 1.01);
            let p = || alternatives(1.2, top).map(|ratio| (p0 * ratio).min(0.999));
            Box::new((
                grid(p().map(|p| (p / p0).ln())),
                grid(p().map(|p| ((1.0 - p) / (1.0 - p0)).ln())),
            ))
        });
        for ((l, r), (event, no_event)) in (self.log_lr.iter_mut())
            .zip(self.rollout.log_lr_mut())
            .zip(event.iter().zip(no_event))
        {
            let step = (x * event + y * no_event) / phi;
            *l += step;
            *r += step;
        }
        let log_e = log_mixture(&self.log_lr);
        self.log_e = Derived(Some(log_e));
        self.max_log_e = self.max_log_e.max(log_e);
        self.rollout.counted();
    }

    pub fn log_e(&self) -> f64 {
        self.log_e.0.unwrap_or_else(|| log_mixture(&self.log_lr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Adds a window as the judge does: the drift first, then the test.
    fn feed(t: &mut EventTest, d: &mut Drift, canary: Counts, stable: Counts) {
        let noise = d.add(canary, stable);
        t.add(canary, stable, noise);
    }

    /// Exact expectation of one window's likelihood ratio for alternative `rho` when the
    /// canary's true ratio is `true_rho`, over every split of `events`.
    fn expected_lr(events: u64, s: f64, rho: f64, true_rho: f64) -> f64 {
        let pi = rho * s / (rho * s + 1.0 - s);
        let pt = true_rho * s / (true_rho * s + 1.0 - s);
        let mut total = 0.0;
        let mut ln_choose = 0.0f64;
        for x in 0..=events {
            if x > 0 {
                ln_choose += ((events - x + 1) as f64).ln() - (x as f64).ln();
            }
            let y = (events - x) as f64;
            let ln_p = ln_choose + x as f64 * pt.ln() + y * (1.0 - pt).ln();
            let ln_lr = x as f64 * (pi / s).ln() + y * ((1.0 - pi) / (1.0 - s)).ln();
            total += (ln_p + ln_lr).exp();
        }
        total
    }

    #[test]
    fn each_alternative_is_a_fair_bet_under_no_worse() {
        for events in [1, 7, 60, 400] {
            for s in [0.05, 0.25, 0.5, 0.75] {
                for rho in [1.5, 4.0, 100.0] {
                    let same = expected_lr(events, s, rho, 1.0);
                    assert!((same - 1.0).abs() < 1e-9, "{events} {s} {rho}: {same}");
                    let better = expected_lr(events, s, rho, 0.7);
                    assert!(better < 1.0, "{events} {s} {rho}: {better}");
                }
            }
        }
    }

    #[test]
    fn a_gross_failure_is_decided_in_one_window() {
        // 10% vs 0.5% errors, canary 600 requests (20 req/s over 30 s) at 5%.
        let mut t = EventTest::new(1.0, 1.5, 100.0);
        feed(
            &mut t,
            &mut Drift::default(),
            Counts::new(60, 600),
            Counts::new(57, 11_400),
        );
        assert!(t.log_e() > (1_500f64).ln(), "{}", t.log_e());
    }

    #[test]
    fn a_burst_on_both_versions_is_no_evidence() {
        let mut t = EventTest::new(1.0, 1.5, 100.0);
        // Both at 6%: the canary holds its 5% share of the events.
        feed(
            &mut t,
            &mut Drift::default(),
            Counts::new(90, 1_500),
            Counts::new(1_710, 28_500),
        );
        assert!(t.log_e() < 0.0, "{}", t.log_e());
    }

    #[test]
    fn a_small_excess_gathers_little_evidence() {
        // 1.1× stable's rate over many windows, with the alternatives from 1.5×.
        let (mut t, mut d) = (EventTest::new(1.0, 1.5, 100.0), Drift::default());
        for _ in 0..500 {
            feed(
                &mut t,
                &mut d,
                Counts::new(83, 15_000),
                Counts::new(1_425, 285_000),
            );
        }
        assert!(t.log_e() < 0.0, "{}", t.log_e());
        let (mut t, mut d) = (EventTest::new(1.0, 1.5, 100.0), Drift::default());
        for _ in 0..20 {
            feed(
                &mut t,
                &mut d,
                Counts::new(150, 15_000),
                Counts::new(1_425, 285_000),
            );
        }
        assert!(t.log_e() > 10.0, "2× stable: {}", t.log_e());
    }

    #[test]
    fn drift_is_estimated_from_successive_windows() {
        // Deterministic: the rate alternates ±40% around 1% on 100,000 requests.
        let mut d = RateDrift::default();
        for i in 0..200 {
            let events = if i % 2 == 0 { 1_400 } else { 600 };
            d.observe(Counts::new(events, 100_000));
        }
        // (0.8 · 1%)² / (2 · 1%²) = 0.32 per pair, less a little binomial noise.
        let v = d.relative_variance();
        assert!((0.25..0.34).contains(&v), "{v}");
        // A steady rate with exact binomial-size noise gives about the prior's share only
        // (3 windows' worth against the last ~20).
        let mut d = RateDrift::default();
        for i in 0..200 {
            d.observe(Counts::new(if i % 2 == 0 { 1_032 } else { 968 }, 100_000));
        }
        assert!(d.relative_variance() < 0.03, "{}", d.relative_variance());
    }

    #[test]
    fn drift_widens_the_test() {
        let (mut steady, mut steady_drift) = (EventTest::new(1.0, 1.5, 100.0), Drift::default());
        let (mut drifting, mut drift) = (EventTest::new(1.0, 1.5, 100.0), Drift::default());
        for i in 0..40 {
            let (c, s) = (Counts::new(75, 15_000), Counts::new(1_425, 285_000));
            feed(&mut steady, &mut steady_drift, c, s);
            let (c, s) = if i % 2 == 0 { (105, 1_995) } else { (45, 855) };
            let (c, s) = (Counts::new(c, 15_000), Counts::new(s, 285_000));
            feed(&mut drifting, &mut drift, c, s);
        }
        assert!(drifting.dispersion > 5.0 * steady.dispersion);
    }

    /// Found by the `stats` fuzz target: a window is the difference of two u64 counters, so
    /// each version's counts may be near 2^64, and their sums overflowed (a panic with
    /// overflow checks, a wrapped count in release).
    #[test]
    fn counts_near_2_64_neither_overflow_nor_wrap() {
        let top = Counts::new(u64::MAX - 2_048, u64::MAX - 1);
        let mut t = EventTest::new(1.25, 1.5, 100.0);
        let mut d = Drift::default();
        feed(&mut t, &mut d, top, top);
        feed(&mut t, &mut d, top, top);
        assert_eq!(t.windows, 2);
        assert!(t.log_e().is_finite(), "{}", t.log_e());
        assert_eq!(t.canary.requests, u64::MAX, "totals saturate");
        let mut r = RateTest::new(0.05);
        r.windows = u64::MAX;
        r.add(top, 0.01);
        assert_eq!(r.windows, u64::MAX);
    }

    /// Found by the `stats` fuzz target: with one version ~10^15 times the other's
    /// requests, `1 − share` cancelled to below 0 in f64, the e-value became NaN, and a NaN
    /// e-value passes every check.
    #[test]
    fn a_lopsided_window_never_makes_the_e_value_nan() {
        let big = u64::MAX - 5_000;
        for (canary, stable) in [
            (Counts::new(0, big), Counts::new(26_300, 26_300)),
            (Counts::new(big, big), Counts::new(0, 26_300)),
            (Counts::new(big, u64::MAX), Counts::new(1, 1)),
            (Counts::new(1, 1), Counts::new(big, u64::MAX)),
        ] {
            let mut t = EventTest::new(1.0, 1.25, 100.0);
            t.add(canary, stable, (0.2, 0.2));
            assert!(t.log_lr.iter().all(|l| !l.is_nan()), "{:?}", t.log_lr);
            assert_eq!(t.windows, 1);
            if stable.events == 0 {
                assert!(t.log_e() > 0.0, "every event on the canary is evidence");
            }
        }
        let mut t = EventTest::new(1.0, 1.25, 100.0);
        t.add(Counts::new(5, 10), Counts::new(5, 10), (f64::MAX, f64::MAX));
        assert!(
            !t.log_e().is_nan() && t.windows == 0,
            "an infinite dispersion"
        );
    }

    #[test]
    fn the_mixture_s_weights_favour_small_ratios_and_add_up_to_one() {
        assert!((WEIGHTS.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!(WEIGHTS.windows(2).all(|w| w[0] > w[1]));
        // Evidence for the smallest alternative only reads as its weight times its LR.
        let mut x = [f64::NEG_INFINITY; GRID];
        x[0] = 3.0;
        assert!((log_mixture(&x) - (3.0 + WEIGHTS[0].ln())).abs() < 1e-12);
        assert_eq!(log_mixture(&[0.0; GRID]), 0.0, "no evidence: e = 1");
    }

    #[test]
    fn a_new_stage_keeps_the_rollout_s_evidence_only() {
        let (mut t, mut d) = (EventTest::new(1.25, 1.5, 100.0), Drift::default());
        for _ in 0..10 {
            feed(&mut t, &mut d, Counts::new(3, 150), Counts::new(1, 150));
        }
        let next = t.next_stage();
        assert_eq!(
            (next.windows, next.canary, next.log_e()),
            (0, Counts::default(), 0.0)
        );
        assert_eq!(next.rollout, t.rollout);
        assert_eq!(next.rollout.windows, 10);
        assert_eq!(next.rollout.canary, Counts::new(30, 1_500));
        assert!(
            (t.rollout.log_e() - t.log_e()).abs() < 1e-12,
            "one stage: the same test"
        );
        let mut r = RateTest::new(0.05);
        r.add(Counts::new(100, 1_000), 0.01);
        let next = r.next_stage();
        assert_eq!((next.windows, next.totals), (0, Counts::default()));
        assert_eq!(next.rollout.canary, Counts::new(100, 1_000));
    }

    /// 2× stable's errors at 10 req/s over seed 000's three judged stages (5%, 25%, 50%):
    /// the evidence over the rollout is the sum of the stages', whatever the share in each.
    #[test]
    fn the_rollout_s_evidence_adds_up_its_stages() {
        let (mut t, mut d) = (EventTest::new(1.25, 1.5, 100.0), Drift::default());
        let mut stages = Vec::new();
        // (windows, canary requests per window); the canary at 1%, stable at 0.5%, each
        // window's events at their expected split.
        for (windows, canary) in [(60u64, 15u64), (120, 75), (240, 150)] {
            for i in 0..windows {
                let stable = 300 - canary;
                // Whole events, spread over the windows as their means say.
                let spread = |rate: f64, n: u64| {
                    let before = (rate * (i * n) as f64) as u64;
                    (rate * ((i + 1) * n) as f64) as u64 - before
                };
                let c = Counts::new(spread(0.01, canary), canary);
                let s = Counts::new(spread(0.005, stable), stable);
                feed(&mut t, &mut d, c, s);
            }
            stages.push(t.log_e());
            t = t.next_stage();
        }
        let rollout = t.rollout.log_e();
        assert!(
            stages.iter().all(|&e| e < rollout - 2.0),
            "{stages:?} {rollout}"
        );
        assert_eq!(t.rollout.windows, 420);
    }

    /// A tiny deterministic generator for the Monte Carlo below (no dependency).
    fn uniform(state: &mut u64) -> f64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        (*state >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Ville's bound holds for the rollout's test across stages whose canary share
    /// changes: identical versions cross `e = 20` in at most 5% of rollouts.
    #[test]
    fn identical_versions_rarely_cross_the_rollout_s_threshold() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let (runs, mut crossed) = (400, 0);
        for _ in 0..runs {
            let (mut t, mut d) = (EventTest::new(1.0, 1.25, 100.0), Drift::default());
            for canary in [15u64, 75, 150] {
                for _ in 0..100 {
                    let stable = 300 - canary;
                    let mut errors = |n: u64| (0..n).filter(|_| uniform(&mut state) < 0.02).count();
                    let c = Counts::new(errors(canary) as u64, canary);
                    let s = Counts::new(errors(stable) as u64, stable);
                    feed(&mut t, &mut d, c, s);
                }
                t = t.next_stage();
            }
            crossed += usize::from(t.rollout.max_log_e >= 20f64.ln());
        }
        assert!(crossed <= runs / 20, "{crossed} of {runs}");
    }

    #[test]
    fn the_absolute_limit_needs_the_canary_past_it() {
        // Windows of 1,000 requests whose rate varies by 10% (relative variance 0.01).
        let mut t = RateTest::new(0.05);
        t.add(Counts::new(45, 1_000), 0.01);
        assert!(t.log_e() < 0.0);
        let mut t = RateTest::new(0.05);
        for _ in 0..3 {
            t.add(Counts::new(100, 1_000), 0.01);
        }
        assert!(t.log_e() > 10.0, "{}", t.log_e());
    }
}
