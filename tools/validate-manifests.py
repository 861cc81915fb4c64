#!/usr/bin/env python3
"""Validates every manifest under manifests/ offline.

- Istio kinds against the openAPIV3Schema of their CRD in manifests/schemas/istio (copied
  unchanged from istio/api, see SOURCE.md there; or $ISTIO_CRD_DIR), for the apiVersion the
  manifest uses;
- Kubernetes built-in kinds against the Kubernetes schemas bundled with kubernetes-validate;
- kustomization files: every listed resource exists.

With file arguments, checks those files instead (the docs' `istio` blocks, written out by
tests/tests/docs.rs); each problem line starts with the path as given.

The filter-specific content (the WasmPlugin's pluginConfig, the rollout spec in the ConfigMap)
is checked by the Rust test tests/tests/manifests.rs with the filter's and controller's own
validation. Exit status 1 on any problem; each is printed with its file and field path.
"""
import glob
import os
import sys

import jsonschema
import kubernetes_validate
import yaml

KUBERNETES_VERSION = "1.33.0"


def load_crds(directory):
    crds = {}
    for path in glob.glob(os.path.join(directory, "*.crd.yaml")):
        with open(path) as f:
            crd = yaml.safe_load(f)
        group = crd["spec"]["group"]
        kind = crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            crds[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
    return crds


def field_path(error):
    return ".".join(str(p) for p in error.absolute_path) or "(root)"


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    crd_dir = os.environ.get("ISTIO_CRD_DIR", os.path.join(root, "manifests", "schemas", "istio"))
    crds = load_crds(crd_dir)
    if not crds:
        print(f"no Istio CRDs found in {crd_dir}", file=sys.stderr)
        return 1
    problems = []
    checked = 0
    if len(sys.argv) > 1:
        paths = [(p, p) for p in sys.argv[1:]]
    else:
        paths = []
        for path in sorted(glob.glob(os.path.join(root, "manifests", "**", "*.yaml"), recursive=True)):
            rel = os.path.relpath(path, root)
            if not rel.startswith(os.path.join("manifests", "schemas")):
                paths.append((path, rel))
    for path, rel in paths:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        for doc in docs:
            api, kind = doc.get("apiVersion", ""), doc.get("kind", "")
            name = doc.get("metadata", {}).get("name", "?")
            where = f"{rel}: {kind}/{name}"
            if kind == "Kustomization":
                for resource in doc.get("resources", []):
                    if not os.path.exists(os.path.join(os.path.dirname(path), resource)):
                        problems.append(f"{where}: resources: {resource} does not exist")
                checked += 1
                continue
            if ".istio.io/" in api:
                schema = crds.get((api, kind))
                if schema is None:
                    problems.append(f"{where}: no CRD schema for {api} {kind}")
                    continue
                validator = jsonschema.Draft7Validator(schema)
                body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "metadata")}
                for error in validator.iter_errors(body):
                    problems.append(f"{where}: {field_path(error)}: {error.message}")
                checked += 1
                continue
            try:
                kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
            except kubernetes_validate.ValidationError as e:
                problems.append(f"{where}: {'.'.join(str(p) for p in e.path) or '(root)'}: {e.message}")
            except (kubernetes_validate.utils.SchemaNotFoundError,
                    kubernetes_validate.utils.VersionNotSupportedError):
                # A typo in apiVersion or kind.
                problems.append(f"{where}: no Kubernetes schema for {api} {kind}")
            checked += 1
    for p in problems:
        print(p, file=sys.stderr)
    print(f"validated {checked} manifests: {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
