"""Sweep workers as SLURM jobs (``hydra/launcher=slurm_gpu``): submission through submitit as
hydra-submitit-launcher does it, with two changes that clusters without accounting and preemptible
jobs need.

- The launching command watches its jobs with ``squeue`` instead of ``sacct``. submitit polls
  ``sacct``, which fails on clusters without an accounting database (a warning per poll, three
  per job array) and then never learns that a job ended without a result (cancelled, timed out,
  killed): the command would wait forever. Here each job's id, state (with squeue's reason) and
  log file are reported as they change, and once every job has left the queue the jobs that ended
  without a result are named with their logs and the command exits non-zero.
- Inside a job, SLURM's warning signal (USR2, ``hydra.launcher.signal_delay_s`` before the time
  limit) does what SIGTERM does to a sweep: the running trial is ended and recorded, and its
  configuration runs again later. Then submitit checkpoints and requeues the job (at most
  ``hydra.launcher.max_num_timeout`` times after time-outs), or records why not. submitit's own
  handler would raise in the middle of a trial (an exception Optuna catches, so the sweep went on)
  or requeue the job while the trial was still being recorded.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

log = logging.getLogger(__name__)

POLL_S = 5.0
"""Seconds between two ``squeue`` calls while jobs are queued or running."""

ACTIVE_STATES = frozenset(
    {
        "PENDING",
        "CONFIGURING",
        "RUNNING",
        "COMPLETING",
        "REQUEUED",
        "REQUEUE_FED",
        "REQUEUE_HOLD",
        "RESIZING",
        "SIGNALING",
        "STAGE_OUT",
        "SUSPENDED",
        "STOPPED",
        "RESV_DEL_HOLD",
        "SPECIAL_EXIT",
    }
)
"""squeue states of a job that may still run (a requeued job passes through several of them)."""


def squeue(job_ids: Sequence[str]) -> dict[str, tuple[str, str]]:
    """``{job id: (state, reason or node)}`` for the jobs squeue still lists; array tasks one by one
    (``12_0``, ``12_1``). Finished jobs stay listed for the cluster's MinJobAge (300 s by default)."""
    arrays = sorted({job_id.split("_")[0] for job_id in job_ids})
    out = subprocess.run(
        ["squeue", "--noheader", "--array", "--states=all", "--format=%i|%T|%r|%N", "--jobs", ",".join(arrays)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip() or f"squeue exited with {out.returncode}")
    states = {}
    for line in out.stdout.splitlines():
        job_id, state, reason, node = (line.split("|") + ["", "", ""])[:4]
        states[job_id.strip()] = (state.strip(), node.strip() if state.strip() == "RUNNING" else reason.strip())
    return states


def watch(jobs: Sequence[Any], poll_s: float = POLL_S) -> dict[str, str]:
    """Report each job's state changes until none is queued or running; the last state of each."""
    last: dict[str, tuple[str, str]] = {}
    squeue_error = ""
    while True:
        try:
            states = squeue([job.job_id for job in jobs])
            squeue_error = ""
        except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
            if str(exc) != squeue_error:
                log.warning(f"squeue failed ({exc}); retrying every {poll_s:g} s")
            squeue_error = str(exc)
            time.sleep(poll_s)
            continue
        for job in jobs:
            state = states.get(job.job_id)
            if state is None:  # no longer listed: it ended more than MinJobAge ago
                state = (last.get(job.job_id, ("UNKNOWN", ""))[0], "left the queue")
                if state[0] in ACTIVE_STATES:
                    state = ("ENDED", "left the queue")
            if state != last.get(job.job_id):
                text = f"slurm job {job.job_id}: {state[0]}"
                if state[1] and state[1] != "None":
                    text += f" on {state[1]}" if state[0] == "RUNNING" else f" ({state[1]})"
                log.info(text)
                last[job.job_id] = state
        if all(last[job.job_id][0] not in ACTIVE_STATES for job in jobs):
            return {job_id: state for job_id, (state, _) in last.items()}
        time.sleep(poll_s)


def launch(launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[Any]:
    """The submitit SLURM launcher's ``launch``: one array job, one task per sweep worker; then
    ``watch`` instead of submitit's sacct polling; the workers' ``JobReturn``s."""
    import submitit
    from hydra.core.singleton import Singleton
    from hydra.core.utils import filter_overrides
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    from lora_lab import cli

    params = dict(launcher.params)
    executor = submitit.AutoExecutor(
        cluster="slurm", folder=params.pop("submitit_folder"), slurm_max_num_timeout=params.pop("max_num_timeout")
    )
    queue_fields = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in queue_fields else f"slurm_{k}": v for k, v in params.items()})
    sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    if "mode" in launcher.config.hydra.sweep:
        os.chmod(sweep_dir, mode=int(str(launcher.config.hydra.sweep.mode), 8))
    log.info(f"SLURM sweep output dir: {sweep_dir}")
    job_params = []
    for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
        log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
        job_params.append((list(overrides), "hydra.sweep.dir", idx, f"job_id_for_{idx}", Singleton.get_state()))
    jobs = executor.map_array(launcher, *zip(*job_params, strict=True))
    for job in jobs:
        log.info(f"slurm job {job.job_id}: submitted; log {job.paths.stdout} (errors: {job.paths.stderr})")
    final = watch(jobs)

    returns, problems = [], []
    for job in jobs:
        error = job.exception() if job.paths.result_pickle.exists() else None
        if job.paths.result_pickle.exists() and error is None:
            returns.append(job.results()[0])
            continue
        why = f"with {_last_line(str(error))}" if error is not None else "without a result"
        problems.append(
            f"slurm job {job.job_id} ended {final.get(job.job_id, 'UNKNOWN')} {why} (log: {job.paths.stderr})."
        )
    if problems:
        cli.fail(
            " ".join(problems) + " Every finished trial is kept in the study: run the same command again to "
            "resume it (with a longer hydra.launcher.timeout_min if the jobs timed out).",
            code=1,
        )
    return returns


def _last_line(message: str) -> str:
    """The exception line of a failed job's trace, as submitit reports it (the trace between dashed lines)."""
    parts = message.split("-" * 22)
    lines = [line.strip() for line in (parts[1] if len(parts) > 2 else message).splitlines() if line.strip()]
    return lines[-1] if lines else "an error"


@contextlib.contextmanager
def warning_signal_stops_the_sweep() -> Iterator[None]:
    """Inside a SLURM job: USR2 (SLURM's warning before the time limit; submitit asks for it with
    ``--signal=USR2@signal_delay_s``) is handled like SIGTERM by whatever handler the sweep set for
    SIGTERM (it ends the running trial cleanly and exits). Once the sweep has exited, submitit's own
    USR2 handler runs from here: it checkpoints and requeues the job, or records why not."""
    submitit_handler = signal.getsignal(signal.SIGUSR2)
    warned: list[int] = []

    def on_warning(signum: int, frame: Any) -> None:
        warned.append(signum)
        log.warning("SLURM warning signal USR2 (time limit or preemption near): stopping the sweep")
        sweep_handler = signal.getsignal(signal.SIGTERM)
        if callable(sweep_handler):
            sweep_handler(signum, frame)

    signal.signal(signal.SIGUSR2, on_warning)
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        if not warned or not callable(submitit_handler):
            raise
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # requeueing terminates this job: nothing left to record
        submitit_handler(signal.SIGUSR2, None)  # requeues and exits, or raises with the reason
        raise
    finally:
        signal.signal(signal.SIGUSR2, submitit_handler)
