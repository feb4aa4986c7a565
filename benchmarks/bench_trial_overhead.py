"""Per-trial overhead of a lora_lab sweep: the share of a trial's wall time that is not training or
evaluation (composing the config, building or reusing the model and data, attaching the adapter,
building the Trainer, the Trainer's own bookkeeping, saving the adapter, MLflow and Optuna writes).

    .venv/bin/python benchmarks/bench_trial_overhead.py                  # 2 rounds of 4 trials of the rank_alpha grid, default training
    .venv/bin/python benchmarks/bench_trial_overhead.py --trials 2 --steps 1 --builds 1 --no-report   # smallest

A real ``lora_lab.sweep.Sweep`` (composed in-process with Hydra, tracked in a throwaway sqlite MLflow
store) runs the trials; the benchmark times each phase by wrapping the functions that do it
(``time.perf_counter``). A training step is the fetch of its batch (``Trainer.get_batch_samples``,
timed by wrapping it) plus what a Trainer callback times from on_step_begin to on_step_end (forward,
backward, clipping, optimizer step); the report also lists the fetch on its own. Evaluation is what measures the
trained adapter: the Trainer's evaluations (their own ``eval_runtime`` from the log history), the
exact-match generation on held-out prompts and the adapter's effective rank. A trial's wall time is
the sweep's whole work on it (``Sweep._one_trial``: its slot and sampled values, the claim, its MLflow
run, composing and training it, telling Optuna the result), so

    overhead = trial wall - training steps - evaluation

The sweep is the ``rank_alpha`` grid with one seed and no baselines, so ``--trials N`` runs N adapter
trials (the grid has 10 configurations).

The first trial is cold (it builds the tokenizer, base model and tokenized data through
``lora_lab.train.ResourceCache``); later ones are warm (they reuse them). Separately, the cost of
``lora_lab.train.build_resources(cfg)`` is measured against a warm trial: what reusing resources saves.

The whole measurement runs ``--rounds`` times (default 2), each round a fresh Python process of its own
(``_common.run_child``), so no round inherits another's imports, caches or collector state. The rounds are
the same code measured twice: their difference (round 2 against round 1) is the noise floor of the overhead
share and of the reuse saving, shown next to them. The warm trials of all rounds, pooled, give the overhead
share's median with a 95 % bootstrap confidence interval (``_common.ratio_ci``).
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
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

import lora_lab.compose as lab_compose  # noqa: E402
import lora_lab.sweep as lab_sweep  # noqa: E402
import lora_lab.train as lab_train  # noqa: E402
from lora_lab import track  # noqa: E402
from lora_lab.config import register_configs, to_trial_config  # noqa: E402

SWEEP_OVERRIDES = ["+sweep=rank_alpha", "sweep.study_name=overhead", "sweep.seeds=1", "sweep.baselines=[]"]

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
    recorder.wrap(lab_compose.TrialComposer, "compose", "compose")
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
    """Phase seconds of one trial, the rest and the overhead (a phase the trial never entered counts 0 s)."""
    trial = defaultdict(float, trial)
    out = defaultdict(float, trial)
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


def child(args) -> None:
    """One round in this fresh process: the instrumented sweep, then the timed build_resources calls;
    writes each trial's raw phase seconds and the build seconds to ``args.child_out``."""
    _common.set_threads(args.threads)
    register_configs()
    workdir = Path(tempfile.mkdtemp(prefix="bench_overhead_"))
    home = os.getcwd()
    os.chdir(workdir)  # first: the store's default artifact root (./mlruns) is fixed when it is opened
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    MlflowClient(uri).search_experiments()  # create the store's schema once, untimed

    # the study goes to lora_lab's default storage, under workdir/sweeps/
    # one seed and no baselines: n_trials configurations are n_trials adapter trials (the preset's 3 seeds and
    # its zero-shot/full fine-tuning baselines would triple the count and put an untrained run first)
    overrides = [*SWEEP_OVERRIDES, f"sweep.n_trials={args.trials}"]
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
        one_trial = sweep._one_trial

        def timed_trial(phase, trial):
            # the sweep's whole work on one asked trial: its slot and values, the claim, its MLflow run,
            # composing and training it, and telling Optuna the result
            recorder.current = defaultdict(float)
            recorder.trials.append(recorder.current)
            started = time.perf_counter()
            try:
                return one_trial(phase, trial)
            finally:
                recorder.current["wall"] = time.perf_counter() - started
                recorder.current["number"] = trial.number
                recorder.current = None

        sweep._one_trial = timed_trial
        sweep.run()

    builds = []
    for _ in range(args.builds):
        with stopwatch() as t:
            lab_train.build_resources(trial_cfg)
        builds.append(t["s"])
    os.chdir(home)
    shutil.rmtree(workdir, ignore_errors=True)  # the round's MLflow store, study and adapters: not needed again
    train = trial_cfg.train
    _common.write_child(
        args.child_out,
        {
            # a trial the sweep asked for but did not train (failed, or found surplus) has no run to break down
            "trials": [dict(t) for t in recorder.trials if "result_wall" in t],
            "untrained": [int(t["number"]) for t in recorder.trials if "result_wall" not in t],
            "builds": builds,
            "resource_builds": sweep.resources.builds,
            "steps": train.max_steps,
            "batch_size": train.batch_size,
            "eval_every": train.eval_every,
            "eval_generate": train.eval_generate,
        },
    )


def summarize(out: dict) -> dict:
    """One round's numbers: its trials' breakdowns, the cold trial, the warm medians and the reuse saving."""
    trials = [breakdown(t) for t in out["trials"]]
    warm = trials[1:]
    warm_wall = median([t["wall"] for t in warm])
    build_s = median(out["builds"])
    return {
        "trials": trials,
        "cold_share": trials[0]["share"],
        "warm_share": median([t["share"] for t in warm]),
        "warm_wall": warm_wall,
        "build_s": build_s,
        # what reusing the resources saves of a trial that would otherwise rebuild them
        "saving": build_s / (warm_wall + build_s),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--trials", type=int, default=4, help="trials per round, 2 to 10 (one cold, the rest warm; the grid holds 10)"
    )
    parser.add_argument("--rounds", type=int, default=2, help="rounds, each a fresh process (2: one A/A pair)")
    parser.add_argument("--steps", type=int, default=None, help="train.max_steps (default: conf/train/default.yaml's)")
    parser.add_argument(
        "--eval-every", type=int, default=None, help="train.eval_every (default: conf/train/default.yaml's)"
    )
    parser.add_argument("--builds", type=int, default=3, help="timed calls of build_resources per round")
    parser.add_argument("--no-report", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help=_common.THREADS_HELP)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trials < 2:
        parser.error("--trials must be at least 2: the first trial is cold, the warm ones are the rest")
    if args.rounds < 1 or args.builds < 1:
        parser.error("--rounds and --builds must be at least 1")
    if args.child_out:
        child(args)
        return
    _common.set_threads(args.threads)

    machine = _common.Machine()
    print(f"machine: {machine.cpu}, {machine.cores} cores, torch {machine.torch}; {machine.uptime_before}")
    child_args = ["--trials", str(args.trials), "--builds", str(args.builds), "--threads", str(args.threads)]
    if args.steps is not None:
        child_args += ["--steps", str(args.steps)]
    if args.eval_every is not None:
        child_args += ["--eval-every", str(args.eval_every)]
    outs, rounds = [], []
    for r in range(args.rounds):
        out = _common.run_child(__file__, child_args)
        outs.append(out)
        rounds.append(summarize(out))
        if out["untrained"]:
            print(f"warning: round {r + 1}: trials {out['untrained']} did not train (failed or surplus); left out")
        if out["resource_builds"] != 1:
            print(f"warning: round {r + 1} built the resources {out['resource_builds']} times")
        for i, t in enumerate(rounds[-1]["trials"]):
            print(
                f"round {r + 1} trial {int(t['number'])} ({'cold' if i == 0 else 'warm'}): wall {t['wall']:.2f} s, "
                f"training steps {t['training']:.2f} s ({int(t['n_steps'])}), evaluation {t['evaluation']:.2f} s, "
                f"overhead {t['overhead']:.2f} s = {100 * t['share']:.1f}%",
                flush=True,
            )
    machine.finish()
    print(machine.uptime_after)

    cold_trials = [s["trials"][0] for s in rounds]
    warm = [t for s in rounds for t in s["trials"][1:]]  # the warm trials of every round, pooled

    def warm_median(key: str) -> float:
        return median([t[key] for t in warm])

    def cold_median(key: str) -> float:
        return median([t[key] for t in cold_trials])

    share, share_low, share_high = _common.ratio_ci([t["share"] for t in warm])
    share_ci = (
        f"[{100 * share_low:.1f}%, {100 * share_high:.1f}%]"
        if share_low == share_low
        else "(no CI: fewer than 3 warm trials)"
    )
    builds = [b for out in outs for b in out["builds"]]
    build_s = median(builds)
    saving = build_s / (warm_median("wall") + build_s)
    # A/A: the same code in a second fresh process; how far its numbers move is the noise floor
    aa = len(rounds) >= 2
    aa_share_pp = 100 * (rounds[1]["warm_share"] - rounds[0]["warm_share"]) if aa else float("nan")
    aa_share_ratio = rounds[1]["warm_share"] / rounds[0]["warm_share"] if aa else float("nan")
    aa_saving_pp = 100 * (rounds[1]["saving"] - rounds[0]["saving"]) if aa else float("nan")

    print()
    for r, s in enumerate(rounds):
        print(
            f"round {r + 1}: cold trial overhead {100 * s['cold_share']:.1f}%  warm trials (median) "
            f"{100 * s['warm_share']:.1f}%  build_resources {s['build_s']:.2f} s = reuse saves {100 * s['saving']:.1f}%"
        )
    if aa:
        print(
            f"A/A (round 2 vs round 1): warm overhead share {aa_share_pp:+.2f} points (ratio {aa_share_ratio:.3f}), "
            f"reuse saving {aa_saving_pp:+.2f} points"
        )
    print(
        f"pooled over {len(rounds)} round(s): cold trial overhead (median) {100 * cold_median('share'):.1f}%  warm trials "
        f"(median of {len(warm)}) {100 * share:.1f}% {share_ci}  (batch fetch counted as overhead: "
        f"{100 * warm_median('share_with_fetch'):.1f}%)"
    )
    print(
        f"build_resources {build_s:.2f} s (median of {len(builds)}) = {100 * build_s / warm_median('wall'):.1f}% of a "
        f"warm trial ({warm_median('wall'):.1f} s): reuse saves {100 * saving:.1f}%"
    )
    print(f"phases, pooled over {len(rounds)} round(s) (cold: median of the {len(cold_trials)} cold trials):")
    for key, text in PHASES:
        print(f"  {text:<85} cold {cold_median(key):7.3f} s   warm {warm_median(key):7.3f} s")
    if args.no_report:
        return

    first = outs[0]
    steps_text = args.steps or first["steps"]
    body = [
        "## What was measured",
        "",
        f"A lora_lab sweep (`{' '.join(SWEEP_OVERRIDES[:1] + SWEEP_OVERRIDES[2:])} sweep.n_trials={args.trials}"
        + (f" train.max_steps={args.steps}" if args.steps else "")
        + (f" train.eval_every={args.eval_every}" if args.eval_every else "")
        + f"`; {steps_text} steps of batch {first['batch_size']}, evaluation every "
        f"{first['eval_every']} steps, exact match on {first['eval_generate']} "
        "prompts, adapter saved and logged, every trial tracked in a sqlite MLflow store), composed in-process "
        "as the CLI does. A trial's wall time is the sweep's whole work on it (`Sweep._one_trial`: its slot and "
        "values, the claim, its MLflow run, composing and training it, telling Optuna). A training step is the fetch of its "
        "batch (`Trainer.get_batch_samples`) plus what a Trainer callback times from on_step_begin to on_step_end "
        "(forward, backward, clipping, optimizer step); evaluation is the Trainer's evaluations (their "
        "`eval_runtime`), the exact-match generation and the adapter's effective rank; the phases are timed "
        "by wrapping the functions that do them. **Overhead = wall - training steps - evaluation.**",
        "",
        f"The whole measurement (the sweep, then {args.builds} timed `build_resources` calls) ran {len(rounds)} "
        "times, one after another, each round in a fresh Python process of its own. The rounds run the same "
        "code: how far round 2 lands from round 1 is the noise floor of every number below (A/A).",
        "",
        "## Overhead share",
        "",
    ]
    per_round = [
        [
            f"round {r + 1}",
            f"{100 * s['cold_share']:.1f}%",
            f"**{100 * s['warm_share']:.1f}%**",
            fmt(s["warm_wall"], 4),
            fmt(s["build_s"], 3),
            f"{100 * s['saving']:.1f}%",
        ]
        for r, s in enumerate(rounds)
    ]
    if aa:
        per_round.append(
            [
                "A/A: round 2 - round 1",
                f"{100 * (rounds[1]['cold_share'] - rounds[0]['cold_share']):+.1f} points",
                f"**{aa_share_pp:+.2f} points** (ratio {aa_share_ratio:.3f})",
                f"{rounds[1]['warm_wall'] / rounds[0]['warm_wall']:.3f}x",
                f"{rounds[1]['build_s'] / rounds[0]['build_s']:.3f}x",
                f"{aa_saving_pp:+.2f} points",
            ]
        )
    body += _common.table(
        [
            "round",
            "cold trial overhead share",
            "warm trials: median overhead share",
            "warm trial wall, median (s)",
            "build_resources, median (s)",
            "reuse saves",
        ],
        per_round,
    )
    body += [
        "",
        f"**Warm-trial overhead share, pooled over the {len(warm)} warm trials of {len(rounds)} round(s): "
        f"{100 * share:.1f}% {share_ci}** (median; 95 % bootstrap confidence interval over the pooled trials, "
        "scipy.stats.bootstrap via `_common.ratio_ci`; the trials differ in rank and alpha and the interval "
        "treats them as interchangeable).",
        "",
        "Every trial:",
        "",
    ]
    rows = [
        [
            f"round {r + 1}, {int(t['number'])} ({'cold' if i == 0 else 'warm'})",
            fmt(t["wall"], 4),
            fmt(t["training"], 4),
            fmt(t["evaluation"], 3),
            fmt(t["overhead"], 3),
            f"**{100 * t['share']:.1f}%**",
            f"{100 * t['result_share']:.1f}%",
        ]
        for r, s in enumerate(rounds)
        for i, t in enumerate(s["trials"])
    ]
    rows.append(
        [
            f"warm median (pooled, {len(warm)} trials)",
            fmt(warm_median("wall"), 4),
            fmt(warm_median("training"), 4),
            fmt(warm_median("evaluation"), 3),
            fmt(warm_median("overhead"), 3),
            f"**{100 * warm_median('share'):.1f}%**",
            f"{100 * warm_median('result_share'):.1f}%",
        ]
    )
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
        rows,
    )
    body += [
        "",
        f"Counting each step's batch fetch as overhead instead of as part of the step, the pooled warm median "
        f"would be {100 * warm_median('share_with_fetch'):.1f}%.",
        "",
        "## Where the overhead goes (seconds per trial)",
        "",
        f"Pooled over the {len(rounds)} round(s): the cold column is the median of the {len(cold_trials)} cold "
        f"trials (one a round), the warm column the median of all {len(warm)} warm trials.",
        "",
    ]
    body += _common.table(
        ["phase", "cold trial (median)", "warm trials (median)"],
        [[text, fmt(cold_median(key), 3), fmt(warm_median(key), 3)] for key, text in PHASES],
    )
    body += [
        "",
        "## Reusing the base model and tokenized data",
        "",
        f"`lora_lab.train.build_resources(cfg)` (tokenizer, tokenized cipher data, base model): median "
        f"{build_s:.2f} s over {len(builds)} calls ({', '.join(f'{b:.2f}' for b in builds)}; {args.builds} a round), "
        f"against a warm trial's {warm_median('wall'):.2f} s (pooled median): **reusing them saves "
        f"{100 * saving:.1f}% of every trial after the first** (a trial that rebuilt them would take "
        f"{(warm_median('wall') + build_s) / warm_median('wall'):.3f}x as long)"
        + (f"; A/A, round 2 - round 1: {aa_saving_pp:+.2f} points" if aa else "")
        + f". The cold trials' resources phase took {cold_median('resources'):.2f} s (median); a warm trial's "
        f"{warm_median('resources'):.4f} s.",
    ]
    _common.write_report("trial_overhead", "Per-trial overhead of a lora_lab sweep", machine, body)


if __name__ == "__main__":
    main()
