//! Statistical tests, in one place: Fisher's exact test and binomial tests on proportions,
//! Welch's t-test on means, each one-sided ("the canary is worse"), as p-values.

use statrs::distribution::{
    Binomial, ContinuousCDF, DiscreteCDF, Hypergeometric, Normal, StudentsT,
};
use statrs::statistics::{Max, Min};

/// The most terms Fisher's exact sum may take (statrs adds the hypergeometric terms one by
/// one, so its cost grows with the counts: seconds at 10^7). Past it, in both tails, the
/// normal approximation, whose error at such counts is far below any significance level.
const EXACT_TERMS: u64 = 10_000;

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
    let Ok(h) = Hypergeometric::new(population, bad, canary_n) else {
        return 1.0;
    };
    // P(X ≥ k) = P(X > k − 1): the upper tail's terms, or one minus the lower tail's.
    let k = canary_bad - 1;
    let upper_terms = h.max().saturating_sub(k);
    let lower_terms = k.saturating_sub(h.min()).saturating_add(1);
    if upper_terms <= EXACT_TERMS {
        h.sf(k)
    } else if lower_terms <= EXACT_TERMS {
        (1.0 - h.cdf(k)).clamp(0.0, 1.0)
    } else {
        hypergeometric_normal_sf(canary_bad, population, bad, canary_n)
    }
}

/// P(X ≥ k) for X hypergeometric (population `n`, `successes` in it, `draws`), by the
/// normal approximation with continuity correction: O(1) whatever the counts.
fn hypergeometric_normal_sf(k: u64, n: u64, successes: u64, draws: u64) -> f64 {
    let (n, successes, draws) = (n as f64, successes as f64, draws as f64);
    let share = successes / n;
    let mean = draws * share;
    let variance = draws * share * (1.0 - share) * (n - draws) / (n - 1.0).max(1.0);
    let z = (k as f64 - 0.5 - mean) / variance.sqrt();
    match Normal::new(0.0, 1.0) {
        Ok(normal) if z.is_finite() => normal.sf(z),
        _ => {
            if k as f64 > mean {
                0.0
            } else {
                1.0
            }
        }
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

    /// Found by the `stats` fuzz target: an LLM window with 2^62 responses made Fisher's
    /// sum take hours (statrs adds every term); each tail past `EXACT_TERMS` is now the
    /// normal approximation, close to the exact value where both are computable.
    #[test]
    fn fisher_is_bounded_in_time_and_close_to_exact() {
        let started = std::time::Instant::now();
        let p = fisher_greater(1 << 61, 1 << 62, 1 << 61, 1 << 62);
        assert!((0.4..=0.6).contains(&p), "{p}");
        assert!(fisher_greater(1 << 40, 1 << 50, 1 << 30, 1 << 50) < 1e-9);
        assert!(fisher_greater(1 << 30, 1 << 50, 1 << 40, 1 << 50) > 1.0 - 1e-9);
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        // ~30,000 terms each side: exact and approximate agree to a few thousandths.
        let (canary_bad, canary_n, stable_bad, stable_n) = (30_150, 60_000, 30_000, 60_000);
        let exact = Hypergeometric::new(canary_n + stable_n, canary_bad + stable_bad, canary_n)
            .expect("table")
            .sf(canary_bad - 1);
        let approx = fisher_greater(canary_bad, canary_n, stable_bad, stable_n);
        assert!((exact - approx).abs() < 0.005, "{exact} vs {approx}");
        assert!((0.1..0.3).contains(&exact), "{exact}");
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
