"""The package's import graph, read from its source with `ast` (README *Layout*).

Layers point down only:

    config, study, paths, io, errors, datasets, options, models, losses  ->  data  ->  methods  ->  train,
      checkpoints  ->  evals  ->  tasks, report  ->  workflow, launch, plan, bench  ->  cli

A module may import from its own layer or any layer below, never above; the packages that share a
layer side by side (tasks and report; workflow, launch, plan and bench) never import each other;
the graph has no cycle, counting imports inside functions too. A function-local import of a cmim
module is allowed only where it keeps a heavy dependency (torch, pandas, ...) out of a light path
such as `python -m cmim validate`, never to dodge a cycle: so its target must pull in one.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "cmim"

LAYERS = (
    ("errors", "io", "paths", "datasets", "options", "config_schema", "study", "config", "models", "losses"),
    ("data",),
    ("methods",),
    ("train", "checkpoints"),
    ("evals",),
    ("tasks", "report"),
    ("workflow", "launch", "plan", "bench"),
    ("cli", "__main__"),
)
SIDE_BY_SIDE = ({"tasks", "report"}, {"workflow", "launch", "plan", "bench"})
HEAVY = {"torch", "torchvision", "timm", "webdataset", "submitit", "pandas", "matplotlib", "pycocotools", "cv2",
         "skimage", "scipy", "sklearn", "tensorboard", "safetensors"}


@dataclass(frozen=True)
class Import:
    source: str          # importing module, e.g. cmim.report.specs
    target: str          # imported module, e.g. cmim.config
    line: int
    local: bool          # inside a function (or class body), not at module level


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(node: ast.ImportFrom, source: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = source.split(".") if is_package else source.split(".")[:-1]
    base = base[: len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _top_level_nodes(tree: ast.Module) -> set[int]:
    """ids of import nodes at module level (incl. inside module-level if/try blocks)."""
    out: set[int] = set()

    def walk(body):
        for node in body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                out.add(id(node))
            elif isinstance(node, (ast.If, ast.Try, ast.With)):
                walk(node.body)
                walk(getattr(node, "orelse", []))
                walk(getattr(node, "finalbody", []))
                for handler in getattr(node, "handlers", []):
                    walk(handler.body)

    walk(tree.body)
    return out


def imports_of(name: str, path: Path, known: dict[str, Path]) -> tuple[list[Import], set[str]]:
    """(cmim imports, third-party top-level packages imported at module level)."""
    tree = ast.parse(path.read_text())
    top = _top_level_nodes(tree)
    out, external = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("cmim"):
                    out.append(Import(name, alias.name, node.lineno, id(node) not in top))
                elif id(node) in top:
                    external.add(alias.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom):
            module = _resolve(node, name, path.name == "__init__.py")
            if not module.startswith("cmim"):
                if id(node) in top and not node.level and module != "__future__":
                    external.add(module.split(".")[0])
                continue
            for alias in node.names:
                full = f"{module}.{alias.name}"
                out.append(Import(name, full if full in known else module, node.lineno, id(node) not in top))
    return out, external


def graph() -> tuple[dict[str, list[Import]], dict[str, set[str]]]:
    known = modules()
    edges, external = {}, {}
    for name, path in known.items():
        edges[name], external[name] = imports_of(name, path, known)
    return edges, external


def part(module: str) -> str:
    """cmim.report.specs -> report; cmim -> '' (the package's own __init__)."""
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else ""


def layer(module: str) -> int:
    p = part(module)
    if p == "":
        return 0
    for i, names in enumerate(LAYERS):
        if p in names:
            return i
    raise AssertionError(f"{module}: not in any layer of tests/test_layers.py; add it to LAYERS")


def test_every_module_has_a_layer():
    for name in modules():
        layer(name)


def test_imports_only_point_down():
    edges, _ = graph()
    upward = [f"{i.source}:{i.line} imports {i.target} (layer {layer(i.target)} above {layer(i.source)})"
              for imps in edges.values() for i in imps if layer(i.target) > layer(i.source)]
    assert not upward, "\n".join(upward)


def test_side_by_side_packages_do_not_import_each_other():
    edges, _ = graph()
    crossing = [f"{i.source}:{i.line} imports {i.target}" for imps in edges.values() for i in imps
                if part(i.source) != part(i.target)
                and any({part(i.source), part(i.target)} <= group for group in SIDE_BY_SIDE)]
    assert not crossing, "\n".join(crossing)


def test_no_import_cycle_counting_function_local_imports():
    edges, _ = graph()
    adjacency = {m: sorted({i.target for i in imps if i.target != m and i.target in edges})
                 for m, imps in edges.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for t in adjacency[m]:
            if state.get(t) == 1:
                return stack[stack.index(t):] + [t]
            if t not in state and (cycle := visit(t)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in adjacency:
        if m not in state and (cycle := visit(m)):
            raise AssertionError("import cycle: " + " -> ".join(cycle))


def heavy_closure(edges: dict[str, list[Import]], external: dict[str, set[str]]) -> dict[str, bool]:
    """module -> does importing it pull in a heavy third-party package (at module level, transitively)?"""
    memo: dict[str, bool] = {}

    def heavy(m: str, seen: frozenset) -> bool:
        if m in memo:
            return memo[m]
        if external.get(m, set()) & HEAVY:
            memo[m] = True
            return True
        parents = [".".join(m.split(".")[:k]) for k in range(1, len(m.split(".")))]   # packages run first
        found = any(heavy(t, seen | {m}) for t in
                    [i.target for i in edges.get(m, []) if not i.local] + [p for p in parents if p in edges]
                    if t not in seen and t in edges)
        memo[m] = found
        return found

    return {m: heavy(m, frozenset()) for m in edges}


def test_function_local_imports_only_keep_heavy_dependencies_lazy():
    edges, external = graph()
    heavy = heavy_closure(edges, external)
    needless = [f"{i.source}:{i.line} imports {i.target} inside a function, but it is light: import it at the top"
                for imps in edges.values() for i in imps
                if i.local and i.target in heavy and not heavy[i.target] and not heavy[i.source]]
    assert not needless, "\n".join(needless)


def test_no_hidden_or_guarded_imports():
    """No __import__ / importlib of cmim modules, no cmim import guarded by `except ImportError`."""
    problems = []
    for name, path in modules().items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                fn = node.func
                called = fn.id if isinstance(fn, ast.Name) else fn.attr if isinstance(fn, ast.Attribute) else ""
                text = ast.unparse(node)
                if called in ("__import__", "import_module") and "cmim" in text:
                    problems.append(f"{name}:{node.lineno}: {text}")
            if isinstance(node, ast.Try) and any(
                    isinstance(h.type, ast.Name) and h.type.id in ("ImportError", "ModuleNotFoundError")
                    for h in node.handlers):
                guarded = [n for n in ast.walk(ast.Module(body=node.body, type_ignores=[]))
                           if isinstance(n, ast.ImportFrom) and (n.module or "").startswith("cmim")]
                problems += [f"{name}:{n.lineno}: cmim import guarded by except ImportError" for n in guarded]
    assert not problems, "\n".join(problems)


def test_no_module_over_400_lines():
    long = {name: n for name, p in modules().items() if (n := len(p.read_text().splitlines())) > 400}
    assert not long, f"split these along their seams: {long}"
