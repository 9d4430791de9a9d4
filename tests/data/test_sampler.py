"""The endless resumable sampler: no replay, no silent zero-step epochs, seeded."""

from itertools import islice

import pytest

from metis.data.sampler import ResumableSampler


def test_resume_at_and_across_epoch_boundaries_continues_the_stream():
    full = list(islice(iter(ResumableSampler(5, seed=3)), 23))
    assert sorted(full[:5]) == list(range(5)) and sorted(full[5:10]) == list(range(5))
    assert full[:5] != full[5:10]  # a new permutation each pass
    for consumed in (0, 4, 5, 10, 12):  # 5 and 10 are exactly at a pass boundary
        s = ResumableSampler(5, seed=3)
        s.load_state_dict({"consumed": consumed, "seed": 3, "size": 5})
        assert list(islice(iter(s), 23 - consumed)) == full[consumed:]


def test_advance_counts_only_trained_batches_and_state_round_trips():
    s = ResumableSampler(4, seed=0)
    it = iter(s)
    next(it), next(it), next(it)  # fetched ahead, not trained on
    s.advance(2)
    t = ResumableSampler(4, seed=0)
    t.load_state_dict(s.state_dict())
    assert t.consumed == 2


def test_mismatched_prompt_set_is_refused():
    with pytest.raises(ValueError, match="prompt set"):
        ResumableSampler(4, seed=0).load_state_dict({"consumed": 1, "seed": 0, "size": 5})
