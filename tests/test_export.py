"""`animalcls export`: ONNX and TorchScript files that give PyTorch's outputs, at any batch size.

Checkpoints are built here (compose + create_model + torch.save in the checkpoint format) and the
exported files are read back with onnxruntime and torch.jit.load, not through the command's own
check.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from animalcls import checkpoint
from animalcls.build import create_model, model_from_checkpoint
from animalcls.config import compose

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")]

CLASSES = ["cat", "dog", "fox"]
TOLERANCE = 1e-4


def make_checkpoint(path: Path, overrides: list[str], name: str | None = None) -> Path:
    """A checkpoint of an untrained model: {"format": 2, "model", "meta": {config, classes, run_id}, "epoch"}."""
    cfg = compose(["data.root=images", *overrides])
    torch.manual_seed(0)
    model = create_model(cfg.model.name, len(CLASSES), pretrained=False, input_size=cfg.aug.crop)
    config = OmegaConf.to_container(cfg, resolve=True)
    if name is not None:  # a model this animalcls does not know
        config["model"]["name"] = name
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"config": config, "classes": CLASSES, "run_id": "x"}
    torch.save({"format": 2, "model": model.state_dict(), "meta": meta, "epoch": 1}, path)
    return path


def inputs_for(crop: int, batch: int) -> torch.Tensor:
    return torch.randn(batch, 3, crop, crop, generator=torch.Generator().manual_seed(batch))


@pytest.mark.parametrize(
    "overrides,crop",
    [
        (["model=base", "aug.resize=64", "aug.crop=64"], 64),
        (["model=mobilenet_v3_large", "model.pretrained=false"], 224),
    ],
    ids=["base", "mobilenet_v3_large"],
)
def test_export_round_trips_within_tolerance(tmp_path, cli, capsys, overrides, crop):
    ckpt = make_checkpoint(tmp_path / "run" / "best.pt", overrides)
    assert cli(["export", f"ckpt={ckpt}", "repeats=2"], tmp_path) == 0
    out = capsys.readouterr().out
    onnx_file, script_file = ckpt.parent / "model.onnx", ckpt.parent / "model.pt"  # beside the checkpoint
    assert onnx_file.is_file() and script_file.is_file()
    assert "opset 17" in out and "onnxruntime" in out and "median of 2" in out
    for line in [line for line in out.splitlines() if "max |log-prob" in line]:
        assert float(line.split("=")[1].split()[0]) <= TOLERANCE

    model = onnx.load(str(onnx_file))
    assert {o.domain: o.version for o in model.opset_import}[""] == 17
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    scripted = torch.jit.load(str(script_file))
    _, _, reference = model_from_checkpoint(checkpoint.read(ckpt), ckpt)
    for batch in (3, 1):  # 3: a size the export's own check did not use; the batch axis is dynamic
        inputs = inputs_for(crop, batch)
        from_onnx = torch.from_numpy(session.run(None, {"images": inputs.numpy()})[0]).log_softmax(1)
        with torch.no_grad():
            expected = reference(inputs).float().log_softmax(1)
            from_script = scripted(inputs).log_softmax(1)
        assert from_onnx.shape == from_script.shape == (batch, len(CLASSES))
        assert (from_onnx - expected).abs().max() <= TOLERANCE
        assert (from_script - expected).abs().max() <= TOLERANCE


def test_export_to_a_folder_with_sample_images(tmp_path, image_folder, cli):
    ckpt = make_checkpoint(tmp_path / "run" / "best.pt", ["aug.resize=48", "aug.crop=48"])
    out = tmp_path / "exported"
    assert cli(["export", f"ckpt={ckpt}", f"out={out}", f"images=[{image_folder}]", "repeats=1"], tmp_path) == 0
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "model.pt"]  # no staging files left
    assert not (ckpt.parent / "model.onnx").exists()


def _nothing_written(tmp_path: Path, before: list[Path]) -> bool:
    return sorted(tmp_path.rglob("*")) == before


def test_a_checkpoint_of_an_unknown_model_fails_clearly(tmp_path, cli, capsys):
    ckpt = make_checkpoint(tmp_path / "run" / "best.pt", ["aug.resize=48", "aug.crop=48"], name="resnet99")
    before = sorted(tmp_path.rglob("*"))
    assert cli(["export", f"ckpt={ckpt}"], tmp_path) == 2
    err = capsys.readouterr().err
    assert "holds model=resnet99, which is not a registered model" in err and "nothing was exported" in err
    assert "Traceback" not in err and err.count("\n") == 1
    assert _nothing_written(tmp_path, before)


@pytest.mark.parametrize(
    "args,message",
    [
        (["images=[{empty}]"], "has no images"),
        (["lr=0.1"], "export does not take lr="),
        (["opset=7"], "opset is an ONNX opset from 13 to 21"),
        (["out={ckpt}"], "is a file; give a folder"),
    ],
)
def test_bad_input_is_one_message_and_writes_nothing(tmp_path, cli, capsys, args, message):
    ckpt = make_checkpoint(tmp_path / "run" / "best.pt", ["aug.resize=48", "aug.crop=48"])
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "notes.txt").write_text("no images")
    before = sorted(tmp_path.rglob("*"))
    assert cli(["export", f"ckpt={ckpt}", *(a.format(empty=empty, ckpt=ckpt) for a in args)], tmp_path) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert _nothing_written(tmp_path, before)


def test_export_without_onnx_says_what_to_install(tmp_path, cli, capsys, monkeypatch):
    ckpt = make_checkpoint(tmp_path / "run" / "best.pt", ["aug.resize=48", "aug.crop=48"])
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert cli(["export", f"ckpt={ckpt}"], tmp_path) == 2
    assert 'pip install -e ".[export]"' in capsys.readouterr().err
    assert not (ckpt.parent / "model.onnx").exists()


# ---------------------------------------------------------------- what the exported files say about themselves

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "onnx_classify.py"


@pytest.mark.parametrize("probabilities", [False, True], ids=["default", "probabilities"])
def test_the_files_carry_classes_input_and_outputs(tmp_path, cli, probabilities):
    ckpt = make_checkpoint(tmp_path / "run" / "best.pt", ["aug.resize=56", "aug.crop=48"])
    args = ["export", f"ckpt={ckpt}", "repeats=1", *(["probabilities=true"] if probabilities else [])]
    assert cli(args, tmp_path) == 0
    onnx_file, script_file = ckpt.parent / "model.onnx", ckpt.parent / "model.pt"

    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    cfg = compose(["data.root=images", "aug.resize=56", "aug.crop=48"])
    assert json.loads(meta["classes"]) == CLASSES
    assert (json.loads(meta["resize"]), json.loads(meta["crop"])) == (56, 48)
    assert json.loads(meta["mean"]) == pytest.approx(list(cfg.aug.mean))
    assert json.loads(meta["std"]) == pytest.approx(list(cfg.aug.std))
    assert meta["model"] == "base" and meta["run_id"] == "x" and "bilinear" in meta["input"]
    names = ["scores", "logits", *(["probabilities"] if probabilities else [])]
    assert [o.name for o in session.get_outputs()] == names == list(json.loads(meta["outputs"]))

    inputs = inputs_for(48, 2)
    outputs = dict(zip(names, session.run(None, {"images": inputs.numpy()}), strict=True))
    _, _, reference = model_from_checkpoint(checkpoint.read(ckpt), ckpt)
    with torch.no_grad():
        expected = reference(inputs).float().log_softmax(1)
    assert (torch.from_numpy(outputs["logits"]) - expected).abs().max() <= TOLERANCE
    assert (torch.from_numpy(outputs["scores"]).log_softmax(1) - expected).abs().max() <= TOLERANCE
    if probabilities:
        assert (torch.from_numpy(outputs["probabilities"]) - expected.exp()).abs().max() <= TOLERANCE

    extra = {"animalcls.json": ""}
    scripted = torch.jit.load(str(script_file), _extra_files=extra)
    script_meta = json.loads(extra["animalcls.json"])
    assert script_meta["classes"] == CLASSES and script_meta["crop"] == 48
    assert script_meta["torchscript_output"] == ("probabilities" if probabilities else "logits")
    with torch.no_grad():
        got = scripted(inputs)
    assert (got - (expected.exp() if probabilities else expected)).abs().max() <= TOLERANCE


def test_logits_mean_the_same_for_a_torchvision_model(tmp_path, cli):
    """A torchvision model's `scores` are raw logits; its `logits` are log-probabilities, as the base CNN's."""
    ckpt = make_checkpoint(
        tmp_path / "run" / "best.pt", ["model=resnet18", "model.pretrained=false", "aug.resize=64", "aug.crop=64"]
    )
    assert cli(["export", f"ckpt={ckpt}", "repeats=1"], tmp_path) == 0
    session = ort.InferenceSession(str(ckpt.parent / "model.onnx"), providers=["CPUExecutionProvider"])
    scores, logits = session.run(["scores", "logits"], {"images": inputs_for(64, 2).numpy()})
    assert abs(torch.from_numpy(logits).exp().sum(1) - 1).max() <= TOLERANCE  # normalised
    assert abs(torch.from_numpy(scores).exp().sum(1) - 1).max() > 1e-2  # raw logits, as before
    assert (torch.from_numpy(scores).log_softmax(1) - torch.from_numpy(logits)).abs().max() <= TOLERANCE


def test_the_readme_example_agrees_with_predict(tmp_path, cli, image_folder):
    """scripts/onnx_classify.py (the README's example: onnxruntime, numpy and PIL only) gives
    `animalcls predict`'s top-1 and probability on images of other sizes and shapes than the crop."""
    from PIL import Image

    from conftest import tiny_train_args

    assert cli([*tiny_train_args(image_folder), "aug.resize=56"], tmp_path) == 0
    (ckpt,) = tmp_path.glob("outputs/**/best.pt")
    assert cli(["export", f"ckpt={ckpt}", "repeats=1"], tmp_path) == 0
    odd = tmp_path / "odd"
    odd.mkdir()
    sources = sorted(image_folder.glob("class_*/img_00[0-2].jpg"))
    for i, (source, size) in enumerate(zip(sources, [(90, 60), (41, 77), (56, 56), (30, 200)] * 3, strict=False)):
        with Image.open(source) as image:
            image.resize(size).convert("L" if i % 4 == 3 else "RGB").save(odd / f"{i}.png")
    images = sorted(str(p) for p in odd.iterdir())

    out = tmp_path / "predict.csv"
    assert cli(["predict", f"ckpt={ckpt}", f"images=[{odd}]", f"out={out}", "device=cpu"], tmp_path) == 0
    predicted = {row["path"]: (row["class_1"], row["prob_1"]) for _, row in pd.read_csv(out).iterrows()}
    run = subprocess.run(
        [sys.executable, str(SCRIPT), str(ckpt.parent / "model.onnx"), *images],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    lines = [line.split("\t") for line in run.stdout.splitlines()]
    assert [line[0] for line in lines] == images
    for path, label, prob in lines:
        expected_label, expected_prob = predicted[path]
        assert label == expected_label, path
        assert float(prob) == pytest.approx(expected_prob, abs=1e-3), path
