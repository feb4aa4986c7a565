"""Memory over a long sweep in one process: resident memory and what is left open after each trial.

    .venv/bin/python benchmarks/bench_memory.py                        # 2 rounds of 200 trials: ~5 min on 2 cores
    .venv/bin/python benchmarks/bench_memory.py --trials 30 --rounds 1 --no-report   # a quick look

One round is one fresh Python process running a real ``lora_lab.sweep.Sweep`` (composed in-process
with Hydra as the CLI does, Optuna study in its default journal file, every trial tracked in a
throwaway sqlite MLflow store, adapters saved and logged): the ``full`` preset (TPE over rank, scale,
dropout, targets, learning rate and rsLoRA, median pruning) with ``--trials`` configurations of
``--steps`` optimizer steps each on the default model and task, so a trial is short and the sweep
is long. After every trial (``Sweep._one_trial`` returns) the round records:

- resident memory (psutil ``memory_info().rss``), read first, before anything below allocates;
- open file descriptors (psutil ``num_fds``) and threads (psutil ``num_threads``: the OS's count,
  torch's and the tokenizer's pools included; ``threading.active_count()``: Python's);
- after one ``gc.collect()``: the live objects the collector tracks (objects made before the first
  trial's ``gc.freeze()`` are not among them, see ``lora_lab.train.ResourceCache``), and the live
  instances of what a trial may open: MLflow clients, Optuna storages and SQLAlchemy engines
  (every instance made in the process, counted through weak references registered when each is
  constructed), MLflow artifact repositories, transformers ``Trainer``\\ s, PEFT models and
  ``TrainerCallback``\\ s (counted among the collector's objects).

The goal (issue: memory flat over a long sweep): from trial 10 to the last, resident memory grows
by at most 10 %, and none of the counts grows with the trials. Each round is the same code in a
fresh process: the second round against the first (A/A) is the noise floor of the growth figure.
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import shutil
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from _common import fmt, median  # noqa: E402

GOAL_GROWTH = 0.10
"""Resident memory may grow by this share from trial ``FROM_TRIAL`` to the last."""
FROM_TRIAL = 10
"""Trials before this one warm up (first allocations, caches that fill once): not counted."""

COUNTS = [
    ("fds", "open file descriptors"),
    ("os_threads", "threads (OS)"),
    ("py_threads", "threads (Python)"),
    ("gc_objects", "objects tracked by the collector"),
    ("mlflow_clients", "MlflowClient instances"),
    ("optuna_storages", "Optuna storages"),
    ("sqlalchemy_engines", "SQLAlchemy engines"),
    ("artifact_repos", "MLflow artifact repositories"),
    ("trainers", "transformers Trainers"),
    ("peft_models", "PEFT models"),
    ("trainer_callbacks", "TrainerCallbacks"),
]


def overrides(trials: int, steps: int) -> list[str]:
    return [
        "+sweep=full",
        "sweep.study_name=memory",
        f"sweep.n_trials={trials}",
        "sweep.baselines=[]",  # the search alone: every trial a sampled configuration
        f"train.max_steps={steps}",
        "train.eval_every=1",  # an evaluation at every step, so the median pruner can act
    ]


def register(base: type) -> weakref.WeakSet:
    """A set that holds, weakly, every instance of ``base`` and its subclasses constructed from now
    on: each class's ``__init__`` is wrapped to add the new instance."""
    alive: weakref.WeakSet = weakref.WeakSet()
    classes, seen = [base], set()
    while classes:
        cls = classes.pop()
        if cls in seen:
            continue
        seen.add(cls)
        classes.extend(cls.__subclasses__())
        if "__init__" in vars(cls):
            original = cls.__init__

            @functools.wraps(original)
            def init(self, *args, _original=original, **kwargs):
                alive.add(self)
                _original(self, *args, **kwargs)

            cls.__init__ = init
    return alive


def child(args) -> None:
    """One round in this fresh process: the sweep, with a snapshot after every trial."""
    import mlflow
    import optuna
    import psutil
    import sqlalchemy
    from hydra import compose, initialize_config_dir
    from mlflow.store.artifact.artifact_repo import ArtifactRepository
    from mlflow.tracking import MlflowClient
    from peft import PeftModel
    from transformers import Trainer, TrainerCallback

    import lora_lab.sweep as lab_sweep
    from lora_lab.config import register_configs

    _common.set_threads(args.threads)
    _common.quiet()
    register_configs()
    registered = {  # before the first client, store or study exists
        "mlflow_clients": register(MlflowClient),
        "optuna_storages": register(optuna.storages.BaseStorage),
        "sqlalchemy_engines": register(sqlalchemy.engine.Engine),
    }
    workdir = Path(tempfile.mkdtemp(prefix="bench_memory_"))
    home = os.getcwd()
    os.chdir(workdir)  # first: the store's default artifact root (./mlruns) is fixed when it is opened
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    MlflowClient(uri).search_experiments()  # the store's schema, created once beforehand
    process = psutil.Process()
    kinds = {
        "artifact_repos": ArtifactRepository,
        "trainers": Trainer,
        "peft_models": PeftModel,
        "trainer_callbacks": TrainerCallback,
    }
    snapshots: list[dict] = []

    def snapshot(number: int, outcome: str) -> dict:
        rss = process.memory_info().rss  # first: nothing below has allocated yet
        row = {
            "trial": number,
            "outcome": outcome,
            "rss_mb": rss / 2**20,
            "fds": process.num_fds(),
            "os_threads": process.num_threads(),
            "py_threads": threading.active_count(),
            "thread_names": sorted(t.name for t in threading.enumerate()),
        }
        gc.collect()
        objects = gc.get_objects()
        row["gc_objects"] = len(objects)
        for key, kind in kinds.items():
            row[key] = sum(1 for o in objects if isinstance(o, kind))
        del objects
        for key, alive in registered.items():
            row[key] = len(alive)
        return row

    with initialize_config_dir(config_dir=str(_common.CONF), version_base=None):
        chosen = overrides(args.trials, args.steps)
        cfg = compose("config", overrides=chosen)
        sweep = lab_sweep.Sweep(cfg, chosen, console_progress=False)
        one_trial = sweep._one_trial

        def measured_trial(phase, trial):
            outcome = one_trial(phase, trial)
            snapshots.append(snapshot(trial.number, str(outcome)))
            return outcome

        sweep._one_trial = measured_trial
        started = time.perf_counter()
        sweep.run()
        wall = time.perf_counter() - started
    os.chdir(home)
    shutil.rmtree(workdir, ignore_errors=True)
    _common.write_child(args.child_out, {"snapshots": snapshots, "wall_s": wall})


def growth(rows: list[dict], key: str, start: int) -> tuple[float, float]:
    """(value at the ``start``-th trial, value at the last) of one column."""
    return rows[start - 1][key], rows[-1][key]


def slope_per_trial(rows: list[dict], start: int) -> tuple[float, float, float]:
    """Resident memory's least-squares slope over the trials from ``start`` (MiB a trial) with its
    95 % confidence interval (scipy.stats.linregress, t interval)."""
    from scipy import stats

    tail = rows[start - 1 :]
    if len(tail) < 3:
        return (float("nan"),) * 3
    fit = stats.linregress([r["trial"] for r in tail], [r["rss_mb"] for r in tail])
    half = stats.t.ppf(0.975, len(tail) - 2) * fit.stderr
    return fit.slope, fit.slope - half, fit.slope + half


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=200, help="trials of the sweep (each round)")
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps of each trial")
    parser.add_argument("--rounds", type=int, default=2, help="rounds, each a fresh process (2: one A/A pair)")
    parser.add_argument("--threads", type=int, default=1, help=_common.THREADS_HELP)
    parser.add_argument("--no-report", action="store_true", help="print only; do not write reports/benchmarks/")
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trials <= FROM_TRIAL:
        parser.error(f"--trials must be above {FROM_TRIAL}: growth is measured from trial {FROM_TRIAL}")
    if args.child_out:
        child(args)
        return
    _common.set_threads(args.threads)
    machine = _common.Machine()
    print(f"machine: {machine.cpu}, {machine.cores} cores, torch {machine.torch}; {machine.uptime_before}")
    rounds = []
    for r in range(args.rounds):
        out = _common.run_child(
            __file__, ["--trials", str(args.trials), "--steps", str(args.steps), "--threads", str(args.threads)]
        )
        rows = out["snapshots"]
        first, last = growth(rows, "rss_mb", FROM_TRIAL)
        slope = slope_per_trial(rows, FROM_TRIAL)
        rounds.append({"rows": rows, "wall_s": out["wall_s"], "rss": (first, last), "slope": slope})
        print(
            f"round {r + 1}: {len(rows)} trials in {out['wall_s']:.0f} s; resident memory {first:.0f} MiB after trial "
            f"{FROM_TRIAL}, {last:.0f} MiB after trial {len(rows)}: {100 * (last / first - 1):+.1f}% "
            f"(slope {slope[0]:+.3f} MiB/trial [{slope[1]:+.3f}, {slope[2]:+.3f}])",
            flush=True,
        )
        for key, text in COUNTS:
            a, b = growth(rows, key, FROM_TRIAL)
            print(f"    {text:<36} {a:>9} -> {b:>9}")
    machine.finish()
    print(machine.uptime_after)
    if args.no_report:
        return

    def pct(pair: tuple[float, float]) -> float:
        return 100 * (pair[1] / pair[0] - 1)

    body = [
        "## What was measured",
        "",
        f"Each round is one fresh Python process running a real `lora_lab.sweep.Sweep` of {args.trials} trials, composed "
        f"in-process like `python -m lora_lab.sweep {' '.join(overrides(args.trials, args.steps))}`: TPE over the "
        f"`full` preset's space with median pruning, {args.steps} optimizer steps a trial with an evaluation at each, "
        "the default model (the pretrained tiny Llama shipped in lora_lab) and task (cipher_swap, with exact-match "
        "generation and task A scores), the Optuna study in its default journal file, every trial tracked in a sqlite "
        "MLflow store with its adapter saved and logged. After each trial the round read the process's resident "
        "memory (psutil), its open file descriptors and threads, then, after one `gc.collect()`, counted the live "
        "objects the collector tracks and the live MLflow clients, Optuna storages, SQLAlchemy engines, Trainers, "
        f"PEFT models and Trainer callbacks. {args.rounds} round(s), one after another: the second round is the "
        "same code again, the noise floor (A/A) of every figure.",
        "",
        f"**Goal**: from trial {FROM_TRIAL} to the last, resident memory grows by at most {100 * GOAL_GROWTH:.0f} %, "
        "and nothing is left open per trial (no count grows with the trials).",
        "",
        "## Resident memory",
        "",
    ]
    rows_out = []
    for r, rnd in enumerate(rounds):
        first, last = rnd["rss"]
        s, lo, hi = rnd["slope"]
        rows_out.append(
            [
                f"round {r + 1}",
                len(rnd["rows"]),
                fmt(rnd["wall_s"], 4),
                fmt(first, 4),
                fmt(last, 4),
                f"**{pct(rnd['rss']):+.1f}%**",
                f"{s:+.3f} [{lo:+.3f}, {hi:+.3f}]",
                "yes" if pct(rnd["rss"]) <= 100 * GOAL_GROWTH else "**no**",
            ]
        )
    if len(rounds) >= 2:
        rows_out.append(
            [
                "A/A: round 2 - round 1",
                "",
                f"{rounds[1]['wall_s'] / rounds[0]['wall_s']:.3f}x",
                f"{rounds[1]['rss'][0] - rounds[0]['rss'][0]:+.1f} MiB",
                f"{rounds[1]['rss'][1] - rounds[0]['rss'][1]:+.1f} MiB",
                f"{pct(rounds[1]['rss']) - pct(rounds[0]['rss']):+.1f} points",
                f"{rounds[1]['slope'][0] - rounds[0]['slope'][0]:+.3f}",
                "",
            ]
        )
    body += _common.table(
        [
            "round",
            "trials",
            "sweep wall (s)",
            f"RSS after trial {FROM_TRIAL} (MiB)",
            "RSS after the last trial (MiB)",
            f"growth from trial {FROM_TRIAL}",
            f"slope from trial {FROM_TRIAL} (MiB/trial, 95 % CI)",
            f"goal (<= {100 * GOAL_GROWTH:.0f} %) met",
        ],
        rows_out,
    )
    body += ["", "Resident memory after every 10th trial (MiB):", ""]
    marks = sorted({*range(10, args.trials + 1, 10), 1, args.trials})
    body += _common.table(
        ["trial", *[f"round {r + 1}" for r in range(len(rounds))]],
        [[m, *[fmt(rnd["rows"][m - 1]["rss_mb"], 4) for rnd in rounds]] for m in marks],
    )
    body += ["", "## What is left open after each trial", ""]
    body += _common.table(
        [
            "count",
            *[
                f"round {r + 1}: after trial {FROM_TRIAL} -> after the last (min-max from {FROM_TRIAL})"
                for r in range(len(rounds))
            ],
        ],
        [
            [
                text,
                *[
                    "{} -> {} ({}-{})".format(
                        *growth(rnd["rows"], key, FROM_TRIAL),
                        min(row[key] for row in rnd["rows"][FROM_TRIAL - 1 :]),
                        max(row[key] for row in rnd["rows"][FROM_TRIAL - 1 :]),
                    )
                    for rnd in rounds
                ],
            ]
            for key, text in COUNTS
        ],
    )
    last_names = rounds[-1]["rows"][-1]["thread_names"]
    repos = [growth(rnd["rows"], "artifact_repos", FROM_TRIAL) for rnd in rounds]
    body += [
        "",
        f"Python threads alive after the last trial of the last round: {', '.join(last_names)}.",
        "",
        "MLflow artifact repositories "
        + ", ".join(f"{a} -> {b}" for a, b in repos)
        + ": MLflow keeps the artifact repository of every run it logged artifacts to in a process-wide cache "
        "of at most 1024 (`mlflow.tracking._tracking_service.utils._artifact_repos_cache`, oldest dropped "
        "first), one per trial here; each is a local directory handle with an idle logging queue (no thread is "
        "started), a few KiB, so the cache is bounded by MLflow and left as it is.",
        "",
        "Outcomes (last round): "
        + ", ".join(
            f"{n} {o.lower()}"
            for o, n in sorted(
                {
                    o: sum(1 for row in rounds[-1]["rows"] if row["outcome"] == o)
                    for o in {row["outcome"] for row in rounds[-1]["rows"]}
                }.items()
            )
        )
        + f"; median trial wall {fmt(median([b['wall_s'] / len(b['rows']) for b in rounds]), 3)} s (sweep wall / trials).",
    ]
    _common.write_report("memory", "Memory over a long sweep in one process", machine, body)


if __name__ == "__main__":
    main()
