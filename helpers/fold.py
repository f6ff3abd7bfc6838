"""A speed step the training engine applies to a frozen model: BatchNorm folded into convolutions.

With ImageNet weights the first blocks of the network are frozen and always in eval mode, so
each of their BatchNorm layers is a fixed per-channel scale and shift. That can be absorbed
into the convolution before it (new weights and bias), which computes the same function with
fewer operations. :func:`with_folded_prefix` returns a module for the engine's forward passes
that runs such a folded *copy* of the frozen prefix, under ``torch.no_grad()``, and then the
model's own trainable blocks and head (shared, not copied: training updates the model). The
model itself is untouched: its ``state_dict``, parameter counts and checkpoints do not change.
How much this saves is measured in ``benchmarks/README.md``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from helpers.model import PneumoniaNet


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """In place: each BatchNorm2d directly after a Conv2d inside a Sequential becomes Identity,
    its eval-mode scale and shift folded into that convolution. Returns ``module``."""
    for child in module.children():
        fold_batchnorm(child)
    if isinstance(module, nn.Sequential):
        names = list(module._modules)
        for first, second in zip(names, names[1:], strict=False):
            conv, bn = module._modules[first], module._modules[second]
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                module._modules[first] = torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn)
                module._modules[second] = nn.Identity()
    return module


class FrozenFeatures(nn.Module):
    """A fixed feature extractor: always in eval mode, run without recording gradients."""

    def __init__(self, layers: nn.Module) -> None:
        super().__init__()
        self.layers = layers.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> FrozenFeatures:
        """Ignore ``mode``: a frozen extractor never switches to training behaviour."""
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.layers(x)


def with_folded_prefix(model: PneumoniaNet) -> nn.Module:
    """``model`` for the engine's forward passes: a BatchNorm-folded copy of its frozen prefix,
    then its own trainable blocks and head. An unfrozen model is returned as it is.

    Build it after the weights are loaded and the model is on its device and memory format
    (the copy is taken then, and the frozen prefix never changes afterwards).
    """
    if not model.frozen:
        return model
    prefix = fold_batchnorm(copy.deepcopy(model.features[: model.n_frozen]).eval())
    return nn.Sequential(FrozenFeatures(prefix), model.features[model.n_frozen :], model.head)
