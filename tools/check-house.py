#!/usr/bin/env python3
"""The house rules `make test` checks: no import cycle between the modules of a crate, and no
source file over 600 lines before its tests.

Modules are the files and folders under each crate's src/ (a folder is one module at its
level). An edge a -> b is a `crate::b` reference in a's code (`use crate::b::..`,
`crate::{b, ..}`, or a path written inline), or, between siblings inside one folder, a
`super::b` reference. Test code (after the first `#[cfg(test)]`, and files holding only
tests) is left out, as tests may reach anywhere. Prints each cycle and each long file;
exits 1 if there is any.

usage: tools/check-house.py [--max-lines N] [ROOT]
"""
import pathlib
import re
import sys

CRATES = ("contract", "controller", "filter", "native", "tests")


def head_of(path):
    """The file's text before its tests."""
    return path.read_text(errors="replace").split("#[cfg(test)]")[0]


def code_of(path):
    """The file's code before its tests, without comments: comments (doc links included)
    name modules without importing them."""
    return re.sub(r"//[^\n]*", "", head_of(path))


def refs(code, prefix):
    """Module names referenced as `prefix::name` or inside `prefix::{...}` groups."""
    names = set(re.findall(prefix + r"::([a-z_][a-z0-9_]*)", code))
    for group in re.findall(prefix + r"::\{([^}]*)\}", code):
        for item in group.split(","):
            item = item.strip()
            if item:
                names.add(item.split("::")[0].strip())
    return names


def cycles(graph):
    """Strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def module_graph(src, folder):
    """Edges between the modules directly inside `folder` (a path under src)."""
    names = {}
    for entry in folder.iterdir():
        if entry.is_dir():
            names[entry.name] = sorted(entry.rglob("*.rs"))
        elif entry.suffix == ".rs" and entry.stem not in ("lib", "main", "mod"):
            names[entry.stem] = [entry]
    graph = {name: set() for name in names}
    top = folder == src
    for name, files in names.items():
        for f in files:
            code = code_of(f)
            used = refs(code, "crate") if top else set()
            if not top:
                # Siblings inside a folder reach each other through `super::`.
                if f.parent == folder or f.name == "mod.rs" and f.parent.parent == folder:
                    used |= refs(code, "super")
            graph[name] |= {u for u in used if u in names and u != name}
    return graph


def main():
    args = sys.argv[1:]
    max_lines = 600
    if "--max-lines" in args:
        i = args.index("--max-lines")
        max_lines = int(args[i + 1])
        del args[i : i + 2]
    root = pathlib.Path(args[0] if args else ".")
    problems = []
    for crate in CRATES:
        src = root / crate / "src"
        if not src.is_dir():
            continue
        folders = [src] + sorted(p for p in src.rglob("*") if p.is_dir())
        for folder in folders:
            for component in cycles(module_graph(src, folder)):
                where = folder.relative_to(root)
                problems.append(f"import cycle in {where}: {' <-> '.join(component)}")
        for f in sorted(src.rglob("*.rs")):
            lines = len(head_of(f).splitlines())
            if lines > max_lines:
                problems.append(f"{f.relative_to(root)}: {lines} lines before its tests (max {max_lines})")
    for p in problems:
        print(p)
    print(f"house: {len(problems)} problem(s) in {', '.join(CRATES)}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
