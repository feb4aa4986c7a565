"""A median-pruned grid sweep in lora_lab's spread order against the fixed order it replaced.

    .venv/bin/python benchmarks/bench_grid_order.py            # 3 rounds x 3 searches of 10 trials x 100 steps: ~6 min on 2 cores
    .venv/bin/python benchmarks/bench_grid_order.py --steps 20 --eval-every 5 --repeats 1 --no-report   # a quick look

The search is ``bench_vs_hf_search.py``'s lora_lab side with median pruning: ``python -m
lora_lab.sweep +sweep=rank_alpha sweep.seeds=1 'sweep.baselines=[]' train.max_steps=100
train.eval_every=25 sweep.pruner.name=median sweep.pruner.n_startup_trials=4
sweep.pruner.n_warmup_steps=0 sweep.sampler.seed=<round>``, the whole 10-point grid. Each round runs
three searches, back to back in a rotating order, each in a fresh Python process after an untimed
warm-up search there (the timed wall excludes imports):

- **fixed order**: the grid in ``itertools.product`` order (r slowest, small ranks first), as lora_lab
  ran grids before ``lora_lab.grid_order`` (the benchmark puts that order back for this series alone);
- **spread order**: today's seeded spread order (``lora_lab.grid_order.spread_order``) for the
  round's sampler seed, so the rounds see three different spread orders;
- **spread order (A/A)**: the same search as *spread order* again: its ratio to *spread order* is
  the noise floor of the wall-time ratio, measured in the same run.

Reported: the trials pruned and the wall time of each series, the per-round wall ratio spread /
fixed (median of the rounds with its 95 % bootstrap CI, ``_common.ratio_text``) next to the A/A
ratio, and each series' best eval loss (pruning must not lose the best configuration).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from _common import fmt, median, ratio_text, stopwatch  # noqa: E402

FIXED, SPREAD, AA = "fixed order", "spread order", "spread order (A/A)"


def overrides(name: str, trials: int, steps: int, eval_every: int, n_startup: int, seed: int) -> list[str]:
    return [
        "+sweep=rank_alpha",
        f"sweep.study_name={name}",
        f"sweep.n_trials={trials}",
        "sweep.seeds=1",
        "sweep.baselines=[]",
        f"train.max_steps={steps}",
        f"train.eval_every={eval_every}",
        "sweep.pruner.name=median",
        f"sweep.pruner.n_startup_trials={n_startup}",
        "sweep.pruner.n_warmup_steps=0",
        f"sweep.sampler.seed={seed}",
    ]


def child(args) -> None:
    """One timed search of one series in this fresh process, after an untimed warm-up search."""
    _common.set_threads(args.threads)
    _common.quiet()
    import mlflow
    from bench_vs_hf_search import best_value, lora_lab_search, trial_rows

    from lora_lab import base_scores, grid_order

    if args.series == FIXED:

        def product_order(space, seed):
            return [dict(zip(space, values, strict=True)) for values in itertools.product(*space.values())]

        grid_order.spread_order = product_order  # the order lora_lab ran grids in before grid_order
    workdir = Path(tempfile.mkdtemp(prefix="bench_grid_order_"))
    os.chdir(workdir)
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    lora_lab_search(overrides("warmup", 1, 2, 1, 1, args.seed))
    base_scores.forget_memory()  # the timed search scores its base once, as a new study does
    chosen = overrides("timed", args.trials, args.steps, args.eval_every, args.n_startup, args.seed)
    with stopwatch() as t:
        study = lora_lab_search(chosen)
    rows = trial_rows(study)
    _common.write_child(
        args.child_out,
        {
            "wall_s": t["s"],
            "best": best_value(study),
            "rows": rows,
            "pruned": sum(1 for r in rows if r[3] == "PRUNED"),
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10, help="trials of each search (10: the whole grid)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--eval-every", type=int, default=25)
    parser.add_argument("--n-startup", type=int, default=4, help="median pruner: trials before pruning starts")
    parser.add_argument("--repeats", type=int, default=3, help="rounds (sampler seed = round); 3 for a CI")
    parser.add_argument("--threads", type=int, default=1, help=_common.THREADS_HELP)
    parser.add_argument("--no-report", action="store_true", help="print only; do not write reports/benchmarks/")
    parser.add_argument("--child-out", help=argparse.SUPPRESS)
    parser.add_argument("--series", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_out:
        child(args)
        return
    _common.set_threads(args.threads)
    machine = _common.Machine()
    print(f"machine: {machine.cpu}, {machine.cores} cores, torch {machine.torch}; {machine.uptime_before}")
    common = ["--trials", str(args.trials), "--steps", str(args.steps), "--eval-every", str(args.eval_every)]
    common += ["--n-startup", str(args.n_startup), "--threads", str(args.threads)]
    results: dict[str, list[dict]] = {FIXED: [], SPREAD: [], AA: []}
    series = [FIXED, SPREAD, AA]
    for rnd in range(args.repeats):
        order = series[rnd % 3 :] + series[: rnd % 3]  # each series in each position once every three rounds
        for name in order:
            print(f"round {rnd + 1}/{args.repeats} (sampler seed {rnd}) {name:<20} ...", end=" ", flush=True)
            out = _common.run_child(__file__, [*common, "--series", name, "--seed", str(rnd)])
            results[name].append(out)
            print(
                f"{out['wall_s']:6.1f} s  pruned {out['pruned']}/{len(out['rows'])}  best eval loss {out['best']:.4f}  "
                f"order r/alpha: {' '.join(f'{r[1]}/{r[2]}' for r in out['rows'])}",
                flush=True,
            )
    machine.finish()
    print(machine.uptime_after)

    def ratios(x: str, y: str) -> list[float]:
        return [a["wall_s"] / b["wall_s"] for a, b in zip(results[x], results[y], strict=True)]

    headline, floor = ratios(SPREAD, FIXED), ratios(AA, SPREAD)
    print(f"wall spread / fixed = {ratio_text(headline)}  A/A spread (A/A) / spread = {ratio_text(floor)}")
    if args.no_report:
        return

    def rounds_text(values: list[float]) -> str:
        return ", ".join(f"{v:.3f}" for v in values)

    body = [
        "## What was compared",
        "",
        f"lora_lab's median-pruned grid search, `python -m lora_lab.sweep "
        f"{' '.join(overrides('<name>', args.trials, args.steps, args.eval_every, args.n_startup, 0)[:-1])} "
        "sweep.sampler.seed=<round>` (the rank_alpha grid: r in [1, 2, 4, 8, 16] x alpha/r in [1, 4]; the pretrained "
        "tiny Llama shipped in lora_lab on its default task), in three series: the grid in the fixed "
        "`itertools.product` order it ran in before (r slowest; put back by the benchmark for this series alone), in "
        "today's seeded spread order (`lora_lab.grid_order.spread_order`, sampler seed = round), and the spread "
        "order again (A/A, the noise floor). Each search ran in a fresh Python process after an untimed warm-up "
        "search there; within a round the three ran back to back in a rotating order.",
        "",
        "## Results",
        "",
        f"Wall time spread / fixed: **{ratio_text(headline)}** (rounds: {rounds_text(headline)}); A/A, spread "
        f"(A/A) / spread: **{ratio_text(floor)}** (rounds: {rounds_text(floor)}): the median of the per-round ratios "
        "with its 95 % bootstrap CI over rounds.",
        "",
    ]
    body += _common.table(
        ["series", "wall (s), median", "pruned trials per round", "best eval loss per round"],
        [
            [
                name,
                fmt(median([r["wall_s"] for r in results[name]]), 4),
                ", ".join(str(r["pruned"]) for r in results[name]),
                ", ".join(f"{r['best']:.4f}" for r in results[name]),
            ]
            for name in series
        ],
    )
    body += ["", "## Trials of each round (r/alpha in run order; P = pruned)", ""]
    body += _common.table(
        ["round (sampler seed)", *series],
        [
            [
                f"{rnd + 1} ({rnd})",
                *[
                    " ".join(f"{r[1]}/{r[2]}{'P' if r[3] == 'PRUNED' else ''}" for r in results[name][rnd]["rows"])
                    for name in series
                ],
            ]
            for rnd in range(args.repeats)
        ],
    )
    _common.write_report("grid_order", "Median-pruned grid: spread order vs fixed order", machine, body)


if __name__ == "__main__":
    main()
