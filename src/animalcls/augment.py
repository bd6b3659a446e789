"""Batched augmentation and normalisation on the device, after the decode-once cache.

Each sample of each batch draws its own augmentation from the device's RNG (torch's default
generator, so seeding and resume hold), so every epoch sees fresh augmentation although the pixels
were decoded once. Input uint8 NCHW, output float32 [N,3,crop,crop], normalised. Nothing here reads a
tensor value back to the host: no per-batch synchronisation.

The paper's path (flip + rotation, options `hflip`, `rotation`) is the one below in `_paper`, kept
op for op and draw for draw, and used whenever none of the modern options is on:

- `cache_size` (0 = off): the cache holds the image's short side resized to cache_size and centre
  cropped to a cache_size square (`cache_side`, `cache_decode_size`), so a random crop has real
  pixels around it. Evaluation, and training without a random crop, take the paper's view from it:
  Resize(resize) + CenterCrop(crop), i.e. the centred region of side cache_size*crop/resize
  resampled (bilinear, antialiased) to crop x crop.
- `rrc_scale` ([1, 1] = off), `rrc_ratio` ([3/4, 4/3]): a per-sample random-resized crop.
- `color_jitter` (0 = off): per-sample brightness, contrast, saturation factors ~ U(1-s, 1+s).
- `trivial_augment` (false = off): TrivialAugmentWide, one op per sample.

With a random crop or TrivialAugment, the geometry (crop, scale, flip, rotation, TrivialAugment's
shear/translate/rotate) is ONE affine_grid + grid_sample per batch (`compose_theta`).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

# TrivialAugmentWide's ops, in torchvision's order; geometric ones go into the fused affine.
TRIVIAL_OPS = (
    "identity",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
    "rotate",
    "brightness",
    "color",
    "contrast",
    "sharpness",
    "posterize",
    "solarize",
    "autocontrast",
    "equalize",
)
_OP = {name: i for i, name in enumerate(TRIVIAL_OPS)}
TRIVIAL_BINS = 31  # torchvision's num_magnitude_bins
_SIGNED = ("shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness", "color", "contrast", "sharpness")
_GRAY = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights


def _option(aug: Any, name: str, default: Any) -> Any:
    """aug.<name>, or the default for configs written before the option existed (or set to null)."""
    value = getattr(aug, name, default)
    return default if value is None else value


def cache_side(aug: Any) -> int:
    """The side of the square the decode cache must hold: cache_size when > 0, else crop (as before)."""
    size = int(_option(aug, "cache_size", 0))
    return size if size > 0 else int(aug.crop)


def needs_large_cache(aug: Any) -> bool:
    """True when the cache holds cache_size squares instead of the paper's crop x crop view."""
    return int(_option(aug, "cache_size", 0)) > 0


def cache_decode_size(aug: Any) -> tuple[int, int]:
    """The (resize, crop) arguments for data.decode / data.load_cache: the paper's (resize, crop),
    or (cache_size, cache_size): short side resized to cache_size, centre-cropped to a square."""
    if needs_large_cache(aug):
        return cache_side(aug), cache_side(aug)
    return int(aug.resize), int(aug.crop)


class TrivialDraw(NamedTuple):
    """One TrivialAugmentWide draw per sample: the op (index into TRIVIAL_OPS) and its signed magnitude."""

    op: torch.Tensor  # [N] int64
    magnitude: torch.Tensor  # [N] float32


class DeviceAugment:
    """uint8 NCHW batches in, normalised float32 [N,3,crop,crop] out; `aug` is the `aug` config group.

    train=False: the paper's evaluation view only (from the cached square when cache_size > 0).
    cached=False (the `pil` pipeline): batches are already the paper's crop x crop view, so
    cache_size does not apply to them. Options missing from `aug` (older configs) are off.
    """

    def __init__(self, aug: Any, train: bool, channels_last: bool = False, cached: bool = True) -> None:
        self.hflip = float(aug.hflip) if train else 0.0
        self.rotation = float(aug.rotation) if train else 0.0
        self.mean = torch.tensor(list(aug.mean)).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(list(aug.std)).view(1, 3, 1, 1) * 255.0
        self.channels_last = channels_last
        self._stats: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        # the modern options; each off by default, and all off when not training (except the cache)
        self.resize, self.crop = int(aug.resize), int(aug.crop)
        self.cache_size = int(_option(aug, "cache_size", 0)) if cached else 0
        scale = tuple(float(v) for v in _option(aug, "rrc_scale", (1.0, 1.0)))
        ratio = tuple(float(v) for v in _option(aug, "rrc_ratio", (0.75, 4.0 / 3.0)))
        self.rrc_scale: tuple[float, float] = (scale[0], scale[1])
        self.rrc_ratio: tuple[float, float] = (ratio[0], ratio[1])
        self.random_crop = train and self.rrc_scale != (1.0, 1.0)
        self.color_jitter = float(_option(aug, "color_jitter", 0.0)) if train else 0.0
        self.trivial = bool(_option(aug, "trivial_augment", False)) if train else False
        self.fused = self.random_crop or self.trivial
        self.paper_path = not (self.cache_size > 0 or self.fused or self.color_jitter > 0)
        self._tables: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _mean_std(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        # copied to the device once: a per-batch host-to-device copy would synchronise CUDA
        if device not in self._stats:
            self._stats[device] = (self.mean.to(device), self.std.to(device))
        return self._stats[device]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.paper_path:
            return self._paper(images)
        return self._modern(images)

    def _paper(self, images: torch.Tensor) -> torch.Tensor:
        # Few passes over the batch, as each is a kernel launch on CUDA and a thread-pool round on
        # the CPU: flip the uint8 pixels (a quarter of the bytes), convert to float in the
        # model's memory format in one copy, then normalise in place.
        if self.hflip > 0:
            images = flip_random(images, self.hflip)
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        x = images.to(torch.float32, memory_format=layout, copy=True)
        if self.rotation > 0:
            x = rotate_random(x, self.rotation).contiguous(memory_format=layout)
        mean, std = self._mean_std(x.device)
        return x.sub_(mean).div_(std)  # ToTensor's /255 folded into mean and std

    def _modern(self, images: torch.Tensor) -> torch.Tensor:
        # Draws, in this order: TrivialAugment, then crop, flip, rotation (sample_theta), then colour jitter.
        if self.cache_size > 0 and tuple(images.shape[-2:]) != (self.cache_size, self.cache_size):
            raise ValueError(
                f"aug.cache_size={self.cache_size} expects {self.cache_size}x{self.cache_size} batches from the "
                f"decode cache, got {list(images.shape)}; decode with animalcls.augment.cache_decode_size(aug)."
            )
        n, device = images.shape[0], images.device
        # a random crop samples the whole cached square; otherwise the paper's centre view
        x = images.to(torch.float32) if self.random_crop else self.centre_view(images)
        draw = self.draw_trivial(n, device) if self.trivial else None
        if self.fused:
            theta = self.sample_theta(n, device, draw)
            grid = F.affine_grid(theta, [n, x.shape[1], self.crop, self.crop], align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        else:
            if self.hflip > 0:
                x = flip_random(x, self.hflip)
            if self.rotation > 0:
                x = rotate_random(x, self.rotation)
        if draw is not None:
            x = trivial_photometric(x, draw.op, draw.magnitude)
        if self.color_jitter > 0:
            x = color_jitter(x, self.color_jitter)
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        x = x.contiguous(memory_format=layout)
        mean, std = self._mean_std(x.device)
        return x.sub_(mean).div_(std)

    def centre_view(self, images: torch.Tensor) -> torch.Tensor:
        """The paper's Resize(resize) + CenterCrop(crop) as float [0, 255], from the cached square
        (cache_size > 0), or the batch itself as float (the cache already holds that view).

        The cached square is the original's short side resized to cache_size; resizing it to
        resize x resize (bilinear, antialiased, as torchvision's Resize) and centre-cropping crop
        (torchvision's rounding of the offset) takes the centred region of side
        cache_size*crop/resize to crop x crop."""
        x = images.to(torch.float32)
        if self.cache_size <= 0:
            return x
        if self.resize != self.cache_size:
            x = F.interpolate(x, size=(self.resize, self.resize), mode="bilinear", align_corners=False, antialias=True)
        top = int(round((self.resize - self.crop) / 2.0))
        return x[..., top : top + self.crop, top : top + self.crop]

    def draw_trivial(self, n: int, device: torch.device) -> TrivialDraw:
        """Per sample: an op uniformly from TRIVIAL_OPS, a magnitude bin uniformly from 31 (as
        torchvision's TrivialAugmentWide), and a random sign for the signed ops."""
        table, signed = self._trivial_tables(device)
        op = torch.randint(len(TRIVIAL_OPS), (n,), device=device)
        bin_ = torch.randint(TRIVIAL_BINS, (n,), device=device)
        negative = (torch.rand(n, device=device) < 0.5) & signed[op]
        magnitude = table[op, bin_]
        return TrivialDraw(op, torch.where(negative, -magnitude, magnitude))

    def _trivial_tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._tables:
            table, signed = trivial_magnitudes()
            self._tables[device] = (table.to(device), signed.to(device))
        return self._tables[device]

    def sample_theta(self, n: int, device: torch.device, trivial: TrivialDraw | None = None) -> torch.Tensor:
        """Draw this batch's random crop, flip and rotation and return the per-sample [N,2,3]
        sampling matrices (with TrivialAugment's geometric op when given), see compose_theta."""
        zeros2 = torch.zeros(n, 2, device=device)
        if self.random_crop:
            center, half = random_resized_crop(n, self.rrc_scale, self.rrc_ratio, device)
        else:  # the source is already the crop x crop centre view
            center, half = zeros2, torch.ones(n, 2, device=device)
        if self.hflip > 0:
            flip = torch.rand(n, device=device) < self.hflip
        else:
            flip = torch.zeros(n, dtype=torch.bool, device=device)
        if self.rotation > 0:
            angle = (torch.rand(n, device=device) * 2 - 1) * math.radians(self.rotation)
        else:
            angle = torch.zeros(n, device=device)
        shear, translate = zeros2, zeros2
        if trivial is not None:
            extra_angle, shear, translate = trivial_geometry(trivial, self.crop)
            angle = angle + extra_angle
        return compose_theta(center, half, flip, angle, shear, translate)


def flip_random(x: torch.Tensor, p: float) -> torch.Tensor:
    """Mirror each sample left-right with probability p."""
    mask = torch.rand(x.shape[0], device=x.device) < p
    return torch.where(mask.view(-1, 1, 1, 1), x.flip(3), x)


def rotate_random(x: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate each sample by its own angle in [-degrees, degrees]; corners filled with 0 (black),
    like torchvision's RandomRotation."""
    n = x.shape[0]
    angle = (torch.rand(n, device=x.device) * 2 - 1) * math.radians(degrees)
    cos, sin = torch.cos(angle), torch.sin(angle)
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


# ---------------------------------------------------------------- geometry


def _affine3(
    a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor, e: torch.Tensor, f: torch.Tensor
) -> torch.Tensor:
    """[N,3,3] from the per-sample rows [a b c; d e f; 0 0 1]."""
    zero, one = torch.zeros_like(a), torch.ones_like(a)
    return torch.stack([torch.stack([a, b, c], -1), torch.stack([d, e, f], -1), torch.stack([zero, zero, one], -1)], -2)


def compose_theta(
    center: torch.Tensor,
    half: torch.Tensor,
    flip: torch.Tensor,
    angle: torch.Tensor,
    shear: torch.Tensor,
    translate: torch.Tensor,
) -> torch.Tensor:
    """The per-sample [N,2,3] `theta` of F.affine_grid (align_corners=False) for: crop, flip,
    rotation, translate, shear, applied to the image in that order.

    Coordinates are normalised: -1 and 1 are the outer edges of the image, x to the right, y down.
    theta maps an output point p = (x, y, 1) to the source point it samples, so it is the product
    of each op's sampling matrix, the first op on the left:

        theta = C @ M @ R @ T @ S   (top two rows), with
        C = [[w, 0, cx], [0, h, cy]]   crop: the source region centred at center=(cx, cy) with
                                       half-extents half=(w, h) (1 = the whole side), stretched to
                                       the output; its area fraction is w*h = |det theta[:, :2]|
        M = [[-1, 0, 0], [0, 1, 0]]    where flip (left-right mirror), else the identity
        R = [[cos a, -sin a, 0], [sin a, cos a, 0]]
                                       rotation by angle a (radians; positive turns the content
                                       anticlockwise on screen, as torchvision's rotate) about the centre
        T = [[1, 0, -tx], [0, 1, -ty]] translate: content moves by translate=(tx, ty) (2/crop per pixel)
        S = [[1, mx, mx], [0, 1, 0]] @ [[1, 0, 0], [my, 1, my]]
                                       shear=(mx, my) about the top-left corner (-1, -1), the
                                       convention of torchvision's TrivialAugment (content at
                                       height y moves right by mx*(y+1)).
    So flip alone gives [[-1, 0, 0], [0, 1, 0]] and a crop of the centre half [[0.5, 0, 0], [0, 0.5, 0]].

    center, half, shear, translate: [N,2]; flip: [N] bool; angle: [N].
    """
    one, zero = torch.ones_like(angle), torch.zeros_like(angle)
    crop = _affine3(half[:, 0], zero, center[:, 0], zero, half[:, 1], center[:, 1])
    mirror = _affine3(torch.where(flip, -one, one), zero, zero, zero, one, zero)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rotate = _affine3(cos, -sin, zero, sin, cos, zero)
    move = _affine3(one, zero, -translate[:, 0], zero, one, -translate[:, 1])
    mx, my = shear[:, 0], shear[:, 1]
    shear_x = _affine3(one, mx, mx, zero, one, zero)
    shear_y = _affine3(one, zero, zero, my, one, my)
    theta = crop @ mirror @ rotate @ move @ shear_x @ shear_y
    return theta[:, :2, :]


def random_resized_crop(
    n: int, scale: tuple[float, float], ratio: tuple[float, float], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample crop centre and half-extents ([N,2] each, normalised coordinates of a square source),
    as torchvision's RandomResizedCrop draws them: area fraction ~ U(scale), log aspect ratio
    (width/height) ~ U(log ratio), a uniform position. Where the box would not fit, the ratio is
    clamped to the widest one that fits (log ratio into [log area, -log area]), so the area is kept
    (torchvision retries 10 times, then falls back to a centre crop)."""
    r = torch.rand(n, 4, device=device)
    area = scale[0] + (scale[1] - scale[0]) * r[:, 0]
    log_area = area.log()
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    log_ratio = log_lo + (log_hi - log_lo) * r[:, 1]
    log_ratio = torch.maximum(torch.minimum(log_ratio, -log_area), log_area)
    half = torch.stack([((log_area + log_ratio) / 2).exp(), ((log_area - log_ratio) / 2).exp()], 1).clamp(max=1.0)
    center = (1 - half) * (2 * r[:, 2:] - 1)
    return center, half


def trivial_magnitudes() -> tuple[torch.Tensor, torch.Tensor]:
    """TrivialAugmentWide's magnitude bins, [len(TRIVIAL_OPS), 31], and which ops are signed.

    As torchvision: shear 0..0.99 (tan of the angle), translate 0..32 px, rotate 0..135 degrees,
    brightness/color/contrast/sharpness 0..0.99 (factor 1 + m), posterize 8..2 bits, solarize
    threshold 255..0; identity, autocontrast and equalize take none."""
    table = torch.zeros(len(TRIVIAL_OPS), TRIVIAL_BINS)
    ramp = torch.linspace(0.0, 1.0, TRIVIAL_BINS)
    for name in ("shear_x", "shear_y", "brightness", "color", "contrast", "sharpness"):
        table[_OP[name]] = 0.99 * ramp
    table[_OP["translate_x"]] = table[_OP["translate_y"]] = 32.0 * ramp
    table[_OP["rotate"]] = 135.0 * ramp
    table[_OP["posterize"]] = 8 - (torch.arange(TRIVIAL_BINS) / ((TRIVIAL_BINS - 1) / 6)).round()
    table[_OP["solarize"]] = torch.linspace(255.0, 0.0, TRIVIAL_BINS)
    signed = torch.tensor([name in _SIGNED for name in TRIVIAL_OPS])
    return table, signed


def trivial_geometry(draw: TrivialDraw, crop: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The geometric part of a TrivialAugment draw: (angle [N] radians, shear [N,2], translate [N,2]
    normalised); zero for samples whose op is photometric. Translations are whole pixels of the
    crop x crop output, as torchvision's int(magnitude)."""
    op, m = draw.op, draw.magnitude
    zero = torch.zeros_like(m)
    angle = torch.where(op == _OP["rotate"], m * (math.pi / 180.0), zero)
    shear = torch.stack([torch.where(op == _OP["shear_x"], m, zero), torch.where(op == _OP["shear_y"], m, zero)], 1)
    pixels = torch.trunc(m) * (2.0 / crop)
    translate = torch.stack(
        [torch.where(op == _OP["translate_x"], pixels, zero), torch.where(op == _OP["translate_y"], pixels, zero)], 1
    )
    return angle, shear, translate


# ---------------------------------------------------------------- photometry (float [0, 255])


def _per_sample(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """[N,1,H,W] luma with torchvision's weights."""
    # Python-number weights: a weight tensor would be a host-to-device copy per call on CUDA
    return (x[:, 0:1] * _GRAY[0]).add_(x[:, 1:2], alpha=_GRAY[1]).add_(x[:, 2:3], alpha=_GRAY[2])


def blend(x: torch.Tensor, degenerate: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """factor*x + (1-factor)*degenerate, clamped to [0, 255] (torchvision's _blend); factor [N]."""
    f = _per_sample(factor)
    return (f * x + (1 - f) * degenerate).clamp_(0.0, 255.0)


def sharpness_degenerate(x: torch.Tensor) -> torch.Tensor:
    """torchvision's adjust_sharpness reference: the 3x3 smoothing [[1,1,1],[1,5,1],[1,1,1]]/13 inside,
    the border pixels unchanged."""
    out = x.clone()
    out[..., 1:-1, 1:-1] = F.avg_pool2d(x, 3, stride=1) * (9.0 / 13.0) + x[..., 1:-1, 1:-1] * (4.0 / 13.0)
    return out


def posterize(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Keep the top `bits` [N] bits of each 8-bit value (values floored to multiples of 2**(8-bits))."""
    step = _per_sample(torch.pow(2.0, 8.0 - bits))
    return torch.floor(x / step) * step


def solarize(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """Invert the values >= threshold [N]."""
    return torch.where(x >= _per_sample(threshold), 255.0 - x, x)


def autocontrast(x: torch.Tensor) -> torch.Tensor:
    """Stretch each sample's channels to [0, 255]; a flat channel is left alone (torchvision)."""
    low = x.amin(dim=(-2, -1), keepdim=True)
    high = x.amax(dim=(-2, -1), keepdim=True)
    flat = high == low
    scale = torch.where(flat, torch.ones_like(high), 255.0 / (high - low).clamp(min=1e-6))
    low = torch.where(flat, torch.zeros_like(low), low)
    return ((x - low) * scale).clamp_(0.0, 255.0)


def equalize(x: torch.Tensor) -> torch.Tensor:
    """torchvision's per-channel histogram equalisation, batched (one scatter_add, no loop, no sync).

    Approximation: the float values are rounded to the nearest integer first (torchvision works on
    uint8 images); the lookup table is torchvision's exactly, including leaving a channel alone
    when its step is 0 (e.g. a flat channel)."""
    n, c, h, w = x.shape
    q = x.round().clamp(0, 255).to(torch.int64).reshape(n * c, h * w)
    hist = torch.zeros(n * c, 256, dtype=torch.float32, device=x.device)
    hist.scatter_add_(1, q, torch.ones_like(q, dtype=torch.float32))
    last = hist.gather(1, q.amax(1, keepdim=True))  # count of the highest value present
    step = torch.div(h * w - last, 255, rounding_mode="floor")
    safe = torch.where(step > 0, step, torch.ones_like(step))
    lut = torch.div(hist.cumsum(1) + torch.div(step, 2, rounding_mode="floor"), safe, rounding_mode="floor")
    lut = F.pad(lut, (1, 0))[:, :-1].clamp(0, 255)
    out = lut.gather(1, q).view(n, c, h, w)
    return torch.where((step > 0).view(n, c, 1, 1), out, x)


def trivial_photometric(x: torch.Tensor, op: torch.Tensor, magnitude: torch.Tensor) -> torch.Tensor:
    """Apply each sample's photometric TrivialAugment op (by index into TRIVIAL_OPS) to float [0, 255]
    images; samples with a geometric op or identity come back unchanged.

    Every op is computed for the whole batch and each sample keeps its own through masks: a few
    full-batch passes instead of a Python loop over samples. The four blends (brightness: towards
    black; contrast: towards the grey mean; color: towards grey; sharpness: towards the smoothed
    image) share one pass."""
    is_op = {name: _per_sample(op == _OP[name]) for name in TRIVIAL_OPS}
    gray = grayscale(x)
    degenerate = torch.where(
        is_op["brightness"],
        torch.zeros((), dtype=x.dtype, device=x.device),
        torch.where(
            is_op["contrast"],
            gray.mean(dim=(1, 2, 3), keepdim=True),
            torch.where(is_op["color"], gray, sharpness_degenerate(x)),
        ),
    )
    blended = (op == _OP["brightness"]) | (op == _OP["contrast"]) | (op == _OP["color"]) | (op == _OP["sharpness"])
    out = blend(x, degenerate, torch.where(blended, 1.0 + magnitude, torch.ones_like(magnitude)))
    out = torch.where(is_op["posterize"], posterize(x, magnitude), out)
    out = torch.where(is_op["solarize"], solarize(x, magnitude), out)
    out = torch.where(is_op["autocontrast"], autocontrast(x), out)
    return torch.where(is_op["equalize"], equalize(x), out)


def color_jitter(x: torch.Tensor, strength: float) -> torch.Tensor:
    """Per-sample brightness, contrast and saturation factors ~ U(max(0, 1-s), 1+s), applied in
    that order (torchvision's ColorJitter shuffles the order), each clamped to [0, 255]."""
    low = max(0.0, 1.0 - strength)
    factors = low + (1.0 + strength - low) * torch.rand(3, x.shape[0], device=x.device)
    x = blend(x, torch.zeros((), dtype=x.dtype, device=x.device), factors[0])
    x = blend(x, grayscale(x).mean(dim=(1, 2, 3), keepdim=True), factors[1])
    return blend(x, grayscale(x), factors[2])
