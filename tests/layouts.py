"""Tiny dataset folders in the Kaggle layout, for the data and sources tests."""

from __future__ import annotations

from pathlib import Path

from PIL import Image


def jpeg(path: Path, size=(40, 30), mode="L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, 128 if mode == "L" else (128, 128, 128)).save(path, format="JPEG")
    return path


def tiny_layout(root: Path, splits=("train", "val", "test")) -> Path:
    for split in splits:
        jpeg(root / split / "NORMAL" / "IM-0001-0001.jpeg")
        jpeg(root / split / "PNEUMONIA" / "person1_bacteria_1.jpeg", mode="RGB")
    return root
