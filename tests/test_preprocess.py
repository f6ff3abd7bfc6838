"""From files to batches: decoding (images), the decode-once cache, batch augmentation and
normalisation (augment), and BatchLoader (loader)."""

from __future__ import annotations

import errno
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

from helpers import cache as cache_module
from helpers import images as images_module
from helpers.augment import (
    apply_augmentation,
    augment_batch,
    augment_params,
    augment_policy,
    denormalize,
    eval_transform,
    normalize_batch,
    robust_perturbation,
    train_transform,
)
from helpers.cache import CACHE_FORMAT_VERSION, build_cache
from helpers.config import IMAGENET_MEAN, IMAGENET_STD
from helpers.images import ImageError, ImageReadError, equalize, load_gray
from helpers.loader import BatchLoader

FULLRES = Path(__file__).resolve().parents[2] / "shared" / "data" / "kermany-fullres-sample"


def gradient_image(width: int = 120, height: int = 90, seed: int = 0) -> np.ndarray:
    """A smooth uint8 image with some noise: JPEG-friendly and different per seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = 40 + 150 * (x / width) * (0.5 + 0.5 * y / height)
    return np.clip(base + rng.normal(0, 8, base.shape), 0, 255).astype(np.uint8)


def save(img: Image.Image, path: Path, **kw) -> Path:
    img.save(path, **kw)
    return path


# --- load_gray ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "colour", "expected", "suffix"),
    [
        ("L", 77, 77, ".png"),
        ("RGB", (200, 100, 50), 124, ".png"),  # 0.299*200 + 0.587*100 + 0.114*50 = 124.2
        ("RGB", (200, 100, 50), 124, ".jpeg"),
        ("RGBA", (200, 100, 50, 0), 124, ".png"),  # alpha ignored, like convert("RGB")
        ("LA", (90, 10), 90, ".png"),
        ("CMYK", (0, 0, 0, 128), 127, ".jpeg"),
        ("CMYK", (0, 0, 0, 128), 127, ".tiff"),
    ],
)
def test_load_gray_colour_modes(tmp_path, mode, colour, expected, suffix):
    path = save(Image.new(mode, (50, 30), colour), tmp_path / f"img{suffix}")
    out = load_gray(path, 16)
    assert out.dtype == np.uint8 and out.shape == (16, 16)
    assert np.abs(out.astype(int) - expected).max() <= 2


def test_load_gray_palette(tmp_path):
    img = Image.new("P", (40, 40), 1)
    img.putpalette([0, 0, 0, 10, 200, 30] + [0] * (256 * 3 - 6))
    out = load_gray(save(img, tmp_path / "p.png"), 8)
    assert np.all(np.abs(out.astype(int) - 124) <= 1)  # palette colour, not the index 1


def test_load_gray_16bit_scaled_by_used_bit_depth(tmp_path):
    ramp = np.tile(np.linspace(0, 4095, 64).astype(np.uint16), (64, 1))  # 12-bit X-ray
    path = save(Image.fromarray(ramp), tmp_path / "ramp16.png")
    assert Image.open(path).mode in ("I;16", "I")  # 16-bit grey (Pillow < 10.3 says "I")
    out = load_gray(path, 64)
    assert out.max() >= 253 and out.min() <= 2

    mid = save(Image.fromarray(np.full((32, 32), 2048, np.uint16)), tmp_path / "mid.png")
    mid_max = np.full((32, 32), 2048, np.uint16)
    mid_max[0, 0] = 4095  # the bit depth comes from the maximum
    mid_path = save(Image.fromarray(mid_max), tmp_path / "mid_max.png")
    assert abs(int(np.median(load_gray(mid_path, 32))) - 127) <= 1
    # 2048 alone needs 12 bits too: 2048 / 4095 * 255
    assert abs(int(load_gray(mid, 32)[5, 5]) - 128) <= 1

    full = np.full((16, 16), 65535, np.uint16)
    full[:8] = 32768
    out = load_gray(save(Image.fromarray(full), tmp_path / "full16.png"), 16)
    assert out[-1, -1] == 255 and abs(int(out[0, 0]) - 128) <= 1

    small = np.full((16, 16), 200, np.uint16)  # 16-bit container, 8-bit values: unchanged
    assert load_gray(save(Image.fromarray(small), tmp_path / "small16.png"), 16)[3, 3] == 200


def test_load_gray_32bit_integer_tiff(tmp_path):
    values = np.full((20, 20), 1023, np.int32)  # 10-bit values in an "I" image
    path = save(Image.fromarray(values), tmp_path / "i32.tiff")
    assert Image.open(path).mode == "I"
    assert np.all(load_gray(path, 10) == 255)


def test_load_gray_resizes_without_keeping_aspect(tmp_path):
    img = Image.fromarray(gradient_image(300, 120))
    out = load_gray(save(img, tmp_path / "wide.png"), 40)
    expected = np.asarray(img.resize((40, 40), Image.Resampling.BICUBIC))
    assert out.shape == (40, 40)
    np.testing.assert_array_equal(out, expected)


def test_load_gray_jpeg_draft_close_to_full_decode(tmp_path):
    img = Image.fromarray(gradient_image(1100, 900, seed=3)).convert("RGB")
    path = save(img, tmp_path / "big.jpeg", quality=95)
    drafted = load_gray(path, 128).astype(float)
    full = load_gray(path, 128, draft=False).astype(float)
    assert np.abs(drafted - full).mean() < 0.5


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "zero bytes"),
        (b"this is not an image, just text\n" * 20, "not an image"),
    ],
    ids=["zero-bytes", "text"],
)
def test_load_gray_bad_files(tmp_path, content, reason):
    path = tmp_path / "bad.jpeg"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=reason) as info:
        load_gray(path, 32)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError) and info.value.path == str(path)


def test_load_gray_truncated_and_missing(tmp_path):
    good = save(Image.fromarray(gradient_image(400, 300)), tmp_path / "good.jpeg", quality=90)
    data = good.read_bytes()
    cut = tmp_path / "cut.jpeg"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated") as info:
        load_gray(cut, 32, draft=False)
    assert "cut.jpeg" in str(info.value)
    assert info.value.permanent  # the bytes are bad: the same answer every time
    with pytest.raises(ImageReadError, match="cannot read") as info:
        load_gray(tmp_path / "nope.png", 32)
    assert "nope.png" in str(info.value) and not info.value.permanent


def test_only_bad_content_is_an_image_error(tmp_path, monkeypatch):
    """An unsupported mode is the file's problem; an I/O error is the machine's
    (ImageReadError, not permanent); an error of the project's own code stays what it is
    instead of becoming "cannot convert to grayscale", let alone a cached bad image."""
    lab = save(Image.new("LAB", (40, 30)), tmp_path / "lab.tif")
    with pytest.raises(ImageError, match="cannot convert to grayscale.*LAB") as info:
        load_gray(lab, 32)
    assert info.value.permanent
    good = save(Image.fromarray(gradient_image()), tmp_path / "good.png")

    def io_error(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    with monkeypatch.context() as patched:
        patched.setattr(images_module.Image, "open", io_error)
        with pytest.raises(ImageReadError, match="Input/output error") as info:
            load_gray(good, 32)
    assert not info.value.permanent

    def bug(*args, **kwargs):
        raise ValueError("a bug in the project, not a property of the image")

    monkeypatch.setattr(images_module, "gray_resize", bug)
    with pytest.raises(ValueError, match="a bug in the project") as info:
        load_gray(good, 32)
    assert not isinstance(info.value, ImageError)


def test_load_gray_refuses_decompression_bombs(tmp_path, monkeypatch):
    path = save(Image.new("L", (200, 100)), tmp_path / "wide.png")
    monkeypatch.setattr(images_module, "MAX_IMAGE_PIXELS", 10_000)
    with pytest.raises(ImageError, match="decompression bomb") as info:
        load_gray(path, 32)
    assert "200x100" in str(info.value) and "wide.png" in str(info.value)


def test_exif_orientation_is_applied_everywhere(tmp_path):
    """A phone photo stored sideways (EXIF orientation 6: rotate 90 degrees clockwise to view)
    loads upright, and the scan reports its upright size."""
    from helpers.data import read_header

    upright = np.zeros((120, 60), np.uint8)  # tall: 60 wide, 120 high
    upright[:20] = 255  # a white band at the top
    stored = np.rot90(upright, k=1)  # what the camera wrote: 120 wide, 60 high
    exif = Image.Exif()
    exif[images_module.EXIF_ORIENTATION] = 6
    path = save(Image.fromarray(stored), tmp_path / "phone.jpeg", exif=exif, quality=95)
    assert Image.open(path).size == (120, 60)
    assert read_header(path)[:2] == (60, 120)
    pixels = load_gray(path, 60).astype(int)
    assert pixels[:8].mean() > 200 and pixels[-20:].mean() < 40  # the band is at the top
    unrotated = save(Image.fromarray(stored), tmp_path / "plain.jpeg", quality=95)
    assert load_gray(unrotated, 60)[:8].mean() < 200  # without the tag: sideways


def test_load_gray_at_its_own_resolution(tmp_path):
    """``size=None`` (what Grad-CAM overlays are drawn on): the picture's own height and width,
    upright for a phone photo, grey, and unresized (a 16-bit PNG scaled as at any size)."""
    upright = np.zeros((120, 60), np.uint8)
    upright[:20] = 255
    exif = Image.Exif()
    exif[images_module.EXIF_ORIENTATION] = 6
    phone = save(
        Image.fromarray(np.rot90(upright, k=1)), tmp_path / "phone.jpeg", exif=exif, quality=95
    )
    pixels = load_gray(phone, None)
    assert pixels.shape == (120, 60) and pixels.dtype == np.uint8
    assert pixels[:8].mean() > 200 and pixels[-20:].mean() < 40  # the band is at the top
    rgb = gradient_image(90, 70, seed=3)
    png = save(Image.fromarray(rgb).convert("RGB"), tmp_path / "rgb.png")
    np.testing.assert_array_equal(load_gray(png, None), np.asarray(Image.open(png).convert("L")))
    deep = save(
        Image.fromarray((np.arange(50 * 40).reshape(50, 40) * 2).astype(np.uint16)),
        tmp_path / "deep.png",
    )
    assert load_gray(deep, None).shape == (50, 40) and load_gray(deep, None).max() > 200


# --- the cache ----------------------------------------------------------------------------


@pytest.fixture()
def image_files(tmp_path) -> list[Path]:
    """Five readable images of assorted formats/modes, and one broken file (index 3)."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    paths = []
    for i in range(5):
        img = Image.fromarray(gradient_image(90 + 10 * i, 70, seed=i))
        if i % 2:
            img = img.convert("RGB")
        suffix = ".png" if i == 2 else ".jpeg"
        paths.append(save(img, folder / f"img{i}{suffix}"))
    bad = folder / "broken.jpeg"
    bad.write_bytes(b"")
    paths.insert(3, bad)
    return paths


def build_quietly(paths, size, cache_dir, **kw):
    """build_cache expecting the warning about the one broken file."""
    with pytest.warns(UserWarning, match="1 of 6 images could not be decoded"):
        return build_cache(paths, size, cache_dir, progress=False, **kw)


def test_build_cache_contents(image_files, tmp_path):
    cache = build_quietly(image_files, 24, tmp_path / "cache")
    assert len(cache) == 6 and cache.size == 24
    assert cache.array.shape == (6, 24, 24) and cache.array.dtype == np.uint8
    assert isinstance(cache.array, np.memmap)
    assert cache.ok.dtype == np.bool_ and cache.ok.tolist() == [1, 1, 1, 0, 1, 1]
    assert cache.failed == [
        {"path": str(image_files[3]), "reason": "zero bytes (empty file)", "permanent": True}
    ]
    assert not cache.array[3].any()
    for row, path in enumerate(image_files):
        if row != 3:
            np.testing.assert_array_equal(cache.array[row], load_gray(path, 24))
    assert cache.index_of(image_files[4]) == 4
    with pytest.raises(KeyError, match="not in the cache"):
        cache.index_of(tmp_path / "other.png")

    # Plain files: an .npy without pickles, and a JSON index written last.
    array = np.load(cache.path, allow_pickle=False)
    np.testing.assert_array_equal(array, cache.array)
    index = json.loads(cache.path.with_suffix(".json").read_text())
    assert index["paths"] == [str(p) for p in image_files]
    assert index["size"] == 24 and index["format_version"] == CACHE_FORMAT_VERSION
    assert not list(cache.path.parent.glob("*.tmp-*"))


def test_cache_batch_keeps_requested_order(image_files, tmp_path):
    cache = build_quietly(image_files, 16, tmp_path / "cache")
    for rows in ([0, 1, 2], [5, 0, 4, 2], [4]):
        batch = cache.batch(rows)
        assert batch.dtype == torch.uint8 and batch.shape == (len(rows), 1, 16, 16)
        np.testing.assert_array_equal(batch[:, 0].numpy(), cache.array[rows])
    with pytest.raises(IndexError):
        cache.batch([0, 6])


def test_an_unreadable_file_is_retried_not_cached_as_bad(image_files, tmp_path, monkeypatch):
    """A file that could not be *read* while the cache was built (an I/O error on a network
    drive, after the build's own retries) is recorded as failed but not permanent, and tried
    again when the cache is next opened: once readable, it is decoded into its row. A file
    whose content is bad (the empty one) is not decoded again."""
    flaky = str(image_files[1])
    real = images_module.Image.open

    def drive_down(path, *args, **kwargs):
        if str(path) == flaky:
            raise OSError(errno.EIO, "Input/output error")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(cache_module, "READ_ATTEMPTS", 2)
    monkeypatch.setattr(cache_module.time, "sleep", lambda s: None)
    with monkeypatch.context() as patched:
        patched.setattr(images_module.Image, "open", drive_down)
        with pytest.warns(UserWarning, match="2 of 6 .* 1 could not be read and will be tried"):
            first = build_cache(image_files, 16, tmp_path / "cache", progress=False)
    assert first.ok.tolist() == [1, 0, 1, 0, 1, 1]
    assert {f["path"]: f["permanent"] for f in first.failed} == {
        flaky: False,
        str(image_files[3]): True,
    }
    calls = count_decodes(monkeypatch)
    again = build_quietly(image_files, 16, tmp_path / "cache")  # the drive is back
    assert calls == [flaky] and again.path == first.path
    assert again.ok.tolist() == [1, 1, 1, 0, 1, 1]
    np.testing.assert_array_equal(again.array[1], load_gray(flaky, 16))
    index = json.loads(again.index_path.read_text())
    assert index["ok"] == again.ok.tolist() and len(index["failed"]) == 1


def test_cache_is_reused_without_decoding(image_files, tmp_path, monkeypatch):
    first = build_quietly(image_files, 16, tmp_path / "cache")

    def explode(*args, **kwargs):
        raise AssertionError("a valid cache must not decode anything")

    monkeypatch.setattr(cache_module, "load_gray", explode)
    again = build_quietly(image_files, 16, tmp_path / "cache")
    assert again.path == first.path
    np.testing.assert_array_equal(again.array, first.array)
    assert again.failed == first.failed


def test_a_missing_file_is_not_waited_for_each_time_the_cache_opens(
    image_files, tmp_path, monkeypatch
):
    """A file that was missing when the cache was built, and still is, stays failed when the
    cache is opened again, without the read retries and their pauses (its fingerprint says
    "missing": if it comes back, the cache is a new one)."""
    paths = [*image_files, tmp_path / "gone.jpeg"]
    sleeps: list[float] = []
    monkeypatch.setattr(cache_module.time, "sleep", sleeps.append)
    with pytest.warns(UserWarning, match="2 of 7"):
        first = build_cache(paths, 16, tmp_path / "cache", progress=False)
    assert sleeps, "the first build retries the missing file, with pauses"
    sleeps.clear()
    calls = count_decodes(monkeypatch)
    with pytest.warns(UserWarning, match="2 of 7"):
        again = build_cache(paths, 16, tmp_path / "cache", progress=False)
    assert again.path == first.path and calls == [] and sleeps == []
    assert str(tmp_path / "gone.jpeg") in {f["path"] for f in again.failed}


def count_decodes(monkeypatch) -> list[str]:
    """Make every load_gray call append its path to the returned list."""
    calls: list[str] = []
    real = cache_module.load_gray

    def counting(path, size, **kw):
        calls.append(str(path))
        return real(path, size, **kw)

    monkeypatch.setattr(cache_module, "load_gray", counting)
    return calls


def test_cache_rebuilds_when_a_file_or_the_size_changes(image_files, tmp_path, monkeypatch):
    first = build_quietly(image_files, 16, tmp_path / "cache")
    calls = count_decodes(monkeypatch)

    other_size = build_quietly(image_files, 20, tmp_path / "cache")
    assert other_size.path != first.path and other_size.array.shape == (6, 20, 20)
    assert len(calls) == 6

    changed = image_files[0]
    Image.fromarray(np.full((70, 90), 250, np.uint8)).save(changed)
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    rebuilt = build_quietly(image_files, 16, tmp_path / "cache")
    assert rebuilt.path != first.path
    assert np.all(rebuilt.array[0] >= 248)
    assert not np.array_equal(rebuilt.array[0], first.array[0])


def test_half_built_cache_is_never_trusted(image_files, tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    first = build_quietly(image_files, 16, cache_dir)
    expected = np.array(first.array)
    npy, index = first.path, first.path.with_suffix(".json")
    del first
    # A build killed after the array was renamed but before its index: the .npy holds junk.
    index.unlink()
    np.save(npy, np.full((6, 16, 16), 7, np.uint8))
    # ...and a stale temp file from another killed build.
    (cache_dir / f"{npy.name}.tmp-99999").write_bytes(b"partial junk")
    calls = count_decodes(monkeypatch)
    rebuilt = build_quietly(image_files, 16, cache_dir)
    assert len(calls) == 6  # decoded again: no index, no trust
    assert rebuilt.path == npy and index.is_file()
    np.testing.assert_array_equal(rebuilt.array, expected)


def test_corrupt_index_is_rebuilt(image_files, tmp_path, monkeypatch):
    first = build_quietly(image_files, 16, tmp_path / "cache")
    first.path.with_suffix(".json").write_text("{not json")
    calls = count_decodes(monkeypatch)
    build_quietly(image_files, 16, tmp_path / "cache")
    assert len(calls) == 6


# --- batch tensor ops ---------------------------------------------------------------------


def random_batch(n: int = 12, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, size, size, generator=g)


def test_augment_batch_deterministic_for_a_seed():
    x = random_batch()
    a = augment_batch(x, torch.Generator().manual_seed(5))
    b = augment_batch(x, torch.Generator().manual_seed(5))
    c = augment_batch(x, torch.Generator().manual_seed(6))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.equal(a, c)
    assert a.shape == x.shape and a.dtype == torch.float32
    assert a.min() >= 0 and a.max() <= 1
    with pytest.raises(ValueError, match="float"):
        augment_batch((x * 255).to(torch.uint8), torch.Generator())


def test_augment_batch_matches_torchvision_per_image_ops():
    """Each image gets exactly one op, equal to torchvision's functional op with the drawn
    parameters (jitter in the drawn order, affine with nearest/zero fill, flip)."""
    x = random_batch(n=30, size=40, seed=1)
    params = augment_params(30, 40, 40, torch.Generator().manual_seed(3))
    out = augment_batch(x, torch.Generator().manual_seed(3))
    torch.testing.assert_close(out, apply_augmentation(x, params), rtol=0, atol=0)
    seen = set()
    for i in range(30):
        img, choice = x[i], int(params["choice"][i])
        seen.add(choice)
        if choice == 2:
            assert torch.equal(out[i], torch.flip(img, dims=[-1]))
        elif choice == 0:
            b, c = float(params["brightness"][i]), float(params["contrast"][i])
            if params["brightness_first"][i]:
                ref = TF.adjust_contrast(TF.adjust_brightness(img, b), c)
            else:
                ref = TF.adjust_brightness(TF.adjust_contrast(img, c), b)
            torch.testing.assert_close(out[i], ref, rtol=0, atol=1e-5)
        else:
            ref = TF.affine(
                img,
                angle=float(params["angle"][i]),
                translate=[int(params["tx"][i]), int(params["ty"][i])],
                scale=1.0,
                shear=[float(params["shear"][i]), 0.0],
                interpolation=InterpolationMode.NEAREST,
                fill=0.0,
            )
            assert (out[i] != ref).float().mean() < 0.01  # float rounding at pixel edges
    assert seen == {0, 1, 2}


def test_augment_params_ranges():
    p = augment_params(3000, 256, 200, torch.Generator().manual_seed(0))
    counts = torch.bincount(p["choice"], minlength=3).float() / 3000
    assert torch.all((counts - 1 / 3).abs() < 0.05)
    for key, low, high in [("brightness", 0.8, 1.2), ("contrast", 0.8, 1.2), ("angle", -10, 10)]:
        assert p[key].min() >= low and p[key].max() <= high
    assert p["tx"].abs().max() <= 20 and p["ty"].abs().max() <= 26
    assert torch.equal(p["tx"], p["tx"].round()) and p["shear"].abs().max() <= 2
    assert 0.4 < p["brightness_first"].float().mean() < 0.6


def test_normalize_batch_values():
    x = torch.tensor([0, 255, 128], dtype=torch.uint8).view(3, 1, 1, 1).expand(3, 1, 2, 2)
    out = normalize_batch(x)
    assert out.shape == (3, 3, 2, 2) and out.dtype == torch.float32
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(out[0, :, 0, 0], -mean / std)
    torch.testing.assert_close(out[1, :, 0, 0], (1 - mean) / std)
    torch.testing.assert_close(normalize_batch(x.float() / 255), out)
    torch.testing.assert_close(denormalize(out)[:, 0:1], x.float() / 255, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match=r"\(B, 1, S, S\)"):
        normalize_batch(torch.zeros(2, 3, 4, 4))


def test_per_image_transforms(tmp_path):
    rgb = Image.fromarray(gradient_image(80, 60)).convert("RGB")
    deep = Image.fromarray(gradient_image(80, 60).astype(np.uint16) * 16)  # I;16
    evaluate = eval_transform(32)
    for img in (rgb, deep):
        out = evaluate(img)
        assert out.shape == (3, 32, 32) and out.dtype == torch.float32
        torch.testing.assert_close(evaluate(img), out, rtol=0, atol=0)  # deterministic
    expected = normalize_batch(
        torch.from_numpy(load_gray(save(rgb, tmp_path / "r.png"), 32))[None, None]
    )
    torch.testing.assert_close(evaluate(rgb), expected[0])

    train = train_transform(32)
    torch.manual_seed(0)
    outs = [train(rgb) for _ in range(6)]
    assert all(o.shape == (3, 32, 32) for o in outs)
    assert any(not torch.equal(outs[0], o) for o in outs[1:])


# --- BatchLoader --------------------------------------------------------------------------


@pytest.fixture()
def small_cache(tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    paths = []
    for i in range(23):
        paths.append(save(Image.fromarray(gradient_image(40, 40, seed=i)), folder / f"{i}.png"))
    return build_cache(paths, 16, tmp_path / "cache", progress=False)


def epoch_rows(loader) -> list[list[int]]:
    """Rows of each batch of one epoch (the targets are the row numbers themselves)."""
    return [y.tolist() for _, y in loader]


def test_batch_loader_batches_and_coverage(small_cache):
    rows = list(range(3, 23))
    loader = BatchLoader(small_cache, rows, rows, 6, shuffle=True, augment=False, seed=1)
    assert len(loader) == 4
    batches = list(loader)
    assert [x.shape[0] for x, _ in batches] == [6, 6, 6, 2]
    for x, y in batches:
        assert x.shape[1:] == (3, 16, 16) and x.dtype == torch.float32 and y.dtype == torch.int64
        torch.testing.assert_close(x, normalize_batch(small_cache.batch(y.numpy())))
    seen = sorted(r for _, y in batches for r in y.tolist())
    assert seen == rows


def test_a_training_epoch_never_ends_with_a_batch_of_one(small_cache):
    """BatchNorm cannot train on one image: a shuffled epoch of 13 images in batches of 6
    leaves out one image (another each epoch) instead of ending with a batch of one; an
    unshuffled pass (evaluation) keeps every image."""
    rows = list(range(13))
    loader = BatchLoader(small_cache, rows, rows, 6, shuffle=True, augment=False, seed=1)
    assert len(loader) == 2
    left_out = set()
    for _ in range(3):
        batches = [y.tolist() for _, y in loader]
        assert [len(b) for b in batches] == [6, 6]
        left_out |= set(rows) - {r for b in batches for r in b}
    assert len(left_out) > 1  # not always the same image
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.BatchNorm2d(4))  # fmt: skip
    model.train()
    for x, _ in loader:
        model(x)  # a batch of one raised "Expected more than 1 value per channel"
    plain = BatchLoader(small_cache, rows, rows, 6, shuffle=False, augment=False, seed=1)
    assert len(plain) == 3 and [len(y) for _, y in plain] == [6, 6, 1]


def test_batch_loader_epochs_reproducible(small_cache):
    rows = list(range(23))
    make = lambda: BatchLoader(small_cache, rows, rows, 5, shuffle=True, augment=True, seed=7)  # noqa: E731
    a = make()
    epochs = [[(x.clone(), y.clone()) for x, y in a] for _ in range(3)]
    assert a.epoch == 3
    order = [[y.tolist() for _, y in e] for e in epochs]
    assert order[0] != order[1] != order[2]
    b = make()
    b.set_epoch(2)
    resumed = list(b)
    assert [y.tolist() for _, y in resumed] == order[2]
    for (xa, _), (xb, _) in zip(epochs[2], resumed, strict=True):
        torch.testing.assert_close(xa, xb, rtol=0, atol=0)
    other_seed = BatchLoader(small_cache, rows, rows, 5, shuffle=True, augment=True, seed=8)
    assert epoch_rows(other_seed) != order[0]


def test_batch_loader_unshuffled_keeps_order(small_cache):
    rows = [5, 2, 19, 0, 7, 11, 3]
    loader = BatchLoader(small_cache, rows, rows, 3, shuffle=False, augment=False, seed=0)
    assert sum(epoch_rows(loader), []) == rows
    assert epoch_rows(loader) == epoch_rows(loader)


def test_batch_loader_refuses_failed_images(image_files, tmp_path):
    cache = build_quietly(image_files, 16, tmp_path / "cache")
    with pytest.raises(ValueError, match="failed to decode.*broken.jpeg"):
        BatchLoader(cache, range(6), [0] * 6, 2, shuffle=False, augment=False, seed=0)
    good = np.flatnonzero(cache.ok)
    loader = BatchLoader(cache, good, [1] * len(good), 2, shuffle=False, augment=False, seed=0)
    assert sum(len(y) for _, y in loader) == 5
    with pytest.raises(ValueError, match="targets"):
        BatchLoader(cache, good, [0], 2, shuffle=False, augment=False, seed=0)


# --- real full-resolution X-rays ----------------------------------------------------------


def test_draft_decode_matches_full_decode_on_real_xrays():
    files = sorted(FULLRES.glob("*/*/*.jp*g")) if FULLRES.is_dir() else []
    if not files:
        pytest.skip("../shared/data/kermany-fullres-sample is not available")
    sample = files[::6]  # 24 images, both classes, grey and RGB JPEGs
    diffs = [
        np.abs(load_gray(p, 256).astype(float) - load_gray(p, 256, draft=False)).mean()
        for p in sample
    ]
    assert np.mean(diffs) < 0.5 and max(diffs) < 1.5


def test_robust_policy_is_seeded_and_widens_intensity():
    x = torch.linspace(0, 1, 64 * 64).view(1, 1, 64, 64).repeat(32, 1, 1, 1)
    a = robust_perturbation(x, torch.Generator().manual_seed(3))
    b = robust_perturbation(x, torch.Generator().manual_seed(3))
    c = robust_perturbation(x, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    # every image is changed, and the spread of mean brightness is far wider than the input's (0)
    assert ((a - x).abs().flatten(1).mean(1) > 1e-3).all()
    assert a.mean(dim=(1, 2, 3)).std() > 0.02
    article = augment_policy(x, torch.Generator().manual_seed(3), "article")
    assert torch.equal(article, augment_batch(x, torch.Generator().manual_seed(3)))
    with pytest.raises(ValueError, match="policy"):
        augment_policy(x, torch.Generator(), "wild")


def test_equalize_removes_a_monotone_exposure_change():
    """Histogram equalisation depends only on the ranks of the grey levels, so a contrast and
    brightness change applied before it (here a gain of 2 and an offset) changes nothing."""
    rng = np.random.default_rng(0)
    image = rng.integers(60, 170, size=(64, 64)).astype(np.uint8)
    stretched = (2 * image.astype(int) - 100).astype(np.uint8)  # 20..238, ranks kept
    assert np.abs(image.astype(int) - stretched.astype(int)).max() > 60
    assert np.array_equal(equalize(image), equalize(stretched))


def test_cache_is_keyed_by_intensity(tmp_path, demo_root):
    paths = sorted(str(p) for p in (demo_root / "train" / "NORMAL").iterdir())[:4]
    plain = build_cache(paths, 64, tmp_path, progress=False)
    equal = build_cache(paths, 64, tmp_path, progress=False, intensity="equalize")
    assert plain.path != equal.path
    assert np.array_equal(equal.array[0], load_gray(paths[0], 64, intensity="equalize"))
    assert not np.array_equal(plain.array[0], equal.array[0])
    with pytest.raises(ValueError, match="intensity"):
        load_gray(paths[0], 64, intensity="sharpen")


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGKILL"), reason="no SIGKILL (Windows)")
def test_a_build_killed_part_way_leaves_nothing_behind(tmp_path):
    """kill -9 a cache build in another process, then build again: the dead build's
    temporary array is removed and the cache is complete."""
    import signal
    import subprocess
    import sys
    import time

    folder = tmp_path / "images"
    folder.mkdir()
    paths = []
    for i in range(40):
        paths.append(save(Image.fromarray(gradient_image(seed=i)), folder / f"{i}.png"))
    cache_dir = tmp_path / "cache"
    slow_build = (  # decodes one image every 0.2 s, so it is killed part-way
        "import sys, time\n"
        "import helpers.cache as c\n"
        "real = c.load_gray\n"
        "def slow(*a, **k):\n"
        "    time.sleep(0.2)\n"
        "    return real(*a, **k)\n"
        "c.load_gray = slow\n"
        "c.build_cache(sys.argv[2:], 32, sys.argv[1], progress=False, workers=1)\n"
    )
    command = [sys.executable, "-c", slow_build, str(cache_dir), *map(str, paths)]
    child = subprocess.Popen(command)
    deadline = time.monotonic() + 60
    while not list(cache_dir.glob("*.tmp-*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(cache_dir.glob("*.tmp-*")), "the build never started"
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert list(cache_dir.glob("*.npy.tmp-*"))  # what the kill left
    cache = build_cache(paths, 32, cache_dir, progress=False)
    assert not list(cache_dir.glob("*.tmp-*"))
    assert cache.ok.all() and len(cache) == 40


def _temp_file(folder, host, pid, age_s=0.0):
    """A temporary cache array as a build names it, ``age_s`` seconds old."""
    path = folder / f"gray32-4-abc.npy.tmp-{host}-{pid}"
    path.write_bytes(b"partial")
    stamp = time.time() - age_s
    os.utime(path, (stamp, stamp))
    return path


def test_a_running_build_keeps_its_temporary_file(tmp_path):
    from helpers.cache import host_tag, remove_interrupted_builds, temp_name

    assert temp_name(tmp_path / "x.npy").name == f"x.npy.tmp-{host_tag()}-{os.getpid()}"
    mine = _temp_file(tmp_path, host_tag(), os.getpid())  # this process is alive
    dead = _temp_file(tmp_path, host_tag(), 999999999)  # no such process on this machine
    assert remove_interrupted_builds(tmp_path) == [dead]
    assert mine.is_file() and not dead.exists()


def test_another_machines_temporary_file_is_judged_by_its_age(tmp_path):
    """On a folder shared between machines (one Google Drive, two Colab sessions), a process
    id says nothing about another host's build: its file goes only once it is stale. The same
    for files without a host in their name (written before names carried one)."""
    from helpers.cache import STALE_TEMP_SECONDS, host_tag, remove_interrupted_builds

    other = "another_colab_vm"
    assert other != host_tag()
    running_elsewhere = _temp_file(tmp_path, other, 999999999)  # not alive *here*
    abandoned_elsewhere = _temp_file(tmp_path, other, 12345, age_s=STALE_TEMP_SECONDS + 60)
    legacy = tmp_path / "gray32-4-old.npy.tmp-999999999"
    legacy.write_bytes(b"partial")
    assert remove_interrupted_builds(tmp_path) == [abandoned_elsewhere]
    assert running_elsewhere.is_file() and legacy.is_file()


def test_where_processes_cannot_be_checked_temporary_files_are_judged_by_age(tmp_path, monkeypatch):
    """On Windows ``os.kill(pid, 0)`` would send CTRL_C_EVENT, so no process is probed:
    even this host's files are removed only when stale."""
    from helpers import cache as cache_module

    def no_probe(pid):
        raise AssertionError("os.kill must not be used as a probe here")

    monkeypatch.setattr(cache_module, "_can_check_processes", lambda: False)
    monkeypatch.setattr(cache_module, "_process_alive", no_probe)
    fresh = _temp_file(tmp_path, cache_module.host_tag(), 999999999)
    old = _temp_file(tmp_path, cache_module.host_tag(), 999999998, age_s=7 * 3600)
    assert cache_module.remove_interrupted_builds(tmp_path) == [old]
    assert fresh.is_file()


def test_fetch_image_downloads_a_url_and_checks_a_path(tmp_path, monkeypatch):
    """Notebook 06 accepts paths and URLs: a URL is downloaded (a local HTTP server here), a
    path must exist, and a download over the size limit is refused with the reason."""
    import http.server
    import threading
    from functools import partial

    from helpers.images import fetch_image

    served = tmp_path / "served"
    served.mkdir()
    save(Image.fromarray(gradient_image()), served / "xray.png")
    for folder, seed in (("a", 1), ("b", 2)):  # two different images with the same name
        (served / folder).mkdir()
        save(Image.fromarray(gradient_image(seed=seed)), served / folder / "xray.png")
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/xray.png"
        got = fetch_image(url, tmp_path / "downloads")
        assert got.read_bytes() == (served / "xray.png").read_bytes()
        assert load_gray(got, 32).shape == (32, 32)
        base = f"http://127.0.0.1:{server.server_port}"
        a = fetch_image(f"{base}/a/xray.png", tmp_path / "downloads")
        b = fetch_image(f"{base}/b/xray.png", tmp_path / "downloads")
        assert a != b and a.name.endswith("-xray.png") and b.name.endswith("-xray.png")
        assert a.read_bytes() == (served / "a" / "xray.png").read_bytes()
        assert b.read_bytes() == (served / "b" / "xray.png").read_bytes()
        assert fetch_image(f"{base}/a/xray.png", tmp_path / "downloads") == a  # same URL
        monkeypatch.setattr(images_module, "MAX_DOWNLOAD_BYTES", 100)
        with pytest.raises(ImageError, match="larger than"):
            fetch_image(url, tmp_path / "downloads")
        with pytest.raises(ImageError, match="download failed"):
            fetch_image(f"http://127.0.0.1:{server.server_port}/missing.png", tmp_path)
    finally:
        server.shutdown()
    assert fetch_image(str(served / "xray.png"), tmp_path) == served / "xray.png"
    with pytest.raises(ImageError, match="no such file"):
        fetch_image(str(tmp_path / "nope.jpeg"), tmp_path)
