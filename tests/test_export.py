"""Exported models (TorchScript, ONNX) must compute what the eager model computes."""

from __future__ import annotations

import copy
import types
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from helpers.augment import normalize_batch
from helpers.export import ExportError, export_model, load_exported
from helpers.images import load_gray
from helpers.model import PneumoniaNet

SIZE = 80
"""The export tests' image size: no multiple of 32, which no format needs (the check that
demanded one was removed), so every test below also shows that."""


def varied_images(n: int, seed: int) -> torch.Tensor:
    """Random images with a different contrast and colour offset each, so outputs differ."""
    g = torch.Generator().manual_seed(seed)
    scale = 0.2 + 3 * torch.rand(n, 1, 1, 1, generator=g)
    shift = torch.randn(n, 3, 1, 1, generator=g)
    return torch.randn(n, 3, SIZE, SIZE, generator=g) * scale + shift


@pytest.fixture(scope="module")
def model() -> PneumoniaNet:
    """A frozen PneumoniaNet whose BatchNorm statistics fit the test images.

    A freshly initialised network has running mean 0 / variance 1 everywhere, which makes its
    logits ~1e-9 and every probability 0.5: any export would "match". Calibrating the
    statistics on a few batches gives clearly different probabilities per image.
    """
    torch.manual_seed(0)
    net = PneumoniaNet(frozen=False).train()
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the calibration batches
    with torch.no_grad():
        for step in range(2):
            net(varied_images(8, seed=100 + step))
    net.set_frozen(True)
    net.weights_used = "imagenet"  # pretend, to check it travels in the metadata
    return net.train()  # export must switch to eval mode itself


def eager_probabilities(net: PneumoniaNet, x: torch.Tensor) -> torch.Tensor:
    """softmax of the eval-mode model's logits."""
    was_training = net.training
    with torch.no_grad():
        probs = net.eval()(x).softmax(1)
    net.train(was_training)
    return probs


@pytest.fixture(scope="module")
def onnx_file(model, tmp_path_factory) -> Path:
    """The package's ONNX export of ``model``, made once: torch.onnx's dynamo exporter needs
    ~5-20 s for this model on 2 CPU cores."""
    for package in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(package)
    folder = tmp_path_factory.mktemp("onnx") / "sub"
    return export_model(model, folder / "model.onnx", "onnx", image_size=SIZE)


@pytest.mark.parametrize(
    "fmt,suffix",
    [("torchscript", ".pt"), pytest.param("onnx", ".onnx", marks=pytest.mark.slow)],
)
def test_export_matches_eager_probabilities(
    model, request, tmp_path, fmt: str, suffix: str
) -> None:
    x = varied_images(5, seed=1)  # batch size differs from the export's example (2)
    expected = eager_probabilities(model, x)
    assert expected[:, 1].max() - expected[:, 1].min() > 0.05  # the check below can fail

    if fmt == "onnx":
        path = request.getfixturevalue("onnx_file")
    else:
        path = export_model(model, tmp_path / "sub" / f"model{suffix}", fmt, image_size=SIZE)
    assert path.name == f"model{suffix}" and path.parent.name == "sub" and path.is_file()
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left
    assert model.training  # the caller's model is left as it was

    exported = load_exported(path)
    assert exported.format == fmt
    assert exported.metadata["image_size"] == SIZE
    assert exported.metadata["weights_used"] == "imagenet"
    assert exported.metadata["classes"] == ["NORMAL", "PNEUMONIA"]
    probs = exported(x).softmax(1)
    assert probs.shape == (5, 2)
    torch.testing.assert_close(probs, expected, rtol=0, atol=1e-4)


def test_bad_format_and_bad_files_raise(model, tmp_path) -> None:
    with pytest.raises(ValueError, match="fmt must be one of"):
        export_model(model, tmp_path / "m.tflite", "tflite", image_size=SIZE)
    with pytest.raises(ValueError, match="at least 32"):
        export_model(model, tmp_path / "m.pt", "torchscript", image_size=16)
    with pytest.raises(ExportError, match="no such file"):
        load_exported(tmp_path / "missing.pt")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ExportError, match="junk.onnx"):
        load_exported(junk)
    other = tmp_path / "weights.bin"
    other.write_bytes(b"\x00" * 10)
    with pytest.raises(ExportError, match="neither"):
        load_exported(other)


@pytest.mark.slow
def test_notebook_06_export_and_session_give_the_packages_outputs(model, onnx_file, tmp_path):
    """Notebook 06 exports with ``torch.onnx.export`` in view and runs the file with an ONNX
    Runtime session on numpy arrays it prepares itself; for the same image files, the package's
    ``export_model`` file, loaded by ``load_exported`` and fed by ``normalize_batch``, gives the
    same probabilities."""
    nb = nbformat.read(
        Path(__file__).resolve().parents[1] / "notebooks" / "06_use_your_model.ipynb", as_version=4
    )

    def cell(marker: str) -> str:
        (found,) = [c.source for c in nb.cells if c.cell_type == "code" and marker in c.source]
        return found

    rng = np.random.default_rng(0)
    files = []
    for i in range(4):
        pixels = rng.normal(0.2 + 0.2 * i, 0.05 + 0.1 * i, size=(90 + 10 * i, 70))
        files.append(tmp_path / f"image{i}.png")
        Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8)).save(files[-1])
    namespace: dict = {}
    exec(nb.cells[2].source, namespace)  # the imports cell
    namespace.update(
        model=copy.deepcopy(model),  # the notebook sets it to eval mode
        size=SIZE,
        intensity="none",
        run_dir=tmp_path,
        readable=[types.SimpleNamespace(path=str(f)) for f in files],
    )
    exec(cell("torch.onnx.export("), namespace)
    exec(cell("onnxruntime.InferenceSession("), namespace)
    p_notebook = namespace["p_onnx"]

    pictures = np.stack([load_gray(f, SIZE) for f in files])
    logits = load_exported(onnx_file)(normalize_batch(torch.from_numpy(pictures)[:, None]))
    p_package = logits.softmax(1)[:, 1].numpy()
    assert p_package.max() - p_package.min() > 0.01  # the comparison below can fail
    np.testing.assert_allclose(p_notebook, p_package, rtol=0, atol=1e-6)
