#!/usr/bin/env python3
"""Fails when the modules of a crate import each other in a cycle.

For every crate given (its `src/` directory), each file belongs to a module path (`src/api/service.rs` is
`api::service`). A file's imports are the `crate::…` paths it names, in `use` declarations and in code (doc
comments and tests excluded: `#[cfg(test)]` modules may reach anywhere). An edge runs from a module to the
module it names, taken at the depth given (`--depth 1`: top-level modules, `api -> zitadel`; `--depth 2`: their
children too, `zitadel::userinfo -> caller`), and edges inside one module's own subtree are ignored. Any strongly
connected group of more than one module is a cycle: printed with one import that closes it, and the exit status
is 1.

Usage: check_module_cycles.py [--depth N] CRATE_SRC_DIR...
"""

import argparse
import os
import re
import sys
from collections import defaultdict

CRATE_PATH = re.compile(r"\bcrate::((?:[a-z_][a-z0-9_]*::)*[a-z_][a-z0-9_]*)")
USE_GROUP = re.compile(r"\buse\s+crate::\{(.*?)\};", re.S)


def module_of(src: str, path: str) -> list[str]:
    rel = os.path.relpath(path, src)[: -len(".rs")].split(os.sep)
    if rel[-1] in ("mod", "lib", "main"):
        rel = rel[:-1]
    return rel


def strip(text: str) -> str:
    """Drops comments and `#[cfg(test)]` items (to the end of the file: test modules come last here)."""
    text = re.sub(r"//[^\n]*", "", text)
    cut = re.search(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", text)
    return text[: cut.start()] if cut else text


def imports(text: str) -> set[tuple[str, ...]]:
    found = set()
    for group in USE_GROUP.findall(text):
        # `use crate::{a::b, c::{d, e}}`: the first segment of each item is enough below depth 2 only when
        # the item is a path; collect `x::y` pairs and single names.
        depth = 0
        item = ""
        for ch in group + ",":
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            if ch == "," and depth == 0:
                parts = [p for p in re.split(r"::|\{", item.strip()) if p]
                names = [p.strip() for p in parts if re.fullmatch(r"\s*[a-z_][a-z0-9_]*\s*", p)]
                if names:
                    found.add(tuple(names[:2]))
                item = ""
            else:
                item += ch
    for match in CRATE_PATH.finditer(text):
        found.add(tuple(match.group(1).split("::")[:2]))
    return found


def scc(graph: dict[str, set[str]]) -> list[list[str]]:
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            out.append(group)

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def check(src: str, depth: int) -> int:
    modules: dict[tuple[str, ...], list[str]] = {}
    for root, _, files in os.walk(src):
        for name in files:
            if name.endswith(".rs"):
                path = os.path.join(root, name)
                modules.setdefault(tuple(module_of(src, path)), []).append(path)
    known = {m[:depth] for m in modules if m}
    graph: dict[str, set[str]] = defaultdict(set)
    witness: dict[tuple[str, str], str] = {}
    for module, paths in modules.items():
        if not module:
            continue
        here = module[:depth]
        for path in paths:
            text = strip(open(path, encoding="utf-8").read())
            for target in imports(text):
                there = target[:depth]
                while there and there not in known:
                    there = there[:-1]
                if not there or there[: len(here)] == here or here[: len(there)] == there:
                    continue
                a, b = "::".join(here), "::".join(there)
                graph[a].add(b)
                witness.setdefault((a, b), os.path.relpath(path))
    cycles = [sorted(group) for group in scc(graph) if len(group) > 1]
    for group in cycles:
        members = set(group)
        print(f"{src}: modules import each other in a cycle: {', '.join(group)}")
        for a in group:
            for b in sorted(graph[a] & members):
                print(f"  {a} -> {b}  (e.g. {witness[(a, b)]})")
    return len(cycles)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=1)
    parser.add_argument("srcs", nargs="+")
    args = parser.parse_args()
    found = sum(check(src, args.depth) for src in args.srcs)
    if found:
        print(f"{found} import cycle(s); make the lower module stop importing the higher one")
        return 1
    print(f"no import cycles between modules ({', '.join(args.srcs)}, depth {args.depth})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
