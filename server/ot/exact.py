"""Exact sums of floats, kept as a Python integer times a power of two (no rounding until asked).

Used where a sum must equal :func:`math.fsum` over all values while being assembled from parts: the
shards of a distributed pass (each returns the exact sum of its ``f``), and the row values of a
potential epoch, whose sum is kept from version to version by subtracting the values that leave it
and adding the new ones. :meth:`ExactSum.to_float` rounds once, as :func:`math.fsum` does, so the
result is the same float64 whatever the parts were.

Imports numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["ExactSum"]


@dataclass(frozen=True, slots=True)
class ExactSum:
    """An exact sum of floats: ``mantissa * 2**exponent`` with Python integers (no rounding)."""

    mantissa: int
    exponent: int

    @staticmethod
    def of(values: np.ndarray) -> ExactSum:
        """The exact sum of finite float32/float64 ``values``, vectorised by binary exponent."""
        v = np.asarray(values, dtype=np.float64).ravel()
        if v.size == 0:
            return ExactSum(0, 0)
        if not np.isfinite(v).all():
            raise ValueError("values must be finite")
        frac, exp = np.frexp(v)  # v = frac * 2**exp, |frac| in [0.5, 1): frac * 2**53 is an integer
        mant = (frac * 2.0**53).astype(np.int64)
        order = np.argsort(exp, kind="stable")
        exp_sorted, mant_sorted = exp[order], mant[order]
        starts = np.flatnonzero(np.r_[True, exp_sorted[1:] != exp_sorted[:-1]])
        # 27 + 26 bit halves: sums of up to 2**36 values stay exact in int64
        hi = np.add.reduceat(mant_sorted >> 26, starts)
        lo = np.add.reduceat(mant_sorted & ((1 << 26) - 1), starts)
        low = int(exp_sorted[0]) - 53
        total = 0
        for h, lw, e in zip(hi.tolist(), lo.tolist(), exp_sorted[starts].tolist(), strict=True):
            total += ((h << 26) + lw) << (int(e) - 53 - low)
        return ExactSum(total, low)

    def __add__(self, other: ExactSum) -> ExactSum:
        low = min(self.exponent, other.exponent)
        return ExactSum(
            (self.mantissa << (self.exponent - low)) + (other.mantissa << (other.exponent - low)), low
        )

    def __neg__(self) -> ExactSum:
        return ExactSum(-self.mantissa, self.exponent)

    def __sub__(self, other: ExactSum) -> ExactSum:
        return self + -other

    def to_float(self) -> float:
        """The sum rounded once to the nearest float64 (as :func:`math.fsum` rounds)."""
        if self.exponent >= 0:
            return float(self.mantissa << self.exponent)
        return self.mantissa / (1 << -self.exponent)  # int / int is correctly rounded
