"""Training throughput of a lora_lab trial against a plain PEFT + Trainer script of the same configuration.

Both sides train lora_lab's default base model (the pretrained tiny Llama shipped in the package;
``model=tiny_llama_scratch`` for the random-weight one) on its default task with the same LoRA
settings, batch size, steps, learning-rate schedule, evaluation interval and seed (so they see the
same batches in the same order and end at the same training loss, which the benchmark checks).
Three series run
in rounds: lora_lab, plain and ``lora_lab (A/A)``, the same lora_lab child again, so the noise floor
is measured in the same run as the comparison. Each round runs the three back to back in a rotating
order (``round_order``: every three rounds, each series in each position once, so drift in the
machine's speed hits all alike), each in a fresh Python process of its own (after an untimed warm-up run
there). The headline is the median of the per-round throughput ratios lora_lab / plain with its
95 % bootstrap confidence interval over rounds; next to it, computed the same way, the A/A ratio
lora_lab (A/A) / lora_lab: how far from 1 the same code on both sides lands in this run, so a
headline no further from 1 than that is noise. The machine's speed drifts by ±20 % from one run to
the next, which the back-to-back rounds cancel; the ratio of the medians and that of each side's
fastest run are reported too.

    .venv/bin/python benchmarks/bench_throughput.py                 # 7 rounds (21 runs) of lora_lab's default trial (60 steps), ~7 min
    .venv/bin/python benchmarks/bench_throughput.py --runs 3 --steps 60 --no-report

(The time is an estimate: a run here takes about 15 s of process start-up, imports and warm-up
plus its training, 0.5-1 s for 10 steps on a shared 2-core machine.)

* lora_lab: ``lora_lab.train.run_trial(cfg, out, resources, show_progress=False)`` with the base
  model and tokenized data built once beforehand (as a sweep does); its defaults run exact-match
  generation, score held-out task A (forgetting, on the default task) and save the adapter after
  training, all outside ``train_runtime``.
* plain: ``set_seed``; ``AutoModelForCausalLM.from_pretrained`` of the same model directory;
  ``peft.get_peft_model``; ``Trainer(...).train()``; ``save_pretrained`` of the adapter.

Throughput is over ``Trainer.train``'s runtime (``train_runtime``: the training loop with its
evaluations, the time a user waits for training): steps/s and non-padding tokens/s. Also reported:
the optimizer steps alone (timed by a callback from on_step_begin to on_step_end) and the end-to-end
time of each side.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from _common import fmt, median, ratio_text, stopwatch  # noqa: E402

AA = "lora_lab (A/A)"


def round_order(index: int, series: list[str]) -> list[str]:
    """The order of the series in round ``index``: the rotations of ``series``, then those of it reversed.
    Every 3 rounds each series runs once first, once second and once last, and every 6 rounds each one
    runs before each other one as often as after it, so drift within a round (a machine warming up,
    another process starting) hits every series alike; a random shuffle leaves that to chance (seeded
    shuffles of 11 rounds put one series last 5 times and another 3)."""
    base = series if (index // len(series)) % 2 == 0 else series[::-1]
    k = index % len(series)
    return base[k:] + base[:k]


def plain_run(cfg, model_dir: Path, tokenizer, data, output_dir: Path, timer) -> dict:
    """The script a user writes with transformers + PEFT for the same trial configuration."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import (
        AutoModelForCausalLM,
        DataCollatorForSeq2Seq,
        PrinterCallback,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    t = cfg.train
    with stopwatch() as wall:
        set_seed(t.seed)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        model.config.use_cache = False
        lora = LoraConfig(
            r=cfg.lora.r,
            lora_alpha=cfg.lora.lora_alpha,
            lora_dropout=cfg.lora.lora_dropout,
            target_modules=cfg.model.target_sets[cfg.lora.targets],
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora)
        args = TrainingArguments(
            output_dir=str(output_dir),
            max_steps=t.max_steps,
            per_device_train_batch_size=t.batch_size,
            per_device_eval_batch_size=max(t.batch_size, 64),
            learning_rate=t.learning_rate,
            warmup_steps=t.warmup_ratio,
            lr_scheduler_type=t.lr_scheduler,
            weight_decay=t.weight_decay,
            max_grad_norm=t.max_grad_norm,
            eval_strategy="steps",
            eval_steps=t.eval_every,
            logging_steps=t.logging_steps,
            save_strategy="no",
            report_to="none",
            seed=t.seed,
            data_seed=t.seed,
            use_cpu=True,
            disable_tqdm=True,
            label_names=["labels"],
            remove_unused_columns=False,
        )
        trainer = Trainer(
            model=model,
            args=args,
            train_dataset=data.train,
            eval_dataset=data.eval,
            data_collator=DataCollatorForSeq2Seq(tokenizer, padding=True),
            callbacks=[timer],
        )
        trainer.remove_callback(PrinterCallback)  # quiet, like run_trial(show_progress=False)
        output = trainer.train()
        model.save_pretrained(output_dir / "adapter")
    return {
        "wall": wall["s"],
        "train": output.metrics["train_runtime"],
        "steps": trainer.state.global_step,
        "loss": output.training_loss,
        "step_s": timer.steps_s,
    }


def lora_lab_run(cfg, resources, output_dir: Path, timer) -> dict:
    from lora_lab.train import run_trial

    result = run_trial(cfg, output_dir, resources, callbacks=[timer], show_progress=False)
    loss = next(e["train_loss"] for e in reversed(result.history) if "train_loss" in e)
    return {
        "wall": result.wall_time_s,
        "train": result.train_time_s,
        "steps": result.steps,
        "loss": loss,
        "step_s": timer.steps_s,
        "tokens": result.tokens_per_s * result.train_time_s,
    }


def compose_configs(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from lora_lab.config import register_configs, to_trial_config

    register_configs()
    with initialize_config_dir(config_dir=str(_common.CONF), version_base=None):
        cfg = to_trial_config(compose("config", overrides=overrides))
        warm_cfg = to_trial_config(compose("config", overrides=overrides + ["train.max_steps=3", "train.eval_every=3"]))
    return cfg, warm_cfg


def child(args, overrides: list[str]) -> None:
    """One timed run of one side in this fresh process, after an untimed warm-up run."""
    _common.set_threads(args.threads)
    _common.quiet()
    cfg, warm_cfg = compose_configs(overrides)
    workdir = Path(tempfile.mkdtemp(prefix="bench_throughput_"))
    if args.child == "lora_lab":
        from lora_lab.train import build_resources

        resources = build_resources(cfg)  # built once and reused, as a sweep does (untimed)
        lora_lab_run(warm_cfg, resources, workdir / "warm", _common.loop_timer())
        run = lora_lab_run(cfg, resources, workdir / "run", _common.loop_timer())
    else:
        from transformers import AutoTokenizer

        from lora_lab.data import build_task_data
        from lora_lab.model.base import builtin_tokenizer, materialize_builtin, package_model_dir

        # the directory a user would point from_pretrained at: the shipped pretrained model, or the
        # random-weight one written to lora_lab's cache (model=tiny_llama_scratch)
        if cfg.model.source == "package":
            model_dir = package_model_dir(cfg.model)
        else:
            model_dir = materialize_builtin(cfg.model, builtin_tokenizer())
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        data = build_task_data(cfg.data, tokenizer, cfg.train.max_seq_len)  # tokenized once (untimed)
        plain_run(warm_cfg, model_dir, tokenizer, data, workdir / "warm", _common.loop_timer())
        run = plain_run(cfg, model_dir, tokenizer, data, workdir / "run", _common.loop_timer())
    _common.write_child(args.child_out, run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--runs",
        type=int,
        default=7,
        help="rounds, each one run of every series (lora_lab, plain, lora_lab (A/A)) in a shuffled order; "
        "at least 3 for a confidence interval",
    )
    parser.add_argument("--steps", type=int, default=None, help="train.max_steps (default: lora_lab's, 60)")
    parser.add_argument("overrides", nargs="*", help="more trial overrides applied to both sides, e.g. lora.r=16")
    parser.add_argument("--no-report", action="store_true")
    parser.add_argument("--threads", type=int, default=1, help=_common.THREADS_HELP)
    parser.add_argument("--child", choices=["lora_lab", "plain"], help=argparse.SUPPRESS)
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    overrides = list(args.overrides) + ([f"train.max_steps={args.steps}"] if args.steps else [])
    if args.child:
        child(args, overrides)
        return
    _common.set_threads(args.threads)
    _common.quiet()

    machine = _common.Machine()
    print(f"machine: {machine.cpu}, {machine.cores} cores, torch {machine.torch}; {machine.uptime_before}")
    cfg, _ = compose_configs(overrides)
    assert (
        cfg.quant.method == "none"
        and cfg.lora.method == "lora"
        and cfg.lora.target_modules is None
        and not cfg.lora.use_rslora
        and not cfg.lora.use_dora
        and cfg.lora.bias == "none"
        and cfg.train.gradient_accumulation_steps == 1
        and cfg.model.source in ("package", "builtin")
    ), "the plain script covers plain LoRA on the shipped or built-in tiny model only"

    # lora_lab (A/A) is the lora_lab child again: the ratio between two series of the same code is the noise floor
    child_of = {"lora_lab": "lora_lab", "plain": "plain", AA: "lora_lab"}
    runs: dict[str, list[dict]] = {side: [] for side in child_of}
    orders: list[list[str]] = []
    for i in range(max(args.runs, 1)):
        order = round_order(i, list(child_of))
        orders.append(order)
        for side in order:
            run = _common.run_child(__file__, ["--threads", str(args.threads), "--child", child_of[side], *overrides])
            runs[side].append(run)
            print(
                f"run {i + 1} {side:<14} train {run['train']:7.2f} s  {run['steps'] / run['train']:6.2f} steps/s  "
                f"steps alone {run['step_s']:7.2f} s  end-to-end {run['wall']:7.2f} s  "
                f"final train loss {run['loss']:.6f}",
                flush=True,
            )
    machine.finish()
    print(machine.uptime_after)

    tokens = runs["lora_lab"][0]["tokens"]  # identical data order on both sides: the same tokens
    same_work = all(abs(r["loss"] - runs["lora_lab"][0]["loss"]) < 1e-4 for side in runs.values() for r in side)
    stats = {}
    for side, rs in runs.items():
        train = median([r["train"] for r in rs])
        stats[side] = {
            "train": train,
            "steps_per_s": median([r["steps"] / r["train"] for r in rs]),
            "tokens_per_s": median([tokens / r["train"] for r in rs]),
            "step_only": median([r["steps"] / r["step_s"] for r in rs]),
            "wall": median([r["wall"] for r in rs]),
        }
    a, b, aa = stats["lora_lab"], stats["plain"], stats[AA]
    medians_ratio = a["tokens_per_s"] / b["tokens_per_s"]

    def throughput_ratios(x: str, y: str) -> list[float]:
        """Per round, the throughput of series x over that of y (the same tokens: train_runtime y / x)."""
        return [ry["train"] / rx["train"] for rx, ry in zip(runs[x], runs[y], strict=True)]

    # the headline: the median of the per-round ratios (each round ran back to back, so drift cancels), with
    # its bootstrap CI; the A/A ratio of the same code on both sides, the same way, is the noise floor next to it
    pair_ratios = throughput_ratios("lora_lab", "plain")
    aa_ratios = throughput_ratios(AA, "lora_lab")
    headline, aa_text = ratio_text(pair_ratios), ratio_text(aa_ratios)
    # On a shared machine a run is mostly slowed by other processes, never sped up: the fastest run of each
    # side is the least disturbed one, so its ratio is the steadiest estimate.
    best_ratio = min(r["train"] for r in runs["plain"]) / min(r["train"] for r in runs["lora_lab"])
    best_aa = min(r["train"] for r in runs["lora_lab"]) / min(r["train"] for r in runs[AA])
    # the part of train_runtime outside the optimizer steps (data loading, logging, evaluations, set-up),
    # where the two sides' code differs; the steps themselves are the same model computations
    loop = {side: median([r["train"] - r["step_s"] for r in rs]) for side, rs in runs.items()}
    print(
        f"\nthroughput lora_lab / plain = {headline} (median of the per-round ratios, 95 % bootstrap CI)\n"
        f"A/A: lora_lab (A/A) / lora_lab = {aa_text} (the same code on both sides: the noise floor)\n"
        f"ratio of the medians {medians_ratio:.3f} (A/A {aa['tokens_per_s'] / a['tokens_per_s']:.3f}), of the "
        f"fastest runs {best_ratio:.3f} (A/A {best_aa:.3f}); train_runtime outside "
        f"optimizer steps: lora_lab {loop['lora_lab']:.2f} s, lora_lab (A/A) {loop[AA]:.2f} s, "
        f"plain {loop['plain']:.2f} s; same work: {same_work}"
    )
    if args.no_report:
        return

    t = cfg.train
    body = [
        "## What was compared",
        "",
        f"One trial configuration on both sides: model `{cfg.model.name}` "
        f"({'pretrained, shipped in the package' if cfg.model.source == 'package' else 'random weights'}), "
        f"task `{cfg.data.task}`, LoRA r={cfg.lora.r} "
        f"alpha={cfg.lora.lora_alpha:g} on {cfg.lora.targets} ({', '.join(cfg.model.target_sets[cfg.lora.targets])}), "
        f"{t.max_steps} steps of batch {t.batch_size}, learning rate {t.learning_rate:g} ({t.lr_scheduler}, warmup "
        f"{t.warmup_ratio:g}), evaluation every {t.eval_every} steps, seed {t.seed}"
        + (f", overrides `{' '.join(overrides)}`" if overrides else "")
        + ".",
        "",
        "- **lora_lab**: `lora_lab.train.run_trial(cfg, out, resources, show_progress=False)`, the base model and "
        "tokenized data built once beforehand (as in a sweep); its defaults add token accuracy to each "
        "evaluation, count non-padding tokens, and after training run exact-match generation"
        + (", score held-out task A (forgetting)" if cfg.data.task == "cipher_swap" else "")
        + " and save the adapter.",
        "- **plain**: `set_seed`, `AutoModelForCausalLM.from_pretrained`, `peft.get_peft_model`, "
        "`Trainer(...).train()` with the same `TrainingArguments` values, `save_pretrained` of the adapter "
        "(`plain_run()` in the script).",
        "- **lora_lab (A/A)**: the lora_lab side again, as a series of its own: its ratio to lora_lab is "
        "the noise floor of this run.",
        "",
        f"Runs went in {len(orders)} rounds of three back-to-back runs, one of each series, in a rotating order "
        "(every three rounds each series ran once first, once second and once last: the first three rounds ran "
        + "; ".join(", ".join(order) for order in orders[:3])
        + "), each in a fresh "
        "Python process of its own after an untimed warm-up run (3 steps) in that process. Throughput is over `train_runtime` (the training loop including its evaluations); "
        f"tokens are the {tokens:,.0f} non-padding tokens of the batches seen, the same on both sides "
        f"({'checked: every run ended at the same training loss' if same_work else 'WARNING: the final training losses differ, so the runs did not see identical batches'}).",
        "",
        "## Results",
        "",
        f"**Throughput lora_lab / plain: {headline}**; the same code on both sides, **lora_lab (A/A) / "
        f"lora_lab: {aa_text}** (the noise floor). Each is the median of the per-round ratios with its 95 % "
        "bootstrap confidence interval over rounds (scipy.stats.bootstrap, percentile method); the machine's "
        "speed drifts by up to ±20 % from one run to the next, and back-to-back rounds cancel most of it.",
        "",
    ]
    body += _common.table(
        ["throughput ratio (train_runtime)", "median of per-round ratios", "95 % bootstrap CI", "per round"],
        [
            [
                name,
                f"**{middle:.3f}**",
                f"[{low:.3f}, {high:.3f}]" if low == low else "none (fewer than 3 rounds)",
                ", ".join(f"{r:.3f}" for r in rs),
            ]
            for name, rs in (("lora_lab / plain", pair_ratios), ("lora_lab (A/A) / lora_lab: noise floor", aa_ratios))
            for middle, low, high in [_common.ratio_ci(rs)]
        ],
    )
    body += [
        "",
        "Medians of each series (the ratio columns here are ratios of these medians):",
        "",
    ]
    body += _common.table(
        ["", "lora_lab", "plain PEFT + Trainer", "ratio lora_lab / plain", "lora_lab (A/A)", "ratio A/A / lora_lab"],
        [
            [
                "tokens/s (train_runtime)",
                fmt(a["tokens_per_s"], 5),
                fmt(b["tokens_per_s"], 5),
                f"{medians_ratio:.3f}",
                fmt(aa["tokens_per_s"], 5),
                f"{aa['tokens_per_s'] / a['tokens_per_s']:.3f}",
            ],
            *[
                [
                    label,
                    fmt(a[key], 4),
                    fmt(b[key], 4),
                    f"{a[key] / b[key]:.3f}",
                    fmt(aa[key], 4),
                    f"{aa[key] / a[key]:.3f}",
                ]
                for label, key in (
                    ("steps/s (train_runtime)", "steps_per_s"),
                    ("steps/s, optimizer steps alone", "step_only"),
                    ("train_runtime (s)", "train"),
                    ("end-to-end (s)", "wall"),
                )
            ],
        ],
    )
    body += [
        "",
        "Fastest run of each series (the least disturbed by other processes): throughput ratio lora_lab / plain "
        f"{best_ratio:.3f}, lora_lab (A/A) / lora_lab {best_aa:.3f}. The time inside "
        "`train_runtime` but outside the optimizer steps (data loading, logging, evaluations, set-up: where "
        "the two sides' code differs most; the steps are the same model computations, lora_lab's without the "
        f"stock Trainer's per-step parameter recount for its FLOP count) was {loop['lora_lab']:.2f} s for "
        f"lora_lab ({loop[AA]:.2f} s for lora_lab (A/A)) and {loop['plain']:.2f} s for plain (medians).",
        "",
        "## Runs",
        "",
    ]
    body += _common.table(
        ["round", "series", "train_runtime (s)", "steps/s", "steps alone (s)", "end-to-end (s)", "final train loss"],
        [
            [
                i + 1,
                side,
                fmt(r["train"], 4),
                fmt(r["steps"] / r["train"], 4),
                fmt(r["step_s"], 4),
                fmt(r["wall"], 4),
                f"{r['loss']:.6f}",
            ]
            for i, order in enumerate(orders)
            for side in order  # in the order they ran
            for r in [runs[side][i]]
        ],
    )
    body += [
        "",
        "End-to-end: lora_lab's `TrialResult.wall_time_s` (attach adapter to detach, exact-match "
        "generation and adapter saving included, resources reused); plain: from `set_seed` to the saved "
        "adapter, loading the base model included.",
    ]
    _common.write_report("throughput", "Training throughput: lora_lab trial vs plain PEFT + Trainer", machine, body)


if __name__ == "__main__":
    main()
