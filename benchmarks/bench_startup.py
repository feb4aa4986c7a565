"""Start-up cost of lora_lab's commands against the floor its libraries set.

Whole-process wall times, measured the way a user meets them (a fresh interpreter each time, run in an empty
working directory with a warm model cache and an existing MLflow store):

* ``floor``: ``python -c "import torch, transformers, peft; from transformers import Trainer"``: the least any
  command built on these libraries can cost;
* ``floor (A/A)``: the same command again as a series of its own: how far two identical series differ here;
* ``floor + Llama + MLflow store``: the floor, plus what any trial that builds a Llama model and tracks it in
  MLflow must import and open whoever writes it: ``from transformers import LlamaForCausalLM`` (transformers'
  ``modeling_utils`` and the model-loading modules it imports at module level: ``core_model_loading``,
  ``integrations.finegrained_fp8``, ``integrations.deepgemm``, with ``torch.distributed.tensor`` and
  ``torch._dynamo``) and ``MlflowClient().search_experiments()`` on the same sqlite store (``import mlflow``,
  which in mlflow 3.18 imports ``mlflow.genai``, and the store's SQLAlchemy/Alembic schema check): the
  libraries' own cost, which no change inside lora_lab can remove;
* ``import``: ``python -c "import lora_lab.train"``;
* ``train 1 step``: ``python -m lora_lab.train train.max_steps=1``, the whole command (build, one step, evaluation,
  adapter save, MLflow);
* ``sweep: first trial starts``: seconds from launching ``python -m lora_lab.sweep +sweep=rank_alpha
  sweep.n_trials=1 train.max_steps=1`` to the creation of its first trial's MLflow run (read back from the store).

Every round runs each command once, in a shuffled order, so slow phases of the machine hit all of them alike.
A ratio is the median over rounds of (command / floor in the same round), with a 95 % bootstrap confidence
interval (scipy.stats.bootstrap over rounds). ``--repo`` adds the same lora_lab commands from another checkout
(for example a worktree of an older revision) as extra series, so "before" and "after" are measured in one run.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, Machine, fmt, median, ratio_ci, table, write_report  # noqa: E402

FLOOR = "import torch, transformers, peft; from transformers import Trainer"
TRACKED_FLOOR = (
    FLOOR + "; from transformers import LlamaForCausalLM; "
    "from mlflow.tracking import MlflowClient; MlflowClient().search_experiments(max_results=1)"
)
LIBRARIES = "floor + Llama + MLflow store"


def _env(repo: Path, store: Path, cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(repo)
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{store}"
    env["LORA_LAB_CACHE"] = str(cache)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def _timed(cmd: list[str], env: dict[str, str], cwd: Path) -> float:
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-4000:])
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}")
    return elapsed


def _first_trial_start(repo: Path, env: dict[str, str], cwd: Path, store: Path) -> float:
    """Seconds from launching a one-trial sweep to its first trial's MLflow run being created."""
    from mlflow.tracking import MlflowClient

    study = f"startup_{random.randrange(10**9)}"
    cmd = [
        sys.executable,
        "-m",
        "lora_lab.sweep",
        "+sweep=rank_alpha",
        f"sweep.study_name={study}",
        "sweep.n_trials=1",
        "train.max_steps=1",
        f"sweep.storage={cwd / (study + '.journal')}",
    ]
    launched = time.time()
    _timed(cmd, env, cwd)
    client = MlflowClient(f"sqlite:///{store}")
    experiment = client.get_experiment_by_name(study)
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    trials = [r for r in runs if r.data.tags.get("lora_lab.kind") != "sweep"]
    return trials[0].info.start_time / 1000.0 - launched


def _revision(path: Path) -> str:
    proc = subprocess.run(["git", "log", "-1", "--format=%h %s"], cwd=path, capture_output=True, text=True)
    return proc.stdout.strip()[:80] or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7, help="rounds; each runs every command once")
    parser.add_argument(
        "--repo",
        action="append",
        default=[],
        metavar="LABEL=PATH",
        help="also time lora_lab's commands from this checkout (e.g. before=/tmp/old)",
    )
    parser.add_argument("--no-report", action="store_true", help="print only; do not write the results file")
    args = parser.parse_args()

    repos = {"this checkout": REPO}
    for item in args.repo:
        label, _, path = item.partition("=")
        repos[label] = Path(path).resolve()

    work = Path(tempfile.mkdtemp(prefix="lora_lab_startup_"))
    cache = work / "cache"
    series: dict[str, list[float]] = {"floor": [], "floor (A/A)": [], LIBRARIES: []}
    jobs: list[tuple[str, object]] = [("floor", None), ("floor (A/A)", None), (LIBRARIES, None)]
    for label, repo in repos.items():
        store = work / f"{label.replace(' ', '_')}.db"
        cwd = work / label.replace(" ", "_")
        cwd.mkdir()
        env = _env(repo, store, cache)
        # warm-up, not timed: builds the model cache and migrates the MLflow store once, as a user's first run does
        _timed([sys.executable, "-m", "lora_lab.train", "train.max_steps=1"], env, cwd)
        for name in ("import", "train 1 step", "sweep: first trial starts"):
            series[f"{name} [{label}]"] = []
            jobs.append((f"{name} [{label}]", (name, repo, env, cwd, store)))
    floor_env = _env(REPO, work / "floor.db", cache)
    _timed([sys.executable, "-c", TRACKED_FLOOR], floor_env, work)  # not timed: creates its store once, as above

    machine = Machine()
    for round_ in range(args.runs):
        order = list(jobs)
        random.Random(round_).shuffle(order)
        for key, spec in order:
            if spec is None:
                value = _timed([sys.executable, "-c", TRACKED_FLOOR if key == LIBRARIES else FLOOR], floor_env, work)
            else:
                name, repo, env, cwd, store = spec
                if name == "import":
                    value = _timed([sys.executable, "-c", "import lora_lab.train"], env, cwd)
                elif name == "train 1 step":
                    value = _timed([sys.executable, "-m", "lora_lab.train", "train.max_steps=1"], env, cwd)
                else:
                    value = _first_trial_start(repo, env, cwd, store)
            series[key].append(value)
        print(
            f"round {round_ + 1}/{args.runs}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in series.items()), flush=True
        )
    machine.finish()

    floors = series["floor"]
    rows = []
    for key, values in series.items():
        ratio, low, high = (
            ratio_ci([v / f for v, f in zip(values, floors, strict=True)])
            if key != "floor"
            else (1.0, float("nan"), float("nan"))
        )
        interval = f"[{fmt(low)}, {fmt(high)}]" if low == low else ""
        rows.append([key, fmt(median(values)), fmt(min(values)), fmt(max(values)), fmt(ratio), interval])
    body = [
        f"{args.runs} rounds; each round runs every command once in a shuffled order, each in a fresh process, "
        "from an empty working directory with a warm model cache and an MLflow sqlite store that already exists.",
        "Ratio: median over rounds of (command / floor in the same round); interval: 95 % bootstrap CI over "
        "rounds. The `floor (A/A)` row is the same floor command as a second series: its ratio is the noise floor.",
        f'`{LIBRARIES}`: `python -c "{TRACKED_FLOOR}"` on the same kind of store: what the libraries alone cost a '
        "tracked trial of a Llama model; a lora_lab command's ratio divided by this row's is lora_lab's own share.",
        "",
        *table(["command", "median s", "min s", "max s", "ratio to floor", "95 % CI"], rows),
        "",
        "Checkouts: " + "; ".join(f"{label}: `{_revision(path)}`" for label, path in repos.items()),
    ]
    print("\n".join(body))
    if not args.no_report:
        write_report("startup", "Start-up: lora_lab's commands against the import floor", machine, body)


if __name__ == "__main__":
    main()
