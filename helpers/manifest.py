"""The data manifest: which images a run trained, validated and was tested on, written down.

Splits drawn from a seed are only as stable as the library that draws them (scikit-learn
changed ``StratifiedGroupKFold(shuffle=True)`` in late 2025), and a dataset can move, be
re-downloaded or change. So a run does not remember *how* it split its data but *what* the
split was: ``manifest.csv`` in the run folder, one row per image:

``path``
    the absolute path when the run was trained;
``relpath``
    ``<split folder>/<class folder>/<file name>``, the path below the folder that holds the
    split folders: what stays the same when the dataset moves;
``split``
    the role the image played: ``train``, ``val`` (carved out of the official train and val
    folders, grouped by patient) or ``test`` (the official test folder);
``test_half``
    ``choose`` or ``report`` for test images (:func:`helpers.data.test_halves`), empty otherwise;
``patient``, ``label``, ``bytes``
    as the scan found them;
``sha256``
    the hash of the file's bytes: the image, not just its name.

Training writes it (:func:`write_manifest`); resuming, evaluating, the results table and the
notebooks read it back (:func:`read_manifest`) instead of finding, scanning and splitting the
data again. :func:`relocate` maps a moved dataset onto it by ``relpath``, and :func:`verify`
refuses, naming the file, an image whose bytes are not the ones the run used.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from helpers.config import CLASSES
from helpers.data import (
    SPLITS,
    DatasetError,
    describe_halves_rule,
    halves_rule,
    pneumonia_kind,
    resolve_layout,
    test_halves,
)
from helpers.files import atomic_write_text

MANIFEST_NAME = "manifest.csv"
"""The manifest's file name inside a run folder."""

MANIFEST_COLUMNS: tuple[str, ...] = (
    "path",
    "relpath",
    "split",
    "test_half",
    "patient",
    "label",
    "bytes",
    "sha256",
)
"""The columns of ``manifest.csv``, in this order."""


class ManifestError(DatasetError):
    """A run's manifest is missing or unreadable, or the data no longer matches it; the message
    names the file."""


def file_digest(path: str | Path) -> tuple[int, str]:
    """``(size in bytes, sha256 hex digest)`` of a file's content (``hashlib.file_digest``).

    Hashing the 5,840 images of the 224-px Kaggle copy takes about 0.2 s on one core
    (``benchmarks/README.md``), so every run can afford it.
    """
    with open(path, "rb") as fh:
        digest = hashlib.file_digest(fh, "sha256")
        return os.fstat(fh.fileno()).st_size, digest.hexdigest()


def relative_path(path: str | Path) -> str:
    """``<split folder>/<class folder>/<file name>`` of a scanned image (``scan`` finds images
    directly inside ``<split>/<class>/`` folders, so these are always its last three parts)."""
    return "/".join(Path(path).parts[-3:])


def make_manifest(splits: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The manifest of a run's splits (``train``, ``val``, ``test`` tables from
    :func:`helpers.data.make_splits`): every file hashed, the test halves marked."""
    frames = []
    for split in SPLITS:
        table = splits[split]
        half = pd.Series("", index=table.index, dtype=object)
        if split == "test" and not table.empty:
            for name, rows in test_halves(table).items():
                half[table["path"].isin(rows["path"])] = name
        digests = []
        for path in table["path"]:
            try:
                digests.append(file_digest(path))
            except OSError as err:
                raise DatasetError(f"{path}: cannot read to hash it ({err})") from err
        frames.append(
            pd.DataFrame(
                {
                    "path": table["path"].astype(str),
                    "relpath": table["path"].map(relative_path),
                    "split": split,
                    "test_half": half,
                    "patient": table["patient"].astype(str),
                    "label": table["label"].astype(str),
                    "bytes": [size for size, _ in digests],
                    "sha256": [digest for _, digest in digests],
                },
                columns=list(MANIFEST_COLUMNS),
            )
        )
    return pd.concat(frames, ignore_index=True)


def manifest_fingerprint(manifest: pd.DataFrame) -> str:
    """A short hash of everything in the manifest but the absolute paths (which change when the
    data moves): the same images in the same roles give the same fingerprint."""
    columns = [c for c in MANIFEST_COLUMNS if c != "path"]
    text = manifest[columns].astype(str).to_csv(index=False, lineterminator="\n")
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def write_manifest(run_dir: str | Path, manifest: pd.DataFrame) -> Path:
    """Write ``run_dir/manifest.csv`` atomically; return its path."""
    path = Path(run_dir) / MANIFEST_NAME
    text = manifest[list(MANIFEST_COLUMNS)].to_csv(index=False, lineterminator="\n")
    atomic_write_text(path, text)
    return path


def read_manifest(run_dir: str | Path) -> pd.DataFrame:
    """``run_dir/manifest.csv`` with two derived columns, ``target`` (0/1) and ``kind``.

    Raises :class:`ManifestError` naming the file when it is missing (a run trained before
    runs recorded their images: ``python -m helpers manifest`` writes one) or malformed.
    """
    path = Path(run_dir) / MANIFEST_NAME
    if not path.is_file():
        raise ManifestError(
            f"{path}: no data manifest, so it is not known which images this run trained, "
            "validated and was tested on (a run trained before runs recorded them?); "
            f"`python -m helpers manifest --run {run_dir}` writes one from the data recorded "
            "in its config.json, checked against the fingerprint recorded there"
        )
    try:
        manifest = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as err:
        raise ManifestError(f"{path}: unreadable manifest ({err})") from err
    missing = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
    bad_split = set(manifest.get("split", [])) - set(SPLITS)
    bad_label = set(manifest.get("label", [])) - set(CLASSES)
    if missing or bad_split or bad_label:
        problem = (
            f"missing columns {missing}"
            if missing
            else f"unknown splits {sorted(bad_split)}"
            if bad_split
            else f"unknown labels {sorted(bad_label)}"
        )
        raise ManifestError(f"{path}: not a data manifest of this project ({problem})")
    try:
        manifest["bytes"] = manifest["bytes"].astype(int)
    except ValueError as err:
        raise ManifestError(f"{path}: not a data manifest of this project (bytes: {err})") from err
    manifest["target"] = manifest["label"].map(CLASSES.index)
    manifest["kind"] = [
        pneumonia_kind(Path(p).name, label)
        for p, label in zip(manifest["relpath"], manifest["label"], strict=True)
    ]
    return manifest


def relocate(manifest: pd.DataFrame, data_dir: str | Path) -> pd.DataFrame:
    """The manifest with ``path`` rebuilt under ``data_dir``, by ``relpath``.

    ``data_dir`` may be any folder :func:`helpers.data.resolve_layout` accepts (the dataset
    root, a folder above it, a folder holding only ``test/``); split and class folders are
    matched case-insensitively. Where ``data_dir`` lacks a row's split or class folder, its
    path is where the file would be, so that :func:`verify` names it as missing.
    """
    layout = resolve_layout(Path(data_dir).expanduser().resolve())
    base = next(iter(layout.values())).parent
    class_folders = {
        split: {p.name.lower(): p for p in folder.iterdir() if p.is_dir()}
        for split, folder in layout.items()
    }
    paths = []
    for relpath in manifest["relpath"]:
        split_dir, class_dir, name = relpath.split("/")
        folder = class_folders.get(split_dir.lower(), {}).get(class_dir.lower())
        paths.append(str((folder or base / split_dir / class_dir) / name))
    return manifest.assign(path=paths)


def verify(manifest: pd.DataFrame, *, where: str = "") -> None:
    """Check that every file of ``manifest`` is there and holds the bytes the run used.

    Raises :class:`ManifestError` naming the first file that is missing or differs (its hash
    against the recorded one); ``where`` is added to the message (which run, which folder).
    """
    context = f" ({where})" if where else ""
    for row in manifest.itertuples(index=False):
        try:
            _, digest = file_digest(row.path)
        except FileNotFoundError:
            raise ManifestError(
                f"{row.path}: missing; the run's manifest lists {row.relpath}{context}"
            ) from None
        except OSError as err:
            raise ManifestError(f"{row.path}: cannot read ({err}){context}") from err
        if digest != row.sha256:
            raise ManifestError(
                f"{row.path}: not the image this run used (sha256 {digest[:12]}..., the "
                f"manifest records {row.sha256[:12]}...): the data changed{context}"
            )


def splits_of(manifest: pd.DataFrame, splits: Iterable[str] = SPLITS) -> dict[str, pd.DataFrame]:
    """The manifest's rows of each split, as tables with the columns the loader and the
    evaluation read (``path``, ``split``, ``label``, ``target``, ``patient``, ``kind``,
    ``bytes``, ``test_half``), in the manifest's order."""
    if "target" not in manifest:
        manifest = manifest.assign(target=manifest["label"].map(CLASSES.index))
    return {s: manifest[manifest["split"] == s].reset_index(drop=True) for s in splits}


def halves_description(manifest: pd.DataFrame) -> str:
    """Where the manifest's test halves came from (:func:`helpers.data.halves_rule`)."""
    test = splits_of(manifest, ["test"])["test"]
    return describe_halves_rule(halves_rule(test))
