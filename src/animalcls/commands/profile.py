"""`animalcls profile [model=NAME] [aug=NAME] [key=value ...]`: params, GMACs (fvcore), GFLOPs
(2 x MACs of conv and linear layers: the paper's "efficiency") and CPU latency of a model at its
augmentation's input size. Needs no data and no weights."""

from __future__ import annotations

from animalcls.build import build_model
from animalcls.commands import given_keys
from animalcls.config import compose, validate
from animalcls.profile import profile_model

NUM_CLASSES = 151  # the paper's class count; the head is a small part of the cost


def main(args: list[str]) -> int:
    if "model.pretrained" not in given_keys(args, "profile"):
        args = [*args, "model.pretrained=false"]  # the cost does not depend on the weights: no download
    cfg = compose(args)
    validate(cfg)
    stats = profile_model(build_model(cfg, NUM_CLASSES), cfg.aug.crop, latency=True)
    print(f"model           {cfg.model.name} ({NUM_CLASSES} classes, {cfg.aug.crop}x{cfg.aug.crop} input)")
    print(f"params          {stats['params']:,}")
    print(f"GMACs (fvcore)  {stats['gmacs_fvcore']:.4f}")
    print(f"GFLOPs          {stats['gflops']:.4f}   (2 x MACs of conv and linear layers: the paper's 'efficiency')")
    print(f"CPU latency     {stats['latency_ms']:.1f} ms   (batch 1, median of 5)")
    return 0
