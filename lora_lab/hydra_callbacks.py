"""Hydra callbacks named in conf/config.yaml.

Hydra instantiates the callbacks of the root config in every command, ``python -m lora_lab.train``
included, so this module imports nothing heavy: the sweep machinery (Optuna, MLflow, the trainer)
is imported only when a multirun really starts.
"""

from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict


class PrepareSweep(Callback):
    """Before a multirun launches its workers, create the tracking store, the Optuna study, its
    planned trials and the MLflow parent run once, so the workers attach to them instead of racing
    to create them (two workers migrating one sqlite store at once fail). Does nothing outside a
    sweep."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.get("sweep") is None:
            return
        from lora_lab import cli

        # Hydra turns a callback's exception into a warning and launches the workers anyway:
        # bad input is reported here, as one paragraph and exit 2
        cli.reports_errors(_prepare)(config)


def _prepare(config: DictConfig) -> None:
    from lora_lab import cli, threads
    from lora_lab.sweep import Sweep

    cli.quiet_libraries()
    overrides = list(config.hydra.overrides.task)
    threads.note_local_workers(str(OmegaConf.select(config, "hydra.launcher._target_", default="")), overrides)
    with open_dict(config):  # the launcher process acts as worker 0 for the set-up alone
        config.sweep.worker = 0
    Sweep(config, overrides, console_progress=False).setup()  # its parent run stays RUNNING for the workers
