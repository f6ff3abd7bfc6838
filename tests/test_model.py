"""PneumoniaNet: parameter counts, freezing, gradients, parameter groups, weight loading."""

from __future__ import annotations

import urllib.error

import pytest
import torch
import torchvision
from torch import nn

from helpers import cli
from helpers.config import Config
from helpers.model import (
    PneumoniaNet,
    WeightsUnavailableError,
    build_model,
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
    with pytest.raises(ValueError, match="divisible by 32"):
        model_summary(image_size=100)


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


def test_folded_batchnorm_prefix_gives_the_same_outputs():
    """The frozen prefix runs with BatchNorm folded into its convolutions: same function."""
    torch.manual_seed(0)
    model = PneumoniaNet(frozen=True)
    for module in model.modules():  # non-trivial statistics, as ImageNet weights have
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    fused = model(x)
    assert model._fused is not None
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.fused_prefix().modules())
    model.fuse_frozen_bn = False
    plain = model(x)
    torch.testing.assert_close(fused, plain, atol=1e-5, rtol=1e-5)
    # the folded copy is not part of the model's parameters or state
    assert count_parameters(model)["total"] == 928_162
    assert not any(k.startswith("_fused") for k in model.state_dict())


def test_folded_prefix_follows_new_weights():
    """Loading weights drops the folded copy, so it never serves stale weights."""
    torch.manual_seed(1)
    model = PneumoniaNet(frozen=True).eval()
    x = torch.randn(1, 3, 64, 64)
    before = model.frozen_features(x)
    other = PneumoniaNet(frozen=True).eval()
    model.load_state_dict(other.state_dict())
    assert model._fused is None
    torch.testing.assert_close(model.frozen_features(x), other.frozen_features(x))
    assert not torch.allclose(before, model.frozen_features(x))
    model.to(torch.float64)
    assert model._fused is None
