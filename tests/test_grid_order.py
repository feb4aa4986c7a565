"""The order a grid sweep runs its points in (lora_lab.grid_order), alone and as a real sweep plans it."""

from __future__ import annotations

import itertools
import random
from collections import Counter
from pathlib import Path

import mlflow
import pytest
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState
from tiny_trial import TINY

from lora_lab.config import register_configs
from lora_lab.grid_order import spread_order
from lora_lab.sweep import Sweep

CONF = str(Path(__file__).resolve().parent.parent / "conf")
RANK_ALPHA = {"lora.r": [1, 2, 4, 8, 16], "alpha_over_r": [1, 4]}
TARGETS = {"lora.targets": ["qv", "attn", "mlp", "all_linear"], "lora.r": [2, 8, 32]}


def _points(space):
    return [dict(zip(space, values, strict=True)) for values in itertools.product(*space.values())]


def _worst_prefix(order, space) -> tuple[bool, int]:
    """Over every prefix of ``order`` (its first k points): whether each parameter shows
    min(k, its levels) distinct values, and the largest gap between a parameter's most and least
    run level."""
    covered, gap = True, 0
    for k in range(1, len(order) + 1):
        for name, choices in space.items():
            counts = Counter(p[name] for p in order[:k])
            covered &= len(counts) == min(k, len(choices))
            per_level = [counts.get(c, 0) for c in choices]
            gap = max(gap, max(per_level) - min(per_level))
    return covered, gap


@pytest.mark.parametrize(
    "space, even",
    [
        (RANK_ALPHA, 1),
        (TARGETS, 1),
        ({"a": [1, 2, 3], "b": ["x", "y"], "c": [0.1, 1.0, 10.0], "d": [True, False]}, 2),
        ({"a": list(range(7)), "b": list(range(5))}, 2),
    ],
)
def test_every_point_once_the_same_for_a_seed_and_every_prefix_covers_the_levels(space, even):
    for seed in range(20):
        order = spread_order(space, seed)
        key = lambda p: tuple(map(str, p.values()))  # noqa: E731
        assert sorted(order, key=key) == sorted(_points(space), key=key)  # a permutation: each point once
        assert order == spread_order(space, seed)  # derived from the grid and the seed alone
        covered, gap = _worst_prefix(order, space)
        assert covered and gap <= even, (seed, gap, order)
    assert len({tuple(map(str, (tuple(p.values()) for p in spread_order(space, s)))) for s in range(20)}) > 1


def test_the_first_points_span_the_ranks_where_a_plain_shuffle_clusters():
    """The median pruner's 4 start-up trials of the rank_alpha grid: 4 of the 5 ranks and both
    scales for every seed; a plain seeded shuffle misses two or more ranks for most seeds."""
    clustered = 0
    for seed in range(200):
        first = spread_order(RANK_ALPHA, seed)[:4]
        assert len({p["lora.r"] for p in first}) == 4 and {p["alpha_over_r"] for p in first} == {1, 4}
        assert {p["lora.r"] for p in spread_order(RANK_ALPHA, seed)[:5]} == set(RANK_ALPHA["lora.r"])
        shuffled = _points(RANK_ALPHA)
        random.Random(seed).shuffle(shuffled)
        clustered += len({p["lora.r"] for p in shuffled[:4]}) < 4
    assert clustered > 100  # 59 % of seeds measured


def test_spread_points_are_far_apart():
    """After the first point, the next is at the far corner: the other scale and an extreme rank."""
    for seed in range(20):
        first, second = spread_order(RANK_ALPHA, seed)[:2]
        assert second["alpha_over_r"] != first["alpha_over_r"]
        assert abs(RANK_ALPHA["lora.r"].index(second["lora.r"]) - RANK_ALPHA["lora.r"].index(first["lora.r"])) >= 2


def test_a_grid_sweep_enqueues_spread_points_seed_by_seed_once_across_restarts_and_workers(tmp_path, monkeypatch):
    """A real sweep's plan (setup only, nothing trains): a partial grid (n_trials 4 of 10) is the
    spread order's first 4 points, every point's first seed before any second seed; a second worker
    (or a restart) derives the same plan and enqueues nothing twice."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    register_configs()
    overrides = [*TINY, "+sweep=rank_alpha", "sweep.study_name=spread", "sweep.n_trials=4", "sweep.seeds=2"]
    overrides += ["sweep.baselines=[]", "sweep.sampler.seed=3"]
    sweeps = []
    try:
        with initialize_config_dir(config_dir=CONF, version_base=None):
            for worker in (0, 1):  # the second Sweep is both a restart and another worker
                cfg = compose("config", overrides=[*overrides, f"sweep.worker={worker}"])
                sweep = Sweep(cfg, overrides, console_progress=False)
                sweep.setup()
                sweeps.append(sweep)
        trials = sorted(sweeps[-1].study.get_trials(), key=lambda t: t.number)
        assert [t.state for t in trials] == [TrialState.WAITING] * 8  # 4 points x 2 seeds, enqueued once
        expected = spread_order(RANK_ALPHA, 3)[:4]
        for sweep in sweeps:  # the plan every worker derives: the spread order's first 4 points, seed by seed
            assert [(slot.seed, slot.params) for slot in sweep.search.fixed] == [
                (seed, point) for seed in (0, 1) for point in expected
            ]
        enqueued = [(t.user_attrs["lora_lab.seed"], t.user_attrs["lora_lab.config_id"]) for t in trials]
        assert enqueued == [(slot.seed, slot.config_id) for slot in sweeps[0].search.fixed]
    finally:
        client = MlflowClient(uri)
        for sweep in sweeps:
            client.set_terminated(sweep.parent_run_id, "KILLED")
        mlflow.set_tracking_uri(None)
