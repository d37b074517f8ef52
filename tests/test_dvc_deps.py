"""dvc.yaml's deps are exactly the project modules each stage imports.

DVC re-runs a stage only when one of its deps changes, so a module that a stage
imports but does not list can change the stage's output without DVC noticing; and a
dep the stage does not import re-runs it for nothing (editing a model re-ran the data
stages before). For every stage, start from the script its `cmd` runs
(stages/<x>.py), follow the project's imports transitively through the source (AST,
so nothing is imported here), and require each reached file to be a dep or inside a
dep folder, and each code dep to hold a reached file.

Followed: `import medimg.x`, `from medimg.x import y`, `from medimg import x` and
relative imports, also inside functions (lazy imports are still imports); a package
counts as its __init__.py, and importing a submodule runs its parents' __init__.py.
Not followed: imports under `if TYPE_CHECKING:` (never run). The model registry
imports medimg.models.zoo.<model> by name (importlib): a stage that reaches the
registry reaches the zoo, whose modules are followed too.
"""

from __future__ import annotations

import ast
import sys
from collections import deque
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
PACKAGE = "medimg"
REGISTRY = "medimg.models.registry"
ZOO = "medimg.models.zoo"


def module_file(module: str) -> Path | None:
    """The source file of a project module (a package is its __init__.py), or None."""
    base = SRC.joinpath(*module.split("."))
    for candidate in (base / "__init__.py", base.with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


def module_name(path: Path) -> str | None:
    """medimg.x.y for src/medimg/x/y.py (medimg.x for its __init__.py); None outside src."""
    if not path.is_relative_to(SRC):
        return None
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _with_parents(module: str) -> list[str]:
    """medimg.x.y -> [medimg, medimg.x, medimg.x.y]: importing a module runs its parents."""
    parts = module.split(".")
    return [".".join(parts[: k + 1]) for k in range(len(parts))]


def _is_type_checking_block(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _walk(nodes: list[ast.AST]) -> list[ast.AST]:
    """Every node under `nodes`, skipping `if TYPE_CHECKING:` blocks."""
    found, stack = [], list(nodes)
    while stack:
        node = stack.pop()
        if _is_type_checking_block(node):
            stack.extend(node.orelse)
            continue
        found.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return found


def imported_modules(nodes: list[ast.AST], importer: str | None, is_package: bool) -> set[str]:
    """Project modules imported anywhere under `nodes` (parents included).

    `importer` is the importing module's name (None for a script), for relative imports.
    """
    found: set[str] = set()
    for node in _walk(nodes):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = (importer or "").split(".")
                package = package if is_package else package[:-1]
                anchor = package[: len(package) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            # `from a import b`: b is a submodule or a name defined in a; module_file decides.
            names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        for name in names:
            if name == PACKAGE or name.startswith(PACKAGE + "."):
                found.update(m for m in _with_parents(name) if module_file(m) is not None)
    return found


def zoo_modules() -> list[str]:
    """Every model module of the zoo (the registry imports them by name)."""
    folder = SRC.joinpath(*ZOO.split("."))
    return sorted(f"{ZOO}.{p.stem}" for p in folder.glob("*.py") if not p.stem.startswith("_"))


def reached_files(script: Path) -> dict[Path, Path | None]:
    """Every project file that running `script` imports: {file: the file that imported it}."""
    parent: dict[Path, Path | None] = {script: None}
    queue = deque([script])
    while queue:
        path = queue.popleft()
        tree = ast.parse(path.read_text(), filename=str(path))
        name = module_name(path)
        modules = imported_modules([tree], name, path.name == "__init__.py")
        if name == REGISTRY:
            modules |= {m for zoo in zoo_modules() for m in _with_parents(zoo)}
        for module in sorted(modules):
            target = module_file(module)
            if target is not None and target not in parent:
                parent[target] = path
                queue.append(target)
    return parent


def import_chain(parent: dict[Path, Path | None], path: Path) -> str:
    chain = [path]
    while (up := parent[chain[-1]]) is not None:
        chain.append(up)
    return " -> ".join(p.relative_to(REPO).as_posix() for p in reversed(chain))


def _stages() -> dict[str, dict]:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    # A foreach stage keeps its command and deps under `do`.
    return {name: stage.get("do", stage) for name, stage in stages.items()}


def stage_script(name: str, cmd: str) -> Path:
    scripts = [token for token in cmd.split() if token.endswith(".py")]
    assert len(scripts) == 1, f"stage {name}: cmd {cmd!r} names no single .py script"
    return REPO / scripts[0]


def code_deps(stage: dict) -> list[str]:
    """The stage's deps that are project code (src/ or stages/), with `${item.model}`
    standing for every zoo module (the only code dep interpolated per foreach item)."""
    deps = []
    for dep in stage.get("deps", []):
        dep = dep.rstrip("/")
        if not dep.startswith(("src/", "stages/")):
            continue
        if "${" in dep:
            assert dep == "src/medimg/models/zoo/${item.model}.py", f"unexpected code dep {dep}"
            deps += [f"src/{m.replace('.', '/')}.py" for m in zoo_modules()]
        else:
            deps.append(dep)
    return deps


def uncovered(stage: dict, script: Path) -> list[str]:
    """Messages for the reached project files no dep of `stage` covers."""
    deps = code_deps(stage)
    parent = reached_files(script)
    problems = []
    for path in sorted(parent):
        rel = path.relative_to(REPO).as_posix()
        if not any(rel == dep or rel.startswith(dep + "/") for dep in deps):
            problems.append(f"{rel} (import chain: {import_chain(parent, path)})")
    return problems


def unused(stage: dict, script: Path) -> list[str]:
    """The stage's code deps that hold no file its script imports."""
    reached = {path.relative_to(REPO).as_posix() for path in reached_files(script)}
    return [
        dep
        for dep in dict.fromkeys(code_deps(stage))
        if not any(rel == dep or rel.startswith(dep + "/") for rel in reached)
    ]


@pytest.mark.parametrize("name", sorted(_stages()))
def test_stage_deps_cover_every_imported_module(name: str) -> None:
    stage = _stages()[name]
    problems = uncovered(stage, stage_script(name, stage["cmd"]))
    assert not problems, f"dvc.yaml stage {name!r}: not covered by its deps:\n  " + "\n  ".join(
        problems
    )


@pytest.mark.parametrize("name", sorted(_stages()))
def test_stage_deps_hold_only_imported_modules(name: str) -> None:
    stage = _stages()[name]
    extra = unused(stage, stage_script(name, stage["cmd"]))
    assert not extra, f"dvc.yaml stage {name!r}: deps its script never imports: {extra}"


def point_at(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    """Make this module read the fake project under `root`."""
    monkeypatch.setattr(sys.modules[__name__], "REPO", root)
    monkeypatch.setattr(sys.modules[__name__], "SRC", root / "src")


def write(root: Path, rel: str, text: str) -> None:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    (root / rel).write_text(text)


def test_lazy_relative_and_package_imports_are_followed(tmp_path, monkeypatch) -> None:
    """A small fake project: each way of importing reaches its file, and the chain says how."""
    point_at(monkeypatch, tmp_path)
    write(tmp_path, "stages/x.py", "import medimg.a\n")
    write(tmp_path, "src/medimg/__init__.py", "")
    write(tmp_path, "src/medimg/a.py", "def f():\n    from medimg import pkg\n")
    write(tmp_path, "src/medimg/pkg/__init__.py", "from .b import thing\n")
    write(tmp_path, "src/medimg/pkg/b.py", "from ..c import g\nthing = 1\n")
    write(
        tmp_path,
        "src/medimg/c.py",
        "from typing import TYPE_CHECKING\ng = 1\nif TYPE_CHECKING:\n    import medimg.unused\n",
    )
    write(tmp_path, "src/medimg/unused.py", "")

    parent = reached_files(tmp_path / "stages" / "x.py")

    reached = sorted(p.relative_to(tmp_path).as_posix() for p in parent)
    assert reached == [
        "src/medimg/__init__.py",
        "src/medimg/a.py",
        "src/medimg/c.py",
        "src/medimg/pkg/__init__.py",
        "src/medimg/pkg/b.py",
        "stages/x.py",
    ]
    assert import_chain(parent, tmp_path / "src/medimg/c.py") == (
        "stages/x.py -> src/medimg/a.py -> src/medimg/pkg/__init__.py -> src/medimg/pkg/b.py "
        "-> src/medimg/c.py"
    )
    stage = {"deps": ["stages/x.py", "src/medimg/pkg", "src/medimg/a.py", "data/${key}"]}
    problems = uncovered(stage, tmp_path / "stages" / "x.py")
    assert [p.split(" ")[0] for p in problems] == ["src/medimg/__init__.py", "src/medimg/c.py"]
