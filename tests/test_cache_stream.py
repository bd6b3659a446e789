"""The decode cache for data larger than RAM (issue 21): the build streams to disk with flat memory,
resumes after a kill from its last flushed chunk, checks the disk before decoding, and one build
serves several jobs.

Every test makes its own tiny generated images in tmp_path; the memory and two-process tests run
the build in subprocesses (a fresh process's RssAnon, and a real SIGKILL).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from animalcls.data import TensorBatches, cache_key, load_cache, scan
from animalcls.data import cache as cache_module
from animalcls.errors import AnimalclsError

from conftest import make_image_folder, tiny_train_args

# A child process: build (or share) one cache, optionally decoding slowly, and print what it saw.
CHILD = r"""
import json, logging, sys, time
from pathlib import Path
import torch
from animalcls.data import TensorBatches, cache as C, scan

root, cache_dir, crop, slow, warm = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
C.CHUNK_BYTES = 4 * 3 * crop * crop  # flush every 4 images
C.LOCK_POLL_S = 0.2
if slow:
    decode = C.decode_or_reason
    C.decode_or_reason = lambda *a: (time.sleep(slow), decode(*a))[1]

def anon() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon")

if warm:  # the first build's one-off costs (imports, thread stacks, allocator arenas) out of the way
    C.load_cache(scan(warm), crop, crop, cache_dir, workers=2)
data = scan(root)
before = anon()
images, bad = C.load_cache(data, crop, crop, cache_dir, workers=2)
built = anon()
rows = torch.arange(0, images.shape[0], 2)  # a split: every other image
batches = TensorBatches(images, torch.zeros(rows.shape[0], dtype=torch.long), 32, torch.device("cpu"), True, rows=rows)
total = sum(int(x[:, :, ::8, ::8].sum()) for x, _ in batches)  # each batch gathers every pixel of its rows
seen = {"build": built - before, "epoch": anon() - built, "n": images.shape[0], "bad": len(bad), "sum": total}
print(json.dumps(seen))
"""


def _child(tmp_path: Path, root: Path, cache: Path, crop: int, slow: float = 0.0, warm: Path | None = None, **kw):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    args = [sys.executable, str(script), str(root), str(cache), str(crop), str(slow), str(warm or "")]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _finish(process: subprocess.Popen) -> tuple[dict, str]:
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1]), err


def _cache_bytes(cache: Path, key: str) -> tuple[bytes, dict]:
    return (cache / f"{key}.npy").read_bytes(), json.loads((cache / f"{key}.json").read_text())


def _files(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock"))


# ---------------------------------------------------------------- (a) memory stays flat


def test_the_builds_memory_does_not_grow_with_the_number_of_images(tmp_path):
    crop = 96  # 27.6 KB an image: 1000 images held in RAM would be 27.6 MB
    warm = make_image_folder(tmp_path / "warm", classes=1, per_class=8, size=24)
    small = make_image_folder(tmp_path / "small", classes=2, per_class=50, size=24, seed=1)
    large = make_image_folder(tmp_path / "large", classes=2, per_class=500, size=24, seed=2)
    deltas = {}
    for name, root in [("small", small), ("large", large)]:
        seen, _ = _finish(_child(tmp_path, root, tmp_path / f"cache_{name}", crop, warm=warm))
        assert seen["n"] == len(scan(root).paths) and seen["bad"] == 0 and seen["sum"] > 0
        deltas[name] = seen
    print("RssAnon growth (bytes):", deltas)
    held = 1000 * 3 * crop * crop
    # the build and an epoch over a memory-mapped split: nowhere near the images' size, for N or 10N
    assert deltas["large"]["build"] - deltas["small"]["build"] < 6 << 20 < held / 4, deltas
    assert deltas["large"]["build"] < 8 << 20 and deltas["large"]["epoch"] < 8 << 20, deltas


# ---------------------------------------------------------------- (b) a killed build resumes


def _folder_with_a_bad_image(root: Path) -> Path:
    make_image_folder(root, classes=2, per_class=9, size=24)
    (root / "class_0" / "img_001.jpg").write_bytes(b"not a jpeg")  # unreadable, before the kill
    return root


def test_a_build_killed_after_two_chunks_resumes_there_and_equals_a_fresh_build(tmp_path, monkeypatch, caplog):
    root = _folder_with_a_bad_image(tmp_path / "images")
    data, crop = scan(root), 24
    key = cache_key(data, crop, crop)
    monkeypatch.setattr(cache_module, "CHUNK_BYTES", 4 * 3 * crop * crop)  # a chunk of 4 images

    class Killed(Exception):
        pass

    def die_after_two(done: int) -> None:
        if done == 8:
            raise Killed()

    monkeypatch.setattr(cache_module, "chunk_written", die_after_two)
    with pytest.raises(Killed):
        load_cache(data, crop, crop, tmp_path / "cache", workers=2)
    assert _files(tmp_path / "cache") == [f"{key}.partial.json", f"{key}.partial.npy"]
    assert json.loads((tmp_path / "cache" / f"{key}.partial.json").read_text())["done"] == 8

    monkeypatch.setattr(cache_module, "chunk_written", lambda done: None)
    decoded: list[Path] = []
    decode = cache_module.decode_or_reason
    monkeypatch.setattr(cache_module, "decode_or_reason", lambda path, *a: (decoded.append(path), decode(path, *a))[1])
    caplog.set_level(logging.INFO, logger="animalcls.data")
    images, bad = load_cache(data, crop, crop, tmp_path / "cache", workers=2)
    assert len(decoded) == len(data.paths) - 8  # only what the kill left
    assert any("resuming" in r.getMessage() and "at image 8 of 18" in r.getMessage() for r in caplog.records)
    assert bad and bad[0][0] == os.path.join("class_0", "img_001.jpg")

    fresh, fresh_bad = load_cache(data, crop, crop, tmp_path / "fresh", workers=1)
    assert _cache_bytes(tmp_path / "cache", key) == _cache_bytes(tmp_path / "fresh", key)  # byte for byte
    assert torch.equal(images, fresh) and bad == fresh_bad
    assert _files(tmp_path / "cache") == [f"{key}.json", f"{key}.npy"]  # the progress record is gone


@pytest.mark.parametrize("damage", ["truncated", "other_shape", "no_record"])
def test_a_damaged_partial_build_is_never_taken_and_starts_over(tmp_path, monkeypatch, caplog, damage):
    root = make_image_folder(tmp_path / "images", classes=2, per_class=6, size=24)
    data, crop = scan(root), 24
    key = cache_key(data, crop, crop)
    cache = tmp_path / "cache"
    monkeypatch.setattr(cache_module, "CHUNK_BYTES", 4 * 3 * crop * crop)

    def die(done: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_module, "chunk_written", die)
    with pytest.raises(KeyboardInterrupt):
        load_cache(data, crop, crop, cache, workers=1)
    partial, record = cache / f"{key}.partial.npy", cache / f"{key}.partial.json"
    if damage == "truncated":
        partial.write_bytes(partial.read_bytes()[:1000])
    elif damage == "other_shape":
        record.write_text(json.dumps({**json.loads(record.read_text()), "shape": [99, 3, crop, crop]}))
    else:
        record.unlink()
    monkeypatch.setattr(cache_module, "chunk_written", lambda done: None)
    caplog.set_level(logging.INFO, logger="animalcls.data")
    images, _ = load_cache(data, crop, crop, cache, workers=1)
    assert any("discarding the partial" in r.getMessage() for r in caplog.records)
    assert not any("resuming" in r.getMessage() for r in caplog.records)
    fresh, _ = load_cache(data, crop, crop, tmp_path / "fresh", workers=1)
    assert torch.equal(images, fresh)


# ---------------------------------------------------------------- (c) the disk is checked first


def test_too_little_disk_is_refused_before_decoding_with_the_numbers_and_the_ways_out(tmp_path, monkeypatch):
    root = make_image_folder(tmp_path / "images", classes=2, per_class=6, size=24)
    data = scan(root)
    decoded: list[object] = []
    monkeypatch.setattr(cache_module, "decode_or_reason", lambda *a: decoded.append(a))
    monkeypatch.setattr(cache_module.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 5000))
    with pytest.raises(AnimalclsError) as error:
        load_cache(data, 48, 48, tmp_path / "cache", workers=1)
    message = str(error.value)
    assert "0.01 MB free" in message and "12 images x 6912 bytes" in message, message
    for way_out in ("data.cache_dir=", "crop", "data.pipeline=pil"):
        assert way_out in message
    assert decoded == [] and _files(tmp_path / "cache") == []


def test_too_little_disk_exits_2_from_the_cli(tmp_path, monkeypatch, cli, capsys):
    root = make_image_folder(tmp_path / "images")
    real = shutil.disk_usage  # only the cache dir's disk is short (the run dir's has room)
    short = shutil._ntuple_diskusage(10**9, 10**9, 5000)
    monkeypatch.setattr(
        cache_module.shutil, "disk_usage", lambda path: short if Path(path).name == "cache" else real(path)
    )
    assert cli(tiny_train_args(root), tmp_path) == 2
    err = capsys.readouterr().err
    assert "No space left on device for the decode cache" in err and "Traceback" not in err


# ---------------------------------------------------------------- (d) one build per machine


def test_two_jobs_share_one_build_and_a_killed_builders_work_is_resumed_by_the_other(tmp_path):
    root = make_image_folder(tmp_path / "images", classes=2, per_class=20, size=24)
    data, crop, cache = scan(root), 24, tmp_path / "cache"
    key = cache_key(data, crop, crop)
    record = cache / f"{key}.partial.json"
    builder = _child(tmp_path, root, cache, crop, slow=0.5, start_new_session=True)  # 40 images, ~10 s
    deadline = time.time() + 120
    while time.time() < deadline and not (record.exists() and json.loads(record.read_text())["done"] >= 8):
        time.sleep(0.05)
    waiter = _child(tmp_path, root, cache, crop)
    first = []
    for line in waiter.stderr:  # it finds the lock held and waits
        first.append(line)
        if "waiting for another job" in line:
            break
    assert builder.poll() is None, "the builder finished before the second job came to wait"
    os.kill(builder.pid, signal.SIGKILL)
    builder.wait(timeout=60)
    seen, rest = _finish(waiter)
    err = "".join(first) + rest
    done_at_kill = int(err.split("at image ")[1].split()[0]) if "at image " in err else -1
    assert "waiting for another job" in err and done_at_kill >= 8, err
    assert "decoding" not in err  # resumed, not started over
    assert seen["n"] == 40 and seen["bad"] == 0
    fresh, _ = load_cache(data, crop, crop, tmp_path / "fresh", workers=1)
    assert _cache_bytes(cache, key) == _cache_bytes(tmp_path / "fresh", key)
    assert _files(cache) == [f"{key}.json", f"{key}.npy"]
    again, _ = load_cache(data, crop, crop, cache, workers=1)  # and a third job just reads it
    assert torch.equal(again, fresh)


def test_a_split_reads_batches_from_the_map_without_copying_it(tmp_path):
    root = make_image_folder(tmp_path / "images", classes=2, per_class=6, size=24)
    images, _ = load_cache(scan(root), 24, 24, tmp_path / "cache", workers=1)
    rows = torch.tensor([5, 0, 7, 3])
    batches = TensorBatches(images, torch.arange(4), 2, torch.device("cpu"), shuffle=False, rows=rows)
    seen = [(x, y) for x, y in batches]
    assert torch.equal(torch.cat([x for x, _ in seen]), images[rows])
    assert torch.cat([y for _, y in seen]).tolist() == [0, 1, 2, 3]
    cache_file = next((tmp_path / "cache").glob("*[0-9a-f].npy"))
    assert f" {cache_file}" in Path("/proc/self/maps").read_text()  # the images are the mapped file


# ---------------------------------------------------------------- animalcls cache list|clean


def test_cache_list_and_clean_name_each_cache_and_keep_what_is_in_use(tmp_path, monkeypatch, cli, capsys):
    root = make_image_folder(tmp_path / "images", classes=2, per_class=6, size=24)
    data, cache = scan(root), tmp_path / "cache"
    load_cache(data, 24, 24, cache, workers=1)  # complete
    monkeypatch.setattr(cache_module, "CHUNK_BYTES", 4 * 3 * 32 * 32)

    def stop(done: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_module, "chunk_written", stop)
    with pytest.raises(KeyboardInterrupt):
        load_cache(data, 32, 32, cache, workers=1)  # partial, 4 of 12
    (cache / "0123456789abcdef.pt").write_bytes(b"x" * 1000)  # a version-1 cache
    complete, partial = cache_key(data, 24, 24), cache_key(data, 32, 32)
    assert cli(["cache", "list", f"data.cache_dir={cache}"], tmp_path) == 0
    out = capsys.readouterr().out
    assert f"{complete}  complete" in out and f"{partial}  partial" in out and "4/12 images" in out, out
    assert "0123456789abcdef  old-format" in out and "3 cache(s)" in out
    assert cli(["cache", "clean", f"data.cache_dir={cache}"], tmp_path) == 0
    assert _files(cache) == [f"{complete}.json", f"{complete}.npy"]
    assert cli(["cache", "clean", f"data.cache_dir={cache}", "all=true"], tmp_path) == 0
    assert _files(cache) == []
    assert cli(["cache", "prune"], tmp_path) == 2


# ---------------------------------------------------------------- start-up at scale


def test_the_string_scan_keeps_the_order_of_sorted_paths(tmp_path):
    """scan sorts plain strings by their parts (fast at 200k files); the split by seed depends on
    the order, which must stay that of the sorted Paths it used before."""
    root = tmp_path / "images"
    names = [
        "a b/x.jpg",
        "a/x.jpg",
        "a-b.jpg",
        "a.jpg",
        "B.jpg",
        "b.JPG",
        "img10.png",
        "img2.png",
        "z/y/0.jpg",
        "z.png",
    ]
    for name in names:
        for label in ("one", "two two"):
            path = root / label / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"")
    (root / "one" / "notes.txt").write_bytes(b"")
    data = scan(root)
    expected = []
    for label in ("one", "two two"):
        files = [p for p in (root / label).rglob("*") if p.is_file() and p.suffix.lower() != ".txt"]
        expected += [str(p.relative_to(root)) for p in sorted(files)]
    assert data.paths == expected and data.labels.tolist() == [0] * len(names) + [1] * len(names)
