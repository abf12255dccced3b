"""The house's layers, as docs/architecture.md draws them, read from the code's own imports (every import, also
those inside functions): no circle among the modules of imgexp/ and hydra_plugins/, no import from a layer into
one above it, tracking/'s own three layers, and every tracking module's first line naming its layer."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Bottom first. A module imports modules of its own layer (without a circle) and of the layers below it.
LAYERS = [
    ("foundation", ["imgexp/__init__.py", "imgexp/config.py", "imgexp/locks.py", "imgexp/redact.py",
                    "imgexp/errors.py", "imgexp/help.py", "imgexp/checkpoint.py", "imgexp/optim.py",
                    "imgexp/optim_schema.py", "imgexp/runtime.py", "imgexp/gpus.py", "imgexp/sweep_overrides.py",
                    "imgexp/sweep_nodes.py"]),
    ("parts", ["imgexp/data/", "imgexp/models/", "imgexp/losses/", "imgexp/train/", "imgexp/analysis/",
               "imgexp/classifier.py"]),
    ("tracking", ["imgexp/tracking/"]),
    ("job", ["imgexp/build.py", "imgexp/start.py", "imgexp/report.py", "imgexp/run.py", "imgexp/launch.py",
             "imgexp/elastic.py"]),
    ("stages", ["imgexp/predict.py", "imgexp/evaluate.py", "imgexp/compare/", "hydra_plugins/", "imgexp/register.py"]),
    ("entry", ["imgexp/__main__.py"]),
]
# tracking/ inside: the bottom imports nothing of tracking/, the middle only the bottom and the middle
TRACKING = [
    ("bottom", ["imgexp/tracking/store.py", "imgexp/tracking/schema.py"]),
    ("middle", ["imgexp/tracking/spool.py", "imgexp/tracking/liveness.py", "imgexp/tracking/logged_model.py",
                "imgexp/tracking/rebuild.py", "imgexp/tracking/resume.py", "imgexp/tracking/reuse.py",
                "imgexp/tracking/trial.py", "imgexp/tracking/pruning.py", "imgexp/tracking/study_plots.py",
                "imgexp/tracking/study_storage.py", "imgexp/tracking/system_metrics.py"]),
    ("top", ["imgexp/tracking/tracker.py", "imgexp/tracking/sweep.py", "imgexp/tracking/__init__.py"]),
]
PACKAGES = ("imgexp", "hydra_plugins")


def modules(root: Path, packages=PACKAGES) -> dict[str, Path]:
    """``{"imgexp.tracking.store": path}`` for every Python file of ``packages`` under ``root``."""
    found = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The modules of ``known`` that module ``name`` imports, anywhere in it (``from pkg import sub`` is ``pkg.sub``
    when ``sub`` is a module, else ``pkg``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def layer_of(path: Path, root: Path, layers) -> int | None:
    relative = path.relative_to(root).as_posix()
    for i, (_, places) in enumerate(layers):
        if any(relative == p or (p.endswith("/") and relative.startswith(p)) for p in places):
            return i
    return None


def violations(root: Path, layers=LAYERS, packages=PACKAGES) -> list[str]:
    """Every circle, every module no layer names, and every import from a layer into a higher one."""
    known = modules(root, packages)
    graph = {name: imports(name, path, known) for name, path in known.items()}
    found = [f"circle: {' <-> '.join(c)}" for c in circles(graph)]
    for name, path in known.items():
        own = layer_of(path, root, layers)
        if own is None:
            found.append(f"{path.relative_to(root)}: in no layer (name it in tests/test_layers.py and "
                         "docs/architecture.md)")
            continue
        for target in sorted(graph[name]):
            theirs = layer_of(known[target], root, layers)
            if theirs is not None and theirs > own:
                found.append(f"upward: {name} ({layers[own][0]}) imports {target} ({layers[theirs][0]})")
    return found


def test_the_house_has_no_circle_and_no_upward_import():
    assert violations(ROOT) == []


def test_tracking_is_in_three_layers():
    tracking = [(n, p) for n, p in modules(ROOT, ("imgexp",)).items() if n.startswith("imgexp.tracking")]
    for name, path in tracking:
        assert layer_of(path, ROOT, TRACKING) is not None, f"{path} is in none of tracking's layers"
    assert violations(ROOT, TRACKING, ("imgexp/tracking",)) == []


@pytest.mark.parametrize("layer, paths", TRACKING[:2] + [("top", TRACKING[2][1][:2])])
def test_each_tracking_module_opens_with_its_layer(layer, paths):
    for relative in paths:
        first = ast.get_docstring(ast.parse((ROOT / relative).read_text())).splitlines()[0]
        assert first.startswith(f"Tracking, {layer} layer"), f"{relative}: {first!r}"


def plant(root: Path, files: dict[str, str]) -> None:
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)


def test_a_planted_circle_and_an_upward_import_are_found(tmp_path):
    """The check can fail: two modules importing each other (one lazily, inside a function), and a bottom module
    importing a top one."""
    plant(tmp_path, {"pkg/__init__.py": "", "pkg/low/__init__.py": "",
                     "pkg/low/a.py": "from pkg.low import b\n",
                     "pkg/low/b.py": "def f():\n    from pkg.low.a import x\n",
                     "pkg/low/c.py": "from . import d\n", "pkg/low/d.py": "",
                     "pkg/top.py": "import pkg.low.c\n",
                     "pkg/base.py": "from pkg.top import something\n"})
    layers = [("bottom", ["pkg/__init__.py", "pkg/base.py", "pkg/low/"]), ("top", ["pkg/top.py"])]
    assert violations(tmp_path, layers, ("pkg",)) == [
        "circle: pkg.low.a <-> pkg.low.b", "upward: pkg.base (bottom) imports pkg.top (top)"]
    plant(tmp_path, {"pkg/new.py": ""})
    assert violations(tmp_path, layers, ("pkg",))[-1].startswith("pkg/new.py: in no layer")
