"""`animalcls export ckpt=PATH|RUN_DIR [out=DIR] [opset=17] [images=folder/] [repeats=50] [probabilities=false]`

Writes the checkpoint's model as ONNX (`model.onnx`, opset 17 by default) and as TorchScript
(`model.pt`, traced) beside the checkpoint, or in out=DIR. Both take a batch of any size (a dynamic
batch axis): input `images`, float32 N x 3 x crop x crop, RGB, pixel/255 normalised with the run's
mean and std, after Resize(short side to `resize`, bilinear) + CenterCrop(`crop`).

ONNX outputs, each N x classes, in this order:
  scores         what earlier exports gave, unchanged (kept for existing users; prefer `logits`):
                 log-probabilities for the base CNN, raw logits for the torchvision models
  logits         log_softmax(scores), for every model: log-probabilities, which are logits (softmax
                 gives the probabilities, argmax the class) whose exp sums to 1 over the classes.
                 For a torchvision model they differ from its raw logits by one constant per image;
                 for the base CNN (whose forward ends in log_softmax) they equal `scores`
  probabilities  softmax(scores), only with probabilities=true
The TorchScript model returns one tensor: `logits` (`probabilities` with probabilities=true).

The file says all this itself: the ONNX model's metadata_props, and the TorchScript file's extra
file `animalcls.json` (torch.jit.load(path, _extra_files={"animalcls.json": ""})), hold `classes`
(JSON list, in output order), `resize`, `crop`, `mean`, `std` (JSON), `input`, `outputs`,
`model`, `run_id` and `animalcls_version`; scripts/onnx_classify.py classifies images with
onnxruntime, numpy and PIL from these alone.

Before anything is written, both exported models are run on a sample batch (the images given, else
fixed random pixels) at batch sizes 1 and 4, and their log-probabilities must match PyTorch's
within 1e-4 (max abs difference, printed). Then the CPU latency at batch 1 (median of `repeats`
calls) of PyTorch, TorchScript and onnxruntime is printed side by side. Needs
`pip install -e ".[export]"` (onnx, onnxruntime).
"""

from __future__ import annotations

import json
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

OPTIONS = {
    "ckpt": "PATH",
    "out": "DIR",
    "opset": "N",
    "images": "[a.jpg,folder/]",
    "repeats": "N",
    "probabilities": "true|false",
}
DEFAULT_OPSET, MIN_OPSET = 17, 13
TOLERANCE = 1e-4  # max |log-prob difference| between an exported model and PyTorch
SAMPLE = 4  # images in the sample batch
FILES = ("model.onnx", "model.pt")
EXTRA_FILE = "animalcls.json"  # the TorchScript file's metadata, as JSON
OUTPUTS_DOC = {
    "scores": "the model's own output, as earlier exports gave it (prefer logits): log-probabilities "
    "for the base CNN, raw logits for the torchvision models",
    "logits": "log_softmax(scores) for every model: log-probabilities, i.e. logits normalised so that "
    "softmax(logits) = exp(logits); argmax is the class. A torchvision model's raw logits differ "
    "from them by one constant per image; the base CNN's output already is log_softmax",
    "probabilities": "softmax(scores): each row sums to 1",
}
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
    with_probabilities = _flag(options, "probabilities")
    loaded = checkpoint.read(ckpt)
    name = checkpoint.config_of(loaded).model.name
    if name not in MODELS:
        raise AnimalclsError(
            f"{ckpt} holds model={name}, which is not a registered model ({', '.join(MODELS.names())}): "
            f"this animalcls cannot rebuild it, so nothing was exported."
        )
    cfg, classes, model = build.model_from_checkpoint(loaded, ckpt)
    metadata = export_metadata(cfg, classes, str(loaded["meta"].get("run_id", "")), with_probabilities)
    sample = sample_batch(cfg, options.get("images"))
    onnx, ort = _export_libraries()
    _check_writable(out)
    with tempfile.TemporaryDirectory(dir=out, prefix=".export-") as tmp:
        staged = Path(tmp)
        export_onnx(model, sample, staged / "model.onnx", opset, with_probabilities)
        add_onnx_metadata(onnx, staged / "model.onnx", metadata)
        onnx.checker.check_model(str(staged / "model.onnx"))
        export_torchscript(model, sample, staged / "model.pt", metadata, with_probabilities)
        session = ort.InferenceSession(str(staged / "model.onnx"), providers=["CPUExecutionProvider"])
        with _quiet_deprecations():
            scripted = torch.jit.load(str(staged / "model.pt"), map_location="cpu")  # type: ignore[no-untyped-call]
        diffs = compare(model, scripted, session, sample, with_probabilities)
        print(f"model {cfg.model.name}: {len(classes)} classes, input 3x{cfg.aug.crop}x{cfg.aug.crop}, opset {opset}")
        print(f"  outputs: ONNX {', '.join(metadata['outputs'])}; TorchScript {metadata['torchscript_output']}")
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
    print(
        f"  classes, input size, mean/std and outputs are in their metadata; classify with: "
        f"python scripts/onnx_classify.py {out / 'model.onnx'} IMAGE..."
    )
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


def _flag(options: dict[str, Any], key: str) -> bool:
    value = options.get(key, False)
    if not isinstance(value, bool):
        raise AnimalclsError(f"{key} is true or false (got {value!r}).")
    return value


def export_metadata(cfg: DictConfig, classes: list[str], run_id: str, with_probabilities: bool) -> dict[str, Any]:
    """What a user of the exported file alone needs: classes, input size and normalisation, outputs."""
    from importlib.metadata import PackageNotFoundError, version

    import animalcls

    try:
        installed = version("animalcls")
    except PackageNotFoundError:
        installed = animalcls.__version__
    outputs = ["scores", "logits", *(["probabilities"] if with_probabilities else [])]
    crop = int(cfg.aug.crop)
    return {
        "classes": list(classes),
        "resize": int(cfg.aug.resize),
        "crop": crop,
        "mean": [float(v) for v in cfg.aug.mean],
        "std": [float(v) for v in cfg.aug.std],
        "input": f"images: float32 N x 3 x {crop} x {crop}, RGB; an image is resized (short side to resize, "
        f"bilinear), centre-cropped to crop x crop, then (pixel / 255 - mean) / std per channel",
        "outputs": {name: OUTPUTS_DOC[name] for name in outputs},
        "torchscript_output": "probabilities" if with_probabilities else "logits",
        "model": str(cfg.model.name),
        "run_id": run_id,
        "animalcls_version": installed,
    }


def _as_strings(metadata: dict[str, Any]) -> dict[str, str]:
    """ONNX metadata values are strings: the text ones as they are, the rest as JSON."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items()}


def add_onnx_metadata(onnx: Any, path: Path, metadata: dict[str, Any]) -> None:
    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in _as_strings(metadata).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.doc_string = "animalcls export: see the metadata_props for the classes, the input and the outputs"
    onnx.save(model, str(path))


class Outputs(torch.nn.Module):
    """The exported graph: the model's scores, their log_softmax (logits) and, optionally, softmax."""

    def __init__(self, model: torch.nn.Module, with_probabilities: bool, only: str | None = None) -> None:
        super().__init__()
        self.model, self.with_probabilities, self.only = model, with_probabilities, only

    def forward(self, images: torch.Tensor) -> Any:
        scores = self.model(images)
        logits = scores.float().log_softmax(dim=1)
        if self.only == "logits":
            return logits
        if self.only == "probabilities":
            return logits.exp()
        if self.with_probabilities:
            return scores, logits, scores.float().softmax(dim=1)
        return scores, logits


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
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)  # type: ignore[attr-defined]
        yield


def export_onnx(
    model: torch.nn.Module, sample: torch.Tensor, path: Path, opset: int, with_probabilities: bool = False
) -> None:
    outputs = ["scores", "logits", *(["probabilities"] if with_probabilities else [])]
    with _quiet_deprecations(), torch.no_grad():
        torch.onnx.export(
            Outputs(model, with_probabilities).eval(),
            (sample,),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=["images"],
            output_names=outputs,
            dynamic_axes={"images": {0: "batch"}, **{name: {0: "batch"} for name in outputs}},
        )


def export_torchscript(
    model: torch.nn.Module,
    sample: torch.Tensor,
    path: Path,
    metadata: dict[str, Any] | None = None,
    with_probabilities: bool = False,
) -> None:
    only = "probabilities" if with_probabilities else "logits"
    extra = {EXTRA_FILE: json.dumps(metadata or {}, indent=1)}
    with _quiet_deprecations(), torch.no_grad():
        traced: Any = torch.jit.trace(Outputs(model, with_probabilities, only).eval(), sample)  # type: ignore[no-untyped-call]
        traced.save(str(path), _extra_files=extra)


def _log_probs(scores: Any) -> torch.Tensor:
    return torch.as_tensor(scores).float().log_softmax(dim=1)


def compare(
    model: torch.nn.Module, scripted: Any, session: Any, sample: torch.Tensor, with_probabilities: bool = False
) -> dict[str, float]:
    """Max difference to PyTorch of each exported model, at batch 1 and SAMPLE, over every output:
    |log-prob difference| for `scores` (after log_softmax) and `logits`, |probability difference|
    for `probabilities` (never more than the log-probabilities' difference, as both are <= 0)."""
    diffs = {"onnxruntime": 0.0, "torchscript": 0.0}
    with torch.no_grad(), _quiet_deprecations():
        for batch in (sample[:1], sample):
            reference = _log_probs(model(batch))
            onnx_outputs = [torch.as_tensor(o).float() for o in session.run(None, {"images": batch.numpy()})]
            pairs = [
                ("onnxruntime", _log_probs(onnx_outputs[0]), reference),
                ("onnxruntime", onnx_outputs[1], reference),
            ]
            if with_probabilities:
                pairs.append(("onnxruntime", onnx_outputs[2], reference.exp()))
                pairs.append(("torchscript", scripted(batch).float(), reference.exp()))
            else:
                pairs.append(("torchscript", scripted(batch).float(), reference))
            for what, got, expected in pairs:
                if got.shape != expected.shape:
                    raise AnimalclsError(f"{what} gave shape {tuple(got.shape)} for {tuple(expected.shape)}")
                diffs[what] = max(diffs[what], float((got - expected).abs().max()))
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
