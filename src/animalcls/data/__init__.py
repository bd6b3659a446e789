"""Data: scan an ImageFolder tree, split it by seed, decode once into a uint8 cache, and load batches.

Two pipelines feed the same engine with uint8 NCHW batches:
- `cached` (default): every image is decoded and resized once (PIL, as torchvision's Resize) into a
  uint8 tensor kept on disk, keyed by the file list and decode settings; random flip/rotation then
  run per batch on the device (animalcls.augment), so every epoch still sees fresh augmentation.
- `pil`: the paper's notebook path, ImageFolder-style decoding with PIL transforms in DataLoader
  workers every epoch. Kept for comparison (`animalcls bench`) and for data too large to cache.

One job per module, data flowing one way:

    scan.py     which images, which class, which split: scan, data identity, seeded split, manifest
    decode.py   one image file to pixels (any PIL mode to RGB, Resize + CenterCrop, uint8 tensor)
    cache.py    the decode-once cache: key, a streamed, resumable build under a lock, checked
                memory-mapped read, list and clean
    loaders.py  TensorBatches (over the cache) and PILBatches (DataLoader over files)

Import names from here (`from animalcls.data import scan`); to monkeypatch a name, patch the
module that uses it (e.g. `animalcls.data.cache`), since this package only re-exports.
"""

from animalcls.data.cache import CACHE_VERSION, cache_key, load_cache
from animalcls.data.decode import decode, decode_uint8, find_unreadable
from animalcls.data.loaders import PILBatches, TensorBatches, Transform, block_order, pil_transform
from animalcls.data.scan import (
    IMAGE_EXTENSIONS,
    SPLITS,
    Dataset,
    Indices,
    data_identity,
    manifest,
    scan,
    split_indices,
    split_sizes,
)

__all__ = [
    "CACHE_VERSION",
    "IMAGE_EXTENSIONS",
    "SPLITS",
    "Dataset",
    "Indices",
    "PILBatches",
    "TensorBatches",
    "Transform",
    "block_order",
    "cache_key",
    "data_identity",
    "decode",
    "decode_uint8",
    "find_unreadable",
    "load_cache",
    "manifest",
    "pil_transform",
    "scan",
    "split_indices",
    "split_sizes",
]
