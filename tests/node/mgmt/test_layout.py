"""The shape of node/mgmt/ (issue 21, item 1), read from its source: the resource modules
build on the framework and the pure modules only, the framework on the pure modules only,
one module (app.py) assembles the app and knows the concrete node; no function-level
import but the member probe's (it loads pysyncobj, which serving the API must not)."""

from __future__ import annotations

import ast
from pathlib import Path

import node.mgmt
from node.mgmt import app

PACKAGE = Path(node.mgmt.__file__).parent
PURE = {"views", "listing", "input", "rates"}  # state -> JSON, query rules, input rules
FRAMEWORK = "framework"
RESOURCES = {"access", "cluster", "members", "objects", "health", "definitions", "dashboard",
             "policies", "shovels"}
LAZY = {("members", "cluster.raft.probe")}  # (module, what it imports in a function)


def _imports(name: str) -> list[tuple[str, str]]:
    """(imported module, where: "top", "type" or "function") of node/mgmt/<name>.py."""
    tree = ast.parse((PACKAGE / f"{name}.py").read_text())
    found: list[tuple[str, str]] = []

    def named(n: ast.Import | ast.ImportFrom) -> list[str]:
        if isinstance(n, ast.Import):
            return [a.name for a in n.names]
        if n.module == "node.mgmt":
            return [f"node.mgmt.{a.name}" for a in n.names]
        return [n.module or ""]

    def visit(nodes: list[ast.stmt], where: str) -> None:
        for n in nodes:
            if isinstance(n, ast.Import | ast.ImportFrom):
                found.extend((m, where) for m in named(n))
            elif isinstance(n, ast.If) and "TYPE_CHECKING" in ast.dump(n.test):
                visit(n.body, "type")
            else:  # in a function or a class
                found.extend((m, "function") for inner in ast.walk(n)
                             if isinstance(inner, ast.Import | ast.ImportFrom)
                             for m in named(inner))

    visit(tree.body, "top")
    return found


def _mgmt(name: str) -> set[str]:
    return {m.removeprefix("node.mgmt.") for m, _ in _imports(name)
            if m.startswith("node.mgmt.")}


def test_the_package_holds_what_it_says() -> None:
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert modules == {FRAMEWORK, "app"} | PURE | RESOURCES


def test_resource_modules_import_the_framework_and_pure_modules_only() -> None:
    for name in RESOURCES:
        assert _mgmt(name) <= {FRAMEWORK} | PURE, name


def test_the_framework_imports_pure_modules_only() -> None:
    assert _mgmt(FRAMEWORK) <= PURE
    for name in PURE:
        assert _mgmt(name) == set(), name


def test_only_the_app_knows_the_broker_and_the_maintenance_operations() -> None:
    for name in {FRAMEWORK} | PURE | RESOURCES:
        for module, _ in _imports(name):
            assert module not in ("node.broker", "node.services.maintenance"), (name, module)


def test_no_function_level_imports_but_the_probes() -> None:
    for name in {FRAMEWORK, "app"} | PURE | RESOURCES:
        lazy = {(name, m) for m, where in _imports(name) if where == "function"}
        assert lazy <= LAZY, lazy


def test_every_resource_module_is_served() -> None:
    served = {m.__name__.removeprefix("node.mgmt.") for m in app.RESOURCES}
    assert served == RESOURCES
