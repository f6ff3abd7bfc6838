"""The notebook series: stored clean, built by the generator, conventions kept, and runnable.

``pytest --nbmake`` executes every notebook (see ``pyproject.toml``); these tests check what it
cannot: the stored files, the first cells' conventions, and ``run_notebooks`` itself (on one
notebook and on a deliberately broken one, to stay fast).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import nbformat
import pytest

from helpers.cli import main
from helpers.data import DatasetLocation
from helpers.notebooks import NOTEBOOKS, NotebookError, run_notebooks, uses_demo_data

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
MAX_FUNCTION_LINES = 5


def repository() -> str:
    with (ROOT / "pyproject.toml").open("rb") as handle:
        return tomllib.load(handle)["project"]["urls"]["Repository"].rstrip("/")


def stored() -> dict[str, nbformat.NotebookNode]:
    return {p.name: nbformat.read(p, as_version=4) for p in sorted(NOTEBOOK_DIR.glob("*.ipynb"))}


def code_cells(nb: nbformat.NotebookNode) -> list[str]:
    return [cell.source for cell in nb.cells if cell.cell_type == "code"]


def load_generator():
    spec = importlib.util.spec_from_file_location(
        "make_notebooks", NOTEBOOK_DIR / "make_notebooks.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- the stored files ---------------------------------------------------------------------


def test_the_five_notebooks_are_stored():
    assert sorted(stored()) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_stored_without_outputs_or_execution_counts(name):
    nb = stored()[name]
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{name} cell {index} has outputs"
            assert cell.execution_count is None, f"{name} cell {index} has an execution count"


def test_stored_notebooks_are_what_the_generator_writes():
    generator = load_generator()
    for name, nb in generator.build_all().items():
        expected = json.loads(nbformat.writes(nb))
        actual = json.loads((NOTEBOOK_DIR / name).read_text(encoding="utf-8"))
        assert actual == expected, f"{name} differs: run python notebooks/make_notebooks.py"


# --- conventions ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_title_and_badges_point_at_the_repository(name):
    first = stored()[name].cells[0]
    assert first.cell_type == "markdown"
    assert first.source.startswith("# "), "the first cell starts with a title"
    github = repository().removeprefix("https://github.com/")
    links = re.findall(r"\]\((https://[^)\s]+)\)", first.source)
    colab = f"https://colab.research.google.com/github/{github}/blob/main/notebooks/{name}"
    kaggle = f"https://kaggle.com/kernels/welcome?src=https://github.com/{github}/blob/main/notebooks/{name}"
    assert colab in links
    assert kaggle in links


def _setup_if(tree: ast.Module) -> ast.If:
    """The ``if`` statement whose body runs ``pip install``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "pip" in ast.unparse(ast.Module(node.body, [])):
            return node
    raise AssertionError("no `if` around a pip install in the setup cell")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_setup_cell_installs_only_on_colab_or_kaggle(name):
    nb = stored()[name]
    setup = nb.cells[1]
    assert setup.cell_type == "code"
    tree = ast.parse(setup.source)
    constants = {
        node.targets[0].id: ast.unparse(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
    }
    assert constants["REPOSITORY"] == repr(repository())
    assert constants["on_colab"] == "os.path.isdir('/content')"
    assert constants["on_kaggle"] == "'KAGGLE_KERNEL_RUN_TYPE' in os.environ"
    guard = ast.unparse(_setup_if(tree).test)
    assert "find_spec('helpers') is None" in guard
    assert "on_colab or on_kaggle" in guard
    assert "f'git+{REPOSITORY}'" in ast.unparse(_setup_if(tree))


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_one_imports_cell_then_the_settings_cell(name):
    cells = stored()[name].cells
    imports = ast.parse(cells[2].source)
    assert imports.body and all(isinstance(s, ast.Import | ast.ImportFrom) for s in imports.body)
    settings = cells[3].source
    assert "config = config_from_env()" in settings
    assert "find_dataset()" in settings
    assert "show_setup(config, location)" in settings
    later = "\n".join(code_cells(stored()[name])[3:])
    assert not re.search(r"^\s*(import|from) \S+", later, re.MULTILINE), "imports after cell 2"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_no_long_functions_in_notebooks(name):
    for source in code_cells(stored()[name]):
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                length = node.end_lineno - node.lineno + 1
                assert length <= MAX_FUNCTION_LINES, f"{name}: a {length}-line function"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_every_figure_is_saved_under_the_notebook_number(name):
    prefix = name.split("_")[0] + "_"
    plots = 0
    for source in code_cells(stored()[name]):
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Call) and ast.unparse(node.func).startswith("plot_"):
                plots += 1
                assert any(k.arg == "save" for k in node.keywords), ast.unparse(node)
            if isinstance(node, ast.Constant) and str(node.value).endswith(".png"):
                assert node.value.startswith(prefix), node.value
    if name != "03_model.ipynb":
        assert plots, f"{name} draws no figure"


# --- the setup cell, executed --------------------------------------------------------------


def _run_setup(monkeypatch, *, helpers_installed: bool, network: bool) -> list:
    """Execute the setup cell as on Kaggle; return the subprocess calls it made."""
    source = stored()[NOTEBOOKS[0]].cells[1].source
    calls: list = []
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args):
        return None if name == "helpers" and not helpers_installed else real_find_spec(name, *args)

    def connect(*args, **kwargs):
        if not network:
            raise OSError("network is unreachable")
        return type("Conn", (), {"close": lambda self: None})()

    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(socket, "create_connection", connect)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: calls.append(a[0]))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(ROOT)  # no ../helpers beside it
    exec(compile(source, "setup-cell", "exec"), {})
    return calls


def test_setup_cell_does_nothing_when_helpers_is_importable(monkeypatch):
    assert _run_setup(monkeypatch, helpers_installed=True, network=True) == []


def test_setup_cell_installs_from_the_repository_on_kaggle(monkeypatch):
    calls = _run_setup(monkeypatch, helpers_installed=False, network=True)
    assert len(calls) == 1 and calls[0][-1] == f"git+{repository()}"
    assert calls[0][1:4] == ["-m", "pip", "install"]


def test_setup_cell_explains_how_to_turn_the_internet_on(monkeypatch):
    with pytest.raises(RuntimeError, match="Internet > On"):
        _run_setup(monkeypatch, helpers_installed=False, network=False)


# --- running notebooks ----------------------------------------------------------------------


def test_uses_demo_data_recognises_the_demo_by_its_marker(demo_root, tmp_path):
    assert uses_demo_data(DatasetLocation(demo_root, "env"))
    (tmp_path / "train" / "NORMAL").mkdir(parents=True)
    assert not uses_demo_data(DatasetLocation(tmp_path, "env"))


def test_run_notebooks_writes_executed_copies_and_figures(demo_root, tmp_path, capsys):
    out = run_notebooks(quick=True, data=demo_root, out=tmp_path / "executed", only=[NOTEBOOKS[0]])
    executed = nbformat.read(out / NOTEBOOKS[0], as_version=4)
    counts = [c.execution_count for c in executed.cells if c.cell_type == "code"]
    assert all(isinstance(n, int) for n in counts)
    outputs = [o for c in executed.cells if c.cell_type == "code" for o in c.outputs]
    assert any("image/png" in o.get("data", {}) for o in outputs), "figures shown inline"
    text = "".join(o.get("text", "") for o in outputs)
    assert str(demo_root) in text and "SYNTHETIC" in text
    figures = Path(os.environ["PNEUMONIA_OUTPUTS"]) / "figures"
    for figure in ("01_class_balance.png", "01_image_sizes.png", "01_split_counts.png"):
        assert (figures / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "SYNTHETIC DEMO DATA" in capsys.readouterr().out
    assert "PNEUMONIA_QUICK" not in os.environ and "PNEUMONIA_DATA_DIR" not in os.environ
    assert not list(out.glob(".*.tmp")), "no temporary files left behind"


def test_run_notebooks_stops_at_the_failing_cell(demo_root, tmp_path):
    folder = tmp_path / "nbs"
    folder.mkdir()
    broken = nbformat.v4.new_notebook(
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}}
    )
    broken.cells = [
        nbformat.v4.new_code_cell("x = 1"),
        nbformat.v4.new_code_cell("raise ValueError('boom')\nprint('unreachable')"),
        nbformat.v4.new_code_cell("print('after the error')"),
    ]
    nbformat.write(broken, folder / "broken.ipynb")
    nbformat.write(nbformat.v4.new_notebook(), folder / "next.ipynb")
    out = tmp_path / "executed"
    with pytest.raises(NotebookError) as caught:
        run_notebooks(True, demo_root, out, only=["broken.ipynb", "next.ipynb"], folder=folder)
    message = str(caught.value)
    assert message.startswith("broken.ipynb: cell 1 ")
    assert "raise ValueError('boom')" in message and "ValueError: boom" in message
    assert (out / "broken.ipynb").is_file(), "the executed copy keeps the error"
    assert not (out / "next.ipynb").exists(), "later notebooks do not run"


def test_cli_reports_a_missing_dataset(tmp_path, capsys):
    assert main(["run-notebooks", "--quick", "--data", str(tmp_path / "nowhere")]) == 2
    assert "nowhere" in capsys.readouterr().err
