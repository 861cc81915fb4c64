//! The lean build's entries into the VM (feature `lean`). Envoy enters a module only
//! through the callbacks it exports, and each entry costs ~1.5k instructions. The SDK's
//! dispatch needs two per request besides the request headers (`proxy_on_context_create`
//! and `proxy_on_delete`, for its map of per-request contexts); the lean request path keeps
//! nothing per request, so the lean module exports neither. Envoy then leaves the in-VM
//! state to the module: its request headers go to the routing of the root that serves
//! (the one configured last), and a root context is created in the SDK at its first
//! callback instead. Without a context per request, a request cannot tell which root it
//! belongs to: the lean module serves one plugin per VM (give each its own `vm_id`).
//!
//! The Makefile's `wasm_post` exports `canary_lean_on_*` as `proxy_on_*` in place of the
//! SDK's (filter/wasm-exports-lean.json). Without `proxy_on_delete` a root context is never
//! deleted in the VM: a plugin reload leaves its old root behind (its configuration; its
//! ticks stop with it). Imports nothing of `host`.

use std::cell::RefCell;

use proxy_wasm::types::Action;

extern "C" {
    // The SDK's exports (proxy-wasm's dispatcher), which the lean ones call.
    fn proxy_on_context_create(context_id: u32, root_context_id: u32);
    fn proxy_on_vm_start(context_id: u32, vm_configuration_size: usize) -> bool;
    fn proxy_on_configure(context_id: u32, plugin_configuration_size: usize) -> bool;
}

/// A root's routing of one request: its context id, number of headers, end of stream.
type OnRequestHeaders = Box<dyn Fn(u32, usize, bool) -> Action>;

struct Serving {
    root: u32,
    on_request_headers: OnRequestHeaders,
}

thread_local! {
    /// Root contexts created in the SDK (one per plugin instance: a handful).
    static ROOTS: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
    static SERVING: RefCell<Option<Serving>> = const { RefCell::new(None) };
}

/// Root `root` routes requests with `on_request_headers` from now on: if it `takes_over`
/// (it was just configured: a plugin reload's new instance), or if it serves already (its
/// configuration may have changed).
pub(super) fn serve(
    root: u32,
    takes_over: bool,
    on_request_headers: impl Fn(u32, usize, bool) -> Action + 'static,
) {
    SERVING.with(|s| {
        let Ok(mut s) = s.try_borrow_mut() else {
            return;
        };
        if !takes_over && s.as_ref().is_none_or(|s| s.root != root) {
            return;
        }
        if let Some(previous) = s.as_ref().map(|s| s.root).filter(|&p| p != root) {
            // A reload's new instance, or a second plugin in this VM (which would route
            // the other's requests: each lean plugin needs its own vm_id).
            log::info!(
                "wasm-canary: lean: plugin instance {root} now routes this VM's requests \
                 (instead of {previous}); each lean plugin needs its own vm_id"
            );
        }
        *s = Some(Serving {
            root,
            on_request_headers: Box::new(on_request_headers),
        });
    });
}

#[no_mangle]
pub extern "C" fn canary_lean_on_request_headers(
    context_id: u32,
    num_headers: usize,
    end_of_stream: bool,
) -> Action {
    SERVING
        .with(|s| {
            let s = s.try_borrow().ok()?;
            let s = s.as_ref()?;
            Some((s.on_request_headers)(
                context_id,
                num_headers,
                end_of_stream,
            ))
        })
        .unwrap_or(Action::Continue)
}

/// Creates root context `id` in the SDK unless it exists.
fn ensure_root(id: u32) {
    let created = ROOTS.with(|roots| {
        let Ok(mut roots) = roots.try_borrow_mut() else {
            return true;
        };
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
pub extern "C" fn canary_lean_on_vm_start(context_id: u32, vm_configuration_size: usize) -> bool {
    ensure_root(context_id);
    // SAFETY: as above.
    unsafe { proxy_on_vm_start(context_id, vm_configuration_size) }
}

#[no_mangle]
pub extern "C" fn canary_lean_on_configure(
    context_id: u32,
    plugin_configuration_size: usize,
) -> bool {
    ensure_root(context_id);
    // SAFETY: as above.
    unsafe { proxy_on_configure(context_id, plugin_configuration_size) }
}
