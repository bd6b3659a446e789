"""Beyond the paper: schedules, mixing, EMA, fine-tuning controls, early stopping, TTA, recipes.

Each piece changes what it should and nothing else; the paper's path keeps its ids and numbers.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from animalcls import results, schedule
from animalcls.build import build_criterion, build_optimizer, build_recipe, create_model
from animalcls.config import compose, validate
from animalcls.ema import ModelEma
from animalcls.engine import fit
from animalcls.errors import AnimalclsError
from animalcls.finetune import Freezer, parameter_groups
from animalcls.mix import Mixer, soft_targets
from animalcls.registry import SCHEDULES
from animalcls.steps import Recipe, StepSettings

from conftest import make_image_folder, tiny_train_args


def _table(cwd: Path) -> pd.DataFrame:
    return results.load(cwd / "outputs" / "results.csv")


# ---------------------------------------------------------------- schedules


def _sched(name: str, **values: float) -> SimpleNamespace:
    defaults = {"warmup_epochs": 0.0, "warmup_steps": 0, "min_lr_ratio": 0.0, "step_epochs": 2, "gamma": 0.5}
    defaults.update(pct_start=0.3, div_factor=25.0, final_div_factor=1e4)
    return SimpleNamespace(name=name, **{**defaults, **values})


def _factors(sched: SimpleNamespace, total: int = 100, per_epoch: int = 10) -> list[float]:
    formula = SCHEDULES.get(sched.name).factor
    return [schedule.lr_factor(formula, step, total, per_epoch, sched) for step in range(total)]


def test_cosine_with_warmup_follows_its_formula():
    factors = _factors(_sched("cosine", warmup_epochs=1.0, min_lr_ratio=0.1))
    assert factors[:10] == pytest.approx([(i + 1) / 10 for i in range(10)])
    for step in (10, 40, 99):
        progress = (step - 10) / 90
        assert factors[step] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def test_step_and_constant_and_onecycle_follow_their_formulas():
    assert _factors(_sched("step"))[::10] == pytest.approx([1, 1, 0.5, 0.5, 0.25, 0.25, 0.125, 0.125, 0.0625, 0.0625])
    assert set(_factors(_sched("constant"))) == {1.0}
    assert _factors(_sched("constant", warmup_steps=4))[:5] == pytest.approx([0.25, 0.5, 0.75, 1, 1])
    cycle = _factors(_sched("onecycle"))
    assert cycle[0] == pytest.approx(1 / 25) and max(cycle) == pytest.approx(1.0) and cycle.index(max(cycle)) == 30
    assert cycle[-1] < 1 / 25 and all(a <= b for a, b in zip(cycle[:30], cycle[1:31]))


def test_the_scheduler_sets_the_optimizers_lr_every_step_and_keeps_group_ratios():
    cfg = compose(["sched=cosine", "sched.warmup_epochs=0", "lr=0.1"])
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.SGD([{"params": [model.weight], "lr": 0.1}, {"params": [model.bias], "lr": 1.0}], lr=0.1)
    recipe = build_recipe(cfg, model, optimizer, steps_per_epoch=5, num_classes=2)
    assert recipe.scheduler is not None
    for _ in range(5 * cfg.epochs // 2):
        optimizer.step()
        recipe.scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05)  # half way: cos(pi/2)
    assert optimizer.param_groups[1]["lr"] == pytest.approx(0.5)


def test_the_papers_recipe_adds_nothing_to_the_loop():
    cfg = compose([])
    model = create_model("base", 3, input_size=48)
    recipe = build_recipe(cfg, model, build_optimizer(cfg, model), steps_per_epoch=5, num_classes=3)
    assert recipe == Recipe()
    assert build_optimizer(cfg, model).param_groups[0]["params"] == list(model.parameters())


# ---------------------------------------------------------------- mixing


@pytest.mark.parametrize("mixup, cutmix", [(0.2, 0.0), (0.0, 1.0), (0.8, 1.0)])
def test_mixed_targets_sum_to_one_and_blend_two_labels(mixup, cutmix):
    torch.manual_seed(0)
    mixer = Mixer(SimpleNamespace(mixup_alpha=mixup, cutmix_alpha=cutmix, prob=1.0, switch_prob=0.5), 5, 0.1)
    images = torch.rand(6, 3, 16, 16)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    for _ in range(5):
        mixed, targets = mixer(images, labels)
        assert mixed.shape == images.shape and targets.shape == (6, 5)
        assert torch.allclose(targets.sum(1), torch.ones(6))
        assert ((targets > 0.03).sum(1) <= 2).all()  # smoothing's 0.02 floor, plus at most two labels
        assert not torch.equal(mixed, images)


def _mixer_and_criterion(*overrides: str) -> tuple[Mixer | None, torch.nn.Module]:
    cfg = compose(["mix.mixup_alpha=0.2", "loss.label_smoothing=0.1", *overrides])
    validate(cfg)
    model = torch.nn.Linear(4, 3)
    recipe = build_recipe(cfg, model, build_optimizer(cfg, model), steps_per_epoch=5, num_classes=3)
    return recipe.mixer, build_criterion(cfg)


def test_with_mixing_off_by_prob_zero_the_loss_smooths():
    """mix.prob=0 turns mixing off although an alpha is set: the smoothing goes to the loss (it
    once went nowhere: the loss left it to a mixer that never ran)."""
    mixer, criterion = _mixer_and_criterion("mix.prob=0")
    assert mixer is None
    assert isinstance(criterion, torch.nn.CrossEntropyLoss) and criterion.label_smoothing == 0.1


def test_with_mixing_on_the_mixer_smooths_and_the_loss_does_not():
    mixer, criterion = _mixer_and_criterion("mix.prob=0.5")
    assert mixer is not None and mixer.enabled and mixer.smoothing == 0.1
    assert isinstance(criterion, torch.nn.CrossEntropyLoss) and criterion.label_smoothing == 0.0
    torch.manual_seed(0)
    _, targets = mixer(torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 0]))
    assert targets.min() >= 0.1 / 3 - 1e-6  # smoothed once, by the mixer


def test_an_alpha_with_mixing_off_does_not_need_soft_targets():
    validate(compose(["mix.mixup_alpha=0.2", "mix.prob=0", "loss=multi_margin"]))
    with pytest.raises(AnimalclsError, match="soft targets"):
        validate(compose(["mix.mixup_alpha=0.2", "loss=multi_margin"]))


def test_soft_targets_smooth_evenly():
    targets = soft_targets(torch.tensor([1]), 4, 0.2)
    assert targets.tolist()[0] == pytest.approx([0.05, 0.85, 0.05, 0.05])


# ---------------------------------------------------------------- EMA, freezing, parameter groups


def test_ema_averages_weights_copies_buffers_and_leaves_the_model_alone():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    ema = ModelEma(model, decay=0.5, warmup=False)
    before = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(2.0)
        model[1].running_mean.fill_(3.0)
    ema.update(model)
    assert torch.allclose(ema.module[0].weight, before + 1.0)  # halfway
    assert torch.equal(ema.module[1].running_mean, torch.full((2,), 3.0))
    assert torch.equal(model[0].weight, before + 2.0)
    assert ModelEma(model, 0.999).current_decay() == pytest.approx(0.1)  # warm-up: (1 + 0) / (10 + 0)


def test_freezing_trains_the_head_only_and_keeps_backbone_bn_statistics():
    torch.manual_seed(0)
    model = create_model("resnet18", 3, pretrained=False)
    freezer = Freezer(model, "fc", epochs=1)
    freezer.on_epoch_start(1)
    freezer.train_mode(model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["fc.weight", "fc.bias"] and not model.bn1.training and model.training
    backbone = model.conv1.weight.detach().clone()
    stats = model.bn1.running_mean.clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model(torch.rand(4, 3, 32, 32)).sum().backward()
    optimizer.step()
    assert torch.equal(model.conv1.weight, backbone) and torch.equal(model.bn1.running_mean, stats)
    freezer.on_epoch_start(2)
    freezer.train_mode(model)
    assert all(p.requires_grad for p in model.parameters()) and model.bn1.training


def test_parameter_groups_give_the_head_its_lr_and_spare_norms_and_biases_from_decay():
    model = create_model("resnet18", 3, pretrained=False)
    groups = parameter_groups(model, "fc", lr=0.01, weight_decay=1e-4, head_lr_mult=10.0, decay_norm_bias=False)
    assert isinstance(groups, list)
    by_key = {(g["lr"], g["weight_decay"]): g["params"] for g in groups}
    assert set(by_key) == {(0.01, 1e-4), (0.01, 0.0), (0.1, 1e-4), (0.1, 0.0)}
    assert by_key[(0.1, 1e-4)] == [model.fc.weight] and by_key[(0.1, 0.0)] == [model.fc.bias]
    assert all(p.ndim <= 1 for p in by_key[(0.01, 0.0)])
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


# ---------------------------------------------------------------- early stopping, through the engine


class _Batches:
    def __init__(self, n: int = 8) -> None:
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 255, (n, 3, 8, 8), dtype=torch.uint8, generator=generator)
        self.labels = torch.arange(n) % 2

    def set_epoch(self, epoch: int) -> None:
        pass

    def __len__(self) -> int:
        return 1

    def __iter__(self):
        yield self.images, self.labels


def test_early_stopping_ends_an_ok_run_and_says_why():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 2))
    batches = _Batches()
    frozen_val = lambda x: torch.zeros(x.shape[0], 3, 8, 8)  # noqa: E731  val never improves
    result = fit(
        model,
        batches,
        batches,
        lambda x: x.float(),
        frozen_val,
        torch.nn.CrossEntropyLoss(),
        torch.optim.SGD(model.parameters(), lr=0.1),
        StepSettings(torch.device("cpu"), progress=False),
        epochs=10,
        recipe=Recipe(patience=2),
    )
    assert result.status == "ok" and len(result.history) == 3 and "early stopping" in result.stopped_early
    assert result.best_epoch == 1


# ---------------------------------------------------------------- end to end


def test_a_recipe_run_records_its_settings_and_a_paper_run_records_none(tmp_path, image_folder, cli):
    assert cli(tiny_train_args(image_folder), tmp_path) == 0
    args = tiny_train_args(image_folder, "recipe=scratch", "aug.cache_size=56", "early_stop.patience=1", "epochs=3")
    assert cli(args + ["ema.decay=0.9", "tta=true", "mix.mixup_alpha=0.2"], tmp_path) == 0
    paper, modern = _table(tmp_path).to_dict("records")
    assert paper["recipe"] == "paper" and paper["recipe_settings"] == ""
    assert modern["recipe"] == "scratch" and "sched.name=cosine" in modern["recipe_settings"]
    assert "ema.decay=0.9" in modern["recipe_settings"] and modern["run_id"] != paper["run_id"]
    history = pd.read_csv(Path(modern["run_dir"]) / "history.csv")
    assert history["lr"].iloc[0] < 0.001 or len(history) == 1 or history["lr"].iloc[-1] < history["lr"].iloc[0]


@pytest.mark.slow
def test_resume_with_ema_and_a_schedule_matches_an_uninterrupted_run(tmp_path, cli):
    """Interrupt after epoch 1 (SIGTERM from a watcher), resume: same losses and test top-1."""
    import os
    import signal
    import threading
    import time

    root = make_image_folder(tmp_path / "images", per_class=30)
    args = tiny_train_args(
        root, "epochs=3", "batch_size=4", "sched=cosine", "ema.decay=0.9", "optim=adamw", "loss.label_smoothing=0.1"
    )
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    straight.mkdir()
    interrupted.mkdir()
    assert cli(args, straight) == 0

    def terminate_after_first_epoch() -> None:
        deadline = time.time() + 120
        while time.time() < deadline and not list(interrupted.glob("outputs/runs/*/*/last.pt")):
            time.sleep(0.005)
        os.kill(os.getpid(), signal.SIGTERM)

    watcher = threading.Thread(target=terminate_after_first_epoch)
    watcher.start()
    assert cli(args, interrupted) == 130
    watcher.join()
    assert cli(args, interrupted) == 0

    def final(cwd: Path) -> tuple[float, list[float], list[float]]:
        row = _table(cwd).query("status == 'ok'").iloc[-1]
        history = pd.read_csv(Path(row["run_dir"]) / "history.csv")
        return row["test_top1"], history["train_loss"].round(6).tolist(), history["lr"].round(9).tolist()

    assert final(interrupted) == final(straight)
    run_dir = Path(_table(interrupted).query("status == 'ok'").iloc[-1]["run_dir"])
    assert "resuming from" in (run_dir / "train.log").read_text()


def test_recipes_compose_and_say_why(tmp_path):
    for recipe in ("paper", "scratch", "finetune"):
        cfg = compose([f"recipe={recipe}", "model=resnet18"])
        assert cfg.recipe == recipe
        text = (Path(__file__).resolve().parents[1] / "conf" / "recipe" / f"{recipe}.yaml").read_text()
        assert text.count("#") >= 3
    assert OmegaConf.to_container(compose(["recipe=scratch"]).sched)["name"] == "cosine"


def test_every_recipe_passes_validation_with_every_model():
    """A recipe is for the base CNN and the torchvision models alike: its cache must fit each
    model's crop (scratch once cached 128 px squares, which a 224 px model refused)."""
    from animalcls.registry import MODELS

    for recipe in ("paper", "scratch", "finetune"):
        pretrained = recipe == "finetune"  # fine-tuning refuses a model without ImageNet weights
        for model in MODELS:
            if pretrained and model == "base":
                continue
            cfg = compose([f"recipe={recipe}", f"model={model}", f"model.pretrained={str(pretrained).lower()}"])
            validate(cfg)
            assert cfg.aug.cache_size in (0, cfg.aug.resize), (recipe, model)


@pytest.mark.parametrize(
    "override, phrase",
    [
        ("loss.label_smoothing=1.5", "loss.label_smoothing=1.5 is out of range"),
        ("sched=nope", "sched"),
        ("aug.rrc_scale=[0.9,0.1]", "aug.rrc_scale"),
        ("ema.decay=1.0", "ema.decay=1.0 is out of range: ema.decay takes a finite float in [0, 1) (0 = off)"),
        ("finetune.freeze_epochs=1", "model.pretrained=false"),
    ],
)
def test_recipe_nonsense_fails_before_any_work(tmp_path, image_folder, cli, capsys, override, phrase):
    code = cli(tiny_train_args(image_folder, override), tmp_path)
    captured = capsys.readouterr()
    assert code == 2 and phrase in captured.err, captured.err
