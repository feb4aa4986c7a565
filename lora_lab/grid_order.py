"""The order a grid sweep runs its points in: a seeded permutation that spreads the searched values.

A grid walked in ``itertools.product`` order (the first parameter slowest) runs every small rank
before any large one: a grid cut short (``sweep.n_trials`` below the grid's size, ``sweep.timeout_s``,
an interrupted sweep) has seen one corner of the space, and a median pruner's start-up trials are
that corner, so its median is one that nothing later falls below. A plain shuffle (Optuna's
``GridSampler``) is no better in the small: on the 5 x 2 ``rank_alpha`` grid, 59 % of seeded shuffles start with
4 points that miss two or more of the 5 ranks (``tests/test_grid_order.py`` counts them).

``spread_order`` picks the points one at a time: next is a point whose levels have run no more than
the least-run level of their parameter, in as many parameters as possible, and among those the one
farthest from the points already picked (numeric choices by their rank among the sorted choices,
other choices as equal or not), ties broken by a seeded shuffle. So the first k points hold
min(k, levels) distinct values of every parameter (on rank_alpha: 4 of the 5 ranks and both scales
in the median pruner's 4 start-up trials, every rank in the first 5), and later prefixes stay close
to even (on the shipped grids, no level runs twice more than another). The order depends on the grid
and the seed alone, so every worker and every restart derives the same one: each point still runs exactly once (``lora_lab.study``).
"""

from __future__ import annotations

import itertools
import random
from typing import Any

import numpy as np


def _positions(choices: list[Any]) -> tuple[np.ndarray, bool]:
    """Each choice's position in [0, 1] and whether the choices are ordered (all numbers):
    numbers by their rank among the sorted choices, anything else by its index (compared as equal
    or not, see ``_distances``)."""
    ordered = all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in choices)
    n = len(choices)
    if not ordered or n == 1:
        return np.arange(n, dtype=float), False
    ranks = {value: rank for rank, value in enumerate(sorted(set(choices)))}
    top = max(len(ranks) - 1, 1)
    return np.array([ranks[c] / top for c in choices], dtype=float), True


def _distances(levels: np.ndarray, picked: np.ndarray, positions: list[np.ndarray], ordered: list[bool]) -> np.ndarray:
    """Euclidean distance of every point (rows of level indices) to one picked point: numeric
    parameters by position, the others 1 where the choices differ."""
    total = np.zeros(len(levels))
    for d, (pos, is_ordered) in enumerate(zip(positions, ordered, strict=True)):
        if is_ordered:
            total += (pos[levels[:, d]] - pos[picked[d]]) ** 2
        else:
            total += (levels[:, d] != picked[d]).astype(float)
    return np.sqrt(total)


def spread_order(space: dict[str, list[Any]], seed: int) -> list[dict[str, Any]]:
    """Every point of the grid ``space`` (parameter -> choices) exactly once, in the spread order
    described above, for ``seed`` (``sweep.sampler.seed``)."""
    names = list(space)
    if not names:
        return [{}]
    sizes = [len(space[name]) for name in names]
    levels = np.array(list(itertools.product(*(range(n) for n in sizes))), dtype=np.int64)
    order = list(range(len(levels)))
    random.Random(f"lora_lab.grid_order:{seed}").shuffle(order)
    levels = levels[order]  # ties go to the earliest point of this seeded shuffle
    laid_out = [_positions(list(space[name])) for name in names]
    positions = [pos for pos, _ in laid_out]
    ordered = [is_ordered for _, is_ordered in laid_out]
    counts = [np.zeros(n, dtype=np.int64) for n in sizes]
    nearest = np.full(len(levels), np.inf)  # each point's distance to the nearest picked point
    left = np.ones(len(levels), dtype=bool)
    picked_rows: list[int] = []
    for _ in range(len(levels)):
        # how far each point's levels have run beyond the least-run level of their parameter, summed
        # over the parameters: 0 keeps every parameter's levels even, and goes first
        used = sum(counts[d][levels[:, d]] - counts[d].min() for d in range(len(names)))
        used = np.where(left, used, np.iinfo(np.int64).max)
        candidates = np.flatnonzero(used == used.min())
        row = int(candidates[np.argmax(nearest[candidates])])  # argmax takes the first of equals
        picked_rows.append(row)
        left[row] = False
        for d in range(len(names)):
            counts[d][levels[row, d]] += 1
        nearest = np.minimum(nearest, _distances(levels, levels[row], positions, ordered))
    return [{name: space[name][int(levels[row, d])] for d, name in enumerate(names)} for row in picked_rows]
