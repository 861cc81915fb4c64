//! Simulated traffic for one analysis window: request counts, errors and latency
//! histograms per version, drawn from a scenario's model. Aggregate draws (Poisson
//! splitting over latency buckets), never one draw per request, so a 24-hour stage at
//! 10,000 req/s costs the same as one at 10 req/s.

use canary_controller::stats::{Histogram, VersionStats};
use rand::rngs::SmallRng;
use rand::Rng;
use rand_distr::{Binomial, Distribution, StandardNormal};

/// Envoy's default histogram bucket bounds (ms), as a bootstrap without
/// `histogram_bucket_settings` reports them.
pub const ENVOY_DEFAULT_BUCKETS_MS: [f64; 19] = [
    0.5,
    1.0,
    5.0,
    10.0,
    25.0,
    50.0,
    100.0,
    250.0,
    500.0,
    1_000.0,
    2_500.0,
    5_000.0,
    10_000.0,
    30_000.0,
    60_000.0,
    300_000.0,
    600_000.0,
    1_800_000.0,
    3_600_000.0,
];

/// A latency distribution (ms).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Latency {
    /// Log-normal with this median and log-sd.
    LogNormal { median_ms: f64, sigma: f64 },
    /// A log-normal body with a Pareto tail: `tail` of the requests take
    /// `tail_from_ms · U^(-1/alpha)` (capped at 5 min).
    HeavyTail {
        median_ms: f64,
        sigma: f64,
        tail: f64,
        tail_from_ms: f64,
        alpha: f64,
    },
}

impl Latency {
    /// P(latency ≤ x).
    pub fn cdf(&self, x_ms: f64) -> f64 {
        match *self {
            Latency::LogNormal { median_ms, sigma } => log_normal_cdf(x_ms, median_ms, sigma),
            Latency::HeavyTail {
                median_ms,
                sigma,
                tail,
                tail_from_ms,
                alpha,
            } => {
                let body = log_normal_cdf(x_ms, median_ms, sigma);
                let pareto = if x_ms < tail_from_ms {
                    0.0
                } else if x_ms >= 300_000.0 {
                    1.0
                } else {
                    1.0 - (tail_from_ms / x_ms).powf(alpha)
                };
                (1.0 - tail) * body + tail * pareto
            }
        }
    }

    /// The same distribution with every request `factor` times as slow.
    pub fn scaled(self, factor: f64) -> Latency {
        match self {
            Latency::LogNormal { median_ms, sigma } => Latency::LogNormal {
                median_ms: median_ms * factor,
                sigma,
            },
            Latency::HeavyTail {
                median_ms,
                sigma,
                tail,
                tail_from_ms,
                alpha,
            } => Latency::HeavyTail {
                median_ms: median_ms * factor,
                sigma,
                tail,
                tail_from_ms: tail_from_ms * factor,
                alpha,
            },
        }
    }
}

fn log_normal_cdf(x: f64, median: f64, sigma: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    0.5 * erfc(-(x / median).ln() / (sigma * std::f64::consts::SQRT_2))
}

/// Complementary error function: Numerical Recipes' `erfcc` (a Chebyshev fit, relative
/// error < 1.2e-7 everywhere, tails included).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

/// A latency distribution cut into histogram buckets: the probability of each bucket
/// (the last one above the last bound), and only the buckets that matter.
///
/// Each bucket's count is an independent Poisson draw (Poisson splitting: their sum is the
/// window's requests). The buckets far out in the tails, whose means add up to at most
/// [`GROUP_MEAN`], are drawn together: their total is one Poisson draw of the summed mean,
/// and each of its requests (there are none in most windows) falls in one of them with its
/// share of that mean. That is the same joint distribution as a draw per bucket, for one
/// random number instead of a dozen or more.
#[derive(Debug, Clone)]
pub struct Buckets {
    bounds: Vec<f64>,
    /// (bucket index, probability, midpoint ms) of the buckets with a probability that
    /// can show up at all, in bucket order.
    cells: Vec<(usize, f64, f64)>,
    /// The cells from the least probable up, and the sum of their probabilities up to each
    /// (`least_sums[k]`: the first `k` of them): the tail group is a run of these.
    least: Vec<usize>,
    least_sums: Vec<f64>,
    /// What a draw needs for the last window's mean requests: a stage's windows all have
    /// the same mean, so the `exp` and `sqrt` of a cell's mean are worked out once per
    /// stage, not once per window.
    plan: Option<(f64, Plan)>,
}

/// How one mean's histogram is drawn: the cells drawn one by one, and the tail group.
#[derive(Debug, Clone)]
struct Plan {
    /// (bucket index, midpoint ms, mean) of each cell drawn on its own.
    singles: Vec<(usize, f64, PoissonMean)>,
    /// The group's size (the first cells of `least`) and its summed mean.
    group: usize,
    group_mean: PoissonMean,
}

/// The tail group's cells add up to at most this mean: it draws nothing in most windows,
/// and then costs one random number.
const GROUP_MEAN: f64 = 0.5;

impl Buckets {
    pub fn new(latency: Latency, bounds: &[f64]) -> Buckets {
        let mut cells = Vec::new();
        let mut below = 0.0;
        let mut lower = 0.0;
        for i in 0..=bounds.len() {
            let (cdf, upper) = match bounds.get(i) {
                Some(&b) => (latency.cdf(b), b),
                None => (1.0, lower * 2.0),
            };
            let p = (cdf - below).max(0.0);
            if p > 1e-12 {
                cells.push((i, p, (lower + upper) / 2.0));
            }
            below = cdf.max(below);
            lower = upper;
        }
        let mut least: Vec<usize> = (0..cells.len()).collect();
        least.sort_by(|&a, &b| cells[a].1.total_cmp(&cells[b].1).then(a.cmp(&b)));
        let least_sums = std::iter::once(0.0)
            .chain(least.iter().scan(0.0, |sum, &c| {
                *sum += cells[c].1;
                Some(*sum)
            }))
            .collect();
        Buckets {
            bounds: bounds.to_vec(),
            cells,
            least,
            least_sums,
            plan: None,
        }
    }

    /// How many of the least probable cells make the tail group for `mean` requests.
    fn group_size(&self, mean: f64) -> usize {
        self.least_sums
            .partition_point(|&p| mean * p <= GROUP_MEAN)
            .saturating_sub(1)
    }

    /// The histogram of `Poisson(mean)` requests into `out`, in its own allocation. The mean
    /// stays the same from window to window (a stage's requests), so what each cell's draw
    /// needs of it is worked out once, when it changes.
    pub fn draw_same_mean(&mut self, rng: &mut SmallRng, mean: f64, out: &mut Histogram) {
        if self
            .plan
            .as_ref()
            .is_none_or(|(m, _)| m.to_bits() != mean.to_bits())
        {
            let group = self.group_size(mean);
            let singles = (self.least[group..].iter())
                .map(|&c| {
                    let (i, p, mid) = self.cells[c];
                    (i, mid, PoissonMean::new(mean * p))
                })
                .collect();
            let group_mean = PoissonMean::new(mean * self.least_sums[group]);
            let plan = Plan {
                singles,
                group,
                group_mean,
            };
            self.plan = Some((mean, plan));
        }
        let Some((_, plan)) = self.plan.as_ref() else {
            return;
        };
        self.clear(out);
        let mut sum_ms = 0.0;
        for (i, mid, m) in &plan.singles {
            let n = m.draw(rng);
            if let Some(b) = out.buckets.get_mut(*i) {
                b.1 += n;
            }
            sum_ms += n as f64 * mid;
        }
        let n = plan.group_mean.draw(rng);
        self.finish(out, rng, (plan.group, n), sum_ms);
    }

    /// Every bucket of `out` at these bounds, empty (a reused histogram keeps its
    /// allocation).
    fn clear(&self, out: &mut Histogram) {
        let buckets = &mut out.buckets;
        buckets.resize(self.bounds.len() + 1, (f64::INFINITY, 0));
        for (b, &bound) in buckets.iter_mut().zip(&self.bounds) {
            *b = (bound, 0);
        }
        if let Some(last) = buckets.last_mut() {
            *last = (f64::INFINITY, 0);
        }
    }

    /// The tail group's `n` requests, each in one of its `group` cells with its share of
    /// their probability, then the counts in Envoy's cumulative form.
    fn finish(
        &self,
        out: &mut Histogram,
        rng: &mut SmallRng,
        (group, n): (usize, u64),
        mut sum_ms: f64,
    ) {
        let buckets = &mut out.buckets;
        let total = self.least_sums[group];
        for _ in 0..n {
            let u = rng.gen::<f64>() * total;
            let k = self.least_sums[1..=group]
                .partition_point(|&s| s <= u)
                .min(group.saturating_sub(1));
            let (i, _, mid) = self.cells[self.least[k]];
            buckets[i].1 += 1;
            sum_ms += mid;
        }
        let mut cumulative = 0u64;
        for b in buckets.iter_mut() {
            cumulative += b.1;
            b.1 = cumulative;
        }
        out.count = cumulative;
        out.sum_ms = sum_ms;
    }
}

/// A Poisson mean with what a draw from it needs, worked out before drawing.
#[derive(Debug, Clone)]
struct PoissonMean {
    mean: f64,
    /// Small means (inversion): the CDF at 0, 1, 2... as the sequential search adds it up,
    /// up to where it stops growing. Large means: empty.
    cdf: Vec<f64>,
    /// Where the search for a `u` in `[j/GUIDES, (j+1)/GUIDES)` can start: the first `k`
    /// whose CDF reaches `j/GUIDES` (no earlier one can reach `u`).
    guide: Vec<u16>,
    /// `√mean`, for the normal approximation of large means.
    sqrt: f64,
}

/// Entries of a [`PoissonMean`]'s guide table: a power of two, so `u · GUIDES` is exact.
const GUIDES: usize = 32;

/// The sequential search of the inversion stops here whatever the draw.
const INVERSION_MAX_K: usize = 1_000;

impl PoissonMean {
    fn new(mean: f64) -> PoissonMean {
        let mut cdf = Vec::new();
        if mean > 0.0 && mean < POISSON_INVERSION_BELOW {
            // The same sums, in the same order, as a sequential search of the inversion: a
            // draw then looks its answer up instead of adding the terms up again.
            let mut p = (-mean).exp();
            let mut c = p;
            cdf.push(c);
            let mut k = 0;
            while k < INVERSION_MAX_K {
                k += 1;
                p *= mean / k as f64;
                c += p;
                cdf.push(c);
                // Past the mode the terms only shrink; below a quarter of c's last place
                // they no longer change it (round to nearest), so the CDF is final.
                if k as f64 > mean && p < c * f64::EPSILON / 4.0 {
                    break;
                }
            }
        }
        let guide = if cdf.is_empty() {
            Vec::new()
        } else {
            (0..GUIDES)
                .map(|j| {
                    let at = j as f64 / GUIDES as f64;
                    cdf.partition_point(|c| at > *c) as u16
                })
                .collect()
        };
        PoissonMean {
            mean,
            cdf,
            guide,
            sqrt: mean.sqrt(),
        }
    }

    fn draw(&self, rng: &mut SmallRng) -> u64 {
        let mean = self.mean;
        if mean <= 0.0 {
            return 0;
        }
        if mean < POISSON_INVERSION_BELOW {
            // Inversion: the first k whose CDF reaches u (the search goes on to its
            // limit past a CDF that stopped short of u).
            let u: f64 = rng.gen();
            let from = self.guide.get((u * GUIDES as f64) as usize).copied();
            let mut k = usize::from(from.unwrap_or(0));
            while self.cdf.get(k).is_some_and(|c| u > *c) {
                k += 1;
            }
            return if k < self.cdf.len() {
                k as u64
            } else {
                INVERSION_MAX_K as u64
            };
        }
        let z: f64 = StandardNormal.sample(rng);
        (mean + self.sqrt * z + 0.5).max(0.0) as u64
    }
}

/// Means below this are drawn exactly, by inversion.
const POISSON_INVERSION_BELOW: f64 = 40.0;

/// An exact binomial draw (rand_distr's BTPE).
pub fn binomial(rng: &mut SmallRng, n: u64, p: f64) -> u64 {
    if n == 0 || p <= 0.0 {
        return 0;
    }
    if p >= 1.0 {
        return n;
    }
    Binomial::new(n, p).map_or(0, |b| b.sample(rng))
}

/// One version's window into `out` (its histogram's allocation reused): `requests` drawn
/// over `buckets`, of which `error_rate` fail. Its LLM stats are left as they were.
pub fn version_window(
    rng: &mut SmallRng,
    buckets: &mut Buckets,
    mean_requests: f64,
    error_rate: f64,
    out: &mut VersionStats,
) {
    let mut duration = std::mem::take(&mut out.duration);
    buckets.draw_same_mean(rng, mean_requests, &mut duration);
    let requests = duration.count;
    let errors = binomial(rng, requests, error_rate.clamp(0.0, 1.0));
    *out = VersionStats {
        requests,
        rq_2xx: requests - errors,
        rq_5xx: errors,
        duration,
        // Left for the LLM answers to be drawn into (in its allocations), if any.
        llm: std::mem::take(&mut out.llm),
        ..VersionStats::default()
    };
}

/// A log-normal multiplier with log-sd `sigma` (mean-one in the median sense).
pub fn drift(rng: &mut SmallRng, sigma: f64) -> f64 {
    if sigma == 0.0 {
        return 1.0;
    }
    let z: f64 = StandardNormal.sample(rng);
    (sigma * z).exp()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn buckets_hold_the_distribution() {
        let l = Latency::LogNormal {
            median_ms: 120.0,
            sigma: 0.1,
        };
        assert!((l.cdf(120.0) - 0.5).abs() < 1e-6);
        // p99 = 120 · e^(2.326 σ) = 151.
        assert!((l.cdf(151.0) - 0.99).abs() < 2e-3, "{}", l.cdf(151.0));
        let mut b = Buckets::new(l, &ENVOY_DEFAULT_BUCKETS_MS);
        let mut rng = SmallRng::seed_from_u64(1);
        let mut h = Histogram::default();
        b.draw_same_mean(&mut rng, 100_000.0, &mut h);
        assert!((h.count as f64 - 100_000.0).abs() < 2_000.0);
        let q = h.quantile(0.5).expect("samples");
        assert!((100.0..250.0).contains(&q), "{q}");
    }

    /// The looked-up inversion draws what the search draws, draw for draw (the CDF
    /// table ends where the search's sums stop changing), also for u past its end.
    /// Inversion by sequential search (what [`PoissonMean::draw`] looks up).
    fn draw_by_search(rng: &mut SmallRng, mean: f64) -> u64 {
        let u: f64 = rng.gen();
        let mut k = 0u64;
        let mut p = (-mean).exp();
        let mut cdf = p;
        while u > cdf && k < INVERSION_MAX_K as u64 {
            k += 1;
            p *= mean / k as f64;
            cdf += p;
        }
        k
    }

    #[test]
    fn inversion_by_table_is_the_search() {
        for mean in [1e-9, 1e-4, 0.3, 1.0, 2.5, 7.0, 17.3, 39.999] {
            let table = PoissonMean::new(mean);
            let (mut a, mut b) = (SmallRng::seed_from_u64(3), SmallRng::seed_from_u64(3));
            for _ in 0..20_000 {
                assert_eq!(table.draw(&mut a), draw_by_search(&mut b, mean), "{mean}");
            }
            let last = *table.cdf.last().expect("a table");
            let past = |u: f64| {
                let k = table.cdf.partition_point(|c| u > *c);
                if k < table.cdf.len() {
                    k
                } else {
                    INVERSION_MAX_K
                }
            };
            // What the search gives for u just past the table's end, worked out the slow way.
            let u = f64::from_bits(last.to_bits() + 1);
            if u < 1.0 {
                let (mut k, mut p, mut c) = (0usize, (-mean).exp(), (-mean).exp());
                while u > c && k < INVERSION_MAX_K {
                    k += 1;
                    p *= mean / k as f64;
                    c += p;
                }
                assert_eq!(past(u), k, "{mean}");
            }
        }
    }

    #[test]
    fn poisson_and_binomial_have_their_means() {
        let mut rng = SmallRng::seed_from_u64(2);
        for mean in [0.3, 5.0, 39.0, 41.0, 5_000.0] {
            let n = 4_000;
            let draw = PoissonMean::new(mean);
            let total: u64 = (0..n).map(|_| draw.draw(&mut rng)).sum();
            let m = total as f64 / n as f64;
            assert!(
                (m - mean).abs() < 4.0 * (mean / n as f64).sqrt() + 0.01,
                "{mean}: {m}"
            );
        }
        let total: u64 = (0..4_000).map(|_| binomial(&mut rng, 1_000, 0.005)).sum();
        assert!((total as f64 / 4_000.0 - 5.0).abs() < 0.2);
    }
}
