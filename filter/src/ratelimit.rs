//! Per-user token buckets (tokens and requests per minute) and the quota throttle, as plain
//! Rust so every rule is tested natively.
//!
//! Buckets live in the worker's VM memory, not in Envoy's shared data: shared data has no
//! delete, so a table keyed by user would only grow, and every request would pay two more
//! calls into the host (read, compare-and-swap). Each worker therefore holds `1/workers` of
//! the configured limits (`rate_limit.workers`).
//!
//! Amounts are kept in fixed point, scaled by the refill period in ms: a bucket of `n`
//! per period refills `n` units per ms, so refill, charge and refund are exact integers.
//! The contract caps limits at 10^12 per period and periods at an hour, so a full bucket
//! (< 3.6 × 10^18) fits an `i64`; anything larger (a huge answer) saturates.

use std::collections::HashMap;

use canary_contract::stats::Metric;
use canary_contract::RateLimit;

/// Why a request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Tokens,
    Requests,
    Throttle,
}

impl Refusal {
    /// The counter the refusal increments.
    pub fn metric(self) -> Metric {
        match self {
            Refusal::Tokens => Metric::RateLimitedTokens,
            Refusal::Requests => Metric::RateLimitedRequests,
            Refusal::Throttle => Metric::Throttled,
        }
    }

    /// The `code` of the JSON error body.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::Tokens => "tokens_per_minute",
            Refusal::Requests => "requests_per_minute",
            Refusal::Throttle => "quota_throttle",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    pub reason: Refusal,
    pub retry_after_s: u64,
}

impl Rejection {
    /// The 429's JSON body (OpenAI-like: clients already understand `error.type`).
    pub fn body(&self) -> String {
        let message = match self.reason {
            Refusal::Tokens => "token rate limit exceeded for this user",
            Refusal::Requests => "request rate limit exceeded for this user",
            Refusal::Throttle => "the service is near its quota: only priority requests pass",
        };
        format!(
            "{{\"error\":{{\"type\":\"rate_limit_exceeded\",\"code\":\"{}\",\"message\":\"{message}\",\"retry_after_s\":{}}}}}",
            self.reason.code(),
            self.retry_after_s
        )
    }
}

/// An admitted request: the tokens charged up front (to settle against the answer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    pub charged_tokens: u64,
    /// Let through by priority while the rollout was throttled.
    pub priority_passed: bool,
    /// Whether a user bucket was charged (settle only then).
    pub tracked: bool,
}

/// Whether a request passes the throttle: its user key is a priority key, or the priority
/// header (read only if configured) has one of the priority values.
pub fn is_priority(
    config: &RateLimit,
    key: Option<&str>,
    header: impl FnOnce(&str) -> Option<Vec<u8>>,
) -> bool {
    let p = &config.priority;
    key.is_some_and(|k| p.keys.contains(k))
        || p.header
            .as_deref()
            .and_then(header)
            .is_some_and(|v| std::str::from_utf8(&v).is_ok_and(|v| p.values.contains(v)))
}

/// One rollout's limits per worker, in the units the buckets use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Limits {
    tokens: Option<u64>,
    requests: Option<u64>,
    period_ms: u64,
    estimate: u64,
    max_users: usize,
}

impl Limits {
    fn of(config: &RateLimit) -> Limits {
        let workers = u64::from(config.workers.max(1));
        // Rounded up: a limit smaller than the worker count still lets one through.
        let per_worker = |n: u64| n.div_ceil(workers).max(1);
        Limits {
            tokens: config.tokens_per_minute.map(per_worker),
            requests: config.requests_per_minute.map(per_worker),
            period_ms: config.refill_period_ms.max(1),
            estimate: config.estimate_tokens,
            max_users: config.max_users.max(1) as usize,
        }
    }

    fn is_empty(&self) -> bool {
        self.tokens.is_none() && self.requests.is_none()
    }
}

/// One user's two buckets: balance × period_ms (may go negative: a debt from answers that
/// cost more than estimated, paid back by refill before the next admission).
#[derive(Debug, Clone, Copy)]
struct UserBucket {
    tokens: i64,
    requests: i64,
    /// Latest instant seen; refill never runs backwards when the clock does.
    seen_ms: u64,
}

/// Balance after refilling `per_period` per period over `elapsed_ms`, capped at one period.
/// `n` units of a bucket refilled over `period_ms`, in the buckets' fixed point.
fn scaled(n: u64, period_ms: u64) -> i64 {
    let n = i64::try_from(n).unwrap_or(i64::MAX);
    n.saturating_mul(i64::try_from(period_ms).unwrap_or(i64::MAX))
}

fn refill(balance: i64, per_period: Option<u64>, period_ms: u64, elapsed_ms: u64) -> i64 {
    let Some(n) = per_period else {
        return balance;
    };
    let cap = scaled(n, period_ms);
    let added = scaled(n, elapsed_ms.min(period_ms));
    balance.saturating_add(added).min(cap)
}

/// Whole seconds until `balance` reaches `target`, at least 1.
fn wait_s(balance: i64, target: i64, per_period: u64) -> u64 {
    let deficit = target.saturating_sub(balance).max(1) as u64;
    let ms = deficit.div_ceil(per_period.max(1));
    ms.div_ceil(1000).max(1)
}

impl UserBucket {
    fn full(limits: &Limits, now_ms: u64) -> UserBucket {
        let cap = |n: Option<u64>| scaled(n.unwrap_or(0), limits.period_ms);
        UserBucket {
            tokens: cap(limits.tokens),
            requests: cap(limits.requests),
            seen_ms: now_ms,
        }
    }

    fn advance(&mut self, limits: &Limits, now_ms: u64) {
        let elapsed = now_ms.saturating_sub(self.seen_ms);
        self.seen_ms = self.seen_ms.max(now_ms);
        self.tokens = refill(self.tokens, limits.tokens, limits.period_ms, elapsed);
        self.requests = refill(self.requests, limits.requests, limits.period_ms, elapsed);
    }

    fn is_full(&self, limits: &Limits, now_ms: u64) -> bool {
        let mut b = *self;
        b.advance(limits, now_ms);
        let f = UserBucket::full(limits, now_ms);
        b.tokens >= f.tokens && b.requests >= f.requests
    }
}

/// No slot: the end of the recency list.
const NONE: usize = usize::MAX;

/// One tracked user: their buckets, and their place in the recency list.
struct Slot {
    key: String,
    bucket: UserBucket,
    /// The next more recently seen user (`NONE`: this is the newest).
    newer: usize,
    /// The next less recently seen user (`NONE`: this is the oldest).
    older: usize,
}

/// The users of one rollout, by key and in order of when they were last seen (a doubly
/// linked list through slot indices), so a lookup, a move to the front and forgetting the
/// least recently seen user are each O(1), whatever the number of users. A key is kept
/// twice, in the index and in its slot: the oldest user is found by slot, then removed from
/// the index by key.
struct Users {
    index: HashMap<String, usize>,
    slots: Vec<Slot>,
    /// Slots of users forgotten, for reuse.
    free: Vec<usize>,
    newest: usize,
    oldest: usize,
    /// Slots looked at to make room (tests assert the work per request is bounded).
    #[cfg(test)]
    examined: usize,
}

impl Default for Users {
    fn default() -> Self {
        Users {
            index: HashMap::new(),
            slots: Vec::new(),
            free: Vec::new(),
            newest: NONE,
            oldest: NONE,
            #[cfg(test)]
            examined: 0,
        }
    }
}

impl Users {
    fn len(&self) -> usize {
        self.index.len()
    }

    fn clear(&mut self) {
        *self = Users::default();
    }

    fn unlink(&mut self, i: usize) {
        let (newer, older) = (self.slots[i].newer, self.slots[i].older);
        match newer {
            NONE => self.newest = older,
            n => self.slots[n].older = older,
        }
        match older {
            NONE => self.oldest = newer,
            o => self.slots[o].newer = newer,
        }
    }

    fn push_newest(&mut self, i: usize) {
        self.slots[i].newer = NONE;
        self.slots[i].older = self.newest;
        match self.newest {
            NONE => self.oldest = i,
            n => self.slots[n].newer = i,
        }
        self.newest = i;
    }

    /// `key`'s slot, now the most recently seen.
    fn touch(&mut self, key: &str) -> Option<usize> {
        let i = *self.index.get(key)?;
        if self.newest != i {
            self.unlink(i);
            self.push_newest(i);
        }
        Some(i)
    }

    fn insert(&mut self, key: &str, bucket: UserBucket) -> usize {
        let slot = Slot {
            key: key.to_string(),
            bucket,
            newer: NONE,
            older: NONE,
        };
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i] = slot;
                i
            }
            None => {
                self.slots.push(slot);
                self.slots.len() - 1
            }
        };
        self.index.insert(key.to_string(), i);
        self.push_newest(i);
        i
    }

    /// Forgets the least recently seen user.
    fn remove_oldest(&mut self) {
        let i = self.oldest;
        if i == NONE {
            return;
        }
        self.unlink(i);
        let key = std::mem::take(&mut self.slots[i].key);
        self.index.remove(&key);
        self.free.push(i);
    }

    fn oldest_bucket(&mut self) -> Option<&UserBucket> {
        #[cfg(test)]
        {
            self.examined += 1;
        }
        self.slots.get(self.oldest).map(|s| &s.bucket)
    }
}

struct Table {
    rollout: String,
    limits: Limits,
    users: Users,
}

impl Table {
    /// `key`'s bucket, refilled to `now_ms`; a user not in the table (new, or forgotten
    /// meanwhile) starts from a full bucket, after room is made for them.
    fn bucket(&mut self, key: &str, now_ms: u64) -> &mut UserBucket {
        let limits = self.limits;
        let i = match self.users.touch(key) {
            Some(i) => i,
            None => {
                self.make_room(now_ms);
                self.users.insert(key, UserBucket::full(&limits, now_ms))
            }
        };
        let bucket = &mut self.users.slots[i].bucket;
        bucket.advance(&limits, now_ms);
        bucket
    }

    /// Makes room for one more user: forget the least recently seen users while their
    /// buckets are full again (they are indistinguishable from new ones), then, if the table
    /// is still full, the least recently seen. Each user is forgotten once, so this is O(1)
    /// amortised per request (it used to scan every user for full buckets, then again for
    /// the oldest).
    fn make_room(&mut self, now_ms: u64) {
        if self.users.len() < self.limits.max_users {
            return;
        }
        let limits = self.limits;
        while self
            .users
            .oldest_bucket()
            .is_some_and(|b| b.is_full(&limits, now_ms))
        {
            self.users.remove_oldest();
        }
        if self.users.len() >= self.limits.max_users {
            self.users.remove_oldest();
        }
    }
}

/// Every rate-limited rollout's user table, in one worker's VM. Survives configuration
/// updates; a rollout's table starts over when its limits change.
#[derive(Default)]
pub struct RateLimiter {
    tables: Vec<Table>,
}

impl RateLimiter {
    fn table(&mut self, rollout: &str, limits: Limits) -> &mut Table {
        let i = match self.tables.iter().position(|t| t.rollout == rollout) {
            Some(i) => i,
            None => {
                self.tables.push(Table {
                    rollout: rollout.to_string(),
                    limits,
                    users: Users::default(),
                });
                self.tables.len() - 1
            }
        };
        let t = &mut self.tables[i];
        if t.limits != limits {
            t.limits = limits;
            t.users.clear();
        }
        t
    }

    /// Decides one request of user `key` (None: no usable key, so no user bucket).
    /// `is_priority` is asked only while the rollout is throttled.
    pub fn check(
        &mut self,
        rollout: &str,
        config: &RateLimit,
        key: Option<&str>,
        now_ms: u64,
        is_priority: impl FnOnce() -> bool,
    ) -> Result<Admitted, Rejection> {
        let mut priority_passed = false;
        if config.throttled {
            if !is_priority() {
                return Err(Rejection {
                    reason: Refusal::Throttle,
                    retry_after_s: u64::from(config.throttle_retry_after_s.max(1)),
                });
            }
            priority_passed = true;
        }
        let limits = Limits::of(config);
        let untracked = Admitted {
            charged_tokens: 0,
            priority_passed,
            tracked: false,
        };
        let Some(key) = key.filter(|_| !limits.is_empty()) else {
            return Ok(untracked);
        };
        let bucket = self.table(rollout, limits).bucket(key, now_ms);
        let p = scaled(1, limits.period_ms);
        if let Some(n) = limits.requests {
            if bucket.requests < p {
                return Err(Rejection {
                    reason: Refusal::Requests,
                    retry_after_s: wait_s(bucket.requests, p, n),
                });
            }
        }
        let estimate = scaled(limits.estimate, limits.period_ms);
        if let Some(n) = limits.tokens {
            // A debt must be paid off first, and the estimate must fit.
            if bucket.tokens <= 0 || bucket.tokens < estimate {
                return Err(Rejection {
                    reason: Refusal::Tokens,
                    retry_after_s: wait_s(bucket.tokens, estimate.max(1), n),
                });
            }
        }
        if limits.requests.is_some() {
            bucket.requests -= p;
        }
        let charged_tokens = if limits.tokens.is_some() {
            bucket.tokens -= estimate;
            limits.estimate
        } else {
            0
        };
        Ok(Admitted {
            charged_tokens,
            priority_passed,
            tracked: true,
        })
    }

    /// The answer of an admitted request used `actual` tokens: charge or refund the
    /// difference to what was charged up front.
    pub fn settle(&mut self, rollout: &str, key: &str, charged: u64, actual: u64, now_ms: u64) {
        let Some(table) = self.tables.iter_mut().find(|t| t.rollout == rollout) else {
            return;
        };
        let limits = table.limits;
        let Some(n) = limits.tokens else {
            return;
        };
        // A user forgotten meanwhile starts from a full bucket, as a new user would.
        let bucket = table.bucket(key, now_ms);
        let cap = scaled(n, limits.period_ms);
        bucket.tokens = if actual >= charged {
            let extra = scaled(actual - charged, limits.period_ms);
            bucket.tokens.saturating_sub(extra)
        } else {
            let refund = scaled(charged - actual, limits.period_ms);
            bucket.tokens.saturating_add(refund).min(cap)
        };
    }

    /// Users tracked for `rollout` (for tests and bounds).
    pub fn users(&self, rollout: &str) -> usize {
        self.tables
            .iter()
            .find(|t| t.rollout == rollout)
            .map_or(0, |t| t.users.len())
    }

    /// Whether `key` is tracked for `rollout`, and the slots looked at to make room so far.
    #[cfg(test)]
    fn tracked(&self, rollout: &str, key: &str) -> (bool, usize) {
        self.tables
            .iter()
            .find(|t| t.rollout == rollout)
            .map_or((false, 0), |t| {
                (t.users.index.contains_key(key), t.users.examined)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(tpm: Option<u64>, rpm: Option<u64>) -> RateLimit {
        RateLimit {
            tokens_per_minute: tpm,
            requests_per_minute: rpm,
            ..RateLimit::default()
        }
    }

    fn check(
        l: &mut RateLimiter,
        c: &RateLimit,
        key: &str,
        now: u64,
    ) -> Result<Admitted, Rejection> {
        l.check("chat", c, Some(key), now, || false)
    }

    #[test]
    fn requests_per_minute_trips_and_refills() {
        let c = limit(None, Some(3));
        let mut l = RateLimiter::default();
        for _ in 0..3 {
            assert!(check(&mut l, &c, "u", 1_000).is_ok());
        }
        let r = check(&mut l, &c, "u", 1_000).expect_err("fourth request in the minute");
        assert_eq!(r.reason, Refusal::Requests);
        // One request refills every 20 s.
        assert_eq!(r.retry_after_s, 20);
        assert!(
            check(&mut l, &c, "other", 1_000).is_ok(),
            "other users unaffected"
        );
        assert!(check(&mut l, &c, "u", 20_999).is_err(), "not yet");
        assert!(check(&mut l, &c, "u", 21_000).is_ok(), "one refilled");
        assert!(check(&mut l, &c, "u", 21_000).is_err());
        // A long pause refills at most one minute's worth.
        for _ in 0..3 {
            assert!(check(&mut l, &c, "u", 10_000_000).is_ok());
        }
        assert!(check(&mut l, &c, "u", 10_000_000).is_err());
    }

    #[test]
    fn tokens_estimate_then_settle() {
        let mut c = limit(Some(1_000), None);
        c.estimate_tokens = 100;
        let mut l = RateLimiter::default();
        let a = check(&mut l, &c, "u", 0).expect("admitted");
        assert_eq!(a.charged_tokens, 100);
        // The answer used 700: 600 more are charged, 300 remain.
        l.settle("chat", "u", 100, 700, 0);
        let a = check(&mut l, &c, "u", 0).expect("300 left, estimate 100");
        // It used only 20: 80 refunded, 280 remain.
        l.settle("chat", "u", a.charged_tokens, 20, 0);
        check(&mut l, &c, "u", 0).expect("280 left");
        l.settle("chat", "u", 100, 300, 0); // 180 - 200 = -20: a debt
        let r = check(&mut l, &c, "u", 0).expect_err("in debt");
        assert_eq!(r.reason, Refusal::Tokens);
        // 120 tokens (20 of debt + the 100 estimate) at 1000/min: 7.2 s → 8 s.
        assert_eq!(r.retry_after_s, 8);
        assert!(check(&mut l, &c, "u", 7_100).is_err());
        assert!(check(&mut l, &c, "u", 7_200).is_ok());
        // Refunds never fill a bucket past its size.
        l.settle("chat", "u", 1_000, 0, 100_000);
        for _ in 0..10 {
            check(&mut l, &c, "u", 100_000).expect("full bucket: ten estimates");
        }
        assert!(check(&mut l, &c, "u", 100_000).is_err());
    }

    #[test]
    fn estimate_zero_admits_until_the_bucket_is_spent() {
        let c = limit(Some(500), Some(100));
        let mut l = RateLimiter::default();
        let a = check(&mut l, &c, "u", 0).expect("admitted");
        assert_eq!(a.charged_tokens, 0);
        l.settle("chat", "u", 0, 499, 0);
        check(&mut l, &c, "u", 0).expect("1 token left");
        l.settle("chat", "u", 0, 1, 0);
        let r = check(&mut l, &c, "u", 0).expect_err("spent");
        assert_eq!((r.reason, r.retry_after_s), (Refusal::Tokens, 1));
    }

    #[test]
    fn throttle_refuses_all_but_priority() {
        let mut c = limit(None, None);
        c.throttled = true;
        c.throttle_retry_after_s = 7;
        let mut l = RateLimiter::default();
        let r = check(&mut l, &c, "u", 0).expect_err("throttled");
        assert_eq!((r.reason, r.retry_after_s), (Refusal::Throttle, 7));
        let a = l
            .check("chat", &c, Some("vip"), 0, || true)
            .expect("priority");
        assert!(a.priority_passed && !a.tracked);
        // Without a throttle nobody is asked about priority.
        c.throttled = false;
        let a = l
            .check("chat", &c, None, 0, || panic!("not asked"))
            .expect("passes");
        assert!(!a.priority_passed);
        // Priority users still have their own bucket.
        c.throttled = true;
        c.requests_per_minute = Some(1);
        assert!(l.check("chat", &c, Some("vip"), 0, || true).is_ok());
        let r = l
            .check("chat", &c, Some("vip"), 0, || true)
            .expect_err("own limit");
        assert_eq!(r.reason, Refusal::Requests);
    }

    #[test]
    fn priority_by_key_or_header_value() {
        let mut c = limit(None, None);
        c.priority.keys.insert("vip".into());
        let no_header = |_: &str| -> Option<Vec<u8>> { panic!("no header configured") };
        assert!(is_priority(&c, Some("vip"), no_header));
        assert!(!is_priority(&c, Some("bob"), no_header));
        assert!(!is_priority(&c, None, no_header));
        c.priority.header = Some("x-priority".into());
        c.priority.values.insert("high".into());
        let sent =
            |value: &'static [u8]| move |name: &str| (name == "x-priority").then(|| value.to_vec());
        assert!(is_priority(&c, Some("bob"), sent(b"high")));
        assert!(
            !is_priority(&c, Some("bob"), sent(b"HIGH")),
            "values are exact"
        );
        assert!(
            !is_priority(&c, Some("bob"), sent(b"\xffhigh")),
            "not UTF-8"
        );
        assert!(!is_priority(&c, Some("bob"), |_| None));
        assert!(is_priority(&c, Some("vip"), |_| None));
    }

    #[test]
    fn limits_are_divided_among_workers() {
        let mut c = limit(None, Some(10));
        c.workers = 4; // 3 per worker (rounded up)
        let mut l = RateLimiter::default();
        for _ in 0..3 {
            assert!(check(&mut l, &c, "u", 0).is_ok());
        }
        assert!(check(&mut l, &c, "u", 0).is_err());
    }

    #[test]
    fn memory_is_bounded_and_full_buckets_go_first() {
        let mut c = limit(None, Some(2));
        c.max_users = 3;
        let mut l = RateLimiter::default();
        check(&mut l, &c, "a", 0).expect("a");
        check(&mut l, &c, "a", 0).expect("a spent");
        check(&mut l, &c, "b", 1).expect("b");
        check(&mut l, &c, "c", 2).expect("c");
        assert_eq!(l.users("chat"), 3);
        // b and c are not full again yet: the least recently seen (a) goes, forgiving it.
        check(&mut l, &c, "d", 3).expect("d");
        assert_eq!(l.users("chat"), 3);
        check(&mut l, &c, "a", 4).expect("a starts over");
        for i in 0..1_000u64 {
            let _ = check(&mut l, &c, &format!("user-{i}"), 100 + i);
            assert!(l.users("chat") <= 3);
        }
        // A minute later every bucket is full: all are dropped at once for the newcomer.
        check(&mut l, &c, "late", 200_000).expect("late");
        assert_eq!(l.users("chat"), 1);
    }

    #[test]
    fn a_full_table_forgets_the_least_recently_seen_in_constant_work() {
        // A table full of buckets still refilling: every newcomer must evict one user, and
        // finding which must not look at every user (it scanned all 200k twice before).
        const USERS: u64 = 200_000;
        let mut c = limit(None, Some(2));
        c.max_users = USERS as u32;
        let mut l = RateLimiter::default();
        for i in 0..USERS {
            check(&mut l, &c, &format!("u{i}"), 0).expect("first request");
        }
        // u0 seen again: now the most recently seen, so u1 is the oldest.
        check(&mut l, &c, "u0", 1).expect("second request");
        check(&mut l, &c, "new0", 2).expect("newcomer");
        assert!(!l.tracked("chat", "u1").0, "the least recently seen goes");
        assert!(l.tracked("chat", "u0").0 && l.tracked("chat", "u2").0);
        for i in 1..USERS {
            check(&mut l, &c, &format!("new{i}"), 3).expect("newcomer");
        }
        assert_eq!(l.users("chat"), USERS as usize);
        let (_, examined) = l.tracked("chat", "u0");
        assert!(
            examined <= USERS as usize,
            "{examined} slots looked at for {USERS} newcomers: at most one each"
        );
        // Partially drained users stay while the table has room for the newcomer.
        assert!(l.tracked("chat", "new0").0);
    }

    #[test]
    fn clock_going_backwards_neither_refills_nor_panics() {
        let c = limit(Some(100), Some(1));
        let mut l = RateLimiter::default();
        check(&mut l, &c, "u", 50_000).expect("first");
        assert!(
            check(&mut l, &c, "u", 0).is_err(),
            "earlier time: no refill"
        );
        assert!(
            check(&mut l, &c, "u", 50_000).is_err(),
            "same instant again"
        );
        assert!(check(&mut l, &c, "u", 110_000).is_ok());
        l.settle("chat", "u", 0, u64::MAX, 0);
        l.settle("nope", "u", 0, 5, 0);
        let r = check(&mut l, &c, "u", u64::MAX).expect_err("huge debt");
        assert!(r.retry_after_s >= 1);
    }

    #[test]
    fn changed_limits_start_the_table_over_and_keyless_requests_pass() {
        let mut c = limit(None, Some(1));
        let mut l = RateLimiter::default();
        check(&mut l, &c, "u", 0).expect("first");
        assert!(check(&mut l, &c, "u", 0).is_err());
        c.requests_per_minute = Some(2);
        check(&mut l, &c, "u", 0).expect("new limits, new table");
        for _ in 0..10 {
            let a = l.check("chat", &c, None, 0, || false).expect("no key");
            assert!(!a.tracked);
        }
    }

    #[test]
    fn rejection_body_is_json() {
        let r = Rejection {
            reason: Refusal::Tokens,
            retry_after_s: 3,
        };
        let v: serde_json::Value = serde_json::from_str(&r.body()).expect("json");
        assert_eq!(v["error"]["code"], "tokens_per_minute");
        assert_eq!(v["error"]["type"], "rate_limit_exceeded");
        assert_eq!(v["error"]["retry_after_s"], 3);
    }
}
