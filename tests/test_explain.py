"""Tests for helpers.explain: Grad-CAM must point at the evidence, and leave the model alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

from helpers.augment import denormalize
from helpers.config import Config
from helpers.explain import (
    GradCAM,
    gradcam_file_name,
    gradcam_on_originals,
    overlay,
    save_gradcam_overlays,
    upsample_heatmap,
)

SIZE = 64
SQUARE = 10


def _images(n: int, with_square: np.ndarray, rng: np.random.Generator) -> tuple[torch.Tensor, list]:
    """Noisy gray 64x64 images (as 3 channels); a bright square planted where asked.

    Returns the images and, per image, the square's top-left corner (or None).
    """
    x = rng.normal(0.3, 0.1, size=(n, SIZE, SIZE)).astype(np.float32)
    corners = []
    for i in range(n):
        if with_square[i]:
            r, c = rng.integers(0, SIZE - SQUARE, size=2)
            x[i, r : r + SQUARE, c : c + SQUARE] = 1.0
            corners.append((int(r), int(c)))
        else:
            corners.append(None)
    return torch.from_numpy(x)[:, None].expand(-1, 3, -1, -1).contiguous(), corners


class TinyCNN(nn.Module):
    """Three conv blocks, global average pooling, a linear head (a CAM-friendly shape)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU()),
            nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU()),
            nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.ReLU()),  # 16x16 maps
        )
        self.head = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


class FrozenPrefixNet(nn.Module):
    """Runs its first block under ``torch.no_grad()``, like a frozen backbone prefix."""

    def __init__(self, inner: TinyCNN) -> None:
        super().__init__()
        self.features = inner.features
        self.head = inner.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            x = self.features[0](x)
        x = self.features[2](self.features[1](x))
        return self.head(x.mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def trained() -> TinyCNN:
    """A TinyCNN trained for a few seconds to tell 'bright square' from 'no square'."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    labels = np.arange(512) % 2
    x, _ = _images(512, labels == 1, rng)
    y = torch.from_numpy(labels)
    model = TinyCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny convolutions: one thread is faster than two on a busy CPU
    try:
        for _step in range(80):
            batch = torch.from_numpy(rng.choice(512, 64, replace=False))
            loss = nn.functional.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    model.zero_grad(set_to_none=True)
    model.eval()
    x_check, _ = _images(64, np.arange(64) % 2 == 1, np.random.default_rng(1))
    with torch.no_grad():
        accuracy = (model(x_check).argmax(1).numpy() == np.arange(64) % 2).mean()
    assert accuracy > 0.95, f"the tiny CNN did not learn the task (accuracy {accuracy:.2f})"
    return model


def _mass_inside(heatmap: np.ndarray, corner: tuple[int, int], margin: int = 3) -> float:
    """Share of the heatmap's total inside the square grown by ``margin`` pixels."""
    r, c = corner
    box = heatmap[
        max(0, r - margin) : r + SQUARE + margin, max(0, c - margin) : c + SQUARE + margin
    ]
    return float(box.sum() / max(heatmap.sum(), 1e-12))


def test_gradcam_points_at_the_square(trained: TinyCNN) -> None:
    rng = np.random.default_rng(5)
    x, corners = _images(6, np.ones(6, dtype=bool), rng)
    cam = GradCAM(trained, trained.features[-1])
    heat = cam(x, target_class=1)
    assert heat.shape == (6, SIZE, SIZE)
    for i, (r, c) in enumerate(corners):
        peak_r, peak_c = np.unravel_index(np.argmax(heat[i]), heat[i].shape)
        assert r - 4 <= peak_r < r + SQUARE + 4 and c - 4 <= peak_c < c + SQUARE + 4, (
            f"image {i}: peak at {(peak_r, peak_c)}, square at {(r, c)}"
        )
        # The grown box covers <7% of the image but must hold most of the heat.
        assert _mass_inside(heat[i], (r, c)) > 0.5
    # The square is evidence AGAINST NORMAL: explaining class 0 must not highlight it, so a
    # map that ignored the target class (e.g. plain activations) would fail here.
    heat_normal = cam(x, target_class=0)
    for i, corner in enumerate(corners):
        assert _mass_inside(heat_normal[i], corner) < 0.3


def test_gradcam_control_without_square_does_not_concentrate(trained: TinyCNN) -> None:
    rng = np.random.default_rng(6)
    x_plain, _ = _images(6, np.zeros(6, dtype=bool), rng)
    heat = GradCAM(trained, trained.features[-1])(x_plain, target_class=1)
    for i in range(6):
        # The same box as a planted square would occupy: only its area share, not most mass.
        assert _mass_inside(heat[i], (27, 27)) < 0.3


def test_gradcam_follows_the_square_when_it_moves(trained: TinyCNN) -> None:
    # One noise background, the square planted at two far-apart places: a heatmap that
    # ignored the input (a fixed blob, a border artefact) would fail one of the two.
    background, _ = _images(1, np.zeros(1, dtype=bool), np.random.default_rng(8))
    places = [(5, 5), (45, 40)]
    x = background.repeat(2, 1, 1, 1)
    for i, (r, c) in enumerate(places):
        x[i, :, r : r + SQUARE, c : c + SQUARE] = 1.0
    heat = GradCAM(trained, trained.features[-1])(x, target_class=1)
    for i, j in ((0, 1), (1, 0)):
        assert _mass_inside(heat[i], places[i]) > 0.5
        assert _mass_inside(heat[i], places[j]) < 0.1


def test_gradcam_default_target_is_prediction_and_model_left_unchanged(trained: TinyCNN) -> None:
    rng = np.random.default_rng(7)
    x, _ = _images(4, np.array([True, False, True, False]), rng)
    trained.train()
    cam = GradCAM(trained, trained.features[-1])
    heat = cam(x)
    assert trained.training  # mode restored
    assert cam.last_target is not None and cam.last_target.tolist() == [1, 0, 1, 0]
    assert 0.0 <= heat.min() and heat.max() <= 1.0
    assert all(p.grad is None for p in trained.parameters())
    assert not trained.features[-1]._forward_hooks
    trained.eval()


def test_gradcam_works_with_frozen_prefix_under_no_grad(trained: TinyCNN) -> None:
    rng = np.random.default_rng(5)
    x, corners = _images(6, np.ones(6, dtype=bool), rng)
    expected = GradCAM(trained, trained.features[-1])(x, target_class=1)
    frozen = FrozenPrefixNet(trained)
    with torch.inference_mode():  # even a caller in inference mode gets heatmaps
        heat = GradCAM(frozen, frozen.features[-1])(x, target_class=1)
    np.testing.assert_allclose(heat, expected, atol=1e-5)
    # A layer whose successors also run under no_grad cannot be explained: say so clearly.
    inner_conv = frozen.features[0][0]  # followed by its ReLU inside the no_grad block
    with pytest.raises(RuntimeError, match="no_grad"):
        GradCAM(frozen, inner_conv)(x)
    assert not inner_conv._forward_hooks  # removed even after the error


def test_gradcam_on_mobilenet_v3_small() -> None:
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v3_small(num_classes=2)
    layer = model.features[-1]
    heat = GradCAM(model, layer)(torch.randn(2, 3, SIZE, SIZE), target_class=1)
    assert heat.shape == (2, SIZE, SIZE) and heat.dtype == np.float32
    assert np.isfinite(heat).all() and heat.min() >= 0.0 and heat.max() <= 1.0
    assert not layer._forward_hooks and not layer._backward_hooks
    assert all(p.grad is None for p in model.parameters())


def test_gradcam_rejects_bad_input() -> None:
    model = TinyCNN()
    with pytest.raises(ValueError, match="submodule"):
        GradCAM(model, nn.Conv2d(3, 3, 1))
    with pytest.raises(ValueError, match="B, C, H, W"):
        GradCAM(model, model.features[-1])(torch.zeros(3, SIZE, SIZE))
    with pytest.raises(ValueError, match="target_class"):
        GradCAM(model, model.features[-1])(torch.zeros(1, 3, SIZE, SIZE), target_class=2)


def test_overlay() -> None:
    gray = np.linspace(0, 1, 16).reshape(4, 4)
    heat = np.zeros((4, 4))
    rgb = overlay(gray, heat, alpha=0.0)
    assert rgb.shape == (4, 4, 3)
    np.testing.assert_allclose(rgb[..., 0], gray)  # alpha 0: the image only, as gray
    hot = overlay(gray, np.ones((4, 4)), alpha=1.0, cmap="jet")
    assert hot[0, 0, 0] > 0.4 and hot[0, 0, 2] < 0.1  # jet's top end is red
    with pytest.raises(ValueError, match="same shape"):
        overlay(gray, np.zeros((3, 3)))


# --- overlays at the image's own resolution -------------------------------------------------


def _xray_file(path, width: int, height: int, square: tuple[int, int, int, int] | None, seed=0):
    """A grey PNG ``width x height`` of noise with a bright box ``(top, left, h, w)``: the
    TinyCNN's square, drawn at a size that becomes ~10 x 10 once squashed to 64 x 64."""
    rng = np.random.default_rng(seed)
    pixels = rng.normal(0.3, 0.1, size=(height, width))
    if square is not None:
        top, left, h, w = square
        pixels[top : top + h, left : left + w] = 1.0
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.clip(pixels, 0, 1) * 255).astype(np.uint8)).save(path)
    return path


class SeesPixels(nn.Module):
    """The TinyCNN behind the package's input normalisation: it was trained on 0-1 pixels, and
    the files below reach it as :func:`helpers.augment.normalize_batch` makes them."""

    def __init__(self, inner: TinyCNN) -> None:
        super().__init__()
        self.inner = inner
        self.features = inner.features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(denormalize(x))


def test_upsample_heatmap_stretches_onto_a_shape() -> None:
    heat = np.zeros((4, 4), np.float32)
    heat[0, 3] = 1.0  # the top-right cell
    big = upsample_heatmap(heat, (60, 200))
    assert big.shape == (60, 200) and big.dtype == np.float32
    assert 0.0 <= big.min() and big.max() <= 1.0
    peak_r, peak_c = np.unravel_index(np.argmax(big), big.shape)
    assert peak_r < 15 and peak_c >= 150  # still the top-right quarter of the wider picture
    with pytest.raises(ValueError, match="2-D heatmap"):
        upsample_heatmap(np.zeros((2, 4, 4)), (8, 8))


def test_gradcam_on_originals_puts_the_heat_on_the_square_at_full_size(trained, tmp_path) -> None:
    """A 256 x 160 picture (not square) whose bright box the model sees squashed to 64 x 64:
    the heatmap comes back at 160 x 256 and its heat sits on the box in the picture's own
    coordinates, so the squash and the stretch undo each other."""
    top, left, h, w = 100, 30, 25, 40
    path = _xray_file(tmp_path / "wide.png", 256, 160, (top, left, h, w))
    pictures, heatmaps = gradcam_on_originals(SeesPixels(trained), [path], image_size=SIZE)
    assert pictures[0].shape == heatmaps[0].shape == (160, 256)
    assert pictures[0].max() <= 1.0 and pictures[0][top + 5, left + 5] > 0.95
    heat = heatmaps[0]
    box = heat[max(0, top - 12) : top + h + 12, max(0, left - 16) : left + w + 16]
    assert box.sum() / heat.sum() > 0.5  # the grown box is ~8 % of the picture


def test_gradcam_files_are_at_the_images_own_size_and_never_overwrite(trained, tmp_path) -> None:
    """Two pictures named alike in two folders (as NORMAL/x.png and PNEUMONIA/x.png) give two
    overlay files, each the size of its own picture, upright and in colour."""
    first = _xray_file(tmp_path / "NORMAL" / "x.png", 300, 180, None, seed=1)
    second = _xray_file(tmp_path / "PNEUMONIA" / "x.png", 120, 200, (80, 40, 30, 20), seed=2)
    out = tmp_path / "cams"
    written = save_gradcam_overlays(
        SeesPixels(trained), [first, second], Config(image_size=SIZE), out
    )
    assert len(set(written)) == 2 and sorted(out.iterdir()) == sorted(written)
    assert all(
        path.name.startswith("x-") and path.name.endswith("-gradcam.png") for path in written
    )
    for source, overlay_file in zip((first, second), written, strict=True):
        with Image.open(source) as picture, Image.open(overlay_file) as drawn:
            assert drawn.size == picture.size and drawn.mode == "RGB"
    assert gradcam_file_name(first) != gradcam_file_name(second)
    assert gradcam_file_name(first) == gradcam_file_name(
        tmp_path / "NORMAL" / ".." / "NORMAL" / "x.png"
    )
