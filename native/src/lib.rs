//! wasm-canary's filter as a native Envoy Dynamic Module (`libcanary_filter.so`, loaded by
//! Envoy 1.40's `envoy.filters.http.dynamic_modules` filter).
//!
//! The same plain modules as the wasm filter decide everything (`canary_filter::routing`,
//! `metrics`, `cookie`; the configuration is `canary_contract::FilterConfig`, the same
//! JSON), so routing choices and stat names are identical. What lives here:
//! `abi` (our own bindings of the few ABI calls we use, from the header of the Envoy we
//! pin), `envoy` (safe wrappers over them: header reads, metrics, the poll's callout and
//! scheduler, logs), `filter` (the configuration in force and per-request state,
//! host-free), `poll` (polling the controller, host-free), and `hooks` / `idle_hooks` (the
//! exported event hooks, which only hand over). Imports go one way: `abi` <- `envoy` <-
//! `filter`, `poll` <- `hooks`. Host data is only read as bytes and never unwrapped; the
//! release profile aborts on panic, and no path here panics on what Envoy hands over.

mod abi;
mod envoy;
mod filter;
mod hooks;
mod idle_hooks;
mod poll;

#[cfg(test)]
mod fake_host;
