"""A function's samples a piece at a time: the batches of the whole lane, in its order,
while the function holds and reads only a bounded set of chunks."""

from __future__ import annotations

import itertools
import threading

import numpy as np
import pytest

from kubeml.control.plan.chunks import epoch_orders, shard_of
from kubeml.control.plan.position import Position
from kubeml.runtime.feed import PIECE_CHUNKS, ShardFeed, cut_pieces, piece_ranges
from kubeml.sdk.dataset import KubeDataset
from kubeml.stores.interfaces import ShardSource

CHUNK = 64
N_SAMPLES = CHUNK * 40 + 9  # 41 chunks, five windows and a bit, the last chunk short


class Numbers(KubeDataset):
    def __init__(self) -> None:
        super().__init__("numbers")
        self.held: list[int] = []  # samples held at each batch

    def __getitem__(self, index):
        self.held.append(len(self.data))
        return self.data[index], self.labels[index]

    def __len__(self):
        return len(self.data)


class CountingSource(ShardSource):
    """Sample i's feature is i; records the chunks each read touches and its thread."""

    def __init__(self, prefetches: bool = False) -> None:
        self.prefetches = prefetches
        self.reads: list[set[int]] = []
        self.threads: set[str] = set()

    def read(self, name, split, ranges):
        self.threads.add(threading.current_thread().name)
        samples = np.concatenate([np.arange(a, b) for a, b in ranges]) if ranges else []
        self.reads.append({int(s) // CHUNK for s in samples})
        x = np.asarray(samples, dtype=np.int64)
        return x.reshape(-1, 1), x


def _trained(feed: ShardFeed) -> list[int]:
    return [int(s) for x, _ in feed for s in x.reshape(-1)]


def _feed(source: ShardSource, lane: np.ndarray, batch: int = 16) -> tuple[ShardFeed, Numbers]:
    ranges, order = shard_of(lane)
    dataset = Numbers()
    feed = ShardFeed(source, dataset, "train", ranges, np.asarray(order), batch, CHUNK)
    return feed, dataset


@pytest.mark.parametrize("prefetches", [False, True])
def test_a_whole_split_lane_trains_in_order_from_pieces_of_a_bounded_set_of_chunks(prefetches):
    lane = epoch_orders(N_SAMPLES, 1, seed=4, epoch=1, chunk_samples=CHUNK)[0]
    source = CountingSource(prefetches)
    feed, dataset = _feed(source, lane)
    assert len(source.reads) == 1 and len(dataset.data) > 0  # the first piece, before a hook
    assert _trained(feed) == lane.tolist()  # every sample once, in the job's order
    feed.close()
    assert len(source.reads) >= 3  # not the whole lane at once
    assert all(len(chunks) <= PIECE_CHUNKS for chunks in source.reads)
    assert max(dataset.held) <= PIECE_CHUNKS * CHUNK  # what the user's dataset holds
    assert ("kubeml-read-ahead" in " ".join(source.threads)) is prefetches


def test_a_resplit_lane_and_a_replay_from_mid_lane_read_exactly_their_samples():
    position = Position.start(N_SAMPLES, 3, seed=2, epoch=0, chunk_samples=CHUNK)
    position.advance(0, 320, 0.0, 20)
    position.advance(2, 16, 0.0, 1)
    position.resplit(2)  # lanes now join stretches of the old ones
    for lane in position.lanes:
        source = CountingSource()
        feed, _ = _feed(source, lane.remaining)
        assert _trained(feed) == lane.remaining.tolist()
        assert all(len(chunks) <= PIECE_CHUNKS for chunks in source.reads)


def test_a_feed_closed_mid_lane_stops_reading_ahead():
    lane = epoch_orders(N_SAMPLES, 1, seed=0, epoch=0, chunk_samples=CHUNK)[0]
    source = CountingSource(prefetches=True)
    feed, _ = _feed(source, lane)
    batches = iter(feed)
    next(batches)
    feed.close()  # the job said stop after the first round
    assert len(source.reads) <= 2  # this piece and the one read ahead, no more


def test_pieces_are_whole_batches_and_one_piece_without_a_chunk_size():
    lane = epoch_orders(N_SAMPLES, 1, seed=0, epoch=0, chunk_samples=CHUNK)[0]
    pieces = cut_pieces(lane, 16, CHUNK)
    assert pieces[0][0] == 0 and pieces[-1][1] == len(lane)
    assert all(a % 16 == 0 for a, _ in pieces)
    assert all(b == c for (_, b), (c, _) in itertools.pairwise(pieces))
    assert cut_pieces(lane, 16, 0) == [(0, len(lane))]


def test_piece_ranges_cover_touched_chunks_and_place_every_sample():
    samples = np.array([128, 3, 200, 64, 5, 127, 66])
    ranges, local = piece_ranges(samples, CHUNK)
    assert ranges == ((3, 6), (64, 129), (200, 201))  # chunks 1 and 2 meet: one range
    read = np.concatenate([np.arange(a, b) for a, b in ranges])
    assert read[local].tolist() == samples.tolist()
    assert piece_ranges(np.empty(0, np.int64), CHUNK)[0] == ()
