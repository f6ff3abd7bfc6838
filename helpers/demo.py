"""A synthetic stand-in for the Kaggle dataset, so every notebook runs without it.

The images are drawn, not photographed: a body, two dark lung fields, ribs, spine and
heart, with PNEUMONIA cases carrying bright opacities in the lungs (dense focal patches for
"bacteria", fainter diffuse mottling for "virus"). Everything else mimics the real dataset's
shape: the Kaggle folder layout and file names, several images per patient, ~26/74 class
balance in train and ~38/62 in test, widths spread over a 2:1 range with aspect ratios mostly
1.1-1.8 (smaller than real X-rays, for speed), a few RGB files among grayscale ones, and a
mild exposure shift in the test split, like the real test set's. A small CNN can learn the
signal; nothing learned from it is a medical result.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from helpers.config import CLASSES

MARKER = "DEMO_DATASET.json"
TEST_FRACTION = 0.15
VAL_PER_CLASS = 4  # the Kaggle val folder holds 8 + 8
TRAIN_NORMAL_SHARE = 1341 / 5216
TEST_NORMAL_SHARE = 234 / 624
VIRUS_SHARE = 1345 / 3875


def _ellipse(
    xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, rx: float, ry: float, soft: float
) -> np.ndarray:
    """A soft-edged ellipse mask in [0, 1]: ``1 / (1 + exp(min((r - 1) / soft, 50)))`` with ``r``
    the elliptic radius. Computed in place, in ``xx``'s float32 (the same values as the plain
    expression, a few times faster: generating the demo data is most of the tests' set-up)."""
    r = xx - cx
    r /= rx
    np.square(r, out=r)
    dy = yy - cy
    dy /= ry
    r += np.square(dy, out=dy)
    np.sqrt(r, out=r)
    r -= 1.0
    r /= soft
    np.minimum(r, 50.0, out=r)
    np.exp(r, out=r)
    r += 1.0
    return np.divide(1.0, r, out=r)


def draw_xray(
    rng: np.random.Generator, width: int, height: int, kind: str, shift: bool = False
) -> np.ndarray:
    """One synthetic chest X-ray as uint8 (height, width); ``kind`` is none, bacteria or virus."""
    xx, yy = np.meshgrid(
        np.linspace(-1, 1, width, dtype=np.float32), np.linspace(-1, 1, height, dtype=np.float32)
    )
    jitter = rng.normal(0, 0.03, size=6)
    body = _ellipse(xx, yy, jitter[0], 0.15 + jitter[1], 0.9, 1.15, 0.05)
    img = 0.08 + 0.5 * body
    lungs = np.zeros_like(xx)
    centres = [(-0.38 + jitter[2], -0.05 + jitter[3]), (0.38 + jitter[4], -0.05 + jitter[5])]
    for cx, cy in centres:
        lungs = np.maximum(lungs, _ellipse(xx, yy, cx, cy, 0.27, 0.58, 0.08))
    img -= 0.33 * lungs
    img += 0.18 * _ellipse(xx, yy, 0.0, 0.0, 0.09, 1.2, 0.1)  # spine and mediastinum
    img += 0.16 * _ellipse(xx, yy, 0.14, 0.32, 0.24, 0.22, 0.12)  # heart
    rib_phase = (yy - 0.35 * xx**2) * rng.uniform(7.5, 9.5) * np.pi
    img += 0.07 * body * np.clip(np.cos(rib_phase), 0, None) ** 3
    if kind != "none":
        img += _opacities(rng, xx, yy, centres, kind) * lungs
    elif rng.random() < 0.25:  # faint healthy variation, so the task is not trivial
        img += 0.3 * _opacities(rng, xx, yy, centres, "virus") * lungs
    img = np.clip(img, 0, 1) ** rng.uniform(0.8, 1.25)
    contrast, brightness = rng.uniform(0.85, 1.15), rng.uniform(-0.06, 0.06)
    if shift:
        contrast, brightness = contrast * 0.85, brightness + 0.06
    img = (img - 0.4) * contrast + 0.4 + brightness
    img += rng.normal(0, 0.02, size=img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def _opacities(rng, xx, yy, centres, kind: str) -> np.ndarray:
    """Bright patches inside the lungs: few dense ones (bacteria) or many faint ones (virus)."""
    out = np.zeros_like(xx)
    count, amp, size = (
        (rng.integers(1, 3), (0.25, 0.4), (0.1, 0.2))
        if kind == "bacteria"
        else (rng.integers(5, 10), (0.15, 0.25), (0.05, 0.1))
    )
    for _ in range(int(count)):
        cx, cy = centres[rng.integers(0, 2)]
        px, py = cx + rng.uniform(-0.2, 0.2), cy + rng.uniform(-0.4, 0.45)
        sigma = rng.uniform(*size)
        out += rng.uniform(*amp) * np.exp(-((xx - px) ** 2 + (yy - py) ** 2) / (2 * sigma**2))
    return out


def _image_size(rng: np.random.Generator, label: str) -> tuple[int, int]:
    """Width over a 2:1 range (NORMAL a little larger, as in the real data), aspect ~1.1-1.8."""
    width = int(rng.uniform(360, 640) if label == "NORMAL" else rng.uniform(320, 600))
    aspect = float(np.clip(rng.normal(1.4, 0.18), 1.05, 1.95))
    return width, int(width / aspect)


def _split_plan(n_images: int) -> dict[str, dict[str, int]]:
    """How many images of each class go into each split."""
    n_test = max(2, round(n_images * TEST_FRACTION))
    n_val = 2 * VAL_PER_CLASS if n_images >= 100 else 2
    n_train = n_images - n_test - n_val
    if n_train < 4:
        raise ValueError(f"n_images={n_images} is too small for a demo dataset (need at least 10)")
    plan = {}
    for split, n, share in (
        ("train", n_train, TRAIN_NORMAL_SHARE),
        ("val", n_val, 0.5),
        ("test", n_test, TEST_NORMAL_SHARE),
    ):
        normal = max(1, round(n * share))
        plan[split] = {"NORMAL": normal, "PNEUMONIA": n - normal}
    return plan


def _file_names(
    rng: np.random.Generator, label: str, n: int, counters: dict[str, int]
) -> list[tuple[str, str]]:
    """``n`` Kaggle-style ``(file name, kind)`` pairs, grouped into patients of 1-3 images."""
    names: list[tuple[str, str]] = []
    while len(names) < n:
        counters["patient"] += 1
        pid = counters["patient"]
        per_patient = int(rng.choice([1, 1, 1, 2, 2, 3]))
        if label == "NORMAL":
            prefix = "NORMAL2-" if rng.random() < 0.5 else ""
            for k in range(per_patient):
                names.append((f"{prefix}IM-{pid:04d}-{k + 1:04d}.jpeg", "none"))
        else:
            kind = "virus" if rng.random() < VIRUS_SHARE else "bacteria"
            for _ in range(per_patient):
                counters["image"] += 1
                names.append((f"person{pid}_{kind}_{counters['image']}.jpeg", kind))
    return names[:n]


def make_demo_dataset(out: str | Path, n_images: int = 600, seed: int = 42) -> Path:
    """Write the demo dataset to ``out/chest_xray`` and return that folder.

    Deterministic from ``seed``. Reused when already written with the same settings and
    intact (the marker records the number of files and their total size, compared on reuse:
    a deleted or truncated image gets the dataset drawn again). Written into a temporary
    folder and renamed, so an interrupted run leaves nothing half-made; when another process
    finished the same dataset meanwhile, its copy is kept (it may be reading it) and this
    one's discarded. An existing ``chest_xray`` that is not a demo dataset is never
    overwritten.
    """
    out = Path(out)
    root = out / "chest_xray"
    settings = {"n_images": n_images, "seed": seed, "version": 1}
    if root.exists():
        if _is_complete(root, settings):
            return root
        _refuse_other_data(root)
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".demo-", dir=out))
    try:
        counters = {"patient": 100, "image": 1000}
        for split, by_class in _split_plan(n_images).items():
            for label in CLASSES:
                folder = tmp / split / label
                folder.mkdir(parents=True)
                for name, kind in _file_names(rng, label, by_class[label], counters):
                    width, height = _image_size(rng, label)
                    pixels = draw_xray(rng, width, height, kind, shift=split == "test")
                    image = Image.fromarray(pixels, mode="L")
                    if rng.random() < 0.05:  # a few RGB files, as in the real data
                        image = image.convert("RGB")
                    image.save(folder / name, quality=90)
        (tmp / MARKER).write_text(json.dumps({**settings, **_contents(tmp)}))
        _publish(tmp, root, settings)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return root


def _refuse_other_data(root: Path) -> None:
    """Raise :class:`FileExistsError` when ``root`` is not a demo dataset (no marker): real
    data found there is never overwritten."""
    if not (root / MARKER).is_file():
        raise FileExistsError(f"{root} exists and is not a demo dataset: not overwriting it")


def _contents(root: Path) -> dict[str, int]:
    """The number of files under ``root`` (the marker aside) and their total size: a listing
    and a ``stat`` per file, milliseconds for 600 images."""
    files = [path for path in root.rglob("*") if path.is_file() and path.name != MARKER]
    return {"files": len(files), "bytes": sum(path.stat().st_size for path in files)}


def _is_complete(root: Path, settings: dict[str, int]) -> bool:
    """Whether ``root`` is the demo dataset of ``settings``, with every file it was written
    with (by count and total size)."""
    try:
        recorded = json.loads((root / MARKER).read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(recorded, dict) or {key: recorded.get(key) for key in settings} != settings:
        return False
    return recorded == {**settings, **_contents(root)}


def _publish(tmp: Path, root: Path, settings: dict[str, int]) -> None:
    """Rename the finished dataset ``tmp`` to ``root``, unless another process has put the
    same complete dataset there meanwhile: that one is kept and ``tmp`` left for the caller
    to remove. A damaged or older demo dataset at ``root`` is renamed aside first and removed
    after (a folder cannot be renamed onto a non-empty one)."""
    aside: Path | None = None
    if root.exists():
        if _is_complete(root, settings):
            return
        _refuse_other_data(root)
        aside = Path(tempfile.mkdtemp(prefix=".demo-old-", dir=root.parent))
        try:
            root.rename(aside / root.name)
        except FileNotFoundError:  # another process moved it first
            pass
    try:
        tmp.rename(root)
    except OSError:  # root appeared since the check: keep it if it is the finished dataset
        if not _is_complete(root, settings):
            raise
    finally:
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
