"""Hydra callbacks named in conf/config.yaml.

Hydra instantiates the callbacks of the root config in every command, ``python -m lora_lab.train``
included, so this module imports nothing heavy: the sweep machinery (Optuna, MLflow, the trainer)
is imported only when a multirun really starts.
"""

from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class PrepareSweep(Callback):
    """Before a multirun launches its workers, create the tracking store, the Optuna study and the
    MLflow parent run once (``lora_lab.sweep.PrepareSweep`` does it), so the workers attach to them
    instead of racing to create them."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.get("sweep") is None:
            return
        from lora_lab import sweep

        sweep.PrepareSweep().on_multirun_start(config, **kwargs)
