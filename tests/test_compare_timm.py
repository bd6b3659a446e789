"""scripts/compare_timm.py's fairness checks on a tiny generated folder (no network, no ../shared).

The label and pixel checks need the timm package only. The whole pre-training check (model,
optimizer, loss, schedule, train.py's defaults) needs timm's train.py and validate.py: set
ANIMALCLS_TIMM_REPO to a pytorch-image-models checkout to run it too.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from argparse import Namespace
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from PIL import Image

from conftest import make_image_folder

pytest.importorskip("timm", reason="compare_timm's checks need timm (pip install timm)")

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "compare_timm.py"


@pytest.fixture(scope="module")
def compare() -> ModuleType:
    spec = importlib.util.spec_from_file_location("compare_timm", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["compare_timm"] = module
    spec.loader.exec_module(module)
    return module


def _folder(root: Path) -> Path:
    """3 classes of square images plus non-square ones (portrait and landscape)."""
    make_image_folder(root, classes=3, per_class=10, size=64)
    rng = np.random.default_rng(1)
    for c in range(3):
        for i, (w, h) in enumerate([(90, 61), (61, 90), (77, 64)]):
            pixels = np.clip(rng.normal(60 + 60 * c, 30, (h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"class_{c}" / f"rect_{i}.jpg", quality=90)
    return root


def _timm_args(compare: ModuleType, shared: list[str], train: list[str]) -> tuple[Namespace, Namespace]:
    """The namespaces validate.py and train.py would parse from the flags: the parts the
    transforms read (the full parse, with train.py's parser, is the ANIMALCLS_TIMM_REPO test)."""
    flags = dict(zip(shared, shared[1:]))
    common = dict(
        model="resnet18",
        num_classes=int(flags["--num-classes"]),
        img_size=int(flags["--img-size"]),
        input_size=None,
        in_chans=None,
        crop_pct=float(flags["--crop-pct"]),
        crop_mode=None,
        interpolation=flags["--interpolation"],
        mean=None,
        std=None,
        model_kwargs={"zero_init_last": False},
    )
    eval_args = Namespace(**common, use_train_size=False, crop_border_pixels=None)
    assert train[train.index("--train-interpolation") + 1] == "bilinear"
    train_args = Namespace(
        **common,
        no_aug=False,
        train_crop_mode=None,
        scale=[1.0, 1.0],
        ratio=[1.0, 1.0],
        vflip=0.0,
        color_jitter=0.0,
        color_jitter_prob=None,
        grayscale_prob=None,
        gaussian_blur_prob=None,
        aa=None,
        train_interpolation="bilinear",
        reprob=0.0,
        remode="pixel",
        recount=1,
    )
    return eval_args, train_args


def _prepared(compare: ModuleType, tmp_path: Path, size: tuple[int, int]):
    data = _folder(tmp_path / "images")
    cfg = compare.compose_recipe(size, seed=0)
    cfg.epochs = 3
    recipe = compare.recipe_values(cfg)
    split, classes = compare.animalcls_split(data, cfg)
    class_map = compare.write_split_folders(data, split, classes, tmp_path / "split")
    shared, train = compare.timm_flags(recipe, cfg, len(classes), class_map, workers=0)
    return data, cfg, split, classes, class_map, shared, train


def test_every_image_has_animalcls_label_in_timm_dataset(compare, tmp_path):
    data, cfg, split, classes, class_map, _, _ = _prepared(compare, tmp_path, (72, 64))
    checked = compare.check_labels(tmp_path / "split", class_map, split)
    assert sum(checked["images"].values()) == len(split) == 39
    # every class folder exists in every split, even where the split has no image of it
    for folder in ("train", "validation", "test"):
        assert sorted(p.name for p in (tmp_path / "split" / folder).iterdir()) == classes
    # a class map in another order: timm's labels are no longer animalcls' labels, and it says so
    class_map.write_text("".join(f"{c}\n" for c in reversed(classes)))
    with pytest.raises(compare.Unfair, match="is class"):
        compare.check_labels(tmp_path / "split", class_map, split)


def test_pixels_agree_where_the_views_are_the_same(compare, tmp_path):
    data, cfg, split, _, class_map, shared, train = _prepared(compare, tmp_path, (64, 64))
    eval_args, train_args = _timm_args(compare, shared, train)
    pixels = compare.check_pixels(data, tmp_path / "split", class_map, split, cfg, eval_args, train_args, count=8)
    assert pixels["images"] == min(8, int((split["split"] == "test").sum()))
    assert pixels["eval"]["agree"] and pixels["eval"]["max_abs"] < 1e-4, pixels
    # the training view is the same region; on non-square images resampled on a shifted grid
    assert pixels["train_view"]["mean_abs"] < 0.2, pixels


def test_pixels_differ_only_by_the_field_of_view_where_resize_exceeds_crop(compare, tmp_path):
    data, cfg, split, _, class_map, shared, train = _prepared(compare, tmp_path, (72, 64))
    eval_args, train_args = _timm_args(compare, shared, train)
    pixels = compare.check_pixels(data, tmp_path / "split", class_map, split, cfg, eval_args, train_args, count=8)
    assert not pixels["eval"]["agree"]  # --crop-pct 1.0: the whole square, animalcls the centre 64/72
    same_view = pixels["eval_at_animalcls_view"]
    assert same_view["agree"] and same_view["max_abs"] < 1e-4 and same_view["crop_pct"] == pytest.approx(64 / 72)


def test_timm_flags_match_the_recipe(compare):
    cfg = compare.compose_recipe((128, 112), seed=0)
    cfg.epochs = 5
    recipe = compare.recipe_values(cfg)
    shared, train = compare.timm_flags(recipe, cfg, 39, Path("class_map.txt"), workers=1)
    assert shared[shared.index("--crop-pct") + 1] == "1.0"
    assert "zero_init_last=False" in shared and "--class-map" in shared
    assert "--warmup-prefix" in train
    # the prefix adds the warm-up epochs to --epochs: 4 + 1 = animalcls' 5
    assert train[train.index("--epochs") + 1] == "4" and train[train.index("--warmup-epochs") + 1] == "1"
    assert train[train.index("--lr") + 1] == repr(cfg.lr)  # given: train.py does not rescale it
    cfg.epochs = 1
    with pytest.raises(compare.Unfair, match="no cosine"):
        compare.timm_flags(recipe, cfg, 39, Path("class_map.txt"), workers=1)


@pytest.mark.skipif(not os.environ.get("ANIMALCLS_TIMM_REPO"), reason="set ANIMALCLS_TIMM_REPO to a timm checkout")
def test_all_checks_with_train_py(compare, tmp_path):
    data = _folder(tmp_path / "images")
    args = Namespace(data=str(data), timm_repo=os.environ["ANIMALCLS_TIMM_REPO"], epochs=3, size=[72, 64])
    args.workers, args.pixels = 0, 8
    checked = compare.check_seed(args, 0, tmp_path)
    training = checked["checks"]["training"]
    assert training["epochs"] == [3, 3] and training["optimizer_settings_equal"]
    assert training["last_bn_weight_min_timm"] == 1.0  # zero_init_last=False
    assert any(line.startswith("field of view") for line in checked["known_differences"])


def test_timm_own_augmentation_leaves_train_py_defaults_and_says_so(compare):
    cfg = compare.compose_recipe((128, 112), seed=0)
    cfg.epochs = 5
    recipe = compare.recipe_values(cfg)
    _, matched = compare.timm_flags(recipe, cfg, 39, Path("class_map.txt"), workers=1)
    _, own = compare.timm_flags(recipe, cfg, 39, Path("class_map.txt"), workers=1, timm_aug="timm")
    dropped = {"--scale", "--ratio", "--color-jitter", "--train-interpolation"}
    assert dropped <= set(matched) and not dropped & set(own) and "--hflip" in own


@pytest.mark.skipif(not os.environ.get("ANIMALCLS_TIMM_REPO"), reason="set ANIMALCLS_TIMM_REPO to a timm checkout")
def test_timm_own_augmentation_is_checked_against_train_py_defaults(compare):
    cfg = compare.compose_recipe((128, 112), seed=0)
    cfg.epochs = 5
    recipe = compare.recipe_values(cfg)
    repo = Path(os.environ["ANIMALCLS_TIMM_REPO"])
    shared, own = compare.timm_flags(recipe, cfg, 39, Path("class_map.txt"), workers=1, timm_aug="timm")
    parsed = compare.parse_timm_args(repo, "train", [*shared, *own])
    settings = compare.check_timm_defaults(parsed, recipe, 4, timm_aug="timm")
    assert settings["color_jitter"] == 0.4 and settings["scale"] == [0.08, 1.0]
    with pytest.raises(compare.Unfair, match="color_jitter=0.4"):
        compare.check_timm_defaults(parsed, recipe, 4)  # the matched comparison would refuse these flags
