"""No import cycle in the library (ercpipe/) or the benchmarks (bench/): every import points down the layers
io -> datasets / model -> features -> anchors -> train -> infer -> cli (docs/design.md).

The imports are read with ast, not by importing, so an import inside a function (the usual way a cycle
hides) counts as much as one at the top of a file, and so does a module named by a string in a lazy
registry (`ercpipe.features.EXTRACTORS`, `ercpipe.train._LAZY`): that string is an import made later.
A submodule's implicit import of its own parent package is not an edge (the parent's __init__ re-exports
its submodules; that is the package's own business, not a dependency between layers).
"""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOTS = ("ercpipe", "bench")


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every .py under the roots (bench's files import each other by their
    bare name, the folder being on sys.path, so they are named both ways)."""
    found = {}
    for root in ROOTS:
        for path in sorted((REPO / root).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


MODULES = _modules()
BENCH_BARE = {name.split(".", 1)[1]: name for name in MODULES if name.startswith("bench.")}


def _resolve(name: str) -> str | None:
    if name in MODULES:
        return name
    return BENCH_BARE.get(name)


def imports_of(module: str, path: Path) -> set[str]:
    """Every module of the roots that `module` imports, anywhere in the file."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            # `from ercpipe.x import y`: y is the submodule when there is one, else a name of ercpipe.x
            names = [f"{base}.{alias.name}" if _resolve(f"{base}.{alias.name}") else base for alias in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _resolve(node.value) \
                and "." in node.value:
            names = [node.value]  # a lazy registry entry (importlib.import_module later)
        for name in names:
            target = _resolve(name)
            if target is None:
                # `import ercpipe.a.b.c` where c is a name: the deepest module of the path
                parts = name.split(".")
                while parts and not _resolve(".".join(parts)):
                    parts.pop()
                target = _resolve(".".join(parts)) if parts else None
            if target and target != module and not module.startswith(target + "."):
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    return {module: imports_of(module, path) for module, path in MODULES.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return components


def _describe(component: list[str], graph: dict[str, set[str]]) -> str:
    members = set(component)
    edges = [f"{a} -> {b}" for a in component for b in sorted(graph[a] & members)]
    return "cycle among " + ", ".join(component) + ":\n    " + "\n    ".join(edges)


def test_the_parser_sees_imports_inside_functions_and_lazy_registries(tmp_path):
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from ercpipe.io import features\n"
                      "LAZY = {'load_model': 'ercpipe.model.checkpoint'}\n")
    assert imports_of("probe", source) >= {"ercpipe.io.features", "ercpipe.model.checkpoint"}
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_in_the_library_or_the_benchmarks():
    graph = import_graph()
    assert "ercpipe.train.trainer" in graph and "bench.bench_text" in graph
    cycles = find_cycles(graph)
    assert not cycles, "\n".join(_describe(c, graph) for c in cycles)


if __name__ == "__main__":
    graph = import_graph()
    for c in find_cycles(graph):
        print(_describe(c, graph))
