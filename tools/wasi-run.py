#!/usr/bin/env python3
"""Cargo runner for wasm32-wasip1: runs a WASI command module (e.g. a test binary) with
wasmtime, passing arguments, environment and stdio through, and exits with its status.

Used as CARGO_TARGET_WASM32_WASIP1_RUNNER so `cargo test --target wasm32-wasip1` runs the
contract crate's tests under a real wasm runtime.
"""
import os
import sys

from wasmtime import Engine, ExitTrap, Linker, Module, Store, Trap, WasiConfig


def main() -> int:
    if len(sys.argv) < 2:
        print("usage: wasi-run.py MODULE.wasm [ARGS...]", file=sys.stderr)
        return 2
    path = sys.argv[1]
    engine = Engine()
    module = Module.from_file(engine, path)
    wasi = WasiConfig()
    wasi.argv = [os.path.basename(path)] + sys.argv[2:]
    wasi.env = [(k, v) for k, v in os.environ.items() if k.startswith(("RUST_", "CARGO_"))]
    wasi.inherit_stdin()
    wasi.inherit_stdout()
    wasi.inherit_stderr()
    wasi.preopen_dir(".", ".")
    store = Store(engine)
    store.set_wasi(wasi)
    linker = Linker(engine)
    linker.define_wasi()
    instance = linker.instantiate(store, module)
    start = instance.exports(store)["_start"]
    try:
        start(store)
    except ExitTrap as e:
        return e.code
    except Trap as e:
        # panic=abort in a test binary ends as a trap: a failed test.
        print(f"wasi-run: trap: {e}", file=sys.stderr)
        return 101
    return 0


if __name__ == "__main__":
    sys.exit(main())
