"""tools/bench_decode.py's agreement figures: what one flipped token does to each of them."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

import bench_decode as bd  # noqa: E402


def test_identical_outputs_agree_everywhere():
    a = [[1, 2, 3, 4], [5, 6], []]
    d = bd.agreement_detail(a, [list(x) for x in a])
    assert d == {"clips": 3, "sequences": 1.0, "first_token": 1.0, "prefix": 1.0, "positions": 1.0}


def test_one_late_flip_fails_the_sequence_not_the_prefix():
    # the H200 case: a near-tie flips at step 3 and the greedy continuation differs from there on
    ref = [[1, 2, 3, 4, 5, 6, 7, 8], [9, 9, 9, 9]]
    fast = [[1, 2, 3, 7, 7, 7, 7, 7], [9, 9, 9, 9]]
    d = bd.agreement_detail(fast, ref)
    assert d["sequences"] == 0.5 == bd.agreement(fast, ref)
    assert d["first_token"] == 1.0
    assert d["prefix"] == (3 / 8 + 1.0) / 2  # 0.6875
    assert d["positions"] == round((3 + 1 + 4) / 12, 4)  # position 6 happens to match again


def test_first_token_and_length_differences_count():
    # a fast-path bug shows at once: the first token differs; a shorter output counts against the longer one
    d = bd.agreement_detail([[2, 2, 2], [1, 2]], [[1, 2, 2], [1, 2, 3, 4]])
    assert d["first_token"] == 0.5
    assert d["prefix"] == (0 + 2 / 4) / 2
    assert d["positions"] == round((2 + 2) / 7, 4)
    assert d["sequences"] == 0.0


def test_common_prefix_and_no_clips():
    assert bd.common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert bd.common_prefix([], [1]) == 0
    assert bd.agreement_detail([], [])["clips"] == 0
