"""Batched assignment: the pairs of loads and agent slots with the greatest total score."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = ["solve"]

_NO = 1e18  # the cost of a pair that may not be made


def solve(candidates: list[list[tuple[int, float]]], free: dict[int, int]) -> list[int | None]:
    """Chooses an agent for each load so the total score is greatest.

    Args:
        candidates: per load, its (agent row, score) pairs.
        free: per agent row, how many more loads it can take.

    Returns:
        Per load, the chosen agent row, or None when it gets none.

    Each agent becomes one column per free slot (never more than there are
    loads); scipy's linear_sum_assignment, which is deterministic, solves
    the rectangular problem.
    """
    first: dict[int, int] = {}
    width = 0
    for pairs in candidates:
        for row, _ in pairs:
            if row not in first:
                first[row] = width
                width += min(free[row], len(candidates))
    if width == 0:
        return [None] * len(candidates)
    cost = np.full((len(candidates), width), _NO)
    for li, pairs in enumerate(candidates):
        for row, score in pairs:
            start = first[row]
            cost[li, start : start + min(free[row], len(candidates))] = -score
    chosen: list[int | None] = [None] * len(candidates)
    col_row = np.empty(width, np.int64)
    for row, start in first.items():
        col_row[start : start + min(free[row], len(candidates))] = row
    for li, col in zip(*linear_sum_assignment(cost), strict=True):
        if cost[li, col] < _NO / 2:
            chosen[int(li)] = int(col_row[col])
    return chosen
