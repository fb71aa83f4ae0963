"""The shape of holo_mlx/ read from its source: no import circle anywhere, and the engine and the
server reach the model families only through the registry (models/__init__.py) and the family
interface (models/base.py, models/cache.py)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "holo_mlx"
FAMILY_INTERFACE = {"holo_mlx.models", "holo_mlx.models.base", "holo_mlx.models.cache"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The holo_mlx modules a file imports anywhere in it (function-level imports included: they
    make a circle as surely, only later)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:  # `from . import kernels` imports a module, `from .x import f` x
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
    return {module for module in found if module in modules}


def graph() -> dict[str, set[str]]:
    modules = source_modules()
    return {name: imports(path, modules) - {name} for name, path in modules.items()}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def family_modules(modules) -> set[str]:
    """Modules of the family folders under holo_mlx/models/ (each folder is a family)."""
    families = {path.name for path in (PACKAGE / "models").iterdir() if (path / "__init__.py").exists()}
    return {name for name in modules if name.split(".")[2:3] and name.split(".")[2] in families}


def test_names_outside_the_families_say_what_they_hold():
    """No two modules (outside the family folders, which each have a config.py, a weights.py...)
    share a file name, and no two classes share a name: a reader never wonders which is meant."""
    modules = source_modules()
    outside = {name: path for name, path in modules.items() if name not in family_modules(modules)}
    files = [path.name for path in outside.values() if path.name != "__init__.py"]
    assert sorted({name for name in files if files.count(name) > 1}) == []
    classes = [node.name for path in outside.values() for node in ast.walk(ast.parse(path.read_text()))
               if isinstance(node, ast.ClassDef)]
    assert sorted({name for name in classes if classes.count(name) > 1}) == []


def test_no_import_circle_in_holo_mlx():
    assert circles(graph()) == []


def test_the_circle_finder_finds_one():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("layer", ["holo_mlx.engine", "holo_mlx.server"])
def test_engine_and_server_reach_families_only_through_the_registry(layer):
    edges = graph()
    families = family_modules(edges)
    assert families, "no family folder found under holo_mlx/models/"
    # Everything the layer imports, directly or through other modules, except what the registry
    # itself loads (that is its job).
    reached, todo = set(), [name for name in edges if name.startswith(layer)]
    while todo:
        name = todo.pop()
        if name in reached:
            continue
        reached.add(name)
        if name != "holo_mlx.models":
            todo.extend(edges[name])
    assert not reached & families, sorted(reached & families)
    touched = {name for name in reached if name.startswith("holo_mlx.models")}
    shared_pieces = touched - FAMILY_INTERFACE
    # Shared model pieces (decoder, layers) are the families' business, not the engine's.
    assert not shared_pieces, sorted(shared_pieces)
