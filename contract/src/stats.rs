//! Names of the stats the filter emits, shared with whatever reads them.
//!
//! A stat is named `<metric>.rollout.<rollout>.version.<version>` (the fallback chain's
//! `...tier.<tier>`), built by [`rollout_stat_name`] for every metric family, e.g.
//! `canary_rq_total.rollout.checkout.version.canary`. Envoy shows it at `/stats` as
//! `wasmcustom.canary_rq_total.rollout.checkout.version.canary`; with the tag extraction
//! rules in [`ENVOY_STATS_TAGS`] in the bootstrap, `/stats/prometheus` shows
//! `canary_rq_total{rollout="checkout",version="canary"}`.

use crate::Version;

/// Prefix Envoy puts in front of stats defined by wasm modules (dropped in Prometheus output).
pub const ENVOY_WASM_PREFIX: &str = "wasmcustom.";

/// The native build (an Envoy Dynamic Module) defines its stats under the same namespace, so
/// `/stats` names and tags are the wasm build's. But Envoy's `/stats/prometheus` strips only
/// the namespaces its wasm extension registers, not a dynamic module's: the native build's
/// `canary_rq_total{...}` comes out as `envoy_wasmcustom_canary_rq_total{...}`.
pub const ENVOY_NATIVE_PROMETHEUS_PREFIX: &str = "envoy_wasmcustom_";

/// A `/stats/prometheus` series name as the filter names it, whichever build emitted it.
pub fn prometheus_metric_name(series: &str) -> &str {
    series
        .strip_prefix(ENVOY_NATIVE_PROMETHEUS_PREFIX)
        .unwrap_or(series)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetricKind {
    Counter,
    Histogram,
    Gauge,
    /// Latency summed in the VM: one counter per bucket of [`latency_buckets_us`] (named by
    /// [`bucket_stat_name`]) and one of the samples' sum in ms ([`stat_name`]).
    /// An Envoy histogram would take a call into Envoy per sample; counters are summed in
    /// the VM and handed over on the filter's tick.
    Buckets,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    /// Requests routed by the rollout.
    RqTotal,
    Rq2xx,
    Rq3xx,
    Rq4xx,
    Rq5xx,
    /// Requests that ended without a response: the client went away, or the upstream
    /// reset before sending response headers (Envoy then answers 503 itself, which is
    /// also counted in `canary_rq_5xx`).
    RqReset,
    /// Milliseconds from request headers to the end of the stream, as bucket counters
    /// ([`MetricKind::Buckets`]).
    RqTimeMs,
    // Circuit breaker, defined only for rollouts with `circuit_breaker` configured and only
    // with `version="canary"` (the version whose breaker it is).
    /// Times the breaker opened in this proxy.
    BreakerTrips,
    /// 1 while the breaker is open (the canary's users go to stable), else 0.
    BreakerOpen,
    /// Requests that would have gone to canary and went to stable because the breaker was
    /// open (they are also in `canary_rq_total{version="stable"}`).
    BreakerDiverted,
    // LLM signals, defined only for rollouts with `llm` configured.
    /// LLM responses whose token usage was read.
    LlmResponses,
    /// LLM responses with no readable usage: malformed, truncated, over the size cap.
    LlmUnparsed,
    LlmInputTokens,
    LlmOutputTokens,
    /// Tokens × the version's price, in nano-USD.
    LlmCostNanoUsd,
    /// Responses whose finish/stop reason is a configured refusal reason.
    LlmRefusals,
    /// Milliseconds from request headers to the first response body bytes.
    LlmTtftMs,
    /// Milliseconds from the first response body bytes to the end of the response.
    LlmStreamMs,
    /// Sum over responses of (cost in micro-USD)², rounded: with the cost counter, the
    /// variance of the cost per response, so the judge can test a difference of means.
    LlmCostSumSqMicroUsd2,
    // Rate limiting (LLM build), defined only for rollouts with `rate_limit`.
    /// Requests refused with 429: the user's tokens-per-minute bucket was empty.
    RateLimitedTokens,
    /// Requests refused with 429: the user's requests-per-minute bucket was empty.
    RateLimitedRequests,
    /// Requests refused with 429 by the quota sentinel's throttle (not priority).
    Throttled,
    /// Priority requests let through while the rollout was throttled.
    ThrottlePriorityPassed,
}

impl Metric {
    pub const ALL: [Metric; 23] = [
        Metric::RqTotal,
        Metric::Rq2xx,
        Metric::Rq3xx,
        Metric::Rq4xx,
        Metric::Rq5xx,
        Metric::RqReset,
        Metric::RqTimeMs,
        Metric::BreakerTrips,
        Metric::BreakerOpen,
        Metric::BreakerDiverted,
        Metric::LlmResponses,
        Metric::LlmUnparsed,
        Metric::LlmInputTokens,
        Metric::LlmOutputTokens,
        Metric::LlmCostNanoUsd,
        Metric::LlmRefusals,
        Metric::LlmTtftMs,
        Metric::LlmStreamMs,
        Metric::LlmCostSumSqMicroUsd2,
        Metric::RateLimitedTokens,
        Metric::RateLimitedRequests,
        Metric::Throttled,
        Metric::ThrottlePriorityPassed,
    ];

    /// Whether the metric exists only for rollouts with LLM signals.
    pub fn is_llm(self) -> bool {
        self.index() >= Metric::LlmResponses.index() && !self.is_rate_limit()
    }

    /// Whether the metric exists only for rollouts with `rate_limit`.
    pub fn is_rate_limit(self) -> bool {
        matches!(
            self,
            Metric::RateLimitedTokens
                | Metric::RateLimitedRequests
                | Metric::Throttled
                | Metric::ThrottlePriorityPassed
        )
    }

    /// Whether the metric exists only for rollouts with a circuit breaker (canary only).
    pub fn is_breaker(self) -> bool {
        matches!(
            self,
            Metric::BreakerTrips | Metric::BreakerOpen | Metric::BreakerDiverted
        )
    }

    /// The metric name, also the Prometheus name once tags are extracted.
    pub fn name(self) -> &'static str {
        match self {
            Metric::RqTotal => "canary_rq_total",
            Metric::Rq2xx => "canary_rq_2xx",
            Metric::Rq3xx => "canary_rq_3xx",
            Metric::Rq4xx => "canary_rq_4xx",
            Metric::Rq5xx => "canary_rq_5xx",
            Metric::RqReset => "canary_rq_reset",
            Metric::RqTimeMs => "canary_rq_time_ms",
            Metric::BreakerTrips => "canary_breaker_trips",
            Metric::BreakerOpen => "canary_breaker_open",
            Metric::BreakerDiverted => "canary_breaker_diverted",
            Metric::LlmResponses => "canary_llm_responses",
            Metric::LlmUnparsed => "canary_llm_unparsed",
            Metric::LlmInputTokens => "canary_llm_input_tokens",
            Metric::LlmOutputTokens => "canary_llm_output_tokens",
            Metric::LlmCostNanoUsd => "canary_llm_cost_nanousd",
            Metric::LlmRefusals => "canary_llm_refusals",
            Metric::LlmTtftMs => "canary_llm_ttft_ms",
            Metric::LlmStreamMs => "canary_llm_stream_ms",
            Metric::LlmCostSumSqMicroUsd2 => "canary_llm_cost_sumsq_microusd2",
            Metric::RateLimitedTokens => "canary_ratelimit_rejected_tokens",
            Metric::RateLimitedRequests => "canary_ratelimit_rejected_requests",
            Metric::Throttled => "canary_ratelimit_rejected_throttle",
            Metric::ThrottlePriorityPassed => "canary_ratelimit_priority_passed",
        }
    }

    pub fn kind(self) -> MetricKind {
        match self {
            Metric::RqTimeMs => MetricKind::Buckets,
            Metric::LlmTtftMs | Metric::LlmStreamMs => MetricKind::Histogram,
            Metric::BreakerOpen => MetricKind::Gauge,
            _ => MetricKind::Counter,
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    /// The response-class counter for an HTTP status, if it is a valid final status.
    pub fn for_status(status: u16) -> Option<Metric> {
        match status {
            200..=299 => Some(Metric::Rq2xx),
            300..=399 => Some(Metric::Rq3xx),
            400..=499 => Some(Metric::Rq4xx),
            500..=599 => Some(Metric::Rq5xx),
            _ => None,
        }
    }
}

/// The increment of [`Metric::LlmCostSumSqMicroUsd2`] for one response costing `cost_nano_usd`:
/// (cost / 1000)², rounded, saturating.
pub fn cost_sumsq_micro_usd2(cost_nano_usd: u64) -> u64 {
    let squared = u128::from(cost_nano_usd) * u128::from(cost_nano_usd);
    u64::try_from((squared + 500_000) / 1_000_000).unwrap_or(u64::MAX)
}

/// What a stat is about within its rollout: the tag after `rollout.<rollout>.`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatTag<'a> {
    /// `version.<stable|canary>`: every family but the fallback chain's.
    Version(Version),
    /// `tier.<tier>`: the fallback chain's per-tier stats.
    Tier(&'a str),
}

/// Every stat name the filter defines, whatever its family (without Envoy's `wasmcustom.`
/// prefix): `<metric>.rollout.<rollout>.version.<version>` or `...tier.<tier>`, the shape
/// [`ENVOY_STATS_TAGS`] takes apart.
pub fn rollout_stat_name(metric: &str, rollout: &str, tag: StatTag<'_>) -> String {
    let (key, value) = match tag {
        StatTag::Version(version) => ("version", version.as_str()),
        StatTag::Tier(tier) => ("tier", tier),
    };
    format!("{metric}.rollout.{rollout}.{key}.{value}")
}

/// The stat name as the filter defines it (without Envoy's `wasmcustom.` prefix); for a
/// [`MetricKind::Buckets`] metric its sum counter's (its buckets': [`bucket_stat_name`]).
pub fn stat_name(metric: Metric, rollout: &str, version: Version) -> String {
    let name = metric.sum_name().unwrap_or(metric.name());
    rollout_stat_name(name, rollout, StatTag::Version(version))
}

/// The three counters of a quality signal: samples, their sum in thousandths and the sum of
/// their squares in millionths (mean and variance, so the judge can test a difference).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QualityPart {
    Count,
    SumMilli,
    SumSqMicro,
}

impl QualityPart {
    pub const ALL: [QualityPart; 3] = [
        QualityPart::Count,
        QualityPart::SumMilli,
        QualityPart::SumSqMicro,
    ];

    pub fn suffix(self) -> &'static str {
        match self {
            QualityPart::Count => "count",
            QualityPart::SumMilli => "sum_milli",
            QualityPart::SumSqMicro => "sumsq_micro",
        }
    }

    /// `canary_quality_<signal>_<suffix>`, the metric (and Prometheus) name.
    pub fn metric_name(self, signal: &str) -> String {
        format!("canary_quality_{signal}_{}", self.suffix())
    }

    /// The signal and part a metric name is about, if it is a quality counter.
    pub fn parse(metric: &str) -> Option<(&str, QualityPart)> {
        let rest = metric.strip_prefix("canary_quality_")?;
        QualityPart::ALL.into_iter().find_map(|part| {
            let signal = rest.strip_suffix(part.suffix())?.strip_suffix('_')?;
            (!signal.is_empty()).then_some((signal, part))
        })
    }
}

/// The stat name of a quality counter as the filter defines it.
pub fn quality_stat_name(
    signal: &str,
    part: QualityPart,
    rollout: &str,
    version: Version,
) -> String {
    rollout_stat_name(
        &part.metric_name(signal),
        rollout,
        StatTag::Version(version),
    )
}

/// `stats_config.stats_tags` entries that turn the stat name into `rollout`, `version` (and
/// for a latency bucket `upper_us`) labels. Envoy matches each regex against the full stat
/// name; the first group is removed from the name, the second is the tag value. A bucket's
/// `.upper_us.<N>` goes with its leading dot, so what is left of its name has the shape of
/// every other stat's.
pub const ENVOY_STATS_TAGS: [(&str, &str); 4] = [
    ("rollout", r"^wasmcustom\.canary_\w+\.(rollout\.([^.]+)\.)"),
    (
        "version",
        r"^wasmcustom\.canary_\w+\.rollout\.[^.]+\.(version\.([^.]+))(?:\.upper_us\.[^.]+)?$",
    ),
    // The latency buckets (`canary_rq_time_ms_in_bucket`, see [`bucket_stat_name`]).
    (
        BUCKET_LABEL,
        r"^wasmcustom\.canary_\w+\.rollout\.[^.]+\.version\.[^.]+(\.upper_us\.([^.]+))$",
    ),
    // The fallback chain's per-tier stats (`canary_tier_*`).
    (
        "tier",
        r"^wasmcustom\.canary_tier_\w+\.rollout\.[^.]+\.(tier\.([^.]+))$",
    ),
];

/// The label (and stat name tag) of a latency bucket: its upper bound in whole µs, or
/// [`BUCKET_OVERFLOW`] for the bucket above the last bound.
pub const BUCKET_LABEL: &str = "upper_us";
pub const BUCKET_OVERFLOW: &str = "inf";

impl Metric {
    /// A [`MetricKind::Buckets`] metric's bucket counters: the metric (and Prometheus) name.
    pub fn in_bucket_name(self) -> Option<&'static str> {
        match self {
            Metric::RqTimeMs => Some("canary_rq_time_ms_in_bucket"),
            _ => None,
        }
    }

    /// A [`MetricKind::Buckets`] metric's counter of the samples' sum (ms).
    pub fn sum_name(self) -> Option<&'static str> {
        match self {
            Metric::RqTimeMs => Some("canary_rq_time_ms_sum"),
            _ => None,
        }
    }
}

/// The stat name of one latency bucket counter as the filter defines it:
/// `<metric>_in_bucket.rollout.<rollout>.version.<version>.upper_us.<N>`, N the bucket's upper
/// bound in µs (`upper_us: None`: the overflow bucket, `upper_us.inf`).
pub fn bucket_stat_name(
    metric: Metric,
    rollout: &str,
    version: Version,
    upper_us: Option<u64>,
) -> String {
    let name = metric.in_bucket_name().unwrap_or(metric.name());
    let stat = rollout_stat_name(name, rollout, StatTag::Version(version));
    match upper_us {
        Some(us) => format!("{stat}.{BUCKET_LABEL}.{us}"),
        None => format!("{stat}.{BUCKET_LABEL}.{BUCKET_OVERFLOW}"),
    }
}

/// The upper bound (ms) an `upper_us` label names: whole µs, or `inf`. `None` if it is neither.
pub fn bucket_upper_ms(label: &str) -> Option<f64> {
    if label == BUCKET_OVERFLOW {
        return Some(f64::INFINITY);
    }
    if label.is_empty() || !label.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(label.parse::<u64>().ok()? as f64 / 1_000.0)
}

/// The bucket a sample of `sample_ms` goes to: the first whose bound (µs, ascending) is at
/// least the sample, like Prometheus' `le`; `bounds_us.len()` is the overflow bucket.
pub fn bucket_index(bounds_us: &[u64; LATENCY_BUCKETS - 1], sample_ms: u64) -> usize {
    let sample_us = sample_ms.saturating_mul(1_000);
    // Bisection in fixed steps over the fixed table: `index` bounds are below the sample.
    let mut index = 0;
    let mut step = 128;
    while step > 0 {
        if bounds_us
            .get(index + step - 1)
            .is_some_and(|&bound| bound < sample_us)
        {
            index += step;
        }
        step /= 2;
    }
    index
}

/// Every stat the filter defines starts with this (after Envoy's [`ENVOY_WASM_PREFIX`]): the
/// match of the bootstrap's `histogram_bucket_settings` and of Istio's stats inclusion.
pub const ENVOY_STAT_PREFIX: &str = "wasmcustom.canary_";

/// Lean mode (see [`crate::lean`]): the stable and canary clusters' own stats the controller
/// reads, as Envoy's `/stats/prometheus` names them, each labelled by [`CLUSTER_LABEL`].
pub const CLUSTER_LABEL: &str = "envoy_cluster_name";
/// Requests sent upstream (each try of a retried request counts).
pub const CLUSTER_RQ_TOTAL: &str = "envoy_cluster_upstream_rq_total";
/// Answers by class (`envoy_response_code_class` 2, 3, 4, 5); Envoy's own 503 for a reset or
/// a failed connection and its 504 for a timeout are charged here too.
pub const CLUSTER_RQ_CLASS: &str = "envoy_cluster_upstream_rq_xx";
pub const CLUSTER_RQ_CLASS_LABEL: &str = "envoy_response_code_class";
/// Upstream streams reset by the upstream (rx) or by Envoy (tx): the filter's `rq_reset`.
pub const CLUSTER_RQ_RESETS: [&str; 2] = [
    "envoy_cluster_upstream_rq_rx_reset",
    "envoy_cluster_upstream_rq_tx_reset",
];
/// Time to the upstream's last byte (ms), a histogram.
pub const CLUSTER_RQ_TIME: &str = "envoy_cluster_upstream_rq_time";
/// The `histogram_bucket_settings` match (`suffix`) that gives every cluster's
/// `upstream_rq_time` the same fine bounds as the filter's histograms.
pub const CLUSTER_RQ_TIME_STAT_SUFFIX: &str = ".upstream_rq_time";

/// The first and last bound (ms) of the filter's latency buckets, and the most one bound
/// may be above the one before it.
pub const LATENCY_BUCKET_FIRST_MS: f64 = 0.5;
pub const LATENCY_BUCKET_LAST_MS: f64 = 300_000.0;
pub const LATENCY_BUCKET_RATIO: f64 = 1.1;

/// The bucket bounds (ms) of the filter's latency buckets ([`latency_buckets_us`]), also the
/// bounds every bootstrap sets for the filter's histograms and lean mode's cluster
/// `upstream_rq_time` (`stats_config.histogram_bucket_settings`). Envoy's default bounds
/// (… 50, 100, 250, 500 …) would hide a change of a quantile inside one bucket from any
/// latency test.
pub fn latency_buckets_ms() -> Vec<f64> {
    // A whole number of µs over 1,000 is the double nearest the bound's decimal text.
    latency_buckets_us()
        .into_iter()
        .map(|us| us as f64 / 1_000.0)
        .collect()
}

/// The latency buckets of one rollout and version: one per bound of [`latency_buckets_us`]
/// and the overflow bucket. A constant, so the wasm filter's tables have a fixed size.
pub const LATENCY_BUCKETS: usize = 145;

/// The latency bucket bounds in whole µs: log-spaced from 0.5 ms to 5 min, each at most 10%
/// above the last, rounded down to three significant digits (144 bounds, the last the first
/// at or above 5 min). Integer arithmetic only, into an array: the wasm filter builds its
/// bucket names from these without formatting a float, and its size is capped.
pub fn latency_buckets_us() -> [u64; LATENCY_BUCKETS - 1] {
    let mut bounds = [500; LATENCY_BUCKETS - 1];
    for i in 1..bounds.len() {
        // Ten times the last × 1.1, cut to three significant digits, then divided by ten:
        // the place of the third digit is at least 10 (ten times 500 × 1.1 is 5,500).
        let tenfold = bounds[i - 1] * 11;
        let mut place = 10;
        while tenfold / place >= 1_000 {
            place *= 10;
        }
        bounds[i] = tenfold / place * (place / 10);
    }
    bounds
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_are_fine_everywhere() {
        let b = latency_buckets_ms();
        assert_eq!(b[0], 0.5);
        assert!(*b.last().unwrap_or(&0.0) >= LATENCY_BUCKET_LAST_MS);
        assert!(b.len() < 160, "{}", b.len());
        for pair in b.windows(2) {
            let ratio = pair[1] / pair[0];
            assert!(
                ratio > 1.0 && ratio <= LATENCY_BUCKET_RATIO + 1e-12,
                "{pair:?}"
            );
        }
        // Three significant digits: short decimal text in the bootstrap.
        assert!(b.iter().all(|v| round_down_3(*v) == *v), "{b:?}");
    }

    /// `x` rounded down to three significant digits, as the nearest double of its decimal
    /// text (how the bounds were first defined, in floating point).
    fn round_down_3(x: f64) -> f64 {
        let exponent = x.log10().floor() as i32 - 2;
        let mantissa = (x / 10f64.powi(exponent) + 1e-9).floor();
        format!("{mantissa}e{exponent}").parse().unwrap_or(x)
    }

    #[test]
    fn the_bounds_in_us_are_the_floating_point_definitions_times_1000() {
        let mut float = vec![LATENCY_BUCKET_FIRST_MS];
        let mut last = LATENCY_BUCKET_FIRST_MS;
        while last < LATENCY_BUCKET_LAST_MS {
            last = round_down_3(last * LATENCY_BUCKET_RATIO);
            float.push(last);
        }
        let us = latency_buckets_us();
        assert_eq!(us.len(), 144);
        assert_eq!(LATENCY_BUCKETS, us.len() + 1);
        assert_eq!(latency_buckets_ms(), float);
        for (ms, us) in float.iter().zip(&us) {
            // Three significant digits from 0.5 ms: a whole number of µs (up to the product's
            // rounding: 2.01 × 1000 is 2009.9999999999998).
            let scaled = ms * 1_000.0;
            assert!((scaled - scaled.round()).abs() < 1e-6, "{ms}");
            assert_eq!(scaled.round() as u64, *us);
        }
        assert_eq!((us[0], us[1], us[143]), (500, 550, 311_000_000));
        // The last is the first at or above 5 min.
        assert!(us[142] < 300_000_000 && us[143] >= 300_000_000);
    }

    #[test]
    fn samples_go_to_the_first_bucket_at_or_above_them() {
        let us = latency_buckets_us();
        assert_eq!(bucket_index(&us, 0), 0);
        // 1 ms: above 0.972, at most 1.06.
        assert_eq!(us[bucket_index(&us, 1)], 1_060);
        assert_eq!(us[bucket_index(&us, 30)], 30_000, "upper-inclusive");
        assert_eq!(us[bucket_index(&us, 31)], 33_000);
        assert_eq!(bucket_index(&us, 311_000), 143);
        assert_eq!(bucket_index(&us, 311_001), 144, "overflow");
        assert_eq!(bucket_index(&us, u64::MAX), 144);
        // The fixed-step bisection is the plain one.
        for ms in (0..320_000).step_by(7).chain([310_999, 311_000, 311_001]) {
            let sample_us = ms * 1_000;
            assert_eq!(
                bucket_index(&us, ms),
                us.partition_point(|&b| b < sample_us),
                "{ms}"
            );
        }
    }

    #[test]
    fn bucket_names_parse_back() {
        assert_eq!(
            bucket_stat_name(Metric::RqTimeMs, "shop", Version::Canary, Some(550)),
            "canary_rq_time_ms_in_bucket.rollout.shop.version.canary.upper_us.550"
        );
        assert_eq!(
            bucket_stat_name(Metric::RqTimeMs, "shop", Version::Stable, None),
            "canary_rq_time_ms_in_bucket.rollout.shop.version.stable.upper_us.inf"
        );
        assert_eq!(
            stat_name(Metric::RqTimeMs, "shop", Version::Stable),
            "canary_rq_time_ms_sum.rollout.shop.version.stable"
        );
        assert_eq!(bucket_upper_ms("550"), Some(0.55));
        assert_eq!(bucket_upper_ms("308000000"), Some(308_000.0));
        assert_eq!(bucket_upper_ms("inf"), Some(f64::INFINITY));
        for bad in ["", "+5", "-1", "0.5", "1e3", "Inf", "99999999999999999999"] {
            assert_eq!(bucket_upper_ms(bad), None, "{bad}");
        }
        for m in Metric::ALL {
            assert_eq!(
                m.kind() == MetricKind::Buckets,
                m.in_bucket_name().is_some() && m.sum_name().is_some(),
                "{m:?}"
            );
        }
    }

    #[test]
    fn stat_names_follow_the_documented_shape() {
        assert_eq!(
            stat_name(Metric::RqTotal, "checkout", Version::Canary),
            "canary_rq_total.rollout.checkout.version.canary"
        );
        assert_eq!(
            stat_name(Metric::Rq5xx, "a-b_c", Version::Stable),
            "canary_rq_5xx.rollout.a-b_c.version.stable"
        );
        assert_eq!(
            rollout_stat_name("canary_tier_rq_total", "chat", StatTag::Tier("lite")),
            "canary_tier_rq_total.rollout.chat.tier.lite"
        );
    }

    #[test]
    fn metric_names_are_unique_prometheus_names() {
        let mut seen = std::collections::HashSet::new();
        for m in Metric::ALL {
            assert!(seen.insert(m.name()));
            assert!(m
                .name()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
            assert_eq!(Metric::ALL[m.index()], m);
        }
    }

    #[test]
    fn quality_names_parse_back() {
        assert_eq!(
            quality_stat_name(
                "task_success",
                QualityPart::SumMilli,
                "chat",
                Version::Canary
            ),
            "canary_quality_task_success_sum_milli.rollout.chat.version.canary"
        );
        for part in QualityPart::ALL {
            let name = part.metric_name("task_success");
            assert_eq!(QualityPart::parse(&name), Some(("task_success", part)));
        }
        assert_eq!(QualityPart::parse("canary_quality__count"), None);
        assert_eq!(QualityPart::parse("canary_rq_total"), None);
        assert!(Metric::LlmTtftMs.is_llm() && !Metric::RqTimeMs.is_llm());
        assert!(Metric::LlmCostSumSqMicroUsd2.is_llm());
        assert!(Metric::Throttled.is_rate_limit() && !Metric::Throttled.is_llm());
        assert!(!Metric::LlmCostSumSqMicroUsd2.is_rate_limit());
        // 20,000 nano-USD = 20 µUSD → 400 µUSD²; 1,499 nano → 1.499² = 2.247 → 2.
        assert_eq!(cost_sumsq_micro_usd2(20_000), 400);
        assert_eq!(cost_sumsq_micro_usd2(1_499), 2);
        assert_eq!(cost_sumsq_micro_usd2(u64::MAX), u64::MAX);
        assert!(Metric::BreakerOpen.is_breaker() && !Metric::BreakerOpen.is_llm());
        assert_eq!(Metric::BreakerOpen.kind(), MetricKind::Gauge);
    }

    #[test]
    fn status_classes() {
        let table = [
            (100, None),
            (200, Some(Metric::Rq2xx)),
            (204, Some(Metric::Rq2xx)),
            (302, Some(Metric::Rq3xx)),
            (404, Some(Metric::Rq4xx)),
            (503, Some(Metric::Rq5xx)),
            (600, None),
        ];
        for (status, want) in table {
            assert_eq!(Metric::for_status(status), want, "{status}");
        }
    }
}
