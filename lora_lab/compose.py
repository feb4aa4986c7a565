"""A trial's config, composed exactly as ``python -m lora_lab.train <its overrides>`` would compose it.

One job: turn the sweep's base overrides plus one trial's overrides into the trial's typed config.
Plain ``group.field=value`` overrides are set on a copy of the base config composed once (a full
Hydra compose re-reads and re-merges every config file, a visible share of a short trial on the
built-in model); anything else (a config group choice, an added or deleted key, a field the schema
does not have, a value it refuses) goes through Hydra's own composition and its own error.
"""

from __future__ import annotations

import copy

from hydra import compose
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from lora_lab.config import TrialConfig, to_trial_config

__all__ = ["TrialComposer", "apply_value_overrides"]


def apply_value_overrides(base: DictConfig, trial_overrides: list[str]) -> DictConfig | None:
    """``base`` with the trial's plain ``group.field=value`` overrides set on a copy (with Hydra's
    public override parser and OmegaConf's typed update), or None when one of them selects a config
    group, adds or deletes a key, names no existing field or fails (the caller then composes from
    scratch and reports Hydra's own error). A test checks both give the same config."""
    try:
        parsed = OverridesParser.create().parse_overrides(trial_overrides)
        if any(
            o.package is not None
            or o.is_add()
            or o.is_force_add()
            or o.is_delete()
            or o.is_sweep_override()
            or "." not in o.key_or_group
            or "/" in o.key_or_group
            for o in parsed
        ):
            return None
        composed = copy.deepcopy(base)
        missing = object()
        for o in parsed:
            if OmegaConf.select(composed, o.key_or_group, default=missing) is missing:
                return None
            OmegaConf.update(composed, o.key_or_group, o.value(), merge=True)
        return composed
    except Exception:
        return None


class TrialComposer:
    """Composes trial configs on top of a sweep's base overrides (inside an initialized Hydra
    config directory, as the sweep's entry point and tests have it)."""

    def __init__(self, base_overrides: list[str]):
        self.base_overrides = list(base_overrides)
        self._base: DictConfig | None = None

    def base(self) -> DictConfig:
        """The config of the base overrides alone, composed once."""
        if self._base is None:
            self._base = compose(config_name="config", overrides=self.base_overrides)
        return self._base

    def compose(self, trial_overrides: list[str]) -> tuple[TrialConfig, DictConfig, list[str]]:
        """The trial's typed config, its composed DictConfig and the full override list that
        reproduces it (base overrides, then the trial's)."""
        overrides = self.base_overrides + list(trial_overrides)
        composed = apply_value_overrides(self.base(), trial_overrides)
        if composed is None:
            composed = compose(config_name="config", overrides=overrides)
        return to_trial_config(composed), composed, overrides
