"""Issue 21, a block (quasi-random) read order for decode caches larger than RAM: `block_order` is a
seeded permutation whose windows read a few contiguous runs of rows, sharded across ranks as the
random order is; `data.order` and its sizes are checked before any data is read."""

from __future__ import annotations

import pytest
import torch
from test_run_id_keys import PINNED

from animalcls.config import compose, validate
from animalcls.data import TensorBatches, block_order
from animalcls.errors import AnimalclsError
from animalcls.record import Resolved, recipe_settings, run_id

RESOLVED = Resolved(precision="fp32", data_id="abc")


def _order(n: int, block: int, window: int, seed: int = 0) -> torch.Tensor:
    return block_order(n, torch.Generator().manual_seed(seed), block, window)


def _batches(n: int, order: str, epoch: int = 0, rank: int = 0, world: int = 1, shuffle: bool = True) -> list[int]:
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1)
    batches = TensorBatches(
        images,
        torch.arange(n),
        7,
        torch.device("cpu"),
        shuffle=shuffle,
        seed=5,
        rank=rank,
        world_size=world,
        order=order,
        block_images=4,
        block_window=3,
    )
    batches.set_epoch(epoch)
    return [int(y) for _, ys in batches for y in ys]


# ---------------------------------------------------------------- the order


@pytest.mark.parametrize("n,block,window", [(0, 4, 2), (1, 4, 2), (10, 4, 2), (100, 7, 3), (1000, 256, 8), (64, 8, 8)])
def test_block_order_is_a_permutation(n, block, window):
    order = _order(n, block, window)
    assert order.dtype == torch.long and sorted(order.tolist()) == list(range(n))


def test_same_seed_and_epoch_give_the_same_order_and_another_epoch_another():
    assert torch.equal(_order(1000, 16, 4, seed=3), _order(1000, 16, 4, seed=3))
    assert not torch.equal(_order(1000, 16, 4, seed=3), _order(1000, 16, 4, seed=4))
    assert _batches(200, "block", epoch=1) == _batches(200, "block", epoch=1)
    assert _batches(200, "block", epoch=1) != _batches(200, "block", epoch=2)
    assert sorted(_batches(200, "block", epoch=2)) == list(range(200))


def _windows(order: list[int], block: int, window: int) -> list[list[int]]:
    """The output cut where `window` whole blocks have been served (the last may have fewer)."""
    n, windows, first = len(order), [], 0
    while first < n:
        blocks: set[int] = set()
        for end in range(first + 1, n + 1):
            blocks.add(order[end - 1] // block)
            size = sum(min((b + 1) * block, n) - b * block for b in blocks)
            if len(blocks) == window and end - first == size:
                break
        windows.append(order[first:end])
        first = end
    return windows


@pytest.mark.parametrize("n,block,window", [(1000, 16, 4), (1003, 16, 4), (50, 7, 3), (256, 256, 8), (30, 1, 5)])
def test_each_window_reads_the_rows_of_window_blocks(n, block, window):
    order = _order(n, block, window).tolist()
    windows = _windows(order, block, window)
    blocks_seen: set[int] = set()
    for i, chunk in enumerate(windows):
        blocks = {p // block for p in chunk}
        assert len(blocks) == window or (i == len(windows) - 1 and len(blocks) < window)
        # whole blocks, each a contiguous run of positions: exactly the positions of these blocks
        assert sorted(chunk) == [p for b in sorted(blocks) for p in range(b * block, min((b + 1) * block, n))]
        assert not blocks & blocks_seen
        blocks_seen |= blocks
        short = n % block and (n - 1) // block in blocks  # the short last block, in whichever window
        assert len(chunk) == window * block or short or i == len(windows) - 1
    blocks_total = (n + block - 1) // block
    assert len(windows) == (blocks_total + window - 1) // window


def test_the_blocks_are_shuffled_and_so_are_the_positions_within_a_window():
    order = _order(4096, 64, 4, seed=1).tolist()
    firsts = [order[i] // 64 for i in range(0, 4096, 256)]
    assert firsts != sorted(firsts)  # blocks not in file order
    window = order[:256]
    assert window != sorted(window)  # positions shuffled within the window


def test_block_1_window_1_is_a_plain_shuffle():
    order = _order(500, 1, 1, seed=2)
    assert sorted(order.tolist()) == list(range(500)) and order.tolist() != list(range(500))
    whole = _order(100, 100, 1)  # one block: a shuffle of everything, as is one window of every block
    assert sorted(whole.tolist()) == list(range(100)) and whole.tolist() != list(range(100))


def test_bad_sizes_raise():
    for block, window in [(0, 1), (1, 0), (-3, 2)]:
        with pytest.raises(ValueError):
            _order(10, block, window)


@pytest.mark.parametrize("world", [2, 3, 4])
def test_ranks_take_disjoint_shards_of_one_global_block_order(world):
    shards = [_batches(103, "block", epoch=3, rank=r, world=world) for r in range(world)]
    assert sorted(sum(shards, [])) == list(range(103))
    whole = _batches(103, "block", epoch=3)
    assert all(shards[r] == whole[r::world] for r in range(world))  # the global order, dealt out


def test_evaluation_stays_in_row_order_and_random_stays_randperm():
    assert _batches(50, "block", shuffle=False) == list(range(50))
    generator = torch.Generator().manual_seed(5 * 100_003 + 2)
    assert _batches(50, "random", epoch=2) == torch.randperm(50, generator=generator).tolist()  # unchanged
    with pytest.raises(ValueError, match="order='blocks'"):
        _batches(10, "blocks")


def test_rows_map_positions_to_cache_rows_in_runs():
    rows = torch.arange(0, 400, 2)  # a split's sorted rows of the cache
    images = torch.zeros((400, 1, 1, 1), dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(400) % 256
    batches = TensorBatches(
        images,
        rows.clone(),
        50,
        torch.device("cpu"),
        shuffle=True,
        rows=rows,
        order="block",
        block_images=10,
        block_window=5,
    )
    served = [int(y) for _, ys in batches for y in ys]
    assert sorted(served) == rows.tolist()
    for first in range(0, 200, 50):  # a window: 5 runs of 10 consecutive split rows
        assert len({r // 20 for r in served[first : first + 50]}) == 5


# ---------------------------------------------------------------- the config


def test_the_default_run_id_is_unchanged_and_block_gets_its_own():
    default = compose([])
    assert (default.data.order, default.data.block_images, default.data.block_window) == ("random", 256, 8)
    assert run_id(default, RESOLVED) == PINNED["default"][0]
    spelled = compose(["data.order=random", "data.block_images=256", "data.block_window=8"])
    assert run_id(spelled, RESOLVED) == PINNED["default"][0] and recipe_settings(spelled) == {}
    for data in ("animals", "demo", "standin"):
        assert compose([f"data={data}"]).data.order == "random"
    block = compose(["data.order=block"])
    assert run_id(block, RESOLVED) != PINNED["default"][0]
    assert recipe_settings(block) == {"data.order": "block"}
    smaller = compose(["data.order=block", "data.block_images=64"])
    assert run_id(smaller, RESOLVED) not in (run_id(block, RESOLVED), PINNED["default"][0])
    validate(block)
    validate(smaller)


@pytest.mark.parametrize(
    "overrides,phrase",
    [
        (["data.order=blocks"], "data.order='blocks' is not known; choose one of: random, block"),
        (["data.order=block", "data.pipeline=pil"], "use data.pipeline=cached with it, or data.order=random"),
        (["data.block_images=64"], "data.block_images=64 shapes data.order=block, but data.order=random"),
        (["data.block_window=2", "data.block_images=9"], "or drop them"),
    ],
)
def test_bad_orders_fail_before_any_data_saying_what_to_type(overrides, phrase):
    with pytest.raises(AnimalclsError) as error:
        validate(compose(overrides))
    assert phrase in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("override", ["data.block_images=0", "data.block_window=0", "data.block_images=2.5"])
def test_bad_sizes_fail_at_the_override(override):
    with pytest.raises(AnimalclsError) as error:
        compose(["data.order=block", override])
    key = override.split("=")[0]
    assert f"{key} takes a whole number in [1, 1000000]" in str(error.value)
