//! The fallback chain's tier breakers and tier choice, independent of proxy-wasm so they
//! are unit-tested natively.
//!
//! Each tier's breaker is the circuit breaker of `breaker` (proxy-wide rolling window over
//! Envoy's shared counters, a trip stored once in shared data with CAS) plus a half-open
//! state: when `open_s` has passed, each worker lets one request per tick through to the
//! tier as a probe and sends the others on down the chain; one failed answer re-opens the
//! breaker (stored like a trip, so every worker follows), `half_open_probes` good answers
//! close it. The answers are read from the same shared counters, so all workers agree.

use canary_contract::CircuitBreaker;

use crate::breaker::{Local, Tick};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    /// The value of `canary_tier_breaker_state`.
    pub fn gauge(self) -> u64 {
        match self {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
        }
    }
}

/// What a tick asks the caller to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TierTick {
    Steady,
    /// Store `open_until_ms` with the CAS token read (then call [`TierBreaker::opened`]).
    Trip {
        open_until_ms: u64,
    },
}

/// One worker's view of one tier's breaker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierBreaker {
    local: Local,
    /// While half-open: the tier's cumulative (requests, errors) when it became half-open.
    half_open_base: Option<(u64, u64)>,
}

impl TierBreaker {
    pub fn new(config: &CircuitBreaker) -> TierBreaker {
        TierBreaker {
            local: Local::new(config),
            half_open_base: None,
        }
    }

    pub fn state(&self, now_ms: u64) -> State {
        if self.local.is_open(now_ms) {
            State::Open
        } else if self.half_open_base.is_some() {
            State::HalfOpen
        } else {
            State::Closed
        }
    }

    /// One tick: the proxy's cumulative `requests` and `errors` of the tier and the
    /// open-until instant stored in shared data (0 if none).
    pub fn tick(
        &mut self,
        config: &CircuitBreaker,
        probes: u32,
        now_ms: u64,
        requests: u64,
        errors: u64,
        stored_open_until_ms: u64,
    ) -> TierTick {
        let open_ms = u64::from(config.open_s) * 1_000;
        if let Some((base_requests, base_errors)) = self.half_open_base {
            let reopened = stored_open_until_ms > now_ms
                && stored_open_until_ms - now_ms <= open_ms
                && stored_open_until_ms != self.local.open_until_ms();
            if reopened {
                // Another worker saw a probe fail: follow it.
                self.half_open_base = None;
                self.local
                    .tick(config, now_ms, requests, errors, stored_open_until_ms);
                return TierTick::Steady;
            }
            if errors > base_errors {
                return TierTick::Trip {
                    open_until_ms: now_ms.saturating_add(open_ms),
                };
            }
            if requests.saturating_sub(base_requests) >= u64::from(probes) {
                self.half_open_base = None;
            }
            return TierTick::Steady;
        }
        match self
            .local
            .tick(config, now_ms, requests, errors, stored_open_until_ms)
        {
            Tick::Steady => TierTick::Steady,
            Tick::Closed => {
                self.half_open_base = Some((requests, errors));
                TierTick::Steady
            }
            Tick::Trip { open_until_ms, .. } => TierTick::Trip { open_until_ms },
        }
    }

    /// This worker stored the trip it reported.
    pub fn opened(&mut self, open_until_ms: u64) {
        self.half_open_base = None;
        self.local.opened(open_until_ms);
    }
}

/// The first tier that takes a request: closed, or half-open with a probe left in this
/// worker's budget for the tick (taken). `None`: every tier is open, the filter answers.
pub fn choose(tiers: &mut [(State, u32)]) -> Option<usize> {
    for (i, (state, probes_left)) in tiers.iter_mut().enumerate() {
        match state {
            State::Closed => return Some(i),
            State::HalfOpen if *probes_left > 0 => {
                *probes_left -= 1;
                return Some(i);
            }
            _ => {}
        }
    }
    None
}

/// The lighter tier a request the rollout's own service failed is retried on: the first
/// after the primary that can take a retry (`retryable`: it has a cluster) and whose breaker
/// lets it through (a half-open tier's probe is taken). `None`: the filter's response.
pub fn choose_retry(
    tiers: &mut [(State, u32)],
    retryable: impl Fn(usize) -> bool,
) -> Option<usize> {
    let mut candidates: Vec<(State, u32)> = tiers
        .iter()
        .enumerate()
        .map(|(i, t)| {
            if i == 0 || !retryable(i) {
                (State::Open, 0)
            } else {
                *t
            }
        })
        .collect();
    let chosen = choose(&mut candidates)?;
    tiers[chosen] = candidates[chosen];
    Some(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_go_to_the_first_lighter_tier_that_takes_them() {
        use State::*;
        let all = |_| true;
        // The primary is never a retry target, even closed.
        let mut tiers = [(Closed, 0), (Closed, 0), (Closed, 0)];
        assert_eq!(choose_retry(&mut tiers, all), Some(1));
        // A tier without a cluster is skipped; an open one too.
        assert_eq!(choose_retry(&mut tiers, |i| i != 1), Some(2));
        let mut tiers = [(Closed, 0), (Open, 0), (Closed, 0)];
        assert_eq!(choose_retry(&mut tiers, all), Some(2));
        // A half-open tier takes a retry as a probe while it has one left.
        let mut tiers = [(Open, 0), (HalfOpen, 1), (Open, 0)];
        assert_eq!(choose_retry(&mut tiers, all), Some(1));
        assert_eq!(tiers[1], (HalfOpen, 0), "the probe is taken");
        assert_eq!(choose_retry(&mut tiers, all), None, "then: the response");
        assert_eq!(tiers[0], (Open, 0), "the primary's gate is untouched");
    }

    fn config() -> CircuitBreaker {
        CircuitBreaker {
            error_rate_bp: 5_000,
            window_s: 10,
            min_requests: 10,
            open_s: 5,
        }
    }

    /// A tier's shared counters and stored open-until instant.
    #[derive(Default)]
    struct Shared {
        requests: u64,
        errors: u64,
        open_until_ms: u64,
        trips: u32,
    }

    impl Shared {
        fn tick(&mut self, b: &mut TierBreaker, now: u64) -> TierTick {
            let t = b.tick(
                &config(),
                3,
                now,
                self.requests,
                self.errors,
                self.open_until_ms,
            );
            if let TierTick::Trip { open_until_ms } = t {
                self.open_until_ms = open_until_ms;
                self.trips += 1;
                b.opened(open_until_ms);
            }
            t
        }
    }

    #[test]
    fn open_half_open_then_closed_after_good_probes() {
        let mut s = Shared::default();
        let mut b = TierBreaker::new(&config());
        s.tick(&mut b, 0);
        s.requests += 10;
        s.errors += 10;
        assert!(matches!(s.tick(&mut b, 100), TierTick::Trip { .. }));
        assert_eq!(b.state(100), State::Open);
        assert_eq!(b.state(5_099), State::Open);
        s.tick(&mut b, 5_100);
        assert_eq!(b.state(5_100), State::HalfOpen);
        // Two good probes: still half-open; the third closes it.
        s.requests += 2;
        s.tick(&mut b, 5_200);
        assert_eq!(b.state(5_200), State::HalfOpen);
        s.requests += 1;
        s.tick(&mut b, 5_300);
        assert_eq!(b.state(5_300), State::Closed);
        assert_eq!(s.trips, 1);
    }

    #[test]
    fn a_failed_probe_reopens_on_every_worker() {
        let mut s = Shared::default();
        let (mut a, mut w) = (TierBreaker::new(&config()), TierBreaker::new(&config()));
        s.tick(&mut a, 0);
        s.tick(&mut w, 0);
        s.requests += 10;
        s.errors += 10;
        s.tick(&mut a, 100);
        s.tick(&mut w, 150);
        assert_eq!(w.state(150), State::Open, "follows the stored trip");
        s.tick(&mut a, 5_100);
        s.tick(&mut w, 5_120);
        assert_eq!(
            (a.state(5_120), w.state(5_120)),
            (State::HalfOpen, State::HalfOpen)
        );
        s.requests += 2;
        s.errors += 1;
        assert!(matches!(s.tick(&mut a, 5_200), TierTick::Trip { .. }));
        assert_eq!(a.state(5_200), State::Open);
        assert_eq!(s.tick(&mut w, 5_250), TierTick::Steady);
        assert_eq!(w.state(5_250), State::Open, "w follows the re-open");
        assert_eq!(s.trips, 2);
        // Half-open again after open_s, and closes on good probes.
        s.tick(&mut a, 10_300);
        assert_eq!(a.state(10_300), State::HalfOpen);
        s.requests += 3;
        s.tick(&mut a, 10_400);
        assert_eq!(a.state(10_400), State::Closed);
        // Closed: the rolling window (from the half-open start: the 3 good probes and
        // what follows) trips it again on fresh failures.
        s.requests += 6;
        s.errors += 6;
        assert_eq!(s.tick(&mut a, 10_500), TierTick::Steady, "9 < min_requests");
        s.requests += 1;
        s.errors += 1;
        assert!(matches!(s.tick(&mut a, 10_600), TierTick::Trip { .. }));
    }

    #[test]
    fn choose_takes_the_first_tier_that_answers() {
        use State::*;
        assert_eq!(choose(&mut [(Closed, 0), (Closed, 0)]), Some(0));
        assert_eq!(choose(&mut [(Open, 0), (Closed, 0)]), Some(1));
        assert_eq!(choose(&mut [(Open, 0), (Open, 0)]), None);
        assert_eq!(choose(&mut []), None);
        // Half-open: one probe per budget, the rest go on down the chain.
        let mut tiers = [(HalfOpen, 1), (Open, 0), (HalfOpen, 1)];
        assert_eq!(choose(&mut tiers), Some(0));
        assert_eq!(choose(&mut tiers), Some(2));
        assert_eq!(choose(&mut tiers), None);
    }
}
