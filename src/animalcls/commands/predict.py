"""`animalcls predict ckpt=PATH images=[a.jpg,folder/] [device=auto] [eval_batch_size=N] [workers=N]`

Prints each image's path and its top-5 classes with probabilities. A folder is searched
recursively for images (hidden files and folders skipped, sorted). Images are decoded and
classified `eval_batch_size` at a time (64 when it is 0), so memory stays bounded however many
there are; an unreadable image is skipped with a warning naming it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from hydra.core.override_parser.types import OverrideType
from omegaconf import DictConfig

from animalcls import checkpoint
from animalcls.augment import DeviceAugment
from animalcls.build import choose_precision, resolve_device
from animalcls.commands import checked_overrides, overlay, parse_overrides
from animalcls.data import IMAGE_EXTENSIONS, decode_uint8
from animalcls.engine import StepSettings
from animalcls.errors import AnimalclsError

log = logging.getLogger(__name__)

ACCEPTED = ("ckpt", "images", "device", "workers", "eval_batch_size")
DEFAULT_BATCH = 64
TOP = 5


def main(args: list[str]) -> int:
    given, keys = checked_overrides(single_image_as_list(args), "predict", ACCEPTED)
    loaded = checkpoint.read(given.ckpt)
    run_cfg, classes, model = checkpoint.model_from(loaded, given.ckpt)
    cfg = overlay(run_cfg, given, keys)
    files = image_files([str(entry) for entry in given.images])
    device = resolve_device(cfg.device)
    skipped: list[tuple[str, str]] = []  # (path, why) of each unreadable image
    printed = 0
    for path, values, indices in classify(cfg, model.to(device), files, device, skipped):
        print(path)
        for rank, (p, i) in enumerate(zip(values, indices), 1):
            print(f"  {rank}. {classes[i]:<30} {100 * p:6.2f}%")
        printed += 1
    if not printed:
        path, why = skipped[0]
        detail = f"{path} is not a readable image ({why})"
        raise AnimalclsError(
            detail if len(skipped) == 1 else f"none of the {len(skipped)} images could be read; e.g. {detail}."
        )
    if skipped:
        log.warning("%d of %d images skipped as unreadable", len(skipped), len(files))
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
    cfg: DictConfig, model: torch.nn.Module, files: list[str], device: torch.device, skipped: list[tuple[str, str]]
) -> Iterator[tuple[str, list[float], list[int]]]:
    """(path, top probabilities, top class indices) per readable image, one batch decoded at a
    time; unreadable ones are appended to `skipped` with the reason."""
    batch_size = cfg.eval_batch_size or DEFAULT_BATCH
    augment = DeviceAugment(cfg.aug, train=False)
    settings = StepSettings(device, choose_precision(cfg.get("amp", "auto"), device, cfg.model.name), progress=False)
    model.eval()
    with ThreadPoolExecutor(max(1, cfg.workers)) as pool:
        for start in range(0, len(files), batch_size):
            chunk = files[start : start + batch_size]
            decoded = list(pool.map(lambda p: _decode(p, cfg.aug), chunk))
            good = [(p, image) for p, image in zip(chunk, decoded) if isinstance(image, torch.Tensor)]
            for path, why in ((p, d) for p, d in zip(chunk, decoded) if isinstance(d, str)):
                log.warning("skipping %s: not a readable image (%s)", path, why)
                skipped.append((path, why))
            if good:
                yield from zip([p for p, _ in good], *_top(model, augment, settings, [i for _, i in good]))


def _top(
    model: torch.nn.Module, augment: DeviceAugment, settings: StepSettings, images: list[torch.Tensor]
) -> tuple[list[list[float]], list[list[int]]]:
    with torch.inference_mode():
        with settings.autocast():
            logits = model(augment(torch.stack(images).to(settings.device)))
        probs = logits.float().softmax(dim=1)  # also right for the base CNN's log_softmax output
        top = probs.topk(min(TOP, probs.shape[1]), dim=1)
        return top.values.tolist(), top.indices.tolist()


def _decode(path: str, aug) -> torch.Tensor | str:
    try:
        return decode_uint8(Path(path), aug.resize, aug.crop)
    except Exception as exc:  # truncated, empty, not an image: skipped, not fatal
        return f"{type(exc).__name__}: {exc}"
