"""Calibration of the default task: what LoRA at each rank, full fine-tuning and the untrained base
score on task B (data=cipher_swap) with the shipped pretrained tiny_llama and the default training.

    .venv/bin/python benchmarks/calibrate_default.py                      # r 1..16 x alpha/r 1, 4; 3 seeds
    .venv/bin/python benchmarks/calibrate_default.py --seeds 5 --ranks 1 4 16 --alpha-over-r 1

It answers whether the default is a sweep worth running: the zero-shot base must be clearly worse
than trained adapters (the task needs fine-tuning), quality must rise with r and then flatten
(the published saturation in r), and full fine-tuning bounds what an adapter can reach. Every
configuration runs ``--seeds`` seeds through ``lora_lab.train.run_trial`` on one shared base model
(composed with Hydra from conf/, as ``python -m lora_lab.train`` would); no MLflow. Each cell is the
centre with a 95% interval over seeds; the zero-shot baseline is deterministic
(nothing trains), so it runs once. Intervals stay inside each metric's range
(:func:`lora_lab.report.decide.centre`): a loss is the geometric mean with its t interval on the log
scale, an exact match the share of every seed's prompts pooled with its Wilson interval, the forgetting
(a difference of losses) the mean with its t interval.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from _common import fmt, stopwatch  # noqa: E402

_common.quiet()

from hydra import compose, initialize_config_dir  # noqa: E402

from lora_lab.config import register_configs, to_trial_config  # noqa: E402
from lora_lab.names import FORGET_PREFIX, RETAIN_PREFIX  # noqa: E402
from lora_lab.report.decide import centre  # noqa: E402
from lora_lab.train import base_retain_scores, build_resources, run_trial  # noqa: E402

METRICS = [
    ("eval_loss", "task B eval loss", 4),
    ("exact_match", "task B exact match", 3),
    (f"{RETAIN_PREFIX}exact_match", "task A exact match", 3),
    (f"{FORGET_PREFIX}eval_loss", "forgetting (task A loss, after - before)", 3),
]


SCALES = {"eval_loss": "ratio", "exact_match": "proportion", f"{RETAIN_PREFIX}exact_match": "proportion"}
"""How each metric is summarised (the report's scales); the others as a difference (mean, t interval)."""


def cell(values: list[float], key: str, digits: int, prompts: int) -> str:
    values = [v for v in values if not math.isnan(v)]
    scale = SCALES.get(key, "difference")
    if scale == "ratio" and not all(v > 0 for v in values):
        scale = "difference"
    s = centre(values, scale, 0.95, prompts)
    if math.isnan(s["ci_low"]) or len(values) < 2 and scale != "proportion":
        return f"{fmt(s['mean'], digits)} (1 seed)" if len(values) == 1 else fmt(s["mean"], digits)
    return f"{fmt(s['mean'], digits)} [{fmt(s['ci_low'], digits)}, {fmt(s['ci_high'], digits)}]"


def prompts(cfg, key: str) -> int:
    """Prompts scored per seed for an exact match: train.eval_generate, capped by the held-out split."""
    if key.startswith(RETAIN_PREFIX):
        return cfg.train.eval_generate
    return min(cfg.train.eval_generate, cfg.data.n_eval)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds per trained configuration (default 3)")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2, 4, 8, 16], help="LoRA ranks")
    parser.add_argument("--alpha-over-r", type=float, nargs="+", default=[1.0, 4.0], help="alpha/r values")
    parser.add_argument("--full-lr", type=float, default=2.0e-3, help="full fine-tuning's learning rate")
    parser.add_argument("--threads", type=int, default=1, help=_common.THREADS_HELP)
    parser.add_argument("--no-report", action="store_true", help="print only; do not write the results file")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides applied to every trial (e.g. data.swaps=2)")
    args = parser.parse_args()
    _common.set_threads(args.threads)
    machine = _common.Machine()
    register_configs()

    configs: list[tuple[str, list[str], int]] = [("zero-shot (lora.method=none)", ["lora.method=none"], 1)]
    for ratio in args.alpha_over_r:
        for r in args.ranks:
            configs.append(
                (f"LoRA r={r}, alpha/r={ratio:g}", [f"lora.r={r}", f"lora.lora_alpha={ratio * r:g}"], args.seeds)
            )
    configs.append(
        (
            f"full fine-tuning (lr {args.full_lr:g})",
            ["lora.method=full", f"train.learning_rate={args.full_lr}"],
            args.seeds,
        )
    )

    rows, resources, times = [], None, []
    with (
        initialize_config_dir(config_dir=str(_common.CONF), version_base=None),
        tempfile.TemporaryDirectory() as scratch,
    ):
        for label, overrides, seeds in configs:
            results = []
            for seed in range(seeds):
                cfg = to_trial_config(
                    compose(
                        "config",
                        overrides=[*args.overrides, *overrides, f"train.seed={seed}", "train.save_adapter=false"],
                    )
                )
                if resources is None:
                    resources = build_resources(cfg)
                with stopwatch() as t:
                    result = run_trial(cfg, Path(scratch) / "trial", resources, show_progress=False)
                times.append(t["s"])
                results.append(result.metrics())
                print(
                    f"{label} seed {seed}: eval loss {result.eval_loss:.4g}, exact match {result.exact_match:.3f}, "
                    f"task A exact match {result.metrics().get(f'{RETAIN_PREFIX}exact_match', math.nan):.3f} "
                    f"({t['s']:.1f} s)",
                    flush=True,
                )
            params = results[0]["trainable_params"]
            rows.append(
                [
                    label,
                    len(results),
                    f"{params:,.0f}",
                    *[
                        cell([m.get(key, math.nan) for m in results], key, digits, prompts(cfg, key))
                        for key, _, digits in METRICS
                    ],
                ]
            )
    machine.finish()
    header = ["configuration", "seeds", "trainable params", *[title for _, title, _ in METRICS]]
    lines = _common.table(header, rows)
    print("\n".join(lines))
    if args.no_report:
        return
    base_before = base_retain_scores(resources, cfg)  # computed by the first trial: read from memory
    body = [
        "Task B is `data=cipher_swap` (defaults: 6 letter pairs of pretraining key 0 swapped, 12 of 26 letters "
        "change); the base is the shipped pretrained `model=tiny_llama`; training is `conf/train/default.yaml` "
        f"(overrides: `{' '.join(args.overrides) or 'none'}`). LoRA targets all linear layers. Each cell, with its 95% "
        "interval in brackets (inside the metric's range): eval loss, the geometric mean over seeds with a t interval "
        f"on the log scale; exact match, the share of {prompts(cfg, 'exact_match')} prompts per seed, pooled over "
        f"seeds, with a Wilson interval (task A: {prompts(cfg, RETAIN_PREFIX)} prompts); forgetting, the mean with a t "
        "interval. The zero-shot row is deterministic.",
        "",
        f"Held-out task A on the keys task B leaves unchanged, before any adaptation: exact match "
        f"{fmt(base_before[f'{RETAIN_PREFIX}exact_match'])}, eval loss {fmt(base_before[f'{RETAIN_PREFIX}eval_loss'])}.",
        "",
        *lines,
        "",
        f"Trial wall time (training + evaluation, shared base): median {fmt(statistics.median(times))} s over "
        f"{len(times)} trials, at torch intra-op threads {args.threads}.",
    ]
    _common.write_report(
        "calibrate_default", "Calibration of the default task (pretrained tiny_llama, task B)", machine, body
    )


if __name__ == "__main__":
    main()
