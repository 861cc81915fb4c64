#!/usr/bin/env python3
"""Checks the OCI layouts `make images` wrote, with skopeo (Debian's package):

- skopeo reads each layout and copies it out, which verifies every blob digest;
- the filter image is Istio's Wasm format: one layer of media type
  application/vnd.module.wasm.content.layer.v1+wasm whose bytes are the built module;
- the controller image runs as non-root, and its one layer holds a static `canaryctl` that
  starts (`--version`).
"""
import hashlib
import json
import os
import subprocess
import sys
import tarfile
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def skopeo(*args):
    return subprocess.run(["skopeo", *args], check=True, capture_output=True).stdout


def copy_out(ref, dest):
    skopeo("copy", "-q", ref, f"dir:{dest}")
    with open(os.path.join(dest, "manifest.json")) as f:
        manifest = json.load(f)
    blob = lambda d: os.path.join(dest, d["digest"].split(":", 1)[1])
    return manifest, blob


def has_interpreter(path):
    """Whether a 64-bit little-endian ELF asks for a dynamic loader (a PT_INTERP header)."""
    with open(path, "rb") as f:
        elf = f.read()
    phoff = int.from_bytes(elf[0x20:0x28], "little")
    phentsize = int.from_bytes(elf[0x36:0x38], "little")
    phnum = int.from_bytes(elf[0x38:0x3A], "little")
    for i in range(phnum):
        start = phoff + i * phentsize
        if int.from_bytes(elf[start:start + 4], "little") == 3:
            return True
    return False


def check(condition, message, problems):
    if not condition:
        problems.append(message)


def main():
    tag = sys.argv[1] if len(sys.argv) > 1 else "0.1.0"
    problems = []
    with tempfile.TemporaryDirectory() as tmp:
        ref = f"oci:{ROOT}/target/images/filter:{tag}"
        manifest, blob = copy_out(ref, os.path.join(tmp, "filter"))
        layers = manifest["layers"]
        check(len(layers) == 1, f"{ref}: {len(layers)} layers, want 1", problems)
        check(layers[0]["mediaType"] == "application/vnd.module.wasm.content.layer.v1+wasm",
              f"{ref}: layer media type {layers[0]['mediaType']}", problems)
        check(manifest["config"]["mediaType"] == "application/vnd.module.wasm.config.v1+json",
              f"{ref}: config media type {manifest['config']['mediaType']}", problems)
        with open(os.path.join(ROOT, "target/wasm/canary_filter.wasm"), "rb") as f:
            built = hashlib.sha256(f.read()).hexdigest()
        with open(blob(layers[0]), "rb") as f:
            check(hashlib.sha256(f.read()).hexdigest() == built,
                  f"{ref}: layer is not target/wasm/canary_filter.wasm", problems)

        ref = f"oci:{ROOT}/target/images/canaryctl:{tag}"
        manifest, blob = copy_out(ref, os.path.join(tmp, "ctl"))
        config = json.loads(skopeo("inspect", "--config", ref))
        user = config["config"].get("User", "")
        check(user and not user.startswith("0") and user != "root", f"{ref}: runs as {user!r}", problems)
        with tarfile.open(blob(manifest["layers"][0])) as tar:
            tar.extract("canaryctl", os.path.join(tmp, "rootfs"), filter="data")
        exe = os.path.join(tmp, "rootfs", "canaryctl")
        out = subprocess.run([exe, "--version"], capture_output=True, text=True)
        check(out.returncode == 0 and "canaryctl" in out.stdout,
              f"{ref}: /canaryctl --version failed: {out.stderr}", problems)
        check(not has_interpreter(exe), f"{ref}: /canaryctl needs a dynamic loader", problems)
    for p in problems:
        print(p, file=sys.stderr)
    print(f"images checked: {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
