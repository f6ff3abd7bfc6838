"""The notebook series: stored clean, its conventions kept, its code equal to the package's.

``pytest`` also executes every notebook (``notebooks/conftest.py``); these tests check what that
cannot: the stored files, the shared cells, the endings every notebook owes its reader, that the
model and the epoch written out in notebooks 03 and 04 are the package's, that notebook 05 reuses
notebook 04's run through the outputs folder, and ``run_notebooks`` itself.
"""

from __future__ import annotations

import ast
import glob
import importlib
import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys
import tomllib
import types
import urllib.error
from pathlib import Path

import matplotlib.pyplot as plt
import nbformat
import numpy as np
import pandas as pd
import pytest
import torch
from pandas.testing import assert_frame_equal

import helpers.cpu
from helpers import notebooks as notebooks_module
from helpers import platforms
from helpers.cli import main
from helpers.config import CLASSES, Config
from helpers.data import class_weights, make_splits, scan
from helpers.loader import BatchLoader, prepare_data
from helpers.model import PneumoniaNet, build_model, parameter_groups
from helpers.notebooks import NOTEBOOKS, NotebookError, run_notebooks
from helpers.recipe import make_optimizer, use_scratch_batchnorm, weighted_loss
from helpers.runs import notebook_run_dir
from helpers.train import run_epoch, start_training
from helpers.train import train as train_run

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
MAX_SETUP_LINES = 13


def pyproject() -> dict:
    with (ROOT / "pyproject.toml").open("rb") as handle:
        return tomllib.load(handle)["project"]


def stored() -> dict[str, nbformat.NotebookNode]:
    return {p.name: nbformat.read(p, as_version=4) for p in sorted(NOTEBOOK_DIR.glob("*.ipynb"))}


def code_cells(nb: nbformat.NotebookNode) -> list[str]:
    return [cell.source for cell in nb.cells if cell.cell_type == "code"]


def cell_defining(name: str, marker: str) -> str:
    """The source of the one code cell of notebook ``name`` that contains ``marker``."""
    found = [source for source in code_cells(stored()[name]) if marker in source]
    assert len(found) == 1, f"{name}: {len(found)} cells contain {marker!r}"
    return found[0]


# --- the stored files ---------------------------------------------------------------------


def test_the_six_notebooks_are_stored_and_no_generator():
    assert sorted(stored()) == sorted(NOTEBOOKS)
    assert not (NOTEBOOK_DIR / "make_notebooks.py").exists()


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_stored_without_outputs_or_execution_counts(name):
    nb = stored()[name]
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{name} cell {index} has outputs"
            assert cell.execution_count is None, f"{name} cell {index} has an execution count"


# --- the first cells ------------------------------------------------------------------------


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_title_what_you_will_learn_and_badges(name):
    first = stored()[name].cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# ")
    assert "**What you will learn**" in first.source
    github = pyproject()["urls"]["Repository"].removeprefix("https://github.com/").rstrip("/")
    tag = f"v{pyproject()['version']}"  # the release the setup cell installs (RELEASING.md)
    links = re.findall(r"\]\((https://[^)\s]+)\)", first.source)
    assert f"https://colab.research.google.com/github/{github}/blob/{tag}/notebooks/{name}" in links
    kaggle = f"https://kaggle.com/kernels/welcome?src=https://github.com/{github}/blob/{tag}/notebooks/{name}"
    assert kaggle in links


def test_the_setup_cell_is_the_same_short_cell_everywhere():
    setups = {name: nb.cells[1].source for name, nb in stored().items()}
    assert len(set(setups.values())) == 1, "the setup cells differ"
    setup = next(iter(setups.values()))
    code = [line for line in setup.splitlines() if line.strip() and not line.startswith("#")]
    assert len(code) <= MAX_SETUP_LINES, f"{len(code)} lines of code in the setup cell"
    assert "importlib.metadata" in setup and '"pneumonia-tutorial"' in setup  # by distribution
    assert "find_spec" not in setup
    version = pyproject()["version"]
    assert f'{pyproject()["urls"]["Repository"]}@v{version}"' in setup.replace("git+", "")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_one_imports_cell_an_outputs_cell_and_the_quick_switch(name):
    setup, imports_cell, outputs, settings, *_ = code_cells(stored()[name])
    imports = ast.parse(imports_cell)
    assert imports.body and all(isinstance(s, ast.Import | ast.ImportFrom) for s in imports.body)
    assert "KEEP_OUTPUTS = False" in outputs and "keep_outputs()" in outputs
    assert re.search(r"^QUICK = (False|True)\b", settings, re.MULTILINE)
    assert "config = config_from_env(quick=QUICK)" in settings
    assert "find_dataset()" in settings and "show_setup(config, location)" in settings
    for source in code_cells(stored()[name])[3:]:  # no top-level import after the imports cell
        statements = ast.parse(source).body
        assert not any(isinstance(s, ast.Import | ast.ImportFrom) for s in statements), source


def _numbered_items(text: str) -> list[str]:
    return re.findall(r"^\d+\. ", text, re.MULTILINE)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_every_notebook_ends_with_recap_exercises_and_questions(name):
    markdown = "\n".join(c.source for c in stored()[name].cells if c.cell_type == "markdown")
    assert "## Recap" in markdown
    exercises = markdown.split("## Try it yourself", 1)[1].split("## Check your understanding", 1)
    assert 3 <= len(_numbered_items(exercises[0])) <= 6
    questions, answers = exercises[1].split("<details>", 1)
    assert 4 <= len(_numbered_items(questions)) <= 8
    assert len(_numbered_items(answers)) == len(_numbered_items(questions))
    assert "</details>" in answers


def _exercises(name: str) -> list[str]:
    """The numbered items of a notebook's "Try it yourself" section."""
    markdown = "\n".join(c.source for c in stored()[name].cells if c.cell_type == "markdown")
    section = markdown.split("## Try it yourself", 1)[1].split("## Check your understanding", 1)[0]
    return re.split(r"^\d+\. ", section, flags=re.MULTILINE)[1:]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_every_exercise_says_what_to_expect(name):
    """Each exercise ends with a paragraph that begins **Expect:** and says what the reader will
    see (issue 22): one such line per exercise, and nothing after its paragraph."""
    for number, item in enumerate(_exercises(name), 1):
        lines = item.rstrip().splitlines()
        starts = [i for i, line in enumerate(lines) if line.lstrip().startswith("**Expect:**")]
        assert len(starts) == 1, f"{name}, exercise {number}: {len(starts)} lines begin **Expect:**"
        after = lines[starts[0] + 1 :]
        assert all(line.strip() for line in after), f"{name}, exercise {number}: text after Expect"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_every_figure_is_saved_under_the_notebook_number(name):
    prefix = name.split("_")[0] + "_"
    for source in code_cells(stored()[name]):
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Call) and ast.unparse(node.func).startswith("plot_"):
                assert any(k.arg == "save" for k in node.keywords), ast.unparse(node)
            if isinstance(node, ast.Constant) and str(node.value).endswith(".png"):
                assert node.value.startswith(prefix), node.value


# --- the setup cell, executed --------------------------------------------------------------


class _Shell:
    """Stands for an IPython shell; ``module`` decides what ``str()`` of it names."""

    def __init__(self, module: str) -> None:
        self.text = f"<{module}.Shell object>"

    def __str__(self) -> str:
        return self.text


LOCAL_JUPYTER, COLAB_KERNEL = _Shell("ipykernel.zmqshell"), _Shell("google.colab._shell")


def _run_setup(
    monkeypatch,
    *,
    installed: bool,
    pip_fails: bool = False,
    shell=LOCAL_JUPYTER,
    kaggle: bool = True,
    wheels: tuple[str, ...] = (),
) -> dict:
    """Execute the setup cell (on Kaggle unless ``kaggle=False``); return what it did: the
    commands it ran, whether it refreshed the import caches and called the thread policy."""
    source = stored()[NOTEBOOKS[0]].cells[1].source
    did: dict = {"commands": [], "invalidated": 0, "policy": 0, "globbed": []}
    real = importlib.metadata.distributions

    def distributions():
        return [d for d in real() if installed or d.name != "pneumonia-tutorial"]

    def run(command, **kwargs):
        did["commands"].append(command)
        errors = "Collecting pneumonia-tutorial\nERROR: Could not find a version that satisfies\n"
        return types.SimpleNamespace(
            returncode=1 if pip_fails else 0, stdout="", stderr=errors if pip_fails else ""
        )

    def glob_(pattern, recursive=False):
        did["globbed"].append(pattern)
        return list(wheels) if pattern.startswith("/kaggle/input/") else []

    if kaggle:
        monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    else:
        monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    monkeypatch.setattr(importlib.metadata, "distributions", distributions)
    monkeypatch.setattr(subprocess, "run", run)
    monkeypatch.setattr(glob, "glob", glob_)
    monkeypatch.setattr(importlib, "invalidate_caches", lambda: did.__setitem__("invalidated", 1))
    monkeypatch.setattr(helpers.cpu, "use_idle_cores", lambda: did.__setitem__("policy", 1))
    exec(compile(source, "setup-cell", "exec"), {"get_ipython": lambda: shell})
    return did


def test_setup_cell_does_nothing_when_the_project_is_installed(monkeypatch):
    did = _run_setup(monkeypatch, installed=True)
    assert did["commands"] == [] and did["policy"] == 1  # the thread policy: an explicit call


def test_setup_cell_installs_the_pinned_release_on_kaggle(monkeypatch):
    did = _run_setup(monkeypatch, installed=False)
    (command,) = did["commands"]
    assert command[1:4] == ["-m", "pip", "install"]
    assert command[-1].endswith(f"@v{pyproject()['version']}") and "--no-deps" not in command
    assert did["invalidated"] == 1, "importlib.invalidate_caches() after installing"


def test_setup_cell_installs_an_attached_wheel_offline(monkeypatch):
    """Kaggle without internet: the project's wheel attached as a dataset is installed,
    without dependencies (Kaggle's image has them)."""
    wheel = "/kaggle/input/pneumonia-wheel/pneumonia_tutorial-0.2.0-py3-none-any.whl"
    did = _run_setup(monkeypatch, installed=False, wheels=(wheel,))
    (command,) = did["commands"]
    assert command[-2:] == ["--no-deps", wheel]


def test_setup_cell_shows_pip_and_names_the_likely_causes(monkeypatch, capsys):
    """A failed install prints pip's last lines, then one sentence with the likely causes."""
    with pytest.raises(SystemExit) as failed:
        _run_setup(monkeypatch, installed=False, pip_fails=True)
    assert "ERROR: Could not find a version that satisfies" in capsys.readouterr().out
    message = str(failed.value)
    assert message.endswith(".") and ". " not in message  # one sentence
    for cause in ("internet", "tag", "3.11", "conflict"):
        assert cause in message


@pytest.mark.parametrize(
    ("shell", "kaggle", "cloud"),
    [(LOCAL_JUPYTER, False, False), (COLAB_KERNEL, False, True), (COLAB_KERNEL, True, True)],
)
def test_setup_cell_detects_the_platform_as_helpers_does(shell, kaggle, cloud, monkeypatch):
    """The cell's inline test (it runs before helpers is installed) agrees with
    ``helpers.platforms``: a laptop's Jupyter installs nothing, Colab and Kaggle do."""
    did = _run_setup(monkeypatch, installed=False, shell=shell, kaggle=kaggle)
    assert bool(did["commands"]) is cloud
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: shell))
    assert platforms.on_cloud() is cloud


def test_the_release_lives_in_pyproject_only():
    """Every copy of the repository URL and release (setup cells, notebook and README
    badges) matches pyproject.toml (``python tools/sync_release.py`` rewrites them), and one
    change there re-points all of them: a fork changes ``[project.urls] Repository``."""
    sync = _sync_release_tool()
    assert sync.main(["--check"]) == 0, "run: python tools/sync_release.py"
    fork, tag = "https://github.com/someone/fork", "v9.9.9"
    for path in sync.targets():
        text = path.read_text(encoding="utf-8")
        moved = sync.rewrite(text, fork, tag)
        repository = pyproject()["urls"]["Repository"]
        assert repository not in moved.replace(fork, ""), path
        if path.suffix == ".ipynb":
            assert f"git+{fork}@{tag}" in moved and f"{fork}/blob/{tag}/notebooks/" in moved


def _sync_release_tool():
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "sync_release", ROOT / "tools" / "sync_release.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["04_training.ipynb", "05_evaluation.ipynb"])
def test_training_notebooks_ask_colab_for_a_gpu(name):
    """Colab's notebook metadata for a GPU runtime (as in colabtools' own notebooks)."""
    metadata = stored()[name].metadata
    assert metadata["accelerator"] == "GPU" and metadata["colab"]["gpuType"] == "T4"


# --- the code notebooks 02, 03 and 04 write out is the package's ----------------------------


def test_notebook_01_countplot_shows_the_packages_counts(demo_root, tmp_path, monkeypatch):
    """Notebook 01's seaborn bars (images per split and class) are ``ScanResult.counts()``,
    the table the notebook prints just before them; a bar per split and class, in order."""
    monkeypatch.setenv("PNEUMONIA_OUTPUTS", str(tmp_path))
    scanned = scan(demo_root)
    namespace: dict = {"images": scanned.images}
    exec(stored()["01_dataset_eda.ipynb"].cells[2].source, namespace)  # the imports cell
    exec(cell_defining("01_dataset_eda.ipynb", 'sns.countplot(images, x="split"'), namespace)
    ax = namespace["ax"]
    classes = [text.get_text() for text in ax.get_legend().get_texts()]  # one per hue
    shown = {
        (split.get_text(), label): int(bar.get_height())
        for label, bars in zip(classes, ax.containers, strict=True)
        for split, bar in zip(ax.get_xticklabels(), bars, strict=True)
    }
    counts = scanned.counts().drop(columns="total")
    assert shown == {(s, c): int(counts.loc[s, c]) for s in counts.index for c in counts.columns}
    assert (tmp_path / "figures" / "01_split_counts.png").is_file()
    plt.close("all")


@pytest.mark.slow  # a scan and a cache build, about 1.2 s
def test_notebook_02_dataset_and_dataloader_give_the_batchloaders_batches(demo_root, tmp_path):
    """Without augmentation, notebook 02's ``XrayDataset`` in a ``DataLoader`` gives the very
    batches of the package's ``BatchLoader`` (same pixels, normalisation and labels, in order);
    its seeded shuffle repeats with the same seed. With augmentation each item is a normalised
    (3, S, S) picture that changes from one call to the next."""
    from helpers.cache import build_cache
    from helpers.loader import cache_rows

    namespace: dict = {}
    exec(stored()["02_preprocessing.ipynb"].cells[2].source, namespace)  # the imports cell
    cell = ast.parse(cell_defining("02_preprocessing.ipynb", "class XrayDataset("))
    definition = [node for node in cell.body if isinstance(node, ast.ClassDef)]  # not the demo
    exec(compile(ast.Module(definition, type_ignores=[]), "notebook 02", "exec"), namespace)
    dataset_class = namespace["XrayDataset"]
    config = Config().quick_mode().replace(image_size=32, subset=None)
    train = make_splits(scan(demo_root).images, config)["train"].iloc[:90]
    cache = build_cache(train["path"].tolist(), 32, tmp_path / "cache", progress=False)
    rows, labels, _ = cache_rows(cache, train)
    plain = namespace["DataLoader"](dataset_class(cache.array, rows, labels), batch_size=16)
    package = BatchLoader(cache, rows, labels, 16, shuffle=False, augment=False, seed=0)
    pairs = list(zip(plain, package, strict=True))
    assert len(pairs) == len(package) > 1
    for (x, y), (x_package, y_package) in pairs:
        torch.testing.assert_close(x, x_package, rtol=0, atol=1e-6)
        assert torch.equal(y, y_package)

    def order(seed):
        shuffle = torch.Generator().manual_seed(seed)
        loader = namespace["DataLoader"](
            dataset_class(cache.array, rows, list(range(len(rows)))),
            batch_size=16,
            shuffle=True,
            generator=shuffle,
        )
        return torch.cat([y for _, y in loader]).tolist()

    assert order(7) == order(7) != order(8)
    assert sorted(order(7)) == list(range(len(rows)))
    augmented = dataset_class(
        cache.array, rows, labels, augment=namespace["article_augmentation"]()
    )
    first, second = augmented[0][0], augmented[0][0]
    assert first.shape == (3, 32, 32) and first.dtype == torch.float32
    assert not torch.equal(first, second)


@pytest.mark.parametrize("trainable_blocks", [2, 4])
def test_notebook_03_builds_exactly_pneumonianet(trainable_blocks, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    namespace: dict = {}
    exec(stored()["03_model.ipynb"].cells[2].source, namespace)  # the imports cell
    namespace["config"] = Config()
    exec(cell_defining("03_model.ipynb", "def build_from_torchvision"), namespace)
    model = namespace["build_from_torchvision"](trainable_blocks, 0.5)
    package = PneumoniaNet(0.5, frozen=True, trainable_blocks=trainable_blocks)

    def layout(net):
        return [(n, tuple(p.shape), p.requires_grad) for n, p in net.named_parameters()]

    assert layout(model) == layout(package)
    assert [n for n, _ in model.named_buffers()] == [n for n, _ in package.named_buffers()]
    if trainable_blocks == 2:
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert (sum(p.numel() for p in model.parameters()), trainable) == (928_162, 351_698)


def _notebook_04(**names) -> dict:
    """Notebook 04's imports, loss-and-optimiser, epoch and fit cells run with ``names``
    (``model``, ``config``, ``weights``, ``device``) given; returns the namespace."""
    namespace: dict = {}
    exec(stored()["04_training.ipynb"].cells[2].source, namespace)  # the imports cell
    namespace.update(names)
    for marker in ("optimizer = torch.optim.AdamW(", "def train_one_epoch(", "def fit("):
        exec(cell_defining("04_training.ipynb", marker), namespace)
    return namespace


@pytest.mark.slow
def test_notebook_04_fit_loop_is_train(demo_root, session_outputs, tmp_path, monkeypatch):
    """The fit loop notebook 04 writes out, run for several epochs until it stops early, gives
    ``train()``'s history (losses, accuracy, learning rate), best epoch and best weights, bit
    for bit: from scratch on the CPU, from the same seed and data, on a model built as
    ``train()`` builds it (``start_training``: seeded, ``channels_last``)."""
    monkeypatch.setenv("PNEUMONIA_OUTPUTS", str(session_outputs))
    config = (
        Config()
        .quick_mode()
        .replace(pretrained="none", image_size=32, subset=120, epochs=12, patience=2)
    )
    data = prepare_data(config, demo_root, progress=False)
    result = train_run(config, tmp_path / "run", prepared=data, device="cpu", progress=False)
    assert result.stopped_early and 3 <= len(result.history) < config.epochs

    device = torch.device("cpu")
    weights = class_weights(data.rows("train")[1])
    model = start_training(config, weights, device).model
    notebook = _notebook_04(model=model, config=config, weights=weights, device=device)
    loaders = data.loader("train", config, device), data.loader("val", config, device)
    history, best_epoch = notebook["fit"](
        model, *loaders, notebook["criterion"], notebook["optimizer"], notebook["scheduler"], config
    )
    assert best_epoch == result.best_epoch
    engine = result.history.set_index("epoch").rename(columns={"lr_head": "lr"})
    columns = ["lr", "train_loss", "val_loss", "val_acc"]
    assert_frame_equal(history[columns], engine[columns], check_exact=True)
    trained = result.model.state_dict()
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, trained[name]), name


@pytest.mark.slow
def test_notebook_04_exercise_1_changes_the_trained_run(
    demo_root, session_outputs, tmp_path, monkeypatch
):
    """``train()`` trains with the criterion notebook 04 builds: its training cell with the
    notebook's class weights gives ``train()``'s own run; with exercise 1's line (no class
    weights) another run, and ``config.json`` says so."""
    monkeypatch.setenv("PNEUMONIA_OUTPUTS", str(session_outputs))
    config = Config().quick_mode().replace(pretrained="none", image_size=32, subset=120, epochs=2)
    data = prepare_data(config, demo_root, progress=False)
    default = train_run(config, tmp_path / "default", prepared=data, device="cpu", progress=False)
    monkeypatch.setenv("PNEUMONIA_OUTPUTS", str(tmp_path / "outputs"))  # notebook_run_dir()
    exercise = re.search(r"`(weights = [^`]+)`", _exercises("04_training.ipynb")[0])[1]

    def training_cell(change: str | None):
        names = {"weights": class_weights(data.rows("train")[1])}
        if change:
            exec(change, {"CLASSES": CLASSES}, names)
        notebook = _notebook_04(
            model=PneumoniaNet(), config=config, device=torch.device("cpu"), **names
        )
        notebook["data"] = data
        exec(cell_defining("04_training.ipynb", "result = train("), notebook)
        return notebook["result"].history.drop(columns="seconds")

    same = training_cell(None)
    assert_frame_equal(same, default.history.drop(columns="seconds"), check_exact=True)
    changed = training_cell(exercise)
    assert not changed["train_loss"].equals(same["train_loss"])
    recorded = json.loads((notebook_run_dir() / "config.json").read_text())
    assert recorded["data"]["class_weights"] == {"NORMAL": 1.0, "PNEUMONIA": 1.0}


def test_notebook_run_dir_gives_each_run_its_own_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("PNEUMONIA_OUTPUTS", str(tmp_path))
    assert notebook_run_dir() == tmp_path / "runs" / "notebook"
    assert notebook_run_dir("no-class-weights") == tmp_path / "runs" / "no-class-weights"
    for bad in ("", "..", "a/b", "a\\b"):
        with pytest.raises(ValueError, match="plain folder name"):
            notebook_run_dir(bad)


def _notebook_04_epoch(model, loader, config, weights, device):
    """Notebook 04's loss, optimiser and epoch cells, run on ``model``."""
    namespace: dict = {}
    exec(stored()["04_training.ipynb"].cells[2].source, namespace)  # the imports cell
    namespace.update(model=model, config=config, weights=weights, device=device)
    exec(cell_defining("04_training.ipynb", "optimizer = torch.optim.AdamW("), namespace)
    exec(cell_defining("04_training.ipynb", "def train_one_epoch("), namespace)
    loss = namespace["train_one_epoch"](
        model, loader, namespace["criterion"], namespace["optimizer"], config.grad_clip
    )
    namespace["scheduler"].step()
    val_loss, _ = namespace["evaluate"](model, loader, namespace["criterion"])
    return loss, val_loss, namespace["optimizer"]


@pytest.mark.slow
@pytest.mark.parametrize("frozen", [False, True])
def test_notebook_04_epoch_is_the_engines_epoch(frozen, demo_root, session_outputs, monkeypatch):
    """From the same seed and data, the epoch notebook 04 writes out and the engine's
    ``run_epoch`` give identical weights, from scratch and with a frozen prefix. (With a frozen
    prefix ``train()`` runs it BatchNorm-folded, the same function up to float rounding: see
    ``test_model.py::test_training_through_the_folded_view_trains_the_model``.)"""
    monkeypatch.setenv("PNEUMONIA_OUTPUTS", str(session_outputs))
    config = Config().quick_mode().replace(pretrained="none", subset=120)
    data = prepare_data(config, demo_root, progress=False)
    device = torch.device("cpu")
    weights = class_weights(data.rows("train")[1])

    def fresh():
        torch.manual_seed(config.seed)
        model = build_model("none") if not frozen else PneumoniaNet(frozen=True)
        if not model.frozen:
            use_scratch_batchnorm(model)
        loader = data.loader("train", config, device)
        loader.set_epoch(0)
        return model, loader

    ours, loader = fresh()
    _, _, optimizer = _notebook_04_epoch(ours, loader, config, weights, device)
    engine, loader = fresh()
    engine_optimizer, scheduler = make_optimizer(engine, config)
    criterion = weighted_loss(weights, config, device)
    run_epoch(engine, loader, criterion, device, engine_optimizer, None, config.grad_clip)
    scheduler.step()
    assert [g["lr"] for g in optimizer.param_groups] == [
        g["lr"] for g in engine_optimizer.param_groups
    ]
    assert [len(g["params"]) for g in optimizer.param_groups] == [
        len(g["params"]) for g in parameter_groups(engine, config)
    ]
    for (name, a), b in zip(ours.state_dict().items(), engine.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


# --- the metrics notebook 05 writes out are the package's -----------------------------------


def _notebook_05(*markers: str, **given) -> dict:
    """A namespace after notebook 05's imports cell and the cells containing ``markers``."""
    namespace: dict = {}
    exec(stored()["05_evaluation.ipynb"].cells[2].source, namespace)  # the imports cell
    namespace.update(given)
    for marker in markers:
        exec(cell_defining("05_evaluation.ipynb", marker), namespace)
    return namespace


def _scored_test_split(seed: int, n_patients: int = 150, decimals: int | None = None):
    """Predictions like ``predictions-test.csv``: 1-3 images per patient, one class per patient,
    probabilities that rank the classes imperfectly (rounded when ``decimals``, to force ties)."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 4, size=n_patients)
    patient_class = (rng.random(n_patients) < 0.6).astype(int)
    patients = np.repeat([f"person{i}" for i in range(n_patients)], sizes)
    y = np.repeat(patient_class, sizes)
    p = 1 / (1 + np.exp(-(2.2 * y - 1.1 + rng.normal(0, 1.2, size=y.size))))
    if decimals is not None:
        p = np.round(p, decimals)
    paths = [
        f"/data/test/{'PNEUMONIA' if t else 'NORMAL'}/{pid}_{i}.jpeg"
        for i, (pid, t) in enumerate(zip(patients, y, strict=True))
    ]
    return pd.DataFrame({"path": paths, "patient": patients, "target": y, "p_pneumonia": p})


@pytest.mark.parametrize("seed,threshold", [(0, 0.5), (3, 0.3)])
def test_notebook_05_bootstrap_loop_is_bootstrap_ci(seed, threshold):
    """The ten-line loop of notebook 05, by patient and by image, gives the package's
    intervals for the same seed: the same draws, the same percentiles."""
    from helpers.metrics import bootstrap_ci

    table = _scored_test_split(seed)
    y, p, patients = (
        table["target"].to_numpy(),
        table["p_pneumonia"].to_numpy(),
        table["patient"].to_numpy(),
    )
    bootstrap = _notebook_05("def bootstrap(")["bootstrap"]
    for groups in (patients, None):
        ours = bootstrap(
            y,
            p,
            np.arange(len(y)) if groups is None else groups,
            n_resamples=100,
            seed=seed,
            threshold=threshold,
        )
        package = bootstrap_ci(y, p, threshold, groups=groups, n_resamples=100, seed=seed)
        assert list(ours.columns) == ["accuracy", "sensitivity", "specificity", "roc_auc"]
        for name in ours.columns:
            np.testing.assert_allclose(ours[name].to_numpy(), package[name], rtol=0, atol=1e-12)
    other_seed = bootstrap(y, p, patients, n_resamples=100, seed=seed + 1, threshold=threshold)
    assert not np.allclose(other_seed["accuracy"], ours["accuracy"])  # the comparison can fail


@pytest.mark.parametrize("seed,decimals", [(0, None), (1, 2), (2, 1), (5, 1)])
def test_notebook_05_youden_threshold_is_the_packages(seed, decimals):
    """``roc_curve`` then argmax, as notebook 05 writes it on the choose half, is
    ``helpers.metrics.youden_threshold``, ties included (probabilities rounded to one decimal)."""
    from helpers.data import test_halves
    from helpers.metrics import youden_threshold

    predictions = _scored_test_split(seed, decimals=decimals)
    namespace = _notebook_05("t_choose = thresholds[", predictions=predictions)
    choose = test_halves(predictions)["choose"]
    assert namespace["choose"].equals(choose)
    assert namespace["t_choose"] == youden_threshold(choose["target"], choose["p_pneumonia"])


def test_notebook_05_youden_threshold_when_no_threshold_helps():
    """With scores that separate nothing (a failed run, or stand-in weights), Youden's J
    peaks at ``roc_curve``'s infinite first threshold; the notebook then calls every image
    NORMAL with a finite threshold, as the package does."""
    from helpers.data import test_halves
    from helpers.metrics import youden_threshold

    predictions = _scored_test_split(0).assign(p_pneumonia=0.5)
    namespace = _notebook_05("t_choose = thresholds[", predictions=predictions)
    choose = test_halves(predictions)["choose"]
    assert np.isfinite(namespace["t_choose"]) and namespace["t_choose"] > 0.5
    assert namespace["t_choose"] == youden_threshold(choose["target"], choose["p_pneumonia"])


def test_notebook_05_at_prevalence_is_the_posterior_at_that_prevalence():
    """Notebook 05's ``at_prevalence``: a probability from a model that saw both classes
    equally often, read at another share of pneumonia, is the posterior computed from the
    classes' score densities at that share (two Gaussians here), and at 50 % it is unchanged."""
    cell = ast.parse(cell_defining("05_evaluation.ipynb", "def at_prevalence("))
    definition = [node for node in cell.body if isinstance(node, ast.FunctionDef)]
    namespace: dict = {}
    exec(compile(ast.Module(definition, type_ignores=[]), "notebook 05", "exec"), namespace)
    at_prevalence = namespace["at_prevalence"]
    score = np.linspace(-3, 4, 50)
    normal, pneumonia = np.exp(-(score**2) / 2), np.exp(-((score - 1.5) ** 2) / 2)
    balanced = pneumonia / (pneumonia + normal)
    for share in (0.1, 0.5, 0.625, 0.9):
        posterior = share * pneumonia / (share * pneumonia + (1 - share) * normal)
        np.testing.assert_allclose(at_prevalence(balanced, share), posterior, rtol=1e-12)
    np.testing.assert_allclose(at_prevalence(balanced, 0.5), balanced, rtol=1e-12)


def test_notebook_05_section_9_sees_the_choose_half_with_patient_grouped_folds(
    demo_root, session_outputs, monkeypatch
):
    """The shift analysis (statistics, mean images, domain classifier) reads the training pool
    and the choose half of the test split, never an image of the report half; its
    cross-validation keeps every patient in one fold."""
    from sklearn.model_selection import StratifiedGroupKFold

    from helpers.data import test_halves

    monkeypatch.setenv("PNEUMONIA_OUTPUTS", str(session_outputs))
    config = Config().quick_mode().replace(pretrained="none")
    data = prepare_data(config, demo_root, progress=False)
    halves = test_halves(data.splits["test"])
    calls = []
    namespace = _notebook_05("pool = pd.concat(", data=data, choose=halves["choose"], config=config)
    real = namespace["cross_val_predict"]

    def recording(estimator, X, y, *, groups=None, cv=None, method=None):
        calls.append((groups, cv))
        return real(estimator, X, y, groups=groups, cv=cv, method=method)

    namespace["cross_val_predict"] = recording
    exec(cell_defining("05_evaluation.ipynb", "thumbnails = ("), namespace)
    pool = namespace["pool"]
    tested = set(pool.loc[pool["split"] == "test", "path"])
    assert tested == set(halves["choose"]["path"])
    assert not tested & set(halves["report"]["path"])
    assert set(pool.loc[pool["split"] == "train", "path"]) == set(
        data.splits["train"]["path"]
    ) | set(data.splits["val"]["path"])
    assert len(calls) == 2  # one domain classifier per class
    for groups, cv in calls:
        assert isinstance(cv, StratifiedGroupKFold) and groups is not None
        features = np.zeros((len(groups), 1))
        labels = (pool.loc[groups.index, "split"] == "test").to_numpy()
        for train, held_out in cv.split(features, labels, groups=groups.to_numpy()):
            assert not set(groups.iloc[train]) & set(groups.iloc[held_out])


def test_show_run_prints_the_runs_recipe_not_the_default(capsys):
    """Notebooks 05 and 06 print the recipe of the run they use: a 128-px run says 128."""
    notebooks_module.show_run(
        Path("runs/x"),
        Config().for_weights("none").replace(image_size=128),
        {"weights_used": "none", "epoch": 7},
    )
    out = capsys.readouterr().out
    assert "images 128x128" in out and "256" not in out
    assert "weights none" in out and "augment framing" in out and "best epoch 7" in out
    for name in ("05_evaluation.ipynb", "06_use_your_model.ipynb"):
        run_cell = cell_defining(name, "run_dir = trained_run(config, location)")
        assert "show_run(run_dir, run_config, checkpoint)" in run_cell


# --- notebooks on a fresh machine, and reusing a run ---------------------------------------


def test_notebook_04_and_05_share_the_run_folder():
    assert "run_dir = notebook_run_dir()" in cell_defining("04_training.ipynb", "result = train(")
    assert "trained_run(config, location)" in cell_defining("05_evaluation.ipynb", "evaluate_run(")


def test_trained_run_trains_a_labelled_quick_run_on_a_cpu(demo_root, monkeypatch, capsys):
    from helpers.sources import DatasetLocation

    trained = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("helpers.train.train", lambda recipe, *a, **k: trained.append(recipe))
    notebooks_module.trained_run(Config(), DatasetLocation(demo_root, "env"))
    assert trained[0].quick and trained[0].image_size == 128
    assert "QUICK recipe" in capsys.readouterr().out


def test_ensure_packages_installs_only_on_colab_or_kaggle(monkeypatch):
    calls = []
    monkeypatch.setattr(
        subprocess, "run", lambda c, **k: calls.append(c) or types.SimpleNamespace(returncode=0)
    )
    notebooks_module.ensure_packages("json")  # importable: nothing to do
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    with pytest.raises(ModuleNotFoundError, match=r"pneumonia-tutorial\[export\]"):
        notebooks_module.ensure_packages("no_such_module_here")
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    notebooks_module.ensure_packages("no_such_module_here")
    assert calls and calls[0][-1] == "no_such_module_here"


# --- running notebooks ----------------------------------------------------------------------


def _tiny_notebook(folder: Path, name: str, *sources: str) -> None:
    nb = nbformat.v4.new_notebook(
        metadata={"kernelspec": {"name": "python3", "display_name": "Python 3"}}
    )
    nb.cells = [nbformat.v4.new_code_cell(source) for source in sources]
    nbformat.write(nb, folder / name)


@pytest.mark.slow
def test_run_notebooks_writes_executed_copies_with_the_settings(demo_root, tmp_path, capsys):
    folder = tmp_path / "nbs"
    folder.mkdir()
    _tiny_notebook(
        folder,
        "a.ipynb",
        "import os",
        "print(os.environ['PNEUMONIA_QUICK'], os.environ['PNEUMONIA_DATA_DIR'])",
    )
    out = run_notebooks(
        quick=True, data=demo_root, out=tmp_path / "executed", only=["a.ipynb"], folder=folder
    )
    executed = nbformat.read(out / "a.ipynb", as_version=4)
    assert all(isinstance(c.execution_count, int) for c in executed.cells)
    assert executed.cells[1].outputs[0]["text"].strip() == f"1 {demo_root.resolve()}"
    assert "SYNTHETIC DEMO DATA" in capsys.readouterr().out
    assert "PNEUMONIA_QUICK" not in os.environ and "PNEUMONIA_DATA_DIR" not in os.environ
    assert not list(out.glob(".*.tmp")), "no temporary files left behind"


@pytest.mark.slow
def test_run_notebooks_stops_at_the_failing_cell(demo_root, tmp_path):
    folder = tmp_path / "nbs"
    folder.mkdir()
    _tiny_notebook(
        folder,
        "broken.ipynb",
        "x = 1",
        "raise ValueError('boom')\nprint('unreachable')",
        "print('after')",
    )
    _tiny_notebook(folder, "next.ipynb")
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


def test_the_imagenet_pass_reports_its_own_checks_as_failures(request):
    """A failed check of the ImageNet pass (04's run trained again, say) reads as that check's
    message, not as nbmake's "NBMAKE INTERNAL ERROR" with a traceback into nbmake."""
    spec = importlib.util.spec_from_file_location(
        "notebooks_conftest", ROOT / "notebooks" / "conftest.py"
    )
    notebooks_conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(notebooks_conftest)
    with pytest.raises(AssertionError) as excinfo:
        raise AssertionError("04's run was trained again")
    report = str(notebooks_conftest.ImagenetNotebookItem.repr_failure(request.node, excinfo))
    assert "04's run was trained again" in report
    assert not report.lstrip().startswith("NBMAKE INTERNAL ERROR"), report[:200]
