"""How r2f's modules import each other: no import cycle (module-level imports, the package ``__init__`` each import
runs included), no function-level import that would close one, and the CLI's start-up free of torch (its help is
built from the typed records without importing the models)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def import_graph(src: Path, package: str) -> tuple[dict[str, set[str]], list[tuple[str, str, int]]]:
    """(module -> the package modules its module-level imports run, [(module, imported, line)] of the imports made
    inside functions). Importing ``a.b.c`` runs ``a`` and ``a.b`` first: those edges are in the graph too, but for
    a module's own parent packages (already running when it is imported). ``if TYPE_CHECKING:`` blocks run nothing."""
    files = {}
    for path in (src / package).rglob("*.py"):
        parts = list(path.relative_to(src).with_suffix("").parts)
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def resolve(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    lazy: list[tuple[str, str, int]] = []
    for mod, path in files.items():
        is_pkg = path.name == "__init__.py"
        deps: set[str] = set()

        def visit(node: ast.AST, in_function: bool) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                    continue
                inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                names: list[str] = []
                if isinstance(child, ast.Import):
                    names = [a.name for a in child.names]
                elif isinstance(child, ast.ImportFrom):
                    base = child.module or ""
                    if child.level:
                        here = mod.split(".") if is_pkg else mod.split(".")[:-1]
                        base = ".".join(here[: len(here) - child.level + 1] + ([base] if base else []))
                    names = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in child.names]
                for name in names:
                    target = resolve(name) if name.split(".")[0] == package else None
                    if target and target != mod:
                        if inner:
                            lazy.append((mod, target, child.lineno))
                        else:
                            deps.add(target)
                visit(child, inner)

        visit(ast.parse(path.read_text(encoding="utf-8")), False)
        runs = set()
        for dep in deps:
            parts = dep.split(".")
            runs |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
        graph[mod] = {d for d in runs if d in files and d != mod and not mod.startswith(d + ".")}
    return graph, lazy


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def reaches(graph: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, todo = set(), [start]
    while todo:
        v = todo.pop()
        if v == goal:
            return True
        if v not in seen:
            seen.add(v)
            todo.extend(graph.get(v, ()))
    return False


def test_the_finder_sees_a_cycle_and_a_lazy_import_that_closes_one(tmp_path):
    pkg = tmp_path / "pk"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from pk.sub.b import B\n")
    (pkg / "a.py").write_text("from pk.sub import b\n\ndef f():\n    from pk import c\n")
    (pkg / "sub" / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pk.c\nB = 1\n")
    (pkg / "c.py").write_text("from . import a\n")
    graph, lazy = import_graph(tmp_path, "pk")
    assert graph["pk.a"] == {"pk.sub", "pk.sub.b"} and graph["pk.sub.b"] == set()  # TYPE_CHECKING runs nothing
    assert cycles(graph) == [] and lazy == [("pk.a", "pk.c", 4)]
    assert reaches(graph, "pk.c", "pk.a")  # so a's function-level import of c closes a cycle
    (pkg / "sub" / "b.py").write_text("import pk.c\nB = 1\n")
    assert cycles(import_graph(tmp_path, "pk")[0]) == [["pk.a", "pk.c", "pk.sub", "pk.sub.b"]]


def test_r2f_has_no_import_cycle():
    graph, lazy = import_graph(SRC, "r2f")
    assert len(graph) > 60 and "r2f.methods.engine" in graph["r2f.methods.api"]  # the finder read the tree
    assert cycles(graph) == []
    # a function-level import is for cost (torch, transformers, a command's own work), never to hide a cycle
    closing = [(mod, target, line) for mod, target, line in lazy if reaches(graph, target, mod)
               and not mod.startswith(target + ".")]
    assert closing == []


def test_the_cli_starts_without_torch():
    """`import r2f` and every command module (their options' help included, e.g. r2f eval's from EvalSpec) load
    without torch, transformers or the models."""
    code = ("import sys, r2f, r2f.cli; r2f.cli._load_commands(); "
            "print(sorted(m for m in ('torch', 'transformers', 'r2f.eval', 'r2f.methods') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"})
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def _function_level_imports(path: Path) -> list[int]:
    """Lines of the imports made inside functions (``if TYPE_CHECKING:`` blocks and module level excluded)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    lines: list[int] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)) and in_function:
                lines.append(child.lineno)
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    visit(tree, False)
    return lines


def _says_why(source: list[str], line: int) -> bool:
    """Whether the import on ``line`` (1-based) carries a comment: on its own line, on a line above it in its
    block of imports, blank and comment lines, or on (or just above) the ``if``/``try`` that opens that block."""
    i = line - 1
    while i >= 0:
        text = source[i].strip()
        if "#" in text:
            return True
        if text.startswith(("if ", "try:")):
            return i > 0 and source[i - 1].strip().startswith("#")
        if not (text == "" or text.startswith(("import ", "from "))):
            return False
        i -= 1
    return False


def test_every_function_level_import_says_why():
    """A function-level import is for a stated reason (the CLI starts without torch, an optional or heavy
    dependency): a comment at the import, or above its block, says which; the rest are at module level."""
    silent = []
    for path in sorted((SRC / "r2f").rglob("*.py")):
        source = path.read_text(encoding="utf-8").splitlines()
        silent += [f"{path.relative_to(SRC)}:{n}" for n in _function_level_imports(path) if not _says_why(source, n)]
    assert silent == []


def test_r2f_keeps_no_module_level_state_behind_global_statements():
    """No function rebinds a module global (``global x``): state is passed, or cached by a pure constructor."""
    found = [f"{path.relative_to(SRC)}:{node.lineno}" for path in sorted((SRC / "r2f").rglob("*.py"))
             for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))) if isinstance(node, ast.Global)]
    assert found == []
