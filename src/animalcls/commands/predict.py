"""`animalcls predict ckpt=PATH|RUN_DIR images=[a.jpg,folder/] [out=PATH.csv] [format=topk|submission]
[tta=false] [device=auto] [eval_batch_size=N] [workers=N]`

Prints each image's path and its top-5 classes with probabilities. A folder is searched
recursively for images (hidden files and folders skipped, sorted). Images are decoded and
classified `eval_batch_size` at a time (64 when it is 0) on the best device (device=auto: CUDA when
there is one), so memory stays bounded however many there are; an unreadable image is skipped
with a warning naming it.

  out=PATH.csv       also write the predictions as a CSV (written whole at the end, atomically):
                     format=topk (default): path, class_1, prob_1, ..., class_5, prob_5
                     format=submission: id,label (id: the file name without its extension)
  tta=true           average the softmax of each image and of its horizontal mirror
  ckpt=[a.pt,b.pt]   an ensemble: the mean of the checkpoints' probabilities (they must have the
                     same classes, in the same order; each decodes at its own input size)
"""

from __future__ import annotations

import csv
import io
import logging
import os
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.core.override_parser.types import OverrideType
from omegaconf import DictConfig

from animalcls import build, checkpoint
from animalcls.atomic import write_text_atomic
from animalcls.augment import DeviceAugment
from animalcls.build import choose_precision, resolve_device
from animalcls.commands import checked_overrides, overlay, parse_overrides, split_options
from animalcls.data import IMAGE_EXTENSIONS, decode_uint8
from animalcls.errors import AnimalclsError
from animalcls.steps import StepSettings

log = logging.getLogger(__name__)

ACCEPTED = ("ckpt", "images", "device", "workers", "eval_batch_size", "out", "format", "tta")
OWN = ("ckpt", "out", "format", "tta")  # predict's own options (not config keys, or not as typed)
FORMATS = ("topk", "submission")
DEFAULT_BATCH = 64
TOP = 5


@dataclass
class Member:
    """One checkpoint of the ensemble: its model and how its inputs are made."""

    path: str
    cfg: DictConfig
    model: torch.nn.Module
    augment: DeviceAugment
    settings: StepSettings

    @property
    def size(self) -> tuple[int, int]:
        return int(self.cfg.aug.resize), int(self.cfg.aug.crop)


def main(args: list[str]) -> int:
    options, rest = split_options(single_image_as_list(args), "predict", OWN)
    given, keys = checked_overrides(rest, "predict", ACCEPTED)
    ckpts = checkpoint_paths(options.get("ckpt"))
    out, fmt, tta = output_options(options)
    files = image_files([str(entry) for entry in given.images])
    if out is not None:
        refuse_overwriting_inputs(out, [*ckpts, *files, str(given.results)])
    device = resolve_device(given.device)
    members, classes = load_members(ckpts, given, keys, device)
    batch_size = given.eval_batch_size or DEFAULT_BATCH
    skipped: list[tuple[str, str]] = []  # (path, why) of each unreadable image
    rows: list[tuple[str, list[float], list[int]]] = []
    for path, values, indices in classify(members, files, batch_size, max(1, given.workers), tta, skipped):
        print(path)
        for rank, (p, i) in enumerate(zip(values, indices), 1):
            print(f"  {rank}. {classes[i]:<30} {100 * p:6.2f}%")
        rows.append((path, values, indices))
    if not rows:
        path, why = skipped[0]
        detail = f"{path} is not a readable image ({why})"
        raise AnimalclsError(
            detail if len(skipped) == 1 else f"none of the {len(skipped)} images could be read; e.g. {detail}."
        )
    if skipped:
        log.warning("%d of %d images skipped as unreadable", len(skipped), len(files))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out, predictions_csv(rows, classes, fmt))
        log.info("predictions of %d images written to %s (format=%s)", len(rows), out, fmt)
    return 0


def single_image_as_list(args: list[str]) -> list[str]:
    """`images=a.jpg` means one image; the config key is a list, so give Hydra `images=[a.jpg]`."""
    overrides = parse_overrides(args, "predict")
    return [
        f"images=[{o.get_value_element_as_str()}]"
        if o.key_or_group == "images" and o.type == OverrideType.CHANGE and not isinstance(o.value(), list)
        else arg
        for arg, o in zip(args, overrides)
    ]


def checkpoint_paths(value: Any) -> list[str]:
    values = value if isinstance(value, list) else [value]
    if value is None or not values or any(not isinstance(v, str) or not v for v in values):
        raise AnimalclsError(
            "give the checkpoint to use: ckpt=outputs/runs/<date>/<run>/best.pt, or several for an "
            "ensemble: ckpt=[a.pt,b.pt]"
        )
    # a run dir means its best.pt (else last.pt)
    return list(dict.fromkeys(str(checkpoint.locate(v)) for v in values))


def refuse_overwriting_inputs(out: Path, inputs: list[str]) -> None:
    """out= must not be a checkpoint, an image or the results table (through a link or `..` too):
    the CSV would replace it, and the predictions are written only after every image is read."""
    target = os.path.realpath(out)
    clash = next((i for i in inputs if os.path.realpath(i) == target), None)
    if clash is not None:
        raise AnimalclsError(
            f"out={out} is {clash}, an input of this command; give another file, e.g. out=predictions.csv"
        )


def output_options(options: dict[str, Any]) -> tuple[Path | None, str, bool]:
    """out=, format= and tta=, checked before any work (an unwritable out= fails now, not at the end)."""
    fmt, tta = options.get("format", "topk"), options.get("tta", False)
    if fmt not in FORMATS:
        raise AnimalclsError(f"format={fmt!r} is not known; choose one of: {', '.join(FORMATS)}.")
    if not isinstance(tta, bool):
        raise AnimalclsError(f"tta is true or false (got {tta!r}).")
    if "out" not in options:
        if "format" in options:
            raise AnimalclsError(f"format={fmt} describes the file out= writes: add out=predictions.csv.")
        return None, fmt, tta
    if not isinstance(options["out"], str) or not options["out"]:
        raise AnimalclsError(f"out= takes a file path (got {options['out']!r}); e.g. out=predictions.csv")
    out = Path(options["out"])
    check_writable_file(out)
    return out, fmt, tta


def check_writable_file(out: Path) -> None:
    if out.is_dir():
        raise AnimalclsError(f"out={out} is a folder; give a file, e.g. out={out / 'predictions.csv'}")
    folder = next((p for p in (out.parent, *out.parent.parents) if p.exists()), Path("."))
    if not folder.is_dir():
        raise AnimalclsError(f"cannot write out={out}: {folder} is a file, not a folder.")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise AnimalclsError(f"cannot write out={out}: {exc.strerror or exc} ({folder}).") from None


def load_members(
    ckpts: list[str], given: DictConfig, keys: list[str], device: torch.device
) -> tuple[list[Member], list[str]]:
    """Each checkpoint's model, with the run settings given on top; they must share classes."""
    members: list[Member] = []
    classes: list[str] = []
    for path in ckpts:
        run_cfg, its_classes, model = build.model_from_checkpoint(checkpoint.read(path), path)
        if members and its_classes != classes:
            raise AnimalclsError(
                f"ckpt {path} has {len(its_classes)} classes ({_preview(its_classes)}) but {ckpts[0]} has "
                f"{len(classes)} ({_preview(classes)}): an ensemble needs checkpoints of the same classes, "
                f"in the same order."
            )
        classes = its_classes
        cfg = overlay(run_cfg, given, keys)
        precision = choose_precision(cfg.get("amp", "auto"), device, cfg.model.name, cfg.batch_size)  # as the run chose
        members.append(
            Member(
                path,
                cfg,
                model.to(device).eval(),
                DeviceAugment(cfg.aug, train=False),
                StepSettings(device, precision, progress=False),
            )
        )
    return members, classes


def _preview(classes: list[str]) -> str:
    return ", ".join(classes[:3]) + (", ..." if len(classes) > 3 else "")


def image_files(entries: list[str]) -> list[str]:
    """The files named (as typed) and the images found in the folders named, in the order given."""
    if not entries:
        raise AnimalclsError("give images to classify: images=[a.jpg,b.jpg] or images=folder/")
    files: list[str] = []
    for entry in entries:
        path = Path(entry)
        if path.is_dir():
            found = images_under(path)
            if not found:
                raise AnimalclsError(
                    f"folder {entry} has no images ({', '.join(IMAGE_EXTENSIONS)}), "
                    f"hidden files and folders not counted."
                )
            files += found
        elif path.is_file():
            files.append(entry)  # named explicitly: tried whatever its suffix
        else:
            raise AnimalclsError(f"image {entry} does not exist.")
    return list(dict.fromkeys(files))


def images_under(folder: Path) -> list[str]:
    found = []
    for parent, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]  # pruned, so never walked
        found += [
            os.path.join(parent, n)
            for n in names
            if not n.startswith(".") and Path(n).suffix.lower() in IMAGE_EXTENSIONS
        ]
    return sorted(found)


def classify(
    members: list[Member],
    files: list[str],
    batch_size: int,
    workers: int,
    tta: bool,
    skipped: list[tuple[str, str]],
) -> Iterator[tuple[str, list[float], list[int]]]:
    """(path, top probabilities, top class indices) per readable image, one batch decoded at a
    time (once per input size among the members); unreadable ones are appended to `skipped`."""
    sizes = list(dict.fromkeys(m.size for m in members))
    with ThreadPoolExecutor(workers) as pool:
        for start in range(0, len(files), batch_size):
            chunk = files[start : start + batch_size]
            decoded = {size: list(pool.map(lambda p, s=size: _decode(p, *s), chunk)) for size in sizes}
            bad = {p: d for size in sizes for p, d in zip(chunk, decoded[size]) if isinstance(d, str)}
            for path, why in bad.items():
                log.warning("skipping %s: not a readable image (%s)", path, why)
                skipped.append((path, why))
            good = [p for p in chunk if p not in bad]
            if not good:
                continue
            batches = {
                size: torch.stack(
                    [d for p, d in zip(chunk, decoded[size]) if isinstance(d, torch.Tensor) and p not in bad]
                )
                for size in sizes
            }
            probs = torch.stack([member_probs(m, batches[m.size], tta) for m in members]).mean(0)
            top = probs.topk(min(TOP, probs.shape[1]), dim=1)
            yield from zip(good, top.values.tolist(), top.indices.tolist())


def member_probs(member: Member, images: torch.Tensor, tta: bool) -> torch.Tensor:
    """Class probabilities (on the CPU) of one checkpoint; with tta, averaged with the mirror's."""
    views = [images, images.flip(3)] if tta else [images]
    probs = [_softmax(member, view) for view in views]
    return torch.stack(probs).mean(0)


def _softmax(member: Member, images: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        with member.settings.autocast():
            logits: torch.Tensor = member.model(member.augment(images.to(member.settings.device)))
        return logits.float().softmax(dim=1).cpu()  # also right for the base CNN's log_softmax output


def _decode(path: str, resize: int, crop: int) -> torch.Tensor | str:
    try:
        return decode_uint8(Path(path), resize, crop)
    except Exception as exc:  # truncated, empty, not an image: skipped, not fatal
        return f"{type(exc).__name__}: {exc}"


def predictions_csv(rows: list[tuple[str, list[float], list[int]]], classes: list[str], fmt: str) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    if fmt == "submission":
        ids = [Path(path).stem for path, _, _ in rows]
        repeats = len(ids) - len(set(ids))
        if repeats:
            log.warning("%d ids repeat in the submission: the same file name in different folders", repeats)
        writer.writerow(["id", "label"])
        writer.writerows([id_, classes[indices[0]]] for id_, (_, _, indices) in zip(ids, rows))
        return buffer.getvalue()
    k = min(TOP, len(classes))
    writer.writerow(["path", *(f"{name}_{r}" for r in range(1, k + 1) for name in ("class", "prob"))])
    for path, values, indices in rows:
        writer.writerow([path, *(v for i, p in zip(indices, values) for v in (classes[i], f"{p:.6f}"))])
    return buffer.getvalue()
