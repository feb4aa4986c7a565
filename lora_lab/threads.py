"""lora_lab's thread policy: how many CPU threads torch uses and how OpenMP's idle threads wait.

On a machine that other processes share, OpenMP's default makes each idle worker thread spin on a
core for a while before it sleeps; two torch processes on 2 cores then take each other's cores in
turns and a trial runs many times slower than its fair share (measured by
``benchmarks/bench_contention.py``). So every lora_lab process:

1. sets ``OMP_WAIT_POLICY=PASSIVE`` (idle OpenMP threads sleep) before torch loads its OpenMP
   runtime, which reads the variable once, when it loads (``before_torch``, run when the ``lora_lab``
   package is imported, so before any entry point or worker imports torch);
2. gives torch as many intra-op threads as the cores the process owns (``apply``, run by each entry
   point once its config is known): every core it may run on for a single process, the cores divided
   by the number of workers for a sweep's local workers (``hydra/launcher=local``), the allocation
   (``SLURM_CPUS_PER_TASK``, else the CPU affinity SLURM set) for a SLURM job.

What the user set wins: ``OMP_WAIT_POLICY`` in the environment is left as it is, an explicit
``sweep.cpu_threads`` or ``OMP_NUM_THREADS`` decides the thread count, and ``LORA_LAB_THREAD_POLICY=off``
leaves both to the libraries' own defaults. The values in force are logged with every MLflow run
(tags ``names.TAG_THREADS``, ``names.TAG_THREADS_SET_BY``, ``names.TAG_OMP_WAIT_POLICY``).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from lora_lab import names

WAIT_POLICY = "PASSIVE"
"""OpenMP wait policy lora_lab sets when the user set none."""

POLICY_ENV = "LORA_LAB_THREAD_POLICY"
"""``off``: leave OMP_WAIT_POLICY and the thread count to OpenMP's and torch's defaults."""

_OURS_ENV = "LORA_LAB_SET_OMP_WAIT_POLICY"
"""Set beside OMP_WAIT_POLICY when lora_lab set it, so a child process (a sweep worker) inherits the
value without taking it for the user's own."""

LOCAL_WORKERS_ENV = "LORA_LAB_LOCAL_WORKERS"
"""How many local sweep workers share this machine: set by the launching process of a
``hydra/launcher=local`` multirun (``lora_lab.hydra_callbacks.PrepareSweep``) for the workers it starts."""


def note_local_workers(launcher_target: str, task_overrides: list[str]) -> None:
    """In the process that launches a multirun: tell the workers it starts how many share this machine
    (the number of jobs: the product of the sweep overrides' lengths), when the launcher is submitit's
    local one (``hydra/launcher=local``); SLURM jobs each have an allocation of their own."""
    if "LocalLauncher" not in launcher_target:
        return
    from hydra.core.override_parser.overrides_parser import OverridesParser

    jobs = 1
    for override in OverridesParser.create().parse_overrides(task_overrides):
        if override.is_sweep_override() and not override.is_interval_sweep():
            try:
                jobs *= max(1, len(list(override.sweep_iterator())))
            except Exception:  # a glob sweep needs Hydra's config loader: count it as one
                pass
    os.environ[LOCAL_WORKERS_ENV] = str(jobs)


def enabled() -> bool:
    return os.environ.get(POLICY_ENV, "").strip().lower() not in ("off", "0", "false", "no")


def before_torch() -> None:
    """Set ``OMP_WAIT_POLICY=PASSIVE`` unless the user set it, the policy is off, or torch (and
    with it the OpenMP runtime, which reads the variable once) is already loaded."""
    if not enabled() or "torch" in sys.modules or "OMP_WAIT_POLICY" in os.environ:
        return
    os.environ["OMP_WAIT_POLICY"] = WAIT_POLICY
    os.environ[_OURS_ENV] = WAIT_POLICY


def _user_set(name: str) -> bool:
    return name in os.environ and not (name == "OMP_WAIT_POLICY" and os.environ.get(_OURS_ENV) == os.environ[name])


def owned_cores() -> tuple[int, str]:
    """The CPU cores this process owns and why: (count, explanation)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    slurm_cpus = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if os.environ.get("SLURM_JOB_ID") and slurm_cpus.isdigit():
        return max(1, min(cores, int(slurm_cpus))), f"SLURM allocation (SLURM_CPUS_PER_TASK={slurm_cpus})"
    if os.environ.get("SLURM_JOB_ID"):
        return cores, "SLURM allocation (CPU affinity)"
    workers = os.environ.get(LOCAL_WORKERS_ENV, "")
    if os.environ.get("SUBMITIT_EXECUTOR") == "local" and workers.isdigit() and int(workers) > 1:
        return max(1, cores // int(workers)), f"{cores} cores / {workers} local workers"
    return cores, f"all {cores} cores"


@dataclass(frozen=True)
class Applied:
    """The thread settings in force in this process (what ``apply`` did)."""

    threads: int
    set_by: str
    wait_policy: str

    def tags(self) -> dict[str, str]:
        return {
            names.TAG_THREADS: str(self.threads),
            names.TAG_THREADS_SET_BY: self.set_by,
            names.TAG_OMP_WAIT_POLICY: self.wait_policy,
        }


_applied: Applied | None = None


def apply(configured: int | None = None, field: str = "sweep.cpu_threads") -> Applied:
    """Give torch its intra-op thread count: ``configured`` (an explicit config field, named
    ``field``), else ``OMP_NUM_THREADS`` when the user set it, else the cores this process owns
    (``owned_cores``); with the policy off, torch's default. Returns (and remembers, for ``tags``)
    what is in force."""
    global _applied
    import torch

    if configured:
        torch.set_num_threads(int(configured))
        set_by = f"{field}={configured}"
    elif _user_set("OMP_NUM_THREADS"):
        set_by = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"  # torch read it when it loaded
    elif not enabled():
        set_by = f"torch default ({POLICY_ENV}=off)"
    else:
        cores, why = owned_cores()
        torch.set_num_threads(cores)
        set_by = f"lora_lab policy: {why}"
    wait = os.environ.get("OMP_WAIT_POLICY", "unset (OpenMP default)")
    if "OMP_WAIT_POLICY" in os.environ:
        wait += " (lora_lab policy)" if not _user_set("OMP_WAIT_POLICY") else " (set by the user)"
    _applied = Applied(threads=torch.get_num_threads(), set_by=set_by, wait_policy=wait)
    return _applied


def tags() -> dict[str, str]:
    """MLflow tags of the thread settings in force: what ``apply`` set, or (where no entry point ran
    it: lora_lab used as a library) torch's current count, set by the caller."""
    if _applied is not None:
        return _applied.tags()
    if "torch" not in sys.modules:
        return {}
    wait = os.environ.get("OMP_WAIT_POLICY", "unset (OpenMP default)")
    return Applied(sys.modules["torch"].get_num_threads(), "the calling program (no lora_lab entry point)", wait).tags()
