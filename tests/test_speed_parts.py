"""The parts that make training fast keep its meaning: the decode-once cache holds the pixels a
direct decode and the PIL pipeline give, it is rebuilt when a file changes, device-side
augmentation is random per sample and per call, and `animalcls bench` runs end to end.

No timing is asserted: speed is what `animalcls bench` measures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from animalcls.augment import DeviceAugment
from animalcls.data import TensorBatches, cache_key, decode_uint8, load_cache, pil_transform, scan

from conftest import TINY, make_image_folder


def _odd_images(root: Path) -> Path:
    """Images that exercise the decode: non-square, grayscale, palette, smaller than the crop."""
    from PIL import Image

    rng = np.random.default_rng(1)
    folder = root / "odd"
    folder.mkdir(parents=True)
    Image.fromarray(rng.integers(0, 256, (37, 71, 3), dtype=np.uint8)).save(folder / "wide.png")
    Image.fromarray(rng.integers(0, 256, (90, 50), dtype=np.uint8), "L").save(folder / "gray.jpg")
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).convert("P").save(folder / "palette.png")
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(folder / "small.jpg")
    return root


def _aug(resize: int = 48, crop: int = 40, hflip: float = 0.0, rotation: float = 0.0):
    return OmegaConf.create(
        {
            "resize": resize,
            "crop": crop,
            "hflip": hflip,
            "rotation": rotation,
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
        }
    )


def test_cache_holds_the_pixels_of_a_direct_decode_and_of_the_pil_pipeline(tmp_path):
    root = _odd_images(make_image_folder(tmp_path / "images", classes=2, per_class=3, size=56))
    data = scan(root)
    images, bad = load_cache(data, resize=48, crop=40, cache_dir=tmp_path / "cache", workers=2)
    assert bad == []
    assert images.dtype == torch.uint8 and tuple(images.shape) == (len(data.paths), 3, 40, 40)
    eval_transform = pil_transform(_aug(), train=False)
    from PIL import Image

    for i, rel in enumerate(data.paths):
        direct = decode_uint8(root / rel, 48, 40)
        with Image.open(root / rel) as image:
            pil = eval_transform(image.convert("RGB"))
        assert torch.equal(images[i], direct), rel
        assert torch.equal(images[i], pil), rel


def test_cache_is_rebuilt_when_a_file_changes(tmp_path):
    from PIL import Image

    root = make_image_folder(tmp_path / "images", classes=2, per_class=3, size=40)
    cache = tmp_path / "cache"
    data = scan(root)
    key = cache_key(data, 40, 40)
    before, _ = load_cache(data, 40, 40, cache)
    assert (cache / f"{key}.npy").exists()

    changed = root / data.paths[1]
    stat = changed.stat()
    Image.fromarray(np.full((40, 40, 3), 7, dtype=np.uint8)).save(changed, quality=95)
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    data = scan(root)
    new_key = cache_key(data, 40, 40)
    assert new_key != key
    after, _ = load_cache(data, 40, 40, cache)
    assert (cache / f"{new_key}.npy").exists()
    assert torch.equal(after[1], decode_uint8(changed, 40, 40))
    assert not torch.equal(after[1], before[1])
    assert torch.equal(after[0], before[0]) and torch.equal(after[2:], before[2:])
    # a different decode setting is a different cache too
    assert cache_key(data, 48, 40) != new_key


def _asymmetric_batch(n: int, size: int = 24) -> torch.Tensor:
    image = torch.arange(3 * size * size, dtype=torch.int64).remainder(251).to(torch.uint8).view(3, size, size)
    image[:, :, : size // 3] = 255  # bright left edge: a flip is visible
    return image.expand(n, 3, size, size).contiguous()


def test_device_flip_is_random_per_sample_and_per_call():
    torch.manual_seed(0)
    n = 32
    batch = _asymmetric_batch(n)
    augment = DeviceAugment(_aug(hflip=0.5), train=True)
    plain = DeviceAugment(_aug(), train=False)(batch[:1])[0]
    flipped = plain.flip(2)

    def flip_mask(out: torch.Tensor) -> list[bool]:
        mask = []
        for x in out:
            assert torch.allclose(x, plain) or torch.allclose(x, flipped)  # nothing but a flip
            mask.append(bool(torch.allclose(x, flipped)))
        return mask

    first, second = flip_mask(augment(batch)), flip_mask(augment(batch))
    assert 0 < sum(first) < n and 0 < sum(second) < n  # some samples flipped, some not
    assert first != second  # a new draw each call (each epoch)
    assert torch.equal(DeviceAugment(_aug(hflip=0.5), train=False)(batch), plain.expand(n, -1, -1, -1))


def test_device_rotation_is_random_per_sample_and_per_call():
    torch.manual_seed(0)
    n = 8
    batch = _asymmetric_batch(n)
    augment = DeviceAugment(_aug(rotation=30.0), train=True)
    a, b = augment(batch), augment(batch)
    assert a.dtype == torch.float32 and a.shape == (n, 3, 24, 24)
    for out in (a, b):
        for i in range(n):
            for j in range(i + 1, n):
                assert not torch.allclose(out[i], out[j])
    assert all(not torch.allclose(a[i], b[i]) for i in range(n))


def test_channels_last_changes_the_layout_not_the_values():
    torch.manual_seed(0)
    batch = _asymmetric_batch(4)
    plain = DeviceAugment(_aug(), train=False)(batch)
    last = DeviceAugment(_aug(), train=False, channels_last=True)(batch)
    assert last.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(plain, last)
    assert batch.dtype == torch.uint8 and int(batch.max()) == 255  # the input is left alone


def test_tensor_batches_cover_every_sample_once_per_epoch_in_a_new_order():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 3, 2, 2).contiguous()
    labels = torch.arange(10)
    batches = TensorBatches(images, labels, 4, torch.device("cpu"), shuffle=True, seed=1)
    orders = []
    for epoch in (1, 2):
        batches.set_epoch(epoch)
        seen = [(x[:, 0, 0, 0].long(), y) for x, y in batches]
        assert [len(y) for _, y in seen] == [4, 4, 2]
        order = torch.cat([y for _, y in seen])
        assert torch.equal(torch.cat([x for x, _ in seen]), order)  # images stay with their labels
        assert sorted(order.tolist()) == list(range(10))
        orders.append(order.tolist())
    assert orders[0] != orders[1]


def test_bench_runs_end_to_end_and_writes_the_ratios(tmp_path, cli):
    root = make_image_folder(tmp_path / "images", classes=3, per_class=10, size=40)
    out = tmp_path / "bench.json"
    code = cli(
        [
            "bench",
            f"data.root={root}",
            "device=cpu",
            *TINY,
            "bench.batches=2",
            "bench.warmup=1",
            "bench.eval_batches=1",
            f"bench.out={out}",
            "data.order=block",  # the engine reads the cache in blocks; the PIL path has no cache to order
        ],
        tmp_path,
    )
    assert code == 0
    result = json.loads(out.read_text())
    assert result["data_order"] == {"engine": "block", "old_pil": "random"}
    assert {"engine_over_limit", "engine_over_limit_fp32", "engine_over_old", "engine_epoch_over_old_epoch"} <= set(
        result["ratios"]
    )
    assert all(v > 0 for v in result["ratios"].values())
    assert {"limit_fp32", "engine_warm", "engine_cold", "old_pil", "eval"} <= set(result["measurements"])
    for key in ("device_name", "threads", "torch", "torchvision", "precision", "channels_last"):
        assert key in result
    assert result["precision"] == "fp32" and result["model"] == "base"
    assert not (tmp_path / "data").exists()  # the cold cache went to a temporary dir, now gone


def test_bench_rejects_bad_caps(tmp_path, cli, capsys):
    root = make_image_folder(tmp_path / "images", classes=3, per_class=4, size=40)
    assert cli(["bench", f"data.root={root}", "device=cpu", *TINY, "bench.batches=0"], tmp_path) == 2
    assert "bench.batches" in capsys.readouterr().err


def test_bench_build_revs_times_both_code_bases_and_prints_the_paired_difference(tmp_path):
    repo = Path(__file__).resolve().parents[1]
    if not (repo / ".git").exists():
        pytest.skip("scripts/bench_build_revs.py compares git revisions: this is not a git checkout")
    script = repo / "scripts" / "bench_build_revs.py"
    images = make_image_folder(tmp_path / "real", classes=2, per_class=4, size=150)
    args = [sys.executable, str(script), "--images", "24", "--rounds", "1", "--dir", str(tmp_path)]
    args += ["--same-bytes", str(images)]
    worktrees = subprocess.run(["git", "-C", str(repo), "worktree", "list"], capture_output=True, text=True).stdout
    done = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "round 0 base 1 thread(s)" in out and "round 0 tree 1 thread(s)" in out, out
    assert "too few rounds (n=1): no verdict" in out, out
    assert out.count("byte-identical") == 3, out
    after = subprocess.run(["git", "-C", str(repo), "worktree", "list"], capture_output=True, text=True).stdout
    assert after == worktrees  # the base's temporary worktree is gone
