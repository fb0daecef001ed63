"""The import graph of iwslt_mc/, read from the source (ast, nothing is imported): modules, edges, cycles and
the layering rules of the house (DESIGN.md: floor < families < sizing/quantization/planning < stages <
commands).

Every ``import`` / ``from ... import`` counts, at module level or inside a function (a lazy import is still a
dependency), and so does a registry entry: ``REGISTRY`` in ``iwslt_mc/families/__init__.py``
(``"module:Class"``) and ``iwslt_mc/stages/__init__.py`` imports its modules by name.

    python tools/import_graph.py                # summary: modules, edges, cycles, rule violations
    python tools/import_graph.py --json         # the same as JSON (edges included)
    python tools/import_graph.py --why A B      # one import path from module A to module B

Exit status 1 when there is a cycle or a rule is broken (tests/test_import_graph.py runs the checks).
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "iwslt_mc"
HEAVY = ("torch", "transformers")  # what the floor never imports, not even lazily
LEAVES = ("errors", "fsutil")  # top-level modules the floor may import: they import only each other


def module_name(root: Path, f: Path) -> str:
    rel = f.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _registry_targets(tree: ast.AST, pkg: str) -> list[str]:
    """Modules named by a ``REGISTRY`` literal of ``"module:Class"`` strings (a tuple/list, or a dict's values)."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if not any(isinstance(t, ast.Name) and t.id == "REGISTRY" for t in targets) or node.value is None:
                continue
            v = node.value
            items = v.values if isinstance(v, ast.Dict) else getattr(v, "elts", [])
            for it in items:
                if isinstance(it, ast.Constant) and isinstance(it.value, str) and ":" in it.value:
                    out.append(f"{pkg}.{it.value.split(':')[0]}")
    return out


def parse(root: Path = ROOT) -> tuple[dict[str, Path], dict[str, set[str]], dict[str, set[str]]]:
    """(module -> file, module -> modules of iwslt_mc it imports, module -> outside top-level packages it imports)."""
    mods = {module_name(root, f): f for f in sorted(root.rglob("*.py"))}
    edges: dict[str, set[str]] = {m: set() for m in mods}
    external: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        pkg = m if f.name == "__init__.py" else m.rpartition(".")[0]
        tree = ast.parse(f.read_text(encoding="utf-8"), filename=str(f))
        for node in ast.walk(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")
                    base = base[: len(base) - node.level + 1]
                    b = ".".join(base + ([node.module] if node.module else []))
                else:
                    b = node.module or ""
                # ``from P import name``: the submodule P.name when there is one, else P itself
                targets = [f"{b}.{a.name}" if f"{b}.{a.name}" in mods else b for a in node.names]
            for t in targets:
                if t.split(".")[0] != root.name:
                    external[m].add(t.split(".")[0])
                    continue
                while t and t not in mods:
                    t = t.rpartition(".")[0]
                if t and t != m:
                    edges[m].add(t)
        if f.name == "__init__.py":
            for t in _registry_targets(tree, m):
                if t in mods and t != m:
                    edges[m].add(t)
    return mods, edges, external


def sccs(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components (Tarjan, iterative), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                out.append(sorted(comp))
    return out


def cycles(edges) -> list[list[str]]:
    """The import circles: components of more than one module (or a module importing itself)."""
    return [c for c in sccs(edges) if len(c) > 1 or c[0] in edges[c[0]]]


def path(edges, a: str, b: str) -> list[str] | None:
    """One shortest import path from ``a`` to ``b`` (breadth first), or None."""
    prev = {a: None}
    todo = [a]
    while todo:
        nxt = []
        for v in todo:
            for w in sorted(edges.get(v, ())):
                if w not in prev:
                    prev[w] = v
                    if w == b:
                        out = [b]
                        while prev[out[-1]] is not None:
                            out.append(prev[out[-1]])
                        return out[::-1]
                    nxt.append(w)
        todo = nxt
    return None


def _under(m: str, pkg: str) -> bool:
    return m == pkg or m.startswith(pkg + ".")


def rule_violations(edges, external, root_name: str = "iwslt_mc") -> dict[str, list[str]]:
    """The layering rules, each a list of ``"A -> B"`` lines that break it (empty: kept)."""
    floor, fams, stages = f"{root_name}.floor", f"{root_name}.families", f"{root_name}.stages"
    above_families = [f"{root_name}.{p}" for p in ("stages", "planning", "commands", "planner", "build", "cli")]
    out: dict[str, list[str]] = {"floor-no-heavy": [], "floor-imports-only-floor": [], "families-below-stages": [],
                                 "stage-imports-stage": []}
    # the top-level leaves the floor may use (error types, atomic writes); they are held to the floor's rules
    leaves = tuple(f"{root_name}.{x}" for x in LEAVES)
    for m, deps in sorted(edges.items()):
        if _under(m, floor) or m in leaves:
            out["floor-no-heavy"] += [f"{m} -> {x}" for x in sorted(external[m]) if x in HEAVY]
            out["floor-imports-only-floor"] += [f"{m} -> {d}" for d in sorted(deps)
                                                if not _under(d, floor) and d not in (root_name, *leaves)]
        if _under(m, fams):
            out["families-below-stages"] += [f"{m} -> {d}" for d in sorted(deps)
                                             if any(_under(d, p) for p in above_families)]
        if _under(m, stages) and m not in (stages, f"{stages}.base"):
            out["stage-imports-stage"] += [f"{m} -> {d}" for d in sorted(deps)
                                           if _under(d, stages) and d not in (stages, f"{stages}.base", m)]
    return out


def report(root: Path = ROOT) -> dict:
    mods, edges, external = parse(root)
    return {"modules": len(mods), "edges": sum(len(v) for v in edges.values()), "cycles": cycles(edges),
            "rules": rule_violations(edges, external, root.name),
            "edge_list": {m: sorted(v) for m, v in sorted(edges.items())}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=ROOT, help="the package directory (default: iwslt_mc/)")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    ap.add_argument("--why", nargs=2, metavar=("A", "B"), help="print one import path from module A to module B")
    a = ap.parse_args(argv)
    r = report(a.root)
    if a.why:
        _, edges, _ = parse(a.root)
        p = path(edges, *a.why)
        print(" -> ".join(p) if p else f"no import path from {a.why[0]} to {a.why[1]}")
        return 0 if p else 1
    bad = bool(r["cycles"]) or any(r["rules"].values())
    if a.json:
        print(json.dumps(r, indent=1))
        return int(bad)
    print(f"{r['modules']} modules, {r['edges']} edges, {len(r['cycles'])} cycle(s)")
    for c in r["cycles"]:
        print(f"  cycle of {len(c)}: {', '.join(c)}")
    for rule, lines in r["rules"].items():
        print(f"{rule}: {'ok' if not lines else f'{len(lines)} broken'}")
        for line in lines:
            print(f"  {line}")
    return int(bad)


if __name__ == "__main__":
    sys.exit(main())
