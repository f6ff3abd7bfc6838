"""Export a trained PneumoniaNet for use without this package: TorchScript or ONNX.

Both formats take what the model takes, a normalised float batch ``(B, 3, S, S)`` (ImageNet
mean/std, see :func:`helpers.augment.normalize_batch`), and return logits ``(B, 2)``; P(pneumonia) is
``softmax(logits)[:, 1]``. The batch size is free; the image size is fixed at export time.
The preprocessing facts a user needs (image size, classes, mean, std) travel inside the file
as metadata (a ``pneumonia.json`` extra file in TorchScript, a ``pneumonia`` metadata
property in ONNX) and come back as :attr:`ExportedModel.metadata`.

* ``"torchscript"``: ``torch.jit.trace`` of the eval-mode model; loads with plain torch
  (Python or C++). torch marks ``torch.jit`` as deprecated in favour of ``torch.export``;
  it still works, and the warning is silenced here.
* ``"onnx"``: ``torch.onnx.export(dynamo=True)``; needs the optional packages ``onnx`` and
  ``onnxscript`` to export and ``onnxruntime`` to load (``pip install
  "pneumonia-tutorial[export]"``).

Files are written to a temporary name and renamed when complete. Loading a TorchScript file
runs the code stored in it: load only files you made.
"""

from __future__ import annotations

import copy
import json
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from helpers.config import CLASSES, IMAGENET_MEAN, IMAGENET_STD, MIN_IMAGE_SIZE
from helpers.files import atomic_path

FORMATS = ("torchscript", "onnx")
METADATA_KEY = "pneumonia"
TORCHSCRIPT_EXTRA_FILE = "pneumonia.json"
JIT_DEPRECATED = r".*torch\.jit.* is deprecated"  # FutureWarning of recent torch, silenced


class ExportError(RuntimeError):
    """An export or a load of an exported model could not be done (the message says why)."""


def _metadata(model: nn.Module, fmt: str, image_size: int, intensity: str) -> dict[str, Any]:
    """What a user of the exported file needs to feed it correctly."""
    return {
        "format": fmt,
        "image_size": image_size,
        "intensity": intensity,
        "input": f"float32 (B, 3, {image_size}, {image_size}), normalised with mean/std",
        "output": "logits (B, 2); softmax(logits)[:, 1] = P(PNEUMONIA)",
        "classes": list(CLASSES),
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "weights_used": getattr(model, "weights_used", "unknown"),
    }


def _export_torchscript(model: nn.Module, example: torch.Tensor, tmp: Path, meta: dict) -> None:
    """Trace ``model`` on ``example`` and save it to ``tmp`` with the metadata inside."""
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", message=JIT_DEPRECATED, category=FutureWarning)
        # No data-dependent control flow to miss, so skip trace's re-run check (it doubles
        # the cost); tests compare the exported outputs with the eager model's instead.
        traced = torch.jit.trace(model, example, check_trace=False)
        torch.jit.save(traced, str(tmp), _extra_files={TORCHSCRIPT_EXTRA_FILE: json.dumps(meta)})


def _export_onnx(model: nn.Module, example: torch.Tensor, tmp: Path, meta: dict) -> None:
    """Export with the dynamo ONNX exporter (batch axis dynamic) and save to ``tmp``."""
    try:
        import onnx  # noqa: F401  (the exporter needs both packages)
        import onnxscript  # noqa: F401
    except ImportError as err:
        raise ExportError(
            f"ONNX export needs the packages onnx and onnxscript ({err}); install them with "
            "pip install 'pneumonia-tutorial[export]', or use format 'torchscript'"
        ) from err
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.onnx.export(
        model,
        (example,),
        dynamo=True,
        dynamic_shapes=({0: batch},),
        input_names=["image"],
        output_names=["logits"],
        verbose=False,
    )
    program.model.metadata_props[METADATA_KEY] = json.dumps(meta)
    program.save(str(tmp), external_data=False)  # one self-contained file


def export_model(
    model: nn.Module,
    out_path: str | Path,
    fmt: str = "torchscript",
    image_size: int = 256,
    intensity: str = "none",
) -> Path:
    """Write ``model`` (in eval mode, on CPU) to ``out_path`` as ``fmt``; return the path.

    The model passed in is not changed (a CPU copy is exported). ``image_size`` fixes the
    input's height and width (any size the model takes: both formats were checked at 100 px,
    not a multiple of 32, against the eager model; ``benchmarks/README.md``); the batch size
    stays free. ``intensity`` (the run's per-image
    normalisation, :func:`helpers.images.normalize_intensity`) is recorded in the metadata,
    since a user must apply it before normalising.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be at least {MIN_IMAGE_SIZE}, got {image_size}")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    eval_model = copy.deepcopy(model).cpu().eval()
    # Batch 2, not 1: torch.export treats a size-1 dimension as a constant, and the
    # batch axis must stay free in the ONNX graph.
    example = torch.zeros(2, 3, image_size, image_size)
    meta = _metadata(model, fmt, image_size, intensity)
    with atomic_path(out) as tmp:
        if fmt == "torchscript":
            _export_torchscript(eval_model, example, tmp, meta)
        else:
            _export_onnx(eval_model, example, tmp, meta)
    return out


class ExportedModel:
    """A loaded export: ``model(x)`` maps a float tensor (B, 3, S, S) to logits (B, 2)."""

    def __init__(self, path: Path, fmt: str, runner: Any, metadata: dict[str, Any]) -> None:
        """Wrap ``runner`` (a TorchScript module or an onnxruntime session)."""
        self.path = path
        self.format = fmt
        self.metadata = metadata
        self._runner = runner

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for ``x`` (CPU float32), as a torch tensor."""
        x = x.detach().cpu().float()
        if self.format == "torchscript":
            with torch.no_grad():
                return self._runner(x)
        (logits,) = self._runner.run(["logits"], {"image": x.numpy()})
        return torch.from_numpy(logits)

    def __repr__(self) -> str:
        return f"ExportedModel({self.format}, {self.path})"


def load_exported(path: str | Path) -> ExportedModel:
    """Load a file written by :func:`export_model` (format told by its content/suffix)."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: no such file")
    if zipfile.is_zipfile(path):  # TorchScript archives are zip files
        extra = {TORCHSCRIPT_EXTRA_FILE: ""}
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=JIT_DEPRECATED, category=FutureWarning)
                module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        except Exception as err:
            raise ExportError(f"{path}: not a loadable TorchScript file ({err})") from err
        meta = json.loads(extra[TORCHSCRIPT_EXTRA_FILE] or "{}")
        return ExportedModel(path, "torchscript", module.eval(), meta)
    if path.suffix.lower() == ".onnx":
        try:
            import onnxruntime
        except ImportError as err:
            raise ExportError(
                f"{path}: loading ONNX needs onnxruntime (pip install onnxruntime)"
            ) from err
        try:
            session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as err:
            raise ExportError(f"{path}: not a loadable ONNX file ({err})") from err
        props = session.get_modelmeta().custom_metadata_map
        meta = json.loads(props.get(METADATA_KEY, "{}"))
        return ExportedModel(path, "onnx", session, meta)
    raise ExportError(f"{path}: neither a TorchScript archive nor an .onnx file")


def compare_with_eager(
    model: nn.Module, exported: ExportedModel, image_size: int, n_images: int = 8, repeats: int = 20
) -> dict[str, float]:
    """How an export agrees with the eager model, and how fast each runs on this CPU.

    ``max_abs_diff``: the largest difference in P(pneumonia) over ``n_images`` random inputs.
    ``eager_ms`` / ``exported_ms``: the median wall time of one single-image forward pass
    (batch 1, the case of an application scoring one X-ray), over ``repeats`` runs after one
    warm-up, both on the CPU in this process.
    """
    import statistics
    import time

    model = copy.deepcopy(model).cpu().eval()
    x = torch.randn(n_images, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        eager = torch.softmax(model(x), dim=1)[:, 1]
    other = torch.softmax(exported(x), dim=1)[:, 1]

    def median_ms(run) -> float:
        one = x[:1]
        run(one)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run(one)
            times.append((time.perf_counter() - start) * 1000)
        return statistics.median(times)

    with torch.inference_mode():
        eager_ms = median_ms(model)
    return {
        "max_abs_diff": float((eager - other).abs().max()),
        "eager_ms": eager_ms,
        "exported_ms": median_ms(exported),
    }
