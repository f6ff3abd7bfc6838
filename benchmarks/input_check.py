"""The input check (``helpers.inputcheck``) measured: how its bounds were chosen, its false flags
on the official test split, and what it says about real-world variants of test images.

Run from a clone, in this order (the test split is looked at only after ``choose``)::

    python -m benchmarks.input_check sizes    --data ../shared/data/kermany-fullres-sample
    python -m benchmarks.input_check choose   --data ../shared/data/kermany-224
    python -m benchmarks.input_check defaults --data ../shared/data/kermany-224
    python -m benchmarks.input_check test     --data ../shared/data/kermany-224 --half choose
    python -m benchmarks.input_check test     --data ../shared/data/kermany-224 --half report
    python -m benchmarks.input_check variants --data ../shared/data/kermany-224 --run RUN

* ``sizes``: the aspect ratios and short sides of full-resolution train images (the
  defaults for runs trained on resized copies, ``helpers.inputcheck.DEFAULT_SIZES``).
* ``choose``: the statistics a run writes (its training images, the recipe's seed), and on
  the VALIDATION split, for several margins: how many plain images are flagged (false flags)
  and how many variants made from them are (light box, tint, negative, sideways without
  EXIF, noise). Also the 144 full-resolution train images against the 224-px statistics.
* ``defaults``: the statistics of the whole recipe's training split, printed as JSON
  (``helpers.inputcheck.DEFAULT_STATS``).
* ``test``: the false-flag rate on one half of the official test split
  (``helpers.data.test_halves``), with every flagged image and its reason.
* ``variants``: test images of the choose half turned into what a reader tries (issue 23's
  light-box photo, tint, negative, EXIF-sideways JPEG, noise, this project's ROC chart), the
  check's verdict on each, and with ``--run`` P(pneumonia) before and after the crop.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from helpers import inputcheck
from helpers.config import Config, project_root
from helpers.data import make_splits, scan, test_halves
from helpers.inputcheck import check_image, read_image, training_stats
from helpers.photos import light_box_photo, negative, noise_image, save_sideways_jpeg, tinted

MARGINS = (0.0, 0.1, 0.25, 0.5, 1.0)
"""The margins ``choose`` compares (``helpers.inputcheck.MARGIN`` is the one chosen)."""


def _splits(data: str, seed: int = 42) -> dict[str, pd.DataFrame]:
    """The recipe's train / validation / test tables (the article's 5 % validation carve)."""
    scanned = scan(data)
    return make_splits(scanned.images, Config(seed=seed))


def _flag_counts(checks: list[inputcheck.InputCheck]) -> str:
    counts = Counter(flag.feature for check in checks for flag in check.flags)
    return ", ".join(f"{name} {n}" for name, n in counts.most_common()) or "none"


def _rate(checks: list[inputcheck.InputCheck]) -> str:
    flagged = sum(not c.ok for c in checks)
    return f"{flagged}/{len(checks)} = {flagged / len(checks):.2%}"


def cmd_sizes(args: argparse.Namespace) -> None:
    images = scan(args.data).images
    train = images[images["split"] == "train"]
    sizes = inputcheck.size_stats(train["width"], train["height"], f"{len(train)} images")
    print(json.dumps(sizes, indent=2))


def _variants(image: Image.Image, folder: Path, name: str) -> dict[str, Image.Image]:
    """A picture's real-world variants, as PIL images (the sideways one through a file)."""
    upright_side = image.transpose(Image.Transpose.ROTATE_90)  # sideways, no EXIF to undo it
    sideways_path = save_sideways_jpeg(image, folder / f"{name}-exif6.jpeg")
    return {
        "light box": light_box_photo(image),
        "tint": tinted(image),
        "negative": negative(image),
        "turned, no EXIF": upright_side,
        "EXIF 6 (upright once read)": read_image(sideways_path, full=True)[0],
    }


def cmd_choose(args: argparse.Namespace) -> None:
    splits = _splits(args.data, args.seed)
    train, val = splits["train"], splits["val"]
    started = time.perf_counter()
    stats = training_stats(train, seed=args.seed, what=f"{len(train)} training images")
    print(f"statistics of {stats['source']} in {time.perf_counter() - started:.1f} s")
    print(json.dumps(stats["features"], indent=1))
    print(f"frames among them: {stats['frame_share']:.2%}")

    val_features = []
    for path in val["path"]:
        image, size = read_image(path)
        val_features.append((image, size))
    folder = Path(tempfile.mkdtemp())
    variant_images: dict[str, list[Image.Image]] = {}
    for i, (image, _) in enumerate(val_features[: args.variants]):
        for kind, picture in _variants(image, folder, f"val{i}").items():
            variant_images.setdefault(kind, []).append(picture)
    variant_images["noise"] = [noise_image((224 + 37 * k, 224 + 29 * k), seed=k) for k in range(10)]

    full = scan(args.fullres).images if args.fullres else None
    for margin in MARGINS:
        inputcheck.MARGIN = margin
        plain = [check_image(image, stats) for image, _ in val_features]
        print(f"\nmargin {margin}: validation, plain images flagged {_rate(plain)} "
              f"({_flag_counts(plain)})")  # fmt: skip
        for kind, pictures in variant_images.items():
            checks = [check_image(p, stats) for p in pictures]
            print(f"  {kind:28s} flagged {_rate(checks)} ({_flag_counts(checks)})")
        if full is not None:
            checks = [check_image(path, stats) for path in full["path"]]
            print(
                f"  full-resolution train files  flagged {_rate(checks)} ({_flag_counts(checks)})"
            )


def cmd_defaults(args: argparse.Namespace) -> None:
    train = _splits(args.data, args.seed)["train"]
    stats = training_stats(train, args.seed, len(train), f"{len(train)} Kaggle train images")
    stats["source"] = f"defaults: {stats['source']} of {args.data} (benchmarks/input_check.py)"
    print(json.dumps(stats, indent=1))


def cmd_test(args: argparse.Namespace) -> None:
    splits = _splits(args.data, args.seed)
    stats = training_stats(splits["train"], seed=args.seed)
    half = test_halves(splits["test"])[args.half]
    checks = [check_image(path, stats) for path in half["path"]]
    print(
        f"margin {inputcheck.MARGIN}; {args.half} half of the test split: flagged {_rate(checks)}"
    )
    print(f"by feature: {_flag_counts(checks)}")
    for path, check in zip(half["path"], checks, strict=True):
        if not check.ok:
            print(f"  {Path(path).name}: {check.summary()}")


def _chart() -> Image.Image:
    with Image.open(project_root() / "docs" / "figures" / "roc.png") as chart:
        return chart.convert("RGB")


def cmd_variants(args: argparse.Namespace) -> None:
    splits = _splits(args.data, args.seed)
    stats = training_stats(splits["train"], seed=args.seed)
    half = test_halves(splits["test"])["choose"]
    sample = half.groupby("label").sample(args.per_class, random_state=args.seed)
    folder = Path(tempfile.mkdtemp())
    scorer = _Scorer(args.run) if args.run else None
    rows = []
    for i, row in enumerate(sample.itertuples()):
        image = read_image(row.path, full=True)[0]
        pictures = {"original": image, **_variants(image, folder, f"test{i}")}
        for kind, picture in pictures.items():
            rows.append(_verdict(kind, row, picture, stats, scorer, folder))
    for k, picture in enumerate([noise_image(seed=1), _chart()]):
        rows.append(_verdict(["noise", "ROC chart"][k], None, picture, stats, scorer, folder))
    table = pd.DataFrame(rows)
    if args.out:
        table.to_csv(args.out, index=False)
    groups = table.groupby("variant", sort=False)
    summary = pd.DataFrame({
        "images": groups.size(),
        "flagged": groups["flagged"].sum(),
        "reasons": groups["reasons"].agg(_common),
        "flagged after crop": groups["cropped_flagged"].sum(),
    })  # fmt: skip
    if scorer is not None:
        for name, column in (("|dP| as is", "p"), ("|dP| cropped", "p_cropped")):
            error = (table[column] - table["p_original"]).abs()
            summary[f"{name} mean"] = error.groupby(table["variant"], sort=False).mean()
            summary[f"{name} max"] = error.groupby(table["variant"], sort=False).max()
    pd.set_option("display.width", 250)
    pd.set_option("display.max_colwidth", 60)
    print(summary.round(3).to_string())
    if scorer is not None:
        first = table[table["image"] == table["image"].dropna().iloc[0]]
        print(f"\none image ({first['image'].iloc[0]}, {first['label'].iloc[0]}):")
        print(first[["variant", "flagged", "reasons", "p", "p_cropped"]].round(3).to_string())


CROP_INSETS = (0.0, 0.002, 0.004, 0.01)
"""The insets ``crop`` compares (``helpers.inputcheck.CROP_INSET`` is the one chosen)."""


def cmd_crop(args: argparse.Namespace) -> None:
    """Light-box photos of choose-half test images, cropped with several insets: how far
    P(pneumonia) is from the original image's, for a run's model."""
    splits = _splits(args.data, args.seed)
    half = test_halves(splits["test"])["choose"]
    sample = half.groupby("label").sample(args.per_class, random_state=args.seed)
    scorer = _Scorer(args.run)
    folder = Path(tempfile.mkdtemp())
    errors: dict[float, list[float]] = {inset: [] for inset in CROP_INSETS}
    for row in sample.itertuples():
        path = folder / "photo.png"
        light_box_photo(read_image(row.path, full=True)[0]).save(path)
        original = scorer(row.path, False)
        for inset in CROP_INSETS:
            inputcheck.CROP_INSET = inset
            errors[inset].append(abs(scorer(path, True) - original))
    for inset, values in errors.items():
        print(f"inset {inset:.3f}: |P(cropped photo) - P(original)| over {len(values)} images: "
              f"mean {np.mean(values):.3f}, max {np.max(values):.3f}")  # fmt: skip


def _common(reasons: pd.Series) -> str:
    counts = Counter(r for rs in reasons for r in rs)
    return ", ".join(f"{name} {n}" for name, n in counts.most_common())


def _verdict(kind, row, picture, stats, scorer, folder) -> dict:
    check = check_image(picture, stats)
    cropped = check_image(picture, stats, crop_border=True)
    result = {
        "variant": kind,
        "image": None if row is None else Path(row.path).name,
        "label": None if row is None else row.label,
        "flagged": not check.ok,
        "reasons": [f.feature for f in check.flags],
        "cropped_flagged": not cropped.ok,
    }
    if scorer is not None:
        path = folder / "picture.png"
        picture.save(path)
        original = None if row is None else scorer(row.path, False)
        result.update(p=scorer(path, False), p_cropped=scorer(path, True), p_original=original)
    return result


class _Scorer:
    """P(pneumonia) of a file with a run's best model, with or without the crop."""

    def __init__(self, run: str) -> None:
        import torch

        from helpers.augment import normalize_batch
        from helpers.runs import load_model_from_run

        self.torch, self.normalize = torch, normalize_batch
        self.model, self.config, _ = load_model_from_run(run, "best.pt", device="cpu")
        self.model.eval()

    def __call__(self, path, crop: bool) -> float:
        array, _ = inputcheck.model_input(path, self.config.image_size, self.config.intensity, crop)
        x = self.normalize(self.torch.from_numpy(array)[None, None])
        with self.torch.inference_mode():
            return float(self.model(x).softmax(1)[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("sizes", "choose", "defaults", "test", "variants", "crop"):
        p = sub.add_parser(name)
        p.add_argument("--data", required=True)
        p.add_argument("--seed", type=int, default=42, help="the recipe's seed (42)")
        if name == "choose":
            p.add_argument("--fullres", help="full-resolution train images to check too")
            p.add_argument("--variants", type=int, default=40, help="validation images to vary")
        if name == "test":
            p.add_argument("--half", choices=["choose", "report"], required=True)
        if name in ("variants", "crop"):
            p.add_argument("--run", help="a run folder: score each picture with its model")
            p.add_argument("--per-class", type=int, default=10)
            p.add_argument("--out", help="also write every picture's row to this CSV")
    args = parser.parse_args()
    globals()[f"cmd_{args.command}"](args)


if __name__ == "__main__":
    main()
