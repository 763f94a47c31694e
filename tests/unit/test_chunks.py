"""Chunk-level shuffling and assignment of training samples to functions."""

import numpy as np
import pytest

from kubeml.control.plan.chunks import (
    epoch_order,
    epoch_orders,
    even_splits,
    validation_slices,
)
from kubeml.stores.chunks import WINDOW_CHUNKS


@pytest.mark.parametrize(
    "n,parallelism,chunk",
    [(1000, 1, 64), (1000, 2, 128), (1000, 3, 64), (130, 5, 64), (64, 4, 64), (9_999, 3, 1280)],
)
def test_every_sample_goes_to_exactly_one_function(n, parallelism, chunk):
    lanes = epoch_orders(n, parallelism, seed=7, epoch=0, chunk_samples=chunk)
    assert len(lanes) == parallelism
    assert sorted(np.concatenate(lanes).tolist()) == list(range(n))
    sizes = [len(lane) for lane in lanes]
    assert max(sizes) - min(sizes) <= 1  # even stretches of the epoch's order


def test_the_order_is_chunk_local_a_stretch_touches_at_most_two_windows_of_chunks():
    chunk, n = 128, 128 * 100 + 17  # a short last chunk too
    order = epoch_order(n, chunk, seed=3, epoch=0)
    window = WINDOW_CHUNKS * chunk
    for start in range(0, n, 977):  # stretches at any offset
        touched = set((order[start : start + window] // chunk).tolist())
        assert len(touched) <= 2 * WINDOW_CHUNKS
    first = set((order[:window] // chunk).tolist())
    assert first != set(range(WINDOW_CHUNKS))  # the chunks are shuffled, not in storage order
    assert len(first) == WINDOW_CHUNKS  # and the window's samples mixed over all its chunks
    assert not np.array_equal(np.sort(order[:100]), order[:100])  # shuffled inside windows


def test_a_split_smaller_than_a_window_is_one_full_shuffle():
    order = epoch_order(1000, 1280, seed=1, epoch=0)
    assert sorted(order.tolist()) == list(range(1000))
    assert order[:10].tolist() != list(range(10))


def test_shuffle_depends_on_seed_and_epoch_and_is_reproducible():
    a = epoch_order(6400, 64, seed=1, epoch=0)
    assert np.array_equal(a, epoch_order(6400, 64, seed=1, epoch=0))
    assert not np.array_equal(a, epoch_order(6400, 64, seed=1, epoch=1))
    assert not np.array_equal(a, epoch_order(6400, 64, seed=2, epoch=0))
    # The chunk size is part of the plan: a dataset's own chunks, not a fixed 64.
    assert not np.array_equal(a, epoch_order(6400, 128, seed=1, epoch=0))


def test_validation_slices_cover_the_test_set_contiguously():
    slices = validation_slices(10, 3)
    assert [s[0] for s in slices] == [(0, 3), (3, 6), (6, 10)]
    assert validation_slices(1, 2) == [(), ((0, 1),)]
    assert even_splits(0, 2) == [(0, 0), (0, 0)]


def test_epoch_orders_cover_every_sample_once_and_follow_the_seed():
    orders = epoch_orders(1000, 3, seed=5, epoch=2)
    assert sorted(np.concatenate(orders).tolist()) == list(range(1000))
    again = epoch_orders(1000, 3, seed=5, epoch=2)
    assert all(np.array_equal(a, b) for a, b in zip(orders, again, strict=True))
    assert not np.array_equal(orders[0], epoch_orders(1000, 3, seed=6, epoch=2)[0])


def test_resplit_keeps_the_order_and_balances_the_remaining_samples():
    from kubeml.control.plan.chunks import resplit

    lanes = resplit([np.arange(0, 5), np.arange(10, 13), np.empty(0, dtype=np.int64)], 3)
    assert [len(x) for x in lanes] == [2, 3, 3]
    assert np.concatenate(lanes).tolist() == [0, 1, 2, 3, 4, 10, 11, 12]


def test_shard_of_reads_sorted_ranges_and_trains_in_the_given_order():
    from kubeml.control.plan.chunks import shard_of

    order = np.array([70, 3, 4, 71, 2, 200])
    ranges, local = shard_of(order)
    assert ranges == ((2, 5), (70, 72), (200, 201))
    shard = np.concatenate([np.arange(a, b) for a, b in ranges])
    assert shard[list(local)].tolist() == order.tolist()
    assert shard_of(np.empty(0, dtype=np.int64)) == ((), ())
