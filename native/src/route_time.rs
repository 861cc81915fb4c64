//! Routing at route time, with no ABI in sight: the `wasm-canary` cluster specifier decides
//! while Envoy picks the route, by the configuration of the `DynamicModuleFilter` it names,
//! and hands the decision to that filter's request; nothing picks the route again.
//!
//! - [`Binding`]: a filter name's configuration in force, found by the specifier at its
//!   creation (whichever of the two Envoy makes first) and followed when the filter's
//!   configuration is replaced. One process, one module: both are ours.
//! - [`Handoff`]: one selection's decision, left on the worker thread that picked the route
//!   and taken by the filter Envoy creates next on that thread, for the same stream: Envoy
//!   picks the route and then creates the stream's filters, in one call, with no other
//!   stream in between. The filter checks it against the cluster its route names before
//!   trusting it.
//!
//! Imports `filter` (the configuration, and the [`Handoff`] a request takes); `hooks`
//! imports this.

use std::cell::RefCell;
use std::sync::{Arc, Mutex, RwLock};

use canary_contract::native_route::NativeRouteConfig;
use canary_filter::cookie::anonymous_id;
use canary_filter::routing::RequestHeaders;

use crate::filter::{now_ms, Active, Config, Decided, Handoff};

/// The configurations of the filter named `name`, for its specifiers: the newest decides.
/// Envoy makes a listener's new configuration before it drops the old one, and drops a new
/// one again if the rest of its listener is refused: then the one before decides again.
#[derive(Default)]
pub struct Binding {
    configs: RwLock<Vec<Arc<Config>>>,
}

impl Binding {
    /// The newest configuration (identity only) and its rollouts in force, without
    /// counting a reference to the configuration itself.
    pub fn current(&self) -> Option<(*const Config, Arc<Active>)> {
        let configs = self.configs.read().ok()?;
        let config = configs.last()?;
        Some((Arc::as_ptr(config), config.current()?))
    }
}

/// Every filter name a filter or a specifier has named, for the life of the process (a
/// name's binding is small and names are few).
static BINDINGS: Mutex<Vec<(String, Arc<Binding>)>> = Mutex::new(Vec::new());

/// The binding of filter name `name`, made empty if neither side has named it yet.
pub fn binding(name: &str) -> Arc<Binding> {
    let Ok(mut all) = BINDINGS.lock() else {
        return Arc::default();
    };
    if let Some((_, b)) = all.iter().find(|(n, _)| n == name) {
        return Arc::clone(b);
    }
    let b = Arc::new(Binding::default());
    all.push((name.to_string(), Arc::clone(&b)));
    b
}

/// `config` is now the filter `name`'s newest.
pub fn bind(name: &str, config: &Arc<Config>) {
    if let Ok(mut configs) = binding(name).configs.write() {
        configs.push(Arc::clone(config));
    }
}

/// The filter's configuration `config` is going.
pub fn unbind(name: &str, config: &Arc<Config>) {
    if let Ok(mut configs) = binding(name).configs.write() {
        configs.retain(|c| !Arc::ptr_eq(c, config));
    }
}

/// One route's specifier: its clusters, and the filter whose configuration decides.
pub struct Specifier {
    pub route: Arc<NativeRouteConfig>,
    pub binding: Arc<Binding>,
}

#[derive(Default)]
struct Slot {
    /// The decision, and its selection's random value.
    pending: Option<(Handoff, u64)>,
    /// The random value of the last selection a filter took: a later selection with the
    /// same value is the same stream's route picked again (another filter cleared the route
    /// cache), whose filter has its decision already.
    taken_random: Option<u64>,
}

thread_local! {
    static SLOT: RefCell<Slot> = RefCell::default();
}

/// Decides a request at route time; returns the cluster to send it to. `random` is the
/// stream's random value (one per stream, the same on a re-pick), from which a new anonymous
/// id is made, so a re-pick makes the same one.
pub fn select(specifier: &Arc<Specifier>, headers: &impl RequestHeaders, random: u64) -> Handoff {
    let Some((config, active)) = specifier.binding.current() else {
        // No configuration (yet): stable, as an unrouted request.
        let active = Arc::new(Active::empty());
        return Handoff {
            config: std::ptr::null(),
            active,
            decided: None,
            route: Arc::clone(&specifier.route),
        };
    };
    let now_ms = now_ms();
    let decision = (active.router).decide(headers, now_ms, || anonymous_from(random));
    let decided = decision.map(|d| Decided {
        now_ms,
        rollout: d.rollout,
        version: d.version,
        new_anonymous_id: d.new_anonymous_id,
    });
    Handoff {
        config,
        active,
        decided,
        route: Arc::clone(&specifier.route),
    }
}

/// Leaves `handoff` for the stream's filter, unless the stream's filter already took one.
pub fn leave(handoff: Handoff, random: u64) {
    SLOT.with(|slot| {
        if let Ok(mut slot) = slot.try_borrow_mut() {
            if slot.taken_random != Some(random) {
                slot.pending = Some((handoff, random));
            }
        }
    });
}

/// The decision left for a new filter of configuration `config`, if any.
pub fn take(config: *const Config) -> Option<Handoff> {
    SLOT.with(|slot| {
        let mut slot = slot.try_borrow_mut().ok()?;
        let (handoff, random) = slot.pending.take()?;
        if handoff.config != config {
            return None;
        }
        slot.taken_random = Some(random);
        Some(handoff)
    })
}

/// 128 bits of a new anonymous id from the stream's 64-bit random value and a per-process
/// secret: unpredictable to clients, and the same for the same stream.
fn anonymous_from(random: u64) -> String {
    static SECRET: std::sync::OnceLock<[u64; 2]> = std::sync::OnceLock::new();
    let secret = SECRET.get_or_init(|| {
        let mut bytes = [0u8; 16];
        if getrandom::fill(&mut bytes).is_err() {
            bytes = canary_filter::cookie::fallback_random(now_ms(), random);
        }
        let (a, b) = bytes.split_at(8);
        let word = |s: &[u8]| s.iter().fold(0u64, |w, b| (w << 8) | u64::from(*b));
        [word(a), word(b)]
    });
    let mut out = [0u8; 16];
    for (chunk, key) in out.chunks_mut(8).zip(secret) {
        chunk.copy_from_slice(&splitmix64(random ^ key).to_le_bytes());
    }
    anonymous_id(out)
}

/// SplitMix64's finaliser: a bijection that spreads every input bit.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
