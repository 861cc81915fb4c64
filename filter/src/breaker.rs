//! The data-plane circuit breaker, independent of proxy-wasm so it is unit-tested natively.
//!
//! The window is proxy-wide at no per-request cost: Envoy's counters are shared by all
//! workers, so at each tick a worker reads the canary's `canary_rq_total` and
//! `canary_rq_5xx` of its rollout (after handing over its own counts) and keeps snapshots of
//! them, one per tenth of the window; the window's answers are the difference between now
//! and the oldest snapshot in it. A worker that sees the limit crossed stores the instant
//! until which the breaker is open in shared data, with the CAS token it read, so a trip
//! is stored (and counted) once however many workers see it; the others read it at their
//! next tick. Every worker closes at that same instant, with an empty window: after a trip
//! the canary must fail `min_requests` times again to re-open.

use canary_contract::CircuitBreaker;

/// Snapshots per window: counts leave the window in steps of a tenth of it.
pub const BUCKETS: u64 = 10;
const SLOTS: usize = BUCKETS as usize + 1;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Snapshot {
    /// `now_ms / bucket_ms + 1` when taken; 0: empty.
    slot: u64,
    requests: u64,
    errors: u64,
}

/// One worker's view of one rollout's breaker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Local {
    bucket_ms: u64,
    snapshots: [Snapshot; SLOTS],
    open_until_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tick {
    Steady,
    /// The limit is crossed: store `open_until_ms` (then call [`Local::opened`]).
    Trip {
        open_until_ms: u64,
        requests: u64,
        errors: u64,
    },
    /// The breaker was open in this worker's view and is closed now.
    Closed,
}

impl Local {
    pub fn new(config: &CircuitBreaker) -> Local {
        Local {
            bucket_ms: (u64::from(config.window_s) * 1_000 / BUCKETS).max(1),
            snapshots: [Snapshot::default(); SLOTS],
            open_until_ms: 0,
        }
    }

    /// Whether the canary's users go to stable at `now_ms`.
    pub fn is_open(&self, now_ms: u64) -> bool {
        now_ms < self.open_until_ms
    }

    pub fn open_until_ms(&self) -> u64 {
        self.open_until_ms
    }

    /// One tick at `now_ms`: the proxy's cumulative canary `requests` and `errors`, and the
    /// open-until instant stored in shared data (0 if none).
    pub fn tick(
        &mut self,
        config: &CircuitBreaker,
        now_ms: u64,
        requests: u64,
        errors: u64,
        stored_open_until_ms: u64,
    ) -> Tick {
        let open_ms = u64::from(config.open_s) * 1_000;
        // An instant further than `open_s` away only comes from a clock that went back:
        // ignored, so the breaker is never open longer than configured.
        let valid = |t: u64| t > now_ms && t - now_ms <= open_ms;
        let was_open = self.open_until_ms != 0;
        self.open_until_ms = if valid(stored_open_until_ms) {
            stored_open_until_ms
        } else if valid(self.open_until_ms) {
            self.open_until_ms
        } else {
            0
        };
        if self.open_until_ms != 0 {
            // Answers while open (to requests sent before the trip) do not count.
            self.snapshots = [Snapshot::default(); SLOTS];
            return Tick::Steady;
        }
        let slot = now_ms / self.bucket_ms + 1;
        if self.snapshots.iter().any(|s| s.slot > slot) {
            self.snapshots = [Snapshot::default(); SLOTS]; // the clock went back
        }
        let entry = &mut self.snapshots[(slot % SLOTS as u64) as usize];
        if entry.slot != slot {
            *entry = Snapshot {
                slot,
                requests,
                errors,
            };
        }
        if was_open {
            return Tick::Closed;
        }
        let Some(oldest) = self
            .snapshots
            .iter()
            .filter(|s| s.slot != 0 && s.slot + BUCKETS >= slot)
            .min_by_key(|s| s.slot)
        else {
            return Tick::Steady;
        };
        let requests = requests.saturating_sub(oldest.requests);
        let errors = errors.saturating_sub(oldest.errors);
        if config.trips(requests, errors) {
            return Tick::Trip {
                open_until_ms: now_ms.saturating_add(open_ms),
                requests,
                errors,
            };
        }
        Tick::Steady
    }

    /// This worker stored the trip it reported.
    pub fn opened(&mut self, open_until_ms: u64) {
        self.open_until_ms = open_until_ms;
        self.snapshots = [Snapshot::default(); SLOTS];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> CircuitBreaker {
        CircuitBreaker {
            error_rate_bp: 5_000,
            window_s: 10,
            min_requests: 20,
            open_s: 30,
        }
    }

    /// One proxy: its shared counters, its shared data (with CAS) and a worker's tick.
    #[derive(Default)]
    struct Proxy {
        requests: u64,
        errors: u64,
        open_until_ms: u64,
        cas: u32,
        trips: u32,
    }

    impl Proxy {
        fn answers(&mut self, n: u64, errors: u64) {
            self.requests += n;
            self.errors += errors;
        }

        /// A worker's tick; `race` makes its write lose to a concurrent writer.
        fn tick(&mut self, w: &mut Local, now_ms: u64, race: bool) -> Tick {
            let cas = self.cas;
            let t = w.tick(
                &config(),
                now_ms,
                self.requests,
                self.errors,
                self.open_until_ms,
            );
            if race {
                self.cas += 1;
            }
            if let Tick::Trip { open_until_ms, .. } = t {
                if self.cas == cas {
                    self.open_until_ms = open_until_ms;
                    self.cas += 1;
                    self.trips += 1;
                    w.opened(open_until_ms);
                }
            }
            t
        }
    }

    #[test]
    fn trips_at_the_share_only_with_the_minimum() {
        let mut p = Proxy::default();
        let mut w = Local::new(&config());
        let t = 1_000_000;
        p.answers(100, 0); // before the first tick: not in the window
        assert_eq!(p.tick(&mut w, t, false), Tick::Steady);
        p.answers(19, 10);
        assert_eq!(p.tick(&mut w, t + 100, false), Tick::Steady, "19 < min");
        p.answers(1, 0);
        assert_eq!(
            p.tick(&mut w, t + 200, false),
            Tick::Trip {
                open_until_ms: t + 30_200,
                requests: 20,
                errors: 10
            },
            "10 of 20: 50% reached"
        );
        assert!(w.is_open(t + 200) && w.is_open(t + 30_199) && !w.is_open(t + 30_200));
        assert_eq!(p.trips, 1);
    }

    #[test]
    fn below_the_share_never_trips() {
        let mut p = Proxy::default();
        let mut w = Local::new(&config());
        for i in 0..1_000 {
            p.answers(20, 9); // 45%
            assert_eq!(p.tick(&mut w, i * 100, false), Tick::Steady);
        }
    }

    #[test]
    fn counts_leave_the_rolling_window() {
        let mut p = Proxy::default();
        let mut w = Local::new(&config());
        p.tick(&mut w, 0, false);
        p.answers(15, 15); // errors at t=0..1s
        p.tick(&mut w, 500, false);
        // 10 s later those are out of the window; 5 new errors are below the minimum.
        for s in 1..=11 {
            p.tick(&mut w, s * 1_000, false);
        }
        p.answers(5, 5);
        assert_eq!(p.tick(&mut w, 11_500, false), Tick::Steady);
        // Within the window, they would have tripped it.
        let mut q = Proxy::default();
        let mut v = Local::new(&config());
        q.tick(&mut v, 0, false);
        q.answers(15, 15);
        q.tick(&mut v, 5_000, false);
        q.answers(5, 5);
        assert!(matches!(q.tick(&mut v, 9_900, false), Tick::Trip { .. }));
    }

    #[test]
    fn a_trip_on_one_worker_opens_every_worker_once() {
        let mut p = Proxy::default();
        let (mut a, mut b) = (Local::new(&config()), Local::new(&config()));
        let t = 50_000;
        p.tick(&mut a, t, false);
        p.tick(&mut b, t, false);
        // Answers from both workers land in the proxy's counters.
        p.answers(20, 20);
        // Both see the limit crossed; b's write loses the race to a's.
        let cas = p.cas;
        let seen_by_b = b.tick(&config(), t + 10, p.requests, p.errors, p.open_until_ms);
        assert!(matches!(p.tick(&mut a, t + 10, false), Tick::Trip { .. }));
        assert!(matches!(seen_by_b, Tick::Trip { .. }) && p.cas != cas);
        assert_eq!(p.trips, 1);
        assert!(a.is_open(t + 10) && !b.is_open(t + 10));
        // b adopts the stored trip at its next tick.
        assert_eq!(p.tick(&mut b, t + 20, false), Tick::Steady);
        assert_eq!(b.open_until_ms(), a.open_until_ms());
        // Both close at the same instant, each reporting it once, then count afresh.
        let end = a.open_until_ms();
        assert!(a.is_open(end - 1) && b.is_open(end - 1));
        assert!(!a.is_open(end) && !b.is_open(end));
        p.answers(100, 100); // while open: not counted after the close
        assert_eq!(p.tick(&mut a, end - 1, false), Tick::Steady);
        assert_eq!(p.tick(&mut a, end, false), Tick::Closed);
        assert_eq!(p.tick(&mut b, end + 5, false), Tick::Closed);
        assert_eq!(p.tick(&mut a, end + 100, false), Tick::Steady);
        p.answers(20, 19);
        assert!(matches!(
            p.tick(&mut a, end + 200, false),
            Tick::Trip {
                requests: 20,
                errors: 19,
                ..
            }
        ));
        assert_eq!(p.trips, 2);
    }

    #[test]
    fn a_lost_race_is_retried_from_the_counters() {
        let mut p = Proxy::default();
        let mut w = Local::new(&config());
        p.tick(&mut w, 0, false);
        p.answers(20, 20);
        assert!(matches!(p.tick(&mut w, 100, true), Tick::Trip { .. }));
        assert!(!w.is_open(100) && p.trips == 0);
        assert!(matches!(p.tick(&mut w, 200, false), Tick::Trip { .. }));
        assert!(w.is_open(200) && p.trips == 1);
    }

    #[test]
    fn clock_going_back_neither_panics_nor_keeps_it_open_longer() {
        let mut p = Proxy::default();
        let mut w = Local::new(&config());
        let t = 10_000_000;
        p.tick(&mut w, t, false);
        p.answers(20, 20);
        p.tick(&mut w, t + 1, false);
        assert!(w.is_open(t + 1));
        // An hour back: the stored instant is further than open_s away, so it is ignored.
        let back = t - 3_600_000;
        assert_eq!(p.tick(&mut w, back, false), Tick::Closed);
        assert!(!w.is_open(back));
        // Counting starts afresh: the 20 answers before the trip are not in the window.
        p.answers(19, 19);
        assert_eq!(p.tick(&mut w, back + 100, false), Tick::Steady);
        p.answers(1, 1);
        assert!(matches!(
            p.tick(&mut w, back + 200, false),
            Tick::Trip { .. }
        ));
        // Extremes do not overflow; counters going down (a restart) count as nothing.
        let mut e = Local::new(&config());
        let _ = e.tick(&config(), u64::MAX, u64::MAX, u64::MAX, u64::MAX);
        let _ = e.tick(&config(), 0, 0, 0, 0);
        let _ = e.tick(&config(), u64::MAX - 1, 5, 5, 0);
        assert_eq!(e.tick(&config(), u64::MAX - 1, 1, 1, 0), Tick::Steady);
    }
}
