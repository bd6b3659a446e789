"""Every option of every config group, and every recipe with every model, composes, validates and
builds with the real factories (as lightning-hydra-template's test does); and each registry entry
agrees with its YAML. A new model, optimizer, loss, schedule or recipe is checked here without a
test of its own: adding one is a registry entry plus a YAML, and this is what says they agree."""

from __future__ import annotations

import inspect
import re

import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from animalcls.build import build_criterion, build_model, build_optimizer, build_recipe
from animalcls.config import GROUPS, compose, group_options, schema_leaves, validate
from animalcls.errors import AnimalclsError
from animalcls.registry import MODELS, OPTIMIZERS, SCHEDULES

NUM_CLASSES, STEPS_PER_EPOCH = 3, 4


def _build(cfg: DictConfig, train_step: bool) -> torch.nn.Module:
    """Model (no weights download: what is checked is the wiring, not ImageNet's numbers), optimizer,
    loss, scheduler and the rest of the recipe; with `train_step` one step on a zero batch."""
    OmegaConf.update(cfg, "model.pretrained", False)
    model = build_model(cfg, NUM_CLASSES)
    optimizer = build_optimizer(cfg, model)
    criterion = build_criterion(cfg)
    recipe = build_recipe(cfg, model, optimizer, STEPS_PER_EPOCH, NUM_CLASSES)
    if train_step:  # batch 2: BatchNorm in train mode needs more than one value per channel
        images = torch.zeros(2, 3, cfg.aug.crop, cfg.aug.crop)
        criterion(model(images), torch.zeros(2, dtype=torch.long)).backward()
        optimizer.step()
        if recipe.scheduler is not None:
            recipe.scheduler.step()
    return model


def _group_options() -> list[tuple[str, str]]:
    # models: each with its registry entry below; recipes: with every model (the default model, the
    # base CNN, has no weights to fine-tune)
    return [(group, option) for group in GROUPS if group not in ("model", "recipe") for option in group_options(group)]


# groups whose options act in a training step (the optimizer's settings reach torch, the loss takes
# the model's output, the schedule steps): one step each, on the base CNN at its smallest view
STEPPED = {"optim": ["aug.resize=48", "aug.crop=48"], "loss": ["aug.resize=48", "aug.crop=48"]}
STEPPED["sched"] = STEPPED["optim"]


@pytest.mark.parametrize("group, option", _group_options())
def test_every_option_of_every_group_validates_and_builds(group: str, option: str) -> None:
    cfg = compose([f"{group}={option}", *STEPPED.get(group, [])])
    validate(cfg)
    _build(cfg, train_step=group in STEPPED)


@pytest.mark.parametrize("recipe", group_options("recipe"))
@pytest.mark.parametrize("model", group_options("model"))
def test_every_recipe_with_every_model_validates_and_builds(recipe: str, model: str) -> None:
    cfg = compose([f"recipe={recipe}", f"model={model}"])
    if cfg.finetune.freeze_epochs and not MODELS.get(model).has_imagenet_weights:
        with pytest.raises(AnimalclsError, match="freezes a pretrained backbone"):
            validate(cfg)  # refused before the run, by design: nothing pretrained to freeze
        return
    validate(cfg)
    _build(cfg, train_step=False)


# ---------------------------------------------------------------- registry entries and YAMLs agree


def test_every_registered_model_has_a_yaml_and_every_model_yaml_an_entry() -> None:
    assert group_options("model") == sorted(MODELS.names())
    assert group_options("optim") == sorted(OPTIMIZERS.names())
    assert group_options("sched") == sorted(SCHEDULES.names())


@pytest.mark.parametrize("name", MODELS.names())
def test_a_models_yaml_agrees_with_its_registry_entry_and_builds_at_its_crop(name: str) -> None:
    spec, cfg = MODELS.get(name), compose([f"model={name}"])
    assert cfg.model.name == name, f"conf/model/{name}.yaml: name: {name}"
    # the YAML must switch the augmentation itself (`defaults: - override /aug@_global_.aug: ...`):
    # a torchvision model left at the base CNN's 112 px would train on views it was never made for
    assert cfg.aug.name == spec.default_aug, f"conf/model/{name}.yaml: override /aug@_global_.aug: {spec.default_aug}"
    assert cfg.model.pretrained == spec.has_imagenet_weights  # the paper's: ImageNet weights where there are any
    validate(cfg)  # base-CNN-only options in another model's YAML, weights for a model without any
    model = _build(cfg, train_step=False).eval()
    head = model.get_submodule(spec.head)  # where fine-tuning's head lr and freezing look for it
    assert isinstance(head, torch.nn.Linear) and head.out_features == NUM_CLASSES
    with torch.no_grad():
        assert model(torch.zeros(1, 3, cfg.aug.crop, cfg.aug.crop)).shape == (1, NUM_CLASSES)


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_an_optimizers_own_settings_are_schema_keys_with_torchs_defaults(name: str) -> None:
    spec, defaults = OPTIMIZERS.get(name), schema_leaves()
    signature = inspect.signature(getattr(torch.optim, spec.torch_class)).parameters
    for key, keyword in spec.options.items():
        default = defaults[f"optim.{key}"]
        # torch's default, so that a key at its default leaves every run id as it was
        assert (tuple(default) if isinstance(default, list) else default) == signature[keyword].default, key


@pytest.mark.parametrize("name", SCHEDULES.names())
def test_a_schedules_settings_are_schema_keys(name: str) -> None:
    assert all(f"sched.{key}" in schema_leaves() for key in SCHEDULES.get(name).takes)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["optim.momentum=0.9"], "optim=adam does not take optim.momentum=0.9: its own settings are optim.betas"),
        (["optim=sgd", "optim.betas=[0.8,0.99]"], "or use optim=adam or adamw"),
        (["optim=adamw", "optim.alpha=0.9"], "use optim=rmsprop"),
        (["sched=cosine", "sched.gamma=0.5"], "sched=cosine does not take sched.gamma=0.5"),
        (["recipe=scratch", "sched=onecycle"], "sched=onecycle does not take sched.warmup_epochs=1.0"),
        (["optim.betas=[0.9]"], "optim.betas takes two values"),
    ],
)
def test_a_setting_the_chosen_option_does_not_read_is_refused(overrides: list[str], message: str) -> None:
    with pytest.raises(AnimalclsError, match=re.escape(message)):
        validate(compose(overrides))


def test_an_optimizers_own_settings_reach_torch() -> None:
    cfg = compose(["optim=rmsprop", "optim.alpha=0.9", "optim.momentum=0.5", "optim.eps=1e-6"])
    validate(cfg)
    group = build_optimizer(cfg, torch.nn.Linear(2, 2)).param_groups[0]
    assert (group["alpha"], group["momentum"], group["eps"]) == (0.9, 0.5, 1e-6)
    cfg = compose(["optim=adamw", "optim.betas=[0.8,0.99]"])
    assert build_optimizer(cfg, torch.nn.Linear(2, 2)).param_groups[0]["betas"] == (0.8, 0.99)
