"""The benchmarks (``benchmarks/``, run as ``python -m helpers bench ...``): the CLI runs them
end to end on tiny datasets and reports what they promise (rates, their ratio, the engine's
time split, peak memory). No speed is asserted here: speed targets belong to
``benchmarks/README.md``, not to tests."""

from __future__ import annotations

import argparse
import re

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks import train as bench_train_module
from benchmarks.variants import TRAIN_COMPARISONS, engine_module
from benchmarks.worker import run_interleaved
from helpers import config
from helpers.cli import build_parser, main
from helpers.demo import make_demo_dataset
from helpers.fold import FrozenFeatures
from helpers.model import PneumoniaNet


def test_bench_loader_cli_quick_reports_rates_and_ratio(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for label in ("NORMAL", "PNEUMONIA"):
        folder = tmp_path / "data" / "train" / label
        folder.mkdir(parents=True)
        for i in range(4):
            pixels = rng.integers(0, 256, (150, 180), dtype=np.uint8)
            Image.fromarray(pixels).convert("RGB").save(folder / f"IM-{i:04d}-0001.jpeg")
    args = ["bench", "loader", "--data", str(tmp_path / "data"), "--image-size", "32", "--quick"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "8 images" in out and "torchvision decode_jpeg" in out
    rates = re.findall(r"^\s+(naive|cache) .*?([\d.]+) img/s$", out, flags=re.M)
    assert [name for name, _ in rates] == ["naive", "cache"]
    assert all(float(rate) > 0 for _, rate in rates)
    assert re.search(r"speed-up: [\d.]+x", out)
    assert re.search(r"1 decode thread: [\d.]+ img/s, \d threads [\d.]+x", out)
    assert main(["bench", "loader", "--data", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_train_cli_quick_reports_rates_ratio_and_split(tmp_path, capsys, monkeypatch):
    root = make_demo_dataset(tmp_path / "demo", n_images=60, seed=3)
    returned = {}
    original = bench_train_module.bench_train

    def recording(*args, **kwargs):
        returned.update(original(*args, **kwargs))
        return returned

    monkeypatch.setattr(bench_train_module, "bench_train", recording)
    args = ["bench", "train", "--data", str(root), "--image-size", "64", "--quick"]
    code = main([*args, "--device", "cpu", "--compare", "unfolded-bn"])
    out = capsys.readouterr().out
    assert code == 0, out

    rates = dict(re.findall(r"^\s+(naive|engine) .*?([\d.]+) img/s", out, flags=re.M))
    assert set(rates) == {"naive", "engine"} and all(float(v) > 0 for v in rates.values())
    assert re.search(r"speed-up: [\d.]+x \(median of per-round ratios: [\d.]+, [\d.]+;", out)
    split = re.search(r"engine time split: (\d+)% model .*, (\d+)% waiting for batches", out)
    assert split and int(split[1]) + int(split[2]) in (99, 100, 101)
    assert "60 images" in out and "64x64" in out and "frozen-random" in out
    assert re.search(r"BatchNorm not folded .* [\d.]+ img/s .* [\d.]+x the engine", out)

    # The returned figures: the documented keys, positive and consistent with the print.
    positive = [
        "naive_images_per_s", "engine_images_per_s", "speedup", "naive_peak_rss_mb",
        "engine_peak_rss_mb", "import_rss_mb", "cache_build_seconds", "cache_megabytes",
    ]  # fmt: skip
    for key in positive:
        assert returned[key] > 0, key
    assert returned["images"] == 60 and returned["image_size"] == 64
    assert returned["device"] == "cpu" and returned["engine_peak_gpu_mb"] is None
    assert returned["repeats"] == 2 and len(returned["pair_speedups"]) == 2
    assert 0 < returned["engine_data_fraction"] < 1 and 0 < returned["naive_data_fraction"] < 1
    assert len(returned["compare"]["unfolded-bn"]["pair_ratios"]) == 2
    # Each variant's peak is its own process's, above what importing torch alone takes.
    assert returned["engine_peak_rss_mb"] > returned["import_rss_mb"]
    assert returned["naive_peak_rss_mb"] > returned["import_rss_mb"]
    assert float(rates["engine"]) == pytest.approx(returned["engine_images_per_s"], abs=0.06)


def test_bench_train_refuses_bad_settings_before_starting_anything(demo_root, tmp_path, capsys):
    root = demo_root
    assert main(["bench", "train", "--data", str(root), "--image-size", "100", "--quick"]) == 2
    assert "multiple of 32" in capsys.readouterr().err
    assert main(["bench", "train", "--data", str(tmp_path / "nothing-here"), "--quick"]) == 2
    assert "nothing-here" in capsys.readouterr().err
    assert main(["bench", "train", "--data", str(root), "--compare", "no-such-variant"]) == 2
    assert "unknown comparison ['no-such-variant']" in capsys.readouterr().err
    with pytest.raises(ValueError, match="pretrained"):
        bench_train_module.bench_train(root, pretrained="imagenet-ish")


@pytest.mark.slow
def test_a_failing_worker_is_reported_with_its_variant_and_traceback():
    with pytest.raises(RuntimeError, match=r"the broken worker failed:(.|\n)*KeyError"):
        run_interleaved({"broken": {"kind": "engine"}}, {}, repeats=1)


def test_bench_without_a_checkout_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    """A pip install from git (Colab) has no benchmarks/ folder: say where they live."""
    monkeypatch.setattr(config, "project_root", lambda: tmp_path)
    for which in ("loader", "train"):
        assert main(["bench", which, "--data", str(tmp_path), "--quick"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: ")
        assert "repository's benchmarks/ folder" in err and "clone" in err


def test_compare_help_names_every_variant():
    """The CLI cannot import benchmarks/ to build its parser, so its help lists them itself."""
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    bench = commands.choices["bench"]
    help_text = next(a.help for a in bench._actions if a.dest == "compare")
    for name in TRAIN_COMPARISONS:
        assert name in help_text


def test_comparison_variants_differ_from_the_engine_in_one_step():
    model = PneumoniaNet(frozen=True).eval()
    folded, plain, autograd = (engine_module(model, p) for p in ("folded", "plain", "autograd"))
    assert plain is model  # unfolded-bn: the model itself, BatchNorm and all
    assert type(folded[0]) is FrozenFeatures and type(autograd[0]) is not FrozenFeatures
    assert isinstance(autograd[0], FrozenFeatures)  # kept in eval mode, but no no_grad
    assert folded[2] is model.head and autograd[2] is model.head  # shared, trained in place


def test_cpu_schedule_estimate_scales_with_work():
    """The run-time estimate built on ``bench train``'s measured rates (now in helpers.train)."""
    from helpers.recipe import CPU_TRAINING_RATES, estimate_cpu_schedule

    frozen = estimate_cpu_schedule(1910, 0, frozen=True, epochs=10)
    assert frozen["seconds_per_epoch"] == pytest.approx(1910 / CPU_TRAINING_RATES["frozen"])
    assert frozen["hours"] == pytest.approx(frozen["seconds_per_epoch"] * 10 / 3600)
    scratch = estimate_cpu_schedule(1910, 0, frozen=False, epochs=10)
    assert scratch["seconds_per_epoch"] > 4 * frozen["seconds_per_epoch"]
    small = estimate_cpu_schedule(1910, 0, frozen=True, epochs=10, image_size=128)
    assert small["seconds_per_epoch"] == pytest.approx(frozen["seconds_per_epoch"] / 4)


@pytest.mark.slow
def test_bench_dataloader_quick_times_every_variant_on_checked_epochs(demo_root, capsys):
    """``benchmarks/dataloader.py`` on demo data: every variant runs, each timed epoch holds
    every training image once, and the ratios are printed and returned (no speed asserted)."""
    from benchmarks import dataloader

    result = dataloader.bench_dataloader(demo_root, 32, quick=True, workers=1)
    out = capsys.readouterr().out
    names = ["batchloader", "dataloader", "per-image", "dataloader-1-workers"]
    assert list(result["variants"]) == names
    assert result["rounds"] == 2 and result["images"] == dataloader.QUICK_IMAGES
    assert result["variants"]["batchloader"]["ratio"] == 1.0
    for name in names:
        figures = result["variants"][name]
        assert figures["images_per_s"] > 0 and len(figures["seconds"]) == 2
        assert re.search(rf"^\s+{name} +[\d.]+ img/s +[\d.]+x batchloader's speed", out, re.M)
    framing = dataloader.bench_dataloader(demo_root, 32, quick=True, policy="framing")
    assert list(framing["variants"]) == ["batchloader", "dataloader"]  # per-image: article only


def test_bench_dataloader_datasets_and_the_epoch_check(demo_root, tmp_path):
    from benchmarks import dataloader
    from helpers.cache import build_cache

    paths, targets = dataloader.find_images(demo_root)
    cache = build_cache(paths, 32, tmp_path / "cache", progress=False)
    rows = np.arange(len(paths))
    image, target = dataloader.CachedImages(cache.array, rows, targets)[5]
    assert image.dtype == torch.uint8 and torch.equal(image, cache.batch([5])[0])
    assert target == targets[5]
    x, _ = dataloader.AugmentedImages(cache.array, rows, targets)[5]
    assert x.dtype == torch.float32 and tuple(x.shape) == (3, 32, 32)
    batches = [(torch.zeros(2, 3, 32, 32), torch.tensor(targets[:2]))]
    with pytest.raises(AssertionError, match="expected 3"):
        dataloader.timed_epoch(batches, targets[:3], 32)  # an image missing from the epoch
    with pytest.raises(AssertionError, match="batch of"):
        dataloader.timed_epoch(batches, targets[:2], 64)  # the wrong image size


def test_bench_dataloader_allows_the_single_image_batchloader_leaves_out(demo_root, capsys):
    """65 images in batches of 64: a shuffled ``BatchLoader`` epoch leaves one image out (it
    never ends with a batch of one, which BatchNorm cannot train on); the DataLoader keeps all
    65. Both epochs pass the check; an epoch that loses an image it should hold does not."""
    from benchmarks import dataloader

    assert dataloader.BATCH_SIZE == 64
    result = dataloader.bench_dataloader(demo_root, 32, policy="framing", rounds=1, max_images=65)
    assert result["images"] == 65
    assert list(result["variants"]) == ["batchloader", "dataloader"]
    held = {name: figures["images_per_epoch"] for name, figures in result["variants"].items()}
    assert held == {"batchloader": 64, "dataloader": 65}
    [base], [other] = (result["variants"][n]["seconds"] for n in held)
    assert result["variants"]["dataloader"]["ratio"] == pytest.approx((65 / other) / (64 / base))
    capsys.readouterr()
    targets = [0] * 30 + [1] * 35
    one_short = [(torch.zeros(64, 3, 8, 8), torch.tensor(targets[:64]))]
    dataloader.timed_epoch(one_short, targets, 8, leaves_out_one=True)  # BatchLoader's rule
    with pytest.raises(AssertionError, match="gave 64 images, expected 65"):
        dataloader.timed_epoch(one_short, targets, 8)  # the others keep every image
    two_short = [(torch.zeros(63, 3, 8, 8), torch.tensor(targets[:63]))]
    with pytest.raises(AssertionError, match="gave 63 images, expected 64"):
        dataloader.timed_epoch(two_short, targets, 8, leaves_out_one=True)
    wrong = [(torch.zeros(64, 3, 8, 8), torch.tensor([1] * 64))]  # 34 + 30 of the wrong class
    with pytest.raises(AssertionError, match="not among"):
        dataloader.timed_epoch(wrong, targets, 8, leaves_out_one=True)
