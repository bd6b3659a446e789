"""`animalcls export ckpt=PATH|RUN_DIR [out=DIR] [opset=17] [images=folder/] [repeats=50]`

Writes the checkpoint's model as ONNX (`model.onnx`, opset 17 by default) and as TorchScript
(`model.pt`, traced) beside the checkpoint, or in out=DIR. Both take a batch of any size (a dynamic
batch axis): input `images`, float32 N x 3 x crop x crop, normalised as in training (mean/std of the
run's augmentation, RGB, pixel/255); output `scores`, N x classes (log-probabilities for the base
CNN, logits for the torchvision models: softmax gives the probabilities either way).

Before anything is written, both exported models are run on a sample batch (the images given, else
fixed random pixels) at batch sizes 1 and 4, and their log-probabilities must match PyTorch's
within 1e-4 (max abs difference, printed). Then the CPU latency at batch 1 (median of `repeats`
calls) of PyTorch, TorchScript and onnxruntime is printed side by side. Needs
`pip install -e ".[export]"` (onnx, onnxruntime).
"""

from __future__ import annotations

import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from animalcls import build, checkpoint
from animalcls.augment import DeviceAugment
from animalcls.commands import split_options
from animalcls.commands.predict import image_files
from animalcls.data import decode_uint8
from animalcls.errors import AnimalclsError
from animalcls.registry import MODELS

log = logging.getLogger(__name__)

OPTIONS = {"ckpt": "PATH", "out": "DIR", "opset": "N", "images": "[a.jpg,folder/]", "repeats": "N"}
DEFAULT_OPSET, MIN_OPSET = 17, 13
TOLERANCE = 1e-4  # max |log-prob difference| between an exported model and PyTorch
SAMPLE = 4  # images in the sample batch
FILES = ("model.onnx", "model.pt")
INSTALL_HINT = 'pip install -e ".[export]"'


def main(args: list[str]) -> int:
    options, rest = split_options(args, "export", OPTIONS)
    if rest:
        raise AnimalclsError(
            f"export does not take {', '.join(a.partition('=')[0] + '=' for a in rest)}; it takes "
            + ", ".join(f"{k}={v}" for k, v in OPTIONS.items())
            + " (the model and its input size come from the checkpoint)."
        )
    ckpt, out, opset, repeats = _checked(options)
    loaded = checkpoint.read(ckpt)
    name = checkpoint.config_of(loaded).model.name
    if name not in MODELS:
        raise AnimalclsError(
            f"{ckpt} holds model={name}, which is not a registered model ({', '.join(MODELS.names())}): "
            f"this animalcls cannot rebuild it, so nothing was exported."
        )
    cfg, classes, model = build.model_from_checkpoint(loaded, ckpt)
    sample = sample_batch(cfg, options.get("images"))
    onnx, ort = _export_libraries()
    _check_writable(out)
    with tempfile.TemporaryDirectory(dir=out, prefix=".export-") as tmp:
        staged = Path(tmp)
        export_onnx(model, sample, staged / "model.onnx", opset)
        onnx.checker.check_model(str(staged / "model.onnx"))
        export_torchscript(model, sample, staged / "model.pt")
        session = ort.InferenceSession(str(staged / "model.onnx"), providers=["CPUExecutionProvider"])
        with _quiet_deprecations():
            scripted = torch.jit.load(str(staged / "model.pt"), map_location="cpu")  # type: ignore[no-untyped-call]  # torch leaves jit.load unannotated
        diffs = compare(model, scripted, session, sample)
        print(f"model {cfg.model.name}: {len(classes)} classes, input 3x{cfg.aug.crop}x{cfg.aug.crop}, opset {opset}")
        for what, diff in diffs.items():
            print(
                f"  {what:<12} max |log-prob - PyTorch's| = {diff:.2e}  (batch 1 and {SAMPLE}; tolerance {TOLERANCE:g})"
            )
        worst = max(diffs, key=lambda k: diffs[k])
        if diffs[worst] > TOLERANCE:
            print(
                f"animalcls export: {worst} differs from PyTorch by {diffs[worst]:.2e} > {TOLERANCE:g}: "
                "nothing written",
                file=sys.stderr,
            )
            return 1
        for file in FILES:
            os.replace(staged / file, out / file)
    print(f"written: {out / 'model.onnx'} (ONNX, opset {opset}), {out / 'model.pt'} (TorchScript, traced)")
    print(f"CPU latency, batch 1, median of {repeats} ({torch.get_num_threads()} threads):")
    for what, ms in latencies(model, scripted, session, sample[:1], repeats).items():
        print(f"  {what:<12} {ms:8.2f} ms")
    return 0


def _checked(options: dict[str, Any]) -> tuple[str, Path, int, int]:
    ckpt = options.get("ckpt", "")
    if not isinstance(ckpt, str) or not ckpt:
        raise AnimalclsError("give the checkpoint to export: ckpt=outputs/runs/<date>/<run>/best.pt")
    ckpt = str(checkpoint.locate(ckpt))  # a run dir means its best.pt (else last.pt)
    out = options.get("out", str(Path(ckpt).parent))
    opset, repeats = options.get("opset", DEFAULT_OPSET), options.get("repeats", 50)
    if not isinstance(out, str) or not out:
        raise AnimalclsError(f"out= takes a folder (got {out!r}).")
    if not isinstance(opset, int) or isinstance(opset, bool) or not MIN_OPSET <= opset <= 21:
        raise AnimalclsError(f"opset is an ONNX opset from {MIN_OPSET} to 21 (got {opset!r}); e.g. opset=17")
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise AnimalclsError(f"repeats is a whole number >= 1 (got {repeats!r}).")
    if any((Path(out) / f).resolve() == Path(ckpt).resolve() for f in FILES):
        raise AnimalclsError(f"the export would overwrite the checkpoint {ckpt}: give another out=DIR.")
    return ckpt, Path(out), opset, repeats


def _export_libraries() -> tuple[Any, Any]:
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise AnimalclsError(f"export needs onnx and onnxruntime ({exc}): {INSTALL_HINT}") from None
    return onnx, onnxruntime


def _check_writable(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise AnimalclsError(f"out={out} is a file; give a folder.")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise AnimalclsError(f"cannot write to out={out}: {exc.strerror or exc}.") from None


def sample_batch(cfg: DictConfig, images: Any) -> torch.Tensor:
    """SAMPLE normalised inputs: the images given (repeated to fill the batch), else random pixels."""
    crop = int(cfg.aug.crop)
    if images is None:
        pixels = torch.randint(0, 256, (SAMPLE, 3, crop, crop), generator=torch.Generator().manual_seed(0))
    else:
        entries = images if isinstance(images, list) else [images]
        files = image_files([str(e) for e in entries])[:SAMPLE]
        decoded = []
        for file in files:
            try:
                decoded.append(decode_uint8(Path(file), int(cfg.aug.resize), crop))
            except Exception as exc:
                raise AnimalclsError(f"{file} is not a readable image ({type(exc).__name__}: {exc}).") from None
        pixels = torch.stack([decoded[i % len(decoded)] for i in range(SAMPLE)])
    return DeviceAugment(cfg.aug, train=False)(pixels.to(torch.uint8))


@contextmanager
def _quiet_deprecations() -> Iterator[None]:
    """torch 2.9+ calls the TorchScript-based ONNX exporter and torch.jit.trace deprecated; they
    are the exporters that need no extra package (the dynamo exporter needs onnxscript)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # type: ignore[attr-defined]  # imported in torch.jit, missing from its __all__
        yield


def export_onnx(model: torch.nn.Module, sample: torch.Tensor, path: Path, opset: int) -> None:
    with _quiet_deprecations(), torch.no_grad():
        torch.onnx.export(
            model,
            (sample,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=["images"],
            output_names=["scores"],
            dynamic_axes={"images": {0: "batch"}, "scores": {0: "batch"}},
        )


def export_torchscript(model: torch.nn.Module, sample: torch.Tensor, path: Path) -> None:
    with _quiet_deprecations(), torch.no_grad():
        traced = torch.jit.trace(model, sample)  # type: ignore[no-untyped-call]  # torch leaves jit.trace unannotated
        traced.save(str(path))


def _log_probs(scores: Any) -> torch.Tensor:
    return torch.as_tensor(scores).float().log_softmax(dim=1)


def compare(model: torch.nn.Module, scripted: Any, session: Any, sample: torch.Tensor) -> dict[str, float]:
    """Max |log-prob difference| to PyTorch of each exported model, at batch 1 and SAMPLE."""
    diffs = {"onnxruntime": 0.0, "torchscript": 0.0}
    with torch.no_grad(), _quiet_deprecations():
        for batch in (sample[:1], sample):
            reference = _log_probs(model(batch))
            outputs = {
                "onnxruntime": _log_probs(session.run(None, {"images": batch.numpy()})[0]),
                "torchscript": _log_probs(scripted(batch)),
            }
            for what, got in outputs.items():
                if got.shape != reference.shape:
                    raise AnimalclsError(f"{what} gave shape {tuple(got.shape)} for {tuple(reference.shape)}")
                diffs[what] = max(diffs[what], float((got - reference).abs().max()))
    return diffs


def latencies(model: torch.nn.Module, scripted: Any, session: Any, one: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median milliseconds per call at batch 1 (after 3 untimed warm-up calls)."""
    feed = {"images": one.numpy()}
    calls: dict[str, Callable[[], Any]] = {
        "pytorch": lambda: model(one),
        "torchscript": lambda: scripted(one),
        "onnxruntime": lambda: session.run(None, feed),
    }
    result = {}
    with torch.inference_mode(), _quiet_deprecations():
        for what, call in calls.items():
            for _ in range(3):
                call()
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                call()
                times.append(time.perf_counter() - start)
            result[what] = 1000 * statistics.median(times)
    return result
