//! Fixed-point numbers for the verdicts' reasons: `{:.2}` of `Fixed(x)` prints exactly what
//! `{:.2}` of `x` prints (any format: without a precision it is `x`'s own), without the
//! standard library's slow path for a value whose decimal expansion ends early (`1.25`,
//! `240`): that path (bignum arithmetic) was most of the judge's time, as every window
//! formats a dozen such numbers.

use std::fmt;

/// `x`, printed with a precision `p` as `x · 10^p` rounded to nearest with ties to even on
/// `x`'s exact binary value, as `{:.p$}` does.
#[derive(Debug, Clone, Copy)]
pub struct Fixed(pub f64);

/// The most digits after the point the exact path handles (`10^p` times a 53-bit
/// mantissa stays well inside 128 bits).
const MAX_DIGITS: usize = 9;

impl fmt::Display for Fixed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let x = self.0;
        let plain = f.width().is_none() && !f.sign_plus() && !f.alternate();
        match f.precision().filter(|_| plain) {
            Some(p) => match scaled(x, p) {
                Some(n) => write_scaled(f, x.is_sign_negative(), n, p),
                None => fmt::Display::fmt(&x, f),
            },
            None => fmt::Display::fmt(&x, f),
        }
    }
}

/// `x · 10^p` rounded to an integer (ties to even), exactly; `None` where the exact path
/// does not apply (infinities, NaN, huge values, many digits).
fn scaled(x: f64, p: usize) -> Option<u128> {
    if !x.is_finite() || p > MAX_DIGITS {
        return None;
    }
    let bits = x.to_bits();
    let exponent = ((bits >> 52) & 0x7ff) as i32;
    let fraction = bits & ((1u64 << 52) - 1);
    // x = mantissa · 2^power.
    let (mantissa, power) = if exponent == 0 {
        (fraction, -1074)
    } else {
        (fraction | (1u64 << 52), exponent - 1075)
    };
    if p <= 3 && power < 0 {
        // What reasons print (a few digits of a number below 2^52), in 64 bits:
        // a < 2^53 · 10^3 < 2^63.
        let a = mantissa * 10u64.pow(p as u32);
        let shift = power.unsigned_abs();
        if shift >= 64 {
            // a < 2^63 ≤ half of 2^shift: rounds to 0.
            return Some(0);
        }
        let quotient = a >> shift;
        let remainder = a & ((1u64 << shift) - 1);
        let half = 1u64 << (shift - 1);
        let up = remainder > half || (remainder == half && quotient & 1 == 1);
        return Some(u128::from(quotient + u64::from(up)));
    }
    let a = u128::from(mantissa) * 10u128.pow(p as u32);
    if power >= 0 {
        // a < 2^83: shifted by up to 40 it still fits.
        return (power <= 40).then(|| a << power);
    }
    let shift = power.unsigned_abs();
    if shift >= 128 {
        // a < 2^83 ≤ half of 2^shift: rounds to 0.
        return Some(0);
    }
    let quotient = a >> shift;
    let remainder = a & ((1u128 << shift) - 1);
    let half = 1u128 << (shift - 1);
    let up = remainder > half || (remainder == half && quotient & 1 == 1);
    Some(quotient + u128::from(up))
}

fn write_scaled(f: &mut fmt::Formatter<'_>, negative: bool, n: u128, p: usize) -> fmt::Result {
    // Digits from the right: at most 39 of the integer, the point, the sign.
    let mut buf = [0u8; 48];
    let mut at = buf.len();
    // The digits that fit in 64 bits (all of them, for the numbers reasons print) with
    // 64-bit divisions: a 128-bit one is a library call.
    const CHUNK: u128 = 10u128.pow(19);
    let (mut high, mut low) = match u64::try_from(n) {
        Ok(low) => (0, low),
        Err(_) => (n / CHUNK, (n % CHUNK) as u64),
    };
    let mut digits = 0;
    while high > 0 || low > 0 || digits <= p {
        if digits == p && p > 0 {
            at -= 1;
            buf[at] = b'.';
        }
        at -= 1;
        buf[at] = b'0' + (low % 10) as u8;
        low /= 10;
        digits += 1;
        if digits % 19 == 0 && high > 0 {
            low = (high % CHUNK) as u64;
            high /= CHUNK;
        }
    }
    if negative {
        at -= 1;
        buf[at] = b'-';
    }
    // Only ASCII digits, '.' and '-' were written.
    f.write_str(std::str::from_utf8(&buf[at..]).map_err(|_| fmt::Error)?)
}

#[cfg(test)]
mod tests {
    use super::Fixed;

    fn check(x: f64) {
        for p in 0..=10 {
            assert_eq!(
                format!("{:.p$}", Fixed(x)),
                format!("{x:.p$}"),
                "{x:e} ({:#x}) at {p} digits",
                x.to_bits()
            );
        }
    }

    #[test]
    fn prints_what_the_standard_library_prints() {
        for x in [
            0.0,
            -0.0,
            1.0,
            -1.0,
            0.5,
            1.5,
            2.5,
            0.125,
            0.375,
            1.25,
            5.0,
            240.0,
            8000.0,
            0.005,
            0.015,
            0.045,
            1.005,
            2.675,
            99.0,
            99.9,
            0.99 * 100.0,
            1e-7,
            -1e-7,
            4.9e-324,
            2.2250738585072014e-308,
            9007199254740993.0,
            1e15,
            1e16,
            1e20,
            1.7e308,
            -123.456,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ] {
            check(x);
        }
        // Ties at every digit count: k/2^j for small k, j.
        for j in 0..12 {
            for k in 0..200 {
                check(k as f64 / f64::from(1u32 << j));
            }
        }
        // Random bit patterns (every exponent) and random values of the sizes reasons print.
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        for _ in 0..20_000 {
            check(f64::from_bits(next()));
            let unit = (next() >> 11) as f64 / (1u64 << 53) as f64;
            check(unit * 100.0);
            check(unit * 1e6);
            check((unit * 1e4).round() / 100.0);
        }
        // Other formats are the number's own.
        let x = 1.0 / 3.0;
        assert_eq!(format!("{}", Fixed(x)), format!("{x}"));
        assert_eq!(
            format!("{:8.3}|{:+.2}", Fixed(x), Fixed(x)),
            format!("{x:8.3}|{x:+.2}")
        );
    }
}
