"""The import graph of the distribution has no cycle, between files or between subpackages.

Every ``import`` / ``from ... import`` node of every .py file counts, wherever it sits (module level, inside a
function, under ``if``): an import inside a function is still a dependency. Relative imports are resolved.
``from pkg import name`` is an import of ``pkg`` (its ``__init__``: an import of a package's ``__init__`` counts as an
import of that package) and also of ``pkg.name`` when that is a module; ``import a.b.c`` is an import of ``a.b.c``.

Units: a file is its module (``edit_rlhf.rrm.engine``, ``edit_rlhf.pipelines.grpo``); a subpackage is the second
component (``edit_rlhf.rrm``, ``edit_rlhf.pipelines``; a top-level module such as ``edit_rlhf.cli`` is its own unit).
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Folder -> package name, as setup.py's package_dir maps them.
PACKAGE_DIRS = {
    "edit_rlhf": ROOT / "edit_rlhf",
    "edit_rlhf.actors": ROOT / "actors",
    "edit_rlhf.pipelines": ROOT / "pipelines",
    "edit_rlhf.cluster": ROOT / "cluster",
}


def module_files() -> dict[str, Path]:
    """Module name -> file, for every .py file of the distribution (a package is named by its ``__init__``)."""
    out: dict[str, Path] = {}
    for package, folder in PACKAGE_DIRS.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join([package, *parts])
            if name in out:
                raise AssertionError(f"{path}: module {name} is also {out[name]}")
            out[name] = path
    return out


def _is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The distribution's modules that ``path`` imports, anywhere in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if _is_package(path) else module.rpartition(".")[0]
    found: set[str] = set()

    def nearest(name: str) -> str | None:
        # ``import a.b.c`` loads a.b.c; the longest prefix that is one of ours is the dependency.
        while name:
            if name in modules:
                return name
            name = name.rpartition(".")[0]
        return None

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if (target := nearest(alias.name)) is not None:
                    found.add(target)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                if node.level > 1:
                    base_parts = base_parts[: -(node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            # ``from X import name`` runs X first (a package's ``__init__``), then loads X.name if it is a module.
            if (target := nearest(base)) is not None:
                found.add(target)
            for alias in node.names:
                if f"{base}.{alias.name}" in modules:
                    found.add(f"{base}.{alias.name}")
    found.discard(module)
    return found


def unit_of(module: str) -> str:
    """The subpackage a module belongs to: its first two components (``edit_rlhf.rrm``)."""
    return ".".join(module.split(".")[:2])


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as the nodes along it (first node repeated at the end), or None."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = {node: WHITE for node in graph}
    for start in sorted(graph):
        if colour[start] != WHITE:
            continue
        stack: list[tuple[str, list[str]]] = [(start, sorted(graph[start]))]
        path = [start]
        colour[start] = GREY
        while stack:
            node, todo = stack[-1]
            if not todo:
                colour[node] = BLACK
                stack.pop()
                path.pop()
                continue
            nxt = todo.pop(0)
            if colour.get(nxt, BLACK) == GREY:
                return path[path.index(nxt):] + [nxt]
            if colour.get(nxt) == WHITE:
                colour[nxt] = GREY
                path.append(nxt)
                stack.append((nxt, sorted(graph.get(nxt, ()))))
    return None


def file_graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def unit_graph(files: dict[str, set[str]]) -> dict[str, set[str]]:
    units: dict[str, set[str]] = {}
    for module, targets in files.items():
        edges = units.setdefault(unit_of(module), set())
        edges.update(unit_of(t) for t in targets if unit_of(t) != unit_of(module))
    return units


def _why(files: dict[str, set[str]], cycle: list[str]) -> str:
    """For a subpackage cycle, the file imports behind each edge."""
    lines = []
    for a, b in zip(cycle, cycle[1:]):
        pairs = sorted(f"{m} -> {t}" for m, ts in files.items() if unit_of(m) == a for t in ts if unit_of(t) == b)
        lines.append(f"  {a} -> {b}: " + "; ".join(pairs))
    return "\n".join(lines)


def test_resolver_sees_the_whole_distribution():
    files = file_graph()
    # Spot checks that the walk sees all four folders and resolves relative and function-level imports.
    for name in ("edit_rlhf.cli", "edit_rlhf.pipelines.grpo", "edit_rlhf.actors.learner", "edit_rlhf.cluster.pools"):
        assert name in files, name
    assert sum(len(t) for t in files.values()) > 200


def test_resolver_reads_relative_and_nested_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from .b import x\n")
    (pkg / "sub" / "a.py").write_text("def f():\n    from ..c import y\n    from . import b\n    import pkg.sub\n")
    (pkg / "sub" / "b.py").write_text("")
    (pkg / "c.py").write_text("")
    modules = {"pkg": pkg / "__init__.py", "pkg.sub": pkg / "sub" / "__init__.py", "pkg.sub.a": pkg / "sub" / "a.py",
               "pkg.sub.b": pkg / "sub" / "b.py", "pkg.c": pkg / "c.py"}
    assert imports_of("pkg.sub.a", modules["pkg.sub.a"], modules) == {"pkg.c", "pkg.sub.b", "pkg.sub"}
    assert imports_of("pkg.sub", modules["pkg.sub"], modules) == {"pkg.sub.b"}


def test_find_cycle_reports_the_modules_along_it():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_cycle_between_files():
    files = file_graph()
    cycle = find_cycle(files)
    assert cycle is None, "import cycle between files:\n  " + "\n  -> ".join(cycle)


def test_no_cycle_between_subpackages():
    files = file_graph()
    cycle = find_cycle(unit_graph(files))
    assert cycle is None, ("import cycle between subpackages:\n  " + " -> ".join(cycle)
                           + "\nbecause:\n" + _why(files, cycle))
