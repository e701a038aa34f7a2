"""Batched assignment: the pairs of loads and agent slots with the greatest total score."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = ["solve"]


def solve(candidates: list[list[tuple[int, float]]], free: dict[int, int]) -> list[int | None]:
    """Chooses an agent for each load so that as many loads as can be get one, and of
    those choices, the total score is greatest.

    Args:
        candidates: per load, its (agent row, score) pairs.
        free: per agent row, how many more loads it can take.

    Returns:
        Per load, the chosen agent row, or None when it gets none.

    Each agent becomes one column per free slot, never more than the loads
    that list it, and each load has a column of its own meaning "none", dearer
    than any difference of total score; pairs not listed cannot be made.
    scipy's linear_sum_assignment, which is deterministic, solves it. (Pairs not
    listed used to cost 1e18, where floats are 128 apart: with one load left
    without an agent, the scores no longer counted.)
    """
    wanted: dict[int, int] = {}  # agent row -> loads listing it, in order of first sight
    for pairs in candidates:
        for row, _ in pairs:
            wanted[row] = wanted.get(row, 0) + 1
    first: dict[int, tuple[int, int]] = {}  # agent row -> (first column, columns)
    width = 0
    for row, count in wanted.items():
        first[row] = (width, min(max(free[row], 0), count))  # (over capacity: none)
        width += first[row][1]
    if width == 0:
        return [None] * len(candidates)
    n = len(candidates)
    top = max((abs(score) for pairs in candidates for _, score in pairs), default=0.0)
    cost = np.full((n, width + n), np.inf)
    cost[np.arange(n), width + np.arange(n)] = 1.0 + 2.0 * n * top  # none: one more load
    for li, pairs in enumerate(candidates):  # served outweighs any sum of score differences
        for row, score in pairs:
            start, cols = first[row]
            cost[li, start : start + cols] = -score
    chosen: list[int | None] = [None] * len(candidates)
    col_row = np.empty(width, np.int64)
    for row, (start, cols) in first.items():
        col_row[start : start + cols] = row
    for li, col in zip(*linear_sum_assignment(cost), strict=True):
        if col < width:
            chosen[int(li)] = int(col_row[col])
    return chosen
