"""The package layout of the README's Layout section holds in the code: a package imports only
packages on lower floors, and no modules import each other in a circle (type-hint imports and
imports inside functions count too: both tie the modules together)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.helpers import ROOT

SOURCES = ("hpsearch", "objectives")


def readme_floors(readme: Path) -> dict[str, int]:
    """{package or top-level module: floor} from the table of the README's Layout section."""
    section = readme.read_text().split("## Layout", 1)[1].split("\n## ", 1)[0]
    floors = {}
    for floor, names in re.findall(r"^\| (\d+) \| ([^|]+) \|", section, flags=re.M):
        for name in re.findall(r"`([\w.]+)`", names):
            floors[name] = int(floor)
    return floors


def modules(root: Path) -> dict[str, Path]:
    """Dotted name -> file of every module under the source folders of `root`."""
    found = {}
    for top in SOURCES:
        for path in sorted((root / top).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports(path: Path, name: str, known: set[str]) -> list[tuple[int, str]]:
    """(line, module) for each import of a module in `known`, wherever it is in the file.
    `from a import b` counts as importing module a.b when that is a module, else a."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        found += [(node.lineno, t) for t in dict.fromkeys(targets) if t in known]
    return found


def unit(module: str, floors: dict[str, int]) -> str:
    """The README row a module belongs to: the longest listed name it is or lies inside. The root
    package `hpsearch` stands for its `__init__` only: each of its modules and packages has a row."""
    candidates = [u for u in floors if module == u or (module.startswith(u + ".") and u != "hpsearch")]
    return max(candidates, key=len) if candidates else module


def violations(root: Path, floors: dict[str, int]) -> list[str]:
    """Every import that runs against the floors, and every module no floor lists."""
    found = modules(root)
    problems = []
    for name, path in found.items():
        here = unit(name, floors)
        if here not in floors:
            problems.append(f"{path.relative_to(root)}: {here} is on no floor of the README's Layout table")
            continue
        for line, target in imports(path, name, set(found)):
            there = unit(target, floors)
            if there != here and floors.get(there, -1) >= floors[here]:
                problems.append(f"{path.relative_to(root)}:{line} imports {target}, but {here} (floor {floors[here]}) "
                                f"may import only floors below it ({there} is on floor {floors.get(there)})")
    return problems


def cycles(root: Path) -> list[list[str]]:
    """Groups of modules that import each other, directly or in a circle (Tarjan's algorithm)."""
    found = modules(root)
    graph = {name: sorted({t for _, t in imports(path, name, set(found)) if t != name}) for name, path in found.items()}
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

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
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in graph:
        if v not in index:
            visit(v)
    return groups


FLOORS = readme_floors(ROOT / "README.md")


def test_the_readme_names_the_floors_of_every_package():
    # Rule: the Layout table lists each package of the engine and the method library once.
    packages = {p.parent.relative_to(ROOT).as_posix().replace("/", ".") for p in (ROOT / "hpsearch").glob("*/__init__.py")}
    assert packages | {"objectives"} <= set(FLOORS), sorted(packages - set(FLOORS))


def test_every_import_goes_down_the_floors():
    assert violations(ROOT, FLOORS) == []


def test_no_modules_import_each_other():
    assert cycles(ROOT) == []


def test_the_study_file_schema_needs_no_engine_module():
    # Rule: validating a study file reads names, never the builders of the training, evaluation,
    # pruning, tracking or study packages (hpsearch.config.names).
    found = modules(ROOT)
    engine = ("hpsearch.training", "hpsearch.evaluation", "hpsearch.pruning", "hpsearch.tracking", "hpsearch.study")
    for name in [n for n in found if n.startswith("hpsearch.config")]:
        assert not [t for _, t in imports(found[name], name, set(found)) if t.startswith(engine)], name


def test_registries_are_keyed_by_the_names_the_schema_accepts():
    from hpsearch.config import names
    from hpsearch.pruning import pruner_names
    from hpsearch.training import BACKBONES

    assert tuple(BACKBONES) == names.BACKBONES
    assert pruner_names() == sorted(names.PRUNERS)


def write(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text(text)
    return root


@pytest.mark.parametrize(("files", "expected"), [
    # a lower floor importing a higher one, even inside a function or for type hints only
    ({"hpsearch/config/schema.py": "def f():\n    from hpsearch.training.backbones import B\n"},
     "hpsearch/config/schema.py:2 imports hpsearch.training.backbones"),
    ({"hpsearch/config/schema.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import hpsearch.study.trial\n"},
     "hpsearch/config/schema.py:3 imports hpsearch.study.trial"),
    # two packages of one floor may not import each other
    ({"hpsearch/pruning/calibrated.py": "from hpsearch.tracking import urls\n"},
     "hpsearch/pruning/calibrated.py:1 imports hpsearch.tracking.urls"),
    # a new package the README does not place
    ({"hpsearch/server/app.py": "import hpsearch.study\n"}, "hpsearch.server.app is on no floor"),
])
def test_the_floor_check_reports_an_import_against_the_order(tmp_path, files, expected):
    base = {"hpsearch/__init__.py": "", "hpsearch/config/__init__.py": "", "hpsearch/training/__init__.py": "",
            "hpsearch/study/__init__.py": "", "hpsearch/pruning/__init__.py": "", "hpsearch/tracking/__init__.py": "",
            "hpsearch/training/backbones.py": "from hpsearch.config import schema\n", "hpsearch/tracking/urls.py": "",
            "hpsearch/study/trial.py": "", "objectives/__init__.py": ""}
    root = write(tmp_path, {**base, **files})
    floors = {"objectives": 0, "hpsearch.config": 1, "hpsearch.tracking": 2, "hpsearch.pruning": 2,
              "hpsearch.training": 3, "hpsearch.study": 4, "hpsearch": 5}
    problems = violations(root, floors)
    assert len(problems) == 1 and expected in problems[0], problems


def test_the_cycle_check_finds_modules_importing_each_other(tmp_path):
    root = write(tmp_path, {"hpsearch/__init__.py": "", "objectives/__init__.py": "",
                            "hpsearch/a.py": "from hpsearch import b\n", "hpsearch/b.py": "import hpsearch.c\n",
                            "hpsearch/c.py": "def f():\n    from hpsearch.a import x\n"})
    assert cycles(root) == [["hpsearch.a", "hpsearch.b", "hpsearch.c"]]
