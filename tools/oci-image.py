#!/usr/bin/env python3
"""Writes OCI image layouts without a container engine.

  oci-image.py wasm   MODULE.wasm OUT_DIR TAG
      The filter in the format Istio's WasmPlugin pulls: one layer of media type
      application/vnd.module.wasm.content.layer.v1+wasm holding the module as is.
  oci-image.py binary EXECUTABLE OUT_DIR TAG
      A static executable as /canaryctl in a one-layer image (tar+gzip) that runs as
      65532:65532 and exposes 8080/tcp.

Output is reproducible: fixed timestamps and ownership, so the same input gives the same
digests. Check a result with `skopeo inspect oci:OUT_DIR:TAG`.
"""
import gzip
import hashlib
import io
import json
import os
import sys
import tarfile

EPOCH = "1970-01-01T00:00:00Z"


def write_blob(out, data):
    digest = hashlib.sha256(data).hexdigest()
    path = os.path.join(out, "blobs", "sha256")
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, digest), "wb") as f:
        f.write(data)
    return f"sha256:{digest}", len(data)


def descriptor(media_type, digest_size, annotations=None):
    digest, size = digest_size
    d = {"mediaType": media_type, "digest": digest, "size": size}
    if annotations:
        d["annotations"] = annotations
    return d


def canonical(obj):
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def finish(out, tag, config_type, config, layers):
    config_desc = descriptor(config_type, write_blob(out, canonical(config)))
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config_desc,
        "layers": layers,
    }
    manifest_desc = descriptor(
        "application/vnd.oci.image.manifest.v1+json",
        write_blob(out, canonical(manifest)),
        {"org.opencontainers.image.ref.name": tag},
    )
    with open(os.path.join(out, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    with open(os.path.join(out, "index.json"), "w") as f:
        json.dump({"schemaVersion": 2, "manifests": [manifest_desc]}, f, indent=2)
    print(f"{out}:{tag} {manifest_desc['digest']}")


def wasm_image(module, out, tag):
    with open(module, "rb") as f:
        data = f.read()
    layer = descriptor(
        "application/vnd.module.wasm.content.layer.v1+wasm",
        write_blob(out, data),
        {"org.opencontainers.image.title": os.path.basename(module)},
    )
    config = {"created": EPOCH, "author": "wasm-canary", "platform": "wasm"}
    finish(out, tag, "application/vnd.module.wasm.config.v1+json", config, [layer])


def binary_image(executable, out, tag):
    with open(executable, "rb") as f:
        data = f.read()
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("canaryctl")
        info.size, info.mode, info.mtime = len(data), 0o755, 0
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        tar.addfile(info, io.BytesIO(data))
    tar_bytes = raw.getvalue()
    gz = io.BytesIO()
    with gzip.GzipFile(fileobj=gz, mode="wb", mtime=0) as g:
        g.write(tar_bytes)
    layer = descriptor("application/vnd.oci.image.layer.v1.tar+gzip", write_blob(out, gz.getvalue()))
    config = {
        "created": EPOCH,
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "User": "65532:65532",
            "Entrypoint": ["/canaryctl"],
            "Cmd": ["serve", "--spec", "/etc/canary/rollout.yaml"],
            "ExposedPorts": {"8080/tcp": {}},
        },
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(tar_bytes).hexdigest()]},
        "history": [{"created": EPOCH, "created_by": "tools/oci-image.py"}],
    }
    finish(out, tag, "application/vnd.oci.image.config.v1+json", config, [layer])


def main():
    if len(sys.argv) != 5 or sys.argv[1] not in ("wasm", "binary"):
        print(__doc__, file=sys.stderr)
        return 2
    kind, source, out, tag = sys.argv[1:]
    if os.path.exists(out):
        for dirpath, dirnames, filenames in os.walk(out, topdown=False):
            for name in filenames:
                os.remove(os.path.join(dirpath, name))
            for name in dirnames:
                os.rmdir(os.path.join(dirpath, name))
    os.makedirs(out, exist_ok=True)
    (wasm_image if kind == "wasm" else binary_image)(source, out, tag)
    return 0


if __name__ == "__main__":
    sys.exit(main())
