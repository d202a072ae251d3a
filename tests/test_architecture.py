"""The shape issue 12 asks for, measured on the source tree (no database involved).

No import cycles among simpleflow's modules (imports inside functions count), no module over
450 lines, no class over 20 methods, and no dialect test outside the database seam. The layer
order itself is import-linter's contract in pyproject.toml (``nox -s imports``).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "simpleflow"
MAX_MODULE_LINES = 450
MAX_CLASS_METHODS = 20
#: the only files that may ask which database they talk to
DIALECT_SEAM = {"db/dialect.py", "db/dialect_sql.py", "db/dialect_async.py"}
DIALECT_TEST = re.compile(r"is_postgres|dialect\.name|[=!]=\s*[\"'](?:sqlite|postgresql)[\"']")


def modules() -> dict[str, Path]:
    """Dotted name -> file, for every module of the package but the Alembic revisions."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if "migrations" in path.relative_to(PACKAGE).parts:
            continue
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """simpleflow modules *name* imports anywhere in its file (module level, functions, TYPE_CHECKING)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*up, base] if base else up)
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            # importing an ancestor package is what importing any submodule does anyway
            if target and target != name and not name.startswith(target + "."):
                found.add(target)
    return found


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the groups of two or more modules that import each other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = [stack.pop()]
            while group[-1] != v:
                group.append(stack.pop())
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def test_no_import_cycles_among_modules_even_through_imports_inside_functions() -> None:
    files = modules()
    graph = {name: imports_of(name, path, set(files)) for name, path in files.items()}
    cycles = strongly_connected(graph)
    described = [
        " <-> ".join(group) + ": " + ", ".join(f"{a} -> {b}" for a in group for b in sorted(graph[a] & set(group)))
        for group in cycles
    ]
    assert not cycles, f"{len(cycles)} import cycle(s):\n" + "\n".join(described)


def test_no_module_over_450_lines() -> None:
    sizes = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in modules().items()}
    too_long = {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES}
    assert not too_long, f"modules over {MAX_MODULE_LINES} lines: {too_long}"


def test_no_class_over_20_methods() -> None:
    too_big = {}
    for name, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                methods = [  # @overload stubs are type declarations, not methods
                    n
                    for n in node.body
                    if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
                    and not any(getattr(d, "id", getattr(d, "attr", "")) == "overload" for d in n.decorator_list)
                ]
                if len(methods) > MAX_CLASS_METHODS:
                    too_big[f"{name}.{node.name}"] = len(methods)
    assert not too_big, f"classes with more than {MAX_CLASS_METHODS} methods: {too_big}"


def test_dialect_differences_are_asked_only_inside_the_database_seam() -> None:
    outside = [
        f"simpleflow/{path.relative_to(PACKAGE)}:{number}: {line.strip()}"
        for path in modules().values()
        if path.relative_to(PACKAGE).as_posix() not in DIALECT_SEAM
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if DIALECT_TEST.search(line)
    ]
    assert not outside, f"dialect tests outside {sorted(DIALECT_SEAM)}:\n" + "\n".join(outside)


def test_the_checks_see_the_whole_package() -> None:
    """Guards the four tests above against passing because they found nothing to measure."""
    files = modules()
    assert {"simpleflow", "simpleflow.client", "simpleflow.db.database"} <= set(files)
    graph = {name: imports_of(name, path, set(files)) for name, path in files.items()}
    assert "simpleflow.core.errors" in graph["simpleflow.client"]
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
