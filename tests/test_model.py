"""PneumoniaNet: parameter counts, freezing, gradients, parameter groups, weight loading."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision
from torch import nn

from helpers import cli
from helpers.config import Config
from helpers.fold import with_folded_prefix
from helpers.model import (
    PneumoniaNet,
    WeightsUnavailableError,
    architecture_table,
    build_model,
    count_mult_adds,
    count_parameters,
    imagenet_weights,
    model_summary,
    parameter_groups,
    weights_cache_path,
)

CACHE_NAME = "mobilenet_v3_small-047dcff4.pth"


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty ``TORCH_HOME`` whose download path fails at once (the test never goes online)."""
    calls = []

    def no_network(url, dst, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # get_dir() then reads TORCH_HOME
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return calls


def images(batch: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    """A reproducible random batch of 'normalised images'."""
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def frozen_params(model: PneumoniaNet) -> list[nn.Parameter]:
    """Parameters of ``features[:-2]``."""
    return list(model.features[: model.n_frozen].parameters())


def test_parameter_counts_match_the_article() -> None:
    assert count_parameters(PneumoniaNet(frozen=True)) == {
        "total": 928_162,
        "trainable": 351_698,
        "frozen": 576_464,
    }
    model = PneumoniaNet(frozen=True)
    assert model.n_frozen == len(model.features) - 2
    assert isinstance(model.features[-2], torchvision.models.mobilenetv3.InvertedResidual)
    linear = model.head[-1]
    assert (linear.in_features, linear.out_features) == (576, 2)
    assert torch.count_nonzero(linear.bias) == 0


def test_model_summary_shows_the_article_table() -> None:
    text = model_summary()
    for number in ("928,162", "351,698", "576,464"):
        assert number in text
    assert "[1, 576, 8, 8]" in text  # last features block at 256x256
    assert "[1, 576, 4, 4]" in model_summary(image_size=100)  # no multiple of 32 needed


def test_summary_cli_prints_counts(capsys) -> None:
    assert cli.main(["summary", "--image-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "Trainable params: 351,698" in out and "[1, 576, 2, 2]" in out


@pytest.mark.parametrize("size", [256, 64])
def test_output_is_two_logits_per_image(size: int) -> None:
    model = PneumoniaNet().eval()
    with torch.no_grad():
        logits = model(images(2, size))
    assert logits.shape == (2, 2)
    assert torch.isfinite(logits).all()


def test_train_mode_keeps_the_frozen_prefix_in_eval_mode() -> None:
    model = PneumoniaNet(frozen=True)
    model.eval()
    model.train()
    assert model.training and model.head.training
    blocks = list(model.features)
    assert all(not m.training for b in blocks[: model.n_frozen] for m in b.modules())
    assert all(m.training for b in blocks[model.n_frozen :] for m in b.modules())
    model.eval()
    assert not any(m.training for m in model.modules())


def test_gradients_reach_trainable_layers_only() -> None:
    model = PneumoniaNet(frozen=True).train()
    loss = nn.functional.cross_entropy(model(images(4)), torch.tensor([0, 1, 0, 1]))
    loss.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) > 2
    for name, param in trainable:
        assert param.grad is not None and torch.count_nonzero(param.grad) > 0, name
    assert all(p.grad is None for p in frozen_params(model))


def test_input_gradient_still_flows_through_the_frozen_prefix() -> None:
    model = PneumoniaNet(frozen=True).eval()
    x = images(1).requires_grad_(True)
    model(x)[0, 1].backward()
    assert x.grad is not None and torch.count_nonzero(x.grad) > 0
    assert all(p.grad is None for p in frozen_params(model))


def test_optimiser_steps_change_trainable_weights_only() -> None:
    torch.manual_seed(0)
    config = Config()
    model = PneumoniaNet(frozen=True).train()
    groups = parameter_groups(model, config)
    assert [(g["name"], g["lr"]) for g in groups] == [
        ("head", config.head_lr),
        ("backbone", config.backbone_lr),
    ]
    grouped = [p for g in groups for p in g["params"]]
    assert len({id(p) for p in grouped}) == len(grouped)  # no parameter twice
    assert {id(p) for p in grouped} == {id(p) for p in model.parameters() if p.requires_grad}

    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(groups, betas=config.betas, weight_decay=config.weight_decay)
    for step in range(3):
        optimizer.zero_grad()
        x, y = images(4, seed=step), torch.tensor([0, 1, 1, 0])
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    after = model.state_dict()
    prefix = f"features.{model.n_frozen - 1}."  # stays in the frozen part
    for key, value in before.items():
        frozen = key.startswith("features.") and int(key.split(".")[1]) < model.n_frozen
        if frozen:  # weights and BatchNorm running statistics alike
            assert torch.equal(after[key], value), key
        elif after[key].is_floating_point() and "running" not in key:
            assert not torch.equal(after[key], value), key
    assert any(k.startswith(prefix) for k in before)


def test_none_trains_the_whole_network() -> None:
    config = Config()
    model = build_model("none", dropout=0.3)
    assert model.weights_used == "none" and model.frozen is False
    assert model.head[2].p == 0.3
    counts = count_parameters(model)
    assert counts["trainable"] == counts["total"] == 928_162
    model.train()
    assert all(m.training for m in model.modules())
    groups = {g["name"]: g for g in parameter_groups(model, config)}
    assert groups["head"]["lr"] == groups["backbone"]["lr"] == config.scratch_lr
    assert sum(p.numel() for p in groups["backbone"]["params"]) == 928_162 - 1_154


def test_imagenet_weights_load_from_the_torch_hub_cache(torch_home) -> None:
    torch.manual_seed(123)
    reference = torchvision.models.mobilenet_v3_small().state_dict()
    path = weights_cache_path()
    assert path.name == CACHE_NAME and str(path).startswith(str(torch.hub.get_dir()))
    path.parent.mkdir(parents=True)
    torch.save(reference, path)

    torch.manual_seed(0)  # a different random init, so loading must overwrite it
    model = build_model("imagenet")
    assert torch_home == []  # nothing downloaded
    assert model.weights_used == "imagenet" and model.frozen is True
    loaded = model.features.state_dict()
    assert len(loaded) == sum(k.startswith("features.") for k in reference)
    for key, value in loaded.items():
        assert torch.equal(value, reference[f"features.{key}"]), key
    assert count_parameters(model)["trainable"] == 351_698


def test_imagenet_without_weights_names_the_file_and_url(torch_home) -> None:
    with pytest.raises(WeightsUnavailableError) as info:
        build_model("imagenet")
    message = str(info.value)
    assert str(weights_cache_path()) in message
    assert imagenet_weights().url in message
    assert torch_home == [imagenet_weights().url]  # the real download path was tried


def test_auto_falls_back_to_scratch_with_a_warning(torch_home, capsys) -> None:
    with pytest.warns(UserWarning, match="ImageNet weights unavailable"):
        model = build_model("auto")
    assert model.weights_used == "none" and model.frozen is False
    assert "WARNING" in capsys.readouterr().out


def test_bad_weight_files_and_arguments_raise_clear_errors(torch_home) -> None:
    path = weights_cache_path()
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsUnavailableError, match="cannot read"):
        build_model("imagenet")
    torch.save({"features.0.0.weight": torch.zeros(1)}, path)
    with pytest.raises(WeightsUnavailableError, match="does not match"):
        build_model("imagenet")
    with pytest.raises(ValueError, match="pretrained must be one of"):
        build_model("imagenet1k")


def _with_statistics(model: PneumoniaNet) -> PneumoniaNet:
    """Non-trivial BatchNorm statistics, as ImageNet weights have."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model


def test_folded_prefix_computes_the_same_function():
    """The engine's view folds the frozen prefix's BatchNorm into its convolutions: the same
    outputs in eval and in train mode, and the model itself is untouched."""
    torch.manual_seed(0)
    model = _with_statistics(PneumoniaNet(frozen=True))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    fast = with_folded_prefix(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast[0].modules())
    x = torch.randn(2, 3, 64, 64)
    for mode in (False, True):
        model.train(mode)
        fast.train(mode)
        assert not fast[0].training and fast[1].training == mode  # the prefix stays in eval
        torch.manual_seed(1)
        plain = model(x)
        torch.manual_seed(1)
        torch.testing.assert_close(fast(x), plain, atol=2e-4, rtol=1e-3)  # float rounding
    assert count_parameters(model)["total"] == 928_162
    after = model.state_dict()
    assert list(after) == list(state)  # no folded copy in the model's state
    prefix = [k for k in state if int(k.split(".")[1]) < model.n_frozen and k.startswith("feat")]
    assert prefix and all(torch.equal(state[k], after[k]) for k in prefix)


def test_training_through_the_folded_view_trains_the_model():
    """The view shares the trainable blocks and head with the model: a step through it moves
    the model's own weights, with the gradients the plain model would get."""
    torch.manual_seed(2)
    model = _with_statistics(PneumoniaNet(frozen=True)).eval()
    twin = PneumoniaNet(frozen=True).eval()
    twin.load_state_dict(model.state_dict())
    fast = with_folded_prefix(model).eval()
    x, y = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 1, 0])
    nn.functional.cross_entropy(fast(x), y).backward()
    nn.functional.cross_entropy(twin(x), y).backward()
    for (name, a), b in zip(model.named_parameters(), twin.parameters(), strict=True):
        if b.grad is None:
            assert a.grad is None, name
        else:
            torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-4)
    assert {id(p) for p in fast.parameters() if p.requires_grad} == {
        id(p) for p in model.parameters() if p.requires_grad
    }
    assert with_folded_prefix(PneumoniaNet(frozen=False)) is not None
    unfrozen = PneumoniaNet(frozen=False)
    assert with_folded_prefix(unfrozen) is unfrozen  # nothing frozen, nothing to fold


def test_trainable_blocks_is_one_number():
    """Unfreezing more blocks is one value of the config, and the optimiser sees them."""
    two = PneumoniaNet(frozen=True)
    four = PneumoniaNet(frozen=True, trainable_blocks=Config(trainable_blocks=4).trainable_blocks)
    assert (two.n_frozen, four.n_frozen) == (11, 9)
    assert count_parameters(four)["trainable"] > count_parameters(two)["trainable"]
    trainable = {n.split(".")[0] for n, p in four.features.named_parameters() if p.requires_grad}
    assert trainable == {"9", "10", "11", "12"}
    groups = parameter_groups(four, Config(trainable_blocks=4))
    assert (
        sum(p.numel() for g in groups for p in g["params"]) == count_parameters(four)["trainable"]
    )
    with pytest.raises(ValueError, match="trainable_blocks"):
        PneumoniaNet(trainable_blocks=0)


def test_architecture_table_is_torchvisions_network():
    table = architecture_table(256)
    assert len(table) == 13  # one row per features block
    assert table["out"].tolist() == [m.out_channels for m in _convs_out(PneumoniaNet())]
    assert table.iloc[0]["input"] == "256² x 3" and table.iloc[-1]["out"] == 576
    assert table["stride"].tolist().count(2) == 5  # 256 / 2**5 = 8
    assert table.iloc[-2]["input"] == "8² x 96"


def _convs_out(model: PneumoniaNet) -> list[nn.Conv2d]:
    """The last convolution of every features block (its output channels)."""
    return [
        [m for m in block.modules() if isinstance(m, nn.Conv2d)][-1] for block in model.features
    ]


def test_mult_adds_counted_by_hand_agree_with_torchinfo():
    """About 71.6 M multiply-adds per 256x256 image: torchinfo and a layer-by-layer count."""
    import torchinfo

    model = PneumoniaNet(frozen=True)
    by_hand = count_mult_adds(model, 256)
    stats = torchinfo.summary(model, input_size=(1, 3, 256, 256), verbose=0)
    assert by_hand == pytest.approx(71.56e6, rel=1e-3)
    assert stats.total_mult_adds == pytest.approx(by_hand, rel=1e-3)
    assert count_mult_adds(model, 128) == pytest.approx(by_hand / 4, rel=0.03)
