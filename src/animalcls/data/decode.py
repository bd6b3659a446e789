"""Image files to pixels: any PIL mode to RGB, Resize + CenterCrop, uint8 CHW tensors, unreadable files."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image

from animalcls.data.scan import Dataset


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB for any PIL mode. 16-bit and float images are scaled to 8 bit first, because PIL's own
    convert("RGB") clips them: a 16-bit 30000 becomes 255, a float 0.5 becomes 0."""
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        image = Image.fromarray(_eight_bit(image))  # uint8 2-D array: mode "L"
    return image.convert("RGB")


def _eight_bit(image: Image.Image) -> npt.NDArray[np.uint8]:
    values = np.nan_to_num(np.asarray(image, dtype=np.float64))
    peak = float(values.max()) if values.size else 0.0
    if image.mode.startswith("I;16") or (image.mode == "I" and peak > 255):
        values = values / 257  # 65535 -> 255
    elif image.mode == "F" and peak <= 1.0:
        values = values * 255  # a float image in [0, 1]
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def decode(path: Path, resize: int, crop: int) -> Image.Image:
    """Open as RGB (grayscale, palette, 16-bit and float images are converted), then torchvision's
    Resize(resize) + CenterCrop(crop), pixel for pixel (tested), made of the same two PIL calls
    without torchvision's Python around them, which holds the GIL while the other decode threads
    wait (the cache build's 2-thread rate rose 1.17x with this and the threads' own writes:
    scripts/bench_build_revs.py). Images smaller than the crop are resized up, as torchvision's
    Resize does.
    """
    with Image.open(path) as image:
        rgb = to_rgb(image)
    return _center_crop(_resize_short_side(rgb, resize), crop)


def _resize_short_side(image: Image.Image, size: int) -> Image.Image:
    """torchvision's Resize(size) of a PIL image: the short side to `size`, the long side scaled
    and truncated (torchvision's `_compute_resized_output_size`), bilinear with PIL's antialiasing."""
    width, height = image.size
    long = int(size * max(width, height) / min(width, height))
    target = (size, long) if width <= height else (long, size)
    return image if target == (width, height) else image.resize(target, Image.Resampling.BILINEAR)


def _center_crop(image: Image.Image, crop: int) -> Image.Image:
    """torchvision's CenterCrop(crop): the offsets rounded half to even, as its `int(round(...))`."""
    width, height = image.size
    if crop > width or crop > height:  # torchvision pads first; configs keep crop <= resize
        import torchvision.transforms.functional as TF

        padded: Image.Image = TF.center_crop(image, crop)
        return padded
    top, left = int(round((height - crop) / 2.0)), int(round((width - crop) / 2.0))
    return image.crop((left, top, left + crop, top + crop))


def decode_chw(path: Path, resize: int, crop: int) -> npt.NDArray[np.uint8]:
    """`decode` as a contiguous uint8 [3, crop, crop] array, the decode cache's layout."""
    return np.ascontiguousarray(np.asarray(decode(path, resize, crop), dtype=np.uint8).transpose(2, 0, 1))


def decode_uint8(path: Path, resize: int, crop: int) -> torch.Tensor:
    """`decode` as a uint8 [3, crop, crop] tensor."""
    return torch.from_numpy(decode_chw(path, resize, crop))


def decode_or_reason(path: Path, resize: int, crop: int) -> npt.NDArray[np.uint8] | str:
    """`decode_chw`, or why the file could not be decoded."""
    try:
        return decode_chw(path, resize, crop)
    except Exception as exc:  # truncated, zero-byte, not an image: reported, not fatal
        return f"{type(exc).__name__}: {exc}"


def find_unreadable(data: Dataset, workers: int = 2) -> list[tuple[str, str]]:
    """For the PIL pipeline: fully decode each file once to find the ones that would crash later."""

    def check(rel: str) -> tuple[str, str] | None:
        try:
            with Image.open(data.root / rel) as image:
                image.load()
            return None
        except Exception as exc:
            return rel, f"{type(exc).__name__}: {exc}"

    with ThreadPoolExecutor(max(1, workers)) as pool:
        return [r for r in pool.map(check, data.paths) if r is not None]
