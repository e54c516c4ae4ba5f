"""The engine's finite check (one dot product up to DOT_MAX values): exact for NaN and Inf anywhere, and for finite
values too big to square."""

import numpy as np
import pytest

from statestream.server.engine.model import DOT_MAX, finite


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 3), (1, 64), (16, 1, 1), (16, 64), (257,), (256, 64),
                                   (DOT_MAX + 1,)])
def test_one_bad_value_anywhere_is_found(shape):
    rng = np.random.default_rng(0)
    a = rng.uniform(-2, 2, shape).astype(np.float32)
    assert finite(a)
    flat = a.reshape(-1)
    for i in {0, min(1, flat.size - 1), flat.size // 2, flat.size - 1}:
        for bad in (np.nan, np.inf, -np.inf):
            b = flat.copy()
            b[i] = bad
            assert not finite(b.reshape(shape)), (i, bad)


def test_huge_finite_values_are_finite_and_a_view_is_checked_as_it_is():
    big = np.full(64, 3e38, np.float32)  # their squares overflow: checked value by value
    assert finite(big) and finite(-big)
    a = np.zeros((8, 8), np.float32)
    a[::2, 1] = np.nan
    assert finite(a[1::2]) and not finite(a[:, 1]) and finite(np.empty((0, 3), np.float32))
