"""What a sweep plans: its phases and the seeds each configuration runs with.

One job: which slots (a configuration with a seed, ``lora_lab.study.Slot``) each phase of a sweep
should hold, how many trials the sweep runs in all, and how a phase's trials are named and tagged
in MLflow. A sweep works through up to three phases, each an Optuna study of its own:
``BaselinePhase`` (named reference runs), ``SearchPhase`` (the sampler's study, a grid or a sampled
search) and ``ConfirmPhase`` (the best configurations again with fresh seeds). ``SeedPlan`` is the
one place the seeds are built: ``train.seed`` of the sweep's config plus 0..``sweep.seeds``-1 for
the baselines and the search, the next ``sweep.confirm_seeds`` ones for confirmations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import optuna

from lora_lab import names
from lora_lab.config import BaselineConfig
from lora_lab.study import Slot, SlotBook, WarmConfig

__all__ = ["SeedPlan", "Phase", "BaselinePhase", "SearchPhase", "ConfirmPhase"]


@dataclass(frozen=True)
class SeedPlan:
    """The seeds of a sweep: ``per_config`` seeds from ``base`` for every configuration, then
    ``confirm`` fresh ones for each confirmed configuration."""

    base: int
    per_config: int
    confirm: int = 0

    @property
    def search(self) -> list[int]:
        """The seeds each baseline and each searched configuration runs with (the first is the one a
        newly sampled configuration runs first)."""
        return [self.base + i for i in range(self.per_config)]

    @property
    def confirmation(self) -> list[int]:
        """The fresh seeds a confirmed configuration runs with, none of them a search seed."""
        return [self.base + self.per_config + i for i in range(self.confirm)]


class Phase:
    """One study the sweep works through, with the slots it should hold (``planned()``), how many
    trials it runs (``size``) and how its trials look in MLflow (``tags()``, ``run_name()``,
    ``prefix``)."""

    kind: ClassVar[str]
    prefix: ClassVar[str] = "t"
    """The first letter of a trial's display name in MLflow (``track.trial_run_name``)."""
    searched: ClassVar[bool] = True
    """Whether its trials take searched values (a baseline takes its own overrides only)."""
    prunes: ClassVar[bool] = False
    """Whether the pruner may stop its trials early."""
    shows_seed: ClassVar[bool] = False
    """Whether a trial's display name shows its seed even when the sweep runs one seed."""
    stops_on_failures: ClassVar[bool] = False
    """Whether a run of failures only (the set-up is broken) stops the sweep in this phase."""

    def __init__(self, study: optuna.Study, book: SlotBook):
        self.study = study
        self.book = book
        self.samples = False
        """Whether the sampler proposes new configurations (a non-grid search)."""
        self.fixed: list[Slot] = []
        """The slots of a fixed plan (grid, baselines, confirmations); in a sampled search, the slots
        it starts with (the configurations taken from an earlier study, ``sweep.warm_start``)."""
        self.size = 0
        """How many trials the phase runs once complete (what the progress display counts)."""

    def planned(self) -> list[Slot]:
        """The slots the phase should hold."""
        return self.fixed

    def enqueued_slot(self, attrs: dict[str, Any]) -> Slot:
        """The slot of an enqueued trial, from its user attrs (its params come with ``suggest``)."""
        return Slot(attrs[names.TAG_CONFIG_ID], int(attrs[names.TAG_SEED]), {})

    def tags(self) -> dict[str, str]:
        """The MLflow tags that tell this phase's trial runs apart."""
        return {names.TAG_KIND: names.KIND_TRIAL}

    def run_name(self, number: int, slot: Slot | None) -> str:
        """The name a trial's MLflow run is created with (before its config gives it a display name)."""
        return f"{self.kind}-{number:04d}"


class BaselinePhase(Phase):
    """Named reference runs (``sweep.baselines``), each with every search seed."""

    kind = "baseline"
    searched = False

    def plan(self, baselines: Sequence[BaselineConfig], seeds: SeedPlan, config_id: Callable[[dict], str]) -> None:
        self.fixed = [
            Slot(config_id({"baseline": b.name, "overrides": b.overrides}), seed, {}, baseline=b.name)
            for b in baselines
            for seed in seeds.search
        ]
        self.size = len(self.fixed)

    def enqueued_slot(self, attrs: dict[str, Any]) -> Slot:
        return Slot(
            attrs.get(names.TAG_CONFIG_ID, ""),
            int(attrs.get(names.TAG_SEED, 0)),
            {},
            baseline=attrs.get(names.TAG_BASELINE, ""),
        )

    def tags(self) -> dict[str, str]:
        return {names.TAG_KIND: names.KIND_BASELINE}

    def run_name(self, number: int, slot: Slot | None) -> str:
        return f"baseline-{slot.baseline if slot else ''}-{number:04d}"


class SearchPhase(Phase):
    """The sampler's study: a grid's points, or the configurations a sampler proposes (after the
    warm-start ones), each with every search seed."""

    kind = "search"
    prunes = True
    stops_on_failures = True

    def __init__(self, study: optuna.Study, book: SlotBook, samples: bool):
        super().__init__(study, book)
        self.samples = samples
        self.seeds: list[int] = []

    def run_name(self, number: int, slot: Slot | None) -> str:
        return f"trial-{number:04d}"

    def plan_grid(self, points: Iterable[dict[str, Any]], seeds: SeedPlan, config_id: Callable[[dict], str]) -> None:
        """A grid: its points (in the order they run) with every seed, seed by seed."""
        points = list(points)
        self.seeds = seeds.search
        self.fixed = [Slot(config_id(p), seed, p) for seed in self.seeds for p in points]
        self.size = len(self.fixed)

    def plan_sampled(self, warm: Sequence[WarmConfig], n_configs: int, seeds: SeedPlan) -> None:
        """A sampled search of ``n_configs`` configurations, starting with the warm-start ones."""
        self.seeds = seeds.search
        self.fixed = [Slot(c.config_id, seed, c.params) for c in warm for seed in self.seeds]
        self.size = n_configs * len(self.seeds)

    def planned(self) -> list[Slot]:
        """Its fixed plan; in a sampled search, the slots it starts with, then every configuration the
        sampler proposed and the study kept, each with every seed (each slot once: a warm-start
        configuration is also one the study kept once it ran)."""
        if not self.samples:
            return self.fixed
        planned = list(self.fixed)
        ids = {slot.id for slot in planned}
        for cid, params in self.book.sampled_configs().items():
            for seed in self.seeds:
                slot = Slot(cid, seed, params)
                if slot.id not in ids:
                    ids.add(slot.id)
                    planned.append(slot)
        return planned


class ConfirmPhase(Phase):
    """The best ``sweep.confirm_top_k`` configurations of a sampled search again, with fresh seeds."""

    kind = "confirm"
    prefix = "c"
    shows_seed = True

    def __init__(self, study: optuna.Study, book: SlotBook, top_k: int, seeds: SeedPlan):
        super().__init__(study, book)
        self.size = top_k * len(seeds.confirmation)

    def plan(self, chosen: Sequence[dict[str, Any]], seeds: SeedPlan) -> None:
        """The chosen configurations (``{"config_id", "params"}``, as the confirm study keeps them)
        with every confirmation seed."""
        self.fixed = [Slot(c["config_id"], seed, c["params"]) for c in chosen for seed in seeds.confirmation]

    def tags(self) -> dict[str, str]:
        return {names.TAG_KIND: names.KIND_TRIAL, names.TAG_CONFIRM: "true"}
