"""The package's shape: layers that import one way, no import cycles, and function-local imports only
where a comment says why (an optional dependency, or a measured start-up cost).

The graph is read from the source with ``ast`` (every import, at module level or in a function).
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mixtrain"

# Bottom to top: a module may import its own layer and the ones below, never one above.
LAYERS = [
    ("mixtrain.errors", "mixtrain.files", "mixtrain.layout"),  # names and writers every layer uses
    ("mixtrain.config",),  # schemas, their checks, the registries' data
    ("mixtrain.runtime",),  # device, precision, torchrun
    ("mixtrain.data", "mixtrain.models", "mixtrain.mixing", "mixtrain.loggers"),  # the kinds of options, each registering itself
    ("mixtrain.artifacts", "mixtrain.options"),  # checkpoints and the model in them; every option registered
    ("mixtrain.evaluate",),  # metrics, calibration, bootstrap, robustness, mixtrain eval
    ("mixtrain.train",),  # the step, the Trainer, its parts, a run
    ("mixtrain.runs", "mixtrain.inference"),  # run dirs, launch, report, compare, recipes; predict, export
    ("mixtrain.cli", "mixtrain.__main__", "mixtrain"),  # the command line; the package's load_model
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported(node, here: str):
    """The mixtrain modules an import statement names (``from mixtrain.x import y``: ``mixtrain.x.y`` when
    that is a module, else ``mixtrain.x``)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "mixtrain"]
    base = node.module or ""
    if node.level:  # relative
        base = ".".join(here.split(".")[: len(here.split(".")) - node.level + (here in PACKAGES)] + [base]).strip(".")
    if base.split(".")[0] != "mixtrain":
        return []
    return [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]


PACKAGES = {name for name, path in MODULES.items() if path.name == "__init__.py"}


def graph():
    edges = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        edges[name] = {m for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                       for m in imported(node, name) if m != name}
    return edges


def layer(module: str) -> int:
    best = max((prefix for group in LAYERS for prefix in group if module == prefix or module.startswith(prefix + ".")),
               key=len)
    return next(i for i, group in enumerate(LAYERS) if best in group)


def test_every_module_has_a_layer():
    for name in MODULES:
        layer(name)


def test_no_module_imports_a_layer_above_its_own():
    climbs = [f"{a} ({layer(a)}) -> {b} ({layer(b)})" for a, targets in graph().items() for b in targets
              if layer(b) > layer(a)]
    assert climbs == []


def test_no_import_cycles():
    edges = graph()
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
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
                cycles.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    assert cycles == []


def local_imports():
    for name, path in MODULES.items():
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for sub in ast.walk(node):
                    if isinstance(sub, (ast.Import, ast.ImportFrom)):
                        yield name, sub.lineno, lines[sub.lineno - 1], block_comment(lines, sub.lineno - 1)


def block_comment(lines, index: int) -> str:
    """The line above the block of imports (and blank lines) that line ``index`` is in."""
    index -= 1
    while index >= 0 and (not lines[index].strip() or lines[index].strip().startswith(("from ", "import ", ")"))
                          or lines[index].startswith(" " * 12)):
        index -= 1
    return lines[index] if index >= 0 else ""


@pytest.mark.parametrize("name,line,text,above", list(local_imports()), ids=lambda v: str(v)[:40])
def test_a_function_local_import_says_why(name, line, text, above):
    assert "#" in text or above.strip().startswith("#"), f"{name}:{line}: {text.strip()}"


def test_the_graph_is_read():
    edges = graph()
    assert "mixtrain.config.registry" in edges["mixtrain.mixing.method"]
    assert "mixtrain.train.training" in edges["mixtrain.cli"]
