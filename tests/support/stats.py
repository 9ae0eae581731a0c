"""Statistical yardsticks shared by the tests of uniform-looking (masked) data."""

from __future__ import annotations

import math


def chi_square_critical(dof: int, z: float) -> float:
    """Wilson-Hilferty approximation of the chi-square quantile at normal score z."""
    a = 2.0 / (9.0 * dof)
    return dof * (1.0 - a + z * math.sqrt(a)) ** 3
