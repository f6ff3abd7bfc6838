"""The input check: real-world variants flagged with the right reason, plain X-rays not; the
frame crop; the run folder's statistics; ``predict --strict``, ``--crop-border``, ``--save-input``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from helpers import cli
from helpers.demo import draw_xray
from helpers.evaluate import predict_images
from helpers.files import per_image_name
from helpers.inputcheck import (
    DEFAULT_STATS,
    STATS_FILE,
    check_image,
    crop_box,
    model_input,
    picture_seen,
    read_input_stats,
    size_stats,
    training_stats,
    uniform_border,
    write_input_stats,
)
from helpers.photos import light_box_photo, negative, noise_image, save_sideways_jpeg, tinted
from helpers.runs import load_model_from_run


def _xray(seed: int, width: int = 500, height: int = 380, kind: str = "none") -> Image.Image:
    """A drawn chest X-ray (helpers.demo): body, lungs, spine, heart, ribs."""
    return Image.fromarray(draw_xray(np.random.default_rng(seed), width, height, kind))


@pytest.fixture(scope="module")
def drawn_stats(tmp_path_factory) -> dict:
    """Statistics of 30 drawn X-rays of varied sizes, as a run would write them."""
    folder = tmp_path_factory.mktemp("drawn")
    rng = np.random.default_rng(0)
    rows = []
    for i in range(30):
        width = int(rng.uniform(320, 560))
        height = int(width / rng.uniform(1.1, 1.8))
        path = folder / f"{i}.png"
        _xray(i, width, height, ("none", "bacteria", "virus")[i % 3]).save(path)
        rows.append({"path": str(path), "width": width, "height": height})
    return training_stats(pd.DataFrame(rows), seed=0)


def _reasons(check) -> set[str]:
    return {flag.feature for flag in check.flags}


# --- the four real-world variants, and a plain X-ray --------------------------------------------


@pytest.mark.parametrize("seed", [101, 102, 103])
def test_a_plain_xray_is_not_flagged(drawn_stats, seed):
    check = check_image(_xray(seed, kind="bacteria" if seed % 2 else "none"), drawn_stats)
    assert check.ok, check.summary()
    assert check.summary() == "ok"


def test_a_light_box_photo_is_flagged_for_its_frame(drawn_stats):
    check = check_image(light_box_photo(_xray(101), scale=2), drawn_stats)
    assert "border" in _reasons(check)
    reason = next(f.reason for f in check.flags if f.feature == "border")
    assert "frame on 4 sides" in reason and "light box" in reason


def test_a_tinted_xray_is_flagged_for_colour_only(drawn_stats):
    check = check_image(tinted(_xray(102)), drawn_stats)
    assert "colour" in _reasons(check)
    assert not _reasons(check) & {"border", "centre", "aspect", "size"}
    # the same picture in grey (a colour file of a grey image) is not colour
    assert check_image(_xray(102).convert("RGB"), drawn_stats).ok


def test_a_negative_film_is_flagged_by_its_dark_centre(drawn_stats):
    check = check_image(negative(_xray(103)), drawn_stats)
    assert "centre" in _reasons(check)
    assert "negative" in next(f.reason for f in check.flags if f.feature == "centre")
    assert check.features["centre"] < 0 < check_image(_xray(103), drawn_stats).features["centre"]


def test_a_sideways_phone_jpeg_with_exif_6_is_read_upright_and_passes(drawn_stats, tmp_path):
    """EXIF orientation 6 is honoured: the check sees the upright picture (and its upright
    size), so it says nothing about orientation. The same pixels without the tag are a chest
    on its side, and that is flagged."""
    picture = _xray(104)
    path = save_sideways_jpeg(picture, tmp_path / "phone.jpeg")
    with Image.open(path) as stored:
        assert stored.size == (380, 500)  # the pixels really are sideways
    check = check_image(path, drawn_stats)
    assert check.ok, check.summary()
    assert check.size == (500, 380)
    upright = check_image(picture, drawn_stats).features
    assert check.features["centre"] == pytest.approx(upright["centre"], abs=3)
    turned = check_image(picture.transpose(Image.Transpose.ROTATE_90), drawn_stats)
    assert "centre" in _reasons(turned)


def test_noise_is_flagged_as_grainy(drawn_stats):
    assert "texture" in _reasons(check_image(noise_image(), drawn_stats))


def test_sizes_and_aspects_far_outside_the_training_images_are_flagged(drawn_stats):
    assert _reasons(check_image(_xray(105, 64, 50), drawn_stats)) == {"size"}
    wide = check_image(_xray(105, 1200, 300), drawn_stats)
    assert "aspect" in _reasons(wide)
    assert "width / height 4.00" in next(f.reason for f in wide.flags if f.feature == "aspect")


def test_real_train_images_and_their_variants_against_the_default_statistics(shared_data, tmp_path):
    """On real Kaggle TRAIN images (never test images: the test split is for measuring):
    plain ones pass, and each variant is flagged with its reason."""
    folder = shared_data / "kermany-224" / "train"
    paths = (
        sorted((folder / "NORMAL").glob("*.jpeg"))[:3]
        + sorted((folder / "PNEUMONIA").glob("*.jpeg"))[:3]
    )
    for path in paths:
        image = Image.open(path)
        assert check_image(path, DEFAULT_STATS).ok, path
        assert "border" in _reasons(check_image(light_box_photo(image, scale=2), DEFAULT_STATS))
        assert "colour" in _reasons(check_image(tinted(image), DEFAULT_STATS))
        assert "centre" in _reasons(check_image(negative(image), DEFAULT_STATS))
        assert check_image(save_sideways_jpeg(image, tmp_path / "s.jpeg"), DEFAULT_STATS).ok


# --- the frame and its crop ---------------------------------------------------------------------


def test_uniform_border_measures_each_side_of_a_frame():
    grey = np.full((100, 200), 210.0)
    rng = np.random.default_rng(0)
    grey[10:80, 30:170] = rng.uniform(0, 255, size=(70, 140))  # the film: not uniform
    assert uniform_border(grey) == {"top": 10, "bottom": 20, "left": 30, "right": 30}
    lit = grey + np.linspace(0, 25, 200)[None, :] * (grey == 210)  # uneven lighting, 25 levels
    assert uniform_border(lit) == {"top": 10, "bottom": 20, "left": 30, "right": 30}
    # black margins beside the chest only (common in training images): no top or bottom band
    sides = grey.copy()
    sides[:10], sides[80:] = (
        rng.uniform(0, 255, size=(10, 200)),
        rng.uniform(0, 255, size=(20, 200)),
    )
    sides[:, :30] = sides[:, 170:] = 0
    bands = uniform_border(sides)
    assert bands["top"] == bands["bottom"] == 0 and bands["left"] == bands["right"] == 30


def test_crop_box_finds_the_film_inside_a_light_box():
    film = _xray(106, 400, 300)
    photo = light_box_photo(film, scale=2, border=(0.25, 0.25))  # film 800 x 600 at (200, 150)
    left, top, right, bottom = crop_box(photo)  # within the blur's few pixels of the film's edge
    assert 194 <= left <= 203 and 144 <= top <= 153
    assert 997 <= right <= 1006 and 747 <= bottom <= 756
    assert crop_box(film) is None  # nothing to crop on the film itself


def test_check_with_crop_checks_the_film_and_says_what_was_cut(drawn_stats):
    photo = light_box_photo(_xray(107), scale=2)
    check = check_image(photo, drawn_stats, crop_border=True)
    assert check.ok, check.summary()
    assert check.crop_box is not None and check.image.size < photo.size
    assert "frame cropped" in check.summary()


# --- the statistics in the run folder -------------------------------------------------------------


def test_size_stats_use_defaults_for_resized_copies():
    same = size_stats(np.full(5, 224), np.full(5, 224), "5 images")
    assert same["aspect"] == DEFAULT_STATS["sizes"]["aspect"]
    assert "all 224 x 224" in same["source"] and "resized copies" in same["source"]
    varied = size_stats(np.array([400, 600, 800]), np.array([300, 400, 400]), "3 images")
    assert varied["aspect"]["0.5"] == pytest.approx(1.5)
    assert varied["short_side"]["0.5"] == pytest.approx(400)


def test_write_and_read_input_stats(tmp_path, drawn_stats):
    folder = tmp_path / "imgs"
    folder.mkdir()
    rows = []
    for i in range(6):
        _xray(200 + i).save(folder / f"{i}.png")
        rows.append({"path": str(folder / f"{i}.png"), "width": 500, "height": 380})
    (folder / "bad.png").write_bytes(b"not a png")
    rows.append({"path": str(folder / "bad.png"), "width": 500, "height": 380})
    run = tmp_path / "run"
    run.mkdir()
    path = write_input_stats(run, pd.DataFrame(rows), seed=3)
    stats, source = read_input_stats(run)
    assert stats["n_images"] == 6 and "1 failed to decode" in stats["source"]
    assert str(path) in source
    before = path.read_text()
    write_input_stats(run, pd.DataFrame(rows[:2]))  # a resumed run keeps its statistics
    assert path.read_text() == before


def test_a_run_without_statistics_falls_back_and_says_so(tmp_path):
    from helpers.demo import make_demo_dataset

    demo_root = make_demo_dataset(tmp_path / "demo", n_images=60, seed=1)
    run = tmp_path / "old-run"
    run.mkdir()
    stats, source = read_input_stats(run)  # no config.json either: the documented defaults
    assert stats is DEFAULT_STATS and "defaults" in source and "not reachable" in source
    record = {"config": {"seed": 42, "val_split": 0.2}, "data": {"root": str(demo_root)}}
    (run / "config.json").write_text(json.dumps(record))
    stats, source = read_input_stats(run)  # its data is here: measured now, and said so
    assert "computed now" in source and stats["n_images"] >= 30
    assert stats["features"]["centre"]["0.5"] > 0
    record["data"]["root"] = str(tmp_path / "gone")
    (run / "config.json").write_text(json.dumps(record))
    assert read_input_stats(run)[0] is DEFAULT_STATS


# --- predict: the flag, --strict, --crop-border, --save-input (trains: slow) -------------------------


@pytest.fixture(scope="module")
def run_copy(quick_run, tmp_path_factory) -> Path:
    return Path(shutil.copytree(quick_run.run_dir, tmp_path_factory.mktemp("check") / "run"))


def _demo_tests(demo_root: Path, n: int) -> list[Path]:
    return sorted((demo_root / "test").rglob("*.jpeg"))[::7][:n]


@pytest.mark.slow
def test_training_writes_the_statistics_of_its_training_images(quick_run):
    stats, source = read_input_stats(quick_run.run_dir)
    assert STATS_FILE in source
    assert stats["n_images"] == len(quick_run.data.splits["train"])
    assert "training images of this run" in stats["source"]
    assert stats["sizes"]["short_side"]["0.005"] < stats["sizes"]["short_side"]["0.995"]


@pytest.mark.slow
def test_predict_strict_refuses_a_flagged_image_and_warns_without_strict(
    run_copy, demo_root, tmp_path, capsys
):
    plain = _demo_tests(demo_root, 1)[0]
    flipped = tmp_path / "negative.png"
    negative(Image.open(plain)).save(flipped)
    argv = ["predict", "--run", str(run_copy), "--device", "cpu", str(plain), str(flipped)]

    assert cli.main(argv) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert len(lines) == 2 and "FLAGGED" not in lines[0]
    assert lines[1].startswith(f"{flipped}  ") and "P(pneumonia)=" in lines[1]
    assert "FLAGGED: " in lines[1] and "centre: the middle of the picture" in lines[1]
    assert err.startswith("warning: 1 of 2 images do not look like the X-rays")

    assert cli.main([*argv, "--strict"]) == 1
    out, err = capsys.readouterr()
    assert out.splitlines() == [lines[0]]  # the plain image is still scored
    assert err.startswith(f"refused: {flipped}: ") and "centre: " in err

    assert cli.main([*argv[:-1], "--strict"]) == 0  # nothing flagged: nothing refused
    capsys.readouterr()

    (run_copy / STATS_FILE).rename(tmp_path / STATS_FILE)  # an older run, without statistics
    try:
        assert cli.main(argv) == 0
    finally:
        (tmp_path / STATS_FILE).rename(run_copy / STATS_FILE)
    out, err = capsys.readouterr()
    assert err.startswith("input check: ") and "computed now" in err  # told, not silent
    assert "centre: the middle of the picture" in out.splitlines()[1]


@pytest.mark.slow
def test_the_crop_brings_a_light_box_photo_back_to_the_original_score(
    run_copy, demo_root, tmp_path
):
    """The light-box photo of an image, cropped, scores within 0.05 of the image itself; the
    uncropped photo is further off (the test fails if the crop does nothing)."""
    model, config, _ = load_model_from_run(run_copy, device="cpu")
    originals = _demo_tests(demo_root, 6)
    photos = []
    for path in originals:
        photos.append(tmp_path / f"{path.stem}-lightbox.jpeg")
        light_box_photo(Image.open(path), scale=3).save(photos[-1], quality=92)

    def scores(paths, crop):
        results = predict_images(model, paths, config.image_size, crop_border=crop)
        return np.array([r.p_pneumonia for r in results])

    original = scores(originals, False)
    assert original.std() > 0.01  # a model whose answers differ per image
    uncropped, cropped = scores(photos, False), scores(photos, True)
    assert np.abs(cropped - original).max() <= 0.05
    assert np.abs(uncropped - original).mean() > 2 * np.abs(cropped - original).mean()
    assert np.array_equal(scores(originals, True), original)  # no frame: nothing cropped


@pytest.mark.slow
def test_predict_crop_border_and_save_input_show_what_the_model_sees(
    run_copy, demo_root, tmp_path, capsys
):
    path = _demo_tests(demo_root, 1)[0]
    photo = tmp_path / "lightbox.jpeg"
    light_box_photo(Image.open(path), scale=2).save(photo)
    seen = tmp_path / "seen"
    argv = [
        "predict",
        "--run",
        str(run_copy),
        "--device",
        "cpu",
        str(photo),
        "--save-input",
        str(seen),
    ]

    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "FLAGGED: border:" in out
    framed = np.asarray(Image.open(seen / per_image_name(photo, "input")))
    assert framed[:3].mean() == pytest.approx(215, abs=3)  # the light box's grey, top rows

    assert cli.main([*argv, "--crop-border"]) == 0
    out = capsys.readouterr().out
    assert "FLAGGED" not in out and "frame cropped" in out
    cropped = np.asarray(Image.open(seen / per_image_name(photo, "input")))
    expected, box = model_input(photo, framed.shape[0], crop_border=True)
    assert box is not None and np.array_equal(cropped, expected)
    assert abs(float(cropped[:3].mean()) - 215) > 30  # the frame is gone


@pytest.mark.slow
def test_save_input_keeps_apart_images_with_one_name_in_two_folders(
    run_copy, demo_root, tmp_path, capsys
):
    """Two photos named ``photo.jpeg`` in two folders: two input files, each the picture the
    model saw for its own photo (a name from the stem alone wrote both to one file)."""
    first, second = _demo_tests(demo_root, 2)
    photos = []
    for folder, source in (("a", first), ("b", second)):
        (tmp_path / folder).mkdir()
        photos.append(tmp_path / folder / "photo.jpeg")
        Image.open(source).convert("RGB").save(photos[-1], quality=92)
    seen = tmp_path / "seen"
    argv = ["predict", "--run", str(run_copy), "--device", "cpu", *map(str, photos)]
    assert cli.main([*argv, "--save-input", str(seen)]) == 0
    printed = [
        Path(line.split("model input: ", 1)[1])
        for line in capsys.readouterr().out.splitlines()
        if line.startswith("model input: ")
    ]
    assert sorted(seen.iterdir()) == sorted(printed) and len(printed) == 2
    size = int(json.loads((run_copy / "config.json").read_text())["config"]["image_size"])
    for photo, written in zip(photos, printed, strict=True):
        assert written.name == per_image_name(photo, "input")
        assert written.name.startswith("photo-") and written.name.endswith("-input.png")
        assert np.array_equal(np.asarray(Image.open(written)), model_input(photo, size)[0])
    assert not np.array_equal(*(np.asarray(Image.open(path)) for path in printed))


@pytest.mark.slow
def test_predict_gradcam_with_crop_border_draws_on_the_picture_the_model_saw(
    run_copy, demo_root, tmp_path, capsys
):
    """With ``--crop-border`` the overlay is the cropped film, at its own resolution, with the
    heatmap of the cropped input; without it, the whole photo with the frame."""
    from helpers.augment import normalize_batch
    from helpers.explain import GradCAM, gradcam_file_name, overlay, upsample_heatmap

    model, config, _ = load_model_from_run(run_copy, device="cpu")
    photo = tmp_path / "lightbox.jpeg"
    light_box_photo(Image.open(_demo_tests(demo_root, 1)[0]), scale=2).save(photo, quality=92)
    argv = ["predict", "--run", str(run_copy), "--device", "cpu", str(photo)]

    assert cli.main([*argv, "--gradcam", str(tmp_path / "whole")]) == 0
    with Image.open(tmp_path / "whole" / gradcam_file_name(photo)) as drawn:
        assert drawn.size == Image.open(photo).size  # the photo, frame and all
    assert cli.main([*argv, "--crop-border", "--gradcam", str(tmp_path / "cropped")]) == 0
    capsys.readouterr()
    left, top, right, bottom = crop_box(Image.open(photo))
    drawn = np.asarray(Image.open(tmp_path / "cropped" / gradcam_file_name(photo)), np.float64)
    assert drawn.shape == (bottom - top, right - left, 3)  # the film only

    # drawn from the cropped input's heatmap, recomputed here with GradCAM itself
    def heat(crop: bool) -> np.ndarray:
        seen, _ = model_input(photo, config.image_size, config.intensity, crop_border=crop)
        cam = GradCAM(model, model.features[-1])(
            normalize_batch(torch.from_numpy(seen)[None, None])
        )
        return upsample_heatmap(cam[0], drawn.shape[:2])

    picture = picture_seen(photo, crop_border=True).astype(np.float64) / 255
    expected, other = (overlay(picture, heat(crop)) * 255 for crop in (True, False))
    assert np.abs(drawn - expected).max() <= 1
    assert np.abs(drawn - other).max() > 10  # the uncropped input's heatmap would look different
