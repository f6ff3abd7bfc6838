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

import warnings
from typing import Any

import pandas as pd
import torch
import torchvision
from torch import nn

from helpers.config import CLASSES, PRETRAINED_CHOICES, Config
from helpers.online import (  # the weights' file: where it is, whether it can be had
    imagenet_weights,
    imagenet_weights_reachable,  # noqa: F401  (imported from here by users, as before)
    weights_cache_path,
)

N_FEATURES = 576  # channels out of the last features block


class WeightsUnavailableError(RuntimeError):
    """The ImageNet weights are neither in the torch hub cache nor downloadable."""


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

    This is the model notebook 03 builds by hand from torchvision, as a class the command line
    and the tests can construct (a test proves the two have the same parameters).

    Attributes:
        features: the 13 torchvision blocks; the last ``trainable_blocks`` train.
        head: ``AdaptiveAvgPool2d(1), Flatten, Dropout, Linear(576, 2)``.
        frozen: whether ``features[:n_frozen]`` is frozen (True with ImageNet weights).
        n_frozen: how many leading blocks are frozen when ``frozen``.
        weights_used: ``"imagenet"`` or ``"none"`` (random initialisation).
    """

    def __init__(
        self,
        dropout: float = Config.dropout,
        frozen: bool = True,
        trainable_blocks: int = Config.trainable_blocks,
    ) -> None:
        """Build a randomly initialised network; :func:`build_model` loads weights into it."""
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.features = torchvision.models.mobilenet_v3_small(weights=None).features
        if not 1 <= trainable_blocks <= len(self.features):
            raise ValueError(
                f"trainable_blocks must be in [1, {len(self.features)}], got {trainable_blocks}"
            )
        linear = nn.Linear(N_FEATURES, len(CLASSES))
        nn.init.xavier_normal_(linear.weight)  # as the article
        nn.init.zeros_(linear.bias)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), linear
        )
        self.n_frozen = len(self.features) - trainable_blocks
        self.weights_used = "none"
        self.frozen = False
        self.set_frozen(frozen)

    def set_frozen(self, frozen: bool) -> None:
        """Freeze (or unfreeze) ``features[:n_frozen]``: ``requires_grad`` and BatchNorm mode."""
        self.frozen = bool(frozen)
        self.features[: self.n_frozen].requires_grad_(not self.frozen)
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, 2) for normalised images (B, 3, S, S), any S of at least 32."""
        return self.head(self.features(x))


def build_model(
    pretrained: str = "auto",
    dropout: float = Config.dropout,
    trainable_blocks: int = Config.trainable_blocks,
) -> PneumoniaNet:
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
        return PneumoniaNet(dropout=dropout, frozen=False, trainable_blocks=trainable_blocks)
    try:
        state = load_imagenet_state_dict()
    except WeightsUnavailableError as err:
        if pretrained == "imagenet":
            raise
        message = f"ImageNet weights unavailable, training from scratch instead: {err}"
        print(f"WARNING: {message}")
        warnings.warn(message, stacklevel=2)
        return PneumoniaNet(dropout=dropout, frozen=False, trainable_blocks=trainable_blocks)
    model = PneumoniaNet(dropout=dropout, frozen=True, trainable_blocks=trainable_blocks)
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

    if model is None:
        model = PneumoniaNet(frozen=True)
        header = (
            "PneumoniaNet, frozen as with ImageNet weights (randomly initialised here: "
            "the counts do not depend on the weights)"
        )
    else:
        header = f"PneumoniaNet, weights={model.weights_used}, frozen={model.frozen}"
    stats = torchinfo.summary(
        model,
        input_size=(1, 3, image_size, image_size),
        verbose=0,
        col_names=("output_size", "num_params", "trainable"),
        depth=depth,
        device="cpu",
    )
    return f"{header}, input 1x3x{image_size}x{image_size}\n{stats}"


def count_mult_adds(model: nn.Module, image_size: int = 256) -> int:
    """Multiply-adds of one forward pass of one image, counted layer by layer.

    Every ``Conv2d`` costs ``output elements x (input channels / groups) x kernel area`` and
    every ``Linear`` ``in x out``; nothing else is counted (BatchNorm, activations and
    pooling are cheap). An independent check of torchinfo's "Total mult-adds".
    """
    total = 0

    def count(module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            kernel = module.kernel_size[0] * module.kernel_size[1]
            total += output.numel() * (module.in_channels // module.groups) * kernel
        elif isinstance(module, nn.Linear):
            total += (
                output.numel() // module.out_features * module.in_features * module.out_features
            )

    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    hooks = [layer.register_forward_hook(count) for layer in layers]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return total


def architecture_table(image_size: int = 256) -> pd.DataFrame:
    """MobileNetV3-Small as in Table 2 of Howard et al. (2019), the article's Fig. 5, read from
    torchvision's own block configuration (so it is the network we actually use).

    One row per ``features`` block: input size, operator, expansion size, output channels,
    squeeze-and-excitation, non-linearity (HS = hard-swish, RE = ReLU) and stride. The head
    that replaces ImageNet's classifier is not listed.
    """
    from torchvision.models.mobilenetv3 import _mobilenet_v3_conf

    blocks, _ = _mobilenet_v3_conf("mobilenet_v3_small")
    rows = [{"input": f"{image_size}² x 3", "operator": "conv2d 3x3", "exp size": "-",
             "out": blocks[0].input_channels, "SE": "", "NL": "HS", "stride": 2}]  # fmt: skip
    side = image_size // 2
    for b in blocks:
        rows.append({
            "input": f"{side}² x {b.input_channels}", "operator": f"bneck {b.kernel}x{b.kernel}",
            "exp size": b.expanded_channels, "out": b.out_channels, "SE": "✓" if b.use_se else "",
            "NL": "HS" if b.use_hs else "RE", "stride": b.stride,
        })  # fmt: skip
        side //= b.stride
    last = blocks[-1].out_channels
    rows.append({"input": f"{side}² x {last}", "operator": "conv2d 1x1", "exp size": "-",
                 "out": 6 * last, "SE": "", "NL": "HS", "stride": 1})  # fmt: skip
    table = pd.DataFrame(rows)
    table.index.name = "features[i]"
    return table
