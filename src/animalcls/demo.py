"""The embedded demo set: small procedurally drawn 'animals', generated deterministically.

Six classes that differ in shape, colour and texture, drawn with random position, size, hue jitter
and background noise, so that the base CNN has something real to learn and a few epochs on a CPU
beat chance (1/6) clearly. Same seed, same bytes: every machine gets the same demo data.

The stand-in (`data=standin`): a set of Animals-151's shape for timing, drawn the same way: 151
classes, 6,270 images of 224 x 224 px (JPEG), as many per class as an even split allows
(`standin_counts`), so that decode, epoch and evaluation times match the paper's set.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image, ImageDraw

log = logging.getLogger(__name__)

# class name -> (shape, base RGB colour, texture)
CLASSES = {
    "ember-fox": ("circle", (220, 70, 40), "plain"),
    "reef-fish": ("triangle", (40, 110, 220), "stripes"),
    "moss-frog": ("square", (60, 170, 60), "dots"),
    "sand-snake": ("ring", (210, 190, 90), "plain"),
    "plum-bird": ("diamond", (150, 60, 170), "stripes"),
    "slate-bear": ("square", (90, 90, 100), "plain"),
}
IMAGES_PER_CLASS = 60
SIZE = 96
MARKER = ".animalcls-demo-v1"


def _texture(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], kind: str, rng: np.random.Generator) -> None:
    x0, y0, x1, y1 = box
    if kind == "stripes":
        step = int(rng.integers(5, 9))
        for x in range(x0, x1, step):
            draw.line([(x, y0), (x, y1)], fill=(245, 245, 245), width=2)
    elif kind == "dots":
        for _ in range(12):
            cx, cy = int(rng.integers(x0, max(x0 + 1, x1))), int(rng.integers(y0, max(y0 + 1, y1)))
            draw.ellipse([cx - 2, cy - 2, cx + 2, cy + 2], fill=(20, 20, 20))


def _draw(
    shape: str, colour: tuple[int, int, int], texture: str, rng: np.random.Generator, size: int = SIZE
) -> Image.Image:
    from PIL import Image, ImageDraw

    background = rng.integers(40, 215, size=3)
    noise = rng.normal(0, 18, size=(size, size, 3))
    pixels = np.clip(background + noise, 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    r = int(rng.integers(size // 5, size // 3))
    cx, cy = (int(v) for v in rng.integers(r, size - r, size=2))
    fill = tuple(int(np.clip(c + rng.integers(-30, 31), 0, 255)) for c in colour)
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "ring":
        draw.ellipse(box, outline=fill, width=max(3, r // 3))
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx - r, cy), (cx, cy + r), (cx + r, cy)], fill=fill)
    _texture(draw, box, texture, rng)
    return image


def ensure_demo_data(root: str | Path, images_per_class: int = IMAGES_PER_CLASS, seed: int = 0) -> Path:
    """Generate the demo ImageFolder tree under `root` unless a complete one is already there."""
    root = Path(root)
    marker = root / MARKER
    if marker.exists():
        return root
    from filelock import FileLock

    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / ".generate.lock"), timeout=600):  # parallel jobs: one generates
        if not marker.exists():
            _generate(root, marker, images_per_class, seed)
    return root


def _generate(root: Path, marker: Path, images_per_class: int, seed: int) -> None:
    log.info("generating the demo data set under %s (%d classes x %d images)", root, len(CLASSES), images_per_class)
    for index, (name, (shape, colour, texture)) in enumerate(CLASSES.items()):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng([seed, index])
        for i in range(images_per_class):
            image = _draw(shape, colour, texture, rng)
            if i % 20 == 7:  # real sets have grayscale JPEGs; the loader must cope
                image = image.convert("L")
            image.save(folder / f"{name}_{i:03d}.jpg", quality=90)
    marker.write_text("complete\n")


# ---------------------------------------------------------------- the stand-in for Animals-151

STANDIN_CLASSES = 151
STANDIN_IMAGES = 6270  # Animals-151's size: the paper's split gives 5,330 / 313 / 627
STANDIN_SIZE = 224
STANDIN_MARKER = ".animalcls-standin-v1"
_SHAPES = ("circle", "triangle", "square", "ring", "diamond")
_TEXTURES = ("plain", "stripes", "dots")


def standin_counts(classes: int = STANDIN_CLASSES, total: int = STANDIN_IMAGES) -> list[int]:
    """Images per class, as even as `total` allows: the first total % classes classes get one more
    (Animals-151's shape: 79 classes of 42 and 72 of 41, 6,270 in all)."""
    if classes < 1 or total < classes:
        raise ValueError(f"{total} images cannot fill {classes} classes")
    base, extra = divmod(total, classes)
    return [base + (i < extra) for i in range(classes)]


def _standin_class(index: int) -> tuple[str, tuple[int, int, int], str]:
    """Class `index`'s shape, colour (hues around the wheel) and texture: every class differs."""
    import colorsys

    hue = (index * 0.618033988749895) % 1.0  # golden-ratio steps: neighbours far apart in hue
    rgb = colorsys.hsv_to_rgb(hue, 0.75, 0.85)
    colour = (int(rgb[0] * 255), int(rgb[1] * 255), int(rgb[2] * 255))
    return _SHAPES[index % len(_SHAPES)], colour, _TEXTURES[(index // len(_SHAPES)) % len(_TEXTURES)]


def ensure_standin_data(
    root: str | Path, counts: list[int] | None = None, size: int = STANDIN_SIZE, seed: int = 0, workers: int = 1
) -> Path:
    """Generate the stand-in ImageFolder tree under `root` unless a complete one is there: one
    folder per class (`standin_000` ...), `counts[i]` JPEGs of size x size in class i (default:
    Animals-151's shape). Deterministic: each class draws from its own seeded generator, so
    `workers` threads give the same bytes as one."""
    root = Path(root)
    counts = standin_counts() if counts is None else list(counts)
    spec = f"classes={len(counts)} images={sum(counts)} size={size} seed={seed} counts={','.join(map(str, counts))}\n"
    marker = root / STANDIN_MARKER
    if not marker.exists():
        from filelock import FileLock

        root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(root / ".generate.lock"), timeout=1800):  # parallel jobs: one generates
            if not marker.exists():
                from animalcls.atomic import write_text_atomic

                _generate_standin(root, counts, size, seed, max(1, workers))
                write_text_atomic(marker, spec)  # whole or absent: readers outside the lock check it
    if marker.read_text() != spec:
        from animalcls.errors import AnimalclsError

        raise AnimalclsError(
            f"{root} holds another stand-in ({marker.read_text().strip()[:80]}); remove it or choose another root"
        )
    return root


def _generate_standin(root: Path, counts: list[int], size: int, seed: int, workers: int) -> None:
    from concurrent.futures import ThreadPoolExecutor

    log.info(
        "generating the stand-in data set under %s (%d classes, %d images, %d px)", root, len(counts), sum(counts), size
    )

    def one_class(index: int) -> None:
        shape, colour, texture = _standin_class(index)
        folder = root / f"standin_{index:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng([seed, 151, index])
        for i in range(counts[index]):
            image = _draw(shape, colour, texture, rng, size)
            if i % 20 == 7:  # real sets have grayscale JPEGs
                image = image.convert("L")
            image.save(folder / f"standin_{index:03d}_{i:03d}.jpg", quality=90)

    # JPEG encoding releases the GIL: threads help, and need no process start-up or pickling
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(one_class, range(len(counts))))


def make_image_folder(root: Path, classes: int = 3, per_class: int = 12, size: int = 40, seed: int = 0) -> Path:
    """A tiny learnable ImageFolder tree for tests and soaks: each class is a different dominant
    colour, with noise (the same arguments always give the same files)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    palette = [(220, 40, 40), (40, 200, 40), (40, 40, 220), (220, 220, 40), (200, 40, 200), (40, 200, 200)]
    for c in range(classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(np.array(palette[c % len(palette)]) + rng.normal(0, 30, (size, size, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(folder / f"img_{i:03d}.jpg", quality=90)
    return root
