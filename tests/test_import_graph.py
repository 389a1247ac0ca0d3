"""cmkit's import graph (module-level and function-level imports, read from the source): no cycles."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "cmkit"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Each cmkit module -> the cmkit modules it imports anywhere in its body (``from .x import y`` counts ``x``,
    and ``x.y`` too when ``y`` is a submodule)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    stem = ".".join(base + ([node.module] if node.module else []))
                else:
                    stem = node.module or ""
                targets = [stem] + [f"{stem}.{a.name}" for a in node.names]
            else:
                continue
            for target in (t for t in targets if t in modules):
                parts = target.split(".")
                # importing a.b.c runs a/__init__ and a/b/__init__ first (those above ``name`` already run)
                implied = {".".join(parts[:i]) for i in range(2, len(parts))}
                graph[name].update(m for m in implied | {target} if m != name and not name.startswith(m + "."))
    return graph


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


#: the sampling, scheduler, pipeline and editing layers (issue 10): none of them may sit on an import cycle.
SAMPLING_LAYERS = ("cmkit.karras", "cmkit.sampling", "cmkit.schedulers", "cmkit.pipeline", "cmkit.editing",
                   "cmkit.postprocess", "cmkit._validate", "cmkit.limits")


def test_the_graph_reader_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
    graph = import_graph()
    assert "cmkit.editing.pipeline_edits" in graph["cmkit.pipeline"]  # the pipeline delegates its editing methods
    assert "cmkit.karras" in graph["cmkit.sampling"]


def test_no_import_cycle_through_sampling_schedulers_pipeline_or_editing():
    on_cycles = [c for c in cycles(import_graph()) if any(m.startswith(SAMPLING_LAYERS) for m in c)]
    assert on_cycles == []


def test_editing_and_the_pipeline_types_never_import_the_pipeline():
    graph = import_graph()
    lower = [m for m in graph if m.startswith(("cmkit.editing", "cmkit.pipeline_types", "cmkit.pipeline_inputs",
                                                "cmkit.postprocess", "cmkit.sampling", "cmkit.schedulers"))]
    assert lower and not [m for m in lower if "cmkit.pipeline" in graph[m]]
    assert "cmkit._validate" in graph and not graph["cmkit._validate"]  # the checks import nothing of cmkit


DESIGN = PACKAGE.parent.parent / "docs" / "design.md"


def design_layers() -> dict[str, int]:
    """Top-level module or package of cmkit -> its layer, from the table in docs/design.md."""
    text = DESIGN.read_text()
    block = text.split("<!-- layers:", 1)[1].split("```text", 1)[1].split("```", 1)[0]
    layers: dict[str, int] = {}
    for line in block.strip().splitlines():
        number, _, names = line.partition(" ")
        for name in names.split(":", 1)[1].split():
            layers[name] = int(number)
    return layers


def top_level(module: str) -> str:
    """``cmkit.training.loop`` -> ``training``; ``cmkit.karras`` -> ``karras``."""
    return module.split(".")[1] if "." in module else module


def test_no_import_cycle_anywhere():
    assert cycles(import_graph()) == []


def test_every_import_points_down_the_layers_of_docs_design():
    layers, graph = design_layers(), import_graph()
    tops = {top_level(m) for m in graph if m != "cmkit"}
    assert tops == set(layers), f"docs/design.md's layer table and the package differ: {tops ^ set(layers)}"
    upward = [(m, d) for m, deps in graph.items() if m != "cmkit" for d in deps
              if layers[top_level(d)] > layers[top_level(m)]]
    assert upward == [], f"imports from a lower layer: {upward}"


def test_packages_have_no_layering_cycle():
    packages: dict[str, set[str]] = {}
    for m, deps in import_graph().items():
        if m != "cmkit":
            packages.setdefault(top_level(m), set()).update(top_level(d) for d in deps if top_level(d) != top_level(m))
    assert cycles(packages) == []
    assert cycles({"io": {"models"}, "models": {"io"}}) == [{"io", "models"}]  # the reader sees a package cycle
