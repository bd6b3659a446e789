"""The run id from every key of the config: each key is measured (in the id, as resolved for the
run) or named in `NOT_MEASURED` with why, and ids written so far stay byte-identical."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from omegaconf import DictConfig, OmegaConf

from animalcls import config
from animalcls.config import GROUPS, compose, group_options, leaves, schema_leaves
from animalcls.record import (
    NOT_MEASURED,
    Resolved,
    is_measured,
    lineage_id,
    recipe_settings,
    repeat_id,
    run_id,
    settings_row,
)

RESOLVED = Resolved(precision="fp32", data_id="abc")

# Every model, every optimizer, every recipe, paper configurations and recipe settings by hand.
CASES: dict[str, list[str]] = {
    "default": [],
    "mobilenet_v2": ["model=mobilenet_v2"],
    "mobilenet_v3_large_sgd": ["model=mobilenet_v3_large", "optim=sgd", "lr=0.1"],
    "mobilenet_v3_small_sgdm": ["model=mobilenet_v3_small", "optim=sgd_momentum"],
    "resnet18_adamw": ["model=resnet18", "optim=adamw"],
    "resnet34_nesterov": ["model=resnet34", "optim=sgd_nesterov"],
    "resnet50_scratch": ["model=resnet50", "model.pretrained=false"],
    "resnet18_weights": ["model=resnet18", "model.weights=/nonexistent/w.pth"],
    "recipe_paper": ["recipe=paper"],
    "recipe_scratch": ["recipe=scratch"],
    "recipe_finetune": ["recipe=finetune", "model=resnet18"],
    "paper_base_rot": ["+paper_config=base-adam-lr1e-4-bs16-e10-ce-bn-drop0p5-rot"],
    "paper_v3_mm": ["+paper_config=mobilenet_v3_large-sgdm-lr1e-1-bs32-e10-mm"],
    "mix_off_smoothing": ["mix.mixup_alpha=0.2", "mix.prob=0", "loss.label_smoothing=0.1"],
    "cutmix_ema": ["mix.cutmix_alpha=1.0", "mix.switch_prob=0.3", "ema.decay=0.99", "ema.warmup=false"],
    "onecycle": ["sched=onecycle", "sched.pct_start=0.25"],
    "step_early_stop": ["sched=step", "early_stop.patience=3", "early_stop.min_delta=0.5", "finetune.head_lr_mult=2"],
    "cosine": ["sched=cosine", "sched.min_lr_ratio=0.1", "sched.warmup_steps=10"],
    "aug_data": [
        "aug=rotation_112",
        "data.split=[0.7,0.15,0.15]",
        "test_on=last",
        "data.pipeline=pil",
        "seed=3",
        "epochs=20",
        "batch_size=32",
    ],
    "recipe_by_hand": [
        "optim.nesterov=true",
        "optim.clip_grad_norm=1.0",
        "optim.decay_norm_bias=true",
        "aug.color_jitter=0.2",
        "aug.trivial_augment=true",
        "aug.rrc_scale=[0.5,1.0]",
        "aug.rrc_ratio=[0.5,2.0]",
        "aug.cache_size=128",
        "tta=true",
    ],
    "multi_margin": ["loss=multi_margin", "optim.weight_decay=0.001", "optim.momentum=0.5"],
    "not_measured": ["data=demo", "logger=tensorboard", "workers=0", "device=cpu", "amp=bf16", "tags=[a,b]"],
}

# Written by the code before the id was derived from every key (run id, repeat id, lineage id and
# the recipe_settings column): a change here makes recorded runs look undone.
PINNED = {
    "default": ("d668730af661acb6", "e85ef6fe3b7b1d9e", "a7dd420af84dcd18", ""),
    "mobilenet_v2": ("fc0981bdbad591ff", "5b2848b8dc14da05", "b6abf0748764a009", ""),
    "mobilenet_v3_large_sgd": ("459b4105fdbf5f00", "62a716ca29fbc0fe", "b1d05d804018dedc", ""),
    "mobilenet_v3_small_sgdm": ("83141f25087dddd0", "67d27017b7ec3c0f", "9fb1c78c6788672f", ""),
    "resnet18_adamw": ("73df86e4c53132c9", "22444af64dd5a05a", "ee22463b03d0a178", ""),
    "resnet34_nesterov": ("a9dbe1954be006f9", "ac43b62445f6735f", "ed10473543ce9bd9", "optim.nesterov=True"),
    "resnet50_scratch": ("9e06767e92f7b169", "9c20b953a7224cfa", "e7e9f2fbc7a9d50d", ""),
    "resnet18_weights": ("b8644d103820eb50", "74fa0b02df83a90e", "4d2bd6172a5e37a0", ""),
    "recipe_paper": ("d668730af661acb6", "e85ef6fe3b7b1d9e", "a7dd420af84dcd18", ""),
    "recipe_scratch": (
        "89c2c153dcffd304",
        "f337cb49df64bb29",
        "7c73ea6c849302d6",
        "loss.label_smoothing=0.1;aug.cache_size=112;tta=True;sched.name=cosine;sched.warmup_epochs=1.0;ema.decay=0.998",
    ),
    "recipe_finetune": (
        "a4cf3adc0abf9b10",
        "57b79e85dd44f4cd",
        "5bf0579dfc3c9201",
        "optim.nesterov=True;loss.label_smoothing=0.1;aug.cache_size=256;aug.rrc_scale=[0.35,1];sched.name=cosine;ema.decay=0.999;finetune.freeze_epochs=1;finetune.head_lr_mult=10.0",
    ),
    "paper_base_rot": ("3e72bae827e55636", "4b32b4dca44da5e2", "e173ed029903fe72", ""),
    "paper_v3_mm": ("4189783bd462d7e2", "d24e8dcb104e7fbc", "c1c3465a750c5936", ""),
    "mix_off_smoothing": (
        "9934ee301fb399d2",
        "6af5a49701c1a10a",
        "05b7c29b56e88f6d",
        "loss.label_smoothing=0.1;mix.mixup_alpha=0.2;mix.prob=0.0",
    ),
    "cutmix_ema": (
        "b596905adf24180e",
        "9014f049731c8f1c",
        "8535cfa63f2da7f7",
        "mix.cutmix_alpha=1.0;mix.switch_prob=0.3;ema.decay=0.99;ema.warmup=False",
    ),
    "onecycle": (
        "800ffdbdc3d63787",
        "4236212377e19326",
        "b5183a9493e3a235",
        "sched.name=onecycle;sched.pct_start=0.25",
    ),
    "step_early_stop": (
        "5161a32557b2d92c",
        "3992448903e11e0b",
        "786e78c8084ca794",
        "sched.name=step;finetune.head_lr_mult=2.0;early_stop.patience=3;early_stop.min_delta=0.5",
    ),
    "cosine": (
        "26ca27e39b926a05",
        "87fa7f72baad286a",
        "183bcb9c12b24930",
        "sched.name=cosine;sched.warmup_epochs=1.0;sched.warmup_steps=10;sched.min_lr_ratio=0.1",
    ),
    "aug_data": ("51c1798164993ebe", "cef6b568bc455d2b", "e80f64150261c25e", ""),
    "recipe_by_hand": (
        "3f7234b052efefa4",
        "f9f6fe3292beb6e1",
        "5859f2d8807f8a8d",
        "optim.nesterov=True;optim.decay_norm_bias=True;optim.clip_grad_norm=1.0;aug.cache_size=128;aug.rrc_scale=[0.5,1];aug.rrc_ratio=[0.5,2];aug.color_jitter=0.2;aug.trivial_augment=True;tta=True",
    ),
    "multi_margin": ("36d18236d66bd105", "435772e02cf3b457", "cbcd2b1460c0f0c1", ""),
    "not_measured": ("e6fb2b52b059ff05", "c0820525c91195d5", "458a45f2b7246395", ""),
}


def test_recorded_ids_and_recipe_settings_stay_byte_identical():
    assert set(PINNED) == set(CASES)
    for name, overrides in CASES.items():
        cfg = compose(overrides)
        ids = (run_id(cfg, RESOLVED), repeat_id(cfg, RESOLVED), lineage_id(cfg, RESOLVED))
        assert (*ids, settings_row(cfg, RESOLVED)["recipe_settings"]) == PINNED[name], name


# ---------------------------------------------------------------- every key measured or named

# Hashed as resolved for the run (Resolved.precision, .data_id, .init_from), not as typed.
RESOLVED_KEYS = {"amp", "data.root", "init_from"}


def _changed(value: Any) -> Any:
    """Another value of the same type."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    if isinstance(value, list):
        return [*value, value[0]] if value else ["x"]
    return f"{value}x" if value is not None else "x"


def _with(cfg: DictConfig, key: str, value: Any) -> DictConfig:
    cfg = cfg.copy()
    OmegaConf.update(cfg, key, value, merge=False)
    return cfg


def test_every_key_of_the_schema_and_of_every_group_option_is_measured_or_named_not_measured():
    keys = set(schema_leaves())
    for group in GROUPS:
        for option in group_options(group):
            keys |= set(leaves(compose([f"{group}={option}"])))
    assert keys == set(schema_leaves())  # a group option's key the schema lacks would fail composing
    measured = {key for key in keys if is_measured(key)}
    unmeasured = {key for key in keys if any(key == n or key.startswith(f"{n}.") for n in NOT_MEASURED)}
    assert measured | unmeasured == keys and not measured & unmeasured
    assert all(any(k == n or k.startswith(f"{n}.") for k in keys) for n in NOT_MEASURED)  # none stale


def test_a_measured_key_changes_the_id_and_a_key_not_measured_does_not():
    cfg = compose(["model=resnet18"])  # pretrained: its weights file is measured
    base = run_id(cfg, RESOLVED)
    for key, value in leaves(cfg).items():
        if key in RESOLVED_KEYS:
            continue
        changed = run_id(_with(cfg, key, _changed(value)), RESOLVED) != base
        assert changed == is_measured(key), key


def test_the_resolved_values_not_the_typed_ones_change_the_id():
    cfg = compose([])
    base = run_id(cfg, RESOLVED)
    assert run_id(compose(["amp=bf16", "data.root=elsewhere"]), RESOLVED) == base
    assert run_id(cfg, Resolved("bf16", "abc")) != base and run_id(cfg, Resolved("fp32", "abd")) != base
    # init_from: the source run and its weights, not the path typed (tests/test_init_from.py runs it)
    here, moved = compose(["init_from=runs/a"]), compose(["init_from=/elsewhere/runs/a/best.pt"])
    source = Resolved("fp32", "abc", "d668730af661acb6:0123456789abcdef")
    assert run_id(here, source) == run_id(moved, source) != base
    assert run_id(here, Resolved("fp32", "abc", "d668730af661acb6:fedcba9876543210")) != run_id(here, source)
    assert settings_row(here, source)["recipe_settings"] == ""  # init_from has a column of its own


def test_workers_and_the_logger_share_the_run():
    base = compose([])
    other = compose(["workers=0", "logger=mlflow", "logger.experiment=mine", "eval_batch_size=7"])
    assert run_id(other, RESOLVED) == run_id(base, RESOLVED)
    assert settings_row(other, RESOLVED)["recipe_settings"] == ""


@dataclass
class _OptimWithAlpha(config.OptimConfig):
    alpha: float = 0.99  # a new optimizer option, as RMSprop's


@dataclass
class _ConfigWithAlpha(config.Config):
    optim: _OptimWithAlpha = field(default_factory=_OptimWithAlpha)


@pytest.fixture
def schema_with_alpha(monkeypatch):
    monkeypatch.setattr(config, "Config", _ConfigWithAlpha)
    yield
    monkeypatch.undo()
    config.register_schema()  # Hydra's store holds the schema composed last


def test_a_key_added_to_the_schema_is_measured_off_its_default_only(schema_with_alpha):
    assert "optim.alpha" in schema_leaves() and is_measured("optim.alpha")
    at_default = compose(["optim.alpha=0.99"])
    assert run_id(at_default, RESOLVED) == PINNED["default"][0]  # every id written so far stays
    assert recipe_settings(at_default) == {}
    other = compose(["optim.alpha=0.9"])
    assert run_id(other, RESOLVED) != PINNED["default"][0]
    assert settings_row(other, RESOLVED)["recipe_settings"] == "optim.alpha=0.9"
