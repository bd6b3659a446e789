"""The data layer's edge cases: unusual image modes, what a scan skips, a damaged, read-only or
full cache dir, a stop during the first decode, the data set's identity, and the PIL order's seed.

Every test makes its own tiny images in tmp_path. The read-only and full-disk tests mount a tmpfs
(root only) and are skipped, with the reason, where mounting is not allowed.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from animalcls.data import PILBatches, cache_key, data_identity, decode_uint8, load_cache, scan
from animalcls.errors import AnimalclsError, Interrupted

from conftest import mounted_tmpfs as _tmpfs


def _save(array: np.ndarray, path: Path) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _folder(root: Path, classes: int = 2, per_class: int = 3, size: int = 16) -> Path:
    """Lossless images, each a different constant grey, so pixels tell images apart."""
    for c in range(classes):
        for i in range(per_class):
            value = (10 + 20 * (c * per_class + i)) % 250  # distinct for up to 12 images
            _save(np.full((size, size, 3), value, dtype=np.uint8), root / f"class_{c}" / f"img_{i}.png")
    return root


# ---------------------------------------------------------------- decode and scan


SIZES = [(300, 200), (200, 300), (113, 97), (97, 113), (128, 128), (129, 128), (112, 500), (640, 111), (31, 17), (9, 9)]


@pytest.mark.parametrize("resize, crop", [(112, 112), (128, 112), (48, 40), (37, 21), (8, 8)])
def test_decode_equals_torchvisions_resize_and_center_crop_pixel_for_pixel(tmp_path, resize, crop):
    """decode() does torchvision's Resize + CenterCrop with PIL alone (for speed): the cache must
    hold exactly what data.pipeline=pil's transforms make of the same file."""
    import torchvision.transforms as T
    from PIL import Image

    from animalcls.data.decode import to_rgb

    reference = T.Compose([T.Resize(resize), T.CenterCrop(crop), T.PILToTensor()])
    rng = np.random.default_rng(resize * 1000 + crop)
    for width, height in SIZES:
        path = _save(rng.integers(0, 256, (height, width, 3), dtype=np.uint8), tmp_path / f"{width}x{height}.png")
        with Image.open(path) as image:
            expected = reference(to_rgb(image))
        assert torch.equal(decode_uint8(path, resize, crop), expected), (width, height)


@pytest.mark.parametrize("dtype, name", [(np.uint16, "deep.png"), (">u2", "deep_be.tif"), (np.int32, "deep_i.tif")])
def test_16_bit_images_are_scaled_to_8_bit_not_saturated(tmp_path, dtype, name):
    path = _save(np.full((8, 8), 30000, dtype=dtype), tmp_path / name)
    pixels = decode_uint8(path, 8, 8)
    assert pixels.unique().tolist() == [117]  # 30000 / 257, not 255


def test_8_bit_values_in_a_32_bit_image_are_kept(tmp_path):
    path = _save(np.full((8, 8), 200, dtype=np.int32), tmp_path / "small_i.tif")
    assert decode_uint8(path, 8, 8).unique().tolist() == [200]


@pytest.mark.parametrize("value, expected", [(0.5, 128), (300.0, 255), (90.0, 90)])
def test_float_images_are_scaled_from_0_1_or_clipped(tmp_path, value, expected):
    path = _save(np.full((8, 8), value, dtype=np.float32), tmp_path / "float.tif")
    assert decode_uint8(path, 8, 8).unique().tolist() == [expected]


def test_gif_images_are_scanned_and_decoded(tmp_path):
    root = _folder(tmp_path / "images")
    from PIL import Image

    frames = [Image.fromarray(np.full((8, 8), v, dtype=np.uint8)) for v in (77, 150)]
    frames[0].save(root / "class_0" / "anim.gif", save_all=True, append_images=frames[1:])
    data = scan(root)
    assert os.path.join("class_0", "anim.gif") in data.paths
    assert decode_uint8(root / "class_0" / "anim.gif", 8, 8).unique().tolist() == [77]  # the first frame


def test_hidden_files_and_folders_are_not_scanned_and_other_files_are_logged_once(tmp_path, caplog):
    root = _folder(tmp_path / "images")
    _save(np.zeros((8, 8, 3), dtype=np.uint8), root / "class_0" / ".hidden.jpg")
    _save(np.zeros((8, 8, 3), dtype=np.uint8), root / "class_0" / ".thumbs" / "thumb.jpg")
    _save(np.zeros((8, 8, 3), dtype=np.uint8), root / ".trash" / "x.jpg")
    for i in range(5):
        (root / "class_1" / f"notes_{i}.txt").write_text("not an image")
    caplog.set_level(logging.INFO, logger="animalcls.data")
    data = scan(root)
    assert len(data.paths) == 6 and data.classes == ["class_0", "class_1"]
    assert not any("hidden" in p or "thumbs" in p or "trash" in p for p in data.paths)
    lines = [r.getMessage() for r in caplog.records if "non-image" in r.getMessage()]
    assert len(lines) == 1 and "5 non-image" in lines[0] and "notes_0.txt" in lines[0]
    assert "notes_3.txt" not in lines[0]  # up to 3 examples


# ---------------------------------------------------------------- the decode cache


def _truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def _garbage(file: Path) -> None:
    file.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())


def _empty(file: Path) -> None:
    file.write_bytes(b"")


def _wrong_shape(file: Path) -> None:
    np.save(file, np.zeros((2, 3, 8, 8), dtype=np.uint8))


def _wrong_dtype(file: Path) -> None:
    np.save(file, np.zeros((6, 3, 16, 16), dtype=np.float32))


def _longer(file: Path) -> None:
    with open(file, "ab") as stream:
        stream.write(b"\0" * 100)


def _no_sidecar(file: Path) -> None:
    file.with_suffix(".json").unlink()


def _bad_sidecar(file: Path) -> None:
    file.with_suffix(".json").write_text('{"format": "animalcls-decode-cache", "version": 2, "shape": [6, 3, 16, 1')


@pytest.mark.parametrize(
    "damage", [_truncate, _garbage, _empty, _wrong_shape, _wrong_dtype, _longer, _no_sidecar, _bad_sidecar]
)
def test_a_damaged_cache_is_rebuilt_with_one_warning_naming_it(tmp_path, caplog, damage):
    root = _folder(tmp_path / "images")
    data, cache = scan(root), tmp_path / "cache"
    good, _ = load_cache(data, 16, 16, cache, workers=1)
    good = good.clone()
    file = cache / f"{cache_key(data, 16, 16)}.npy"
    damage(file)
    caplog.set_level(logging.WARNING, logger="animalcls.data")
    images, bad = load_cache(data, 16, 16, cache, workers=1)
    assert bad == [] and torch.equal(images, good)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(file) in warnings[0] and "rebuil" in warnings[0]
    again, _ = load_cache(data, 16, 16, cache, workers=1)  # repaired for good
    assert torch.equal(again, good)
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1  # no second rebuild


def test_a_valid_cache_in_a_read_only_dir_is_read_without_writing(tmp_path):
    root = _folder(tmp_path / "images")
    data = scan(root)
    with _tmpfs(tmp_path / "mnt", "size=4m") as mount:
        cache = mount / "cache"
        expected = load_cache(data, 16, 16, cache, workers=1)[0].clone()
        for lock in cache.glob("*.lock"):
            lock.unlink()  # a reader must not need the lock file either
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True, capture_output=True)
        images, bad = load_cache(data, 16, 16, cache, workers=1)
        assert bad == [] and torch.equal(images, expected)
        del images


def test_building_a_cache_in_a_read_only_dir_is_a_clear_error(tmp_path):
    root = _folder(tmp_path / "images")
    data = scan(root)
    with _tmpfs(tmp_path / "mnt", "size=4m,ro") as mount:
        with pytest.raises(AnimalclsError) as error:
            load_cache(data, 16, 16, mount / "cache", workers=1)
        assert str(mount) in str(error.value) and "data.cache_dir=" in str(error.value)
        assert error.value.__cause__ is None and (error.value.__context__ is None or error.value.__suppress_context__)


def test_a_full_disk_is_a_clear_error_and_leaves_no_temp_file(tmp_path):
    root = _folder(tmp_path / "images", per_class=2, size=96)
    data = scan(root)  # 4 x 3 x 96 x 96 bytes = 110 KB, more than the 64 KB disk
    with _tmpfs(tmp_path / "mnt", "size=64k") as cache:
        with pytest.raises(AnimalclsError) as error:
            load_cache(data, 96, 96, cache, workers=1)
        message = str(error.value)
        assert cache_key(data, 96, 96) in message and "No space left on device" in message
        assert "data.cache_dir=" in message
        assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []


def test_a_stop_during_the_first_decode_raises_interrupted_and_keeps_only_a_partial_cache(tmp_path):
    root = _folder(tmp_path / "images", classes=2, per_class=20)
    data, cache = scan(root), tmp_path / "cache"
    calls = []

    def should_stop() -> bool:
        calls.append(1)
        return len(calls) >= 3

    with pytest.raises(Interrupted):
        load_cache(data, 16, 16, cache, workers=2, should_stop=should_stop)
    assert len(calls) == 3  # asked after each image, stopped at once
    key = cache_key(data, 16, 16)
    names = sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock"))
    assert names == [f"{key}.partial.json", f"{key}.partial.npy"]  # the next start resumes, never reads it
    assert '"done": 3' in (cache / f"{key}.partial.json").read_text()
    images, _ = load_cache(data, 16, 16, cache, workers=2, should_stop=lambda: False)
    assert images.shape[0] == 40
    assert sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) == [f"{key}.json", f"{key}.npy"]


# ---------------------------------------------------------------- identity and order


def test_data_identity_ignores_where_and_when_but_not_what(tmp_path, monkeypatch):
    root = _folder(tmp_path / "tiny")
    identity = data_identity(scan(root))
    assert len(identity) == 16 and int(identity, 16) >= 0
    monkeypatch.chdir(tmp_path)
    for spelling in ("tiny", "./tiny", "tiny/", str(root.resolve())):
        assert data_identity(scan(spelling)) == identity, spelling
    copy = shutil.copytree(root, tmp_path / "elsewhere" / "copy")
    for path in Path(copy).rglob("*.png"):
        os.utime(path, (1_000_000_000, 1_000_000_000))
    assert data_identity(scan(copy)) == identity
    assert cache_key(scan(copy), 16, 16) != cache_key(scan(root), 16, 16)  # the cache still sees mtimes

    _save(np.zeros((16, 16, 3), dtype=np.uint8), Path(copy) / "class_1" / "extra.png")
    assert data_identity(scan(copy)) != identity
    (Path(copy) / "class_1" / "extra.png").unlink()
    assert data_identity(scan(copy)) == identity
    _save(np.zeros((17, 16, 3), dtype=np.uint8), Path(copy) / "class_1" / "img_0.png")  # new size
    assert data_identity(scan(copy)) != identity


def _first_epoch_order(root: Path, seed: int) -> list[int]:
    aug = OmegaConf.create({"resize": 16, "crop": 16, "hflip": 0.0, "rotation": 0.0})
    data = scan(root)
    batches = PILBatches(
        data,
        np.arange(len(data.paths)),
        aug,
        train=True,
        batch_size=64,
        device=torch.device("cpu"),
        workers=0,
        seed=seed,
    )
    batches.set_epoch(1)
    ((x, _),) = list(batches)
    return x[:, 0, 0, 0].tolist()  # each image is its own constant grey


def test_pil_batches_shuffle_depends_on_the_seed(tmp_path):
    root = _folder(tmp_path / "images", classes=2, per_class=6)
    first = _first_epoch_order(root, seed=0)
    assert sorted(first) == [10 + 20 * i for i in range(12)]
    assert _first_epoch_order(root, seed=0) == first
    assert _first_epoch_order(root, seed=1) != first
