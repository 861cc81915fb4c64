//! Host calls the rest of `host` shares: the clock, metrics, shared data with its CAS
//! token, randomness, the wake-up queue, and the HTTP stream being processed.

#[cfg(feature = "llm")]
use std::cell::Cell;

#[cfg(not(feature = "lean"))]
use canary_contract::stats::MetricKind;
use proxy_wasm::hostcalls;
#[cfg(not(feature = "lean"))]
use proxy_wasm::types::MetricType;

use crate::control::encode_ms;
use crate::cookie::anonymous_id;
#[cfg(not(feature = "lean"))]
use crate::metrics::MetricHost;

// A proxy-wasm VM runs on one Envoy worker thread, and wasm32-wasip1 without the atomics
// feature has no threads: `VmStatic` relies on it.
#[cfg(target_feature = "atomics")]
compile_error!("host::calls::VmStatic assumes a single-threaded module (no atomics)");

/// A `static` of the module's one thread, for state the request path reaches on every
/// request. `thread_local!` would do, but each access goes through a function pointer (a
/// `call_indirect` in the module, ~15 of them a request).
pub(super) struct VmStatic<T>(pub(super) T);

// SAFETY: the module has one thread (see the `compile_error!` above): nothing is shared.
unsafe impl<T> Sync for VmStatic<T> {}

#[link(wasm_import_module = "env")]
extern "C" {
    // Declared here, not through the SDK's `get_current_time`: that builds a `SystemTime`
    // (~200 instructions a read, twice a request) and panics on a status it does not expect.
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
}

/// Milliseconds since the epoch, from Envoy's clock (0 if the host refuses).
pub(super) fn now_ms() -> u64 {
    let mut nanos = 0u64;
    // SAFETY: the host writes one u64 where the pointer points, a local that outlives it.
    let status = unsafe { proxy_get_current_time_nanoseconds(&mut nanos) };
    if status != 0 {
        return 0;
    }
    nanos / 1_000_000
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
        let mut nanos = 0u64;
        // SAFETY: as in `now_ms` (a failed read leaves 0: the counter still differs).
        unsafe { proxy_get_current_time_nanoseconds(&mut nanos) };
        random = crate::cookie::fallback_random(nanos, n);
    }
    anonymous_id(random)
}

/// Request and response headers through Envoy's calls directly: the SDK's wrappers panic
/// on a status they do not expect, and allocate for every value read. Envoy hands a value
/// over by calling the module's `proxy_on_memory_allocate` for room to write it into; in
/// the direct builds, while a read here is under way, that room comes from a bump region
/// instead of the heap (`direct::canary_direct_on_memory_allocate`), so a value costs no
/// allocation. The region starts over when a request's callback begins
/// ([`headers::start_callback`]); values read in one callback are borrowed from the
/// request for that callback only, so none is alive then.
pub(super) mod headers {
    use std::borrow::Cow;
    use std::cell::{Cell, UnsafeCell};

    use super::VmStatic;

    /// Enough for the values one callback reads (key, cookie, host and path; `:status`).
    const REGION_BYTES: usize = 16 * 1024;
    /// Envoy's header maps: the request's and the response's.
    pub(in crate::host) const REQUEST_HEADERS: u32 = 0;
    #[cfg(not(feature = "lean"))]
    pub(in crate::host) const RESPONSE_HEADERS: u32 = 2;

    struct Region {
        bytes: UnsafeCell<[u8; REGION_BYTES]>,
        used: Cell<usize>,
        /// A read is under way: the host's next allocation is its value.
        reading: Cell<bool>,
    }

    static REGION: VmStatic<Region> = VmStatic(Region {
        bytes: UnsafeCell::new([0; REGION_BYTES]),
        used: Cell::new(0),
        reading: Cell::new(false),
    });

    #[link(wasm_import_module = "env")]
    extern "C" {
        fn proxy_get_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
            return_value_data: *mut *mut u8,
            return_value_size: *mut usize,
        ) -> u32;
        fn proxy_get_header_map_pairs(
            map_type: u32,
            return_map_data: *mut *mut u8,
            return_map_size: *mut usize,
        ) -> u32;
        fn proxy_replace_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
            value_data: *const u8,
            value_size: usize,
        ) -> u32;
        #[cfg(not(feature = "lean"))]
        fn proxy_add_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
            value_data: *const u8,
            value_size: usize,
        ) -> u32;
        fn proxy_remove_header_map_value(
            map_type: u32,
            key_data: *const u8,
            key_size: usize,
        ) -> u32;
    }

    /// Sets header `name` of map `map` to `value`, replacing every value it had. A refusal
    /// (the map is gone) is not worth failing the request over.
    pub(in crate::host) fn replace(map: u32, name: &str, value: &str) {
        // SAFETY: both strings are read by the host during the call.
        unsafe {
            proxy_replace_header_map_value(
                map,
                name.as_ptr(),
                name.len(),
                value.as_ptr(),
                value.len(),
            )
        };
    }

    /// Adds a value of header `name` to map `map`, beside any it has.
    #[cfg(not(feature = "lean"))]
    pub(in crate::host) fn add(map: u32, name: &str, value: &str) {
        // SAFETY: both strings are read by the host during the call.
        unsafe {
            proxy_add_header_map_value(map, name.as_ptr(), name.len(), value.as_ptr(), value.len())
        };
    }

    /// Removes header `name` of map `map` (every value), if it is there.
    pub(in crate::host) fn remove(map: u32, name: &str) {
        // SAFETY: as above.
        unsafe { proxy_remove_header_map_value(map, name.as_ptr(), name.len()) };
    }

    /// A request's callback begins: the values of earlier callbacks are gone.
    pub(in crate::host) fn start_callback() {
        REGION.0.used.set(0);
    }

    /// Room for `size` bytes the host is about to write, if a read is under way and the
    /// region has it (8-byte aligned).
    #[cfg(not(feature = "fallback"))]
    pub(in crate::host) fn room(size: usize) -> Option<*mut u8> {
        let r = &REGION.0;
        if !r.reading.get() {
            return None;
        }
        let start = r.used.get().next_multiple_of(8);
        let end = start.checked_add(size).filter(|&e| e <= REGION_BYTES)?;
        r.used.set(end);
        // SAFETY: `start..end` is inside the region and handed out once until the next
        // `start_callback`.
        Some(unsafe { r.bytes.get().cast::<u8>().add(start) })
    }

    fn in_region(ptr: *const u8) -> bool {
        let base = REGION.0.bytes.get().cast::<u8>() as usize;
        (base..base + REGION_BYTES).contains(&(ptr as usize))
    }

    /// Header `name` of map `map`, borrowed from the region for the callback
    /// (`'a`: the request's borrow), or owned if the region was full.
    pub(in crate::host) fn get<'a>(map: u32, name: &str) -> Option<Cow<'a, [u8]>> {
        // SAFETY: the host reads the name during the call and writes the two out-params.
        lend(|data, size| unsafe {
            proxy_get_header_map_value(map, name.as_ptr(), name.len(), data, size)
        })
    }

    /// All of map `map` in the proxy-wasm serialized form (see `crate::header_map`),
    /// borrowed like [`get`]'s values.
    pub(in crate::host) fn get_all<'a>(map: u32) -> Option<Cow<'a, [u8]>> {
        // SAFETY: the host writes the two out-params.
        lend(|data, size| unsafe { proxy_get_header_map_pairs(map, data, size) })
    }

    /// What a host call `read` hands over (through its pointer and size out-params).
    fn lend<'a>(read: impl FnOnce(*mut *mut u8, *mut usize) -> u32) -> Option<Cow<'a, [u8]>> {
        let (mut data, mut size) = (std::ptr::null_mut(), 0usize);
        REGION.0.reading.set(true);
        // The host writes the value to memory this module allocates for it (`room`, or
        // the heap).
        let status = read(&mut data, &mut size);
        REGION.0.reading.set(false);
        // 0 is Ok; anything else (1, NotFound) is no value. A null pointer is no value too,
        // as the SDK reads it.
        if status != 0 || data.is_null() {
            return None;
        }
        if in_region(data) {
            // SAFETY: the host wrote `size` bytes there, in room handed out for this read,
            // which stays untouched until the next callback's `start_callback`; the
            // caller's borrow of the request ends with its callback.
            return Some(Cow::Borrowed(unsafe {
                std::slice::from_raw_parts(data, size)
            }));
        }
        // SAFETY: allocated by `Vec::with_capacity(size)` in the memory-allocate entry,
        // as the SDK does, and written by the host.
        Some(Cow::Owned(unsafe { Vec::from_raw_parts(data, size, size) }))
    }
}
