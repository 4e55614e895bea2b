"""The package's import graph: no circles, and nothing outside ``cxrkit.cli`` imports from it.

The graph is built with :mod:`ast` from every module under ``cxrkit/``: an
``import`` or ``from ... import`` anywhere in a module (module level or inside
a function) is an arrow; imports under ``if TYPE_CHECKING:`` are not. The
MONAI Label app's ``lib.*`` modules (imported so by MONAI Label) are
``cxrkit.label.app.lib.*``. ``docs/architecture.md`` must list every module.
"""

from __future__ import annotations

import ast
from pathlib import Path

from support.paths import REPO

PACKAGE = REPO / "cxrkit"
#: program entry points (``python -m cxrkit``): they start the command line, nothing imports them.
ENTRY_POINTS = {"cxrkit.__main__"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If):
            test = node.test
            name = test.id if isinstance(test, ast.Name) else test.attr if isinstance(test, ast.Attribute) else None
            if name == "TYPE_CHECKING":
                skipped |= {id(n) for child in node.body for n in ast.walk(child)}
    return skipped


def import_graph() -> dict[str, set[str]]:
    """module -> the cxrkit modules it imports."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}

    def target(name: str) -> str | None:
        if name.startswith("lib.") or name == "lib":
            name = "cxrkit.label.app." + name
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skipped = _type_checking_nodes(tree)
        arrows: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                    base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            for name in names:
                if name.split(".")[0] in ("cxrkit", "lib"):
                    found = target(name)
                    if found and found != module:
                        arrows.add(found)
        graph[module] = arrows
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle, as a list of modules, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_graph_sees_function_level_imports_and_skips_type_checking(tmp_path):
    graph = import_graph()
    assert "cxrkit.bundle.runner" in graph["cxrkit.cli.run_cmd"] or "cxrkit.api" in graph["cxrkit.cli.run_cmd"]
    assert "cxrkit.engine.hardware" in graph["cxrkit.serve.model"]  # imported inside a function
    assert "cxrkit.label.app.lib.infers" in graph["cxrkit.label.app.main"]  # `from lib.infers import ...`
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle or [])


def test_nothing_outside_the_cli_imports_the_cli():
    upward = sorted(f"{module} -> {target}" for module, targets in import_graph().items() for target in targets
                    if target.startswith("cxrkit.cli") and not module.startswith("cxrkit.cli")
                    and module not in ENTRY_POINTS)
    assert upward == [], "the CLI is a thin layer over the API; these modules import from it: " + ", ".join(upward)


def test_architecture_doc_lists_every_module():
    doc = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    table = doc.split("## Modules", 1)[1].split("\n## ", 1)[0]
    listed = {line.split("|")[1].strip().strip("`") for line in table.splitlines() if line.startswith("| `")}
    modules = set(import_graph())
    assert sorted(modules - listed) == [], "docs/architecture.md does not list these modules"
    assert sorted(listed - modules) == [], "docs/architecture.md lists modules that do not exist"
