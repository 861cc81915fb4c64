//! `ln` of a grid of values at once, for the sequential tests' per-window updates (16
//! alternatives, several tests, every window of every rollout): fdlibm's algorithm (error
//! below 1 ulp, as the platform's `ln`), written without branches or calls so the compiler
//! keeps it in registers and can work on several values at a time. A leaf: imports nothing.

/// `ln` of each value, in place. Values that are not positive, normal and finite (never
/// the case for the tests' ratios, but cheap to check) go through `f64::ln` instead.
pub(crate) fn ln_each<const N: usize>(values: &mut [f64; N]) {
    if values
        .iter()
        .all(|&v| (f64::MIN_POSITIVE..f64::INFINITY).contains(&v))
    {
        for v in values.iter_mut() {
            *v = ln_normal(*v);
        }
    } else {
        for v in values.iter_mut() {
            *v = v.ln();
        }
    }
}

/// fdlibm's `__ieee754_log` for a positive normal finite `x`: `x = 2^k·(1 + f)` with
/// `1 + f` in `[√2/2, √2)`, and `ln(1 + f)` from a minimax polynomial in `s = f/(2 + f)`.
fn ln_normal(x: f64) -> f64 {
    // fdlibm's constants, by their bits: ln 2 in two parts, and the polynomial's.
    const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
    const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);
    const LG1: f64 = f64::from_bits(0x3fe5_5555_5555_5593);
    const LG2: f64 = f64::from_bits(0x3fd9_9999_9997_fa04);
    const LG3: f64 = f64::from_bits(0x3fd2_4924_9422_9359);
    const LG4: f64 = f64::from_bits(0x3fcc_71c5_1d8e_78af);
    const LG5: f64 = f64::from_bits(0x3fc7_4664_96cb_03de);
    const LG6: f64 = f64::from_bits(0x3fc3_9a09_d078_c69f);
    const LG7: f64 = f64::from_bits(0x3fc2_f112_df3e_5244);
    let bits = x.to_bits();
    // The high word moved so that the exponent counts from √2/2: then its mantissa with
    // √2/2's exponent put back is `1 + f`.
    let high = ((bits >> 32) as u32).wrapping_add(0x3ff0_0000 - 0x3fe6_a09e);
    let k = (high >> 20) as i32 - 0x3ff;
    let high = (high & 0x000f_ffff) + 0x3fe6_a09e;
    let f = f64::from_bits((u64::from(high) << 32) | (bits & 0xffff_ffff)) - 1.0;
    let half_f2 = 0.5 * f * f;
    let s = f / (2.0 + f);
    let z = s * s;
    let w = z * z;
    let t1 = w * (LG2 + w * (LG4 + w * LG6));
    let t2 = z * (LG1 + w * (LG3 + w * (LG5 + w * LG7)));
    let r = t2 + t1;
    let dk = f64::from(k);
    s * (half_f2 + r) + dk * LN2_LO - half_f2 + f + dk * LN2_HI
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Within an ulp of the platform's `ln` (both are below 1 ulp from the true value),
    /// over the whole range and densely around 1, where `ln` is smallest.
    #[test]
    fn agrees_with_the_platform_ln() {
        let mut x = f64::MIN_POSITIVE;
        let mut values = Vec::new();
        while x < 1e300 {
            values.push(x);
            x *= 1.000_731;
        }
        values.extend((1..200_000).map(|i| 0.5 + i as f64 * 5e-6));
        values.extend([1.0, 2.0, 0.5, std::f64::consts::E, 1.0 + f64::EPSILON]);
        for &v in &values {
            let (ours, theirs) = (ln_normal(v), v.ln());
            let ulp = f64::from_bits(theirs.abs().to_bits() + 1) - theirs.abs();
            assert!((ours - theirs).abs() <= ulp, "{v}: {ours} vs {theirs}");
        }
        let mut odd = [0.0, -1.0, f64::INFINITY, f64::NAN, 1e-310, 3.0];
        ln_each(&mut odd);
        assert_eq!(odd[0], f64::NEG_INFINITY);
        assert!(odd[1].is_nan() && odd[3].is_nan());
        assert_eq!(odd[2], f64::INFINITY);
        assert_eq!(odd[4], 1e-310f64.ln());
        assert_eq!(odd[5], 3f64.ln());
    }
}
