"""SubjectSampler: epoch-seeded order, interleaved shares, unpadded evaluation."""

from __future__ import annotations

import pytest

from gazimed_lab.data.sampling import SubjectSampler


def _epoch(sampler: SubjectSampler, epoch: int) -> list:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_order_depends_on_seed_and_epoch_only():
    data = range(10)
    a, b = SubjectSampler(data, shuffle=True, seed=3), SubjectSampler(data, shuffle=True, seed=3)
    assert _epoch(a, 0) == _epoch(b, 0) and sorted(_epoch(a, 0)) == list(range(10))
    assert _epoch(a, 1) != _epoch(a, 0)
    assert _epoch(b, 5) == _epoch(a, 5)  # reached directly, as after a resume
    assert _epoch(SubjectSampler(data, shuffle=True, seed=4), 0) != _epoch(a, 0)


def test_shares_interleave_one_order_so_global_batches_match_one_process():
    data = range(11)
    one = _epoch(SubjectSampler(data, shuffle=True, seed=0), 2)
    shares = [_epoch(SubjectSampler(data, shuffle=True, seed=0, num_replicas=2, rank=r), 2)
              for r in (0, 1)]
    assert len(shares[0]) == len(shares[1]) == 5  # one subject left out this epoch
    batch = 2  # per process; one process with batch 4 sees the same subjects per step
    for step in range(2):
        merged = shares[0][step * batch:(step + 1) * batch] + shares[1][step * batch:(step + 1)
                                                                        * batch]
        assert sorted(merged) == sorted(one[step * 4:(step + 1) * 4])


def test_evaluation_serves_every_subject_once_without_padding():
    shares = [list(SubjectSampler(range(5), shuffle=False, seed=0, num_replicas=2, rank=r))
              for r in (0, 1)]
    assert shares == [[0, 2, 4], [1, 3]]
    assert list(SubjectSampler(range(0), shuffle=False, seed=0)) == []


def test_keyed_items_carry_the_epoch():
    sampler = SubjectSampler(range(3), shuffle=True, seed=0, keyed=True)
    assert {epoch for epoch, _ in _epoch(sampler, 4)} == {4}


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"`rank` must be in \[0, num_replicas\), got rank 2 of 2"):
        SubjectSampler(range(4), shuffle=True, seed=0, num_replicas=2, rank=2)
    with pytest.raises(ValueError, match=r"every process must get at least one subject, got 1"):
        SubjectSampler(range(1), shuffle=False, seed=0, num_replicas=2, rank=0)
