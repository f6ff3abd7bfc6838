"""How far the article's "fine-tuned" blocks move at a learning rate of 1e-6 (notebook 03).

``python -m benchmarks.finetune_drift --data DATA [--epochs 10] [--image-size 128]`` trains the
article's frozen configuration (all but the last two blocks frozen; head at 1e-2, the two
blocks at 1e-6; the article's schedule, loss and clipping) with this project's engine, and
after every epoch prints how far each group has moved from where it started, relative to its
starting size:

* ``blocks``: the parameters of the two unfrozen blocks (``features[11:]``);
* ``head``: the final linear layer;
* ``bn var``: the running variances of those blocks' BatchNorm layers (they follow the data in
  training mode, whatever the learning rate).

The ImageNet weights cannot be downloaded on the machine this was measured on, so the network
starts from random weights: AdamW's step is about the learning rate per weight whatever the
weights are, so the blocks' movement is of the same order; the figures say so where quoted.
"""

from __future__ import annotations

import argparse

import torch

from helpers.config import Config
from helpers.data import class_weights
from helpers.fold import with_folded_prefix
from helpers.loader import prepare_data
from helpers.model import PneumoniaNet
from helpers.recipe import make_optimizer, seed_everything, to_channels_last, weighted_loss
from helpers.train import run_epoch


def _relative_change(now: list[torch.Tensor], start: list[torch.Tensor]) -> float:
    """``||now - start|| / ||start||`` over a list of tensors taken together."""
    diff = sum(float((a - b).pow(2).sum()) for a, b in zip(now, start, strict=True))
    base = sum(float(b.pow(2).sum()) for b in start)
    return (diff / base) ** 0.5


def _groups(model: PneumoniaNet) -> dict[str, list[torch.Tensor]]:
    blocks = model.features[model.n_frozen :]
    variances = [m.running_var for m in blocks.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    return {
        "blocks": [p.detach().clone() for p in blocks.parameters()],
        "head": [p.detach().clone() for p in model.head.parameters()],
        "bn var": [v.detach().clone() for v in variances],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    config = Config(image_size=args.image_size, seed=args.seed, augment="article")
    data = prepare_data(config, args.data, progress=False)
    device = torch.device("cpu")
    train_loader = data.loader("train", config, device)
    criterion = weighted_loss(class_weights(train_loader.targets.tolist()), config, device)
    seed_everything(config.seed)
    model = to_channels_last(PneumoniaNet(config.dropout, frozen=True), device)
    optimizer, scheduler = make_optimizer(model, config)
    start = _groups(model)
    fast = with_folded_prefix(model)
    steps = 0
    print(f"{len(train_loader.indices)} training images at {config.image_size} px, frozen model")
    for epoch in range(args.epochs):
        train_loader.set_epoch(epoch)
        fit = run_epoch(fast, train_loader, criterion, device, optimizer, None, config.grad_clip)
        scheduler.step()
        steps += len(train_loader)
        now = _groups(model)
        moved = {name: _relative_change(now[name], start[name]) for name in start}
        print(
            f"epoch {epoch + 1:2d} ({steps} steps, train loss {fit.loss:.3f}): "
            + ", ".join(f"{name} moved {value:.2%}" for name, value in moved.items())
        )


if __name__ == "__main__":
    main()
