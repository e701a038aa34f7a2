"""Batched assignment: the pairs of loads and agent slots with the greatest total score."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = ["solve"]


def solve(
    candidates: list[list[tuple[int, float]]], free: dict[int, int],
    step: dict[int, float] | None = None,
) -> list[int | None]:  # fmt: skip
    """Chooses an agent for each load so that as many loads as can be get one, and of
    those choices, the total score is greatest; of choices as good, the earlier loads
    get one.

    Args:
        candidates: per load, in order of service, its (agent row, score) pairs.
        free: per agent row, how many more loads it can take.
        step: per agent row, how much less each load after the first scores with it
            (the load-balance term of one more load in flight); none if left out.

    Returns:
        Per load, the chosen agent row, or None when it gets none.

    Each agent becomes one column per free slot, never more than the loads
    that list it, the k-th dearer by k steps (so the total score is the one
    the loads would have, made one after the other); each load has a column of
    its own meaning "none", dearer than any difference of total score, and
    dearer by a hair (far below any score that counts) for an earlier load, so
    that a tie does not leave the oldest load waiting, batch after batch.
    Pairs not listed cannot be made. scipy's linear_sum_assignment, which is
    deterministic, solves it. (Pairs not listed used to cost 1e18, where floats
    are 128 apart: with one load left without an agent, the scores no longer
    counted.)
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
    step = step or {}
    top = max((abs(score) for pairs in candidates for _, score in pairs), default=0.0)
    top += max((abs(step.get(row, 0.0)) * cols for row, (_, cols) in first.items()), default=0.0)
    hair = (top or 1.0) * 2.0**-30  # times n: still far below a score difference that counts
    cost = np.full((n, width + n), np.inf)
    # none: one more load unserved outweighs any sum of score differences
    cost[np.arange(n), width + np.arange(n)] = 1.0 + 2.0 * n * top + hair * np.arange(n, 0, -1)
    slot = {row: np.arange(cols) * step.get(row, 0.0) for row, (_, cols) in first.items()}
    for li, pairs in enumerate(candidates):
        for row, score in pairs:
            start, cols = first[row]
            cost[li, start : start + cols] = slot[row] - score
    chosen: list[int | None] = [None] * len(candidates)
    col_row = np.empty(width, np.int64)
    for row, (start, cols) in first.items():
        col_row[start : start + cols] = row
    for li, col in zip(*linear_sum_assignment(cost), strict=True):
        if col < width:
            chosen[int(li)] = int(col_row[col])
    return chosen
