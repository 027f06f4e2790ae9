"""The layout's rules, checked from the source (docs/design.md has the map).

- no import cycle among the project's modules (imports inside functions count too);
- backend/core is torch-free: the standard library and numpy only;
- each backend sub-package imports only the ones below it;
- the add-on imports no backend module outside backend/core;
- no function in backend/ or softras_blender/ is longer than 80 lines of code.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MAX_FUNCTION_LINES = 80
# What each backend sub-package may import of the others (itself always).
ALLOWED = {
    "core": set(),
    "render": {"core"},
    "fit": {"core", "render"},
    "segment": {"core", "render", "fit"},
    "sfm": {"core"},
    "process": {"core", "render", "fit", "segment", "sfm"},
}
CORE_THIRD_PARTY = {"numpy"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _project_modules() -> dict[str, Path]:
    paths = list((REPO / "backend").rglob("*.py")) + list((REPO / "softras_blender").glob("*.py"))
    return {_module_name(p): p for p in paths if "__pycache__" not in p.parts}


MODULES = _project_modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every module (project or not) that ``name`` imports, anywhere in the file."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # The add-on reaches the backend through its symlink: the same modules.
            target = target.replace("softras_blender.backend", "backend", 1)
            for alias in node.names:
                child = f"{target}.{alias.name}"
                found.add(child if child in MODULES else target)
    return found


GRAPH = {name: {m for m in _imports(name, path) if m in MODULES and m != name}
         for name, path in MODULES.items()}


def _related(a: str, b: str) -> bool:
    """A package and its own modules (``__init__`` re-exports) are not a cycle."""
    return a.startswith(b + ".") or b.startswith(a + ".")


def test_no_import_cycles():
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(GRAPH[node]):
            if _related(node, dep):
                continue
            if state.get(dep) == 1:
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, stack)
        stack.pop()
        state[node] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [])
    assert cycles == []


def test_backend_core_imports_only_the_standard_library_and_numpy():
    bad = {}
    for name, path in MODULES.items():
        if not name.startswith("backend.core"):
            continue
        for module in _imports(name, path):
            top = module.split(".")[0]
            if module.startswith("backend.core") or top in CORE_THIRD_PARTY:
                continue
            if top in sys.stdlib_module_names or top == "__future__":
                continue
            bad.setdefault(name, []).append(module)
    assert bad == {}


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_backend_sub_packages_import_only_those_below_them(package):
    prefix = f"backend.{package}"
    bad = []
    for name, deps in GRAPH.items():
        if name != prefix and not name.startswith(prefix + "."):
            continue
        for dep in deps:
            parts = dep.split(".")
            if len(parts) < 2 or parts[0] != "backend" or parts[1] == package:
                continue
            if parts[1] not in ALLOWED[package] and dep != "backend":
                bad.append(f"{name} imports {dep}")
    assert bad == []


def test_the_add_on_imports_only_the_torch_free_backend_core():
    bad = [f"{name} imports {dep}" for name, deps in GRAPH.items()
           if name.startswith("softras_blender") for dep in deps
           if dep.startswith("backend") and not dep.startswith("backend.core")]
    assert bad == []


def _code_lines(node: ast.AST, source_lines: list[str]) -> int:
    """Lines of a function that hold code: no blank lines, comments or docstring."""
    body = node.body
    skip = set()
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        skip.update(range(body[0].lineno, body[0].end_lineno + 1))
    count = 0
    for number in range(node.lineno, node.end_lineno + 1):
        text = source_lines[number - 1].strip()
        if number in skip or not text or text.startswith("#"):
            continue
        count += 1
    return count


def test_no_function_is_longer_than_80_lines_of_code():
    long = []
    for name, path in MODULES.items():
        source = path.read_text(encoding="utf-8")
        lines = source.splitlines()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                size = _code_lines(node, lines)
                if size > MAX_FUNCTION_LINES:
                    long.append(f"{name}.{node.name}: {size} lines")
    assert long == []
