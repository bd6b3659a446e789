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
    """Open as RGB (grayscale, palette, 16-bit and float images are converted), Resize(short side) +
    CenterCrop. Images smaller than the crop are resized up, as torchvision's Resize does.
    """
    import torchvision.transforms.functional as TF

    with Image.open(path) as image:
        rgb = to_rgb(image)
    rgb = TF.resize(rgb, resize, interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    cropped: Image.Image = TF.center_crop(rgb, crop)
    return cropped


def decode_uint8(path: Path, resize: int, crop: int) -> torch.Tensor:
    """`decode` as a uint8 [3, crop, crop] tensor."""
    array = np.asarray(decode(path, resize, crop), dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def decode_or_reason(path: Path, resize: int, crop: int) -> torch.Tensor | str:
    """`decode_uint8`, or why the file could not be decoded."""
    try:
        return decode_uint8(path, resize, crop)
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
