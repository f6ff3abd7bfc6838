"""Finding the dataset, scanning it into a table, and splitting it by patient.

The Kaggle "Chest X-Ray Images (Pneumonia)" dataset comes as
``chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg``, often wrapped once more
(``chest_xray/chest_xray/...``) with macOS debris beside it. :func:`resolve_layout` finds the
split folders in whatever shape people have; :func:`scan` turns them into one pandas row per
image; :func:`make_splits` carves a validation set grouped by patient, because the same
patient's X-rays on both sides of a split would let the model be graded on what it memorised.
"""

from __future__ import annotations

import functools
import io
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from helpers.config import (
    CLASSES,
    MAX_IMAGE_PIXELS,
    Config,
)
from helpers.images import oriented_size

SPLITS: tuple[str, str, str] = ("train", "val", "test")
IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png"}
SYSTEM_JUNK = {".DS_Store", "Thumbs.db", "desktop.ini"}
COLUMNS = [
    "path",
    "split",
    "label",
    "target",
    "patient",
    "kind",
    "width",
    "height",
    "mode",
    "bytes",
]

_PERSON = re.compile(r"^(person\d+)_(bacteria|virus)", re.IGNORECASE)
_IM = re.compile(r"(?:^|-)(IM-\d+)-\d+", re.IGNORECASE)


class DatasetError(ValueError):
    """The dataset cannot be used as given; the message says which folder and why."""


# --- file names ---------------------------------------------------------------------------


def patient_id(filename: str) -> str:
    """The patient a Kaggle file name belongs to.

    ``person123_bacteria_456.jpeg`` -> ``person123``; ``IM-0115-0001.jpeg``,
    ``NORMAL2-IM-1427-0001.jpeg`` and ``IM-0429-0001-0001.jpeg`` -> the ``IM-nnnn`` id.
    The ``NORMAL2-`` batch reuses IM numbers; treating equal numbers as one patient can only
    merge groups, never leak a patient across a split. Unknown patterns fall back to the file
    stem (each image its own patient).
    """
    name = Path(filename).name
    match = _PERSON.match(name) or _IM.search(name)
    if match:
        return match.group(1).lower() if match.re is _PERSON else match.group(1).upper()
    return Path(name).stem


def pneumonia_kind(filename: str, label: str) -> str:
    """``bacteria``/``virus`` for PNEUMONIA (from the file name), ``none`` for NORMAL."""
    if label == "NORMAL":
        return "none"
    lower = Path(filename).name.lower()
    for kind in ("bacteria", "virus"):
        if kind in lower:
            return kind
    return "unknown"


# --- layout -------------------------------------------------------------------------------


def _children(folder: Path) -> dict[str, Path]:
    """Sub-folders by lower-case name, skipping hidden folders and ``__MACOSX``."""
    if not folder.is_dir():
        return {}
    return {
        p.name.lower(): p
        for p in sorted(folder.iterdir())
        if p.is_dir() and not p.name.startswith((".", "__MACOSX"))
    }


def resolve_layout(path: str | Path, max_depth: int = 3) -> dict[str, Path]:
    """Map each split present (``train``/``val``/``test``) to its folder.

    Accepts the dataset root, a folder above it (the Kaggle zip's ``chest_xray/chest_xray``
    nesting, ``__MACOSX`` beside it), partial layouts (only ``train/`` or only ``test/``) and
    a split folder itself (``.../test`` holding the class folders). Folder names are matched
    case-insensitively. The shallowest folder with split sub-folders wins.
    """
    root = Path(path).expanduser()
    if not root.exists():
        raise DatasetError(f"{root}: no such folder")
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    if root.name.lower() in SPLITS and _has_class_folders(root):
        return {root.name.lower(): root}
    frontier = [root]
    for _ in range(max_depth + 1):
        nxt: list[Path] = []
        for folder in frontier:
            children = _children(folder)
            splits = {s: children[s] for s in SPLITS if s in children}
            if splits:
                return splits
            nxt.extend(children.values())
        frontier = nxt
    raise DatasetError(
        f"{root}: no train/, val/ or test/ folder found (looked {max_depth} levels down); "
        "expected chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}"
    )


def _has_class_folders(folder: Path) -> bool:
    return any(c.lower() in _children(folder) for c in CLASSES)


# --- scan ---------------------------------------------------------------------------------


@dataclass
class ScanResult:
    """What :func:`scan` found: usable images, problem files and notes about the layout."""

    root: Path
    images: pd.DataFrame
    problems: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    ignored_junk: int = 0

    def counts(self) -> pd.DataFrame:
        """Images per split (rows) and class (columns), with totals."""
        table = pd.crosstab(self.images["split"], self.images["label"])
        table = table.reindex(index=[s for s in SPLITS if s in table.index], columns=list(CLASSES))
        table = table.fillna(0).astype(int)
        table["total"] = table.sum(axis=1)
        return table

    def describe(self) -> str:
        """A short human-readable report: counts, patients, problems, notes."""
        lines = [f"dataset: {self.root}"]
        if len(self.images):
            lines.append(self.counts().to_string())
            lines.append(f"patients: {self.images['patient'].nunique():,}")
        lines.append(f"problems: {len(self.problems)}")
        lines += [f"  {row.path}: {row.reason}" for row in self.problems.head(20).itertuples()]
        if len(self.problems) > 20:
            lines.append(f"  ... and {len(self.problems) - 20} more")
        if self.ignored_junk:
            lines.append(f"ignored system files (.DS_Store and the like): {self.ignored_junk}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _complete_file(path: Path, fmt: str) -> bool:
    """Cheap end-of-file check: a JPEG ends with the EOI marker, a PNG with IEND.

    Catches truncated downloads without decoding the whole image (a few bytes read).
    """
    with path.open("rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - 64))
        tail = fh.read()
    if fmt == "JPEG":
        return b"\xff\xd9" in tail
    if fmt == "PNG":
        return b"IEND" in tail
    return True


def read_header(path: Path) -> tuple[int, int, str, str]:
    """``(width, height, mode, format)`` from the image header, without decoding pixels.

    Width and height are those of the upright image (EXIF orientation applied), the size
    :func:`helpers.images.load_gray` will see.

    Raises ``ValueError`` with the reason when the file is empty, not an image, or truncated.
    """
    if path.stat().st_size == 0:
        raise ValueError("empty file (0 bytes)")
    try:
        with Image.open(path) as img:
            width, height, mode, fmt = img.width, img.height, img.mode, img.format or "?"
            if width * height > MAX_IMAGE_PIXELS:
                raise ValueError(
                    f"{width}x{height} is {width * height / 1e6:.0f} megapixels, over the "
                    f"{MAX_IMAGE_PIXELS / 1e6:.0f} MP limit (decompression-bomb guard)"
                )
            width, height = oriented_size(img)
    except UnidentifiedImageError:
        raise ValueError("not an image PIL can read") from None
    except Image.DecompressionBombError as err:
        raise ValueError(f"too large to be safe ({err})") from None
    except OSError as err:
        raise ValueError(f"unreadable image header ({err})") from None
    if not _complete_file(path, fmt):
        raise ValueError(f"truncated {fmt} file (no end-of-image marker)")
    return width, height, mode, fmt


def scan(path: str | Path, splits: Iterable[str] = SPLITS) -> ScanResult:
    """One row per usable image under ``path`` (see ``docs/architecture.md`` for columns).

    Reads only image headers (fast: no decoding). Files that are not usable images are
    listed in ``problems`` with the reason; hidden/system files are counted, not listed;
    folders that are not NORMAL/PNEUMONIA are reported in ``notes`` and their files ignored.
    """
    layout = resolve_layout(path)
    rows: list[dict] = []
    problems: list[dict] = []
    notes: list[str] = []
    junk = 0
    for split in [s for s in splits if s in layout]:
        folder = layout[split]
        children = _children(folder)
        for name, sub in children.items():
            if name.upper() not in CLASSES:
                count = sum(1 for p in sub.rglob("*") if p.is_file())
                notes.append(f"{sub}: unknown class folder '{sub.name}' ({count} files ignored)")
        for target, label in enumerate(CLASSES):
            class_dir = children.get(label.lower())
            if class_dir is None:
                notes.append(f"{folder}: no {label} folder")
                continue
            files = sorted(p for p in class_dir.iterdir() if p.is_file())
            if not files:
                notes.append(f"{class_dir}: empty class folder")
            for file in files:
                if file.name in SYSTEM_JUNK or file.name.startswith("._"):
                    junk += 1
                    continue
                if file.name.startswith("."):
                    junk += 1
                    continue
                if file.suffix.lower() not in IMAGE_SUFFIXES:
                    problems.append(
                        {
                            "path": str(file),
                            "reason": f"not an image file name ({file.suffix or 'no suffix'})",
                        }
                    )
                    continue
                try:
                    width, height, mode, _ = read_header(file)
                except ValueError as err:
                    problems.append({"path": str(file), "reason": str(err)})
                    continue
                rows.append(
                    {
                        "path": str(file.resolve()),
                        "split": split,
                        "label": label,
                        "target": target,
                        "patient": patient_id(file.name),
                        "kind": pneumonia_kind(file.name, label),
                        "width": width,
                        "height": height,
                        "mode": mode,
                        "bytes": file.stat().st_size,
                    }
                )
    images = pd.DataFrame(rows, columns=COLUMNS)
    problem_table = pd.DataFrame(problems, columns=["path", "reason"])
    return ScanResult(Path(path), images, problem_table, notes, junk)


def scan_report(result: ScanResult) -> dict:
    """A JSON-friendly summary of a scan, with ``usable`` and the ``reason`` when not."""
    images = result.images
    counts = {
        split: {
            label: int(((images["split"] == split) & (images["label"] == label)).sum())
            for label in CLASSES
        }
        for split in SPLITS
        if (images["split"] == split).any()
    }
    reason = ""
    if images.empty:
        reason = f"{result.root}: no usable images found"
    else:
        for split, by_class in counts.items():
            missing = [label for label, n in by_class.items() if n == 0]
            if missing and split != "val":
                reason = f"{result.root}: split '{split}' has no {' or '.join(missing)} images"
                break
    return {
        "root": str(result.root),
        "counts": counts,
        "patients": int(images["patient"].nunique()),
        "problems": result.problems.to_dict(orient="records"),
        "ignored_junk": result.ignored_junk,
        "notes": result.notes,
        "usable": not reason,
        "reason": reason,
    }


# --- splits and weights -------------------------------------------------------------------


def make_splits(images: pd.DataFrame, config: Config) -> dict[str, pd.DataFrame]:
    """Train, validation and test tables.

    The official ``val/`` folder holds 16 images: too few to stop training on. So the
    official train and val are pooled and ``config.val_split`` of the images is carved out,
    grouped by patient (no patient on both sides) and stratified by class, determined by
    ``config.seed``. ``test`` is the official test folder as it is. ``config.subset``
    (quick mode) caps the training set, keeping whole patients.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    pool = images[images["split"].isin(["train", "val"])].reset_index(drop=True)
    test = images[images["split"] == "test"].reset_index(drop=True)
    if pool.empty:
        return {"train": pool, "val": pool.copy(), "test": test}
    n_folds = max(2, round(1 / config.val_split))
    if pool["patient"].nunique() < n_folds or pool["target"].value_counts().min() < n_folds:
        raise DatasetError(
            f"too few patients ({pool['patient'].nunique()}) or images per class to carve a "
            f"{config.val_split:.0%} validation split grouped by patient"
        )
    folds = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=config.seed)
    train_idx, val_idx = next(folds.split(pool, pool["target"], groups=pool["patient"]))
    train, val = pool.iloc[train_idx], pool.iloc[val_idx]
    if config.subset and len(train) > config.subset:
        n_val = round(config.subset * config.val_split / (1 - config.val_split))
        train = _patient_subset(train, config.subset, config.seed)
        val = _patient_subset(val, n_val, config.seed) if len(val) > n_val else val
    return {"train": train.reset_index(drop=True), "val": val.reset_index(drop=True), "test": test}


TEST_HALVES_SEED = 2018
"""Fixed once, never tuned: which test patients fall in which half (:func:`test_halves`)."""

PINNED_HALVES_FILE = "test_halves.csv"
"""The committed membership of the official test split's two halves: one row per file
(``file``, ``label``, ``half``), 624 rows, inside this package (:func:`pinned_halves`)."""


@functools.cache
def pinned_halves() -> pd.DataFrame:
    """The official test split's halves as committed: ``file`` (the Kaggle file name), ``label``,
    ``half`` (``choose``/``report``): 312 images of 202 patients each, 195 PNEUMONIA and 117
    NORMAL in each half.

    They were drawn once by :func:`computed_test_halves` (scikit-learn 1.9.1) on the official
    test split and written down, because scikit-learn changed how
    ``StratifiedGroupKFold(shuffle=True)`` draws its folds in late 2025: recomputed on another
    install, "the report half" could silently become other images. A test checks that the
    file still equals the computation where the real data is present.
    """
    text = resources.files("helpers").joinpath(PINNED_HALVES_FILE).read_text(encoding="utf-8")
    return pd.read_csv(io.StringIO(text), dtype=str)


def halves_rule(test: pd.DataFrame) -> str:
    """How :func:`test_halves` cuts ``test``: ``"pinned"`` when every image is in the committed
    list (:func:`pinned_halves`; matched by file name and class, so a moved, resized or partial
    copy of the official test split keeps its halves), ``"computed"`` otherwise (the demo data,
    another dataset)."""
    if test.empty:
        return "computed"
    pinned = pinned_halves()
    known = set(zip(pinned["file"], pinned["label"].map(CLASSES.index), strict=True))
    names = test["path"].map(lambda p: Path(p).name)
    rows = zip(names, test["target"].astype(int), strict=True)
    return "pinned" if all(row in known for row in rows) else "computed"


def describe_halves_rule(rule: str) -> str:
    """One line saying where the halves came from, for ``config.json`` and reports."""
    if rule == "pinned":
        return f"pinned: the committed list helpers/{PINNED_HALVES_FILE} (official test split)"
    import sklearn

    return (
        "computed: StratifiedGroupKFold(2, shuffle=True, random_state="
        f"{TEST_HALVES_SEED}) by patient, scikit-learn {sklearn.__version__}"
    )


def test_halves(test: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The official test split cut in two by patient: ``choose`` and ``report``.

    The test split is for measuring, never for choosing. But some choices can only be judged
    on data that shows the shift between the training and the test images (an augmentation
    policy, an intensity normalisation). Such choices look at the ``choose`` half only; the
    ``report`` half gives the number to quote (what it has been exposed to is said in
    ``docs/results.md``). Every patient is on one side and the class mix is kept.

    For the official test split (every file in :func:`pinned_halves`) the halves are the
    committed ones, read by file name: the same on every install. Any other table (the demo
    data) is cut by :func:`computed_test_halves`; :func:`halves_rule` says which applies.
    ``test`` needs the columns ``path``, ``target`` and ``patient``; rows come back sorted by
    path.
    """
    table = test.sort_values("path").reset_index(drop=True)  # the same halves in any order
    if halves_rule(table) == "computed":
        return computed_test_halves(table)
    pinned = pinned_halves().set_index("file")["half"]
    half = table["path"].map(lambda p: pinned[Path(p).name])
    return {name: table[half == name] for name in ("choose", "report")}


def computed_test_halves(
    test: pd.DataFrame, seed: int = TEST_HALVES_SEED
) -> dict[str, pd.DataFrame]:
    """Cut ``test`` in two halves by patient, stratified by class, with a fixed seed: the rule
    that drew the pinned halves, and the one used for any other dataset. Rows are sorted by
    path first, so the result does not depend on their order (it does depend on the
    scikit-learn version: see :func:`pinned_halves`)."""
    from sklearn.model_selection import StratifiedGroupKFold

    table = test.sort_values("path").reset_index(drop=True)
    folds = StratifiedGroupKFold(n_splits=2, shuffle=True, random_state=seed)
    choose, report = next(folds.split(table, table["target"], groups=table["patient"]))
    return {"choose": table.iloc[choose], "report": table.iloc[report]}


def _patient_subset(table: pd.DataFrame, n_images: int, seed: int) -> pd.DataFrame:
    """About ``n_images`` rows made of whole patients, class balance kept (seeded)."""
    rng = np.random.default_rng(seed)
    parts = []
    for _, by_class in table.groupby("target"):
        share = round(n_images * len(by_class) / len(table))
        patients = np.array(sorted(by_class["patient"].unique()), dtype=object)
        rng.shuffle(patients)
        sizes = by_class.groupby("patient").size().loc[patients].cumsum()
        keep = sizes.index[: max(1, int(np.searchsorted(sizes.to_numpy(), share)) + 1)]
        parts.append(by_class[by_class["patient"].isin(keep)])
    return pd.concat(parts).sort_index()


def class_weights(targets: Iterable[int], n_classes: int = len(CLASSES)) -> dict[str, float]:
    """The article's loss weights: ``weight[c] = n_total / (n_c * n_classes)``.

    The rarer class (NORMAL, 1,341 of 5,216) gets the larger weight, so each class
    contributes equally to the loss in expectation.
    """
    counts = np.bincount(np.asarray(list(targets), dtype=int), minlength=n_classes)
    if (counts == 0).any():
        missing = [CLASSES[i] for i in np.flatnonzero(counts == 0)]
        raise DatasetError(f"cannot weight classes: no {', '.join(missing)} images")
    total = int(counts.sum())
    return {CLASSES[c]: total / (int(counts[c]) * n_classes) for c in range(n_classes)}


def make_holdout(
    source: str | Path, out: str | Path, fraction: float = 0.15, seed: int = 42
) -> dict[str, int]:
    """Carve a patient-disjoint ``test`` split out of a train-only dataset, as symlinks.

    For data without an official test folder (such as ``../shared/data/kermany-224``): the
    pooled train/val images are split by patient, stratified by class, and linked (not
    copied) into ``out/{train,test}/{NORMAL,PNEUMONIA}``. Training on ``out`` then never sees
    the test patients, not even for early stopping. Returns image counts per split.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    images = scan(source).images
    pool = images[images["split"].isin(["train", "val"])].reset_index(drop=True)
    folds = StratifiedGroupKFold(
        n_splits=max(2, round(1 / fraction)), shuffle=True, random_state=seed
    )
    _, test_idx = next(folds.split(pool, pool["target"], groups=pool["patient"]))
    is_test = np.zeros(len(pool), dtype=bool)
    is_test[test_idx] = True
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"{out} exists: choose a new folder for the hold-out layout")
    tmp = out.with_name(f".{out.name}.tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    counts = {"train": 0, "test": 0}
    for row, test in zip(pool.itertuples(), is_test, strict=True):
        split = "test" if test else "train"
        link = tmp / split / row.label / Path(row.path).name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(row.path)
        counts[split] += 1
    tmp.rename(out)
    return counts
