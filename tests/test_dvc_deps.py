"""dvc.yaml's deps cover every project module each stage imports.

DVC re-runs a stage only when one of its deps changes, so a module that a stage
imports but does not list can change the stage's output without DVC noticing.
For every stage, start from the script its `cmd` runs (stages/<x>.py), follow the
project's imports transitively through the source (AST, so nothing is imported
here), and require each reached file to be a dep or inside a dep folder.

Followed: `import medimg.x`, `from medimg.x import y`, `from medimg import x` and
relative imports, also inside functions (lazy imports are still imports); a package
counts as its __init__.py, and importing a submodule runs its parents' __init__.py.
Not followed: imports under `if TYPE_CHECKING:` (never run) and modules named by
strings (`importlib.import_module`, e.g. the model registry), which a stage must cover
by listing their folder.

medimg.cli is the one dispatcher: every subcommand's imports sit inside its handler,
and a stage script runs one subcommand (`main(["fetch", ...])`). There only the
functions that run for that subcommand are followed: `main`, `build_parser`, the
handler `_<subcommand>`, and the cli functions they call.
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
DISPATCHER = "medimg.cli"
ALWAYS_RUN = ("main", "build_parser")  # cli functions that run for every subcommand


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


def _defined_functions(tree: ast.Module) -> dict[str, ast.FunctionDef]:
    return {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}


def dispatched_nodes(tree: ast.Module, subcommand: str) -> list[ast.AST]:
    """The parts of cli.py that run for `subcommand`: module level and the functions run."""
    functions = _defined_functions(tree)
    handler = f"_{subcommand.replace('-', '_')}"
    assert handler in functions, f"{DISPATCHER} has no handler {handler}() for {subcommand!r}"
    reached, queue = set(), deque([*ALWAYS_RUN, handler])
    while queue:
        name = queue.popleft()
        if name in reached or name not in functions:
            continue
        reached.add(name)
        for node in ast.walk(functions[name]):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                queue.append(node.func.id)
    top_level = [n for n in tree.body if not isinstance(n, ast.FunctionDef | ast.ClassDef)]
    classes = [n for n in tree.body if isinstance(n, ast.ClassDef)]
    return [*top_level, *classes, *(functions[name] for name in sorted(reached))]


# The functions of medimg.cli that a stage script calls with ["<subcommand>", ...].
ENTRY_POINTS = ("main", "run_stage")


def cli_subcommand(tree: ast.Module) -> str | None:
    """ "fetch" for a script that calls main(["fetch", ...]) or run_stage(["fetch", ...])
    imported from medimg.cli."""
    imported = {
        a.name
        for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom) and n.module == DISPATCHER
        for a in n.names
        if a.name in ENTRY_POINTS
    }
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in imported
            and node.args
            and isinstance(node.args[0], ast.List)
            and node.args[0].elts
            and isinstance(node.args[0].elts[0], ast.Constant)
        ):
            return str(node.args[0].elts[0].value)
    return None


def reached_files(script: Path) -> dict[Path, Path | None]:
    """Every project file that running `script` imports: {file: the file that imported it}."""
    subcommand = cli_subcommand(ast.parse(script.read_text()))
    parent: dict[Path, Path | None] = {script: None}
    queue = deque([script])
    while queue:
        path = queue.popleft()
        tree = ast.parse(path.read_text(), filename=str(path))
        name = module_name(path)
        if name == DISPATCHER and subcommand is not None:
            nodes = dispatched_nodes(tree, subcommand)
        else:
            nodes = [tree]
        for module in sorted(imported_modules(nodes, name, path.name == "__init__.py")):
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


def uncovered(stage: dict, script: Path) -> list[str]:
    """Messages for the reached project files no dep of `stage` covers."""
    # A dep with `${...}` is interpolated per foreach item: data, never code.
    code_deps = [d.rstrip("/") for d in stage.get("deps", []) if "${" not in d]
    parent = reached_files(script)
    problems = []
    for path in sorted(parent):
        rel = path.relative_to(REPO).as_posix()
        if not any(rel == dep or rel.startswith(dep + "/") for dep in code_deps):
            problems.append(f"{rel} (import chain: {import_chain(parent, path)})")
    return problems


@pytest.mark.parametrize("name", sorted(_stages()))
def test_stage_deps_cover_every_imported_module(name: str) -> None:
    stage = _stages()[name]
    problems = uncovered(stage, stage_script(name, stage["cmd"]))
    assert not problems, f"dvc.yaml stage {name!r}: not covered by its deps:\n  " + "\n  ".join(
        problems
    )


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


def test_only_the_dispatched_subcommand_of_the_cli_is_followed(tmp_path, monkeypatch) -> None:
    point_at(monkeypatch, tmp_path)
    write(tmp_path, "stages/fetch.py", 'from medimg.cli import main\nmain(["fetch"])\n')
    write(tmp_path, "src/medimg/__init__.py", "")
    write(
        tmp_path,
        "src/medimg/cli.py",
        "def _fetch():\n    import medimg.fetching\n"
        "def _train():\n    import medimg.training\n"
        "def _helper():\n    import medimg.parsing\n"
        "def build_parser():\n    _helper()\n"
        "def main():\n    build_parser()\n",
    )
    for name in ("fetching", "training", "parsing"):
        write(tmp_path, f"src/medimg/{name}.py", "")

    reached = {p.name for p in reached_files(tmp_path / "stages" / "fetch.py")}

    assert reached == {"fetch.py", "__init__.py", "cli.py", "fetching.py", "parsing.py"}
