"""Hydra launcher plugin behind ``hydra/launcher=slurm_gpu``: hydra-submitit-launcher's SLURM launcher
with lora_lab's job watching and signal handling (see ``lora_lab.slurm``).

Hydra finds launchers only in the ``hydra_plugins`` namespace package and imports every module in
it at start-up, so this module stays light: the work is imported when a multirun launches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hydra.core.utils import JobReturn
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher


class LoraLabSlurmLauncher(SlurmLauncher):
    """Submits one SLURM job per sweep worker (a job array), as the submitit launcher does, then
    watches the jobs with ``squeue`` (no accounting database needed) and reports each job's id,
    state and log file; a job that ends without a result is named with its log, not waited on."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from lora_lab import slurm

        return slurm.launch(self, job_overrides, initial_job_idx)

    def __call__(self, *args: Any, **kwargs: Any) -> JobReturn:
        """Runs inside the SLURM job: SLURM's warning signal stops the sweep as SIGTERM does, then
        submitit requeues the job (or records why not)."""
        from lora_lab import slurm

        with slurm.warning_signal_stops_the_sweep():
            return super().__call__(*args, **kwargs)
