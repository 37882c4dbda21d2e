"""The package's layout rules, checked by reading the source with `ast` (nothing is imported).

- no import cycle between llm_al modules (imports at the top of a file and inside functions both count);
- imports point down the layers (LAYERS below, as README "How the code is laid out" lists them);
- no private name (`_x`, not a dunder) imported from another llm_al module;
- no file over 450 lines unless its module docstring has a line starting "Over 450 lines because";
- no function over 80 lines, except argument-parser tables (a name containing "parser").
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "llm_al"
MAX_FILE_LINES = 450
LAYERS = [   # bottom first; a module may import from its own layer and the ones below
    ("base", ["llm_al", "llm_al.errors", "llm_al.io", "llm_al.registry", "llm_al.registries", "llm_al.seeds",
              "llm_al.types", "llm_al.models", "llm_al.doctor", "llm_al.metrics_evaluate"]),
    ("data", ["llm_al.data"]),
    ("config", ["llm_al.config"]),
    ("features", ["llm_al.features"]),
    ("model steps", ["llm_al.train", "llm_al.train_grouped", "llm_al.grouped", "llm_al.evaluate", "llm_al.decode",
                     "llm_al.metrics"]),
    ("selection", ["llm_al.strategies", "llm_al.orderings"]),
    ("analysis", ["llm_al.analysis"]),
    ("run", ["llm_al.run", "llm_al.harness"]),
    ("api", ["llm_al.api"]),
    ("cli", ["llm_al.cli"]),
]
MAX_FUNCTION_LINES = 80


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute name a `from ... import` reads from."""
    if not node.level:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(known: dict[str, Path]) -> list[tuple[str, str, str | None, int]]:
    """Every import of an llm_al module, as (importer, imported module, name imported or None, line)."""
    found = []
    for module, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == "llm_al":
                        found.append((module, alias.name, None, node.lineno))
            elif isinstance(node, ast.ImportFrom):
                source = _resolve(module, path, node)
                if source.split(".")[0] != "llm_al":
                    continue
                for alias in node.names:
                    sub = f"{source}.{alias.name}"
                    if sub in known:                       # `from llm_al import x`, x a submodule
                        found.append((module, sub, None, node.lineno))
                    else:
                        found.append((module, source, alias.name, node.lineno))
    return found


def import_graph() -> dict[str, set[str]]:
    known = modules()
    graph: dict[str, set[str]] = {m: set() for m in known}
    for importer, imported, _, _ in imports(known):
        target = imported
        while target not in known and "." in target:          # `import llm_al.a.b.name`: the module
            target = target.rsplit(".", 1)[0]
        if target not in known:
            continue
        # importing llm_al.a.b also runs the package llm_al.a's __init__ first: an edge to every
        # enclosing package too, except the importer's own (already being imported when it runs)
        parts = target.split(".")
        for i in range(2, len(parts) + 1):
            dep = ".".join(parts[:i])
            own = importer == dep or importer.startswith(dep + ".")
            if dep in known and not own:
                graph[importer].add(dep)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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


def _one_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """A concrete path a -> b -> ... -> a inside a strongly connected component, to print."""
    members = set(component)
    start = component[0]
    parents = {start: None}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    path = [v]
                    while parents[path[-1]] is not None:
                        path.append(parents[path[-1]])
                    return list(reversed(path)) + [start]
                if w not in parents:
                    parents[w] = v
                    nxt.append(w)
        frontier = nxt
    return component


def test_graph_sees_in_function_and_relative_imports(tmp_path):
    tree = ast.parse("from . import x\nfrom .y import _z\ndef f():\n    from llm_al.w import v\n")
    nodes = [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert [_resolve("llm_al.pkg.mod", PACKAGE / "pkg" / "mod.py", n) for n in nodes] == \
        ["llm_al.pkg", "llm_al.pkg.y", "llm_al.w"]
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    graph = import_graph()
    cycles = find_cycles(graph)
    described = [f"{len(c)} modules: {' -> '.join(_one_cycle(graph, c))}\n  all: {', '.join(c)}" for c in cycles]
    assert not cycles, "import cycles:\n" + "\n".join(described)


def layer_of(module: str) -> int:
    best = None
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or (prefix != "llm_al" and module.startswith(prefix + ".")):
                best = rank
    assert best is not None, f"{module} is in no layer of tests/test_layout.py's LAYERS"
    return best


def test_imports_point_down_the_layers():
    graph = import_graph()
    up = [f"{a} ({LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]})"
          for a, targets in sorted(graph.items()) for b in sorted(targets) if layer_of(b) > layer_of(a)]
    assert not up, "imports that point up a layer:\n" + "\n".join(up)


def test_no_private_name_imported_across_modules():
    private = [f"{importer} imports {imported}.{name} (line {line})"
               for importer, imported, name, line in imports(modules())
               if name and name.startswith("_") and not (name.startswith("__") and name.endswith("__"))
               and imported != importer]
    assert not private, "private names imported across modules:\n" + "\n".join(private)


def _has_reason(path: Path) -> bool:
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    return any(line.strip().startswith("Over 450 lines because") for line in doc.splitlines())


def test_no_long_file_without_a_reason():
    long = [f"{_module_name(p)}: {n} lines" for p in modules().values()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_FILE_LINES and not _has_reason(p)]
    assert not long, f"files over {MAX_FILE_LINES} lines with no reason at the top:\n" + "\n".join(long)


def test_no_long_function():
    long = []
    for module, path in modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and "parser" not in node.name:
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long.append(f"{module}.{node.name}: {n} lines")
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(sorted(long))


@pytest.mark.parametrize("rule", ["cycle", "private"])
def test_rules_catch_a_planted_violation(tmp_path, monkeypatch, rule):
    """The checks are not vacuous: a planted cycle or private import in a copy of the tree is found."""
    pkg = tmp_path / "llm_al"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    if rule == "cycle":
        (pkg / "a.py").write_text("def f():\n    from llm_al import b\n")
        (pkg / "b.py").write_text("from .a import f\n")
    else:
        (pkg / "a.py").write_text("_helper = 1\n")
        (pkg / "b.py").write_text("def f():\n    from llm_al.a import _helper\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", pkg)
    with pytest.raises(AssertionError):
        (test_no_import_cycle if rule == "cycle" else test_no_private_name_imported_across_modules)()
