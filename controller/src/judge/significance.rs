//! The classical tests the LLM score checks use ([`super::llm`]): Welch's t-test on means
//! and a binomial test on a proportion, each one-sided ("the canary is worse"), as p-values.
//! Both cost O(1) in the counts (regularised incomplete beta functions), unlike Fisher's
//! exact test, which summed one hypergeometric term per request and is gone with the
//! per-window request checks.

use statrs::distribution::{Binomial, ContinuousCDF, DiscreteCDF, StudentsT};

/// One-sided Welch's t-test: p-value of "the mean of `a` is above the mean of `b`", from
/// (mean, sample variance, n) of each.
pub fn welch_greater(a: (f64, f64, u64), b: (f64, f64, u64)) -> f64 {
    let (ma, va, na) = (a.0, a.1, a.2 as f64);
    let (mb, vb, nb) = (b.0, b.1, b.2 as f64);
    if na < 2.0 || nb < 2.0 {
        return 1.0;
    }
    let (sa, sb) = (va / na, vb / nb);
    let se2 = sa + sb;
    if se2.is_nan() || se2 <= 0.0 {
        return if ma > mb { 0.0 } else { 1.0 };
    }
    let t = (ma - mb) / se2.sqrt();
    let df = se2 * se2 / (sa * sa / (na - 1.0) + sb * sb / (nb - 1.0));
    match StudentsT::new(0.0, 1.0, df.max(1.0)) {
        Ok(dist) => dist.sf(t),
        Err(_) => 1.0,
    }
}

/// P(X ≤ k) for X ~ Binomial(n, p): is a rate of k/n significantly below p?
pub fn binomial_less(k: u64, n: u64, p: f64) -> f64 {
    if k >= n {
        return 1.0;
    }
    match Binomial::new(p.clamp(0.0, 1.0), n) {
        Ok(b) => b.cdf(k),
        Err(_) => 1.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn welch_and_binomial_values() {
        // Equal means: p = 0.5; far apart: tiny; reversed: near 1.
        assert!((welch_greater((1.0, 1.0, 100), (1.0, 1.0, 100)) - 0.5).abs() < 1e-9);
        assert!(welch_greater((2.0, 1.0, 100), (1.0, 1.0, 100)) < 1e-6);
        assert!(welch_greater((1.0, 1.0, 100), (2.0, 1.0, 100)) > 0.999_999);
        // P(X ≤ 0 | 10, 0.9) = 0.1^10.
        assert!((binomial_less(0, 10, 0.9) - 1e-10).abs() < 1e-15);
        assert_eq!(binomial_less(10, 10, 0.9), 1.0);
    }
}
