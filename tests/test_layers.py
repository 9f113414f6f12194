"""The package's layers only point down (docs/architecture.md): entry points -> facade -> train / predict /
metrics -> model / diffusion / data -> config, errors, rng, atomic and the other ground-floor modules.

Checked over the source tree by reading every import (module level and inside functions):
1. no module imports a module of a higher layer;
2. packages of one layer do not import each other in a circle;
3. no module imports a private name (`_x`) of another module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# the lowest layer is 0; a module belongs to the layer of its longest listed prefix
LAYERS: dict[str, int] = {
    # the ground floor: no segdiff import above it
    "segdiff.errors": 0,
    "segdiff.faults": 0,
    "segdiff.rng": 0,
    "segdiff.atomic": 0,
    "segdiff.lock": 0,
    "segdiff.config": 0,
    "segdiff.devices": 0,
    "segdiff.checkpoint": 0,
    "segdiff.version": 0,
    "segdiff.classset": 0,
    # the paper's parts: know nothing of the verbs
    "segdiff.model": 1,
    "segdiff.diffusion": 1,
    "segdiff.data": 1,
    "segdiff.memory": 1,
    # the three verbs' machinery
    "segdiff.train": 2,
    "segdiff.predict": 2,
    "segdiff.metrics": 2,
    # the facade
    "segdiff.api": 3,
    # entry points: parse, call, print
    "segdiff": 4,
    "segdiff.__main__": 4,
    "segdiff.cli": 4,
    "segdiff.demo": 4,
    "segdiff.demo_volumes": 4,
    "segdiff.bench": 4,
    "segdiff.serve": 4,
}
NAMES = {0: "ground floor", 1: "paper's parts", 2: "verbs", 3: "facade", 4: "entry points"}


def layer_of(module: str) -> int | None:
    parts = module.split(".")
    for n in range(len(parts), 1, -1):  # the root's entry is for the root alone
        if ".".join(parts[:n]) in LAYERS:
            return LAYERS[".".join(parts[:n])]
    return LAYERS.get(module)


def package_of(module: str) -> str:
    """The unit of the cycle rule: segdiff.<first part> (segdiff.train, segdiff.config, ...)."""
    return ".".join(module.split(".")[:2])


def module_name(path: Path, root: Path) -> tuple[str, bool]:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    is_pkg = parts[-1] == "__init__"
    if is_pkg:
        parts = parts[:-1]
    return ".".join(parts), is_pkg


def imports(source: str, module: str, is_pkg: bool, root: Path = SRC) -> list[tuple[str, list[str], int]]:
    """(imported segdiff module, names imported from it, line) for every import in `source`."""
    out = []
    package = module if is_pkg else module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "segdiff" or target.startswith("segdiff."):
                names = [a.name for a in node.names]
                # `from segdiff.pkg import sub` imports the submodule sub when there is one
                subs = [n for n in names if _is_module(f"{target}.{n}", root)]
                for n in subs:
                    out.append((f"{target}.{n}", [], node.lineno))
                rest = [n for n in names if n not in subs]
                if rest or not subs:
                    out.append((target, rest, node.lineno))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "segdiff" or a.name.startswith("segdiff."):
                    out.append((a.name, [], node.lineno))
    return out


def _is_module(name: str, root: Path = SRC) -> bool:
    p = root.joinpath(*name.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def violations(root: Path) -> list[str]:
    """Every breach of the three rules in the package under `root` (a folder holding segdiff/)."""
    found: list[str] = []
    edges: dict[str, set[str]] = {}
    for path in sorted((root / "segdiff").rglob("*.py")):
        module, is_pkg = module_name(path, root)
        here = layer_of(module)
        if here is None:
            found.append(f"{module}: in no layer; add it to LAYERS here and to docs/architecture.md")
            continue
        for target, names, line in imports(path.read_text(), module, is_pkg, root):
            there = layer_of(target)
            where = f"{path.relative_to(root)}:{line}"
            if there is None:
                found.append(f"{where}: imports {target}, which is in no layer")
            elif there > here:
                found.append(f"{where}: {module} ({NAMES[here]}) imports {target} ({NAMES[there]}), a layer above it")
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and target != module:
                found.append(f"{where}: {module} imports the private name(s) {', '.join(private)} of {target}")
            a, b = package_of(module), package_of(target)
            if a != b and there == here and module != "segdiff":
                edges.setdefault(a, set()).add(b)
    found += [f"packages import each other in a circle: {' -> '.join(c)}" for c in _cycles(edges)]
    return found


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    cycles, state = [], {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    return cycles


def test_layers_only_point_down():
    assert violations(SRC) == []


def test_every_module_is_in_a_layer_and_the_architecture_doc_names_every_layer_entry():
    doc = (SRC.parent / "docs" / "architecture.md").read_text()
    for prefix in LAYERS:
        if prefix != "segdiff" and _is_module(prefix):
            assert f"`{prefix.removeprefix('segdiff.')}" in doc, f"docs/architecture.md does not mention {prefix}"


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"segdiff/config.py": "from .api import SegDiff\n"}, "imports segdiff.api (facade), a layer above it"),
        ({"segdiff/train/loop.py": "def f():\n    from ..api import SegDiff\n"}, "a layer above it"),
        ({"segdiff/data/prepare/x.py": "from segdiff import api\n"}, "a layer above it"),
        ({"segdiff/bench/x.py": "from segdiff.predict.ensemble import _chunks\n"}, "private name(s) _chunks"),
        (
            {"segdiff/train/a.py": "from ..predict import b\n", "segdiff/predict/b.py": "from ..train import a\n"},
            "in a circle: segdiff.predict -> segdiff.train -> segdiff.predict",
        ),
        ({"segdiff/newthing.py": "x = 1\n"}, "segdiff.newthing: in no layer"),
    ],
)
def test_the_checker_finds_each_kind_of_breach(tmp_path, files, expected):
    for name, text in files.items():
        path = tmp_path / name
        for parent in reversed(path.relative_to(tmp_path).parents[:-1]):
            (tmp_path / parent).mkdir(exist_ok=True)
            (tmp_path / parent / "__init__.py").touch()
        path.write_text(text)
    found = violations(tmp_path)
    assert any(expected in f for f in found), found
