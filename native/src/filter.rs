//! The filter's configuration and per-request state, with no ABI in sight: the request path
//! of the wasm filter's plain module (`filter/src/host/mod.rs`), step for step, on the same
//! plain modules (`Router::decide`, `Exchange`, `set_cookie_value`), through the
//! [`HttpStream`] trait the hooks implement over Envoy and the tests over a fake.
//!
//! Unlike the wasm VM, counters are not summed here and flushed: a native counter update is
//! an atomic add inside Envoy, cheaper than any bookkeeping of ours, so each goes straight
//! to Envoy and the admin endpoint sees it at once.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use canary_contract::stats::MetricKind;
use canary_contract::{FilterConfig, Version};
use canary_filter::control::summary;
use canary_filter::cookie::{anonymous_id, set_cookie_value};
use canary_filter::metrics::{Exchange, MetricHost, MetricOp, RolloutMetrics};
use canary_filter::routing::{RequestHeaders, Router};

use crate::envoy::{DefineMetric, NativeMetric};

/// The gRPC status of an answer, in trailers-only response headers or in trailers.
const GRPC_STATUS: &str = "grpc-status";

/// What a request hook may do to its stream.
pub trait HttpStream: RequestHeaders {
    fn set_request_header(&self, name: &str, value: &[u8]);
    fn remove_request_header(&self, name: &str);
    /// After the request headers changed: Envoy routed before the filter ran.
    fn clear_route_cache(&self);
    fn response_header(&self, name: &str) -> Option<Vec<u8>>;
    fn response_trailer(&self, name: &str) -> Option<Vec<u8>>;
    fn add_response_header(&self, name: &str, value: &[u8]);
    fn response_code_details(&self) -> Option<Vec<u8>>;
    fn update(&self, metric: NativeMetric, value: u64);
}

/// A validated configuration with its metrics, shared by every worker's requests.
pub struct Config {
    router: Router,
    metrics: Vec<RolloutMetrics>,
    /// Envoy's metrics, indexed by the ids `RolloutMetrics` holds.
    table: Vec<NativeMetric>,
    /// The rollouts and weights, as the wasm filter logs them.
    pub summary: String,
}

/// `RolloutMetrics::define` over Envoy's definitions: its ids index our table.
struct Definer<'a, D: DefineMetric> {
    host: &'a mut D,
    table: &'a mut Vec<NativeMetric>,
}

impl<D: DefineMetric> MetricHost for Definer<'_, D> {
    fn define(&mut self, kind: MetricKind, name: &str) -> Result<u32, String> {
        let index = u32::try_from(self.table.len()).map_err(|_| "too many metrics".to_string())?;
        let id = self.host.define_metric(kind, name)?;
        self.table.push(NativeMetric { kind, id });
        Ok(index)
    }
}

impl Config {
    /// Parses and validates the filter configuration (the wasm filter's plugin JSON) and
    /// defines every rollout's metrics.
    pub fn new(json: &[u8], host: &mut impl DefineMetric) -> Result<Config, String> {
        let config = FilterConfig::from_json(json)
            .map_err(|e| format!("invalid plugin configuration: {e}"))?;
        let mut table = Vec::new();
        let mut metrics = Vec::with_capacity(config.rollouts.len());
        for r in &config.rollouts {
            let mut definer = Definer {
                host: &mut *host,
                table: &mut table,
            };
            metrics.push(RolloutMetrics::define(&mut definer, r)?);
        }
        Ok(Config {
            summary: summary(&config),
            router: Router::new(config),
            metrics,
            table,
        })
    }

    fn apply(&self, stream: &impl HttpStream, rollout: usize, op: MetricOp, version: Version) {
        let (metric, value) = match op {
            MetricOp::Increment(m) => (m, 1),
            MetricOp::Add(m, delta) => (m, delta),
            MetricOp::Record(m, v) => (m, v),
        };
        let native = self
            .metrics
            .get(rollout)
            .and_then(|m| m.id(version, metric))
            .and_then(|id| self.table.get(id as usize));
        if let Some(native) = native {
            stream.update(*native, value);
        }
    }
}

/// One request's state, from its request headers to the end of its stream.
#[derive(Default)]
pub struct Request {
    routed: Option<Routed>,
}

struct Routed {
    rollout: usize,
    exchange: Exchange,
    set_cookie: Option<String>,
}

impl Request {
    pub fn on_request_headers(&mut self, config: &Config, stream: &impl HttpStream) {
        let now = now_ms();
        let decision = config.router.decide(stream, now, new_anonymous_id);
        let rollout = decision
            .as_ref()
            .and_then(|d| config.router.rollouts().get(d.rollout));
        // Strip client-sent routing headers on every request, routed or not, so nobody
        // picks a version by sending the header themselves; the one this request's rollout
        // sets is replaced below.
        let route_headers = config.router.route_headers();
        for header in route_headers {
            if rollout.is_none_or(|r| r.route_header != *header) {
                stream.remove_request_header(header);
            }
        }
        let (Some(decision), Some(rollout)) = (decision, rollout) else {
            if !route_headers.is_empty() {
                stream.clear_route_cache();
            }
            return;
        };
        if let Some(force) = &rollout.force_header {
            stream.remove_request_header(force);
        }
        let version = decision.version;
        stream.set_request_header(&rollout.route_header, version.as_str().as_bytes());
        stream.clear_route_cache();
        let (exchange, op) = Exchange::start(version, now);
        config.apply(stream, decision.rollout, op, version);
        self.routed = Some(Routed {
            rollout: decision.rollout,
            exchange,
            set_cookie: decision
                .new_anonymous_id
                .map(|id| set_cookie_value(&rollout.anonymous_cookie, &id)),
        });
    }

    pub fn on_response_headers(
        &mut self,
        config: &Config,
        stream: &impl HttpStream,
        end_of_stream: bool,
    ) {
        let Some(routed) = self.routed.as_mut() else {
            return;
        };
        let status = stream.response_header(":status");
        let ops = routed.exchange.on_response_headers(
            status.as_deref(),
            end_of_stream,
            now_ms(),
            || stream.response_header(GRPC_STATUS),
            || stream.response_code_details(),
        );
        for op in ops {
            config.apply(stream, routed.rollout, op, routed.exchange.version);
        }
        if let Some(cookie) = routed.set_cookie.take() {
            stream.add_response_header("set-cookie", cookie.as_bytes());
        }
    }

    pub fn on_response_trailers(&mut self, config: &Config, stream: &impl HttpStream) {
        let Some(routed) = self.routed.as_mut() else {
            return;
        };
        let op = (routed.exchange).on_response_trailers(|| stream.response_trailer(GRPC_STATUS));
        if let Some(op) = op {
            config.apply(stream, routed.rollout, op, routed.exchange.version);
        }
    }

    /// The stream is over (Envoy's `stream_complete`, before the filter is destroyed).
    pub fn on_stream_complete(&mut self, config: &Config, stream: &impl HttpStream) {
        let Some(routed) = self.routed.take() else {
            return;
        };
        for op in routed.exchange.on_end(now_ms()) {
            config.apply(stream, routed.rollout, op, routed.exchange.version);
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| {
        d.as_secs()
            .saturating_mul(1_000)
            .saturating_add(u64::from(d.subsec_millis()))
    })
}

/// 128 random bits from the OS; if it cannot give them, the clock and a counter hashed, so
/// ids stay unique-ish and nothing panics.
fn new_anonymous_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut random = [0u8; 16];
    if getrandom::fill(&mut random).is_err() {
        use std::hash::Hasher;
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        for (i, chunk) in random.chunks_mut(8).enumerate() {
            let mut h = fnv::FnvHasher::default();
            h.write_u64(nanos);
            h.write_u64(n);
            h.write_usize(i);
            chunk.copy_from_slice(&h.finish().to_le_bytes());
        }
    }
    anonymous_id(random)
}

#[cfg(test)]
#[path = "filter_tests.rs"]
mod tests;
