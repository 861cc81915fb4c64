//! The event hooks Envoy's loader resolves in the module (`envoy_dynamic_module_on_*`), each
//! handing over to `filter` with the stream wrapped by `envoy`. The filter never stops a
//! request or a response: every status hook returns `Continue`. Hooks for features this
//! module does not use (callouts, schedulers, streams it never starts, watermarks) are
//! exported because the loader requires them, and do nothing.
//!
//! Ownership: `config_new` boxes a [`Config`] and hands Envoy the pointer, `config_destroy`
//! takes it back; likewise `filter_new` / `filter_destroy` for each [`Request`]. Envoy
//! keeps a configuration alive while any of its filters is.

use std::ffi::{c_char, c_void};

use crate::abi::{self, ConfigEnvoyPtr, FilterEnvoyPtr, FilterStatus, CONTINUE};
use crate::envoy::{log_error, log_info, NativeMetric, NewConfig, Stream};
use crate::filter::{Config, HttpStream, Request};

impl HttpStream for Stream {
    fn set_request_header(&self, name: &str, value: &[u8]) {
        Stream::set_request_header(*self, name, value)
    }
    fn remove_request_header(&self, name: &str) {
        Stream::remove_request_header(*self, name)
    }
    fn clear_route_cache(&self) {
        Stream::clear_route_cache(*self)
    }
    fn response_header(&self, name: &str) -> Option<Vec<u8>> {
        Stream::response_header(*self, name)
    }
    fn response_trailer(&self, name: &str) -> Option<Vec<u8>> {
        Stream::response_trailer(*self, name)
    }
    fn add_response_header(&self, name: &str, value: &[u8]) {
        Stream::add_response_header(*self, name, value)
    }
    fn response_code_details(&self) -> Option<Vec<u8>> {
        Stream::response_code_details(*self)
    }
    fn update(&self, metric: NativeMetric, value: u64) {
        Stream::update(*self, metric, value)
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    abi::ABI_VERSION.as_ptr().cast()
}

/// `name` is the filter's `filter_name`; `config` its `filter_config` (the wasm filter's
/// plugin JSON). A configuration that fails validation is refused: Envoy then rejects the
/// listener, as it does for the wasm filter's failed `on_configure`.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config_envoy: ConfigEnvoyPtr,
    _name_ptr: *const u8,
    _name_length: usize,
    config_ptr: *const u8,
    config_length: usize,
) -> *const c_void {
    let json: &[u8] = if config_ptr.is_null() {
        &[]
    } else {
        // SAFETY: Envoy passes `config_length` bytes it owns for the duration of the hook.
        unsafe { std::slice::from_raw_parts(config_ptr, config_length) }
    };
    // SAFETY: the config pointer of this very hook.
    let mut host = unsafe { NewConfig::new(config_envoy) };
    match Config::new(json, &mut host) {
        Ok(config) => {
            log_info(&format!(
                "wasm-canary (native): configured rollouts {}",
                config.summary
            ));
            Box::into_raw(Box::new(config)) as *const c_void
        }
        Err(e) => {
            log_error(&format!("wasm-canary (native): {e}"));
            std::ptr::null()
        }
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: *mut c_void) {
    if !config.is_null() {
        // SAFETY: made by `Box::into_raw` in `config_new`, destroyed once by Envoy.
        drop(unsafe { Box::from_raw(config.cast::<Config>()) });
    }
}

/// One filter instance: its request state, and the configuration it was made from (Envoy
/// passes that to `filter_new` only).
struct Filter {
    config: *const Config,
    request: Request,
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: *mut c_void,
    _filter_envoy: FilterEnvoyPtr,
) -> *mut c_void {
    let filter = Filter {
        config: config.cast_const().cast(),
        request: Request::default(),
    };
    Box::into_raw(Box::new(filter)).cast()
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_destroy(filter: *mut c_void) {
    if !filter.is_null() {
        // SAFETY: made by `Box::into_raw` in `filter_new`, destroyed once by Envoy.
        drop(unsafe { Box::from_raw(filter.cast::<Filter>()) });
    }
}

/// Runs `f` on a filter hook's request state, configuration and stream.
///
/// # Safety
/// `filter` must come from `filter_new` and `filter_envoy` be the hook's own pointer.
unsafe fn with_filter(
    filter_envoy: FilterEnvoyPtr,
    filter: *mut c_void,
    f: impl FnOnce(&mut Request, &Config, &Stream),
) {
    // SAFETY: per the contract above; Envoy runs one hook of a filter at a time.
    let Some(filter) = (unsafe { filter.cast::<Filter>().as_mut() }) else {
        return;
    };
    // SAFETY: Envoy keeps the configuration alive while its filters are.
    let Some(config) = (unsafe { filter.config.as_ref() }) else {
        return;
    };
    // SAFETY: the hook's own stream pointer, used only during the hook.
    let stream = unsafe { Stream::new(filter_envoy) };
    f(&mut filter.request, config, &stream);
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter_envoy: FilterEnvoyPtr,
    filter: *mut c_void,
    _end_of_stream: bool,
) -> FilterStatus {
    // SAFETY: both pointers as Envoy passed them to this hook.
    unsafe { with_filter(filter_envoy, filter, |r, c, s| r.on_request_headers(c, s)) };
    CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    filter_envoy: FilterEnvoyPtr,
    filter: *mut c_void,
    end_of_stream: bool,
) -> FilterStatus {
    // SAFETY: as above.
    unsafe {
        with_filter(filter_envoy, filter, |r, c, s| {
            r.on_response_headers(c, s, end_of_stream)
        })
    };
    CONTINUE
}

/// Envoy enters here only for a response with trailers (gRPC, HTTP/2): its gRPC status
/// decides the class of a 200.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    filter_envoy: FilterEnvoyPtr,
    filter: *mut c_void,
) -> FilterStatus {
    // SAFETY: as above.
    unsafe { with_filter(filter_envoy, filter, |r, c, s| r.on_response_trailers(c, s)) };
    CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    filter_envoy: FilterEnvoyPtr,
    filter: *mut c_void,
) {
    // SAFETY: as above.
    unsafe { with_filter(filter_envoy, filter, |r, c, s| r.on_stream_complete(c, s)) };
}

// Bodies and request trailers pass on unchanged.

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    _filter_envoy: FilterEnvoyPtr,
    _filter: *mut c_void,
    _end_of_stream: bool,
) -> FilterStatus {
    CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    _filter_envoy: FilterEnvoyPtr,
    _filter: *mut c_void,
) -> FilterStatus {
    CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    _filter_envoy: FilterEnvoyPtr,
    _filter: *mut c_void,
    _end_of_stream: bool,
) -> FilterStatus {
    CONTINUE
}
