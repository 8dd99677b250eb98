#!/usr/bin/env python3
"""Fails if the daemon crate's module graph has a cycle.

Nodes are the crate's source files (a `mod.rs` is its directory's module). There is an
edge A -> B when A names an item of B: `use crate::b::...`, `crate::b::x` in code,
`super::x` / `self::b::x` paths, and `pub use` re-exports alike. A module's own `mod b;`
line is not an edge (declaring a child is not depending on it). Comments and string
literals are ignored.

Usage: scripts/check-cycles.py [SRC_DIR ...]   (default: daemon/src)
Prints every cycle (as the strongly connected component it belongs to) and exits 1, or
prints a one-line summary and exits 0.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

PATH = re.compile(r"\b(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)+)")
USE_GROUP = re.compile(r"\buse\s+(crate|super|self)((?:::[A-Za-z_][A-Za-z0-9_]*)*)::\{")


def strip(text: str) -> str:
    """Source without comments, string literals and its unit-test module (good enough
    for paths; a test module's `super` is the file itself, and tests are no dependency)."""
    test_module = re.search(r"#\[cfg\(test\)\]\s*mod\s+\w+\s*\{", text)
    if test_module:
        text = text[: test_module.start()]
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    text = re.sub(r"//[^\n]*", " ", text)
    text = re.sub(r'r(#*)".*?"\1', '""', text, flags=re.S)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text, flags=re.S)
    return text


def module_of(src: Path, file: Path) -> tuple[str, ...]:
    rel = file.relative_to(src).with_suffix("")
    parts = rel.parts
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return tuple(parts)


def group_paths(text: str, start: int) -> list[str]:
    """The paths inside a `use x::{...}` group starting at `start` (the `{`), nested
    groups flattened as prefixes."""
    depth, i, out, current, stack = 0, start, [], "", [""]
    while i < len(text):
        c = text[i]
        if c == "{":
            depth += 1
            stack.append(stack[-1] + current.strip())
            current = ""
        elif c == "}":
            if current.strip():
                out.append(stack[-1] + current.strip())
            current = ""
            stack.pop()
            depth -= 1
            if depth == 0:
                break
        elif c == ",":
            if current.strip():
                out.append(stack[-1] + current.strip())
            current = ""
        else:
            current += c
        i += 1
    return [re.split(r"\s+as\s+", p)[0] for p in out]


def resolve(base: tuple[str, ...], root: str, rest: list[str], modules: set) -> tuple[str, ...] | None:
    """The deepest existing module a path names (None for the crate root itself)."""
    if root == "crate":
        here = ()
    elif root == "super":
        here = base[:-1]
        while rest and rest[0] == "super":
            here, rest = here[:-1], rest[1:]
    else:
        here = base
    best = None
    path = here
    if path in modules and path:
        best = path
    for part in rest:
        path = path + (part,)
        if path in modules:
            best = path
        else:
            break
    return best


def graph(src: Path) -> dict:
    files = {module_of(src, f): f for f in src.rglob("*.rs") if "bin" not in f.relative_to(src).parts[:1]}
    modules = set(files)
    edges: dict = {m: set() for m in modules}
    for module, file in files.items():
        text = strip(file.read_text())
        # A file's modules: `mod x` inside a file is part of it.
        refs = []
        for m in USE_GROUP.finditer(text):
            prefix = m.group(2).strip(":").split("::") if m.group(2) else []
            for inner in group_paths(text, m.end() - 1):
                refs.append((m.group(1), [p for p in prefix if p] + [p for p in inner.split("::") if p]))
        for m in PATH.finditer(text):
            refs.append((m.group(1), [p for p in m.group(2).split("::") if p]))
        # Paths relative to this module: `child::x` for a child module `child`, in `use`
        # lines and in code alike (2018-edition paths).
        children = {m[-1] for m in modules if len(m) == len(module) + 1 and m[: len(module)] == module}
        for m in re.finditer(r"(?<![A-Za-z0-9_:])([a-z_][a-z0-9_]*)((?:::[A-Za-z_][A-Za-z0-9_]*)+)", text):
            if m.group(1) in children:
                refs.append(("self", [m.group(1)] + [p for p in m.group(2).split("::") if p]))
        for m in re.finditer(r"\buse\s+([a-z_][a-z0-9_]*)::\{", text):
            if m.group(1) in children:
                for inner in group_paths(text, m.end() - 1):
                    refs.append(("self", [m.group(1)] + [p for p in inner.split("::") if p]))
        for root, rest in refs:
            target = resolve(module, root, rest, modules)
            if target is not None and target != module and target != ():
                edges[module].add(target)
    return edges


def cycles(edges: dict) -> list[list]:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
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
                out.append(component)

    sys.setrecursionlimit(10000)
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def name(module: tuple) -> str:
    return "::".join(module) or "crate"


def main() -> int:
    roots = [Path(a) for a in sys.argv[1:]] or [Path(__file__).resolve().parent.parent / "daemon/src"]
    failed = False
    for src in roots:
        edges = graph(src)
        found = cycles(edges)
        for component in found:
            failed = True
            members = set(component)
            print(f"cycle in {src}: " + ", ".join(sorted(name(m) for m in component)))
            for m in sorted(component):
                inside = sorted(name(t) for t in edges[m] if t in members)
                print(f"  {name(m)} -> {', '.join(inside)}")
        if not found:
            count = sum(len(t) for t in edges.values())
            print(f"{src}: {len(edges)} modules, {count} dependencies, no cycle")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
