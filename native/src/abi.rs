//! Our bindings of Envoy's dynamic-module ABI: only the types and callbacks this module uses,
//! written from `source/extensions/dynamic_modules/abi/abi.h` as the Envoy we pin (1.40.0,
//! build 9e5580933739775e8bce696a57a2e1bc99368f23) exports it. Envoy's Rust SDK is not
//! published; it lives in Envoy's tree, pinned to each Envoy version, so we keep our own.
//!
//! Each signature was checked against the pinned binary, not only read from a header: the
//! symbol is exported (`nm -D envoy`), and its argument registers match (e.g.
//! `http_filter_config_define_counter` takes six: the labelled form, with the id pointer
//! last, not the older four-argument one).

use std::ffi::c_void;

/// The ABI version the pinned Envoy expects from `envoy_dynamic_module_on_program_init`
/// (`ENVOY_DYNAMIC_MODULES_ABI_VERSION` at the pinned commit; the Rust SDK compiled into that
/// binary returns the same string). NUL-terminated: Envoy reads it as a C string.
pub const ABI_VERSION: &[u8] = b"v0.2.0\0";

/// Envoy's `DynamicModuleHttpFilterConfig`: valid from `config_new` to `config_destroy`.
pub type ConfigEnvoyPtr = *mut c_void;
/// Envoy's `DynamicModuleHttpFilter`: valid inside the event hook it is passed to.
pub type FilterEnvoyPtr = *mut c_void;

/// Envoy's `DynamicModuleClusterSpecifierConfig`: valid from `cluster_specifier_config_new`
/// to `cluster_specifier_config_destroy`.
pub type SpecifierConfigEnvoyPtr = *mut c_void;
/// Envoy's `ClusterSpecifierContext` of one selection: valid inside
/// `on_cluster_specifier_select` only.
pub type SpecifierContextEnvoyPtr = *mut c_void;

/// Bytes owned by Envoy (`envoy_dynamic_module_type_envoy_buffer`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct EnvoyBuffer {
    pub ptr: *const u8,
    pub length: usize,
}

/// Bytes owned by the module (`envoy_dynamic_module_type_module_buffer`); Envoy copies
/// what it keeps.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ModuleBuffer {
    pub ptr: *const u8,
    pub length: usize,
}

impl ModuleBuffer {
    pub fn of(bytes: &[u8]) -> ModuleBuffer {
        ModuleBuffer {
            ptr: bytes.as_ptr(),
            length: bytes.len(),
        }
    }

    /// No value: `set_header` with it removes the header.
    pub const NONE: ModuleBuffer = ModuleBuffer {
        ptr: std::ptr::null(),
        length: 0,
    };
}

/// A header the module passes (`envoy_dynamic_module_type_module_http_header`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ModuleHttpHeader {
    pub key_ptr: *const u8,
    pub key_length: usize,
    pub value_ptr: *const u8,
    pub value_length: usize,
}

/// A header Envoy passes (`envoy_dynamic_module_type_envoy_http_header`).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct EnvoyHttpHeader {
    pub key_ptr: *const u8,
    pub key_length: usize,
    pub value_ptr: *const u8,
    pub value_length: usize,
}

/// `envoy_dynamic_module_type_http_callout_init_result_Success` and
/// `envoy_dynamic_module_type_http_callout_result_Success`.
pub const CALLOUT_SUCCESS: u32 = 0;

/// Envoy's scheduler of a filter configuration: events committed to it, from any thread,
/// run `on_http_filter_config_scheduled` on the main thread.
pub type SchedulerPtr = *mut c_void;

/// `envoy_dynamic_module_type_http_header_type`.
pub type HeaderType = u32;
pub const REQUEST_HEADER: HeaderType = 0;
pub const RESPONSE_HEADER: HeaderType = 2;
pub const RESPONSE_TRAILER: HeaderType = 3;

/// `envoy_dynamic_module_type_attribute_id_ResponseCode` (`response.code`): in the pinned
/// binary, the stream info's response code, set before the filter sees response headers.
pub const ATTRIBUTE_RESPONSE_CODE: u32 = 15;
/// `envoy_dynamic_module_type_attribute_id_ResponseCodeDetails` (`response.code_details`).
pub const ATTRIBUTE_RESPONSE_CODE_DETAILS: u32 = 16;

/// `envoy_dynamic_module_type_log_level`.
pub type LogLevel = u32;
pub const LOG_INFO: LogLevel = 2;
pub const LOG_WARN: LogLevel = 3;
pub const LOG_ERROR: LogLevel = 4;

/// `envoy_dynamic_module_type_metrics_result`; 0 is success.
pub type MetricsResult = u32;
pub const METRICS_SUCCESS: MetricsResult = 0;

/// Every `envoy_dynamic_module_type_on_http_filter_*_status`: 0 is `Continue`, the only one
/// this filter returns (it never holds a request or a response).
pub type FilterStatus = u32;
pub const CONTINUE: FilterStatus = 0;

extern "C" {
    pub fn envoy_dynamic_module_callback_http_get_header(
        filter: FilterEnvoyPtr,
        header_type: HeaderType,
        key: ModuleBuffer,
        result: *mut EnvoyBuffer,
        index: usize,
        optional_size: *mut usize,
    ) -> bool;

    /// Replaces every value of `key`; a null `value` removes the header.
    pub fn envoy_dynamic_module_callback_http_set_header(
        filter: FilterEnvoyPtr,
        header_type: HeaderType,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;

    pub fn envoy_dynamic_module_callback_http_add_header(
        filter: FilterEnvoyPtr,
        header_type: HeaderType,
        key: ModuleBuffer,
        value: ModuleBuffer,
    ) -> bool;

    /// Makes Envoy pick the route again: it chose one before the filter chain ran, so a
    /// routing header set here is seen only after this.
    pub fn envoy_dynamic_module_callback_http_clear_route_cache(filter: FilterEnvoyPtr);

    /// (filter, attribute id, result) in the pinned binary; false when the attribute has no
    /// value (no response code yet).
    pub fn envoy_dynamic_module_callback_http_filter_get_attribute_int(
        filter: FilterEnvoyPtr,
        attribute_id: u32,
        result: *mut u64,
    ) -> bool;

    pub fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
        filter: FilterEnvoyPtr,
        attribute_id: u32,
        result: *mut EnvoyBuffer,
    ) -> bool;

    /// Only while the configuration is being created: later definitions are refused
    /// (`Frozen`). With no label names the stat is named `name` under the namespace.
    pub fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config: ConfigEnvoyPtr,
        name: ModuleBuffer,
        label_names: *const ModuleBuffer,
        label_names_length: usize,
        counter_id: *mut usize,
    ) -> MetricsResult;

    pub fn envoy_dynamic_module_callback_http_filter_config_define_histogram(
        config: ConfigEnvoyPtr,
        name: ModuleBuffer,
        label_names: *const ModuleBuffer,
        label_names_length: usize,
        histogram_id: *mut usize,
    ) -> MetricsResult;

    pub fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
        config: ConfigEnvoyPtr,
        name: ModuleBuffer,
        label_names: *const ModuleBuffer,
        label_names_length: usize,
        gauge_id: *mut usize,
    ) -> MetricsResult;

    pub fn envoy_dynamic_module_callback_http_filter_increment_counter(
        filter: FilterEnvoyPtr,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> MetricsResult;

    pub fn envoy_dynamic_module_callback_http_filter_record_histogram_value(
        filter: FilterEnvoyPtr,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> MetricsResult;

    /// Labelled form: `label_values` in the order of the definition's label names; the
    /// stat is named `name.label.value...`.
    pub fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
        config: ConfigEnvoyPtr,
        id: usize,
        label_values: *const ModuleBuffer,
        label_values_length: usize,
        value: u64,
    ) -> MetricsResult;

    pub fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(
        config: ConfigEnvoyPtr,
    ) -> SchedulerPtr;

    pub fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(
        scheduler: SchedulerPtr,
        event_id: u64,
    );

    pub fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(
        scheduler: SchedulerPtr,
    );

    /// A request from the main thread to `cluster`; the answer comes to
    /// `on_http_filter_config_http_callout_done` with the id written to `callout_id`.
    pub fn envoy_dynamic_module_callback_http_filter_config_http_callout(
        config: ConfigEnvoyPtr,
        callout_id: *mut u64,
        cluster: ModuleBuffer,
        headers: *const ModuleHttpHeader,
        headers_length: usize,
        body: ModuleBuffer,
        timeout_ms: u64,
    ) -> u32;

    pub fn envoy_dynamic_module_callback_log(level: LogLevel, message: ModuleBuffer);

    /// The route's cluster, as the route Envoy picked names it (a cluster specifier's
    /// choice included). Checked in the pinned binary: (filter, result), false when the
    /// stream has no route or cluster.
    pub fn envoy_dynamic_module_callback_http_get_cluster_name(
        filter: FilterEnvoyPtr,
        result: *mut EnvoyBuffer,
    ) -> bool;

    // The cluster specifier (`envoy.router.cluster_specifier_plugin` of type
    // `DynamicModuleClusterSpecifier`): Envoy calls `on_cluster_specifier_select` while it
    // picks the route, with a context holding the request headers, the stream's random
    // value and the cluster chosen. In the pinned binary the context's request-header read
    // forwards (headers, key, result, index, count) to the HTTP filter's header lookup,
    // `set_cluster_name` assigns the name to the selection's string, and `get_random_value`
    // returns a field of the context: one value per stream, the same on a re-pick.

    pub fn envoy_dynamic_module_callback_cluster_specifier_get_request_header_value(
        context: SpecifierContextEnvoyPtr,
        key: ModuleBuffer,
        result: *mut EnvoyBuffer,
        index: usize,
        optional_size: *mut usize,
    ) -> bool;

    pub fn envoy_dynamic_module_callback_cluster_specifier_set_cluster_name(
        context: SpecifierContextEnvoyPtr,
        name: ModuleBuffer,
    );

    pub fn envoy_dynamic_module_callback_cluster_specifier_get_random_value(
        context: SpecifierContextEnvoyPtr,
    ) -> u64;
}
