"""lora_lab's sweep against transformers' ``Trainer.hyperparameter_search(backend="optuna")``.

The same search on both sides: the rank_alpha space (r x alpha/r) as a grid, the same number of
trials, the same steps, data, model, batch size, learning-rate schedule and
evaluation interval. It runs without pruning and with Optuna's median pruner, the two sides
alternating in one invocation (A B, then B A), and reports the wall-time ratio (the median of the
per-round ratios with its 95 % bootstrap CI over rounds) and the best eval loss of each. Under "no
pruning" every round also runs the lora_lab search a second time, ``lora_lab (A/A)`` (A B A', then
A' B A), whose ratio to lora_lab, computed the same way, is the noise floor shown next to the
headline ratios: the same code on both sides, measured in the same run.

    .venv/bin/python benchmarks/bench_vs_hf_search.py           # 3 rounds (15 searches) of 10 trials x 100 steps: ~13 min on 2 cores
    .venv/bin/python benchmarks/bench_vs_hf_search.py --trials 4 --steps 30 --repeats 1 --no-report   # a quick look, no CI

(The time is an estimate from a 3-round smoke run of 2 trials x 10 steps on a shared 2-core
machine: about 25 ms an optimizer step, 60 ms an evaluation, 1 s of other work a trial, and 12 s
of process start-up and warm-up a search.)

The lora_lab side is what ``python -m lora_lab.sweep +sweep=rank_alpha sweep.n_trials=10
sweep.seeds=1 'sweep.baselines=[]' train.max_steps=100 train.eval_every=25 [sweep.pruner.name=median]``
does (one seed per configuration and no baselines, as the transformers side has neither), composed
in-process with Hydra and tracked in a throwaway sqlite MLflow store, with its defaults (exact-match
generation, held-out task A scores, adapter saved and logged). Both sides adapt lora_lab's default
base model, the pretrained tiny Llama shipped in the package, on its default task (cipher_swap).
lora_lab runs a grid in its seeded spread order (``lora_lab.grid_order``: the first trials cover
every rank and scale) and the transformers side in ``GridSampler``'s seeded shuffle: with the whole
grid (10 trials, the default) both train the same configurations (each reaching the same eval loss
on both sides), though the median pruner sees them in different orders. The transformers side is the plain script a user would write instead
(``hf_search`` below): ``model_init`` loads the base model with ``from_pretrained`` and wraps it
with ``peft.get_peft_model`` using the trial's r and alpha; no tracking, no adapter saving.

Every search runs in a fresh Python process of its own (importing only what its side needs), after
an untimed warm-up search in that process; the timed wall excludes imports. lora_lab keeps the
untrained base's scores for the process (``lora_lab.base_scores``); they are dropped after the
warm-up, so the timed search scores its base once, as a new study does.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from _common import fmt, median, ratio_text, stopwatch  # noqa: E402

AA = "lora_lab (A/A)"  # the lora_lab search again, as a series of its own: its ratio to lora_lab is the noise floor

# --- the plain transformers + PEFT script a user would write ----------------------------------------
# The space and the training settings are written out as a user would; check_same_search() asserts
# that they equal lora_lab's rank_alpha preset and conf/train/default.yaml, so both sides run the same search.
R_CHOICES = [1, 2, 4, 8, 16]
ALPHA_OVER_R = [1, 4]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LEARNING_RATE = 5e-3
BATCH_SIZE = 32
EVAL_BATCH_SIZE = 64  # lora_lab evaluates with max(batch_size, 64)
WARMUP = 0.05
SCHEDULER = "cosine"
MAX_SEQ_LEN = 64
LOGGING_STEPS = 6


def hf_search(
    workdir: Path, trials: int, steps: int, eval_every: int, seed: int, pruner, storage, study_name: str, callbacks=()
):
    """Trainer.hyperparameter_search over r and alpha/r with a LoRA model built in model_init."""
    import optuna
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        AutoTokenizer,
        DataCollatorForSeq2Seq,
        PrinterCallback,
        Trainer,
        TrainingArguments,
    )

    from lora_lab.config import DataConfig, ModelConfig
    from lora_lab.data import build_task_data
    from lora_lab.model.base import package_model_dir

    model_dir = package_model_dir(ModelConfig())  # the pretrained tiny Llama shipped in lora_lab: a HF model dir
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    data = build_task_data(DataConfig(), tokenizer, MAX_SEQ_LEN)  # the default task (cipher_swap), tokenized

    def hp_space(trial):
        return {
            "lora_r": trial.suggest_categorical("lora.r", R_CHOICES),
            "alpha_over_r": trial.suggest_categorical("alpha_over_r", ALPHA_OVER_R),
        }

    def model_init(trial):
        hp = hp_space(trial) if trial is not None else {"lora_r": 8, "alpha_over_r": 2}
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        model.config.use_cache = False
        lora = LoraConfig(
            r=hp["lora_r"],
            lora_alpha=hp["alpha_over_r"] * hp["lora_r"],
            lora_dropout=0.0,
            target_modules=TARGETS,
            task_type="CAUSAL_LM",
        )
        return get_peft_model(model, lora)

    args = TrainingArguments(
        output_dir=str(workdir / "hf"),
        max_steps=steps,
        per_device_train_batch_size=BATCH_SIZE,
        per_device_eval_batch_size=EVAL_BATCH_SIZE,
        learning_rate=LEARNING_RATE,
        warmup_steps=WARMUP,
        lr_scheduler_type=SCHEDULER,
        eval_strategy="steps",
        eval_steps=eval_every,
        logging_steps=LOGGING_STEPS,
        save_strategy="no",
        report_to="none",
        seed=seed,
        data_seed=seed,
        use_cpu=True,
        disable_tqdm=True,
        label_names=["labels"],
        remove_unused_columns=False,
    )
    trainer = Trainer(
        model_init=model_init,
        args=args,
        train_dataset=data.train,
        eval_dataset=data.eval,
        data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True),
        callbacks=list(callbacks),
    )
    trainer.remove_callback(PrinterCallback)  # no log lines on stdout (lora_lab's sweep prints none either)
    grid = {"lora.r": R_CHOICES, "alpha_over_r": ALPHA_OVER_R}
    return trainer.hyperparameter_search(
        backend="optuna",
        hp_space=hp_space,
        n_trials=trials,
        direction="minimize",
        sampler=optuna.samplers.GridSampler(grid, seed=seed),
        pruner=pruner,
        storage=storage,
        study_name=study_name,
    )  # storage/name only so the trials can be listed afterwards


# ----------------------------------------------------------------------------------------------------


def lora_lab_overrides(name: str, trials: int, steps: int, eval_every: int, pruning: bool, n_startup: int) -> list[str]:
    # the study goes to lora_lab's default storage: a journal file under <working directory>/sweeps/<name>/
    out = [
        "+sweep=rank_alpha",
        f"sweep.study_name={name}",
        f"sweep.n_trials={trials}",
        "sweep.seeds=1",  # the preset trains each configuration with 3 seeds; the transformers side, once
        "sweep.baselines=[]",  # nor does the transformers side run the preset's zero-shot and full fine-tuning
        f"train.max_steps={steps}",
        f"train.eval_every={eval_every}",
    ]
    if pruning:
        out += [
            "sweep.pruner.name=median",
            f"sweep.pruner.n_startup_trials={n_startup}",
            "sweep.pruner.n_warmup_steps=0",
        ]
    return out


def lora_lab_search(overrides: list[str], callbacks=()):
    from hydra import compose, initialize_config_dir

    from lora_lab.config import register_configs
    from lora_lab.sweep import Sweep

    register_configs()
    with initialize_config_dir(config_dir=str(_common.CONF), version_base=None):
        cfg = compose("config", overrides=overrides)
        sweep = Sweep(cfg, overrides, console_progress=False, trial_callbacks=list(callbacks))
        sweep.run()
    return sweep.study


def time_own_evaluations() -> dict[str, float]:
    """Add up, in ``["s"]``, the seconds lora_lab spends on the evaluations only it makes (the peer
    makes none of them): exact-match generation, the held-out task A scores before and after
    adaptation and the zero-shot scores (``lora_lab.train``'s ``exact_match`` and ``score``, which
    never call each other), and the adapter's effective rank (``TrialRun.on_adapter_ready``)."""
    import functools
    import time

    from lora_lab import track
    from lora_lab import train as lab_train

    out = {"s": 0.0}

    def wrap(owner, name: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                out["s"] += time.perf_counter() - started

        setattr(owner, name, timed)

    for owner, name in ((lab_train, "exact_match"), (lab_train, "score"), (track.TrialRun, "on_adapter_ready")):
        wrap(owner, name)
    return out


def check_same_search(workdir: Path, seed: int) -> None:
    """The hand-written HF settings must equal lora_lab's preset and training defaults."""
    from hydra import compose, initialize_config_dir

    from lora_lab import search_space
    from lora_lab.config import DataConfig, ModelConfig, register_configs, to_trial_config
    from lora_lab.model.targets import target_sets_for
    from lora_lab.sweep import to_sweep_config

    register_configs()
    with initialize_config_dir(config_dir=str(_common.CONF), version_base=None):
        cfg = compose("config", overrides=lora_lab_overrides("check", 8, 60, 20, False, 4))
    sweep = to_sweep_config(cfg)
    grid = search_space.grid(sweep)
    assert grid == {"lora.r": R_CHOICES, "alpha_over_r": ALPHA_OVER_R}, grid
    assert sweep.sampler.name == "grid" and sweep.sampler.seed == seed, sweep.sampler
    assert sweep.seeds == 1 and not sweep.baselines, (sweep.seeds, sweep.baselines)
    trial = to_trial_config(cfg)
    t = trial.train
    assert (
        t.learning_rate,
        t.batch_size,
        t.warmup_ratio,
        t.lr_scheduler,
        t.max_seq_len,
        t.logging_steps,
        t.seed,
        t.gradient_accumulation_steps,
    ) == (LEARNING_RATE, BATCH_SIZE, WARMUP, SCHEDULER, MAX_SEQ_LEN, LOGGING_STEPS, seed, 1), t
    wrapped = target_sets_for(trial.model)[trial.lora.targets]  # the layers lora_lab's adapter wraps
    assert sorted(wrapped.modules) == sorted(TARGETS) and trial.lora.lora_dropout == 0.0, wrapped
    assert trial.data == DataConfig() and trial.quant.method == "none" and trial.lora.method == "lora"
    assert trial.model == ModelConfig() and trial.model.source == "package", trial.model


def trial_rows(study) -> list[list]:
    from optuna.trial import TrialState

    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.state == TrialState.COMPLETE:
            value = t.value
        else:
            value = t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else float("nan")
        seconds = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete else float("nan")
        rows.append(
            [
                t.number,
                t.params.get("lora.r"),
                t.params.get("alpha_over_r"),
                t.state.name,
                value,
                len(t.intermediate_values),
                seconds,
            ]
        )
    return rows


def best_value(study) -> float:
    try:
        return study.best_value
    except ValueError:
        return float("nan")


def child(args) -> None:
    """One timed search of one side, in this fresh process, after an untimed warm-up search."""
    _common.set_threads(args.threads)
    _common.quiet()
    workdir = Path(args.workdir)
    os.chdir(workdir)  # the sweep writes sweeps/<study>/ and mlruns/ under the working directory
    pruning = args.pruning
    if args.child == "lora_lab":
        import mlflow

        uri = f"sqlite:///{workdir / 'mlflow.db'}"  # created by the parent, untimed (a user's store exists)
        os.environ["MLFLOW_TRACKING_URI"] = uri
        mlflow.set_tracking_uri(uri)
        lora_lab_search(lora_lab_overrides(f"warmup_{args.name}", 1, 2, 1, False, 1))
        from lora_lab import base_scores

        base_scores.forget_memory()  # the timed search scores its base once, as a new study does
        overrides = lora_lab_overrides(args.name, args.trials, args.steps, args.eval_every, pruning, args.n_startup)
        timer = _common.loop_timer()
        extra = time_own_evaluations()
        with stopwatch() as t:
            study = lora_lab_search(overrides, [timer])
    else:
        import optuna

        hf_search(workdir, 1, 2, 1, args.seed, optuna.pruners.NopPruner(), optuna.storages.InMemoryStorage(), "warmup")
        pruner = (
            optuna.pruners.MedianPruner(n_startup_trials=args.n_startup, n_warmup_steps=0)
            if pruning
            else optuna.pruners.NopPruner()
        )
        storage = optuna.storages.InMemoryStorage()
        timer = _common.loop_timer()
        with stopwatch() as t:
            best = hf_search(
                workdir, args.trials, args.steps, args.eval_every, args.seed, pruner, storage, args.name, [timer]
            )
        study = optuna.load_study(study_name=args.name, storage=storage)
        assert abs(best.objective - best_value(study)) < 1e-9
    rows = trial_rows(study)
    _common.write_child(
        args.child_out,
        {
            "wall_s": t["s"],
            "best": best_value(study),
            "rows": rows,
            "pruned": sum(1 for r in rows if r[3] == "PRUNED"),
            "steps_s": timer.steps_s,
            "evals_s": timer.evals_s,
            "own_evals_s": extra["s"] if args.child == "lora_lab" else 0.0,
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--trials", type=int, default=10, help="trials of each search (10: the whole grid, the same on both sides)"
    )
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--n-startup", type=int, default=4, help="median pruner: trials before pruning starts")
    parser.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="rounds of both conditions (order alternates); at least 3 for a confidence interval",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-report", action="store_true", help="print only; do not write reports/benchmarks/")
    parser.add_argument("--threads", type=int, default=1, help=_common.THREADS_HELP)
    parser.add_argument("--child", choices=["lora_lab", "transformers"], help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--name", help=argparse.SUPPRESS)
    parser.add_argument("--pruning", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return

    _common.set_threads(args.threads)
    _common.quiet()
    machine = _common.Machine()
    print(f"machine: {machine.cpu}, {machine.cores} cores, torch {machine.torch}; {machine.uptime_before}")
    workdir = Path(tempfile.mkdtemp(prefix="bench_vs_hf_"))
    check_same_search(workdir, args.seed)
    from mlflow.tracking import MlflowClient

    MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}").search_experiments()  # the store's schema, untimed

    common = [
        "--trials",
        str(args.trials),
        "--steps",
        str(args.steps),
        "--eval-every",
        str(args.eval_every),
        "--n-startup",
        str(args.n_startup),
        "--seed",
        str(args.seed),
        "--threads",
        str(args.threads),
        "--workdir",
        str(workdir),
    ]
    results: dict[tuple[str, str], list[dict]] = {}
    for rnd in range(args.repeats):
        for condition in ("no pruning", "median pruning"):
            pruning = condition != "no pruning"
            # without pruning: lora_lab, transformers, lora_lab (A/A), so the A/A pair straddles the other side
            sides = ["lora_lab", "transformers"] + ([] if pruning else [AA])
            if (rnd + pruning) % 2:
                sides.reverse()  # A B (A'), then (A') B A: drift in the machine's load hits every series alike
            for side in sides:
                kind = "lora_lab" if side == AA else side
                name = f"{'prune' if pruning else 'noprune'}_{'lora_lab_aa' if side == AA else side}_{rnd}"
                print(f"round {rnd + 1}/{args.repeats} {condition:<14} {side:<14} ...", end=" ", flush=True)
                out = _common.run_child(
                    __file__, common + ["--child", kind, "--name", name] + (["--pruning"] if pruning else [])
                )
                results.setdefault((condition, side), []).append(out)
                print(
                    f"{out['wall_s']:7.1f} s (steps {out['steps_s']:.1f} s, evaluations {out['evals_s']:.1f} s)  "
                    f"best eval loss {out['best']:.4f}  pruned {out['pruned']}/{len(out['rows'])}",
                    flush=True,
                )
    machine.finish()
    print(f"\n{machine.uptime_after}")

    def wall_ratios(x: tuple[str, str], y: tuple[str, str]) -> list[float]:
        """Per round, the wall time of series x over that of y (both ran in that round)."""
        return [a["wall_s"] / b["wall_s"] for a, b in zip(results[x], results[y], strict=True)]

    def rounds_text(ratios: list[float]) -> str:
        return ", ".join(f"{r:.3f}" for r in ratios)

    summary = []
    for condition in ("no pruning", "median pruning"):
        lab, hf = results[(condition, "lora_lab")], results[(condition, "transformers")]
        ratios = wall_ratios((condition, "lora_lab"), (condition, "transformers"))
        summary.append(
            (
                condition,
                median([r["wall_s"] for r in lab]),
                median([r["wall_s"] for r in hf]),
                ratios,
                median([r["best"] for r in lab]),
                median([r["best"] for r in hf]),
                lab[-1]["pruned"],
                hf[-1]["pruned"],
            )
        )
        print(
            f"{condition:<15} wall lora_lab/transformers = {ratio_text(ratios)} "
            f"(rounds {rounds_text(ratios)})  best eval loss lora_lab {summary[-1][4]:.4f} "
            f"vs transformers {summary[-1][5]:.4f}"
        )
    # the noise floor: the same lora_lab search on both sides, in the same rounds as the ratios above
    aa = wall_ratios(("no pruning", AA), ("no pruning", "lora_lab"))
    aa_best = median([r["best"] for r in results[("no pruning", AA)]])
    print(
        f"A/A (no pruning) wall lora_lab (A/A)/lora_lab = {ratio_text(aa)} (rounds {rounds_text(aa)})  "
        f"best eval loss {aa_best:.4f}: the noise floor"
    )
    cross = wall_ratios(("median pruning", "lora_lab"), ("no pruning", "transformers"))
    print(f"lora_lab with pruning / transformers without pruning = {ratio_text(cross)} (rounds {rounds_text(cross)})")

    def rest(r: dict, own: bool = False) -> float:
        return r["wall_s"] - r["steps_s"] - r["evals_s"] - (r["own_evals_s"] if own else 0.0)

    def rest_ratios(x: tuple[str, str], own: bool) -> list[float]:
        """Per round, series x's rest over the peer's (no pruning)."""
        return [
            rest(a, own) / rest(b) for a, b in zip(results[x], results[("no pruning", "transformers")], strict=True)
        ]

    own_rest, own_rest_bare = (
        rest_ratios(("no pruning", "lora_lab"), False),
        rest_ratios(("no pruning", "lora_lab"), True),
    )
    aa_rest = [
        rest(a) / rest(b) for a, b in zip(results[("no pruning", AA)], results[("no pruning", "lora_lab")], strict=True)
    ]
    print(
        f"no pruning, time outside steps and evaluations lora_lab/transformers = {ratio_text(own_rest)}; without "
        f"lora_lab's own evaluations {ratio_text(own_rest_bare)}; A/A lora_lab (A/A)/lora_lab {ratio_text(aa_rest)}"
    )
    if args.no_report:
        return

    body = [
        "## What was compared",
        "",
        f"The same search on both sides: lora_lab's `rank_alpha` space (r in {R_CHOICES}, alpha/r in "
        f"{ALPHA_OVER_R}), {args.trials} trials of "
        f"{args.steps} steps each, evaluation every {args.eval_every} steps on the 200 held-out examples, the "
        "pretrained tiny Llama shipped in lora_lab and its default task (cipher_swap), batch 32, learning rate "
        "5e-3 with cosine decay, seed 0. "
        + (
            "Both sides ran the whole grid, lora_lab in its seeded spread order (`lora_lab.grid_order`, seed "
            f"{args.seed}), the transformers side in Optuna's `GridSampler` order (seed {args.seed}): the same "
            "configurations, in different orders, which matters only to the pruner. "
            if args.trials >= len(R_CHOICES) * len(ALPHA_OVER_R)
            else "With fewer trials than grid points the two sides trained different configurations (lora_lab "
            "the first ones of its spread order, the transformers side `GridSampler`'s seeded draw), so the "
            "ratios compare different work. "
        )
        + f"With pruning both sides use `MedianPruner(n_startup_trials={args.n_startup}, n_warmup_steps=0)` fed "
        "the eval loss at each evaluation; without pruning the transformers side gets an explicit `NopPruner` "
        "(its default, Optuna's `create_study` default, would be a `MedianPruner`).",
        "",
        "- **lora_lab**: `lora_lab.sweep.Sweep` composed in-process like `python -m lora_lab.sweep "
        f"+sweep=rank_alpha sweep.n_trials={args.trials} sweep.seeds=1 'sweep.baselines=[]' "
        f"train.max_steps={args.steps} "
        f"train.eval_every={args.eval_every} [sweep.pruner.name=median sweep.pruner.n_startup_trials={args.n_startup}]`"
        "; Optuna study in its default journal file, every trial tracked in a sqlite MLflow store (params, step metrics, "
        "config, dataset, effective rank, adapter artifact), exact-match generation on 64 held-out prompts, "
        "held-out task A (forgetting) scores, adapter saved: its defaults. The base model, tokenized data and the "
        "untrained base's scores are built once per sweep (the latter dropped after the warm-up search).",
        "- **transformers**: the plain script in `hf_search()`: `Trainer(model_init=...)` + "
        '`Trainer.hyperparameter_search(backend="optuna", hp_space=..., n_trials=..., direction="minimize", '
        "sampler=GridSampler(...), pruner=...)`; `model_init` loads the base model with "
        "`AutoModelForCausalLM.from_pretrained` and wraps it with `peft.get_peft_model` with the trial's r and "
        "alpha. No tracking, no generation, no adapter saving. transformers reports each evaluation to the "
        "Optuna trial itself (`Trainer._report_to_hp_search`: `trial.report(eval_loss, global_step)`, then "
        "`raise TrialPruned` when `trial.should_prune()`).",
        "- **lora_lab (A/A)**: without pruning, the lora_lab search once more in every round, as a series of its "
        "own: its ratio to lora_lab is the noise floor of this run, the same code on both sides.",
        "",
        f"{args.repeats} rounds, each running both conditions; within a condition the sides ran back to back in "
        "alternating order (without pruning lora_lab, transformers, lora_lab (A/A), then lora_lab (A/A), "
        "transformers, lora_lab; with pruning lora_lab, transformers, then transformers, lora_lab; the two "
        "conditions start with opposite sides). Each search ran in a fresh Python process of its own that "
        "imported only what its side needs, after an untimed warm-up search (1 trial, 2 steps) in that process. The wall time starts before anything is "
        "built (lora_lab: compose + `Sweep(...)` + `run()`; transformers: tokenizer, tokenized data, `Trainer`, "
        "`hyperparameter_search`) and excludes imports. The MLflow store's schema was created once beforehand.",
        "",
        "## Results",
        "",
    ]

    def ratio_cell(ratios: list[float]) -> str:
        """``**0.684** [0.648, 0.711] (rounds: ...)``: the median in bold, its 95 % CI, each round's ratio."""
        middle, _, interval = ratio_text(ratios).partition(" ")
        return f"**{middle}** {interval}" + (f" (rounds: {rounds_text(ratios)})" if len(ratios) > 1 else "")

    body += [
        "Ratios are medians of the per-round ratios (each round ran the sides back to back) with their 95 % "
        "bootstrap confidence interval over rounds (scipy.stats.bootstrap, percentile method). Next to the "
        f"headline ratios, the A/A ratio lora_lab (A/A) / lora_lab without pruning: **{ratio_text(aa)}**, "
        f"best eval loss {aa_best:.4f}: how far from 1 the same code on both sides lands in this run, so a "
        "headline ratio no further from 1 than that is noise.",
        "",
    ]
    body += _common.table(
        [
            "condition",
            "lora_lab wall (s)",
            "transformers wall (s)",
            "wall ratio lora_lab / transformers",
            "A/A: wall ratio lora_lab (A/A) / lora_lab (noise floor)",
            "best eval loss lora_lab",
            "best eval loss transformers",
            "pruned trials lora_lab / transformers",
        ],
        [
            [
                c,
                fmt(a, 4),
                fmt(b, 4),
                ratio_cell(rs),
                ratio_cell(aa) if c == "no pruning" else "(A/A runs without pruning only)",
                f"{bl:.4f}",
                f"{bh:.4f}",
                f"{pl} / {ph}",
            ]
            for c, a, b, rs, bl, bh, pl, ph in summary
        ],
    )
    body += [
        "",
        "Where the time went (medians over the rounds, seconds): the optimizer steps (timed by a Trainer "
        "callback on both sides, on_step_begin to on_step_end) and the evaluations (`eval_runtime`) are the "
        "same computations on both sides; the rest is each side's own work per search and per trial. Of "
        "lora_lab's rest, its own evaluations (exact-match generation, held-out task A scores, effective rank: "
        "the peer makes none) are timed apart, and the last column is the rest without them: lora_lab's "
        "bookkeeping (config, tracking, study, model and data set-up, attaching and saving adapters).",
        "",
    ]
    body += _common.table(
        [
            "condition",
            "side",
            "wall",
            "optimizer steps",
            "evaluations",
            "the rest",
            "of which lora_lab's own evaluations",
            "the rest without them",
            "median trial (s)",
        ],
        [
            [
                c,
                side,
                fmt(median([r["wall_s"] for r in rs]), 4),
                fmt(median([r["steps_s"] for r in rs]), 4),
                fmt(median([r["evals_s"] for r in rs]), 3),
                fmt(median([r["wall_s"] - r["steps_s"] - r["evals_s"] for r in rs]), 3),
                fmt(median([r["own_evals_s"] for r in rs]), 3),
                fmt(median([r["wall_s"] - r["steps_s"] - r["evals_s"] - r["own_evals_s"] for r in rs]), 3),
                fmt(median([row[6] for r in rs for row in r["rows"] if row[3] == "COMPLETE"]), 3),
            ]
            for c in ("no pruning", "median pruning")
            for side in ("lora_lab", "transformers", AA)
            if (c, side) in results
            for rs in [results[(c, side)]]
        ],
    )
    body += [
        "",
        "Time outside optimizer steps and evaluations, without pruning, lora_lab over the peer (median of the "
        f"per-round ratios, 95 % CI): {ratio_cell(own_rest)}; lora_lab's without its own evaluations over the "
        f"peer's: {ratio_cell(own_rest_bare)}; A/A, lora_lab (A/A) over lora_lab: {ratio_cell(aa_rest)}.",
        "",
        "lora_lab with pruning against transformers without pruning (wall, median of the per-round ratios, "
        f"95 % CI): {ratio_cell(cross)}.",
        "",
        "Wall times are medians over the rounds.",
        "",
        "## Trials (last round)",
        "",
    ]
    for condition in ("no pruning", "median pruning"):
        for side in ("lora_lab", "transformers"):
            rows = results[(condition, side)][-1]["rows"]
            body += [f"{condition}, {side}:", ""]
            body += _common.table(
                ["trial", "r", "alpha/r", "state", "last eval loss", "evaluations reported to Optuna", "seconds"],
                [[n, r, a, s, f"{v:.4f}", e, fmt(sec, 3)] for n, r, a, s, v, e, sec in rows],
            )
            body.append("")
    _common.write_report("vs_hf_search", "lora_lab sweep vs transformers hyperparameter_search", machine, body)


if __name__ == "__main__":
    main()
