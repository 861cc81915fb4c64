//! Evenly spread shares of requests: which requests of a stream a fake server fails,
//! refuses or slows, so that tests can count exactly what they expect. A leaf: imports
//! nothing of the crate.

/// Whether the n-th request (0-based) is in the `rate_bp` share (that fails, refuses…):
/// spread evenly, so any window of 10,000 requests holds exactly `rate_bp` of them.
pub fn in_share(n: u64, rate_bp: u32) -> bool {
    let rate = u64::from(rate_bp.min(10_000));
    (n + 1) * rate / 10_000 != n * rate / 10_000
}
