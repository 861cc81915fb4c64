//! The cluster specifier's event hooks (`envoy_dynamic_module_on_cluster_specifier_*`), for
//! routes whose `inline_cluster_specifier_plugin` is this module's
//! `DynamicModuleClusterSpecifier`: the route picks the cluster of the version the named
//! filter's configuration decides (`route_time`), when Envoy picks the route. Envoy 1.40's
//! loader resolves these three only for a module a route uses as a specifier.
//!
//! Ownership: `config_new` boxes a [`Specifier`] in an `Arc` and hands Envoy the pointer,
//! `config_destroy` takes it back; Envoy keeps it alive while any route entry of it is.

use std::ffi::c_void;
use std::sync::Arc;

use canary_contract::native_route::NativeRouteConfig;

use crate::abi::{EnvoyBuffer, SpecifierConfigEnvoyPtr, SpecifierContextEnvoyPtr};
use crate::envoy::{log_error, SelectContext};
use crate::route_time::{self, Specifier};

/// `specifier_config` is the route's [`NativeRouteConfig`] (JSON). One that fails
/// validation is refused, and Envoy with it the route configuration.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_cluster_specifier_config_new(
    _config_envoy: SpecifierConfigEnvoyPtr,
    _name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> *const c_void {
    let json: &[u8] = if config.ptr.is_null() {
        &[]
    } else {
        // SAFETY: Envoy passes `length` bytes it owns for the duration of the hook.
        unsafe { std::slice::from_raw_parts(config.ptr, config.length) }
    };
    let route = match NativeRouteConfig::from_json(json) {
        Ok(route) => route,
        Err(e) => {
            log_error(&format!(
                "wasm-canary (native): invalid cluster specifier configuration: {e}"
            ));
            return std::ptr::null();
        }
    };
    let binding = route_time::binding(&route.filter_name);
    let specifier = Arc::new(Specifier {
        route: Arc::new(route),
        binding,
    });
    Arc::into_raw(specifier).cast()
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_cluster_specifier_config_destroy(config: *mut c_void) {
    if !config.is_null() {
        // SAFETY: made by `Arc::into_raw` in `config_new`, destroyed once by Envoy.
        drop(unsafe { Arc::from_raw(config.cast_const().cast::<Specifier>()) });
    }
}

/// Always decides (returns true): a request no rollout routes goes to the stable cluster,
/// as header routes' default does.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_cluster_specifier_select(
    config: *mut c_void,
    context: SpecifierContextEnvoyPtr,
) -> bool {
    let specifier = config.cast_const().cast::<Specifier>();
    if specifier.is_null() {
        return false;
    }
    // SAFETY: our `Specifier`, alive until `config_destroy`; borrowed as an `Arc` for the
    // call without touching its count.
    let specifier = std::mem::ManuallyDrop::new(unsafe { Arc::from_raw(specifier) });
    // SAFETY: the selection's own context, used only during it.
    let context = unsafe { SelectContext::new(context) };
    let random = context.random_value();
    let handoff = route_time::select(&specifier, &context, random);
    context.set_cluster(handoff.cluster());
    route_time::leave(handoff, random);
    true
}
