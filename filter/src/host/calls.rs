//! Host calls the rest of `host` shares: the clock, metrics, shared data with its CAS
//! token, randomness, the wake-up queue, and the HTTP stream being processed.

#[cfg(feature = "llm")]
use std::cell::Cell;
use std::time::UNIX_EPOCH;

#[cfg(not(feature = "lean"))]
use canary_contract::stats::MetricKind;
use proxy_wasm::hostcalls;
#[cfg(not(feature = "lean"))]
use proxy_wasm::types::MetricType;

use crate::control::encode_ms;
use crate::cookie::anonymous_id;
#[cfg(not(feature = "lean"))]
use crate::metrics::MetricHost;

pub(super) fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        // Not `as_millis`: its u128 arithmetic is slow in wasm32, and this runs 3× a request.
        .map_or(0, |d| {
            d.as_secs()
                .saturating_mul(1_000)
                .saturating_add(u64::from(d.subsec_millis()))
        })
}

pub(super) fn increment(metric_id: u32, delta: u64) {
    // A failed update is not worth failing anything over.
    let _ = hostcalls::increment_metric(metric_id, i64::try_from(delta).unwrap_or(i64::MAX));
}

#[cfg(not(feature = "lean"))]
pub(super) struct EnvoyMetrics;

#[cfg(not(feature = "lean"))]
impl MetricHost for EnvoyMetrics {
    fn define(&mut self, kind: MetricKind, name: &str) -> Result<u32, String> {
        let kind = match kind {
            // A latency metric's parts are counters (`RolloutMetrics::define`).
            MetricKind::Counter | MetricKind::Buckets => MetricType::Counter,
            MetricKind::Histogram => MetricType::Histogram,
            MetricKind::Gauge => MetricType::Gauge,
        };
        hostcalls::define_metric(kind, name).map_err(|status| format!("{status:?}"))
    }
}

/// Defines one of the metrics outside [`crate::metrics::RolloutMetrics`] (shadow, eval,
/// tier stats).
#[cfg(any(feature = "llm", feature = "fallback"))]
pub(super) fn define_metric(kind: MetricKind, name: &str) -> Result<u32, String> {
    EnvoyMetrics
        .define(kind, name)
        .map_err(|e| format!("defining metric {name}: {e}"))
}

#[cfg(feature = "llm")]
pub(super) fn define_counter(name: &str) -> Result<u32, String> {
    define_metric(MetricKind::Counter, name)
}

/// A shared-data entry (a time in ms) with its CAS token, for a write that only one root
/// may win. Envoy takes a write without a token as unconditional, and the workers' ticks
/// coincide (they were configured together): two that both found the entry missing would
/// both win. So a missing entry is created (0: nothing stored) and this round skipped.
pub(super) fn shared_with_cas(key: &str) -> Option<(Option<Vec<u8>>, u32)> {
    match hostcalls::get_shared_data(key) {
        Ok((stored, Some(cas))) => Some((stored, cas)),
        Ok((_, None)) => {
            let _ = hostcalls::set_shared_data(key, Some(&encode_ms(0)), None);
            None
        }
        Err(_) => None,
    }
}

/// The HTTP stream the host is processing. proxy-wasm's `HttpContext` methods read nothing
/// of the context they are called on: they ask the host about the current stream. Feature
/// code that holds only its own part of a context's state reaches the stream through this.
#[cfg(any(feature = "llm", feature = "fallback"))]
pub(super) struct Stream;

#[cfg(any(feature = "llm", feature = "fallback"))]
impl proxy_wasm::traits::Context for Stream {}

#[cfg(any(feature = "llm", feature = "fallback"))]
impl proxy_wasm::traits::HttpContext for Stream {}

/// Wakes a worker's root context from its HTTP contexts, to send shadow copies and
/// evaluations while the user's request goes on: a shared queue this root registered under
/// a name only it knows, so Envoy runs `on_queue_ready` on this very root, on this worker.
#[cfg(feature = "llm")]
#[derive(Default)]
pub(super) struct RootWake {
    queue: Cell<Option<u32>>,
}

#[cfg(feature = "llm")]
impl RootWake {
    /// Registers the queue (once per root).
    pub(super) fn register(&self) {
        if self.queue.get().is_some() {
            return;
        }
        let mut random = [0u8; 8];
        let _ = getrandom::fill(&mut random);
        let name = format!("wasm-canary-wake-{:016x}", u64::from_le_bytes(random));
        match hostcalls::register_shared_queue(&name) {
            Ok(id) => self.queue.set(Some(id)),
            Err(status) => log::warn!(
                "wasm-canary: no wake-up queue ({status:?}): copies go out at the next tick"
            ),
        }
    }

    pub(super) fn wake(&self) {
        if let Some(queue) = self.queue.get() {
            let _ = hostcalls::enqueue_shared_queue(queue, Some(b"1"));
        }
    }

    /// Empties the queue: one wake-up sends everything filed so far.
    pub(super) fn drain(&self) {
        if let Some(queue) = self.queue.get() {
            while let Ok(Some(_)) = hostcalls::dequeue_shared_queue(queue) {}
        }
    }
}

/// 128 random bits from the host (WASI `random_get`). If the host cannot provide them,
/// fall back to the clock and a counter: ids must stay unique-ish, never panic.
pub(super) fn new_anonymous_id() -> String {
    let mut random = [0u8; 16];
    if getrandom::fill(&mut random).is_err() {
        use std::cell::Cell;
        thread_local!(static COUNTER: Cell<u64> = const { Cell::new(0) });
        let n = COUNTER.with(|c| {
            c.set(c.get().wrapping_add(1));
            c.get()
        });
        let nanos = hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as u64);
        random = crate::cookie::fallback_random(nanos, n);
    }
    anonymous_id(random)
}
