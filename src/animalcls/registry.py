"""One registry per choice: model, optimizer, loss, augmentation. Every other module asks here.

A registry maps a config name to its builder and to what the rest of the code needs to know about
it (display name, default augmentation, bf16 capability, short id). Unknown names raise an
`AnimalclsError` that lists the known ones, so a typo never falls back silently to a default.

Adding a torchvision model is one `register_model(...)` line below plus one YAML file in
`conf/model/` that names it and picks its `default_aug` (`defaults: - override
/aug@_global_.aug: imagenet_224`); adding an optimizer is one `register_optimizer(...)` line
naming its torch class and the `optim.<key>`s it takes (a new key also needs a schema field with
torch's default and a range in config.py) plus one YAML file in `conf/optim/`. The config check,
the paper ids and the report derive from the entry; tests/test_every_config.py builds every
entry from its YAML and checks that the two agree.
Builders import torchvision lazily: `import torchvision` costs seconds and the CLI checks names
before it needs a model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from animalcls import schedule
from animalcls.errors import AnimalclsError

T = TypeVar("T")


class Registry(Generic[T]):
    """name -> entry, in registration order; `get` raises on an unknown name."""

    def __init__(self, kind: str, config_key: str) -> None:
        self.kind, self.config_key = kind, config_key
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def remove(self, name: str) -> None:
        self._entries.pop(name, None)

    def get(self, name: str) -> T:
        if name not in self._entries:
            raise AnimalclsError(
                f"{self.config_key}={name!r} is not a known {self.kind}; choose one of: "
                f"{', '.join(self._entries)} (e.g. `{self.config_key}={self.names()[0]}`)."
            )
        return self._entries[name]

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)


# ---------------------------------------------------------------- models


@dataclass(frozen=True)
class ModelSpec:
    name: str
    display: str  # as the paper writes it, for tables and figures
    build: Callable[..., Any]  # (num_classes, **options) -> nn.Module
    default_aug: str  # the augmentation its YAML picks, and the paper used
    has_imagenet_weights: bool = True  # model.pretrained / model.weights apply
    base_options: bool = False  # model.batch_norm / model.dropout apply
    head: str = ""  # dotted path of the new classifier layer: fine-tuning's head (others: backbone)


MODELS: Registry[ModelSpec] = Registry("model", "model")


def register_model(spec: ModelSpec) -> ModelSpec:
    return MODELS.add(spec.name, spec)


def _torchvision(name: str, display: str, head: str) -> ModelSpec:
    """A torchvision classification model whose last Linear layer (the dotted path `head`) is
    replaced by a new one with the data set's number of classes."""

    def build(num_classes: int, pretrained: bool = True, weights: str | None = None, **_: object) -> Any:
        from animalcls.models import torchvision_with_head

        return torchvision_with_head(name, head, num_classes, pretrained, weights)

    return ModelSpec(name, display, build, default_aug="imagenet_224", head=head)


def _base(num_classes: int, batch_norm: bool = False, dropout: float = 0.0, input_size: int = 112, **_: object) -> Any:
    from animalcls.models import BaseCNN

    return BaseCNN(num_classes, batch_norm=batch_norm, dropout=dropout, input_size=input_size)


register_model(
    ModelSpec(
        "base",
        "Base",
        _base,
        default_aug="default_112",
        has_imagenet_weights=False,
        base_options=True,
        head="fc1",
    )
)
register_model(_torchvision("resnet18", "ResNet18", "fc"))
register_model(_torchvision("resnet34", "ResNet34", "fc"))
register_model(_torchvision("resnet50", "ResNet50", "fc"))
register_model(_torchvision("mobilenet_v2", "MobileNetV2", "classifier.1"))
register_model(_torchvision("mobilenet_v3_large", "MobileNetV3_large", "classifier.3"))
register_model(_torchvision("mobilenet_v3_small", "MobileNetV3_small", "classifier.3"))


def base_model() -> str:
    """The paper's base CNN: the model its batch-norm / dropout studies and epoch budgets are about."""
    return next(name for name in MODELS.names() if MODELS.get(name).base_options)


# ---------------------------------------------------------------- optimizers


@dataclass(frozen=True)
class OptimizerSpec:
    """A torch optimizer, as timm's `create_optimizer_v2` builds one: the class by name, and the
    optimizer's own settings as `optim.<key>` -> torch keyword. lr and weight decay (every torch
    optimizer's, decay also per parameter group) always pass; an own setting of another optimizer,
    set off its schema default, is refused by `config.validate` rather than silently dropped."""

    name: str
    display: str
    short: str  # in paper configuration ids: base-adam-lr1e-3-...
    torch_class: str  # in torch.optim
    options: Mapping[str, str] = field(default_factory=dict)  # optim.<key> -> torch keyword

    def build(self, params: Any, lr: float, weight_decay: float, optim: Mapping[str, Any]) -> Any:
        """The optimizer over `params`; `optim` the optim config node (its own settings are read)."""
        import torch

        kwargs = {kw: _torch_value(optim[key]) for key, kw in self.options.items()}
        return getattr(torch.optim, self.torch_class)(params, lr=lr, weight_decay=weight_decay, **kwargs)


def _torch_value(value: Any) -> Any:
    # torch wants plain values: betas a tuple, not OmegaConf's ListConfig
    return tuple(value) if isinstance(value, Sequence) and not isinstance(value, str) else value


OPTIMIZERS: Registry[OptimizerSpec] = Registry("optimizer", "optim")


def register_optimizer(spec: OptimizerSpec) -> OptimizerSpec:
    return OPTIMIZERS.add(spec.name, spec)


_ADAM = {"betas": "betas", "eps": "eps"}
_SGD = {"momentum": "momentum", "nesterov": "nesterov"}

register_optimizer(OptimizerSpec("adam", "Adam", "adam", "Adam", _ADAM))
register_optimizer(OptimizerSpec("sgd", "SGD", "sgd", "SGD", _SGD))
register_optimizer(OptimizerSpec("sgd_momentum", "SGD + momentum (0.9)", "sgdm", "SGD", _SGD))
register_optimizer(OptimizerSpec("adamw", "AdamW", "adamw", "AdamW", _ADAM))
register_optimizer(OptimizerSpec("sgd_nesterov", "SGD + Nesterov", "sgdn", "SGD", _SGD))
register_optimizer(
    OptimizerSpec("rmsprop", "RMSprop", "rmsprop", "RMSprop", {"alpha": "alpha", "eps": "eps", "momentum": "momentum"})
)


# ---------------------------------------------------------------- losses


@dataclass(frozen=True)
class LossSpec:
    name: str
    display: str
    short: str
    build: Callable[[], Any]


LOSSES: Registry[LossSpec] = Registry("loss", "loss")


def _cross_entropy() -> Any:
    import torch

    return torch.nn.CrossEntropyLoss()


def _multi_margin() -> Any:
    import torch

    return torch.nn.MultiMarginLoss()


LOSSES.add("cross_entropy", LossSpec("cross_entropy", "Cross Entropy", "ce", _cross_entropy))
LOSSES.add("multi_margin", LossSpec("multi_margin", "Multi Margin Loss", "mm", _multi_margin))


# ---------------------------------------------------------------- augmentations


@dataclass(frozen=True)
class AugSpec:
    """An augmentation preset; its numbers live in conf/aug/<name>.yaml."""

    name: str
    display: str
    short: str = ""  # suffix in paper configuration ids when not the default
    notes: tuple[str, ...] = field(default_factory=tuple)


AUGMENTATIONS: Registry[AugSpec] = Registry("augmentation", "aug")
AUGMENTATIONS.add("default_112", AugSpec("default_112", "default", "default_112"))
AUGMENTATIONS.add("rotation_112", AugSpec("rotation_112", "+ rotation", "rot"))
AUGMENTATIONS.add("imagenet_224", AugSpec("imagenet_224", "default (224)", "imagenet_224"))


# ---------------------------------------------------------------- learning-rate schedules


@dataclass(frozen=True)
class ScheduleSpec:
    """A formula gets the whole sched node, so a schedule with settings of its own needs no new
    signature; `takes` names the `sched.<key>`s it reads, so one set for another schedule (gamma
    with cosine) is refused by `config.validate` rather than silently ignored."""

    name: str
    display: str
    factor: schedule.Formula  # (step, total steps, steps per epoch, sched config) -> lr factor
    takes: tuple[str, ...] = ()


SCHEDULES: Registry[ScheduleSpec] = Registry("schedule", "sched")
_WARMUP = ("warmup_epochs", "warmup_steps")  # schedule.lr_factor's, for all but onecycle (its own rise)
SCHEDULES.add("constant", ScheduleSpec("constant", "constant", schedule.constant, _WARMUP))
SCHEDULES.add("cosine", ScheduleSpec("cosine", "cosine", schedule.cosine, (*_WARMUP, "min_lr_ratio")))
SCHEDULES.add("step", ScheduleSpec("step", "step", schedule.step_decay, (*_WARMUP, "step_epochs", "gamma")))
SCHEDULES.add(
    "onecycle",
    ScheduleSpec("onecycle", "one cycle", schedule.onecycle, ("pct_start", "div_factor", "final_div_factor")),
)


# ---------------------------------------------------------------- experiment trackers (animalcls.tracking)

TRACKERS = ("none", "tensorboard", "mlflow")


def display_name(kind: str, name: Any) -> str:
    """The display name of a registered choice, or the name itself (e.g. from an old table)."""
    registries: dict[str, Registry[Any]] = {
        "model": MODELS,
        "optimizer": OPTIMIZERS,
        "loss": LOSSES,
        "augmentation": AUGMENTATIONS,
    }
    registry = registries[kind]
    return registry.get(name).display if name in registry else str(name)
