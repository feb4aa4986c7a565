"""Time to quality: wall time until a search holds a configuration as good as the space's best.

What a user of a sweep tool waits for is an answer, so this measures, for each search, the wall time
from launching its command until the best trial so far reaches the target, a fixed eval loss:

    target = (1 + tolerance) x the best mean eval loss known for the space

"Known" comes from a long reference run (``--reference``: a TPE study of the same space without
pruning, whose best configurations are then trained again with more seeds; the best mean over seeds is
the best known), committed as JSON next to the command that made it. Only trials that ran to the end
count (a pruned trial's partial loss is not a result).

Sides, each a fresh process launched as a user would, all in one run and interleaved (every search
seed runs every side once, in a shuffled order, so the machine's slow phases hit all sides alike):

* ``recommended``: ``python -m lora_lab.sweep +sweep=full`` with the preset's defaults (its baseline runs,
  reference points outside the search, left out: ``sweep.baselines=[]`` on every lora_lab side);
* ``recommended (A/A)``: the same command again, as a series of its own: the noise floor;
* ``lora_lab random``: the same preset with ``sweep.sampler.name=random sweep.pruner.name=none``;
* ``hp_search``: ``Trainer.hyperparameter_search(backend="optuna")`` with its defaults over the same
  space (TPE, seeded; the Trainer evaluates once, at the end, so Optuna's default pruner gets nothing);
* ``hp_search + pruner``: the same, evaluating every ``--peer-eval-every`` steps with a pruner
  (``--peer-pruner``), which transformers feeds with each evaluation;
* ``hp_search, lora_lab's sampler``: ``hp_search`` with the sampler lora_lab builds for the preset
  (multivariate TPE): how much of the difference is the sampler's settings alone;
* ``warm start`` (with ``--warm-from OVERRIDES``): the preset warm-started (``sweep.warm_start``) from an
  earlier study of the same space on a related task (the preset with those overrides, run once first,
  untimed: a user warm-starts from a study they already have);
* any ``--variant LABEL='override ...'``: lora_lab's preset with extra overrides (candidates for the default).

A search stops as soon as it reaches the target (the parent reads the study's journal file every
``--poll-s`` seconds and ends the process), or at ``--cap-s`` seconds: it then counts as ``--cap-s``
(censored, marked ``>``), so a ratio involving it is a bound. Reported: per side the median over search
seeds of the time to target (whole command; and from its first trial's start, start-up excluded),
and for each side the median over seeds of the paired ratio side / ``hp_search`` (same seed, same round)
with a 95 % bootstrap confidence interval (scipy.stats.bootstrap over seeds).

    python benchmarks/bench_time_to_quality.py --reference    # the target: reference JSON (see --help)
    python benchmarks/bench_time_to_quality.py                # the comparison: reports/benchmarks/time_to_quality.md
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from _common import fmt, median  # noqa: E402

PRESET = "full"
REFERENCE = _common.REPORTS / "time_to_quality_reference.json"
PEER = "hp_search"


# --- the peer: the plain transformers + PEFT script a user would write -------------------------------
def hf_search(
    storage_path: str,
    study_name: str,
    trials: int,
    seed: int,
    eval_every: int,
    pruner_name: str,
    sampler_kind: str,
    max_steps: int | None,
) -> None:
    """Trainer.hyperparameter_search(backend="optuna") over the preset's space, a fresh LoRA model per trial.

    The space (names, ranges, log scales) is the preset's own, read from conf/sweep/<preset>.yaml, and the
    model, tokenizer, data and training settings are the default config's, so both sides search the same
    thing; the search and training loop are transformers'. ``sampler_kind`` 'default' is what a user
    passes, ``TPESampler(seed=seed)``; 'lora_lab' is the preset's own sampler built by lora_lab
    (``study.make_sampler``: multivariate TPE, its start-up trials), to tell how much of a difference
    comes from the sampler's settings alone."""
    import optuna
    import torch
    from hydra import compose, initialize_config_dir
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, PrinterCallback, Trainer, TrainingArguments

    from lora_lab.config import register_configs, to_trial_config
    from lora_lab.data import build_task_data
    from lora_lab.model.base import load_base_model, load_tokenizer

    register_configs()
    with initialize_config_dir(config_dir=str(_common.CONF), version_base=None):
        cfg = compose("config", overrides=[f"+sweep={PRESET}"])
    trial_cfg = to_trial_config(cfg)
    space = {name: dict(spec) for name, spec in cfg.sweep.params.items()}
    train = trial_cfg.train
    steps = max_steps or train.max_steps
    tokenizer = load_tokenizer(trial_cfg.model)
    data = build_task_data(trial_cfg.data, tokenizer, train.max_seq_len)
    base_dir = load_base_model(trial_cfg.model, trial_cfg.quant, tokenizer).name_or_path  # a local HF dir

    def hp_space(trial):
        values = {}
        for name, spec in space.items():
            if spec["type"] == "categorical":
                values[name] = trial.suggest_categorical(name, list(spec["choices"]))
            else:
                values[name] = trial.suggest_float(name, spec["low"], spec["high"], log=bool(spec.get("log")))
        return {"learning_rate": values.get("train.learning_rate", train.learning_rate), **values}

    def model_init(trial):
        # Trainer.train calls model_init(trial) before hp_space(trial) (call_model_init, then _hp_search_setup),
        # so trial.params is still empty here: suggest the values now, as transformers documents for model
        # hyperparameters (Optuna hands the same values back when hp_space suggests them again). Reading
        # trial.params trained every trial with the default adapter, searching the learning rate alone.
        p = hp_space(trial) if trial is not None else {}
        r = int(p.get("lora.r", trial_cfg.lora.r))
        model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        model.config.use_cache = False
        lora = LoraConfig(
            r=r,
            lora_alpha=float(p.get("alpha_over_r", trial_cfg.lora.lora_alpha / r)) * r,
            lora_dropout=float(p.get("lora.lora_dropout", trial_cfg.lora.lora_dropout)),
            target_modules=list(trial_cfg.model.target_sets[p.get("lora.targets", trial_cfg.lora.targets)]),
            use_rslora=bool(p.get("lora.use_rslora", trial_cfg.lora.use_rslora)),
            task_type="CAUSAL_LM",
        )
        return get_peft_model(model, lora)

    evaluating = eval_every > 0
    args = TrainingArguments(
        output_dir=str(Path(storage_path).parent / f"{study_name}_out"),
        max_steps=steps,
        per_device_train_batch_size=train.batch_size,
        per_device_eval_batch_size=max(train.batch_size, 64),
        learning_rate=train.learning_rate,
        warmup_steps=train.warmup_ratio,
        lr_scheduler_type=train.lr_scheduler,
        weight_decay=train.weight_decay,
        max_grad_norm=train.max_grad_norm,
        eval_strategy="steps" if evaluating else "no",
        eval_steps=eval_every if evaluating else None,
        logging_steps=train.logging_steps,
        save_strategy="no",
        report_to="none",
        seed=train.seed,
        data_seed=train.seed,
        use_cpu=True,
        disable_tqdm=True,
        label_names=["labels"],
        remove_unused_columns=False,
    )
    trainer = Trainer(
        model_init=model_init,
        args=args,
        train_dataset=data.train_examples,
        eval_dataset=data.eval_examples,
        data_collator=data.train_examples.collator(),
    )
    trainer.remove_callback(PrinterCallback)
    kwargs = {}
    if pruner_name == "median":
        kwargs["pruner"] = optuna.pruners.MedianPruner()
    elif pruner_name == "successive_halving":
        kwargs["pruner"] = optuna.pruners.SuccessiveHalvingPruner()
    elif pruner_name == "hyperband":
        kwargs["pruner"] = optuna.pruners.HyperbandPruner()
    if sampler_kind == "lora_lab":
        from lora_lab.study import make_sampler
        from lora_lab.sweep import to_sweep_config

        sweep = to_sweep_config(cfg)
        sweep.sampler.seed = seed
        sampler = make_sampler(sweep)
    elif sampler_kind == "reference":  # the check before a comparison: the reference's best configuration
        best = json.loads(REFERENCE.read_text())["best_params"]
        sampler = optuna.samplers.PartialFixedSampler(best, optuna.samplers.TPESampler(seed=seed))
    else:
        sampler = optuna.samplers.TPESampler(seed=seed)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(storage_path))
    trainer.hyperparameter_search(
        backend="optuna",
        hp_space=hp_space,
        n_trials=trials,
        direction="minimize",
        sampler=sampler,
        storage=storage,
        study_name=study_name,
        **kwargs,
    )  # storage/name only so the parent can watch


# ----------------------------------------------------------------------------------------------------


def _completed(storage_path: Path, study_name: str, cache: dict) -> list:
    """The study's trials so far, read from its journal file (one storage per file, synced incrementally)."""
    import optuna

    if not storage_path.exists():
        return []
    if "storage" not in cache:
        cache["storage"] = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(storage_path)))
    storage = cache["storage"]
    try:
        study_id = storage.get_study_id_from_name(study_name)
    except KeyError:
        return []
    return storage.get_all_trials(study_id, deepcopy=False)


def _summarise(trials, launched: float, target: float) -> dict:
    from optuna.trial import TrialState

    done = sorted(
        (t for t in trials if t.state == TrialState.COMPLETE and t.value is not None), key=lambda t: t.datetime_complete
    )
    starts = [t.datetime_start.timestamp() for t in trials if t.datetime_start is not None]
    first_start = min(starts) if starts else float("nan")
    reached = next((t for t in done if t.value <= target), None)
    out = {
        "trials": len(trials),
        "complete": len(done),
        "pruned": sum(1 for t in trials if t.state == TrialState.PRUNED),
        "best": min((t.value for t in done), default=float("nan")),
        "first_trial_start_s": first_start - launched,
        "reached": reached is not None,
    }
    if reached is not None:
        out["whole_s"] = reached.datetime_complete.timestamp() - launched
        out["search_s"] = reached.datetime_complete.timestamp() - first_start
        out["reached_trial"] = reached.number
        out["reached_params"] = {k: v for k, v in reached.params.items()}
    return out


def run_search(
    command: list[str],
    env: dict,
    cwd: Path,
    storage_path: Path,
    study_name: str,
    target: float,
    cap_s: float,
    poll_s: float,
) -> dict:
    """Launch one search, watch its journal until the target is reached or the cap passes, then end it."""
    launched = time.time()
    log = open(cwd / f"{study_name}.log", "w")
    proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    cache: dict = {}
    summary: dict = {}
    while True:
        finished = proc.poll() is not None
        summary = _summarise(_completed(storage_path, study_name, cache), launched, target)
        if summary["reached"] or finished or time.time() - launched > cap_s:
            break
        time.sleep(poll_s)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # a lora_lab sweep ends its trial cleanly on SIGTERM
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    log.close()
    summary["returncode"] = proc.returncode
    if not summary["reached"]:
        if proc.returncode not in (0, None, -signal.SIGTERM, 130):
            tail = (cwd / f"{study_name}.log").read_text()[-3000:]
            raise SystemExit(f"search failed ({proc.returncode}): {shlex.join(command)}\n{tail}")
        summary["whole_s"] = cap_s if not finished else time.time() - launched
        summary["search_s"] = summary["whole_s"] - max(summary["first_trial_start_s"], 0.0)
    return summary


def lora_lab_command(study: str, storage: Path, seed: int, trials: int, extra: list[str]) -> list[str]:
    """The sweep command of a lora_lab side: the search alone (the preset's baseline runs, reference points
    outside the search, are left out: they would only delay every lora_lab side alike)."""
    return [
        sys.executable,
        "-m",
        "lora_lab.sweep",
        f"+sweep={PRESET}",
        f"sweep.study_name={study}",
        f"sweep.storage={storage}",
        f"sweep.sampler.seed={seed}",
        f"sweep.n_trials={trials}",
        "sweep.baselines=[]",
        *extra,
    ]


def _budget(args) -> list[str]:
    return [f"train.max_steps={args.max_steps}"] if args.max_steps else []


def _env(workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(_common.REPO), env.get("PYTHONPATH", "")])
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{workdir / 'mlflow.db'}"
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def _prepare(workdir: Path) -> dict[str, str]:
    """An MLflow store whose schema exists and a materialised model, as a user's machine has them (untimed)."""
    env = _env(workdir)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "lora_lab.train",
            "train.max_steps=1",
            "train.eval_generate=0",
            "tracking.experiment=warmup",
            f"hydra.run.dir={workdir / 'warmup'}",
        ],
        env=env,
        cwd=workdir,
        check=True,
        capture_output=True,
    )
    return env


def _defaults_identity() -> dict:
    """The default model and data the target belongs to (a reference is void once they change)."""
    from dataclasses import asdict

    from hydra import compose, initialize_config_dir

    from lora_lab.config import register_configs, to_trial_config

    register_configs()
    with initialize_config_dir(config_dir=str(_common.CONF), version_base=None):
        cfg = to_trial_config(compose("config", overrides=[f"+sweep={PRESET}"]))
    return json.loads(
        json.dumps(
            {"model": asdict(cfg.model), "data": asdict(cfg.data), "max_steps": cfg.train.max_steps}, default=str
        )
    )


def reference(args) -> None:
    """The best mean eval loss known for the space: a long TPE study, then its best configurations again
    with more seeds."""
    import optuna
    from optuna.trial import TrialState

    machine = _common.Machine()
    workdir = Path(tempfile.mkdtemp(prefix="ttq_reference_"))
    env = _prepare(workdir)
    explore = lora_lab_command(
        "reference",
        workdir / "reference.journal",
        0,
        args.ref_trials,
        ["sweep.pruner.name=none", "train.eval_generate=0", *_budget(args), *shlex.split(args.ref_overrides)],
    )
    print("exploring:", shlex.join(explore[1:]), flush=True)
    subprocess.run(explore, env=env, cwd=workdir, check=True, capture_output=True)
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(workdir / "reference.journal"))
    )
    study = optuna.load_study(study_name="reference", storage=storage)
    done = sorted((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    top = done[: args.ref_top]
    print(f"confirming the top {len(top)} with {args.ref_seeds} seeds", flush=True)
    by_config, params = confirm(top, args.ref_seeds, [*_budget(args), *shlex.split(args.ref_overrides)], workdir)
    means = sorted(((float(np.mean(v)), k) for k, v in by_config.items() if len(v) == args.ref_seeds))
    best_mean, best_key = means[0]
    machine.finish()
    result = {
        "best_mean_eval_loss": best_mean,
        "best_params": params[best_key],
        "seeds": args.ref_seeds,
        "max_steps": args.max_steps,
        "ref_overrides": args.ref_overrides,
        "defaults": _defaults_identity(),
        "best_values": by_config[best_key],
        "configurations": [{"params": params[k], "mean": m, "values": by_config[k]} for m, k in means],
        "explored_trials": len(done),
        "best_single_explored": done[0].value,
        "explore_command": shlex.join(["python", *explore[1:]]).replace(str(workdir), "<workdir>"),
        "confirm": f"each of the best {len(top)} explored configurations trained again with train.seed=0..{args.ref_seeds - 1}"
        " (lora_lab.train.run_trial on the composed config, pruning off, no generation)",
        "made_by": _common.command_line(),
        "versions": _common.versions(),
        "revision": _common.git_revision(),
        "date": f"{machine.started:%Y-%m-%d %H:%M} UTC",
        "uptime_before": machine.uptime_before,
        "uptime_after": machine.uptime_after,
    }
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    REFERENCE.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("best_mean_eval_loss", "best_params", "best_values")}, indent=2))
    print(f"written to {REFERENCE.relative_to(_common.REPO)}")


def confirm(trials, seeds: int, overrides: list[str], workdir: Path) -> tuple[dict, dict]:
    """Train each trial's configuration again with ``seeds`` seeds (the sweep's own composition: the
    preset's derived values, the trial config schema): eval loss per seed, keyed by configuration."""
    from hydra import compose, initialize_config_dir

    from lora_lab import search_space
    from lora_lab.config import register_configs, to_trial_config
    from lora_lab.sweep import to_sweep_config
    from lora_lab.train import ResourceCache, run_trial

    _common.quiet()
    register_configs()
    cache = ResourceCache()
    by_config: dict[str, list[float]] = {}
    params: dict[str, dict] = {}
    with initialize_config_dir(config_dir=str(_common.CONF), version_base=None):
        sweep = to_sweep_config(compose("config", overrides=[f"+sweep={PRESET}", *overrides]))
        for trial in trials:
            values = search_space.resolve(sweep, dict(trial.params))
            key = json.dumps(trial.params, sort_keys=True)
            params[key] = dict(trial.params)
            for seed in range(seeds):
                cfg = to_trial_config(
                    compose(
                        "config",
                        overrides=[
                            *[o for o in overrides if not o.startswith("sweep.")],
                            *search_space.to_overrides(values),
                            f"train.seed={seed}",
                            "train.eval_generate=0",
                            "train.save_adapter=false",
                        ],
                    )
                )
                result = run_trial(
                    cfg, workdir / "confirm" / f"{trial.number}_{seed}", cache.get(cfg), show_progress=False
                )
                by_config.setdefault(key, []).append(result.eval_loss)
                print(f"  trial {trial.number} seed {seed}: {result.eval_loss:.4f}", flush=True)
    return by_config, params


def check_peer(ref: dict, env: dict, workdir: Path) -> None:
    """The peer must train what lora_lab trains: its script, given the reference's best configuration,
    has to score within that configuration's own seed spread (untimed). A peer that silently trains
    something else (Trainer.train calls model_init before hp_space suggests the trial's values) would make
    every ratio meaningless, so the run stops instead."""
    import optuna

    journal = workdir / "peer_check.journal"
    subprocess.run(
        [sys.executable, __file__, "--child-peer", str(journal), "peer_check", "1", "0", "0", "none", "reference"]
        + ([str(ref["max_steps"])] if ref.get("max_steps") else []),
        env=env,
        cwd=workdir,
        check=True,
        capture_output=True,
    )
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    value = optuna.load_study(study_name="peer_check", storage=storage).trials[0].value
    spread = max(ref["best_values"])
    print(
        f"peer check: the reference's best configuration scores {value:.5f} in {PEER} (lora_lab's seeds: "
        f"{', '.join(f'{v:.5f}' for v in ref['best_values'])})",
        flush=True,
    )
    if value is None or value > 1.5 * spread:
        raise SystemExit(f"{PEER} does not train what lora_lab trains: {value} for the reference's best configuration")


def compare(args) -> None:
    if not REFERENCE.exists():
        raise SystemExit(f"no reference: run `python {Path(__file__).relative_to(_common.REPO)} --reference` first")
    ref = json.loads(REFERENCE.read_text())
    if ref.get("defaults") != _defaults_identity():
        raise SystemExit(
            "the reference was made for another default model, data or training length: make a new one "
            "with --reference (its target means nothing for these)"
        )
    if ref.get("max_steps", 0) != args.max_steps:
        raise SystemExit(
            f"the reference was made with --max-steps {ref.get('max_steps', 0)}: compare with the same "
            f"budget (a target from other trials means nothing here)"
        )
    target = ref["best_mean_eval_loss"] * (1 + args.tolerance)
    machine = _common.Machine()
    print(
        f"target eval loss {target:.4f} ({args.tolerance:.0%} above the best known mean "
        f"{ref['best_mean_eval_loss']:.4f}); {machine.uptime_before}",
        flush=True,
    )
    workdir = Path(tempfile.mkdtemp(prefix="ttq_"))
    env = _prepare(workdir)
    check_peer(ref, env, workdir)
    sides: dict[str, tuple[str, list[str]]] = {
        "recommended": ("lora_lab", []),
        "recommended (A/A)": ("lora_lab", []),
        "lora_lab random": ("lora_lab", ["sweep.sampler.name=random", "sweep.pruner.name=none"]),
        PEER: ("peer", ["0", "none", "default"]),
        f"{PEER} + pruner": ("peer", [str(args.peer_eval_every), args.peer_pruner, "default"]),
        f"{PEER}, lora_lab's sampler": ("peer", ["0", "none", "lora_lab"]),
    }
    for item in args.variant:
        label, _, overrides = item.partition("=")
        sides[label] = ("lora_lab", shlex.split(overrides))
    if args.warm_from:
        # the earlier related study a user would already have: the preset on another task (untimed here)
        source = workdir / "earlier.journal"
        earlier = lora_lab_command(
            "earlier", source, 0, args.warm_trials, [*_budget(args), *shlex.split(args.warm_from)]
        )
        print("earlier related study (untimed):", shlex.join(["python", *earlier[1:]]), flush=True)
        started = time.time()
        subprocess.run(earlier, env=env, cwd=workdir, check=True, capture_output=True)
        args.warm_source_s = time.time() - started
        sides["warm start"] = ("lora_lab", ["sweep.warm_start.study=earlier", f"sweep.warm_start.storage={source}"])
    if args.only:
        sides = {k: v for k, v in sides.items() if k in args.only or k == PEER}
    results: dict[str, list[dict]] = {label: [] for label in sides}
    for index, seed in enumerate(range(args.seed0, args.seed0 + args.seeds)):
        order = list(sides)
        random.Random(seed).shuffle(order)
        for label in order:
            kind, extra = sides[label]
            study = f"s{seed}_{index}_{abs(hash(label)) % 10**6}"
            storage = workdir / f"{study}.journal"
            if kind == "lora_lab":
                command = lora_lab_command(
                    study, storage, seed, args.trials, [*extra, *_budget(args), *shlex.split(args.overrides)]
                )
            else:
                command = [
                    sys.executable,
                    __file__,
                    "--child-peer",
                    str(storage),
                    study,
                    str(args.trials),
                    str(seed),
                    *extra,
                ]
                if args.max_steps:
                    command.append(str(args.max_steps))
            out = run_search(command, env, workdir, storage, study, target, args.cap_s, args.poll_s)
            out["seed"] = seed
            results[label].append(out)
            mark = "" if out["reached"] else ">"
            print(
                f"seed {seed} {label:<28} {mark}{out['whole_s']:7.1f} s whole, {mark}{out['search_s']:7.1f} s "
                f"searching; {out['complete']} complete / {out['pruned']} pruned; best {out['best']:.4f}",
                flush=True,
            )
    machine.finish()
    report(args, ref, target, machine, sides, results)


def report(args, ref, target, machine, sides, results) -> None:
    peer = results[PEER]
    rows = []
    for label in sides:
        runs = results[label]
        reached = sum(1 for r in runs if r["reached"])
        whole = median([r["whole_s"] for r in runs])
        search = median([r["search_s"] for r in runs])
        censored = reached < len(runs)
        if label == PEER:
            ratio_text, ci_text = "1", ""
        else:
            ratio, low, high = _common.ratio_ci([r["whole_s"] / p["whole_s"] for r, p in zip(runs, peer, strict=True)])
            # a censored peer time is a lower bound of the peer's time, so a ratio over it is an upper bound
            bound = "≤" if any(not p["reached"] and r["reached"] for r, p in zip(runs, peer, strict=True)) else ""
            ratio_text = f"**{bound}{ratio:.2f}**"
            ci_text = f"[{fmt(low)}, {fmt(high)}]" if low == low else ""
        rows.append(
            [
                label,
                f"{reached}/{len(runs)}",
                ("≥" if censored else "") + fmt(whole, 4),
                ("≥" if censored else "") + fmt(search, 4),
                ratio_text,
                ci_text,
                fmt(median([r["first_trial_start_s"] for r in runs]), 3),
                fmt(median([r["complete"] + r["pruned"] for r in runs]), 3),
            ]
        )
    aa = (
        [a["whole_s"] / b["whole_s"] for a, b in zip(results["recommended (A/A)"], results["recommended"], strict=True)]
        if "recommended (A/A)" in results
        else []
    )
    aa_ratio, aa_low, aa_high = _common.ratio_ci(aa) if aa else (float("nan"),) * 3
    header = [
        "side",
        "reached target",
        "median s to target (whole command)",
        "median s to target (from first trial)",
        f"ratio to {PEER} (median of per-seed ratios)",
        "95 % CI",
        "start-up s (launch to first trial)",
        "trials run (median)",
    ]
    body = [
        f"Target: eval loss ≤ **{target:.4f}**, {args.tolerance:.0%} above the best mean eval loss known for the "
        f"`{PRESET}` space, {ref['best_mean_eval_loss']:.4f} ({ref['seeds']} seeds of "
        f"`{json.dumps(ref['best_params'])}`), from [the reference run](time_to_quality_reference.json) "
        f"({ref['explored_trials']} explored configurations, then the best {len(ref['configurations'])} "
        f"with {ref['seeds']} seeds).",
        "",
        f"{args.seeds} search seeds ({args.seed0}..{args.seed0 + args.seeds - 1}); each seed runs every side once, "
        f"in a shuffled order, each as a fresh process. A search stops when a trial that ran to the end reaches "
        f"the target, or at {args.cap_s:.0f} s (then it counts as {args.cap_s:.0f} s: `≥` marks medians that "
        f"include such a censored search); at most {args.trials} trials. The ratio is the median over seeds of "
        f"(side / {PEER}) in the same seed, with a 95 % bootstrap CI over seeds (scipy.stats.bootstrap); "
        f"where {PEER} did not reach the target its time is a lower bound (the cap, or the end of its "
        f"{args.trials} trials), so the ratio is an upper bound (`≤`). "
        f"A/A: `recommended (A/A)` / `recommended`, same seed: **{fmt(aa_ratio)}** [{fmt(aa_low)}, {fmt(aa_high)}], "
        "the noise floor of these ratios.",
        "",
        *_common.table(header, rows),
        "",
        "Sides:",
        "",
        f"- `recommended`: `{shlex.join(['python', '-m', 'lora_lab.sweep', f'+sweep={PRESET}', *_budget(args), *shlex.split(args.overrides)])}` "
        "(the preset's defaults, see conf/sweep/full.yaml; with `sweep.baselines=[]`: the search alone);",
        *(
            ["- `lora_lab random`: the same with `sweep.sampler.name=random sweep.pruner.name=none`;"]
            if "lora_lab random" in sides
            else []
        ),
        f'- `{PEER}`: `Trainer.hyperparameter_search(backend="optuna", hp_space=..., n_trials=..., '
        'direction="minimize", sampler=TPESampler(seed=seed))` over the same space, model, data and training '
        "settings, evaluating once at the end (the Trainer's default), so Optuna's default pruner gets nothing;",
        *(
            [
                f"- `{PEER} + pruner`: the same evaluating every {args.peer_eval_every} steps with "
                f"`{args.peer_pruner}` (Optuna's class with its defaults), fed by transformers at each evaluation;"
            ]
            if f"{PEER} + pruner" in sides
            else []
        ),
        *(
            [
                f"- `{PEER}, lora_lab's sampler`: `{PEER}` with the sampler lora_lab builds for the preset "
                "(`lora_lab.study.make_sampler`: `TPESampler(multivariate=True, constant_liar=True, "
                "n_startup_trials=<the preset's>)`) instead of `TPESampler(seed=seed)`: what the sampler's "
                "settings alone are worth;"
            ]
            if f"{PEER}, lora_lab's sampler" in sides
            else []
        ),
        *[
            f"- `{label}`: `+sweep={PRESET} {shlex.join(_common.no_machine_path(e) for e in extra)}`"
            + (
                f" (its {args.warm_trials}-trial earlier study `+sweep={PRESET} {args.warm_from}`, the same space on "
                f"a related task, ran once before the comparison in {args.warm_source_s:.0f} s, not counted: a "
                "user warm-starts from a study they already have)"
                if label == "warm start"
                else ""
            )
            for label, (kind, extra) in sides.items()
            if kind == "lora_lab" and label not in ("recommended", "recommended (A/A)", "lora_lab random")
        ],
        "",
        "Per search (seconds to target from launch; `>`: not reached, censored):",
        "",
        *_common.table(
            ["side", *[f"seed {r['seed']}" for r in peer]],
            [
                [label, *[("" if r["reached"] else ">") + f"{r['whole_s']:.0f}" for r in results[label]]]
                for label in sides
            ],
        ),
    ]
    print("\n".join(body))
    raw = _common.REPORTS / "time_to_quality.json"
    if not args.no_report:
        _common.write_report(
            "time_to_quality",
            "Time to quality: lora_lab's searches against Trainer.hyperparameter_search",
            machine,
            body,
        )
        raw.write_text(
            json.dumps(
                {"target": target, "tolerance": args.tolerance, "versions": _common.versions(), "results": results},
                indent=1,
                default=str,
            )
            + "\n"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", action="store_true", help="run the reference study and write its JSON")
    parser.add_argument("--ref-trials", type=int, default=60, help="reference: configurations explored (TPE)")
    parser.add_argument("--ref-top", type=int, default=5, help="reference: best configurations trained again")
    parser.add_argument("--ref-seeds", type=int, default=3, help="reference: seeds each of those gets")
    parser.add_argument("--ref-overrides", default="", help="reference: extra overrides for both steps")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.25,
        help="target = (1 + this) x best known mean; 0.25 because the best known configurations' own seeds "
        "spread by about that much (the reference's top 5 span 0.00048-0.00076 at the default sizing), so a "
        "tighter target rewards a lucky seed, not a better configuration",
    )
    parser.add_argument("--seeds", type=int, default=5, help="search seeds (each runs every side once)")
    parser.add_argument("--seed0", type=int, default=1, help="first search seed")
    parser.add_argument("--trials", type=int, default=60, help="most trials a search may run")
    parser.add_argument(
        "--cap-s",
        type=float,
        default=240.0,
        help="a search that has not reached the target by then stops and counts as this many seconds",
    )
    parser.add_argument("--poll-s", type=float, default=1.0, help="how often the study's journal is read")
    parser.add_argument("--overrides", default="", help="extra overrides for every lora_lab side")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="LABEL=OVERRIDES",
        help="another lora_lab side: the preset with these overrides",
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="LABEL",
        help=f"run only these sides (and {PEER}, the reference of the ratios)",
    )
    parser.add_argument(
        "--warm-from",
        default="",
        metavar="OVERRIDES",
        help="add a 'warm start' side: first run the preset with these overrides (a related task, e.g. "
        "'data.swaps=3') as an earlier study, untimed, then warm-start each search from its best configurations "
        "(sweep.warm_start)",
    )
    parser.add_argument("--warm-trials", type=int, default=30, help="trials of that earlier study")
    parser.add_argument("--peer-eval-every", type=int, default=10, help=f"{PEER} + pruner: evaluation cadence")
    parser.add_argument("--peer-pruner", default="median", choices=["median", "successive_halving", "hyperband"])
    parser.add_argument(
        "--max-steps",
        type=int,
        default=0,
        help="budget: optimizer steps of every trial on every "
        "side and in the reference (0: the default config's train.max_steps)",
    )
    parser.add_argument("--no-report", action="store_true", help="print only; write no results files")
    parser.add_argument("--child-peer", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_peer:
        storage, study, trials, seed, eval_every, pruner, sampler_kind, *steps = args.child_peer
        _common.quiet()
        hf_search(
            storage,
            study,
            int(trials),
            int(seed),
            int(eval_every),
            pruner,
            sampler_kind,
            int(steps[0]) if steps else None,
        )
    elif args.reference:
        reference(args)
    else:
        compare(args)


if __name__ == "__main__":
    main()
