"""``python -m helpers``: thin argument parsing over the package's functions.

Each subcommand is one ``cmd_<name>(args) -> int`` function plus its parser lines in
:func:`build_parser`. Logic lives in the modules; this file only translates flags into calls
and errors into one-line messages with a non-zero exit status.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


class CliError(Exception):
    """An expected failure: printed as one line, exit status 2, no traceback."""


# --- data -------------------------------------------------------------------------------


def cmd_demo_data(args: argparse.Namespace) -> int:
    from helpers.demo import make_demo_dataset

    root = make_demo_dataset(args.out, n_images=args.images, seed=args.seed)
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


# --- benchmarks -------------------------------------------------------------------------


def _bench_loader(args: argparse.Namespace) -> int:
    from helpers.bench import bench_loader
    from helpers.data import DatasetError

    try:
        bench_loader(args.data, size=args.image_size, quick=args.quick)
    except (DatasetError, FileNotFoundError) as err:
        raise CliError(str(err)) from err
    return 0


BENCHES = {"loader": _bench_loader}
"""``bench WHICH`` -> its function; ``train`` is still to be added."""


def cmd_bench(args: argparse.Namespace) -> int:
    if args.which not in BENCHES:
        raise CliError(f"bench {args.which}: not implemented yet (available: {', '.join(BENCHES)})")
    return BENCHES[args.which](args)


# --- parser -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m helpers",
        description="Chest X-ray pneumonia tutorial: data, training and evaluation from the command line.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo-data", help="write the synthetic demo dataset (Kaggle layout)")
    p.add_argument("out", type=Path, help="folder to write chest_xray/{train,val,test} into")
    p.add_argument("--images", type=int, default=600, help="total number of images (default 600)")
    p.add_argument("--seed", type=int, default=42)
    p.set_defaults(func=cmd_demo_data)

    p = sub.add_parser("scan", help="count images per split and class, list problems")
    p.add_argument("data", type=Path, help="dataset folder (chest_xray or a folder above it)")
    p.add_argument("--json", action="store_true", help="print a JSON report instead of a table")
    p.set_defaults(func=cmd_scan)

    p = sub.add_parser("bench", help="measure speed: the data loader (train: to come)")
    p.add_argument("which", choices=["loader", "train"], help="what to measure")
    p.add_argument("--data", type=Path, required=True, help="folder of images (class folders)")
    p.add_argument("--image-size", type=int, default=256, help="square image size (default 256)")
    p.add_argument("--quick", action="store_true", help="fewer images and repeats (< 1 min)")
    p.set_defaults(func=cmd_bench)

    return parser


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
