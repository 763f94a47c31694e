"""Chunk-level shuffling and assignment of training samples to functions."""

import numpy as np
import pytest

from kubeml.control.plan.chunks import assign_chunks, even_splits, validation_slices


def _samples(ranges):
    return [i for a, b in ranges for i in range(a, b)]


@pytest.mark.parametrize("n,parallelism", [(1000, 1), (1000, 2), (1000, 3), (130, 5), (64, 4)])
def test_every_sample_goes_to_exactly_one_function(n, parallelism):
    shards = assign_chunks(n, parallelism, seed=7, epoch=0)
    assert len(shards) == parallelism
    everything = sorted(i for shard in shards for i in _samples(shard))
    assert everything == list(range(n))


def test_shards_are_balanced_to_one_chunk_plus_the_short_last_one():
    sizes = [len(_samples(s)) for s in assign_chunks(10_000, 3, seed=1, epoch=0)]
    assert max(sizes) - min(sizes) <= 2 * 64
    even = [len(_samples(s)) for s in assign_chunks(64 * 99, 3, seed=1, epoch=0)]
    assert even == [64 * 33] * 3


def test_shuffle_depends_on_seed_and_epoch_and_is_reproducible():
    a = assign_chunks(6400, 2, seed=1, epoch=0)
    assert a == assign_chunks(6400, 2, seed=1, epoch=0)
    assert a != assign_chunks(6400, 2, seed=1, epoch=1)
    assert a != assign_chunks(6400, 2, seed=2, epoch=0)


def test_chunks_are_shuffled_not_left_in_order():
    shard = assign_chunks(6400, 1, seed=3, epoch=0)[0]
    assert len(shard) > 10  # many separate runs of chunks, not one contiguous range
    assert all((a % 64 == 0) for a, _ in shard)


def test_validation_slices_cover_the_test_set_contiguously():
    slices = validation_slices(10, 3)
    assert [s[0] for s in slices] == [(0, 3), (3, 6), (6, 10)]
    assert validation_slices(1, 2) == [(), ((0, 1),)]
    assert even_splits(0, 2) == [(0, 0), (0, 0)]


def test_epoch_orders_cover_every_sample_once_and_follow_the_seed():
    from kubeml.control.plan.chunks import epoch_orders

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
