//! What to record for one request, and the metric ids per rollout and version.
//!
//! The accounting (`Exchange`) is plain Rust: it turns request lifecycle events into
//! metric operations, so the exact counting rules are unit-tested without a proxy.

use canary_contract::grpc::answer_class;
#[cfg(feature = "llm")]
use canary_contract::stats::quality_stat_name;
use canary_contract::stats::{
    bucket_index, bucket_stat_name, latency_buckets_us, stat_name, Metric, MetricKind, QualityPart,
    LATENCY_BUCKETS,
};
use canary_contract::{RolloutConfig, Version};

/// Counter increments not yet handed to Envoy, per rollout, version and metric, and the
/// latency samples not yet handed over, per rollout, version and bucket.
///
/// Each call into the host costs about as much as the rest of the filter's per-request work,
/// so counters are summed in the VM (one per worker) and flushed to Envoy on a timer and
/// when the configuration goes away. Latency ([`MetricKind::Buckets`]) is counted the same
/// way, per bucket, with its sum in the metric's own counter slot; the other histograms
/// (the LLM build's) are recorded per request: Envoy needs each sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingCounters {
    /// The latency bucket bounds (µs).
    bounds_us: [u64; LATENCY_BUCKETS - 1],
    /// Per rollout and version (stable, canary), one count per slot.
    counts: Vec<u64>,
}

/// The slots of one rollout and version: the metrics (by `Metric::index`), then the latency
/// buckets, the overflow bucket last (see [`RolloutMetrics::pending_id`]).
pub const SLOTS: usize = Metric::ALL.len() + LATENCY_BUCKETS;

impl PendingCounters {
    pub fn new(rollouts: usize) -> PendingCounters {
        PendingCounters {
            bounds_us: latency_buckets_us(),
            // Zeros: the cheapest table to allocate.
            counts: vec![0; rollouts * 2 * SLOTS],
        }
    }

    fn slots(&mut self, rollout: usize, version: Version) -> Option<&mut [u64; SLOTS]> {
        let start = (rollout * 2 + version.index()) * SLOTS;
        self.counts.get_mut(start..)?.first_chunk_mut()
    }

    pub fn add(&mut self, rollout: usize, version: Version, metric: Metric, delta: u64) {
        if let Some(slots) = self.slots(rollout, version) {
            let slot = &mut slots[metric.index()];
            *slot = slot.saturating_add(delta);
        }
    }

    /// One latency sample (`MetricKind::Buckets`): the sum (the metric's slot) grows, its
    /// bucket counts one more.
    pub fn record(&mut self, rollout: usize, version: Version, metric: Metric, ms: u64) {
        let bucket = Metric::ALL.len() + bucket_index(&self.bounds_us, ms);
        if let Some(slots) = self.slots(rollout, version) {
            slots[metric.index()] = slots[metric.index()].saturating_add(ms);
            if let Some(count) = slots.get_mut(bucket) {
                *count = count.saturating_add(1);
            }
        }
    }

    /// Hands every non-zero count to `flush` (rollout, version, slot, count), leaving zeros
    /// behind; a metric's sum before its buckets.
    pub fn drain(&mut self, mut flush: impl FnMut(usize, Version, usize, u64)) {
        for (i, slots) in self.counts.chunks_exact_mut(SLOTS).enumerate() {
            let version = Version::ALL[i % 2];
            for (slot, count) in slots.iter_mut().enumerate() {
                if *count > 0 {
                    flush(i / 2, version, slot, std::mem::take(count));
                }
            }
        }
    }
}

/// One metric operation for the host to carry out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricOp {
    Increment(Metric),
    Add(Metric, u64),
    Record(Metric, u64),
}

/// Where metrics are defined and updated: Envoy in production, a recorder in tests.
pub trait MetricHost {
    fn define(&mut self, kind: MetricKind, name: &str) -> Result<u32, String>;
}

/// Envoy metric ids of one rollout, per version and metric. LLM metrics exist only for
/// rollouts with LLM signals configured. A [`MetricKind::Buckets`] metric's id is its sum
/// counter's; its bucket counters come after the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutMetrics {
    /// Stable's ids, then canary's, each in the slots of [`PendingCounters`]: the metrics
    /// (by `Metric::index`), then the latency buckets with the overflow bucket last. Each is
    /// the id + 1, 0 where the metric is not defined (Envoy's ids start at 0): a plain table
    /// is the cheapest to build in the size-capped wasm module.
    ids: [[u32; SLOTS]; 2],
    /// Per quality header of the configuration, in order: ids per version and part.
    quality: Vec<[[u32; QualityPart::ALL.len()]; 2]>,
}

fn define_one(host: &mut impl MetricHost, kind: MetricKind, name: &str) -> Result<u32, String> {
    host.define(kind, name)
        .map_err(|e| format!("defining metric {name}: {e}"))
}

impl RolloutMetrics {
    pub fn define(
        host: &mut impl MetricHost,
        rollout: &RolloutConfig,
    ) -> Result<RolloutMetrics, String> {
        let name = rollout.name.as_str();
        let bounds_us = latency_buckets_us();
        let mut ids = [[0u32; SLOTS]; 2];
        #[cfg(feature = "llm")]
        let signals = rollout.llm.as_ref();
        #[cfg(not(feature = "llm"))]
        let signals: Option<()> = None;
        #[cfg(feature = "llm")]
        let rate_limited = rollout.rate_limit.is_some();
        #[cfg(not(feature = "llm"))]
        let rate_limited = false;
        for version in Version::ALL {
            let ids = &mut ids[version.index()];
            for metric in Metric::ALL {
                if (metric.is_llm() && signals.is_none())
                    || (metric.is_rate_limit() && !rate_limited)
                {
                    continue;
                }
                if metric.is_breaker()
                    && (version == Version::Stable || rollout.circuit_breaker.is_none())
                {
                    continue;
                }
                if metric.kind() == MetricKind::Buckets {
                    let buckets = &mut ids[Metric::ALL.len()..];
                    for (i, slot) in buckets.iter_mut().enumerate() {
                        let upper_us = bounds_us.get(i).copied();
                        let stat = bucket_stat_name(metric, name, version, upper_us);
                        *slot = define_one(host, MetricKind::Counter, &stat)?.wrapping_add(1);
                    }
                }
                // A latency metric's sum counter (its kind is defined as a counter).
                let stat = stat_name(metric, name, version);
                ids[metric.index()] = define_one(host, metric.kind(), &stat)?.wrapping_add(1);
            }
        }
        #[cfg(feature = "llm")]
        let quality = define_quality(host, rollout)?;
        #[cfg(not(feature = "llm"))]
        let quality = Vec::new();
        Ok(RolloutMetrics { ids, quality })
    }

    pub fn id(&self, version: Version, metric: Metric) -> Option<u32> {
        self.pending_id(version, metric.index())
    }

    /// The counter of latency bucket `bucket` (an index of `bucket_index`).
    pub fn bucket_id(&self, version: Version, bucket: usize) -> Option<u32> {
        self.pending_id(version, Metric::ALL.len() + bucket)
    }

    /// The counter of a [`PendingCounters`] slot: a metric's, or past them a bucket's.
    pub fn pending_id(&self, version: Version, slot: usize) -> Option<u32> {
        self.ids[version.index()].get(slot)?.checked_sub(1)
    }

    /// Ids of quality header `index`'s count, sum and sum of squares; the index after the
    /// last header is the eval scores' signal, when the rollout has `eval`.
    pub fn quality(&self, index: usize, version: Version) -> Option<[u32; 3]> {
        self.quality.get(index).map(|q| q[version.index()])
    }
}

/// Quality signals: one per quality header, then the eval scores' (if `eval` is set).
#[cfg(feature = "llm")]
fn define_quality(
    host: &mut impl MetricHost,
    rollout: &RolloutConfig,
) -> Result<Vec<[[u32; QualityPart::ALL.len()]; 2]>, String> {
    let headers = rollout.llm.as_ref().map_or(&[][..], |s| &s.quality_headers);
    let eval = rollout.eval.as_ref().map(|e| e.signal.as_str());
    let mut quality = Vec::new();
    for signal in headers.iter().map(|q| q.signal.as_str()).chain(eval) {
        let mut per_version = [[0; QualityPart::ALL.len()]; 2];
        for version in Version::ALL {
            for (i, part) in QualityPart::ALL.into_iter().enumerate() {
                let stat = quality_stat_name(signal, part, &rollout.name, version);
                per_version[version.index()][i] = define_one(host, MetricKind::Counter, &stat)?;
            }
        }
        quality.push(per_version);
    }
    Ok(quality)
}

/// The increments of one quality sample (a value in thousandths): count, sum, sum of squares.
/// Values are at most 1,000 from the parsers, but the square saturates whatever comes (an
/// overflow would panic, or wrap to a small sum of squares).
#[cfg(feature = "llm")]
pub fn quality_increments(value_milli: u64) -> [u64; 3] {
    [1, value_milli, value_milli.saturating_mul(value_milli)]
}

/// The lifecycle of one routed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    pub version: Version,
    started_ms: u64,
    answer: Answer,
}

/// Where the response is in being classified (2xx ... 5xx).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// No response headers yet.
    Awaited,
    /// A 200 whose body is on its way: a gRPC status in trailers may still make it an error,
    /// so it is counted when the trailers come or the stream ends.
    Pending200,
    /// Counted (or not countable: an odd status).
    Classified,
}

impl Exchange {
    pub fn start(version: Version, now_ms: u64) -> (Exchange, MetricOp) {
        let exchange = Exchange {
            version,
            started_ms: now_ms,
            answer: Answer::Awaited,
        };
        (exchange, MetricOp::Increment(Metric::RqTotal))
    }

    /// Response headers are on their way to the client (no clock read here: a read is a
    /// call into the host, and the request's only latency is taken at its end). `status` is
    /// the raw `:status`;
    /// `end_of_stream`: the headers are the whole response. Each read is a call into the
    /// host, so they are closures called only when they can matter: `grpc_status` reads the
    /// `grpc-status` header, only for a 200 that ends here (a trailers-only gRPC answer; a
    /// 200 with a body is classified later, see [`Exchange::on_response_trailers`]);
    /// `code_details` reads Envoy's `response.code_details`, only for answers that can be
    /// Envoy's own reply to an upstream reset (a 5xx, or a gRPC failure in Envoy's gRPC
    /// local reply: 200 with `grpc-status: 14`).
    pub fn on_response_headers(
        &mut self,
        status: Option<&[u8]>,
        end_of_stream: bool,
        grpc_status: impl FnOnce() -> Option<Vec<u8>>,
        code_details: impl FnOnce() -> Option<Vec<u8>>,
    ) -> impl Iterator<Item = MetricOp> {
        // A fixed array, not a Vec: no allocation on every request's path.
        let mut ops = [None; 2];
        if self.answer == Answer::Awaited {
            let status = status.and_then(parse_status);
            if status == Some(200) && !end_of_stream {
                self.answer = Answer::Pending200;
            } else {
                self.answer = Answer::Classified;
                let grpc = if status == Some(200) {
                    grpc_status()
                } else {
                    None
                };
                let class = answer_class(status, grpc.as_deref());
                ops[0] = class.map(MetricOp::Increment);
                if class.is_none_or(|c| c == Metric::Rq5xx)
                    && code_details()
                        .is_some_and(|d| d.starts_with(b"upstream_reset_before_response_started"))
                {
                    ops[1] = Some(MetricOp::Increment(Metric::RqReset));
                }
            }
        }
        ops.into_iter().flatten()
    }

    /// Response trailers are on their way (Envoy calls this only for a response that has
    /// some: gRPC, HTTP/2). `grpc_status` reads their `grpc-status`, only for a 200 not yet
    /// counted.
    pub fn on_response_trailers(
        &mut self,
        grpc_status: impl FnOnce() -> Option<Vec<u8>>,
    ) -> Option<MetricOp> {
        if self.answer != Answer::Pending200 {
            return None;
        }
        self.answer = Answer::Classified;
        let class = answer_class(Some(200), grpc_status().as_deref());
        class.map(MetricOp::Increment)
    }

    /// The stream is over (the filter instance is going away).
    pub fn on_end(&self, now_ms: u64) -> impl Iterator<Item = MetricOp> {
        let duration = MetricOp::Record(Metric::RqTimeMs, now_ms.saturating_sub(self.started_ms));
        let last = match self.answer {
            // A 200 that ended without a gRPC status.
            Answer::Pending200 => Some(MetricOp::Increment(Metric::Rq2xx)),
            // The client or the proxy gave up before any response.
            Answer::Awaited => Some(MetricOp::Increment(Metric::RqReset)),
            Answer::Classified => None,
        };
        [Some(duration), last].into_iter().flatten()
    }
}

/// A `:status` of exactly three ASCII digits, as a number (runs for every answer: digits
/// by hand, not `str::parse`).
pub fn parse_status(raw: &[u8]) -> Option<u16> {
    let &[a, b, c] = raw else {
        return None;
    };
    let digit = |d: u8| d.is_ascii_digit().then(|| u16::from(d - b'0'));
    Some(digit(a)? * 100 + digit(b)? * 10 + digit(c)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host read the exchange must not make.
    fn no_read() -> Option<Vec<u8>> {
        panic!("read a value that cannot matter")
    }

    #[derive(Default)]
    struct Recorder(Vec<(MetricKind, String)>);

    impl MetricHost for Recorder {
        fn define(&mut self, kind: MetricKind, name: &str) -> Result<u32, String> {
            self.0.push((kind, name.to_string()));
            Ok(self.0.len() as u32 - 1)
        }
    }

    #[test]
    fn defines_every_metric_for_both_versions() {
        let mut host = Recorder::default();
        let plain = RolloutConfig::new("checkout", 0);
        let m = RolloutMetrics::define(&mut host, &plain).expect("defined");
        let base = Metric::ALL
            .iter()
            .filter(|m| !m.is_llm() && !m.is_rate_limit() && !m.is_breaker())
            .count();
        // A latency metric is its sum and a counter per bucket and for the overflow.
        let buckets = latency_buckets_us().len() + 1;
        assert_eq!(
            host.0.len(),
            2 * (base + buckets),
            "no LLM, rate-limit or breaker metrics without their configuration"
        );
        assert_eq!(m.id(Version::Canary, Metric::BreakerTrips), None);
        assert_eq!(m.id(Version::Canary, Metric::LlmResponses), None);
        let name_of = |id: Option<u32>| host.0[id.expect("defined") as usize].clone();
        let (kind, name) = name_of(m.id(Version::Canary, Metric::RqTimeMs));
        assert_eq!(kind, MetricKind::Buckets, "a counter at Envoy");
        assert_eq!(
            name,
            "canary_rq_time_ms_sum.rollout.checkout.version.canary"
        );
        let (kind, name) = name_of(m.bucket_id(Version::Stable, 1));
        assert_eq!(kind, MetricKind::Counter);
        assert_eq!(
            name,
            "canary_rq_time_ms_in_bucket.rollout.checkout.version.stable.upper_us.550"
        );
        let overflow = latency_buckets_us().len();
        let (_, name) = name_of(m.bucket_id(Version::Canary, overflow));
        assert!(name.ends_with(".version.canary.upper_us.inf"), "{name}");
        assert_eq!(m.bucket_id(Version::Canary, overflow + 1), None);
        let (kind, name) = name_of(m.id(Version::Stable, Metric::Rq5xx));
        assert_eq!(kind, MetricKind::Counter);
        assert_eq!(name, "canary_rq_5xx.rollout.checkout.version.stable");
    }

    #[test]
    fn breaker_metrics_exist_for_the_canary_of_rollouts_with_a_breaker() {
        let mut host = Recorder::default();
        let mut r = RolloutConfig::new("shop", 0);
        r.circuit_breaker = Some(canary_contract::CircuitBreaker::default());
        let m = RolloutMetrics::define(&mut host, &r).expect("defined");
        for metric in [
            Metric::BreakerTrips,
            Metric::BreakerOpen,
            Metric::BreakerDiverted,
        ] {
            assert_eq!(m.id(Version::Stable, metric), None);
            let id = m.id(Version::Canary, metric).expect("defined");
            assert_eq!(
                host.0[id as usize],
                (
                    metric.kind(),
                    format!("{}.rollout.shop.version.canary", metric.name())
                )
            );
        }
    }

    #[cfg(feature = "llm")]
    #[test]
    fn llm_rollouts_also_define_llm_and_quality_metrics() {
        let mut host = Recorder::default();
        let mut chat = RolloutConfig::new("chat", 0);
        chat.llm = Some(canary_contract::LlmSignals {
            quality_headers: vec![canary_contract::QualityHeader {
                header: "x-task-success".into(),
                signal: "task_success".into(),
            }],
            ..Default::default()
        });
        let m = RolloutMetrics::define(&mut host, &chat).expect("defined");
        let rate_limit = Metric::ALL.iter().filter(|m| m.is_rate_limit()).count();
        let breaker = Metric::ALL.iter().filter(|m| m.is_breaker()).count();
        let buckets = latency_buckets_us().len() + 1;
        assert_eq!(
            host.0.len(),
            2 * (Metric::ALL.len() - rate_limit - breaker + buckets) + 2 * 3
        );
        let ttft = m.id(Version::Canary, Metric::LlmTtftMs).expect("defined");
        assert_eq!(
            host.0[ttft as usize],
            (
                MetricKind::Histogram,
                "canary_llm_ttft_ms.rollout.chat.version.canary".to_string()
            )
        );
        let [count, sum, sumsq] = m.quality(0, Version::Stable).expect("defined");
        for (id, name) in [
            (count, "canary_quality_task_success_count"),
            (sum, "canary_quality_task_success_sum_milli"),
            (sumsq, "canary_quality_task_success_sumsq_micro"),
        ] {
            assert_eq!(
                host.0[id as usize].1,
                format!("{name}.rollout.chat.version.stable")
            );
        }
        assert_eq!(m.quality(1, Version::Stable), None);
        assert_eq!(quality_increments(875), [1, 875, 765_625]);
    }

    #[cfg(feature = "llm")]
    #[test]
    fn quality_increments_saturate_at_extreme_values() {
        let max = u64::MAX;
        assert_eq!(quality_increments(max), [1, max, max]);
        assert_eq!(quality_increments(1 << 32), [1, 1 << 32, max]);
        let largest_exact = u64::from(u32::MAX);
        assert_eq!(
            quality_increments(largest_exact),
            [1, largest_exact, largest_exact * largest_exact]
        );
        assert_eq!(quality_increments(0), [1, 0, 0]);
    }

    #[test]
    fn define_failure_names_the_metric() {
        struct Failing;
        impl MetricHost for Failing {
            fn define(&mut self, _: MetricKind, _: &str) -> Result<u32, String> {
                Err("BadArgument".into())
            }
        }
        let err =
            RolloutMetrics::define(&mut Failing, &RolloutConfig::new("r", 0)).expect_err("fails");
        assert!(
            err.contains("canary_rq_total.rollout.r.version.stable"),
            "{err}"
        );
    }

    #[test]
    fn normal_exchange() {
        let (mut x, op) = Exchange::start(Version::Canary, 1_000);
        assert_eq!(op, MetricOp::Increment(Metric::RqTotal));
        assert_eq!(
            x.on_response_headers(Some(b"503"), false, no_read, || {
                Some(b"via_upstream".to_vec())
            })
            .collect::<Vec<_>>(),
            vec![MetricOp::Increment(Metric::Rq5xx)]
        );
        assert_eq!(
            x.on_response_headers(Some(b"200"), false, no_read, no_read)
                .collect::<Vec<_>>(),
            vec![]
        );
        assert_eq!(
            x.on_end(1_100).collect::<Vec<_>>(),
            vec![MetricOp::Record(Metric::RqTimeMs, 100)]
        );
    }

    #[test]
    fn client_gone_before_response_is_a_reset() {
        let (x, _) = Exchange::start(Version::Stable, 5);
        assert_eq!(
            x.on_end(4).collect::<Vec<_>>(),
            vec![
                MetricOp::Record(Metric::RqTimeMs, 0),
                MetricOp::Increment(Metric::RqReset)
            ]
        );
    }

    #[test]
    fn upstream_reset_is_a_5xx_and_a_reset() {
        let (mut x, _) = Exchange::start(Version::Canary, 0);
        let details = b"upstream_reset_before_response_started{connection_termination}";
        assert_eq!(
            x.on_response_headers(Some(b"503"), false, no_read, || Some(details.to_vec()))
                .collect::<Vec<_>>(),
            vec![
                MetricOp::Increment(Metric::Rq5xx),
                MetricOp::Increment(Metric::RqReset)
            ]
        );
        assert_eq!(
            x.on_end(2).collect::<Vec<_>>(),
            vec![MetricOp::Record(Metric::RqTimeMs, 2)]
        );
    }

    /// What `pending.drain` hands over.
    fn drained(pending: &mut PendingCounters) -> Vec<(usize, Version, usize, u64)> {
        let mut out = Vec::new();
        pending.drain(|rollout, version, slot, count| out.push((rollout, version, slot, count)));
        out
    }

    #[test]
    fn pending_counters_drain_once() {
        let mut pending = PendingCounters::new(2);
        pending.add(1, Version::Canary, Metric::Rq5xx, 1);
        pending.add(1, Version::Canary, Metric::Rq5xx, 1);
        pending.add(0, Version::Stable, Metric::RqTotal, 1);
        pending.add(0, Version::Stable, Metric::LlmInputTokens, 120);
        pending.add(7, Version::Stable, Metric::RqTotal, 1); // unknown rollout: ignored
        assert_eq!(
            drained(&mut pending),
            vec![
                (0, Version::Stable, Metric::RqTotal.index(), 1),
                (0, Version::Stable, Metric::LlmInputTokens.index(), 120),
                (1, Version::Canary, Metric::Rq5xx.index(), 2)
            ]
        );
        assert!(drained(&mut pending).is_empty());
    }

    #[test]
    fn latency_samples_are_counted_per_bucket_with_their_sum() {
        let bounds = latency_buckets_us();
        let mut pending = PendingCounters::new(2);
        for ms in [0, 30, 30, 31, 999_999] {
            pending.record(1, Version::Canary, Metric::RqTimeMs, ms);
        }
        pending.record(0, Version::Stable, Metric::RqTimeMs, 1);
        pending.record(2, Version::Stable, Metric::RqTimeMs, 1); // unknown rollout: ignored
        let at = |us: u64| bounds.iter().position(|b| *b == us).expect("a bound");
        let bucket = |b: usize| Metric::ALL.len() + b;
        let sum = Metric::RqTimeMs.index();
        assert_eq!(
            drained(&mut pending),
            vec![
                (0, Version::Stable, sum, 1),
                (0, Version::Stable, bucket(at(1_060)), 1),
                (1, Version::Canary, sum, 1_000_090),
                (1, Version::Canary, bucket(0), 1),
                (1, Version::Canary, bucket(at(30_000)), 2),
                (1, Version::Canary, bucket(at(33_000)), 1),
                (1, Version::Canary, bucket(bounds.len()), 1),
            ]
        );
        assert!(drained(&mut pending).is_empty());
        // Each slot names its counter.
        let mut host = Recorder::default();
        let m = RolloutMetrics::define(&mut host, &RolloutConfig::new("shop", 0)).expect("ok");
        let name = |slot| {
            host.0[m.pending_id(Version::Canary, slot).expect("id") as usize]
                .1
                .clone()
        };
        assert_eq!(
            name(sum),
            "canary_rq_time_ms_sum.rollout.shop.version.canary"
        );
        assert_eq!(
            name(bucket(at(30_000))),
            "canary_rq_time_ms_in_bucket.rollout.shop.version.canary.upper_us.30000"
        );
        assert_eq!(
            m.pending_id(Version::Canary, bucket(bounds.len() + 1)),
            None
        );
    }

    #[test]
    fn code_details_are_read_only_when_they_can_matter() {
        let (mut ok, _) = Exchange::start(Version::Canary, 0);
        let _ = ok.on_response_headers(Some(b"404"), true, no_read, || {
            panic!("read details for a 404")
        });
        let (mut odd, _) = Exchange::start(Version::Canary, 0);
        let mut read = false;
        let _ = odd.on_response_headers(Some(b"abc"), false, no_read, || {
            read = true;
            None
        });
        assert!(read, "an unparsable status may hide a reset");
    }

    #[test]
    fn odd_statuses_are_not_classified() {
        for raw in [&b"99"[..], b"abc", b"1000", b"", b"\xff\xff\xff", b"600"] {
            let (mut x, _) = Exchange::start(Version::Canary, 0);
            assert_eq!(
                x.on_response_headers(Some(raw), false, no_read, || None)
                    .collect::<Vec<_>>(),
                vec![]
            );
        }
    }

    const CLASSES: [Metric; 4] = [Metric::Rq2xx, Metric::Rq3xx, Metric::Rq4xx, Metric::Rq5xx];

    /// The class counts among `ops`.
    fn classes(ops: &[MetricOp]) -> Vec<Metric> {
        ops.iter()
            .filter_map(|op| match op {
                MetricOp::Increment(m) if CLASSES.contains(m) => Some(*m),
                _ => None,
            })
            .collect()
    }

    /// One exchange: response headers (`status`, whether they end the stream, their
    /// `grpc-status`), then trailers with `trailer` as `grpc-status` if `Some`, then the end.
    fn run(
        status: &[u8],
        end_of_stream: bool,
        header_grpc: Option<&[u8]>,
        trailer: Option<Option<&[u8]>>,
        details: &[u8],
    ) -> Vec<MetricOp> {
        let (mut x, _) = Exchange::start(Version::Canary, 0);
        let mut ops: Vec<MetricOp> = x
            .on_response_headers(
                Some(status),
                end_of_stream,
                || header_grpc.map(<[u8]>::to_vec),
                || Some(details.to_vec()),
            )
            .collect();
        if let Some(grpc) = trailer {
            ops.extend(x.on_response_trailers(|| grpc.map(<[u8]>::to_vec)));
        }
        ops.extend(x.on_end(9));
        ops
    }

    #[test]
    fn a_200_with_a_body_is_counted_at_its_end() {
        let (mut x, _) = Exchange::start(Version::Canary, 0);
        assert_eq!(
            x.on_response_headers(Some(b"200"), false, no_read, no_read)
                .collect::<Vec<_>>(),
            vec![]
        );
        assert_eq!(
            x.on_end(9).collect::<Vec<_>>(),
            vec![
                MetricOp::Record(Metric::RqTimeMs, 9),
                MetricOp::Increment(Metric::Rq2xx)
            ]
        );
    }

    #[test]
    fn grpc_status_in_trailers_classifies_the_200() {
        let via = b"via_upstream";
        for (grpc, class) in [
            (Some(&b"0"[..]), Metric::Rq2xx),
            (None, Metric::Rq2xx),
            (Some(b"14"), Metric::Rq5xx),
            (Some(b"13"), Metric::Rq5xx),
            (Some(b"3"), Metric::Rq4xx),
            (Some(b"5"), Metric::Rq4xx),
            (Some(b"garbage"), Metric::Rq5xx),
        ] {
            let ops = run(b"200", false, None, Some(grpc), via);
            assert_eq!(classes(&ops), vec![class], "{grpc:?}: {ops:?}");
            assert!(!ops.contains(&MetricOp::Increment(Metric::RqReset)));
        }
    }

    #[test]
    fn grpc_status_in_trailers_only_headers_classifies_the_200() {
        let via = b"via_upstream";
        for (grpc, class) in [
            (None, Metric::Rq2xx),
            (Some(&b"0"[..]), Metric::Rq2xx),
            (Some(b"14"), Metric::Rq5xx),
            (Some(b"4"), Metric::Rq5xx),
            (Some(b"3"), Metric::Rq4xx),
        ] {
            let ops = run(b"200", true, grpc, None, via);
            assert_eq!(classes(&ops), vec![class], "{grpc:?}: {ops:?}");
            assert!(!ops.contains(&MetricOp::Increment(Metric::RqReset)));
        }
        // Envoy's own answer to a gRPC request whose upstream reset: 200, grpc-status 14.
        let reset = b"upstream_reset_before_response_started{connection_failure}";
        let ops = run(b"200", true, Some(b"14"), None, reset);
        assert_eq!(classes(&ops), vec![Metric::Rq5xx]);
        assert!(ops.contains(&MetricOp::Increment(Metric::RqReset)));
    }

    #[test]
    fn grpc_status_is_read_only_for_a_200_not_yet_counted() {
        // A 204 ends at its headers: its class stands, whatever it carries.
        let (mut x, _) = Exchange::start(Version::Canary, 0);
        let ops: Vec<_> = x
            .on_response_headers(Some(b"204"), true, no_read, no_read)
            .collect();
        assert_eq!(classes(&ops), vec![Metric::Rq2xx]);
        assert_eq!(x.on_response_trailers(no_read), None);
        // A 503 with trailers.
        let (mut x, _) = Exchange::start(Version::Canary, 0);
        let _ = x.on_response_headers(Some(b"503"), false, no_read, || None);
        assert_eq!(x.on_response_trailers(no_read), None);
        // Trailers are read once.
        let (mut x, _) = Exchange::start(Version::Canary, 0);
        let _ = x.on_response_headers(Some(b"200"), false, no_read, no_read);
        let first = x.on_response_trailers(|| Some(b"14".to_vec()));
        assert_eq!(first, Some(MetricOp::Increment(Metric::Rq5xx)));
        assert_eq!(x.on_response_trailers(no_read), None);
        assert_eq!(
            x.on_end(1).collect::<Vec<_>>(),
            vec![MetricOp::Record(Metric::RqTimeMs, 1)]
        );
    }

    #[test]
    fn every_answered_exchange_counts_in_exactly_one_class() {
        let grpc_values: [Option<&[u8]>; 4] = [None, Some(b"0"), Some(b"14"), Some(b"3")];
        for status in [&b"200"[..], b"204", b"302", b"404", b"503"] {
            for end_of_stream in [false, true] {
                for header in grpc_values {
                    for trailer in grpc_values.iter().map(|g| Some(*g)).chain([None]) {
                        // Trailers come only after a body.
                        let trailer = trailer.filter(|_| !end_of_stream);
                        let ops = run(status, end_of_stream, header, trailer, b"via_upstream");
                        assert_eq!(classes(&ops).len(), 1, "{status:?} {ops:?}");
                    }
                }
            }
        }
    }
}
