"""The package imports one way: no import circle anywhere in qwen25/, and the model never imports the
long-context code (it registers its attention backends with the model from outside)."""

import ast
import importlib
import os
import pkgutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import qwen25

ROOT = Path(qwen25.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every qwen25 module this file imports, at any depth (function-level imports count), except under
    `if TYPE_CHECKING:`."""
    tree = ast.parse(path.read_text())
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING":
            skip |= {id(n) for n in ast.walk(node)}
    found = set()
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("qwen25")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            if base.startswith("qwen25"):
                found.add(base)
                found |= {f"{base}.{a.name}" for a in node.names}
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    return {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}


def test_no_import_circle():
    graph = _graph()
    # packages import their submodules by design (__init__ re-exports); a submodule importing its own package
    # __init__ is the circle we forbid, so keep package -> submodule edges and check everything
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_model_does_not_import_long_context():
    graph = _graph()
    offenders = {m: sorted(i for i in deps if i.startswith("qwen25.longctx"))
                 for m, deps in graph.items() if m.startswith("qwen25.model")}
    assert not any(offenders.values()), offenders


def test_every_module_imports_alone():
    names = [m.name for m in pkgutil.walk_packages([str(ROOT)], prefix="qwen25.")]
    code = "import importlib, sys\nfor n in sys.argv[1:]:\n    importlib.import_module(n)\n"

    def imports_alone(name):  # in a fresh interpreter: an order-dependent circle shows up here
        return name, subprocess.run([sys.executable, "-c", code, name], capture_output=True, text=True, timeout=300)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        for name, out in pool.map(imports_alone, names):
            assert out.returncode == 0, f"{name}: {out.stderr[-2000:]}"
    assert importlib.import_module("qwen25.model")
