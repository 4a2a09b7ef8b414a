"""Training settings: recipes, validation, the schedule; all torch-free."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields

import pytest

from digitlab.config import (
    DATASET_NAMES,
    RECIPES,
    TrainConfig,
    cli_fields,
    config_from_dict,
    config_from_recipe,
    lr_at,
    recipe_settings,
)
from digitlab.data import DATASETS
from digitlab.errors import DigitlabError


def test_recipes_are_plain_data():
    seed = config_from_recipe("seed")
    assert (seed.epochs, seed.batch_size, seed.lr, seed.optimizer, seed.arch) == (5, 64, 1e-3, "rmsprop", "tutorial")
    assert seed == TrainConfig()  # the seed recipe is the defaults: the tutorial
    best = config_from_recipe("best", epochs=2)
    assert best.augment and best.epochs == 2 and best.arch == "lean-bn" and best.recipe == "best"
    assert best.negatives == 0.5 and seed.negatives == 0  # outlier exposure in best; seed stays the tutorial
    for name, cfg in RECIPES.items():
        assert cfg.recipe == name
        cfg.validate()
    assert list(recipe_settings(RECIPES["fast"]))[:4] == ["arch", "epochs", "batch_size", "optimizer"]


def test_unknown_recipe_and_settings_are_named():
    with pytest.raises(DigitlabError, match="recipe: unknown 'turbo'; expected one of seed, fast, best"):
        config_from_recipe("turbo")
    with pytest.raises(DigitlabError, match="unknown training settings: colour"):
        config_from_recipe("seed", colour="red")


@pytest.mark.parametrize("settings, message", [
    ({"epochs": 0}, "epochs: must be >= 1, got 0"),
    ({"epochs": "3"}, "epochs: expected a whole number, got '3'"),
    ({"epochs": True}, "epochs: expected a whole number, got True"),
    ({"lr": float("nan")}, "lr: must be a positive number"),
    ({"lr": "fast"}, "lr: expected a number, got 'fast'"),
    ({"optimizer": "lbfgs"}, "optimizer: expected one of rmsprop, adam, sgd, got 'lbfgs'"),
    ({"precision": "fp16"}, "precision: expected one of auto, fp32, bf16, got 'fp16'"),
    ({"arch": "huge"}, "arch: expected one of tutorial, small"),
    ({"augment": "yes"}, "augment: expected true or false, got 'yes'"),
    ({"limit": 0}, "limit: must be >= 1"),
    ({"test_limit": 0}, "test_limit: must be >= 1"),
    ({"data_dir": 5}, "data_dir: expected a string or null, got 5"),
    ({"elastic": 20}, "elastic: needs augment"),
    ({"augment": True, "elastic": -1}, r"elastic: must be in \[0, 100\] pixels, got -1"),
    ({"val_split": 1.0}, r"val_split: must be in \[0, 1\)"),
    ({"seed": -1}, "seed: must be in 0..2"),
    ({"threads": 0}, "threads: must be >= 1"),
    ({"beta1": 1.0}, r"beta1: must be in \[0, 1\), got 1.0"),
    ({"beta2": -0.1}, r"beta2: must be in \[0, 1\), got -0.1"),
    ({"beta2": float("nan")}, r"beta2: must be in \[0, 1\), got nan"),
    ({"negatives": -0.5}, r"negatives: must be in \[0, 4\] per digit, got -0.5"),
    ({"negatives": 5}, r"negatives: must be in \[0, 4\] per digit, got 5"),
    ({"negatives": float("nan")}, r"negatives: must be in \[0, 4\]"),
    ({"negatives": "some"}, "negatives: expected a number, got 'some'"),
    ({"negatives": 0.5, "dataset": "fashion-mnist"}, "negatives: only with the mnist dataset"),
])
def test_validate_names_the_field(settings, message):
    with pytest.raises(DigitlabError, match=message):
        TrainConfig(**settings).validate()


def test_config_from_dict():
    assert config_from_dict({"epochs": 3, "lr": 1}, "f: config") == TrainConfig(epochs=3, lr=1)
    assert config_from_dict({}, "f: config") == TrainConfig()  # settings added later take their defaults
    with pytest.raises(DigitlabError, match=r"^f: config: epochs: expected a whole number, got 2.5$"):
        config_from_dict({"epochs": 2.5}, "f: config")
    with pytest.raises(DigitlabError, match=r"^f: config: unknown training settings: colour$"):
        config_from_dict({"colour": "red"}, "f: config")
    with pytest.raises(DigitlabError, match=r"^f: config: expected an object of training settings, got \[1, 2\]$"):
        config_from_dict([1, 2], "f: config")
    with pytest.raises(DigitlabError) as info:
        config_from_dict({"out": 7, "x" * 10_000: 1}, "f: config")
    assert len(str(info.value)) < 200  # one short line, whatever the file holds


def test_every_setting_is_documented_for_the_cli():
    for f in fields(TrainConfig):
        assert f.metadata.get("help"), f.name
    names = [f.name for f in cli_fields()]
    assert "stop_after_steps" not in names and {"overwrite", "precision", "resume", "out"} <= set(names)
    assert DATASET_NAMES == tuple(DATASETS)


def test_onecycle_schedule():
    cfg = TrainConfig(lr=1.0, schedule="onecycle")
    total = 100
    assert lr_at(cfg, 0, total) == pytest.approx(0.1)  # warm-up starts at lr/10
    assert lr_at(cfg, 20, total) == pytest.approx(1.0)  # peak after 20% of the steps
    assert lr_at(cfg, 99, total) == pytest.approx(0.01, abs=1e-3)  # cosine down to lr/100
    lrs = [lr_at(cfg, s, total) for s in range(total)]
    assert all(a < b for a, b in zip(lrs[:20], lrs[1:21], strict=True))
    assert all(a >= b for a, b in zip(lrs[20:], lrs[21:], strict=False))
    assert lr_at(TrainConfig(lr=0.5), 77, total) == 0.5


def test_config_does_not_import_torch():
    code = "import sys, digitlab.config; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
