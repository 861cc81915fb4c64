//! The event hooks Envoy's loader resolves in the module (`envoy_dynamic_module_on_*`), each
//! handing over to `filter` with the stream wrapped by `envoy`. The filter never stops a
//! request or a response: every status hook returns `Continue`. Hooks for features this
//! module does not use (callouts, schedulers, streams it never starts, watermarks) are
//! in `idle_hooks` (the loader requires them). A configuration that names a controller is
//! polled: `config_scheduled` is the poll timer's tick, `config_http_callout_done` the
//! answer (see `poll`).
//!
//! Ownership: `config_new` boxes a [`Config`] and hands Envoy the pointer, `config_destroy`
//! takes it back; likewise `filter_new` / `filter_destroy` for each [`Request`]. Envoy
//! keeps a configuration alive while any of its filters is.

use std::borrow::Cow;
use std::ffi::{c_char, c_void};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::abi::{
    self, ConfigEnvoyPtr, EnvoyBuffer, EnvoyHttpHeader, FilterEnvoyPtr, FilterStatus, CONTINUE,
};
use crate::envoy::{
    callout_answer, log_error, log_info, log_warn, LiveConfig, NativeMetric, NewConfig, Scheduler,
    Stream,
};
use crate::filter::{now_ms, Config, HttpStream, Request};
use crate::poll::{Poll, Step};
use crate::route_time;

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
    fn routes_to(&self, cluster: &str) -> bool {
        Stream::route_cluster(self) == Some(cluster.as_bytes())
    }
    fn response_header(&self, name: &str) -> Option<Cow<'_, [u8]>> {
        Stream::response_header(self, name).map(Cow::Borrowed)
    }
    fn response_code(&self) -> Option<u64> {
        Stream::response_code(*self)
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
    fn update_labeled(&self, metric: NativeMetric, labels: &[&[u8]], value: u64) {
        Stream::update_labeled(*self, metric, labels, value)
    }
}

/// What Envoy's configuration pointer stands for on our side: the configuration, and, when
/// it names a controller, the poller and the thread that ticks it.
struct Module {
    /// Declared first, so dropped first: the thread is stopped and joined, and its
    /// scheduler deleted, before anything else of the configuration goes.
    ticker: Option<Ticker>,
    /// Shared with the cluster specifiers that name this filter (`route_time`).
    config: Arc<Config>,
    /// The filter's `filter_name`, under which `config` is bound.
    name: String,
    envoy: LiveConfig,
    poll: Option<Mutex<Poll>>,
}

/// The poll timer. Envoy 1.40 gives an HTTP filter configuration no timer, only a
/// scheduler that runs an event on the main thread; so a thread of ours sleeps the poll
/// interval and commits an event, and the poll itself runs on the main thread.
struct Ticker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Ticker {
    fn start(scheduler: Scheduler, interval: Duration) -> Option<Ticker> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("canary-poll".into())
            .spawn(move || {
                // Owns the scheduler: it is deleted when the thread ends, before Envoy
                // destroys the configuration (the ticker is joined in `config_destroy`).
                while !stopped.load(Ordering::Acquire) {
                    std::thread::park_timeout(interval);
                    if !stopped.load(Ordering::Acquire) {
                        scheduler.commit(0);
                    }
                }
            })
            .ok()?;
        Some(Ticker {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

/// Carries out a poller's step: logs, a new configuration, the poll request.
fn run(module: &Module, poll: &mut Poll, step: Step) {
    if let Some(message) = &step.info {
        log_info(message);
    }
    if let Some(message) = &step.warn {
        log_warn(message);
    }
    if let Some(config) = step.activate {
        for (id, labels) in module.config.activate(config) {
            let labels: Vec<&[u8]> = labels.iter().map(|l| l.as_bytes()).collect();
            module.envoy.touch_counter(id, &labels);
        }
    }
    if let Some(headers) = step.call {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let source = &poll.source;
        match module
            .envoy
            .get(&source.cluster, &headers, source.timeout_ms)
        {
            Ok(id) => poll.in_flight = Some(id),
            Err(problem) => {
                let step = poll.not_sent(problem);
                if let Some(message) = &step.warn {
                    log_warn(message);
                }
            }
        }
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
    name_ptr: *const u8,
    name_length: usize,
    config_ptr: *const u8,
    config_length: usize,
) -> *const c_void {
    let name: &[u8] = if name_ptr.is_null() {
        &[]
    } else {
        // SAFETY: as `config` below.
        unsafe { std::slice::from_raw_parts(name_ptr, name_length) }
    };
    let name = String::from_utf8_lossy(name).into_owned();
    let json: &[u8] = if config_ptr.is_null() {
        &[]
    } else {
        // SAFETY: Envoy passes `config_length` bytes it owns for the duration of the hook.
        unsafe { std::slice::from_raw_parts(config_ptr, config_length) }
    };
    // SAFETY: the config pointer of this very hook.
    let mut host = unsafe { NewConfig::new(config_envoy) };
    let (config, parsed) = match Config::new(json, &mut host) {
        Ok(parts) => parts,
        Err(e) => {
            log_error(&format!("wasm-canary (native): {e}"));
            return std::ptr::null();
        }
    };
    log_info(&format!(
        "wasm-canary (native): configured rollouts {}",
        config.summary
    ));
    // SAFETY: Envoy's config pointer, used on the main thread until `config_destroy`.
    let envoy = unsafe { LiveConfig::new(config_envoy) };
    let config = Arc::new(config);
    route_time::bind(&name, &config);
    let mut module = Module {
        ticker: None,
        config,
        name,
        envoy,
        poll: None,
    };
    if let Some(source) = parsed.controller.clone() {
        let interval = Duration::from_millis(source.poll_interval_ms.max(1));
        // SAFETY: the live config pointer, on the main thread.
        match unsafe { Scheduler::new(config_envoy) }.and_then(|s| Ticker::start(s, interval)) {
            Some(ticker) => {
                module.ticker = Some(ticker);
                module.poll = Some(Mutex::new(Poll::new(source, parsed)));
            }
            None => {
                log_error("wasm-canary (native): no poll timer: the configuration stays static")
            }
        }
    }
    Box::into_raw(Box::new(module)) as *const c_void
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: *mut c_void) {
    if !config.is_null() {
        // SAFETY: made by `Box::into_raw` in `config_new`, destroyed once by Envoy.
        let module = unsafe { Box::from_raw(config.cast::<Module>()) };
        route_time::unbind(&module.name, &module.config);
        drop(module);
    }
}

/// A tick of the poll timer, on the main thread.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    _config_envoy: ConfigEnvoyPtr,
    config: *mut c_void,
    _event_id: u64,
) {
    // SAFETY: our `Module`, alive until `config_destroy` (which stops the ticks first).
    let Some(module) = (unsafe { config.cast::<Module>().as_ref() }) else {
        return;
    };
    let Some(Ok(mut poll)) = module.poll.as_ref().map(Mutex::lock) else {
        return;
    };
    let step = poll.tick(now_ms());
    run(module, &mut poll, step);
}

/// The controller's answer to a poll, on the main thread.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
    _config_envoy: ConfigEnvoyPtr,
    config: *mut c_void,
    callout_id: u64,
    result: u32,
    headers: *const EnvoyHttpHeader,
    headers_size: usize,
    body_chunks: *const EnvoyBuffer,
    body_chunks_size: usize,
) {
    // SAFETY: as in `config_scheduled`.
    let Some(module) = (unsafe { config.cast::<Module>().as_ref() }) else {
        return;
    };
    let Some(Ok(mut poll)) = module.poll.as_ref().map(Mutex::lock) else {
        return;
    };
    // SAFETY: the arrays as Envoy passed them to this hook.
    let (status, etag, body) =
        unsafe { callout_answer(headers, headers_size, body_chunks, body_chunks_size) };
    let status = if result == abi::CALLOUT_SUCCESS {
        status
    } else {
        None
    };
    let step = poll.answered(
        callout_id,
        status.as_deref(),
        etag.as_deref(),
        &body,
        now_ms(),
    );
    run(module, &mut poll, step);
}

/// One filter instance: its request state, and the configuration it was made from (Envoy
/// passes that to `filter_new` only). A stream whose route the `wasm-canary` cluster
/// specifier picked has its decision: Envoy picks the route, then creates the stream's
/// filters, on the same thread with no other stream in between.
struct Filter {
    module: *const Module,
    request: Request,
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: *mut c_void,
    _filter_envoy: FilterEnvoyPtr,
) -> *mut c_void {
    let module: *const Module = config.cast_const().cast();
    // SAFETY: our `Module`, alive while its filters are.
    let handoff = unsafe { module.as_ref() }.and_then(|m| route_time::take(Arc::as_ptr(&m.config)));
    let filter = Filter {
        module,
        request: Request::routed_at_route_time(handoff),
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
    let Some(module) = (unsafe { filter.module.as_ref() }) else {
        return;
    };
    // SAFETY: the hook's own stream pointer, used only during the hook.
    let stream = unsafe { Stream::new(filter_envoy) };
    f(&mut filter.request, &module.config, &stream);
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
