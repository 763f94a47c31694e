"""A task's exact position: lanes, merged rounds, re-splits and the durable form."""

import numpy as np

from kubeml.control.plan.position import Position


def test_merged_samples_advance_their_lane_and_a_resplit_keeps_the_rest():
    position = Position.start(1000, 2, seed=1, epoch=0)
    first = [lane.order.copy() for lane in position.lanes]
    position.advance(0, 300, 3.0, 5)
    position.advance(1, 100, 1.0, 2)
    assert position.lanes[0].remaining.tolist() == first[0][300:].tolist()
    position.resplit(3)
    assert position.parallelism == 3
    left = np.concatenate([lane.remaining for lane in position.lanes])
    assert left.tolist() == first[0][300:].tolist() + first[1][100:].tolist()
    for func_id, lane in enumerate(position.lanes):
        position.advance(func_id, len(lane.order), 0.0, 1)
    assert position.finished
    assert sorted(position.trained_samples().tolist()) == list(range(1000))


def test_the_durable_form_round_trips():
    position = Position.start(500, 2, seed=3, epoch=4)
    position.advance(1, 64, 2.5, 4)
    position.round, position.failures = 1, 1
    back = Position.from_state(position.to_state())
    assert (back.epoch, back.round, back.seed, back.samples, back.failures) == (4, 1, 3, 64, 1)
    assert back.loss_sum == 2.5 and back.batches == 4
    for a, b in zip(position.lanes, back.lanes, strict=True):
        assert a.remaining.tolist() == b.remaining.tolist()
        # How far each lane got survives too: a resumed function's batch_index goes on.
        assert (a.done, a.order.tolist()) == (b.done, b.order.tolist())
