"""The project's documents agree with the code: packages, test references, commands."""

from __future__ import annotations

import ast
import functools
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(requirement: str) -> str:
    """``torch>=2.1`` -> ``torch``; conda's ``pytorch`` is PyPI's ``torch``."""
    name = re.split(r"[<>=!~ \[]", requirement.strip(), maxsplit=1)[0].lower()
    return {"pytorch": "torch"}.get(name, name)


def test_environment_yml_lists_the_same_packages_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]}
    wanted.add("kagglehub")  # the data download path the notebooks use online
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    listed = set()
    for item in env["dependencies"]:
        if isinstance(item, dict):
            listed |= {_name(r) for r in item["pip"]}
        else:
            listed.add(_name(item))
    listed -= {"python", "pip"}
    assert listed == wanted


@functools.cache  # the table names some files dozens of times
def _test_functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}


def test_every_test_named_in_the_reliability_table_exists():
    text = (ROOT / "docs" / "reliability.md").read_text()
    missing, seen = [], 0
    for row in text.splitlines():
        current = None
        for file, name in re.findall(r"`(?:(test_\w+\.py))?::(test_\w+)(?:\[[^\]]*\])?`", row):
            current = file or current
            assert current, f"reference without a file: {row}"
            seen += 1
            if name not in _test_functions(ROOT / "tests" / current):
                missing.append(f"{current}::{name}")
    assert seen > 30
    assert not missing, missing


def test_ci_runs_the_readme_commands_exactly():
    """CI runs the README's install and test commands as a new user types them: no environment
    variable, no extra option (pytest itself runs the notebooks in quick mode)."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Set up and test", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ['pip install -e ".[dev]"', "pytest"]
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    for command in commands:
        assert command in ci, command
    assert not [line for line in ci if line.startswith("export ")]


def _helpers_imports() -> dict[str, set[str]]:
    """Each ``helpers`` module (``plots`` as one) and the ``helpers`` modules it imports,
    at module level or inside a function, read from the source."""
    graph: dict[str, set[str]] = {}
    for path in sorted((ROOT / "helpers").rglob("*.py")):
        parts = path.relative_to(ROOT / "helpers").with_suffix("").parts
        name = parts[0] if parts[0] != "__init__" else "helpers"
        found = graph.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("helpers"):
                module = node.module.split(".")
                found |= {a.name for a in node.names} if module == ["helpers"] else {module[1]}
            elif isinstance(node, ast.Import):
                found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("helpers.")}
        found.discard(name)
    return graph


def test_helpers_modules_import_without_a_cycle_as_architecture_md_says():
    """``docs/architecture.md``: data flows one way, and no module imports one above it, at
    module level or inside a function. So the import graph, function-level imports included,
    has no cycle; the bottom row imports no ``helpers`` module; and every module has its row."""
    graph = _helpers_imports()
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"import cycle: {' -> '.join((*path, name))}"
        if name not in done:
            for imported in sorted(graph.get(name, ())):
                visit(imported, (*path, name))
            done.add(name)

    for name in graph:
        visit(name, ())
    for bottom in ("online", "files", "cpu", "platforms"):
        assert not graph[bottom], f"{bottom} imports {sorted(graph[bottom])}"
    architecture = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    missing = [n for n in graph if n not in ("helpers", "__main__") and f"`{n}" not in architecture]
    assert not missing, f"modules without a row in docs/architecture.md: {missing}"
