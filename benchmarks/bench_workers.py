"""Trial throughput of one sweep worker against several workers sharing one study on this machine.

Runs the same sweep with 1 worker and with W workers, one after another in one invocation, through
the real command line: once as a
single process, once as ``--multirun hydra/launcher=local sweep.worker=range(W)`` on one journal
file, and prints trials per minute of each and their ratio. Writes reports/benchmarks/workers.md.

    python benchmarks/bench_workers.py [--trials 9] [--workers 2 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna

REPO = Path(__file__).resolve().parent.parent


def run_sweep(workdir: Path, study: str, trials: int, workers: int) -> tuple[float, float]:
    """Wall seconds of one whole sweep command (start-up included, as a user would wait), and the
    seconds from the first trial's start to the last trial's end (the steady state, start-up excluded)."""
    journal = workdir / f"{study}.journal"
    cmd = [
        sys.executable,
        "-m",
        "lora_lab.sweep",
        "+sweep=targets",
        f"sweep.study_name={study}",
        f"sweep.storage={journal}",
        f"sweep.n_trials={trials}",
        "tracking.log_adapter=false",
    ]
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        cmd += [
            f"sweep.cpu_threads={threads}",
            f"sweep.worker=range({workers})",
            "--multirun",
            "hydra/launcher=local",
            f"hydra.sweep.dir={workdir / study}",
        ]
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{workdir / 'mlflow.db'}", HF_HUB_OFFLINE="1")
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"sweep failed:\n{done.stderr[-3000:]}")
    study_obj = optuna.load_study(
        study_name=study,
        storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal))),
    )
    complete = [t for t in study_obj.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == trials, f"{len(complete)} of {trials} trials completed"
    span = max(t.datetime_complete for t in complete) - min(t.datetime_start for t in complete)
    return elapsed, span.total_seconds()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=9)
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[2, 3], help="worker counts to compare against 1 worker"
    )
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    walls: dict[int, float] = {}
    spans: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for workers in [1, *args.workers]:
            walls[workers], spans[workers] = run_sweep(workdir, f"workers_{workers}", args.trials, workers)
            print(
                f"{workers} worker(s): {walls[workers]:.1f} s whole command, {spans[workers]:.1f} s first trial "
                "start to last trial end",
                flush=True,
            )
    load_after = os.getloadavg()[0]
    rates = {w: 60 * args.trials / s for w, s in walls.items()}
    steady = {w: 60 * args.trials / s for w, s in spans.items()}
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    lines = [
        "# Sweep throughput: 1 worker against several on one machine",
        "",
        f"Command: `python benchmarks/bench_workers.py --trials {args.trials} --workers "
        f"{' '.join(map(str, args.workers))}`  ",
        f"Machine: {cpu}, {os.cpu_count()} cores, no GPU; load average (1 min) before {load_before:.2f}, "
        f"after {load_after:.2f}  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        f"The `targets` sweep, {args.trials} trials of the default trial (150 steps), journal-file storage, "
        "adapter artifacts off, the whole command timed (start-up of every worker included). Several "
        "workers run as `--multirun hydra/launcher=local sweep.worker=range(W)` (submitit's local "
        "executor), each with `sweep.cpu_threads=max(1, cores // W)`.",
        "",
        "| workers | whole command (s) | trials/min | vs 1 worker | first trial start to last trial end (s) | "
        "trials/min, start-up excluded | vs 1 worker |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        *[
            f"| {w} | {walls[w]:.1f} | {rates[w]:.2f} | **{rates[w] / rates[1]:.2f}x** | {spans[w]:.1f} | "
            f"{steady[w]:.2f} | **{steady[w] / steady[1]:.2f}x** |"
            for w in walls
        ],
        "",
        f"With {os.cpu_count()} CPU cores the workers split the same cores, so this measures how well the "
        "shared study keeps them busy (and what each worker's start-up costs), not scaling: on a GPU box each "
        "worker brings its own GPU.",
    ]
    out = REPO / "reports" / "benchmarks" / "workers.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
