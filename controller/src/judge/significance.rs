//! Statistical tests, in one place: Fisher's exact test and binomial tests on proportions,
//! Welch's t-test on means, each one-sided ("the canary is worse"), as p-values.

use statrs::distribution::{Binomial, ContinuousCDF, DiscreteCDF, Hypergeometric, StudentsT};

/// P(X ≥ k) for the canary's bad count in a 2×2 table with fixed margins: Fisher's exact
/// test, one-sided, "the canary has the larger share of bad requests".
pub fn fisher_greater(canary_bad: u64, canary_n: u64, stable_bad: u64, stable_n: u64) -> f64 {
    if canary_bad == 0 {
        return 1.0;
    }
    // Counts from stats may be near 2^64 each, and the table's margins (and statrs' own
    // `draws + successes`) must fit a u64: halve every count until they do. Proportions
    // stay; the test only gets more conservative (fewer samples), never wraps.
    let (mut canary_bad, mut canary_n, mut stable_bad, mut stable_n) =
        (canary_bad, canary_n, stable_bad, stable_n);
    let fits = |cb: u64, cn: u64, sb: u64, sn: u64| {
        let bad = u128::from(cb) + u128::from(sb);
        u128::from(cn) + u128::from(sn).max(bad) <= u128::from(u64::MAX)
    };
    while !fits(canary_bad, canary_n, stable_bad, stable_n) {
        (canary_bad, canary_n, stable_bad, stable_n) = (
            canary_bad >> 1,
            canary_n >> 1,
            stable_bad >> 1,
            stable_n >> 1,
        );
    }
    if canary_bad == 0 {
        return 1.0;
    }
    let population = canary_n + stable_n;
    let bad = canary_bad + stable_bad;
    match Hypergeometric::new(population, bad, canary_n) {
        Ok(h) => h.sf(canary_bad - 1),
        Err(_) => 1.0,
    }
}

/// P(X ≥ k) for X ~ Binomial(n, p): is a rate of k/n significantly above p?
pub fn binomial_greater(k: u64, n: u64, p: f64) -> f64 {
    if k == 0 {
        return 1.0;
    }
    match Binomial::new(p.clamp(0.0, 1.0), n) {
        Ok(b) => b.sf(k - 1),
        Err(_) => 1.0,
    }
}

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
    fn fisher_matches_a_hand_computed_value() {
        // 1 bad of 50 vs 0 of 950: P = 50/1000.
        assert!((fisher_greater(1, 50, 0, 950) - 0.05).abs() < 1e-9);
        assert_eq!(fisher_greater(0, 50, 3, 950), 1.0);
    }

    /// Found by the `stats` fuzz target: two versions' counts near 2^64 overflowed the
    /// table's margins.
    #[test]
    fn fisher_takes_counts_near_2_64() {
        let p = fisher_greater(1, u64::MAX - 1, 1, u64::MAX - 1);
        assert!((0.0..=1.0).contains(&p), "{p}");
    }

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
