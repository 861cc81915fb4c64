//! wasm-canary's filter as a native Envoy Dynamic Module (`libcanary_filter.so`, loaded by
//! Envoy 1.40's `envoy.filters.http.dynamic_modules` filter, and by its routes'
//! `DynamicModuleClusterSpecifier`).
//!
//! The same plain modules as the wasm filter decide everything (`canary_filter::routing`,
//! `metrics`, `cookie`; the configuration is `canary_contract::FilterConfig`, the same
//! JSON), so routing choices and stat names are identical. What lives here:
//! `abi` (our own bindings of the few ABI calls we use, from the header of the Envoy we
//! pin), `envoy` (safe wrappers over them: header reads, metrics, the poll's callout and
//! scheduler, a cluster selection's context, logs), `filter` (the configuration in force
//! and per-request state, host-free), `route_time` (the cluster specifier's decision at
//! route time and its hand-over to the stream's filter, host-free), `poll` (polling the
//! controller, host-free), and `hooks` / `specifier_hooks` / `idle_hooks` (the exported
//! event hooks, which only hand over). Imports go one way: `abi` <- `envoy` <- `filter` <-
//! `route_time`, `poll` <- `hooks`, `specifier_hooks`. Host data is only read as bytes and
//! never unwrapped; the release profile aborts on panic, and no path here panics on what
//! Envoy hands over.

mod abi;
mod envoy;
mod filter;
mod hooks;
mod idle_hooks;
mod poll;
mod route_time;
mod specifier_hooks;

#[cfg(test)]
mod fake_host;
