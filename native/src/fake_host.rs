//! Test builds only: the Envoy callbacks the module calls, as no-ops, so the unit tests link
//! (in Envoy they are resolved from the binary at `dlopen`); and the test that our ABI
//! version is the one the pinned Envoy expects.

use std::ffi::CStr;

use crate::abi::{ConfigEnvoyPtr, EnvoyBuffer, FilterEnvoyPtr, HeaderType, LogLevel, ModuleBuffer};

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_get_header(
    _: FilterEnvoyPtr,
    _: HeaderType,
    _: ModuleBuffer,
    _: *mut EnvoyBuffer,
    _: usize,
    _: *mut usize,
) -> bool {
    false
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_set_header(
    _: FilterEnvoyPtr,
    _: HeaderType,
    _: ModuleBuffer,
    _: ModuleBuffer,
) -> bool {
    true
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_add_header(
    _: FilterEnvoyPtr,
    _: HeaderType,
    _: ModuleBuffer,
    _: ModuleBuffer,
) -> bool {
    true
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_clear_route_cache(_: FilterEnvoyPtr) {}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
    _: FilterEnvoyPtr,
    _: u32,
    _: *mut EnvoyBuffer,
) -> bool {
    false
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_config_define_counter(
    _: ConfigEnvoyPtr,
    _: ModuleBuffer,
    _: *const ModuleBuffer,
    _: usize,
    _: *mut usize,
) -> u32 {
    0
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_config_define_histogram(
    _: ConfigEnvoyPtr,
    _: ModuleBuffer,
    _: *const ModuleBuffer,
    _: usize,
    _: *mut usize,
) -> u32 {
    0
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
    _: ConfigEnvoyPtr,
    _: ModuleBuffer,
    _: *const ModuleBuffer,
    _: usize,
    _: *mut usize,
) -> u32 {
    0
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_increment_counter(
    _: FilterEnvoyPtr,
    _: usize,
    _: *const ModuleBuffer,
    _: usize,
    _: u64,
) -> u32 {
    0
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_http_filter_record_histogram_value(
    _: FilterEnvoyPtr,
    _: usize,
    _: *const ModuleBuffer,
    _: usize,
    _: u64,
) -> u32 {
    0
}

#[no_mangle]
extern "C" fn envoy_dynamic_module_callback_log(_: LogLevel, _: ModuleBuffer) {}

/// `ENVOY_DYNAMIC_MODULES_ABI_VERSION` in `abi.h` at the pinned commit
/// 9e5580933739775e8bce696a57a2e1bc99368f23 (Envoy 1.40.0), kept here as the header has it.
/// Envoy compares what `on_program_init` returns with it: a mismatch is refused or warned
/// about as deprecated.
const PINNED_ENVOY_ABI_VERSION: &str = "v0.2.0";

#[test]
fn program_init_returns_the_pinned_envoys_abi_version() {
    let returned = crate::hooks::envoy_dynamic_module_on_program_init();
    assert!(!returned.is_null());
    // SAFETY: a pointer to our NUL-terminated constant.
    let version = unsafe { CStr::from_ptr(returned) };
    assert_eq!(version.to_str(), Ok(PINNED_ENVOY_ABI_VERSION));
}
