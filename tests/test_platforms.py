"""The platforms the series' users are on, each reproduced with fakes: a GPU's compute
capability (a T4, an H100), a Kaggle kernel that also has ``/content`` and an importable
``google.colab``, Colab itself, Kaggle's input layouts, a run attached on Kaggle, Colab's
``KEEP_OUTPUTS``, Kaggle credentials, and the CPU thread policy. The setup cell's own paths
(install, failure message, offline wheel) are tested in ``test_notebooks.py``."""

from __future__ import annotations

import importlib
import itertools
import os
import pkgutil
import sys
import time
import types
from pathlib import Path

import nbformat
import pytest
import torch
from layouts import jpeg, tiny_layout

import helpers
from helpers import cpu, platforms, sources
from helpers import notebooks as notebooks_module
from helpers.config import Config, cache_dir, outputs_dir
from helpers.data import DatasetError, scan
from helpers.recipe import autocast_dtype
from helpers.runs import notebook_run_dir
from helpers.sources import DatasetLocation, find_dataset

ROOT = Path(__file__).resolve().parents[1]


# --- fakes ---------------------------------------------------------------------------------


def _shell(module: str):
    """An object printed like an IPython shell of ``module`` (Colab's kernel runs
    ``google.colab._shell.Shell``; a plain Jupyter kernel ``ipykernel.zmqshell``)."""
    cls = type("Shell", (), {"__module__": module})
    return cls()


@pytest.fixture()
def fake_colab_package(monkeypatch):
    """An importable ``google.colab`` whose ``drive.mount`` and ``files.upload`` record
    their calls (present on Colab, and possibly on Kaggle, whose image is Colab's)."""
    calls: list[tuple] = []
    colab = types.ModuleType("google.colab")
    colab.drive = types.SimpleNamespace(mount=lambda *a, **k: calls.append(("mount", a)))
    colab.files = types.SimpleNamespace(upload=lambda: calls.append(("upload",)) or {})
    google = types.ModuleType("google")
    google.colab = colab
    monkeypatch.setitem(sys.modules, "google", google)
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    return calls


def _kernel(monkeypatch, module: str | None) -> None:
    """Make ``IPython.get_ipython()`` return a shell of ``module`` (None: not in IPython)."""
    shell = None if module is None else _shell(module)
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: shell))


@pytest.fixture()
def on_colab(monkeypatch, fake_colab_package):
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    _kernel(monkeypatch, "google.colab._shell")
    return fake_colab_package


@pytest.fixture()
def on_kaggle_like_colab(monkeypatch, fake_colab_package):
    """A Kaggle kernel with everything that could pass for Colab: ``/content`` exists,
    ``google.colab`` imports, and even the kernel's shell names google.colab."""
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")  # a "Save Version" run
    _kernel(monkeypatch, "google.colab._shell")
    real_isdir, real_exists = os.path.isdir, os.path.exists
    monkeypatch.setattr(os.path, "isdir", lambda p: p == "/content" or real_isdir(p))
    monkeypatch.setattr(os.path, "exists", lambda p: p == "/content" or real_exists(p))
    return fake_colab_package


# --- which platform --------------------------------------------------------------------------


def test_platform_detection(monkeypatch, fake_colab_package):
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    _kernel(monkeypatch, "ipykernel.zmqshell")  # a laptop's Jupyter, google.colab importable
    assert platforms.where() == "local" and not platforms.on_cloud()
    _kernel(monkeypatch, None)  # a script or the command line
    assert platforms.where() == "local"
    _kernel(monkeypatch, "google.colab._shell")
    assert platforms.where() == "colab" and platforms.on_colab()
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    assert platforms.where() == "kaggle" and not platforms.on_colab()


def test_on_kaggle_nothing_colab_only_happens(on_kaggle_like_colab, tmp_path, monkeypatch):
    """Kaggle with /content and google.colab present: KEEP_OUTPUTS goes to /kaggle/working
    without mounting Drive, and notebook 06 opens no upload widget (which would block a
    "Save Version" run)."""
    calls = on_kaggle_like_colab
    assert os.path.isdir("/content")  # the fake is in place
    monkeypatch.setattr(notebooks_module, "KAGGLE_WORKING", str(tmp_path / "working"))
    assert notebooks_module.keep_outputs() == tmp_path / "working"
    assert outputs_dir() == tmp_path / "working"
    namespace = _notebook_06_upload_cell()
    assert namespace["IMAGES"] == []
    assert calls == [], f"Colab-only calls on Kaggle: {calls}"


def test_on_colab_the_upload_widget_opens(on_colab):
    """The same cell in Colab's own kernel asks for files (so the Kaggle test can fail)."""
    _notebook_06_upload_cell()
    assert on_colab == [("upload",)]


def _notebook_06_upload_cell() -> dict:
    nb = nbformat.read(ROOT / "notebooks" / "06_use_your_model.ipynb", as_version=4)
    namespace: dict = {}
    exec(nb.cells[2].source, namespace)  # the imports cell
    (cell,) = [c.source for c in nb.cells if "files.upload()" in c.source]
    exec(cell, namespace)
    return namespace


# --- mixed precision: the GPU's compute capability decides -------------------------------------


def test_autocast_dtype_follows_compute_capability(monkeypatch):
    """A T4 (7.5) gets float16 even though ``is_bf16_supported()`` says True there (it
    counts emulation); an H100 (9.0) and an A100 (8.0) get bfloat16; a CPU none."""
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    capability = {"value": (7, 5)}
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: capability["value"])
    assert autocast_dtype(torch.device("cuda")) == torch.float16  # T4
    for value in ((9, 0), (8, 0)):  # H100, A100
        capability["value"] = value
        assert autocast_dtype(torch.device("cuda", 0)) == torch.bfloat16
    capability["value"] = (6, 0)  # P100
    assert autocast_dtype(torch.device("cuda", 0)) == torch.float16
    assert autocast_dtype(torch.device("cpu")) is None


# --- Kaggle's input layouts -------------------------------------------------------------------


def _kaggle_dataset(folder: Path) -> Path:
    """The Kaggle zip's shape under ``folder``: chest_xray/chest_xray/{splits} with
    ``__MACOSX`` beside it holding resource-fork junk in the same tree."""
    tiny_layout(folder / "chest_xray" / "chest_xray")
    junk = folder / "chest_xray" / "__MACOSX" / "chest_xray" / "train" / "NORMAL"
    junk.mkdir(parents=True)
    (junk / "._IM-0001-0001.jpeg").write_bytes(b"\0\5\26\7")
    return folder


@pytest.mark.parametrize(
    "layout",
    [
        "chest-xray-pneumonia",  # /kaggle/input/<slug>
        "datasets/paultimothymooney/chest-xray-pneumonia",  # since 2026
        "datasets/paultimothymooney/chest-xray-pneumonia/versions/2",  # kagglehub-style
    ],
)
def test_the_attached_dataset_is_found_in_each_kaggle_layout(layout, tmp_path, monkeypatch):
    kaggle_input = tmp_path / "kaggle" / "input"
    _kaggle_dataset(kaggle_input / layout)
    monkeypatch.setattr(sources, "KAGGLE_INPUT", kaggle_input)
    monkeypatch.setattr(sources, "project_root", lambda: tmp_path / "project")
    location = find_dataset(download=False)
    assert location.source == "kaggle-input"
    assert location.root == kaggle_input / layout
    images = scan(location.root).images
    assert len(images) == 6 and set(images["split"]) == {"train", "val", "test"}
    assert not images["path"].str.contains("__MACOSX").any()


def test_kaggle_input_prefers_the_real_dataset_over_an_attached_demo(tmp_path, monkeypatch):
    """A notebook output attached as an input may hold the synthetic demo dataset: it is
    never taken for the X-rays."""
    from helpers.demo import make_demo_dataset

    kaggle_input = tmp_path / "input"
    make_demo_dataset(kaggle_input / "notebooks" / "ada" / "a-04" / "demo-data", n_images=40)
    monkeypatch.setattr(sources, "KAGGLE_INPUT", kaggle_input)
    monkeypatch.setattr(sources, "project_root", lambda: tmp_path / "project")
    assert sources._kaggle_input_dataset() is None
    _kaggle_dataset(kaggle_input / "datasets" / "someone" / "x-rays")
    assert find_dataset(download=False).root == kaggle_input / "datasets/someone/x-rays"


def test_kaggle_input_roots_order(tmp_path):
    base = tmp_path / "input"
    for folder in (
        "aaa-other",
        "datasets/paultimothymooney/chest-xray-pneumonia/versions/1",
        "datasets/paultimothymooney/chest-xray-pneumonia/versions/2",
    ):
        (base / folder).mkdir(parents=True)
    jpeg(base / "loose-file.jpeg")
    slug = base / "datasets/paultimothymooney/chest-xray-pneumonia"
    assert sources.kaggle_input_roots(base) == [
        slug / "versions/2",
        slug / "versions/1",
        base / "aaa-other",
    ]


# --- a run carried between notebooks -----------------------------------------------------------


def _attached_run(kaggle_input: Path) -> Path:
    """Notebook 04's saved output attached to another notebook (Kaggle's newer layout)."""
    run = kaggle_input / "notebooks" / "ada" / "pneumonia-04" / "pneumonia-tutorial"
    run = run / "runs" / "notebook"
    run.mkdir(parents=True)
    for name, payload in {"best.pt": b"best", "last.pt": b"last", "config.json": b"{}"}.items():
        (run / name).write_bytes(payload)
    return run


def test_on_kaggle_an_attached_run_is_copied_into_outputs(tmp_path, monkeypatch, capsys):
    kaggle_input = tmp_path / "input"
    attached = _attached_run(kaggle_input)
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    monkeypatch.setattr(notebooks_module, "KAGGLE_INPUT", kaggle_input)
    monkeypatch.setenv("PNEUMONIA_OUTPUTS", str(tmp_path / "working"))

    def no_training(*args, **kwargs):
        raise AssertionError("an attached run must not be trained again")

    monkeypatch.setattr("helpers.train.train", no_training)
    location = DatasetLocation(tmp_path, "kaggle-input")
    run_dir = notebooks_module.trained_run(Config().quick_mode(), location)
    assert run_dir == notebook_run_dir() == tmp_path / "working" / "runs" / "notebook"
    assert (run_dir / "best.pt").read_bytes() == b"best"
    assert sorted(p.name for p in run_dir.iterdir()) == ["best.pt", "config.json", "last.pt"]
    assert not list(run_dir.parent.glob(".*copying")), "no temporary copy left behind"
    out = capsys.readouterr().out
    assert f"attached as an input: {attached}" in out and str(run_dir) in out
    # the next call finds the copy in the outputs folder
    assert notebooks_module.trained_run(Config().quick_mode(), location) == run_dir


def test_on_kaggle_an_attached_run_replaces_an_unfinished_one(tmp_path, monkeypatch, capsys):
    """An outputs folder whose ``runs/notebook`` has no ``best.pt`` (a training interrupted
    before its first validation, its ``last.pt`` left behind): the attached run takes its place,
    the old folder is gone, no temporary folder stays, and the replacement is said."""
    kaggle_input = tmp_path / "input"
    _attached_run(kaggle_input)
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    monkeypatch.setattr(notebooks_module, "KAGGLE_INPUT", kaggle_input)
    monkeypatch.setenv("PNEUMONIA_OUTPUTS", str(tmp_path / "working"))
    unfinished = notebook_run_dir()
    (unfinished / "checkpoints").mkdir(parents=True)
    (unfinished / "last.pt").write_bytes(b"interrupted")
    (unfinished / "checkpoints" / "epoch.pt").write_bytes(b"interrupted")
    monkeypatch.setattr("helpers.train.train", lambda *a, **k: pytest.fail("trained again"))
    location = DatasetLocation(tmp_path, "kaggle-input")
    run_dir = notebooks_module.trained_run(Config().quick_mode(), location)
    assert run_dir == unfinished
    assert sorted(p.name for p in run_dir.iterdir()) == ["best.pt", "config.json", "last.pt"]
    assert (run_dir / "last.pt").read_bytes() == b"last"
    assert sorted(p.name for p in run_dir.parent.iterdir()) == ["notebook"], "nothing left over"
    assert f"replaced {run_dir}, an unfinished run (no best.pt)" in capsys.readouterr().out
    with pytest.raises(FileExistsError, match="holds a trained run"):
        notebooks_module._copy_run(kaggle_input, run_dir)  # a trained run is never replaced
    assert (run_dir / "best.pt").read_bytes() == b"best"


def test_off_kaggle_an_input_folder_is_not_searched(tmp_path, monkeypatch):
    kaggle_input = tmp_path / "input"
    _attached_run(kaggle_input)
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    monkeypatch.setattr(notebooks_module, "KAGGLE_INPUT", kaggle_input)
    trained = []
    monkeypatch.setattr("helpers.train.train", lambda recipe, *a, **k: trained.append(recipe))
    notebooks_module.trained_run(Config().quick_mode(), DatasetLocation(tmp_path, "env"))
    assert len(trained) == 1


def test_keep_outputs_on_colab_moves_runs_and_figures_to_drive_not_the_cache(
    on_colab, demo_root, tmp_path, monkeypatch
):
    from helpers.loader import prepare_data
    from helpers.plots import figures_dir

    local = tmp_path / "content" / "outputs"
    monkeypatch.setenv("PNEUMONIA_OUTPUTS", str(local))
    monkeypatch.delenv("PNEUMONIA_CACHE", raising=False)
    drive = tmp_path / "drive" / "MyDrive" / "pneumonia-tutorial"
    monkeypatch.setattr(notebooks_module, "DRIVE_FOLDER", str(drive))
    assert notebooks_module.keep_outputs() == drive
    assert on_colab == [("mount", ("/content/drive",))]
    assert outputs_dir() == drive
    assert notebook_run_dir() == drive / "runs" / "notebook" and figures_dir() == drive / "figures"
    assert cache_dir() == local / "cache"
    config = Config().quick_mode().replace(pretrained="none", subset=60)
    data = prepare_data(config, demo_root, progress=False)
    assert data.cache.path.parent == local / "cache"
    assert not (drive / "cache").exists()


# --- Kaggle credentials -------------------------------------------------------------------------


def _fake_kagglehub(monkeypatch, download, credentials):
    hub = types.ModuleType("kagglehub")
    hub.dataset_download = download
    config = types.ModuleType("kagglehub.config")
    config.get_kaggle_credentials = lambda: credentials
    hub.config = config
    monkeypatch.setitem(sys.modules, "kagglehub", hub)
    monkeypatch.setitem(sys.modules, "kagglehub.config", config)


def test_colab_secrets_are_left_to_kagglehub(on_colab, tmp_path, monkeypatch):
    """kagglehub reads Colab secrets itself (``KAGGLE_API_TOKEN`` first); copying them into
    the environment would put a legacy pair ahead of a correct token. Nothing is copied."""
    secrets = {"KAGGLE_USERNAME": "ada", "KAGGLE_KEY": "old", "KAGGLE_API_TOKEN": "new"}
    sys.modules["google.colab"].userdata = types.SimpleNamespace(get=secrets.__getitem__)
    for name in secrets:
        monkeypatch.delenv(name, raising=False)
    downloaded = tiny_layout(tmp_path / "hub" / "chest_xray")
    _fake_kagglehub(monkeypatch, lambda handle: str(downloaded.parent), None)
    assert sources.download_with_kagglehub() == downloaded.parent
    assert not any(name in os.environ for name in secrets)


@pytest.mark.parametrize(
    ("credentials", "named"),
    [
        (types.SimpleNamespace(username=None, key=None, api_key="tok"), "an API token"),
        (types.SimpleNamespace(username="ada", key="k", api_key=None), "HTTP Basic auth"),
        (None, "none (an anonymous request)"),
    ],
)
def test_a_refusal_names_the_credential_that_was_sent(credentials, named, monkeypatch):
    def refuse(handle):
        raise RuntimeError("401 Client Error: Unauthorized")

    _fake_kagglehub(monkeypatch, refuse, credentials)
    with pytest.raises(DatasetError) as refused:
        sources.download_with_kagglehub()
    message = str(refused.value)
    assert named in message
    assert "without any credentials" in message and "KAGGLE_API_TOKEN" in message


# --- the CPU thread policy ----------------------------------------------------------------------


def _fresh_imports(monkeypatch) -> list[str]:
    """Take ``helpers`` and every ``helpers.*`` module out of ``sys.modules`` (put back, and
    the copies imported meanwhile dropped, when the test ends), so that the next import of
    each runs its module code again; return the package's module names (pkgutil)."""
    names = [
        module.name
        for module in pkgutil.walk_packages(helpers.__path__, "helpers.")
        if module.name != "helpers.__main__"  # running the command line, not an import
    ]
    loaded = [name for name in sys.modules if name == "helpers" or name.startswith("helpers.")]
    for name in {*loaded, *names}:
        monkeypatch.setitem(sys.modules, name, None)  # recorded: put back, or removed, after
        del sys.modules[name]
    return names


def _busy_machine(monkeypatch) -> list[int]:
    """Two usable cores of which one is busy, whichever ``helpers.cpu`` looks (a fresh copy
    of the module too): ``sched_getaffinity`` and ``/proc/stat`` faked; every
    ``torch.set_num_threads`` call is recorded (and still made) and returned."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    reads = itertools.count()
    real_read_text = Path.read_text

    def read_text(path, *args, **kwargs):
        if str(path) != "/proc/stat":
            return real_read_text(path, *args, **kwargs)
        k = next(reads)  # between two reads cpu0 was busy, cpu1 idle
        return f"cpu  0 0 0 0\ncpu0 {200 * k} 0 0 100\ncpu1 0 0 0 {200 * k}\n"

    monkeypatch.setattr(Path, "read_text", read_text)
    monkeypatch.setattr(time, "sleep", lambda seconds: None)
    calls: list[int] = []
    real_set = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(n) or real_set(n))
    return calls


def test_importing_helpers_changes_nothing(monkeypatch):
    """Importing the package and each of its modules afresh, on a busy machine, sets no torch
    thread count and leaves the environment as it was."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    set_calls = _busy_machine(monkeypatch)
    assert cpu.idle_core_threads() == 1  # the fakes make the thread policy act
    threads, environment = torch.get_num_threads(), dict(os.environ)
    names = _fresh_imports(monkeypatch)
    assert {"helpers.cli", "helpers.notebooks", "helpers.plots.style"} <= set(names)
    for name in names:
        importlib.import_module(name)
    assert sys.modules["helpers.cpu"] is not cpu  # imported afresh
    assert set_calls == [], f"importing helpers called torch.set_num_threads{tuple(set_calls)}"
    assert torch.get_num_threads() == threads
    assert dict(os.environ) == environment


def test_the_thread_policy_is_an_explicit_call(monkeypatch):
    before = torch.get_num_threads()
    monkeypatch.setattr(cpu, "usable_cores", lambda: [0, 1])
    monkeypatch.setattr(cpu, "busy_cores", lambda *a, **k: 1.0)  # one core taken
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    try:
        assert cpu.use_idle_cores() == 1 and torch.get_num_threads() == 1
        assert "OMP_NUM_THREADS" not in os.environ  # child processes are not affected
        monkeypatch.setenv("OMP_NUM_THREADS", "2")  # the user's choice wins
        torch.set_num_threads(2)
        assert cpu.use_idle_cores() is None and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_busy_cores_counts_only_the_cores_this_process_may_use(tmp_path, monkeypatch):
    """``/proc/stat`` lists every CPU of the host; only those of ``sched_getaffinity`` count
    (a container or ``taskset`` may give the process one core of two)."""
    stat = tmp_path / "stat"
    samples = iter(
        [
            "cpu  0 0 0 0\ncpu0 100 0 0 100\ncpu1 0 0 0 200\n",
            "cpu  0 0 0 0\ncpu0 300 0 0 100\ncpu1 0 0 0 400\n",  # cpu0 busy, cpu1 idle
        ]
    )
    monkeypatch.setattr(cpu, "STAT", stat)
    monkeypatch.setattr(cpu.time, "sleep", lambda s: stat.write_text(next(samples)))
    stat.write_text(next(samples))
    assert cpu.busy_cores(cores=[0, 1]) == pytest.approx(1.0)
    stat.write_text("cpu  0 0 0 0\ncpu0 100 0 0 100\ncpu1 0 0 0 200\n")
    samples = iter(["cpu  0 0 0 0\ncpu0 300 0 0 100\ncpu1 0 0 0 400\n"])
    assert cpu.busy_cores(cores=[1]) == pytest.approx(0.0)
    if hasattr(os, "sched_getaffinity"):
        assert cpu.usable_cores() == sorted(os.sched_getaffinity(0))


@pytest.mark.slow
def test_a_resumed_run_gets_its_thread_count_back_with_the_policy_active(
    demo_root, outputs, tmp_path, monkeypatch, capsys
):
    """A run started with 2 threads, interrupted, then resumed on a machine the policy finds
    busy (it chooses 1 thread): the resumed run trains with 2 again, as recorded."""
    from helpers.train import train

    before = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    config = Config().quick_mode().replace(pretrained="none", subset=80, image_size=32, epochs=2)
    try:
        torch.set_num_threads(2)
        train(config, tmp_path / "run", demo_root, progress=False, stop_after=1)
        monkeypatch.setattr(cpu, "usable_cores", lambda: [0, 1])
        monkeypatch.setattr(cpu, "busy_cores", lambda *a, **k: 1.0)
        assert cpu.use_idle_cores() == 1 and torch.get_num_threads() == 1  # the policy acted
        capsys.readouterr()
        train(config, tmp_path / "run", demo_root, progress=False, resume=True)
        assert torch.get_num_threads() == 2
        assert "using 2 CPU threads, as before the interruption" in capsys.readouterr().out
    finally:
        torch.set_num_threads(before)
