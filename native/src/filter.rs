//! The filter's configuration and per-request state, with no ABI in sight: the request path
//! of the wasm filter's plain module (`filter/src/host/mod.rs`), step for step, on the same
//! plain modules (`Router::decide`, `Exchange`, `set_cookie_value`), through the
//! [`HttpStream`] trait the hooks implement over Envoy and the tests over a fake.
//!
//! Unlike the wasm VM, counters are not summed here and flushed: a native counter update is
//! an atomic add inside Envoy, cheaper than any bookkeeping of ours, so each goes straight
//! to Envoy and the admin endpoint sees it at once. So does a latency sample: one add to
//! its bucket's counter and one to the sum's, the wasm filter's stats by name.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use canary_contract::native_route::NativeRouteConfig;
use canary_contract::stats::{
    bucket_index, latency_buckets_us, Metric, MetricKind, BUCKET_OVERFLOW, LATENCY_BUCKETS,
};
use canary_contract::{FilterConfig, Version};
use canary_filter::control::summary;
use canary_filter::cookie::{anonymous_id, fallback_random, set_cookie_value};
use canary_filter::keyed::metric_set_key;
use canary_filter::metrics::{Exchange, MetricHost, MetricOp, RolloutMetrics};
use canary_filter::routing::{RequestHeaders, Router};

use crate::envoy::{DefineMetric, NativeMetric, BUCKET_FAMILY_LABELS, FAMILY_LABELS};

/// The gRPC status of an answer, in trailers-only response headers or in trailers.
const GRPC_STATUS: &str = "grpc-status";

/// What a request hook may do to its stream.
pub trait HttpStream: RequestHeaders {
    fn set_request_header(&self, name: &str, value: &[u8]);
    fn remove_request_header(&self, name: &str);
    /// After the request headers changed: Envoy routed before the filter ran.
    fn clear_route_cache(&self);
    /// Whether the route Envoy picked sends the request to `cluster`.
    fn routes_to(&self, cluster: &str) -> bool;
    /// The response's status code as Envoy recorded it (`response.code`).
    fn response_code(&self) -> Option<u64>;
    /// Zero-copy: the bytes are Envoy's, for the rest of the hook.
    fn response_header(&self, name: &str) -> Option<Cow<'_, [u8]>>;
    fn response_trailer(&self, name: &str) -> Option<Vec<u8>>;
    fn add_response_header(&self, name: &str, value: &[u8]);
    fn response_code_details(&self) -> Option<Vec<u8>>;
    fn update(&self, metric: NativeMetric, value: u64);
    /// The same for a family's stat of `labels` (rollout, version; a latency bucket's also
    /// its `upper_us`).
    fn update_labeled(&self, metric: NativeMetric, labels: &[&[u8]], value: u64);
}

/// The filter configuration of one `DynamicModuleFilter`, shared by every worker's requests:
/// the configuration in force, and the metrics Envoy let us define when it created the
/// filter (it refuses definitions after that).
pub struct Config {
    current: RwLock<Arc<Active>>,
    /// Ids of the rollouts known at creation, by metric set (see `keyed::metric_set_key`).
    defined: Vec<(String, RolloutMetrics)>,
    /// Envoy's metrics, indexed by the ids `RolloutMetrics` holds.
    table: Vec<NativeMetric>,
    /// Per metric (`Metric::index`): its family labelled by rollout and version, for
    /// rollouts a later configuration brings. A family's stats have the same names. A
    /// latency metric's is its sum's.
    families: Vec<Option<NativeMetric>>,
    /// The latency buckets' family, labelled also by `upper_us`.
    bucket_family: Option<NativeMetric>,
    /// The latency bucket bounds (µs), and each bucket's `upper_us` label, the overflow last.
    bounds_us: [u64; LATENCY_BUCKETS - 1],
    bucket_labels: Vec<String>,
    /// The rollouts and weights, as the wasm filter logs them.
    pub summary: String,
}

/// The configuration requests use, with where each rollout's metrics are.
pub struct Active {
    pub router: Router,
    metrics: Vec<RolloutIds>,
}

impl Active {
    /// No rollouts: routes nothing, counts nothing.
    pub fn empty() -> Active {
        Active {
            router: Router::new(FilterConfig::new(Vec::new())),
            metrics: Vec::new(),
        }
    }
}

enum RolloutIds {
    /// Defined with the filter: its ids are `Config::defined[i]`.
    Defined(usize),
    /// A rollout that came after the filter was created: its metrics are the families'.
    Labeled(String),
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

/// The metrics a rollout of the plain build has without a breaker: the families.
fn family_metric(m: Metric) -> bool {
    !(m.is_llm() || m.is_rate_limit() || m.is_breaker())
}

impl Config {
    /// Parses and validates the filter configuration (the wasm filter's plugin JSON) and
    /// defines every rollout's metrics, and the families for rollouts to come.
    pub fn new(
        json: &[u8],
        host: &mut impl DefineMetric,
    ) -> Result<(Config, FilterConfig), String> {
        let config = FilterConfig::from_json(json)
            .map_err(|e| format!("invalid plugin configuration: {e}"))?;
        let mut table = Vec::new();
        let mut defined: Vec<(String, RolloutMetrics)> = Vec::new();
        for r in &config.rollouts {
            let key = metric_set_key(r);
            if defined.iter().any(|(k, _)| *k == key) {
                continue;
            }
            let mut definer = Definer {
                host: &mut *host,
                table: &mut table,
            };
            defined.push((key, RolloutMetrics::define(&mut definer, r)?));
        }
        let mut families = vec![None; Metric::ALL.len()];
        let mut bucket_family = None;
        if config.controller.is_some() {
            for m in Metric::ALL.into_iter().filter(|m| family_metric(*m)) {
                let (Some(buckets), Some(sum)) = (m.in_bucket_name(), m.sum_name()) else {
                    let id = host.define_family(m.kind(), m.name(), &FAMILY_LABELS)?;
                    families[m.index()] = Some(NativeMetric { kind: m.kind(), id });
                    continue;
                };
                let kind = MetricKind::Counter;
                let id = host.define_family(kind, buckets, &BUCKET_FAMILY_LABELS)?;
                bucket_family = Some(NativeMetric { kind, id });
                let id = host.define_family(kind, sum, &FAMILY_LABELS)?;
                families[m.index()] = Some(NativeMetric { kind, id });
            }
        }
        let bounds_us = latency_buckets_us();
        let bucket_labels = (bounds_us.iter().map(u64::to_string))
            .chain([BUCKET_OVERFLOW.to_string()])
            .collect();
        let mut native = Config {
            current: RwLock::new(Arc::new(Active::empty())),
            defined,
            table,
            families,
            bucket_family,
            bounds_us,
            bucket_labels,
            summary: summary(&config),
        };
        native.current = RwLock::new(Arc::new(native.prepare(config.clone())));
        Ok((native, config))
    }

    fn prepare(&self, config: FilterConfig) -> Active {
        let metrics = (config.rollouts.iter())
            .map(|r| {
                let key = metric_set_key(r);
                match self.defined.iter().position(|(k, _)| *k == key) {
                    Some(i) => RolloutIds::Defined(i),
                    None => RolloutIds::Labeled(r.name.clone()),
                }
            })
            .collect();
        Active {
            router: Router::new(config),
            metrics,
        }
    }

    /// Puts `config` in force for new requests (requests under way keep theirs). Returns
    /// the counters of rollouts new to this filter, by family id and labels, for the caller
    /// to bring into existence.
    pub fn activate(&self, config: FilterConfig) -> Vec<(usize, Vec<String>)> {
        let active = self.prepare(config);
        let mut fresh = Vec::new();
        for ids in &active.metrics {
            let RolloutIds::Labeled(name) = ids else {
                continue;
            };
            for version in Version::ALL {
                let labels = vec![name.clone(), version.as_str().to_string()];
                for m in Metric::ALL {
                    // Counters, and a latency metric's sum.
                    let counter = matches!(m.kind(), MetricKind::Counter | MetricKind::Buckets);
                    if let (true, Some(family)) = (counter, self.families[m.index()]) {
                        fresh.push((family.id, labels.clone()));
                    }
                }
                if let Some(family) = self.bucket_family {
                    for upper_us in &self.bucket_labels {
                        let mut labels = labels.clone();
                        labels.push(upper_us.clone());
                        fresh.push((family.id, labels));
                    }
                }
            }
        }
        if let Ok(mut current) = self.current.write() {
            *current = Arc::new(active);
        }
        fresh
    }

    /// The configuration in force.
    pub fn current(&self) -> Option<Arc<Active>> {
        self.current.read().ok().map(|a| Arc::clone(&a))
    }

    fn apply(
        &self,
        active: &Active,
        stream: &impl HttpStream,
        rollout: usize,
        op: MetricOp,
        version: Version,
    ) {
        let (metric, value) = match op {
            MetricOp::Increment(m) => (m, 1),
            MetricOp::Add(m, delta) => (m, delta),
            MetricOp::Record(m, v) => (m, v),
        };
        // A latency sample: the sample to the sum (the metric's id), then one to its bucket.
        // In that order, as the wasm filter flushes them: a reading taken between the two
        // has the sum ahead of the buckets, which the controller's sanity check allows.
        let bucket =
            (metric.kind() == MetricKind::Buckets).then(|| bucket_index(&self.bounds_us, value));
        match active.metrics.get(rollout) {
            Some(RolloutIds::Defined(i)) => {
                let Some((_, ids)) = self.defined.get(*i) else {
                    return;
                };
                let native = |id: Option<u32>| id.and_then(|id| self.table.get(id as usize));
                if let Some(native) = native(ids.id(version, metric)) {
                    stream.update(*native, value);
                }
                if let Some(bucket) = native(bucket.and_then(|b| ids.bucket_id(version, b))) {
                    stream.update(*bucket, 1);
                }
            }
            Some(RolloutIds::Labeled(name)) => {
                let labels = [name.as_bytes(), version.as_str().as_bytes()];
                if let Some(Some(family)) = self.families.get(metric.index()) {
                    stream.update_labeled(*family, &labels, value);
                }
                let upper_us = bucket.and_then(|b| self.bucket_labels.get(b));
                if let (Some(family), Some(upper_us)) = (self.bucket_family, upper_us) {
                    let labels = [labels[0], labels[1], upper_us.as_bytes()];
                    stream.update_labeled(family, &labels, 1);
                }
            }
            None => {}
        }
    }
}

/// A route-time decision (`route_time`'s cluster specifier), for the filter of the same
/// stream.
pub struct Handoff {
    /// Whose decision (identity only): a filter of another configuration does not take it.
    pub config: *const Config,
    pub active: Arc<Active>,
    pub decided: Option<Decided>,
    /// The route's clusters, to check the decision against the cluster its route names.
    pub route: Arc<NativeRouteConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided {
    /// When the route was picked (ms since the epoch): the request's start.
    pub now_ms: u64,
    pub rollout: usize,
    pub version: Version,
    pub new_anonymous_id: Option<String>,
}

impl Handoff {
    /// The cluster the decision sends the request to.
    pub fn cluster(&self) -> &str {
        let route = &self.route;
        match &self.decided {
            Some(d) => {
                let name = (self.active.router.rollouts().get(d.rollout)).map_or("", |r| &r.name);
                route.cluster(name, d.version)
            }
            None => &route.stable_cluster,
        }
    }
}

/// One request's state, from its request headers to the end of its stream.
#[derive(Default)]
pub struct Request {
    /// The configuration the request was routed by, kept to its end.
    active: Option<Arc<Active>>,
    routed: Option<Routed>,
    /// The decision of the cluster specifier that picked this stream's route, if one did.
    handoff: Option<Handoff>,
}

struct Routed {
    rollout: usize,
    exchange: Exchange,
    set_cookie: Option<String>,
}

impl Request {
    /// A request whose route the `wasm-canary` cluster specifier picked, with its decision.
    pub fn routed_at_route_time(handoff: Option<Handoff>) -> Request {
        Request {
            handoff,
            ..Request::default()
        }
    }

    pub fn on_request_headers(&mut self, config: &Config, stream: &impl HttpStream) {
        if let Some(handoff) = self.handoff.take() {
            return self.on_routed_request_headers(config, stream, handoff);
        }
        let Some(active) = config.current() else {
            return;
        };
        let now = now_ms();
        let decision = active.router.decide(stream, now, new_anonymous_id);
        let rollout = decision
            .as_ref()
            .and_then(|d| active.router.rollouts().get(d.rollout));
        // Strip client-sent routing headers on every request, routed or not, so nobody
        // picks a version by sending the header themselves; the one this request's rollout
        // sets is replaced below.
        // Only a header that is there is removed: a read costs less than a removal, and
        // far less than Envoy picking the route again (~2,400 instructions).
        let mut stripped = false;
        let routed_by = rollout.and(decision.as_ref().map(|d| d.rollout));
        for header in active.router.headers_to_strip(routed_by) {
            if stream.header(header).is_some() {
                stream.remove_request_header(header);
                stripped = true;
            }
        }
        let (Some(decision), Some(rollout)) = (decision, rollout) else {
            if stripped {
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
        config.apply(&active, stream, decision.rollout, op, version);
        self.routed = Some(Routed {
            rollout: decision.rollout,
            exchange,
            set_cookie: decision
                .new_anonymous_id
                .map(|id| set_cookie_value(&rollout.anonymous_cookie, &id)),
        });
        self.active = Some(active);
    }

    /// The route was picked by the specifier's decision: the filter sets the routing header
    /// for the upstream to see (and strips client-sent ones) and counts, with no second
    /// pick of the route. The version counted is the one the route sends the request to:
    /// the decision's, unless the route was picked again differently since (a new
    /// configuration between two picks), or the decision was another stream's.
    fn on_routed_request_headers(
        &mut self,
        config: &Config,
        stream: &impl HttpStream,
        handoff: Handoff,
    ) {
        let cluster = handoff.cluster();
        let Handoff {
            active,
            decided,
            route,
            ..
        } = &handoff;
        let served = decided.as_ref().and_then(|d| {
            let rollout = active.router.rollouts().get(d.rollout)?;
            let version = if stream.routes_to(cluster) {
                d.version
            } else {
                (Version::ALL.into_iter())
                    .find(|v| stream.routes_to(route.cluster(&rollout.name, *v)))?
            };
            Some((d, rollout, version))
        });
        let routed_by = served.as_ref().map(|(d, _, _)| d.rollout);
        for header in active.router.headers_to_strip(routed_by) {
            if stream.header(header).is_some() {
                stream.remove_request_header(header);
            }
        }
        let Some((decided, rollout, version)) = served else {
            return;
        };
        if let Some(force) = &rollout.force_header {
            stream.remove_request_header(force);
        }
        stream.set_request_header(&rollout.route_header, version.as_str().as_bytes());
        let (exchange, op) = Exchange::start(version, decided.now_ms);
        config.apply(active, stream, decided.rollout, op, version);
        self.routed = Some(Routed {
            rollout: decided.rollout,
            exchange,
            set_cookie: (decided.new_anonymous_id.as_ref())
                .map(|id| set_cookie_value(&rollout.anonymous_cookie, id)),
        });
        self.active = Some(handoff.active);
    }

    pub fn on_response_headers(
        &mut self,
        config: &Config,
        stream: &impl HttpStream,
        end_of_stream: bool,
    ) {
        let (Some(active), Some(routed)) = (self.active.as_deref(), self.routed.as_mut()) else {
            return;
        };
        // The code as digits, as `:status` has it, from the stream info (a header read costs
        // ~400 instructions more); the header where Envoy has no code.
        let mut digits = [0u8; 20];
        let code = stream.response_code().map(|c| decimal(c, &mut digits));
        let status = match code {
            Some(code) => Some(Cow::Borrowed(code)),
            None => stream.response_header(":status"),
        };
        let ops = routed.exchange.on_response_headers(
            status.as_deref(),
            end_of_stream,
            || stream.response_header(GRPC_STATUS).map(Cow::into_owned),
            || stream.response_code_details(),
        );
        for op in ops {
            config.apply(active, stream, routed.rollout, op, routed.exchange.version);
        }
        if let Some(cookie) = routed.set_cookie.take() {
            stream.add_response_header("set-cookie", cookie.as_bytes());
        }
    }

    pub fn on_response_trailers(&mut self, config: &Config, stream: &impl HttpStream) {
        let (Some(active), Some(routed)) = (self.active.as_deref(), self.routed.as_mut()) else {
            return;
        };
        let op = (routed.exchange).on_response_trailers(|| stream.response_trailer(GRPC_STATUS));
        if let Some(op) = op {
            config.apply(active, stream, routed.rollout, op, routed.exchange.version);
        }
    }

    /// The stream is over (Envoy's `stream_complete`, before the filter is destroyed).
    pub fn on_stream_complete(&mut self, config: &Config, stream: &impl HttpStream) {
        let (Some(active), Some(routed)) = (self.active.take(), self.routed.take()) else {
            return;
        };
        for op in routed.exchange.on_end(now_ms()) {
            config.apply(&active, stream, routed.rollout, op, routed.exchange.version);
        }
    }
}

/// `n` in decimal, in `buffer`.
fn decimal(mut n: u64, buffer: &mut [u8; 20]) -> &[u8] {
    let mut at = buffer.len();
    loop {
        at -= 1;
        buffer[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buffer[at..];
        }
    }
}

/// Wall-clock ms since the epoch, read twice per request: on Linux straight from
/// `clock_gettime`, without `SystemTime`'s checked subtraction (~40 instructions a read).
#[cfg(target_os = "linux")]
pub fn now_ms() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to the pointer, which we own.
    if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut now) } != 0 {
        return 0;
    }
    let secs = u64::try_from(now.tv_sec).unwrap_or(0);
    let ms = u64::try_from(now.tv_nsec / 1_000_000).unwrap_or(0);
    secs.saturating_mul(1_000).saturating_add(ms)
}

#[cfg(not(target_os = "linux"))]
pub fn now_ms() -> u64 {
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
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        random = fallback_random(nanos, n);
    }
    anonymous_id(random)
}

#[cfg(test)]
#[path = "filter_tests.rs"]
mod tests;
