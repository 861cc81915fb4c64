//! Envoy's cumulative histograms (request duration, time to first token) and the quantiles
//! the judge reads from them.

use serde::{Deserialize, Serialize};

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
        let mut lower_bound = 0.0;
        let mut lower_count = 0u64;
        for &(bound, cumulative) in &self.buckets {
            if cumulative as f64 >= rank {
                if bound.is_infinite() {
                    return Some(lower_bound);
                }
                let in_bucket = (cumulative - lower_count) as f64;
                let fraction = if in_bucket > 0.0 {
                    (rank - lower_count as f64) / in_bucket
                } else {
                    1.0
                };
                return Some(lower_bound + (bound - lower_bound) * fraction);
            }
            lower_bound = bound;
            lower_count = cumulative;
        }
        Some(lower_bound)
    }

    /// Requests slower than `bound_ms`, counting whole buckets only: the buckets above the
    /// first bound ≥ `bound_ms`. Conservative (never more than the true number).
    pub fn count_above(&self, bound_ms: f64) -> u64 {
        let at_or_below = self
            .buckets
            .iter()
            .find(|(bound, _)| *bound >= bound_ms)
            .map_or(self.count, |(_, cumulative)| *cumulative);
        self.count.saturating_sub(at_or_below)
    }

    /// `self - earlier`, or `None` if any bucket went down (the counters restarted).
    pub fn minus(&self, earlier: &Histogram) -> Option<Histogram> {
        if earlier.count > self.count {
            return None;
        }
        let mut buckets = Vec::with_capacity(self.buckets.len());
        for &(bound, cumulative) in &self.buckets {
            let before = earlier
                .buckets
                .iter()
                .find(|(b, _)| *b == bound)
                .map_or(0, |(_, c)| *c);
            buckets.push((bound, cumulative.checked_sub(before)?));
        }
        Some(Histogram {
            buckets,
            count: self.count - earlier.count,
            sum_ms: (self.sum_ms - earlier.sum_ms).max(0.0),
        })
    }

    pub fn plus(&self, other: &Histogram) -> Histogram {
        if self.buckets.is_empty() {
            return other.clone();
        }
        let buckets = self
            .buckets
            .iter()
            .map(|&(bound, c)| {
                let o = other
                    .buckets
                    .iter()
                    .find(|(b, _)| *b == bound)
                    .map_or(0, |(_, c)| *c);
                (bound, c + o)
            })
            .collect();
        Histogram {
            buckets,
            count: self.count + other.count,
            sum_ms: self.sum_ms + other.sum_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
