"""Device augmentation: the paper's path is unchanged draw for draw, and the modern recipes' options
(cache_size, random-resized crop, colour jitter, TrivialAugment) are per sample, per call, in range,
and geometrically what they say. Tiny tensors on the CPU; no timing.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from omegaconf import OmegaConf
from torchvision.transforms import InterpolationMode

from animalcls.augment import (
    TRIVIAL_OPS,
    DeviceAugment,
    TrivialDraw,
    cache_decode_size,
    cache_side,
    compose_theta,
    equalize,
    needs_large_cache,
    trivial_geometry,
    trivial_photometric,
)
from animalcls.data import decode_uint8

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


def _aug(resize: int = 24, crop: int = 20, hflip: float = 0.0, rotation: float = 0.0, **new):
    """An aug config with the paper's keys only, plus any of the new options."""
    return OmegaConf.create(
        {
            "name": "test",
            "resize": resize,
            "crop": crop,
            "hflip": hflip,
            "rotation": rotation,
            "mean": MEAN,
            "std": STD,
            **new,
        }
    )


def _previous_device_augment(images: torch.Tensor, hflip: float, rotation: float, channels_last: bool) -> torch.Tensor:
    """DeviceAugment.__call__ as it was before the modern options (commit c6634d0), copied verbatim."""
    mean = torch.tensor(MEAN).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(STD).view(1, 3, 1, 1) * 255.0
    if hflip > 0:
        mask = torch.rand(images.shape[0], device=images.device) < hflip
        images = torch.where(mask.view(-1, 1, 1, 1), images.flip(3), images)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    x = images.to(torch.float32, memory_format=layout, copy=True)
    if rotation > 0:
        n = x.shape[0]
        angle = (torch.rand(n, device=x.device) * 2 - 1) * math.radians(rotation)
        cos, sin = torch.cos(angle), torch.sin(angle)
        zero = torch.zeros_like(cos)
        theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        x = x.contiguous(memory_format=layout)
    return x.sub_(mean).div_(std)


def _unnormalise(out: torch.Tensor) -> torch.Tensor:
    return out * torch.tensor(STD).view(1, 3, 1, 1) * 255.0 + torch.tensor(MEAN).view(1, 3, 1, 1) * 255.0


def _smooth_batch(n: int, size: int, seed: int = 0) -> torch.Tensor:
    """n copies of one smooth, asymmetric uint8 image (a flip, a crop and a colour change all show)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 4, 4, generator=g) * 200 + 20
    image = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    image[:, 0, :, : size // 4] = 250.0  # a bright red left edge
    return image.round().to(torch.uint8).expand(n, 3, size, size).contiguous()


# ---------------------------------------------------------------- the paper's path


OFF_VALUES = {"cache_size": 0, "rrc_scale": [1.0, 1.0], "rrc_ratio": [0.75, 1.3333], "color_jitter": 0.0}


@pytest.mark.parametrize("explicit_off", [False, True], ids=["old-config", "new-keys-off"])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize(("hflip", "rotation", "train"), [(0.5, 0.0, True), (0.5, 15.0, True), (0.5, 15.0, False)])
def test_paper_path_is_bit_identical_to_the_previous_code(hflip, rotation, train, channels_last, explicit_off):
    new = {**OFF_VALUES, "trivial_augment": False} if explicit_off else {}
    augment = DeviceAugment(_aug(hflip=hflip, rotation=rotation, **new), train=train, channels_last=channels_last)
    assert augment.paper_path
    batch = (torch.rand(6, 3, 20, 20, generator=torch.Generator().manual_seed(3)) * 255).to(torch.uint8)
    for seed in (0, 1):
        torch.manual_seed(seed)
        got = [augment(batch), augment(batch)]
        torch.manual_seed(seed)
        want = [_previous_device_augment(batch, hflip if train else 0.0, rotation if train else 0.0, channels_last)]
        want.append(_previous_device_augment(batch, hflip if train else 0.0, rotation if train else 0.0, channels_last))
        for g, w in zip(got, want):
            assert torch.equal(g, w)
            assert g.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        # the RNG is left where the old code left it: later draws (the next batch's) do not move
        torch.manual_seed(seed)
        augment(batch)
        after_new = torch.rand(4)
        torch.manual_seed(seed)
        _previous_device_augment(batch, hflip if train else 0.0, rotation if train else 0.0, channels_last)
        assert torch.equal(after_new, torch.rand(4))


def test_new_options_are_off_when_not_training_and_cache_side_follows_cache_size():
    modern = {"cache_size": 32, "rrc_scale": [0.3, 1.0], "color_jitter": 0.4, "trivial_augment": True}
    evaluate = DeviceAugment(_aug(**modern), train=False)
    assert not (evaluate.random_crop or evaluate.trivial or evaluate.color_jitter or evaluate.hflip)
    assert evaluate.cache_size == 32 and not evaluate.paper_path  # eval still takes its view from the square
    assert DeviceAugment(_aug(**modern), train=False, cached=False).paper_path  # pil batches: the paper's view
    assert cache_side(_aug()) == 20 and not needs_large_cache(_aug()) and cache_decode_size(_aug()) == (24, 20)
    assert cache_side(_aug(cache_size=32)) == 32 and needs_large_cache(_aug(cache_size=32))
    assert cache_decode_size(_aug(cache_size=32)) == (32, 32)
    assert cache_side(_aug(cache_size=None)) == 20  # a null in an older YAML is the default


def test_a_batch_of_the_wrong_size_for_cache_size_fails_with_the_fix():
    with pytest.raises(ValueError, match="cache_decode_size"):
        DeviceAugment(_aug(cache_size=32), train=False)(_smooth_batch(2, 20))


# ---------------------------------------------------------------- the fused geometry


def _theta(n: int = 1, center=(0.0, 0.0), half=(1.0, 1.0), flip=False, angle=0.0, shear=(0.0, 0.0), move=(0.0, 0.0)):
    def rows(v):
        return torch.tensor([v] * n, dtype=torch.float32)

    return compose_theta(
        rows(center), rows(half), torch.tensor([flip] * n), rows(angle), rows(shear), rows(move)
    ).squeeze(0)


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, [[1, 0, 0], [0, 1, 0]]),
        ({"flip": True}, [[-1, 0, 0], [0, 1, 0]]),
        ({"half": (0.5, 0.5)}, [[0.5, 0, 0], [0, 0.5, 0]]),  # the centre half
        ({"center": (-0.5, -0.5), "half": (0.5, 0.5)}, [[0.5, 0, -0.5], [0, 0.5, -0.5]]),  # top-left quarter
        # the right half, squashed, mirrored in place
        ({"center": (0.5, 0.0), "half": (0.5, 0.25), "flip": True}, [[-0.5, 0, 0.5], [0, 0.25, 0]]),
        ({"angle": math.pi / 2}, [[0, -1, 0], [1, 0, 0]]),  # rotate_random's convention
        ({"half": (0.5, 0.5), "angle": math.pi / 2}, [[0, -0.5, 0], [0.5, 0, 0]]),  # rotation inside the crop
        ({"move": (0.25, -0.5)}, [[1, 0, -0.25], [0, 1, 0.5]]),
        ({"shear": (0.5, 0.0)}, [[1, 0.5, 0.5], [0, 1, 0]]),  # about the top-left corner
        ({"shear": (0.0, 0.5)}, [[1, 0, 0], [0.5, 1, 0.5]]),
    ],
)
def test_compose_theta_examples(kwargs, expected):
    assert torch.allclose(_theta(**kwargs), torch.tensor(expected, dtype=torch.float32), atol=1e-6)


def _apply(theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(theta.view(1, 2, 3), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@pytest.mark.parametrize(("op", "magnitude"), [("shear_x", 0.3), ("shear_y", -0.4), ("rotate", 40.0)])
@pytest.mark.parametrize("translate_op", [None, "translate_x", "translate_y"])
def test_trivial_geometric_ops_match_torchvision(op, magnitude, translate_op):
    if translate_op is not None:
        op, magnitude = translate_op, -5.7  # torchvision truncates to -5 pixels
    x = _smooth_batch(1, 32).float()
    draw = TrivialDraw(torch.tensor([TRIVIAL_OPS.index(op)]), torch.tensor([magnitude]))
    angle, shear, move = trivial_geometry(draw, crop=32)
    ours = _apply(compose_theta(torch.zeros(1, 2), torch.ones(1, 2), torch.tensor([False]), angle, shear, move), x)
    bilinear = InterpolationMode.BILINEAR
    if op == "rotate":
        ref = TF.rotate(x, magnitude, interpolation=bilinear)
    elif op.startswith("shear"):
        degrees = math.degrees(math.atan(magnitude))
        shear_xy = [degrees, 0.0] if op == "shear_x" else [0.0, degrees]
        ref = TF.affine(x, 0.0, [0, 0], 1.0, shear_xy, interpolation=bilinear, center=[0, 0])
    else:
        pixels = [int(magnitude), 0] if op == "translate_x" else [0, int(magnitude)]
        ref = TF.affine(x, 0.0, pixels, 1.0, [0.0, 0.0], interpolation=bilinear)
    assert (ours - ref).abs().max() < 1e-2


def test_random_crop_area_lies_within_rrc_scale_and_the_box_inside_the_image():
    torch.manual_seed(0)
    augment = DeviceAugment(_aug(rrc_scale=[0.2, 0.6], rrc_ratio=[0.5, 2.0], hflip=0.5), train=True)
    theta = augment.sample_theta(2000, torch.device("cpu"))
    area = torch.linalg.det(theta[:, :, :2]).abs()
    assert area.min() >= 0.2 - 1e-5 and area.max() <= 0.6 + 1e-5
    assert area.max() - area.min() > 0.3  # spread over the range, not one value
    corners = torch.tensor([[-1.0, -1.0, 1.0], [1.0, -1.0, 1.0], [-1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]).T
    assert (theta @ corners).abs().max() <= 1.0 + 1e-5  # only real pixels: no padding
    ratio = theta[:, 0, 0].abs() / theta[:, 1, 1]
    assert ratio.min() >= 0.5 - 1e-4 and ratio.max() <= 2.0 + 1e-4
    flipped = theta[:, 0, 0] < 0
    assert 0.4 < flipped.float().mean() < 0.6


# ---------------------------------------------------------------- per sample, per call, in range


NEW_AUGMENTATIONS = {
    "rrc": {"rrc_scale": [0.3, 1.0]},
    "rrc-from-cache": {"rrc_scale": [0.3, 1.0], "cache_size": 32, "hflip": 0.5, "rotation": 10.0},
    "cache-flip-rotation": {"cache_size": 32, "hflip": 0.5, "rotation": 15.0},
    "color_jitter": {"color_jitter": 0.4},
    "trivial_augment": {"trivial_augment": True},
    "all": {"cache_size": 32, "rrc_scale": [0.08, 1.0], "color_jitter": 0.3, "trivial_augment": True, "hflip": 0.5},
}


@pytest.mark.parametrize("options", NEW_AUGMENTATIONS.values(), ids=NEW_AUGMENTATIONS.keys())
def test_each_new_augmentation_is_random_per_sample_and_per_call_and_in_range(options):
    torch.manual_seed(0)
    n = 16
    augment = DeviceAugment(_aug(**options), train=True)
    batch = _smooth_batch(n, cache_side(_aug(**options)))
    first, second = augment(batch), augment(batch)
    for out in (first, second):
        assert out.shape == (n, 3, 20, 20) and out.dtype == torch.float32
        pixels = _unnormalise(out)
        assert pixels.min() >= -1e-3 and pixels.max() <= 255 + 1e-3
        distinct = {tuple(sample.flatten().round(decimals=3).tolist()) for sample in out}
        assert len(distinct) >= n // 2  # samples draw their own (TrivialAugment: identity may repeat)
    assert not torch.allclose(first, second)  # a new draw each call (each epoch)
    torch.manual_seed(0)
    assert torch.equal(augment(batch), first)  # seeded: a resumed run draws the same


# Sizes where torchvision's own rounding is exact for a 64x48 image (the resized long side and the
# crop offsets are whole pixels). Elsewhere the paper's view is up to half a pixel off the centred
# region, by rounding that depends on the original's aspect ratio, which the square no longer knows.
@pytest.mark.parametrize(("resize", "crop", "cache_size"), [(36, 28, 48), (36, 28, 60), (30, 24, 42), (36, 36, 36)])
def test_eval_from_the_cached_square_is_the_papers_resize_and_centre_crop(tmp_path: Path, resize, crop, cache_size):
    from PIL import Image

    coarse = np.random.default_rng(0).integers(0, 256, (3, 4, 3), dtype=np.uint8)
    path = tmp_path / "smooth.png"
    Image.fromarray(coarse).resize((64, 48), Image.BICUBIC).save(path)  # 64 wide, 48 high, smooth
    square = decode_uint8(path, cache_size, cache_size)
    aug = _aug(resize=resize, crop=crop, cache_size=cache_size, hflip=0.5, rrc_scale=[0.1, 1.0], trivial_augment=True)
    assert cache_decode_size(aug) == (cache_size, cache_size)
    ours = _unnormalise(DeviceAugment(aug, train=False)(square.unsqueeze(0)))[0]
    paper = decode_uint8(path, resize, crop).float()
    assert ours.shape == paper.shape
    assert (ours - paper).abs().mean() < 2.0  # 2/255 of the range


def test_training_without_a_random_crop_flips_the_centre_view():
    batch = _smooth_batch(3, 32)
    aug = _aug(cache_size=32, hflip=1.0)
    view = DeviceAugment(aug, train=False)(batch)
    assert torch.allclose(DeviceAugment(aug, train=True)(batch), view.flip(3), atol=1e-5)


@pytest.mark.parametrize("options", [{"color_jitter": 0.5}, {"trivial_augment": True}], ids=["jitter", "trivial"])
def test_photometric_options_change_a_grey_image_per_sample_but_not_its_geometry(options):
    torch.manual_seed(0)
    n, grey = 64, 128.0
    out = _unnormalise(DeviceAugment(_aug(**options), train=True)(torch.full((n, 3, 20, 20), 128, dtype=torch.uint8)))
    flat = out.amax(dim=(1, 2, 3)) - out.amin(dim=(1, 2, 3)) < 1e-3
    values = {round(float(v), 2) for v in out[flat].mean(dim=(1, 2, 3))}
    assert len(values) >= 3  # brightness, posterize, solarize, ... per sample
    if "color_jitter" in options:
        assert bool(flat.all())  # no pixel moved
    else:
        # TrivialAugment's geometric ops move the grey square and bring in black; they do not recolour it
        moved = out[~flat]
        assert moved.min() >= -1e-3 and bool((moved.amax(dim=(1, 2, 3)) - grey).abs().max() < 1e-3)
        assert 0 < int((~flat).sum()) < n


def test_trivial_photometric_ops_match_torchvision():
    torch.manual_seed(0)
    images = (torch.rand(2, 3, 12, 12) * 255).round().to(torch.uint8)
    x = images.float()
    # torchvision on float images in [0, 1] where it takes them (its uint8 blends truncate), uint8 otherwise
    on_float = {
        "identity": (0.0, lambda u: u),
        "brightness": (0.6, lambda u: TF.adjust_brightness(u, 1.6)),
        "color": (-0.7, lambda u: TF.adjust_saturation(u, 0.3)),
        "contrast": (0.9, lambda u: TF.adjust_contrast(u, 1.9)),
        "sharpness": (0.8, lambda u: TF.adjust_sharpness(u, 1.8)),
        "solarize": (100.0, lambda u: TF.solarize(u, 100.0 / 255.0)),
        "autocontrast": (0.0, TF.autocontrast),
    }
    on_uint8 = {"posterize": (3.0, lambda u: TF.posterize(u, 3)), "equalize": (0.0, TF.equalize)}
    for name, (magnitude, reference) in {**on_float, **on_uint8}.items():
        op = torch.full((2,), TRIVIAL_OPS.index(name))
        ours = trivial_photometric(x, op, torch.full((2,), magnitude))
        want = reference(x / 255.0) * 255.0 if name in on_float else reference(images).float()
        assert (ours - want).abs().max() < 1e-3, name
    for name in ("shear_x", "rotate", "translate_y"):  # geometric: left to the affine
        assert torch.equal(trivial_photometric(x, torch.full((2,), TRIVIAL_OPS.index(name)), torch.ones(2)), x)
    assert torch.equal(equalize(x), torch.stack([TF.equalize(u) for u in images]).float())
