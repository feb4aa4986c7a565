"""lora_lab.report against a real MLflow store (sqlite in a temp dir) filled as a sweep would fill it.

The store follows the contract in lora_lab/track.py: one parent run per study (lora_lab.kind=sweep,
params sweep.*), nested trial runs (lora_lab.kind=trial, optuna.* tags, sweep.param.* and lora.* params,
final metrics plus an eval_loss history). The values are chosen so every table has a known exact answer.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from lora_lab import report
from lora_lab.config import ReportConfig

REPO = Path(__file__).resolve().parent.parent

SPACE = {"lora.r": {"type": "categorical", "choices": [4, 8]},
         "alpha_over_r": {"type": "categorical", "choices": [1, 2]},
         "lora.targets": {"type": "categorical", "choices": ["qv", "all_linear"]}}
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


def _trial(client: MlflowClient, experiment_id: str, parent_id: str, study: str, number: int,
           r: int, a: int, targets: str, seed: int, state: str, metrics: dict[str, float],
           history: list[tuple[int, float]], error: str | None = None, overrides: bool = True) -> str:
    """One trial run as lora_lab.sweep logs it."""
    values = {"lora.r": r, "alpha_over_r": a, "lora.targets": targets, "train.seed": seed,
              "lora.lora_alpha": a * r}
    tags = {"mlflow.parentRunId": parent_id, "lora_lab.kind": "trial", "lora_lab.study": study,
            "optuna.trial_number": str(number), "optuna.state": state,
            "lora_lab.config_id": f"cfg-{r}-{a}-{targets}"}
    if overrides:
        tags["lora_lab.overrides"] = (f"lora.r={r} lora.targets={targets} train.seed={seed} "
                                      f"lora.lora_alpha={a * r}")
    if error:
        tags["lora_lab.error"] = error
    run = client.create_run(experiment_id, run_name=f"trial-{number:04d}", tags=tags)
    params = [Param(f"sweep.param.{k}", str(v)) for k, v in values.items()]
    params += [Param("lora.r", str(r)), Param("lora.lora_alpha", str(float(a * r))),
               Param("lora.targets", targets), Param("lora.target_modules", "None"),
               Param("lora.lora_dropout", "0.0"), Param("train.seed", str(seed))]
    now = int(time.time() * 1000)
    logged = [Metric("eval_loss", v, now + i, step) for i, (step, v) in enumerate(history)]
    last = history[-1][0] if history else 0
    logged += [Metric(k, float(v), now + 100, last) for k, v in metrics.items()]
    client.log_batch(run.info.run_id, metrics=logged, params=params)
    client.set_terminated(run.info.run_id, {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAIL": "FAILED"}[state])
    return run.info.run_id


def _parent(client: MlflowClient, study: str) -> tuple[str, str]:
    experiment_id = client.create_experiment(study)
    run = client.create_run(experiment_id, run_name=study, tags={"lora_lab.kind": "sweep", "lora_lab.study": study})
    client.log_batch(run.info.run_id, params=[
        Param("sweep.study_name", study),
        Param("sweep.objectives", json.dumps([{"metric": "eval_loss", "direction": "minimize"}])),
        Param("sweep.params", json.dumps(SPACE)), Param("sweep.derived", json.dumps(DERIVED)),
        Param("sweep.seeds", "3")], tags=[RunTag("best_trial_number", "7")])
    return experiment_id, run.info.run_id


def populate(client: MlflowClient) -> dict[str, str]:
    """Studies 'demo' (5 configs, 10 complete runs, 1 pruned, 1 failed), 'only_failed' (1 pruned,
    1 failed) and 'empty_sweep' (a parent run and nothing else). Returns run ids by name."""
    ids: dict[str, str] = {}
    experiment_id, parent_id = _parent(client, "demo")
    number = 0
    for name, (r, a, targets, params, memory, speed, seeds) in CONFIGS.items():
        for seed, loss, eff in seeds:
            metrics = {"eval_loss": loss, "exact_match": round(1 - loss, 4), "trainable_params": params,
                       "peak_memory_mb": memory, "tokens_per_s": speed, "effective_rank_mean": eff}
            history = [(10, loss + 0.5), (20, loss + 0.2), (30, loss)]
            ids[f"{name}/{seed}"] = _trial(client, experiment_id, parent_id, "demo", number, r, a, targets, seed,
                                           "COMPLETE", metrics, history)
            number += 1
    ids["pruned"] = _trial(client, experiment_id, parent_id, "demo", number, 4, 1, "qv", 2, "PRUNED",
                           {"eval_loss": 3.0, "trainable_params": 1000}, [(10, 3.5), (20, 3.0)])
    ids["failed"] = _trial(client, experiment_id, parent_id, "demo", number + 1, 8, 1, "all_linear", 3, "FAIL",
                           {}, [], error="RuntimeError: out of memory")
    # a second study sharing the experiment (sweep.experiment=demo): never mixed into demo's tables
    side = client.create_run(experiment_id, run_name="side", tags={"lora_lab.kind": "sweep", "lora_lab.study": "side"})
    ids["side"] = _trial(client, experiment_id, side.info.run_id, "side", 0, 4, 1, "qv", 0, "COMPLETE",
                         {"eval_loss": 0.1}, [(10, 0.1)])
    experiment_id, parent_id = _parent(client, "only_failed")
    _trial(client, experiment_id, parent_id, "only_failed", 0, 4, 1, "qv", 0, "PRUNED",
           {"eval_loss": 2.0}, [(10, 2.0)])
    _trial(client, experiment_id, parent_id, "only_failed", 1, 8, 1, "qv", 0, "FAIL", {}, [],
           error="ValueError: objective eval_loss is nan")
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
    """Runs of study 'demo' as the report reads them, and the complete ones."""
    client = store["client"]
    experiment = report.find_experiment(client, "demo")
    info = report.load_sweep_info(client, experiment, "demo")
    runs = report.assign_configs(report.load_runs(client, experiment, "demo"), info)
    return {"info": info, "runs": runs, "done": report.completed(runs, "eval_loss")}


@pytest.fixture(scope="module")
def built(store, tmp_path_factory):
    """The demo report written once, for the tests that read its files."""
    out = tmp_path_factory.mktemp("reports")
    path = report.build_report(ReportConfig(study="demo", output_dir=str(out)), store["client"])
    return path


def _cell(table: pd.DataFrame, **where) -> pd.Series:
    mask = pd.Series(True, index=table.index)
    for key, value in where.items():
        mask &= table[key] == value
    assert mask.sum() == 1, where
    return table[mask].iloc[0]


# -- reading -----------------------------------------------------------------------------------

def test_load_runs_reads_states_params_and_configs(demo):
    runs = demo["runs"]
    assert len(runs) == 12
    assert runs["state"].value_counts().to_dict() == {"COMPLETE": 10, "PRUNED": 1, "FAIL": 1}
    assert sorted(runs["trial"]) == list(map(float, range(12)))
    assert set(runs["config"]) == set(LABEL.values())
    assert demo["info"].objectives == [{"metric": "eval_loss", "direction": "minimize"}]
    assert demo["info"].derived == DERIVED
    assert len(demo["done"]) == 10 and set(demo["done"]["state"]) == {"COMPLETE"}
    assert demo["info"].parent_run_ids and len(demo["info"].parent_run_ids) == 1


def test_studies_sharing_an_experiment_stay_apart(store):
    client = store["client"]
    experiment = report.find_experiment(client, "demo")
    side = report.load_runs(client, experiment, "side")
    assert side["run_id"].tolist() == [store["ids"]["side"]]
    assert report.load_sweep_info(client, experiment, "side").objectives == []
    assert len(report.load_runs(client, experiment, None)) == 13  # no study filter: every trial run


def test_trial_state_from_tag_and_status():
    assert report.trial_state({"optuna.state": "COMPLETE"}, "FINISHED") == "COMPLETE"
    assert report.trial_state({"optuna.state": "PRUNED"}, "KILLED") == "PRUNED"
    assert report.trial_state({"optuna.state": "FAIL"}, "FAILED") == "FAIL"
    assert report.trial_state({}, "FINISHED") == "COMPLETE"
    assert report.trial_state({}, "FAILED") == "FAIL"
    assert report.trial_state({"optuna.state": "COMPLETE"}, "KILLED") == "KILLED"  # status wins over tag
    assert report.trial_state({"optuna.state": "RUNNING"}, "RUNNING") == "RUNNING"


def test_objective_resolution_is_tolerant(demo):
    info = demo["info"]
    assert report.resolve_objective(None, None, info)[:2] == ("eval_loss", "minimize")
    assert report.resolve_objective("exact_match", None, info)[:2] == ("exact_match", "maximize")
    assert report.resolve_objective("wall_time_s", None, info)[:2] == ("wall_time_s", "minimize")
    assert report.resolve_objective(None, None, None)[:2] == ("eval_loss", "minimize")
    assert report._parse_structured("[{'metric': 'exact_match', 'direction': 'maximize'}]") == [
        {"metric": "exact_match", "direction": "maximize"}]
    assert report._parse_structured("not json") is None
    with pytest.raises(report.LoraLabError, match="direction"):
        report.resolve_objective("eval_loss", "down", info)


# -- tables --------------------------------------------------------------------------------------

def test_config_table_means_stds_and_best(demo):
    table = report.config_table(demo["done"], "eval_loss", "minimize", demo["info"])
    assert list(table["config"]) == [LABEL[c] for c in ("C4", "C3", "C5", "C2", "C1")]
    c3 = _cell(table, config=LABEL["C3"])
    assert c3["mean"] == pytest.approx(0.6) and c3["std"] == pytest.approx(0.1) and c3["n"] == 3
    assert c3["seeds"] == "0,1,2"
    c4 = _cell(table, config=LABEL["C4"])
    assert c4["mean"] == pytest.approx(0.55) and math.isnan(c4["std"]) and c4["n"] == 1
    c1 = _cell(table, config=LABEL["C1"])  # the pruned seed (3.0) is not averaged in
    assert c1["mean"] == pytest.approx(1.1) and c1["std"] == pytest.approx(statistics.stdev([1.0, 1.2]))
    assert c1["n"] == 2 and c1["trainable_params"] == 1000
    assert _cell(table, config=LABEL["C5"])["best_run_id"] is not None
    maximize = report.config_table(demo["done"], "exact_match", "maximize", demo["info"])
    assert maximize["config"].iloc[0] == LABEL["C4"]


def test_rank_alpha_table_exact(demo):
    table = report.rank_alpha_table(demo["done"], "eval_loss", "minimize")
    assert list(table.columns) == ["r", "alpha_over_r", "mean", "std", "n", "configs", "best"]
    expected = {(4, 1): [1.0, 1.2], (4, 2): [0.9, 0.7], (8, 1): [0.6, 0.5, 0.7], (8, 2): [0.55, 0.65, 0.75]}
    assert len(table) == 4
    for (r, a), values in expected.items():
        cell = _cell(table, r=r, alpha_over_r=a)
        assert cell["mean"] == pytest.approx(statistics.mean(values))
        assert cell["std"] == pytest.approx(statistics.stdev(values))
        assert cell["n"] == len(values)
    assert _cell(table, r=8, alpha_over_r=2)["configs"] == 2
    assert table.loc[table["best"], ["r", "alpha_over_r"]].values.tolist() == [[8, 1]]


def test_rank_alpha_falls_back_to_lora_alpha(demo):
    done = demo["done"].assign(alpha_over_r=float("nan"))
    table = report.rank_alpha_table(done, "eval_loss", "minimize")
    assert "lora_alpha" in table.columns
    assert sorted(zip(table["r"], table["lora_alpha"])) == [(4, 4), (4, 8), (8, 8), (8, 16)]
    assert _cell(table, r=8, lora_alpha=8)["best"]


def test_rank_targets_table_exact(demo):
    table = report.rank_targets_table(demo["done"], "eval_loss", "minimize")
    expected = {(4, "qv"): [1.0, 1.2, 0.9, 0.7], (8, "all_linear"): [0.6, 0.5, 0.7, 0.55], (8, "qv"): [0.65, 0.75]}
    assert len(table) == 3  # (4, all_linear) was never run
    for (r, targets), values in expected.items():
        cell = _cell(table, r=r, targets=targets)
        assert cell["mean"] == pytest.approx(statistics.mean(values))
        assert cell["std"] == pytest.approx(statistics.stdev(values))
        assert cell["n"] == len(values)
    assert table.loc[table["best"], ["r", "targets"]].values.tolist() == [[8, "all_linear"]]


def test_pareto_front_against_each_cost(demo):
    configs = report.config_table(demo["done"], "eval_loss", "minimize", demo["info"])
    for cost, direction in (("trainable_params", "minimize"), ("peak_memory_mb", "minimize"),
                            ("tokens_per_s", "maximize")):
        front = report.pareto_front(configs, "mean", cost, "minimize", direction)
        assert set(front.loc[front["pareto"], "config"]) == {LABEL["C2"], LABEL["C5"], LABEL["C4"]}, cost
    front = report.pareto_front(configs, "mean", "trainable_params", "minimize")
    assert list(front.loc[front["pareto"], "config"]) == [LABEL["C2"], LABEL["C5"], LABEL["C4"]]  # cheapest first


def test_pareto_front_handles_ties_and_maximize():
    table = pd.DataFrame({"q": [0.5, 0.5, 0.9, 0.1, 0.9], "c": [10, 10, 20, 5, float("nan")]})
    front = report.pareto_front(table, "q", "c", "maximize")
    assert len(front) == 4  # the row without a cost is dropped
    assert sorted(zip(front["q"], front["c"], front["pareto"])) == [
        (0.1, 5, True), (0.5, 10, True), (0.5, 10, True), (0.9, 20, True)]
    front = report.pareto_front(table, "q", "c", "minimize")
    assert front.loc[front["pareto"], "q"].tolist() == [0.1]


def test_effective_rank_table_exact(demo):
    table = report.effective_rank_table(demo["done"])
    assert table["r"].tolist() == [4, 8]
    assert table["mean"].tolist() == pytest.approx([3.0, 5.5])
    assert table["std"].tolist() == pytest.approx([statistics.stdev([3.0, 3.2, 2.8, 3.0]),
                                                   statistics.stdev([5, 6, 5, 6, 5, 6])])
    assert table["n"].tolist() == [4, 6]
    assert table["used"].tolist() == pytest.approx([0.75, 5.5 / 8])


def test_learning_curves_from_metric_history(store, demo):
    curves = report.learning_curves(store["client"], demo["runs"][demo["runs"]["state"] != "FAIL"])
    complete = curves[curves["state"] == "COMPLETE"]
    assert complete["run_id"].nunique() == 10
    assert all(tuple(steps) == STEPS for steps in complete.groupby("run_id")["step"].apply(list))
    assert curves[curves["state"] == "PRUNED"]["eval_loss"].tolist() == [3.5, 3.0]
    means = report.curves_by_rank(curves)
    r4 = means[means["r"] == 4].set_index("step")
    assert r4.loc[30, "mean"] == pytest.approx(statistics.mean([1.0, 1.2, 0.9, 0.7]))  # pruned run excluded
    assert r4.loc[10, "mean"] == pytest.approx(statistics.mean([1.5, 1.7, 1.4, 1.2]))
    assert r4.loc[10, "n"] == 4


def test_param_importance_uses_optuna(demo):
    table, notes = report.param_importance(demo["done"], "eval_loss", demo["info"])
    assert set(table["param"]) == {"lora.r", "alpha_over_r", "lora.targets"}  # not the seed nor lora_alpha
    assert table["importance"].sum() == pytest.approx(1.0)
    assert notes == []
    few, notes = report.param_importance(demo["done"].head(2), "eval_loss", demo["info"])
    assert few.empty and "at least" in notes[0]
    same = demo["done"][demo["done"]["r"] == 8]
    table, notes = report.param_importance(same, "eval_loss", demo["info"])
    assert "lora.r" not in set(table["param"]) and any("'lora.r' took a single value" in n for n in notes)


def test_best_command_from_tag_or_params(demo):
    done = demo["done"]
    run = done[done["config"] == LABEL["C4"]].iloc[0]
    assert report.best_command(run) == ("python -m lora_lab.train lora.r=8 lora.targets=all_linear "
                                        "train.seed=0 lora.lora_alpha=16")
    rebuilt = report.best_command(run.drop("overrides"))
    assert rebuilt == "python -m lora_lab.train lora.r=8 lora.targets=all_linear train.seed=0 lora.lora_alpha=16"
    bare = {"params.lora.r": "8", "params.lora.lora_alpha": "16.0", "params.lora.targets": "my set",
            "params.train.seed": "1", "params.lora.use_rslora": "True"}
    assert report.best_command(bare) == ('python -m lora_lab.train lora.r=8 lora.lora_alpha=16 '
                                         'lora.targets="my set" lora.use_rslora=true train.seed=1')


def test_unfinished_listed_not_averaged(demo):
    table = report.unfinished_table(demo["runs"], "eval_loss")
    assert sorted(table["state"]) == ["FAIL", "PRUNED"]
    failed = _cell(table, state="FAIL")
    assert failed["status"] == "FAILED" and failed["error"] == "RuntimeError: out of memory"
    assert _cell(table, state="PRUNED")["last eval_loss"] == 3.0


# -- the written report --------------------------------------------------------------------------

PLOTS = ["rank_alpha.png", "rank_targets.png", "pareto_trainable_params.png", "pareto_peak_memory_mb.png",
         "pareto_tokens_per_s.png", "effective_rank.png", "learning_curves.png", "importance.png"]
CSVS = ["rank_alpha.csv", "rank_targets.csv", "pareto_trainable_params.csv", "pareto_peak_memory_mb.csv",
        "pareto_tokens_per_s.csv", "effective_rank.csv", "learning_curves.csv", "learning_curves_by_rank.csv",
        "importance.csv", "configs.csv", "unfinished.csv", "runs.csv"]


def test_report_files(built):
    for name in PLOTS:
        data = (built / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 5000, name
    for name in CSVS:
        assert (built / name).stat().st_size > 0, name
    rank_alpha = pd.read_csv(built / "rank_alpha.csv")
    assert _cell(rank_alpha, r=8, alpha_over_r=1)["mean"] == pytest.approx(0.6)
    assert not [p for p in built.parent.iterdir() if p.name.startswith(".")]  # no staging left


def test_report_markdown_and_html(built):
    md = (built / "report.md").read_text()
    page = (built / "report.html").read_text()
    command = "python -m lora_lab.train lora.r=8 lora.targets=all_linear train.seed=0 lora.lora_alpha=16"
    assert command in md and command in page
    assert (built / "best_command.txt").read_text().strip() == command
    assert "| r \\ alpha_over_r | 1 | 2 |" in md
    assert "| r=8 | **0.6 ± 0.1 (n=3)** ★ | 0.65 ± 0.1 (n=3) [2 configs] |" in md
    assert "| r=4 | 1.1 ± 0.14 (n=2) | 0.8 ± 0.14 (n=2) |" in md
    assert "| r \\ targets | qv | all_linear |" in md  # declared order of the choices
    assert "<td><strong>0.6 ± 0.1 (n=3)</strong> ★</td>" in page
    for name in PLOTS:
        assert f"]({name})" in md, name
        assert f'<img src="{name}"' in page, name
    assert "Trial runs: 12 (10 complete, 1 pruned, 1 failed); 10 averaged." in md
    assert "RuntimeError: out of memory" in md and "RuntimeError: out of memory" in page
    assert "3 of 5 configurations are Pareto-optimal" in md
    assert "**eval_loss** (minimize" in md and "the sweep's first objective" in md
    tables = sum(1 for line in md.splitlines() if line.startswith("| ---"))
    assert tables >= 9 and page.count("<table>") == tables


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
    return subprocess.run([sys.executable, "-m", "lora_lab.report", *args], cwd=store["root"], env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_writes_report(store, tmp_path):
    out = tmp_path / "out"
    result = _cli(store, "study=demo", f"output_dir={out}", "metric=exact_match")
    assert result.returncode == 0, result.stderr
    assert f"report: {out / 'demo' / 'report.md'}" in result.stdout
    md = (out / "demo" / "report.md").read_text()
    assert "**exact_match** (maximize" in md
    assert set(PLOTS) <= {p.name for p in (out / "demo").iterdir()}
    assert not (store["root"] / "outputs").exists() and not list(store["root"].glob("*.log"))


def test_errors_exit_2_with_one_paragraph(store, tmp_path, capsys):
    """The path the command line takes (cli.reports_errors), without paying for a second subprocess."""
    settings = ReportConfig(study="nope", output_dir=str(tmp_path))
    with pytest.raises(SystemExit) as exit_info:
        report.cli.reports_errors(report.build_report)(settings, store["client"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("lora_lab: error: no MLflow experiment named 'nope'") and "'demo'" in err
    assert err.count("\n") == 1 and "Traceback" not in err
