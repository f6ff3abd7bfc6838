"""The recipe object: the article's numbers, this project's from-scratch recipe, and a recipe
that cannot run refused when it is built, naming the field."""

from __future__ import annotations

import pytest

from helpers import config as config_module
from helpers.config import Config, ConfigError, config_from_env


def test_the_defaults_are_the_articles_recipe():
    """The numbers of the article (docs/changes-from-the-article.md), written out here, not
    read back from the code."""
    c = Config()
    assert (c.image_size, c.batch_size, c.epochs, c.patience) == (256, 64, 100, 10)
    assert (c.head_lr, c.backbone_lr, c.weight_decay, c.betas) == (1e-2, 1e-6, 5e-2, (0.9, 0.99))
    assert (c.t_0, c.t_mult, c.grad_clip, c.dropout, c.trainable_blocks) == (5, 2, 0.5, 0.5, 2)
    assert (c.augment, c.intensity, c.label_smoothing, c.ema_decay) == ("article", "none", 0, 0)


def test_imagenet_weights_keep_the_article_recipe_and_scratch_uses_framing():
    assert Config().for_weights("imagenet").augment == "article"
    scratch = Config().for_weights("none")
    assert (scratch.pretrained, scratch.augment) == ("none", "framing")
    assert scratch.head_lr == 1e-2 and scratch.scratch_lr == 2e-3  # the rest as the article's
    with pytest.raises(ValueError, match="weights"):
        Config().for_weights("auto")


@pytest.mark.parametrize(("reachable", "weights"), [(True, "imagenet"), (False, "none")])
def test_config_from_env_picks_the_recipe_for_this_machine(monkeypatch, reachable, weights):
    monkeypatch.setattr(config_module, "imagenet_weights_reachable", lambda: reachable)
    assert config_from_env().pretrained == weights
    assert config_from_env().augment == ("article" if reachable else "framing")
    monkeypatch.setattr(config_module, "imagenet_weights_reachable", lambda: 1 / 0)
    assert config_from_env(weights="imagenet").pretrained == "imagenet"  # no check when told


def test_the_environment_overrides_the_quick_switch(monkeypatch):
    assert config_from_env(quick=True, weights="none").quick
    monkeypatch.setenv("PNEUMONIA_QUICK", "0")
    assert not config_from_env(quick=True, weights="none").quick
    monkeypatch.setenv("PNEUMONIA_QUICK", "1")
    quick = config_from_env(quick=False, weights="none")
    assert quick.quick and quick.image_size == 64 and quick.epochs == 6 and quick.subset == 400


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"augment": "framming"}, "Config.augment='framming': must be one of 'article', 'robust'"),
        ({"intensity": "clahe"}, "Config.intensity='clahe': must be one of 'none', 'equalize'"),
        ({"pretrained": "imagenet1k"}, "Config.pretrained='imagenet1k': must be one of"),
        ({"val_split": 0}, r"Config.val_split=0: must be in \(0, 1\)"),
        ({"val_split": 1.0}, r"Config.val_split=1.0: must be in \(0, 1\)"),
        ({"image_size": 16}, "Config.image_size=16: must be a whole number >= 32"),
        ({"image_size": 64.0}, "Config.image_size=64.0: must be a whole number"),
        ({"subset": 0}, "Config.subset=0: must be None"),
        ({"trainable_blocks": 14}, "Config.trainable_blocks=14: must be a whole number from 1"),
        ({"batch_size": 0}, "Config.batch_size=0"),
        ({"dropout": 1.0}, r"Config.dropout=1.0: must be in \[0, 1\)"),
        ({"betas": (0.9, 1.0)}, "Config.betas"),
        ({"ema_decay": -0.1}, "Config.ema_decay=-0.1"),
        ({"epochs": True}, "Config.epochs=True: must be a whole number"),
        ({"head_lr": "0.01"}, "Config.head_lr='0.01': must be > 0"),
    ],
)
def test_a_recipe_that_cannot_run_is_refused_when_built(change, message):
    with pytest.raises(ConfigError, match=message):
        Config(**change)
    with pytest.raises(ConfigError, match=message):
        Config().replace(**change)


def test_sizes_need_not_be_multiples_of_32():
    """Only export could need it, and it does not (``benchmarks/README.md``)."""
    assert Config(image_size=100).image_size == 100


def test_a_saved_recipe_with_a_removed_option_is_named():
    saved = Config().to_dict() | {"intensity": "clahe", "num_workers": 0}
    with pytest.raises(ConfigError, match="intensity='clahe'"):
        Config.from_dict(saved)
    assert Config.from_dict(Config().to_dict() | {"num_workers": 0}) == Config()
