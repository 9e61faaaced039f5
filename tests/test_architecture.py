"""The architecture checks itself (docs/architecture.md "Layers"): the import graph of the
product's packages, every import counted (module level, inside functions, under
``TYPE_CHECKING``), has no cycle, and the layer rules hold:

- ``protocol`` imports neither ``cluster`` nor ``node``; ``cluster`` does not import ``node``;
- ``cluster.machine`` (the replicated state machine) imports no I/O or clock module;
- only ``cluster.raft`` imports pysyncobj;
- ``bench`` does not import ``tests``.

The graph is read from the source (ast), so a function-level import cannot hide a cycle."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("protocol", "cluster", "node", "bench")
# (datetime is allowed: AMQP tables carry timestamps; its clock is not, see _clock_calls)
IO_OR_CLOCK = {"os", "io", "time", "socket", "shutil", "pathlib", "asyncio", "threading",
               "subprocess", "select", "selectors", "signal", "tempfile", "random",
               "uuid", "logging", "mmap", "fcntl", "multiprocessing", "concurrent", "ssl",
               "http", "urllib", "aiohttp", "uvloop", "pysyncobj"}


def _modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = _modules()


def _imported(name: str, path: Path) -> Iterator[str]:
    """Every module ``name`` imports, fully qualified (third-party ones by their top name)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield sub if sub in MODULES else base


def graph() -> dict[str, set[str]]:
    """Edges between the product's own modules."""
    return {name: {m for m in _imported(name, path) if m in MODULES and m != name}
            for name, path in MODULES.items()}


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            for w in children:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    component = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        component.append(w)
                        if w == v:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def _top(name: str) -> str:
    return name.split(".")[0]


def test_the_reader_finds_function_level_and_type_only_imports() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
    assert "cluster.commands" in graph()["cluster.machine.apply"]


def test_no_import_cycles() -> None:
    cycles = _cycles(graph())
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_layers() -> None:
    broken = []
    for name, path in MODULES.items():
        imported = set(_imported(name, path))
        layer = _top(name)
        for m in imported:
            top = _top(m)
            if layer == "protocol" and top in ("cluster", "node"):
                broken.append(f"{name} imports {m} (protocol is below cluster and node)")
            if layer == "cluster" and top == "node":
                broken.append(f"{name} imports {m} (cluster is below node)")
            if layer == "bench" and top == "tests":
                broken.append(f"{name} imports {m} (bench stands on its own)")
            if top == "pysyncobj" and not name.startswith("cluster.raft"):
                broken.append(f"{name} imports pysyncobj (only cluster.raft may)")
    assert not broken, "\n".join(sorted(broken))


def test_the_machine_reaches_no_io_or_clock_module() -> None:
    """Through the machine's own imports, transitively: what it can reach of ours must not
    import an I/O or clock module either."""
    edges = graph()
    seen: set[str] = set()
    todo = [m for m in MODULES if m == "cluster.machine" or m.startswith("cluster.machine.")]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(edges[m])
    bad = sorted(f"{m} imports {i}" for m in seen for i in _imported(m, MODULES[m])
                 if _top(i) in IO_OR_CLOCK)
    bad += sorted(f"{m} reads the clock: {call}" for m in seen for call in _clock_calls(m))
    assert not bad, "\n".join(bad)


def _clock_calls(name: str) -> Iterator[str]:
    for node in ast.walk(ast.parse(MODULES[name].read_text())):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("now", "utcnow", "today")):
            yield f"line {node.lineno}: .{node.func.attr}()"
