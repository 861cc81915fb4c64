//! The global quota sentinel (seed 002 §8): tokens per minute summed over every proxy the
//! controller reads, against the LLM provider's quota. At `activate_share` of the quota it
//! throttles the rollout (the filters then refuse non-priority requests with 429); it lets go
//! only after `clear_windows` windows in a row below `clear_share` (hysteresis, so a load
//! hovering at the threshold does not flap the throttle every window).
//!
//! Pure: windows in, state out; the server publishes the state in the filter configuration.

use serde::Serialize;

use crate::spec::quota::QuotaSpec;

/// What the sentinel knows, shown in `/status` and `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Sentinel {
    pub throttled: bool,
    /// Tokens per minute over the fleet in the last window.
    pub last_tokens_per_minute: Option<f64>,
    /// Windows in a row below the clear share while throttled.
    pub windows_below: u32,
    /// When the throttle last changed (ms since the epoch).
    pub changed_ms: Option<u64>,
    /// Times the throttle went on.
    pub activations: u64,
}

/// A change of the throttle, to publish and log.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Change {
    Activated { tokens_per_minute: f64 },
    Cleared { tokens_per_minute: f64 },
}

impl Sentinel {
    /// One window of `tokens` (input + output, every proxy, both versions) over `window_ms`.
    pub fn observe(
        &mut self,
        spec: &QuotaSpec,
        tokens: u64,
        window_ms: u64,
        now_ms: u64,
    ) -> Option<Change> {
        if window_ms == 0 {
            return None;
        }
        let tpm = tokens as f64 * 60_000.0 / window_ms as f64;
        self.last_tokens_per_minute = Some(tpm);
        let quota = spec.tokens_per_minute as f64;
        if !self.throttled {
            if tpm >= quota * spec.activate_share {
                self.throttled = true;
                self.windows_below = 0;
                self.changed_ms = Some(now_ms);
                self.activations += 1;
                return Some(Change::Activated {
                    tokens_per_minute: tpm,
                });
            }
            return None;
        }
        if tpm < quota * spec.clear_share {
            self.windows_below += 1;
        } else {
            self.windows_below = 0;
        }
        if self.windows_below >= spec.clear_windows {
            self.throttled = false;
            self.windows_below = 0;
            self.changed_ms = Some(now_ms);
            return Some(Change::Cleared {
                tokens_per_minute: tpm,
            });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> QuotaSpec {
        serde_yaml_ng::from_str("tokens_per_minute: 6000").expect("spec")
    }

    #[test]
    fn trips_at_80_percent_and_clears_with_hysteresis() {
        let s = spec();
        let mut q = Sentinel::default();
        // 1 s windows: 79 tokens/s = 4740/min (79%) stays off, 80/s = 4800/min trips.
        assert_eq!(q.observe(&s, 79, 1_000, 1), None);
        assert!(!q.throttled);
        assert_eq!(
            q.observe(&s, 80, 1_000, 2),
            Some(Change::Activated {
                tokens_per_minute: 4_800.0
            })
        );
        assert!(q.throttled && q.activations == 1);
        // Between the shares: stays on, however long.
        for t in 3..20 {
            assert_eq!(q.observe(&s, 70, 1_000, t), None);
            assert!(q.throttled);
        }
        // Below 60% for two windows, then a window above resets the count.
        q.observe(&s, 50, 1_000, 20);
        q.observe(&s, 50, 1_000, 21);
        q.observe(&s, 61, 1_000, 22);
        assert!(q.throttled);
        q.observe(&s, 10, 1_000, 23);
        q.observe(&s, 0, 1_000, 24);
        assert!(q.throttled, "two windows below only");
        assert!(matches!(
            q.observe(&s, 59, 1_000, 25),
            Some(Change::Cleared { .. })
        ));
        assert!(!q.throttled);
        assert_eq!(q.changed_ms, Some(25));
        // Window length matters: 160 tokens over 2 s is the same 4800/min.
        assert!(matches!(
            q.observe(&s, 160, 2_000, 26),
            Some(Change::Activated { .. })
        ));
        assert_eq!(
            q.observe(&s, 1_000_000, 0, 27),
            None,
            "empty window ignored"
        );
    }
}
