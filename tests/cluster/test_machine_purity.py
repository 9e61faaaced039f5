"""The machine reaches no I/O or clock module through any import (issue 21, item 2): it keeps
message ids and references, and the replica drives the message store (cluster/store.py)
from what it decided (State.writes).

Two views of the same rule: the project's import graph read from the source (every
``import`` and ``from ... import`` of every module reached from cluster/machine, function
level and type-only imports included; a standard-library or third-party module is a leaf),
and the modules a fresh interpreter loads when it imports cluster.machine.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PROJECT = ("cluster", "protocol", "node", "tests", "bench")
# Modules that do I/O, read a clock, or draw randomness.
FORBIDDEN = frozenset({
    "os", "io", "shutil", "time", "pathlib", "socket", "select", "selectors", "asyncio",
    "subprocess", "mmap", "tempfile", "threading", "multiprocessing", "random", "secrets",
    "signal", "gzip", "zlib", "bz2", "lzma", "logging", "sqlite3", "fcntl", "glob",
    "pysyncobj",
})
# What the machine may import from the rest of the project: pure modules only.
ALLOWED_PROJECT = ("cluster.machine", "cluster.commands", "cluster.effects", "cluster.records",
                   "protocol")


def _file(module: str) -> Path | None:
    path = ROOT.joinpath(*module.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    return None


def _imports(module: str) -> set[str]:
    path = _file(module)
    assert path is not None, module
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            for alias in node.names:  # "from cluster.machine import messages": a module
                if _file(f"{target}.{alias.name}") is not None:
                    found.add(f"{target}.{alias.name}")
    return found


def machine_closure() -> tuple[dict[str, str], dict[str, str]]:
    """(project module -> the module that imports it first, external top-level module ->
    the project module that imports it) for everything reached from cluster.machine."""
    start = ["cluster.machine"] + [f"cluster.machine.{p.stem}"
                                   for p in sorted((ROOT / "cluster" / "machine").glob("*.py"))
                                   if p.stem != "__init__"]
    project: dict[str, str] = {m: "" for m in start}
    external: dict[str, str] = {}
    todo = list(start)
    while todo:
        module = todo.pop()
        for imported in sorted(_imports(module)):
            parts = imported.split(".")
            if parts[0] not in PROJECT:
                external.setdefault(parts[0], module)
                continue
            for k in range(1, len(parts) + 1):  # importing a.b.c runs a and a.b too
                name = ".".join(parts[:k])
                if _file(name) is not None and name not in project:
                    project[name] = module
                    todo.append(name)
    return project, external


def test_the_machine_imports_no_io_or_clock_module() -> None:
    project, external = machine_closure()
    reached = {m: f"{m} (imported by {via})" for m, via in external.items() if m in FORBIDDEN}
    assert not reached, sorted(reached.values())
    outside = [f"{m} (imported by {via})" for m, via in project.items()
               if m not in ("cluster",) and not m.startswith(ALLOWED_PROJECT)]
    assert not outside, outside
    assert "cluster.store" not in project and "cluster.machine.messages" in project


def test_importing_the_machine_loads_no_io_or_clock_module() -> None:
    """In a fresh interpreter: what importing cluster.machine adds to sys.modules (modules
    the interpreter loaded at start-up, such as os, are covered by the test above)."""
    code = ("import sys; before = set(sys.modules); import cluster.machine; "
            "print(' '.join(sorted({m.split('.')[0] for m in set(sys.modules) - before})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=True)
    added = set(out.stdout.split())
    assert "cluster" in added
    assert not added & FORBIDDEN, sorted(added & FORBIDDEN)
