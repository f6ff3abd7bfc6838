"""Grad-CAM: where in the X-ray did the network look?

Grad-CAM (Selvaraju et al., 2017) weights each feature map of a convolutional layer by how
much the class score grows when that map grows (its gradient, averaged over the image), sums
the weighted maps and keeps the positive part. Upsampled to the input size, this shows which
regions pushed the prediction towards the class. It is a sanity check, not a diagnosis: a
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


def save_gradcam_overlays(
    model: nn.Module, paths: list[Path], config: Config, folder: str | Path
) -> list[Path]:
    """Each image blended with its Grad-CAM heatmap (at ``model.features[-1]``), written to
    ``folder/<stem>-gradcam.png``; the images are read as the run reads them (``config``'s
    image size and intensity normalisation). Returns the files written."""
    from PIL import Image

    from helpers.augment import normalize_batch
    from helpers.files import atomic_path
    from helpers.images import load_gray

    device = next(model.parameters()).device
    written = []
    for path in paths:
        gray = load_gray(path, config.image_size, intensity=config.intensity)
        x = normalize_batch(torch.from_numpy(gray)[None, None]).to(device)
        heatmap = GradCAM(model, model.features[-1])(x)[0]
        rgb = (overlay(gray / 255.0, heatmap) * 255).astype(np.uint8)
        out = Path(folder) / f"{Path(path).stem}-gradcam.png"
        with atomic_path(out) as tmp:
            Image.fromarray(rgb).save(tmp, format="PNG")
        written.append(out)
    return written
