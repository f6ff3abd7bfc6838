"""Faults a real user meets, each tried: bad files, bad folders, bad checkpoints, crashes.

Every case here is a row of ``docs/reliability.md``; the other rows point at the tests in
``test_data.py``, ``test_preprocess.py``, ``test_train.py`` and ``test_cli_evaluate.py``.
"""

from __future__ import annotations

import os
import shutil
import struct
import zlib
from pathlib import Path

import pytest
import torch

from helpers import cli, files
from helpers.data import scan
from helpers.demo import make_demo_dataset
from helpers.runs import RunError, load_model_from_run, save_checkpoint


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims ``width`` x ``height`` (no pixel data needed to lie)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def test_decompression_bomb_is_a_scan_problem(tmp_path):
    root = make_demo_dataset(tmp_path, n_images=20, seed=1)
    _png_header_only(root / "train" / "NORMAL" / "IM-9999-0001.png", 12_000, 12_000)
    with pytest.warns(Warning):  # Pillow's own DecompressionBombWarning, then our refusal
        problems = scan(root).problems
    assert len(problems) == 1
    assert (
        "decompression-bomb" in problems.reason.iloc[0]
        and "144 megapixels" in problems.reason.iloc[0]
    )


def test_training_refuses_a_split_without_one_class(tmp_path, capsys):
    root = make_demo_dataset(tmp_path / "d", n_images=60, seed=1)
    shutil.rmtree(root / "train" / "NORMAL")
    (root / "val" / "NORMAL").rename(tmp_path / "moved")
    argv = ["train", "--data", str(root), "--out", str(tmp_path / "run"), "--quick", "--demo"]
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2 and "NORMAL" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "best.pt").exists()


def test_crash_while_writing_a_checkpoint_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, {"epoch": 1, "w": torch.ones(3)})
    before = path.read_bytes()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # the process dies between writing and renaming

    monkeypatch.setattr(files.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"epoch": 2, "w": torch.zeros(3)})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temporary file left


def test_checkpoint_that_does_not_fit_is_refused_whole(made_run, tmp_path):
    run_dir = made_run.run_dir
    state = torch.load(run_dir / "best.pt", weights_only=True)
    state["model"]["head.3.weight"] = torch.zeros(3, 576)  # a 3-class head
    os.makedirs(tmp_path / "bad")
    save_checkpoint(tmp_path / "bad" / "best.pt", state)
    with pytest.raises(RunError, match="do not fit"):
        load_model_from_run(tmp_path / "bad")


def test_gpu_checkpoint_loads_on_cpu(made_run, tmp_path, monkeypatch):
    """``map_location``: a checkpoint written on a GPU loads on a CPU-only machine.

    The checkpoint's tensors are recorded as living on ``cuda:0`` (torch's own location tag,
    set here without a GPU), as a Colab GPU run writes them. ``benchmarks/gpu-check.sh`` runs
    the same check with a real GPU (``test_cuda.py``)."""
    state = torch.load(made_run.run_dir / "best.pt", weights_only=True)
    with monkeypatch.context() as patched:
        patched.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        save_checkpoint(tmp_path / "best.pt", state)
    if not torch.cuda.is_available():  # what loading without map_location does on a CPU
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(tmp_path / "best.pt", weights_only=True)
    model, config, loaded = load_model_from_run(tmp_path, device="cpu")
    assert next(model.parameters()).device.type == "cpu"
    assert loaded["image_size"] == config.image_size == 64
    for name, tensor in state["model"].items():
        assert torch.equal(model.state_dict()[name], tensor), name


def test_cli_evaluate_with_a_foreign_checkpoint(tmp_path, capsys):
    torch.save({"format_version": 1, "arch": "resnet50", "model": {}}, tmp_path / "best.pt")
    code = cli.main(["evaluate", "--run", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "resnet50" in err and str(tmp_path) in err


def test_a_run_made_with_a_removed_option_is_named(made_run, tmp_path, capsys):
    """A run trained with ``--intensity clahe`` (an option since removed) is refused by name,
    as one line, not with a traceback."""
    state = torch.load(made_run.run_dir / "best.pt", weights_only=True)
    state["config"]["intensity"] = "clahe"
    save_checkpoint(tmp_path / "best.pt", state)
    assert cli.main(["predict", "--run", str(tmp_path), str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {tmp_path / 'best.pt'}: made with a recipe this version cannot")
    assert "intensity='clahe'" in err and len(err.splitlines()) == 1
