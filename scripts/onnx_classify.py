"""Classify images with an `animalcls export`ed model.onnx and nothing of animalcls or torch:
onnxruntime, numpy and PIL only. The class names, the input size and the mean/std come from the
model's own metadata.

    python scripts/onnx_classify.py outputs/runs/<date>/<run>/model.onnx cat.jpg dog.png

prints, per image: its path, the top-1 class and its probability (tab-separated).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import numpy as np
import onnxruntime as ort
from PIL import Image


def preprocess(path: str, resize: int, crop: int, mean: list[float], std: list[float]) -> np.ndarray[Any, Any]:
    """What training's evaluation does: RGB, short side to `resize` (bilinear), centre crop,
    pixel / 255, then (x - mean) / std per channel; 1 x 3 x crop x crop float32."""
    with Image.open(path) as image:
        rgb = image.convert("RGB")  # (animalcls also scales 16-bit and float images to 8 bit first)
    width, height = rgb.size
    short, long = min(width, height), max(width, height)
    if short != resize:
        scaled = int(resize * long / short)
        size = (resize, scaled) if width <= height else (scaled, resize)
        rgb = rgb.resize(size, Image.Resampling.BILINEAR)
    width, height = rgb.size
    left, top = int(round((width - crop) / 2.0)), int(round((height - crop) / 2.0))
    rgb = rgb.crop((left, top, left + crop, top + crop))
    pixels = np.asarray(rgb, dtype=np.float32) / np.float32(255)  # crop x crop x 3
    normalised = (pixels - np.array(mean, dtype=np.float32)) / np.array(std, dtype=np.float32)
    return normalised.transpose(2, 0, 1)[None].astype(np.float32)


def main(model_path: str, images: list[str]) -> None:
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    metadata = session.get_modelmeta().custom_metadata_map  # str -> str; these are JSON
    meta = {key: json.loads(metadata[key]) for key in ("classes", "resize", "crop", "mean", "std")}
    classes: list[str] = meta["classes"]
    for path in images:
        batch = preprocess(path, meta["resize"], meta["crop"], meta["mean"], meta["std"])
        (logits,) = session.run(["logits"], {"images": batch})  # log-probabilities, for every model
        probabilities = np.exp(logits[0])
        best = int(probabilities.argmax())
        print(f"{path}\t{classes[best]}\t{probabilities[best]:.4f}")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])
