//! Cumulative latency histograms and the quantiles the judge reads from them: the request
//! duration (the filter's bucket counters, made cumulative by the parser; lean mode's
//! cluster `upstream_rq_time`) and the time to first token (Envoy's histograms).

use serde::{Deserialize, Serialize};

/// Integers below this convert to `f64` exactly.
const EXACT_BELOW: f64 = 9_007_199_254_740_992.0;

/// Cumulative latency histogram: `buckets[i] = (upper bound in ms, requests ≤ bound)`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Histogram {
    pub buckets: Vec<(f64, u64)>,
    pub count: u64,
    pub sum_ms: f64,
}

impl Histogram {
    /// The `q` quantile (0..1) by linear interpolation inside the bucket that holds it, as
    /// Prometheus' `histogram_quantile` does. `None` without samples.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = q * self.count as f64;
        // `cumulative as f64 >= rank` as an integer comparison where that is the same (a
        // count below 2^53 converts exactly; one above is past any such rank either way):
        // the scan runs for every window.
        Some(if (0.0..EXACT_BELOW).contains(&rank) {
            let need = rank.ceil() as u64;
            self.interpolate(rank, |cumulative| cumulative >= need)
        } else {
            self.interpolate(rank, |cumulative| cumulative as f64 >= rank)
        })
    }

    /// [`Histogram::quantile`] of a histogram whose cumulative counts ascend (see
    /// [`Histogram::ascends`]; Envoy's always do): the same value, with the bucket that
    /// holds it found by bisection instead of a scan.
    pub fn quantile_of_ascending(&self, q: f64) -> Option<f64> {
        debug_assert!(self.ascends());
        if self.count == 0 {
            return None;
        }
        let rank = q * self.count as f64;
        let first = |reached: &dyn Fn(u64) -> bool| {
            let i = self.buckets.partition_point(|b| !reached(b.1));
            (i < self.buckets.len()).then_some(i)
        };
        Some(if (0.0..EXACT_BELOW).contains(&rank) {
            let need = rank.ceil() as u64;
            self.at(rank, first(&|cumulative| cumulative >= need))
        } else {
            self.at(rank, first(&|cumulative| cumulative as f64 >= rank))
        })
    }

    /// Whether the cumulative counts never go down from one bucket to the next.
    pub fn ascends(&self) -> bool {
        self.buckets.windows(2).all(|w| w[0].1 <= w[1].1)
    }

    /// The value at `rank` in the first bucket whose cumulative count has `reached` it.
    fn interpolate(&self, rank: f64, reached: impl Fn(u64) -> bool) -> f64 {
        self.at(rank, self.buckets.iter().position(|b| reached(b.1)))
    }

    /// The value at `rank` in bucket `i`, the first to reach it (`None`: none did).
    fn at(&self, rank: f64, i: Option<usize>) -> f64 {
        let Some(i) = i else {
            return self.buckets.last().map_or(0.0, |b| b.0);
        };
        let (lower_bound, lower_count) = i.checked_sub(1).map_or((0.0, 0), |j| self.buckets[j]);
        let (bound, cumulative) = self.buckets[i];
        if bound.is_infinite() {
            return lower_bound;
        }
        let in_bucket = cumulative.wrapping_sub(lower_count) as f64;
        let fraction = if in_bucket > 0.0 {
            (rank - lower_count as f64) / in_bucket
        } else {
            1.0
        };
        lower_bound + (bound - lower_bound) * fraction
    }

    /// Requests slower than `bound_ms`, counting whole buckets only: the buckets above the
    /// first bound ≥ `bound_ms`. Conservative (never more than the true number).
    pub fn count_above(&self, bound_ms: f64) -> u64 {
        // The first bound ≥ `bound_ms`, by bisection: the bounds ascend (the parsers sort
        // them and refuse unordered ones), and the judge asks for every window.
        let first = self
            .buckets
            .partition_point(|(b, _)| b.partial_cmp(&bound_ms).is_none_or(|o| o.is_lt()));
        let at_or_below = self
            .buckets
            .get(first)
            .map_or(self.count, |(_, cumulative)| *cumulative);
        self.count.saturating_sub(at_or_below)
    }

    /// `self - earlier`, or `None` if any bucket went down (the counters restarted). A bound
    /// of `self` that `earlier` lacks counts from zero.
    pub fn minus(&self, earlier: &Histogram) -> Option<Histogram> {
        if earlier.count > self.count {
            return None;
        }
        let mut buckets = Vec::with_capacity(self.buckets.len());
        if same_bounds(&self.buckets, &earlier.buckets) {
            // The usual case (one Envoy, its own bounds): bucket by bucket, in a loop without
            // an exit, which the compiler makes fast.
            let mut went_down = false;
            let pairs = self.buckets.iter().zip(&earlier.buckets);
            buckets.extend(pairs.map(|(&(bound, now), &(_, before))| {
                let (delta, below) = now.overflowing_sub(before);
                went_down |= below;
                (bound, delta)
            }));
            if went_down {
                return None;
            }
        } else {
            let mut before = BoundCursor::new(&earlier.buckets);
            for &(bound, cumulative) in &self.buckets {
                buckets.push((bound, cumulative.checked_sub(before.at(bound))?));
            }
        }
        Some(Histogram {
            buckets,
            count: self.count - earlier.count,
            sum_ms: (self.sum_ms - earlier.sum_ms).max(0.0),
        })
    }

    /// `*self += other`, saying whether the sum's cumulative counts ascend (checked in the
    /// same pass where the bounds are the same: a stage's running totals grow every window,
    /// and their quantiles want to know).
    pub fn add_ascending(&mut self, other: &Histogram) -> bool {
        if self.buckets.is_empty() || !same_bounds(&self.buckets, &other.buckets) {
            *self += other;
            return self.ascends();
        }
        let (mut ascending, mut last) = (true, 0);
        for (c, (_, theirs)) in self.buckets.iter_mut().zip(&other.buckets) {
            c.1 = c.1.saturating_add(*theirs);
            ascending &= last <= c.1;
            last = c.1;
        }
        self.count = self.count.saturating_add(other.count);
        self.sum_ms += other.sum_ms;
        ascending
    }

    /// `self + other` over `self`'s bounds (a bound only `other` has is left out, as all
    /// Envoys of a fleet share their bounds); saturating, never wrapping.
    pub fn plus(&self, other: &Histogram) -> Histogram {
        let mut sum = self.clone();
        sum += other;
        sum
    }
}

/// [`Histogram::plus`] in place: a stage's running totals grow by a window without a new
/// allocation each time.
impl std::ops::AddAssign<&Histogram> for Histogram {
    fn add_assign(&mut self, other: &Histogram) {
        if self.buckets.is_empty() {
            self.clone_from(other);
            return;
        }
        if same_bounds(&self.buckets, &other.buckets) {
            // The usual case (one fleet, one set of bounds): bucket by bucket.
            for (c, (_, theirs)) in self.buckets.iter_mut().zip(&other.buckets) {
                c.1 = c.1.saturating_add(*theirs);
            }
        } else {
            let mut theirs = BoundCursor::new(&other.buckets);
            for (bound, c) in &mut self.buckets {
                *c = c.saturating_add(theirs.at(*bound));
            }
        }
        self.count = self.count.saturating_add(other.count);
        self.sum_ms += other.sum_ms;
    }
}

/// Whether two histograms have the same bounds, in the same order.
fn same_bounds(a: &[(f64, u64)], b: &[(f64, u64)]) -> bool {
    // Every pair compared, without an early exit: a loop the compiler makes fast, and the
    // bounds are the same nearly always.
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .fold(true, |same, (x, y)| same & (x.0 == y.0))
}

/// Walks buckets in ascending bound order alongside another histogram's, so looking up each
/// bound is a merge step: linear over both, where a search per bucket was quadratic.
struct BoundCursor<'a> {
    buckets: std::iter::Peekable<std::slice::Iter<'a, (f64, u64)>>,
}

impl<'a> BoundCursor<'a> {
    fn new(buckets: &'a [(f64, u64)]) -> Self {
        BoundCursor {
            buckets: buckets.iter().peekable(),
        }
    }

    /// The cumulative count at exactly `bound`, 0 if there is no such bucket; `bound`s must
    /// come in ascending order (the parsers sort the buckets and refuse unordered ones).
    fn at(&mut self, bound: f64) -> u64 {
        while self.buckets.next_if(|(b, _)| *b < bound).is_some() {}
        self.buckets
            .next_if(|(b, _)| *b == bound)
            .map_or(0, |(_, c)| *c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bisection finds the bucket the scan finds, for every quantile of ascending counts
    /// (empty buckets and ties included), and `add_ascending` is `+=` that says whether
    /// the sum ascends.
    #[test]
    fn quantiles_by_bisection_are_the_scan() {
        let bounds = [0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, f64::INFINITY];
        for per_bucket in [[0, 0, 3, 0, 0, 1, 0, 2], [5, 1, 0, 0, 7, 0, 0, 0], [0; 8]] {
            let mut cumulative = 0;
            let buckets: Vec<(f64, u64)> = (bounds.iter().zip(per_bucket))
                .map(|(&b, n)| {
                    cumulative += n;
                    (b, cumulative)
                })
                .collect();
            let h = Histogram {
                buckets,
                count: cumulative,
                sum_ms: 0.0,
            };
            assert!(h.ascends());
            for q in (0..=200).map(|i| i as f64 / 200.0) {
                assert_eq!(h.quantile_of_ascending(q), h.quantile(q), "{q} {h:?}");
            }
            let mut sum = h.clone();
            assert!(sum.add_ascending(&h));
            assert_eq!(sum, h.plus(&h));
            let mut down = h.clone();
            down.buckets[3].1 = 100;
            let mut sum = h.clone();
            assert!(!sum.add_ascending(&down));
            assert_eq!(sum, h.plus(&down));
        }
    }

    #[test]
    fn quantiles_interpolate_inside_buckets() {
        let h = Histogram {
            buckets: vec![(10.0, 50), (100.0, 100), (f64::INFINITY, 100)],
            count: 100,
            sum_ms: 0.0,
        };
        assert_eq!(h.quantile(0.5), Some(10.0));
        assert_eq!(h.quantile(0.75), Some(55.0));
        assert_eq!(h.quantile(0.99), Some(98.2));
        assert_eq!(Histogram::default().quantile(0.99), None);
        assert_eq!(h.count_above(10.0), 50);
        assert_eq!(h.count_above(11.0), 0);
    }

    /// The bisection of `count_above` finds the bucket a scan does, at, between and past
    /// the bounds (and for a NaN bound: none).
    #[test]
    fn count_above_bisects_as_a_scan_finds() {
        let mut buckets: Vec<(f64, u64)> = canary_contract::stats::latency_buckets_ms()
            .into_iter()
            .zip((0..).map(|i: u64| i * i))
            .collect();
        let n = buckets.len() as u64;
        buckets.push((f64::INFINITY, n * n));
        let h = Histogram {
            buckets,
            count: n * n,
            sum_ms: 0.0,
        };
        let scan = |ms: f64| {
            let below = h
                .buckets
                .iter()
                .find(|(b, _)| *b >= ms)
                .map_or(h.count, |b| b.1);
            h.count - below
        };
        let mut probes = vec![0.0, -1.0, f64::NAN, f64::INFINITY, 1e9];
        for &(b, _) in &h.buckets {
            probes.extend([b, b * 0.999, b * 1.001]);
        }
        for ms in probes {
            assert_eq!(h.count_above(ms), scan(ms), "{ms}");
        }
    }

    /// The integer comparison of `quantile` finds the bucket the float one did, for small
    /// and huge counts alike.
    #[test]
    fn quantiles_compare_counts_exactly() {
        let by_floats = |h: &Histogram, q: f64| {
            let rank = q * h.count as f64;
            h.interpolate(rank, |c| c as f64 >= rank)
        };
        for scale in [1u64, 3, 1_000, 1 << 40, (1 << 53) - 7, 1 << 60] {
            let buckets = vec![
                (1.0, scale / 7),
                (2.0, scale / 3),
                (5.0, scale / 2 + 1),
                (10.0, scale - scale / 100),
                (f64::INFINITY, scale),
            ];
            let h = Histogram {
                buckets,
                count: scale,
                sum_ms: 0.0,
            };
            for q in [0.0, 1e-9, 0.1, 1.0 / 7.0, 0.5, 0.9, 0.99, 0.999, 1.0] {
                assert_eq!(h.quantile(q), Some(by_floats(&h, q)), "{scale} {q}");
            }
        }
    }

    fn cumulative(bounds: usize, per_bucket: u64) -> Histogram {
        let mut buckets: Vec<(f64, u64)> = (1..bounds)
            .map(|i| (i as f64, i as u64 * per_bucket))
            .collect();
        let count = bounds as u64 * per_bucket;
        buckets.push((f64::INFINITY, count));
        Histogram {
            buckets,
            count,
            sum_ms: (count * 3) as f64,
        }
    }

    #[test]
    fn minus_then_plus_is_the_identity() {
        let earlier = cumulative(20, 3);
        let now = cumulative(20, 7);
        let delta = now.minus(&earlier).expect("no restart");
        assert_eq!(delta.plus(&earlier), now);
        assert_eq!(earlier.plus(&delta), now);
        // From nothing (a first window) and with a bound the earlier reading lacks.
        assert_eq!(now.minus(&Histogram::default()), Some(now.clone()));
        assert_eq!(Histogram::default().plus(&now), now);
        let mut sparse = earlier.clone();
        sparse.buckets.remove(5);
        let delta = now.minus(&sparse).expect("no restart");
        assert_eq!(
            delta.buckets[5], now.buckets[5],
            "a missing bound counts from 0"
        );
        assert_eq!(now.minus(&now.plus(&now)), None, "went down");
    }

    /// Property: for any cumulative reading and any later one (more requests in any
    /// buckets), `later − earlier + earlier` is `later`, and the delta's total is the
    /// requests in between.
    mod property {
        use super::super::Histogram;
        use proptest::prelude::*;

        fn cumulative(bounds: &[f64], per_bucket: &[u64]) -> Histogram {
            let mut total = 0u64;
            let mut buckets: Vec<(f64, u64)> = bounds
                .iter()
                .zip(per_bucket)
                .map(|(b, c)| {
                    total += c;
                    (*b, total)
                })
                .collect();
            total += per_bucket.last().copied().unwrap_or(0);
            buckets.push((f64::INFINITY, total));
            Histogram {
                buckets,
                count: total,
                sum_ms: total as f64,
            }
        }

        proptest! {
            #[test]
            fn minus_then_plus_is_the_identity(
                counts in proptest::collection::vec((0u64..1_000_000, 0u64..1_000_000), 1..40)
            ) {
                let bounds: Vec<f64> = (1..=counts.len()).map(|i| i as f64 * 1.5).collect();
                let before: Vec<u64> = counts.iter().map(|c| c.0).collect();
                let after: Vec<u64> = counts.iter().map(|c| c.0 + c.1).collect();
                let earlier = cumulative(&bounds, &before);
                let later = cumulative(&bounds, &after);
                let delta = later.minus(&earlier).expect("counters only went up");
                prop_assert_eq!(delta.count, later.count - earlier.count);
                prop_assert_eq!(delta.plus(&earlier), later.clone());
                prop_assert_eq!(earlier.plus(&delta), later);
            }
        }
    }

    #[test]
    fn sums_saturate_instead_of_wrapping() {
        let mut big = cumulative(3, 1);
        big.buckets[2].1 = u64::MAX;
        big.count = u64::MAX;
        let sum = big.plus(&big);
        assert_eq!((sum.buckets[2].1, sum.count), (u64::MAX, u64::MAX));
    }

    /// 100k buckets: a search per bucket (5·10⁹ comparisons) would not finish in a unit
    /// test; the merge is linear.
    #[test]
    fn many_buckets_merge_linearly() {
        let earlier = cumulative(100_000, 1);
        let now = cumulative(100_000, 2);
        let delta = now.minus(&earlier).expect("no restart");
        assert_eq!(delta, earlier);
        assert_eq!(delta.plus(&earlier), now);
    }
}
