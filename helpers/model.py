"""PneumoniaNet: MobileNetV3-Small features, a frozen prefix, and a two-class head.

The article's model (its Table 1) is torchvision's ``mobilenet_v3_small`` with the ImageNet
classifier removed: the 13 ``features`` blocks, then global average pooling, dropout and one
``Linear(576, 2)``. Transfer learning keeps most of the ImageNet features fixed:

* ``features[:-2]`` (stem + the first ten inverted residual blocks) is **frozen**: no
  gradients, and its BatchNorm layers stay in eval mode with their ImageNet statistics;
* ``features[-2:]`` (the last inverted residual block 96->96 and the 1x1 convolution
  96->576) and the head are **trained**, the backbone part with a tiny learning rate and the
  head with a large one (see :func:`parameter_groups`).

Counted by torchinfo at 256x256, that is 928,162 parameters, 351,698 trainable and
576,464 frozen.

ImageNet weights come through torchvision's usual cache,
``$TORCH_HOME/hub/checkpoints/mobilenet_v3_small-047dcff4.pth`` (see
:func:`weights_cache_path`): downloaded once when online, or copied there by hand when
offline. Without them, ``pretrained="none"`` trains the whole network from scratch (freezing
random layers would be pointless).
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn

from helpers.config import Config

PRETRAINED_CHOICES = ("imagenet", "none", "auto")
N_TRAINABLE_BLOCKS = 2  # features[-2:] train; everything before them is frozen
N_FEATURES = 576  # channels out of the last features block
N_CLASSES = 2  # NORMAL, PNEUMONIA (helpers.config.CLASSES)


class WeightsUnavailableError(RuntimeError):
    """The ImageNet weights are neither in the torch hub cache nor downloadable."""


def imagenet_weights() -> torchvision.models.WeightsEnum:
    """The torchvision weights entry the series uses (ImageNet-1k, top-1 67.7 %)."""
    return torchvision.models.MobileNet_V3_Small_Weights.IMAGENET1K_V1


def weights_cache_path() -> Path:
    """Where torchvision keeps (and looks for) the ImageNet weights file.

    ``<torch.hub.get_dir()>/checkpoints/<file name of the URL>``, i.e. by default
    ``~/.cache/torch/hub/checkpoints/mobilenet_v3_small-047dcff4.pth`` or
    ``$TORCH_HOME/hub/checkpoints/...`` when ``TORCH_HOME`` is set. Copying the file there
    by hand is the offline way to get ImageNet weights.
    """
    file_name = Path(urlparse(imagenet_weights().url).path).name
    return Path(torch.hub.get_dir()) / "checkpoints" / file_name


def load_imagenet_state_dict(progress: bool = True) -> dict[str, torch.Tensor]:
    """Return the ImageNet state dict of ``mobilenet_v3_small``, from the cache or the web.

    A cached file is read with ``torch.load(weights_only=True)``. When it is absent, the file
    is downloaded through torchvision's own path (``weights.get_state_dict``, which writes
    the cache file atomically and checks the hash in its name); ``weights_only=True`` is
    passed explicitly because ``torch.hub.load_state_dict_from_url`` defaults to
    ``weights_only=False``. Offline, the download fails at once with a connection error.

    Raises:
        WeightsUnavailableError: naming the cache path and the URL, when the file is absent
            and cannot be downloaded, or when the cached file cannot be read.
    """
    weights = imagenet_weights()
    path = weights_cache_path()
    how_to_fix = (
        f"Download {weights.url} and save it as {path} "
        "(or use pretrained='none' to train from scratch)."
    )
    if path.is_file():
        try:
            state = torch.load(path, weights_only=True, map_location="cpu")
        except Exception as err:
            raise WeightsUnavailableError(
                f"cannot read the ImageNet weights file {path}: {err}. "
                f"Delete it and retry. {how_to_fix}"
            ) from err
    else:
        try:
            state = weights.get_state_dict(
                progress=progress, check_hash=True, weights_only=True, map_location="cpu"
            )
        except Exception as err:  # URLError, ConnectionError, hash mismatch, ...
            raise WeightsUnavailableError(
                f"ImageNet weights not found at {path} and the download failed "
                f"({type(err).__name__}: {err}). {how_to_fix}"
            ) from err
    if not isinstance(state, dict):
        raise WeightsUnavailableError(f"{path} does not hold a state dict. {how_to_fix}")
    return state


class PneumoniaNet(nn.Module):
    """MobileNetV3-Small ``features`` + pooling/dropout/linear head, returning logits (B, 2).

    Attributes:
        features: the 13 torchvision blocks; the last :data:`N_TRAINABLE_BLOCKS` train.
        head: ``AdaptiveAvgPool2d(1), Flatten, Dropout, Linear(576, 2)``.
        frozen: whether ``features[:-2]`` is frozen (True with ImageNet weights).
        weights_used: ``"imagenet"`` or ``"none"`` (random initialisation).
        no_grad_prefix: run the frozen prefix under ``torch.no_grad()`` (default True); see
            :meth:`frozen_features`. Only a benchmark has a reason to turn it off.
    """

    def __init__(self, dropout: float = 0.5, frozen: bool = True) -> None:
        """Build a randomly initialised network; :func:`build_model` loads weights into it."""
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.features = torchvision.models.mobilenet_v3_small(weights=None).features
        linear = nn.Linear(N_FEATURES, N_CLASSES)
        nn.init.xavier_normal_(linear.weight)  # as the article
        nn.init.zeros_(linear.bias)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), linear
        )
        self.n_frozen = len(self.features) - N_TRAINABLE_BLOCKS
        self.weights_used = "none"
        self.no_grad_prefix = True
        self.fuse_frozen_bn = True
        object.__setattr__(self, "_fused", None)
        self.frozen = False
        self.set_frozen(frozen)

    def set_frozen(self, frozen: bool) -> None:
        """Freeze (or unfreeze) ``features[:-2]``: ``requires_grad`` and BatchNorm mode."""
        self.frozen = bool(frozen)
        object.__setattr__(self, "_fused", None)
        for param in self.features[: self.n_frozen].parameters():
            param.requires_grad_(not self.frozen)
        self.train(self.training)

    def train(self, mode: bool = True) -> PneumoniaNet:
        """Set train/eval mode, but keep a frozen prefix in eval mode whatever ``mode`` is.

        The frozen part is a fixed feature extractor. In train mode its BatchNorm layers
        would normalise with batch statistics and overwrite their ImageNet running
        statistics, so "frozen" layers would still change (and behave differently between
        training and evaluation). Eval mode keeps them exactly as loaded.
        """
        super().train(mode)
        if self.frozen:
            self.features[: self.n_frozen].eval()
        return self

    def frozen_features(self, x: torch.Tensor) -> torch.Tensor:
        """Run ``features[:-2]``: (B, 3, S, S) -> (B, 96, S/32, S/32).

        When frozen, these layers run under ``torch.no_grad()`` (their parameters need no
        gradients), unless ``x`` itself requires grad (e.g. an input-saliency map). This
        states the intent rather than buys speed: parameters with ``requires_grad=False`` fed
        an input that needs no grad already record no graph, and on 2 CPU threads (batch 32,
        256x256, forward+backward+AdamW) training ran at the same speed with and without it
        (ratio 0.95-1.03, within noise). What does save time is ``requires_grad=False``
        itself: letting the prefix compute gradients that are then ignored was ~2.2x slower.
        When frozen, the prefix also runs with each BatchNorm folded into the convolution
        before it (:meth:`fused_prefix`): the same function with fewer operations.
        """
        if not self.frozen:
            return self.features[: self.n_frozen](x)
        prefix = self.fused_prefix() if self.fuse_frozen_bn else self.features[: self.n_frozen]
        if self.no_grad_prefix and not x.requires_grad:
            with torch.no_grad():
                return prefix(x)
        return prefix(x)

    def fused_prefix(self) -> nn.Sequential:
        """The frozen prefix with every Conv2d+BatchNorm2d pair folded into one Conv2d.

        In eval mode a BatchNorm is a fixed per-channel scale and shift, which can be
        absorbed into the preceding convolution's weights and bias. The frozen prefix never
        leaves eval mode, so this is exact up to float rounding. The copy is built lazily,
        kept out of ``state_dict`` and the parameter counts (the model's own layers are
        unchanged), and dropped by ``load_state_dict``, ``to()`` and ``set_frozen``.
        """
        if self._fused is None:
            fused = copy.deepcopy(self.features[: self.n_frozen]).eval()
            _fold_batchnorm(fused)
            for param in fused.parameters():
                param.requires_grad_(False)
            object.__setattr__(self, "_fused", fused)  # not a registered submodule
        return self._fused

    def _apply(self, fn, recurse: bool = True):  # type: ignore[override]
        """Moving or converting the model (``.to()``, ``.cuda()``, ...) drops the fused copy."""
        object.__setattr__(self, "_fused", None)
        return super()._apply(fn, recurse)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):  # type: ignore[override]
        """Load weights as usual, then drop the fused copy (it is rebuilt from them)."""
        object.__setattr__(self, "_fused", None)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def trainable_forward(self, f: torch.Tensor) -> torch.Tensor:
        """Run ``features[-2:]`` and the head on frozen features: -> logits (B, 2)."""
        return self.head(self.features[self.n_frozen :](f))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, 2) for normalised images (B, 3, S, S); S divisible by 32."""
        return self.trainable_forward(self.frozen_features(x))


def _fold_batchnorm(module: nn.Module) -> None:
    """Replace, in place, each BatchNorm2d that directly follows a Conv2d inside a Sequential
    by Identity, folding its eval-mode scale and shift into that convolution."""
    for child in module.children():
        _fold_batchnorm(child)
    if not isinstance(module, nn.Sequential):
        return
    names = list(module._modules)
    for first, second in zip(names, names[1:], strict=False):
        conv, bn = module._modules[first], module._modules[second]
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            module._modules[first] = torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn)
            module._modules[second] = nn.Identity()


def build_model(pretrained: str = "auto", dropout: float = 0.5) -> PneumoniaNet:
    """Build the article's network with ``pretrained`` in ``{"imagenet", "none", "auto"}``.

    * ``"imagenet"``: ImageNet features (see :func:`load_imagenet_state_dict`), prefix frozen;
      raises :class:`WeightsUnavailableError` when the weights cannot be had.
    * ``"none"``: random initialisation, nothing frozen: the whole network trains.
    * ``"auto"``: ``"imagenet"`` when possible, otherwise a loud warning and ``"none"``.

    Random initialisation draws from torch's global generator: seed it first for a
    reproducible model. ``model.weights_used`` records what was actually loaded.
    """
    if pretrained not in PRETRAINED_CHOICES:
        raise ValueError(f"pretrained must be one of {PRETRAINED_CHOICES}, got {pretrained!r}")
    if pretrained == "none":
        return PneumoniaNet(dropout=dropout, frozen=False)
    try:
        state = load_imagenet_state_dict()
    except WeightsUnavailableError as err:
        if pretrained == "imagenet":
            raise
        message = f"ImageNet weights unavailable, training from scratch instead: {err}"
        print(f"WARNING: {message}")
        warnings.warn(message, stacklevel=2)
        return PneumoniaNet(dropout=dropout, frozen=False)
    model = PneumoniaNet(dropout=dropout, frozen=True)
    prefix = "features."
    features_state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    try:
        model.features.load_state_dict(features_state, strict=True)
    except RuntimeError as err:
        raise WeightsUnavailableError(
            f"{weights_cache_path()} does not match mobilenet_v3_small: {err}"
        ) from err
    model.weights_used = "imagenet"
    return model


def parameter_groups(model: PneumoniaNet, config: Config) -> list[dict[str, Any]]:
    """Optimizer parameter groups ``head`` and ``backbone`` (frozen parameters left out).

    Frozen model: head at ``config.head_lr``, the trainable ``features[-2:]`` at
    ``config.backbone_lr``. Unfrozen model (``pretrained="none"``): every parameter trains,
    both groups at ``config.scratch_lr``. Each group has a ``"name"`` so the training engine
    can log ``lr_<name>`` (``lr_head``, ``lr_backbone``).
    """
    head = [p for p in model.head.parameters() if p.requires_grad]
    backbone = [p for p in model.features.parameters() if p.requires_grad]
    head_lr = config.head_lr if model.frozen else config.scratch_lr
    backbone_lr = config.backbone_lr if model.frozen else config.scratch_lr
    return [
        {"name": "head", "params": head, "lr": head_lr},
        {"name": "backbone", "params": backbone, "lr": backbone_lr},
    ]


def count_parameters(model: nn.Module) -> dict[str, int]:
    """``{"total", "trainable", "frozen"}`` parameter counts (trainable = requires_grad)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable, "frozen": total - trainable}


def model_summary(model: PneumoniaNet | None = None, image_size: int = 256, depth: int = 2) -> str:
    """The torchinfo table of the model (the article's Table 1) for one image, as a string.

    Without ``model``, a randomly initialised network frozen as with ImageNet weights is
    summarised: parameter counts and shapes do not depend on the weights' values, so no
    download is needed. The first line says which model was summarised.
    """
    import torchinfo

    if image_size % 32:
        raise ValueError(f"image_size must be divisible by 32, got {image_size}")
    if model is None:
        model = PneumoniaNet(frozen=True)
        header = (
            "PneumoniaNet, frozen as with ImageNet weights (randomly initialised here: "
            "the counts do not depend on the weights)"
        )
    else:
        header = f"PneumoniaNet, weights={model.weights_used}, frozen={model.frozen}"
    fuse, model.fuse_frozen_bn = model.fuse_frozen_bn, False  # torchinfo sees the real layers
    try:
        stats = torchinfo.summary(
            model,
            input_size=(1, 3, image_size, image_size),
            verbose=0,
            col_names=("output_size", "num_params", "trainable"),
            depth=depth,
            device="cpu",
        )
    finally:
        model.fuse_frozen_bn = fuse
    return f"{header}, input 1x3x{image_size}x{image_size}\n{stats}"
