"""Trial throughput of one sweep worker against several workers sharing one study on this machine.

Runs the same sweep twice, side by side in one invocation, through the real command line: once as a
single process, once as ``--multirun hydra/launcher=local sweep.worker=range(W)`` on one journal
file, and prints trials per minute of each and their ratio. Writes reports/benchmarks/workers.md.

    python benchmarks/bench_workers.py [--trials 9] [--workers 3]
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


def run_sweep(workdir: Path, study: str, trials: int, workers: int) -> float:
    """Wall seconds of one whole sweep command (start-up included, as a user would wait)."""
    journal = workdir / f"{study}.journal"
    cmd = [sys.executable, "-m", "lora_lab.sweep", "+sweep=targets", f"sweep.study_name={study}",
           f"sweep.storage={journal}", f"sweep.n_trials={trials}", "tracking.log_adapter=false"]
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        cmd += [f"sweep.cpu_threads={threads}", f"sweep.worker=range({workers})", "--multirun",
                "hydra/launcher=local", f"hydra.sweep.dir={workdir / study}"]
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{workdir / 'mlflow.db'}", HF_HUB_OFFLINE="1")
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"sweep failed:\n{done.stderr[-3000:]}")
    study_obj = optuna.load_study(study_name=study, storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(journal))))
    complete = [t for t in study_obj.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == trials, f"{len(complete)} of {trials} trials completed"
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=9)
    parser.add_argument("--workers", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        one = run_sweep(workdir, "one_worker", args.trials, 1)
        many = run_sweep(workdir, "many_workers", args.trials, args.workers)
    rate_one, rate_many = 60 * args.trials / one, 60 * args.trials / many
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    lines = [
        "# Sweep throughput: 1 worker against several on one machine", "",
        f"Command: `python benchmarks/bench_workers.py --trials {args.trials} --workers {args.workers}`  ",
        f"Machine: {cpu}, {os.cpu_count()} cores, no GPU, load average before: {os.getloadavg()[0]:.2f}", "",
        f"The `targets` sweep, {args.trials} trials of the default trial (150 steps), journal-file storage, "
        "whole command timed (start-up included).", "",
        "| workers | wall s | trials/min |", "| --- | --- | --- |",
        f"| 1 | {one:.1f} | {rate_one:.2f} |",
        f"| {args.workers} | {many:.1f} | {rate_many:.2f} |", "",
        f"Throughput ratio ({args.workers} workers / 1): **{rate_many / rate_one:.2f}x**", "",
        f"With {os.cpu_count()} CPU cores the workers split the same cores (sweep.cpu_threads="
        f"{max(1, (os.cpu_count() or 1) // args.workers)} each), so this measures coordination overhead; "
        "on a GPU box each worker brings its own GPU.",
    ]
    out = REPO / "reports" / "benchmarks" / "workers.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
