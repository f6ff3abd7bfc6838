"""``bench train``: the CLI runs end to end on a tiny demo dataset and reports what it
promises (both rates, their ratio, the engine's time split, peak memory). No speed is
asserted here: speed targets belong to ``benchmarks/README.md``, not to tests."""

from __future__ import annotations

import re

import pytest

from helpers import bench
from helpers.cli import main
from helpers.demo import make_demo_dataset


def test_bench_train_cli_quick_reports_rates_ratio_and_split(tmp_path, capsys, monkeypatch):
    root = make_demo_dataset(tmp_path / "demo", n_images=60, seed=3)
    returned = {}
    original = bench.bench_train

    def recording(*args, **kwargs):
        returned.update(original(*args, **kwargs))
        return returned

    monkeypatch.setattr(bench, "bench_train", recording)
    args = ["bench", "train", "--data", str(root), "--image-size", "64", "--quick"]
    code = main([*args, "--device", "cpu"])
    out = capsys.readouterr().out
    assert code == 0, out

    rates = dict(re.findall(r"^\s+(naive|engine) .*?([\d.]+) img/s", out, flags=re.M))
    assert set(rates) == {"naive", "engine"} and all(float(v) > 0 for v in rates.values())
    assert re.search(r"speed-up: [\d.]+x \(median of per-round ratios: [\d.]+, [\d.]+;", out)
    split = re.search(r"engine time split: (\d+)% model .*, (\d+)% waiting for batches", out)
    assert split and int(split[1]) + int(split[2]) in (99, 100, 101)
    assert "60 images" in out and "64x64" in out and "frozen-random" in out

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
    # Each variant's peak is its own process's, above what importing torch alone takes.
    assert returned["engine_peak_rss_mb"] > returned["import_rss_mb"]
    assert returned["naive_peak_rss_mb"] > returned["import_rss_mb"]
    assert float(rates["engine"]) == pytest.approx(returned["engine_images_per_s"], abs=0.06)


def test_bench_train_refuses_bad_settings_before_starting_anything(tmp_path, capsys):
    root = make_demo_dataset(tmp_path / "demo", n_images=60, seed=3)
    assert main(["bench", "train", "--data", str(root), "--image-size", "100", "--quick"]) == 2
    assert "multiple of 32" in capsys.readouterr().err
    assert main(["bench", "train", "--data", str(tmp_path / "nothing-here"), "--quick"]) == 2
    assert "nothing-here" in capsys.readouterr().err
    with pytest.raises(ValueError, match="pretrained"):
        bench.bench_train(root, pretrained="imagenet-ish")


def test_a_failing_worker_is_reported_with_its_variant_and_traceback():
    with pytest.raises(RuntimeError, match=r"the broken worker failed:(.|\n)*KeyError"):
        bench.run_interleaved({"broken": {"kind": "engine"}}, {}, repeats=1)


def test_cpu_schedule_estimate_scales_with_work():
    from helpers.bench import CPU_TRAINING_RATES, estimate_cpu_schedule

    frozen = estimate_cpu_schedule(1910, 0, frozen=True, epochs=10)
    assert frozen["seconds_per_epoch"] == pytest.approx(1910 / CPU_TRAINING_RATES["frozen"])
    assert frozen["hours"] == pytest.approx(frozen["seconds_per_epoch"] * 10 / 3600)
    scratch = estimate_cpu_schedule(1910, 0, frozen=False, epochs=10)
    assert scratch["seconds_per_epoch"] > 4 * frozen["seconds_per_epoch"]
    small = estimate_cpu_schedule(1910, 0, frozen=True, epochs=10, image_size=128)
    assert small["seconds_per_epoch"] == pytest.approx(frozen["seconds_per_epoch"] / 4)
