//! Safe wrappers over the ABI calls in `abi`: the stream a hook is running for (header reads
//! and writes, an attribute, metric updates), metric definitions on a configuration being
//! created, and Envoy's log. Every pointer Envoy hands back is checked for null and read as
//! bytes, copied before the hook returns.

use canary_contract::stats::MetricKind;
use canary_filter::routing::RequestHeaders;

use crate::abi::{self, ConfigEnvoyPtr, EnvoyBuffer, FilterEnvoyPtr, HeaderType, ModuleBuffer};

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

/// The HTTP stream a hook runs for. Only made inside a hook, from the pointer Envoy passed.
#[derive(Clone, Copy)]
pub struct Stream(FilterEnvoyPtr);

impl Stream {
    /// # Safety
    /// `ptr` must be the filter pointer of the hook being run, used only during it.
    pub unsafe fn new(ptr: FilterEnvoyPtr) -> Stream {
        Stream(ptr)
    }

    fn get(self, header_type: HeaderType, name: &str) -> Option<Vec<u8>> {
        let mut out = EnvoyBuffer {
            ptr: std::ptr::null(),
            length: 0,
        };
        // SAFETY: a valid stream pointer, a key we own for the call, a result slot on our
        // stack; no count wanted (null is allowed).
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
        if !found {
            return None;
        }
        // SAFETY: filled in by Envoy just now.
        unsafe { copy(out) }
    }

    pub fn response_header(self, name: &str) -> Option<Vec<u8>> {
        self.get(abi::RESPONSE_HEADER, name)
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
                MetricKind::Counter => {
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

impl RequestHeaders for Stream {
    fn header(&self, name: &str) -> Option<Vec<u8>> {
        self.get(abi::REQUEST_HEADER, name)
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
}

/// The configuration Envoy is creating; only valid inside `on_http_filter_config_new`.
pub struct NewConfig(ConfigEnvoyPtr);

impl NewConfig {
    /// # Safety
    /// `ptr` must be the config pointer of the `config_new` hook being run.
    pub unsafe fn new(ptr: ConfigEnvoyPtr) -> NewConfig {
        NewConfig(ptr)
    }
}

impl DefineMetric for NewConfig {
    fn define_metric(&mut self, kind: MetricKind, name: &str) -> Result<usize, String> {
        let define = match kind {
            MetricKind::Counter => {
                abi::envoy_dynamic_module_callback_http_filter_config_define_counter
            }
            MetricKind::Histogram => {
                abi::envoy_dynamic_module_callback_http_filter_config_define_histogram
            }
            MetricKind::Gauge => abi::envoy_dynamic_module_callback_http_filter_config_define_gauge,
        };
        let mut id = 0usize;
        // SAFETY: the config pointer of the running `config_new`; the name is ours for the
        // call (Envoy copies it); no labels; the id slot is on our stack.
        let result = unsafe {
            define(
                self.0,
                ModuleBuffer::of(name.as_bytes()),
                std::ptr::null(),
                0,
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
