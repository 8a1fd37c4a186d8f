"""The shape of the code: no import cycle among the project's modules, and layers that point one way.

Reads every ``import`` statement with ``ast`` (module level and inside functions: a lazy import is still a
dependency), so nothing is imported to check it.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pipeline", "export", "app_pages")
# Each module's layer: the longest prefix of its dotted name listed here.
LAYER_OF = {
    "pipeline": "pipeline",  # the package's own (empty) __init__
    "pipeline.host": "host",
    "pipeline.config": "settings",
    "pipeline.backbones": "settings",
    "pipeline.data": "data",
    "pipeline.runs": "runs",
    "pipeline.training": "training",
    "pipeline.quality": "quality",
    "pipeline.jobs": "jobs",
    "pipeline.tuning": "tuning",
    "pipeline.__main__": "cli",
    "export": "export",
    "app_pages": "app",
    "streamlit_app": "app",
    "app_server": "app_server",
}
_PIPELINE = ("host", "settings", "data", "runs", "training")
# What each layer may import from the project, pointing one way:
# host <- settings <- data <- runs <- training <- quality, jobs <- tuning, export <- cli, app.
# A study (tuning) exports its trials through `python -m export` in a child process, not by importing it.
ALLOWED = {
    "pipeline": set(),
    "host": {"host"},
    "settings": {"host", "settings"},
    "data": {"host", "settings", "data"},
    "runs": {"host", "settings", "data", "runs"},
    "training": set(_PIPELINE),
    "quality": {*_PIPELINE, "quality"},
    "jobs": {*_PIPELINE, "jobs"},
    "tuning": {*_PIPELINE, "jobs", "tuning"},
    # the top: `predict --model` runs export's runtimes
    "cli": {*_PIPELINE, "quality", "jobs", "tuning", "cli", "export"},
    "export": {*_PIPELINE, "quality", "jobs", "export"},
    "app": {*_PIPELINE, "quality", "jobs", "tuning", "export", "app"},
    "app_server": {"app"},
}


def layer(module: str) -> str:
    """The layer a module belongs to (the longest listed prefix of its name)."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if (prefix := ".".join(parts[:n])) in LAYER_OF:
            return LAYER_OF[prefix]
    raise AssertionError(f"{module} belongs to no layer: add its package to LAYER_OF")


def project_modules() -> dict[str, Path]:
    """Every project module by dotted name (package ``__init__`` files under the package's own name)."""
    modules = {"streamlit_app": ROOT / "streamlit_app.py", "app_server": ROOT / "app_server.py"}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


def imports_of(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The project modules that ``name`` (at ``path``) imports, resolved to module names.

    Importing a package by name (``from pipeline import data``, ``from pipeline.data import scan`` where ``scan``
    is a function re-exported by ``pipeline/data/__init__.py``) depends on its ``__init__``, which imports its
    submodules: a submodule importing its own package by name is a cycle, and is reported as one.
    """
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            # `from a.b import c` is module a.b.c when c is a module, else a name in a.b
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imports_of(path, name, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = finished
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import that points against the layers, as "a imports b"."""
    return [
        f"{name} imports {target}"
        for name, targets in sorted(graph.items())
        for target in sorted(targets)
        if layer(target) not in ALLOWED[layer(name)]
    ]


def test_layers_point_one_way():
    wrong = layer_violations(import_graph())
    assert not wrong, "; ".join(wrong)


def test_the_checks_can_fail():
    """The walker sees lazy imports, the cycle finder reports a planted cycle, the layer check a planted
    upward import."""
    graph = import_graph()
    assert "pipeline.jobs.ray_backend" in graph["pipeline.jobs.backends"]  # imported inside get_backend()
    planted = {**graph, "pipeline.config": graph["pipeline.config"] | {"pipeline.jobs.backends"}}
    cycle = find_cycle(planted)
    assert cycle is not None and cycle[0] == cycle[-1]
    upward = {
        **graph,
        "pipeline.config": graph["pipeline.config"] | {"export.bundle"},
        "export.bundle": graph["export.bundle"] | {"app_pages.shared"},
    }
    assert layer_violations(upward) == [
        "export.bundle imports app_pages.shared",
        "pipeline.config imports export.bundle",
    ]
    inside = {
        **graph,
        "pipeline.host.paths": graph["pipeline.host.paths"] | {"pipeline.jobs.store"},
        "pipeline.data.sources": graph["pipeline.data.sources"] | {"pipeline.training.model"},
        "pipeline.training.train": graph["pipeline.training.train"] | {"pipeline.quality.estimate"},
    }
    assert layer_violations(inside) == [
        "pipeline.data.sources imports pipeline.training.model",
        "pipeline.host.paths imports pipeline.jobs.store",
        "pipeline.training.train imports pipeline.quality.estimate",
    ]


def test_every_module_has_a_layer():
    """A new package is placed in the layers before it is used (else the layer check would not see it)."""
    for name in import_graph():
        assert layer(name) in ALLOWED, name


def test_packages_are_walked_through_their_init():
    """A package's ``__init__`` is a module of the graph: callers depend on it, it on its submodules, and a
    submodule importing its own package by name (not its sibling module) is a cycle."""
    graph = import_graph()
    assert "pipeline.data" in graph["pipeline.data.revision"]  # from pipeline.data import ... (re-exported names)
    assert "pipeline.data.scanning" in graph["pipeline.data"]
    assert (
        "pipeline.data.errors" in graph["pipeline.data.scanning"]
        and "pipeline.data" not in graph["pipeline.data.scanning"]
    )
    planted = {**graph, "pipeline.data.errors": graph["pipeline.data.errors"] | {"pipeline.data"}}
    cycle = find_cycle(planted)
    assert cycle is not None and "pipeline.data" in cycle and "pipeline.data.errors" in cycle
