"""Typed configs: the schema Hydra merges every YAML into, and the checks Hydra cannot express.

A wrong type or an unknown key fails while Hydra composes (before any work); a nonsensical value
(lr <= 0, ...) fails in `validate` with a message that says what is allowed. The allowed names
come from `animalcls.registry`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from animalcls.errors import AnimalclsError
from animalcls.registry import AUGMENTATIONS, LOSSES, MODELS, OPTIMIZERS, SCHEDULES, TRACKERS

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


@dataclass
class ModelConfig:
    name: str = MISSING
    pretrained: bool = False
    weights: str | None = None  # a local torchvision state-dict file instead of the hub
    batch_norm: bool = False  # base CNN only
    dropout: float = 0.0  # base CNN only


@dataclass
class OptimConfig:
    name: str = MISSING
    momentum: float = 0.0
    weight_decay: float = 0.0
    nesterov: bool = False
    decay_norm_bias: bool = False  # weight decay on biases and norm parameters too (off: timm's default)
    clip_grad_norm: float = 0.0  # 0 = no clipping


@dataclass
class LossConfig:
    name: str = MISSING
    label_smoothing: float = 0.0  # cross entropy only


@dataclass
class SchedConfig:
    """The learning-rate schedule (animalcls.schedule); `constant` is the paper's."""

    name: str = "constant"
    warmup_epochs: float = 0.0
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # cosine: the final lr as a fraction of lr
    step_epochs: int = 30  # step: decay every this many epochs
    gamma: float = 0.1  # step: by this factor
    pct_start: float = 0.3  # onecycle: the rising fraction of the run
    div_factor: float = 25.0  # onecycle: start at lr / div_factor
    final_div_factor: float = 10000.0  # onecycle: end at start / final_div_factor


@dataclass
class MixConfig:
    """Mixup / CutMix per batch (animalcls.mix); both alphas 0 = off."""

    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    prob: float = 1.0  # the chance that a batch is mixed
    switch_prob: float = 0.5  # with both on: the chance of CutMix rather than Mixup


def mixing_enabled(mix: Any) -> bool:
    """Whether batches are mixed (`mix` a MixConfig or its node): the one decision the checks, the
    criterion and the mixer share, so label smoothing is applied exactly once (by the mixer's soft
    targets when mixing, by the loss otherwise)."""
    return (float(mix.mixup_alpha) > 0 or float(mix.cutmix_alpha) > 0) and float(mix.prob) > 0


@dataclass
class EmaConfig:
    decay: float = 0.0  # 0 = off; e.g. 0.999
    warmup: bool = True  # min(decay, (1 + n) / (10 + n)) over the first updates


@dataclass
class FinetuneConfig:
    freeze_epochs: int = 0  # train only the new head for the first N epochs (BN in eval mode)
    head_lr_mult: float = 1.0  # the new head's lr = lr * head_lr_mult


@dataclass
class EarlyStopConfig:
    patience: int = 0  # 0 = off; stop after this many epochs without a better val top-1
    min_delta: float = 0.0  # in percentage points


@dataclass
class LoggerConfig:
    name: str = "none"  # none | tensorboard | mlflow
    tracking_uri: str = ""  # mlflow: "" = a local SQLite store beside the results table
    experiment: str = "animalcls"


@dataclass
class AugConfig:
    name: str = MISSING
    resize: int = 112
    crop: int = 112
    hflip: float = 0.0
    rotation: float = 0.0
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    # beyond the paper (animalcls.augment), all off by default
    cache_size: int = 0  # cache squares of this side, so a random crop has pixels around it
    rrc_scale: list[float] = field(default_factory=lambda: [1.0, 1.0])  # random-resized crop area
    rrc_ratio: list[float] = field(default_factory=lambda: [0.75, 1.3333333])
    color_jitter: float = 0.0
    trivial_augment: bool = False


@dataclass
class DataConfig:
    name: str = MISSING
    root: str = MISSING
    split: list[float] = field(default_factory=lambda: [0.85, 0.05, 0.10])
    pipeline: str = "cached"
    cache_dir: str = "data/.cache"
    strict: bool = False


@dataclass
class BenchConfig:
    """`animalcls bench` only: how much to measure (never part of a run id)."""

    batches: int = 8  # timed training batches per measurement
    warmup: int = 2  # untimed batches before each measurement
    eval_batches: int = 4  # timed evaluation batches
    rounds: int = 1  # limit, engine and old path measured alternately this often, pooled
    statistic: str = "auto"  # img/s from: median | total | auto (median on CPU, total on CUDA)
    pil: bool = True  # also measure the old `data.pipeline=pil` path
    cold: bool = True  # also decode from scratch into a temporary cache dir
    out: str = ""  # JSON path; "" = outputs/bench/<model>-<device>.json
    mode: str = "engine"  # engine: img/s of the engine's parts | sweep: whole runs, old vs new settings


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    data: DataConfig = field(default_factory=DataConfig)
    lr: float = 0.001
    batch_size: int = 16
    epochs: int = 10
    seed: int = 0
    device: str = "auto"
    workers: int = 2
    amp: str = "auto"
    channels_last: str = "auto"
    compile: bool = False
    cuda_graphs: str = "auto"  # off | on | auto: the steps as CUDA graphs (animalcls.graphs; auto: CUDA, small batches)
    eval_batch_size: int = 0
    test_on: str = "best"
    resume: str = "auto"
    force: bool = False
    results: str = "outputs/results.csv"
    tags: list[str] = field(default_factory=list)
    paper_config: str = ""
    ckpt: str = ""
    images: list[str] = field(default_factory=list)
    bench: BenchConfig = field(default_factory=BenchConfig)
    # beyond the paper: set together by `recipe=`
    recipe: str = "paper"
    # tta before the groups: the results' recipe_settings column lists keys in this order
    tta: bool = False  # evaluate on the image and its mirror image (mean of the outputs)
    sched: SchedConfig = field(default_factory=SchedConfig)
    mix: MixConfig = field(default_factory=MixConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)


def leaves(cfg: DictConfig) -> dict[str, Any]:
    """Every leaf of a config by its dotted key ("optim.momentum": 0.9), resolved, in config order;
    a list is one leaf and a missing value reads "???"."""
    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    assert isinstance(container, dict)
    return _flatten(container, "")


def _flatten(node: Mapping[Any, Any], prefix: str) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        flat.update(_flatten(value, f"{name}.") if isinstance(value, Mapping) else {name: value})
    return flat


def schema_leaves() -> dict[str, Any]:
    """Every leaf key of the schema with its default, in schema order (a fresh dict each call)."""
    return dict(_schema_leaves(Config))  # Config looked up per call: a test may swap the schema


@functools.cache
def _schema_leaves(schema: type) -> tuple[tuple[str, Any], ...]:
    node = OmegaConf.structured(schema)
    assert isinstance(node, DictConfig)
    return tuple(leaves(node).items())


GROUPS = ("model", "optim", "loss", "aug", "data", "sched", "recipe", "logger")


def group_options(group: str) -> list[str]:
    """The options of a config group: the YAML files shipped in animalcls.conf/<group>/."""
    from importlib.resources import files

    folder = files("animalcls.conf") / group
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def check_group_choices(overrides: list[str]) -> None:
    """Unknown group options (`model=resnet99`, also inside a sweep `model=a,b`) fail before Hydra
    starts, with one line naming the options, instead of Hydra's search-path dump."""
    for override in overrides:
        key, sep, value = override.lstrip("+~").partition("=")
        if not sep or key not in GROUPS or value.startswith(("${", "choice(", "range(", "glob(")):
            continue
        options = group_options(key)
        for choice in (v.strip() for v in value.strip("[]").split(",")):
            if choice and choice not in options:
                raise AnimalclsError(
                    f"{key}={choice} is not a known {key}; choose one of: "
                    f"{', '.join(options)} (e.g. `{key}={options[0]}`)."
                )


def register_schema() -> None:
    ConfigStore.instance().store(name="schema", node=Config)


def compose(overrides: list[str]) -> DictConfig:
    """The same config `train` would use, without Hydra's run dir and logging (eval, predict,
    profile, bench and the tests)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    check_group_choices(overrides)
    register_schema()
    try:
        with initialize_config_module(config_module="animalcls.conf", version_base="1.3"):
            return hydra_compose(config_name="config", overrides=overrides)
    except Exception as exc:  # Hydra's own messages name the bad override and the options
        raise AnimalclsError(str(exc).strip()) from None


def _choice(value: str, allowed: Iterable[str], key: str) -> None:
    allowed = list(allowed)
    if value not in allowed:
        raise AnimalclsError(
            f"{key}={value!r} is not known; choose one of: {', '.join(allowed)} (e.g. `{key}={allowed[0]}`)."
        )


MAX_SEED = 2**32 - 1  # numpy's legacy seeding, which seed_everything also sets, takes 32 bits


def _rules(cfg: DictConfig) -> list[tuple[bool, str]]:
    aug, optim = cfg.aug, cfg.optim
    return [
        (cfg.lr > 0, f"lr must be > 0 (got {cfg.lr}); e.g. lr=0.001"),
        (cfg.batch_size >= 1, f"batch_size must be >= 1 (got {cfg.batch_size}); e.g. batch_size=16"),
        (cfg.epochs >= 1, f"epochs must be >= 1 (got {cfg.epochs}); e.g. epochs=10"),
        (0 <= cfg.seed <= MAX_SEED, f"seed must be in 0..{MAX_SEED} (got {cfg.seed}); e.g. seed=0"),
        (cfg.workers >= 0, f"workers must be >= 0 (got {cfg.workers})"),
        (
            cfg.eval_batch_size >= 0,
            f"eval_batch_size must be >= 0, 0 meaning 4 x batch_size (got {cfg.eval_batch_size})",
        ),
        (optim.momentum >= 0, f"optim.momentum must be >= 0 (got {optim.momentum}); e.g. optim.momentum=0.9"),
        (optim.weight_decay >= 0, f"optim.weight_decay must be >= 0 (got {optim.weight_decay})"),
        (0.0 <= cfg.model.dropout < 1.0, f"model.dropout must be in [0, 1) (got {cfg.model.dropout})"),
        (0.0 <= aug.hflip <= 1.0, f"aug.hflip is a probability in [0, 1] (got {aug.hflip})"),
        (0.0 <= aug.rotation <= 180.0, f"aug.rotation is in degrees, 0 to 180 (got {aug.rotation})"),
        (
            aug.crop >= 8 and aug.resize >= aug.crop,
            f"aug.crop must be >= 8 and <= aug.resize (got crop={aug.crop}, resize={aug.resize})",
        ),
        (
            len(aug.mean) == 3 and all(0.0 <= m <= 1.0 for m in aug.mean),
            f"aug.mean needs one value in [0, 1] per RGB channel (got {list(aug.mean)}); "
            f"e.g. aug.mean=[0.485,0.456,0.406]",
        ),
        (
            len(aug.std) == 3 and all(s > 0 for s in aug.std),
            f"aug.std needs one value > 0 per RGB channel (got {list(aug.std)}); e.g. aug.std=[0.229,0.224,0.225]",
        ),
    ]


def _recipe_rules(cfg: DictConfig) -> list[tuple[bool, str]]:
    aug, mix, sched = cfg.aug, cfg.mix, cfg.sched
    scale, ratio = list(aug.rrc_scale), list(aug.rrc_ratio)
    return [
        (cfg.optim.clip_grad_norm >= 0, f"optim.clip_grad_norm must be >= 0, 0 = off (got {cfg.optim.clip_grad_norm})"),
        (
            0.0 <= cfg.loss.label_smoothing < 1.0,
            f"loss.label_smoothing must be in [0, 1) (got {cfg.loss.label_smoothing})",
        ),
        (
            min(mix.mixup_alpha, mix.cutmix_alpha) >= 0 and 0 <= mix.prob <= 1 and 0 <= mix.switch_prob <= 1,
            "mix.mixup_alpha and mix.cutmix_alpha must be >= 0 (0 = off), mix.prob and mix.switch_prob in [0, 1]",
        ),
        (
            0.0 <= cfg.ema.decay < 1.0,
            f"ema.decay must be in [0, 1), 0 = off; e.g. ema.decay=0.999 (got {cfg.ema.decay})",
        ),
        (cfg.finetune.freeze_epochs >= 0, f"finetune.freeze_epochs must be >= 0 (got {cfg.finetune.freeze_epochs})"),
        (cfg.finetune.head_lr_mult > 0, f"finetune.head_lr_mult must be > 0 (got {cfg.finetune.head_lr_mult})"),
        (cfg.early_stop.patience >= 0, f"early_stop.patience must be >= 0, 0 = off (got {cfg.early_stop.patience})"),
        (
            sched.warmup_epochs >= 0 and sched.warmup_steps >= 0 and 0 <= sched.min_lr_ratio <= 1,
            "sched.warmup_epochs and sched.warmup_steps must be >= 0 and sched.min_lr_ratio in [0, 1]",
        ),
        (
            sched.step_epochs >= 1 and 0 < sched.gamma <= 1 and 0 < sched.pct_start < 1,
            "sched.step_epochs must be >= 1, sched.gamma in (0, 1], sched.pct_start in (0, 1)",
        ),
        (
            aug.cache_size == 0 or aug.cache_size >= aug.crop,
            f"aug.cache_size is 0 (off) or at least aug.crop={aug.crop} (got {aug.cache_size}); e.g. "
            f"aug.cache_size={aug.resize}",
        ),
        (
            len(scale) == 2 and 0 < scale[0] <= scale[1] <= 1 and len(ratio) == 2 and 0 < ratio[0] <= ratio[1],
            f"aug.rrc_scale is [min, max] in (0, 1] and aug.rrc_ratio [min, max] > 0 (got {scale}, {ratio}); "
            f"e.g. aug.rrc_scale=[0.35,1.0]",
        ),
        (0.0 <= aug.color_jitter <= 1.0, f"aug.color_jitter must be in [0, 1] (got {aug.color_jitter})"),
    ]


def _check_recipe_combinations(cfg: DictConfig) -> None:
    if (mixing_enabled(cfg.mix) or cfg.loss.label_smoothing > 0) and cfg.loss.name != "cross_entropy":
        raise AnimalclsError(
            f"mixup, cutmix and label smoothing need soft targets, which loss={cfg.loss.name} does not take; "
            f"use loss=cross_entropy or turn them off."
        )
    new_aug = cfg.aug.cache_size or list(cfg.aug.rrc_scale) != [1.0, 1.0] or cfg.aug.color_jitter
    if cfg.data.pipeline == "pil" and (new_aug or cfg.aug.trivial_augment):
        raise AnimalclsError(
            "aug.cache_size, rrc_scale, color_jitter and trivial_augment run on the device after the "
            "decode-once cache: use data.pipeline=cached with them."
        )
    if cfg.finetune.freeze_epochs and not cfg.model.pretrained:
        raise AnimalclsError(
            "finetune.freeze_epochs freezes a pretrained backbone, but model.pretrained=false: "
            "set model.pretrained=true or finetune.freeze_epochs=0."
        )


def _check_model_options(cfg: DictConfig) -> None:
    spec = MODELS.get(cfg.model.name)
    if not spec.base_options and (cfg.model.batch_norm or cfg.model.dropout):
        raise AnimalclsError(
            "model.batch_norm and model.dropout apply to the base CNN only "
            f"(model={cfg.model.name}); drop them or use model=base."
        )
    if not spec.has_imagenet_weights and (cfg.model.pretrained or cfg.model.weights):
        raise AnimalclsError(
            f"model={cfg.model.name} has no ImageNet weights: drop model.pretrained=true "
            f"and model.weights (it trains from scratch, as in the paper)."
        )
    if cfg.model.weights and not cfg.model.pretrained:
        raise AnimalclsError(
            f"model.weights={cfg.model.weights} with model.pretrained=false: say which one "
            f"you mean (model.pretrained=true loads that file; drop model.weights to "
            f"train from scratch)."
        )


def validate(cfg: DictConfig) -> None:
    """Reject values that type checks let through, before any data is read."""
    _choice(cfg.model.name, MODELS.names(), "model")
    _choice(cfg.optim.name, OPTIMIZERS.names(), "optim")
    _choice(cfg.loss.name, LOSSES.names(), "loss")
    _choice(cfg.aug.name, AUGMENTATIONS.names(), "aug")
    _choice(cfg.amp, ("auto", "bf16", "fp16", "off"), "amp")
    _choice(str(cfg.channels_last).lower(), ("auto", "true", "false"), "channels_last")
    # YAML reads a bare on/off as a boolean: true/false mean on/off here
    _choice(
        {"true": "on", "false": "off"}.get(str(cfg.cuda_graphs).lower(), str(cfg.cuda_graphs)),
        ("auto", "on", "off"),
        "cuda_graphs",
    )
    _choice(cfg.test_on, ("best", "last"), "test_on")
    _choice(cfg.data.pipeline, ("cached", "pil"), "data.pipeline")
    _choice(str(cfg.resume).lower(), ("auto", "true", "false"), "resume")
    if not DEVICE_PATTERN.match(str(cfg.device)):
        raise AnimalclsError(f"device={cfg.device!r} is not a device; use device=auto, cpu, cuda or cuda:N.")
    _choice(cfg.sched.name, SCHEDULES.names(), "sched")
    _choice(cfg.logger.name, TRACKERS, "logger")
    for ok, message in [*_rules(cfg), *_recipe_rules(cfg)]:
        if not ok:
            raise AnimalclsError(message)
    split = list(cfg.data.split)
    if len(split) != 3 or min(split) < 0 or abs(sum(split) - 1.0) > 1e-6 or split[0] <= 0:
        raise AnimalclsError(
            f"data.split must be three fractions train,val,test that add up to 1 "
            f"(got {split}); e.g. data.split=[0.85,0.05,0.10]"
        )
    _check_model_options(cfg)
    _check_recipe_combinations(cfg)
