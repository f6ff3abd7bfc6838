"""The recipe object: the article's with ImageNet weights, this project's from scratch."""

from __future__ import annotations

import pytest

from helpers import model
from helpers.config import SCRATCH_RECIPE, Config, config_from_env


def test_the_article_recipe_is_kept_with_imagenet_weights():
    config = Config().for_weights("imagenet")
    assert config.pretrained == "imagenet" and config.augment == "article"
    assert config == Config().replace(pretrained="imagenet")
    with pytest.raises(ValueError, match="weights"):
        Config().for_weights("auto")


def test_training_from_scratch_uses_the_measured_recipe():
    config = Config().for_weights("none")
    assert config.pretrained == "none"
    for field, value in SCRATCH_RECIPE.items():
        assert getattr(config, field) == value
    changed = {k for k, v in config.to_dict().items() if Config().to_dict()[k] != v}
    assert changed == {"pretrained", *SCRATCH_RECIPE}


@pytest.mark.parametrize(("reachable", "weights"), [(True, "imagenet"), (False, "none")])
def test_config_from_env_picks_the_recipe_for_this_machine(monkeypatch, reachable, weights):
    monkeypatch.setattr(model, "imagenet_weights_reachable", lambda: reachable)
    assert config_from_env() == Config().for_weights(weights)
    assert config_from_env(weights="imagenet").pretrained == "imagenet"  # no check when told


def test_the_environment_overrides_the_quick_switch(monkeypatch):
    assert config_from_env(quick=True, weights="none").quick
    monkeypatch.setenv("PNEUMONIA_QUICK", "0")
    assert not config_from_env(quick=True, weights="none").quick
    monkeypatch.setenv("PNEUMONIA_QUICK", "1")
    quick = config_from_env(quick=False, weights="none")
    assert quick.quick and quick.image_size == 64 and quick.augment == SCRATCH_RECIPE["augment"]
