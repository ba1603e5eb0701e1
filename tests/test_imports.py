"""The import graph of spikediff/, export/, hardware/ and benchmarks/ has no cycle,
and no module imports another module's private (_underscore) names.

Read with the stdlib `ast` module, no code is imported: every `import` and
`from ... import` counts, at module level and inside functions alike (a cycle
through a function-level import is still a cycle; it only fails later). Two
graphs are checked: module to module, and folder (package) to folder, where
hardware/energy -> hardware/lava -> hardware/energy is a cycle even when no two
single files import each other.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("spikediff", "export", "hardware", "benchmarks")

# Private imports across modules that are accepted (none): add an entry only
# with a reason; the test says when one goes stale.
ALLOWED_PRIVATE: set[tuple[str, str, str]] = set()


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = path
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]):
    """(imported module, names taken from it) for every import statement in the file."""
    is_pkg = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, ()
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base[:len(base) - node.level + (1 if is_pkg else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            names = [a.name for a in node.names]
            yield target, names
            for n in names:  # `from pkg import module`
                if f"{target}.{n}" in mods:
                    yield f"{target}.{n}", ()


def _graph():
    mods = _modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    private = []
    for name, path in mods.items():
        for target, names in _imports(name, path, mods):
            # importing a.b.c runs a/__init__ and a/b/__init__ too
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                t = ".".join(parts[:i])
                if t in mods and t != name:
                    edges[name].add(t)
            if target in mods and target != name:
                for n in names:
                    if n.startswith("_") and not n.startswith("__") and f"{target}.{n}" not in mods:
                        private.append((name, target, n))
    return mods, edges, private


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def _package_of(mod: str, mods: dict[str, Path]) -> str:
    return mod if mods[mod].name == "__init__.py" else mod.rpartition(".")[0] or mod


def test_graph_reads_function_level_and_relative_imports():
    mods, edges, _ = _graph()
    assert "spikediff.cli" in mods and "hardware.energy.cli" in mods
    # spikediff/cli.py imports .train only inside cmd_train
    assert "spikediff.train" in edges["spikediff.cli"]
    assert "hardware.energy.counting" in edges["hardware.energy.report"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_import_cycle():
    _, edges, _ = _graph()
    assert _cycles(edges) == []


def test_no_package_import_cycle():
    mods, edges, _ = _graph()
    pkg_edges: dict[str, set[str]] = {}
    for m, targets in edges.items():
        a = _package_of(m, mods)
        for t in targets:
            b = _package_of(t, mods)
            # a package's modules may use its parents' __init__ (hardware/run.py: BACKENDS)
            if a != b and not a.startswith(b + "."):
                pkg_edges.setdefault(a, set()).add(b)
    assert _cycles(pkg_edges) == []


def test_no_private_names_across_modules():
    _, _, private = _graph()
    assert sorted(set(private) - ALLOWED_PRIVATE) == []
    stale = ALLOWED_PRIVATE - set(private)
    assert not stale, f"fixed: remove {sorted(stale)} from ALLOWED_PRIVATE"
