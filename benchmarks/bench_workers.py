"""Trial throughput of one sweep worker against several workers sharing one study on this machine.

Runs the same sweep through the real command line with 1 worker, with 1 worker again (the A/A run: the
same command twice, so the noise floor is shown next to every ratio) and with W workers: once as a single
process, once as ``--multirun hydra/launcher=local sweep.worker=range(W)`` on one journal file. Every
round runs each configuration once, in an order rotated by one each round, so a slow phase of the machine
does not always hit the same configuration; untimed warm-up sweeps before the rounds keep the first timed
run from paying cold caches alone. Prints trials per minute of each and the ratios to 1 worker
(the median over rounds of the per-round ratio, with a 95 % bootstrap CI from 3 rounds on) and writes
reports/benchmarks/workers.md.

    python benchmarks/bench_workers.py [--trials 9] [--workers 2 3] [--rounds 1]
    python benchmarks/bench_workers.py --trials 2 --workers 2 --steps 1 --no-report   # smallest
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from _common import fmt, median, ratio_text  # noqa: E402

BASE = "1 worker"
AA = "1 worker (A/A)"


def run_sweep(
    workdir: Path, study: str, trials: int, workers: int, store: Path, extra: list[str]
) -> tuple[float, float]:
    """Wall seconds of one whole sweep command (start-up included, as a user would wait), and the
    seconds from the first trial's start to the last trial's end (the steady state, start-up excluded)."""
    import optuna

    journal = workdir / f"{study}.journal"
    # each run gets its own copy of one empty MLflow store whose schema already exists: otherwise the
    # first run of the invocation alone would pay the store's creation (its schema migrations)
    mlflow_db = workdir / f"{study}.mlflow.db"
    shutil.copyfile(store, mlflow_db)
    cmd = [
        sys.executable,
        "-m",
        "lora_lab.sweep",
        "+sweep=targets",
        f"sweep.study_name={study}",
        f"sweep.storage={journal}",
        f"sweep.n_trials={trials}",
        "tracking.log_adapter=false",
        *extra,
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
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{mlflow_db}", HF_HUB_OFFLINE="1")
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


def ratio_cell(ratios: list[float]) -> str:
    """A ratio over rounds: with 3 rounds or more its median and 95 % bootstrap CI (``ratio_text``); with
    fewer the median alone (the text says once that there is no CI)."""
    return ratio_text(ratios) if len(ratios) >= 3 else f"{median(ratios):.3f}"


def composed_train(extra: list[str]):
    """The train group of the composed ``+sweep=targets`` config: what each trial runs."""
    from hydra import compose, initialize_config_dir

    from lora_lab.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(_common.CONF), version_base=None):
        return compose("config", overrides=["+sweep=targets", *extra]).train


def empty_store(path: Path) -> None:
    """An MLflow sqlite store with its schema created (untimed), copied for every run."""
    import logging

    from mlflow.tracking import MlflowClient

    logging.getLogger("mlflow").setLevel(logging.ERROR)  # mlflow resets its level on import: its INFO lines are noise
    MlflowClient(f"sqlite:///{path}").search_experiments()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=9, help="trials of each sweep (the targets grid holds 12)")
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[2, 3], help="worker counts to compare against 1 worker"
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="rounds; each runs every configuration once (rotated order)"
    )
    parser.add_argument("--steps", type=int, default=None, help="train.max_steps (default: conf/train/default.yaml's)")
    parser.add_argument(
        "--no-warmup",
        action="store_true",
        help="skip the untimed warm-up sweeps (1 trial, 1 step, once per worker count) that run first so the "
        "first timed run does not alone pay cold caches (bytecode, the file cache, the model cache)",
    )
    parser.add_argument("--no-report", action="store_true")
    args = parser.parse_args()
    if args.rounds < 1 or args.trials < 1 or any(w < 2 for w in args.workers):
        parser.error("--rounds and --trials must be at least 1, every --workers count at least 2")
    extra = [f"train.max_steps={args.steps}"] if args.steps is not None else []
    _common.quiet()
    train = composed_train(extra)

    machine = _common.Machine()
    # the sweeps set their own threads, not this process: say what each configuration's processes got
    machine.threads = f"torch's default ({machine.threads}) for 1 worker, max(1, cores // W) for W workers"
    print(f"machine: {machine.cpu}, {machine.cores} cores; {machine.uptime_before}")
    configs = [(BASE, 1), (AA, 1), *((f"{w} workers", w) for w in args.workers)]
    walls: dict[str, list[float]] = {label: [] for label, _ in configs}
    spans: dict[str, list[float]] = {label: [] for label, _ in configs}
    runs: list[list[object]] = []
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        store = workdir / "empty_mlflow.db"
        empty_store(store)
        if not args.no_warmup:
            for workers in sorted({1, *args.workers}):
                wall, _ = run_sweep(workdir, f"warmup_w{workers}", 1, workers, store, ["train.max_steps=1"])
                print(
                    f"warm-up (untimed in the results), {workers} worker(s), 1 trial of 1 step: {wall:.1f} s",
                    flush=True,
                )
        for round_ in range(args.rounds):
            shift = round_ % len(configs)
            for position, (label, workers) in enumerate(configs[shift:] + configs[:shift]):
                slug = label.split()[0] + ("aa" if label == AA else "")
                wall, span = run_sweep(workdir, f"r{round_ + 1}_w{slug}", args.trials, workers, store, extra)
                walls[label].append(wall)
                spans[label].append(span)
                runs.append([round_ + 1, position + 1, label, f"{wall:.1f}", f"{span:.1f}"])
                print(
                    f"round {round_ + 1}/{args.rounds} {label}: {wall:.1f} s whole command, {span:.1f} s first trial "
                    "start to last trial end",
                    flush=True,
                )
    machine.finish()
    print(machine.uptime_after)

    def rates(seconds: list[float]) -> list[float]:
        return [60 * args.trials / s for s in seconds]

    def ratios(label: str, series: dict[str, list[float]]) -> list[float]:
        """Per round: trials/min of ``label`` over trials/min of 1 worker in the same round."""
        return [b / a for a, b in zip(series[BASE], series[label], strict=True)]

    whole = {label: rates(s) for label, s in walls.items()}
    steady = {label: rates(s) for label, s in spans.items()}
    rows = [
        [
            label,
            fmt(median(walls[label]), 3),
            fmt(median(whole[label]), 3),
            "1 (reference)" if label == BASE else f"**{ratio_cell(ratios(label, whole))}**",
            fmt(median(spans[label]), 3),
            fmt(median(steady[label]), 3),
            "1 (reference)" if label == BASE else f"**{ratio_cell(ratios(label, steady))}**",
        ]
        for label, _ in configs
    ]
    aa_whole, aa_steady = ratio_cell(ratios(AA, whole)), ratio_cell(ratios(AA, steady))
    pairs = [
        [
            f"{label} / 1 worker",
            f"**{ratio_cell(ratios(label, whole))}**",
            aa_whole,
            f"**{ratio_cell(ratios(label, steady))}**",
            aa_steady,
        ]
        for label, _ in configs[2:]
    ]
    print()
    for label, _ in configs[2:]:
        print(
            f"{label} / 1 worker, trials/min: whole command {ratio_cell(ratios(label, whole))} "
            f"(A/A {aa_whole}); start-up excluded {ratio_cell(ratios(label, steady))} (A/A {aa_steady})"
            + ("" if args.rounds >= 3 else f"  (no CI: {args.rounds} round(s), fewer than 3)")
        )
    if args.no_report:
        return

    steps_text = (
        f"{train.max_steps} step{'s' if train.max_steps != 1 else ''}"
        if train.max_steps is not None
        else f"{train.epochs} epoch(s)"
    )
    body = [
        "## What was measured",
        "",
        f"The `targets` sweep, {args.trials} trials of the default trial"
        + (f" with `{' '.join(extra)}`" if extra else "")
        + f" ({steps_text} of batch {train.batch_size}, "
        f"evaluation every {train.eval_every} steps; from the composed config), journal-file storage, adapter "
        "artifacts off, through the real command line (`python -m lora_lab.sweep`), the whole command timed "
        "(start-up of every worker included). Several workers run as `--multirun hydra/launcher=local "
        "sweep.worker=range(W)` (submitit's local executor), each with `sweep.cpu_threads=max(1, cores // W)`. "
        "Each run has its own journal and its own copy of one empty MLflow sqlite store created beforehand "
        "(untimed), so no run pays the store's creation.",
        "",
        f"{args.rounds} round(s); each round runs every configuration once, one after another, in an order "
        "rotated by one each round. `1 worker (A/A)` is the same command as `1 worker` again: its ratio to "
        "`1 worker` is the noise floor of every ratio here. A ratio is the median over rounds of (trials/min of "
        "the configuration / trials/min of `1 worker` in the same round), with a 95 % bootstrap confidence "
        "interval over rounds (scipy.stats.bootstrap, `_common.ratio_ci`) from 3 rounds on"
        + ("." if args.rounds >= 3 else f" (none here: {args.rounds} round(s)).")
        + (
            ""
            if args.no_warmup
            else " Before the rounds, untimed warm-up sweeps (1 trial of 1 step with 1 worker and with each W) "
            "warm the caches, so the first timed run does not pay them alone."
        ),
        "",
        "## Ratios to 1 worker, with the A/A noise floor",
        "",
        *_common.table(
            [
                "ratio of trials/min",
                "whole command",
                "A/A: 1 worker (A/A) / 1 worker",
                "start-up excluded",
                "A/A: 1 worker (A/A) / 1 worker",
            ],
            pairs,
        ),
        "",
        "## Every configuration (medians over rounds)",
        "",
        *_common.table(
            [
                "configuration",
                "whole command (s)",
                "trials/min",
                "vs 1 worker",
                "first trial start to last trial end (s)",
                "trials/min, start-up excluded",
                "vs 1 worker",
            ],
            rows,
        ),
        "",
        "## Every run",
        "",
        *_common.table(
            ["round", "position in the round", "configuration", "whole command (s)", "first trial to last (s)"], runs
        ),
        "",
        f"With {machine.cores} CPU cores the workers split the same cores, so this measures how well the "
        "shared study keeps them busy (and what each worker's start-up costs), not scaling: on a GPU box each "
        "worker brings its own GPU.",
    ]
    _common.write_report("workers", "Sweep throughput: 1 worker against several on one machine", machine, body)


if __name__ == "__main__":
    main()
