"""The GPU paths of "the whole paper in minutes on one GPU", as far as a CPU can check them: CUDA
graphs fall back cleanly and change nothing off CUDA, `amp=auto`'s rule table, the Animals-151
stand-in's shape, `bench bench.mode=sweep`, and a packed (joblib) sweep's exit status.

The captured steps themselves need CUDA: `test_graphed_steps_match_eager_steps_on_cuda` runs only
there, and `scripts/gpu_paper.sh` measures them. No timing is asserted: speed is what bench measures.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from animalcls import build, graphs, steps
from animalcls.augment import DeviceAugment
from animalcls.build import choose_precision, create_model
from animalcls.config import compose, validate
from animalcls.data import TensorBatches, scan, split_indices
from animalcls.demo import STANDIN_MARKER, ensure_standin_data, standin_counts
from animalcls.ema import ModelEma
from animalcls.engine import evaluate, train_one_epoch
from animalcls.errors import AnimalclsError
from animalcls.graphs import StepGraphs, why_not_train
from animalcls.mix import Mixer
from animalcls.steps import Recipe, StepSettings

from conftest import TINY, make_image_folder, run_cli, tiny_train_args

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


# ---------------------------------------------------------------- CUDA graphs: the switch and its fallbacks


@pytest.mark.parametrize(
    "setting,device,batch,expected",
    [
        ("auto", CUDA, 16, True),
        ("auto", CUDA, 32, True),
        ("auto", CUDA, graphs.AUTO_MAX_BATCH, True),
        ("auto", CUDA, graphs.AUTO_MAX_BATCH + 1, False),
        ("auto", CUDA, 128, False),
        ("on", CUDA, 128, True),
        ("off", CUDA, 16, False),
        (False, CUDA, 16, False),  # YAML's bare `off`
        (True, CUDA, 128, True),  # YAML's bare `on`
        ("auto", CPU, 16, False),
        ("on", CPU, 16, False),
    ],
)
def test_cuda_graphs_switch_rule(setting, device, batch, expected):
    assert graphs.wanted(setting, device, batch) is expected


def test_cuda_graphs_on_a_cpu_says_so_in_one_line_and_auto_says_nothing(caplog):
    cfg = OmegaConf.create({"cuda_graphs": "on", "batch_size": 16})
    with caplog.at_level(logging.INFO, logger="animalcls.graphs"):
        assert build.build_graphs(cfg, CPU) is None
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == 1 and "cuda_graphs=on" in lines[0] and "cpu" in lines[0]
        caplog.clear()
        assert build.build_graphs(OmegaConf.create({"cuda_graphs": "auto", "batch_size": 16}), CPU) is None
        assert build.build_graphs(OmegaConf.create({"cuda_graphs": "off", "batch_size": 16}), CPU) is None
        assert caplog.records == []


def test_cuda_graphs_setting_is_validated(tmp_path):
    for good in ("auto", "on", "off", "true", "false"):
        validate(compose([f"cuda_graphs={good}", f"data.root={tmp_path}"]))
    with pytest.raises(AnimalclsError, match="cuda_graphs"):
        validate(compose(["cuda_graphs=maybe", f"data.root={tmp_path}"]))


def _tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return create_model("base", 3, input_size=48)


def test_why_a_training_step_cannot_be_captured():
    model = _tiny_model()
    adam = torch.optim.Adam(model.parameters())
    on_cuda = StepSettings(CUDA, "fp32")
    mix = OmegaConf.create({"mixup_alpha": 0.2, "cutmix_alpha": 0.0, "prob": 1.0, "switch_prob": 0.5})
    assert why_not_train(model, adam, on_cuda, None, Recipe()) == ""
    assert why_not_train(model, torch.optim.SGD(model.parameters(), lr=0.1), on_cuda, None, Recipe()) == ""
    assert "cpu" in why_not_train(model, adam, StepSettings(CPU, "fp32"), None, Recipe())
    assert "fp16" in why_not_train(model, adam, StepSettings(CUDA, "fp16"), None, Recipe())
    assert "mixup" in why_not_train(model, adam, on_cuda, None, Recipe(mixer=Mixer(mix, 3)))
    assert "freeze" in why_not_train(model, adam, on_cuda, None, Recipe(train_mode=lambda m: None))
    assert "compile" in why_not_train(torch.compile(model), adam, on_cuda, None, Recipe())  # never called: no compile
    assert "RMSprop" in why_not_train(model, torch.optim.RMSprop(model.parameters()), on_cuda, None, Recipe())


def _epochs(recipe: Recipe, epochs: int = 2):
    """Train a tiny model for `epochs` (a partial last batch each) and evaluate it; returns what
    changed: the epoch stats, the weights and the evaluation."""
    model = _tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (21, 3, 48, 48), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 3, (21,), generator=generator)
    batches = TensorBatches(images, labels, 8, CPU, shuffle=True, seed=0)
    aug = OmegaConf.create(
        {"resize": 48, "crop": 48, "hflip": 0.5, "rotation": 10.0, "mean": [0.5] * 3, "std": [0.25] * 3}
    )
    settings = StepSettings(CPU, "fp32", progress=False)
    criterion = nn.CrossEntropyLoss()
    torch.manual_seed(2)
    stats = []
    for epoch in range(1, epochs + 1):
        batches.set_epoch(epoch)
        stats.append(
            train_one_epoch(
                model, batches, DeviceAugment(aug, train=True), criterion, optimizer, settings, recipe=recipe
            )
        )
    result = evaluate(model, batches, DeviceAugment(aug, train=False), criterion, settings, graphs=recipe.graphs)
    return [{k: v for k, v in s.items() if k not in ("seconds", "images_per_s")} for s in stats], model, result


def test_graphs_object_on_a_cpu_falls_back_once_and_changes_nothing(caplog):
    plain_stats, plain_model, plain_eval = _epochs(Recipe())
    with caplog.at_level(logging.INFO, logger="animalcls.graphs"):
        graphed = StepGraphs(batch_size=8, setting="on")
        stats, model, result = _epochs(Recipe(graphs=graphed))
    assert stats == plain_stats and result == plain_eval  # floats equal, not close
    for mine, theirs in zip(model.state_dict().values(), plain_model.state_dict().values()):
        assert torch.equal(mine, theirs)
    fallbacks = [r for r in caplog.records if "eagerly" in r.getMessage()]
    assert len(fallbacks) == 1 and "cpu" in fallbacks[0].getMessage() and graphed.reason


def test_cuda_graphs_on_is_bit_identical_to_off_on_a_cpu_run(tmp_path, image_folder, cli):
    """The whole run, with a per-step schedule, momentum and EMA: the same bytes either way."""
    recipe = ["optim=sgd_momentum", "sched=cosine", "sched.warmup_epochs=0.5", "ema.decay=0.9", "epochs=2"]
    dirs = {}
    for setting in ("off", "on"):
        run_dir = tmp_path / f"run-{setting}"
        args = tiny_train_args(image_folder, *recipe, f"cuda_graphs={setting}")
        args += [f"results={tmp_path / setting}.csv", f"hydra.run.dir={run_dir}", "device=cpu"]
        assert cli(args, tmp_path) == 0
        dirs[setting] = run_dir
    said = {s: (d / "train.log").read_text().count("cuda_graphs=on, but the device is cpu") for s, d in dirs.items()}
    assert said == {"off": 0, "on": 1}
    timing = ["seconds", "images_per_s"]
    history = {s: pd.read_csv(d / "history.csv").drop(columns=timing) for s, d in dirs.items()}
    pd.testing.assert_frame_equal(history["off"], history["on"], check_exact=True)
    assert (dirs["off"] / "predictions.csv").read_bytes() == (dirs["on"] / "predictions.csv").read_bytes()
    off, on = (torch.load(d / "last.pt", weights_only=False) for d in dirs.values())
    for key in off["model"]:
        assert torch.equal(off["model"][key], on["model"][key]), key
    for key in off["ema"]["module"]:
        assert torch.equal(off["ema"]["module"][key], on["ema"]["module"][key]), key
    rows = {s: json.loads((d / "record.json").read_text()) for s, d in dirs.items()}
    assert rows["off"]["run_id"] == rows["on"]["run_id"]  # how steps run is not what a run measures
    for key in ("val_top1", "test_top1", "test_top5", "precision"):
        assert rows["off"][key] == rows["on"][key]


class _Replay:
    """Stands in for a captured CUDA graph on a CPU: a replay does nothing, so the code a graphed
    step runs around its replay (the optimizer step, the schedule, the EMA) runs as on CUDA."""

    def replay(self) -> None:
        pass


def test_eager_and_graphed_steps_share_one_after_step(monkeypatch):
    """The schedule's step and the EMA update after an optimizer step are `steps.after_step`, for
    the eager step and for a graph's replay alike (issue 23: written twice, one drifted)."""
    calls = []
    real = steps.after_step

    def spy(recipe, model):
        calls.append((recipe, model))
        real(recipe, model)

    monkeypatch.setattr(steps, "after_step", spy)
    model = _tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)  # with a schedule: its step runs after the replay
    recipe = Recipe(scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda i: 0.5**i), ema=ModelEma(model, 0.9))
    settings, criterion = StepSettings(CPU, "fp32", progress=False), nn.CrossEntropyLoss()
    images, labels = torch.randint(0, 256, (8, 3, 48, 48), dtype=torch.uint8), torch.randint(0, 3, (8,))
    steps.recipe_step(model, images.float() / 255, labels, criterion, optimizer, settings, None, recipe)
    assert calls == [(recipe, model)]

    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: None)  # the graph's side stream
    graphed = graphs._TrainGraph(model, lambda x: x.float() / 255, criterion, optimizer, settings, recipe, 8)
    graphed.graph, graphed.shape = _Replay(), tuple(images.shape)  # as if captured
    graphed.static = {"images": images.clone(), "labels": labels.clone(), "logits": torch.zeros(8, 3)}
    graphed.static["loss"] = torch.zeros(())
    graphed.step(images, labels, recipe)
    assert calls == [(recipe, model)] * 2
    assert recipe.scheduler.last_epoch == 2 and recipe.ema.updates == 2
    # and graphs.py keeps no copy of its own that would run beside it
    source = Path(graphs.__file__).read_text()
    assert "scheduler.step(" not in source and "ema.update(" not in source


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: captured steps exist only there")
@pytest.mark.parametrize("optim,schedule", [("sgd", False), ("sgd", True), ("adamw", False), ("adamw", True)])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_graphed_steps_match_eager_steps_on_cuda(optim, schedule, precision):
    """With augmentation that draws nothing, graphed and eager steps run the same kernels on the
    same numbers: with or without a per-step schedule (Adam's lr as a device tensor in the graph,
    SGD's step after the replay), with EMA, clipping and partial batches, they agree closely."""
    from animalcls.ema import ModelEma

    torch.manual_seed(0)
    base = create_model("base", 5, input_size=48).cuda().to(memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (8 * 6 + 5, 3, 48, 48), dtype=torch.uint8, generator=generator).cuda()
    labels = torch.randint(0, 5, (images.shape[0],), generator=generator).cuda()
    aug = OmegaConf.create(
        {"resize": 48, "crop": 48, "hflip": 0.0, "rotation": 0.0, "mean": [0.5] * 3, "std": [0.25] * 3}
    )
    settings = StepSettings(CUDA, precision, progress=False)

    def train(use_graphs: bool):
        model = copy.deepcopy(base)
        if optim == "adamw":
            optimizer: torch.optim.Optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
        else:
            optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (1 + step)) if schedule else None
        recipe = Recipe(
            scheduler=scheduler,
            ema=ModelEma(model, 0.9),
            clip_grad_norm=1.0,
            graphs=StepGraphs(8, "on") if use_graphs else None,
        )
        batches = TensorBatches(images, labels, 8, CUDA, shuffle=True, seed=0)
        losses = []
        for epoch in range(1, 4):
            batches.set_epoch(epoch)
            augment = DeviceAugment(aug, train=True, channels_last=True)
            stats = train_one_epoch(model, batches, augment, nn.CrossEntropyLoss(), optimizer, settings, recipe=recipe)
            losses.append(stats["train_loss"])
        evaluation = evaluate(
            recipe.ema.module,
            batches,
            DeviceAugment(aug, False, True),
            nn.CrossEntropyLoss(),
            settings,
            graphs=recipe.graphs,
        )
        if use_graphs:
            assert isinstance(recipe.graphs, StepGraphs) and recipe.graphs.reason == ""
        return losses, model, evaluation, optimizer.param_groups[0]["lr"]

    eager, graphed = train(False), train(True)
    tolerance = 1e-4 if precision == "fp32" else 2e-2
    assert np.allclose(eager[0], graphed[0], rtol=tolerance, atol=tolerance)
    for mine, theirs in zip(graphed[1].parameters(), eager[1].parameters()):
        assert torch.allclose(mine, theirs, rtol=tolerance, atol=tolerance)
    assert graphed[2]["top1"] == pytest.approx(eager[2]["top1"], abs=100 / 53 + 1e-6)
    assert graphed[3] == eager[3] and isinstance(graphed[3], float)  # the lr stays a float outside the graph


# ---------------------------------------------------------------- amp=auto


@pytest.mark.parametrize(
    "amp,device,batch,bf16_ok,model,expected",
    [
        # CUDA: fp32 where the recorded H200 check found bf16 slower (batch 16), bf16 from 64 on
        ("auto", CUDA, 16, True, "base", "fp32"),
        ("auto", CUDA, 16, True, "mobilenet_v3_large", "fp32"),
        ("auto", CUDA, 32, True, "base", "fp32"),
        ("auto", CUDA, 63, True, "resnet50", "fp32"),
        ("auto", CUDA, 64, True, "base", "bf16"),
        ("auto", CUDA, 128, True, "base", "bf16"),
        ("auto", CUDA, 128, False, "base", "fp16"),  # no bf16 on this GPU
        ("auto", CUDA, 16, False, "base", "fp32"),
        ("auto", CUDA, None, True, "base", "bf16"),  # a caller that does not give the batch size
        # explicit settings win at every batch size
        ("off", CUDA, 128, True, "base", "fp32"),
        ("bf16", CUDA, 16, True, "base", "bf16"),
        ("fp16", CUDA, 16, True, "base", "fp16"),
        # a CPU: fp32 for every model and batch size (bf16 is an opt-in there)
        ("auto", CPU, 16, True, "base", "fp32"),
        ("auto", CPU, 128, True, "resnet18", "fp32"),
        ("auto", CPU, 16, True, "mobilenet_v3_large", "fp32"),
        ("bf16", CPU, 16, True, "base", "bf16"),
    ],
)
def test_amp_auto_rule_table(monkeypatch, amp, device, batch, bf16_ok, model, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: device.type == "cuda")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_ok)
    assert choose_precision(amp, device, model, batch) == expected
    assert choose_precision(amp, device, model, batch) == expected  # a rule, not a measurement: the same again


# ---------------------------------------------------------------- the stand-in for Animals-151


def test_standin_counts_have_the_papers_shape():
    counts = standin_counts()
    assert len(counts) == 151 and sum(counts) == 6270
    assert set(counts) == {41, 42} and counts.count(42) == 79  # as even as 6,270 / 151 allows
    assert [len(part) for part in split_indices(sum(counts), [0.85, 0.05, 0.10], 0).values()] == [5330, 313, 627]
    assert standin_counts(4, 10) == [3, 3, 2, 2]
    with pytest.raises(ValueError):
        standin_counts(5, 4)


def test_standin_generator_makes_that_shape_deterministically(tmp_path):
    from PIL import Image

    counts = standin_counts(6, 15)  # scaled down: 6 classes, 15 images, full-size 224 px JPEGs
    one = ensure_standin_data(tmp_path / "one", counts=counts)
    data = scan(one)
    assert len(data.classes) == 6 and len(data.paths) == 15
    assert np.bincount(data.labels).tolist() == counts
    for rel in data.paths:
        assert rel.endswith(".jpg")
        with Image.open(one / rel) as image:
            assert image.size == (224, 224) and image.format == "JPEG"
    threaded = ensure_standin_data(tmp_path / "two", counts=counts, workers=3)
    for rel in data.paths:  # threads or not, the same bytes
        assert (one / rel).read_bytes() == (threaded / rel).read_bytes()
    ensure_standin_data(one, counts=counts)  # complete: nothing to do
    with pytest.raises(AnimalclsError, match="another stand-in"):
        ensure_standin_data(one, counts=standin_counts(6, 16))
    assert (one / STANDIN_MARKER).exists()


def test_standin_config_is_the_papers_split():
    cfg = compose(["data=standin"])
    assert cfg.data.name == "standin" and cfg.data.root == "data/standin"
    assert list(cfg.data.split) == [0.85, 0.05, 0.10] and cfg.data.pipeline == "cached"


# ---------------------------------------------------------------- bench.mode=sweep


@pytest.mark.slow  # two `animalcls train` processes: about 20 s on a 2-core CPU
def test_bench_sweep_times_old_and_new_settings_and_writes_the_ratio(tmp_path, cli, monkeypatch):
    from animalcls.benchmark import sweep

    monkeypatch.setattr(sweep, "SWEEP_CONFIGS", ["base-adam-lr1e-3-bs16-e10-ce"])  # one, to stay quick
    root = make_image_folder(tmp_path / "images", classes=3, per_class=10, size=40)
    out = tmp_path / "sweep.json"
    args = ["bench", "bench.mode=sweep", f"data.root={root}", "data.cache_dir=cache", "device=cpu", "epochs=1"]
    assert cli([*args, *TINY, f"bench.out={out}"], tmp_path) == 0
    result = json.loads(out.read_text())
    assert result["mode"] == "sweep" and result["all_ok"]
    assert result["variants"] == {"old": ["cuda_graphs=off", "amp=auto"], "new": ["cuda_graphs=auto", "amp=auto"]}
    assert [(r["variant"], r["status"], r["precision"]) for r in result["runs"]] == [
        ("old", "ok", "fp32"),
        ("new", "ok", "fp32"),
    ]
    assert result["ratios"]["old_over_new"] > 0 and all(r["seconds"] > 0 for r in result["runs"])
    per = result["per_config"]["base-adam-lr1e-3-bs16-e10-ce"]
    assert per["old_over_new"] == pytest.approx(per["old_seconds"] / per["new_seconds"])
    assert not (tmp_path / "outputs" / "results.csv").exists()  # its runs went to tables of their own


def test_bench_rejects_an_unknown_mode(tmp_path, cli, capsys):
    assert cli(["bench", f"data.root={tmp_path}", "device=cpu", "bench.mode=fast"], tmp_path) == 2
    assert "bench.mode" in capsys.readouterr().err


# ---------------------------------------------------------------- packed sweeps


@pytest.mark.slow
def test_packed_sweep_exits_1_for_a_diverged_job_2_for_bad_input_and_0_when_all_are_ok(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    make_image_folder(tmp_path / "images")
    _, *overrides = tiny_train_args(tmp_path / "images")
    pack = ["train", "-m", *overrides, "hydra/launcher=pack", "hydra.launcher.n_jobs=2"]
    # lr=10 (the largest lr allowed) sends the loss to NaN: that job's run ends `diverged`, in a joblib worker
    assert run_cli([*pack, "optim=sgd", "lr=0.001,10", "hydra.sweep.dir=sweep"], tmp_path) == 1
    assert sorted(pd.read_csv(tmp_path / "outputs" / "results.csv")["status"]) == ["diverged", "ok"]
    assert run_cli([*pack, "lr=0.002,0.003", "hydra.sweep.dir=sweep2"], tmp_path) == 0
    # the first sweep dir again: its run dirs hold runs already, so both jobs stop on bad input
    # (no run, no record); the earlier sweep's note of a diverged job does not count
    assert run_cli([*pack, "lr=0.004,0.005", "hydra.sweep.dir=sweep"], tmp_path) == 2


def test_sweep_exit_code_is_the_highest_this_sweeps_jobs_noted(tmp_path):
    import os
    import time

    from animalcls.sweep import JOB_EXIT_DIR, sweep_exit_code

    notes = tmp_path / JOB_EXIT_DIR
    notes.mkdir()
    assert sweep_exit_code(tmp_path, time.time()) == 0
    started = time.time()
    (notes / "1").write_text("1 /runs/1_base\n")
    (notes / "3").write_text("2 /runs/3_base\n")
    assert sweep_exit_code(tmp_path, started) == 2
    old = started - 3600
    os.utime(notes / "3", (old, old))  # a note from an earlier sweep into this dir
    assert sweep_exit_code(tmp_path, started) == 1
    (notes / "4").write_text("130 /runs/4_base\n")
    assert sweep_exit_code(tmp_path, started) == 130
    assert sweep_exit_code(tmp_path / "missing", started) == 0


def test_pack_launcher_config_is_four_joblib_jobs():
    import yaml

    pack = yaml.safe_load((Path(__file__).parents[1] / "conf" / "hydra" / "launcher" / "pack.yaml").read_text())
    assert pack == {"defaults": ["joblib"], "n_jobs": 4}
