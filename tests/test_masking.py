"""Patch masks (vit_jax/data/masking.py): exact counts, block shapes, determinism, mean ratio."""
from __future__ import annotations

import time

import numpy as np
import pytest

from vit_jax.data import masking

# (grid, count, min_block): EVA-01's 105 of 14x14, our mnist5k 7x7 setting, a non-square grid,
# and a nearly full one where blocks rarely fit and the fill has to finish the job.
CASES = [((14, 14), 105, 16), ((7, 7), 20, 4), ((6, 10), 24, 4), ((5, 5), 23, 4), ((16, 16), 75, 16)]


@pytest.mark.parametrize("grid,count,min_block", CASES)
def test_block_mask_exact_count_and_block_shapes(grid, count, min_block):
    rng = np.random.default_rng(0)
    fills = 0
    for _ in range(300):
        mask, boxes, filled = masking.block_mask_with_boxes(grid, count, rng, min_block=min_block)
        assert mask.shape == grid and mask.dtype == bool
        assert int(mask.sum()) == count
        fills += filled
        for top, left, h, w in boxes:
            assert 0.3 <= h / w <= 1 / 0.3, (h, w)
            assert 0 <= top and top + h <= grid[0] and 0 <= left and left + w <= grid[1]
            assert h < grid[0] and w < grid[1]
            assert mask[top:top + h, left:left + w].all()
        # every masked patch comes from a block or the fill
        covered = np.zeros(grid, bool)
        for top, left, h, w in boxes:
            covered[top:top + h, left:left + w] = True
        assert int((mask & ~covered).sum()) <= filled
    # the blocks do most of the work: the fill tops up a few patches on average
    assert fills / 300 < 0.1 * count


def test_block_masks_are_blocky_not_scattered():
    # blocks: a masked patch has masked neighbours far more often than under uniform masking
    def neighbour_rate(mask):
        m = mask.astype(int)
        same = (m[1:] & m[:-1]).sum() + (m[:, 1:] & m[:, :-1]).sum()
        return same / max(m.sum(), 1)
    rng = np.random.default_rng(1)
    block = np.mean([neighbour_rate(masking.block_mask((14, 14), 105, rng)) for _ in range(100)])
    rand = np.mean([neighbour_rate(masking.random_mask((14, 14), 105, rng)) for _ in range(100)])
    assert block > rand + 0.4, (block, rand)


def test_masks_repeat_for_a_seed_and_differ_across_seeds():
    for kind in masking.MASKERS:
        a = masking.make_mask(kind, (14, 14), 105, np.random.default_rng([3, 7]))
        b = masking.make_mask(kind, (14, 14), 105, np.random.default_rng([3, 7]))
        np.testing.assert_array_equal(a, b)
        others = [masking.make_mask(kind, (14, 14), 105, np.random.default_rng([3, s]))
                  for s in range(8, 16)]
        assert all((o != a).any() for o in others)


@pytest.mark.parametrize("kind", masking.MASKERS)
def test_mean_ratio_and_uniform_coverage(kind):
    # the mean ratio is the asked one, and over many draws every patch gets masked sometimes
    rng = np.random.default_rng(2)
    n = masking.num_masked(196, ratio=0.4)
    masks = np.stack([masking.make_mask(kind, (14, 14), n, rng) for _ in range(2000)])
    assert n == 78
    assert masks.mean() == pytest.approx(0.4, abs=0.003)
    per_patch = masks.mean(axis=0)
    # (block masks favour the centre, as BEiT's do: a block must fit inside the grid)
    assert per_patch.min() > 0.02


def test_num_masked_and_bad_input():
    assert masking.num_masked(256, count=105) == 105
    assert masking.num_masked(49, ratio=0.75) == 37
    with pytest.raises(ValueError, match="mask ratio"):
        masking.num_masked(49, ratio=1.0)
    with pytest.raises(ValueError, match="mask ratio"):
        masking.num_masked(49, ratio=0.0)
    with pytest.raises(ValueError, match="below the 49 patches"):
        masking.num_masked(49, count=49)
    with pytest.raises(ValueError, match="cannot mask"):
        masking.block_mask((4, 4), 16, np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown"):
        masking.make_mask("grid", (4, 4), 3, np.random.default_rng(0))


def test_block_mask_speed():
    """Cheap next to decoding an image: well under a millisecond for EVA's 14x14 / 105."""
    rng = np.random.default_rng(0)
    masking.block_mask((14, 14), 105, rng)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(200):
            masking.block_mask((14, 14), 105, rng)
        times.append((time.perf_counter() - t) / 200)
    assert min(times) < 1e-3, f"{min(times) * 1e6:.0f} us per mask"
