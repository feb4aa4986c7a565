"""lora_lab.report against a real MLflow store (sqlite in a temp dir) filled as a sweep would fill it.

The store follows the contract in lora_lab/track.py: one parent run per study (lora_lab.kind=sweep,
params sweep.*), nested trial runs (lora_lab.kind=trial, optuna.* tags, sweep.param.* and lora.* params,
final metrics plus an eval_loss history). The values are chosen so every table has a known exact answer.
"""

from __future__ import annotations

import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from tiny_trial import TINY

from lora_lab import cli, report
from lora_lab.config import ReportConfig
from lora_lab.errors import ConfigError
from lora_lab.report import findings, read, tables

REPO = Path(__file__).resolve().parent.parent

SPACE = {
    "lora.r": {"type": "categorical", "choices": [4, 8]},
    "alpha_over_r": {"type": "categorical", "choices": [1, 2]},
    "lora.targets": {"type": "categorical", "choices": ["qv", "all_linear"]},
}
DERIVED = {"lora.lora_alpha": "alpha_over_r * lora.r"}

# configuration -> (r, alpha/r, targets, trainable_params, peak_memory_mb, tokens_per_s,
#                   [(seed, final eval_loss, effective_rank_mean), ...])
CONFIGS = {
    "C1": (4, 1, "qv", 1000, 100, 900, [(0, 1.0, 3.0), (1, 1.2, 3.2)]),
    "C2": (4, 2, "qv", 1000, 100, 900, [(0, 0.9, 2.8), (1, 0.7, 3.0)]),
    "C3": (8, 1, "all_linear", 5000, 300, 500, [(0, 0.6, 5.0), (1, 0.5, 6.0), (2, 0.7, 5.0)]),
    "C4": (8, 2, "all_linear", 5000, 300, 500, [(0, 0.55, 6.0)]),
    "C5": (8, 2, "qv", 2000, 150, 800, [(0, 0.65, 5.0), (1, 0.75, 6.0)]),
}
LABEL = {name: f"lora.r={r}, alpha_over_r={a}, lora.targets={t}" for name, (r, a, t, *_rest) in CONFIGS.items()}
STEPS = (10, 20, 30)
ZERO_SHOT, FULL_FT = 2.0, (0.4, 0.6)
"""Baselines' eval_loss: the base untrained (one run) and full fine-tuning (two seeds)."""
UI = "http://mlflow.example.org:5000"


def _trial(
    client: MlflowClient,
    experiment_id: str,
    parent_id: str,
    study: str,
    number: int,
    r: int,
    a: int,
    targets: str,
    seed: int,
    state: str,
    metrics: dict[str, float],
    history: list[tuple[int, float]],
    error: str | None = None,
    overrides: bool = True,
    extra_tags: dict[str, str] | None = None,
) -> str:
    """One trial run as lora_lab.sweep logs it."""
    values = {"lora.r": r, "alpha_over_r": a, "lora.targets": targets, "train.seed": seed, "lora.lora_alpha": a * r}
    tags = {
        "mlflow.parentRunId": parent_id,
        "lora_lab.kind": "trial",
        "lora_lab.study": study,
        "optuna.trial_number": str(number),
        "optuna.state": state,
        "lora_lab.config_id": f"cfg-{r}-{a}-{targets}",
        **(extra_tags or {}),
    }
    if overrides:
        tags["lora_lab.overrides"] = f"lora.r={r} lora.targets={targets} train.seed={seed} lora.lora_alpha={a * r}"
    if error:
        tags["lora_lab.error"] = error
    run = client.create_run(experiment_id, run_name=f"trial-{number:04d}", tags=tags)
    params = [Param(f"sweep.param.{k}", str(v)) for k, v in values.items()]
    params += [
        Param("lora.r", str(r)),
        Param("lora.lora_alpha", str(float(a * r))),
        Param("lora.targets", targets),
        Param("lora.target_modules", "None"),
        Param("lora.lora_dropout", "0.0"),
        Param("train.seed", str(seed)),
        Param("train.eval_generate", "200"),  # exact match is a share of 200 held-out prompts
        Param("train.max_steps", "60"),
        Param("train.learning_rate", "0.005"),
        Param("train.batch_size", "32"),
    ]
    now = int(time.time() * 1000)
    logged = [Metric("eval_loss", v, now + i, step) for i, (step, v) in enumerate(history)]
    last = history[-1][0] if history else 0
    logged += [Metric(k, float(v), now + 100, last) for k, v in metrics.items()]
    client.log_batch(run.info.run_id, metrics=logged, params=params)
    client.set_terminated(run.info.run_id, {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}[state])
    return run.info.run_id


def _baseline(
    client: MlflowClient, experiment_id: str, parent_id: str, study: str, kind: str, seed: int, loss: float
) -> str:
    run = client.create_run(
        experiment_id,
        run_name=f"baseline-{kind}-{seed}",
        tags={
            "mlflow.parentRunId": parent_id,
            "lora_lab.kind": "baseline",
            "lora_lab.baseline": kind,
            "lora_lab.study": study,
        },
    )
    now = int(time.time() * 1000)
    client.log_batch(
        run.info.run_id,
        params=[Param("train.seed", str(seed))],
        metrics=[
            Metric("eval_loss", loss, now, 30),
            Metric("exact_match", round(1 - loss / 2, 4), now, 30),
            Metric("taskA_exact_match", 0.9, now, 30),
            Metric("trainable_params", 0 if kind == "zero_shot" else 90000, now, 30),
        ],
    )
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


def _parent(client: MlflowClient, study: str) -> tuple[str, str]:
    experiment_id = client.create_experiment(study)
    run = client.create_run(experiment_id, run_name=study, tags={"lora_lab.kind": "sweep", "lora_lab.study": study})
    client.log_batch(
        run.info.run_id,
        params=[
            Param("sweep.study_name", study),
            Param("sweep.objectives", json.dumps([{"metric": "eval_loss", "direction": "minimize"}])),
            Param("sweep.params", json.dumps(SPACE)),
            Param("sweep.derived", json.dumps(DERIVED)),
            Param("sweep.seeds", "3"),
        ],
        tags=[RunTag("best_trial_number", "7")],
    )
    return experiment_id, run.info.run_id


def populate(client: MlflowClient) -> dict[str, str]:
    """Studies 'demo' (5 configs, 10 complete runs, 1 pruned, 1 failed, 1 excluded, 3 baseline runs),
    'only_failed' (1 pruned, 1 failed) and 'empty_sweep' (a parent run and nothing else). Returns run ids."""
    ids: dict[str, str] = {}
    experiment_id, parent_id = _parent(client, "demo")
    number = 0
    for name, (r, a, targets, params, memory, speed, seeds) in CONFIGS.items():
        for seed, loss, eff in seeds:
            metrics = {
                "eval_loss": loss,
                "exact_match": round(1 - loss, 4),
                "trainable_params": params,
                "peak_memory_mb": memory,
                "tokens_per_s": speed * 12.5,
                "effective_rank_mean": eff,
                "taskA_exact_match": 0.9 - loss / 10,
                "forget_exact_match": loss / 10,
            }
            history = [(10, loss + 0.5), (20, loss + 0.2), (30, loss)]
            ids[f"{name}/{seed}"] = _trial(
                client, experiment_id, parent_id, "demo", number, r, a, targets, seed, "COMPLETE", metrics, history
            )
            number += 1
    ids["pruned"] = _trial(
        client,
        experiment_id,
        parent_id,
        "demo",
        number,
        4,
        1,
        "qv",
        2,
        "PRUNED",
        {"eval_loss": 3.0, "trainable_params": 1000},
        [(10, 3.5), (20, 3.0)],
    )
    ids["failed"] = _trial(
        client,
        experiment_id,
        parent_id,
        "demo",
        number + 1,
        8,
        1,
        "all_linear",
        3,
        "FAIL",
        {},
        [],
        error="RuntimeError: out of memory",
    )
    # finished, but its worker was lost and the trial re-run: never averaged (a 0.01 would be the best)
    ids["excluded"] = _trial(
        client,
        experiment_id,
        parent_id,
        "demo",
        number + 2,
        8,
        2,
        "all_linear",
        5,
        "COMPLETE",
        {"eval_loss": 0.01},
        [(10, 0.01)],
        extra_tags={"lora_lab.outcome": "worker_lost"},
    )
    ids["zero_shot"] = _baseline(client, experiment_id, parent_id, "demo", "zero_shot", 0, ZERO_SHOT)
    for seed, loss in enumerate(FULL_FT):
        ids[f"full_ft/{seed}"] = _baseline(client, experiment_id, parent_id, "demo", "full_ft", seed, loss)
    # a second study sharing the experiment (sweep.experiment=demo): never mixed into demo's tables
    side = client.create_run(experiment_id, run_name="side", tags={"lora_lab.kind": "sweep", "lora_lab.study": "side"})
    ids["side"] = _trial(
        client, experiment_id, side.info.run_id, "side", 0, 4, 1, "qv", 0, "COMPLETE", {"eval_loss": 0.1}, [(10, 0.1)]
    )
    experiment_id, parent_id = _parent(client, "only_failed")
    _trial(client, experiment_id, parent_id, "only_failed", 0, 4, 1, "qv", 0, "PRUNED", {"eval_loss": 2.0}, [(10, 2.0)])
    _trial(
        client,
        experiment_id,
        parent_id,
        "only_failed",
        1,
        8,
        1,
        "qv",
        0,
        "FAIL",
        {},
        [],
        error="ValueError: objective eval_loss is nan",
    )
    _parent(client, "empty_sweep")
    return ids


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A populated sqlite tracking store; MLFLOW_TRACKING_URI points at it for the module's tests."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        client = MlflowClient(tracking_uri=uri)
        ids = populate(client)
        yield {"uri": uri, "client": client, "ids": ids, "root": root}


@pytest.fixture(scope="module")
def demo(store):
    """Runs of study 'demo' as the report reads them, the complete trial runs and their config table."""
    client = store["client"]
    experiment = report.find_experiment(client, "demo")
    info = report.load_sweep_info(client, experiment, "demo")
    runs = report.assign_configs(report.load_runs(client, experiment, "demo"), info)
    trials = runs[runs["kind"] == "trial"]
    done = report.completed(trials, "eval_loss")
    return {
        "info": info,
        "runs": runs,
        "trials": trials,
        "done": done,
        "configs": report.config_table(done, "eval_loss", "minimize", info),
    }


@pytest.fixture(scope="module")
def built(store, tmp_path_factory):
    """The demo report written once (with a UI address for run links), for the tests that read its files."""
    out = tmp_path_factory.mktemp("reports")
    return report.build_report(ReportConfig(study="demo", output_dir=str(out), ui_url=UI), store["client"])


def _cell(table: pd.DataFrame, **where) -> pd.Series:
    mask = pd.Series(True, index=table.index)
    for key, value in where.items():
        mask &= table[key] == value
    assert mask.sum() == 1, where
    return table[mask].iloc[0]


# -- reading -----------------------------------------------------------------------------------


def test_load_runs_reads_states_params_configs_and_baselines(demo):
    runs, trials = demo["runs"], demo["trials"]
    assert len(trials) == 13 and len(runs) == 16
    assert trials["state"].value_counts().to_dict() == {"COMPLETE": 10, "PRUNED": 1, "FAIL": 1, "EXCLUDED": 1}
    assert sorted(trials["trial"]) == list(map(float, range(13)))
    assert set(trials["config"]) == set(LABEL.values())
    assert trials["group"].nunique() == 5  # grouped by lora_lab.config_id
    baselines = runs[runs["kind"] == "baseline"]
    assert sorted(baselines["baseline"]) == ["full_ft", "full_ft", "zero_shot"]
    assert set(baselines["config"]) == {"baseline: zero-shot (base model untrained)", "baseline: full fine-tuning"}
    assert demo["info"].objectives == [{"metric": "eval_loss", "direction": "minimize"}]
    assert demo["info"].derived == DERIVED
    assert len(demo["done"]) == 10 and set(demo["done"]["state"]) == {"COMPLETE"}
    assert 0.01 not in demo["done"]["metrics.eval_loss"].tolist()  # the excluded run is not averaged
    assert demo["info"].parent_run_ids and len(demo["info"].parent_run_ids) == 1


def test_studies_sharing_an_experiment_stay_apart(store):
    client = store["client"]
    experiment = report.find_experiment(client, "demo")
    side = report.load_runs(client, experiment, "side")
    assert side["run_id"].tolist() == [store["ids"]["side"]]
    assert report.load_sweep_info(client, experiment, "side").objectives == []
    assert len(report.load_runs(client, experiment, None)) == 17  # no study filter: every trial and baseline run


def test_trial_state_from_tag_and_status():
    assert report.trial_state({"optuna.state": "COMPLETE"}, "FINISHED") == "COMPLETE"
    assert report.trial_state({"optuna.state": "PRUNED"}, "KILLED") == "PRUNED"
    assert report.trial_state({"optuna.state": "FAIL"}, "FAILED") == "FAIL"
    assert report.trial_state({}, "FINISHED") == "COMPLETE"
    assert report.trial_state({}, "FAILED") == "FAIL"
    assert report.trial_state({"optuna.state": "COMPLETE"}, "KILLED") == "KILLED"  # status wins over tag
    assert report.trial_state({"optuna.state": "RUNNING"}, "RUNNING") == "RUNNING"
    assert report.trial_state({"optuna.state": "COMPLETE", "lora_lab.outcome": "duplicate"}, "FINISHED") == "EXCLUDED"
    assert report.trial_state({"optuna.state": "FAIL", "lora_lab.outcome": "interrupted"}, "KILLED") == "EXCLUDED"
    assert report.trial_state({"optuna.state": "FAIL", "lora_lab.outcome": "error"}, "FAILED") == "FAIL"  # a result


def test_objective_resolution_is_tolerant(demo):
    info = demo["info"]
    assert report.resolve_objective(None, None, info)[:2] == ("eval_loss", "minimize")
    assert report.resolve_objective("exact_match", None, info)[:2] == ("exact_match", "maximize")
    assert report.resolve_objective("wall_time_s", None, info)[:2] == ("wall_time_s", "minimize")
    assert report.resolve_objective(None, None, None)[:2] == ("eval_loss", "minimize")
    assert read.parse_structured("[{'metric': 'exact_match', 'direction': 'maximize'}]") == [
        {"metric": "exact_match", "direction": "maximize"}
    ]
    assert read.parse_structured("not json") is None
    with pytest.raises(report.LoraLabError, match="direction"):
        report.resolve_objective("eval_loss", "down", info)


def test_report_settings_are_checked():
    with pytest.raises(ConfigError, match="correction.*'holm', 'none'"):
        ReportConfig(study="demo", correction="bonferroni")
    with pytest.raises(ConfigError, match="ratio_margin"):
        ReportConfig(study="demo", ratio_margin=1.0)  # nothing could ever be shown inside a margin of 1x
    with pytest.raises(ConfigError, match="confidence"):
        ReportConfig(study="demo", confidence=95)


# -- tables --------------------------------------------------------------------------------------


def test_config_table_centres_intervals_and_decisions(demo):
    table = demo["configs"]
    # C4 has the lowest loss but one seed: the best is C3, the best upper bound among configurations with >= 2
    assert list(table["config"]) == [LABEL[c] for c in ("C3", "C4", "C5", "C2", "C1")]
    c3 = _cell(table, config=LABEL["C3"])
    logs = [math.log(v) for v in (0.6, 0.5, 0.7)]
    half = 4.302652729749464 * statistics.stdev(logs) / math.sqrt(3)  # t(0.975, 2 df) on the log scale
    assert c3["mean"] == pytest.approx(math.exp(statistics.mean(logs))) and c3["n"] == 3
    assert (c3["ci_low"], c3["ci_high"]) == (
        pytest.approx(math.exp(statistics.mean(logs) - half)),
        pytest.approx(math.exp(statistics.mean(logs) + half)),
    )
    assert c3["seeds"] == "0,1,2" and c3["exact_match"] == pytest.approx(0.4)
    assert (table["ci_low"].dropna() > 0).all()  # a loss interval never reaches zero
    c4 = _cell(table, config=LABEL["C4"])
    assert c4["mean"] == pytest.approx(0.55) and math.isnan(c4["std"]) and c4["n"] == 1
    assert math.isnan(c4["ci_low"]) and c4["decision"] == "undecided"  # one seed: nothing to decide with
    c1 = _cell(table, config=LABEL["C1"])  # the pruned seed (3.0) is not averaged in
    assert c1["mean"] == pytest.approx(math.sqrt(1.0 * 1.2)) and c1["std"] == pytest.approx(
        statistics.stdev([1.0, 1.2])
    )
    assert c1["n"] == 2 and c1["trainable_params"] == 1000
    assert c1["taskA_exact_match"] == pytest.approx(0.79) and c1["forget_exact_match"] == pytest.approx(0.11)
    assert table["decision"].iloc[0] == "best" and set(table["decision"].iloc[1:]) <= {"undecided", "worse"}
    maximize = report.config_table(demo["done"], "exact_match", "maximize", demo["info"])
    assert maximize.attrs["scale"] == "proportion"
    assert ((maximize["ci_low"] >= 0) & (maximize["ci_high"] <= 1)).all()


def test_grid_cells_are_configurations_never_pools(demo):
    grid = report.grid_table(demo["configs"], "r", "alpha_over_r")
    assert len(grid) == 4
    expected = {(4, 1): ("C1", 1), (4, 2): ("C2", 1), (8, 1): ("C3", 1), (8, 2): ("C4", 2)}
    for (r, a), (name, configs) in expected.items():
        cell = _cell(grid, r=r, alpha_over_r=a)
        assert cell["config"] == LABEL[name] and cell["configs"] == configs
        assert cell["n"] == len(CONFIGS[name][-1])  # seeds of that one configuration (C4: 1, not C4 + C5's 3)
    assert grid.loc[grid["best"], ["r", "alpha_over_r"]].values.tolist() == [[8, 1]]
    fixed_alpha = report.grid_table(demo["configs"], "r", "lora_alpha")
    assert sorted(zip(fixed_alpha["r"], fixed_alpha["lora_alpha"], strict=True)) == [(4, 4), (4, 8), (8, 8), (8, 16)]
    targets = report.grid_table(demo["configs"], "r", "targets")
    assert len(targets) == 3  # (4, all_linear) was never run
    assert _cell(targets, r=4, targets="qv")["config"] == LABEL["C2"]
    assert _cell(targets, r=8, targets="qv")["mean"] == pytest.approx(math.sqrt(0.65 * 0.75))  # geometric


def test_pareto_front_against_each_cost(demo):
    configs = demo["configs"]
    for cost, direction in (
        ("trainable_params", "minimize"),
        ("peak_memory_mb", "minimize"),
        ("tokens_per_s", "maximize"),
    ):
        front = report.pareto_front(configs, "mean", cost, "minimize", direction)
        assert set(front.loc[front["pareto"], "config"]) == {LABEL["C2"], LABEL["C5"], LABEL["C4"]}, cost
    front = report.pareto_front(configs, "mean", "trainable_params", "minimize")
    assert list(front.loc[front["pareto"], "config"]) == [LABEL["C2"], LABEL["C5"], LABEL["C4"]]  # cheapest first


def test_pareto_front_handles_ties_and_maximize():
    table = pd.DataFrame({"q": [0.5, 0.5, 0.9, 0.1, 0.9], "c": [10, 10, 20, 5, float("nan")]})
    front = report.pareto_front(table, "q", "c", "maximize")
    assert len(front) == 4  # the row without a cost is dropped
    assert sorted(zip(front["q"], front["c"], front["pareto"], strict=True)) == [
        (0.1, 5, True),
        (0.5, 10, True),
        (0.5, 10, True),
        (0.9, 20, True),
    ]
    front = report.pareto_front(table, "q", "c", "minimize")
    assert front.loc[front["pareto"], "q"].tolist() == [0.1]


def test_effective_rank_per_configuration(demo):
    table = tables.effective_rank_table(demo["done"])
    by_config = table.set_index("config")
    assert by_config.loc[LABEL["C3"], "mean"] == pytest.approx(16 / 3) and by_config.loc[LABEL["C3"], "n"] == 3
    assert by_config.loc[LABEL["C4"], "n"] == 1 and by_config.loc[LABEL["C4"], "used"] == pytest.approx(6 / 8)
    assert table["r"].tolist() == [4, 4, 8, 8, 8]


def test_learning_curves_one_per_configuration(store, demo):
    runs = demo["trials"][demo["trials"]["state"] != "FAIL"]
    curves = read.learning_curves(store["client"], runs)
    complete = curves[curves["state"] == "COMPLETE"]
    assert complete["run_id"].nunique() == 10
    assert all(tuple(steps) == STEPS for steps in complete.groupby("run_id")["step"].apply(list))
    assert curves[curves["state"] == "PRUNED"]["eval_loss"].tolist() == [3.5, 3.0]
    means = tables.curves_by_config(curves)
    assert means["group"].nunique() == 5
    c1 = means[means["config"] == LABEL["C1"]].set_index("step")
    at10 = complete[(complete["config"] == LABEL["C1"]) & (complete["step"] == 10)]["eval_loss"]
    assert (
        c1.loc[10, "mean"] == pytest.approx(math.exp(np.log(at10).mean())) and c1.loc[10, "n"] == 2
    )  # pruned excluded
    logs = np.log([1.0, 1.2])  # C1's final values: the band is the t interval on the log scale
    half = 12.706204736174696 * np.std(logs, ddof=1) / math.sqrt(2)
    assert (c1.loc[30, "ci_low"], c1.loc[30, "ci_high"]) == (
        pytest.approx(math.exp(logs.mean() - half)),
        pytest.approx(math.exp(logs.mean() + half)),
    )
    assert (means["ci_low"].dropna() > 0).all()  # no band falls to the axis floor
    early, last, rho = tables.step_rank_correlation(curves)
    assert (early, last, rho) == (10, 30, pytest.approx(1.0))  # every curve is its final value + a constant


def test_param_importance_uses_optuna(demo):
    table, notes = tables.param_importance(demo["done"], "eval_loss", "minimize", demo["info"])
    assert set(table["param"]) == {"lora.r", "alpha_over_r", "lora.targets"}  # not the seed nor lora_alpha
    assert table["importance"].sum() == pytest.approx(1.0)
    assert notes == []
    few, notes = tables.param_importance(demo["done"].head(2), "eval_loss", "minimize", demo["info"])
    assert few.empty and "at least" in notes[0]
    same = demo["done"][demo["done"]["r"] == 8]
    table, notes = tables.param_importance(same, "eval_loss", "minimize", demo["info"])
    assert "lora.r" not in set(table["param"]) and any("'lora.r' took a single value" in n for n in notes)


def test_best_and_recommended_commands(demo):
    done = demo["done"]
    run = done[done["config"] == LABEL["C4"]].iloc[0]
    assert report.best_command(run) == (
        "python -m lora_lab.train lora.r=8 lora.targets=all_linear train.seed=0 lora.lora_alpha=16"
    )
    assert findings.train_overrides(run, seed=False) == ["lora.r=8", "lora.targets=all_linear", "lora.lora_alpha=16"]
    rebuilt = report.best_command(run.drop("overrides"))
    assert rebuilt == "python -m lora_lab.train lora.r=8 lora.targets=all_linear train.seed=0 lora.lora_alpha=16"
    bare = {
        "params.lora.r": "8",
        "params.lora.lora_alpha": "16.0",
        "params.lora.targets": "my set",
        "params.train.seed": "1",
        "params.lora.use_rslora": "True",
    }
    assert report.best_command(bare) == (
        'python -m lora_lab.train lora.r=8 lora.lora_alpha=16 lora.targets="my set" lora.use_rslora=true train.seed=1'
    )


def test_numbers_for_people():
    assert findings.fmt(21380.0) == "21,380" and findings.fmt(2.138e4) == "21,380"
    assert findings.fmt(0.000012346) == "0.00001235" and findings.fmt(0.24371234) == "0.2437"
    assert findings.fmt(float("nan")) == "" and findings.fmt(3.0) == "3" and findings.fmt(1234.5) == "1,234"


def test_unfinished_listed_not_averaged(demo):
    table = tables.unfinished_table(demo["runs"], set(demo["done"]["run_id"]), "eval_loss")
    assert sorted(table["state"]) == ["EXCLUDED (worker_lost)", "FAIL", "PRUNED"]  # complete baselines are not here
    failed = _cell(table, state="FAIL")
    assert failed["status"] == "FAILED" and failed["error"] == "RuntimeError: out of memory"
    assert _cell(table, state="PRUNED")["last eval_loss"] == 3.0


def test_baselines_and_recovered_gain(demo):
    baselines = demo["runs"][demo["runs"]["kind"] == "baseline"]
    rows = findings.baseline_rows(baselines, ["eval_loss", "taskA_exact_match", "trainable_params"], report.Rule())
    assert rows["baseline"].tolist() == ["zero_shot", "full_ft"] and rows["n"].tolist() == [1, 2]
    assert rows["eval_loss"].tolist() == pytest.approx([2.0, math.sqrt(0.4 * 0.6)])  # geometric means
    assert (rows["eval_loss low"].dropna() > 0).all()  # a loss interval stays positive
    assert rows["taskA_exact_match high"].max() <= 1 and rows["taskA_exact_match low"].min() >= 0
    assert rows["trainable_params low"].isna().all()  # a count: no interval
    gains = findings.recovered(demo["done"], baselines, demo["configs"]).set_index("config")
    full = baselines.loc[baselines["baseline"] == "full_ft", "metrics.eval_loss"].astype(float)
    log_full = float(np.mean(np.log(full)))

    def share(losses):  # the share of full fine-tuning's gain in log loss, clipped to [0, 1]
        return min(1.0, max(0.0, (math.log(2.0) - np.mean(np.log(losses))) / (math.log(2.0) - log_full)))

    assert gains.loc[LABEL["C3"], "recovered"] == pytest.approx(share([0.6, 0.5, 0.7]))
    assert gains.loc[LABEL["C1"], "recovered"] == pytest.approx(share([1.0, 1.2]))
    c3 = gains.loc[LABEL["C3"]]
    assert 0 <= c3["recovered_low"] < c3["recovered"] < c3["recovered_high"] <= 1
    assert c3["ratio"] == pytest.approx(math.exp(np.mean(np.log([0.6, 0.5, 0.7])) - log_full))
    assert 0 < c3["ratio_low"] < c3["ratio"] < c3["ratio_high"] and c3["versus_full_ft"] == "undecided"
    assert math.isnan(gains.loc[LABEL["C4"], "recovered_low"])  # one seed: no interval
    no_full = baselines[baselines["baseline"] == "zero_shot"]
    assert findings.recovered(demo["done"], no_full, demo["configs"]).empty


# -- the written report --------------------------------------------------------------------------

PLOTS = [
    "rank_alpha.png",
    "rank_lora_alpha.png",
    "rank_targets.png",
    "pareto_trainable_params.png",
    "effective_rank.png",
    "learning_curves.png",
    "importance.png",
    "optuna_history.png",
    "optuna_slice.png",
    "optuna_parallel.png",
]
CSVS = [
    "rank_alpha.csv",
    "rank_lora_alpha.csv",
    "rank_targets.csv",
    "pareto_trainable_params.csv",
    "effective_rank.csv",
    "learning_curves.csv",
    "learning_curves_by_config.csv",
    "importance.csv",
    "configs.csv",
    "unfinished.csv",
    "runs.csv",
    "baselines.csv",
    "recovered.csv",
    "findings.csv",
]


def test_report_files(built):
    for name in PLOTS:
        data = (built / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5000, name
    for name in CSVS:
        assert (built / name).stat().st_size > 0, name
    assert not (built / "pareto_peak_memory_mb.png").exists() and not (built / "pareto_tokens_per_s.png").exists()
    rank_alpha = pd.read_csv(built / "rank_alpha.csv")
    assert _cell(rank_alpha, r=8, alpha_over_r=1)["mean"] == pytest.approx((0.6 * 0.5 * 0.7) ** (1 / 3))
    found = pd.read_csv(built / "findings.csv").set_index("finding")["verdict"]
    assert found["rsLoRA trains better than alpha/r at large r"] == "not measured in this sweep"
    assert found["All linear layers beat q,v"] == "inconclusive"  # C4 has one seed: nothing can be shown
    assert pd.read_csv(built / "baselines.csv")["baseline"].tolist() == ["zero_shot", "full_ft"]
    assert not [p for p in built.parent.iterdir() if p.name.startswith(".")]  # no staging left


def test_report_markdown_and_html(built, store):
    md = (built / "report.md").read_text()
    page = (built / "report.html").read_text()
    seedless = "python -m lora_lab.train lora.r=8 lora.targets=all_linear lora.lora_alpha=8"  # C3: the best
    assert md.index("## Recommendation") < md.index("## Summary") < md.index("## Findings")
    assert seedless in md and seedless in page
    assert (built / "recommended_command.txt").read_text().splitlines()[1] == seedless
    run_dir = "outputs/demo-eval_loss"  # the recommended training, then its adapter merged for use
    merge = f"python -m lora_lab.export adapter={run_dir}/adapter output_dir={run_dir}/merged"
    assert f"{seedless} hydra.run.dir={run_dir}\n{merge}\n" in md
    assert (built / "best_command.txt").read_text().strip() == (
        "python -m lora_lab.train lora.r=8 lora.targets=all_linear train.seed=1 lora.lora_alpha=8"
    )
    assert "| r \\ alpha_over_r | 1 | 2 |" in md
    assert "| r=8 | **0.5944 [0.39, 0.9] ★** | 0.55 (1 seed) ? (best of 2) |" in md  # C4: one seed, undecided
    assert "| r=4 | 1.095 [0.34, 3.5] ? | 0.7937 [0.16, 3.9] ? |" in md  # geometric means, positive intervals
    assert "| r \\ targets | qv | all_linear |" in md  # declared order of the choices
    assert "Trial runs: 13 (10 complete, 1 pruned, 1 failed, 1 excluded); 10 averaged." in md
    assert "RuntimeError: out of memory" in md and "RuntimeError: out of memory" in page
    assert "3 of 5 configurations are Pareto-optimal" in md
    assert "**eval_loss** (minimize" in md and "the sweep's first objective" in md
    assert "extend the grid above it" in md and "Baseline runs: 3." in md
    # numbers for people, no machine paths, run ids linked to the UI
    assert "(n=1)" not in md and "e+0" not in md and "e-0" not in md and "| 5,000 |" in md
    assert str(store["root"]) not in md and str(store["root"]) not in page and "sqlite store" in md
    c3_run = store["ids"]["C3/1"]
    experiment = store["client"].get_experiment_by_name("demo").experiment_id
    assert f"({UI}/#/experiments/{experiment}/runs/{c3_run})" in md
    assert f'href="{UI}/#/experiments/{experiment}/runs/{c3_run}"' in page
    # self-contained HTML: every plot embedded, no relative image
    for name in PLOTS:
        assert f"]({name})" in md, name
    assert page.count('<img src="data:image/png;base64,') == len(PLOTS)
    assert not re.findall(r'src="(?!data:image/png;base64,)', page)
    tables_md = sum(1 for line in md.splitlines() if line.startswith("| ---"))
    assert tables_md >= 10 and page.count("<table>") == tables_md


def test_report_replaces_previous_atomically(store, tmp_path):
    target = tmp_path / "demo"
    target.mkdir()
    (target / "report.md").write_text("old report")

    class Broken:
        pass

    with pytest.raises(TypeError):  # the second file cannot be written: the old report must survive
        report.write_atomically(target, {"a.txt": "new", "b.csv": Broken()})
    assert (target / "report.md").read_text() == "old report"
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]
    report.write_atomically(target, {"report.md": "new report"})
    assert (target / "report.md").read_text() == "new report"
    (tmp_path / "plain").mkdir()
    assert target.stat().st_mode == (tmp_path / "plain").stat().st_mode  # not the 0700 of a temp dir
    (tmp_path / "plain").rmdir()
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]


# -- errors --------------------------------------------------------------------------------------


def test_unknown_study_names_existing_experiments(store, tmp_path):
    with pytest.raises(report.UnknownSweepError) as info:
        report.build_report(ReportConfig(study="nope", output_dir=str(tmp_path)), store["client"])
    message = str(info.value)
    assert "'nope'" in message and "'demo'" in message and "'only_failed'" in message
    assert not (tmp_path / "nope").exists()


def test_sweep_without_trials_is_an_error(store, tmp_path):
    with pytest.raises(report.UnknownSweepError, match="no trial runs of study 'empty_sweep'.*'demo'"):
        report.build_report(ReportConfig(study="empty_sweep", output_dir=str(tmp_path)), store["client"])


def test_sweep_without_finished_trials_is_an_error(store, tmp_path):
    with pytest.raises(report.NoFinishedTrialsError) as info:
        report.build_report(ReportConfig(study="only_failed", output_dir=str(tmp_path)), store["client"])
    message = str(info.value)
    assert "no finished trial" in message and "(1 pruned, 1 failed)" in message
    assert "ValueError: objective eval_loss is nan" in message
    assert not (tmp_path / "only_failed").exists()


def test_unlogged_metric_is_an_error(store, tmp_path):
    with pytest.raises(report.NoFinishedTrialsError, match="'bogus'.*eval_loss"):
        report.build_report(ReportConfig(study="demo", metric="bogus", output_dir=str(tmp_path)), store["client"])


# -- command line --------------------------------------------------------------------------------


def _cli(store, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": store["uri"]}
    return subprocess.run(
        [sys.executable, "-m", "lora_lab.report", *args],
        cwd=store["root"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_writes_report(store, tmp_path):
    out = tmp_path / "out"
    result = _cli(store, "study=demo", f"output_dir={out}", "metric=exact_match", "proportion_margin=0.3")
    assert result.returncode == 0, result.stderr
    assert f"report: {out / 'demo' / 'report.md'}" in result.stdout
    md = (out / "demo" / "report.md").read_text()
    assert "**exact_match** (maximize" in md and "within 0.3 (absolute share) of the best" in md
    assert "(200 prompts scored per seed)" in md
    assert "**Budget** every ranking below holds for: 60 optimizer steps, learning rate 0.005, batch size 32" in md
    # C3 is best (0.7 of 600 prompts); C2 (0.6 of 400, 1,000 params) is shown within 0.3 of it and is the
    # cheapest such; C1 (0.45, as cheap) is undecided at this margin
    assert (out / "demo" / "recommended_command.txt").read_text().splitlines()[1] == (
        "python -m lora_lab.train lora.r=4 lora.targets=qv lora.lora_alpha=8"
    )
    assert set(PLOTS) <= {p.name for p in (out / "demo").iterdir()}
    assert not (store["root"] / "outputs").exists() and not list(store["root"].glob("*.log"))


def test_errors_exit_2_with_one_paragraph(store, tmp_path, capsys):
    """The path the command line takes (cli.reports_errors), without paying for a second subprocess."""
    settings = ReportConfig(study="nope", output_dir=str(tmp_path))
    with pytest.raises(SystemExit) as exit_info:
        cli.reports_errors(report.build_report)(settings, store["client"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("lora_lab: error: no MLflow experiment named 'nope'") and "'demo'" in err
    assert err.count("\n") == 1 and "Traceback" not in err


# -- a real sweep ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_report_of_a_real_sweep(tmp_path, monkeypatch, capsys):
    """Two ranks x 2 seeds trained for real by lora_lab.sweep, then reported: n counts the seeds of each
    configuration, intervals exist, the recommendation's command is one lora_lab.train accepts."""
    from hydra import compose, initialize_config_dir

    from lora_lab.config import register_configs
    from lora_lab.sweep import Sweep, print_summary

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    register_configs()
    overrides = ["+sweep=rank_alpha", "sweep.study_name=tiny_report", "sweep.seeds=2", *TINY]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose("config", overrides=overrides)
        cfg.sweep.params["lora.r"].choices = [2, 4]
        cfg.sweep.params["alpha_over_r"].choices = [1]
        summary = Sweep(cfg, overrides, console_progress=False).run()
    path = report.build_report(
        ReportConfig(study="tiny_report", output_dir=str(tmp_path / "reports")), MlflowClient(tracking_uri=uri)
    )
    configs = pd.read_csv(path / "configs.csv")
    assert sorted(configs["r"]) == [2, 4] and configs["n"].tolist() == [2, 2]
    assert (configs["ci_low"] > 0).all() and (configs["ci_low"] < configs["mean"]).all()
    command = (path / "recommended_command.txt").read_text().splitlines()[1]
    assert command.startswith("python -m lora_lab.train ") and "train.seed" not in command
    shown = configs[configs["decision"].isin(["best", "equivalent"])]  # the best and those shown equivalent
    expected = int(shown.sort_values("trainable_params")["r"].iloc[0])
    assert f"lora.r={expected} " in command
    # the sweep's closing lines state the same decision, not the luckiest trial
    print_summary(summary)
    out = capsys.readouterr().out
    best = configs.iloc[0]
    assert f"best configuration: {best['config']}, eval_loss " in out and "(geometric mean over 2 seed(s)" in out
    assert command in out and not re.search(r"best trial \d", out)  # no luckiest single trial
    md = (path / "report.md").read_text()
    assert md.split("## ")[1].startswith("Recommendation") and str(tmp_path) not in md


def test_store_named_without_paths_and_ui_links():
    local = MlflowClient(tracking_uri="sqlite:////home/someone/project/mlflow.db")
    server = MlflowClient(tracking_uri="http://mlflow.internal:5000/")
    secret = MlflowClient(tracking_uri="https://user:pw@mlflow.internal")
    assert read.store_words(local) == "a local MLflow sqlite store"  # never the file's path
    assert read.store_words(server) == "the MLflow tracking server http://mlflow.internal:5000/"
    assert "pw" not in read.store_words(secret)
    assert read.ui_base(None, local) is None  # no server known: run ids are shown, not linked
    assert read.ui_base(None, server) == "http://mlflow.internal:5000"
    assert read.ui_base(None, secret) is None  # a link would not open without the credentials
    assert read.ui_base("http://ui.example/", local) == "http://ui.example"
