"""Per-trial overhead of a lora_lab sweep: the share of a trial's wall time that is not training or
evaluation (composing the config, building or reusing the model and data, attaching the adapter,
building the Trainer, the Trainer's own bookkeeping, saving the adapter, MLflow and Optuna writes).

    .venv/bin/python benchmarks/bench_trial_overhead.py                  # 4 trials of the rank_alpha grid, default training
    .venv/bin/python benchmarks/bench_trial_overhead.py --trials 3 --steps 30 --no-report

A real ``lora_lab.sweep.Sweep`` (composed in-process with Hydra, tracked in a throwaway sqlite MLflow
store) runs the trials; the benchmark times each phase by wrapping the functions that do it
(``time.perf_counter``). A training step is the fetch of its batch (``Trainer.get_batch_samples``,
timed by wrapping it) plus what a Trainer callback times from on_step_begin to on_step_end (forward,
backward, clipping, optimizer step); the report also lists the fetch on its own. Evaluation is what measures the
trained adapter: the Trainer's evaluations (their own ``eval_runtime`` from the log history), the
exact-match generation on held-out prompts and the adapter's effective rank. A trial's wall time is
the whole Optuna objective (sampling to the end of its MLflow run), so

    overhead = objective wall - training steps - evaluation

The first trial is cold (it builds the tokenizer, base model and tokenized data through
``lora_lab.train.ResourceCache``); later ones are warm (they reuse them). Separately, the cost of
``lora_lab.train.build_resources(cfg)`` is measured against a warm trial: what reusing resources saves.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from _common import fmt, median, stopwatch  # noqa: E402

_common.quiet()

import mlflow  # noqa: E402
import transformers  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

import lora_lab.sweep as lab_sweep  # noqa: E402
import lora_lab.train as lab_train  # noqa: E402
from lora_lab import track  # noqa: E402
from lora_lab.config import register_configs, to_trial_config  # noqa: E402

PHASES = [
    ("compose", "compose the trial config (Hydra)"),
    ("resources", "resources: build (cold) or reuse (warm)"),
    ("attach", "attach the adapter (get_peft_model)"),
    ("trainer_init", "build the Trainer"),
    ("fetch", "fetching each step's batch (part of the training steps, not overhead)"),
    ("loop_other", "Trainer.train() outside steps and evaluations (optimizer, dataloader, callbacks)"),
    ("step_logging", "  of which MLflow step logging (StepLogger)"),
    ("generate", "exact-match generation (evaluation, not overhead)"),
    ("save", "save the adapter (save_adapter: PEFT's save_pretrained)"),
    ("rank", "effective rank of the adapter (evaluation, not overhead)"),
    ("detach", "detach the adapter (unload)"),
    ("mlflow_log", "MLflow: config, dataset, final metrics, adapter artifact, end of run"),
    ("rest", "the rest (MLflow run creation and tags, Optuna storage, sampling)"),
]


class Recorder:
    """Accumulates the time spent in wrapped functions, per trial."""

    def __init__(self) -> None:
        self.trials: list[dict[str, float]] = []
        self.current: dict[str, float] | None = None

    def wrap(self, owner, attr: str, label: str) -> None:
        original = getattr(owner, attr)
        recorder = self

        @functools.wraps(original)
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                if recorder.current is not None:
                    recorder.current[label] += time.perf_counter() - started

        setattr(owner, attr, timed)

    def add(self, label: str, seconds: float) -> None:
        if self.current is not None:
            self.current[label] += seconds


class StepTimer(TrainerCallback):
    """Time of each optimizer step: forward, backward, clipping and the optimizer update."""

    def __init__(self, recorder: Recorder):
        self.recorder = recorder
        self.started = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.recorder.add("steps", time.perf_counter() - self.started)
        self.recorder.add("n_steps", 1)


def instrument(recorder: Recorder) -> None:
    recorder.wrap(lab_sweep.Sweep, "compose_trial", "compose")
    recorder.wrap(lab_train.ResourceCache, "get", "resources")
    recorder.wrap(lab_train, "attach_adapter", "attach")
    recorder.wrap(lab_train, "detach_adapter", "detach")
    recorder.wrap(lab_train, "exact_match", "generate")
    recorder.wrap(transformers.Trainer, "__init__", "trainer_init")
    recorder.wrap(transformers.Trainer, "train", "train")
    recorder.wrap(transformers.Trainer, "get_batch_samples", "fetch")
    recorder.wrap(transformers.Trainer, "evaluate", "evaluate_call")
    recorder.wrap(lab_train, "save_adapter", "save")
    recorder.wrap(track.TrialRun, "on_adapter_ready", "rank")
    recorder.wrap(track.StepLogger, "on_log", "step_logging")
    for name in ("log_config", "log_dataset", "log_result", "finish"):
        recorder.wrap(track.TrialRun, name, "mlflow_log")
    original_run_trial = lab_sweep.run_trial

    def run_trial(*args, **kwargs):
        result = original_run_trial(*args, **kwargs)
        if recorder.current is not None:
            recorder.current["result_wall"] = result.wall_time_s
            recorder.current["result_train"] = result.train_time_s
            recorder.current["eval"] = sum(e.get("eval_runtime", 0.0) for e in result.history)
            recorder.current["n_evals"] = sum(1 for e in result.history if "eval_runtime" in e)
        return result

    lab_sweep.run_trial = run_trial


def breakdown(trial: dict[str, float]) -> dict[str, float]:
    """Phase seconds of one trial, the rest and the overhead."""
    out = dict(trial)
    out["training"] = trial["steps"] + trial["fetch"]
    out["loop_other"] = trial["train"] - out["training"] - trial["eval"]
    named = sum(
        trial[k]
        for k in ("compose", "resources", "attach", "trainer_init", "generate", "save", "rank", "detach", "mlflow_log")
    )
    out["rest"] = trial["wall"] - named - trial["train"]
    # evaluation = the Trainer's evaluations + exact-match generation + the adapter's effective rank
    out["evaluation"] = trial["eval"] + trial["generate"] + trial["rank"]
    out["overhead"] = trial["wall"] - out["training"] - out["evaluation"]
    out["share"] = out["overhead"] / trial["wall"]
    out["share_with_fetch"] = (out["overhead"] + trial["fetch"]) / trial["wall"]  # the stricter reading
    # the measure TrialResult alone gives: run_trial's wall minus Trainer.train's runtime (which includes
    # the evaluations during training)
    out["result_share"] = (trial["result_wall"] - trial["result_train"]) / trial["result_wall"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--steps", type=int, default=None, help="train.max_steps (default: lora_lab's, 150)")
    parser.add_argument("--eval-every", type=int, default=None, help="train.eval_every (default: lora_lab's, 50)")
    parser.add_argument("--builds", type=int, default=3, help="timed calls of build_resources")
    parser.add_argument("--no-report", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help=_common.THREADS_HELP)
    args = parser.parse_args()
    _common.set_threads(args.threads)

    machine = _common.Machine()
    print(f"machine: {machine.cpu}, {machine.cores} cores, torch {machine.torch}; {machine.uptime_before}")
    register_configs()
    workdir = Path(tempfile.mkdtemp(prefix="bench_overhead_"))
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    MlflowClient(uri).search_experiments()  # create the store's schema once, untimed
    home = os.getcwd()
    os.chdir(workdir)

    # the study goes to lora_lab's default storage, under workdir/sweeps/
    overrides = ["+sweep=rank_alpha", "sweep.study_name=overhead", f"sweep.n_trials={args.trials}"]
    if args.steps is not None:
        overrides.append(f"train.max_steps={args.steps}")
    if args.eval_every is not None:
        overrides.append(f"train.eval_every={args.eval_every}")

    recorder = Recorder()
    instrument(recorder)
    with initialize_config_dir(config_dir=str(_common.CONF), version_base=None):
        cfg = compose("config", overrides=overrides)
        trial_cfg = to_trial_config(cfg)
        sweep = lab_sweep.Sweep(cfg, overrides, console_progress=False, trial_callbacks=[StepTimer(recorder)])
        objective = sweep.objective

        def timed_objective(trial):
            recorder.current = defaultdict(float)
            recorder.trials.append(recorder.current)
            started = time.perf_counter()
            try:
                return objective(trial)
            finally:
                recorder.current["wall"] = time.perf_counter() - started
                recorder.current["number"] = trial.number
                recorder.current = None
                t = breakdown(recorder.trials[-1])
                print(
                    f"trial {trial.number}: wall {t['wall']:.2f} s, training steps {t['training']:.2f} s "
                    f"({int(t['n_steps'])}), evaluation {t['evaluation']:.2f} s, overhead {t['overhead']:.2f} s "
                    f"= {100 * t['share']:.1f}%",
                    flush=True,
                )

        sweep.objective = timed_objective
        sweep.run()
    if sweep.resources.builds != 1:
        print(f"warning: the resources were built {sweep.resources.builds} times")

    builds = []
    for _ in range(args.builds):
        with stopwatch() as t:
            lab_train.build_resources(trial_cfg)
        builds.append(t["s"])
    os.chdir(home)
    machine.finish()
    print(machine.uptime_after)

    trials = [breakdown(t) for t in recorder.trials]
    cold, warm = trials[0], trials[1:]

    def warm_median(key: str) -> float:
        return median([t[key] for t in warm])

    build_s = median(builds)
    print(
        f"\ncold trial overhead {100 * cold['share']:.1f}%  warm trials (median) {100 * warm_median('share'):.1f}%"
        f"  (batch fetch counted as overhead: {100 * warm_median('share_with_fetch'):.1f}%)"
    )
    print(
        f"build_resources {build_s:.2f} s = {100 * build_s / warm_median('wall'):.1f}% of a warm trial "
        f"({warm_median('wall'):.1f} s)"
    )
    for key, text in PHASES:
        print(f"  {text:<85} cold {cold[key]:7.3f} s   warm {warm_median(key):7.3f} s")
    if args.no_report:
        return

    steps_text = args.steps or trial_cfg.train.max_steps
    body = [
        "## What was measured",
        "",
        f"A lora_lab sweep (`+sweep=rank_alpha sweep.n_trials={args.trials}`"
        + (f" train.max_steps={args.steps}" if args.steps else "")
        + (f" train.eval_every={args.eval_every}" if args.eval_every else "")
        + f"; {steps_text} steps of batch {trial_cfg.train.batch_size}, evaluation every "
        f"{args.eval_every or trial_cfg.train.eval_every} steps, exact match on {trial_cfg.train.eval_generate} "
        "prompts, adapter saved and logged, every trial tracked in a sqlite MLflow store), composed in-process "
        "as the CLI does. A trial's wall time is its whole Optuna objective. A training step is the fetch of its "
        "batch (`Trainer.get_batch_samples`) plus what a Trainer callback times from on_step_begin to on_step_end "
        "(forward, backward, clipping, optimizer step); evaluation is the Trainer's evaluations (their "
        "`eval_runtime`), the exact-match generation and the adapter's effective rank; the phases are timed "
        "by wrapping the functions that do them. **Overhead = wall - training steps - evaluation.**",
        "",
        "## Overhead share",
        "",
    ]
    body += _common.table(
        [
            "trial",
            "wall (s)",
            "training steps (s)",
            "evaluation (s)",
            "overhead (s)",
            "overhead share",
            "run_trial view: (wall_time_s - train_time_s) / wall_time_s",
        ],
        [
            [
                f"{int(t['number'])} ({'cold' if i == 0 else 'warm'})",
                fmt(t["wall"], 4),
                fmt(t["training"], 4),
                fmt(t["evaluation"], 3),
                fmt(t["overhead"], 3),
                f"**{100 * t['share']:.1f}%**",
                f"{100 * t['result_share']:.1f}%",
            ]
            for i, t in enumerate(trials)
        ]
        + [
            [
                "warm median",
                fmt(warm_median("wall"), 4),
                fmt(warm_median("training"), 4),
                fmt(warm_median("evaluation"), 3),
                fmt(warm_median("overhead"), 3),
                f"**{100 * warm_median('share'):.1f}%**",
                f"{100 * warm_median('result_share'):.1f}%",
            ]
        ],
    )
    body += [
        "",
        f"Counting each step's batch fetch as overhead instead of as part of the step, the warm median "
        f"would be {100 * warm_median('share_with_fetch'):.1f}%.",
        "",
        "## Where the overhead goes (seconds per trial)",
        "",
    ]
    body += _common.table(
        ["phase", "cold trial", "warm trials (median)"],
        [[text, fmt(cold[key], 3), fmt(warm_median(key), 3)] for key, text in PHASES],
    )
    body += [
        "",
        "## Reusing the base model and tokenized data",
        "",
        f"`lora_lab.train.build_resources(cfg)` (tokenizer, tokenized cipher data, base model): median "
        f"{build_s:.2f} s over {len(builds)} calls ({', '.join(f'{b:.2f}' for b in builds)}), against a warm trial's "
        f"{warm_median('wall'):.2f} s: **reusing them saves {100 * build_s / (warm_median('wall') + build_s):.1f}% "
        f"of every trial after the first** (a trial that rebuilt them would take "
        f"{(warm_median('wall') + build_s) / warm_median('wall'):.3f}x as long). The cold trial's resources phase "
        f"took {cold['resources']:.2f} s; a warm trial's {warm_median('resources'):.4f} s.",
    ]
    _common.write_report("trial_overhead", "Per-trial overhead of a lora_lab sweep", machine, body)


if __name__ == "__main__":
    main()
