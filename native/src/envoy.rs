//! Safe wrappers over the ABI calls in `abi`: the stream a hook is running for (header reads
//! and writes, an attribute, metric updates), metric definitions on a configuration being
//! created, and Envoy's log. Every pointer Envoy hands back is checked for null and read as
//! bytes, copied before the hook returns or borrowed only until it does. Also the context of a
//! cluster specifier's selection: its request headers, random value and chosen cluster.

use canary_contract::stats::{MetricKind, BUCKET_LABEL};
use canary_filter::routing::RequestHeaders;

use crate::abi::{
    self, ConfigEnvoyPtr, EnvoyBuffer, EnvoyHttpHeader, FilterEnvoyPtr, HeaderType, ModuleBuffer,
    ModuleHttpHeader, SchedulerPtr, SpecifierContextEnvoyPtr,
};

/// Copies an Envoy-owned buffer; `None` for a null pointer.
///
/// # Safety
/// `buffer` must be as Envoy filled it in during the current hook.
unsafe fn copy(buffer: EnvoyBuffer) -> Option<Vec<u8>> {
    if buffer.ptr.is_null() {
        return None;
    }
    // SAFETY: Envoy guarantees `length` bytes at `ptr` for the rest of the hook.
    Some(unsafe { std::slice::from_raw_parts(buffer.ptr, buffer.length) }.to_vec())
}

/// An Envoy-owned buffer as a slice; `None` for a null pointer.
///
/// # Safety
/// `buffer` must be as Envoy filled it in during the current hook, and the slice used only
/// during it.
unsafe fn borrowed<'a>(buffer: EnvoyBuffer) -> Option<&'a [u8]> {
    if buffer.ptr.is_null() {
        return None;
    }
    // SAFETY: Envoy guarantees `length` bytes at `ptr` for the rest of the hook.
    Some(unsafe { std::slice::from_raw_parts(buffer.ptr, buffer.length) })
}

/// The HTTP stream a hook runs for. Only made inside a hook, from the pointer Envoy passed.
#[derive(Clone, Copy)]
pub struct Stream(FilterEnvoyPtr);

impl Stream {
    /// # Safety
    /// `ptr` must be the filter pointer of the hook being run, used only during it.
    pub unsafe fn new(ptr: FilterEnvoyPtr) -> Stream {
        Stream(ptr)
    }

    /// A header's first value, zero-copy: Envoy's bytes, which stay put until the hook
    /// returns (the stream is only borrowed inside one).
    fn borrow(&self, header_type: HeaderType, name: &str) -> Option<&[u8]> {
        let mut out = EnvoyBuffer {
            ptr: std::ptr::null(),
            length: 0,
        };
        // SAFETY: as in `get`.
        let found = unsafe {
            abi::envoy_dynamic_module_callback_http_get_header(
                self.0,
                header_type,
                ModuleBuffer::of(name.as_bytes()),
                &mut out,
                0,
                std::ptr::null_mut(),
            )
        };
        // SAFETY: filled in by Envoy just now, valid for the hook.
        found.then(|| unsafe { borrowed(out) }).flatten()
    }

    /// The cluster the stream's route names, zero-copy.
    pub fn route_cluster(&self) -> Option<&[u8]> {
        let mut out = EnvoyBuffer {
            ptr: std::ptr::null(),
            length: 0,
        };
        // SAFETY: valid stream pointer, result slot on our stack.
        let found =
            unsafe { abi::envoy_dynamic_module_callback_http_get_cluster_name(self.0, &mut out) };
        // SAFETY: filled in by Envoy just now, valid for the hook.
        found.then(|| unsafe { borrowed(out) }).flatten()
    }

    /// A header's first value, copied.
    fn get(self, header_type: HeaderType, name: &str) -> Option<Vec<u8>> {
        self.borrow(header_type, name).map(<[u8]>::to_vec)
    }

    pub fn response_header(&self, name: &str) -> Option<&[u8]> {
        self.borrow(abi::RESPONSE_HEADER, name)
    }

    pub fn response_trailer(self, name: &str) -> Option<Vec<u8>> {
        self.get(abi::RESPONSE_TRAILER, name)
    }

    /// Sets a request header, replacing every value it had.
    pub fn set_request_header(self, name: &str, value: &[u8]) {
        // SAFETY: valid stream pointer; both buffers are ours for the call (Envoy copies).
        unsafe {
            abi::envoy_dynamic_module_callback_http_set_header(
                self.0,
                abi::REQUEST_HEADER,
                ModuleBuffer::of(name.as_bytes()),
                ModuleBuffer::of(value),
            );
        }
    }

    pub fn remove_request_header(self, name: &str) {
        // SAFETY: as above; a null value removes the header.
        unsafe {
            abi::envoy_dynamic_module_callback_http_set_header(
                self.0,
                abi::REQUEST_HEADER,
                ModuleBuffer::of(name.as_bytes()),
                ModuleBuffer::NONE,
            );
        }
    }

    pub fn clear_route_cache(self) {
        // SAFETY: valid stream pointer.
        unsafe { abi::envoy_dynamic_module_callback_http_clear_route_cache(self.0) }
    }

    pub fn add_response_header(self, name: &str, value: &[u8]) {
        // SAFETY: as above.
        unsafe {
            abi::envoy_dynamic_module_callback_http_add_header(
                self.0,
                abi::RESPONSE_HEADER,
                ModuleBuffer::of(name.as_bytes()),
                ModuleBuffer::of(value),
            );
        }
    }

    /// Envoy's `response.code`: a field of the stream info, far cheaper than the `:status`
    /// header.
    pub fn response_code(self) -> Option<u64> {
        let mut code = 0u64;
        // SAFETY: valid stream pointer, result slot on our stack.
        let found = unsafe {
            abi::envoy_dynamic_module_callback_http_filter_get_attribute_int(
                self.0,
                abi::ATTRIBUTE_RESPONSE_CODE,
                &mut code,
            )
        };
        found.then_some(code)
    }

    /// Envoy's `response.code_details`.
    pub fn response_code_details(self) -> Option<Vec<u8>> {
        let mut out = EnvoyBuffer {
            ptr: std::ptr::null(),
            length: 0,
        };
        // SAFETY: valid stream pointer, result slot on our stack.
        let found = unsafe {
            abi::envoy_dynamic_module_callback_http_filter_get_attribute_string(
                self.0,
                abi::ATTRIBUTE_RESPONSE_CODE_DETAILS,
                &mut out,
            )
        };
        if !found {
            return None;
        }
        // SAFETY: filled in by Envoy just now.
        unsafe { copy(out) }
    }

    /// Adds `delta` to a counter, or records a sample, by the metric's kind. A failed update
    /// is not worth failing the request over.
    pub fn update(self, metric: NativeMetric, value: u64) {
        // SAFETY: valid stream pointer; ids come from this configuration's definitions; no
        // labels.
        unsafe {
            match metric.kind {
                MetricKind::Counter | MetricKind::Buckets => {
                    abi::envoy_dynamic_module_callback_http_filter_increment_counter(
                        self.0,
                        metric.id,
                        std::ptr::null(),
                        0,
                        value,
                    );
                }
                MetricKind::Histogram => {
                    abi::envoy_dynamic_module_callback_http_filter_record_histogram_value(
                        self.0,
                        metric.id,
                        std::ptr::null(),
                        0,
                        value,
                    );
                }
                // Gauges (the breaker's state) are not updated per request.
                MetricKind::Gauge => {}
            }
        }
    }
}

impl Stream {
    /// Adds to a labelled counter, or records into a labelled histogram (`labels` in the
    /// order of the family's label names, at most [`MAX_LABELS`]).
    pub fn update_labeled(self, metric: NativeMetric, labels: &[&[u8]], value: u64) {
        let labels = label_buffers(labels);
        let labels = &labels.0[..labels.1];
        // SAFETY: valid stream pointer; the labels are ours for the call.
        unsafe {
            match metric.kind {
                MetricKind::Counter | MetricKind::Buckets => {
                    abi::envoy_dynamic_module_callback_http_filter_increment_counter(
                        self.0,
                        metric.id,
                        labels.as_ptr(),
                        labels.len(),
                        value,
                    );
                }
                MetricKind::Histogram => {
                    abi::envoy_dynamic_module_callback_http_filter_record_histogram_value(
                        self.0,
                        metric.id,
                        labels.as_ptr(),
                        labels.len(),
                        value,
                    );
                }
                MetricKind::Gauge => {}
            }
        }
    }
}

/// The most labels a family has: rollout, version, and a latency bucket's `upper_us`.
pub const MAX_LABELS: usize = 3;

/// Labels as Envoy takes them, on the stack (no allocation per request), and how many.
fn label_buffers(labels: &[&[u8]]) -> ([ModuleBuffer; MAX_LABELS], usize) {
    let mut buffers = [ModuleBuffer::of(&[]); MAX_LABELS];
    for (buffer, label) in buffers.iter_mut().zip(labels) {
        *buffer = ModuleBuffer::of(label);
    }
    (buffers, labels.len().min(MAX_LABELS))
}

impl RequestHeaders for Stream {
    fn header(&self, name: &str) -> Option<std::borrow::Cow<'_, [u8]>> {
        self.borrow(abi::REQUEST_HEADER, name)
            .map(std::borrow::Cow::Borrowed)
    }
}

/// The context of one cluster selection (`on_cluster_specifier_select`). Only made inside
/// that hook, from the pointer Envoy passed.
pub struct SelectContext(SpecifierContextEnvoyPtr);

impl SelectContext {
    /// # Safety
    /// `ptr` must be the context of the selection being run, used only during it.
    pub unsafe fn new(ptr: SpecifierContextEnvoyPtr) -> SelectContext {
        SelectContext(ptr)
    }

    /// The stream's random value: the same on every pick of its route.
    pub fn random_value(&self) -> u64 {
        // SAFETY: valid context pointer.
        unsafe { abi::envoy_dynamic_module_callback_cluster_specifier_get_random_value(self.0) }
    }

    pub fn set_cluster(&self, name: &str) {
        // SAFETY: valid context pointer; Envoy copies the name.
        unsafe {
            abi::envoy_dynamic_module_callback_cluster_specifier_set_cluster_name(
                self.0,
                ModuleBuffer::of(name.as_bytes()),
            )
        }
    }
}

impl RequestHeaders for SelectContext {
    fn header(&self, name: &str) -> Option<std::borrow::Cow<'_, [u8]>> {
        let mut out = EnvoyBuffer {
            ptr: std::ptr::null(),
            length: 0,
        };
        // SAFETY: valid context pointer, a key we own for the call, a result slot on our
        // stack, no count wanted.
        let found = unsafe {
            abi::envoy_dynamic_module_callback_cluster_specifier_get_request_header_value(
                self.0,
                ModuleBuffer::of(name.as_bytes()),
                &mut out,
                0,
                std::ptr::null_mut(),
            )
        };
        // SAFETY: filled in by Envoy just now, valid for the selection.
        let value = found.then(|| unsafe { borrowed(out) }).flatten();
        value.map(std::borrow::Cow::Borrowed)
    }
}

/// One metric as Envoy defined it: counter, histogram and gauge ids are separate spaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NativeMetric {
    pub kind: MetricKind,
    pub id: usize,
}

/// Defines metrics on a configuration Envoy is creating (`on_http_filter_config_new`).
pub trait DefineMetric {
    fn define_metric(&mut self, kind: MetricKind, name: &str) -> Result<usize, String>;
    /// A family whose stats are named `name.<label>.<value>…` when updated (e.g.
    /// `name.rollout.<r>.version.<v>`, labels [`FAMILY_LABELS`]).
    fn define_family(
        &mut self,
        kind: MetricKind,
        name: &str,
        labels: &[&str],
    ) -> Result<usize, String>;
}

/// The label names of every metric family: the wasm filter's stat name, taken apart.
pub const FAMILY_LABELS: [&str; 2] = ["rollout", "version"];
/// The label names of the latency bucket family: a bucket's name taken apart.
pub const BUCKET_FAMILY_LABELS: [&str; MAX_LABELS] = ["rollout", "version", BUCKET_LABEL];

/// The configuration Envoy is creating; only valid inside `on_http_filter_config_new`.
pub struct NewConfig(ConfigEnvoyPtr);

impl NewConfig {
    /// # Safety
    /// `ptr` must be the config pointer of the `config_new` hook being run.
    pub unsafe fn new(ptr: ConfigEnvoyPtr) -> NewConfig {
        NewConfig(ptr)
    }
}

impl NewConfig {
    fn define(&mut self, kind: MetricKind, name: &str, labels: &[&str]) -> Result<usize, String> {
        let define = match kind {
            // A latency metric's parts are counters.
            MetricKind::Counter | MetricKind::Buckets => {
                abi::envoy_dynamic_module_callback_http_filter_config_define_counter
            }
            MetricKind::Histogram => {
                abi::envoy_dynamic_module_callback_http_filter_config_define_histogram
            }
            MetricKind::Gauge => abi::envoy_dynamic_module_callback_http_filter_config_define_gauge,
        };
        let labels: Vec<ModuleBuffer> = labels
            .iter()
            .map(|l| ModuleBuffer::of(l.as_bytes()))
            .collect();
        let mut id = 0usize;
        // SAFETY: the config pointer of the running `config_new`; the name and labels are
        // ours for the call (Envoy copies them); the id slot is on our stack.
        let result = unsafe {
            define(
                self.0,
                ModuleBuffer::of(name.as_bytes()),
                labels.as_ptr(),
                labels.len(),
                &mut id,
            )
        };
        if result == abi::METRICS_SUCCESS {
            Ok(id)
        } else {
            Err(format!("Envoy refused the metric (result {result})"))
        }
    }
}

impl DefineMetric for NewConfig {
    fn define_metric(&mut self, kind: MetricKind, name: &str) -> Result<usize, String> {
        self.define(kind, name, &[])
    }

    fn define_family(
        &mut self,
        kind: MetricKind,
        name: &str,
        labels: &[&str],
    ) -> Result<usize, String> {
        self.define(kind, name, labels)
    }
}

/// A live configuration's Envoy side, for main-thread hooks (`config_scheduled`,
/// `config_http_callout_done`) and `config_new`.
#[derive(Clone, Copy)]
pub struct LiveConfig(ConfigEnvoyPtr);

impl LiveConfig {
    /// # Safety
    /// `ptr` must be Envoy's config pointer, used on the main thread until `config_destroy`.
    pub unsafe fn new(ptr: ConfigEnvoyPtr) -> LiveConfig {
        LiveConfig(ptr)
    }

    /// A GET to `cluster`; the callout's id, or Envoy's refusal.
    pub fn get(
        self,
        cluster: &str,
        headers: &[(&str, &str)],
        timeout_ms: u64,
    ) -> Result<u64, String> {
        let headers: Vec<ModuleHttpHeader> = headers
            .iter()
            .map(|(k, v)| ModuleHttpHeader {
                key_ptr: k.as_ptr(),
                key_length: k.len(),
                value_ptr: v.as_ptr(),
                value_length: v.len(),
            })
            .collect();
        let mut id = 0u64;
        // SAFETY: the live config pointer on the main thread; everything passed is ours
        // for the call (Envoy copies it).
        let result = unsafe {
            abi::envoy_dynamic_module_callback_http_filter_config_http_callout(
                self.0,
                &mut id,
                ModuleBuffer::of(cluster.as_bytes()),
                headers.as_ptr(),
                headers.len(),
                ModuleBuffer::NONE,
                timeout_ms,
            )
        };
        if result == abi::CALLOUT_SUCCESS {
            Ok(id)
        } else {
            Err(format!(
                "Envoy refused the callout to {cluster} (result {result})"
            ))
        }
    }

    /// Brings a labelled counter into existence at 0, so it is exported before its first
    /// request, as the wasm filter's are.
    pub fn touch_counter(self, id: usize, labels: &[&[u8]]) {
        let labels = label_buffers(labels);
        let labels = &labels.0[..labels.1];
        // SAFETY: the live config pointer; labels ours for the call.
        unsafe {
            abi::envoy_dynamic_module_callback_http_filter_config_increment_counter(
                self.0,
                id,
                labels.as_ptr(),
                labels.len(),
                0,
            );
        }
    }
}

/// Copies a callout's answer: `:status`, `etag`, and the body's chunks joined.
///
/// # Safety
/// The pointers and sizes must be as Envoy passed them to `config_http_callout_done`.
pub unsafe fn callout_answer(
    headers: *const EnvoyHttpHeader,
    headers_size: usize,
    chunks: *const EnvoyBuffer,
    chunks_size: usize,
) -> (Option<Vec<u8>>, Option<Vec<u8>>, Vec<u8>) {
    let (mut status, mut etag, mut body) = (None, None, Vec::new());
    if !headers.is_null() {
        // SAFETY: Envoy's array of `headers_size` headers, valid during the hook.
        for h in unsafe { std::slice::from_raw_parts(headers, headers_size) } {
            // SAFETY: each key and value as Envoy filled them in.
            let key = unsafe {
                copy(EnvoyBuffer {
                    ptr: h.key_ptr,
                    length: h.key_length,
                })
            };
            let value = unsafe {
                copy(EnvoyBuffer {
                    ptr: h.value_ptr,
                    length: h.value_length,
                })
            };
            match key.as_deref() {
                Some(b":status") => status = value,
                Some(b"etag") => etag = value,
                _ => {}
            }
        }
    }
    if !chunks.is_null() {
        // SAFETY: Envoy's array of `chunks_size` buffers, valid during the hook.
        for c in unsafe { std::slice::from_raw_parts(chunks, chunks_size) } {
            // SAFETY: as Envoy filled it in.
            if let Some(bytes) = unsafe { copy(*c) } {
                body.extend_from_slice(&bytes);
            }
        }
    }
    (status, etag, body)
}

/// A configuration's scheduler: committing from any thread runs `config_scheduled` on the
/// main thread. Deleted when dropped.
pub struct Scheduler(SchedulerPtr);

// SAFETY: Envoy's scheduler is made to be committed to from other threads.
unsafe impl Send for Scheduler {}
// SAFETY: as above; commit takes no module-side state.
unsafe impl Sync for Scheduler {}

impl Scheduler {
    /// # Safety
    /// `config` must be the live config pointer, on the main thread.
    pub unsafe fn new(config: ConfigEnvoyPtr) -> Option<Scheduler> {
        // SAFETY: per the contract above.
        let ptr =
            unsafe { abi::envoy_dynamic_module_callback_http_filter_config_scheduler_new(config) };
        (!ptr.is_null()).then_some(Scheduler(ptr))
    }

    pub fn commit(&self, event_id: u64) {
        // SAFETY: a live scheduler (deleted only on drop).
        unsafe {
            abi::envoy_dynamic_module_callback_http_filter_config_scheduler_commit(self.0, event_id)
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        // SAFETY: made by `scheduler_new`, deleted once.
        unsafe { abi::envoy_dynamic_module_callback_http_filter_config_scheduler_delete(self.0) }
    }
}

pub fn log_warn(message: &str) {
    log(abi::LOG_WARN, message);
}

pub fn log_info(message: &str) {
    log(abi::LOG_INFO, message);
}

pub fn log_error(message: &str) {
    log(abi::LOG_ERROR, message);
}

fn log(level: abi::LogLevel, message: &str) {
    // SAFETY: the message is ours for the call.
    unsafe { abi::envoy_dynamic_module_callback_log(level, ModuleBuffer::of(message.as_bytes())) }
}
