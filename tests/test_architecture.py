"""The house rules that keep meshc easy to change, checked on the source:

- the package's import graph (imports inside functions included, `if TYPE_CHECKING:` blocks
  excluded) has no cycle: a module can be understood, tested and imported after the ones it uses;
- no module imports another module's private (`_name`) names;
- library modules know nothing of argparse: command-line handling lives in meshc/commands/
  (and meshc/cli.py, meshc/runtime/commands.py, and the two commands not yet moved there);
- every package directory is listed in pyproject.toml (a forgotten one is missing from wheels);
- every command word is registered by the module the dispatcher imports for it;
- no function is more complex than ruff's C901 allows (max-complexity 30, pyproject.toml).
"""

from __future__ import annotations

import argparse
import ast
import importlib
import tomllib
from pathlib import Path

import pytest

from meshc.commands import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
# where each import name lives on disk (backends/ installs as meshc.backends)
SOURCES = {"meshc": ROOT / "meshc", "meshc.backends": ROOT / "backends"}


def package_modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for package, base in SOURCES.items():
        for f in sorted(base.rglob("*.py")):
            parts = [p for p in f.relative_to(base).with_suffix("").parts if p != "__init__"]
            if package == "meshc" and parts[:1] == ["backends"]:
                continue
            out[".".join([package, *parts])] = f
    return out


MODULES = package_modules()


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return skip


def imports_of(name: str, path: Path) -> list[tuple[str, str | None, int]]:
    """(module, imported name or None, line) for every meshc import in a module."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_nodes(tree)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found += [(a.name, None, node.lineno) for a in node.names if a.name.startswith("meshc")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if not module.startswith("meshc"):
                continue
            for a in node.names:
                sub = f"{module}.{a.name}"
                found.append((sub, None, node.lineno) if sub in MODULES else (module, a.name, node.lineno))
    return found


def _owner(module: str) -> str | None:
    while module not in MODULES and "." in module:
        module = module.rsplit(".", 1)[0]
    return module if module in MODULES else None


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for name, path in MODULES.items():
        for module, _, _ in imports_of(name, path):
            target = _owner(module)
            if target and target != name and not name.startswith(target + "."):
                graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
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


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_graph_has_no_cycle() -> None:
    assert cycles(import_graph()) == []


def test_no_module_imports_another_modules_private_names() -> None:
    private = [f"{name}:{line} imports {module}.{imported}"
               for name, path in MODULES.items()
               for module, imported, line in imports_of(name, path)
               if imported and imported.startswith("_") and not imported.startswith("__") and _owner(module) != name]
    assert private == []


# Modules that still register their own command (their packages are being reworked elsewhere).
COMMAND_MODULES_OUTSIDE = {"meshc.cli", "meshc.certs", "meshc.importers", "meshc.runtime.commands"}


def test_library_modules_know_nothing_of_argparse() -> None:
    offenders = [name for name, path in MODULES.items()
                 if not name.startswith("meshc.commands") and name not in COMMAND_MODULES_OUTSIDE
                 and any(m == "argparse" for m in _plain_imports(path))]
    assert offenders == []


def _plain_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    skip = _type_checking_nodes(tree)
    out: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
    return out


def test_every_package_is_in_pyproject() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {name for name, path in MODULES.items() if path.name == "__init__.py"}
    assert on_disk <= listed  # listed also holds data-only packages (meshc.grammar)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_each_command_is_registered_by_its_module(command: str) -> None:
    parser = argparse.ArgumentParser(prog="meshc")
    sub = parser.add_subparsers(dest="command")
    importlib.import_module(COMMANDS[command]).register(sub)
    assert command in sub.choices


def test_no_function_is_more_complex_than_the_house_allows() -> None:
    # ruff's C901 with pyproject's max-complexity (30): Resolver.service was 66 before it was split.
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "ruff", "check", "--select", "C901", "meshc", "backends"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
