"""Grad-CAM: where in the X-ray did the network look?

Grad-CAM (Selvaraju et al., 2017) weights each feature map of a convolutional layer by how
much the class score grows when that map grows (its gradient, averaged over the image), sums
the weighted maps and keeps the positive part. Upsampled to the input size, this shows which
regions pushed the prediction towards the class; :func:`upsample_heatmap` stretches it further,
onto the original picture at its own resolution, which is what a reader looks at. It is a sanity check, not a diagnosis: a
heatmap on the lungs is reassuring; one on a text marker or the image border reveals a
shortcut the model learned.

Implemented with plain forward hooks, no extra dependency. For ``PneumoniaNet`` the target
layer is the last convolutional block, ``model.features[-1]``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from helpers.config import Config
from helpers.files import per_image_name


class GradCAM:
    """Grad-CAM heatmaps for ``model`` at ``target_layer`` (a submodule producing ``(B, K, h, w)``).

    ``GradCAM(model, model.features[-1])(x)`` returns one heatmap per image, ``(B, H, W)`` in
    [0, 1], bilinearly upsampled to the input size. Each call registers its hook, runs one
    forward and one gradient pass, and removes the hook again (also on errors), restores the
    model's train/eval mode and leaves every parameter's ``.grad`` untouched: the model is
    left exactly as it was.

    Robust to a model that runs part of its forward under ``torch.no_grad()`` (e.g. a frozen
    backbone prefix): the layer's output is detached and made a leaf that requires grad, so
    only the layers *after* the target layer need to run with autograd. The input never needs
    ``requires_grad``.
    """

    def __init__(self, model: nn.Module, target_layer: nn.Module) -> None:
        if not any(module is target_layer for module in model.modules()):
            raise ValueError("target_layer is not a submodule of model")
        self.model = model
        self.target_layer = target_layer
        self.last_target: np.ndarray | None = None
        """The class explained for each image of the latest call."""

    def __call__(self, x: torch.Tensor, target_class: int | None = None) -> np.ndarray:
        """Heatmaps ``(B, H, W)`` in [0, 1] for ``x`` ``(B, C, H, W)``.

        ``target_class`` is 0 (NORMAL) or 1 (PNEUMONIA); ``None`` explains each image's
        predicted class. An image whose map is zero everywhere (no region raised the score)
        gets an all-zero heatmap.
        """
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            shape = tuple(x.shape) if hasattr(x, "shape") else type(x).__name__
            raise ValueError(f"GradCAM expects a (B, C, H, W) tensor, got {shape}")
        device = next(self.model.parameters(), torch.empty(0)).device
        x = x.detach().to(device)
        if x.is_inference():  # made under inference_mode: autograd may not save it
            with torch.inference_mode(False):
                x = x.clone()
        captured: dict[str, torch.Tensor] = {}

        def hook(_module: nn.Module, _inputs: object, output: object) -> torch.Tensor:
            if not isinstance(output, torch.Tensor) or output.ndim != 4:
                raise TypeError("GradCAM target_layer must output a (B, K, h, w) tensor")
            leaf = output.detach().requires_grad_(True)
            captured["activations"] = leaf
            return leaf

        was_training = self.model.training
        handle = self.target_layer.register_forward_hook(hook)
        try:
            self.model.eval()  # BatchNorm must not update its statistics, dropout off
            with torch.inference_mode(False), torch.enable_grad():
                logits = self.model(x)
                activations = captured.get("activations")
                if activations is None:
                    raise RuntimeError("target_layer was not used in the model's forward pass")
                targets = self._targets(logits, target_class)
                score = logits.gather(1, targets[:, None]).sum()
                grads = None
                if score.requires_grad:
                    (grads,) = torch.autograd.grad(score, activations, allow_unused=True)
                if grads is None:
                    raise RuntimeError(
                        "the class score does not depend on target_layer with gradients enabled:"
                        " the layers after it run under torch.no_grad(); choose a later layer"
                    )
        finally:
            handle.remove()
            self.model.train(was_training)

        with torch.no_grad():
            weights = grads.mean(dim=(2, 3), keepdim=True)  # one weight per feature map
            cam = F.relu((weights * activations).sum(dim=1, keepdim=True))
            cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)
            cam = cam[:, 0].float()
            low = cam.amin(dim=(1, 2), keepdim=True)
            span = cam.amax(dim=(1, 2), keepdim=True) - low
            cam = torch.where(span > 0, (cam - low) / span.clamp_min(1e-12), torch.zeros_like(cam))
        self.last_target = targets.cpu().numpy()
        return cam.cpu().numpy()

    @staticmethod
    def _targets(logits: torch.Tensor, target_class: int | None) -> torch.Tensor:
        """The class to explain per image: ``target_class`` or the predicted class."""
        if logits.ndim != 2:
            raise ValueError(f"model must return (B, n_classes) logits, got {tuple(logits.shape)}")
        if target_class is None:
            return logits.argmax(dim=1)
        if not 0 <= int(target_class) < logits.shape[1]:
            raise ValueError(f"target_class {target_class} outside 0..{logits.shape[1] - 1}")
        return torch.full((logits.shape[0],), int(target_class), device=logits.device)


def overlay(
    gray_image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4, cmap: str = "jet"
) -> np.ndarray:
    """Blend a grayscale image ``(H, W)`` in [0, 1] with a heatmap into RGB ``(H, W, 3)`` in [0, 1].

    ``alpha`` is the weight of the coloured heatmap (0 = image only, 1 = heatmap only).
    """
    image = np.asarray(gray_image, dtype=np.float64)
    heat = np.asarray(heatmap, dtype=np.float64)
    if image.ndim != 2 or heat.shape != image.shape:
        raise ValueError(
            f"overlay needs a 2-D image and a heatmap of the same shape, got {image.shape} and"
            f" {heat.shape}"
        )
    for name, arr in (("gray_image", image), ("heatmap", heat)):
        if not np.all(np.isfinite(arr)) or arr.min() < 0.0 or arr.max() > 1.0:
            raise ValueError(f"{name} must hold finite values in [0, 1]")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    colored = matplotlib.colormaps[cmap](heat)[..., :3]
    return np.clip((1.0 - alpha) * image[..., None] + alpha * colored, 0.0, 1.0)


def upsample_heatmap(heatmap: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A heatmap ``(h, w)`` in [0, 1] stretched bilinearly to ``shape`` ``(H, W)``, float32.

    The model saw the picture squashed to its square input (:func:`helpers.images.load_gray`
    does not keep the aspect ratio), so stretching the square map over the whole original
    picture puts every cell of the map back on the region it came from.
    """
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.ndim != 2 or len(shape) != 2 or min(shape) < 1:
        raise ValueError(
            f"upsample_heatmap needs a 2-D heatmap and an (H, W) shape, got {heat.shape} and"
            f" {tuple(shape)}"
        )
    big = F.interpolate(
        torch.from_numpy(heat)[None, None], size=tuple(shape), mode="bilinear", align_corners=False
    )
    return big[0, 0].clamp_(0.0, 1.0).numpy()


def gradcam_file_name(path: str | Path) -> str:
    """``<stem>-<hash>-gradcam.png`` for the image at ``path``
    (:func:`helpers.files.per_image_name`: unique per file, even for images that share a name
    in different folders)."""
    return per_image_name(path, "gradcam")


def gradcam_on_originals(
    model: nn.Module,
    paths: list[str | Path],
    image_size: int,
    intensity: str = "none",
    crop_border: bool = False,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Grad-CAM of each image file, drawn at the image's own resolution.

    Each file is read as the run reads it (``image_size``, ``intensity``) and explained at
    ``model.features[-1]``; the heatmap is then stretched onto the original picture, upright and
    grey (:func:`upsample_heatmap`). With ``crop_border`` a uniform frame is cropped first
    (:func:`helpers.inputcheck.model_input`), and the heatmap is drawn on the cropped picture:
    the one the model saw. Returns ``(pictures, heatmaps)``: per file, the picture as float32
    ``(H, W)`` in [0, 1] and a heatmap of the same shape, ready for
    :func:`helpers.plots.plot_gradcam_grid` or :func:`overlay`. Notebook 05 writes these steps
    out; notebook 06 and ``predict --gradcam`` call this function.
    """
    from helpers.augment import normalize_batch
    from helpers.inputcheck import model_input, picture_seen

    if not paths:
        return [], []
    seen = np.stack([model_input(path, image_size, intensity, crop_border)[0] for path in paths])
    heatmaps = GradCAM(model, model.features[-1])(normalize_batch(torch.from_numpy(seen)[:, None]))
    pictures = [picture_seen(path, crop_border).astype(np.float32) / 255 for path in paths]
    stretched = [upsample_heatmap(h, p.shape) for h, p in zip(heatmaps, pictures, strict=True)]
    return pictures, stretched


def save_gradcam_overlays(
    model: nn.Module,
    paths: list[Path],
    config: Config,
    folder: str | Path,
    crop_border: bool = False,
) -> list[Path]:
    """Each image blended with its Grad-CAM heatmap (:func:`gradcam_on_originals`: the run's
    image size and intensity normalisation for the model, the original picture at its own
    resolution for the overlay, cropped to the film with ``crop_border``), written to
    ``folder/`` :func:`gradcam_file_name`. Returns the files written, one per path."""
    from PIL import Image

    from helpers.files import atomic_path

    written = []
    for path in paths:  # one at a time: originals can have millions of pixels
        (picture,), (heatmap,) = gradcam_on_originals(
            model, [path], config.image_size, config.intensity, crop_border
        )
        rgb = overlay(picture, heatmap)
        out = Path(folder) / gradcam_file_name(path)
        with atomic_path(out) as tmp:
            Image.fromarray((rgb * 255).astype(np.uint8)).save(tmp, format="PNG")
        written.append(out)
    return written
