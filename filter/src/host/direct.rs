//! The entries into the VM of every build without the fallback chain (the plain and the
//! lean module; the LLM module's fallback retries need the SDK's per-request dispatch).
//! Envoy enters a module only through the callbacks it exports, and each entry costs
//! ~1k instructions. The SDK's dispatch adds one per request besides the stream's own
//! callbacks (`proxy_on_context_create`, for its map of per-request contexts) and a boxed
//! context per request; these builds export no context create, so Envoy enters the VM for
//! a request's headers, its response headers (and trailers, if any), and its end
//! (`proxy_on_delete`: the total time and `canary_rq_reset` need it). The lean module
//! enters for the request headers only.
//!
//! Without a context create, Envoy leaves the in-VM state to the module: a request's
//! headers go to the root that serves (the one configured last), and a root context is
//! created in the SDK at its first callback instead. A request cannot tell which root it
//! belongs to, so these modules serve one plugin configuration per VM: give each plugin its
//! own `vm_id` (a reload's new instance takes over, which is what a reload wants). What a
//! routed request keeps for its response lives in `SLOTS` (a `crate::slots::SlotTable`) from
//! its request headers until Envoy deletes its context.
//!
//! The Makefile's `wasm_post` exports `canary_direct_on_*` as `proxy_on_*` in place of the
//! SDK's (filter/wasm-exports.json, filter/wasm-exports-lean.json).

use std::cell::RefCell;
use std::rc::Rc;

use proxy_wasm::traits::HttpContext;
use proxy_wasm::types::Action;

use crate::hold::Hold;
#[cfg(not(feature = "lean"))]
use crate::slots::SlotTable;

use super::active::Active;
use super::calls::{headers, VmStatic};
use super::stream::CanaryHttp;

extern "C" {
    // The SDK's exports (proxy-wasm's dispatcher), which these entries call for roots.
    fn proxy_on_context_create(context_id: u32, root_context_id: u32);
    fn proxy_on_vm_start(context_id: u32, vm_configuration_size: usize) -> bool;
    fn proxy_on_configure(context_id: u32, plugin_configuration_size: usize) -> bool;
    #[cfg(not(feature = "lean"))]
    fn proxy_on_delete(context_id: u32);
}

/// The root that routes this VM's requests, and what its requests start from.
struct Serving {
    root: u32,
    active: Option<Rc<Active>>,
    hold: Rc<Hold<CanaryHttp>>,
}

/// Root contexts created in the SDK (one per plugin instance: a handful).
static ROOTS: VmStatic<RefCell<Vec<u32>>> = VmStatic(RefCell::new(Vec::new()));
static SERVING: VmStatic<RefCell<Option<Serving>>> = VmStatic(RefCell::new(None));
/// Requests in flight that were routed (or are held), by context id.
#[cfg(not(feature = "lean"))]
static SLOTS: VmStatic<RefCell<SlotTable<CanaryHttp>>> = VmStatic(RefCell::new(SlotTable::new()));

/// Root `root` routes requests from now on, by configuration `active`: if it `takes_over`
/// (it was just configured: a plugin reload's new instance), or if it serves already (its
/// configuration may have changed).
pub(super) fn serve(
    root: u32,
    takes_over: bool,
    active: Option<Rc<Active>>,
    hold: Rc<Hold<CanaryHttp>>,
) {
    let Ok(mut s) = SERVING.0.try_borrow_mut() else {
        return;
    };
    if !takes_over && s.as_ref().is_none_or(|s| s.root != root) {
        return;
    }
    if let Some(previous) = s.as_ref().map(|s| s.root).filter(|&p| p != root) {
        // A reload's new instance, or a second plugin in this VM (which would route the
        // other's requests: each plugin needs its own vm_id).
        log::info!(
            "wasm-canary: plugin instance {root} now routes this VM's requests (instead \
             of {previous}); unless this is a reload, give each plugin its own vm_id"
        );
    }
    *s = Some(Serving { root, active, hold });
}

#[no_mangle]
pub extern "C" fn canary_direct_on_request_headers(
    context_id: u32,
    num_headers: usize,
    end_of_stream: bool,
) -> Action {
    let Ok(serving) = SERVING.0.try_borrow() else {
        return Action::Continue;
    };
    let Some(s) = serving.as_ref() else {
        return Action::Continue;
    };
    let hold = s.hold.active().then(|| s.hold.clone());
    let http = CanaryHttp::new(s.active.clone(), context_id, hold);
    on_request_headers(context_id, http, num_headers, end_of_stream)
}

/// Routes request `context_id`: in its slot, kept there if the response and the end
/// have anything to account for (built in place: a request's state is not copied around).
#[cfg(not(feature = "lean"))]
fn on_request_headers(context_id: u32, http: CanaryHttp, headers: usize, end: bool) -> Action {
    let Ok(mut slots) = SLOTS.0.try_borrow_mut() else {
        return Action::Continue;
    };
    let http = slots.insert(context_id, http);
    let action = http.on_http_request_headers(headers, end);
    if !http.keeps_state() {
        slots.remove(context_id);
    }
    action
}

/// The lean build keeps nothing past the request headers (it has no response callbacks).
#[cfg(feature = "lean")]
fn on_request_headers(_context_id: u32, mut http: CanaryHttp, headers: usize, end: bool) -> Action {
    http.on_http_request_headers(headers, end)
}

/// Runs `callback` on request `context_id`'s state, if it kept any.
#[cfg(not(feature = "lean"))]
fn on_request(context_id: u32, callback: impl FnOnce(&mut CanaryHttp) -> Action) -> Action {
    let Ok(mut slots) = SLOTS.0.try_borrow_mut() else {
        return Action::Continue;
    };
    slots.get_mut(context_id).map_or(Action::Continue, callback)
}

#[cfg(not(feature = "lean"))]
#[no_mangle]
pub extern "C" fn canary_direct_on_response_headers(
    context_id: u32,
    num_headers: usize,
    end_of_stream: bool,
) -> Action {
    on_request(context_id, |http| {
        http.on_http_response_headers(num_headers, end_of_stream)
    })
}

#[cfg(not(feature = "lean"))]
#[no_mangle]
pub extern "C" fn canary_direct_on_response_trailers(
    context_id: u32,
    num_trailers: usize,
) -> Action {
    on_request(context_id, |http| {
        http.on_http_response_trailers(num_trailers)
    })
}

/// A request's end (its state accounts for it as it is dropped), or a root's.
#[cfg(not(feature = "lean"))]
#[no_mangle]
pub extern "C" fn canary_direct_on_delete(context_id: u32) {
    let request = SLOTS
        .0
        .try_borrow_mut()
        .ok()
        .and_then(|mut s| s.remove(context_id));
    if request.is_some() {
        drop(request);
        return;
    }
    let was_root = ROOTS.0.try_borrow_mut().is_ok_and(|mut roots| {
        let before = roots.len();
        roots.retain(|&id| id != context_id);
        roots.len() != before
    });
    if !was_root {
        return; // a request that kept nothing
    }
    if let Ok(mut s) = SERVING.0.try_borrow_mut() {
        if s.as_ref().is_some_and(|s| s.root == context_id) {
            *s = None;
        }
    }
    // SAFETY: the SDK's own export, called as Envoy would call it, for a root it created.
    unsafe { proxy_on_delete(context_id) }
}

/// Room for a value Envoy is about to hand over: from the header region during a header
/// read (see `calls::headers`), else from the heap as the SDK's own export does (the
/// caller takes the buffer over as a `Vec`).
#[no_mangle]
pub extern "C" fn canary_direct_on_memory_allocate(size: usize) -> *mut u8 {
    if let Some(room) = headers::room(size) {
        return room;
    }
    let mut buffer: Vec<u8> = Vec::with_capacity(size);
    let ptr = buffer.as_mut_ptr();
    std::mem::forget(buffer);
    ptr
}

/// Creates root context `id` in the SDK unless it exists.
fn ensure_root(id: u32) {
    let created = ROOTS.0.try_borrow_mut().map_or(true, |mut roots| {
        if roots.contains(&id) {
            return true;
        }
        roots.push(id);
        false
    });
    if !created {
        // SAFETY: the SDK's own export, called as Envoy would call it.
        unsafe { proxy_on_context_create(id, 0) }
    }
}

#[no_mangle]
pub extern "C" fn canary_direct_on_vm_start(context_id: u32, vm_configuration_size: usize) -> bool {
    ensure_root(context_id);
    // SAFETY: as above.
    unsafe { proxy_on_vm_start(context_id, vm_configuration_size) }
}

#[no_mangle]
pub extern "C" fn canary_direct_on_configure(
    context_id: u32,
    plugin_configuration_size: usize,
) -> bool {
    ensure_root(context_id);
    // SAFETY: as above.
    unsafe { proxy_on_configure(context_id, plugin_configuration_size) }
}
