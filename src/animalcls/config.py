"""Typed configs: the schema Hydra merges every YAML into, and the checks Hydra cannot express.

A mistyped key or a value of the wrong type fails in `check_overrides`, before Hydra composes; a
value out of its range (`RANGES`: every number has one, finite) or inconsistent with another key
fails in `validate`. Each is one line naming the key, the value and what is allowed. The allowed
names come from `animalcls.registry`.
"""

from __future__ import annotations

import difflib
import functools
import math
import re
import types
from collections.abc import Collection, Iterable, Mapping
from dataclasses import MISSING as MISSING_FIELD
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, get_args, get_origin, get_type_hints

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

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
    momentum: float = 0.0  # SGD, RMSprop
    weight_decay: float = 0.0
    nesterov: bool = False  # SGD
    decay_norm_bias: bool = False  # weight decay on biases and norm parameters too (off: timm's default)
    clip_grad_norm: float = 0.0  # 0 = no clipping
    # momentum, nesterov and these are optimizers' own settings, passed on by the registry entries
    # that name them (OptimizerSpec.options). Their defaults are torch's: a key at its default stays
    # out of the run id, so ids written before a key existed stay. New keys go last: the results'
    # recipe_settings column lists keys in schema order.
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # Adam, AdamW
    eps: float = 1e-8  # Adam, AdamW, RMSprop
    alpha: float = 0.99  # RMSprop: smoothing of its squared-gradient average


# OptimConfig keys that every optimizer takes; each other key is some optimizer's own setting.
OPTIM_SHARED = ("name", "weight_decay", "decay_norm_bias", "clip_grad_norm")


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
    # the training read order over the decode cache (animalcls.data.loaders.block_order): random
    # (a full permutation per epoch) | block (shuffled runs of block_images consecutive cache rows,
    # block_window runs shuffled together: for a cache larger than RAM). New keys go last.
    order: str = "random"
    block_images: int = 256
    block_window: int = 8


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
    log_every: int = 0  # a train.log line every N training batches (0 = one line per epoch only)
    test_on: str = "best"
    resume: str = "auto"
    force: bool = False
    # a checkpoint file or a run dir whose weights this run starts from (animalcls.warmstart): a new
    # run with its own id, optimizer and schedule; "" = from scratch (or from model.pretrained)
    init_from: str = ""
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


def _group_dirs() -> list[str]:
    """The config groups, also those picked only with `+` (experiment, paper_config, ...)."""
    from importlib.resources import files

    return sorted(p.name for p in files("animalcls.conf").iterdir() if p.is_dir() and not p.name.startswith("_"))


def _plain(value: Any) -> Any:
    """A parsed override value as Python data (Hydra's QuotedString as its text)."""
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return getattr(value, "text", value)


def _number(value: Any, kind: str) -> float | int | None:
    """`value` as OmegaConf would store it in a float or int field; None where it refuses it."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int) or (kind == "float" and isinstance(value, float)):
        return value
    if isinstance(value, str):
        try:
            return float(value) if kind == "float" else int(value)
        except ValueError:
            return None
    return None


def _fits(value: Any, kind: str) -> bool:
    """Whether a value has the right type for a leaf of this kind (its range is checked apart)."""
    if kind.startswith("list["):
        return isinstance(value, list) and all(_fits(v, kind[5:-1]) for v in value)
    if kind in ("float", "int"):
        return _number(value, kind) is not None
    if kind == "bool":
        return isinstance(value, (bool, int)) or str(value).lower() in ("true", "false", "yes", "no", "on", "off")
    return value is None or isinstance(value, (str, int, float, bool))


def _in_range(key: str, value: Any, kind: str) -> bool:
    rng = RANGES.get(key)
    if rng is None:
        return True
    values = value if isinstance(value, list) else [value]
    return all(rng.contains(_number(v, kind.removeprefix("list[").removesuffix("]"))) for v in values)  # type: ignore[arg-type]


def _check_value(key: str, value: Any, text: str) -> None:
    kind, default = schema_fields()[key]
    if isinstance(value, str) and "${" in value:  # an interpolation: checked once composed
        return
    if not _fits(value, kind):
        raise AnimalclsError(f"{text}: {key} takes {_takes(key, kind)} (e.g. {_example(key, kind, default)})")
    if not _in_range(key, value, kind):
        raise _out_of_range(key, value, text)


def _unknown_key(key: str, text: str, leaves: list[str]) -> AnimalclsError:
    """A key the schema lacks, with the nearest keys: `epoch=3` -> epochs, `optim.lrr` -> lr."""
    nodes = sorted({leaf.rsplit(".", 1)[0] for leaf in leaves if "." in leaf})
    parent = max((node for node in nodes if key.startswith(node + ".")), key=len, default="")
    # the right name under the wrong parent (`optim.lr` for the top-level lr): its last part alone
    last_parts = sorted({leaf.rsplit(".", 1)[-1] for leaf in leaves})
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], last_parts, n=3, cutoff=0.7)
    near = [leaf for leaf in leaves if leaf.rsplit(".", 1)[-1] in close]
    near += difflib.get_close_matches(key, leaves + nodes + _group_dirs(), n=3, cutoff=0.75)
    near = [name for name in dict.fromkeys(near) if name != parent][:4]
    where = f"{parent} has no key {key[len(parent) + 1 :]}" if parent else f"there is no key {key}"
    hint = f"did you mean {' or '.join(near)}?" if near else "`animalcls train --cfg job` lists every key."
    return AnimalclsError(f"{text}: {where}; {hint}")


def _values_of(override: Any) -> list[Any] | None:
    """The values an override sets: one, or each of a choice sweep (`lr=0.1,0.01`, choice(...));
    None for range and interval sweeps, left to Hydra."""
    from hydra.core.override_parser.types import ValueType

    if override.value_type == ValueType.ELEMENT:
        return [_plain(override.value())]
    if override.value_type in (ValueType.CHOICE_SWEEP, ValueType.SIMPLE_CHOICE_SWEEP):
        return [_plain(v) for v in override.value().list]
    return None


def check_overrides(overrides: list[str]) -> None:
    """Each `key=value` as Hydra parses it, against the schema, before Hydra composes: a mistyped
    key or a value of the wrong type or range is one line saying what is allowed (Hydra's own
    errors are several lines, and do not suggest the key that was meant). Hydra's keys, groups,
    deletions and `@package` overrides are left to Hydra."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType
    from hydra.errors import OverrideParseException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as exc:
        raise AnimalclsError(str(exc).strip().replace("\n", " ")) from None
    known = schema_fields()
    groups = _group_dirs()
    for override in parsed:
        key, text = override.key_or_group, override.input_line or override.key_or_group
        if override.type == OverrideType.DEL or override.package is not None:
            continue
        if key.split(".")[0] == "hydra" or key in groups or "/" in key:  # Hydra's settings, group choices
            continue
        if key not in known:
            if override.type != OverrideType.CHANGE or any(leaf.startswith(key + ".") for leaf in known):
                continue  # `+key=` adds a key on purpose; a whole node (`bench={...}`): Hydra checks it
            raise _unknown_key(key, text, list(known))
        for value in _values_of(override) or []:
            _check_value(key, value, f"{key}={_text(value)}" if override.is_sweep_override() else text)


def register_schema() -> None:
    ConfigStore.instance().store(name="schema", node=Config)


def compose(overrides: list[str]) -> DictConfig:
    """The same config `train` would use, without Hydra's run dir and logging (eval, predict,
    profile, bench and the tests)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    check_group_choices(overrides)
    check_overrides(overrides)
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


@dataclass(frozen=True)
class Range:
    """The values a number of the schema may take (each element, for a list of numbers): always
    finite, and bounded on both sides, so that a typo (1e11 epochs, a 100000 px cache) fails here
    rather than hours into a run."""

    lo: float
    hi: float
    lo_open: bool = False
    hi_open: bool = False
    example: str = ""  # the value shown after "e.g. key="
    note: str = ""  # what a special value means, e.g. "0 = off"

    def contains(self, value: float) -> bool:
        # written so that NaN fails: every comparison with NaN is false
        if isinstance(value, float) and not math.isfinite(value):
            return False
        above = self.lo < value if self.lo_open else self.lo <= value
        below = value < self.hi if self.hi_open else value <= self.hi
        return above and below

    def interval(self) -> str:
        return f"{'(' if self.lo_open else '['}{_bound(self.lo)}, {_bound(self.hi)}{')' if self.hi_open else ']'}"


def _r(lo: float, hi: float, example: str, note: str = "", lo_open: bool = False, hi_open: bool = False) -> Range:
    return Range(lo, hi, lo_open, hi_open, example, note)


MAX_EPOCHS, MAX_BATCH, MAX_SIDE = 100_000, 65_536, 4096

# Every number in `Config`, by dotted key (a test checks that none is missing). The upper bounds are
# far beyond any sensible run but keep typos out: lr 10 is already divergent for every optimizer
# here, 4096 px is 16x the largest view a recipe uses.
RANGES: dict[str, Range] = {
    "lr": _r(0, 10, "0.001", lo_open=True),
    "batch_size": _r(1, MAX_BATCH, "16"),
    "epochs": _r(1, MAX_EPOCHS, "10"),
    "seed": _r(0, MAX_SEED, "0"),
    "workers": _r(0, 256, "2"),
    "eval_batch_size": _r(0, MAX_BATCH, "64", "0 = 4 x batch_size"),
    "log_every": _r(0, 10**9, "50", "0 = off"),
    "model.dropout": _r(0, 1, "0.5", hi_open=True),
    "optim.momentum": _r(0, 1, "0.9", hi_open=True),  # 1 or more never forgets a gradient: divergence
    "optim.weight_decay": _r(0, 10, "0.0001"),
    "optim.clip_grad_norm": _r(0, 1e6, "1.0", "0 = off"),
    "optim.betas": _r(0, 1, "[0.9,0.999]", hi_open=True),  # torch refuses 1 and more
    "optim.eps": _r(0, 1, "1e-08", lo_open=True),
    "optim.alpha": _r(0, 1, "0.99"),  # torch's: 0 and 1 pass its check
    "loss.label_smoothing": _r(0, 1, "0.1", hi_open=True),
    "sched.warmup_epochs": _r(0, MAX_EPOCHS, "1.0"),
    "sched.warmup_steps": _r(0, 10**9, "500"),
    "sched.min_lr_ratio": _r(0, 1, "0.0"),
    "sched.step_epochs": _r(1, MAX_EPOCHS, "30"),
    "sched.gamma": _r(0, 1, "0.1", lo_open=True),
    "sched.pct_start": _r(0, 1, "0.3", lo_open=True, hi_open=True),
    "sched.div_factor": _r(1, 1e6, "25.0"),  # < 1 would start above lr, the peak
    "sched.final_div_factor": _r(1, 1e9, "10000.0"),
    "mix.mixup_alpha": _r(0, 100, "0.2", "0 = off"),
    "mix.cutmix_alpha": _r(0, 100, "1.0", "0 = off"),
    "mix.prob": _r(0, 1, "1.0"),
    "mix.switch_prob": _r(0, 1, "0.5"),
    "ema.decay": _r(0, 1, "0.999", "0 = off", hi_open=True),
    "finetune.freeze_epochs": _r(0, MAX_EPOCHS, "1"),
    "finetune.head_lr_mult": _r(0, 1000, "10.0", lo_open=True),
    "early_stop.patience": _r(0, MAX_EPOCHS, "5", "0 = off"),
    "early_stop.min_delta": _r(0, 100, "0.1", "percentage points"),
    "aug.resize": _r(8, MAX_SIDE, "112"),
    "aug.crop": _r(8, MAX_SIDE, "112"),
    "aug.hflip": _r(0, 1, "0.5"),
    "aug.rotation": _r(0, 180, "15", "degrees"),
    "aug.mean": _r(0, 1, "[0.485,0.456,0.406]"),
    "aug.std": _r(0, 1, "[0.229,0.224,0.225]", lo_open=True),
    "aug.cache_size": _r(0, MAX_SIDE, "128", "0 = off"),
    "aug.rrc_scale": _r(0, 1, "[0.35,1.0]", lo_open=True),
    "aug.rrc_ratio": _r(0, 100, "[0.75,1.3333333]", lo_open=True),
    "aug.color_jitter": _r(0, 1, "0.4"),
    "data.split": _r(0, 1, "[0.85,0.05,0.10]"),
    "data.block_images": _r(1, 10**6, "256", "consecutive cache rows per block"),
    "data.block_window": _r(1, 10**6, "8", "blocks shuffled together"),
    "bench.batches": _r(1, 100_000, "8"),
    "bench.warmup": _r(0, 100_000, "2"),
    "bench.eval_batches": _r(1, 100_000, "4"),
    "bench.rounds": _r(1, 1000, "1"),
}


def _bound(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"  # seed's 4294967295 in full, 1e+06


def _text(value: Any) -> str:
    """A value as it is typed on the command line: 0.001, nan, inf, [0.5,nan]."""
    if isinstance(value, (list, tuple, ListConfig)):
        return "[" + ",".join(_text(v) for v in value) + "]"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return repr(value)  # 1.0 stays 1.0, nan and inf as typed
    return str(value)


def _kind(tp: Any) -> str:
    if get_origin(tp) is list:
        return f"list[{_kind(get_args(tp)[0])}]"
    if isinstance(tp, types.UnionType):  # str | None
        return _kind(next(t for t in get_args(tp) if t is not type(None)))
    return str(tp.__name__)


def schema_fields() -> dict[str, tuple[str, Any]]:
    """Every leaf of the schema by dotted key, in schema order: its kind (float, int, bool, str,
    list[float], list[str]) and its default (MISSING where a group sets it)."""
    return dict(_walk_schema(Config, ""))  # Config looked up per call: a test may swap the schema


def schema_leaves() -> dict[str, Any]:
    """Every leaf key of the schema with its default, in schema order."""
    return {key: default for key, (_, default) in schema_fields().items()}


@functools.cache
def _walk_schema(schema: type, prefix: str) -> tuple[tuple[str, tuple[str, Any]], ...]:
    found: list[tuple[str, tuple[str, Any]]] = []
    hints = get_type_hints(schema)
    for f in fields(schema):
        key, tp = f"{prefix}{f.name}", hints[f.name]
        if is_dataclass(tp):
            found.extend(_walk_schema(tp, f"{key}."))  # type: ignore[arg-type]
        else:
            default = f.default_factory() if f.default_factory is not MISSING_FIELD else f.default
            found.append((key, (_kind(tp), default)))
    return tuple(found)


def _takes(key: str, kind: str) -> str:
    """What `key` takes, in words: "a finite float in (0, 10]", "true or false", ..."""
    what = {
        "float": "a finite float",
        "int": "a whole number",
        "bool": "true or false",
        "str": "a string",
        "list[float]": "a list of finite floats",
        "list[int]": "a list of whole numbers",
        "list[str]": "a list of strings",
    }[kind]
    rng = RANGES.get(key)
    if rng is None:
        return what
    return (
        what
        + (" each" if kind.startswith("list") else "")
        + f" in {rng.interval()}"
        + (f" ({rng.note})" if rng.note else "")
    )


def _example(key: str, kind: str, default: Any) -> str:
    if key in RANGES:
        return f"{key}={RANGES[key].example}"
    if kind == "list[str]":
        return f"{key}=[a,b]"
    if default in (MISSING, "", None):
        return f"{key}=text"
    return f"{key}={_text(default)}"


def _out_of_range(key: str, value: Any, text: str = "") -> AnimalclsError:
    """`text`: the override as typed, where the value came from the command line."""
    kind, default = schema_fields()[key]
    given, example = text or f"{key}={_text(value)}", _example(key, kind, default)
    return AnimalclsError(f"{given} is out of range: {key} takes {_takes(key, kind)}; e.g. {example}")


def check_ranges(cfg: DictConfig) -> None:
    """Every number of the config inside its range (finite: NaN and inf fail)."""
    for key, rng in RANGES.items():
        value = OmegaConf.select(cfg, key)
        values = list(value) if isinstance(value, ListConfig) else [value]
        if not all(isinstance(v, (int, float)) and rng.contains(v) for v in values):
            raise _out_of_range(key, value)


def _cross_rules(cfg: DictConfig) -> list[tuple[bool, str]]:
    """Checks between keys, each written as what is allowed, so that a NaN (false in every
    comparison) fails rather than passes."""
    aug = cfg.aug
    scale, ratio, split = list(aug.rrc_scale), list(aug.rrc_ratio), list(cfg.data.split)
    return [
        (
            aug.crop <= aug.resize,
            f"aug.crop={aug.crop} is larger than aug.resize={aug.resize}: aug.crop takes a whole number "
            f"in [8, aug.resize]; e.g. aug.crop={aug.resize}",
        ),
        (
            aug.cache_size == 0 or aug.cache_size >= aug.crop,
            f"aug.cache_size={aug.cache_size} is smaller than aug.crop={aug.crop}: aug.cache_size takes 0 (off) "
            f"or a whole number in [aug.crop, {MAX_SIDE}]; e.g. aug.cache_size={aug.resize}",
        ),
        (
            len(aug.mean) == 3,
            f"aug.mean={_text(aug.mean)}: aug.mean takes one value in [0, 1] per RGB channel; "
            f"e.g. aug.mean=[0.485,0.456,0.406]",
        ),
        (
            len(aug.std) == 3,
            f"aug.std={_text(aug.std)}: aug.std takes one value in (0, 1] per RGB channel; "
            f"e.g. aug.std=[0.229,0.224,0.225]",
        ),
        (
            len(scale) == 2 and scale[0] <= scale[1],
            f"aug.rrc_scale={_text(scale)}: aug.rrc_scale takes [min, max] with 0 < min <= max <= 1; "
            f"e.g. aug.rrc_scale=[0.35,1.0]",
        ),
        (
            len(ratio) == 2 and ratio[0] <= ratio[1],
            f"aug.rrc_ratio={_text(ratio)}: aug.rrc_ratio takes [min, max] with 0 < min <= max; "
            f"e.g. aug.rrc_ratio=[0.75,1.3333333]",
        ),
        (
            len(cfg.optim.betas) == 2,
            f"optim.betas={_text(cfg.optim.betas)}: optim.betas takes two values in [0, 1), the decay of the "
            f"gradient's average and of its square's; e.g. optim.betas=[0.9,0.999]",
        ),
        (
            len(split) == 3 and split[0] > 0 and abs(sum(split) - 1.0) <= 1e-6,
            f"data.split={_text(split)}: data.split takes three fractions train,val,test that add up to 1, "
            f"train > 0; e.g. data.split=[0.85,0.05,0.10]",
        ),
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
    if cfg.data.pipeline == "pil" and cfg.data.order != "random":
        raise AnimalclsError(
            f"data.order={cfg.data.order} orders reads of the decode cache, which data.pipeline=pil does not "
            f"read: use data.pipeline=cached with it, or data.order=random."
        )
    blocks = {k: cfg.data[k] for k in ("block_images", "block_window") if cfg.data[k] != schema_leaves()[f"data.{k}"]}
    if cfg.data.order != "block" and blocks:
        given = " ".join(f"data.{k}={v}" for k, v in blocks.items())
        raise AnimalclsError(
            f"{given} shapes data.order=block, but data.order={cfg.data.order}: add data.order=block, "
            f"or drop {'it' if len(blocks) == 1 else 'them'} (it would change the run id and nothing else)."
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
    if cfg.init_from and cfg.model.pretrained:
        raise AnimalclsError(
            f"init_from={cfg.init_from} with model.pretrained=true (model={cfg.model.name} sets it by "
            f"default): the run would start from two sets of weights; add model.pretrained=false (and drop "
            f"model.weights) to start from the checkpoint, or drop init_from to start from ImageNet."
        )
    if cfg.model.weights and not cfg.model.pretrained:
        raise AnimalclsError(
            f"model.weights={cfg.model.weights} with model.pretrained=false: say which one "
            f"you mean (model.pretrained=true loads that file; drop model.weights to "
            f"train from scratch)."
        )


def _check_own_settings(
    cfg: DictConfig, group: str, takes: Mapping[str, Collection[str]], shared: Collection[str]
) -> None:
    """A `<group>.<key>` set off its schema default that the chosen option does not read (`takes`:
    option -> the keys it reads) fails, naming the option, the keys it reads and the options that
    read the key: silently ignored, it would still change the run id and measure nothing."""
    choice, defaults, own = str(cfg[group].name), schema_leaves(), set(takes[cfg[group].name])
    node = OmegaConf.to_container(cfg[group], resolve=True)
    assert isinstance(node, dict)
    set_keys = {str(key): value for key, value in node.items() if str(key) not in shared}
    unread = {
        key: value
        for key, value in set_keys.items()
        if key not in own and value != defaults.get(f"{group}.{key}", MISSING_FIELD)
    }
    if not unread:
        return
    readers = [name for name, keys in takes.items() if set(unread) <= set(keys)]
    its = ", ".join(f"{group}.{key}" for key in takes[choice]) or "none"
    given = " ".join(f"{group}.{key}={_text(value)}" for key, value in unread.items())
    default = " ".join(f"{group}.{key}={_text(defaults.get(f'{group}.{key}'))}" for key in unread)
    raise AnimalclsError(
        f"{group}={choice} does not take {given}: its own settings are {its}; leave "
        f"{'it' if len(unread) == 1 else 'them'} at the default ({default})"
        + (f" or use {group}={' or '.join(readers)}." if readers else ".")
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
    _choice(cfg.data.order, ("random", "block"), "data.order")
    _choice(str(cfg.resume).lower(), ("auto", "true", "false"), "resume")
    if not DEVICE_PATTERN.match(str(cfg.device)):
        raise AnimalclsError(f"device={cfg.device!r} is not a device; use device=auto, cpu, cuda or cuda:N.")
    _choice(cfg.sched.name, SCHEDULES.names(), "sched")
    _choice(cfg.logger.name, TRACKERS, "logger")
    check_ranges(cfg)
    _check_own_settings(cfg, "optim", {name: OPTIMIZERS.get(name).options for name in OPTIMIZERS}, OPTIM_SHARED)
    _check_own_settings(cfg, "sched", {name: SCHEDULES.get(name).takes for name in SCHEDULES}, ("name",))
    for ok, message in _cross_rules(cfg):
        if not ok:
            raise AnimalclsError(message)
    _check_model_options(cfg)
    _check_recipe_combinations(cfg)
