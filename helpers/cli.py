"""``python -m helpers``: thin argument parsing over the package's functions.

Each subcommand is one ``cmd_<name>(args) -> int`` function plus its parser lines in
:func:`build_parser`. Logic lives in the modules; this file only translates flags into calls
and errors into one-line messages with a non-zero exit status.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from helpers.config import AUGMENT_POLICIES, INTENSITY_CHOICES


class CliError(Exception):
    """An expected failure: printed as one line, exit status 2, no traceback."""


# --- data -------------------------------------------------------------------------------


def cmd_demo_data(args: argparse.Namespace) -> int:
    from helpers.demo import make_demo_dataset

    try:
        root = make_demo_dataset(args.out, n_images=args.images, seed=args.seed)
    except (FileExistsError, ValueError, OSError) as err:
        raise CliError(str(err)) from err
    print(f"demo dataset written to {root} (synthetic images, not medical data)")
    return 0


def cmd_scan(args: argparse.Namespace) -> int:
    from helpers.data import DatasetError, scan, scan_report

    try:
        result = scan(args.data)
    except DatasetError as err:
        raise CliError(str(err)) from err
    report = scan_report(result)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(result.describe())
    if not report["usable"]:
        print(f"error: {report['reason']}", file=sys.stderr)
        return 1
    return 0


# --- model ------------------------------------------------------------------------------


def cmd_summary(args: argparse.Namespace) -> int:
    """Print the model's torchinfo table (no weights needed: counts do not depend on them)."""
    from helpers.model import model_summary

    try:
        print(model_summary(image_size=args.image_size))
    except ValueError as err:
        raise CliError(str(err)) from err
    return 0


def cmd_holdout(args: argparse.Namespace) -> int:
    from helpers.data import DatasetError, make_holdout

    try:
        counts = make_holdout(args.source, args.out, fraction=args.fraction, seed=args.seed)
    except (DatasetError, FileExistsError, ValueError) as err:
        raise CliError(str(err)) from err
    print(f"{args.out}: train {counts['train']} images, test {counts['test']} (patient-disjoint)")
    return 0


# --- training ---------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    """Train a run. The recipe comes from the flags only: ``PNEUMONIA_QUICK`` is the notebooks'
    switch and is ignored here (``--quick`` is this command's), and the recipe is printed
    before anything starts. The synthetic demo dataset is refused unless ``--demo``."""
    from helpers.config import ConfigError, is_quick, recipe_for_weights
    from helpers.data import DatasetError
    from helpers.model import WeightsUnavailableError
    from helpers.runs import RunError
    from helpers.sources import find_dataset
    from helpers.train import train

    overrides = {
        "epochs": args.epochs,
        "image_size": args.image_size,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "augment": args.augment,
        "intensity": args.intensity,
        "label_smoothing": args.label_smoothing,
        "ema_decay": args.ema_decay,
        "patience": args.patience,
    }
    try:
        config = recipe_for_weights(args.pretrained or "auto")  # auto: what this machine has
        if args.quick:
            config = config.quick_mode()
        config = config.replace(**{k: v for k, v in overrides.items() if v is not None})
    except ConfigError as err:
        raise CliError(str(err)) from err
    if is_quick() and not args.quick:
        print("note: PNEUMONIA_QUICK is set; it is the notebooks' switch, ignored here (--quick)")
    print(_describe_recipe(config))
    try:
        if args.resume and args.data is None and (args.out / "last.pt").is_file():
            data = None  # the run's own images, where its manifest says they are
        else:
            data = find_dataset(args.data, demo=args.demo)  # found once; its source recorded
        result = train(config, args.out, data, resume=args.resume, device=args.device)
    except (DatasetError, RunError, WeightsUnavailableError, FileExistsError) as err:
        raise CliError(str(err)) from err
    if result.history.empty:
        print(f"run folder: {result.run_dir} (no epoch to train)")
        return 0
    best = result.history.loc[result.history.epoch == result.best_epoch].iloc[0]
    print(
        f"best epoch {result.best_epoch}: val loss {best.val_loss:.4f}, val acc {best.val_acc:.3f}, "
        f"val F1 {best.val_f1:.3f}; {len(result.history)} epochs in {result.history.seconds.sum():.0f} s"
    )
    print(f"run folder: {result.run_dir}")
    return 0


def _describe_recipe(config: Any) -> str:
    """One line saying which recipe ``train`` is about to run."""
    kind = "quick" if config.quick else "full"
    return (
        f"recipe: {kind}, {config.image_size} px, weights {config.pretrained}, augment "
        f"{config.augment}, intensity {config.intensity}, batch {config.batch_size}, up to "
        f"{config.epochs} epochs (patience {config.patience}), seed {config.seed}"
    )


def cmd_manifest(args: argparse.Namespace) -> int:
    """Write the data manifest of a run trained before runs recorded their images."""
    from helpers.config import ConfigError
    from helpers.data import DatasetError
    from helpers.runs import RunError, backfill_manifest

    try:
        path = backfill_manifest(args.run, args.data)
    except (RunError, DatasetError, ConfigError) as err:
        raise CliError(str(err)) from err
    print(f"{path}: written (the split drawn again matches the one the run recorded)")
    return 0


# --- evaluation, prediction, export -----------------------------------------------------


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Score a run's best.pt on a split, print the Table-2 style report and the JSON path."""
    from helpers.data import DatasetError
    from helpers.evaluate import evaluate_run
    from helpers.report import format_metrics
    from helpers.runs import RunError

    try:
        metrics = evaluate_run(
            args.run, args.data, split=args.split, device=args.device, tta=args.tta,
            n_resamples=args.resamples,
        )  # fmt: skip
    except (RunError, DatasetError) as err:
        raise CliError(str(err)) from err
    print(format_metrics(metrics))
    name = args.split + ("-tta" if args.tta else "")
    print(f"metrics written to {Path(args.run) / f'metrics-{name}.json'}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """One line per image: path, label, P(pneumonia), and the input check's flag if any;
    unreadable files named on stderr (exit 1).

    The input check (:mod:`helpers.inputcheck`) compares each picture with the run's training
    images: a flagged one gets ``FLAGGED: <reasons>`` beside its probability and a warning on
    stderr (exit 0), or with ``--strict`` is refused, without a probability (exit 1).
    ``--crop-border`` crops a uniform frame (a light box, a monitor) before the model and the
    check see the picture; ``--save-input DIR`` writes what the model sees to
    ``DIR/<stem>-<hash of the full path>-input.png``. ``--gradcam DIR`` also writes each image
    with its Grad-CAM heatmap, at the image's own resolution (cropped as the model saw it), to
    ``DIR/<stem>-<hash of the full path>-gradcam.png``. The names are unique per file
    (:func:`helpers.files.per_image_name`).
    """
    from helpers.evaluate import predict_images
    from helpers.inputcheck import STATS_FILE, check_image, read_input_stats
    from helpers.recipe import pick_device
    from helpers.runs import RunError, load_model_from_run

    device = pick_device(args.device)
    try:
        model, config, _ = load_model_from_run(args.run, "best.pt", device=device)
        stats, source = read_input_stats(args.run)
    except (RunError, ValueError) as err:
        raise CliError(str(err)) from err
    if not (Path(args.run) / STATS_FILE).is_file():  # an older run: say what is used instead
        print(f"input check: {source}", file=sys.stderr)
    results = predict_images(
        model, args.images, config.image_size, device, intensity=config.intensity,
        crop_border=args.crop_border,
    )  # fmt: skip
    failed, flagged, shown = 0, 0, []
    for result in results:
        if result.error is not None:
            print(f"error: {result.path}: {result.error}", file=sys.stderr)
            failed += 1
            continue
        check = check_image(result.path, stats, crop_border=args.crop_border)
        flagged += not check.ok
        if args.strict and not check.ok:
            print(f"refused: {result.path}: {check.summary()}", file=sys.stderr)
            continue
        line = f"{result.path}  {result.label()}  P(pneumonia)={result.p_pneumonia:.3f}"
        if not check.ok:
            line += f"  FLAGGED: {check.summary()}"
        elif check.crop_box is not None:
            line += f"  ({check.summary()})"
        print(line)
        shown.append(Path(result.path))
    if flagged and not args.strict:
        print(
            f"warning: {flagged} of {len(results) - failed} images do not look like the X-rays "
            "the model was trained on (FLAGGED above): their probabilities mean little; "
            "--strict refuses them",
            file=sys.stderr,
        )
    if args.save_input is not None:
        for path in _save_model_inputs(shown, config, args.crop_border, args.save_input):
            print(f"model input: {path}")
    if args.gradcam is not None:
        from helpers.explain import save_gradcam_overlays

        for path in save_gradcam_overlays(model, shown, config, args.gradcam, args.crop_border):
            print(f"Grad-CAM: {path}")
    return 1 if failed or (args.strict and flagged) else 0


def _save_model_inputs(paths: list[Path], config: Any, crop: bool, folder: Path) -> list[Path]:
    """Write the grey picture the model sees for each file to ``folder/``
    :func:`helpers.files.per_image_name` (``<stem>-<hash>-input.png``: unique per file)."""
    from PIL import Image

    from helpers.files import atomic_path, per_image_name
    from helpers.inputcheck import model_input

    written = []
    for path in paths:
        array, _ = model_input(path, config.image_size, config.intensity, crop)
        target = folder / per_image_name(path, "input")
        with atomic_path(target) as tmp:
            Image.fromarray(array).save(tmp, format="PNG")
        written.append(target)
    return written


EXPORT_NAMES = {"torchscript": "model-torchscript.pt", "onnx": "model.onnx"}
"""Default file names of ``export`` inside the run folder."""


def cmd_export(args: argparse.Namespace) -> int:
    """Export a run's best model (CPU, its image size) as TorchScript or ONNX."""
    from helpers.export import ExportError, compare_with_eager, export_model, load_exported
    from helpers.runs import RunError, load_model_from_run

    out = args.out or Path(args.run) / EXPORT_NAMES[args.format]
    try:
        model, config, _ = load_model_from_run(args.run, "best.pt", device="cpu")
        path = export_model(
            model, out, fmt=args.format, image_size=config.image_size, intensity=config.intensity
        )
        check = compare_with_eager(model, load_exported(path), config.image_size)
    except (RunError, ExportError, ValueError) as err:
        raise CliError(str(err)) from err
    print(f"{args.format} model written to {path}")
    print(
        f"checked against the eager model: max |difference in P(pneumonia)| "
        f"{check['max_abs_diff']:.1e}; one image on this CPU: eager {check['eager_ms']:.1f} ms, "
        f"{args.format} {check['exported_ms']:.1f} ms (median of 20)"
    )
    return 0


# --- benchmarks -------------------------------------------------------------------------


def _benchmarks(module: str) -> ModuleType:
    """``benchmarks.<module>`` from the project checkout.

    The benchmarks are not part of the installed package (learners never need them): they
    live in the repository's ``benchmarks/`` folder, beside ``helpers/``. A pip install
    without a checkout (e.g. on Colab) gets a one-line error saying so.
    """
    from helpers.config import project_root

    root = project_root()
    if not (root / "benchmarks" / "__init__.py").is_file():
        raise CliError(
            "the benchmarks live in the repository's benchmarks/ folder, not in the installed "
            "package: run them from a clone of the repository (git clone, then "
            "`python -m helpers bench ...` inside it)"
        )
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    return importlib.import_module(f"benchmarks.{module}")


def _bench_loader(args: argparse.Namespace) -> int:
    """Images/s to the model: decoding every access against the cache, one run."""
    from helpers.data import DatasetError

    bench_loader = _benchmarks("loader").bench_loader
    try:
        bench_loader(args.data, size=args.image_size, quick=args.quick, threads=args.threads)
    except (DatasetError, FileNotFoundError) as err:
        raise CliError(str(err)) from err
    return 0


def _bench_train(args: argparse.Namespace) -> int:
    """Training images/s: the original's structure (naive) against the engine, one run."""
    from helpers.data import DatasetError

    bench_train = _benchmarks("train").bench_train
    try:
        bench_train(
            args.data,
            image_size=args.image_size,
            pretrained=args.pretrained,
            quick=args.quick,
            threads=args.threads,
            compare=args.compare,
            max_images=args.max_images,
            repeats=args.repeats,
            device=args.device,
        )
    except (DatasetError, FileNotFoundError, ValueError, RuntimeError) as err:
        # RuntimeError: missing ImageNet weights, a bad --device, a worker's failure
        raise CliError(str(err)) from err
    return 0


BENCHES = {"loader": _bench_loader, "train": _bench_train}
"""``bench WHICH`` -> its function."""


def cmd_bench(args: argparse.Namespace) -> int:
    """Run a benchmark from the repository's ``benchmarks/`` folder."""
    return BENCHES[args.which](args)


def cmd_figures(args: argparse.Namespace) -> int:
    from helpers.data import DatasetError
    from helpers.report import make_figures
    from helpers.runs import RunError

    try:
        made = make_figures(args.eda_data, args.samples_data, args.run, args.out, split=args.split)
    except (DatasetError, RunError, FileNotFoundError, KeyError, ValueError) as err:
        raise CliError(f"figures: {err}") from err
    for name, source in made.items():
        print(f"{args.out / name}: {source}")
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    """Score evaluated runs on the test split and its halves; write docs/results.md's tables."""
    from helpers.results import score_run, write_results
    from helpers.runs import RunError

    scores = []
    try:
        for run in args.runs:
            scores.append(score_run(run, args.data_label, n_resamples=args.resamples))
            if (run / "predictions-test-tta.csv").is_file():
                scores.append(score_run(run, args.data_label, True, args.resamples))
        write_results(scores, args.out)
    except (RunError, ValueError) as err:
        raise CliError(str(err)) from err
    print(f"{len(scores)} scorings of {len(args.runs)} runs written to {args.out}")
    return 0


# --- notebooks --------------------------------------------------------------------------


def cmd_run_notebooks(args: argparse.Namespace) -> int:
    """Execute notebooks 01-06 in order; executed copies and figures go under outputs/."""
    from helpers.data import DatasetError
    from helpers.notebooks import NotebookError, run_notebooks

    try:
        run_notebooks(quick=args.quick, data=args.data)
    except (DatasetError, NotebookError, FileNotFoundError) as err:
        raise CliError(str(err)) from err
    return 0


# --- parser -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m helpers",
        description="Chest X-ray pneumonia tutorial: data, training and evaluation from the command line.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_data_commands(sub)
    _add_train_command(sub)
    _add_run_commands(sub)
    _add_tool_commands(sub)
    return parser


def _add_data_commands(sub: Any) -> None:
    """``demo-data``, ``scan``, ``summary``, ``holdout``: the data and the model's table."""
    p = sub.add_parser("demo-data", help="write the synthetic demo dataset (Kaggle layout)")
    p.add_argument("out", type=Path, help="folder to write chest_xray/{train,val,test} into")
    p.add_argument("--images", type=int, default=600, help="total number of images (default 600)")
    p.add_argument("--seed", type=int, default=42)
    p.set_defaults(func=cmd_demo_data)

    p = sub.add_parser("scan", help="count images per split and class, list problems")
    p.add_argument("data", type=Path, help="dataset folder (chest_xray or a folder above it)")
    p.add_argument("--json", action="store_true", help="print a JSON report instead of a table")
    p.set_defaults(func=cmd_scan)

    p = sub.add_parser("summary", help="print the model's layer table and parameter counts")
    p.add_argument("--image-size", type=int, default=256, help="input size (default 256)")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("holdout", help="carve a patient-disjoint test split (symlinks)")
    p.add_argument("source", type=Path, help="dataset with train/ (and maybe val/)")
    p.add_argument("out", type=Path, help="new folder for {train,test}/{NORMAL,PNEUMONIA}")
    p.add_argument("--fraction", type=float, default=0.15)
    p.add_argument("--seed", type=int, default=42)
    p.set_defaults(func=cmd_holdout)


def _add_train_command(sub: Any) -> None:
    """``train``: every recipe setting a run may change, and resuming."""
    p = sub.add_parser("train", help="train PneumoniaNet with the article's schedule")
    p.add_argument("--data", type=Path, default=None, help="dataset folder (default: search)")
    p.add_argument("--out", type=Path, required=True, help="run folder to write")
    p.add_argument("--epochs", type=int, help="maximum epochs (default 100)")
    p.add_argument("--image-size", type=int, help="square image size (default 256)")
    p.add_argument(
        "--pretrained",
        choices=["auto", "imagenet", "none"],
        help="imagenet: the article's recipe; none: this project's from-scratch recipe; "
        "auto (default): imagenet when the weights can be had",
    )
    p.add_argument("--seed", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument(
        "--augment",
        choices=AUGMENT_POLICIES,
        help="training augmentation (default: article with ImageNet weights, framing from scratch)",
    )
    p.add_argument(
        "--intensity",
        choices=INTENSITY_CHOICES,
        help="per-image intensity normalisation after resizing (default none, as the article)",
    )
    p.add_argument("--label-smoothing", type=float, help="cross-entropy label smoothing (0)")
    p.add_argument("--ema-decay", type=float, help="EMA of the weights per step, 0 = off (0)")
    p.add_argument("--patience", type=int, help="early-stopping patience in epochs (10)")
    p.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: CUDA when available)")
    p.add_argument("--quick", action="store_true", help="small images, few epochs, a subset")
    p.add_argument(
        "--demo",
        action="store_true",
        help="allow training on the synthetic demo dataset (refused otherwise)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUT/last.pt on the run's own images (--data: where they moved)",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(
        "manifest", help="write the data manifest of a run trained before runs had one"
    )
    p.add_argument("--run", type=Path, required=True, help="run folder (holding config.json)")
    p.add_argument("--data", type=Path, default=None, help="data folder (default: the run's)")
    p.set_defaults(func=cmd_manifest)


def _add_run_commands(sub: Any) -> None:
    """``evaluate``, ``predict``, ``export``: using a trained run folder."""
    p = sub.add_parser("evaluate", help="score a run's best model: metrics, CIs, thresholds")
    p.add_argument("--run", type=Path, required=True, help="run folder (holding best.pt)")
    p.add_argument(
        "--data",
        type=Path,
        default=None,
        help="where the run's data is now, if it moved (matched by relative path and hash)",
    )
    p.add_argument("--split", choices=["test", "val"], default="test")
    p.add_argument(
        "--tta", action="store_true", help="average each image with its mirror image (flip)"
    )
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (1000)")
    p.add_argument("--device", help="cpu, cuda, ... (default: CUDA when available)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="P(pneumonia) for image files with a run's best model")
    p.add_argument("--run", type=Path, required=True, help="run folder (holding best.pt)")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files")
    p.add_argument("--gradcam", type=Path, metavar="DIR", help="also save Grad-CAM overlays")
    p.add_argument(
        "--strict",
        action="store_true",
        help="refuse images the input check flags (exit 1) instead of warning",
    )
    p.add_argument(
        "--crop-border",
        action="store_true",
        help="crop a uniform frame (light box, monitor) before the model sees the picture",
    )
    p.add_argument(
        "--save-input", type=Path, metavar="DIR", help="save the picture the model sees (PNG)"
    )
    p.add_argument("--device", help="cpu, cuda, ... (default: CUDA when available)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="export a run's best model as TorchScript or ONNX")
    p.add_argument("--run", type=Path, required=True, help="run folder (holding best.pt)")
    p.add_argument("--format", choices=["torchscript", "onnx"], required=True)
    p.add_argument("--out", type=Path, default=None, help="output file (default: in the run)")
    p.set_defaults(func=cmd_export)


def _add_tool_commands(sub: Any) -> None:
    """``results``, ``figures``, ``bench``, ``run-notebooks``: the project's own tools."""
    p = sub.add_parser("results", help="every evaluated run on the test split and its halves")
    p.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="evaluated run folders")
    p.add_argument("--out", type=Path, default=Path("docs/results.md"))
    p.add_argument(
        "--data-label", default="../shared/data/kermany-224", help="data folder in the commands"
    )
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (1000)")
    p.set_defaults(func=cmd_results)

    p = sub.add_parser("figures", help="regenerate the README's figures (docs/figures)")
    p.add_argument("--eda-data", type=Path, required=True, help="dataset for the class balance")
    p.add_argument("--samples-data", type=Path, required=True, help="full-resolution images")
    p.add_argument("--run", type=Path, required=True, help="an evaluated run folder")
    p.add_argument("--split", default="test", help="which metrics-<split>.json to draw")
    p.add_argument("--out", type=Path, default=Path("docs/figures"))
    p.set_defaults(func=cmd_figures)

    p = sub.add_parser("bench", help="measure speed: the data loader, or training epochs")
    p.add_argument("which", choices=list(BENCHES), help="what to measure")
    p.add_argument("--data", type=Path, required=True, help="folder of images (class folders)")
    p.add_argument("--image-size", type=int, default=256, help="square image size (default 256)")
    p.add_argument("--quick", action="store_true", help="fewer images and repeats (< 1 min)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument(
        "--pretrained",
        choices=["frozen-random", "imagenet", "none"],
        default="frozen-random",
        help="train: the model; frozen-random (default) = the ImageNet-frozen architecture "
        "with random weights, the same compute without a download",
    )
    p.add_argument(
        "--compare",
        nargs="+",
        default=[],
        metavar="VARIANT",
        help="train: extra variants timed in the same rounds (2-threads, contiguous, "
        "grad-prefix, unfolded-bn, robust, naive-1-worker; see benchmarks/README.md)",
    )
    p.add_argument("--max-images", type=int, help="train: at most this many images")
    p.add_argument("--repeats", type=int, help="train: rounds (default 5, --quick 2)")
    p.add_argument("--device", help="train: cpu, cuda, ... (default: CUDA when available)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("run-notebooks", help="execute notebooks 01-06 in order, keeping outputs")
    p.add_argument("--quick", action="store_true", help="PNEUMONIA_QUICK=1: small, fast recipe")
    p.add_argument("--data", type=Path, default=None, help="dataset folder (default: search)")
    p.set_defaults(func=cmd_run_notebooks)


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; expected failures print one line and return 2."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CliError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def run() -> None:
    """The program ``python -m helpers`` and ``pneumonia-tutorial``: the CPU thread policy
    (:func:`helpers.cpu.use_idle_cores`, an explicit call here rather than a side effect of
    importing), then :func:`main`. Calling :func:`main` from Python leaves threads alone."""
    from helpers.cpu import use_idle_cores

    use_idle_cores()
    sys.exit(main())
