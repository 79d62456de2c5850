"""The EMA momentum schedule of the momentum-target methods (BYOL, MoCo, DINO)."""

import math

import pytest

from objectives.momentum import cosine_momentum


@pytest.mark.parametrize(("step", "total", "base", "final", "expected"), [
    (0, 1000, 0.99, 1.0, 0.99),  # starts at base
    (1000, 1000, 0.99, 1.0, 1.0),  # ends at final
    (500, 1000, 0.99, 1.0, 0.995),  # halfway: the mean of the two
    (250, 1000, 0.996, 1.0, 1.0 - 0.004 * (1 + math.cos(math.pi / 4)) / 2),  # BYOL's formula
    (2000, 1000, 0.99, 1.0, 1.0),  # past the end: stays at final
])
def test_cosine_momentum(step, total, base, final, expected):
    # Rule: tau = final - (final - base) * (cos(pi * step / total) + 1) / 2, clamped to [0, total].
    assert cosine_momentum(step, total, base, final) == pytest.approx(expected, abs=1e-15)


def test_cosine_momentum_needs_a_positive_total():
    # Rule: a schedule over no steps is an error, not a division by zero.
    with pytest.raises(ValueError, match="total_steps >= 1"):
        cosine_momentum(0, 0, 0.99, 1.0)
